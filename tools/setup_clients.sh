#!/usr/bin/env bash
# Creates .venv-clients with the inference clients the client tests run (MediaPipe Tasks,
# requirements-clients.lock), apart from .venv: a client reads a .tflite as an app does, with nothing of
# tfcompress or TensorFlow beside it.  Uses the Python 3.11 that tools/setup.sh made .venv with.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python3 ] || { echo "error: run tools/setup.sh first" >&2; exit 1; }
if [ ! -x .venv-clients/bin/python3 ]; then
  "$(.venv/bin/python3 -c 'import sys; print(sys._base_executable)')" -m venv .venv-clients
fi
.venv-clients/bin/python3 -m pip install -q --disable-pip-version-check -r requirements-clients.lock
