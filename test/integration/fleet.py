#!/usr/bin/python3
"""A small fleet against a throttled DPS (issue 16): the invariants, not times.

- quota_counts: the simulator's quota refuses over its limit with 429 +
  Retry-After and counts a request that comes back before that ran out as
  early (so the fleet case's "0 early" can fail).
- fleet_invariants: FLEET_N real tpmidd, each with its own swtpm, started at
  once against a quota far below their demand (test/bench/fleet.py's Fleet):
  every device is provisioned, none gave up, none sent a request before its
  Retry-After ran out, and none needed more DPS requests than the minimum plus
  two per 429 it got (the refused request itself, and the challenge PUT of the
  new run a refused signed PUT starts).
"""
import http.client
import importlib.util
import json
import os
import ssl
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import harness  # noqa: E402
from daemon import Sim, ID_SCOPE  # noqa: E402

# test/bench/fleet.py by its path: this file has the same name.
_spec = importlib.util.spec_from_file_location("fleet_bench", os.path.join(HERE, "..", "bench", "fleet.py"))
fleet_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fleet_bench)

FLEET_N = 10
# 2 FLEET_N registrations at 6 per 3 s: ideal 11 s (fleet.ideal_seconds); polls the same.
FLEET_QUOTA = {"windowSeconds": 3, "registrationsPerUnit": 6, "pollsPerUnit": 6,
               "pollsPerDevice": 5, "deviceWindowSeconds": 10}
FLEET_TIMEOUT = 60      # s for the whole fleet to be provisioned (ideal 11 s; backoff jitter adds to it)
PER_429_EXTRA = 1       # DPS requests a 429 may cost a device beyond the minimum: the refused one, resent

harness.need("swtpm", "swtpm_ioctl", "tpm2_shutdown")
if not os.path.exists(harness.program("tpmidd")):
    harness.skip("tpmidd not built")

T = harness.Runner("fleet")


def register_put(sim, regid):
    """One unsigned PUT .../register to the simulator; returns (status, headers)."""
    ctx = ssl.create_default_context(cafile=sim.ca_path)
    c = http.client.HTTPSConnection("127.0.0.1", sim.port, context=ctx, timeout=15)
    try:
        c.request("PUT", "/%s/registrations/%s/register?api-version=2021-06-01" % (ID_SCOPE, regid),
                  body=json.dumps({"registrationId": regid}), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


@T.case
def quota_counts():
    with Sim() as sim:
        q = sim.client.call("PUT", "/quota", {"windowSeconds": 60, "registrationsPerUnit": 2})
        assert q["counters"]["requests"] == 0, q
        assert [register_put(sim, "dev1")[0] for _ in range(2)] == [404, 404]  # counted, not enrolled
        st, h = register_put(sim, "dev1")
        assert st == 429, st
        assert 1 <= int(h["retry-after"]) <= 60, h
        assert register_put(sim, "dev1")[0] == 429  # back before the Retry-After: early
        c = sim.client.call("GET", "/quota")["counters"]
        assert (c["requests"], c["throttled"], c["early"]) == (4, 2, 1), c
        assert c["devices"]["dev1"]["registrations"] == 4, c
        assert register_put(sim, "dev2")[0] == 429  # the limit is the scope's, not the device's
        try:
            sim.client.call("PUT", "/quota", {"registrationsPerUnit": -1})
            raise AssertionError("a negative limit was accepted")
        except Exception as e:
            assert "400" in str(e), e


@T.case
def fleet_invariants():
    f = fleet_bench.Fleet(FLEET_N, FLEET_QUOTA, log=lambda s: print("  " + s))
    res = None
    try:
        f.prepare()
        res = f.run(FLEET_TIMEOUT)
        print("  " + fleet_bench.summary(res, FLEET_QUOTA))
        problems = []
        if res["final"]:
            problems.append("not provisioned: %s" % res["final"])
        if res["gave_up"]:
            problems.append("%d devices gave up" % res["gave_up"])
        if res["early"]:
            problems.append("%d requests came before their Retry-After ran out" % res["early"])
        if res["throttled"] == 0:
            problems.append("the quota never throttled: the case tests nothing")
        for regid in res["regids"]:
            dev = res["devices"].get(regid, {})
            bound = fleet_bench.minimum_requests() + PER_429_EXTRA * dev.get("throttled", 0)
            if dev.get("requests", 0) > bound:
                problems.append("%s sent %d DPS requests for %d 429s (bound %d)" % (
                    regid[:12], dev.get("requests", 0), dev.get("throttled", 0), bound))
        if problems:
            for regid, t in sorted(f.trace.items()):
                print("  %s: %s" % (regid[:12], ", ".join(t)))
            bad = sorted(res["final"]) or [0]
            raise AssertionError("; ".join(problems) + "\n--- tpmidd log of device %d ---\n%s" % (
                bad[0], f.daemon_log(bad[0])[-6000:]))
    finally:
        errs = f.stop()
    assert not errs, errs


T.main()
