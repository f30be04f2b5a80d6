#!/usr/bin/python3
"""A TPM that asks for a command again (TPM_RC_RETRY, _YIELDED, _TESTING):
tpmidd sends it again (every command, on the TPM worker thread), and a TPM
that keeps asking gets a clear 503.

swtpm never answers with these codes, so a proxy between tpmidd and swtpm
answers chosen commands with them in swtpm's place (the command does not
reach swtpm then, exactly as if the TPM had not run it)."""
import os
import re
import struct
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402
from broker import Client, Daemon, hmac_sha256, message  # noqa: E402
from tpmproxy import TpmProxy  # noqa: E402

harness.need("swtpm", "swtpm_setup", "tpm2_getcap")
import authblob  # noqa: E402

R = harness.Runner("tpm-retry")

RC_RETRY, RC_YIELDED, RC_TESTING = 0x922, 0x908, 0x90A
CC_HMAC, CC_IMPORT, CC_LOAD, CC_ACTIVATE, CC_EVICT, CC_SEQ_UPDATE = 0x155, 0x156, 0x157, 0x147, 0x120, 0x15C


class Proxy(TpmProxy):
    """rules[cc] = list of response codes to answer the next commands with
    that code (consumed in order) instead of forwarding them."""

    def __init__(self, upstream, path):
        self.rules = {}
        self.injected = []
        self.lock = threading.Lock()
        super().__init__(upstream, path)

    def inject(self, cc, codes):
        with self.lock:
            self.rules.setdefault(cc, []).extend(codes)

    def answer(self, cc, body):
        with self.lock:
            codes = self.rules.get(cc)
            rc = codes.pop(0) if codes else None
            if rc is None:
                return None
            self.injected.append((cc, rc))
        return struct.pack(">HII", 0x8001, 10, rc)  # TPM_ST_NO_SESSIONS, a header-only response


def setup(tpm):
    proxy = Proxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
    return proxy, Daemon(tpm, tcti="swtpm:path=" + proxy.path)


def provision(c):
    """Import an auth key (no faults) and sign once, so the key's handle is
    known and a short signature is one TPM2_HMAC. Returns (ek, srk, key)."""
    ek, srk = c.keys()
    blob, key = authblob.make_auth_blob(ek, srk)
    assert c.import_key(blob)[0] == 200
    assert c.sign(b"warm") == (200, hmac_sha256(key, b"warm"))
    return ek, srk, key


@R.case
def import_survives_retries():
    """Every step of an import is answered with a retry code once first."""
    with harness.Swtpm() as tpm:
        proxy, daemon = setup(tpm)
        with daemon as d, Client(d.sock) as c:
            ek, srk = c.keys()
            blob, key = authblob.make_auth_blob(ek, srk)
            for cc, rc in ((CC_ACTIVATE, RC_RETRY), (CC_IMPORT, RC_YIELDED), (CC_LOAD, RC_TESTING),
                           (CC_EVICT, RC_RETRY)):
                proxy.inject(cc, [rc])
            st, body, _ = c.import_key(blob)
            assert st == 200, (st, body)
            assert len(proxy.injected) == 4, proxy.injected
            assert c.sign(b"after import") == (200, hmac_sha256(key, b"after import"))
        proxy.close()


@R.case
def signatures_survive_retries():
    """Short signatures (one TPM2_HMAC) and long ones (an HMAC sequence) are
    sent again until the TPM runs them."""
    with harness.Swtpm() as tpm:
        proxy, daemon = setup(tpm)
        with daemon as d, Client(d.sock) as c:
            _, _, key = provision(c)
            for i in range(20):
                proxy.inject(CC_HMAC, [(RC_RETRY, RC_YIELDED, RC_TESTING)[i % 3]] * (1 + i % 4))
                data = b"short %d" % i
                assert c.sign(data) == (200, hmac_sha256(key, data)), i
            long_data = os.urandom(3000)
            proxy.inject(CC_SEQ_UPDATE, [RC_RETRY, RC_YIELDED])
            assert c.sign(long_data) == (200, hmac_sha256(key, long_data))
            n_hmac = sum(1 for cc, _ in proxy.injected if cc == CC_HMAC)
            assert n_hmac == sum(1 + i % 4 for i in range(20)), proxy.injected
            assert (CC_SEQ_UPDATE, RC_YIELDED) in proxy.injected
            d.stop()
            log = d.read_log()
            m = re.search(r"TPM jobs done: (\d+)", log)
            assert m and int(m.group(1)) >= 24, log  # START, import, "warm", the 20 short ones, the long one
        proxy.close()


@R.case
def tpm_that_keeps_asking_gets_503():
    """After 5 tries the daemon stops and says the TPM is busy (transient:
    503 with Retry-After); the next request works."""
    with harness.Swtpm() as tpm:
        proxy, daemon = setup(tpm)
        with daemon as d, Client(d.sock) as c:
            ek, srk, key = provision(c)
            proxy.inject(CC_HMAC, [RC_RETRY] * 5)
            st, body = c.sign(b"busy")
            assert st == 503 and "the TPM is busy" in message(body) and "TPM2_HMAC" in message(body), (st, body)
            assert "0x922" in message(body), body
            assert len(proxy.injected) == 5, proxy.injected
            assert c.sign(b"fine") == (200, hmac_sha256(key, b"fine"))
            proxy.inject(CC_IMPORT, [RC_YIELDED] * 5)
            blob2, key2 = authblob.make_auth_blob(ek, srk)
            st, body, headers = c.import_key(blob2)
            assert st == 503 and "TPM2_Import" in message(body), (st, body)
            assert "retry-after" in {k.lower() for k in headers}, headers
            # the old key still signs: a failed import loses nothing
            assert c.sign(b"old key") == (200, hmac_sha256(key, b"old key"))
        proxy.close()


if __name__ == "__main__":
    R.main()
