#!/usr/bin/python3
"""tpmidd on a latency-modelled discrete TPM (test/lib/tpmproxy.py,
DISCRETE_TPM_MODEL_MS at scale 1.0): provisioning time, and the sign latency
of the aziot-tpmd socket idle and during a reprovisioning, against the
model's own TPM2_HMAC time.

    /usr/bin/python3 test/bench/tpm-latency-bench.py [BUILD_DIR] [--runs N] [--idle-signs N]

Each run: swtpm without EK and SRK, the simulator (one "assigning" poll,
Retry-After 1 s), tpmidd started on the modelled TPM:
  - provisioning: daemon start to "provisioned" (two RSA-2048 CreatePrimary
    included), and the modelled TPM busy time and command count of it;
  - idle: --idle-signs signatures one after another (32 bytes each);
  - reprovisioning: one client signs in a loop while a reprovisioning runs
    (from the request until "provisioned" again): every signature that
    started in that window, and those that met the reprovisioning's TPM
    work (their time overlaps a command other than TPM2_HMAC in the proxy's
    timeline). A signature that arrives during the import's
    multi-command work waits for at most one background command (the TPM
    worker runs imports one command per step); the longest modelled
    background command is printed next to it.
Not a test: it prints numbers, it does not judge them.
"""
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    os.environ["TPMID_BUILD_DIR"] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import harness  # noqa: E402
from broker import Client  # noqa: E402
from daemon import HUB1, Daemon, Sim, tpm_info  # noqa: E402
from tpmproxy import (CC_ACTIVATE_CREDENTIAL, CC_HMAC, CC_IMPORT, DISCRETE_TPM_MODEL_MS,  # noqa: E402
                      TpmProxy)



def arg(name, default):
    if name in sys.argv:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def sign_ms(c, data, spans=None):
    t = time.monotonic()
    st, _ = c.sign(data)
    assert st == 200, st
    t1 = time.monotonic()
    if spans is not None:
        spans.append((t, t1))
    return (t1 - t) * 1000.0


def behind_background(spans, timeline):
    """Indexes of the signatures whose time overlaps a background (not
    TPM2_HMAC) command of the TPM: those that met the reprovisioning's work."""
    bg = [(a, b) for a, b, cc in timeline if cc != CC_HMAC]
    return [i for i, (s, e) in enumerate(spans) if any(a < e and b > s for a, b in bg)]


def one_run(idle_signs):
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        for h in ("0x81000001", "0x81010001"):
            tpm.tool("tpm2_evictcontrol", "-C", "o", "-c", h)
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"), model=DISCRETE_TPM_MODEL_MS)
        d = Daemon(proxy.tpm_for(tpm), sim, log_level="info")
        try:
            t0 = time.monotonic()
            d.start(wait=False)
            d.wait_ready(timeout=120)
            d.wait_provisioned(timeout=120)
            prov_s = time.monotonic() - t0
            prov_busy, prov_cmds = proxy.busy_s, proxy.total()
            time.sleep(1.5)  # the first run's retirement of the other slot
            with Client(d.tpmd_sock) as c:
                idle = [sign_ms(c, b"%032d" % i) for i in range(idle_signs)]
                during, spans, stop = [], [], threading.Event()

                def signer():
                    with Client(d.tpmd_sock) as c2:
                        i = 0
                        while not stop.is_set():
                            during.append(sign_ms(c2, b"%032d" % i, spans))
                            i += 1
                th = threading.Thread(target=signer)
                proxy.reset_counts()
                th.start()
                assert d.reprovision().status == 204
                time.sleep(0.5)
                d.wait_provisioned(timeout=120)
                time.sleep(1.5)  # the retirement of the old key
                stop.set()
                th.join()
                rep_busy = proxy.busy_s - proxy.count(CC_HMAC) * DISCRETE_TPM_MODEL_MS[CC_HMAC] / 1000.0
                met = [during[i] for i in behind_background(spans, proxy.timeline)]
            return prov_s, prov_busy, prov_cmds, idle, during, met, rep_busy
        finally:
            d.stop()
            d.cleanup()
            proxy.close()


def main():
    runs, idle_signs = arg("--runs", 3), arg("--idle-signs", 200)
    hmac = DISCRETE_TPM_MODEL_MS[CC_HMAC]
    longest = max(DISCRETE_TPM_MODEL_MS[CC_ACTIVATE_CREDENTIAL], DISCRETE_TPM_MODEL_MS[CC_IMPORT])
    print("model: TPM2_HMAC %d ms; longest background command (ActivateCredential/Import) %d ms" % (hmac, longest))
    print("run  provisioning  TPM busy  cmds | idle sign p50 / p99 ms | during reprov.: all n p50 / p99 / max ms"
          " | met its TPM work n p50 / p99 / max ms | reprov. TPM busy")
    for r in range(runs):
        prov_s, busy, cmds, idle, during, met, rep_busy = one_run(idle_signs)
        print("%3d  %9.1f s  %6.2f s  %4d |   %6.1f / %6.1f       | %4d %6.1f / %6.1f / %6.1f"
              "          | %3d %6.1f / %6.1f / %6.1f        | %.2f s" % (
                  r + 1, prov_s, busy, cmds, statistics.median(idle), pct(idle, 99), len(during),
                  statistics.median(during), pct(during, 99), max(during), len(met),
                  statistics.median(met) if met else 0, pct(met, 99) if met else 0, max(met) if met else 0,
                  rep_busy))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
