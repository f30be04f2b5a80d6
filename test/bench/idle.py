#!/usr/bin/python3
"""What a provisioned tpmidd costs while nobody asks it anything: CPU time,
wake-ups and resident memory over a quiet window.

    /usr/bin/python3 test/bench/idle.py [BUILD_DIR] [--runs N] [--seconds S]

Each run: a blank swtpm, a fresh simulator, the device enrolled, tpmidd
started and provisioned (Dynamic mode, the default), then left alone for
--seconds (default 60) after a 5 s settle. Measured from /proc, over every
thread of the daemon: utime + stime (CPU), voluntary + involuntary context
switches (each is one wake-up of a thread: a timer, a signal, a socket),
and at the end of the window its memory from /proc/PID/smaps_rollup: Rss
(what VmRSS shows: every mapped page, shared library pages included, of
which the kernel maps up to 64 KiB around each fault of a file in the page
cache), Pss (shared pages divided among the processes that map them: what
the daemon costs the machine) and Private (its own pages: heap, stacks,
data). The HTTPS helper is not counted: it
exits after 30 s without a request (tpmidd-https(8)) and the window starts
after that. Not a test: it prints numbers, it does not judge them.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    os.environ["TPMID_BUILD_DIR"] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import harness  # noqa: E402
from daemon import Daemon, Sim, HUB1, tpm_info  # noqa: E402

SETTLE_S = 5          # s after provisioning before the window opens
HELPER_IDLE_S = 30    # s the HTTPS helper stays after its last request (tpmidd-https(8))
TICKS = os.sysconf("SC_CLK_TCK")


def sample(pid):
    """(cpu seconds, context switches) summed over the process's threads."""
    cpu = 0.0
    switches = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    return cpu, switches


def memory_mib(pid):
    """(Rss, Pss, Private) in MiB from smaps_rollup."""
    kb = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            p = line.split()
            if len(p) >= 2 and p[0].endswith(":") and p[1].isdigit():
                kb[p[0][:-1]] = int(p[1])
    private = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return kb.get("Rss", 0) / 1024.0, kb.get("Pss", 0) / 1024.0, private / 1024.0


def one_run(seconds):
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        with Daemon(tpm, sim) as d:
            d.wait_provisioned()
            pid = d.proc.pid
            time.sleep(max(SETTLE_S, HELPER_IDLE_S + 2))  # the helper gone, the start's work done
            c0, s0 = sample(pid)
            t0 = time.monotonic()
            time.sleep(seconds)
            c1, s1 = sample(pid)
            dt = time.monotonic() - t0
            return (c1 - c0) * 1000.0, (s1 - s0) / dt, memory_mib(pid), dt


def main():
    args = sys.argv[1:]

    def arg(name, default):
        if name in args:
            return int(args[args.index(name) + 1])
        return default
    runs, seconds = arg("--runs", 3), arg("--seconds", 60)
    print("run  window  CPU ms  wake-ups/s  Rss MiB  Pss MiB  Private MiB")
    for i in range(runs):
        cpu_ms, wakeups, (rss, pss, private), dt = one_run(seconds)
        print("%3d  %5.1f s  %6.1f  %10.3f  %7.2f  %7.2f  %11.2f" % (i + 1, dt, cpu_ms, wakeups, rss, pss, private))


if __name__ == "__main__":
    main()
