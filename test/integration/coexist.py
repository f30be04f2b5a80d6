#!/usr/bin/python3
"""tpmidd beside Microsoft's aziot-identity-service (which aziot-edge depends
on), offline: no systemd as PID 1, everything in a --root tree.

The tree is `meson install --destdir` (what the package ships, drop-ins
included) plus Microsoft's unit files as the aziot-identity-service package
installs them (test/integration/aziot-units/, each citing its source), the
distribution's units, stub aziot binaries and an /etc/passwd with aziot's and
IoT Edge's users. Then:

- `systemd-analyze verify --root` of aziot's eight units with the drop-ins
  (nothing on stderr), and `cat-config` shows the drop-in on exactly the four
  identityd/tpmd units, not on keyd or certd;
- `systemd-analyze condition --root --unit=` evaluates the conditions systemd
  loads for each of those units; systemd evaluates their paths against this
  machine, not the tree, so the same condition, with the tree's prefix, is
  evaluated again by systemd after `tpmidctl config apply --root` (false: the
  units do not start) and after `tpmidctl system restore-aziot --root` (true);
- config apply adds aziot-edged's principal (uid of iotedge, name
  "aziot-edge", no idtype) and writes keyd's principal file for tpmidd's user
  only where the iotedge user exists; restore-aziot removes what apply added.
~10 s."""
import os
import re
import shutil
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import BUILD, Runner, need, program, run, tmpdir  # noqa: E402

need("meson", "systemd-analyze")

HERE = os.path.dirname(os.path.abspath(__file__))
AZIOT_UNITS = os.path.join(HERE, "aziot-units")
MARKER = "/etc/aziot/tpmidd/replaces-aziot"  # daemon/ctl/ctl.h CTL_AZIOT_MARKER
KEYD_DROPIN = "/etc/aziot/keyd/config.d/50-tpmidd.toml"  # CTL_KEYD_DROPIN
CONDITION = "ConditionPathExists=!" + MARKER
REPLACED = ["aziot-identityd.service", "aziot-identityd.socket", "aziot-tpmd.service", "aziot-tpmd.socket"]
UNTOUCHED = ["aziot-keyd.service", "aziot-keyd.socket", "aziot-certd.service", "aziot-certd.socket"]
UIDS = {"aziotks": 9101, "aziotcs": 9102, "aziotid": 9103, "aziottpm": 9104, "iotedge": 9105}

SUPER_CONFIG = """\
[provisioning]
source = "dps"
global_endpoint = "https://global.azure-devices-provisioning.net/"
id_scope = "0ne00000000"

[provisioning.attestation]
method = "tpm"
registration_id = "coexist-device"

[agent]
name = "edgeAgent"
type = "docker"

[agent.config]
image = "mcr.microsoft.com/azureiotedge-agent:1.5"
"""

R = Runner("coexist")
_install = tmpdir("tpmid-coexist-install-")


def _installed():
    """meson install once; each case copies the tree."""
    if not os.listdir(_install):
        run(["meson", "install", "-C", BUILD, "--destdir", _install, "--no-rebuild", "--quiet"], timeout=300)
    return _install


def unitdir(root):
    """The directory the package put tpmidd.service in (Debian: /lib/systemd/system)."""
    for d in ("lib/systemd/system", "usr/lib/systemd/system"):
        if os.path.isfile(os.path.join(root, d, "tpmidd.service")):
            return os.path.join(root, d)
    raise AssertionError("tpmidd.service is not installed under %s" % root)


def make_root(users=("aziotks", "aziotcs", "aziotid", "aziottpm", "iotedge")):
    root = tmpdir("tpmid-coexist-")
    shutil.rmtree(root)
    shutil.copytree(_installed(), root, symlinks=True)
    udir = unitdir(root)
    for f in os.listdir(AZIOT_UNITS):
        shutil.copy(os.path.join(AZIOT_UNITS, f), udir)
    # the distribution's units (targets) where systemd-analyze --root looks for them
    sysdir = os.path.join(root, "usr/lib/systemd/system")
    os.makedirs(sysdir, exist_ok=True)
    for f in os.listdir("/lib/systemd/system"):
        if f.endswith(".target") and not os.path.exists(os.path.join(sysdir, f)):
            shutil.copy("/lib/systemd/system/" + f, sysdir)
    libexec = os.path.join(root, "usr/libexec/aziot-identity-service")
    os.makedirs(libexec)
    for d in ("identityd", "tpmd", "keyd", "certd"):
        p = os.path.join(libexec, "aziot-" + d)
        with open(p, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(p, 0o755)
    etc = os.path.join(root, "etc")
    os.makedirs(os.path.join(etc, "aziot/keyd/config.d"), exist_ok=True)
    with open(os.path.join(etc, "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
        for u in users:
            f.write("%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n" % (u, UIDS[u], UIDS[u]))
    with open(os.path.join(etc, "group"), "w") as f:
        f.write("root:x:0:\n" + "".join("%s:x:%d:\n" % (u, UIDS[u]) for u in users))
    with open(os.path.join(etc, "aziot/config.toml"), "w") as f:
        f.write(SUPER_CONFIG)
    return root


def ctl(*args):
    return run([program("tpmidctl")] + list(args), check=False)


def ok(p, *texts):
    ctx = "rc %d\nstdout:\n%s\nstderr:\n%s" % (p.returncode, p.stdout, p.stderr)
    assert p.returncode == 0, ctx
    for t in texts:
        assert t in p.stdout, ("missing %r" % t, ctx)


def condition_holds(root):
    """systemd's verdict on the drop-ins' condition, its path inside root."""
    p = run(["systemd-analyze", "condition", CONDITION.replace("!/", "!" + root + "/")], check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode == 0


def loaded_conditions(root, unit):
    """The Condition*= lines systemd loads for unit from the tree (its files and drop-ins)."""
    p = run(["systemd-analyze", "condition", "--root=" + root, "--unit=" + unit], check=False)
    assert p.returncode == 0, (unit, p.stdout, p.stderr)
    return re.findall(r"(Condition\w+=\S+) (?:succeeded|failed)", p.stdout + p.stderr)


def principals(path):
    """[[principal]] tables of a TOML file we wrote, as dicts of raw values."""
    out = []
    for block in open(path).read().split("[[principal]]")[1:]:
        d = {}
        for line in block.strip().splitlines():
            if line.startswith("["):
                break
            if "=" in line:
                k, v = line.split("=", 1)
                d[k.strip()] = v.strip()
        out.append(d)
    return out


@R.case
def units_verify_with_dropins():
    """aziot's units plus tpmidd's drop-ins pass systemd-analyze verify; the drop-in is on the
    four identityd/tpmd units only."""
    root = make_root()
    p = run(["systemd-analyze", "verify", "--man=no", "--root=" + root] + REPLACED + UNTOUCHED, check=False)
    assert p.returncode == 0 and not p.stderr.strip(), (p.returncode, p.stdout, p.stderr)
    for u in REPLACED + UNTOUCHED:
        p = run(["systemd-analyze", "cat-config", "--root=" + root, "systemd/system/" + u], check=False)
        assert p.returncode == 0, (u, p.stderr)
        has = ("/%s.d/50-tpmidd.conf" % u) in p.stdout and CONDITION in p.stdout
        assert has == (u in REPLACED), (u, p.stdout)
        assert loaded_conditions(root, u) == ([CONDITION] if u in REPLACED else []), (u, loaded_conditions(root, u))
    # control: verify does read the drop-ins (a bad key in one is reported)
    bad = os.path.join(unitdir(root), "aziot-tpmd.socket.d", "50-tpmidd.conf")
    with open(bad, "a") as f:
        f.write("ConditionNoSuchThing=yes\n")
    p = run(["systemd-analyze", "verify", "--man=no", "--root=" + root, "aziot-tpmd.socket"], check=False)
    assert "ConditionNoSuchThing" in p.stderr, (p.returncode, p.stdout, p.stderr)
    shutil.rmtree(root)


@R.case
def apply_then_restore():
    """config apply --root: the marker (aziot's identityd/tpmd do not start), edged's principal,
    keyd's principal file; restore-aziot --root undoes the marker and keyd file; apply again
    redoes them and a second apply changes nothing."""
    root = make_root()
    assert condition_holds(root), "the condition fails before any apply"
    p = ctl("config", "apply", "--root", root)
    ok(p, MARKER, "aziot-edge", KEYD_DROPIN)
    assert os.path.isfile(root + MARKER) and not condition_holds(root)
    # the daemon's config: edged's principal as iotedge writes it for identityd
    applied = root + "/etc/aziot/tpmidd/config.toml"
    pr = principals(applied)
    assert pr == [{"uid": str(UIDS["iotedge"]), "name": '"aziot-edge"'}], pr
    ok(ctl("config", "check", "-c", applied))
    # keyd's principal for tpmidd's user, as aziotctl writes identityd's
    kd = root + KEYD_DROPIN
    assert stat.S_IMODE(os.stat(kd).st_mode) == 0o600, oct(os.stat(kd).st_mode)
    if os.geteuid() == 0:
        st = os.stat(kd)
        assert (st.st_uid, st.st_gid) == (UIDS["aziotks"], UIDS["aziotks"]), (st.st_uid, st.st_gid)
    assert principals(kd) == [{"uid": str(UIDS["aziottpm"]), "keys": '["aziot_identityd_master_id"]'}], principals(kd)
    assert open(kd).read().startswith("# This file is auto-generated by `tpmidctl config apply`\n")

    p = ctl("system", "restore-aziot", "--root", root)
    ok(p, "Removed " + root + MARKER, "Removed " + kd, "--root given")
    assert condition_holds(root) and not os.path.exists(kd)
    # restore is idempotent
    ok(ctl("system", "restore-aziot", "--root", root))

    ok(ctl("config", "apply", "--root", root), MARKER)
    assert not condition_holds(root) and os.path.isfile(kd)
    p = ctl("config", "apply", "--root", root)
    ok(p, "already up to date", "is up to date")
    assert "Wrote" not in p.stdout, p.stdout
    assert principals(applied) == [{"uid": str(UIDS["iotedge"]), "name": '"aziot-edge"'}]
    shutil.rmtree(root)


@R.case
def without_iotedge():
    """No iotedge user: no principal and no keyd file, but aziot's identityd/tpmd still stand
    down; a keyd file left from an earlier IoT Edge install is removed."""
    root = make_root(users=("aziotks", "aziotcs", "aziotid", "aziottpm"))
    stale = root + KEYD_DROPIN
    with open(stale, "w") as f:
        f.write("[[principal]]\nuid = 1\nkeys = []\n")
    p = ctl("config", "apply", "--root", root)
    ok(p, MARKER, "Removed " + stale)
    assert "aziot-edge" not in p.stdout, p.stdout
    assert principals(root + "/etc/aziot/tpmidd/config.toml") == []
    assert not os.path.exists(stale) and not condition_holds(root)
    shutil.rmtree(root)


@R.case
def keyd_config_dir_created_for_keyd():
    """/etc/aziot/keyd without config.d: apply creates it 0700 and (as root) owned by aziotks, so keyd
    can read the principal file."""
    root = make_root()
    os.rmdir(root + "/etc/aziot/keyd/config.d")
    ok(ctl("config", "apply", "--root", root), KEYD_DROPIN)
    st = os.stat(root + "/etc/aziot/keyd/config.d")
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (UIDS["aziotks"], UIDS["aziotks"]), (st.st_uid, st.st_gid)
    shutil.rmtree(root)


@R.case
def principal_kept_when_configured():
    """A [[principal]] the user wrote for iotedge's uid is kept as written, not duplicated."""
    root = make_root()
    with open(root + "/etc/aziot/config.toml", "a") as f:
        f.write('\n[[principal]]\nuid = %d\nname = "my-edge"\nidtype = ["module"]\n' % UIDS["iotedge"])
    p = ctl("config", "apply", "--root", root)
    ok(p, "keeps the [[principal]]")
    pr = principals(root + "/etc/aziot/tpmidd/config.toml")
    assert pr == [{"uid": str(UIDS["iotedge"]), "name": '"my-edge"', "idtype": '["module"]'}], pr
    shutil.rmtree(root)


try:
    R.main()
finally:
    shutil.rmtree(_install, ignore_errors=True)
