#!/usr/bin/python3
"""Reconciliation of the module identities (issue 12, tpmidd(8) MODULE IDENTITIES) against the real
daemon, swtpm, the DPS + IoT Hub simulator and the aziot-keyd stand-in: [[principal]] entries with
idtype "module" added and removed between restarts (the hub's modules follow; edgeAgent's own modules
are left alone); an offline start served from the module cache; a reprovisioning to another hub
recreates the modules there and the cache follows only once written; keyd down during
reconciliation; the hub answering 429 with Retry-After (honoured, no tight loop)."""
import base64
import json
import os
import re
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap")
from daemon import HUB1, HUB2, Device, tpmidctl_path, wait_for  # noqa: E402
from keyd import KeydSim, MASTER_KEY  # noqa: E402

R = harness.Runner("module-reconcile")
API = "api-version=2020-09-01"
CACHE = "module-cache"
RETRY_MIN_S = 5  # modules.h MODULES_RECONCILE_RETRY_MIN_MS


def toml(keyd, modules):
    t = 'aziot_keyd = "%s"\n\n[[principal]]\nuid = %d\nname = "aziot-edge"\n' % (keyd.url, os.getuid())
    for i, m in enumerate(modules):
        t += '\n[[principal]]\nuid = %d\nname = "%s"\nidtype = ["module"]\n' % (60000 + i, m)
    return t


class Setup(Device):
    def __init__(self, modules, **kw):
        self.keyd = KeydSim().start()
        self.keyd.add_principal(os.getuid(), [MASTER_KEY])
        try:
            super().__init__(extra_toml=toml(self.keyd, modules), **kw)
        except BaseException:
            self.keyd.cleanup()
            raise

    def __exit__(self, *exc):
        try:
            super().__exit__(*exc)
        finally:
            self.keyd.cleanup()

    def set_modules(self, modules):
        self.d.write_config(extra_toml=toml(self.keyd, modules))

    def hub_ids(self, hub=HUB1):
        """The hub's modules but the two the hub creates with every IoT Edge
        device, which reconciliation must leave alone (asserted here)."""
        ids = sorted(m["moduleId"] for m in self.sim.client.hub_modules(hub, self.device_id)["modules"])
        if ids:
            assert "$edgeAgent" in ids and "$edgeHub" in ids, ids
        return [i for i in ids if i not in ("$edgeAgent", "$edgeHub")]

    def reconciled(self, hub=HUB1, since=0, timeout=30):
        wait_for(lambda: "modules: reconciled with hub %s" % hub in self.d.log_since_start()[since:], timeout,
                 what="reconciliation with %s" % hub)

    def cache(self):
        with open(os.path.join(self.d.state_dir, CACHE)) as f:
            return json.loads(f.readline())

    def module(self, m):
        return self.d.request("GET", "/identities/modules/%s?%s&type=aziot" % (m, API))


def sign(keyd, handle, msg=b"x"):
    r = keyd.request("POST", "/sign?" + API, {"keyHandle": handle, "algorithm": "HMAC-SHA256",
                                              "parameters": {"message": base64.b64encode(msg).decode()}})
    assert r.status == 200, r
    return r.json["signature"]


@R.case
def principals_between_restarts_and_offline_start():
    with Setup(["m1", "m2"]) as s:
        s.provision()
        s.reconciled()
        assert s.hub_ids() == ["m1", "m2"], s.hub_ids()
        c = s.cache()
        assert c["version"] == 1 and c["hub"] == HUB1 and c["deviceId"] == s.device_id, c
        # the hub's own $edgeAgent and $edgeHub are cached (edged asks for them), not a principal's
        assert sorted((m["moduleId"], m["principal"]) for m in c["modules"]) == [
            ("$edgeAgent", False), ("$edgeHub", False), ("m1", True), ("m2", True)], c
        st = s.d.status()["modules"]  # GET /status shows the cache and the verdict
        assert st["count"] == 4 and st["lastReconcile"].startswith("ok: 4 modules on hub %s" % HUB1), st
        p = harness.run([tpmidctl_path(), "system", "status"], env=dict(os.environ, TPMIDD_CONFIG=s.d.config),
                        check=False, timeout=30)
        assert "    Modules:          4 (ok: 4 modules on hub %s" % HUB1 in p.stdout, p.stdout
        # edgeAgent's own module: not a principal's, never touched by reconciliation
        r = s.d.request("POST", "/identities/modules?" + API, {"type": "aziot", "moduleId": "agentmod"})
        assert r.status == 200, r
        gen_m1 = s.module("m1").json["spec"]["genId"]
        # restart with m2 gone and m3 new
        s.set_modules(["m1", "m3"])
        s.d.restart()
        s.reconciled()
        assert s.hub_ids() == ["agentmod", "m1", "m3"], s.hub_ids()
        r = s.module("m1")
        assert r.status == 200 and r.json["spec"]["genId"] == gen_m1, r  # kept, not recreated
        handle = r.json["spec"]["auth"]["keyHandle"]
        # offline: the hub is gone; the daemon starts and serves its modules from the cache
        s.d.stop()
        s.sim.stop()
        s.d.start()
        wait_for(lambda: "no reconciliation with the hub" in s.d.log_since_start(), 30, what="the offline warning")
        r = s.module("m1")
        assert r.status == 200 and r.json["spec"]["genId"] == gen_m1, r
        # the same key as online: keyd derives it again from the cached generationId
        assert sign(s.keyd, r.json["spec"]["auth"]["keyHandle"]) == sign(s.keyd, handle)
        r = s.d.request("GET", "/identities/modules?" + API + "&type=aziot")
        assert r.status == 200, r
        assert sorted(i["spec"]["moduleId"] for i in r.json["identities"]) == ["$edgeAgent", "$edgeHub", "agentmod", "m1", "m3"], r.json
        # a damaged cache is refused whole, with a clear line, and the daemon still starts
        s.d.stop()
        path = os.path.join(s.d.state_dir, CACHE)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        s.d.start()
        assert "module cache %s is damaged" % path in s.d.log_since_start(), s.d.log_for_humans()
        r = s.module("m1")
        assert r.status == 503, r  # no hub, no cache: nothing to serve


@R.case
def reprovisioning_to_another_hub():
    with Setup(["m1"], hubs=(HUB1, HUB2)) as s:
        s.d.start()
        s.d.wait_provisioned()
        first = s.d.identity()[0]  # the allocation's pick
        other = HUB2 if first == HUB1 else HUB1
        s.reconciled(first)
        assert s.hub_ids(first) == ["m1"]
        s.sim.client.move(s.regid, other)
        n = len(s.d.log_since_start())
        r = s.d.reprovision()
        assert r.status == 204, r
        s.d.wait_provisioned()
        assert s.d.identity() == (other, s.device_id), s.d.identity()
        s.reconciled(other, since=n)
        assert s.hub_ids(other) == ["m1"], s.hub_ids(other)
        c = s.cache()
        assert c["hub"] == other and [m["moduleId"] for m in c["modules"]] == ["$edgeAgent", "$edgeHub", "m1"], c
        r = s.module("m1")
        assert r.status == 200 and r.json["spec"]["hubName"] == other, r


@R.case
def keyd_down_then_up():
    with Setup(["m1"]) as s:
        s.keyd.stop()
        s.provision()
        wait_for(lambda: "modules: reconciliation failed" in s.d.log_since_start(), 30, what="the failure")
        log = s.d.log_since_start()
        assert s.keyd.socket in log and 'keys = ["%s"]' % MASTER_KEY in log, s.d.log_for_humans()
        s.keyd.start()
        s.reconciled(timeout=RETRY_MIN_S * 3)
        assert s.hub_ids() == ["m1"]
        assert s.module("m1").status == 200


@R.case
def hub_throttles_reconciliation():
    with Setup(["m1"]) as s:
        s.sim.client.fault("hub-modules", "throttle", count=2, retryAfter=7)
        t0 = time.time()
        s.provision()
        wait_for(lambda: "no reconciliation with the hub" in s.d.log_since_start(), 30, what="the 429")
        log = s.d.log_since_start()
        m = re.search(r"no reconciliation with the hub \(([^)]*)\); serving the module cache, next try in (\d+) s",
                      log)
        assert m and "429" in m.group(1) and "retry after 7 s" in m.group(1), s.d.log_for_humans()
        assert int(m.group(2)) >= 7, m.group(0)  # Retry-After honoured
        s.reconciled(timeout=40)
        assert time.time() - t0 >= 14  # two throttled tries, 7 s apart at least: no tight loop
        assert s.hub_ids() == ["m1"]


if __name__ == "__main__":
    R.main()
