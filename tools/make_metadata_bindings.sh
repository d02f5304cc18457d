#!/usr/bin/env bash
# Regenerates tfcompress/export/metadata_schema_generated.py, the Python bindings of the TFLite Metadata
# schema (third_party/tflite_metadata/metadata_schema.fbs, as shipped in the mediapipe 1.2.3 wheel at
# mediapipe/tasks/metadata/metadata_schema.fbs), with Debian's flatc (package flatbuffers-compiler,
# 2.0.8).  tests/export/test_tflite_metadata.py checks that the committed file is what this makes.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v flatc >/dev/null || { echo "error: flatc not found (apt-get install flatbuffers-compiler)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --python --gen-object-api --gen-onefile -o "$out" third_party/tflite_metadata/metadata_schema.fbs 2>/dev/null
mv "$out/metadata_schema_generated.py" tfcompress/export/metadata_schema_generated.py
