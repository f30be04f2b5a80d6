#!/usr/bin/python3
"""tpmidd's HTTPS runs in the helper tpmidd-https (daemon/tpmidd/cloud.c,
daemon/https/https-helper.c). Checked here, with swtpm + the DPS simulator.

The helper as tpmidd's child (no TPMIDD_HTTPS_SOCKET: foreground, tests, demo):
- the helper is killed while a DPS request is in flight: the daemon logs a
  clear error naming the signal, retries with its backoff on a new helper and
  ends up assigned;
- once idle (TPMIDD_HTTPS_IDLE_SEC) the helper exits, the daemon has no child
  and never had libcurl mapped; the next request (a reprovisioning) starts a
  new helper;
- the daemon's SIGTERM leaves no helper behind;
- a missing helper binary and a helper that talks garbage are reported and
  retried, and the daemon keeps serving;
- a helper that never answers is given up on (killed) after the request's
  timeout plus CLOUD_HELPER_GRACE_MS, and the request is retried.

The helper socket-activated (TPMIDD_HTTPS_SOCKET, as tpmidd.service sets it):
an Activator here does what systemd does for units/tpmidd-https.socket, it
holds the listening socket and starts the helper with it (LISTEN_FDS=1, fd 3)
whenever a connection waits and no helper runs;
- a provisioning works through it, the daemon starts no process, one helper
  serves the daemon's successive connections, exits when it has had none for
  its idle time and is started again by the next one;
- the helper killed under a request in flight, and then no helper socket at
  all: clear errors, retries, and assigned once the socket is back;
- a helper socket where nobody answers: the daemon gives up on the
  connection after the request's timeout plus the grace, and retries."""
import contextlib
import glob
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_readpublic", "tpm2_getcap", "setpriv")
from daemon import HUB1, Daemon, Sim, tpm_info, wait_for  # noqa: E402

R = harness.Runner("https-helper")
IDLE_SEC = 2          # TPMIDD_HTTPS_IDLE_SEC for these tests
STALL_SEC = 6         # how long the simulator holds the request we kill the helper under
GRACE_SEC = 5         # CLOUD_HELPER_GRACE_MS in daemon/tpmidd/cloud.c


def children(pid):
    """Pids of pid's children (any thread's)."""
    out = []
    for f in glob.glob("/proc/%d/task/*/children" % pid):
        try:
            with open(f) as fh:
                out += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return out


def helpers(d):
    """The daemon's tpmidd-https children, zombies included: a helper that has
    exited but is not reaped yet still counts (its cmdline is empty then, so
    the name comes from /proc/PID/stat)."""
    out = []
    for c in children(d.proc.pid):
        try:
            with open("/proc/%d/stat" % c) as f:
                comm = f.read().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        if comm == "tpmidd-https":
            out.append(c)
    return out


def maps(pid):
    with open("/proc/%d/maps" % pid) as f:
        return f.read()


def script(dirname, name, body):
    """Write an executable /bin/sh script dirname/name (the lines after #!); returns its path."""
    path = os.path.join(dirname, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, stat.S_IRWXU)
    return path


def enrolled(tpm, sim):
    info = tpm_info(tpm)
    regid = info["registration_id"]
    sim.client.enroll(regid, info["ek"], hubs=[HUB1])
    return regid


@R.case
def helper_killed_in_flight():
    """SIGKILL to the helper during the first DPS request: clear error, retry, assigned."""
    with harness.Swtpm() as tpm, Sim() as sim:
        regid = enrolled(tpm, sim)
        sim.client.fault("register-challenge", "stall", count=1, seconds=STALL_SEC)
        with Daemon(tpm, sim, env={"TPMIDD_HTTPS_IDLE_SEC": str(IDLE_SEC)}) as d:
            assert "libcurl" not in maps(d.proc.pid), "tpmidd maps libcurl"
            # the first request is in flight: the daemon sent it, the simulator holds it
            pids = wait_for(lambda: helpers(d), 15, what="the helper process")
            assert len(pids) == 1, pids
            wait_for(lambda: "with DPS (scope" in d.log_since_start(), 15, what="the first DPS request")
            time.sleep(1.0)
            assert sim.requests("register-challenge") == [], "the stalled request was answered early"
            victim = pids[0]
            assert "libcurl" in maps(victim), "the helper does not map libcurl?"
            os.kill(victim, signal.SIGKILL)
            t_kill = time.time()
            p = d.wait_provisioned(timeout=60)
            assert (p["hubName"], p["deviceId"]) == (HUB1, regid), p
            log = d.log_since_start()
            want = "DPS unreachable: the HTTPS helper tpmidd-https exited with signal 9"
            if want not in log:
                d.fail("no clear error about the helper's death (%r)" % want)
            assert "while idle" not in log, "the helper's death was not seen by the request in flight"
            # retried after a backoff (not in a hot loop), on a new helper
            regs = wait_for(lambda: [e for e in sim.requests("register-challenge")] if len(
                sim.requests("register-challenge")) >= 2 else None, STALL_SEC + 5, what="both DPS registrations")
            retries = [e for e in regs if not e["fault"]]
            assert retries, regs
            assert retries[0]["ts"] - t_kill >= 0.45, (retries[0]["ts"] - t_kill, "no backoff before the retry")
            assert log.count("started the HTTPS helper") >= 2, "no second helper started"
            d.hub_token_ok()

            # idle: the helper goes away, the daemon never loaded libcurl
            wait_for(lambda: not helpers(d), IDLE_SEC + 10, what="the idle helper to exit")
            assert children(d.proc.pid) == [], children(d.proc.pid)
            m = maps(d.proc.pid)
            for lib in ("libcurl", "libgnutls", "libnghttp2", "libssh2"):
                assert lib not in m, "%s mapped in tpmidd" % lib

            # the next request starts a new helper
            seq = sim.last_seq()
            r = d.reprovision()
            assert r.status in (200, 204), r
            assert sim.requests("register-challenge", since=seq), "no DPS request after the idle exit"
            d.wait_provisioned(timeout=30)
            # a helper that exits after its idle time with the request answered: no error logged
            wait_for(lambda: not helpers(d), IDLE_SEC + 10, what="the idle helper to exit again")
            assert "exited with status" not in d.log_since_start()


@R.case
def daemon_stop_ends_helper():
    """SIGTERM to tpmidd while its helper runs a request: both are gone, exit 0."""
    with harness.Swtpm() as tpm, Sim() as sim:
        enrolled(tpm, sim)
        sim.client.fault("register-challenge", "stall", count=1, seconds=STALL_SEC)
        d = Daemon(tpm, sim)
        try:
            d.start()
            wait_for(lambda: sim.requests("register-challenge"), 15, what="the first DPS request")
            pids = wait_for(lambda: helpers(d), 5, what="the helper process")
            t0 = time.time()
            d.stop()  # asserts exit 0
            assert time.time() - t0 < STALL_SEC - 1, "tpmidd waited for the stalled request"

            def gone():
                return all(not os.path.exists("/proc/%d" % p) or _zombie(p) for p in pids)
            wait_for(gone, 5, what="the helper to exit with the daemon")
        finally:
            d.cleanup()


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@R.case
def missing_helper():
    """TPMIDD_HTTPS_HELPER names no file: a clear error, retries, the daemon keeps serving."""
    with harness.Swtpm() as tpm, Sim() as sim:
        enrolled(tpm, sim)
        missing = os.path.join(tpm.dir, "no-such-tpmidd-https")
        with Daemon(tpm, sim, env={"TPMIDD_HTTPS_HELPER": missing}) as d:
            want = "could not start the HTTPS helper %s" % missing
            wait_for(lambda: d.log_since_start().count(want) >= 2, 30, what="two failed attempts")
            p = d.prov()
            assert p["state"] != "provisioned", p
            assert want in (p.get("lastResult") or {}).get("message", ""), p
            assert sim.requests() == [], "a request reached DPS without a helper?"
            d.check_alive()


@R.case
def garbage_helper():
    """A helper that answers with bytes that are no frame is stopped; the request fails, the daemon lives."""
    with harness.Swtpm() as tpm, Sim() as sim:
        enrolled(tpm, sim)
        # a frame length far above HTTPS_IPC_MAX_FRAME_BYTES, then silence
        fake = script(tpm.dir, "fake-https", "printf '\\377\\377\\377\\377garbage' >&3\nexec sleep 60\n")
        with Daemon(tpm, sim, env={"TPMIDD_HTTPS_HELPER": fake}) as d:
            want = "the HTTPS helper tpmidd-https sent a malformed frame"
            wait_for(lambda: d.log_since_start().count("DPS unreachable: " + want) >= 2, 40,
                     what="two failed attempts")
            # the bad helper was killed, not left behind
            wait_for(lambda: len(children(d.proc.pid)) <= 1, 10, what="the fake helpers to be stopped")
            d.check_alive()


@R.case
def silent_helper():
    """A helper that takes the requests and never answers: given up on after timeout + grace, killed, retried."""
    with harness.Swtpm() as tpm, Sim() as sim:
        enrolled(tpm, sim)
        fake = script(tpm.dir, "silent-https", "exec sleep 120\n")  # keeps fd 3 open, reads nothing, answers nothing
        with Daemon(tpm, sim, cloud_timeout=1, env={"TPMIDD_HTTPS_HELPER": fake}) as d:
            want = "DPS unreachable: the HTTPS helper tpmidd-https did not answer within %d s" % (1 + GRACE_SEC)
            t0 = time.time()
            wait_for(lambda: want in d.log_since_start(), 1 + GRACE_SEC + 15, what="the first give-up")
            assert time.time() - t0 >= GRACE_SEC, "gave up before the grace"
            wait_for(lambda: d.log_since_start().count(want) >= 2, 2 * (1 + GRACE_SEC) + 20, what="a second one")
            wait_for(lambda: len(helpers(d)) <= 1, 10, what="the silent helpers to be killed")
            d.check_alive()


# ---------------------------------------------------------------- socket activation

class Activator:
    """systemd's part for tpmidd-https.socket (Accept=no): a listening Unix
    socket (mode 0600, like SocketMode=), and whenever it has a connection
    waiting and no helper runs, a helper started with it as fd 3,
    LISTEN_FDS=1 and LISTEN_PID=<the helper's pid> (sd_listen_fds(3))."""

    def __init__(self, path, log, idle_sec=IDLE_SEC):
        self.path = path
        self.logpath = log
        self.idle_sec = idle_sec
        self.starts = 0
        self.proc = None
        self.lock = threading.Lock()
        self.stopping = False
        self.sock = None
        self.thread = None

    def start(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _spawn(self):
        env = dict(os.environ)
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "TPMIDD_HTTPS_SOCKET", "NOTIFY_SOCKET"):
            env.pop(k, None)
        env.update({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "https", "AZIOT_LOG": "debug",
                    "TPMIDD_HTTPS_IDLE_SEC": str(self.idle_sec)})
        fd = self.sock.fileno()
        # The shell puts the socket on fd 3 and names its own pid, which the
        # helper keeps across exec, as LISTEN_PID.
        script = 'exec 3<&%d; LISTEN_PID=$$; export LISTEN_PID; exec "$0"' % fd
        with open(self.logpath, "ab") as logf:
            self.proc = subprocess.Popen(["/bin/sh", "-c", script, harness.program("tpmidd-https")], env=env,
                                         pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT)
        self.starts += 1

    def _loop(self):
        while not self.stopping:
            try:
                r, _, _ = select.select([self.sock], [], [], 0.05)
            except (OSError, ValueError):
                return
            with self.lock:
                if self.stopping:
                    return
                if self.proc is not None and self.proc.poll() is None:
                    time.sleep(0.02)  # the running helper accepts; systemd does not poll meanwhile either
                    continue
                if r:
                    self._spawn()

    def running(self):
        with self.lock:
            return self.proc if self.proc is not None and self.proc.poll() is None else None

    def log(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        """Stop the socket and the helper, like `systemctl stop tpmidd-https.socket` (RemoveOnStop=yes)."""
        with self.lock:
            self.stopping = True
            p = self.proc
        if self.thread:
            self.thread.join(5)
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(10)
        if self.sock:
            self.sock.close()
            self.sock = None
        if os.path.exists(self.path):
            os.unlink(self.path)


@contextlib.contextmanager
def activated_daemon(tpm, sim, idle_sec=IDLE_SEC):
    """A running daemon that reaches its helper through an Activator's socket;
    yields (daemon, activator), and stops both afterwards."""
    d = Daemon(tpm, sim)
    act = Activator(os.path.join(d.dir, "https.sock"), os.path.join(d.dir, "helper.log"), idle_sec).start()
    d.extra_env.update({"TPMIDD_HTTPS_SOCKET": act.path,
                        # the daemon must not start a helper itself: this one would fail
                        "TPMIDD_HTTPS_HELPER": "/nonexistent/tpmidd-https"})
    try:
        with d:
            yield d, act
    finally:
        act.stop()


@R.case
def socket_activated_provisioning():
    """Through the helper's socket: assigned, no child of the daemon, one helper for many connections, idle exit, restart."""
    with harness.Swtpm() as tpm, Sim() as sim:
        regid = enrolled(tpm, sim)
        # The idle time must outlast the simulator's 1 s retry-after between
        # two connections of one DPS run, also on a loaded machine.
        idle = 5
        with activated_daemon(tpm, sim, idle) as (d, act):
            p = d.wait_provisioned(timeout=60)
            assert (p["hubName"], p["deviceId"]) == (HUB1, regid), p
            d.hub_token_ok()
            assert children(d.proc.pid) == [], "the daemon started a process: %s" % children(d.proc.pid)
            m = maps(d.proc.pid)
            for lib in ("libcurl", "libssl", "libgnutls"):
                assert lib not in m, "%s mapped in tpmidd" % lib
            log = d.log_since_start()
            assert "connected to the HTTPS helper at %s" % act.path in log, log
            assert "started the HTTPS helper" not in log, "the daemon spawned a helper"
            # register, at least one poll, the operation and the hub: successive connections, one helper
            hlog = act.log()
            assert "socket-activated" in hlog, hlog
            conns = hlog.count("connection from pid")
            assert act.starts == 1, (act.starts, hlog)
            assert conns >= 3, (conns, hlog)
            assert log.count("closed the connection to the HTTPS helper (idle)") >= conns - 1, log
            # the helper exits once it has had no connection for its idle time ...
            first = act.proc
            wait_for(lambda: first.poll() is not None, idle + 10, what="the idle helper to exit")
            assert first.returncode == 0, (first.returncode, act.log())
            # ... and the next request starts a new one
            seq = sim.last_seq()
            r = d.reprovision()
            assert r.status in (200, 204), r
            d.wait_provisioned(timeout=30)
            assert sim.requests("register-challenge", since=seq), "no DPS request after the idle exit"
            assert act.starts == 2, act.starts
            assert "exited with" not in d.log_since_start() and "closed the connection (" not in d.log_since_start()
            assert children(d.proc.pid) == []


@R.case
def socket_helper_gone():
    """Helper killed in flight, then no socket: clear errors, retries with backoff, assigned when it is back."""
    with harness.Swtpm() as tpm, Sim() as sim:
        regid = enrolled(tpm, sim)
        sim.client.fault("register-challenge", "stall", count=1, seconds=STALL_SEC)
        with activated_daemon(tpm, sim) as (d, act):
            wait_for(lambda: "with DPS (scope" in d.log_since_start(), 15, what="the first DPS request")
            helper = wait_for(act.running, 10, what="the activated helper")
            time.sleep(1.0)
            assert sim.requests("register-challenge") == [], "the stalled request was answered early"
            helper.kill()
            t_kill = time.time()
            p = d.wait_provisioned(timeout=60)
            assert (p["hubName"], p["deviceId"]) == (HUB1, regid), p
            log = d.log_since_start()
            want = "DPS unreachable: the HTTPS helper tpmidd-https closed the connection (%s)" % act.path
            if want not in log:
                d.fail("no clear error about the helper's death (%r)" % want)
            regs = wait_for(lambda: sim.requests("register-challenge") if len(
                sim.requests("register-challenge")) >= 2 else None, STALL_SEC + 5, what="both DPS registrations")
            retries = [e for e in regs if not e["fault"]]
            assert retries and retries[0]["ts"] - t_kill >= 0.45, (regs, t_kill, "no backoff before the retry")
            assert act.starts >= 2, act.starts

            # no helper socket at all (tpmidd-https.socket stopped): a clear error, retried
            act.stop()
            seq = sim.last_seq()
            r = d.reprovision()
            assert r.status in (200, 204, 500, 503), r
            want = "could not connect to the HTTPS helper at %s: No such file or directory" % act.path
            wait_for(lambda: d.log_since_start().count(want) >= 2, 40, what="two failed attempts")
            assert sim.requests(since=seq) == [], "a request reached DPS without a helper?"
            d.check_alive()
            # the socket is back: the next retry goes through
            act.start()
            d.wait_provisioned(timeout=60)
            assert sim.requests("register-challenge", since=seq), "no registration after the socket came back"
            assert children(d.proc.pid) == []


@R.case
def socket_nobody_answers():
    """The helper's socket accepts and nobody answers: the daemon drops the connection after timeout + grace and retries."""
    with harness.Swtpm() as tpm, Sim() as sim:
        enrolled(tpm, sim)
        d = Daemon(tpm, sim, cloud_timeout=1)
        path = os.path.join(d.dir, "https.sock")
        d.extra_env.update({"TPMIDD_HTTPS_SOCKET": path, "TPMIDD_HTTPS_HELPER": "/nonexistent/tpmidd-https"})
        mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mute.bind(path)
        mute.listen(16)
        held = []
        act = None
        try:
            with d:
                want = "DPS unreachable: the HTTPS helper tpmidd-https did not answer within %d s" % (1 + GRACE_SEC)
                c, _ = mute.accept()  # the daemon's connection: read nothing, answer nothing
                held.append(c)
                t0 = time.time()
                wait_for(lambda: want in d.log_since_start(), 1 + GRACE_SEC + 15, what="the give-up")
                assert time.time() - t0 >= GRACE_SEC - 0.5, "gave up before the grace"
                # the daemon closed that connection
                c.settimeout(5)
                while c.recv(65536):
                    pass
                # a helper answers again: assigned
                mute.close()
                os.unlink(path)
                act = Activator(path, os.path.join(d.dir, "helper.log")).start()
                d.wait_provisioned(timeout=60)
                assert children(d.proc.pid) == []
        finally:
            for c in held:
                c.close()
            mute.close()
            if act:
                act.stop()


if __name__ == "__main__":
    R.main()
