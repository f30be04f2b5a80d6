#!/usr/bin/python3
"""A fleet against a throttled DPS: N real tpmidd, each with its own swtpm and
state dir, started at the same moment against one simulator whose quota
(test/dps-sim, PUT /quota) refuses registrations and polls over it with 429 +
Retry-After, as a site whose power comes back would start them.

    /usr/bin/python3 test/bench/fleet.py [BUILD_DIR] [-n N] [--runs R]
        [--registrations Q] [--polls P] [--window S] [--timeout S]

Per run it prints: the time until every device is provisioned against the
ideal (the quota's own bound, see ideal_seconds(): 2 N registrations, each
device's challenge PUT and signed PUT, at Q per window of S seconds, and the
polls at P per window, plus the retry-after waits of one device), DPS requests per device against the minimum (2 PUTs + the polls the
simulator answers "assigning" + the final poll), the 429s, the requests that
arrived before the Retry-After the simulator gave that device ran out (must
be 0), the devices that gave up (provisioning state "failed": must be 0) and
the total RSS of the daemons (tpmidd; their tpmidd-https helpers apart).
Not a test: test/integration/fleet.py asserts the invariants on a small fleet
with the same Fleet class.
"""
import argparse
import concurrent.futures
import math
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    os.environ["TPMID_BUILD_DIR"] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import harness  # noqa: E402
from daemon import Daemon, Sim, HUB1, tpm_info, unix_request, ID_API  # noqa: E402

PREPARE_WORKERS = 4       # swtpms set up (EK + SRK creation) at once before the start
STOP_WORKERS = 8          # daemons / swtpms stopped at once after a run
STATUS_POLL_S = 0.5       # how often each daemon's /status is read while waiting (s)
ASSIGNING_POLLS = 1       # "assigning" answers the simulator gives before the result
POLL_RETRY_AFTER = 1      # the simulator's retry-after on those answers (s)


def rss_kib(pid):
    """VmRSS of pid in KiB (0 when it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid):
    """User + system CPU seconds pid has used (0 when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Fleet:
    """N devices (swtpm + enrollment + Daemon) against one simulator with a quota.
    quota: the simulator's PUT /quota body."""

    def __init__(self, n, quota, log=print):
        self.n = n
        self.quota = quota
        self.log = log
        self.tpms = []
        self.daemons = []
        self.regids = []
        self.sim = None

    def _prepare_one(self, i):
        tpm = harness.Swtpm().start()
        try:
            info = tpm_info(tpm)
        except BaseException:
            tpm.cleanup()
            raise
        return tpm, info

    def prepare(self):
        """Start the swtpms, create their EKs, enroll them; no daemon runs yet."""
        self.sim = Sim(polls=ASSIGNING_POLLS, retry_after=POLL_RETRY_AFTER).start()
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(PREPARE_WORKERS) as ex:
            for tpm, info in ex.map(self._prepare_one, range(self.n)):
                self.tpms.append(tpm)
                self.regids.append(info["registration_id"])
                self.sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
                self.daemons.append(Daemon(tpm, self.sim, log_level="info"))
        self.log("prepared %d swtpms and enrollments in %.1f s" % (self.n, time.monotonic() - t0))
        self.sim.client.call("PUT", "/quota", self.quota)

    def _state(self, d):
        if d.proc is not None and d.proc.poll() is not None:
            return "exited %d" % d.proc.returncode
        try:
            r = unix_request(d.identity_sock, "GET", "/status?" + ID_API, timeout=10)
        except OSError:
            return "starting"
        if r.status != 200 or not isinstance(r.json, dict):
            return "status %d" % r.status
        return r.json["provisioning"]["state"]

    def run(self, timeout):
        """Start every daemon at once; wait until each is provisioned, failed
        (gave up), exited, or the timeout. Returns the result dict."""
        t0, wall0 = time.monotonic(), time.time()
        for d in self.daemons:
            d.start(wait=False)
        started = time.monotonic() - t0
        done = {}              # index -> seconds after t0 until "provisioned"
        final = {}             # index -> state it ended in, when not provisioned
        rss_peak = helpers_peak = sim_fds_peak = 0
        while len(done) + len(final) < self.n and time.monotonic() - t0 < timeout:
            for i, d in enumerate(self.daemons):
                if i in done or i in final:
                    continue
                st = self._state(d)
                if st == "provisioned":
                    done[i] = time.monotonic() - t0
                elif st == "failed" or st.startswith("exited"):
                    final[i] = st
            rss_peak = max(rss_peak, sum(rss_kib(d.proc.pid) for d in self.daemons if d.proc))
            helpers_peak = max(helpers_peak, sum(rss_kib(c) for d in self.daemons if d.proc
                                                 for c in children(d.proc.pid)))
            sim_fds_peak = max(sim_fds_peak, fd_count(self.sim.server.proc.pid))
            time.sleep(STATUS_POLL_S)
        for i, d in enumerate(self.daemons):
            if i not in done and i not in final:
                final[i] = "timed out in %s" % self._state(d)
        rss = sum(rss_kib(d.proc.pid) for d in self.daemons if d.proc)
        helpers = sum(rss_kib(c) for d in self.daemons if d.proc for c in children(d.proc.pid))
        swtpms = sum(rss_kib(t.pid) for t in self.tpms if t.pid)
        sim_rss = rss_kib(self.sim.server.proc.pid)
        daemons_cpu = sum(cpu_s(d.proc.pid) for d in self.daemons if d.proc)
        sim_cpu = cpu_s(self.sim.server.proc.pid)
        self.trace = {}
        for e in self.sim.client.log():
            if e["regid"]:
                self.trace.setdefault(e["regid"], []).append("%.1f %s %d" % (e["ts"] - wall0, e["route"], e["status"]))
        q = self.sim.client.call("GET", "/quota")
        c = q["counters"]
        per_dev = [c["devices"].get(r, {}).get("requests", 0) for r in self.regids]
        return {"n": self.n, "start_s": started, "done": done, "final": final,
                "all_s": max(done.values()) if len(done) == self.n else None,
                "requests": c["requests"], "throttled": c["throttled"], "early": c["early"],
                "per_device": per_dev, "devices": c["devices"], "regids": list(self.regids),
                "gave_up": sum(1 for v in final.values() if v == "failed"),
                "rss_kib": rss, "rss_peak_kib": rss_peak, "helpers_rss_kib": helpers, "helpers_peak_kib": helpers_peak,
                "swtpm_rss_kib": swtpms, "sim_rss_kib": sim_rss, "daemons_cpu_s": daemons_cpu,
                "sim_cpu_s": sim_cpu, "sim_fds_peak": sim_fds_peak}

    def stop(self):
        """Stop daemons (SIGTERM, exit 0 expected), then swtpms, then the simulator.
        Returns the daemons' stop failures as text (empty when none)."""
        errors = []

        def stop_daemon(d):
            try:
                d.stop(timeout=60)
            except AssertionError as e:
                errors.append(str(e)[:2000])
        with concurrent.futures.ThreadPoolExecutor(STOP_WORKERS) as ex:
            list(ex.map(stop_daemon, self.daemons))
            list(ex.map(lambda d: d.cleanup(), self.daemons))
            list(ex.map(lambda t: t.cleanup(), self.tpms))
        if self.sim:
            self.sim.cleanup()
        return "\n".join(errors)

    def daemon_log(self, i):
        return self.daemons[i].read_log()


def minimum_requests():
    """DPS requests one device needs without throttling: the challenge PUT, the
    signed PUT, the polls answered "assigning" and the final one."""
    return 2 + ASSIGNING_POLLS + 1


def ideal_seconds(n, quota):
    """The quota's own bound on the time for n devices. The simulator's windows
    are fixed, so the last of R requests of a kind with limit Q per window W
    can at best be admitted when window ceil(R/Q) - 1 opens; then that device
    still waits what DPS makes every device wait, the retry-after of each
    "assigning" answer before its next poll (its own start, TPM and network
    time are left out: they are what the ratio shows). R: 2 n registrations
    (each device's challenge PUT and signed PUT), and (ASSIGNING_POLLS + 1) n
    polls; the slower kind bounds. The issue's "N/quota" is this with one
    registration per device and a rate instead of windows."""
    t1 = (ASSIGNING_POLLS + 1) * POLL_RETRY_AFTER
    w = quota.get("windowSeconds", 60)
    units = quota.get("units", 1)
    windows = 0
    for key, demand in (("registrationsPerUnit", 2 * n), ("pollsPerUnit", (ASSIGNING_POLLS + 1) * n)):
        if quota.get(key):
            windows = max(windows, math.ceil(demand / (quota[key] * units)) - 1)
    return windows * w + t1


def summary(res, quota):
    per = sorted(res["per_device"])
    ideal = ideal_seconds(res["n"], quota)
    t = res["all_s"]
    return ("N %d: all provisioned %s (ideal %.1f s%s); DPS requests/device median %d max %d (min %d), "
            "total %d; 429s %d; early %d; gave up %d; not provisioned %d; RSS tpmidd total %.1f MiB "
            "(%.2f MiB each; peak %.1f MiB); tpmidd-https helpers %.1f MiB (peak %.1f MiB; they exit when "
            "idle), swtpms %.1f MiB, simulator %.1f MiB; CPU: tpmidd %.1f s in all, simulator %.1f s; "
            "simulator fds peak %d"
            % (res["n"], "%.1f s" % t if t is not None else "NO", ideal,
               ", ratio %.2f" % (t / ideal) if t and ideal else "", per[len(per) // 2], per[-1],
               minimum_requests(), res["requests"], res["throttled"], res["early"], res["gave_up"],
               len(res["final"]), res["rss_kib"] / 1024, res["rss_kib"] / 1024 / max(1, res["n"]),
               res["rss_peak_kib"] / 1024, res["helpers_rss_kib"] / 1024, res["helpers_peak_kib"] / 1024,
               res["swtpm_rss_kib"] / 1024,
               res["sim_rss_kib"] / 1024, res["daemons_cpu_s"], res["sim_cpu_s"], res["sim_fds_peak"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=100, help="devices (default %(default)s)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--registrations", type=int, default=40, help="PUT /register per window (default %(default)s)")
    p.add_argument("--polls", type=int, default=40, help="polls per window, scope-wide (default %(default)s)")
    p.add_argument("--device-polls", type=int, default=5, help="polls per device and 10 s (DPS: 5)")
    p.add_argument("--window", type=int, default=10, help="quota window in s (default %(default)s)")
    p.add_argument("--timeout", type=float, default=600, help="give the fleet this long (s)")
    p.add_argument("--trace", action="store_true", help="print each device's DPS requests (s, route, status)")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print("limits: RLIMIT_NOFILE %d/%d, %d CPUs, MemAvailable %s" % (
        soft, hard, os.cpu_count(),
        next((l.split(":")[1].strip() for l in open("/proc/meminfo") if l.startswith("MemAvailable")), "?")))
    quota = {"windowSeconds": a.window, "registrationsPerUnit": a.registrations, "pollsPerUnit": a.polls,
             "pollsPerDevice": a.device_polls, "deviceWindowSeconds": 10}
    print("quota: %s (DPS documents 1000 registrations/min/unit and 5 polls/10 s/device)" % quota)
    rc = 0
    for run in range(a.runs):
        f = Fleet(a.n, quota)
        try:
            f.prepare()
            load = os.getloadavg()[0]
            res = f.run(a.timeout)
        finally:
            errs = f.stop()
        print("run %d (load %.1f before): %s" % (run + 1, load, summary(res, quota)), flush=True)
        if a.trace:
            for r, t in sorted(f.trace.items()):
                print("  %s: %s" % (r[:12], ", ".join(t)))
        if res["final"]:
            print("  not provisioned: %s" % sorted(set(res["final"].values())))
            rc = 1
        if errs:
            print("  stop failures:\n" + errs)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
