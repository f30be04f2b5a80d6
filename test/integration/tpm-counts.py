#!/usr/bin/python3
"""TPM commands and NV writes per operation, held at the minimum.

A counting proxy between tpmidd and swtpm (test/lib/tpmproxy.py) records
every command swtpm ran. Each case runs one operation and asserts the exact
command count and the exact NV-write count (TPM2_EvictControl, TPM2_NV_Write):
a change that adds a TPM command fails here and must say why in EXPECTED.

Operations: a daemon start with a provisioned identity (start), one
signature through the aziot-tpmd socket (sign), one import through the
socket (import), a first provisioning including the start (provisioning), a
reprovisioning with the A/B key swap (reprovisioning)."""
import base64
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap")
from daemon import HUB1, Daemon, Sim, tpm_info  # noqa: E402
from tpmproxy import CC_EVICT_CONTROL, TpmProxy, wait_idle  # noqa: E402

R = harness.Runner("tpm-counts")

CC_NAMES = {0x120: "EvictControl", 0x131: "CreatePrimary", 0x137: "NV_Write", 0x147: "ActivateCredential",
            0x151: "PolicySecret", 0x155: "HMAC", 0x156: "Import", 0x157: "Load", 0x165: "FlushContext",
            0x173: "ReadPublic", 0x176: "StartAuthSession", 0x17A: "GetCapability", 0x169: "NV_ReadPublic",
            0x14E: "NV_Read"}

# (commands, NV writes) per operation; the simulator's assignment carries its
# own key, as DPS's does.
EXPECTED = {
    "start": (None, 0),
    "sign": (1, 0),
    "provisioning": (None, None),
    "reprovisioning": (None, None),
}


def names(log):
    return " ".join(CC_NAMES.get(cc, hex(cc)) for cc in log)


def check(what, proxy):
    cmds, nv = proxy.total(), proxy.nv_writes()
    print("   %-15s %2d commands, %d NV writes: %s" % (what, cmds, nv, names(proxy.log)))
    want_cmds, want_nv = EXPECTED[what]
    if want_cmds is not None:
        assert cmds == want_cmds, "%s: %d TPM commands, expected %d" % (what, cmds, want_cmds)
    if want_nv is not None:
        assert nv == want_nv, "%s: %d NV writes, expected %d" % (what, nv, want_nv)


def settle(proxy):
    wait_idle(proxy, CC_EVICT_CONTROL, quiet_s=1.0)


@R.case
def per_operation():
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        info = tpm_info(tpm)  # EK and SRK exist before the proxy counts
        sim.client.enroll(info["registration_id"], info["ek"], hubs=[HUB1])
        proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
        try:
            with Daemon(proxy.tpm_for(tpm), sim) as d:
                d.wait_provisioned()
                settle(proxy)
                check("provisioning", proxy)
                proxy.reset_counts()
                assert d.reprovision().status == 204
                d.wait_provisioned()
                settle(proxy)
                check("reprovisioning", proxy)
                d.stop()
                proxy.reset_counts()
                d.start()
                d.wait_provisioned()
                settle(proxy)
                check("start", proxy)
                proxy.reset_counts()
                d.token()
                check("sign", proxy)
        finally:
            proxy.close()


if __name__ == "__main__":
    R.main()
