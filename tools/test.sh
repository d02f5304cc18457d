#!/usr/bin/env bash
# The full test suite through Bazel (one py_test per test file, run in parallel), then `bazel run`
# smoke tests; offline, with Debian's bazel-bootstrap.  `tools/test.sh --pytest [args]` runs the same
# test files with pytest instead (no Bazel needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# The fused oneDNN kernels (--kernels=onednn) exist only when this is set before TF starts;
# with it, their tests run instead of skipping.  The reference kernels' portability test
# still runs a subprocess with oneDNN off.
export TF_ENABLE_ONEDNN_OPTS=1
# The clients the .tflite is checked in: MediaPipe (its own venv), LiteRT on aarch64 under qemu, and flatc
# for the metadata bindings check.  Without apt (not root, no network) their tests skip, saying why.
if ! command -v flatc >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flatbuffers-compiler >/dev/null || true
fi
bash tools/setup_clients.sh || echo "warning: no .venv-clients; the MediaPipe test will skip" >&2
if [ "$(id -u)" = 0 ]; then
  bash tools/setup_arm64.sh >/dev/null || echo "warning: no ARM emulation; the aarch64 test will skip" >&2
fi
if [ "${1:-}" = "--pytest" ]; then
  shift
  exec .venv/bin/python3 -m pytest -q tests "$@"
fi

if ! command -v bazel >/dev/null || [ ! -d /usr/share/bazel/rules/java ]; then
  echo "installing bazel-bootstrap and bazel-rules-java with apt" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap bazel-rules-java >/dev/null
fi
# The layout checks read the source tree, which Bazel's sandbox does not hold: run them here first.
.venv/bin/python3 -m pytest -q -p no:cacheprovider tests/test_layout.py
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bazel build //... 2>&1 | tail -n 2
bazel test //tests/... --test_output=errors 2>&1 | grep -v "^\(INFO\|Loading\|Analyzing\|\[\)"
bazel run //tools:quantize_graph -- --output="$out/q8" --mode=weights --progress=false 2>&1 | tail -n 4
test -f "$out/q8/saved_model.pb"
bazel run //tools:eval -- --json --model="$out/q8" 2>/dev/null | tail -n 1 | grep -q '"top1"'
echo "bazel smoke test: ok"
