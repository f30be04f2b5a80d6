#!/usr/bin/python3
"""Every [limits] value of tpmidd's TPM socket, at the limit and one over:
answered with the documented status (and Retry-After for overload), then closed."""
import hashlib
import hmac
import json
import os
import resource
import socket
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# test/integration/packaging.py would shadow the "packaging" package that
# tpm2_pytss imports: keep this directory off the module path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402
from broker import API, Client, Daemon, message, request_as  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_getcap", "setpriv")
import authblob  # noqa: E402

R = harness.Runner("broker-limits")

BASE = {"max_connections": 64, "max_connections_per_uid": 64}


def limits(**kw):
    d = dict(BASE)
    d.update(kw)
    return d


def assert_answer_then_close(c, status, want_msg=None, retry_after=False):
    st, body, h = c.read_response()
    assert st == status, (st, body)
    if want_msg:
        assert want_msg in message(body), message(body)
    if retry_after:
        assert h.get("retry-after", "").isdigit(), h
    assert h.get("connection") == "close", h
    assert c.at_eof(), "connection stayed open after %d" % status


@R.case
def max_connections_503():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(max_connections=4, max_connections_per_uid=4)) as d:
        conns = [Client(d.sock) for _ in range(4)]
        for c in conns:  # all four accepted and served
            c.keys()
        extra = Client(d.sock)
        assert_answer_then_close(extra, 503, "too many connections", retry_after=True)
        extra.close()
        conns.pop().close()
        time.sleep(0.2)
        with Client(d.sock) as again:  # room again
            again.keys()
        for c in conns:
            c.keys()  # the others were never disturbed
            c.close()
        assert "max_connections" in d.read_log()


@R.case
def max_connections_per_uid_429():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(max_connections_per_uid=2)) as d:
        a, b = Client(d.sock), Client(d.sock)
        a.keys()
        b.keys()
        c = Client(d.sock)
        assert_answer_then_close(c, 429, "uid 0", retry_after=True)
        c.close()
        # another uid is not affected by root's count (it gets 403: not authorised, but accepted)
        os.chmod(d.sock, 0o666)
        st, body = request_as("nobody", "nogroup", d.sock, "GET", "/get_tpm_keys?" + API)
        assert st == 403, (st, body)
        a.close()
        time.sleep(0.2)
        with Client(d.sock) as again:
            again.keys()
        b.close()


FLOOD = 300  # refused connections open at once: past the daemon's SERVER_REFUSALS_MAX (256) lingering


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def connect_patiently(path, timeout=10):
    """Client(path), again while the listen backlog is full (EAGAIN: the kernel's
    refusal, before the daemon could see the connection)."""
    deadline = time.time() + timeout
    while True:
        try:
            return Client(path)
        except BlockingIOError:
            if time.time() > deadline:
                raise
            time.sleep(0.01)


@R.case
def refusal_flood_answered():
    """Far past 2 x max_connections refused connections at once: every one is
    answered 503 + Retry-After, counted in /status, logged without a line each,
    and none keeps an fd once its client is gone."""
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(max_connections=2, max_connections_per_uid=2)) as d:
        held = [Client(d.sock) for _ in range(2)]
        for c in held:
            c.keys()
        fds0 = fd_count(d.proc.pid)
        flood = []
        for _ in range(FLOOD):
            c = connect_patiently(d.sock)
            try:
                c.send_raw(("GET /get_tpm_keys?%s HTTP/1.1\r\nHost: tpmd.sock\r\n\r\n" % API).encode())
            except BrokenPipeError:
                # Past SERVER_REFUSALS_MAX the answer is written and the connection closed at
                # accept; a client slower to send than the daemon to accept finds it closed,
                # and the answer waiting to be read.
                pass
            flood.append(c)
        for c in flood:  # all still open: the early ones linger while the later ones arrive
            assert_answer_then_close(c, 503, "too many connections", retry_after=True)
            c.close()
        time.sleep(1.1)  # past the log interval: the next refusal is logged with the count of the others
        with Client(d.sock) as late:
            assert_answer_then_close(late, 503, retry_after=True)
        with Client(os.path.join(os.path.dirname(d.sock), "identityd.sock")) as ident:
            st, body, _ = ident.request("GET", "/status?api-version=2020-09-01")
        assert st == 200, (st, body)
        refused = json.loads(body)["daemon"]["refusedConnections"]
        assert refused == FLOOD + 1, refused  # this identityd connection itself is not refused
        log = d.read_log()
        assert log.count("refused with 503") < FLOOD // 10, log.count("refused with 503")
        assert "more since the last such message" in log, log[-3000:]
        for c in held:
            c.keys()  # the accepted ones never noticed
        deadline = time.time() + 5
        while fd_count(d.proc.pid) > fds0 and time.time() < deadline:
            time.sleep(0.05)
        assert fd_count(d.proc.pid) <= fds0, (fd_count(d.proc.pid), fds0)
        for c in held:
            c.close()


def head_of_len(n, target="/get_tpm_keys?" + API):
    """A GET request head of exactly n bytes (request line through the blank line)."""
    base = "GET %s HTTP/1.1\r\nHost: tpmd.sock\r\nX-Pad: " % target
    pad = n - len(base) - len("\r\n\r\n")
    assert pad >= 0
    return (base + "a" * pad + "\r\n\r\n").encode()


@R.case
def max_header_bytes_431():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(max_header_bytes=1024)) as d:
        with Client(d.sock) as c:
            c.send_raw(head_of_len(1024))
            st, _, _ = c.read_response()
            assert st == 200, st
        with Client(d.sock) as c:
            c.send_raw(head_of_len(1025))
            assert_answer_then_close(c, 431)


@R.case
def max_body_bytes_413():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(max_body_bytes=1024)) as d:
        def body(n):
            b = b'{"data":"AAAA"}'
            return b + b" " * (n - len(b))
        with Client(d.sock) as c:
            st, b, _ = c.request("POST", "/sign_with_auth_key?" + API, body(1024))
            assert st == 500 and "import" in message(b), (st, b)  # parsed: no key yet
        with Client(d.sock) as c:
            try:
                st, b, _ = c.request("POST", "/sign_with_auth_key?" + API, body(1025))
            except (BrokenPipeError, ConnectionResetError):
                raise AssertionError("413 not delivered before the connection closed")
            assert st == 413, (st, b)
            assert c.at_eof()


@R.case
def idle_timeout_closes():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(idle_timeout_sec=1)) as d:
        with Client(d.sock) as c:
            c.keys()
            t0 = time.time()
            assert c.at_eof(timeout=5)
            assert 0.8 < time.time() - t0 < 3, time.time() - t0
        with Client(d.sock) as c:  # never sent anything
            assert c.at_eof(timeout=5)


@R.case
def request_timeout_408():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(request_timeout_sec=1, idle_timeout_sec=30)) as d:
        with Client(d.sock) as c:
            c.send_raw(b"GET /get_tpm_keys?" + API.encode() + b" HTTP/1.1\r\nHost: x\r\n")
            t0 = time.time()
            assert_answer_then_close(c, 408)
            assert 0.8 < time.time() - t0 < 3
        with Client(d.sock) as c:  # a body that never completes
            c.send_raw(b"POST /sign_with_auth_key?" + API.encode() +
                       b" HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"data\":")
            assert_answer_then_close(c, 408)
        # a slow but steady client still has only request_timeout_sec for the whole request
        with Client(d.sock) as c:
            c.send_raw(b"GET /get_tpm_keys?")
            time.sleep(0.6)
            c.send_raw(API.encode() + b" HTTP/1.1\r\n")
            time.sleep(0.6)
            assert_answer_then_close(c, 408)


@R.case
def tpm_queue_full_503():
    with harness.Swtpm() as tpm, Daemon(tpm, limits=limits(max_queued_tpm_jobs=1)) as d:
        with Client(d.sock) as c:
            ek, srk = c.keys()
            blob, key = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob)[0] == 200
        clients = [Client(d.sock) for _ in range(48)]
        seen = {}
        bad = []
        for attempt in range(10):
            barrier = threading.Barrier(len(clients) + 1)

            def one(c, i):
                barrier.wait()
                data = b"q%d" % i
                st, body, h = c.request("POST", "/sign_with_auth_key?" + API,
                                        {"data": __import__("base64").b64encode(data).decode()})
                seen[st] = seen.get(st, 0) + 1
                if st == 503:
                    if message(body) != "TPM queue full, retry" or not h.get("retry-after"):
                        bad.append((st, body, h))
                elif st != 200:
                    bad.append((st, body))
            # an import keeps the worker busy for a while; the signs pile up behind it
            blob2, _ = authblob.make_auth_blob(ek, srk, hmac_key=key)
            imp = Client(d.sock)
            ts = [threading.Thread(target=one, args=(c, i)) for i, c in enumerate(clients)]
            for t in ts:
                t.start()
            imp.send_raw(b"")
            barrier.wait()
            imp.import_key(blob2)
            for t in ts:
                t.join()
            imp.close()
            if seen.get(503):
                break
        assert not bad, bad[:3]
        assert seen.get(503), seen
        for c in clients:
            assert c.sign(b"after") == (200, hmac.new(key, b"after", hashlib.sha256).digest())
            c.close()
        print("   statuses over %d bursts: %s" % (attempt + 1, seen))


@R.case
def nofile_soft_limit_raised():
    """Started with systemd's soft RLIMIT_NOFILE of 1024 (hard higher), the
    daemon runs with the soft limit raised to the hard one: two sockets at
    max_connections 4096 and their refusals need more than 1024 fds."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = old[1] if old[1] != resource.RLIM_INFINITY else 65536
    if hard <= 1024:
        print("   hard RLIMIT_NOFILE %d: nothing to raise, skipped" % hard)
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the daemon inherits it
    try:
        with harness.Swtpm() as tpm, Daemon(tpm, limits=limits()) as d:
            with Client(d.sock) as c:
                c.keys()  # the daemon is past its start
            soft = None
            for line in open("/proc/%d/limits" % d.proc.pid):
                if line.startswith("Max open files"):
                    soft = line.split()[3]
            assert soft == str(hard), (soft, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


if __name__ == "__main__":
    R.main()
