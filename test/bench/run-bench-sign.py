#!/usr/bin/python3
"""Run bench-sign against a fresh swtpm and tpmidd.

    /usr/bin/python3 test/bench/run-bench-sign.py [BUILD_DIR] [bench-sign args...]

Starts swtpm (Unix socket TCTI) and tpmidd from BUILD_DIR (default: build),
imports an auth key through the daemon's API, then runs BUILD_DIR/test/bench/
bench-sign with the daemon's socket, the same TCTI and the daemon's pid (RSS).
"""
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

with harness.Swtpm() as tpm:
    d = Daemon(tpm)
    d.write_config(limits={"max_connections": 256, "max_connections_per_uid": 256}, log_level="info")
    with d:
        with Client(d.sock) as c:
            ek, srk = c.keys()
            blob, _ = authblob.make_auth_blob(ek, srk)
            st, body, _ = c.import_key(blob)
            assert st == 200, (st, body)
        cmd = [harness.build_path("test", "bench", "bench-sign"), "--socket", d.sock, "--tcti", tpm.tcti,
               "--pid", str(d.proc.pid)] + sys.argv[1:]
        env = dict(os.environ, TSS2_LOG="all+none")
        rc = subprocess.call(cmd, env=env)
    sys.exit(rc)
