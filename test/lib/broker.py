"""Helpers for the tpmidd TPM-socket tests (broker-api, broker-limits, broker-systemd).

- Daemon: writes a real config.toml, starts build/daemon/tpmidd against a Swtpm
  (through harness's TpmDevice under TPMID_TEST_TCTI=device),
  waits until get_tpm_keys answers, stops it with SIGTERM and checks exit code 0.
- Client: a keep-alive HTTP/1.1 client over a Unix socket (raw bytes, so tests
  can send malformed requests and see exactly what comes back).
- NotifySocket: a datagram socket standing in for systemd's NOTIFY_SOCKET.
"""
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

API = "api-version=2020-09-01"


def tpmidd_path():
    return harness.program("tpmidd")


def toml_config(tcti, sock, limits=None, principals=(), log_level="debug", extra=""):
    lines = ['log_level = "%s"' % log_level, extra, "[provisioning]", 'source = "none"',
             "[tpm]", 'tcti = "%s"' % tcti, "[endpoints]", 'aziot_tpmd = "unix://%s"' % sock,
             'aziot_identityd = "unix://%s"' % os.path.join(os.path.dirname(sock), "identityd.sock")]
    if limits:
        lines.append("[limits]")
        for k, v in limits.items():
            lines.append("%s = %d" % (k, v))
    for p in principals:
        lines.append("[[principal]]")
        lines.append("uid = %d" % p["uid"])
        lines.append('name = "%s"' % p.get("name", "p%d" % p["uid"]))
        if "allow" in p:
            lines.append("allow = [%s]" % ", ".join('"%s"' % a for a in p["allow"]))
    return "\n".join(lines) + "\n"


class Daemon:
    def __init__(self, swtpm, limits=None, principals=(), workdir=None, env=None, argv_prefix=None,
                 tcti=None, wait=True, sock=None):
        self.dir = workdir or harness.tmpdir("tpmidd-")
        self.sock = sock or os.path.join(self.dir, "run", "tpmd.sock")
        self.config = os.path.join(self.dir, "config.toml")
        self.log = os.path.join(self.dir, "tpmidd.log")
        self.swtpm = swtpm
        # swtpm.tcti is the device stand-in under TPMID_TEST_TCTI=device;
        # our_tcti() puts one in front of a socket a test chose (a proxy).
        self.tcti = harness.our_tcti(tcti) if tcti else swtpm.tcti
        self.write_config(limits, principals)
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("LISTEN_FDS", None)
        self.env["TSS2_LOG"] = os.environ.get("TPMID_TEST_TSS2_LOG", "all+none")
        self.env["TPMIDD_HTTPS_HELPER"] = harness.program("tpmidd-https")  # the build tree's helper
        if env:
            self.env.update(env)
        self.argv_prefix = argv_prefix or []
        self.proc = None
        self.wait_ready = wait

    def write_config(self, limits=None, principals=(), log_level="debug"):
        with open(self.config, "w") as f:
            f.write(toml_config(self.tcti, self.sock, limits, principals, log_level))

    def start(self):
        self.logf = open(self.log, "ab")
        # harness.daemon_argv() applies $TPMID_DAEMON_WRAPPER (the valgrind gate)
        # With a prefix (setpriv, systemd-socket-activate) a copy any user can
        # run: setpriv's user may not enter the checkout.
        argv = [harness.program_for_user("tpmidd"), "-c", self.config] if self.argv_prefix \
            else harness.daemon_argv("-c", self.config)
        self.proc = subprocess.Popen(self.argv_prefix + argv, env=self.env,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if self.wait_ready:
            self.wait_keys()
        return self

    def wait_keys(self, timeout=20):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("tpmidd exited with %d:\n%s" % (self.proc.returncode, self.read_log()))
            try:
                with Client(self.sock) as c:
                    st, body, _ = c.request("GET", "/get_tpm_keys?" + API)
                    if st == 200:
                        return body
                    last = (st, body)
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError("tpmidd not ready (%r):\n%s" % (last, self.read_log()))

    def read_log(self):
        try:
            return open(self.log, errors="replace").read()
        except OSError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        """SIGTERM; the daemon must exit 0 (which includes uv_loop_close() == 0)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("tpmidd did not stop on SIGTERM:\n" + self.read_log())
        self.proc = None
        self.logf.close()
        if rc != 0:
            raise AssertionError("tpmidd exited with %d:\n%s" % (rc, self.read_log()))
        if "handle still open" in self.read_log():
            raise AssertionError("tpmidd left libuv handles open:\n" + self.read_log())
        return rc

    def rss_kib(self):
        for line in open("/proc/%d/status" % self.proc.pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc is not None:
            if exc[0] is None:
                self.stop()
            else:
                self.proc.kill()
                self.proc.wait()
                self.logf.close()
                sys.stderr.write("--- tpmidd log ---\n" + self.read_log())


class Client:
    """Keep-alive HTTP/1.1 over a Unix socket. request() returns (status, body bytes, headers dict)."""

    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.s.sendall(data)

    def request(self, method, target, body=None, headers=None, keep_alive=True):
        h = ["%s %s HTTP/1.1" % (method, target), "Host: tpmd.sock"]
        if body is not None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            h.append("Content-Type: application/json")
            h.append("Content-Length: %d" % len(body))
        if not keep_alive:
            h.append("Connection: close")
        for k, v in (headers or {}).items():
            h.append("%s: %s" % (k, v))
        self.s.sendall(("\r\n".join(h) + "\r\n\r\n").encode() + (body or b""))
        return self.read_response()

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise ConnectionError("EOF from server")
        self.buf += d

    def read_response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, body, headers

    def at_eof(self, timeout=5):
        """True when the server closed the connection (EOF or reset) within timeout."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
                self.buf += d
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    # aziot API
    def keys(self):
        st, body, _ = self.request("GET", "/get_tpm_keys?" + API)
        assert st == 200, (st, body)
        j = json.loads(body)
        return base64.b64decode(j["endorsement_key"]), base64.b64decode(j["storage_root_key"])

    def import_key(self, blob):
        return self.request("POST", "/import_auth_key?" + API, {"key": base64.b64encode(blob).decode()})

    def sign(self, data):
        st, body, h = self.request("POST", "/sign_with_auth_key?" + API, {"data": base64.b64encode(data).decode()})
        if st != 200:
            return st, body
        return st, base64.b64decode(json.loads(body)["digest"])


def request_as(user, group, sock, method, target, body=None):
    """One request with Client as another user (setpriv; we are root), from
    copies of this file and harness.py that the user can read: it may not be
    able to enter the checkout. Returns (status, body text)."""
    mod, _ = harness.readable_copy(os.path.abspath(__file__), os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "harness.py"))
    code = ("import sys; sys.path.insert(0, %r); from broker import Client\n"
            "c = Client(%r)\nst, b, h = c.request(%r, %r, %r)\nprint(st); print(b.decode())\n") % (
        os.path.dirname(mod), sock, method, target, body)
    p = subprocess.run(["setpriv", "--reuid=" + user, "--regid=" + group, "--clear-groups",
                        "/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=os.path.dirname(mod))
    assert p.returncode == 0, p.stderr
    st, b = p.stdout.split("\n", 1)
    return int(st), b.strip()


def hmac_sha256(key, data):
    """What sign_with_auth_key must answer for data under the imported key."""
    return hmac.new(key, data, hashlib.sha256).digest()


def message(body):
    return json.loads(body)["message"]


class NotifySocket:
    """A datagram socket to point NOTIFY_SOCKET at; collects the messages."""

    def __init__(self, path):
        self.path = path
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        os.chmod(path, 0o666)
        self.s.settimeout(0.1)
        self.msgs = []

    def poll(self, duration=0.0):
        end = time.time() + duration
        while True:
            try:
                self.msgs.append(self.s.recv(4096).decode())
                continue
            except socket.timeout:
                pass
            if time.time() >= end:
                return self.msgs

    def wait_for(self, pred, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            for m in self.poll(0.1):
                if pred(m):
                    return m
        raise AssertionError("no matching notify message; got %r" % self.msgs)

    def close(self):
        self.s.close()
