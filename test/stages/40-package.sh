#!/usr/bin/env bash
# Package gate: build the Debian package from a copy of the tree
# (dpkg-buildpackage -us -uc -b), lint it (lintian: no error or warning),
# install it with apt as a user would, check what it installed and did, then
# purge it and check that the state went with it. Runs as root (apt); skips
# with a reason elsewhere. ~2 min on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/../.."
SRC=$PWD
if [ "$(id -u)" -ne 0 ]; then
        echo "SKIP: the package gate installs a package and needs root"
        exit 0
fi
for t in dpkg-buildpackage lintian dh; do
        command -v "$t" >/dev/null || { echo "$t missing (.ci/packages.txt)"; exit 1; }
done
if dpkg-query -W -f='${Status}' tpmidd 2>/dev/null | grep -q 'install ok installed'; then
        echo "tpmidd is installed as a package on this machine already; not touching it"
        exit 1
fi

work=$(mktemp -d /tmp/tpmidd-pkg.XXXXXX)
trap 'rm -rf "$work"' EXIT
rc=0
fail() { echo "FAIL: $*"; rc=1; }

# A copy of the committed-or-not tree without build directories: the
# package build must not see (or write into) the checkout's builds.
mkdir "$work/tpmidd"
git ls-files -z --cached --others --exclude-standard | (cd "$SRC" && tar --null -T - -cf -) | tar -C "$work/tpmidd" -xf -

echo "-- dpkg-buildpackage"
if ! (cd "$work/tpmidd" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1); then
        tail -60 "$work/build.log"
        echo "FAIL: dpkg-buildpackage"
        exit 1
fi
deb=$(ls "$work"/tpmidd_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "FAIL: no tpmidd_*.deb built"; exit 1; }
echo "built $(basename "$deb")"

echo "-- lintian"
if ! lintian --fail-on error,warning --suppress-tags-from-file "$SRC/debian/lintian-suppressed" "$deb" >"$work/lintian.log" 2>&1; then
        cat "$work/lintian.log"
        fail "lintian reported errors or warnings"
fi
grep -E '^(E|W):' "$work/lintian.log" || true

echo "-- apt-get install ./$(basename "$deb")"
if ! (cd "$work" && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$(basename "$deb")" >"$work/install.log" 2>&1); then
        tail -40 "$work/install.log"
        echo "FAIL: apt-get install"
        exit 1
fi

expect_file() { [ -e "$1" ] || fail "missing after install: $1"; }
for f in /usr/sbin/tpmidd /usr/bin/tpmidctl /usr/libexec/tpmidd-https \
        /lib/systemd/system/tpmidd.service /lib/systemd/system/tpmidd-tpmd.socket \
        /lib/systemd/system/tpmidd-identityd.socket /lib/systemd/system/tpmidd-https.socket \
        /lib/systemd/system/tpmidd-https.service /usr/share/man/man8/tpmidd-https.8.gz /usr/lib/sysusers.d/tpmidd.conf \
        /usr/lib/tmpfiles.d/tpmidd.conf /lib/udev/rules.d/70-tpmidd.rules \
        /usr/lib/systemd/catalog/tpmidd.catalog /usr/share/bash-completion/completions/tpmidctl \
        /etc/aziot/config.toml.template /usr/share/man/man8/tpmidd.8.gz /usr/share/man/man1/tpmidctl.1.gz \
        /usr/share/man/man5/tpmidd.toml.5.gz /usr/share/man/man7/tpmidd-api.7.gz \
        /usr/share/doc/tpmidd/copyright /usr/share/doc/tpmidd/README.Debian \
        /lib/systemd/system/aziot-identityd.service.d/50-tpmidd.conf \
        /lib/systemd/system/aziot-identityd.socket.d/50-tpmidd.conf \
        /lib/systemd/system/aziot-tpmd.service.d/50-tpmidd.conf \
        /lib/systemd/system/aziot-tpmd.socket.d/50-tpmidd.conf; do
        expect_file "$f"
done
# The relation to aziot-identity-service (debian/README.Debian): no
# Conflicts/Provides/Breaks that would keep aziot-edge from installing.
rel=$(dpkg-query -W -f='${Conflicts}|${Provides}|${Breaks}|${Enhances}' tpmidd)
case "$rel" in
"||"*aziot-identity-service*) ;;
*) fail "package relations: '$rel' (want no Conflicts/Provides/Breaks, Enhances aziot-identity-service)" ;;
esac
grep -qx 'ConditionPathExists=!/etc/aziot/tpmidd/replaces-aziot' \
        /lib/systemd/system/aziot-identityd.socket.d/50-tpmidd.conf || fail "the aziot coexistence drop-in's condition"
dpkg-query -W -f='${Conffiles}\n' tpmidd | grep -q '/etc/aziot/config.toml.template' ||
        fail "/etc/aziot/config.toml.template is not a conffile"
/usr/sbin/tpmidd --version | grep -q '^tpmidd ' || fail "tpmidd --version"
/usr/bin/tpmidctl --version | grep -q '^tpmidctl ' || fail "tpmidctl --version"
getent passwd aziottpm >/dev/null || fail "user aziottpm was not created"
id -nG aziottpm 2>/dev/null | grep -qw tss || fail "aziottpm is not in group tss"
[ "$(stat -c '%U:%G %a' /var/lib/tpmidd 2>/dev/null)" = "aziottpm:aziottpm 700" ] ||
        fail "/var/lib/tpmidd: $(stat -c '%U:%G %a' /var/lib/tpmidd 2>&1), expected aziottpm:aziottpm 700"
[ "$(stat -c '%U:%G %a' /etc/aziot/tpmidd 2>/dev/null)" = "root:aziottpm 750" ] ||
        fail "/etc/aziot/tpmidd: $(stat -c '%U:%G %a' /etc/aziot/tpmidd 2>&1), expected root:aziottpm 750"
for s in tpmidd-tpmd.socket tpmidd-identityd.socket; do
        [ -L "/etc/systemd/system/sockets.target.wants/$s" ] || fail "$s is not enabled"
done
[ -e /etc/systemd/system/multi-user.target.wants/tpmidd.service ] &&
        fail "tpmidd.service was enabled at install (config apply does that)"
# The installed tree works: the template validates with the installed CLI.
/usr/bin/tpmidctl config check -c /etc/aziot/config.toml.template >"$work/check.log" 2>&1 ||
        { cat "$work/check.log"; fail "tpmidctl config check of the installed template"; }
# The installed units pass systemd's own checks (no PID 1 needed).
if ! systemd-analyze verify /lib/systemd/system/tpmidd.service /lib/systemd/system/tpmidd-tpmd.socket \
        /lib/systemd/system/tpmidd-identityd.socket /lib/systemd/system/tpmidd-https.socket \
        /lib/systemd/system/tpmidd-https.service >"$work/verify.log" 2>&1; then
        cat "$work/verify.log"
        fail "systemd-analyze verify of the installed units"
fi

echo "-- apt-get purge tpmidd"
mkdir -p /var/lib/tpmidd && echo x >/var/lib/tpmidd/state-marker
# what `tpmidctl config apply` writes for aziot coexistence goes with a purge
echo x >/etc/aziot/tpmidd/replaces-aziot
if ! DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tpmidd >"$work/purge.log" 2>&1; then
        tail -40 "$work/purge.log"
        fail "apt-get purge"
fi
for f in /usr/sbin/tpmidd /usr/bin/tpmidctl /var/lib/tpmidd /etc/aziot/tpmidd /etc/aziot/config.toml.template \
        /lib/systemd/system/aziot-identityd.socket.d/50-tpmidd.conf \
        /etc/systemd/system/sockets.target.wants/tpmidd-tpmd.socket; do
        [ -e "$f" ] && fail "still there after purge: $f"
done
dpkg-query -W tpmidd >/dev/null 2>&1 && dpkg-query -W -f='${Status}\n' tpmidd | grep -qv 'not-installed' &&
        fail "dpkg still knows tpmidd: $(dpkg-query -W -f='${Status}' tpmidd)"

[ "$rc" -eq 0 ] && echo "package gate passed"
exit "$rc"
