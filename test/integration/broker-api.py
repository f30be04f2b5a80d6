#!/usr/bin/python3
"""tpmidd's TPM socket against swtpm: the aziot-tpmd API, its error answers,
authorisation, concurrency, and a clean TPM afterwards."""
import base64
import grp
import json
import os
import pwd
import re
import select
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
from broker import API, Client, Daemon, hmac_sha256, message, request_as  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_readpublic", "tpm2_getcap", "curl", "setpriv")
import authblob  # noqa: E402

R = harness.Runner("broker-api")


def assert_tpm_clean(tpm):
    """No transient object or session left behind (the daemon is idle or stopped)."""
    assert tpm.transient_handles() == [], tpm.transient_handles()
    assert tpm.loaded_sessions() == [], tpm.loaded_sessions()


@R.case
def keys_match_tpm2_tools():
    with harness.Swtpm() as tpm, Daemon(tpm) as d:
        # curl is what the docs show; it must get the documented answer.
        out = subprocess.run(["curl", "-sS", "--unix-socket", d.sock,
                              "http://tpmd.sock/get_tpm_keys?" + API], capture_output=True, check=True).stdout
        j = json.loads(out)
        assert sorted(j) == ["endorsement_key", "storage_root_key"], j
        ek = base64.b64decode(j["endorsement_key"])
        srk = base64.b64decode(j["storage_root_key"])
        assert ek[:2] == b"\x01\x3a", ek[:4].hex()  # size 0x013A, RSA-2048: "AToAAQAL..."
        for handle, got in (("0x81010001", ek), ("0x81000001", srk)):
            f = os.path.join(d.dir, handle + ".pub")
            tpm.tool("tpm2_readpublic", "-c", handle, "-o", f)
            assert open(f, "rb").read() == got, handle
        assert_tpm_clean(tpm)


@R.case
def import_sign_replace():
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c:
        ek, srk = c.keys()
        blob, key = authblob.make_auth_blob(ek, srk)
        st, body, _ = c.import_key(blob)
        assert (st, json.loads(body)) == (200, {}), (st, body)
        for data in (b"", b"x", b"scope/registrations/dev\n1700000000", os.urandom(1024), os.urandom(3000)):
            assert c.sign(data) == (200, hmac_sha256(key, data)), len(data)
        # A second import replaces the key.
        blob2, key2 = authblob.make_auth_blob(ek, srk)
        st, body, _ = c.import_key(blob2)
        assert st == 200, (st, body)
        assert c.sign(b"abc") == (200, hmac_sha256(key2, b"abc"))
        assert "0x81000100" in tpm.persistent_handles()
        assert_tpm_clean(tpm)


@R.case
def bad_blobs_keep_old_key():
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c:
        ek, srk = c.keys()
        blob, key = authblob.make_auth_blob(ek, srk)
        assert c.import_key(blob)[0] == 200
        good, _ = authblob.make_auth_blob(ek, srk)
        corrupt = bytearray(good)
        corrupt[40] ^= 0xFF  # inside the credential blob: integrity check fails
        wrong_ek, _ = authblob.make_auth_blob(srk, srk)   # credential encrypted to another key
        wrong_srk, _ = authblob.make_auth_blob(ek, ek)    # bound to and wrapped for another parent
        cases = {
            "corrupt": bytes(corrupt),
            "truncated": good[:len(good) // 2],
            "one byte": b"\x00",
            "wrong EK": wrong_ek,
            "wrong SRK": wrong_srk,
            "garbage": os.urandom(600),
        }
        for name, b in cases.items():
            st, body, _ = c.import_key(b)
            assert 400 <= st < 600 and st != 503, (name, st, body)
            msg = message(body)
            assert msg and "internal error" != msg, (name, msg)
            print("   %-10s -> %d %s" % (name, st, msg[:150]))
            # the previous key still signs
            assert c.sign(b"still") == (200, hmac_sha256(key, b"still")), name
        assert_tpm_clean(tpm)


@R.case
def error_statuses():
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c:
        def check(method, target, body, want_status, want_msg=None):
            st, b, h = c.request(method, target, body)
            assert st == want_status, (method, target, body, st, b)
            assert h.get("content-type") == "application/json", h
            m = message(b)
            if want_msg:
                assert want_msg in m, (m, want_msg)
        check("GET", "/get_tpm_keys", None, 400, "api-version not specified")
        check("GET", "/get_tpm_keys?api-version=2099-01-01", None, 400, 'invalid api-version "2099-01-01"')
        check("GET", "/nothing?" + API, None, 404, "not found")
        check("GET", "/get_tpm_keys/x?" + API, None, 404)
        check("POST", "/get_tpm_keys?" + API, "{}", 400, "method not allowed")
        check("GET", "/sign_with_auth_key?" + API, None, 400, "method not allowed")
        check("POST", "/sign_with_auth_key?" + API, b"", 400, "missing request body")
        check("POST", "/sign_with_auth_key?" + API, "{not json", 422)
        check("POST", "/sign_with_auth_key?" + API, "[]", 422)
        check("POST", "/sign_with_auth_key?" + API, "{}", 422, "data")
        check("POST", "/sign_with_auth_key?" + API, '{"data": 5}', 422, "data")
        check("POST", "/sign_with_auth_key?" + API, '{"data": "!!!"}', 422, "base64")
        check("POST", "/import_auth_key?" + API, '{"data": "AAAA"}', 422, "key")
        # no key imported yet: a TPM failure that says what failed
        st, b, _ = c.request("POST", "/sign_with_auth_key?" + API, {"data": "AAAA"})
        assert st == 500 and "import" in message(b), (st, b)
        # extra query parameters are ignored, like aziot
        st, _, _ = c.request("GET", "/get_tpm_keys?foo=bar&" + API)
        assert st == 200
        # after all that the keep-alive connection still works
        c.keys()


def run_as_nobody_client(sock, target, method="GET", body=None):
    """One request as nobody:nogroup; returns (status, message-or-body)."""
    return request_as("nobody", "nogroup", sock, method, target, body)


@R.case
def unauthorized_uid_403():
    nobody = pwd.getpwnam("nobody").pw_uid
    with harness.Swtpm() as tpm:
        d = Daemon(tpm, principals=[])
        with d:
            os.chmod(d.sock, 0o666)  # let the kernel pass nobody through, so the daemon decides
            st, b = run_as_nobody_client(d.sock, "/get_tpm_keys?" + API)
            assert st == 403, (st, b)
            assert "uid %d" % nobody in json.loads(b)["message"], b
            st, b = run_as_nobody_client(d.sock, "/sign_with_auth_key?" + API, "POST", '{"data":"AAAA"}')
            assert st == 403, (st, b)
            log = d.read_log()
            assert "CLIENT_UID=%d" % nobody in log, log
        # a [[principal]] entry allows exactly its ops
        d3 = Daemon(tpm, principals=[{"uid": nobody, "allow": ["tpm.keys"]}])
        with d3:
            os.chmod(d3.sock, 0o666)
            assert run_as_nobody_client(d3.sock, "/get_tpm_keys?" + API)[0] == 200
            st, b = run_as_nobody_client(d3.sock, "/sign_with_auth_key?" + API, "POST", '{"data":"AAAA"}')
            assert st == 403 and "tpm.sign" in b, (st, b)


@R.case
def socket_group_member_allowed():
    """Socket file group = nogroup (set before the daemon binds, via a setgid run dir)."""
    with harness.Swtpm() as tpm:
        d = Daemon(tpm)
        run = os.path.dirname(d.sock)
        os.makedirs(run, exist_ok=True)
        os.chown(run, 0, grp.getgrnam("nogroup").gr_gid)
        os.chmod(run, 0o2755)  # setgid: the socket inherits the directory's group
        with d:
            assert os.stat(d.sock).st_gid == grp.getgrnam("nogroup").gr_gid
            assert oct(os.stat(d.sock).st_mode & 0o777) == oct(0o660)
            os.chmod(d.sock, 0o666)
            st, b = run_as_nobody_client(d.sock, "/get_tpm_keys?" + API)
            assert st == 200, (st, b)


@R.case
def concurrent_64_clients():
    n_clients, n_signs = 64, 1000
    with harness.Swtpm() as tpm, Daemon(tpm, limits={"max_connections": 128,
                                                     "max_connections_per_uid": 128}) as d:
        with Client(d.sock) as c:
            ek, srk = c.keys()
            blob, key = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob)[0] == 200
        errors = []

        def worker(i):
            try:
                with Client(d.sock) as c:
                    for k in range(n_signs):
                        data = b"%d/%d" % (i, k)
                        r = c.sign(data)
                        if r != (200, hmac_sha256(key, data)):
                            errors.append((i, k, r))
                            return
            except Exception as e:  # noqa: BLE001
                errors.append((i, repr(e)))

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[:5]
        d.stop()
        assert_tpm_clean(tpm)


@R.case
def pipelined_and_half_closed():
    with harness.Swtpm() as tpm, Daemon(tpm) as d:
        with Client(d.sock) as c:
            one = ("GET /get_tpm_keys?%s HTTP/1.1\r\nHost: x\r\n\r\n" % API).encode()
            bad = b"GET /nope?" + API.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            c.send_raw(one + bad + one)
            assert [c.read_response()[0] for _ in range(3)] == [200, 404, 200]
        with Client(d.sock) as c:
            c.send_raw(("GET /get_tpm_keys?%s HTTP/1.1\r\nHost: x\r\n\r\n" % API).encode())
            c.s.shutdown(socket.SHUT_WR)
            st, _, h = c.read_response()
            assert st == 200, (st, h)
            assert c.at_eof()


@R.case
def signs_keep_order():
    """Every TPM command runs on the TPM thread in submission order: a
    signature (short or long) sent while an import runs waits for it and
    uses the new key (one FIFO, one path)."""
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c, Client(d.sock) as k:
        ek, srk = c.keys()
        blob, key = authblob.make_auth_blob(ek, srk)
        assert c.import_key(blob)[0] == 200
        for _ in range(3):
            assert k.sign(b"warm") == (200, hmac_sha256(key, b"warm"))
            blob2, key2 = authblob.make_auth_blob(ek, srk)
            body = json.dumps({"key": base64.b64encode(blob2).decode()}).encode()
            c.send_raw(b"POST /import_auth_key?" + API.encode() + b" HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body)
            time.sleep(0.003)  # the import (tens of ms on swtpm) is running
            long_data = os.urandom(2000)
            assert k.sign(b"after") == (200, hmac_sha256(key2, b"after"))
            assert k.sign(long_data) == (200, hmac_sha256(key2, long_data))
            assert c.read_response()[0] == 200
            key = key2
        d.stop()
        log = d.read_log()
        m = re.search(r"TPM jobs done: (\d+)", log)
        assert m and int(m.group(1)) >= 14, log  # START, import, 3 x (sign, import, sign, long sign)
        assert_tpm_clean(tpm)


@R.case
def key_evicted_behind_the_daemon():
    """A signature on a known key handle meets a key someone evicted: a
    clear error, and the next import and signature work again."""
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c:
        ek, srk = c.keys()
        blob, key = authblob.make_auth_blob(ek, srk)
        assert c.import_key(blob)[0] == 200
        assert c.sign(b"a") == (200, hmac_sha256(key, b"a"))  # the handle is known: the next one goes straight to HMAC
        tpm.tool("tpm2_evictcontrol", "-C", "o", "-c", "0x81000100")
        st, body = c.sign(b"b")
        assert st == 500 and "no authentication key" in message(body) and "0x81000100" in message(body), (st, body)
        st, body = c.sign(b"b")  # the handle was forgotten: it is looked up first, and not found
        assert st == 500 and "no authentication key" in message(body), (st, body)
        blob, key = authblob.make_auth_blob(ek, srk)
        assert c.import_key(blob)[0] == 200
        assert c.sign(b"c") == (200, hmac_sha256(key, b"c"))
        assert c.sign(b"d") == (200, hmac_sha256(key, b"d"))
        assert_tpm_clean(tpm)


@R.case
def tpm_shared_with_other_programs():
    """swtpm serves one connection at a time and the daemon keeps its
    connection between commands: tpm2-tools still get their turn, while the
    daemon signs without a pause (the connection is renewed every 100 ms)
    and right after it went idle (released after 2 ms)."""
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c:
        ek, srk = c.keys()
        blob, key = authblob.make_auth_blob(ek, srk)
        assert c.import_key(blob)[0] == 200
        stop = threading.Event()
        result = {"ok": 0, "bad": []}

        def load():
            with Client(d.sock) as k:
                while not stop.is_set():
                    st, body = k.sign(b"load")
                    if (st, body) == (200, hmac_sha256(key, b"load")):
                        result["ok"] += 1
                    else:
                        result["bad"].append((st, body))

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.3)
            for _ in range(3):
                before = result["ok"]
                t0 = time.monotonic()
                tpm.tool("tpm2_getcap", "properties-fixed", timeout=30)
                took = time.monotonic() - t0
                assert took < 3.0, f"tpm2_getcap waited {took:.2f} s for the TPM while the daemon signed"
                assert result["ok"] > before, "the daemon did not sign while tpm2_getcap ran"
        finally:
            stop.set()
            t.join()
        assert not result["bad"] and result["ok"] > 100, result
        # idle: the connection is back with swtpm at once
        assert c.sign(b"x") == (200, hmac_sha256(key, b"x"))
        t0 = time.monotonic()
        tpm.tool("tpm2_getcap", "properties-fixed", timeout=30)
        assert time.monotonic() - t0 < 3.0
        assert_tpm_clean(tpm)


@R.case
def keys_served_while_tpm_busy():
    """get_tpm_keys needs no TPM round trip: it overtakes a running import."""
    with harness.Swtpm() as tpm, Daemon(tpm) as d, Client(d.sock) as c, Client(d.sock) as k:
        ek, srk = c.keys()
        overtaken = 0
        for _ in range(5):
            blob, _ = authblob.make_auth_blob(ek, srk)
            body = json.dumps({"key": base64.b64encode(blob).decode()}).encode()
            c.send_raw(b"POST /import_auth_key?" + API.encode() + b" HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body)
            k.keys()
            # the import's answer has not arrived yet when get_tpm_keys was answered
            if not select.select([c.s], [], [], 0)[0] and not c.buf:
                overtaken += 1
            st, b, _ = c.read_response()
            assert st == 200, b
        assert overtaken >= 3, overtaken


@R.case
def curl_large_body_expect_continue():
    """curl sends Expect: 100-continue for bodies over 1 KiB; no 1 s stall."""
    with harness.Swtpm() as tpm, Daemon(tpm) as d:
        body = json.dumps({"data": base64.b64encode(os.urandom(2000)).decode()})
        t0 = time.time()
        p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", d.sock,
                            "-H", "Content-Type: application/json", "-d", body,
                            "http://tpmd.sock/sign_with_auth_key?" + API], capture_output=True, text=True)
        assert p.stdout == "500", (p.stdout, p.stderr)  # parsed and run: no key imported yet
        assert time.time() - t0 < 0.9, time.time() - t0


if __name__ == "__main__":
    R.main()
