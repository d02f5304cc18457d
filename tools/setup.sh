#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs tfcompress with its pinned dependencies.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python="$candidate"; break
  fi
done
[ -n "$python" ] || { echo "error: tfcompress needs Python 3.11" >&2; exit 1; }
[ -x .venv/bin/python3 ] || "$python" -m venv .venv
.venv/bin/python3 -m pip install -q --disable-pip-version-check -r requirements.lock
.venv/bin/python3 -m pip install -q --disable-pip-version-check --no-deps -r requirements-tf-keras.lock
.venv/bin/python3 -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>/dev/null \
  || .venv/bin/python3 -m pip install -q --disable-pip-version-check --no-deps -e .
