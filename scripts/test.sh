#!/usr/bin/env bash
# Installs everything (venv, Python packages, Debian's chromium) and runs all checks and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
export CI=${CI:-}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
