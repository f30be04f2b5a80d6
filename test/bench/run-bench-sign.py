#!/usr/bin/python3
"""Run bench-sign against a fresh swtpm and tpmidd.

    /usr/bin/python3 test/bench/run-bench-sign.py [BUILD_DIR] [--tcti swtpm|device] [bench-sign args...]

Starts swtpm and tpmidd from BUILD_DIR (default: build), imports an auth key
through the daemon's API, then runs BUILD_DIR/test/bench/bench-sign with the
daemon's socket, the daemon's TCTI and the daemon's pid (RSS). bench-sign
prints RESULT lines; this script only sets the stage.

--tcti swtpm (default): the daemon and the in-process baselines talk to
swtpm's Unix socket ("swtpm:path=...": tpmidd's TCTI with its kept
connection; the direct ESAPI client gets tss2's own swtpm TCTI for the same
string).
--tcti device: swtpm behind a character-device stand-in
(harness.TpmDevice(swtpm), "device:/path"), so every path goes through
libtss2-tcti-device, the TCTI tpmidd uses on /dev/tpmrm0. Skipped, with a
line saying so, when test/lib/harness.py has no TpmDevice.
"""
import contextlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    os.environ["TPMID_BUILD_DIR"] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import harness  # noqa: E402
import authblob  # noqa: E402
from broker import Client, Daemon  # noqa: E402


def take_tcti_mode(argv):
    """Remove --tcti MODE / --tcti=MODE from argv; return MODE (default swtpm)."""
    mode = "swtpm"
    rest = []
    it = iter(argv)
    for a in it:
        if a == "--tcti":
            mode = next(it, "")
        elif a.startswith("--tcti="):
            mode = a.split("=", 1)[1]
        else:
            rest.append(a)
    if mode not in ("swtpm", "device"):
        sys.exit("run-bench-sign: --tcti must be swtpm or device, not %r" % mode)
    return mode, rest


def main():
    mode, bench_args = take_tcti_mode(sys.argv[1:])
    if mode == "device" and not hasattr(harness, "TpmDevice"):
        print("RESULT device run skipped: test/lib/harness.py has no TpmDevice (the device stand-in) in this tree")
        return 0
    with harness.Swtpm() as tpm:
        dev = harness.TpmDevice(tpm) if mode == "device" else contextlib.nullcontext(None)
        with dev as device:
            tcti = device.tcti if device is not None else tpm.tcti
            d = Daemon(tpm, tcti=tcti)
            d.write_config(limits={"max_connections": 256, "max_connections_per_uid": 256}, log_level="info")
            with d:
                with Client(d.sock) as c:
                    ek, srk = c.keys()
                    blob, _ = authblob.make_auth_blob(ek, srk)
                    st, body, _ = c.import_key(blob)
                    assert st == 200, (st, body)
                cmd = [harness.build_path("test", "bench", "bench-sign"), "--socket", d.sock, "--tcti", tcti,
                       "--pid", str(d.proc.pid)] + bench_args
                env = dict(os.environ, TSS2_LOG="all+none")
                print("RESULT mode=%s" % mode, flush=True)
                return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
