#!/usr/bin/python3
"""A whole provisioning on a latency-modelled discrete TPM.

The proxy of test/lib/tpmproxy.py delays every command by
DISCRETE_TPM_MODEL_MS (HACKING.md "The modelled TPM": per command code, from
published measurements of discrete TPMs), one command at a time as one chip
runs them. The daemon starts on a TPM without EK and SRK (both are created:
two RSA-2048 CreatePrimary, the slowest thing a TPM does), provisions
through the DPS simulator, and serves a hub token, with the timeouts of
production: it must be READY within the unit's TimeoutStartSec, prove
progress (WATCHDOG=1) more often than the unit's WatchdogSec throughout,
and answer a client within the client's own timeout.

LATENCY_SCALE scales the whole model (1.0: the model as published; the
benchmark test/bench/tpm-latency-bench.py always runs it at 1.0)."""
import os
import re
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap", "tpm2_evictcontrol")
from broker import NotifySocket  # noqa: E402
from daemon import HUB1, Daemon, Sim, tpm_info  # noqa: E402
from tpmproxy import CC_CREATE_PRIMARY, DISCRETE_TPM_MODEL_MS, TpmProxy  # noqa: E402

R = harness.Runner("tpm-latency")

LATENCY_SCALE = 1.0       # the model as published: a whole run takes ~20 s, inside the CI budget
CLIENT_TIMEOUT_S = 30     # test/lib/daemon.py's default request timeout, as a client would have
UNIT = os.path.join(_HERE, "..", "..", "units", "tpmidd.service.in")


def unit_seconds(key):
    """A time setting of the shipped unit, in seconds (e.g. WatchdogSec=30s)."""
    with open(UNIT) as f:
        m = re.search(r"^%s=(\d+)s$" % key, f.read(), re.M)
    assert m, "%s not found in %s" % (key, UNIT)
    return int(m.group(1))


@R.case
def provisioning_on_a_discrete_tpm():
    watchdog_s, start_s = unit_seconds("WatchdogSec"), unit_seconds("TimeoutStartSec")
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        info = tpm_info(tpm)  # to enroll the EK; then both keys go, and the daemon makes them again
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        for h in ("0x81000001", "0x81010001"):
            tpm.tool("tpm2_evictcontrol", "-C", "o", "-c", h)
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"), model=DISCRETE_TPM_MODEL_MS,
                         scale=LATENCY_SCALE)
        d = Daemon(proxy.tpm_for(tpm), sim, env={"WATCHDOG_USEC": str(watchdog_s * 1000000)})
        n = NotifySocket(os.path.join(d.dir, "notify.sock"))
        d.extra_env["NOTIFY_SOCKET"] = n.path
        try:
            t0 = time.monotonic()
            d.start(wait=False)
            n.wait_for(lambda m: "READY=1" in m, timeout=start_s)
            ready = time.monotonic() - t0
            pings, last = [], t0
            deadline = t0 + start_s
            while time.monotonic() < deadline:
                for m in n.poll(0.2):
                    if m == "WATCHDOG=1":
                        pings.append(time.monotonic())
                n.msgs.clear()
                d.check_alive()
                if d.prov().get("state") == "provisioned":
                    break
            p = d.wait_provisioned(timeout=1)
            provisioned = time.monotonic() - t0
            assert p["hubName"] == HUB1, p
            for t in pings:
                assert t - last < watchdog_s, "no WATCHDOG=1 for %.1f s (WatchdogSec=%d)" % (t - last, watchdog_s)
                last = t
            # and the next one comes in time (the first is due at WatchdogSec / 2)
            left = watchdog_s - (time.monotonic() - last)
            n.msgs.clear()
            n.wait_for(lambda m: m == "WATCHDOG=1", timeout=max(left, 0.1))
            pings.append(time.monotonic())
            tc = time.monotonic()
            r = d.device()
            assert r.status == 200, r
            r = d.request("POST", "/identities/device/token?api-version=2020-09-01", {"lifetime_sec": 600},
                          timeout=CLIENT_TIMEOUT_S)
            assert r.status == 200, r
            d.hub_token_ok()
            client = time.monotonic() - tc
            d.check_alive()
            assert proxy.count(CC_CREATE_PRIMARY) == 2, proxy.counts
            print("   modelled TPM (scale %.2f): READY after %.1f s, provisioned after %.1f s, TPM busy %.1f s "
                  "in %d commands; a client's identity + hub token %.2f s; %d watchdog pings" % (
                      LATENCY_SCALE, ready, provisioned, proxy.busy_s, proxy.total(), client, len(pings)))
        except BaseException:
            sys.stderr.write("--- tpmidd log ---\n%s\n" % d.log_for_humans())
            raise
        finally:
            d.stop()
            d.cleanup()
            n.close()
            proxy.close()


if __name__ == "__main__":
    R.main()
