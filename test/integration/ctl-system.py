#!/usr/bin/python3
"""tpmidctl system status|logs|reprovision, identity show|token and tpm info
(through the daemon) against swtpm + the DPS/IoT Hub simulator + tpmidd.

tpmidctl finds the test daemon's sockets the way the daemon finds its
configuration: $TPMIDD_CONFIG ([endpoints] aziot_tpmd / aziot_identityd).
systemd is not PID 1 here: status must say so and still show the daemon."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_getcap", "setpriv")
from daemon import (HUB1, HUB2, ID_API, Daemon, Device, Sim, hub_get, offline_config, tamper,  # noqa: E402
                    tpm_info, tpmidctl_path, wait_for)

R = harness.Runner("ctl-system")

# tpmidctl(1), EXIT STATUS: one table for every verb
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG, EXIT_NOTPM, EXIT_DAEMON = 0, 1, 2, 3, 4, 5
EXIT_PERMISSION, EXIT_UNAVAILABLE, EXIT_PROVISIONING = 6, 7, 8


def ctl(*args, env=None, timeout=200):
    """Run tpmidctl; returns CompletedProcess (text). env: extra variables."""
    e = dict(os.environ)
    for k in ("TPMIDD_CONFIG", "TPMIDD_CLOUD_CONNECT_TO", "NOTIFY_SOCKET"):
        e.pop(k, None)
    e["TSS2_LOG"] = "all+none"
    e.update(env or {})
    return subprocess.run([tpmidctl_path()] + list(args), env=e, capture_output=True, text=True, timeout=timeout)


def expect(p, rc, *texts, stream="stdout"):
    """p exited rc and its stream contains every text."""
    out = p.stdout if stream == "stdout" else p.stderr
    ctx = "rc %d (want %d)\nstdout:\n%s\nstderr:\n%s" % (p.returncode, rc, p.stdout, p.stderr)
    assert p.returncode == rc, ctx
    for t in texts:
        assert t in out, ("missing %r in %s" % (t, stream), ctx)


def denv(d):
    return {"TPMIDD_CONFIG": d.config}


def status_fields(text):
    """'    Key:   value' lines of system status -> {key: value}."""
    f = {}
    for line in text.splitlines():
        if line.startswith("    ") and ":" in line:
            k, v = line.strip().split(":", 1)
            f[k.strip()] = v.strip()
    return f


@R.case
def help_and_usage():
    """Every verb's --help exits 0 on stdout; unknown verbs and stray arguments exit 2."""
    helps = [["--help"], ["system", "--help"], ["system", "status", "--help"], ["system", "logs", "--help"],
             ["system", "reprovision", "--help"], ["system", "restart", "--help"], ["system", "stop", "--help"],
             ["identity", "--help"], ["identity", "show", "--help"], ["identity", "token", "--help"],
             ["check", "--help"], ["tpm", "info", "--help"], ["support-bundle", "--help"]]
    for a in helps:
        p = ctl(*a)
        assert p.returncode == 0 and "Usage: tpmidctl" in p.stdout, (a, p.returncode, p.stdout, p.stderr)
    bad = [["bogus"], ["system", "bogus"], ["system"], ["identity", "bogus"], ["identity"],
           ["system", "status", "extra"], ["system", "reprovision", "extra"], ["system", "logs", "-f"],
           ["identity", "token", "--lifetime", "5"], ["identity", "token", "--lifetime", "x"],
           ["identity", "show", "--lifetime", "600"], ["check", "--bogus"], ["check", "extra"], [],
           ["system", "status", "--bogus"], ["support-bundle", "extra"], ["check", "-o", "xml"]]
    for a in bad:
        p = ctl(*a)
        assert p.returncode == EXIT_USAGE, (a, p.returncode, p.stdout, p.stderr)
        assert p.stderr.strip(), ("no message for a usage error", a)


@R.case
def no_daemon():
    """Nothing listens on the configured sockets: one clear sentence, exit 5 (daemon unreachable)."""
    d = harness.tmpdir("tpmid-ctl-nodaemon-")
    try:
        env = {"TPMIDD_CONFIG": offline_config(d)}
        sock = os.path.join(d, "identityd.sock")
        p = ctl("system", "status", env=env)
        expect(p, EXIT_DAEMON, "systemd is not running")
        expect(p, EXIT_DAEMON, sock, "tpmidd is not running", stream="stderr")
        j = json.loads(ctl("system", "status", "--json", env=env).stdout)
        assert j["schemaVersion"] == 1 and j["daemon"] is None and "not running" in j["error"], j
        assert j["exitCode"] == EXIT_DAEMON, j
        for a in (["identity", "show"], ["identity", "token"]):
            expect(ctl(*a, env=env), EXIT_DAEMON, sock, "tpmidd is not running", stream="stderr")
        expect(ctl("system", "reprovision", env=env), EXIT_DAEMON, "Failed to reprovision", "tpmidd is not running",
               stream="stderr")
        if not os.path.exists("/run/systemd/system"):
            for verb in ("restart", "stop"):
                expect(ctl("system", verb, env=env), EXIT_FAILURE, "systemd is not running", stream="stderr")
        # no daemon and no TPM device here: tpm info falls back to the TPM and says it is missing
        p = ctl("tpm", "info", env=env)
        assert p.returncode != 0 and p.stderr.strip(), (p.returncode, p.stdout, p.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@R.case
def logs_without_journal():
    """journalctl missing, or no journal on this system: a clear sentence and exit 1, never a
    silent '-- No entries --'."""
    empty = harness.tmpdir("tpmid-ctl-path-")
    try:
        p = ctl("system", "logs", env={"PATH": empty})
        expect(p, EXIT_FAILURE, "journalctl is not installed", stream="stderr")
    finally:
        os.rmdir(empty)
    p = ctl("system", "logs")
    if not os.path.exists("/run/systemd/system"):
        # journal files may lie around (/var/log/journal), but no journald writes them here
        expect(p, EXIT_FAILURE, "systemd is not running", "no journal of tpmidd", "standard error",
               stream="stderr")
        assert "No entries" not in p.stdout + p.stderr, p
        expect(ctl("system", "logs", "--", "-n", "5"), EXIT_FAILURE, "systemd is not running", stream="stderr")
    elif not (os.path.exists("/run/log/journal") or os.path.exists("/var/log/journal")):
        expect(p, EXIT_FAILURE, "no systemd journal", "/run/log/journal", stream="stderr")
    else:  # a journal exists: journalctl runs (the unit may have no entries)
        assert p.returncode == 0, (p.returncode, p.stderr)


@R.case
def provisioned_device():
    """status/identity/token/tpm info/reprovision against a provisioned daemon."""
    with Device(device_id="ctl-dev-1") as s:
        # s.info: tpmidctl tpm info --tcti, run before the daemon started
        s.provision()
        sim, d, regid, info = s.sim, s.d, s.regid, s.info
        env = denv(d)
        p = ctl("system", "status", env=env)
        expect(p, EXIT_OK, "systemd is not running on this system (not PID 1)")
        f = status_fields(p.stdout)
        assert f.get("Provisioning") == "provisioned", (f, p.stdout)
        assert f.get("IoT Hub") == HUB1 and f.get("Device ID") == "ctl-dev-1", f
        assert f.get("Registration ID") == regid, f
        assert f.get("TPM") == "ready", f
        assert f.get("Last DPS result", "").startswith("assigned"), f
        assert "Next DPS attempt" not in f, f
        p = ctl("system", "status", "--json", env=env)
        expect(p, EXIT_OK)
        j = json.loads(p.stdout)
        assert j["schemaVersion"] == 1 and j["exitCode"] == 0 and j["error"] is None, j
        assert j["daemon"]["provisioning"]["state"] == "provisioned", j
        assert j["systemd"] == os.path.exists("/run/systemd/system"), j

        p = ctl("identity", "show", env=env)
        expect(p, EXIT_OK, "IoT Hub:       " + HUB1, "Device ID:     ctl-dev-1", "Auth:          tpm")
        j = json.loads(ctl("identity", "show", "--json", env=env).stdout)
        assert j["spec"]["hubName"] == HUB1 and j["spec"]["deviceId"] == "ctl-dev-1", j

        p = ctl("identity", "token", "--lifetime", "600", env=env)
        expect(p, EXIT_OK)
        tok = p.stdout.strip()
        assert tok.startswith("SharedAccessSignature ") and "\n" not in tok, p.stdout
        assert "ctl-dev-1" in p.stderr and HUB1 in p.stderr, p.stderr
        st, body = hub_get(sim, HUB1, "ctl-dev-1", tok)
        assert st == 200, ("the hub refused tpmidctl's token", st, body[:300])
        assert hub_get(sim, HUB1, "ctl-dev-1", tamper(tok))[0] == 401

        # tpm info without --tcti asks the daemon: same registration id and EK
        p = ctl("tpm", "info", "--json", env=env)
        expect(p, EXIT_OK)
        j = json.loads(p.stdout)
        assert j["registration_id"] == regid, (j, regid)
        assert j["endorsement_key"] == json.loads(info["text"])["endorsement_key"]
        p = ctl("tpm", "info", env=env)
        expect(p, EXIT_OK, regid, json.loads(info["text"])["endorsement_key"])

        # reprovision: shows the states it sees while DPS is slow, then the outcome;
        # a new registration reaches DPS
        sim.client.update(regid, iotHubs=[HUB2])
        seq = sim.last_seq()
        sim.client.fault("register-challenge", "stall", count=1, seconds=3)
        p = ctl("system", "reprovision", env=env)
        expect(p, EXIT_OK, "Reprovisioned", "ctl-dev-1", HUB2, "\n    registering\n")
        assert p.stdout.index("registering") < p.stdout.index("Reprovisioned"), p.stdout
        routes = [e["route"] for e in sim.requests(since=seq)]
        assert "register-challenge" in routes or "register-auth" in routes, routes
        assert d.prov()["hubName"] == HUB2
        f = status_fields(ctl("system", "status", env=env).stdout)
        assert f.get("IoT Hub") == HUB2, f


@R.case
def enrollment_missing_then_disabled():
    """Missing enrollment: status shows the DPS error and what to do. Disabled enrollment:
    reprovision fails with DPS's reason and exit 1; once enabled it succeeds."""
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        regid = info["registration_id"]
        with Daemon(tpm, sim) as d:
            d.wait_state("failed")
            env = denv(d)
            p = ctl("system", "status", env=env)
            # provisioning failed: exit 8, DPS's result and what to do
            expect(p, EXIT_PROVISIONING, "Enrollment not found", "404201", "tpmidctl system reprovision",
                   "no enrollment for this registration id")
            f = status_fields(p.stdout)
            assert f.get("Provisioning") == "failed" and f.get("IoT Hub") == "(none yet)", f
            assert f.get("Device ID") == "(none yet)" and f.get("Registration ID") == regid, f
            j = json.loads(ctl("system", "status", "--json", env=env).stdout)
            assert j["exitCode"] == EXIT_PROVISIONING and j["daemon"]["provisioning"]["state"] == "failed", j
            # the daemon's 503 (no identity yet) is 7 in every verb
            p = ctl("identity", "show", env=env)
            expect(p, EXIT_UNAVAILABLE, "503", "Enrollment not found", stream="stderr")
            expect(ctl("identity", "token", env=env), EXIT_UNAVAILABLE, "503", stream="stderr")

            sim.client.enroll(regid, info["ek"], hubs=[HUB1], enabled=False)
            seq = sim.last_seq()
            p = ctl("system", "reprovision", env=env)
            expect(p, EXIT_PROVISIONING, "Failed to reprovision", "the enrollment is disabled",
                   "Enrollment is disabled", "enable the enrollment", stream="stderr")
            assert [e["route"] for e in sim.requests(since=seq)] == ["register-challenge"]
            # the daemon's log names the disabled enrollment, not a refused attestation
            log = d.log_since_start()
            assert "the enrollment is disabled in DPS" in log and "refused the TPM attestation" not in log, log
            p = ctl("system", "status", env=env)
            expect(p, EXIT_PROVISIONING, "Enrollment is disabled", "401002", "the enrollment is disabled")

            sim.client.enable(regid)
            p = ctl("system", "reprovision", env=env)
            expect(p, EXIT_OK, "Reprovisioned", HUB1)
            expect(ctl("system", "status", env=env), EXIT_OK)


FAKE_SYSTEMCTL = """#!/bin/sh
# show --property=LoadState --value UNIT | is-active UNIT, answered from $FAKE_UNITS/UNIT
for last; do :; done
case "$1" in
show) echo loaded ;;
is-active) cat "$FAKE_UNITS/$last"; [ "$(cat "$FAKE_UNITS/$last")" = active ] ;;
esac
"""


@R.case
def status_units_with_systemd():
    """Under systemd (a stand-in systemctl): every unit active and a provisioned daemon exit 0;
    a failed service is 'Down - failed' with its journal and exit 1; --json says the same."""
    with Device() as s:
        s.provision()
        d = s.d
        units = os.path.join(d.dir, "units")
        bindir = os.path.join(d.dir, "bin")
        os.makedirs(units)
        os.makedirs(bindir)
        for name, text in (("systemctl", FAKE_SYSTEMCTL),
                           ("journalctl", "#!/bin/sh\necho \"journal of $*\"\n")):
            with open(os.path.join(bindir, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(bindir, name), 0o755)
        for u in ("tpmidd.service", "tpmidd-tpmd.socket", "tpmidd-identityd.socket"):
            with open(os.path.join(units, u), "w") as f:
                f.write("active\n")
        env = dict(denv(d), PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"),
                   TPMIDCTL_ASSUME_SYSTEMD="1", FAKE_UNITS=units)
        p = ctl("system", "status", env=env)
        expect(p, EXIT_OK, "tpmidd.service", "Running", "Listening", "provisioned")
        with open(os.path.join(units, "tpmidd.service"), "w") as f:
            f.write("failed\n")
        p = ctl("system", "status", env=env)
        expect(p, EXIT_FAILURE, "Down - failed", "journal of -u tpmidd.service")
        j = json.loads(ctl("system", "status", "--json", env=env).stdout)
        assert j["systemd"] is True and j["exitCode"] == EXIT_FAILURE, j
        assert j["units"]["tpmidd.service"]["healthy"] is False, j
        assert j["units"]["tpmidd-tpmd.socket"]["state"] == "Listening", j


@R.case
def set_log_level_runtime():
    """system set-log-level: the running daemon's level changes through its socket, a reload
    that leaves log_level alone keeps it, one that changes log_level replaces it; a bad level
    is a usage error in the CLI and 422 from the daemon."""
    with harness.Swtpm() as tpm, Sim() as sim:
        with Daemon(tpm, sim, log_level="debug") as d:
            env = denv(d)
            expect(ctl("system", "set-log-level", "loud", env=env), EXIT_USAGE, "unknown level", stream="stderr")
            expect(ctl("system", "set-log-level", env=env), EXIT_USAGE, "Usage", stream="stderr")
            mark = len(d.log_since_start())
            expect(ctl("system", "set-log-level", "warn", env=env), EXIT_OK, "level warn")
            log = d.log_since_start()[mark:]
            # control: at debug the daemon logs each connection, so its absence below means something
            assert "connection from uid" in log and "log level set to warn by uid %d" % os.getuid() in log, log
            mark = len(d.log_since_start())
            assert d.request("GET", "/status?" + ID_API).status == 200
            d.proc.send_signal(signal.SIGHUP)  # log_level unchanged: the runtime level stays
            time.sleep(1.5)
            d.check_alive()
            assert d.request("GET", "/status?" + ID_API).status == 200
            log = d.log_since_start()[mark:]
            assert "connection from uid" not in log and "reloaded " not in log, log
            d.write_config(log_level="info")  # log_level changed: the file's level wins
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded " in d.log_since_start()[mark:], 10, what="the reload at info")
            r = d.request("PUT", "/log_level?" + ID_API, body=b'{"level":"loud"}')
            assert r.status == 422 and "error, warn, info, debug, trace" in r.message, r
            r = d.request("PUT", "/log_level?" + ID_API, body=b'{"level":"debug"}')
            assert r.status == 200 and r.json == {"level": "debug"}, r


@R.case
def tpm_unavailable_exit_codes():
    """The TPM gone under a running daemon: system status exits 4 (TPM unavailable); the
    daemon's 503 maps to 7 in tpm info and identity show alike."""
    with harness.Swtpm() as tpm, Sim() as sim:
        tpm_info(tpm)
        tpm.stop()
        with Daemon(tpm, sim) as d:
            env = denv(d)
            p = ctl("system", "status", env=env)
            expect(p, EXIT_NOTPM)
            f = status_fields(p.stdout)
            assert f.get("TPM", "").startswith("unavailable"), (f, p.stdout)
            assert json.loads(ctl("system", "status", "--json", env=env).stdout)["exitCode"] == EXIT_NOTPM
            codes = {}
            for a in (["tpm", "info"], ["identity", "show"]):
                p = ctl(*a, env=env)
                codes[a[0]] = p.returncode
                assert "503" in p.stderr, (a, p.returncode, p.stderr)
            assert codes == {"tpm": EXIT_UNAVAILABLE, "identity": EXIT_UNAVAILABLE}, codes


@R.case
def reprovision_throttled():
    """DPS throttles the registration: reprovision says so with the wait, then the outcome."""
    with Device() as s:
        s.provision()
        sim, d = s.sim, s.d
        sim.client.fault("register-challenge", "throttle", count=1, retryAfter=4)
        p = ctl("system", "reprovision", env=denv(d))
        # tpmidd answers 503 at once and retries on its own; tpmidctl keeps watching
        expect(p, EXIT_OK, "throttled by DPS: next try in", "Reprovisioned", HUB1)
        assert p.stdout.index("throttled") < p.stdout.index("Reprovisioned"), p.stdout


@R.case
def reprovision_ctrl_c_leaves_the_run():
    """Ctrl-C during reprovision stops watching (exit 130, says so); the daemon's run goes on
    and ends assigned."""
    import signal
    import time
    with Device() as s:
        s.provision()
        sim, d, regid = s.sim, s.d, s.regid
        sim.client.update(regid, iotHubs=[HUB2])
        sim.client.fault("register-challenge", "stall", count=1, seconds=4)
        e = dict(os.environ, TPMIDD_CONFIG=d.config, TSS2_LOG="all+none")
        p = subprocess.Popen([tpmidctl_path(), "system", "reprovision"], env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 130, (p.returncode, out, err)
        assert "Stopped watching" in err and "carries on" in err, err
        deadline = time.time() + 60
        while time.time() < deadline and d.prov().get("hubName") != HUB2:
            time.sleep(0.5)
        assert d.prov().get("hubName") == HUB2, d.prov()


if __name__ == "__main__":
    R.main()
