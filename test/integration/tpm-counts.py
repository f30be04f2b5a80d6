#!/usr/bin/python3
"""TPM commands and NV writes per operation, held at the minimum.

A counting proxy between tpmidd and swtpm (test/lib/tpmproxy.py) records
every command swtpm answered, an error answer included (a lookup that finds
nothing costs the TPM's time too). Each operation asserts its exact command
sequence and NV-write count (TPM2_EvictControl, TPM2_NV_Write): a change
that adds a TPM command fails here, and must change EXPECTED and say why.

Operations: a first provisioning (the daemon's start included), a
reprovisioning with the A/B key swap, a start with a provisioned identity
(Dynamic mode: the hub check's one signature included), one signature (a
hub token), and through the aziot-tpmd socket of an offline daemon its start,
an import into the empty slot, an import replacing the key, one signature.
The modelled discrete-TPM busy time of each (DISCRETE_TPM_MODEL_MS) is
printed for HACKING.md."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap")
import authblob  # noqa: E402
import broker  # noqa: E402
from daemon import HUB1, Daemon, Sim, tpm_info  # noqa: E402
from tpmproxy import CC_EVICT_CONTROL, TpmProxy, modelled_busy_s, wait_idle  # noqa: E402

R = harness.Runner("tpm-counts")

NAMES = {0x120: "EvictControl", 0x131: "CreatePrimary", 0x137: "NV_Write", 0x147: "ActivateCredential",
         0x151: "PolicySecret", 0x155: "HMAC", 0x156: "Import", 0x157: "Load", 0x165: "FlushContext",
         0x173: "ReadPublic", 0x176: "StartAuthSession", 0x17A: "GetCapability", 0x169: "NV_ReadPublic",
         0x14E: "NV_Read"}

# The daemon's start: the leftover scan (transient objects, loaded sessions;
# the first one is also the open's probe), EK and SRK read once.
START = "GetCapability GetCapability ReadPublic ReadPublic"
# The DPS challenge key: imported and kept loaded (no check, no NV write, no flush).
CHALLENGE = "StartAuthSession PolicySecret ActivateCredential FlushContext Import Load"
# The assigned key into the staging slot, then the challenge key flushed.
FINAL = "StartAuthSession PolicySecret ActivateCredential FlushContext Import Load"
EXPECTED = {  # operation: (command sequence, NV writes)
    # the slot's state is unknown (no state file): one lookup before the
    # persist, one before retiring the other slot (ReadPublic, both answered
    # TPM_RC_HANDLE); one SAS signature for the whole registration
    "provisioning": (START + " " + CHALLENGE + " HMAC " + FINAL +
                     " ReadPublic EvictControl FlushContext FlushContext ReadPublic", 1),
    # the staging slot is known empty, the serving key known present: no lookups
    "reprovisioning": (CHALLENGE + " HMAC " + FINAL + " EvictControl FlushContext FlushContext EvictControl", 2),
    # both slots looked up (a crashed swap?), then the hub check's signature
    "start": (START + " ReadPublic ReadPublic HMAC", 0),
    "sign": ("HMAC", 0),
    "socket start": (START, 0),
    # the configured slot is looked up (empty): no check, one NV write
    "socket import": ("StartAuthSession PolicySecret ActivateCredential FlushContext Import Load ReadPublic "
                      "EvictControl FlushContext", 1),
    # a key is there (seen by the import above): check it, replace it
    "socket replace": ("StartAuthSession PolicySecret ActivateCredential FlushContext Import Load HMAC "
                       "EvictControl EvictControl FlushContext", 2),
    "socket sign": ("HMAC", 0),
}
TARGET_PROVISIONING_COMMANDS = 22  # issue 16: at most this many, the A/B key swap included


def check(what, proxy, results):
    log = list(proxy.log)
    got = " ".join(NAMES.get(cc, hex(cc)) for cc in log)
    nv = proxy.nv_writes()
    busy = modelled_busy_s(log)
    results.append((what, len(log), nv, busy))
    print("   %-15s %2d commands, %d NV writes, modelled TPM busy %.2f s" % (what, len(log), nv, busy))
    want, want_nv = EXPECTED[what]
    assert got == want, "%s: TPM commands\n   got:      %s\n   expected: %s" % (what, got, want)
    assert nv == want_nv, "%s: %d NV writes, expected %d" % (what, nv, want_nv)
    proxy.reset_counts()


def settle(proxy):
    wait_idle(proxy, CC_EVICT_CONTROL, quiet_s=1.0)


@R.case
def dps_operations():
    results = []
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        info = tpm_info(tpm)  # EK and SRK exist before the proxy counts
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
        try:
            with Daemon(proxy.tpm_for(tpm), sim) as d:
                d.wait_provisioned()
                settle(proxy)
                check("provisioning", proxy, results)
                assert results[-1][1] <= TARGET_PROVISIONING_COMMANDS
                assert d.reprovision().status == 204
                d.wait_provisioned()
                settle(proxy)
                check("reprovisioning", proxy, results)
                d.stop()
                proxy.reset_counts()
                d.start()
                d.wait_provisioned()
                settle(proxy)
                check("start", proxy, results)
                d.token()
                check("sign", proxy, results)
        finally:
            proxy.close()


@R.case
def socket_operations():
    results = []
    with harness.Swtpm() as tpm:
        tpm_info(tpm)
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
        try:
            with broker.Daemon(proxy.tpm_for(tpm)) as d, broker.Client(d.sock) as c:
                ek, srk = c.keys()
                check("socket start", proxy, results)
                blob, key = authblob.make_auth_blob(ek, srk)
                assert c.import_key(blob)[0] == 200
                check("socket import", proxy, results)
                blob, key = authblob.make_auth_blob(ek, srk)
                assert c.import_key(blob)[0] == 200
                check("socket replace", proxy, results)
                assert c.sign(b"x") == (200, broker.hmac_sha256(key, b"x"))
                check("socket sign", proxy, results)
        finally:
            proxy.close()


if __name__ == "__main__":
    R.main()
