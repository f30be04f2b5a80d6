#!/usr/bin/python3
"""tpmidd under systemd's protocols, without systemd as PID 1: Type=notify
messages (READY/STATUS/RELOADING/STOPPING/WATCHDOG) read from a test
NOTIFY_SOCKET, socket activation through systemd-socket-activate, SIGHUP
reload, SIGTERM draining under load, waiting for a TPM that is not there yet,
stale socket files, and the configuration exit code. Also tpmidd-https as
tpmidd-https.service runs it: started by systemd-socket-activate on its
listening socket, serving successive connections in lib/https-ipc.h frames,
surviving a bad one, exiting when it has had none for its idle time."""
import base64
import errno
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
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
        n.wait_for(lambda m: "STATUS=waiting for TPM:" in m)
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


# ---------------------------------------------------------------- tpmidd-https, socket-activated

ABSENT = 0xFFFFFFFF


def _ipc_str(v):
    if v is None:
        return struct.pack(">I", ABSENT)
    b = v.encode() if isinstance(v, str) else v
    return struct.pack(">I", len(b)) + b


def _ipc_frame(payload):
    return struct.pack(">I", len(payload)) + payload


def _ipc_version():
    """HTTPS_IPC_VERSION from lib/https-ipc.h: the helper refuses any other."""
    h = open(os.path.join(harness.SRC, "lib", "https-ipc.h")).read()
    return int(re.search(r"#define HTTPS_IPC_VERSION (\d+)u", h).group(1))


def ipc_hello(user_agent="broker-systemd-test"):
    """lib/https-ipc.h HELLO: u8 1 | u32 version | ca_bundle? | connect_to? | user_agent."""
    return _ipc_frame(b"\x01" + struct.pack(">I", _ipc_version()) + _ipc_str(None) + _ipc_str(None) +
                      _ipc_str(user_agent))


def ipc_request(rid, url, timeout_ms=5000):
    """REQUEST: u8 2 | u64 id | method | url | authorization? | if_match? | body? | u32 timeout_ms."""
    return _ipc_frame(b"\x02" + struct.pack(">Q", rid) + _ipc_str("GET") + _ipc_str(url) + _ipc_str(None) +
                      _ipc_str(None) + _ipc_str(None) + struct.pack(">I", timeout_ms))


def ipc_read_response(s, timeout=20):
    """One RESPONSE frame: (id, error, error_msg, status)."""
    s.settimeout(timeout)

    def exact(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                raise ConnectionError("end of file after %d of %d bytes" % (len(b), n))
            b += c
        return b
    n = struct.unpack(">I", exact(4))[0]
    p = exact(n)
    assert p[0] == 3, "not a response frame: %r" % p[:16]
    rid, err = struct.unpack(">Qi", p[1:13])
    mlen = struct.unpack(">I", p[13:17])[0]
    msg = p[17:17 + mlen].decode()
    status = struct.unpack(">I", p[17 + mlen:21 + mlen])[0]
    return rid, err, msg, status


def _refused_url():
    """An https URL on 127.0.0.1 where nobody listens: the helper answers with a transport error."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "https://127.0.0.1:%d/" % port


def _connect(path, timeout=10):
    deadline = time.time() + timeout
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(path)
            return c
        except OSError:
            c.close()
            if time.time() > deadline:
                raise
            time.sleep(0.02)


@R.case
def https_helper_socket_activated():
    d = harness.tmpdir("tpmidd-https-")
    path = os.path.join(d, "https.sock")
    log = open(os.path.join(d, "helper.log"), "wb")
    idle = 2
    p = subprocess.Popen(["systemd-socket-activate", "-l", path, "--fdname=https",
                          "-E", "AZIOT_LOG=debug", "-E", "TPMIDD_HTTPS_IDLE_SEC=%d" % idle,
                          harness.program("tpmidd-https")], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _refused_url()
        # two connections one after the other, both served by the one process
        for rid in (7, 8):
            c = _connect(path)
            c.sendall(ipc_hello() + ipc_request(rid, url))
            got = ipc_read_response(c)
            assert got[0] == rid and got[1] == -errno.ECONNREFUSED and got[3] == 0, got
            c.close()
            assert p.poll() is None, "the helper exited after a connection ended"
        # a malformed frame ends that connection only
        c = _connect(path)
        c.sendall(b"\xff\xff\xff\xffgarbage")
        c.settimeout(10)
        assert c.recv(16) == b"", "the helper kept a connection that sent garbage"
        c.close()
        c = _connect(path)
        c.sendall(ipc_hello() + ipc_request(9, url))
        assert ipc_read_response(c)[0] == 9
        # an open connection keeps it, whatever the idle time
        time.sleep(idle + 1)
        assert p.poll() is None, "the helper exited under an open connection"
        c.close()
        t0 = time.time()
        rc = p.wait(idle + 10)
        assert rc == 0, (rc, open(log.name, errors="replace").read())
        assert time.time() - t0 >= idle - 0.5, "exited before its idle time"
        text = open(log.name, errors="replace").read()
        assert "socket-activated" in text and text.count("connection from pid") == 4, text
        assert "a frame with an invalid length" in text, text
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    # tpmidd-https.socket passes one socket; two are refused with a reason (exit 2)
    p = subprocess.Popen(["systemd-socket-activate", "-l", path + "2", "-l", path + "3",
                          harness.program("tpmidd-https")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _connect(path + "2").close()  # starts it
        out = p.communicate(timeout=10)[0].decode(errors="replace")
        assert p.returncode == 2 and "passed 2 sockets" in out, (p.returncode, out)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


if __name__ == "__main__":
    R.main()
