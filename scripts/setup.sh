#!/usr/bin/env bash
# Creates .venv and installs the project. Usage: scripts/setup.sh [runtime|dev]
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-runtime}
py=${PYTHON:-python3}

"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
[ -x .venv/bin/python ] || "$py" -m venv .venv
req=requirements.txt
[ "$profile" = dev ] && req=requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"

# Debian packages: OpenBLAS makes the Linux CPU wheel 7-18x faster (the trainer
# preloads it when present); Chromium drives the browser tests; openssh-server and
# iproute2 give the multi-host tests their stand-in hosts (network namespaces, each
# with its own sshd: tests/multihost.py).
apt_pkgs=()
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then
  ls /usr/lib/*-linux-gnu/libopenblas.so.0 >/dev/null 2>&1 || apt_pkgs+=(libopenblas0-pthread)
  if [ "$profile" = dev ]; then
    command -v chromium >/dev/null || apt_pkgs+=(chromium)
    [ -x /usr/sbin/sshd ] || apt_pkgs+=(openssh-server)
    command -v ssh >/dev/null || apt_pkgs+=(openssh-client)
    command -v ip >/dev/null || apt_pkgs+=(iproute2)
  fi
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  if $sudo true 2>/dev/null; then
    echo "Installing Debian packages: ${apt_pkgs[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    echo "Note: could not install ${apt_pkgs[*]} (needs root): sudo apt-get install ${apt_pkgs[*]}" >&2
  fi
fi
