#!/usr/bin/env bash
# Install the Debian 12 packages listed in .ci/packages.txt. Without options:
# the ones above its "[ci]" line, which building tpmidd and running the demo
# need. With --ci: all of them (also the test tools, clang, valgrind,
# cppcheck, lintian, debhelper... for test/run-all.sh). Does nothing when all
# are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ci=0
case "${1:-}" in
"") ;;
--ci) ci=1 ;;
*) echo "usage: test/deps.sh [--ci]" >&2; exit 2 ;;
esac
if [ "$ci" -eq 1 ]; then
        mapfile -t pkgs < <(grep -v '^#' .ci/packages.txt | sed '/^\[ci\]$/d;/^$/d')
else
        mapfile -t pkgs < <(sed '/^\[ci\]$/q' .ci/packages.txt | grep -v '^#' | sed '/^\[ci\]$/d;/^$/d')
fi
missing=()
for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]}" >&2
        echo "run as root (sudo) so they can be installed" >&2
        exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing: ${missing[*]}"
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/tpmid-apt.log 2>&1 || { tail -30 /tmp/tpmid-apt.log; exit 1; }
