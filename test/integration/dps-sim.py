"""Integration tests of the DPS simulator (test/dps-sim) and test/lib/authblob.py.

The device side is a real swtpm driven by tpm2-tools only, so the blob crypto is
checked by an independent TPM implementation, not by our own code.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import ssl
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# test/integration/packaging.py would shadow the 'packaging' module cryptography imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "dps-sim"))

from harness import Runner, Swtpm, need, tmpdir  # noqa: E402

need("swtpm", "swtpm_ioctl", "tpm2_createek", "tpm2_activatecredential", "tpm2_import", "tpm2_hmac")

import authblob  # noqa: E402
import simcrypto  # noqa: E402
from simctl import SimServer, SimError  # noqa: E402

R = Runner("dps-sim")
SCOPE = "0ne00000001"
API = "?api-version=2021-06-01"
HUB1 = "hub1.azure-devices.net"
HUB2 = "hub2.azure-devices.net"
FIRST_KEY = "0x81000100"     # where the device persists the 401 key
FINAL_KEY = "0x81000101"     # and the final (hub) key, kept apart so both can sign


def u16b(b):
    return struct.pack(">H", len(b)) + b


class Device:
    """A TPM device (swtpm + tpm2-tools) with EK 0x81010001 and SRK 0x81000001."""

    def __init__(self, tpm):
        self.tpm = tpm
        self.dir = tmpdir("tpmid-dev-")
        self.t("tpm2_createek", "-c", "0x81010001", "-G", "rsa", "-u", "ek.pub")
        self.t("tpm2_createprimary", "-C", "o", "-c", "srk.ctx")
        self.t("tpm2_evictcontrol", "-c", "srk.ctx", "0x81000001")
        self.t("tpm2_flushcontext", "-t")
        self.t("tpm2_readpublic", "-c", "0x81000001", "-o", "srk.pub")
        self.ek = self.read("ek.pub")
        self.srk = self.read("srk.pub")

    def t(self, *args, check=True):
        return self.tpm.tool(*args, cwd=self.dir, check=check)

    def read(self, name):
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()

    def write(self, name, data):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(data)

    def import_blob(self, blob, handle):
        """The device side of §3.4 with tpm2-tools; returns the recovered inner key."""
        p = authblob.split_auth_blob(blob)
        self.write("cred.bin", authblob.tpm2tools_credential(blob))
        self.t("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
        try:
            self.t("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
            self.t("tpm2_activatecredential", "-c", "0x81000001", "-C", "0x81010001", "-i", "cred.bin",
                   "-o", "inner.bin", "-P", "session:s.ctx")
        finally:
            self.t("tpm2_flushcontext", "s.ctx")
        self.write("dup", u16b(p.duplicate))
        self.write("seed", u16b(p.enc_wrap_key))
        self.write("idkey.pub", u16b(p.id_key_pub))
        self.t("tpm2_import", "-C", "0x81000001", "-u", "idkey.pub", "-i", "dup", "-s", "seed",
               "-k", "inner.bin", "-r", "idkey.priv")
        self.t("tpm2_flushcontext", "-t")
        self.t("tpm2_load", "-C", "0x81000001", "-u", "idkey.pub", "-r", "idkey.priv", "-c", "idkey.ctx")
        if handle in self.tpm.persistent_handles():
            self.t("tpm2_evictcontrol", "-C", "o", "-c", handle)
        self.t("tpm2_evictcontrol", "-C", "o", "-c", "idkey.ctx", handle)
        self.t("tpm2_flushcontext", "-t")
        return self.read("inner.bin")

    def hmac(self, handle, data):
        self.write("msg", data)
        self.t("tpm2_hmac", "-c", handle, "-g", "sha256", "-o", "mac.bin", "msg")
        return self.read("mac.bin")

    def sas(self, handle, resource, skn=None, ttl=300, sr=None):
        sr = simcrypto.encode_sr(resource) if sr is None else sr
        se = int(time.time()) + ttl
        return simcrypto.sas_from_sig(sr, se, self.hmac(handle, simcrypto.string_to_sign(sr, se)), skn)

    def body(self, regid, tpm=True, payload=None):
        b = {"registrationId": regid}
        if tpm:
            b["tpm"] = {"endorsementKey": base64.b64encode(self.ek).decode(),
                        "storageRootKey": base64.b64encode(self.srk).decode()}
        if payload is not None:
            b["payload"] = payload
        return b

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Env:
    tpm = dev = srv = None


E = Env()


def https(method, path, body=None, headers=None, host="127.0.0.1", cafile=None, timeout=10, raw_body=None):
    """One request to the simulator; TLS verified against `host` with the sim CA.

    Returns (status, headers dict lower-case, parsed JSON or raw bytes).
    """
    ctx = ssl.create_default_context(cafile=cafile or E.srv.ca_path)
    conn = http.client.HTTPSConnection(host, E.srv.port, timeout=timeout, context=ctx)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", E.srv.port), timeout=timeout),
                                server_hostname=host)
    h = {"Accept": "application/json"}
    data = raw_body
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json; charset=utf-8"
    h.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    try:
        out = json.loads(raw) if raw else None
    except ValueError:
        out = raw
    return r.status, hdrs, out


def reg_path(regid, what="register"):
    return "/%s/registrations/%s/%s%s" % (SCOPE, regid, what, API)


def challenge(regid, handle=FIRST_KEY):
    st, h, b = https("PUT", reg_path(regid), E.dev.body(regid))
    assert st == 401, (st, b)
    assert b["keyName"] == "registration" and b["unencryptedAuthenticationKey"] is None, b
    assert b["message"].startswith("Authorization required"), b
    blob = base64.b64decode(b["authenticationKey"])
    E.dev.import_blob(blob, handle)
    return blob


def register(regid, tpm=False, payload=None, handle=FIRST_KEY):
    """Full DPS flow after enrollment; returns the final 200 body."""
    challenge(regid, handle)
    auth = E.dev.sas(handle, "%s/registrations/%s" % (SCOPE, regid), skn="registration")
    st, h, b = https("PUT", reg_path(regid), E.dev.body(regid, tpm=tpm, payload=payload),
                     {"Authorization": auth})
    assert st == 202 and b["status"] == "assigning" and b["operationId"], (st, b)
    assert h.get("retry-after") == "1", h
    op = b["operationId"]
    for _ in range(10):
        st, h, b = https("GET", reg_path(regid, "operations/" + op), headers={"Authorization": auth})
        if st == 202:
            assert b["status"] == "assigning" and b["registrationState"]["registrationId"] == regid, b
            continue
        assert st == 200, (st, b)
        return b
    raise AssertionError("never assigned")


def hub_get(hub, device_id, auth, host=None):
    return https("GET", "/devices/%s%s" % (device_id, "?api-version=2020-09-30"),
                 headers={"Authorization": auth} if auth else {}, host=host or hub)


def setup():
    E.tpm = Swtpm().start()
    E.dev = Device(E.tpm)
    E.srv = SimServer(tmpdir("tpmid-dpssim-"), polls=1).start()
    E.c = E.srv.client


def teardown():
    if E.srv:
        E.srv.stop()
        shutil.rmtree(E.srv.state_dir, ignore_errors=True)
    if E.dev:
        E.dev.cleanup()
    if E.tpm:
        E.tpm.cleanup()


# ------------------------------------------------------------------ authblob

@R.case
def authblob_layout_and_tpm_import():
    key = os.urandom(32)
    inner = os.urandom(16)
    blob, k = authblob.make_auth_blob(E.dev.ek, E.dev.srk, hmac_key=key, uri="hub1/dev1", inner_key=inner)
    assert k == key
    p = authblob.split_auth_blob(blob)
    assert [len(x) for x in p[:5]] == [52, 256, 142, 256, 48], [len(x) for x in p]
    assert p.id_key_pub[:14] == bytes.fromhex("0008000b000404400000" "0005000b"), p.id_key_pub.hex()
    assert p.id_key_pub[14:16] == b"\x00\x20"
    assert len(blob) == 766 + len(p.enc_uri)
    assert authblob.decrypt_uri(p.enc_uri, inner) == "hub1/dev1"
    got_inner = E.dev.import_blob(blob, FIRST_KEY)
    assert got_inner == inner, "ActivateCredential returned a different inner key"
    mac = E.dev.hmac(FIRST_KEY, b"0ne00000001%2fregistrations%2fx\n1700000000")
    assert mac == hmac.new(key, b"0ne00000001%2fregistrations%2fx\n1700000000", hashlib.sha256).digest()


@R.case
def authblob_wrong_srk_is_refused_by_tpm():
    # Bound to another SRK Name: ActivateCredential must fail on the real TPM.
    other = bytearray(E.dev.srk)
    other[-1] ^= 2          # keep the modulus odd so OAEP still works
    blob, _ = authblob.make_auth_blob(E.dev.ek, bytes(other))
    E.dev.write("cred.bin", authblob.tpm2tools_credential(blob))
    E.dev.t("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
    try:
        E.dev.t("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
        r = E.dev.t("tpm2_activatecredential", "-c", "0x81000001", "-C", "0x81010001", "-i", "cred.bin",
                    "-o", "inner.bin", "-P", "session:s.ctx", check=False)
    finally:
        E.dev.t("tpm2_flushcontext", "s.ctx")
    assert r.returncode != 0, "TPM accepted a credential bound to another SRK"


@R.case
def authblob_rejects_bad_public():
    ek = E.dev.ek
    bad = {
        "empty": b"", "truncated": ek[:100], "size field": b"\x01\x00" + ek[2:],
        "trailing": ek + b"\0", "not RSA": ek[:2] + b"\x00\x23" + ek[4:],
        "nameAlg": ek[:4] + b"\x00\x04" + ek[6:], "huge": b"\xff" * 5000,
    }
    for what, data in bad.items():
        try:
            authblob.parse_tpm2b_public(data)
        except ValueError:
            continue
        raise AssertionError("accepted bad TPM2B_PUBLIC (%s)" % what)
    try:
        authblob.make_auth_blob(ek, E.dev.srk, hmac_key=b"x" * 65)
        raise AssertionError("accepted 65-byte HMAC key")
    except ValueError:
        pass
    assert authblob.name_of(ek)[:2] == b"\x00\x0b" and len(authblob.name_of(ek)) == 34


# ------------------------------------------------------------------ TLS

@R.case
def tls_verifies_with_generated_ca():
    for host in ("127.0.0.1", "localhost", HUB1, "global.azure-devices-provisioning.net"):
        st, _, _ = https("GET", "/nothing", host=host)
        assert st == 404, (host, st)
    try:
        ctx = ssl.create_default_context()       # system store only: must not trust the test CA
        with socket.create_connection(("127.0.0.1", E.srv.port), timeout=5) as s:
            ctx.wrap_socket(s, server_hostname="localhost")
        raise AssertionError("handshake verified without the test CA")
    except ssl.SSLCertVerificationError:
        pass
    try:
        https("GET", "/nothing", host="evil.example.com")
        raise AssertionError("certificate accepted for a foreign name")
    except ssl.SSLCertVerificationError:
        pass


# ------------------------------------------------------------------ full flow

@R.case
def full_flow_assign_and_hub():
    E.c.enroll("dev-a", E.dev.ek, hubs=[HUB1], iot_edge=True, tags={"site": "lab"})
    assert E.c.status("dev-a")["registrationState"]["status"] == "unassigned"
    b = register("dev-a", tpm=False)        # identity-service style second PUT (no tpm)
    rs = b["registrationState"]
    assert b["status"] == "assigned" and rs["status"] == "assigned", b
    assert rs["assignedHub"] == HUB1 and rs["deviceId"] == "dev-a" and rs["substatus"] == "initialAssignment"
    for k in ("createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"):
        assert rs.get(k), k
    assert "payload" not in rs
    final = base64.b64decode(rs["tpm"]["authenticationKey"])
    inner = E.dev.import_blob(final, FINAL_KEY)
    assert authblob.decrypt_uri(authblob.split_auth_blob(final).enc_uri, inner) == HUB1 + "/dev-a"
    res = HUB1 + "/devices/dev-a"
    st, _, dev = hub_get(HUB1, "dev-a", E.dev.sas(FINAL_KEY, res))
    assert st == 200 and dev["deviceId"] == "dev-a" and dev["capabilities"]["iotEdge"] is True, (st, dev)
    # C SDK style: unencoded sr; path-addressed hub also works
    st, _, _ = https("GET", "/hub/%s/devices/dev-a%s" % (HUB1, API),
                     headers={"Authorization": E.dev.sas(FINAL_KEY, res, sr=res)})
    assert st == 200, st
    st, h, err = hub_get(HUB1, "dev-a", E.dev.sas(FIRST_KEY, res))
    assert st == 401 and h["iothub-errorcode"] == "IotHubUnauthorizedAccess", (st, err)
    st, _, _ = hub_get(HUB1, "dev-a", E.dev.sas(FINAL_KEY, res, skn="registration"))
    assert st == 401, "token with skn accepted by the hub"
    st, _, _ = hub_get(HUB2, "dev-a", E.dev.sas(FINAL_KEY, HUB2 + "/devices/dev-a"))
    assert st == 401, "device accepted on a hub it is not registered in"
    st, _, _ = https("POST", "/devices/dev-a/messages/events" + API, body={"t": 1}, host=HUB1,
                     headers={"Authorization": E.dev.sas(FINAL_KEY, res)})
    assert st == 204, st
    s = E.c.status("dev-a")
    assert s["registrationState"]["status"] == "assigned" and s["registrationState"]["assignedHub"] == HUB1
    assert E.c.hub_device(HUB1, "dev-a")["messages"] == 1
    assert E.c.hub_device(HUB1, "dev-a")["tags"] == {"site": "lab"}
    log = E.c.log()
    routes = [(e["route"], e["status"], e["auth"]) for e in log if e["regid"] == "dev-a"]
    assert routes[:4] == [("register-challenge", 401, "none"), ("register-auth", 202, "valid"),
                          ("operation", 202, "valid"), ("operation", 200, "valid")], routes


@R.case
def second_put_with_tpm_and_custom_payload_echo():
    E.c.enroll("dev-b", E.dev.ek, hubs=[HUB1, HUB2], device_id="box-b", policy="custom")
    b = register("dev-b", tpm=True, payload={"iotHubHostName": HUB2, "model": "x1"})
    rs = b["registrationState"]
    assert rs["assignedHub"] == HUB2 and rs["deviceId"] == "box-b", rs
    assert rs["payload"] == {"iotHubHostName": HUB2, "model": "x1"}, rs


@R.case
def move_revokes_old_hub_and_reregisters():
    E.c.enroll("dev-c", E.dev.ek, hubs=[HUB1], policy="static")
    b = register("dev-c")
    E.dev.import_blob(base64.b64decode(b["registrationState"]["tpm"]["authenticationKey"]), FINAL_KEY)
    res1 = HUB1 + "/devices/dev-c"
    assert hub_get(HUB1, "dev-c", E.dev.sas(FINAL_KEY, res1))[0] == 200
    E.c.move("dev-c", HUB2)
    assert hub_get(HUB1, "dev-c", E.dev.sas(FINAL_KEY, res1))[0] == 401, "moved device still accepted"
    b = register("dev-c")
    rs = b["registrationState"]
    assert rs["assignedHub"] == HUB2 and rs["substatus"] == "deviceDataMigrated", rs
    E.dev.import_blob(base64.b64decode(rs["tpm"]["authenticationKey"]), FINAL_KEY)
    assert hub_get(HUB2, "dev-c", E.dev.sas(FINAL_KEY, HUB2 + "/devices/dev-c"))[0] == 200


# ------------------------------------------------------------------ rejections

def assert_dps_error(resp, status, code, name):
    st, h, b = resp
    assert st == status, (st, b)
    assert isinstance(b, dict) and b.get("errorCode") == code and b.get("trackingId") and b.get("message"), b
    assert h.get("x-ms-error-code") == name, h
    assert "authenticationKey" not in b, b


@R.case
def ek_mismatch_unknown_disabled():
    E.c.enroll("dev-other", E.dev.srk, hubs=[HUB1])        # a different (valid RSA) key as "EK"
    assert_dps_error(https("PUT", reg_path("dev-other"), E.dev.body("dev-other")), 401, 401002,
                     "EndorsementKeyMismatch")
    assert_dps_error(https("PUT", reg_path("nobody"), E.dev.body("nobody")), 404, 404201, "EnrollmentNotFound")
    E.c.enroll("dev-off", E.dev.ek, hubs=[HUB1], enabled=False)
    assert_dps_error(https("PUT", reg_path("dev-off"), E.dev.body("dev-off")), 401, 401002, "EnrollmentDisabled")
    E.c.enable("dev-off")
    assert https("PUT", reg_path("dev-off"), E.dev.body("dev-off"))[0] == 401   # now a challenge
    assert_dps_error(https("PUT", "/0ne99999999/registrations/dev-off/register" + API, E.dev.body("dev-off")),
                     404, 404201, "ServiceNotFound")
    assert_dps_error(https("PUT", reg_path("dev-off"), E.dev.body("dev-x")), 400, 400004, "InvalidRequestBody")
    assert_dps_error(https("PUT", reg_path("dev-off"), raw_body=b"{nope"), 400, 400004, "InvalidRequestBody")
    bad = E.dev.body("dev-off")
    bad["tpm"]["endorsementKey"] = base64.b64encode(b"\x00\x05hello").decode()
    assert_dps_error(https("PUT", reg_path("dev-off"), bad), 400, 400004, "InvalidRequestBody")
    assert_dps_error(https("PUT", "/%s/registrations/dev-off/register" % SCOPE, E.dev.body("dev-off")),
                     400, 400004, "InvalidRequestBody")     # no api-version


@R.case
def sas_rejections():
    E.c.enroll("dev-s", E.dev.ek, hubs=[HUB1])
    challenge("dev-s")
    res = "%s/registrations/dev-s" % SCOPE
    good = E.dev.sas(FIRST_KEY, res, skn="registration")
    sr = simcrypto.encode_sr(res)
    se = int(time.time()) + 300
    sig = E.dev.hmac(FIRST_KEY, simcrypto.string_to_sign(sr, se))
    cases = {
        "wrong sig": simcrypto.sas_from_sig(sr, se, bytes(32), "registration"),
        "software key": simcrypto.make_sas(res, os.urandom(32), skn="registration"),
        "expired": E.dev.sas(FIRST_KEY, res, skn="registration", ttl=-1000),
        "wrong skn": E.dev.sas(FIRST_KEY, res, skn="device"),
        "no skn": E.dev.sas(FIRST_KEY, res),
        "other regid": E.dev.sas(FIRST_KEY, "%s/registrations/dev-t" % SCOPE, skn="registration"),
        "sig over other se": simcrypto.sas_from_sig(sr, se + 1, sig, "registration"),
        "garbage": "SharedAccessSignature sr=&&&",
        "bearer": "Bearer abc",
    }
    for what, auth in cases.items():
        st, h, b = https("PUT", reg_path("dev-s"), E.dev.body("dev-s", tpm=False), {"Authorization": auth})
        assert st == 401 and b.get("errorCode") == 401002 and h.get("x-ms-error-code") == "Unauthorized", \
            (what, st, b)
    # Uppercase-hex (C#/Node) and unencoded (identity-service) sr both verify when signed as sent.
    for sr_style in (res.replace("/", "%2F"), res.lower()):
        st, _, b = https("PUT", reg_path("dev-s"), E.dev.body("dev-s", tpm=False),
                         {"Authorization": E.dev.sas(FIRST_KEY, res, skn="registration", sr=sr_style)})
        assert st == 202, (sr_style, st, b)
    st, _, b = https("PUT", reg_path("dev-s"), E.dev.body("dev-s", tpm=False), {"Authorization": good})
    assert st == 202
    op = b["operationId"]
    st, _, _ = https("GET", reg_path("dev-s", "operations/" + op), headers={"Authorization": cases["expired"]})
    assert st == 401
    st, _, _ = https("GET", reg_path("dev-s", "operations/nope"), headers={"Authorization": good})
    assert st == 404
    # A new challenge replaces the key: the old token no longer verifies.
    https("PUT", reg_path("dev-s"), E.dev.body("dev-s"))
    st, _, _ = https("GET", reg_path("dev-s", "operations/" + op), headers={"Authorization": good})
    assert st == 401, "token signed with a superseded key accepted"
    invalid = [e for e in E.c.log() if e["regid"] == "dev-s" and e["auth"] == "invalid"]
    assert len(invalid) >= len(cases) + 2, len(invalid)


@R.case
def assignment_failure_no_hub():
    E.c.enroll("dev-nohub", E.dev.ek, hubs=[])
    b = register("dev-nohub")
    assert b["status"] == "failed" and b["registrationState"]["errorCode"] == 400208, b
    assert b["registrationState"]["errorMessage"], b
    assert E.c.status("dev-nohub")["registrationState"]["status"] == "failed"
    # Disabled between the 202 and the end of assignment: status "disabled".
    E.c.enroll("dev-dis", E.dev.ek, hubs=[HUB1])
    challenge("dev-dis")
    auth = E.dev.sas(FIRST_KEY, "%s/registrations/dev-dis" % SCOPE, skn="registration")
    st, _, b = https("PUT", reg_path("dev-dis"), E.dev.body("dev-dis"), {"Authorization": auth})
    assert st == 202
    E.c.enable("dev-dis", False)
    path = reg_path("dev-dis", "operations/" + b["operationId"])
    assert https("GET", path, headers={"Authorization": auth})[0] == 202
    st, _, b = https("GET", path, headers={"Authorization": auth})
    assert st == 200 and b["status"] == "disabled", (st, b)


# ------------------------------------------------------------------ faults

@R.case
def fault_injection():
    E.c.enroll("dev-f", E.dev.ek, hubs=[HUB1])
    body = E.dev.body("dev-f")
    E.c.fault("register-challenge", "throttle", count=2, retryAfter=7, regid="dev-f")
    for _ in range(2):
        st, h, b = https("PUT", reg_path("dev-f"), body)
        assert st == 429 and h["retry-after"] == "7" and b["errorCode"] == 429001, (st, h, b)
    assert https("PUT", reg_path("dev-f"), body)[0] == 401, "fault outlived its count"

    E.c.fault("register", "unavailable", retryAfter=3)
    st, h, _ = https("PUT", reg_path("dev-f"), body)
    assert st == 503 and h["retry-after"] == "3"
    E.c.fault("any", "error")
    assert https("PUT", reg_path("dev-f"), body)[0] == 500

    E.c.fault("register-challenge", "status", status=200, body={"weird": True})
    st, _, b = https("PUT", reg_path("dev-f"), body)
    assert st == 200 and b == {"weird": True}

    E.c.fault("register-challenge", "malformed")
    st, _, b = https("PUT", reg_path("dev-f"), body)
    assert st == 401 and isinstance(b, bytes), "malformed body parsed as JSON"

    E.c.fault("register-challenge", "reset")
    try:
        https("PUT", reg_path("dev-f"), body)
        raise AssertionError("no connection error on reset")
    except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError, OSError) as e:
        assert not isinstance(e, AssertionError)

    E.c.fault("register-challenge", "stall", seconds=1.5)
    t0 = time.time()
    try:
        https("PUT", reg_path("dev-f"), body, timeout=0.5)
        raise AssertionError("stalled response arrived before the client timeout")
    except socket.timeout:
        pass
    assert time.time() - t0 < 1.4
    time.sleep(1.2)
    assert https("PUT", reg_path("dev-f"), body)[0] == 401

    E.c.fault("hub", "throttle")
    assert https("GET", "/devices/x" + API, host=HUB1)[0] == 429
    E.c.fault("operation", "throttle", count=5)
    assert len(E.c.faults()) == 1
    E.c.clear_faults()
    assert E.c.faults() == []
    faults = [e["fault"] for e in E.c.log() if e["fault"]]
    for k in ("throttle", "unavailable", "error", "status", "malformed", "reset", "stall"):
        assert k in faults, (k, faults)


# ------------------------------------------------------------------ control API + persistence

@R.case
def control_api_validation_and_restart():
    for bad in ({"endorsementKey": "!!"}, {"endorsementKey": base64.b64encode(b"\x00\x01x").decode()},
                {"endorsementKey": base64.b64encode(E.dev.ek).decode(), "allocationPolicy": "random"},
                {"endorsementKey": base64.b64encode(E.dev.ek).decode(), "bogus": 1}):
        try:
            E.c.call("PUT", "/enrollments/dev-v", bad)
            raise AssertionError("accepted bad enrollment %r" % bad)
        except SimError as e:
            assert e.status == 400, e
    for bad in ({"kind": "explode"}, {"kind": "throttle", "route": "nowhere"}, {"kind": "throttle", "count": 0},
                {"kind": "status"}):
        try:
            E.c.call("POST", "/faults", bad)
            raise AssertionError("accepted bad fault %r" % bad)
        except SimError as e:
            assert e.status == 400, e
    try:
        E.c.status("never-enrolled")
        raise AssertionError("status of unknown enrollment")
    except SimError as e:
        assert e.status == 404
    ca_before = open(E.srv.ca_path, "rb").read()
    E.srv.stop()
    E.srv.start()
    assert open(E.srv.ca_path, "rb").read() == ca_before, "CA changed across restart"
    s = E.c.status("dev-a")
    assert s["registrationState"]["assignedHub"] == HUB1, s
    st, _, _ = hub_get(HUB1, "dev-a", E.dev.sas(FINAL_KEY, HUB1 + "/devices/dev-a"))
    # FINAL_KEY was since overwritten by other cases; the record itself must survive:
    assert E.c.hub_device(HUB1, "dev-a")["deviceId"] == "dev-a"
    assert st in (200, 401)


if __name__ == "__main__":
    setup()
    try:
        R.main()
    finally:
        teardown()
