"""Python client for the DPS simulator's control API (Unix socket STATE/control.sock).

    from simctl import SimClient, SimServer
    with SimServer(state_dir) as srv:          # starts dps_sim.py serve in a subprocess
        c = srv.client
        c.enroll("dev1", ek_bytes, hubs=["hub1.azure-devices.net"])
        c.fault("register-challenge", "throttle", count=2, retryAfter=1)
        print(c.status("dev1")["registrationState"])
        print(srv.endpoint, srv.ca_path)

Every method returns the decoded JSON answer or raises SimError(status, message).
"""
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT = 15          # how long SimServer waits for the simulator to come up (seconds)


class SimError(Exception):
    def __init__(self, status, message):
        super().__init__("%d: %s" % (status, message))
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class SimClient:
    def __init__(self, state_dir):
        self.sock_path = os.path.join(state_dir, "control.sock")

    def call(self, method, path, body=None):
        conn = _UnixConnection(self.sock_path)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data is not None else {})
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        out = json.loads(raw) if raw else None
        if r.status >= 300:
            raise SimError(r.status, (out or {}).get("error", raw.decode(errors="replace")))
        return out

    @staticmethod
    def _q(s):
        return urllib.parse.quote(s, safe="")

    def info(self):
        return self.call("GET", "/info")

    def config(self, **patch):
        return self.call("PATCH", "/config", patch) if patch else self.call("GET", "/config")

    def enroll(self, regid, ek, hubs=(), device_id=None, iot_edge=True, tags=None, policy="hashed",
               custom_payload=None, enabled=True):
        """Create/replace an individual TPM enrollment. ek: TPM2B_PUBLIC bytes or its base64.
        iot_edge: an IoT Edge device (default, as the guide enables it); False makes a plain device."""
        if isinstance(ek, (bytes, bytearray)):
            ek = base64.b64encode(ek).decode()
        return self.call("PUT", "/enrollments/" + self._q(regid), {
            "endorsementKey": ek, "deviceId": device_id, "iotEdge": iot_edge, "tags": tags or {},
            "iotHubs": list(hubs), "allocationPolicy": policy, "customPayload": custom_payload,
            "provisioningStatus": "enabled" if enabled else "disabled"})

    def update(self, regid, **patch):
        return self.call("PATCH", "/enrollments/" + self._q(regid), patch)

    def enable(self, regid, on=True):
        return self.update(regid, provisioningStatus="enabled" if on else "disabled")

    def delete(self, regid):
        return self.call("DELETE", "/enrollments/" + self._q(regid))

    def status(self, regid):
        return self.call("GET", "/enrollments/" + self._q(regid))

    def enrollments(self):
        return self.call("GET", "/enrollments")

    def move(self, regid, hub, revoke_old=True):
        return self.call("POST", "/enrollments/%s/move" % self._q(regid), {"hub": hub, "revokeOld": revoke_old})

    def hub_device(self, hub, device_id):
        return self.call("GET", "/hubs/%s/devices/%s" % (self._q(hub), self._q(device_id)))

    def delete_hub_device(self, hub, device_id):
        return self.call("DELETE", "/hubs/%s/devices/%s" % (self._q(hub), self._q(device_id)))

    def set_hub_device_status(self, hub, device_id, status):
        return self.call("PATCH", "/hubs/%s/devices/%s" % (self._q(hub), self._q(device_id)), {"status": status})

    # module registry (sim_hub.py) ------------------------------------------------------
    def create_hub_device(self, hub, device_id, iot_edge=True, primary_key=None, status="enabled"):
        """A device made in the hub directly (no DPS, no TPM); returns it with primaryKey (base64)."""
        body = {"iotEdge": iot_edge, "status": status}
        if primary_key is not None:
            body["primaryKey"] = primary_key if isinstance(primary_key, str) else \
                base64.b64encode(primary_key).decode()
        return self.call("PUT", "/hubs/%s/devices/%s" % (self._q(hub), self._q(device_id)), body)

    def set_hub_device_edge(self, hub, device_id, iot_edge):
        return self.call("PATCH", "/hubs/%s/devices/%s" % (self._q(hub), self._q(device_id)), {"iotEdge": iot_edge})

    def hub_modules(self, hub, device_id):
        """{"modules": [module as the hub has it + messages, lastMessage], "counts": {list, get, create,
        update, delete, telemetry, c2d, refused, unauthorized}} (counts: requests that reached the hub,
        not the injected faults; those are in log())."""
        return self.call("GET", "/hubs/%s/devices/%s/modules" % (self._q(hub), self._q(device_id)))

    def hub_module(self, hub, device_id, module_id):
        return self.call("GET", "/hubs/%s/devices/%s/modules/%s" % (self._q(hub), self._q(device_id),
                                                                   self._q(module_id)))

    def put_hub_module(self, hub, device_id, module_id, body=None):
        """Create/replace a module as an operator would (no Edge check); body as the hub's PUT."""
        return self.call("PUT", "/hubs/%s/devices/%s/modules/%s" % (self._q(hub), self._q(device_id),
                                                                   self._q(module_id)), body or {})

    def delete_hub_module(self, hub, device_id, module_id):
        return self.call("DELETE", "/hubs/%s/devices/%s/modules/%s" % (self._q(hub), self._q(device_id),
                                                                      self._q(module_id)))

    def clear_hub_module_counts(self, hub, device_id):
        return self.call("DELETE", "/hubs/%s/devices/%s/module-counts" % (self._q(hub), self._q(device_id)))

    def fault(self, route, kind, count=1, **kw):
        """Queue a fault for the next `count` requests on `route` (see dps_sim.py docstring)."""
        return self.call("POST", "/faults", dict(kw, route=route, kind=kind, count=count))

    def faults(self):
        return self.call("GET", "/faults")

    def clear_faults(self):
        return self.call("DELETE", "/faults")

    def log(self, since=0):
        return self.call("GET", "/log?since=%d" % since)

    def clear_log(self):
        return self.call("DELETE", "/log")


class SimServer:
    """Run `dps_sim.py serve` as a child process (for tests); stop() ends only that child."""

    def __init__(self, state_dir, port=0, polls=1, retry_after=1, id_scope="0ne00000001", extra_args=()):
        self.state_dir = state_dir
        self.args = [sys.executable, os.path.join(HERE, "dps_sim.py"), "serve", "--state", state_dir,
                     "--port", str(port), "--polls", str(polls), "--retry-after", str(retry_after),
                     "--id-scope", id_scope] + list(extra_args)
        self.proc = None
        self.client = SimClient(state_dir)

    def start(self):
        os.makedirs(self.state_dir, exist_ok=True)
        info_path = os.path.join(self.state_dir, "info.json")
        try:
            os.unlink(info_path)
        except FileNotFoundError:
            pass
        self.log_file = open(os.path.join(self.state_dir, "sim.log"), "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dps_sim exited early (rc %d); see %s/sim.log" % (self.proc.returncode,
                                                                                  self.state_dir))
            if os.path.exists(info_path):
                with open(info_path) as f:
                    self.info = json.load(f)
                self.port = self.info["port"]
                self.endpoint = self.info["globalEndpoint"]
                self.ca_path = self.info["caPath"]
                self.id_scope = self.info["idScope"]
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("dps_sim did not start within %d s" % START_TIMEOUT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log_file", None):
            self.log_file.close()
            self.log_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
