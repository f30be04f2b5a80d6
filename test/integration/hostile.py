#!/usr/bin/python3
"""What hostile testing found (issue 14), each case as it was reproduced:
requests pipelined before a half-close, a world-writable socket directory,
strangers holding connections, lenient chunked framing, and a DPS 401
challenge without authenticationKey.

Clients that must be other users run as numeric uids through setpriv, with
only inline code (no module of the checkout, which may be readable by root
only)."""
import contextlib
import os
import re
import socket
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# test/integration/packaging.py would shadow the "packaging" package that
# tpm2_pytss imports: keep this directory off the module path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_getcap", "setpriv")
from broker import API, Client, Daemon, message  # noqa: E402
import daemon as prov  # noqa: E402

R = harness.Runner("hostile")

EX_CONFIG = 78
STRANGER_UIDS = (40001, 40002, 40003, 40004)  # no passwd entry needed: setpriv takes numbers
CONNS_PER_STRANGER = 16
SERVER_REFUSAL_LOG_INTERVAL_S = 1.0  # server.h SERVER_REFUSAL_LOG_INTERVAL_MS


def raw_connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_to_eof(s, timeout=10):
    s.settimeout(timeout)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b


def split_responses(data):
    """[(status, headers dict, body)] of a byte stream of complete responses."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, "incomplete response: %r" % data
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        h = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(h.get("content-length", "0"))
        out.append((status, h, rest[:n]))
        data = rest[n:]
    return out


@R.case
def half_close_answers_every_request():
    """Three requests, then shutdown(SHUT_WR): three answers, then EOF. Sign
    requests, so that the first is answered later, from the TPM thread, and
    the EOF arrives while it is owed (keys are answered at once)."""
    with harness.Swtpm() as tpm, Daemon(tpm) as d:
        body = b'{"data":"AAAA"}'
        req = ("POST /sign_with_auth_key?%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n" % (API, len(body))).encode() + body
        for pause in (False, True):
            s = raw_connect(d.sock)
            if pause:  # also when the EOF comes after the requests arrived
                s.sendall(req * 3)
                time.sleep(0.2)
                s.shutdown(socket.SHUT_WR)
            else:
                s.sendall(req * 3)
                s.shutdown(socket.SHUT_WR)
            rs = split_responses(read_to_eof(s))
            s.close()
            assert len(rs) == 3, rs
            # no key was imported: the same (TPM's) answer three times, whatever it is
            assert len({r[0] for r in rs}) == 1 and rs[0][0] >= 400, rs
            assert all(r[1].get("connection") != "close" for r in rs[:2]), rs
            print("   pause %-5s -> %s" % (pause, [r[0] for r in rs]))
        # the daemon is fine afterwards
        with Client(d.sock) as c:
            c.keys()


@R.case
def world_writable_run_dir_refused():
    """A run directory pre-created 0777 (no sticky bit) is refused: exit 78 and
    a sentence saying how to fix it; nothing is bound there. The same directory
    0755 (what systemd's RuntimeDirectory= makes) is accepted."""
    with harness.Swtpm() as tpm:
        d = Daemon(tpm, wait=False)
        run = os.path.dirname(d.sock)
        os.makedirs(run, exist_ok=True)
        os.chmod(run, 0o777)
        d.start()
        try:
            rc = d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
            raise AssertionError("tpmidd kept running in a world-writable run dir:\n" + d.read_log())
        log = d.read_log()
        assert rc == EX_CONFIG, (rc, log)
        assert "world-writable" in log and "chmod go-w %s" % run in log, log
        assert not os.path.exists(d.sock), os.listdir(run)
        assert not os.path.exists(os.path.join(run, "identityd.sock")), os.listdir(run)
        d.proc = None
        os.chmod(run, 0o755)
        d.wait_ready = True
        with d:
            with Client(d.sock) as c:
                c.keys()


STRANGER_CODE = r"""
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
socks, answers = [], []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(path)
    socks.append(s)
print("connected", flush=True)
for s in socks:  # idle: nothing sent
    data = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except socket.timeout:
        data += b" TIMEOUT"
    answers.append(data.split(b"\r\n", 1)[0].decode(errors="replace") + (" EOF" if not data.endswith(b"TIMEOUT") else ""))
print("\n".join(answers), flush=True)
sys.stdin.read()  # hold what is left until told to go
"""


@R.case
def strangers_cost_nothing():
    """Four uids without rights, 16 idle connections each, on a socket anyone
    may connect to: each gets its 403 at once and is closed, none counts, and
    root's next connection is served. The log names the strangers without a
    line each (server.c: at most one refusal line a second, the next one says
    how many it left out), and every refusal is in those lines' count."""
    with harness.Swtpm() as tpm, Daemon(tpm, limits={"max_connections": 64, "max_connections_per_uid": 16}) as d:
        os.chmod(d.sock, 0o666)
        procs = []
        try:
            for uid in STRANGER_UIDS:
                procs.append(subprocess.Popen(
                    ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
                     "/usr/bin/python3", "-c", STRANGER_CODE, d.sock, str(CONNS_PER_STRANGER)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for p in procs:
                assert p.stdout.readline().strip() == "connected", p.stderr.read()
            # every stranger is still connected (or holding its closed sockets); root is served
            with Client(d.sock) as c:
                st, body, _ = c.request("GET", "/get_tpm_keys?" + API)
                assert st == 200, (st, body)
            for uid, p in zip(STRANGER_UIDS, procs):
                lines = [p.stdout.readline().strip() for _ in range(CONNS_PER_STRANGER)]
                assert all(ln == "HTTP/1.1 403 Forbidden EOF" for ln in lines), (uid, lines)
        finally:
            for p in procs:
                try:
                    p.communicate("", timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # one more stranger past the log interval: its line counts the ones left out
        time.sleep(SERVER_REFUSAL_LOG_INTERVAL_S + 0.1)
        late = subprocess.run(
            ["setpriv", "--reuid=%d" % STRANGER_UIDS[0], "--regid=%d" % STRANGER_UIDS[0], "--clear-groups",
             "/usr/bin/python3", "-c", STRANGER_CODE, d.sock, "1"], input="", capture_output=True, text=True,
            timeout=20)
        assert "HTTP/1.1 403 Forbidden EOF" in late.stdout, (late.stdout, late.stderr)
        log = d.read_log()
        lines = [ln for ln in log.splitlines() if "may not use this socket" in ln]
        assert lines and all(any("uid %d may not" % u in ln for u in STRANGER_UIDS) for ln in lines), log
        left_out = sum(int(m) for m in re.findall(r"\(and (\d+) more since the last such message\)", log))
        assert len(lines) + left_out == len(STRANGER_UIDS) * CONNS_PER_STRANGER + 1, (len(lines), left_out, log)
        assert len(lines) < len(STRANGER_UIDS) * CONNS_PER_STRANGER, "a line per refusal: %d" % len(lines)


@R.case
def chunked_framing_strict():
    """Chunk data not followed by CRLF, and other framing RFC 9112 forbids: 400 and closed."""
    bad = [
        b"3\r\nabcXX0\r\n\r\n",   # issue 14
        b"3 \r\nabc\r\n0\r\n\r\n",  # junk after the chunk size
        b"3\nabc\r\n0\r\n\r\n",     # bare LF
    ]
    with harness.Swtpm() as tpm, Daemon(tpm) as d:
        for body in bad:
            s = raw_connect(d.sock)
            s.sendall(b"POST /sign_with_auth_key?" + API.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
            rs = split_responses(read_to_eof(s))
            s.close()
            assert len(rs) == 1 and rs[0][0] == 400, (body, rs)
            assert rs[0][1].get("connection") == "close", rs
            print("   %-24r -> 400 %s" % (body, message(rs[0][2].decode())))
        s = raw_connect(d.sock)
        s.sendall(b"GET /get_tpm_keys?" + API.encode() + b" HTTP/1.1\r\nHost: x\r\n X-Fold: y\r\n\r\n")
        rs = split_responses(read_to_eof(s))
        s.close()
        assert [r[0] for r in rs] == [400], rs
        with Client(d.sock) as c:
            c.keys()


CHALLENGE_WITHOUT_KEY = {"message": "Authorization required, resend request using supplied key",
                         "unencryptedAuthenticationKey": None, "keyName": "registration"}


@contextlib.contextmanager
def keyless_challenges(count):
    """swtpm, the simulator and an enrolled device whose next count challenges
    come without authenticationKey, and a daemon started on them; yields
    (sim, daemon, the simulator's last seq before the daemon started)."""
    with harness.Swtpm() as tpm, prov.Sim() as sim:
        info = prov.tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[prov.HUB1])
        sim.client.fault("register-challenge", "status", count=count, status=401, body=CHALLENGE_WITHOUT_KEY)
        seq0 = sim.last_seq()
        with prov.Daemon(tpm, sim) as d:
            yield sim, d, seq0


@R.case
def challenge_without_key_retried():
    """A 401 challenge without authenticationKey is a malformed answer: retried
    (the defect in the status message), and the device provisions once DPS
    answers properly."""
    with keyless_challenges(2) as (sim, d, seq0):
        p = d.wait_provisioned(timeout=60)
        assert p["lastResult"]["status"] == "assigned", p
        routes = [e["route"] for e in sim.requests(since=seq0)]
        assert routes.count("register-challenge") == 3, routes
        log = d.log_since_start()
        assert "no authenticationKey" in log, log


@R.case
def challenge_without_key_bounded():
    """... but not for ever: after PROV_MALFORMED_ANSWER_RUNS (5) runs in a row
    it is final, with the defect in lastResult, and no more requests."""
    with keyless_challenges(100) as (sim, d, seq0):
        p = d.wait_state("failed", timeout=90)
        assert "no authenticationKey" in p["lastResult"]["message"], p
        reqs = sim.requests(since=seq0)
        assert [e["route"] for e in reqs].count("register-challenge") == 5, reqs
        time.sleep(3)
        assert sim.requests(since=reqs[-1]["seq"]) == [], "retried after the verdict"


if __name__ == "__main__":
    R.main()
