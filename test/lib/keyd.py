"""test/keyd/keyd_sim.py (an aziot-keyd stand-in) for the tests: start, stop, principals, modes, log.

    from keyd import KeydSim
    with KeydSim() as k:                       # own temp dir, socket k.socket, k.url "unix://..."
        k.add_principal(os.getuid(), ["aziot_identityd_master_id"])   # config.d/tpmidd.toml
        r = k.request("POST", "/key?api-version=2020-09-01", {"keyId": "x", "usage": "derive,sign"})
        k.set_mode("refuse")                   # "up" | "refuse" | "error" | "stall:SECONDS"
        k.stop(); k.start()                    # keys (and handles) survive a restart
        k.requests()                           # [{"ts","uid","method","path","status","message"}]
        k.key_bytes("x"); k.derive("x", b"m:1:primary")   # computed here, not asked from the sim

The sim's directory (k.dir) is its keyd config dir too: config.toml and config.d/*.toml there are
read as keyd reads /etc/aziot/keyd/config.toml and config.d/. workdir and socket_path let a test put
them where the daemon under test expects them.
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

_LIB = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _LIB)
import harness  # noqa: E402
from daemon import unix_request  # noqa: E402

KEYD_SIM = os.path.join(_LIB, "..", "keyd", "keyd_sim.py")
API = "api-version=2020-09-01"
START_TIMEOUT = 10          # how long start() waits for the socket (seconds)
MASTER_KEY = "aziot_identityd_master_id"


def module_sas(keyd, handle, hub, device_id, module_id, ttl=3600):
    """A module SAS token signed by keyd with the module's keyHandle, as
    aziot-edged's workload sign does: sr = the URL-encoded
    HUB/devices/DEVICE/modules/MODULE, signed "sr\\nse", no skn. Raises
    AssertionError with keyd's answer when keyd refuses."""
    sr = urllib.parse.quote("%s/devices/%s/modules/%s" % (hub, device_id, module_id), safe="")
    se = int(time.time()) + ttl
    r = keyd.request("POST", "/sign?" + API, {"keyHandle": handle, "algorithm": "HMAC-SHA256",
                                              "parameters": {"message": base64.b64encode(
                                                  ("%s\n%d" % (sr, se)).encode()).decode()}})
    assert r.status == 200 and r.json and r.json.get("signature"), r
    sig = urllib.parse.quote(r.json["signature"], safe="")
    return "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, sig, se)


class KeydSim:
    def __init__(self, workdir=None, socket_path=None):
        self.dir = workdir or harness.tmpdir("tpmid-keyd-")
        self.own_dir = workdir is None
        self.config_d = os.path.join(self.dir, "config.d")
        os.makedirs(self.config_d, exist_ok=True)
        self.socket = socket_path or os.path.join(self.dir, "keyd.sock")
        self.log_path = os.path.join(self.dir, "requests.log")
        self.proc = None
        self.out = None

    @property
    def url(self):
        """What [endpoints] aziot_keyd takes."""
        return "unix://" + self.socket

    # lifecycle --------------------------------------------------------------
    def start(self):
        assert self.proc is None, "already running"
        ready = os.path.join(self.dir, "ready")
        try:
            os.unlink(ready)
        except FileNotFoundError:
            pass
        self.out = open(os.path.join(self.dir, "keyd_sim.out"), "ab")
        self.proc = subprocess.Popen(["/usr/bin/python3", KEYD_SIM, "serve", "--dir", self.dir,
                                      "--socket", self.socket], stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError("keyd_sim did not start:\n" + self.output())
            time.sleep(0.02)
        return self

    def stop(self):
        """Stop the sim (its socket goes away: keyd down)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.out:
            self.out.close()
            self.out = None

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

    def output(self):
        try:
            with open(os.path.join(self.dir, "keyd_sim.out"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # behaviour --------------------------------------------------------------
    def set_mode(self, mode):
        """"up", "refuse" (accept and close, no answer), "error" (500 to everything), "stall:SECONDS"."""
        tmp = os.path.join(self.dir, "mode.tmp")
        with open(tmp, "w") as f:
            f.write(mode + "\n")
        os.replace(tmp, os.path.join(self.dir, "mode"))

    def write_principals(self, name, principals):
        """config.d/NAME: [[principal]] entries from [(uid, [key patterns]), ...]; [] removes the file."""
        path = os.path.join(self.config_d, name)
        if not principals:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return path
        text = "".join("[[principal]]\nuid = %d\nkeys = [%s]\n\n" % (uid, ", ".join(json.dumps(k) for k in keys))
                       for uid, keys in principals)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def add_principal(self, uid, keys, name="tpmidd.toml"):
        return self.write_principals(name, [(uid, list(keys))])

    # inspection -------------------------------------------------------------
    def requests(self, since=0):
        """Request log entries from index since on (list of dicts, oldest first)."""
        try:
            with open(self.log_path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in lines[since:] if l]

    def key_bytes(self, key_id):
        with open(os.path.join(self.dir, "keys.json")) as f:
            return base64.b64decode(json.load(f)["keys"][key_id]["bytes"])

    def derive(self, key_id, data):
        """The derived key as keyd computes it: HMAC-SHA256(base key bytes, data) (aziot-keys key.rs)."""
        return hmac.new(self.key_bytes(key_id), data, hashlib.sha256).digest()

    def request(self, method, target, body=None, timeout=10):
        """One request as this process's uid; returns daemon.Response (status, json, raw, headers)."""
        return unix_request(self.socket, method, target, body, timeout)
