#!/usr/bin/python3
"""A TPM that dies in the middle of a command comes back without a restart
of tpmidd (issue 14): the connection is closed, the TPM reported unavailable
(GET /status, 503 with the reason and Retry-After) while it is gone, and
opened again with backoff once it is back; the DPS run whose import the TPM
died in retries and completes. No watchdog (no NOTIFY_SOCKET): the daemon
recovers by itself.

A proxy in front of swtpm (test/lib/tpmproxy.py) forwards the chosen
command, throws its response away and cuts the connection, as a killed
swtpm or a TPM that stopped answering would; then swtpm is stopped and
started again on the same state."""
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_getcap", "tpm2_shutdown", "swtpm_ioctl")
import authblob  # noqa: E402
import broker  # noqa: E402
from daemon import HUB1, Daemon, Sim, tpm_info, wait_for  # noqa: E402
from tpmproxy import TpmProxy  # noqa: E402

R = harness.Runner("tpm-recovery")

CC_IMPORT, CC_HMAC = 0x156, 0x155
DOWN_SEC = 4          # s the TPM stays away (several start attempts fail meanwhile)
RECOVER_SEC = 45      # s: a bound on the way back (backoff 1, 2, 4, ... s; MANAGER_TPM_RETRY_MAX_MS is 30 s)


def tpm_status(d):
    return d.status()["tpm"]


@R.case
def tpm_dies_during_import():
    with harness.Swtpm() as tpm, Sim() as sim:
        info = tpm_info(tpm)
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
        proxy.cut_after(CC_IMPORT, 1)  # the DPS run's TPM2_Import of the challenge key
        d = Daemon(tpm, sim, tcti=harness.our_tcti("swtpm:path=" + proxy.path))
        with d:
            pid = d.proc.pid
            wait_for(lambda: proxy.cut.is_set(), 60, what="the import that loses its TPM")
            tpm.stop()

            # While it is gone: unavailable, with the reason, everywhere.
            st = wait_for(lambda: (lambda s: s if s["state"] == "unavailable" else None)(tpm_status(d)), 15,
                          what="tpm.state unavailable")
            reason = st.get("lastError") or ""
            assert "tcti" in reason.lower(), st  # the failed reopen: the TCTI could not reach the TPM
            with broker.Client(d.tpmd_sock) as c:
                stc, body, headers = c.request("POST", "/sign_with_auth_key?" + broker.API, {"data": "eA=="})
            assert stc == 503, (stc, body)
            assert "retry-after" in {k.lower() for k in headers}, headers
            assert "TPM not available" in broker.message(body) and reason in broker.message(body), (reason, body)
            time.sleep(DOWN_SEC)
            assert tpm_status(d)["state"] == "unavailable", tpm_status(d)
            log = d.log_since_start()
            assert "TPM unavailable" in log or "TPM stopped answering" in log or "TPM not usable" in log, \
                d.log_for_humans()

            # Back on the same state: ready again, without a restart.
            tpm.start()
            proxy.restore()
            t0 = time.time()
            wait_for(lambda: tpm_status(d)["state"] == "ready", RECOVER_SEC, step=0.2, what="tpm.state ready")
            print("ready again %.1f s after swtpm came back" % (time.time() - t0))
            p = d.wait_provisioned(timeout=120)
            assert p["state"] == "provisioned", p
            with broker.Client(d.tpmd_sock) as c:
                stc, body = c.sign(b"after recovery")
            assert stc == 200, (stc, body)
            r = d.device()
            assert r.status == 200, r
            assert d.proc.pid == pid and d.proc.poll() is None, "tpmidd restarted"
            log = d.log_since_start()
            assert "0x80007" not in log.split("TPM ready")[-1], d.log_for_humans()
            assert "TPM available again" in log, d.log_for_humans()
            print("\n".join(l for l in log.splitlines() if "TPM" in l and "provisioning:" not in l))
            assert tpm.transient_handles() == [] and tpm.loaded_sessions() == [], \
                (tpm.transient_handles(), tpm.loaded_sessions())
        proxy.close()


@R.case
def tpm_dies_during_signature():
    """The broker alone (no DPS), under a NOTIFY_SOCKET without
    WATCHDOG_USEC (no watchdog): the signature the TPM died in answers 503,
    STATUS= says "tpm: unavailable (reason)" while it is gone and "ready"
    again after, and the key imported before signs again."""
    with harness.Swtpm() as tpm:
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
        n = broker.NotifySocket(os.path.join(tpm.dir, "notify.sock"))
        d = broker.Daemon(tpm, tcti="swtpm:path=" + proxy.path, env={"NOTIFY_SOCKET": n.path})
        with d, broker.Client(d.sock) as c:
            ek, srk = c.keys()
            blob, key = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob)[0] == 200
            assert c.sign(b"warm") == (200, broker.hmac_sha256(key, b"warm"))
            n.wait_for(lambda m: "STATUS=ready" in m)
            pid = d.proc.pid

            proxy.cut_after(CC_HMAC, 1)
            st, body = c.sign(b"dies")
            assert st == 503 and "the connection broke" in broker.message(body), (st, body)
            tpm.stop()
            m = n.wait_for(lambda m: "STATUS=tpm: unavailable (" in m)
            assert "reconnecting" in m, m
            st, body = c.sign(b"while gone")
            assert st == 503 and "TPM not available" in broker.message(body), (st, body)

            tpm.start()
            proxy.restore()
            wait_for(lambda: c.sign(b"back")[0] == 200, RECOVER_SEC, step=0.2, what="a signature after recovery")
            assert c.sign(b"back") == (200, broker.hmac_sha256(key, b"back"))
            n.wait_for(lambda m: "STATUS=ready" in m)
            assert not any("WATCHDOG=1" in m for m in n.msgs), n.msgs  # no watchdog asked for, none sent
            assert d.proc.pid == pid and d.proc.poll() is None, "tpmidd restarted"
        n.close()
        proxy.close()


if __name__ == "__main__":
    R.main()
