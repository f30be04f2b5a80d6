#!/usr/bin/python3
"""tpmidd under systemd's protocols, without systemd as PID 1: Type=notify
messages (READY/STATUS/RELOADING/STOPPING/WATCHDOG) read from a test
NOTIFY_SOCKET, socket activation through systemd-socket-activate, SIGHUP
reload, SIGTERM draining under load, waiting for a TPM that is not there yet,
stale socket files, and the configuration exit code."""
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# test/integration/packaging.py would shadow the "packaging" package that
# tpm2_pytss imports: keep this directory off the module path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402
from broker import API, Client, Daemon, NotifySocket, message, tpmidd_path, toml_config  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_getcap", "systemd-socket-activate")
import authblob  # noqa: E402

R = harness.Runner("broker-systemd")
EX_CONFIG = 78


def notify_daemon(tpm, **kw):
    d = Daemon(tpm, **kw)
    n = NotifySocket(os.path.join(d.dir, "notify.sock"))
    d.env["NOTIFY_SOCKET"] = n.path
    return d, n


@R.case
def ready_status_stopping():
    with harness.Swtpm() as tpm:
        d, n = notify_daemon(tpm)
        d.start()
        m = n.wait_for(lambda m: "READY=1" in m)
        assert "STATUS=ready" in m and "registration id" in m, m
        # no READY before the TPM answered: every STATUS before READY says so
        first = n.msgs[: n.msgs.index(m)]
        assert all("READY=1" not in x for x in first), first
        d.signal(signal.SIGTERM)
        n.wait_for(lambda m: m == "STOPPING=1")
        assert d.proc.wait(10) == 0
        d.proc = None
        d.logf.close()
        assert "tpmidd stopped" in d.read_log()
        n.close()


@R.case
def watchdog_only_with_progress():
    with harness.Swtpm() as tpm:
        d, n = notify_daemon(tpm, env={"WATCHDOG_USEC": "400000"})
        with d:
            n.wait_for(lambda m: "READY=1" in m)
            n.msgs.clear()
            n.poll(1.2)
            pings = [m for m in n.msgs if m == "WATCHDOG=1"]
            assert len(pings) >= 3, n.msgs
            # a stalled TPM (swtpm stopped) must stop the pings: the worker gets no answer
            os.kill(tpm.pid, signal.SIGSTOP)
            try:
                n.poll(0.5)  # drain what was sent before the stop
                n.msgs.clear()
                n.poll(1.5)
                assert [m for m in n.msgs if m == "WATCHDOG=1"] == [], n.msgs
            finally:
                os.kill(tpm.pid, signal.SIGCONT)
            n.wait_for(lambda m: m == "WATCHDOG=1", timeout=10)
        n.close()


def activated(tpm, fdname):
    """tpmidd started by systemd-socket-activate on the first connection."""
    d = Daemon(tpm)
    act = os.path.join(d.dir, "activated.sock")
    # The config names another path: tpmidd must use the inherited socket, not bind its own.
    d.sock = act
    with open(d.config, "w") as f:
        f.write(toml_config(tpm.tcti, os.path.join(d.dir, "run", "config.sock")))
    d.argv_prefix = ["systemd-socket-activate", "-l", act] + (["--fdname=" + fdname] if fdname else [])
    return d


@R.case
def socket_activation_named():
    with harness.Swtpm() as tpm:
        d = activated(tpm, "tpmd")
        d.wait_ready = False
        d.start()
        deadline = time.time() + 10
        while not os.path.exists(d.sock) and time.time() < deadline:
            time.sleep(0.02)
        d.wait_keys()
        assert "socket from systemd" in d.read_log(), d.read_log()
        assert not os.path.exists(os.path.join(d.dir, "run", "config.sock"))
        d.stop()
        assert os.path.exists(d.sock)  # systemd's socket is not ours to remove


@R.case
def socket_activation_single_unnamed():
    with harness.Swtpm() as tpm:
        d = activated(tpm, None)
        d.wait_ready = False
        d.start()
        deadline = time.time() + 10
        while not os.path.exists(d.sock) and time.time() < deadline:
            time.sleep(0.02)
        d.wait_keys()
        assert "socket from systemd" in d.read_log()
        d.stop()


@R.case
def sighup_reload():
    with harness.Swtpm() as tpm:
        d, n = notify_daemon(tpm, limits={"max_connections": 64, "max_connections_per_uid": 64})
        with d:
            n.wait_for(lambda m: "READY=1" in m)
            a, b = Client(d.sock), Client(d.sock)
            a.keys()
            b.keys()
            b.close()
            n.msgs.clear()
            d.write_config(limits={"max_connections": 64, "max_connections_per_uid": 1}, log_level="info")
            d.signal(signal.SIGHUP)
            m = n.wait_for(lambda m: "RELOADING=1" in m)
            assert "MONOTONIC_USEC=" in m, m
            n.wait_for(lambda m: "READY=1" in m)
            c = Client(d.sock)  # root already holds a: the new per-uid limit of 1 applies
            st, body, h = c.read_response()
            assert st == 429, (st, body)
            c.close()
            a.keys()
            assert "reloaded" in d.read_log()
            # a broken file is refused and the running configuration stays
            n.msgs.clear()
            with open(d.config, "w") as f:
                f.write("[limits\nmax_connections = \n")
            d.signal(signal.SIGHUP)
            n.wait_for(lambda m: "READY=1" in m)
            assert "keeping the running configuration" in d.read_log()
            a.keys()
            a.close()
        n.close()


@R.case
def sigterm_under_load_loses_nothing():
    with harness.Swtpm() as tpm, Daemon(tpm, limits={"max_connections": 64, "max_connections_per_uid": 64}) as d:
        with Client(d.sock) as c:
            ek, srk = c.keys()
            blob, key = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob)[0] == 200
        stats = {"ok": 0, "not_accepted": 0}
        bad = []
        lock = threading.Lock()

        def worker(i):
            try:
                c = Client(d.sock)
            except OSError:
                return
            k = 0
            while True:
                data = b"%d-%d" % (i, k)
                k += 1
                try:
                    body = b'{"data":"' + base64.b64encode(data) + b'"}'
                    c.send_raw(b"POST /sign_with_auth_key?" + API.encode() + b" HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                               % len(body) + body)
                except OSError:
                    with lock:
                        stats["not_accepted"] += 1
                    return
                got = len(c.buf)
                try:
                    st, body, h = c.read_response()
                except (ConnectionError, OSError) as e:
                    # Closed before a single byte of an answer: the request was
                    # never read (the keep-alive race every HTTP client retries).
                    with lock:
                        if c.buf or got:
                            bad.append((i, k, "partial answer", repr(e)))
                        else:
                            stats["not_accepted"] += 1
                    return
                if st != 200 or base64.b64decode(json.loads(body)["digest"]) != hmac.new(key, data, hashlib.sha256).digest():
                    with lock:
                        bad.append((i, k, st, body))
                    return
                with lock:
                    stats["ok"] += 1
                if h.get("connection") == "close":
                    return  # the daemon is draining: answered, then closed

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for t in ts:
            t.start()
        time.sleep(1.0)
        d.signal(signal.SIGTERM)
        for t in ts:
            t.join(30)
        assert d.proc.wait(20) == 0, d.read_log()
        d.proc = None
        d.logf.close()
        assert not bad, bad[:5]
        assert stats["ok"] > 100, stats
        print("   %s" % stats)
        assert tpm.transient_handles() == [] and tpm.loaded_sessions() == []


@R.case
def waits_for_missing_tpm():
    tdir = harness.tmpdir("tpmid-swtpm-")
    later = harness.Swtpm(workdir=tdir)
    d, n = notify_daemon(later, wait=False)
    try:
        d.start()
        m = n.wait_for(lambda m: "STATUS=waiting for TPM:" in m)
        assert "READY=1" not in "".join(n.msgs)
        # the start job is kept alive while waiting, not left to time out
        n.wait_for(lambda m: m.startswith("EXTEND_TIMEOUT_USEC="))
        # sockets answer meanwhile, with a reason and Retry-After
        deadline = time.time() + 10
        while not os.path.exists(d.sock) and time.time() < deadline:
            time.sleep(0.05)
        with Client(d.sock) as c:
            st, body, h = c.request("GET", "/get_tpm_keys?" + API)
            assert st == 503 and message(body).startswith("TPM not available:"), (st, body)
            assert h.get("retry-after"), h
            st, body, h = c.request("POST", "/sign_with_auth_key?" + API, {"data": "AAAA"})
            assert st == 503, (st, body)
        time.sleep(2.5)
        assert d.proc.poll() is None  # no crash loop
        later.start()
        n.wait_for(lambda m: "READY=1" in m, timeout=40)
        d.wait_keys()
        log = d.read_log()
        assert log.count("TPM not usable") == 1, log  # one clear error, not one per retry
        d.stop()
    finally:
        if d.proc:
            d.proc.kill()
        later.cleanup()
        n.close()


@R.case
def stale_socket_and_foreign_files():
    with harness.Swtpm() as tpm:
        # a stale socket file (nobody listening) is replaced
        d = Daemon(tpm)
        os.makedirs(os.path.dirname(d.sock), exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(d.sock)
        s.close()
        with d:
            with Client(d.sock) as c:
                c.keys()
        assert not os.path.exists(d.sock)  # removed at exit
        # a live server on the path: refuse, exit EX_CONFIG, leave it alone
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(d.sock)
        live.listen(1)
        p = subprocess.run([tpmidd_path(), "-c", d.config], capture_output=True, text=True, timeout=20,
                           env=d.env)
        assert p.returncode == EX_CONFIG, (p.returncode, p.stderr)
        assert "another" in p.stderr, p.stderr
        live.close()
        os.unlink(d.sock)
        # a regular file is not ours to delete
        open(d.sock, "w").write("keep me")
        p = subprocess.run([tpmidd_path(), "-c", d.config], capture_output=True, text=True, timeout=20,
                           env=d.env)
        assert p.returncode == EX_CONFIG, (p.returncode, p.stderr)
        assert open(d.sock).read() == "keep me"


@R.case
def leftovers_flushed_at_start():
    # A crashed run (kill -9 mid-import) leaves objects/sessions in a TPM that
    # has no resource manager; the daemon flushes them when it opens the TPM.
    with harness.Swtpm() as tpm:
        ctx = os.path.join(tpm.dir, "p.ctx")
        tpm.tool("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", ctx)
        assert tpm.transient_handles(), "tpm2-tools should have left the primary loaded"
        d = Daemon(tpm)
        d.start()
        d.stop()
        assert "flushed 1 transient object" in d.read_log(), d.read_log()
        assert tpm.transient_handles() == [], tpm.transient_handles()


@R.case
def config_errors_exit_78():
    d = harness.tmpdir()
    good = os.path.join(d, "good.toml")
    open(good, "w").write(toml_config("swtpm:path=/nonexistent", os.path.join(d, "x.sock")))
    p = subprocess.run([tpmidd_path(), "--check-config", "-c", good], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    bad = os.path.join(d, "bad.toml")
    open(bad, "w").write("[limits]\nmax_connections = 0\n")
    p = subprocess.run([tpmidd_path(), "--check-config", "-c", bad], capture_output=True, text=True)
    assert p.returncode == EX_CONFIG, (p.returncode, p.stderr)
    assert "bad.toml:2" in p.stderr, p.stderr
    p = subprocess.run([tpmidd_path(), "-c", bad], capture_output=True, text=True, timeout=20)
    assert p.returncode == EX_CONFIG
    p = subprocess.run([tpmidd_path(), "-c", os.path.join(d, "missing.toml")], capture_output=True, text=True)
    assert p.returncode == EX_CONFIG, p.stderr
    p = subprocess.run([tpmidd_path(), "--bogus"], capture_output=True, text=True)
    assert p.returncode == EX_CONFIG
    p = subprocess.run([tpmidd_path(), "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("tpmidd "), p.stdout


if __name__ == "__main__":
    R.main()
