#!/usr/bin/python3
"""Each principal kind on each module route of the identity socket, against the
real daemon, a provisioned device in the DPS/hub simulator and the keyd
stand-in (test/keyd): aziot-identityd's caller rules (lib/authz.h rules 5-9).

Principals, each a uid with no passwd entry, run through setpriv (we are root):
a daemon entry (no idtype), idtype device, idtype module (its module is
reconciled onto the hub), idtype local, and a stranger; plus the unlisted root
(this process). One client process per principal sends all of its requests,
so the case stays well under a minute on a loaded machine."""
import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_readpublic", "setpriv")
from daemon import Device, HUB1, unix_request, wait_for  # noqa: E402
from keyd import KeydSim, MASTER_KEY  # noqa: E402

R = harness.Runner("module-authz")
V = "api-version=2020-09-01"
DAEMON_UID, DEVICE_UID, MODULE_UID, LOCAL_UID, STRANGER_UID = 61001, 61002, 61003, 61004, 61005
MODULE = "mod1"      # the idtype-module principal's name: its module id
LOCAL = "loc1"       # the idtype-local principal's name (no hub module: only "module" entries are reconciled)
RECONCILE_TIMEOUT = 30  # seconds for the module principal's module to appear on the hub

PRINCIPALS = """
[[principal]]
uid = %d
name = "edge-daemon"

[[principal]]
uid = %d
name = "app"
idtype = ["device"]

[[principal]]
uid = %d
name = "%s"
idtype = ["module"]

[[principal]]
uid = %d
name = "%s"
idtype = ["local"]
""" % (DAEMON_UID, DEVICE_UID, MODULE_UID, MODULE, LOCAL_UID, LOCAL)

# A client that needs nothing but the standard library: the uid may not read
# the checkout. argv: socket path, then JSON [[method, target, body-or-null], ...];
# prints JSON [[status, body-text], ...].
CLIENT = r"""
import json, socket, sys
out = []
for method, target, body in json.loads(sys.argv[2]):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sys.argv[1])
    data = (body or "").encode()
    head = "%s %s HTTP/1.1\r\nHost: identityd.sock\r\nConnection: close\r\n" % (method, target)
    if body is not None:
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    s.sendall(head.encode() + b"\r\n" + data)
    raw = b""
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        raw += b
    s.close()
    h, _, rest = raw.partition(b"\r\n\r\n")
    out.append([int(h.split(b" ")[1]) if h else 0, rest.decode(errors="replace")])
print(json.dumps(out))
"""


def requests_as(uid, sock, reqs):
    """reqs: [(method, target, body-or-None)] as uid (nogroup, no supplementary groups)."""
    p = subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=nogroup", "--clear-groups",
                        "/usr/bin/python3", "-I", "-c", CLIENT, sock, json.dumps(reqs)],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    return [(st, body) for st, body in json.loads(p.stdout)]


def as_root(d, method, target, body=None):
    r = unix_request(d.identity_sock, method, target, body)
    return r.status, r.raw.decode(errors="replace")


def create_body(m):
    return json.dumps({"type": "aziot", "moduleId": m})


def routes(own, other):
    """The module routes for a caller whose own module is own (aziot-edged's requests)."""
    return [
        ("GET", "/identities/identity?" + V, None),                                    # 0
        ("POST", "/identities/device?" + V, '{"type":"aziot"}'),                       # 1
        ("GET", "/identities/modules?%s&type=aziot" % V, None),                        # 2 list
        ("GET", "/identities/modules/%s?%s&type=aziot" % (own, V), None),              # 3 get own
        ("GET", "/identities/modules/%s?%s&type=aziot" % (other, V), None),            # 4 get another
        ("POST", "/identities/modules?" + V, create_body("created-by-%s" % own)),      # 5 create
        ("PUT", "/identities/modules/%s?%s&type=aziot" % (own, V), create_body(own)),  # 6 update
        ("DELETE", "/identities/modules/%s?%s&type=aziot" % (own, V), None),           # 7 delete
        ("GET", "/trust-bundle?" + V, None),                                           # 8
    ]


def spec(body):
    j = json.loads(body)
    assert j["type"] == "aziot", j
    return j["spec"]


def is_401(st_body):
    st, body = st_body
    return st == 401 and json.loads(body)["message"].startswith("authorization error"), st_body


@R.case
def each_principal_on_each_route():
    keyd = KeydSim()
    keyd.start()
    try:
        keyd.add_principal(0, [MASTER_KEY])
        with Device(extra_toml='aziot_keyd = "%s"\n%s' % (keyd.url, PRINCIPALS)) as dev:
            dev.provision()
            d = dev.d
            os.chmod(d.identity_sock, 0o666)  # let the kernel pass the test uids through: the daemon decides

            # reconciliation put the module principal's module on the hub
            def listed():
                st, body = as_root(d, "GET", "/identities/modules?%s&type=aziot" % V)
                return st == 200 and MODULE in [i["spec"]["moduleId"] for i in json.loads(body)["identities"]]
            wait_for(listed, RECONCILE_TIMEOUT, step=0.5, what="module %s listed" % MODULE)

            # unlisted root: everything (aziot's LocalRoot)
            st, body = as_root(d, "GET", "/identities/modules?%s&type=aziot" % V)
            ids = json.loads(body)["identities"]
            assert all("auth" not in i["spec"] for i in ids), ids  # aziot lists specs without auth
            st, body = as_root(d, "PUT", "/identities/modules/$edgeAgent?%s&type=aziot" % V, create_body("$edgeAgent"))
            assert st == 200, (st, body)
            s = spec(body)
            assert (s["hubName"], s["moduleId"], s["auth"]["type"]) == (HUB1, "$edgeAgent", "sas"), s
            assert s["deviceId"] == dev.device_id and s["genId"] and s["auth"]["keyHandle"], s
            st, body = as_root(d, "GET", "/identities/modules/%24edgeAgent?" + V + "&type=aziot")
            assert st == 200 and spec(body)["moduleId"] == "$edgeAgent", (st, body)
            st, body = as_root(d, "GET", "/identities/modules/$edgeAgent?" + V)
            assert st == 400 and "missing parameter" in body, (st, body)
            st, body = as_root(d, "GET", "/identities/modules/a%2Fb?" + V + "&type=aziot")
            assert st == 400 and "module_id" in body, (st, body)
            assert as_root(d, "GET", "/trust-bundle?" + V) == (200, '{"certificate":""}')
            assert as_root(d, "GET", "/identities/provisioning?" + V)[0] == 404
            st, body = as_root(d, "GET", "/identities/provisioning?api-version=2021-12-01")
            assert st == 200 and json.loads(body)["payload"] is None, (st, body)

            # daemon principal: everything, on any module
            r = requests_as(DAEMON_UID, d.identity_sock, routes("d-mod", MODULE))
            assert spec(r[0][1])["auth"] == {"type": "tpm"}, r[0]   # the device identity
            assert r[1][0] == 200, r[1]
            assert r[2][0] == 200, r[2]
            assert r[4][0] == 200 and spec(r[4][1])["moduleId"] == MODULE, r[4]
            assert r[5][0] == 200 and spec(r[5][1])["moduleId"] == "created-by-d-mod", r[5]
            assert r[6][0] == 200 and spec(r[6][1])["moduleId"] == "d-mod", r[6]   # PUT creates a missing one
            assert r[3][0] == 404, r[3]   # asked before the PUT made it: the hub's 404, as aziot's HubClient
            assert r[7] == (204, ""), r[7]
            assert r[8] == (200, '{"certificate":""}'), r[8]
            st, body = as_root(d, "DELETE", "/identities/modules/created-by-d-mod?%s&type=aziot" % V)
            assert st == 204, (st, body)

            # idtype device: the device identity, no module route
            r = requests_as(DEVICE_UID, d.identity_sock, routes("app", MODULE))
            assert spec(r[0][1])["auth"] == {"type": "tpm"} and "moduleId" not in spec(r[0][1]), r[0]
            assert r[1][0] == 200, r[1]
            for i in (2, 3, 4, 5, 6, 7):
                assert is_401(r[i]), (i, r[i])
            assert r[8][0] == 200, r[8]

            # idtype module: its own module only; GET /identities/identity is that module
            r = requests_as(MODULE_UID, d.identity_sock, routes(MODULE, "$edgeAgent"))
            s = spec(r[0][1])
            assert r[0][0] == 200 and s["moduleId"] == MODULE and s["auth"]["type"] == "sas", r[0]
            assert s["auth"]["keyHandle"] and s["deviceId"] == dev.device_id, s
            assert is_401(r[1]), r[1]                  # no device identity (aziot's GetDevice)
            assert is_401(r[2]), r[2]
            assert r[3][0] == 200 and spec(r[3][1])["moduleId"] == MODULE, r[3]
            assert is_401(r[4]), r[4]                  # another module
            assert "$edgeAgent" in json.loads(r[4][1])["message"], r[4]
            for i in (5, 6, 7):
                assert is_401(r[i]), (i, r[i])
            assert r[8][0] == 200, r[8]

            # idtype local: authorized for its own name, which has no hub module
            r = requests_as(LOCAL_UID, d.identity_sock, routes(LOCAL, MODULE))
            assert r[0][0] not in (200, 401), r[0]     # aziot asks the hub for it, too: an error, not a refusal
            assert is_401(r[1]), r[1]
            assert r[3][0] not in (200, 401), r[3]
            for i in (2, 4, 5, 6, 7):
                assert is_401(r[i]), (i, r[i])

            # a stranger: refused at accept, trust bundle included (tpmidd's server rule)
            r = requests_as(STRANGER_UID, d.identity_sock, routes("x", MODULE))
            for i, x in enumerate(r):
                assert x[0] == 401, (i, x)

            # the module principal's module is still there; root deletes a module: 204
            st, body = as_root(d, "DELETE", "/identities/modules/$edgeAgent?%s&type=aziot" % V)
            assert st == 204, (st, body)
            log = d.read_log()
            assert "CLIENT_UID=%d" % MODULE_UID in log, "denials are logged"
    finally:
        keyd.cleanup()


if __name__ == "__main__":
    R.main()
