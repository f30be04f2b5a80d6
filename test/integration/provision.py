#!/usr/bin/python3
"""DPS provisioning end to end: swtpm + the DPS/IoT Hub simulator + tpmidd.

The device registers by TPM attestation, lands on the hub the simulator picked,
and the hub accepts the SAS token the daemon signs in the TPM. Permanent DPS
refusals stop retrying with the DPS error shown in status; outages back off
with growing, Retry-After-respecting delays."""
import hashlib
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# test/integration/packaging.py would shadow the "packaging" package that
# tpm2_pytss imports: keep this directory off the module path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_readpublic", "tpm2_getcap", "setpriv")
from daemon import HUB1, HUB2, Daemon, Sim, readpublic, read_state_file, tpm_info, wait_for  # noqa: E402

R = harness.Runner("provision")


def sha256_hex(b):
    return hashlib.sha256(b).hexdigest()


def check_provisioned(d, sim, regid):
    """The daemon, the simulator and the hub agree on the identity."""
    p = d.wait_provisioned()
    assert p["registrationId"] == regid, p
    assert p["lastResult"] and p["lastResult"]["status"] == "assigned", p
    assert p["nextRetryAt"] is None, p
    hub, dev = d.identity()
    assert (p["hubName"], p["deviceId"]) == (hub, dev), (p, hub, dev)
    st = sim.client.status(regid)["registrationState"]
    assert st["status"] == "assigned", st
    assert (st["assignedHub"], st["deviceId"]) == (hub, dev), (st, hub, dev)
    assert d.hub_token_ok() == (hub, dev)
    saved = read_state_file(d.state_file)
    assert (saved["hub"], saved["deviceId"]) == (hub, dev), saved
    assert oct(os.stat(d.state_file).st_mode & 0o777) == "0o600"
    return hub, dev


@R.case
def blank_tpm():
    """Blank TPM: EK/SRK created on first use; derived registration id = sha256sum ek.pub."""
    with harness.Swtpm() as tpm, Sim(polls=2, retry_after=1) as sim:
        info = tpm_info(tpm)
        ekpub = readpublic(tpm, "0x81010001", os.path.join(tpm.dir, "ek.pub"))
        assert ekpub == info["ek"]
        regid = sha256_hex(ekpub)  # the seed script: sha256sum ek.pub
        assert info["registration_id"] == regid, (info["registration_id"], regid)
        sim.client.enroll(regid, info["ek"], hubs=[HUB1, HUB2])
        with Daemon(tpm, sim) as d:
            hub, dev = check_provisioned(d, sim, regid)
            assert dev == regid  # the simulator's default device id
            r = d.provisioning_info()
            assert r.status == 200, r
            assert r.json["source"] == "dps" and r.json["auth"] == "tpm", r.json
            assert r.json["registration_id"] == regid and r.json["scope_id"] == "0ne00000001", r.json
            assert r.json["payload"] is None, r.json  # aziot serialises no payload as null
            # polls honoured the 202 retry-after (1 s)
            ops = sim.requests("operation")
            assert len(ops) == 3, ops
            for a, b in zip(ops, ops[1:]):
                assert b["ts"] - a["ts"] >= 0.95, (a, b)
            regs = [e["route"] for e in sim.requests() if e["route"].startswith("register")]
            assert regs == ["register-challenge", "register-auth"], regs
            assert "provisioned: device %s on hub %s" % (dev, hub) in d.log_since_start()
        # the hub key and the challenge key are persistent; nothing transient left over
        handles = tpm.persistent_handles()
        assert "0x81000100" in handles, handles
        assert tpm.transient_handles() == [] and tpm.loaded_sessions() == []


@R.case
def maker_provisioned_tpm():
    """A TPM with a manufacturer's EK (swtpm_setup): the existing EK is the one enrolled."""
    with harness.Swtpm(provisioned=True) as tpm, Sim() as sim:
        ekpub = readpublic(tpm, "0x81010001", os.path.join(tpm.dir, "ek.pub"))
        regid = sha256_hex(ekpub)
        sim.client.enroll(regid, ekpub, hubs=[HUB2], device_id="maker-device-1")
        with Daemon(tpm, sim) as d:
            hub, dev = check_provisioned(d, sim, regid)
            assert (hub, dev) == (HUB2, "maker-device-1")
        assert readpublic(tpm, "0x81010001", os.path.join(tpm.dir, "ek2.pub")) == ekpub  # EK untouched


@R.case
def payload_and_configured_regid():
    """payload = { uri } reaches DPS: the custom allocation picks the hub the payload names,
    and the simulator echoes it; a configured registration_id is used verbatim."""
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        regid = "payload-dev-1"
        payload = os.path.join(tpm.dir, "payload.json")
        doc = {"iotHubHostName": HUB2, "modelId": "dtmi:tpmid:test;1", "nested": {"n": [1, 2, 3]}}
        with open(payload, "w") as f:
            json.dump(doc, f)
        sim.client.enroll(regid, info["ek"], hubs=[HUB1, HUB2], policy="custom")
        with Daemon(tpm, sim, registration_id=regid, payload=payload) as d:
            hub, _ = check_provisioned(d, sim, regid)
            assert hub == HUB2, "custom allocation did not see the payload: assigned %s" % hub
            r = d.provisioning_info()
            assert r.status == 200 and r.json["registration_id"] == regid, r
            assert r.json["payload"] == doc, r.json


def assert_no_more_requests(sim, since, seconds):
    time.sleep(seconds)
    extra = sim.requests(since=since)
    assert extra == [], "the daemon retried after a permanent failure: %s" % extra


@R.case
def permanent_failures():
    """EK mismatch, disabled and missing enrollments: failed-permanent with the DPS error,
    no retries; a client's reprovision request after the fix succeeds."""
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        regid = info["registration_id"]
        cases = [
            ("ek-mismatch", lambda: sim.client.enroll(regid, info["srk"], hubs=[HUB1]), 401002,
             "does not match the Enrollment"),
            ("disabled", lambda: sim.client.enroll(regid, info["ek"], hubs=[HUB1], enabled=False), 401002,
             "Enrollment is disabled"),
            ("missing", lambda: sim.client.delete(regid), 404201, "Enrollment not found"),
        ]
        for name, setup, code, text in cases:
            setup()
            seq0 = sim.last_seq()
            with Daemon(tpm, sim) as d:
                p = d.wait_state("failed")
                lr = p["lastResult"]
                assert lr and lr["errorCode"] == code, (name, p)
                assert text in (lr["message"] or ""), (name, p)
                assert lr["status"] in ("failed", "error"), (name, p)
                assert p["nextRetryAt"] is None and p["hubName"] is None, (name, p)
                r = d.device()
                assert r.status == 503 and text in r.message, (name, r)
                assert d.token().status == 503, name
                reqs = sim.requests(since=seq0)
                assert [e["route"] for e in reqs] == ["register-challenge"], (name, reqs)
                assert_no_more_requests(sim, reqs[-1]["seq"], 4)
                assert not os.path.exists(d.state_file), name
                if name == "disabled":
                    # the operator fixes the enrollment and asks for reprovisioning
                    sim.client.enable(regid)
                    r = d.reprovision()
                    assert r.status == 204, r
                    check_provisioned(d, sim, regid)
            print("   %-12s -> %d %s" % (name, code, lr["message"][:100]))


@R.case
def refused_signature_retried_then_verdict():
    """A 401 to the second PUT is usually a challenge that went stale (DPS keeps
    only the latest; a crashed predecessor's request may have fetched a newer
    one): the daemon registers again, up to 3 runs, then takes it as DPS's verdict."""
    body = {"errorCode": 401002, "trackingId": "t", "message": "Unauthorized"}
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        regid = info["registration_id"]
        sim.client.enroll(regid, info["ek"], hubs=[HUB1])
        sim.client.fault("register-auth", "status", count=2, status=401, body=body)
        seq0 = sim.last_seq()
        with Daemon(tpm, sim) as d:
            check_provisioned(d, sim, regid)
            routes = [e["route"] for e in sim.requests(since=seq0)]
            assert routes.count("register-challenge") == 3, routes
            assert "registering again (2 of 3)" in d.log_since_start(), d.log_since_start()
        # three refusals in a row: a verdict, no more requests
        sim.client.fault("register-auth", "status", count=3, status=401, body=body)
        seq0 = sim.last_seq()
        with Daemon(tpm, sim) as d:
            p = d.wait_state("failed", timeout=40)
            assert p["lastResult"]["errorCode"] == 401002, p
            reqs = sim.requests(since=seq0)
            assert [e["route"] for e in reqs].count("register-auth") == 3, reqs
            assert_no_more_requests(sim, reqs[-1]["seq"], 3)


@R.case
def dps_down_at_start():
    """The simulator is not running when the daemon starts: it backs off, serves nothing,
    and provisions once DPS is back."""
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        sim.stop()
        with Daemon(tpm, sim) as d:
            p = d.wait_state("backing-off", timeout=15)
            assert p["lastResult"]["status"] == "error", p
            assert "unreachable" in p["lastResult"]["message"].lower(), p
            assert p["nextRetryAt"] and p["nextRetryAt"] >= int(time.time()) - 1, p
            r = d.device()
            assert r.status == 503 and r.headers.get("retry-after"), r
            time.sleep(2)
            sim.start()
            check_provisioned(d, sim, info["registration_id"])


@R.case
def backoff_grows():
    """DPS answers 503 again and again: delays between attempts stay within the
    exponential ceilings (2, 4, 8, 16 s ... + Retry-After) and grow past the first one."""
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        sim.client.fault("register-challenge", "unavailable", count=7, retryAfter=1)
        with Daemon(tpm, sim) as d:
            def gaps():
                ts = [e["ts"] for e in sim.requests("register-challenge")]
                return [b - a for a, b in zip(ts, ts[1:])]
            # Stop injecting once at least 3 gaps are seen and one exceeded the first
            # ceiling; with full jitter that happens by the 5th gap with p > 0.998.
            deadline = time.time() + 70
            while time.time() < deadline:
                g = gaps()
                if len(g) >= 3 and max(g) > 2.6:
                    break
                if len(g) >= 6:
                    break
                time.sleep(0.1)
            sim.client.clear_faults()
            g = gaps()
            print("   gaps: " + ", ".join("%.2f" % x for x in g))
            st = d.prov()
            assert st["state"] in ("backing-off", "registering", "importing-challenge", "authenticating",
                                   "polling", "importing-final", "saving", "provisioned"), st
            # the attempt after the last injected 503 may be a full ceiling away (up to 64 s)
            d.wait_provisioned(timeout=75)
            check_provisioned(d, sim, info["registration_id"])
            g = gaps()
            assert len(g) >= 3, g
            for i, x in enumerate(g):
                ceiling = min(2.0 * 2 ** i, 300.0)
                assert x >= 0.95, ("retry sooner than Retry-After", i, g)
                assert x <= ceiling + 0.6, ("retry later than the backoff ceiling", i, g)
            assert max(g) > 2.6, ("delays never grew past the first ceiling", g)


@R.case
def operation_lost_while_polling():
    """DPS restarts and forgets the operation being polled (404 OperationNotFound): the
    device registers again instead of giving up."""
    with harness.Swtpm() as tpm, Sim(polls=3, retry_after=1) as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        with Daemon(tpm, sim) as d:
            wait_for(lambda: sim.requests("operation"), 15, what="the first poll")
            sim.restart()  # same port and enrollments; operations live in memory only
            check_provisioned(d, sim, info["registration_id"])
            routes = [(e["route"], e["status"]) for e in sim.requests()]
            assert ("operation", 404) in routes and ("register-challenge", 401) in routes, routes
            assert "no longer knows this run's operation" in d.log_since_start()


@R.case
def retry_after_honoured():
    """429 with Retry-After: N on the first PUT and on a poll: the next request comes
    N s later (the jittered delay of a first retry is at most 2 s, so N decides)."""
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        for route, n in (("register-challenge", 5), ("operation", 4)):
            seq0 = sim.last_seq()
            sim.client.fault(route, "throttle", count=1, retryAfter=n)
            with Daemon(tpm, sim) as d:  # a fresh state dir: DPS runs
                check_provisioned(d, sim, info["registration_id"])
                reqs = sim.requests(since=seq0)
                i = next(i for i, e in enumerate(reqs) if e["status"] == 429)
                assert reqs[i]["route"] == route and reqs[i]["fault"], reqs[i]
                gap = reqs[i + 1]["ts"] - reqs[i]["ts"]
                print("   %s: 429 retry-after %d -> next request after %.2f s (%s)" % (
                    route, n, gap, reqs[i + 1]["route"]))
                assert n - 0.05 <= gap <= n + 1.5, (route, n, gap)
                # a failed first PUT starts the run over; a failed poll polls the same operation again
                assert reqs[i + 1]["route"] == route, reqs[i + 1]


if __name__ == "__main__":
    R.main()
