"""Helpers for the provisioning tests (provision, reprovision, crash-recovery, demo).

- Sim: the DPS + IoT Hub simulator (test/dps-sim) in a private state dir.
- Daemon: writes a DPS config for tpmidd ([tpm] tcti = the Swtpm's tcti: the
  device stand-in under TPMID_TEST_TCTI=device), starts build/daemon/tpmidd (through
  harness.daemon_argv(), so TPMID_DAEMON_WRAPPER applies), waits until the
  identity socket answers, talks HTTP over both Unix sockets, stops it with
  SIGTERM (exit code must be 0) or kills it, and keeps its log for failures.
- Device: swtpm + Sim + an enrolled device + its Daemon, stopped together.
- tpm_info(): the EK/SRK/registration id as `tpmidctl tpm info --json` prints them.
- hub_get(): one request to a simulated IoT Hub by its real name, TLS checked
  against the simulator's CA (what a device SDK would do with the SAS token).
- read_state_file(): parse and verify <state_dir>/device-state (JSON line +
  sha256 digest line), independently of lib/state.c.
"""
import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

_LIB = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _LIB)
sys.path.insert(0, os.path.join(_LIB, "..", "dps-sim"))
import harness  # noqa: E402
from simctl import SimServer  # noqa: E402

ID_API = "api-version=2020-09-01"
ID_API_2021 = "api-version=2021-12-01"
TPM_API = "api-version=2020-09-01"
ID_SCOPE = "0ne00000001"
HUB1 = "hub1.azure-devices.net"
HUB2 = "hub2.azure-devices.net"
READY_TIMEOUT = 20      # seconds for the identity socket to answer after start
STATE_FILE = "device-state"


def tpmidctl_path():
    return harness.program("tpmidctl")


def wait_for(pred, timeout, step=0.05, what="condition"):
    """Poll pred() until it returns something truthy; return that value or raise."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError("timed out after %.1f s waiting for %s (last: %r)" % (timeout, what, last))


# ---------------------------------------------------------------- HTTP over Unix sockets

class _UnixConn(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Response:
    def __init__(self, status, raw, headers):
        self.status = status
        self.raw = raw
        self.headers = headers
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    @property
    def message(self):
        return (self.json or {}).get("message", "") if isinstance(self.json, dict) else ""

    def __repr__(self):
        return "<%d %s>" % (self.status, self.raw[:400].decode(errors="replace"))


def unix_request(path, method, target, body=None, timeout=30):
    """One request on a fresh connection. body: dict/list (JSON), str/bytes or None."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    c = _UnixConn(path, timeout)
    try:
        headers = {"Host": "localhost"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        c.request(method, target, body=body, headers=headers)
        r = c.getresponse()
        raw = r.read()
        return Response(r.status, raw, {k.lower(): v for k, v in r.getheaders()})
    finally:
        c.close()


# ---------------------------------------------------------------- TPM facts

def tpm_info(tpm):
    """`tpmidctl tpm info --json --tcti` (creates EK/SRK on a blank TPM). Returns
    {"registration_id", "ek" (bytes), "srk" (bytes), "text" (the JSON)}. The
    daemon must not be running on this swtpm."""
    p = harness.run([tpmidctl_path(), "tpm", "info", "--json", "--tcti", tpm.tcti], timeout=60)
    j = json.loads(p.stdout)
    return {"registration_id": j["registration_id"], "ek": base64.b64decode(j["endorsement_key"]),
            "srk": base64.b64decode(j["storage_root_key"]), "text": p.stdout}


def readpublic(tpm, handle, path):
    """tpm2_readpublic -c HANDLE -o PATH (the seed script's ek.pub); returns the bytes."""
    tpm.tool("tpm2_readpublic", "-c", handle, "-o", path)
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- simulator

class Sim:
    """SimServer in its own temp dir; .client is the control client (SimClient)."""

    def __init__(self, polls=1, retry_after=1, port=0, workdir=None):
        self.dir = workdir or harness.tmpdir("tpmid-sim-")
        self.own_dir = workdir is None
        self.server = SimServer(os.path.join(self.dir, "state"), port=port, polls=polls, retry_after=retry_after,
                                id_scope=ID_SCOPE)
        self.client = self.server.client
        self.port = port

    @property
    def state_dir(self):
        return self.server.state_dir

    @property
    def ca_path(self):
        return os.path.join(self.server.state_dir, "ca.pem")

    @property
    def endpoint(self):
        return "https://127.0.0.1:%d" % self.port

    def start(self):
        self.server.start()
        self.port = self.server.port
        # Later restarts (tests that take DPS down and up again) keep the port.
        self.server.args[self.server.args.index("--port") + 1] = str(self.port)
        return self

    def stop(self):
        self.server.stop()

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # log helpers ------------------------------------------------------
    def log(self, since=0):
        return self.client.log(since)

    def last_seq(self):
        entries = self.client.log()
        return entries[-1]["seq"] if entries else 0

    def requests(self, route=None, since=0):
        """Log entries (optionally of one route: register-challenge, register-auth, operation, hub)."""
        return [e for e in self.client.log(since) if route is None or e["route"] == route]

    def connect_to(self):
        """TPMIDD_CLOUD_CONNECT_TO for both simulated hubs."""
        return ",".join("%s:443:127.0.0.1:%d" % (h, self.port) for h in (HUB1, HUB2))


# ---------------------------------------------------------------- IoT Hub as a device would call it

class _HubConn(http.client.HTTPSConnection):
    """HTTPS to HUB:443 that actually connects to the simulator (curl --connect-to)."""

    def __init__(self, hub, port, ca, timeout=15):
        ctx = ssl.create_default_context(cafile=ca)
        super().__init__(hub, 443, context=ctx, timeout=timeout)
        self._sim_port = port
        self._ctx = ctx

    def connect(self):
        raw = socket.create_connection(("127.0.0.1", self._sim_port), self.timeout)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self.host)


def hub_get(sim, hub, device_id, sas_token, sub="/modules"):
    """GET https://HUB/devices/ID{sub}?api-version=2021-04-12 with Authorization: token.
    Returns (status, body bytes)."""
    c = _HubConn(hub, sim.port, sim.ca_path)
    try:
        c.request("GET", "/devices/%s%s?api-version=2021-04-12" % (device_id, sub),
                  headers={"Authorization": sas_token})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def hub_post(sim, hub, path, body, auth):
    """POST https://HUB/path (JSON body, Authorization: auth) to the simulator,
    TLS checked against its CA. Returns the status."""
    c = _HubConn(hub, sim.port, sim.ca_path)
    try:
        c.request("POST", path, body=json.dumps(body).encode(),
                  headers={"Authorization": auth, "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def tamper(token):
    """The same SAS token with one character of its signature changed."""
    i = token.index("sig=") + 4
    ch = token[i]
    return token[:i] + ("B" if ch != "B" else "C") + token[i + 1:]


# ---------------------------------------------------------------- state file

def read_state_file(path):
    """Parse <state_dir>/device-state. Returns the JSON object; raises ValueError when
    the file is not exactly two lines with a matching sha256 digest."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise ValueError("expected two newline-terminated lines, got %r" % data[:200])
    first = lines[0] + b"\n"
    want = b"sha256:" + hashlib.sha256(first).hexdigest().encode()
    if lines[1] != want:
        raise ValueError("digest line %r does not match %r" % (lines[1], want))
    return json.loads(lines[0])


# ---------------------------------------------------------------- the daemon

def dps_config(tpm, sim, state_dir, run_dir, mode="Dynamic", registration_id=None, payload=None,
               endpoint=None, ca=None, log_level="debug", cloud_timeout=None, extra_toml=None, tcti=None):
    lines = ['auto_reprovisioning_mode = "%s"' % mode,
             'state_dir = "%s"' % state_dir,
             'cloud_ca_bundle = "%s"' % (ca or sim.ca_path),
             'log_level = "%s"' % log_level]
    if cloud_timeout:
        lines.append("cloud_timeout_sec = %d" % cloud_timeout)
    lines += ["", "[provisioning]", 'source = "dps"',
              'global_endpoint = "%s"' % (endpoint or sim.endpoint),
              'id_scope = "%s"' % ID_SCOPE]
    if payload:
        lines.append('payload = { uri = "file://%s" }' % payload)
    lines += ["", "[provisioning.attestation]", 'method = "tpm"']
    if registration_id:
        lines.append('registration_id = "%s"' % registration_id)
    lines += ["", "[tpm]", 'tcti = "%s"' % (tcti or tpm.tcti),
              "", "[endpoints]",
              'aziot_tpmd = "unix://%s/tpmd.sock"' % run_dir,
              'aziot_identityd = "unix://%s/identityd.sock"' % run_dir]
    if extra_toml:  # more tables, e.g. [tpm.hierarchy_authorization]
        lines += ["", extra_toml.rstrip("\n")]
    return "\n".join(lines) + "\n"


def offline_config(dirname, top="", tables=""):
    """Write dirname/config.toml: a DPS configuration whose endpoint nothing
    answers (127.0.0.1:1) and whose sockets are in dirname, for tpmidctl runs
    without a daemon. top: lines before the first table; tables: text after
    [endpoints]'s lines (more tables; lines before the first of them are still
    in [endpoints]). Returns its path."""
    path = os.path.join(dirname, "config.toml")
    with open(path, "w") as f:
        f.write(top + '[provisioning]\nsource = "dps"\nglobal_endpoint = "https://127.0.0.1:1/"\n'
                'id_scope = "%s"\n[provisioning.attestation]\nmethod = "tpm"\n'
                '[endpoints]\naziot_tpmd = "unix://%s/tpmd.sock"\naziot_identityd = "unix://%s/identityd.sock"\n'
                % (ID_SCOPE, dirname, dirname) + tables)
    return path


class Daemon:
    """tpmidd with a DPS config. Keeps state_dir across restart() (that is the point
    of the reprovisioning tests); the log file accumulates over restarts, and
    log_since_start() gives the current run's part. tcti: instead of tpm.tcti;
    argv_prefix: run tpmidd under it (setpriv as a service user), without
    TPMID_DAEMON_WRAPPER."""

    def __init__(self, tpm, sim, mode="Dynamic", registration_id=None, payload=None, workdir=None,
                 env=None, cloud_timeout=None, log_level="debug", extra_toml=None, tcti=None, argv_prefix=None):
        self.tpm = tpm
        self.sim = sim
        self.dir = workdir or harness.tmpdir("tpmidd-prov-")
        self.state_dir = os.path.join(self.dir, "state")
        self.run_dir = os.path.join(self.dir, "run")
        self.config = os.path.join(self.dir, "config.toml")
        self.log = os.path.join(self.dir, "tpmidd.log")
        self.state_file = os.path.join(self.state_dir, STATE_FILE)
        self.identity_sock = os.path.join(self.run_dir, "identityd.sock")
        self.tpmd_sock = os.path.join(self.run_dir, "tpmd.sock")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.opts = dict(mode=mode, registration_id=registration_id, payload=payload, log_level=log_level,
                         cloud_timeout=cloud_timeout, extra_toml=extra_toml, tcti=tcti)
        self.extra_env = env or {}
        self.argv_prefix = argv_prefix or []
        self.proc = None
        self.logf = None
        self.log_offset = 0
        self.write_config()

    def write_config(self, **changes):
        self.opts.update(changes)
        with open(self.config, "w") as f:
            f.write(dps_config(self.tpm, self.sim, self.state_dir, self.run_dir, **self.opts))

    def environ(self):
        e = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "TPMIDD_CONFIG"):
            e.pop(k, None)
        e["TSS2_LOG"] = os.environ.get("TPMID_TEST_TSS2_LOG", "all+none")  # e.g. "tcti+debug" to see the TCTI
        e["TPMIDD_CLOUD_CONNECT_TO"] = self.sim.connect_to()
        e["TPMIDD_HTTPS_HELPER"] = harness.program_for_user("tpmidd-https") if self.argv_prefix \
            else harness.program("tpmidd-https")  # the build tree's helper
        e.update(self.extra_env)
        return e

    # lifecycle ---------------------------------------------------------
    def start(self, wait=True):
        assert self.proc is None, "already running"
        self.logf = open(self.log, "ab")
        self.log_offset = self.logf.tell()
        # setpriv's user may not enter the checkout: it runs copies.
        argv = self.argv_prefix + [harness.program_for_user("tpmidd"), "-c", self.config] if self.argv_prefix \
            else harness.daemon_argv("-c", self.config)
        self.proc = subprocess.Popen(argv, env=self.environ(),
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        def ready():
            self.check_alive()
            try:
                return unix_request(self.identity_sock, "GET", "/status?" + ID_API, timeout=5).status == 200
            except OSError:
                return False
        try:
            wait_for(ready, timeout, what="the identity socket")
        except AssertionError as e:
            raise AssertionError("%s\n--- tpmidd log ---\n%s" % (e, self.log_since_start()))

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            raise AssertionError("tpmidd exited with %d:\n%s" % (rc, self.log_for_humans()))

    def stop(self, timeout=20):
        """SIGTERM; the daemon must exit 0."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._closed()
            raise AssertionError("tpmidd did not stop on SIGTERM:\n" + self.log_since_start())
        self._closed()
        if rc != 0:
            raise AssertionError("tpmidd exited with %d:\n%s" % (rc, self.log_for_humans()))
        return rc

    def kill(self):
        """SIGKILL (a crash): nothing is flushed, nothing cleaned up."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self._closed()

    def _closed(self):
        self.proc = None
        if self.logf:
            self.logf.close()
            self.logf = None

    def restart(self, wait=True):
        self.stop()
        return self.start(wait)

    def cleanup(self):
        if self.proc is not None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.proc is not None:
                if exc_type is None:
                    self.stop()
                else:
                    self.kill()
            if exc_type is not None and "--- tpmidd log" not in str(exc):
                sys.stderr.write("--- tpmidd log (%s, this run) ---\n%s\n" % (self.log, self.log_for_humans()))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # logs --------------------------------------------------------------
    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_since_start(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_for_humans(self, limit=15000):
        """This run's log without the per-connection debug lines our status polling causes."""
        lines = [l for l in self.log_since_start().splitlines() if "connection from uid" not in l]
        return "\n".join(lines)[-limit:]

    def fail(self, msg):
        raise AssertionError("%s\n--- tpmidd log (this run) ---\n%s" % (msg, self.log_for_humans()))

    # identity socket -----------------------------------------------------
    def request(self, method, target, body=None, timeout=30, sock=None):
        return unix_request(sock or self.identity_sock, method, target, body, timeout)

    def status(self):
        r = self.request("GET", "/status?" + ID_API)
        if r.status != 200:
            self.fail("GET /status answered %r" % r)
        return r.json

    def prov(self):
        return self.status()["provisioning"]

    def wait_state(self, states, timeout=30):
        """Wait until provisioning.state is one of states; returns the provisioning object."""
        if isinstance(states, str):
            states = (states,)
        last = {}

        def check():
            self.check_alive()
            last["p"] = self.prov()
            return last["p"] if last["p"]["state"] in states else None
        try:
            return wait_for(check, timeout, step=0.1, what="state %s" % "/".join(states))
        except AssertionError as e:
            self.fail("%s; last provisioning status %s" % (e, json.dumps(last.get("p"))))

    def wait_provisioned(self, timeout=40):
        return self.wait_state("provisioned", timeout)

    def device(self):
        return self.request("POST", "/identities/device?" + ID_API, {"type": "aziot"})

    def provisioning_info(self):
        return self.request("GET", "/identities/provisioning?" + ID_API_2021)

    def reprovision(self, timeout=60):
        return self.request("POST", "/identities/device/reprovision?" + ID_API, {"type": "aziot"}, timeout=timeout)

    def token(self, lifetime=600):
        return self.request("POST", "/identities/device/token?" + ID_API, {"lifetime_sec": lifetime})

    def identity(self):
        """(hub, device id) from POST /identities/device; fails unless 200."""
        r = self.device()
        if r.status != 200:
            self.fail("POST /identities/device answered %r" % r)
        spec = r.json["spec"]
        return spec["hubName"], spec["deviceId"]

    def hub_token_ok(self):
        """Get a token from the socket and check that its hub accepts it and rejects a
        tampered copy. Returns (hub, device id)."""
        r = self.token()
        if r.status != 200:
            self.fail("POST /identities/device/token answered %r" % r)
        t = r.json
        for k in ("sasToken", "expiresOn", "hubName", "deviceId"):
            assert k in t, (k, t)
        now = time.time()
        assert now + 500 <= t["expiresOn"] <= now + 700, t
        st, body = hub_get(self.sim, t["hubName"], t["deviceId"], t["sasToken"])
        if st != 200:
            self.fail("the hub %s rejected the daemon's token: %d %r" % (t["hubName"], st, body[:300]))
        st, body = hub_get(self.sim, t["hubName"], t["deviceId"], tamper(t["sasToken"]))
        assert st == 401, ("tampered token", st, body[:300])
        return t["hubName"], t["deviceId"]


class Device:
    """swtpm, the simulator and a device enrolled in it (hubs, policy,
    device_id: the enrollment's), with a Daemon configured for them but not
    started (daemon_opts: Daemon()'s). tpm_view(tpm): what the daemon's config
    names as the TPM (a proxy in front of swtpm) instead of swtpm itself. As a
    context manager it stops the daemon, the simulator and swtpm, in that order."""

    def __init__(self, hubs=(HUB1,), policy="hashed", device_id=None, sim_opts=None, tpm_view=None,
                 **daemon_opts):
        self.tpm = harness.Swtpm().start()
        try:
            self.sim = Sim(**(sim_opts or {})).start()
            self.info = tpm_info(self.tpm)
            self.regid = self.info["registration_id"]
            self.device_id = device_id or self.regid
            self.sim.client.enroll(self.regid, self.info["ek"], hubs=list(hubs), policy=policy, device_id=device_id)
            self.d = Daemon(tpm_view(self.tpm) if tpm_view else self.tpm, self.sim, **daemon_opts)
        except BaseException:
            self.tpm.cleanup()
            raise

    def provision(self):
        """Start the daemon and wait until it is provisioned, on HUB1."""
        self.d.start()
        self.d.wait_provisioned()
        assert self.d.identity() == (HUB1, self.device_id), (self.d.identity(), self.device_id)
        return self

    def routes(self, since):
        """The simulator's routes asked since seq since."""
        return [e["route"] for e in self.sim.requests(since=since)]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.d.__exit__(exc_type, exc, tb)
        finally:
            self.sim.cleanup()
            self.tpm.cleanup()
