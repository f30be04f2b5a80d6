#!/usr/bin/python3
"""auto_reprovisioning_mode and the saved identity across restarts (lib/provision.h):
AlwaysOnStartup runs DPS at every start, Dynamic checks the hub once and runs DPS
only when the hub rejects the device, OnErrorOnly does neither; a saved identity is
served while DPS is down; a client can force a DPS run; a corrupt state file is
detected; the working hub key survives a failed reprovisioning; a client's report of
a hub rejection (POST /identities/device/report) makes Dynamic check the hub itself,
rate-limited, and is ignored by OnErrorOnly."""
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap", "setpriv")
from daemon import ID_API, HUB1, HUB2, Device, hub_get, read_state_file, wait_for  # noqa: E402

R = harness.Runner("reprovision")

DPS_ROUTES = ("register-challenge", "register-auth", "operation")


class Setup(Device):
    """swtpm + simulator + an enrolled device, provisioned once on HUB1."""

    def __init__(self, mode, hubs=(HUB1,), polls=1):
        super().__init__(hubs=hubs, policy="static", sim_opts=dict(polls=polls), mode=mode)

    def provision(self):
        super().provision()
        self.d.hub_token_ok()
        return self

    def report(self, hub_status=401, reason=None, version=ID_API, body=None):
        """POST /identities/device/report; body overrides the JSON built from the arguments."""
        if body is None:
            body = {"hubStatus": hub_status}
            if reason is not None:
                body["reason"] = reason
        return self.d.request("POST", "/identities/device/report?" + version, body)

    def report_action(self, hub_status=401, reason=None, version=ID_API):
        r = self.report(hub_status, reason, version)
        assert r.status == 202 and r.json and set(r.json) == {"action"}, r
        return r.json["action"]

    def hub_checks(self, since):
        return self.sim.requests(route="hub", since=since)



def dps_runs(routes):
    return routes.count("register-challenge")


@R.case
def always_on_startup():
    """Each restart registers with DPS again; the old identity is served meanwhile."""
    with Setup("AlwaysOnStartup") as s:
        s.provision()
        first = read_state_file(s.d.state_file)
        seq = s.sim.last_seq()
        s.d.stop()
        s.sim.client.fault("register-challenge", "stall", count=1, seconds=3)
        s.d.start()
        t0 = time.time()
        # served at once, while the first PUT stalls
        assert s.d.identity() == (HUB1, s.regid)
        # the saved state is read and checked after READY: loading-state first
        s.d.wait_state("registering", timeout=2)
        assert time.time() - t0 < 2
        s.d.wait_provisioned()
        routes = s.routes(seq)
        assert dps_runs(routes) == 1 and "register-auth" in routes and "hub" not in routes, routes
        s.d.hub_token_ok()
        second = read_state_file(s.d.state_file)
        assert second["hub"] == first["hub"], (first, second)
        assert "reason: startup" in s.d.log_since_start()


@R.case
def dynamic_restart_checks_hub_only():
    with Setup("Dynamic") as s:
        s.provision()
        seq = s.sim.last_seq()
        s.d.restart()
        s.d.wait_provisioned()
        time.sleep(1)
        reqs = s.sim.requests(since=seq)
        assert [e["route"] for e in reqs] == ["hub"], reqs
        assert reqs[0]["status"] == 204 and reqs[0]["auth"] == "valid", reqs  # the C2D receive: no message
        assert reqs[0]["host"].startswith(HUB1), reqs
        s.d.hub_token_ok()


@R.case
def on_error_only_restart_no_traffic():
    with Setup("OnErrorOnly") as s:
        s.provision()
        seq = s.sim.last_seq()
        s.d.restart()
        p = s.d.wait_provisioned()
        assert (p["hubName"], p["deviceId"]) == (HUB1, s.regid), p
        time.sleep(2)
        assert s.sim.requests(since=seq) == []
        s.d.hub_token_ok()


@R.case
def moved_hub_dynamic_follows():
    """The operator moves the device to HUB2 (old hub revoked): on restart the hub check
    gets 401 and Dynamic reprovisions onto HUB2."""
    with Setup("Dynamic", hubs=(HUB1,)) as s:
        s.provision()
        s.d.stop()
        s.sim.client.move(s.regid, HUB2)
        seq = s.sim.last_seq()
        s.d.start()

        def on_hub2():
            p = s.d.prov()
            return p if p["state"] == "provisioned" and p["hubName"] == HUB2 else None
        wait_for(on_hub2, 40, what="provisioned on hub2")
        routes = s.routes(seq)
        assert routes[0] == "hub" and dps_runs(routes) == 1, routes
        assert s.sim.requests(since=seq)[0]["status"] == 401
        assert s.d.identity() == (HUB2, s.regid)
        s.d.hub_token_ok()
        assert read_state_file(s.d.state_file)["hub"] == HUB2
        st = s.sim.client.status(s.regid)["registrationState"]
        assert st["assignedHub"] == HUB2 and st["substatus"] == "deviceDataMigrated", st


@R.case
def moved_hub_on_error_only_stays():
    """OnErrorOnly keeps the old identity after the move (no hub check); only an explicit
    reprovision request moves it."""
    with Setup("OnErrorOnly", hubs=(HUB1,)) as s:
        s.provision()
        s.d.stop()
        s.sim.client.move(s.regid, HUB2)
        seq = s.sim.last_seq()
        s.d.start()
        s.d.wait_provisioned()
        time.sleep(2)
        assert s.sim.requests(since=seq) == []
        assert s.d.identity() == (HUB1, s.regid)
        t = s.d.token().json
        assert hub_get(s.sim, t["hubName"], t["deviceId"], t["sasToken"])[0] == 401  # revoked there
        r = s.d.reprovision()
        assert r.status == 204, r
        assert s.d.identity() == (HUB2, s.regid)
        s.d.hub_token_ok()


@R.case
def dps_down_saved_identity_served():
    """AlwaysOnStartup with DPS (and the hubs) down: the saved identity is served right
    away while DPS is retried; Dynamic with the hub unreachable keeps serving, no DPS."""
    with Setup("AlwaysOnStartup") as s:
        s.provision()
        s.d.stop()
        s.sim.stop()
        s.d.start()
        t0 = time.time()
        assert s.d.identity() == (HUB1, s.regid)
        assert time.time() - t0 < 2
        p = s.d.wait_state("backing-off", timeout=15)
        assert p["hubName"] == HUB1 and "unreachable" in p["lastResult"]["message"].lower(), p
        assert s.d.identity() == (HUB1, s.regid)
        r = s.d.token()
        assert r.status == 200 and r.json["hubName"] == HUB1, r  # signing needs no network
        s.sim.start()
        s.d.wait_provisioned(timeout=40)
        s.d.hub_token_ok()

        # Dynamic, hub unreachable at start: not evidence of a move.
        s.d.stop()
        s.d.write_config(mode="Dynamic")
        s.sim.stop()
        s.d.start()
        p = s.d.wait_provisioned(timeout=40)
        assert p["hubName"] == HUB1, p
        s.sim.start()
        time.sleep(2)
        assert [e for e in s.sim.requests() if e["route"] in DPS_ROUTES] == []
        s.d.hub_token_ok()


@R.case
def client_reprovision():
    """POST /identities/device/reprovision → 204 after a full DPS run; the old identity is
    served while that run is in progress."""
    with Setup("OnErrorOnly", polls=2) as s:
        s.provision()
        before = read_state_file(s.d.state_file)
        seq = s.sim.last_seq()
        time.sleep(1.1)  # assigned_at has second resolution
        s.sim.client.fault("register-challenge", "stall", count=1, seconds=2)
        import threading
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("r", s.d.reprovision()))
        th.start()
        time.sleep(0.5)
        assert s.d.identity() == (HUB1, s.regid)  # still served during the run
        assert s.d.prov()["state"] == "registering"
        th.join(60)
        assert out["r"].status == 204, out["r"]
        routes = s.routes(seq)
        assert routes == ["register-challenge", "register-auth", "operation", "operation", "operation"], routes
        after = read_state_file(s.d.state_file)
        assert after["assignedAt"] > before["assignedAt"], (before, after)
        s.d.hub_token_ok()
        # a second request while nothing is wrong also runs DPS
        seq = s.sim.last_seq()
        assert s.d.reprovision().status == 204
        assert dps_runs(s.routes(seq)) == 1


@R.case
def reprovision_requests_during_a_run():
    """Reprovision requests arriving at every point of a DPS run (during TPM imports and
    signatures too) are coalesced into that run: all answered 204, no run stalls."""
    import threading
    with Setup("OnErrorOnly", polls=1) as s:
        s.provision()
        seq = s.sim.last_seq()
        results = []
        lock = threading.Lock()

        def one():
            r = s.d.reprovision(timeout=60)
            with lock:
                results.append(r.status)
        threads = []
        # Token requests keep the TPM worker's queue busy, so the run's own TPM
        # steps wait in it and the requests below often land while one is pending.
        stop = threading.Event()
        tokens = []

        def hammer():
            while not stop.is_set():
                tokens.append(s.d.token().status)
        hammers = [threading.Thread(target=hammer) for _ in range(3)]
        for th in hammers:
            th.start()
        # A run takes ~1.5 s here: requests land in all of its steps. At most 12
        # connections at once: the socket allows 16 per uid (the rest get 429).
        try:
            for i in range(9):
                th = threading.Thread(target=one)
                th.start()
                threads.append(th)
                time.sleep(0.15)
            for th in threads:
                th.join(70)
        finally:
            stop.set()
            for th in hammers:
                th.join(30)
        assert tokens and all(st == 200 for st in tokens), tokens[:50]
        assert len(results) == len(threads), ("requests left hanging", len(results), len(threads))
        assert all(st == 204 for st in results), results
        runs = dps_runs(s.routes(seq))
        assert 1 <= runs <= 3, (runs, s.routes(seq))
        print("   %d requests (and %d tokens meanwhile) -> %d DPS runs" % (len(results), len(tokens), runs))
        s.d.wait_provisioned()
        s.d.hub_token_ok()


@R.case
def corrupt_state_file():
    """A flipped byte, a truncated file, an empty file and garbage are all detected: a
    warning is logged and DPS runs again (OnErrorOnly would otherwise send nothing)."""
    with Setup("OnErrorOnly") as s:
        s.provision()
        s.d.stop()
        good = open(s.d.state_file, "rb").read()

        def flip(b):
            i = b.index(b"hub") + 8
            return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]
        variants = {
            "bit-flip": flip(good),
            "truncated": good[:len(good) // 2],
            "no-digest": good.split(b"\n")[0] + b"\n",
            "empty": b"",
            "garbage": os.urandom(300),
        }
        for name, data in variants.items():
            with open(s.d.state_file, "wb") as f:
                f.write(data)
            seq = s.sim.last_seq()
            s.d.start()
            s.d.wait_provisioned()
            log = s.d.log_since_start()
            assert "corrupt" in log.lower(), (name, log[-3000:])
            assert dps_runs(s.routes(seq)) == 1, (name, s.routes(seq))
            read_state_file(s.d.state_file)  # rewritten, valid
            s.d.hub_token_ok()
            s.d.stop()
            print("   %-10s detected, reprovisioned" % name)


@R.case
def working_key_survives_failed_reprovision():
    """A client asks to reprovision while DPS fails after the challenge import (503 on the
    authenticated PUT) or refuses the assignment: the answer is 503/502 and the old hub
    key still signs tokens the hub accepts."""
    with Setup("OnErrorOnly") as s:
        s.provision()
        # transient: the challenge was imported into the challenge slot, then DPS fails
        s.sim.client.fault("register-auth", "unavailable", count=50, retryAfter=1)
        r = s.d.reprovision()
        assert r.status == 503, r
        p = s.d.prov()
        assert p["state"] == "backing-off" and p["hubName"] == HUB1, p
        s.d.hub_token_ok()
        s.sim.client.clear_faults()
        # permanent: the operation ends "failed"
        body = {"operationId": "x", "status": "failed",
                "registrationState": {"registrationId": s.regid, "status": "failed", "errorCode": 400209,
                                      "errorMessage": "Device is not authorized to the hub"}}
        s.sim.client.fault("operation", "status", count=50, status=200, body=body)
        r = s.d.reprovision()
        assert r.status in (502, 503), r
        p = s.d.prov()
        assert p["hubName"] == HUB1 and p["lastResult"]["errorCode"] == 400209, p
        s.d.hub_token_ok()
        assert s.d.identity() == (HUB1, s.regid)
        s.sim.client.clear_faults()
        assert s.d.reprovision().status == 204
        s.d.hub_token_ok()



@R.case
def report_moved_dynamic_follows():
    """Dynamic, provisioned on HUB1; the operator moves the device to HUB2 and HUB1 revokes
    it. A client reports 401: the daemon checks the hub itself, sees the rejection, runs
    DPS and ends up on HUB2."""
    with Setup("Dynamic", hubs=(HUB1,)) as s:
        s.provision()
        s.sim.client.move(s.regid, HUB2)
        seq = s.sim.last_seq()
        assert s.report_action(401, reason="IotHubUnauthorizedAccess") == "checking-hub"

        def on_hub2():
            p = s.d.prov()
            return p if p["state"] == "provisioned" and p["hubName"] == HUB2 else None
        wait_for(on_hub2, 40, what="provisioned on hub2")
        routes = s.routes(seq)
        assert routes[0] == "hub" and dps_runs(routes) == 1, routes
        first = s.sim.requests(since=seq)[0]
        assert first["status"] == 401 and first["host"].startswith(HUB1), first
        assert s.d.identity() == (HUB2, s.regid)
        s.d.hub_token_ok()
        assert read_state_file(s.d.state_file)["hub"] == HUB2
        log = s.d.log_since_start()
        assert "reason: hub-rejected-credentials" in log, log[-3000:]
        assert "IotHubUnauthorizedAccess" in log and "reports that hub" in log, log[-3000:]


@R.case
def report_hub_still_accepts_no_dps():
    """Dynamic: a client reports 403 (any identity api-version) but the hub accepts the
    daemon's own request: one hub request, no DPS run, still on HUB1."""
    with Setup("Dynamic") as s:
        s.provision()
        seq = s.sim.last_seq()
        assert s.report_action(403, version="api-version=2022-08-01") == "checking-hub"
        wait_for(lambda: s.hub_checks(seq), 20, what="the hub check")
        s.d.wait_provisioned()
        time.sleep(1)
        reqs = s.sim.requests(since=seq)
        assert [e["route"] for e in reqs] == ["hub"], reqs
        assert reqs[0]["status"] == 204 and reqs[0]["auth"] == "valid", reqs  # the C2D receive: no message
        assert s.d.identity() == (HUB1, s.regid)
        s.d.hub_token_ok()


@R.case
def report_on_error_only_ignored():
    """OnErrorOnly ignores reports even when the hub really rejects the device: no hub
    request, no DPS, the old identity stays."""
    with Setup("OnErrorOnly") as s:
        s.provision()
        s.sim.client.move(s.regid, HUB2)
        seq = s.sim.last_seq()
        assert s.report_action(401) == "ignored"
        assert s.report_action(404, version="api-version=2021-12-01") == "ignored"
        time.sleep(2)
        assert s.sim.requests(since=seq) == []
        assert s.d.identity() == (HUB1, s.regid)
        assert s.d.prov()["state"] == "provisioned"


@R.case
def report_rate_limited():
    """Reports start at most one hub check per window: reports while the check is in
    flight join it, later ones in the window are "rate-limited"; a status that is not a
    credential rejection is ignored."""
    with Setup("Dynamic") as s:
        s.provision()
        seq = s.sim.last_seq()
        assert s.report_action(500) == "ignored"
        assert s.report_action(429) == "ignored"
        s.sim.client.fault("hub", "stall", count=1, seconds=2)
        assert s.report_action(401) == "checking-hub"
        assert s.report_action(401) == "checking-hub"  # joins the check in flight
        assert s.d.prov()["state"] == "checking-hub"
        s.d.wait_provisioned()
        wait_for(lambda: s.hub_checks(seq), 20, what="the hub check")
        actions = [s.report_action(st) for st in (401, 403, 404, 401, 401)]
        assert actions == ["rate-limited"] * 5, actions
        time.sleep(1)
        checks = s.hub_checks(seq)
        assert len(checks) == 1 and checks[0]["status"] == 204, checks
        assert dps_runs(s.routes(seq)) == 0
        s.d.hub_token_ok()


@R.case
def report_while_busy_and_unprovisioned():
    """Not provisioned yet (first DPS run in progress): 503 with Retry-After. A report
    during a DPS run of a provisioned device: "already-provisioning", no hub request."""
    with Setup("AlwaysOnStartup") as s:
        s.sim.client.fault("register-challenge", "stall", count=1, seconds=3)
        s.d.start()
        r = s.report(401)
        assert r.status == 503 and r.headers.get("retry-after") and "not provisioned" in r.message, r
        s.d.wait_provisioned()
        s.d.stop()
        s.sim.client.fault("register-challenge", "stall", count=1, seconds=3)
        seq = s.sim.last_seq()
        s.d.start()
        s.d.wait_state("registering", timeout=2)  # after loading-state, during the stalled PUT
        assert s.report_action(401) == "already-provisioning"
        s.d.wait_provisioned()
        routes = s.routes(seq)
        assert "hub" not in routes and dps_runs(routes) == 1, routes


@R.case
def report_bad_requests():
    """Bad bodies are 400/422 with a message naming the field; nothing reaches the hub."""
    with Setup("Dynamic") as s:
        s.provision()
        seq = s.sim.last_seq()
        cases = [
            (b"", 400, "missing request body"),
            (b"{", 422, "line 1"),
            (b"[401]", 422, "JSON object"),
            ({}, 422, "missing field 'hubStatus'"),
            ({"hubStatus": "401"}, 422, "'hubStatus' must be an integer"),
            ({"hubStatus": 401.0}, 422, "'hubStatus' must be an integer"),
            ({"hubStatus": 99}, 422, "between 100 and 599"),
            ({"hubStatus": 600}, 422, "between 100 and 599"),
            ({"hubStatus": 401, "reason": 7}, 422, "'reason' must be a string"),
            ({"hubStatus": 401, "reason": "x" * 257}, 422, "'reason' is too large"),
            ({"hubStatus": 401, "reason": "a\nb"}, 422, "control characters"),
        ]
        for body, status, text in cases:
            r = s.report(body=body)
            assert r.status == status and text in r.message, (body, r)
        r = s.d.request("GET", "/identities/device/report?" + ID_API)
        assert r.status == 400 and r.headers.get("allow") == "POST", r
        r = s.d.request("POST", "/identities/device/report", {"hubStatus": 401})
        assert r.status == 400 and "api-version" in r.message, r
        r = s.d.request("POST", "/identities/device/report?api-version=2019-01-01", {"hubStatus": 401})
        assert r.status == 400, r
        # the limit itself is accepted
        assert s.report_action(200, reason="x" * 256) == "ignored"
        time.sleep(1)
        assert s.sim.requests(since=seq) == []
        assert s.d.prov()["state"] == "provisioned"


if __name__ == "__main__":
    R.main()
