#!/usr/bin/env bash
# Installs everything, builds the offline demo (scratch model + corpus) and starts the console.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
exec .venv/bin/python start_web_interface.py --demo "$@"
