#!/usr/bin/env bash
# Install the Debian 12 packages the build, the tests and the demo need
# (listed in .ci/packages.txt). Does nothing when all are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t pkgs < <(grep -v '^#' .ci/packages.txt | sed '/^$/d')
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
