#!/usr/bin/python3
"""IoT Edge on tpmidd, end to end (issue 12): aziot-edged's exact start sequence against the real
daemon (swtpm, the DPS + IoT Hub simulator, the aziot-keyd stand-in test/keyd): the device identity
(POST /identities/device), the watchdog's PUT /identities/modules/$edgeAgent, edgeAgent's module
create/list/delete, GET of a module's keyHandle, then keyd POST /sign with that handle for a module
SAS (sr={hub}/devices/{d}/modules/{m}), and module telemetry with it to the simulated hub: 204; the
same SAS tampered: 401. The requests are aziot-edged 1.5's (iotedge edgelet/aziot-edged/src/
{provision,watchdog}.rs, edgelet-http-mgmt/src/identity/, edgelet-http-workload/src/module/data/
sign.rs)."""
import threading
import os
import sys
import time
import urllib.parse

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap")
from daemon import HUB1, Device, hub_post, tamper, wait_for  # noqa: E402
from keyd import KeydSim, MASTER_KEY, module_sas  # noqa: E402

R = harness.Runner("edge-modules")
API = "api-version=2020-09-01"
TELEMETRY_API = "api-version=2020-03-13"


def edge_toml(keyd):
    """[endpoints] aziot_keyd (follows dps_config's [endpoints] lines) and edged's principal as
    `iotedge config apply` writes it: its uid, name "aziot-edge", no idtype (a daemon)."""
    return ('aziot_keyd = "%s"\n\n[[principal]]\nuid = %d\nname = "aziot-edge"\n' % (keyd.url, os.getuid()))


class Setup(Device):
    def __init__(self):
        self.keyd = KeydSim().start()
        self.keyd.add_principal(os.getuid(), [MASTER_KEY])
        try:
            super().__init__(extra_toml=edge_toml(self.keyd))
        except BaseException:
            self.keyd.cleanup()
            raise

    def __exit__(self, *exc):
        try:
            super().__exit__(*exc)
        finally:
            self.keyd.cleanup()


def telemetry(s, module_id, auth):
    path = "/devices/%s/modules/%s/messages/events?%s" % (
        urllib.parse.quote(s.device_id, safe=""), urllib.parse.quote(module_id, safe=""), TELEMETRY_API)
    return hub_post(s.sim, HUB1, path, {"temperature": 21.5}, auth)


def check_module_spec(j, module_id, device_id, with_auth):
    assert j["type"] == "aziot", j
    spec = j["spec"]
    assert spec["hubName"] == HUB1 and spec["deviceId"] == device_id and spec["moduleId"] == module_id, j
    assert spec.get("genId"), j
    if with_auth:
        assert spec["auth"]["type"] == "sas" and spec["auth"]["keyHandle"], j
    return spec


@R.case
def edged_start_sequence_and_module_telemetry():
    with Setup() as s:
        s.provision()
        d = s.d
        # aziot-edged provision.rs: the device identity
        r = d.request("POST", "/identities/device?" + API, {"type": "aziot"})
        assert r.status == 200 and r.json["spec"]["deviceId"] == s.device_id, r
        # watchdog.rs: PUT $edgeAgent (creates it the first time)
        r = d.request("PUT", "/identities/modules/$edgeAgent?" + API + "&type=aziot",
                      {"type": "aziot", "moduleId": "$edgeAgent"})
        assert r.status == 200, r
        agent = check_module_spec(r.json, "$edgeAgent", s.device_id, True)
        # the watchdog again, a minute later: the same module, the same generationId
        r = d.request("PUT", "/identities/modules/$edgeAgent?" + API + "&type=aziot",
                      {"type": "aziot", "moduleId": "$edgeAgent"})
        assert r.status == 200 and r.json["spec"]["genId"] == agent["genId"], r
        # edgeAgent's management API: create, list, delete
        r = d.request("POST", "/identities/modules?" + API, {"type": "aziot", "moduleId": "tempSensor"})
        assert r.status == 200, r
        check_module_spec(r.json, "tempSensor", s.device_id, True)
        r = d.request("POST", "/identities/modules?" + API, {"type": "aziot", "moduleId": "tempSensor"})
        assert r.status >= 400, r  # aziot: creating an existing module is an error
        r = d.request("GET", "/identities/modules?" + API + "&type=aziot")
        assert r.status == 200, r
        ids = sorted(i["spec"]["moduleId"] for i in r.json["identities"])
        # $edgeHub: the hub creates it with $edgeAgent for every IoT Edge device
        assert ids == ["$edgeAgent", "$edgeHub", "tempSensor"], r.json
        r = d.request("DELETE", "/identities/modules/tempSensor?" + API + "&type=aziot")
        assert r.status == 204, r
        r = d.request("GET", "/identities/modules?" + API + "&type=aziot")
        assert [i["spec"]["moduleId"] for i in r.json["identities"]] == ["$edgeAgent", "$edgeHub"], r.json
        # workload sign: GET the module → keyHandle → keyd POST /sign → a module SAS
        r = d.request("GET", "/identities/modules/$edgeAgent?" + API + "&type=aziot")
        assert r.status == 200, r
        spec = check_module_spec(r.json, "$edgeAgent", s.device_id, True)
        tok = module_sas(s.keyd, spec["auth"]["keyHandle"], HUB1, s.device_id, "$edgeAgent")
        assert telemetry(s, "$edgeAgent", tok) == 204
        assert telemetry(s, "$edgeAgent", tamper(tok)) == 401
        # the module's keys came from keyd's master key: the derivation is aziot's
        assert any(e["path"].startswith("/derivedkey/export") for e in s.keyd.requests()), s.keyd.requests()


@R.case
def keyd_down_or_refusing_is_named():
    with Setup() as s:
        s.provision()
        principal = '[[principal]] uid = %d keys = ["%s"]' % (os.getuid(), MASTER_KEY)
        if os.getuid() != 0:
            # keyd lets root in always; another uid needs its [[principal]] line
            os.unlink(os.path.join(s.keyd.config_d, "tpmidd.toml"))
            s.keyd.restart()
            r = s.d.request("PUT", "/identities/modules/$edgeAgent?" + API + "&type=aziot",
                            {"type": "aziot", "moduleId": "$edgeAgent"})
            assert r.status == 404 and "HTTP 401" in r.message and principal in r.message, r
            s.keyd.add_principal(os.getuid(), [MASTER_KEY])
            s.keyd.restart()
        r = s.d.request("PUT", "/identities/modules/$edgeAgent?" + API + "&type=aziot",
                        {"type": "aziot", "moduleId": "$edgeAgent"})
        assert r.status == 200, r
        # keyd down: its socket and the line it needs are named
        s.keyd.stop()
        r = s.d.request("GET", "/identities/modules/$edgeAgent?" + API + "&type=aziot")
        assert r.status == 404 and s.keyd.socket in r.message and principal in r.message, r
        # keyd answering 500: named with keyd's message
        s.keyd.start()
        s.keyd.set_mode("error")
        r = s.d.request("GET", "/identities/modules/$edgeAgent?" + API + "&type=aziot")
        assert r.status == 404 and "HTTP 500" in r.message and s.keyd.socket in r.message, r
        # keyd accepting and closing without an answer
        s.keyd.set_mode("refuse")
        r = s.d.request("GET", "/identities/modules/$edgeAgent?" + API + "&type=aziot")
        assert r.status == 404 and "closed the connection without an answer" in r.message, r
        s.keyd.set_mode("up")
        r = s.d.request("GET", "/identities/modules/$edgeAgent?" + API + "&type=aziot")
        assert r.status == 200, r


@R.case
def stop_with_a_module_call_in_flight():
    """SIGTERM while a module request waits for keyd: the caller is answered (or its connection
    closed), the daemon exits 0 with every handle closed (and, under ASan, no leak)."""
    with Setup() as s:
        s.provision()
        r = s.d.request("PUT", "/identities/modules/$edgeAgent?" + API + "&type=aziot",
                        {"type": "aziot", "moduleId": "$edgeAgent"})
        assert r.status == 200, r
        s.keyd.set_mode("stall:8")
        n = len(s.keyd.requests())
        out = {}

        def call():
            try:
                out["r"] = s.d.request("GET", "/identities/modules/$edgeAgent?" + API + "&type=aziot", timeout=20)
            except OSError as e:
                out["e"] = e
        t = threading.Thread(target=call)
        t.start()
        wait_for(lambda: len(s.keyd.requests()) > n or "identity.modules.get" in s.d.log_since_start(), 10,
                 what="the module call")
        time.sleep(0.5)
        t0 = time.time()
        s.d.stop()  # asserts exit 0
        assert time.time() - t0 < 8, "the stop waited for keyd"
        t.join(20)
        assert "e" in out or out["r"].status == 503, out
        s.keyd.set_mode("up")


if __name__ == "__main__":
    R.main()
