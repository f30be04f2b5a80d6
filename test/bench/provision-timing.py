#!/usr/bin/python3
"""Time from daemon start to "assigned" on swtpm + the DPS simulator, and how
it divides between the TPM, the network and waiting (DPS's retry-after).

    /usr/bin/python3 test/bench/provision-timing.py [BUILD_DIR] [--runs N] [--retry-after S]

Each run: a blank swtpm (the daemon creates EK and SRK), a fresh simulator,
the device enrolled, tpmidd started with debug logging. Every log line is
stamped on arrival; the provisioning state machine logs each transition
("provisioning: A --event--> B, action X"), so the time between two
transitions is the duration of the action that the first one started. The
poll action is split with the simulator's request log: the wait before the
GET is DPS's retry-after, the rest is the signature and the request.
Not a test: it prints numbers, it does not judge them.
"""
import os
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    os.environ["TPMID_BUILD_DIR"] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import harness  # noqa: E402
from daemon import Daemon, Sim, HUB1, tpm_info  # noqa: E402

TRANSITION = re.compile(r"provisioning: (\S+) --(\S+)--> (\S+), action (\S+)")
CATEGORY = {
    "load-state": "disk+TPM",
    "dps-register": "network",
    "tpm-import-challenge": "TPM",
    "dps-auth-register": "TPM sign + network",
    "dps-poll": "wait + TPM sign + network",
    "tpm-import-final": "TPM",
    "save-state": "disk",
}


def one_run(retry_after):
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=retry_after) as sim:
        info = tpm_info(tpm)  # creates EK/SRK with tpmidctl, as the guide's first step does
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        d = Daemon(tpm, sim)
        lines = []
        t0 = time.monotonic()
        proc = subprocess.Popen(harness.daemon_argv("-c", d.config), env=d.environ(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

        def reader():
            for line in proc.stdout:
                lines.append((time.monotonic() - t0, line.rstrip()))
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        deadline = time.time() + 60
        while time.time() < deadline and not any("provisioned:" in l for _, l in lines):
            time.sleep(0.01)
        proc.terminate()
        proc.wait(20)
        th.join(5)
        done = [t for t, l in lines if "provisioned:" in l]
        if not done:
            raise SystemExit("not provisioned:\n" + "\n".join(l for _, l in lines))
        ready = next(t for t, l in lines if "TPM ready" in l)
        trans = [(t, m.group(4)) for t, l in lines for m in [TRANSITION.search(l)] if m]
        phases = []
        for (t, action), (t_next, _) in zip(trans, trans[1:]):
            phases.append((action, t_next - t))
        log = sim.client.log()
        ops = [e for e in log if e["route"] in ("register-auth", "operation")]
        wait = 0.0
        if len(ops) >= 2:
            wait = ops[1]["ts"] - ops[0]["ts"]
        return ready, done[0], phases, wait


def main():
    runs, retry_after = 5, 1
    args = sys.argv[1:]
    if "--runs" in args:
        runs = int(args[args.index("--runs") + 1])
    if "--retry-after" in args:
        retry_after = int(args[args.index("--retry-after") + 1])
    totals = []
    for i in range(runs):
        ready, done, phases, wait = one_run(retry_after)
        by = {}
        for action, dt in phases:
            by[action] = by.get(action, 0.0) + dt
        tpm = by.get("tpm-import-challenge", 0) + by.get("tpm-import-final", 0)
        net = by.get("dps-register", 0) + by.get("dps-auth-register", 0)
        poll = by.get("dps-poll", 0)
        print("run %d: start->TPM ready %.3f s, start->assigned %.3f s; TPM imports %.3f s, "
              "PUTs %.3f s, poll %.3f s (of which waiting retry-after ~%.3f s)"
              % (i + 1, ready, done, tpm, net, poll, min(wait, poll)), flush=True)
        for action, dt in phases:
            print("    %-22s %-26s %8.1f ms" % (action, CATEGORY.get(action, ""), dt * 1000))
        totals.append((done, tpm, net, poll, wait))
    med = sorted(totals)[len(totals) // 2]
    print("RESULT median start->assigned %.3f s (TPM %.3f s, network %.3f s, poll incl. %.1f s retry-after %.3f s)"
          % (med[0], med[1], med[2], retry_after, med[3]))


main()
