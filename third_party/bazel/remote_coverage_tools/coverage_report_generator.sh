#!/bin/sh
echo "coverage is not collected through Bazel here" >&2
exit 0
