"""The simulated hub's module registry and module telemetry (test/dps-sim/sim_hub.py) and the keyd
stand-in (test/keyd/keyd_sim.py), driven from Python without a TPM or the daemon: hub devices are made
through the sim's control API and their device SAS is signed here with the key the sim reports.

The keyd vectors were computed with openssl(1), not with the code under test:
    printf '%s' '$edgeAgent:637000000000000001:primary' |
        openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "dps-sim"))

from harness import Runner, tmpdir  # noqa: E402
import simcrypto  # noqa: E402
from simctl import SimServer, SimError  # noqa: E402
from keyd import KeydSim, API as KAPI, MASTER_KEY  # noqa: E402

R = Runner("edge-sim")
HUB1 = "hub1.azure-devices.net"
HUB2 = "hub2.azure-devices.net"
MAPI = "?api-version=2017-11-08-preview"
TAPI = "?api-version=2020-03-13"
VECTOR_KEY = bytes(range(32))
VECTOR_DATA = b"$edgeAgent:637000000000000001:primary"
VECTOR_DERIVED = "9fb8bd5f2f985d6fe76c14028099c5f40133d9c535c203a03dbfaf0dd7260a88"
VECTOR_MSG = b"hub1.azure-devices.net%2fdevices%2fe1%2fmodules%2f%24edgeagent\n1800000000"
VECTOR_SIG = "8dae919f4373f81ab89b1f1f2349e6390f90cfc124e9095825cf34e5e5c60c9b"


class Env:
    pass


E = Env()


def b64(b):
    return base64.b64encode(b).decode()


def https(method, path, body=None, headers=None, host=HUB1):
    """One request to the sim's HTTPS port as HOST (TLS checked against the sim's CA)."""
    ctx = ssl.create_default_context(cafile=E.srv.ca_path)
    c = http.client.HTTPSConnection(host, 443, context=ctx, timeout=10)
    c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", E.srv.port), 10), server_hostname=host)
    try:
        h = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        try:
            j = json.loads(raw) if raw else None
        except ValueError:
            j = None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, j
    finally:
        c.close()


def device(dev, hub=HUB1, edge=True):
    """A device in the hub (control API); returns its key."""
    return base64.b64decode(E.c.create_hub_device(hub, dev, iot_edge=edge)["primaryKey"])


def dsas(dev, key, hub=HUB1, **kw):
    return simcrypto.make_sas("%s/devices/%s" % (hub, dev), key, **kw)


def msas(dev, mod, key, hub=HUB1, **kw):
    return simcrypto.make_sas("%s/devices/%s/modules/%s" % (hub, dev, mod), key, **kw)


def reg(method, dev, key, mod=None, body=None, if_match=None, hub=HUB1):
    path = "/devices/%s/modules%s%s" % (dev, "/" + mod.replace("$", "%24") if mod else "", MAPI)
    h = {"Authorization": dsas(dev, key, hub)}
    if if_match is not None:
        h["If-Match"] = if_match
    return https(method, path, body, h, host=hub)


def telemetry(dev, mod, auth, hub=HUB1):
    return https("POST", "/devices/%s/modules/%s/messages/events%s" % (dev, mod.replace("$", "%24"), TAPI),
                 {"temp": 21}, {"Authorization": auth}, host=hub)[0]


def hub_err(st, h, j, status, name):
    assert st == status, (st, j)
    assert h.get("iothub-errorcode") == name, h
    assert j["Message"].startswith("ErrorCode:%s;" % name) and j["ExceptionMessage"].startswith("Tracking ID:"), j


def setup():
    E.dir = tmpdir("tpmid-edgesim-")
    E.srv = SimServer(os.path.join(E.dir, "sim")).start()
    E.c = E.srv.client
    E.k = KeydSim(os.path.join(E.dir, "keyd")).start()


def teardown():
    for x in ("k", "srv"):
        if hasattr(E, x):
            getattr(E, x).stop()
    subprocess.run(["rm", "-rf", E.dir])


# ------------------------------------------------------------------ hub module registry

@R.case
def registry_create_get_update_delete():
    key = device("e1")
    st, _, j = reg("GET", "e1", key)
    assert st == 200 and [m["moduleId"] for m in j] == ["$edgeAgent", "$edgeHub"], ("the runtime's modules", j)
    assert all(m["authentication"]["type"] == "sas" and m["generationId"] for m in j), j
    st, _, m = reg("PUT", "e1", key, "filter", {"moduleId": "filter", "deviceId": "e1"})
    assert st == 200, (st, m)
    assert list(m) == ["moduleId", "managedBy", "deviceId", "generationId", "etag", "connectionState",
                       "connectionStateUpdatedTime", "lastActivityTime", "cloudToDeviceMessageCount",
                       "authentication"], list(m)
    assert m["moduleId"] == "filter" and m["deviceId"] == "e1" and m["generationId"], m
    auth = m["authentication"]
    assert auth["type"] == "sas" and len(base64.b64decode(auth["symmetricKey"]["primaryKey"])) == 32, auth
    gen, etag = m["generationId"], m["etag"]
    hub_err(*reg("PUT", "e1", key, "filter", {"moduleId": "filter"}), 409, "ModuleAlreadyExistsOnDevice")
    st, _, g = reg("GET", "e1", key, "filter")
    assert st == 200 and g == m, (st, g)
    k1, k2 = b64(b"\x01" * 32), b64(b"\x02" * 32)
    body = {"moduleId": "filter", "deviceId": "e1",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": k1, "secondaryKey": k2}}}
    st, _, u = reg("PUT", "e1", key, "filter", body, if_match="*")
    assert st == 200 and u["generationId"] == gen and u["etag"] != etag, (st, u)
    assert u["authentication"]["symmetricKey"] == {"primaryKey": k1, "secondaryKey": k2}, u
    hub_err(*reg("PUT", "e1", key, "filter", body, if_match='"%s"' % etag), 412, "PreconditionFailed")
    st, _, u2 = reg("PUT", "e1", key, "filter", {"moduleId": "filter"}, if_match='"%s"' % u["etag"])
    assert st == 200 and u2["authentication"]["symmetricKey"]["primaryKey"] == k1, "update lost the keys"
    hub_err(*reg("PUT", "e1", key, "nosuch", {"moduleId": "nosuch"}, if_match="*"), 404, "ModuleNotFound")
    hub_err(*reg("PUT", "e1", key, "m2", {"moduleId": "other"}), 400, "ArgumentInvalid")
    hub_err(*reg("PUT", "e1", key, "m2", {"moduleId": "m2",
                                          "authentication": {"symmetricKey": {"primaryKey": "c2hvcnQ="}}}),
            400, "ArgumentInvalid")
    hub_err(*reg("GET", "e1", key, "nosuch"), 404, "ModuleNotFound")
    assert reg("PUT", "e1", key, "m2", {"moduleId": "m2"})[0] == 200
    st, _, lst = reg("GET", "e1", key)
    assert st == 200 and [x["moduleId"] for x in lst] == ["$edgeAgent", "$edgeHub", "filter", "m2"], lst
    hub_err(*reg("DELETE", "e1", key, "filter", if_match='"%s"' % etag), 412, "PreconditionFailed")
    assert reg("DELETE", "e1", key, "filter", if_match="*")[0] == 204
    hub_err(*reg("DELETE", "e1", key, "filter", if_match="*"), 404, "ModuleNotFound")
    # a new create after the delete is a new module: new generationId
    st, _, again = reg("PUT", "e1", key, "filter", {"moduleId": "filter", "deviceId": "e1"})
    assert st == 200 and again["generationId"] != gen, (st, again)
    view = E.c.hub_modules(HUB1, "e1")
    assert [x["moduleId"] for x in view["modules"]] == ["$edgeAgent", "$edgeHub", "filter", "m2"], view
    cnt = view["counts"]
    assert (cnt["create"], cnt["update"], cnt["delete"], cnt["get"], cnt["list"]) == (6, 4, 3, 2, 2), cnt
    # a foreign or tampered device SAS gets nothing
    st, h, j = https("GET", "/devices/e1/modules" + MAPI, headers={"Authorization": dsas("e1", b"x" * 32)})
    hub_err(st, h, j, 401, "IotHubUnauthorizedAccess")
    st, _, _ = https("GET", "/devices/e1/modules" + MAPI, headers={"Authorization": dsas("e1", key, se=1000)})
    assert st == 401, st
    assert https("GET", "/devices/e1/modules", headers={"Authorization": dsas("e1", key)})[0] == 400


@R.case
def plain_device_is_refused_the_registry():
    key = device("p1", edge=False)
    for method, mod, body in (("GET", None, None), ("GET", "m", None), ("PUT", "m", {"moduleId": "m"}),
                              ("DELETE", "m", None)):
        st, h, j = reg(method, "p1", key, mod, body)
        hub_err(st, h, j, 401, "IotHubUnauthorizedAccess")
        assert j["Message"] == "ErrorCode:IotHubUnauthorizedAccess;Unauthorized", j
    # the calls IoT Hub grants a plain device's own SAS still work
    auth = {"Authorization": dsas("p1", key)}
    assert https("GET", "/devices/p1/messages/deviceBound" + TAPI, headers=auth)[0] == 204
    assert https("POST", "/devices/p1/messages/events" + TAPI, {"x": 1}, auth)[0] == 204
    assert E.c.hub_modules(HUB1, "p1")["counts"]["refused"] == 4
    E.c.set_hub_device_edge(HUB1, "p1", True)
    assert reg("GET", "p1", key)[0] == 200


def ek_public():
    """A TPM2B_PUBLIC the sim accepts as an EK (RSA-2048, restricted|decrypt, AES-128-CFB); no TPM needed."""
    tpmt = struct.pack(">HHIH", 0x0001, 0x000B, 0x00030000, 0) + struct.pack(">HHHHHI", 0x0006, 128, 0x0043,
                                                                            0x0010, 2048, 0)
    tpmt += struct.pack(">H", 256) + os.urandom(256)
    return struct.pack(">H", len(tpmt)) + tpmt


@R.case
def enrollments_default_to_iot_edge():
    pub = ek_public()
    assert E.c.call("PUT", "/enrollments/edge-default", {"endorsementKey": b64(pub)})["iotEdge"] is True
    assert E.c.enroll("edge-two", pub)["iotEdge"] is True
    assert E.c.enroll("plain-one", pub, iot_edge=False)["iotEdge"] is False
    assert E.c.update("edge-two", iotEdge=False)["iotEdge"] is False


@R.case
def module_telemetry_needs_the_module_key():
    key = device("t1")
    pk, sk = b"\x11" * 32, b"\x22" * 32
    body = {"moduleId": "temp", "deviceId": "t1",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": b64(pk), "secondaryKey": b64(sk)}}}
    assert reg("PUT", "t1", key, "temp", body)[0] == 200
    assert telemetry("t1", "temp", msas("t1", "temp", pk)) == 204
    assert telemetry("t1", "temp", msas("t1", "temp", sk)) == 204
    assert telemetry("t1", "temp", msas("t1", "temp", b"\x33" * 32)) == 401, "wrong key accepted"
    assert telemetry("t1", "temp", msas("t1", "temp", pk, se=1000)) == 401, "expired token accepted"
    assert telemetry("t1", "temp", msas("t1", "other", pk)) == 401, "token for another module accepted"
    assert telemetry("t1", "temp", dsas("t1", key)) == 401, "device SAS accepted for a module"
    assert telemetry("t1", "temp", msas("t1", "temp", pk, hub=HUB2)) == 401, "token for another hub accepted"
    assert telemetry("t1", "nosuch", msas("t1", "nosuch", pk)) == 401
    assert telemetry("t1", "temp", msas("t1", "temp", pk) + "&skn=x") == 401, "module token with skn accepted"
    m = E.c.hub_module(HUB1, "t1", "temp")
    assert m["messages"] == 2 and json.loads(m["lastMessage"]) == {"temp": 21}, m


@R.case
def hubs_are_separate_and_persist():
    k1 = device("s1", HUB1)
    assert reg("PUT", "s1", k1, "m", {"moduleId": "m"})[0] == 200
    k2 = device("s1", HUB2)
    st, _, lst = reg("GET", "s1", k2, hub=HUB2)
    assert st == 200 and "m" not in [x["moduleId"] for x in lst], ("modules leaked to another hub", lst)
    E.srv.stop()
    E.srv.start()
    assert "m" in [x["moduleId"] for x in reg("GET", "s1", k1)[2]], "modules lost in a sim restart"
    k1b = device("s1", HUB1)        # the device deleted and created again: a new incarnation
    assert "m" not in [x["moduleId"] for x in reg("GET", "s1", k1b)[2]], "modules survived the device's re-creation"
    try:
        E.c.hub_module(HUB1, "s1", "m")
        raise AssertionError("control API shows a module of the old incarnation")
    except SimError as e:
        assert e.status == 404, e


@R.case
def registry_faults():
    key = device("f1")
    E.c.fault("hub-modules", "throttle", count=2, retryAfter=3)
    for _ in range(2):
        st, h, j = reg("GET", "f1", key)
        hub_err(st, h, j, 429, "ThrottlingException")
        assert h["retry-after"] == "3", h
    # telemetry and the device's own calls are not module registry calls
    E.c.fault("hub-modules", "unavailable", count=1)
    assert https("GET", "/devices/f1/messages/deviceBound" + TAPI, headers={"Authorization": dsas("f1", key)})[0] == 204
    hub_err(*reg("PUT", "f1", key, "m", {"moduleId": "m"}), 503, "ServiceUnavailable")
    E.c.fault("hub-modules", "error")
    hub_err(*reg("DELETE", "f1", key, "m"), 500, "ServerError")
    assert reg("GET", "f1", key)[0] == 200, "fault outlived its count"
    E.c.fault("hub", "throttle")           # a "hub" rule still covers the module registry
    assert reg("GET", "f1", key)[0] == 429
    assert E.c.hub_modules(HUB1, "f1")["counts"]["list"] == 1, "faulted requests counted as handled"
    faults = [(e["fault"], e["status"]) for e in E.c.log() if e["path"].startswith("/devices/f1/modules")]
    assert faults.count(("throttle", 429)) == 3 and ("unavailable", 503) in faults, faults


# ------------------------------------------------------------------ keyd stand-in

def kreq(method, target, body=None):
    return E.k.request(method, target, body)


def sr_json(handle):
    parts = dict(p.split("=", 1) for p in handle.split("&"))
    return base64.b64decode(parts["sr"]).decode()


@R.case
def keyd_derivation_matches_the_vector():
    r = kreq("POST", "/key?" + KAPI, {"keyId": "vector-master", "keyBytes": b64(VECTOR_KEY), "usage": "derive,sign"})
    assert r.status == 200 and list(r.json) == ["keyHandle"], r
    base = r.json["keyHandle"]
    j = sr_json(base)
    assert j.startswith('{"key_id":{"Key":"vector-master"},"nonce":"') and " " not in j, j
    assert len(base64.b64decode(json.loads(j)["nonce"])) == 64
    d = kreq("POST", "/derivedkey?" + KAPI, {"baseKeyHandle": base, "derivationData": b64(VECTOR_DATA)})
    assert d.status == 200, d
    dj = json.loads(sr_json(d.json["keyHandle"]))
    assert dj["key_id"] == {"Derived": [base, list(VECTOR_DATA)]}, dj
    x = kreq("POST", "/derivedkey/export?" + KAPI, {"keyHandle": d.json["keyHandle"]})
    assert x.status == 200 and base64.b64decode(x.json["key"]).hex() == VECTOR_DERIVED, x
    assert hmac.new(VECTOR_KEY, VECTOR_DATA, hashlib.sha256).hexdigest() == VECTOR_DERIVED
    s = kreq("POST", "/sign?" + KAPI, {"keyHandle": d.json["keyHandle"], "algorithm": "HMAC-SHA256",
                                       "parameters": {"message": b64(VECTOR_MSG)}})
    assert s.status == 200 and base64.b64decode(s.json["signature"]).hex() == VECTOR_SIG, s
    # a fresh nonce per handle; both handles work
    again = kreq("GET", "/key/vector-master?" + KAPI)
    assert again.status == 200 and again.json["keyHandle"] != base, again
    sig = lambda h: kreq("POST", "/sign?api-version=2021-05-01", {"keyHandle": h, "algorithm": "HMAC-SHA256",  # noqa: E731
                                                                  "parameters": {"message": b64(b"m")}}).json
    assert sig(base) == sig(again.json["keyHandle"]) == {"signature": b64(hmac.new(VECTOR_KEY, b"m",
                                                                                   hashlib.sha256).digest())}


@R.case
def keyd_bad_handles_and_requests():
    base = kreq("POST", "/key?" + KAPI, {"keyId": "k-errors", "usage": "derive,sign"}).json["keyHandle"]
    bad = 'parameter "handle" has an invalid value\ncaused by: invalid handle'
    parts = dict(p.split("=", 1) for p in base.split("&"))
    other = sr_json(base).replace('"k-errors"', '"aziot_identityd_master_id"')
    forged = "sr=%s&sig=%s" % (b64(other.encode()), parts["sig"])
    flipped = "sr=%s&sig=%s" % (parts["sr"], b64(bytes([base64.b64decode(parts["sig"])[0] ^ 1]) +
                                                 base64.b64decode(parts["sig"])[1:]))
    for h in (forged, flipped, "sr=%s" % parts["sr"], "garbage", base[:-4]):
        r = kreq("POST", "/derivedkey?" + KAPI, {"baseKeyHandle": h, "derivationData": b64(b"x")})
        assert r.status == 400 and r.json == {"message": bad}, (h, r)
    d = kreq("POST", "/derivedkey?" + KAPI, {"baseKeyHandle": base, "derivationData": b64(b"x")}).json["keyHandle"]
    r = kreq("POST", "/derivedkey?" + KAPI, {"baseKeyHandle": d, "derivationData": b64(b"y")})
    assert r.status == 400 and r.message == ('parameter "handle" has an invalid value\ncaused by: nested derived '
                                             'keys are not supported, import the outer derived key first'), r
    r = kreq("POST", "/derivedkey/export?" + KAPI, {"keyHandle": base})
    assert r.status == 400 and r.message.endswith("caused by: handle is not for a derived key"), r
    r = kreq("POST", "/sign?" + KAPI, {"keyHandle": base, "algorithm": "ECDSA", "parameters": {"digest": "AA=="}})
    assert r.status == 400 and r.message.startswith('parameter "mechanism" has an invalid value'), r
    cases = [("GET", "/nope?" + KAPI, None, 404, "not found"),
             ("GET", "/key", None, 400, "api-version not specified"),
             ("GET", "/key/k-errors?api-version=2022-08-01", None, 400, 'invalid api-version "2022-08-01"'),
             ("GET", "/sign?" + KAPI, None, 400, "method not allowed"),
             ("POST", "/sign?" + KAPI, None, 400, "missing request body"),
             ("GET", "/key/never-made?" + KAPI, None, 400, "a parameter has an invalid value")]
    for method, target, body, status, msg in cases:
        r = kreq(method, target, body)
        assert (r.status, r.message) == (status, msg), (method, target, r)
        assert r.headers["content-type"] == "application/json", r.headers
    for body in ("{not json", {"keyId": "x"}, {"keyId": "x", "usage": "fly"}):
        r = kreq("POST", "/key?" + KAPI, body)
        assert r.status == 422 and r.message, (body, r)


def as_nobody(method, target, body=None):
    """(status, message) of one keyd request made under uid nobody (we are root)."""
    code = ("import http.client,json,socket,sys\n"
            "c=http.client.HTTPConnection('localhost')\n"
            "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);c.sock=s\n"
            "b=sys.argv[4] or None\n"
            "c.request(sys.argv[2],sys.argv[3],body=b,headers={'Content-Type':'application/json'} if b else {})\n"
            "r=c.getresponse();print(json.dumps([r.status,json.loads(r.read() or 'null')]))\n")
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
                        "-c", code, E.k.socket, method, target, json.dumps(body) if body is not None else ""],
                       capture_output=True, text=True, timeout=20, cwd="/")
    assert p.returncode == 0, p.stderr
    st, j = json.loads(p.stdout)
    return st, (j or {}).get("message")


@R.case
def keyd_principals():
    if os.geteuid() == 0:
        call, uid = as_nobody, int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
    else:
        call, uid = (lambda m, t, b=None: (lambda r: (r.status, r.message))(kreq(m, t, b))), os.geteuid()
    create = {"keyId": MASTER_KEY, "usage": "derive,sign"}
    want401 = "user %d is not authorized to access the key %s" % (uid, MASTER_KEY)
    assert call("POST", "/key?" + KAPI, create) == (401, want401)
    E.k.add_principal(uid, ["aziot_identityd_*"], name="tpmidd.toml")
    st, _ = call("POST", "/key?" + KAPI, create)
    assert st == 200, "principal with a * pattern refused"
    assert call("GET", "/key/%s?%s" % (MASTER_KEY, KAPI))[0] == 200
    assert call("POST", "/key?" + KAPI, {"keyId": "aziot-other", "usage": "sign"})[0] == 401
    E.k.write_principals("tpmidd.toml", [(uid, ["k?y"]), (uid + 1, ["*"])])
    assert call("POST", "/key?" + KAPI, {"keyId": "key", "usage": "sign"})[0] == 200
    assert call("POST", "/key?" + KAPI, {"keyId": "keey", "usage": "sign"})[0] == 401, "? matched two characters"
    assert call("GET", "/key/%s?%s" % (MASTER_KEY, KAPI))[0] == 401, "principal change not picked up"
    # a config.d file that does not parse leaves the principals as they were, as keyd's watcher does
    with open(os.path.join(E.k.config_d, "broken.toml"), "w") as f:
        f.write("[[principal]\nuid = \n")
    assert call("POST", "/key?" + KAPI, {"keyId": "key", "usage": "sign"})[0] == 200
    os.unlink(os.path.join(E.k.config_d, "broken.toml"))
    E.k.write_principals("tpmidd.toml", [])
    # only create and load check the caller (keyd: authorize() in those two)
    h = kreq("POST", "/key?" + KAPI, create).json["keyHandle"]
    st, _ = call("POST", "/sign?" + KAPI, {"keyHandle": h, "algorithm": "HMAC-SHA256", "parameters": {"message": "AA=="}})
    assert st == 200, st
    assert any(e["uid"] == uid and e["status"] == 401 for e in E.k.requests()), "request log lacks the refusals"


@R.case
def keyd_restart_and_down_modes():
    h = kreq("POST", "/key?" + KAPI, {"keyId": "persist", "usage": "derive,sign"}).json["keyHandle"]
    d = kreq("POST", "/derivedkey?" + KAPI, {"baseKeyHandle": h, "derivationData": b64(b"a")}).json["keyHandle"]
    before = kreq("POST", "/derivedkey/export?" + KAPI, {"keyHandle": d}).json
    E.k.restart()
    assert kreq("POST", "/derivedkey/export?" + KAPI, {"keyHandle": d}).json == before, "keys lost in a restart"
    assert base64.b64decode(before["key"]) == E.k.derive("persist", b"a")
    E.k.set_mode("error")
    r = kreq("GET", "/key/persist?" + KAPI)
    assert (r.status, r.json) == (500, {"message": "internal error"}), r
    E.k.set_mode("refuse")
    try:
        kreq("GET", "/key/persist?" + KAPI)
        raise AssertionError("refuse mode answered")
    except (ConnectionError, http.client.RemoteDisconnected):
        pass
    E.k.set_mode("up")
    E.k.stop()
    try:
        kreq("GET", "/key/persist?" + KAPI)
        raise AssertionError("a stopped keyd answered")
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    E.k.start()
    assert kreq("GET", "/key/persist?" + KAPI).status == 200


# ------------------------------------------------------------------ both together, as identityd + edged

@R.case
def identityd_flow_keys_from_keyd_telemetry_accepted():
    key = device("edge1")
    master = kreq("POST", "/key?" + KAPI, {"keyId": MASTER_KEY, "usage": "derive,sign"}).json["keyHandle"]
    st, _, m = reg("GET", "edge1", key, "$edgeAgent")     # identityd's update_module_identity
    assert st == 200, m
    handles, keys = {}, {}
    for which in ("primary", "secondary"):
        data = ("$edgeAgent:%s:%s" % (m["generationId"], which)).encode()
        handles[which] = kreq("POST", "/derivedkey?" + KAPI, {"baseKeyHandle": master,
                                                              "derivationData": b64(data)}).json["keyHandle"]
        keys[which] = kreq("POST", "/derivedkey/export?" + KAPI, {"keyHandle": handles[which]}).json["key"]
        assert base64.b64decode(keys[which]) == E.k.derive(MASTER_KEY, data)
    st, _, u = reg("PUT", "edge1", key, "$edgeAgent", {"moduleId": "$edgeAgent", "deviceId": "edge1",
                   "authentication": {"type": "sas", "symmetricKey": {"primaryKey": keys["primary"],
                                                                      "secondaryKey": keys["secondary"]}}},
                   if_match="*")
    assert st == 200 and u["generationId"] == m["generationId"], u
    # edged's workload sign: the module SAS is signed by keyd with the primary derived handle
    sr = simcrypto.encode_sr("%s/devices/edge1/modules/$edgeAgent" % HUB1)
    se = int(time.time()) + 3600
    s = kreq("POST", "/sign?" + KAPI, {"keyHandle": handles["primary"], "algorithm": "HMAC-SHA256",
                                       "parameters": {"message": b64(simcrypto.string_to_sign(sr, se))}})
    token = simcrypto.sas_from_sig(sr, se, base64.b64decode(s.json["signature"]))
    assert telemetry("edge1", "$edgeAgent", token) == 204
    i = token.index("sig=") + 4
    tampered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    assert telemetry("edge1", "$edgeAgent", tampered) == 401
    assert E.c.hub_module(HUB1, "edge1", "$edgeAgent")["messages"] == 1


if __name__ == "__main__":
    setup()
    try:
        R.main()
    finally:
        teardown()
