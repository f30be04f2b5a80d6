#!/usr/bin/python3
"""Packaging: `meson install` into a DESTDIR and check what a package would ship.

- the installed tree (binaries, units, sysusers.d, tmpfiles.d, udev rule,
  config template, man pages) at the paths the build options say;
- `systemd-analyze verify` of the units in a --root tree (any stderr fails);
- the privilege split in the units: tpmidd.service has the TPM and no
  network, tpmidd-https.service (socket-activated from tpmidd-https.socket,
  which only tpmidd's user may connect to) the network and no device;
- `systemd-analyze security --offline` exposure of both services within
  MAX_EXPOSURE, and the items the split is about marked safe;
- `systemd-sysusers --root`: user/group aziottpm, aziottpm in tss, and every
  static user or group the units name exists;
- `systemd-tmpfiles --root --create`: directories with modes and owners;
- the udev rule loads without errors (`udevadm test` in a private mount
  namespace, the host's /etc untouched);
- the config template passes `tpmidctl config check`, as shipped, with every
  key uncommented, and after the user's edit from Microsoft's guide.

Needs root for the udev and ownership cases (private mount namespace, chown).
"""
import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import BUILD, SRC, Runner, need, program, run, tmpdir  # noqa: E402

need("meson", "systemd-analyze", "systemd-sysusers", "systemd-tmpfiles", "udevadm", "unshare", "pkg-config", "ldd")

# systemd-analyze security score each service must not exceed (peers ship
# 8.2-9.6). tpmidd: 0.6 with systemd 252, its limit is 1.5. The helper: 1.1,
# of which 1.0 is what an HTTPS client cannot give up (Internet sockets, the
# host's network, no IP allow list).
MAX_EXPOSURE = {"tpmidd.service": 1.5, "tpmidd-https.service": 1.2}
API_SOCKETS = ["tpmidd-tpmd.socket", "tpmidd-identityd.socket"]
UNITS = ["tpmidd.service"] + API_SOCKETS + ["tpmidd-https.service", "tpmidd-https.socket"]
MAN_PAGES = ["man8/tpmidd.8", "man1/tpmidctl.1", "man5/tpmidd.toml.5", "man7/tpmidd-api.7"]

R = Runner("packaging")
DEST = tmpdir("tpmid-pkg-")
os.chmod(DEST, 0o755)


def options():
    out = run(["meson", "introspect", BUILD, "--buildoptions"]).stdout
    return {o["name"]: o["value"] for o in json.loads(out)}


OPT = options()
PREFIX = OPT["prefix"]


def _under_prefix(d):
    return d if os.path.isabs(d) else os.path.join(PREFIX, d)


def _pkgvar(pkg, var, fallback):
    p = run(["pkg-config", "--variable=" + var, pkg], check=False)
    v = p.stdout.strip()
    return v if p.returncode == 0 and v else fallback


# Where each file must land (before DESTDIR), derived from the options the
# same way a packager reads them, independently of meson's install list.
SBINDIR = _under_prefix(OPT["sbindir"])
BINDIR = _under_prefix(OPT["bindir"])
LIBEXECDIR = _under_prefix(OPT["libexecdir"])
SYSCONFDIR = "/etc" if PREFIX == "/usr" and OPT["sysconfdir"] == "etc" else _under_prefix(OPT["sysconfdir"])
MANDIR = _under_prefix(OPT["mandir"])
UNITDIR = OPT["systemdunitdir"] or _pkgvar("systemd", "systemdsystemunitdir", "/lib/systemd/system")
SYSUSERSDIR = _pkgvar("systemd", "sysusersdir", "/usr/lib/sysusers.d")
TMPFILESDIR = _pkgvar("systemd", "tmpfilesdir", "/usr/lib/tmpfiles.d")
UDEVRULESDIR = OPT["udevrulesdir"] or os.path.join(_pkgvar("udev", "udevdir", "/lib/udev"), "rules.d")


def D(path):
    """path inside the DESTDIR tree."""
    return os.path.join(DEST, path.lstrip("/"))


def tpmidctl():
    return program("tpmidctl")


def _unit(name):
    with open(D(os.path.join(UNITDIR, name))) as f:
        return f.read()


def _settings(text):
    """KEY -> [values] of a unit file, in order (comments and sections dropped)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@R.case
def install_tree():
    run(["meson", "install", "-C", BUILD, "--destdir", DEST, "--no-rebuild", "--quiet"], timeout=300)
    expect = {
        os.path.join(SBINDIR, "tpmidd"): 0o111,
        os.path.join(BINDIR, "tpmidctl"): 0o111,
        os.path.join(LIBEXECDIR, "tpmidd-https"): 0o111,
        os.path.join(SYSUSERSDIR, "tpmidd.conf"): 0,
        os.path.join(TMPFILESDIR, "tpmidd.conf"): 0,
        os.path.join(UDEVRULESDIR, "70-tpmidd.rules"): 0,
        os.path.join(SYSCONFDIR, "aziot", "config.toml.template"): 0,
    }
    for u in UNITS:
        expect[os.path.join(UNITDIR, u)] = 0
    # the coexistence drop-in for aziot-identity-service's units (test/integration/coexist.py)
    for u in ("aziot-identityd.service", "aziot-identityd.socket", "aziot-tpmd.service", "aziot-tpmd.socket"):
        expect[os.path.join(UNITDIR, u + ".d", "50-tpmidd.conf")] = 0
    for m in MAN_PAGES:
        expect[os.path.join(MANDIR, m)] = 0
    missing = [p for p in expect if not os.path.isfile(D(p))]
    assert not missing, "not installed: %s" % missing
    for p, xbits in expect.items():
        mode = os.stat(D(p)).st_mode
        if xbits:
            assert mode & xbits == xbits, "%s is not executable (%o)" % (p, mode)
        else:
            assert mode & 0o444 == 0o444 and not mode & 0o022, "%s has mode %o" % (p, stat.S_IMODE(mode))
    # tpmidd starts its HTTPS helper from the installed path (daemon/cloud.c),
    # and only the helper links libcurl.
    helper = os.path.join(LIBEXECDIR, "tpmidd-https").encode()
    with open(D(os.path.join(SBINDIR, "tpmidd")), "rb") as f:
        assert helper + b"\0" in f.read(), "tpmidd does not name %s" % helper
    for exe, want in ((D(os.path.join(SBINDIR, "tpmidd")), False), (D(helper.decode()), True)):
        needed = run(["ldd", exe]).stdout
        assert ("libcurl" in needed) == want, "%s: libcurl linked %s, expected %s" % (exe, not want, want)
    # The services start the installed binaries, tpmidd with the installed config path.
    for u in ("tpmidd.service", "tpmidd-https.service"):
        assert not re.search(r"@[a-z_]+@", _unit(u)), "unsubstituted @var@ in " + u
    assert re.search(r"(?m)^ExecStart=%s$" % re.escape(os.path.join(LIBEXECDIR, "tpmidd-https")),
                     _unit("tpmidd-https.service")), "tpmidd-https.service does not start the installed helper"
    svc = _unit("tpmidd.service")
    m = re.search(r"(?m)^ExecStart=(\S+) -c (\S+)$", svc)
    assert m, "no ExecStart= line"
    assert m.group(1) == os.path.join(SBINDIR, "tpmidd"), m.group(1)
    # ... the path `tpmidctl config apply` writes (lib/config.h), whatever the prefix.
    applied = re.search(r'#define CONFIG_APPLIED_PATH "([^"]+)"', open(os.path.join(SRC, "lib", "config.h")).read())
    assert applied and m.group(2) == applied.group(1), (m.group(2), applied and applied.group(1))
    # Nothing outside DESTDIR may have been written: meson puts everything below it.
    print("   installed %d files under %s" % (len(expect), DEST))


def _prepare_root():
    """Make DEST usable as systemd-analyze --root: it needs the distribution's
    units in usr/lib/systemd/system, and every Exec binary must exist."""
    sysdir = D("/usr/lib/systemd/system")
    if not os.path.isdir(sysdir):
        os.makedirs(os.path.dirname(sysdir), exist_ok=True)
        shutil.copytree("/lib/systemd/system", sysdir, symlinks=True)
    kill = shutil.which("kill", path="/usr/bin:/bin")
    assert kill, "no kill binary on the host"
    os.makedirs(D("/usr/bin"), exist_ok=True)
    shutil.copy2(kill, D("/usr/bin/kill"))


def _verify(units, root=DEST):
    return run(["systemd-analyze", "verify", "--man=no", "--root=" + root] + units, check=False)


@R.case
def units_verify():
    _prepare_root()
    p = _verify(UNITS)
    assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), \
        "systemd-analyze verify complained (rc %d):\n%s%s" % (p.returncode, p.stdout, p.stderr)
    # Control: the same check does catch a bad key and a broken ExecStart, so a
    # silent pass above means something.
    bad_dir = D("/etc/systemd/system")
    os.makedirs(bad_dir, exist_ok=True)
    svc = open(D(os.path.join(UNITDIR, "tpmidd.service"))).read()
    with open(os.path.join(bad_dir, "tpmidd-bad.service"), "w") as f:
        f.write(svc.replace("ProtectSystem=strict", "ProtectSystem=sometimes\nFooBar=1")
                   .replace("ExecStart=/", "ExecStart=/nonexistent/"))
    try:
        p = _verify(["tpmidd-bad.service"])
        assert "FooBar" in p.stderr and "sometimes" in p.stderr and "nonexistent" in p.stderr, \
            "verify missed planted errors:\n" + p.stderr
    finally:
        os.unlink(os.path.join(bad_dir, "tpmidd-bad.service"))


@R.case
def units_contents():
    svc = _unit("tpmidd.service")
    for line in ["Type=notify", "NotifyAccess=main", "User=aziottpm", "Group=aziottpm", "SupplementaryGroups=tss",
                 "StateDirectory=tpmidd", "StateDirectoryMode=0700", "RuntimeDirectory=aziot",
                 "RuntimeDirectoryPreserve=yes", "RestartPreventExitStatus=78", "WatchdogSec=30s",
                 "DevicePolicy=closed", "DeviceAllow=/dev/tpmrm0 rw", "CapabilityBoundingSet=",
                 "Restart=on-failure", "ExecReload=kill -HUP $MAINPID", "UMask=0077"]:
        assert re.search(r"(?m)^" + re.escape(line) + "$", svc), "tpmidd.service lacks " + line
    for forbidden in ["PrivateUsers=yes", "DynamicUser=yes", "Requires=dev-tpmrm0.device"]:
        assert forbidden not in svc, "tpmidd.service must not use " + forbidden
    names = {}
    for s in API_SOCKETS:
        text = _unit(s)
        listen = re.findall(r"(?m)^ListenStream=(.*)$", text)
        name = re.findall(r"(?m)^FileDescriptorName=(.*)$", text)
        assert len(listen) == 1 and len(name) == 1, s
        names[name[0]] = listen[0]
        for line in ["Service=tpmidd.service", "SocketUser=aziottpm", "SocketGroup=aziottpm", "SocketMode=0660"]:
            assert re.search(r"(?m)^" + re.escape(line) + "$", text), s + " lacks " + line
    assert names == {"tpmd": "/run/aziot/tpmd.sock", "identityd": "/run/aziot/identityd.sock"}, names


@R.case
def units_privilege_split():
    """tpmidd: the TPM, no network. tpmidd-https: the network, no TPM, its own identity, reached only by tpmidd."""
    svc, helper, sock = (_settings(_unit(u)) for u in ("tpmidd.service", "tpmidd-https.service", "tpmidd-https.socket"))
    # tpmidd: Unix sockets only, no IP at all, and the helper's socket before it starts
    assert svc["RestrictAddressFamilies"] == ["AF_UNIX"], svc["RestrictAddressFamilies"]
    assert svc.get("IPAddressDeny") == ["any"] and svc.get("PrivateNetwork") == ["yes"], svc
    for key in ("Wants", "After"):
        assert any("tpmidd-https.socket" in v.split() for v in svc[key]), "tpmidd.service: no %s=tpmidd-https.socket" % key
    assert "tpmidd-https.socket" in " ".join(svc["Also"]).split(), svc["Also"]
    # ... and it is told where the helper listens: the socket unit's path
    listen = sock["ListenStream"]
    assert len(listen) == 1 and listen[0].startswith("/run/"), listen
    assert "TPMIDD_HTTPS_SOCKET=" + listen[0] in svc["Environment"], (svc["Environment"], listen)
    # the helper's socket: a private directory, only tpmidd's user can connect, one service
    assert os.path.dirname(listen[0]) not in ("/run", "/run/aziot"), "helper socket shares a directory: " + listen[0]
    assert sock["SocketUser"] == svc["User"] and sock["SocketMode"] == ["0600"], sock
    assert sock.get("Accept", ["no"]) == ["no"] and sock["Service"] == ["tpmidd-https.service"], sock
    assert sock.get("RemoveOnStop") == ["yes"], sock
    # the helper: its own dynamic identity, no group of tpmidd's, no device, no state
    assert helper.get("DynamicUser") == ["yes"], "tpmidd-https.service: no DynamicUser=yes"
    for key in ("User", "Group", "SupplementaryGroups", "DeviceAllow", "StateDirectory", "RuntimeDirectory",
                "ConfigurationDirectory", "Restart"):
        assert key not in helper, "tpmidd-https.service must not set %s= (%s)" % (key, helper[key])
    assert helper.get("DevicePolicy") == ["closed"] and helper.get("PrivateDevices") == ["yes"], helper
    assert helper["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"], helper["RestrictAddressFamilies"]
    assert "tpmidd-https.socket" in " ".join(helper["Requires"]).split(), helper.get("Requires")
    assert "Install" not in _unit("tpmidd-https.service"), "tpmidd-https.service is started by its socket only"
    # sandbox settings the two share, so neither falls behind the other
    for key, want in (("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", ""), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("MemoryDenyWriteExecute", "yes"),
                      ("RestrictNamespaces", "yes"), ("SystemCallArchitectures", "native"), ("UMask", "0077")):
        for name, u in (("tpmidd.service", svc), ("tpmidd-https.service", helper)):
            assert u.get(key) == [want], "%s: %s=%s, want %s" % (name, key, u.get(key), want)
    assert svc["SystemCallFilter"] == helper["SystemCallFilter"], (svc["SystemCallFilter"], helper["SystemCallFilter"])


def _security(unit):
    """(exposure, rating, {setting: safe?}, output) of `systemd-analyze security --offline`."""
    limit = MAX_EXPOSURE[unit]
    p = run(["systemd-analyze", "security", "--offline=yes", "--man=no", "--threshold=%d" % int(round(limit * 10)),
             "--root=" + DEST, unit], check=False)
    m = re.search(r"Overall exposure level for %s: (\d+\.\d+) (\S+)" % re.escape(unit), p.stdout)
    assert m, "no exposure in output (rc %d):\n%s%s" % (p.returncode, p.stdout, p.stderr)
    items = {}
    for line in p.stdout.splitlines():
        im = re.match(r"^([✓✗]) (\S+)", line)
        if im:
            items[im.group(2)] = im.group(1) == "✓"
    exposure = float(m.group(1))
    assert (p.returncode == 0) == (exposure <= limit), \
        "--threshold disagrees with the parsed score %.1f (rc %d)" % (exposure, p.returncode)
    return exposure, m.group(2), items, p.stdout


@R.case
def units_security():
    _prepare_root()
    for unit, safe in (("tpmidd.service", ["RestrictAddressFamilies=~AF_(INET|INET6)", "IPAddressDeny=",
                                           "PrivateNetwork=", "User=/DynamicUser=",
                                           "CapabilityBoundingSet=~CAP_SYS_ADMIN"]),
                       ("tpmidd-https.service", ["User=/DynamicUser=", "PrivateDevices=", "PrivateUsers=",
                                                 "SupplementaryGroups=", "RestrictAddressFamilies=~AF_NETLINK",
                                                 "RestrictAddressFamilies=~AF_PACKET", "PrivateMounts="])):
        exposure, rating, items, out = _security(unit)
        print("   %s exposure: %.1f %s (limit %.1f)" % (unit, exposure, rating, MAX_EXPOSURE[unit]))
        assert exposure <= MAX_EXPOSURE[unit], "%s: exposure %.1f > %.1f:\n%s" % (unit, exposure,
                                                                                 MAX_EXPOSURE[unit], out)
        bad = [k for k in safe if not items.get(k)]
        assert not bad, "%s: not safe: %s\n%s" % (unit, bad, out)
    # Control: the same scoring does see the network in a unit that keeps it.
    bad_dir = D("/etc/systemd/system")
    os.makedirs(bad_dir, exist_ok=True)
    path = os.path.join(bad_dir, "tpmidd-net.service")
    with open(path, "w") as f:
        f.write(_unit("tpmidd.service").replace("RestrictAddressFamilies=AF_UNIX\n",
                                                "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n")
                .replace("IPAddressDeny=any\n", "").replace("PrivateNetwork=yes\n", ""))
    try:
        MAX_EXPOSURE["tpmidd-net.service"] = 9.9
        exposure, _, items, out = _security("tpmidd-net.service")
        assert not items["RestrictAddressFamilies=~AF_(INET|INET6)"] and not items["PrivateNetwork="], out
        assert exposure >= _security("tpmidd.service")[0] + 0.9, (exposure, out)
    finally:
        del MAX_EXPOSURE["tpmidd-net.service"]
        os.unlink(path)


def _sysusers(root, preexisting_group_line=None):
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        with open(os.path.join(root, "etc", f), "w") as fh:
            if f == "group" and preexisting_group_line:
                fh.write(preexisting_group_line + "\n")
    conf = D(os.path.join(SYSUSERSDIR, "tpmidd.conf"))
    p = run(["systemd-sysusers", "--root=" + root, conf], check=False)
    assert p.returncode == 0, "systemd-sysusers failed (rc %d): %s" % (p.returncode, p.stderr)
    passwd = [l.split(":") for l in open(os.path.join(root, "etc", "passwd")).read().splitlines()]
    group = [l.split(":") for l in open(os.path.join(root, "etc", "group")).read().splitlines()]
    return {u[0]: u for u in passwd}, {g[0]: g for g in group}


@R.case
def sysusers_fresh():
    root = os.path.join(DEST, "sysusers-fresh")
    users, groups = _sysusers(root)
    assert "aziottpm" in users, users
    u = users["aziottpm"]
    assert "aziottpm" in groups, groups
    assert int(u[3]) == int(groups["aziottpm"][2]), "primary group of aziottpm is not aziottpm"
    assert int(u[2]) < 1000, "aziottpm is not a system user: uid %s" % u[2]
    assert u[5] == "/var/lib/tpmidd", u
    assert u[6] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), u
    assert "tss" in groups and "aziottpm" in groups["tss"][3].split(","), groups.get("tss")
    # Every static identity the units name is created here; the helper has a
    # dynamic one (DynamicUser=yes) and needs no entry.
    named_users, named_groups = set(), set()
    for u in UNITS:
        st = _settings(_unit(u))
        named_users.update(st.get("User", []) + st.get("SocketUser", []))
        for key in ("Group", "SocketGroup", "SupplementaryGroups"):
            for v in st.get(key, []):
                named_groups.update(v.split())
    assert named_users == {"aziottpm"} and named_groups == {"aziottpm", "tss"}, (named_users, named_groups)
    missing = [n for n in named_users if n not in users] + [n for n in named_groups if n not in groups]
    assert not missing, "named in the units but not created by sysusers: %s" % missing
    conf = open(D(os.path.join(SYSUSERSDIR, "tpmidd.conf"))).read()
    assert "tpmidd-https" not in conf, "sysusers creates a user for the helper, which runs with DynamicUser=yes"


@R.case
def sysusers_existing_tss():
    # Debian's tpm-udev / tpm2-tss packages create tss first: we must only add the member.
    root = os.path.join(DEST, "sysusers-tss")
    users, groups = _sysusers(root, "tss:x:109:alice")
    assert groups["tss"][2] == "109", "existing tss gid changed: %s" % groups["tss"]
    assert set(groups["tss"][3].split(",")) == {"alice", "aziottpm"}, groups["tss"]


@R.case
def tmpfiles_create():
    # Users for DEST itself (tmpfiles resolves names from DEST/etc).
    users, groups = _sysusers(DEST)
    uid, gid = int(users["aziottpm"][2]), int(groups["aziottpm"][2])
    p = run(["systemd-tmpfiles", "--root=" + DEST, "--create", D(os.path.join(TMPFILESDIR, "tpmidd.conf"))],
            check=False)
    assert p.returncode == 0 and not p.stderr.strip(), "systemd-tmpfiles (rc %d): %s" % (p.returncode, p.stderr)
    expect = {
        "/etc/aziot": (0o755, 0, 0),
        "/etc/aziot/tpmidd": (0o750, 0, gid),
        "/var/lib/tpmidd": (0o700, uid, gid),
        "/run/aziot": (0o755, uid, gid),
    }
    # The helper's socket directory belongs to tpmidd-https.socket (created
    # root:root DirectoryMode=0755 when the socket starts): a tmpfiles line
    # for it would fight over its mode at every boot.
    sock = _settings(_unit("tpmidd-https.socket"))
    sockdir = os.path.dirname(sock["ListenStream"][0])
    assert not os.path.exists(D(sockdir)), "tmpfiles created %s" % sockdir
    assert sock["DirectoryMode"] == ["0755"], sock["DirectoryMode"]  # aziottpm must traverse it to connect
    for path, (mode, o, g) in expect.items():
        st = os.stat(D(path))
        assert stat.S_ISDIR(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, "%s: mode %o, want %o" % (path, stat.S_IMODE(st.st_mode), mode)
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (o, g), "%s: owner %d:%d, want %d:%d" % (path, st.st_uid, st.st_gid, o, g)


def _udev_test(rules_dir, root):
    """Load the rules in a private mount namespace: rules.d and the user
    database of `root` replace the host's for udevadm only."""
    script = ("set -e; mount --bind %s /etc/udev/rules.d; "
              "mount --bind %s/etc/passwd /etc/passwd; mount --bind %s/etc/group /etc/group; "
              "udevadm test --action=add /sys/class/misc/hw_random 2>&1" % (rules_dir, root, root))
    return run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=False, timeout=120)


@R.case
def udev_rules_load():
    if os.geteuid() != 0:
        raise AssertionError("needs root for a private mount namespace")
    users, groups = _sysusers(os.path.join(DEST, "udev-root"))
    assert "tss" in groups
    rules_dir = os.path.join(DEST, "udev-rules")
    os.makedirs(rules_dir, exist_ok=True)
    shutil.copy2(D(os.path.join(UDEVRULESDIR, "70-tpmidd.rules")), rules_dir)
    p = _udev_test(rules_dir, os.path.join(DEST, "udev-root"))
    assert "Reading rules file: /etc/udev/rules.d/70-tpmidd.rules" in p.stdout, \
        "rule file not read:\n" + p.stdout[-3000:]
    complaints = [l for l in p.stdout.splitlines() if re.match(r"^/etc/udev/rules\.d/\S+:\d+ ", l)]
    assert not complaints, "udev complains:\n" + "\n".join(complaints)
    # Control: a misspelt key and an unknown user are reported by the same grep.
    with open(os.path.join(rules_dir, "71-bad.rules"), "w") as f:
        f.write('SUBSYSTEM=="tpmrm", KERNL=="tpmrm[0-9]*", MODE="0660"\nKERNEL=="tpm0", OWNER="nosuchuser"\n')
    p = _udev_test(rules_dir, os.path.join(DEST, "udev-root"))
    bad = [l for l in p.stdout.splitlines() if l.startswith("/etc/udev/rules.d/71-bad.rules:")]
    assert len(bad) == 2, "control rule errors not reported:\n" + p.stdout[-3000:]


@R.case
def udev_rules_contents():
    text = open(D(os.path.join(UDEVRULESDIR, "70-tpmidd.rules"))).read()
    rules = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    assert len(rules) == 2, rules
    for sub, kern in (("tpm", "tpm[0-9]*"), ("tpmrm", "tpmrm[0-9]*")):
        r = [l for l in rules if 'SUBSYSTEM=="%s"' % sub in l]
        assert len(r) == 1, sub
        for part in ['KERNEL=="%s"' % kern, 'OWNER="aziottpm"', 'GROUP="tss"', 'MODE="0660"', 'TAG+="systemd"']:
            assert part in r[0], "%s rule lacks %s" % (sub, part)


def _config_check(path):
    env = dict(os.environ)
    env.pop("TPMIDD_CONFIG", None)
    return run([tpmidctl(), "config", "check", "-c", path], check=False, env=env)


def _template():
    return open(D(os.path.join(SYSCONFDIR, "aziot", "config.toml.template"))).read()


@R.case
def template_as_shipped():
    p = _config_check(D(os.path.join(SYSCONFDIR, "aziot", "config.toml.template")))
    assert p.returncode == 0, "template fails config check (rc %d):\n%s%s" % (p.returncode, p.stdout, p.stderr)


def _uncomment_all(text, payload_path):
    """Every `# key = value` / `# [table]` line of the template, uncommented."""
    out = []
    for line in text.splitlines():
        if "# (A)" in line:  # block (A), the broker-only default, gives way to block (B)
            continue
        m = re.match(r"^# (\[\[?[a-z_.]+\]\]?|[a-z_]+ = .*)$", line)
        out.append(m.group(1) if m else line)
    text = "\n".join(out) + "\n"
    text = text.replace('"REGISTRATION_ID_HERE"', '"edge-device-01"')
    return text.replace("file:///etc/aziot/dps-payload.json", "file://" + payload_path)


@R.case
def template_every_key_known():
    work = tmpdir("tpmid-pkg-conf-")
    try:
        payload = os.path.join(work, "payload.json")
        with open(payload, "w") as f:
            f.write('{"modelId":"dtmi:example:device;1"}\n')
        cfg = os.path.join(work, "config.toml")
        with open(cfg, "w") as f:
            f.write(_uncomment_all(_template(), payload))
        text = open(cfg).read()
        for key in ("auto_reprovisioning_mode", "[provisioning]", "[provisioning.attestation]", "[tpm]",
                    "[tpm.hierarchy_authorization]", "[endpoints]", "[limits]", "[[principal]]",
                    "state_dir", "log_level"):
            assert re.search(r"(?m)^" + re.escape(key), text), "template has no commented " + key
        assert text.index("auto_reprovisioning_mode") < text.index("\n["), \
            "auto_reprovisioning_mode must precede every table"
        p = _config_check(cfg)
        out = p.stdout + p.stderr
        assert p.returncode == 0, "every-key config fails (rc %d):\n%s" % (p.returncode, out)
        assert "warning" not in out, "unknown keys in the template:\n" + out
    finally:
        shutil.rmtree(work, ignore_errors=True)


@R.case
def template_seed_workflow():
    # Microsoft's guide: copy the template, uncomment the DPS TPM block, put in
    # the ID scope and registration ID.
    work = tmpdir("tpmid-pkg-seed-")
    try:
        lines = _template().splitlines()
        # Comment out block (A) ...
        lines = ["# " + l if "# (A)" in l else l for l in lines]
        # ... and uncomment block (B).
        start = next(i for i, l in enumerate(lines) if l == "# [provisioning]")
        end = next(i for i, l in enumerate(lines) if l.startswith("# registration_id = "))
        for i in range(start, end + 1):
            if re.match(r"^# (\[[a-z_.]+\]|source|global_endpoint|id_scope|method|registration_id) ?", lines[i]):
                lines[i] = lines[i][2:]
        text = "\n".join(lines) + "\n"
        cfg = os.path.join(work, "config.toml")
        with open(cfg, "w") as f:
            f.write(text)
        p = _config_check(cfg)
        assert p.returncode != 0 and "REGISTRATION_ID_HERE" in p.stdout + p.stderr, \
            "placeholder registration_id accepted:\n" + p.stdout + p.stderr
        text = text.replace('"0ne00000000"', '"0ne00ABCDEF"').replace('"REGISTRATION_ID_HERE"', '"edge-device-01"')
        cfg = os.path.join(work, "config.toml")
        with open(cfg, "w") as f:
            f.write(text)
        assert re.search(r'(?m)^source = "dps"$', text) and not re.search(r'(?m)^source = "none"', text), text
        p = _config_check(cfg)
        assert p.returncode == 0, "seed workflow config fails (rc %d):\n%s%s" % (p.returncode, p.stdout, p.stderr)
        # The guide's own line (after the attestation table; unquoted there) is
        # refused with its position, not silently ignored - quoted or not.
        for line in ('auto_reprovisioning_mode = "Dynamic"', "auto_reprovisioning_mode = Dynamic"):
            with open(cfg, "w") as f:
                f.write(text + "\n" + line + "\n")
            p = _config_check(cfg)
            out = p.stdout + p.stderr
            assert p.returncode != 0, "misplaced %r accepted:\n%s" % (line, out)
            assert re.search(r"config\.toml:\d+:\d+: error: .*auto_reprovisioning_mode", out), \
                "no file:line:col error naming the key:\n" + out
    finally:
        shutil.rmtree(work, ignore_errors=True)


try:
    R.main()
finally:
    shutil.rmtree(DEST, ignore_errors=True)
