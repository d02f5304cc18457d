#!/usr/bin/env bash
# Makes .arm64/: an aarch64 Python 3.11 (Debian bookworm's arm64 packages, unpacked into .arm64/root) with
# LiteRT's aarch64 wheel and numpy (requirements-arm64.lock, in .arm64/site), run on this machine by
# qemu-user's qemu-aarch64 (static).  tools/arm_parity.py and tests/evaluate/test_arm_parity.py use it.
# qemu must be 8.2 or newer, which emulates an ARM /proc/cpuinfo: bookworm's 7.2 crashes in LiteRT's
# interpreter setup (SIGSEGV), so qemu-user comes from bookworm-backports (10.0).
# Needs root for apt (it adds bookworm-backports, and the arm64 architecture to dpkg to download the
# packages; nothing arm64 is installed into the system).  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
qemu_ok() {
  command -v qemu-aarch64 >/dev/null && qemu-aarch64 --version | head -n 1 \
    | awk '{split($3, v, "."); exit !(v[1] > 8 || (v[1] == 8 && v[2] >= 2))}'
}
if ! qemu_ok; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/tfcompress-backports.list
  apt-get update -qq && apt-get install -y -qq -t bookworm-backports qemu-user >/dev/null
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64 && apt-get update -qq
fi
root=.arm64/root
if [ ! -x "$root/usr/bin/python3.11" ]; then
  debs=$(mktemp -d) && chmod 755 "$debs"  # apt downloads as _apt
  trap 'rm -rf "$debs"' EXIT
  (cd "$debs" && apt-get download -qq $(printf '%s:arm64 ' python3.11-minimal libpython3.11-minimal \
    libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 \
    libuuid1 libcrypt1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libdb5.3 libnsl2 \
    libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1))
  rm -rf .arm64
  mkdir -p "$root"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
fi
.venv/bin/python3 -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: --upgrade \
  --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  --python-version 3.11 --implementation cp --abi cp311 --target .arm64/site -r requirements-arm64.lock
qemu-aarch64 -L "$root" "$root/usr/bin/python3.11" -c \
  'import platform, sys; sys.path.insert(0, ".arm64/site"); import numpy, ai_edge_litert.interpreter; print("aarch64 python", platform.python_version(), platform.machine(), "numpy", numpy.__version__)'
