#!/usr/bin/python3
"""Issue 14, items 2 and 5: a wrong clock and a full disk are recovered from.

clock_behind: the daemon runs under libfaketime a day behind while the DPS
simulator (honest Date, refuses expired SAS tokens as DPS does) answers the
second PUT with 401: status says the clock is off by ~86400 s, the state is
never "failed"; once the clock is right again the device provisions without a
reprovision request.
clock_good_unchanged: with a good clock, three refused signatures are still
DPS's verdict ("failed"), and no skew is reported.
disk_full: a tiny tmpfs as the state directory (root only), full: the
identity is served, /status says "identity not persisted"; once space is back
the state file appears without a reprovisioning. A move to a new hub while
full, then space, then a restart: the state file names the new hub."""
import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap")
from daemon import HUB1, HUB2, Device, read_state_file, tpmidctl_path, wait_for  # noqa: E402

R = harness.Runner("clock-disk")

DAY = 86400
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/faketime/libfaketimeMT.so.1")


def faketime_lib():
    for p in FAKETIME_LIBS:
        if os.path.exists(p):
            return p
    return None


class Setup(Device):
    """daemon.Device with a static-policy enrollment on HUB1."""

    def __init__(self, env=None, workdir=None):
        super().__init__(hubs=(HUB1,), policy="static", env=env, workdir=workdir)

    def routes(self, route, since=0):
        return self.sim.requests(route=route, since=since)


@R.case
def clock_behind():
    lib = faketime_lib()
    if not lib:
        harness.skip("libfaketime is not installed (Debian package faketime)")
    work = harness.tmpdir("tpmid-clock-")
    offset = os.path.join(work, "faketime")
    with open(offset, "w") as f:
        f.write("-%d\n" % DAY)
    # Only the daemon's clock is wrong. The HTTPS helper keeps the real one:
    # under a clock a day behind it would (rightly) refuse the simulator's
    # freshly made TLS certificate, and the point here is what DPS answers.
    helper = os.path.join(work, "tpmidd-https")
    with open(helper, "w") as f:
        f.write("#!/bin/sh\nexec env -u LD_PRELOAD -u FAKETIME_TIMESTAMP_FILE %s \"$@\"\n"
                % harness.program("tpmidd-https"))
    os.chmod(helper, 0o755)
    env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": offset, "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "TPMIDD_HTTPS_HELPER": helper}
    # An ASan build refuses a preloaded library ahead of its runtime unless told
    # not to check; libfaketime only wraps the clock calls.
    asan = os.environ.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    with Setup(env=env) as s:
        s.d.start()
        # More refusals than PROV_STALE_CHALLENGE_RUNS (3): never "failed".
        def refused_enough():
            p = s.d.prov()
            assert p["state"] != "failed", p
            return p if len(s.routes("register-auth")) >= 4 and p.get("clockSkewSec") is not None else None
        p = wait_for(refused_enough, 120, step=0.2, what="four refused second PUTs")
        assert abs(p["clockSkewSec"] + DAY) < 120, p
        assert p["state"] in ("backing-off", "registering", "importing-challenge", "authenticating"), p
        assert p["lastResult"] and "the clock is off by -86" in p["lastResult"]["message"], p
        assert all(e["status"] == 401 for e in s.routes("register-auth")), s.routes("register-auth")
        log = s.d.log_since_start()
        assert "the clock is off by -86" in log, log[-3000:]
        # The clock is set right (libfaketime reads the file on every call).
        with open(offset, "w") as f:
            f.write("+0\n")
        since = s.sim.last_seq()
        p = s.d.wait_provisioned(timeout=400)
        assert p["hubName"] == HUB1 and p["clockSkewSec"] is None, p
        assert not s.routes("reprovision", since=since)
        assert read_state_file(s.d.state_file)["hub"] == HUB1


@R.case
def clock_good_unchanged():
    with Setup() as s:
        s.sim.client.fault("register-auth", "status", count=3, status=401)
        s.d.start()
        p = s.d.wait_state("failed", timeout=120)
        assert p["clockSkewSec"] is None and p["persisted"] is True, p
        assert len(s.routes("register-auth")) == 3
        assert "the clock is off" not in s.d.log_since_start()


def check_provisioning(d):
    """`tpmidctl check --json`'s provisioning entry for the daemon d."""
    e = dict(os.environ, TPMIDD_CONFIG=d.config)
    p = subprocess.run([tpmidctl_path(), "check", "--json"], env=e, capture_output=True, text=True, timeout=120)
    doc = json.loads(p.stdout)
    return {r["id"]: r for r in doc["checks"]}["provisioning"]


def mount_tmpfs(path, size):
    harness.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", path])


def fill(path):
    """Fill the file system at path; returns the filler's path."""
    filler = os.path.join(path, "filler")
    subprocess.run(["dd", "if=/dev/zero", "of=" + filler, "bs=4k"], capture_output=True)
    st = os.statvfs(path)
    assert st.f_bavail == 0, st
    return filler


@R.case
def disk_full():
    if os.geteuid() != 0:
        harness.skip("mounting a tmpfs needs root")
    work = harness.tmpdir("tpmid-disk-")
    state = os.path.join(work, "state")
    os.makedirs(state, mode=0o700)
    mount_tmpfs(state, "64k")
    try:
        with Setup(workdir=work) as s:
            assert s.d.state_dir == state
            filler = fill(state)
            s.d.start()
            p = s.d.wait_provisioned()
            wait_for(lambda: s.d.prov()["persisted"] is False, 10, what="persisted false")
            p = s.d.prov()
            assert p["hubName"] == HUB1, p
            assert "identity not persisted" in p["lastResult"]["message"], p
            assert not os.path.exists(s.d.state_file)
            c = check_provisioning(s.d)
            assert c["result"] == "warning" and "identity not persisted" in c["message"], c
            since = s.sim.last_seq()
            os.unlink(filler)
            wait_for(lambda: os.path.exists(s.d.state_file), 30, what="the state file")
            assert read_state_file(s.d.state_file)["hub"] == HUB1
            wait_for(lambda: s.d.prov()["persisted"] is True, 10, what="persisted true")
            c = check_provisioning(s.d)
            assert c["result"] == "ok", c
            assert not s.routes("register-challenge", since=since)  # no new DPS run was needed
            # A move while full: the new hub is served, the file still names the old one ...
            filler = fill(state)
            s.sim.client.move(s.regid, HUB2)
            s.d.reprovision()
            wait_for(lambda: s.d.prov()["hubName"] == HUB2 and s.d.prov()["persisted"] is False, 60,
                     what="HUB2 served, not persisted")
            assert read_state_file(s.d.state_file)["hub"] == HUB1
            # ... until space is back.
            os.unlink(filler)
            wait_for(lambda: read_state_file(s.d.state_file)["hub"] == HUB2, 30, what="the state file names HUB2")
            s.d.restart()
            s.d.wait_provisioned()
            assert s.d.identity()[0] == HUB2
            assert read_state_file(s.d.state_file)["hub"] == HUB2
    finally:
        subprocess.run(["umount", "-l", state], capture_output=True)


if __name__ == "__main__":
    R.main()
