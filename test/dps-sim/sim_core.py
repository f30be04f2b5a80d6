"""DPS + IoT Hub simulator logic, independent of HTTP.

Every handler takes the parsed request and returns a Response (status, headers,
JSON body). State (enrollments, registration states, hub device registries,
config) is kept under one lock and persisted to STATE/state.json after every
change; operations, faults and the request log live in memory only.

Error choices (real DPS does not document per-case codes; these follow the
"Troubleshoot DPS" table, 6-digit style):

| case                                         | HTTP | errorCode | x-ms-error-code          |
| -------------------------------------------- | ---- | --------- | ------------------------ |
| bad JSON / regid mismatch / bad EK or SRK    | 400  | 400004    | InvalidRequestBody       |
| missing api-version                          | 400  | 400004    | InvalidRequestBody       |
| unknown ID scope / enrollment / operation    | 404  | 404201    | (Service|Enrollment|Operation)NotFound |
| EK differs from the enrollment               | 401  | 401002    | EndorsementKeyMismatch   |
| enrollment disabled (first PUT)              | 401  | 401002    | EnrollmentDisabled       |
| bad / expired / foreign SAS                  | 401  | 401002    | Unauthorized             |
| injected throttle, or over the quota         | 429  | 429001    | ThrottlingException      |
| injected 500 / 503                           | 5xx  | 500000 / 503000 | InternalServerError / ServiceUnavailable |

Assignment failures end the operation with status "failed" (HTTP 200) and
registrationState.errorCode 400208 (no linked hub); an enrollment disabled while
assigning ends with status "disabled". IoT Hub errors use the hub's own shape:
{"Message":"ErrorCode:IotHubUnauthorizedAccess;...","ExceptionMessage":"..."} plus
header iothub-errorcode.
"""
import base64
import binascii
import copy
import datetime
import hashlib
import json
import os
import re
import threading
import time
import uuid

import simcrypto
from simcrypto import SasError

API_VERSION = "2021-06-01"
DEFAULT_ID_SCOPE = "0ne00000001"
LOG_MAX = 10000            # request-log entries kept in memory (entries)
BODY_MAX = 64 * 1024       # largest request body accepted (bytes)
REGID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,126}[A-Za-z0-9]$|^[A-Za-z0-9]$")
POLICIES = ("hashed", "static", "custom")
FAULT_KINDS = ("throttle", "unavailable", "error", "reset", "stall", "malformed", "status")
FAULT_ROUTES = ("any", "register", "register-challenge", "register-auth", "operation", "hub", "hub-modules")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_etag():
    return base64.b64encode(json.dumps(str(uuid.uuid4())).encode()).decode()


DPS_ROUTES = ("register-challenge", "register-auth", "operation")

# Throttling as DPS documents it (MicrosoftDocs/azure-docs includes/iot-dps-limits.md, "rate limits"):
# device registrations 1,000/min/unit, device polling operations 5/10 s/device; the two are
# limited separately and both answer 429 with a Retry-After (Azure/azure-iot-sdk-c PR #1703,
# from the DPS team). Here every PUT .../register (the challenge PUT and the signed one) counts
# as a registration. Windows are fixed: counting starts over every windowSeconds, and a refused
# request gets the seconds left in its window (at least 1) and does not count. 0 = no limit;
# all limits are off by default. Change with PUT /quota (control API), which also resets the
# counters below.
QUOTA_DEFAULTS = {"windowSeconds": 60,          # window of the scope-wide limits (s)
                  "units": 1,                   # DPS units bought: the scope-wide limits are per unit
                  "registrationsPerUnit": 0,    # PUT .../register per window and unit (DPS: 1000/min)
                  "pollsPerUnit": 0,            # GET .../operations/... per window and unit (scope-wide)
                  "pollsPerDevice": 0,          # GET .../operations/... per device and device window (DPS: 5)
                  "deviceWindowSeconds": 10}    # window of pollsPerDevice (s; DPS: 10)
# A request counts as early when it arrives before the Retry-After the simulator last gave that
# registration id ran out, less this much: the client's timers tick in milliseconds (s).
EARLY_SLACK = 0.002


class Response:
    """What a handler answers. body: JSON-able object, raw bytes, or None (no body)."""

    def __init__(self, status, body=None, headers=None, auth="none", reason=None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.auth = auth            # "none" | "valid" | "invalid": for the request log
        self.reason = reason        # short text for the log (why it failed)
        self.fault = None           # set by the fault layer
        self.action = None          # "reset" | None (fault layer)


def dps_error(status, code, name, message, reason=None, auth="none", headers=None):
    body = {"errorCode": code, "trackingId": str(uuid.uuid4()), "message": message,
            "timestampUtc": utcnow()}
    h = {"x-ms-error-code": name}
    h.update(headers or {})
    return Response(status, body, h, auth=auth, reason=reason or message)


def hub_error(status, name, message, auth="invalid"):
    body = {"Message": "ErrorCode:%s;%s" % (name, message),
            "ExceptionMessage": "Tracking ID:%s-G:0-TimeStamp:%s" % (uuid.uuid4().hex, utcnow())}
    return Response(status, body, {"iothub-errorcode": name}, auth=auth, reason=message)


class ValidationError(ValueError):
    """Bad control-API input; str() is the message returned to the caller."""


def _b64_ek(value):
    if not isinstance(value, str):
        raise ValidationError("endorsementKey must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValidationError("endorsementKey is not valid base64") from None
    try:
        simcrypto.parse_tpm2b_public(raw)
    except ValueError as e:
        raise ValidationError("endorsementKey: %s" % e) from None
    return raw


class Simulator:
    """All simulator state and behaviour. Thread-safe; one instance per server."""

    def __init__(self, state_dir, id_scope=DEFAULT_ID_SCOPE, assigning_polls=1, retry_after=1):
        self.state_dir = state_dir
        self.lock = threading.RLock()
        self.config = {"idScope": id_scope, "assigningPolls": assigning_polls, "retryAfter": retry_after,
                       "sasSkewSeconds": simcrypto.CLOCK_SKEW}
        self.enrollments = {}       # regid -> enrollment dict (control-API shape)
        self.registrations = {}     # regid -> {ek, srk, challengeKey, state{...}}
        self.hubs = {}              # hub -> {deviceId -> device record}
        self.operations = {}        # opId -> {regid, pollsLeft, payload, result}
        self.faults = []            # list of fault dicts, applied in order
        self.log = []
        self.log_seq = 0
        self._fault_seq = 0
        self.quota = dict(QUOTA_DEFAULTS)
        self._reset_quota_state()
        self._load()
        import sim_hub          # module registry + module telemetry (its own file and state)
        self.hub_modules = sim_hub.HubModules(self)

    # ------------------------------------------------------------ persistence

    @property
    def _state_file(self):
        return os.path.join(self.state_dir, "state.json")

    def _load(self):
        try:
            with open(self._state_file) as f:
                st = json.load(f)
        except FileNotFoundError:
            return
        self.config.update(st.get("config", {}))
        self.enrollments = st.get("enrollments", {})
        for regid, r in st.get("registrations", {}).items():
            self.registrations[regid] = {k: (base64.b64decode(v) if k in ("ek", "srk", "challengeKey") and v
                                             else v) for k, v in r.items()}
        for hub, devs in st.get("hubs", {}).items():
            self.hubs[hub] = {d: dict(rec, key=base64.b64decode(rec["key"])) for d, rec in devs.items()}

    def _save(self):
        def b(v):
            return base64.b64encode(v).decode() if isinstance(v, bytes) else v
        st = {"config": self.config, "enrollments": self.enrollments,
              "registrations": {r: {k: b(v) for k, v in s.items()} for r, s in self.registrations.items()},
              "hubs": {h: {d: dict(rec, key=b(rec["key"])) for d, rec in devs.items()}
                       for h, devs in self.hubs.items()}}
        tmp = self._state_file + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(st, f, indent=1, sort_keys=True)
        os.replace(tmp, self._state_file)

    # ------------------------------------------------------------ request log

    def record(self, method, path, host, route, regid, resp):
        with self.lock:
            ra = resp.headers.get("retry-after")
            if route in DPS_ROUTES and ra is not None and ra.isdigit():
                # From now: the answer is about to be sent, the client cannot have it earlier.
                self._not_before[regid] = time.monotonic() + int(ra)
            self.log_seq += 1
            self.log.append({"seq": self.log_seq, "ts": time.time(), "method": method, "path": path,
                             "host": host, "route": route, "regid": regid, "status": resp.status,
                             "auth": resp.auth, "fault": resp.fault, "reason": resp.reason})
            del self.log[:-LOG_MAX]

    def read_log(self, since=0):
        with self.lock:
            return [e for e in self.log if e["seq"] > since]

    def clear_log(self):
        with self.lock:
            self.log = []

    # ------------------------------------------------------------ faults

    def add_fault(self, spec):
        """Validate and queue a fault rule; returns the stored rule (with its id)."""
        f = {"route": spec.get("route", "any"), "kind": spec.get("kind"), "count": spec.get("count", 1),
             "regid": spec.get("regid"), "status": spec.get("status"), "retryAfter": spec.get("retryAfter"),
             "seconds": spec.get("seconds", 0), "body": spec.get("body")}
        if f["kind"] not in FAULT_KINDS:
            raise ValidationError("kind must be one of %s" % ", ".join(FAULT_KINDS))
        if f["route"] not in FAULT_ROUTES:
            raise ValidationError("route must be one of %s" % ", ".join(FAULT_ROUTES))
        if not isinstance(f["count"], int) or f["count"] < 1:
            raise ValidationError("count must be a positive integer")
        if not isinstance(f["seconds"], (int, float)) or not 0 <= f["seconds"] <= 600:
            raise ValidationError("seconds must be 0..600")
        if f["kind"] == "status" and not (isinstance(f["status"], int) and 100 <= f["status"] <= 599):
            raise ValidationError("kind 'status' needs status 100..599")
        with self.lock:
            self._fault_seq += 1
            f["id"] = self._fault_seq
            self.faults.append(f)
        return dict(f)

    def list_faults(self):
        with self.lock:
            return copy.deepcopy(self.faults)

    def clear_faults(self):
        with self.lock:
            self.faults = []

    def take_fault(self, route, regid):
        """Consume one use of the first rule matching this request; returns a copy or None."""
        with self.lock:
            for f in self.faults:
                if f["route"] != "any" and f["route"] != route and not (
                        f["route"] in ("register", "hub") and route.startswith(f["route"])):
                    continue
                if f["regid"] and f["regid"] != regid:
                    continue
                f["count"] -= 1
                if f["count"] <= 0:
                    self.faults.remove(f)
                return dict(f)
        return None

    # ------------------------------------------------------------ quota (throttling) and its counters

    def _reset_quota_state(self):
        self._epoch = time.monotonic()
        self._windows = {}          # "registrations"/"polls" -> [window index, requests admitted]
        self._device_windows = {}   # regid -> [device window index, polls admitted]
        self._not_before = {}       # regid -> monotonic time before which it was told not to come back
        self.counters = {"requests": 0, "throttled": 0, "early": 0, "devices": {}}

    def set_quota(self, spec):
        """Replace the quota (missing keys: defaults) and reset windows and counters."""
        if not isinstance(spec, dict):
            raise ValidationError("quota must be a JSON object")
        extra = set(spec) - set(QUOTA_DEFAULTS)
        if extra:
            raise ValidationError("unknown quota keys: %s" % ", ".join(sorted(extra)))
        q = dict(QUOTA_DEFAULTS, **spec)
        for k, v in q.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValidationError("%s must be a non-negative integer" % k)
        if q["windowSeconds"] < 1 or q["deviceWindowSeconds"] < 1 or q["units"] < 1:
            raise ValidationError("windowSeconds, deviceWindowSeconds and units must be at least 1")
        with self.lock:
            self.quota = q
            self._reset_quota_state()
            return self.quota_status()

    def quota_status(self):
        with self.lock:
            return {"quota": dict(self.quota), "counters": copy.deepcopy(self.counters)}

    def _window_admit(self, table, key, index, limit):
        """Count one request in window `index` of table[key]; False when it is full."""
        w = table.get(key)
        if w is None or w[0] != index:
            w = table[key] = [index, 0]
        if limit and w[1] >= limit:
            return False
        w[1] += 1
        return True

    def admit(self, route, regid):
        """Count a DPS device request and apply the quota: None (go on) or the 429 to send."""
        if route not in DPS_ROUTES:
            return None
        with self.lock:
            now = time.monotonic()
            c = self.counters
            dev = c["devices"].setdefault(regid or "", {"requests": 0, "registrations": 0, "polls": 0,
                                                      "throttled": 0, "early": 0})
            c["requests"] += 1
            dev["requests"] += 1
            kind = "polls" if route == "operation" else "registrations"
            dev[kind] += 1
            if now < self._not_before.get(regid, 0) - EARLY_SLACK:
                c["early"] += 1
                dev["early"] += 1
            q = self.quota
            t = now - self._epoch
            win, dwin = q["windowSeconds"], q["deviceWindowSeconds"]
            limit = q["pollsPerUnit" if kind == "polls" else "registrationsPerUnit"] * q["units"]
            retry = None
            if not self._window_admit(self._windows, kind, int(t // win), limit):
                retry = (int(t // win) + 1) * win - t
            elif kind == "polls" and not self._window_admit(self._device_windows, regid, int(t // dwin),
                                                            q["pollsPerDevice"]):
                retry = (int(t // dwin) + 1) * dwin - t
                self._windows[kind][1] -= 1   # refused: it does not use the scope-wide quota either
            if retry is None:
                return None
            c["throttled"] += 1
            dev["throttled"] += 1
        r = dps_error(429, 429001, "ThrottlingException", "Operations are being throttled",
                      headers={"retry-after": str(max(1, int(retry + 0.999)))})
        r.reason = "over the %s quota" % kind
        r.fault = "quota"
        return r

    # ------------------------------------------------------------ config / enrollments (control API)

    def get_config(self):
        with self.lock:
            return dict(self.config)

    def set_config(self, patch):
        with self.lock:
            for k, v in patch.items():
                if k == "idScope" and isinstance(v, str) and v:
                    self.config[k] = v
                elif k in ("assigningPolls", "retryAfter", "sasSkewSeconds") and isinstance(v, int) and v >= 0:
                    self.config[k] = v
                else:
                    raise ValidationError("bad config key or value: %r" % k)
            self._save()
            return dict(self.config)

    def _check_enrollment(self, e):
        allowed = {"registrationId", "endorsementKey", "deviceId", "iotEdge", "tags", "iotHubs",
                   "allocationPolicy", "customPayload", "provisioningStatus"}
        extra = set(e) - allowed
        if extra:
            raise ValidationError("unknown enrollment fields: %s" % ", ".join(sorted(extra)))
        if not isinstance(e.get("registrationId"), str) or not REGID_RE.match(e["registrationId"]):
            raise ValidationError("registrationId must be 1..128 of [A-Za-z0-9:._-], alphanumeric at both ends")
        _b64_ek(e.get("endorsementKey"))
        if not isinstance(e.get("deviceId"), str) or not 1 <= len(e["deviceId"]) <= 128:
            raise ValidationError("deviceId must be a 1..128 character string")
        if not isinstance(e.get("iotEdge"), bool):
            raise ValidationError("iotEdge must be a boolean")
        if not isinstance(e.get("tags"), dict):
            raise ValidationError("tags must be an object")
        hubs = e.get("iotHubs")
        if not isinstance(hubs, list) or not all(isinstance(h, str) and h for h in hubs):
            raise ValidationError("iotHubs must be a list of hub host names")
        if e.get("allocationPolicy") not in POLICIES:
            raise ValidationError("allocationPolicy must be one of %s" % ", ".join(POLICIES))
        if e.get("provisioningStatus") not in ("enabled", "disabled"):
            raise ValidationError("provisioningStatus must be 'enabled' or 'disabled'")

    def put_enrollment(self, regid, body):
        """Create or replace an individual TPM enrollment; returns the stored enrollment."""
        if not isinstance(body, dict):
            raise ValidationError("enrollment must be a JSON object")
        # IoT Edge by default: the guide enables it; "iotEdge": false makes a plain device
        e = {"registrationId": regid, "deviceId": body.get("deviceId") or regid, "iotEdge": True,
             "tags": {}, "iotHubs": [], "allocationPolicy": "hashed", "customPayload": None,
             "provisioningStatus": "enabled"}
        e.update({k: v for k, v in body.items() if v is not None or k == "customPayload"})
        if body.get("registrationId", regid) != regid:
            raise ValidationError("registrationId in body differs from path")
        e["registrationId"] = regid
        self._check_enrollment(e)
        with self.lock:
            self.enrollments[regid] = e
            self._save()
            return copy.deepcopy(e)

    def patch_enrollment(self, regid, patch):
        with self.lock:
            if regid not in self.enrollments:
                raise KeyError(regid)
            if not isinstance(patch, dict):
                raise ValidationError("patch must be a JSON object")
            e = dict(self.enrollments[regid])
            e.update(patch)
            if e.get("registrationId") != regid:
                raise ValidationError("registrationId cannot change")
            self._check_enrollment(e)
            self.enrollments[regid] = e
            self._save()
            return copy.deepcopy(e)

    def delete_enrollment(self, regid):
        """Delete the enrollment and its registration state (not the hub device, like DPS)."""
        with self.lock:
            if regid not in self.enrollments:
                raise KeyError(regid)
            del self.enrollments[regid]
            self.registrations.pop(regid, None)
            self._save()

    def list_enrollments(self):
        with self.lock:
            return [self.status(r) for r in sorted(self.enrollments)]

    def status(self, regid):
        """Enrollment plus its registrationState, like the portal's enrollment page."""
        with self.lock:
            if regid not in self.enrollments:
                raise KeyError(regid)
            out = copy.deepcopy(self.enrollments[regid])
            reg = self.registrations.get(regid, {})
            out["registrationState"] = copy.deepcopy(reg.get("state")) or {"status": "unassigned"}
            return out

    def move(self, regid, hub, revoke_old=True):
        """Link the enrollment to a single new hub (static policy).

        With revoke_old the device is deleted from the hub it is currently assigned to,
        so its old credentials get 401 there and it has to re-register (as an operator
        migrating a device would do). Returns the new status view.
        """
        if not isinstance(hub, str) or not hub:
            raise ValidationError("hub must be a host name")
        with self.lock:
            if regid not in self.enrollments:
                raise KeyError(regid)
            e = self.enrollments[regid]
            e["iotHubs"] = [hub]
            e["allocationPolicy"] = "static"
            st = self.registrations.get(regid, {}).get("state")
            if revoke_old and st and st.get("assignedHub") and st["assignedHub"] != hub:
                self.hubs.get(st["assignedHub"], {}).pop(st.get("deviceId"), None)
            self._save()
            return self.status(regid)

    def hub_device(self, hub, device_id):
        with self.lock:
            rec = self.hubs.get(hub, {}).get(device_id)
            if rec is None:
                raise KeyError(device_id)
            out = dict(rec)
            out["primaryKey"] = base64.b64encode(out.pop("key")).decode()
            return out

    def delete_hub_device(self, hub, device_id):
        with self.lock:
            if self.hubs.get(hub, {}).pop(device_id, None) is None:
                raise KeyError(device_id)
            self._save()

    def set_hub_device_status(self, hub, device_id, status):
        if status not in ("enabled", "disabled"):
            raise ValidationError("status must be 'enabled' or 'disabled'")
        with self.lock:
            rec = self.hubs.get(hub, {}).get(device_id)
            if rec is None:
                raise KeyError(device_id)
            rec["status"] = status
            self._save()

    # ------------------------------------------------------------ DPS device API

    def _common_checks(self, scope, query):
        if "api-version" not in query:
            return dps_error(400, 400004, "InvalidRequestBody", "api-version query parameter is required")
        if scope.lower() != self.config["idScope"].lower():
            return dps_error(404, 404201, "ServiceNotFound", "ID scope not found")
        return None

    def _verify_registration_sas(self, scope, regid, auth_header):
        reg = self.registrations.get(regid)
        key = reg.get("challengeKey") if reg else None
        simcrypto.verify_sas(auth_header, "%s/registrations/%s" % (scope, regid), key, "registration",
                             skew=self.config["sasSkewSeconds"])

    def register(self, scope, regid, query, headers, body_bytes):
        """PUT /{scope}/registrations/{regid}/register: TPM challenge or start of assignment."""
        err = self._common_checks(scope, query)
        if err:
            return err
        try:
            body = json.loads(body_bytes or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as e:
            return dps_error(400, 400004, "InvalidRequestBody", "The request body is not valid JSON",
                             reason=str(e))
        if body.get("registrationId") != regid:
            return dps_error(400, 400004, "InvalidRequestBody",
                             "registrationId in the body does not match the request URI")
        tpm = body.get("tpm")
        ek = srk = None
        if tpm is not None:
            try:
                if not isinstance(tpm, dict):
                    raise ValueError("tpm is not an object")
                ek = base64.b64decode(tpm.get("endorsementKey") or "", validate=True)
                srk = base64.b64decode(tpm.get("storageRootKey") or "", validate=True)
                simcrypto.parse_tpm2b_public(ek)
                simcrypto.parse_tpm2b_public(srk)
            except (ValueError, TypeError, binascii.Error) as e:
                return dps_error(400, 400004, "InvalidRequestBody",
                                 "Endorsement key or storage root key is invalid", reason=str(e))
        auth_header = headers.get("Authorization")

        with self.lock:
            enr = self.enrollments.get(regid)
            if enr is None:
                return dps_error(404, 404201, "EnrollmentNotFound", "Enrollment not found",
                                 auth="none" if auth_header is None else "invalid")
            enrolled_ek = base64.b64decode(enr["endorsementKey"])
            if ek is not None and ek != enrolled_ek:
                return dps_error(401, 401002, "EndorsementKeyMismatch",
                                 "Endorsement key is invalid, or does not match the Enrollment",
                                 auth="none" if auth_header is None else "invalid")
            if enr["provisioningStatus"] != "enabled":
                return dps_error(401, 401002, "EnrollmentDisabled", "Enrollment is disabled",
                                 auth="none" if auth_header is None else "invalid")

            if auth_header is None:
                return self._challenge(scope, regid, ek, srk)

            try:
                self._verify_registration_sas(scope, regid, auth_header)
            except SasError as e:
                return dps_error(401, 401002, "Unauthorized", "Unauthorized", reason=str(e), auth="invalid")
            reg = self.registrations[regid]
            if srk is not None and srk != reg["srk"]:
                return dps_error(401, 401002, "Unauthorized",
                                 "storageRootKey differs from the one the key was issued for", auth="invalid")
            op_id = "5.%s.%s" % (os.urandom(8).hex(), uuid.uuid4())
            self.operations[op_id] = {"regid": regid, "pollsLeft": self.config["assigningPolls"],
                                      "payload": body.get("payload"), "result": None}
            ra = str(self.config["retryAfter"])
            return Response(202, {"operationId": op_id, "status": "assigning"},
                            {"retry-after": ra,
                             "Location": "/%s/registrations/%s/operations/%s" % (scope, regid, op_id)},
                            auth="valid")

    def _challenge(self, scope, regid, ek, srk):
        if ek is None:
            return dps_error(400, 400004, "InvalidRequestBody",
                             "TPM attestation requires tpm.endorsementKey and tpm.storageRootKey")
        blob, key = simcrypto.make_auth_blob(ek, srk, uri="%s/registrations/%s" % (scope, regid))
        reg = self.registrations.setdefault(regid, {})
        reg.update(ek=ek, srk=srk, challengeKey=key)
        self._save()
        return Response(401, {"message": "Authorization required, resend request using supplied key",
                              "authenticationKey": base64.b64encode(blob).decode(),
                              "unencryptedAuthenticationKey": None, "keyName": "registration"},
                        reason="challenge issued")

    def operation(self, scope, regid, op_id, query, headers):
        """GET /{scope}/registrations/{regid}/operations/{opId}: poll the assignment."""
        err = self._common_checks(scope, query)
        if err:
            return err
        with self.lock:
            try:
                self._verify_registration_sas(scope, regid, headers.get("Authorization"))
            except SasError as e:
                return dps_error(401, 401002, "Unauthorized", "Unauthorized", reason=str(e), auth="invalid")
            op = self.operations.get(op_id)
            if op is None or op["regid"] != regid:
                return dps_error(404, 404201, "OperationNotFound", "Operation not found", auth="valid")
            if op["result"] is None and op["pollsLeft"] > 0:
                op["pollsLeft"] -= 1
                return Response(202, {"operationId": op_id, "status": "assigning",
                                      "registrationState": {"registrationId": regid, "status": "assigning"}},
                                {"retry-after": str(self.config["retryAfter"])}, auth="valid")
            if op["result"] is None:
                op["result"] = self._assign(regid, op_id, op["payload"])
            return Response(200, op["result"], auth="valid")

    def _pick_hub(self, enr, payload):
        hubs = enr["iotHubs"]
        if not hubs:
            return None
        if enr["allocationPolicy"] == "static":
            return hubs[0]
        if enr["allocationPolicy"] == "custom":
            # Stand-in for the allocation webhook: the device may ask for one of its
            # linked hubs with payload {"iotHubHostName": ...}; otherwise the first.
            want = payload.get("iotHubHostName") if isinstance(payload, dict) else None
            return want if want in hubs else hubs[0]
        h = int.from_bytes(hashlib.sha256(enr["registrationId"].encode()).digest()[:8], "big")
        return hubs[h % len(hubs)]

    def _assign(self, regid, op_id, payload):
        now = utcnow()
        enr = self.enrollments.get(regid)
        reg = self.registrations[regid]
        prev = reg.get("state") or {}
        if enr is None or enr["provisioningStatus"] != "enabled":
            st = {"registrationId": regid, "status": "disabled", "lastUpdatedDateTimeUtc": now}
            reg["state"] = dict(prev, **st)
            self._save()
            return {"operationId": op_id, "status": "disabled", "registrationState": st}
        hub = self._pick_hub(enr, payload)
        if hub is None:
            st = {"registrationId": regid, "createdDateTimeUtc": prev.get("createdDateTimeUtc", now),
                  "status": "failed", "errorCode": 400208,
                  "errorMessage": "No IoT hub is linked to this enrollment", "lastUpdatedDateTimeUtc": now,
                  "etag": new_etag()}
            reg["state"] = st
            self._save()
            return {"operationId": op_id, "status": "failed", "registrationState": st}
        device_id = enr["deviceId"]
        blob, hub_key = simcrypto.make_auth_blob(reg["ek"], reg["srk"], uri="%s/%s" % (hub, device_id))
        if prev.get("status") == "assigned" and prev.get("assignedHub") not in (None, hub):
            substatus = "deviceDataMigrated"
        else:
            substatus = "initialAssignment"
        devs = self.hubs.setdefault(hub, {})
        old = devs.get(device_id, {})
        devs[device_id] = {"deviceId": device_id, "registrationId": regid, "key": hub_key,
                           "generationId": old.get("generationId") or str(uuid.uuid4().int)[:18],
                           "etag": new_etag(), "status": "enabled", "iotEdge": enr["iotEdge"],
                           "tags": copy.deepcopy(enr["tags"]), "messages": old.get("messages", 0)}
        st = {"registrationId": regid, "createdDateTimeUtc": prev.get("createdDateTimeUtc", now),
              "assignedHub": hub, "deviceId": device_id, "status": "assigned", "substatus": substatus,
              "lastUpdatedDateTimeUtc": now, "etag": new_etag()}
        reg["state"] = st
        self._save()
        out = dict(st, tpm={"authenticationKey": base64.b64encode(blob).decode()})
        if enr["allocationPolicy"] == "custom":
            out["payload"] = enr["customPayload"] if enr["customPayload"] is not None else payload
        return {"operationId": op_id, "status": "assigned", "registrationState": out}

    # ------------------------------------------------------------ IoT Hub device API

    def hub_request(self, method, hub, device_id, sub, query, headers, body_bytes):
        """Minimal hub: GET /devices/{id}, POST /devices/{id}/messages/events; modules in sim_hub.py."""
        resp = self.hub_modules.request(method, hub, device_id, sub, query, headers, body_bytes)
        if resp is not None:
            return resp
        with self.lock:
            devs = self.hubs.get(hub)
            rec = devs.get(device_id) if devs else None
            try:
                simcrypto.verify_sas(headers.get("Authorization"), "%s/devices/%s" % (hub, device_id),
                                     rec["key"] if rec else None, None, skew=self.config["sasSkewSeconds"])
            except SasError as e:
                return hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized (%s)" % e)
            if rec["status"] != "enabled":
                return hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized (device disabled)")
            if method == "GET" and sub == "":
                return Response(200, {"deviceId": device_id, "generationId": rec["generationId"],
                                      "etag": rec["etag"], "connectionState": "Disconnected",
                                      "status": rec["status"], "capabilities": {"iotEdge": rec["iotEdge"]},
                                      "authentication": {"type": "sas", "symmetricKey": {
                                          "primaryKey": None, "secondaryKey": None}}}, auth="valid")
            if method == "POST" and sub == "messages/events":
                rec["messages"] = rec.get("messages", 0) + 1
                rec["lastMessage"] = body_bytes.decode("utf-8", "replace")[:1024]
                self._save()
                return Response(204, None, auth="valid")
            return hub_error(404, "NotFound", "No such hub route", auth="valid")
