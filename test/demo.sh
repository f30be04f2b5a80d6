#!/usr/bin/env bash
# The README's "try it" job on a fresh Debian 12 machine, as root: install the
# packages, build tpmidd, then provision a software TPM against the local DPS +
# IoT Hub simulator (test/demo.py) and show each step. Exits non-zero if any
# step fails. Leaves only the build directory behind (build-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
        echo "demo.sh: run as root (sudo test/demo.sh): it installs packages and runs swtpm as nobody" >&2
        exit 1
fi
echo "==> Installing the Debian packages the build and the demo need (test/deps.sh)"
bash test/deps.sh
echo "==> Building tpmidd (meson + ninja in build-demo/)"
if [ ! -f build-demo/build.ninja ]; then
        meson setup build-demo >/tmp/tpmid-demo-meson.log 2>&1 || { tail -30 /tmp/tpmid-demo-meson.log; exit 1; }
fi
ninja -C build-demo >/tmp/tpmid-demo-ninja.log 2>&1 || { tail -40 /tmp/tpmid-demo-ninja.log; exit 1; }
rm -f /tmp/tpmid-demo-meson.log /tmp/tpmid-demo-ninja.log
export TPMID_BUILD_DIR="$PWD/build-demo" TPMID_SOURCE_DIR="$PWD" PYTHONDONTWRITEBYTECODE=1
exec /usr/bin/python3 test/demo.py
