"""IoT Hub module registry and module telemetry of the simulator (device-facing, HTTPS).

What an IoT Edge device calls with its own device SAS (sr = {hub}/devices/{d}, no skn),
as aziot-identityd's hub client does (iot-identity-service
identity/aziot-cloud-client-async/src/hub/mod.rs, api-version 2017-11-08-preview):

    GET    /devices/{d}/modules?api-version=...        200 [module, ...]
    GET    /devices/{d}/modules/{m}?api-version=...    200 module | 404 ModuleNotFound
    PUT    /devices/{d}/modules/{m}?api-version=...    create: no If-Match -> 200 module (new generationId),
                                                       409 ModuleAlreadyExistsOnDevice if it exists;
                                                       update: If-Match * or the etag -> 200 module (same
                                                       generationId, new etag), 412 PreconditionFailed on an
                                                       etag mismatch, 404 ModuleNotFound if absent
    DELETE /devices/{d}/modules/{m}?api-version=...    204; If-Match * / etag / absent (the REST reference
                                                       does not require it); 412 on a mismatch; 404 if absent

A module is {"moduleId","managedBy","deviceId","generationId","etag","connectionState",
"connectionStateUpdatedTime","lastActivityTime","cloudToDeviceMessageCount","authentication":
{"symmetricKey":{"primaryKey","secondaryKey"},"x509Thumbprint":{...},"type":"sas"}} in IoT Hub's field
order. A create without symmetric keys gets two random 32-byte keys (as IoT Hub generates them); a PUT
with authentication.symmetricKey sets those keys (base64, 16..64 bytes decoded); an update without
"authentication" keeps the keys it had.

Only an IoT Edge device (enrollment/device "iotEdge": true, the default) may use its device SAS on its
module registry. A plain device gets 401 IotHubUnauthorizedAccess "Unauthorized", which is what IoT Hub
answers there (the "Could not get module $edgeAgent ... 401 ... IotHubUnauthorizedAccess" reports of
aziot-edged on a device that was not created as an IoT Edge device: Azure/iotedge#2752, and iotedge PR
#261 which added "(Is this an Edge device?)" to that error).

Module telemetry, with a MODULE SAS (sr = {hub}/devices/{d}/modules/{m}, no skn, signed with the module's
primary or secondary key as stored in the hub):

    POST /devices/{d}/modules/{m}/messages/events?api-version=2020-03-13   204; any SAS failure -> 401

Device-side C2D receive (granted to the device's own SAS for Edge and plain devices alike; the sim never
has a message queued):

    GET /devices/{d}/messages/deviceBound?api-version=2020-03-13           204 (no content)

Errors have IoT Hub's shape: {"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:<32 hex>
-G:0-TimeStamp:MM/DD/YYYY HH:MM:SS"} with header iothub-errorcode: <Name>.

Every IoT Edge device has the runtime's module identities $edgeAgent and $edgeHub from the start (with
generated keys), as IoT Hub creates them with the device: aziot-edged's watchdog only updates $edgeAgent
(identityd's update_module_identity GETs it from the hub first).

Hubs are separate: the module table is per hub and per device incarnation (the device's generationId),
so a device re-created in a hub, or provisioned to another hub, has no modules there. The table is kept in
STATE/hub-modules.json, written atomically after each change.

Fault route "hub-modules" (sim_core.FAULT_ROUTES) covers the four registry calls only; a "hub" rule
still covers every hub request. Injected throttle/unavailable/error on hub requests use the hub's body
shape (ThrottlingException 429, ServiceUnavailable 503, ServerError 500) plus Retry-After when given.
"""
import base64
import binascii
import datetime
import json
import os
import re
import time
import uuid

import simcrypto
from simcrypto import SasError

MODULES_FILE = "hub-modules.json"
SYSTEM_MODULES = ("$edgeAgent", "$edgeHub")     # created with every IoT Edge device
MODULE_ID_RE = re.compile(r"^[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}$")   # IoT Hub's module id charset
KEY_MIN = 16                # shortest symmetric key IoT Hub accepts (bytes, decoded)
KEY_MAX = 64                # longest symmetric key IoT Hub accepts (bytes, decoded)
GENERATED_KEY_LEN = 32      # keys the hub makes when a create brings none (bytes)
MODULES_MAX = 50            # module identities per device (IoT Hub's limit: 50 per device)
NEVER = "0001-01-01T00:00:00Z"
COUNT_KINDS = ("list", "get", "create", "update", "delete", "telemetry", "c2d", "refused", "unauthorized")
REGISTRY_SUB = re.compile(r"^modules(?:/([^/]+))?$")
TELEMETRY_SUB = re.compile(r"^modules/([^/]+)/messages/events$")


def _now_hub():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%m/%d/%Y %H:%M:%S")


def _utc_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hub_error(status, name, message, auth="invalid", headers=None):
    """An IoT Hub error answer (Response) with the hub's body shape and iothub-errorcode header."""
    import sim_core
    body = {"Message": "ErrorCode:%s;%s" % (name, message),
            "ExceptionMessage": "Tracking ID:%s-G:0-TimeStamp:%s" % (uuid.uuid4().hex, _now_hub())}
    h = {"iothub-errorcode": name}
    h.update(headers or {})
    return sim_core.Response(status, body, h, auth=auth, reason=message)


def _response(status, body=None, auth="valid", headers=None):
    import sim_core
    return sim_core.Response(status, body, headers, auth=auth)


def classify(method, sub):
    """The module operation a hub request is (list/get/create-or-update/delete/telemetry/c2d), or None."""
    m = REGISTRY_SUB.match(sub)
    if m:
        if m.group(1) is None:
            return "list" if method == "GET" else None
        return {"GET": "get", "PUT": "put", "DELETE": "delete"}.get(method)
    if TELEMETRY_SUB.match(sub) and method == "POST":
        return "telemetry"
    if sub == "messages/deviceBound" and method == "GET":
        return "c2d"
    return None


def fault_route(route, method, sub):
    """The fault route of a request: 'hub-modules' for the module registry calls, else the log route."""
    if route == "hub" and classify(method, sub or "") in ("list", "get", "put", "delete"):
        return "hub-modules"
    return route


def fault_response(f):
    """Hub-shaped answer for an injected throttle/unavailable/error on a hub request (None: not one)."""
    ra = {"Retry-After": str(f["retryAfter"])} if f.get("retryAfter") is not None else {}
    if f["kind"] == "throttle":
        r = hub_error(429, "ThrottlingException", "Throttling limit exceeded, retry later", auth="none",
                      headers=ra)
    elif f["kind"] == "unavailable":
        r = hub_error(503, "ServiceUnavailable", "The service is unavailable, retry later", auth="none",
                      headers=ra)
    elif f["kind"] == "error":
        r = hub_error(500, "ServerError", "An internal error occurred", auth="none", headers=ra)
    else:
        return None
    r.reason = "injected " + f["kind"]
    return r


def _b64_key(value, what):
    if not isinstance(value, str):
        raise ValueError("%s must be a base64 string" % what)
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("%s is not valid base64" % what) from None
    if not KEY_MIN <= len(raw) <= KEY_MAX:
        raise ValueError("%s must be %d to %d bytes long" % (what, KEY_MIN, KEY_MAX))
    return value


class HubModules:
    """Module identities per hub and device; all access under sim.lock."""

    def __init__(self, sim):
        self.sim = sim
        self.table = {}             # hub -> deviceId -> {"deviceGenerationId", "modules": {mid: rec}}
        self.counts = {}            # (hub, deviceId) -> {kind: n}   (memory only)
        self._etag_seq = int(time.time())
        self._load()

    # ------------------------------------------------------------ persistence

    @property
    def _file(self):
        return os.path.join(self.sim.state_dir, MODULES_FILE)

    def _load(self):
        try:
            with open(self._file) as f:
                self.table = json.load(f)
        except FileNotFoundError:
            self.table = {}

    def _save(self):
        tmp = self._file + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.table, f, indent=1, sort_keys=True)
        os.replace(tmp, self._file)

    # ------------------------------------------------------------ table

    def _device(self, hub, device_id):
        return self.sim.hubs.get(hub, {}).get(device_id)

    def _modules(self, hub, device_id, create=False):
        """The live module dict of this device incarnation (None when it has none and not create)."""
        rec = self._device(hub, device_id)
        if rec is None:
            return None
        devs = self.table.setdefault(hub, {}) if create else self.table.get(hub, {})
        ent = devs.get(device_id)
        if ent is not None and ent.get("deviceGenerationId") != rec["generationId"]:
            # the device was deleted and created again: its old modules went with it
            del devs[device_id]
            ent = None
        if ent is None:
            if not create and not rec.get("iotEdge"):
                return None
            if not create:
                devs = self.table.setdefault(hub, {})
            ent = devs[device_id] = {"deviceGenerationId": rec["generationId"], "modules": {}}
            if rec.get("iotEdge"):
                # IoT Hub makes the runtime's two module identities with every IoT Edge device;
                # aziot-edged's watchdog only updates $edgeAgent (a GET, then a PUT with If-Match)
                for mid in SYSTEM_MODULES:
                    ent["modules"][mid] = self._record(device_id, mid, self._auth_from_body({}), None, {})
            self._save()
        return ent["modules"]

    def _count(self, hub, device_id, kind):
        c = self.counts.setdefault((hub, device_id), dict.fromkeys(COUNT_KINDS, 0))
        c[kind] += 1

    def _new_etag(self):
        self._etag_seq += 1
        return base64.b64encode(str(self._etag_seq).encode()).decode()

    @staticmethod
    def _new_generation_id():
        # IoT Hub's look: 18 decimal digits (ticks of the creation time)
        return "63%016d" % (uuid.uuid4().int % 10 ** 16)

    def _record(self, device_id, mid, auth, old, body):
        """A stored module: old's generationId and counters (None: a new module), a new etag."""
        old = old or {}
        managed = body.get("managedBy")
        return {"moduleId": mid, "deviceId": device_id,
                "managedBy": managed if isinstance(managed, str) else old.get("managedBy", ""),
                "generationId": old.get("generationId") or self._new_generation_id(),
                "etag": self._new_etag(), "authentication": auth, "messages": old.get("messages", 0),
                "lastMessage": old.get("lastMessage"), "lastActivityTime": old.get("lastActivityTime")}

    @staticmethod
    def view(rec):
        """A module as IoT Hub returns it (field order as the hub's)."""
        auth = rec["authentication"]
        return {"moduleId": rec["moduleId"], "managedBy": rec.get("managedBy") or "", "deviceId": rec["deviceId"],
                "generationId": rec["generationId"], "etag": rec["etag"], "connectionState": "Disconnected",
                "connectionStateUpdatedTime": NEVER, "lastActivityTime": rec.get("lastActivityTime") or NEVER,
                "cloudToDeviceMessageCount": 0,
                "authentication": {"symmetricKey": {"primaryKey": auth.get("primaryKey"),
                                                    "secondaryKey": auth.get("secondaryKey")},
                                   "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
                                   "type": auth.get("type", "sas")}}

    @staticmethod
    def _auth_from_body(body, old=None):
        """The stored authentication for a PUT body (ValueError on bad input)."""
        a = body.get("authentication")
        if a is None:
            if old is not None:
                return dict(old)
            a = {}
        if not isinstance(a, dict):
            raise ValueError("authentication must be an object")
        typ = a.get("type", "sas")
        if typ not in ("sas", "none", "selfSigned", "certificateAuthority"):
            raise ValueError("authentication.type %r is not supported" % (typ,))
        if typ != "sas":
            return {"type": typ, "primaryKey": None, "secondaryKey": None}
        sk = a.get("symmetricKey") or {}
        if not isinstance(sk, dict):
            raise ValueError("authentication.symmetricKey must be an object")
        pk, sk2 = sk.get("primaryKey"), sk.get("secondaryKey")
        gen = lambda: base64.b64encode(os.urandom(GENERATED_KEY_LEN)).decode()  # noqa: E731
        return {"type": "sas",
                "primaryKey": _b64_key(pk, "primaryKey") if pk is not None else gen(),
                "secondaryKey": _b64_key(sk2, "secondaryKey") if sk2 is not None else gen()}

    # ------------------------------------------------------------ device-facing requests

    def request(self, method, hub, device_id, sub, query, headers, body_bytes):
        """Answer a module route (Response), or None when sub is not one of ours."""
        op = classify(method, sub)
        if op is None:
            return None
        with self.sim.lock:
            if "api-version" not in query:
                return hub_error(400, "InvalidProtocolVersion", "api-version query parameter is required",
                                 auth="none")
            if op == "telemetry":
                return self._telemetry(hub, device_id, TELEMETRY_SUB.match(sub).group(1), headers, body_bytes)
            rec = self._device(hub, device_id)
            try:
                simcrypto.verify_sas(headers.get("Authorization"), "%s/devices/%s" % (hub, device_id),
                                     rec["key"] if rec else None, None, skew=self.sim.config["sasSkewSeconds"])
            except SasError as e:
                if rec:
                    self._count(hub, device_id, "unauthorized")
                r = hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized")
                r.reason = "device SAS: %s" % e
                return r
            if rec["status"] != "enabled":
                self._count(hub, device_id, "unauthorized")
                r = hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized")
                r.reason = "device disabled"
                return r
            if op == "c2d":
                self._count(hub, device_id, "c2d")
                return _response(204)
            if not rec.get("iotEdge"):
                self._count(hub, device_id, "refused")
                r = hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized", auth="valid")
                r.reason = "module registry refused: %s is not an IoT Edge device" % device_id
                return r
            mid = REGISTRY_SUB.match(sub).group(1)
            if op == "list":
                self._count(hub, device_id, "list")
                mods = self._modules(hub, device_id) or {}
                return _response(200, [self.view(mods[k]) for k in sorted(mods)])
            if op == "get":
                self._count(hub, device_id, "get")
                mod = (self._modules(hub, device_id) or {}).get(mid)
                if mod is None:
                    return self._not_found(device_id, mid)
                return _response(200, self.view(mod))
            if op == "delete":
                self._count(hub, device_id, "delete")
                return self._delete(hub, device_id, mid, headers.get("If-Match"))
            return self._put(hub, device_id, mid, headers.get("If-Match"), body_bytes)

    @staticmethod
    def _not_found(device_id, mid):
        return hub_error(404, "ModuleNotFound", "Module %s on device %s not found" % (mid, device_id),
                         auth="valid")

    @staticmethod
    def _etag_matches(if_match, etag):
        tags = [t.strip() for t in if_match.split(",")]
        for t in tags:
            if t == "*":
                return True
            if t.startswith("W/"):
                t = t[2:]
            if t.strip('"') == etag:
                return True
        return False

    def _put(self, hub, device_id, mid, if_match, body_bytes):
        try:
            body = json.loads(body_bytes or b"")
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as e:
            self._count(hub, device_id, "create" if if_match is None else "update")
            return hub_error(400, "IotHubFormatError", "The request body is not a valid module: %s" % e,
                             auth="valid")
        self._count(hub, device_id, "create" if if_match is None else "update")
        if body.get("moduleId") != mid:
            return hub_error(400, "ArgumentInvalid", "ModuleId in the body (%r) does not match the request URI (%r)"
                             % (body.get("moduleId"), mid), auth="valid")
        if body.get("deviceId", device_id) != device_id:
            return hub_error(400, "ArgumentInvalid", "DeviceId in the body (%r) does not match the request URI"
                             % (body.get("deviceId"),), auth="valid")
        if not MODULE_ID_RE.match(mid):
            return hub_error(400, "ArgumentInvalid", "ModuleId %r is not valid" % mid, auth="valid")
        mods = self._modules(hub, device_id, create=True)
        old = mods.get(mid)
        if if_match is None and old is not None:
            return hub_error(409, "ModuleAlreadyExistsOnDevice",
                             "A module with ID '%s' already exists on device '%s'" % (mid, device_id),
                             auth="valid")
        if if_match is not None and old is None:
            return self._not_found(device_id, mid)
        if old is not None and not self._etag_matches(if_match, old["etag"]):
            return hub_error(412, "PreconditionFailed", "Precondition failed: the etag %s does not match" % if_match,
                             auth="valid")
        if old is None and len(mods) >= MODULES_MAX:
            return hub_error(403, "IotHubQuotaExceeded", "Too many modules on device %s" % device_id,
                             auth="valid")
        try:
            auth = self._auth_from_body(body, old["authentication"] if old else None)
        except ValueError as e:
            return hub_error(400, "ArgumentInvalid", str(e), auth="valid")
        mod = mods[mid] = self._record(device_id, mid, auth, old, body)
        self._save()
        return _response(200, self.view(mod))

    def _delete(self, hub, device_id, mid, if_match):
        mods = self._modules(hub, device_id) or {}
        old = mods.get(mid)
        if old is None:
            return self._not_found(device_id, mid)
        if if_match is not None and not self._etag_matches(if_match, old["etag"]):
            return hub_error(412, "PreconditionFailed", "Precondition failed: the etag %s does not match" % if_match,
                             auth="valid")
        del mods[mid]
        self._save()
        return _response(204)

    def _telemetry(self, hub, device_id, mid, headers, body_bytes):
        mod = (self._modules(hub, device_id) or {}).get(mid)
        rec = self._device(hub, device_id)
        resource = "%s/devices/%s/modules/%s" % (hub, device_id, mid)
        keys = [k for k in ((mod or {}).get("authentication", {}).get(n) for n in ("primaryKey", "secondaryKey")) if k]
        err = None
        if not keys:
            err = SasError("no module %s with SAS keys on device %s" % (mid, device_id))
        for k in keys:
            try:
                simcrypto.verify_sas(headers.get("Authorization"), resource, base64.b64decode(k), None,
                                     skew=self.sim.config["sasSkewSeconds"])
                err = None
                break
            except SasError as e:
                err = e
        if err is None and rec["status"] != "enabled":
            err = SasError("device disabled")
        if err is not None:
            if rec:
                self._count(hub, device_id, "unauthorized")
            r = hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized", auth="invalid")
            r.reason = "module SAS: %s" % err
            return r
        self._count(hub, device_id, "telemetry")
        mod["messages"] = mod.get("messages", 0) + 1
        mod["lastMessage"] = body_bytes.decode("utf-8", "replace")[:1024]
        mod["lastActivityTime"] = _utc_iso()
        self._save()
        return _response(204)

    # ------------------------------------------------------------ control API (operator / portal view)

    def control_view(self, rec):
        out = self.view(rec)
        out["messages"] = rec.get("messages", 0)
        out["lastMessage"] = rec.get("lastMessage")
        return out

    def list_for_control(self, hub, device_id):
        with self.sim.lock:
            if self._device(hub, device_id) is None:
                raise KeyError(device_id)
            mods = self._modules(hub, device_id) or {}
            counts = dict(self.counts.get((hub, device_id)) or dict.fromkeys(COUNT_KINDS, 0))
            return {"modules": [self.control_view(mods[k]) for k in sorted(mods)], "counts": counts}

    def get_for_control(self, hub, device_id, mid):
        with self.sim.lock:
            mod = (self._modules(hub, device_id) or {}).get(mid)
            if mod is None:
                raise KeyError(mid)
            return self.control_view(mod)

    def put_for_control(self, hub, device_id, mid, body):
        """Create or replace a module as an operator would (portal / service API): no Edge check."""
        import sim_core
        if not isinstance(body, dict):
            raise sim_core.ValidationError("module must be a JSON object")
        if not MODULE_ID_RE.match(mid):
            raise sim_core.ValidationError("bad module id %r" % mid)
        with self.sim.lock:
            if self._device(hub, device_id) is None:
                raise KeyError(device_id)
            mods = self._modules(hub, device_id, create=True)
            old = mods.get(mid)
            try:
                auth = self._auth_from_body(body, old["authentication"] if old else None)
            except ValueError as e:
                raise sim_core.ValidationError(str(e)) from None
            mods[mid] = self._record(device_id, mid, auth, old, body)
            self._save()
            return self.control_view(mods[mid])

    def delete_for_control(self, hub, device_id, mid):
        with self.sim.lock:
            mods = self._modules(hub, device_id) or {}
            if mods.pop(mid, None) is None:
                raise KeyError(mid)
            self._save()

    def clear_counts(self, hub, device_id):
        with self.sim.lock:
            self.counts.pop((hub, device_id), None)

    def create_device(self, hub, device_id, body):
        """PUT /hubs/{hub}/devices/{id}: a device made in the hub directly (no DPS), for fast tests.
        body: {"iotEdge": bool (default true), "primaryKey": base64 (default random 32 bytes),
        "status": "enabled"|"disabled"}. Replaces an existing record (a new incarnation: no modules)."""
        import sim_core
        body = body or {}
        if not isinstance(body, dict) or set(body) - {"iotEdge", "primaryKey", "status"}:
            raise sim_core.ValidationError("device body takes iotEdge, primaryKey, status")
        if not isinstance(device_id, str) or not 1 <= len(device_id) <= 128:
            raise sim_core.ValidationError("deviceId must be a 1..128 character string")
        edge = body.get("iotEdge", True)
        if not isinstance(edge, bool):
            raise sim_core.ValidationError("iotEdge must be a boolean")
        status = body.get("status", "enabled")
        if status not in ("enabled", "disabled"):
            raise sim_core.ValidationError("status must be 'enabled' or 'disabled'")
        try:
            key = base64.b64decode(_b64_key(body["primaryKey"], "primaryKey")) if "primaryKey" in body \
                else os.urandom(GENERATED_KEY_LEN)
        except ValueError as e:
            raise sim_core.ValidationError(str(e)) from None
        with self.sim.lock:
            self.sim.hubs.setdefault(hub, {})[device_id] = {
                "deviceId": device_id, "registrationId": None, "key": key,
                "generationId": str(uuid.uuid4().int)[:18], "etag": sim_core.new_etag(), "status": status,
                "iotEdge": edge, "tags": {}, "messages": 0}
            self.sim._save()
        return self.sim.hub_device(hub, device_id)

    def set_device_edge(self, hub, device_id, edge):
        import sim_core
        if not isinstance(edge, bool):
            raise sim_core.ValidationError("iotEdge must be a boolean")
        with self.sim.lock:
            rec = self._device(hub, device_id)
            if rec is None:
                raise KeyError(device_id)
            rec["iotEdge"] = edge
            self.sim._save()


def control(sim, m, p, q, body):
    """Control routes of the module registry; (status, body) or None when p is not one of them.

        PUT    /hubs/{hub}/devices/{id}                      create a device directly (see create_device)
        PATCH  /hubs/{hub}/devices/{id}  {"iotEdge": bool}   make it an Edge / plain device
        GET    /hubs/{hub}/devices/{id}/modules              {"modules": [...], "counts": {...}}
        DELETE /hubs/{hub}/devices/{id}/module-counts        reset the counts
        GET|PUT|DELETE /hubs/{hub}/devices/{id}/modules/{m}  one module (PUT: operator create/replace)
    """
    hm = sim.hub_modules
    if len(p) == 4 and p[0] == "hubs" and p[2] == "devices":
        if m == "PUT":
            return 200, hm.create_device(p[1], p[3], body)
        if m == "PATCH" and isinstance(body, dict) and "iotEdge" in body:
            hm.set_device_edge(p[1], p[3], body["iotEdge"])
            if "status" in body:
                sim.set_hub_device_status(p[1], p[3], body["status"])
            return 200, sim.hub_device(p[1], p[3])
        return None
    if len(p) == 5 and p[0] == "hubs" and p[2] == "devices" and p[4] == "modules" and m == "GET":
        return 200, hm.list_for_control(p[1], p[3])
    if len(p) == 5 and p[0] == "hubs" and p[2] == "devices" and p[4] == "module-counts" and m == "DELETE":
        hm.clear_counts(p[1], p[3])
        return 200, {}
    if len(p) == 6 and p[0] == "hubs" and p[2] == "devices" and p[4] == "modules":
        if m == "GET":
            return 200, hm.get_for_control(p[1], p[3], p[5])
        if m == "PUT":
            return 200, hm.put_for_control(p[1], p[3], p[5], body)
        if m == "DELETE":
            hm.delete_for_control(p[1], p[3], p[5])
            return 200, {}
    return None
