"""`tpmidctl config check` and `tpmidctl config apply`, end to end.

check: exit 0 + "configuration OK" on good files (warnings allowed), exit 3
(CTL_EXIT_CONFIG) with every diagnostic as file:line:col on bad ones.
apply --root DIR: writes DIR/etc/aziot/tpmidd/config.toml atomically, mode
0640, keeps the previous one as .bak, says reload vs restart and why, and on a
broken input writes nothing (the applied file stays byte-identical).
"""
import os
import re
import shutil
import stat
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness  # noqa: E402

CTL = harness.program("tpmidctl")
DATA = os.path.join(harness.SRC, "test", "unit", "data", "config")
EXIT_CONFIG = 3

# A systemctl that records its arguments and answers is-enabled / is-active
# from files, for config apply under TPMIDCTL_ASSUME_SYSTEMD=1 (systemd is not
# PID 1 in the tests).
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$1" in
is-enabled) cat "$FAKE_SYSTEMCTL_DIR/enabled"; [ "$(cat "$FAKE_SYSTEMCTL_DIR/enabled")" = enabled ] ;;
is-active) [ "$(cat "$FAKE_SYSTEMCTL_DIR/active")" = active ] ;;
enable) echo enabled > "$FAKE_SYSTEMCTL_DIR/enabled"; echo active > "$FAKE_SYSTEMCTL_DIR/active" ;;
esac
"""

R = harness.Runner("config-check")

GOOD = """auto_reprovisioning_mode = "Dynamic"
[provisioning]
source = "dps"
global_endpoint = "https://global.azure-devices-provisioning.net"
id_scope = "0ne00A1B2C3"
[provisioning.attestation]
method = "tpm"
registration_id = "my-device"
"""


def ctl(*args, env=None, prefix=()):
    e = dict(os.environ)
    e.pop("TPMIDD_CONFIG", None)
    if env:
        e.update(env)
    # Another user (prefix: setpriv) runs a copy: it may not enter the checkout.
    ctl_path = harness.program_for_user("tpmidctl") if prefix else CTL
    return harness.run(list(prefix) + [ctl_path, "config"] + list(args), check=False, env=e)


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def error_lines(stderr):
    return [int(m.group(1)) for m in re.finditer(r"^[^\n]*?:(\d+):\d+: error: ", stderr, re.M)]


@R.case
def daemon_counts_the_errors_it_printed():
    """tpmidd -c FILE with an unreadable FILE says how many errors it printed above (it once
    said "(0 error(s) above)" right under the error)."""
    p = harness.run([harness.program("tpmidd"), "-c", "/nonexistent/config.toml"], check=False)
    assert p.returncode == 78, (p.returncode, p.stderr)
    assert "cannot read the file" in p.stderr, p.stderr
    assert "(1 error(s) above)" in p.stderr and "(0 error(s)" not in p.stderr, p.stderr


@R.case
def check_good_seed():
    p = ctl("check", "-c", os.path.join(DATA, "seed-fixed.toml"))
    assert p.returncode == 0, p.stderr
    assert "configuration OK" in p.stdout, p.stdout
    assert p.stderr == "", p.stderr


@R.case
def check_warnings_still_ok():
    d = harness.tmpdir()
    try:
        write(os.path.join(d, "config.toml"), GOOD + "[tpm]\ntcit = \"swtpm:port=2321\"\n")
        p = ctl("check", "-c", os.path.join(d, "config.toml"))
        assert p.returncode == 0, p.stderr
        assert "configuration OK (1 warning)" in p.stdout, p.stdout
        assert re.search(r"config\.toml:10:1: warning: .*did you mean tpm\.tcti\?", p.stderr), p.stderr
    finally:
        shutil.rmtree(d)


@R.case
def check_seed_verbatim_explains_the_fix():
    p = ctl("check", "-c", os.path.join(DATA, "seed-verbatim.toml"))
    assert p.returncode == EXIT_CONFIG, (p.returncode, p.stderr)
    assert "seed-verbatim.toml:14:28: error: " in p.stderr, p.stderr
    assert 'write auto_reprovisioning_mode = "Dynamic"' in p.stderr, p.stderr
    assert "above the first [table] header (line 2)" in p.stderr, p.stderr
    assert "DPS_ID_SCOPE_HERE" in p.stderr and "REGISTRATION_ID_HERE" in p.stderr, p.stderr
    assert "3 errors" in p.stderr, p.stderr
    assert p.stdout == "", p.stdout


@R.case
def check_misplaced_mode():
    p = ctl("check", "-c", os.path.join(DATA, "seed-misplaced.toml"))
    assert p.returncode == EXIT_CONFIG, p.stderr
    assert "seed-misplaced.toml:11:1: error: auto_reprovisioning_mode is inside [provisioning.attestation]" in p.stderr
    assert "move it above the first [table] header" in p.stderr, p.stderr


@R.case
def check_ten_mistakes_all_reported():
    p = ctl("check", "-c", os.path.join(DATA, "ten-mistakes.toml"))
    assert p.returncode == EXIT_CONFIG, p.stderr
    assert error_lines(p.stderr) == [2, 3, 4, 5, 6, 10, 12, 15, 18, 21], p.stderr
    assert "10 errors, 1 warning" in p.stderr, p.stderr


@R.case
def check_microsoft_template_tolerated():
    p = ctl("check", "-c", os.path.join(DATA, "ms-edge-full.toml"))
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr and "error" not in p.stderr, p.stderr
    assert "note: agent is a Microsoft setting that is ignored by tpmidd" in p.stderr, p.stderr


@R.case
def check_dropin_error_points_at_dropin():
    p = ctl("check", "-c", os.path.join(DATA, "dropin-bad", "config.toml"))
    assert p.returncode == EXIT_CONFIG, p.stderr
    assert "config.d/50-bad.toml:4:1: error: limits.max_body_bytes = 10 is out of range" in p.stderr, p.stderr


@R.case
def check_env_and_missing_file():
    p = ctl("check", env={"TPMIDD_CONFIG": os.path.join(DATA, "seed-fixed.toml")})
    assert p.returncode == 0 and "seed-fixed.toml: configuration OK" in p.stdout, (p.stdout, p.stderr)
    p = ctl("check", "-c", "/nonexistent/config.toml")
    assert p.returncode == EXIT_CONFIG, p.stderr
    assert "/nonexistent/config.toml: error: cannot read the file: No such file or directory" in p.stderr, p.stderr


@R.case
def check_payload_file():
    d = harness.tmpdir()
    try:
        cfg = os.path.join(d, "config.toml")
        body = GOOD.replace('id_scope = "0ne00A1B2C3"\n',
                            'id_scope = "0ne00A1B2C3"\npayload = { uri = "file://%s/payload.json" }\n' % d)
        write(cfg, body)
        p = ctl("check", "-c", cfg)
        assert p.returncode == EXIT_CONFIG and ":6:" in p.stderr and "cannot read the DPS payload file" in p.stderr, \
            p.stderr
        write(os.path.join(d, "payload.json"), "{not json")
        p = ctl("check", "-c", cfg)
        assert p.returncode == EXIT_CONFIG and "is not JSON" in p.stderr, p.stderr
        write(os.path.join(d, "payload.json"), '{"modelId": "dtmi:x;1"}')
        p = ctl("check", "-c", cfg)
        assert p.returncode == 0, p.stderr
    finally:
        shutil.rmtree(d)


@R.case
def usage_errors():
    assert ctl("frobnicate").returncode == 2
    assert ctl("check", "--bogus").returncode == 2
    assert ctl("check", "extra-arg").returncode == 2
    assert ctl("apply", "--root", "relative").returncode == 2
    assert ctl("--help").returncode == 0


def applied(root):
    return os.path.join(root, "etc", "aziot", "tpmidd", "config.toml")


def no_temp_files(root):
    dd = os.path.dirname(applied(root))
    left = [f for f in os.listdir(dd) if ".tmp." in f] if os.path.isdir(dd) else []
    assert not left, left


@R.case
def apply_root_writes_atomically_with_mode():
    root = harness.tmpdir()
    try:
        write(os.path.join(root, "etc", "aziot", "config.toml"), GOOD)
        p = ctl("apply", "--root", root)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "tpmidd has been configured successfully!" in p.stdout, p.stdout
        assert "No previous configuration" in p.stdout, p.stdout
        out = applied(root)
        st = os.stat(out)
        assert stat.S_IMODE(st.st_mode) == 0o640, oct(st.st_mode)
        text = open(out).read()
        assert text.startswith("# This file is auto-generated by `tpmidctl config apply`"), text[:200]
        assert 'global_endpoint = "https://global.azure-devices-provisioning.net/"' in text, text
        assert not os.path.exists(out + ".bak")
        no_temp_files(root)
        # the daemon's copy is itself a valid config
        p = ctl("check", "-c", out)
        assert p.returncode == 0, p.stderr
        # same input again: nothing to do
        p = ctl("apply", "--root", root)
        assert p.returncode == 0 and "already up to date" in p.stdout, p.stdout
    finally:
        shutil.rmtree(root)


@R.case
def apply_reload_vs_restart_and_backup():
    root = harness.tmpdir()
    try:
        src = os.path.join(root, "etc", "aziot", "config.toml")
        write(src, GOOD)
        assert ctl("apply", "--root", root).returncode == 0
        first = open(applied(root)).read()

        write(src, 'log_level = "debug"\n' + GOOD)
        p = ctl("apply", "--root", root)
        assert p.returncode == 0, p.stderr
        assert "Changed: log_level." in p.stdout and "reload is enough" in p.stdout, p.stdout
        assert open(applied(root) + ".bak").read() == first
        assert stat.S_IMODE(os.stat(applied(root) + ".bak").st_mode) == 0o640

        # the provisioning settings are reloadable (tpmidd(8), SIGHUP): a DPS run, no restart
        write(src, 'log_level = "debug"\n' + GOOD.replace("0ne00A1B2C3", "0ne00FFFFFF"))
        p = ctl("apply", "--root", root)
        assert p.returncode == 0, p.stderr
        assert "Changed: provisioning.id_scope." in p.stdout and "reload is enough" in p.stdout, p.stdout

        write(src, 'log_level = "debug"\ncloud_timeout_sec = 30\n' + GOOD.replace("0ne00A1B2C3", "0ne00FFFFFF"))
        p = ctl("apply", "--root", root)
        assert p.returncode == 0, p.stderr
        assert "Changed: cloud_timeout_sec." in p.stdout and "needs a restart" in p.stdout, p.stdout
        assert "--root given: not touching the running service" in p.stdout, p.stdout
        no_temp_files(root)
    finally:
        shutil.rmtree(root)


@R.case
def apply_enables_and_starts_the_first_time():
    """With systemd (a fake systemctl): the first apply runs `systemctl enable --now
    tpmidd.service` and says so; a later reloadable change reloads the running service; a
    restart-level change restarts it; --root and --no-reload run no systemctl."""
    d = harness.tmpdir()
    try:
        bindir = os.path.join(d, "bin")
        write(os.path.join(bindir, "systemctl"), FAKE_SYSTEMCTL, mode=0o755)
        log = os.path.join(d, "systemctl.log")
        write(os.path.join(d, "enabled"), "disabled\n")
        write(os.path.join(d, "active"), "inactive\n")
        env = {"PATH": bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"), "TPMIDCTL_ASSUME_SYSTEMD": "1",
               "FAKE_SYSTEMCTL_LOG": log, "FAKE_SYSTEMCTL_DIR": d}
        # sockets where nothing listens: no foreground tpmidd to find
        endpoints = '[endpoints]\naziot_tpmd = "unix://%s/tpmd.sock"\naziot_identityd = "unix://%s/id.sock"\n' % (d, d)
        cfg, out = os.path.join(d, "config.toml"), os.path.join(d, "applied", "config.toml")
        write(cfg, GOOD + endpoints)
        p = ctl("apply", "-c", cfg, "-o", out, env=env)
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        assert "Running: systemctl enable --now tpmidd.service" in p.stdout, p.stdout
        assert "Enabled and started tpmidd.service." in p.stdout, p.stdout
        calls = open(log).read().splitlines()
        assert "enable --now tpmidd.service" in calls, calls

        open(log, "w").close()
        write(cfg, 'log_level = "debug"\n' + GOOD + endpoints)
        p = ctl("apply", "-c", cfg, "-o", out, env=env)
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        assert "Running: systemctl reload tpmidd.service" in p.stdout, p.stdout
        assert "reload tpmidd.service" in open(log).read().splitlines(), open(log).read()

        open(log, "w").close()
        write(cfg, 'log_level = "debug"\ncloud_timeout_sec = 30\n' + GOOD + endpoints)
        p = ctl("apply", "-c", cfg, "-o", out, env=env)
        assert p.returncode == 0 and "systemctl restart tpmidd.service" in p.stdout, p.stdout
        assert "restart tpmidd.service" in open(log).read().splitlines()

        # a failing systemctl is an error, with the configuration installed
        write(os.path.join(bindir, "systemctl"), FAKE_SYSTEMCTL.replace("esac", "esac\n[ \"$1\" = reload ] && exit 1\ntrue"),
              mode=0o755)
        write(cfg, 'log_level = "info"\ncloud_timeout_sec = 30\n' + GOOD + endpoints)
        p = ctl("apply", "-c", cfg, "-o", out, env=env)
        assert p.returncode == 1 and "failed" in p.stderr and "installed" in p.stderr, (p.stdout, p.stderr)

        open(log, "w").close()
        root = os.path.join(d, "root")
        write(os.path.join(root, "etc", "aziot", "config.toml"), GOOD)
        assert ctl("apply", "--root", root, env=env).returncode == 0
        write(cfg, 'log_level = "warn"\n' + GOOD + endpoints)
        p = ctl("apply", "-c", cfg, "-o", out, "--no-reload", env=env)
        assert p.returncode == 0 and "--no-reload given" in p.stdout, p.stdout
        assert open(log).read() == "", open(log).read()
    finally:
        shutil.rmtree(d)


@R.case
def apply_reloads_a_foreground_daemon():
    """tpmidd running outside systemd (found by the pid behind its socket): apply sends it
    SIGHUP and the daemon reloads; without systemd and without a daemon apply says so."""
    harness.need("swtpm", "swtpm_setup", "swtpm_ioctl", "setpriv")
    from daemon import Daemon, Sim  # noqa: E402
    with harness.Swtpm() as tpm, Sim() as sim:
        with Daemon(tpm, sim) as dm:
            src = os.path.join(dm.dir, "user-config.toml")
            text = open(dm.config).read()
            assert 'log_level = "debug"' in text, text
            write(src, text.replace('log_level = "debug"', 'log_level = "info"'))
            mark = os.path.getsize(dm.log)
            p = ctl("apply", "-c", src, "-o", dm.config)
            assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
            assert "Reloaded tpmidd (pid %d, running outside systemd) with SIGHUP." % dm.proc.pid in p.stdout \
                or "Reloaded tpmidd (pid" in p.stdout, p.stdout
            assert "will take effect when tpmidd starts" not in p.stdout, p.stdout
            deadline = time.time() + 20
            while time.time() < deadline:
                with open(dm.log, "rb") as f:
                    f.seek(mark)
                    if b"reloaded" in f.read():
                        break
                time.sleep(0.2)
            else:
                raise AssertionError("tpmidd did not reload: " + open(dm.log).read()[-2000:])
            # another file than the daemon reads: not signalled
            other = os.path.join(dm.dir, "other.toml")
            write(src, text)
            p = ctl("apply", "-c", src, "-o", other)
            assert p.returncode == 0 and "not reloading it" in p.stdout, p.stdout
    if not os.path.exists("/run/systemd/system"):
        d = harness.tmpdir()
        try:
            cfg = os.path.join(d, "config.toml")
            write(cfg, GOOD + '[endpoints]\naziot_tpmd = "unix://%s/t.sock"\n' % d)
            p = ctl("apply", "-c", cfg, "-o", os.path.join(d, "out.toml"))
            assert p.returncode == 0 and "systemd is not running here and no tpmidd listens" in p.stdout, p.stdout
        finally:
            shutil.rmtree(d)


@R.case
def apply_rejects_broken_config_without_touching_applied():
    root = harness.tmpdir()
    try:
        src = os.path.join(root, "etc", "aziot", "config.toml")
        write(src, GOOD)
        assert ctl("apply", "--root", root).returncode == 0
        before = open(applied(root), "rb").read()
        st0 = os.stat(applied(root))

        shutil.copy(os.path.join(DATA, "ten-mistakes.toml"), src)
        p = ctl("apply", "--root", root)
        assert p.returncode == EXIT_CONFIG, (p.returncode, p.stdout, p.stderr)
        assert error_lines(p.stderr) == [2, 3, 4, 5, 6, 10, 12, 15, 18, 21], p.stderr
        assert "nothing was written" in p.stderr, p.stderr
        assert "configured successfully" not in p.stdout
        st1 = os.stat(applied(root))
        assert open(applied(root), "rb").read() == before
        assert (st0.st_ino, st0.st_mtime_ns) == (st1.st_ino, st1.st_mtime_ns)
        assert not os.path.exists(applied(root) + ".bak")
        no_temp_files(root)
    finally:
        shutil.rmtree(root)


@R.case
def apply_refuses_unprivileged():
    prefix = harness._unpriv_prefix()  # setpriv to nobody when we are root
    d = harness.tmpdir()
    try:
        cfg = os.path.join(d, "config.toml")
        write(cfg, GOOD)
        p = ctl("apply", "-c", cfg, prefix=prefix)
        assert p.returncode == 6, (p.returncode, p.stdout, p.stderr)  # CTL_EXIT_PERMISSION
        assert "must be run as root" in p.stderr, p.stderr
        # an -o it can write is allowed (tests, images)
        out_dir = os.path.join(d, "out")
        os.makedirs(out_dir)
        harness._chown_nobody(d)
        p = ctl("apply", "-c", cfg, "-o", os.path.join(out_dir, "config.toml"), "--no-reload", prefix=prefix)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "--no-reload given" in p.stdout, p.stdout
        assert stat.S_IMODE(os.stat(os.path.join(out_dir, "config.toml")).st_mode) == 0o640
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    if not os.path.exists(CTL):
        print("SKIP: %s not built" % CTL)
        sys.exit(harness.SKIP)
    R.main()
