"""HTTP layer of the DPS simulator: the HTTPS device endpoint and the control API.

Device endpoint (HTTPS, 127.0.0.1 only, HTTP/1.1 keep-alive), routed by path:
    PUT /{idScope}/registrations/{regid}/register?api-version=...          DPS register
    GET /{idScope}/registrations/{regid}/operations/{opId}?api-version=... DPS poll
    *   /devices/{deviceId}[/...]          IoT Hub; the hub is the Host header (port stripped)
    *   /hub/{hubName}/devices/{deviceId}[/...]  IoT Hub addressed by path (plain shell use)

Control API (HTTP/1.1 JSON over the Unix socket STATE/control.sock; see dps_sim.py).

TLS handshakes run in the per-connection thread, so a client that stalls in the
handshake never blocks accept().
"""
import json
import os
import re
import socket
import ssl
import struct
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sim_core
import sim_hub
from sim_core import Response, ValidationError

DPS_REGISTER = re.compile(r"^/([^/]+)/registrations/([^/]+)/register$")
DPS_OPERATION = re.compile(r"^/([^/]+)/registrations/([^/]+)/operations/([^/]+)$")
HUB_BY_HOST = re.compile(r"^/devices/([^/]+)(?:/(.*))?$")
HUB_BY_PATH = re.compile(r"^/hub/([^/]+)/devices/([^/]+)(?:/(.*))?$")
HANDSHAKE_TIMEOUT = 10      # TLS handshake deadline (seconds)
IDLE_TIMEOUT = 120          # keep-alive idle timeout per connection (seconds)


def _encode(body):
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    return json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dps-sim"
    sys_version = ""

    def log_message(self, fmt, *args):   # the simulator keeps its own request log
        pass

    def version_string(self):
        return self.server_version

    def _read_body(self):
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        try:
            n = int(n)
        except ValueError:
            n = -1
        if not 0 <= n <= sim_core.BODY_MAX:
            self.close_connection = True
            raise ValueError("bad Content-Length")
        return self.rfile.read(n)

    def _send(self, status, body, headers=None, ctype="application/json; charset=utf-8"):
        data = _encode(body)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class DeviceHandler(_Handler):
    """DPS + IoT Hub device endpoint. self.server.sim is the Simulator."""

    def _route(self):
        """Classify the request: (route, handler-args). route names match the fault routes."""
        u = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(u.path)
        query = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        m = DPS_REGISTER.match(path)
        if m and self.command == "PUT":
            route = "register-auth" if "Authorization" in self.headers else "register-challenge"
            return route, m.group(2), ("register", m.group(1), m.group(2), query)
        m = DPS_OPERATION.match(path)
        if m and self.command == "GET":
            return "operation", m.group(2), ("operation", m.group(1), m.group(2), m.group(3), query)
        m = HUB_BY_PATH.match(path)
        if m:
            return "hub", None, ("hub", m.group(1), m.group(2), m.group(3) or "", query)
        m = HUB_BY_HOST.match(path)
        if m:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0] if not (
                self.headers.get("Host") or "").startswith("[") else ""
            return "hub", None, ("hub", host.lower(), m.group(1), m.group(2) or "", query)
        return "unknown", None, None

    def _dispatch(self, target, body):
        sim = self.server.sim
        kind = target[0]
        if kind == "register":
            return sim.register(target[1], target[2], target[3], self.headers, body)
        if kind == "operation":
            return sim.operation(target[1], target[2], target[3], target[4], self.headers)
        return sim.hub_request(self.command, target[1], target[2], target[3], target[4], self.headers, body)

    def _handle(self):
        sim = self.server.sim
        route, regid, target = self._route()
        throttled = sim.admit(route, regid) if target else None   # counted; over the quota?
        if throttled:
            self._throttled(throttled, route, regid)
            return
        try:
            body = self._read_body()
        except ValueError:
            resp = sim_core.dps_error(400, 400004, "InvalidRequestBody", "bad Content-Length")
            self._send(resp.status, resp.body, resp.headers)
            sim.record(self.command, self.path, self.headers.get("Host"), route, regid, resp)
            return
        fault = sim.take_fault(sim_hub.fault_route(route, self.command, target[3] if route == "hub" else None),
                               regid) if target else None
        if target is None:
            resp = sim_core.dps_error(404, 404000, "NotFound", "No such resource")
        elif fault and fault["kind"] in ("throttle", "unavailable", "error", "status", "reset"):
            resp = self._fault_response(fault)
        else:
            if fault and fault["kind"] == "stall":
                time.sleep(fault["seconds"])
            resp = self._dispatch(target, body)
            if fault and fault["kind"] == "malformed":
                raw = _encode(resp.body) or b"{}"
                resp.body = raw[: max(1, len(raw) // 2)]    # truncated JSON, same status/headers
        if fault:
            resp.fault = fault["kind"]
        sim.record(self.command, self.path, self.headers.get("Host"), route, regid, resp)
        if resp.action == "reset":
            self._reset()
            return
        try:
            self._send(resp.status, resp.body, resp.headers)
        except OSError:              # client gave up (e.g. after a stall): nothing to tell it
            self.close_connection = True

    def _throttled(self, resp, route, regid):
        """Answer the quota's 429; the body is read so that the connection stays usable."""
        try:
            self._read_body()
        except ValueError:
            self.close_connection = True
        self.server.sim.record(self.command, self.path, self.headers.get("Host"), route, regid, resp)
        try:
            self._send(resp.status, resp.body, resp.headers)
        except OSError:
            self.close_connection = True

    def _fault_response(self, f):
        hub = sim_hub.fault_response(f) if f["route"] in ("hub", "hub-modules") or (
            f["route"] == "any" and self._route()[0] == "hub") else None
        if hub is not None:
            return hub
        ra = {"retry-after": str(f["retryAfter"])} if f["retryAfter"] is not None else {}
        if f["kind"] == "throttle":
            r = sim_core.dps_error(429, 429001, "ThrottlingException", "Operations are being throttled",
                                   headers=ra or {"retry-after": "1"})
        elif f["kind"] == "unavailable":
            r = sim_core.dps_error(503, 503000, "ServiceUnavailable", "Service unavailable",
                                   headers=ra or {"retry-after": "1"})
        elif f["kind"] == "error":
            r = sim_core.dps_error(500, 500000, "InternalServerError", "An internal error occurred", headers=ra)
        elif f["kind"] == "status":
            r = Response(f["status"], f["body"] if f["body"] is not None else {}, ra)
        else:
            r = Response(0, None)
            r.action = "reset"
        r.reason = "injected " + f["kind"]
        return r

    def _reset(self):
        """Abort the TCP connection with RST and no HTTP response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(self.connection.detach())   # only fd of the socket + linger 0 => RST
        except OSError:
            pass

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def do_PUT(self):
        self._handle()

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_DELETE(self):
        self._handle()


class DeviceServer(ThreadingHTTPServer):
    """HTTPS server; the TLS handshake happens in the connection's own thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, sim, cert_path, key_path):
        self.sim = sim
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.tls.load_cert_chain(cert_path, key_path)
        super().__init__(addr, DeviceHandler)

    def finish_request(self, request, client_address):
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        tls.settimeout(IDLE_TIMEOUT)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class ControlHandler(_Handler):
    """JSON control API; self.server.sim is the Simulator, self.server.info the endpoint info."""

    def _json_body(self):
        raw = self._read_body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ValidationError("request body is not valid JSON") from None

    def _handle(self):
        sim = self.server.sim
        u = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in u.path.split("/") if p]
        query = dict(urllib.parse.parse_qsl(u.query))
        m = self.command
        try:
            body = self._json_body() if m in ("PUT", "PATCH", "POST") else None
            status, out = self._control(sim, m, parts, query, body)
        except ValidationError as e:
            status, out = 400, {"error": str(e)}
        except KeyError as e:
            status, out = 404, {"error": "not found: %s" % e.args[0]}
        except ValueError as e:
            status, out = 400, {"error": str(e)}
        self._send(status, out)

    def _control(self, sim, m, p, q, body):
        mod = sim_hub.control(sim, m, p, q, body)
        if mod is not None:
            return mod
        if p == ["info"] and m == "GET":
            return 200, dict(self.server.info, **sim.get_config())
        if p == ["config"]:
            if m == "GET":
                return 200, sim.get_config()
            if m == "PATCH":
                return 200, sim.set_config(body)
        if p == ["enrollments"] and m == "GET":
            return 200, sim.list_enrollments()
        if len(p) == 2 and p[0] == "enrollments":
            if m == "GET":
                return 200, sim.status(p[1])
            if m == "PUT":
                sim.put_enrollment(p[1], body)
                return 200, sim.status(p[1])
            if m == "PATCH":
                sim.patch_enrollment(p[1], body)
                return 200, sim.status(p[1])
            if m == "DELETE":
                sim.delete_enrollment(p[1])
                return 200, {}
        if len(p) == 3 and p[0] == "enrollments" and p[2] == "move" and m == "POST":
            return 200, sim.move(p[1], body.get("hub"), bool(body.get("revokeOld", True)))
        if len(p) == 4 and p[0] == "hubs" and p[2] == "devices":
            if m == "GET":
                return 200, sim.hub_device(p[1], p[3])
            if m == "DELETE":
                sim.delete_hub_device(p[1], p[3])
                return 200, {}
            if m == "PATCH":
                sim.set_hub_device_status(p[1], p[3], body.get("status"))
                return 200, sim.hub_device(p[1], p[3])
        if p == ["quota"]:
            if m == "GET":
                return 200, sim.quota_status()
            if m == "PUT":
                return 200, sim.set_quota(body)
        if p == ["faults"]:
            if m == "GET":
                return 200, sim.list_faults()
            if m == "POST":
                return 200, sim.add_fault(body)
            if m == "DELETE":
                sim.clear_faults()
                return 200, {}
        if p == ["log"]:
            if m == "GET":
                return 200, sim.read_log(int(q.get("since", "0")))
            if m == "DELETE":
                sim.clear_log()
                return 200, {}
        return 404, {"error": "no such control route: %s /%s" % (m, "/".join(p))}

    def do_GET(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_DELETE(self):
        self._handle()


class ControlServer(ThreadingHTTPServer):
    """Control API over a Unix socket (mode 0600: only the owner may drive the simulator)."""

    address_family = socket.AF_UNIX
    daemon_threads = True

    def __init__(self, path, sim, info):
        self.sim = sim
        self.info = info
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            super().__init__(path, ControlHandler)
        finally:
            os.umask(old)

    def server_bind(self):
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "localhost", 0

    def get_request(self):
        sock, _ = self.socket.accept()
        return sock, ("control", 0)
