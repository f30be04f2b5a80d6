#!/usr/bin/python3
"""The hub key swap is power-cut safe (A/B slots, lib/provision.h): at every
instant the state file names a key that exists in the TPM, and a restart
finishes or undoes a swap a crash interrupted.

A proxy between tpmidd and swtpm (test/lib/tpmproxy.py) counts the NV writes
(TPM2_EvictControl) of a first provisioning and of a reprovisioning, and
cuts the line just before or right after each of a reprovisioning's NV
writes; the daemon is then killed (kill -9: the power cut), and the state
file must name a slot whose key is there. The restarted daemon must serve an
identity the hub accepts, with one hub key left in the TPM."""
import os
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap")
from daemon import HUB1, Daemon, Sim, read_state_file, tpm_info  # noqa: E402
from tpmproxy import CC_EVICT_CONTROL, TpmProxy, wait_idle  # noqa: E402

R = harness.Runner("key-swap")

SLOT_HANDLES = {"a": "0x81000100", "b": "0x81000101"}  # TPM_AUTH_KEY_BASE + auth_key_index (+1)
# TPM2_EvictControl per run, with the simulator's assignment carrying its own key
# (as DPS's does): persist the assigned key in the empty staging slot (the
# challenge key is only loaded, never persisted); a reprovisioning also retires
# the old key.
FIRST_PROVISIONING_NV_WRITES = 1
REPROVISIONING_NV_WRITES = 2
CUT_TIMEOUT = 60  # seconds for a reprovisioning to reach the cut


def named_key(tpm, d, why):
    """The state file names a slot and its key is in the TPM. Returns (slot, handles)."""
    st = read_state_file(d.state_file)
    slot = st.get("keySlot", "a")  # version 1 files: slot a
    handles = tpm.persistent_handles()
    assert SLOT_HANDLES[slot] in handles, "%s: the state file names slot %s (%s), which holds no key: %s" % (
        why, slot, SLOT_HANDLES[slot], handles)
    return slot, handles


def hub_keys(handles):
    return sorted(h for h in handles if h in SLOT_HANDLES.values())


def setup(tpm, sim):
    info = tpm_info(tpm)  # EK and SRK exist before the proxy counts
    regid = info["registration_id"]
    sim.client.enroll(regid, info["ek"], hubs=[HUB1])
    proxy = TpmProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
    return regid, proxy


def reprovision_async(d):
    """POST reprovision without waiting for its answer (the line may be cut)."""
    def run():
        try:
            d.reprovision(timeout=CUT_TIMEOUT)
        except Exception:  # noqa: BLE001 - the daemon may die under it
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@R.case
def nv_writes_per_run():
    """EvictControl count per first provisioning and per reprovisioning, and
    afterwards exactly one hub key, in the slot the state file names."""
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        regid, proxy = setup(tpm, sim)
        with Daemon(proxy.tpm_for(tpm), sim) as d:
            d.wait_provisioned()
            n = wait_idle(proxy, CC_EVICT_CONTROL)
            assert n == FIRST_PROVISIONING_NV_WRITES, "first provisioning: %d NV writes, expected %d" % (
                n, FIRST_PROVISIONING_NV_WRITES)
            slot, handles = named_key(tpm, d, "after the first provisioning")
            assert hub_keys(handles) == [SLOT_HANDLES[slot]], handles
            d.hub_token_ok()
            print("   first provisioning: %d NV writes, key in slot %s" % (n, slot))
            for run in range(2):
                proxy.reset_counts()
                assert d.reprovision().status == 204
                d.wait_provisioned()
                n = wait_idle(proxy, CC_EVICT_CONTROL)
                assert n == REPROVISIONING_NV_WRITES, "reprovisioning: %d NV writes, expected %d" % (
                    n, REPROVISIONING_NV_WRITES)
                new_slot, handles = named_key(tpm, d, "after reprovisioning %d" % run)
                assert new_slot != slot, "the new key did not go to the other slot"
                assert hub_keys(handles) == [SLOT_HANDLES[new_slot]], handles
                d.hub_token_ok()
                print("   reprovisioning %d: %d NV writes, key moved from slot %s to %s" % (run, n, slot, new_slot))
                slot = new_slot
        proxy.close()


def power_cuts(one_key):
    """Cut just before and right after each NV write of a reprovisioning, then
    kill -9 and restart: the state file always names a key that exists, and
    the device serves an identity the hub accepts; with one_key, exactly one
    hub key is left, in the slot the state file names."""
    with harness.Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        regid, proxy = setup(tpm, sim)
        d = Daemon(proxy.tpm_for(tpm), sim)
        try:
            d.start()
            d.wait_provisioned()
            wait_idle(proxy, CC_EVICT_CONTROL)
            for k in range(1, REPROVISIONING_NV_WRITES + 1):
                for ran in (False, True):
                    why = "cut %s NV write %d of %d" % ("after" if ran else "before", k, REPROVISIONING_NV_WRITES)
                    before, _ = named_key(tpm, d, why + " (before the run)")
                    proxy.cut_after(CC_EVICT_CONTROL, k, ran=ran)
                    reprovision_async(d)
                    assert proxy.wait_cut(CUT_TIMEOUT), why + ": the run never got there"
                    d.kill()  # the power cut
                    slot, handles = named_key(tpm, d, why)
                    proxy.restore()
                    d.start()
                    p = d.wait_provisioned(timeout=60)
                    assert p["hubName"] == HUB1, (why, p)
                    d.hub_token_ok()
                    wait_idle(proxy, CC_EVICT_CONTROL)
                    after, handles = named_key(tpm, d, why + " (after the restart)")
                    if one_key:
                        assert hub_keys(handles) == [SLOT_HANDLES[after]], (why, handles)
                    print("   %-28s slot %s -> state names %s at the cut -> %s after the restart" % (
                        why, before, slot, after))
        except BaseException:
            sys.stderr.write("--- tpmidd log (this run) ---\n%s\n" % d.log_for_humans())
            raise
        finally:
            d.kill()
            d.cleanup()
            proxy.close()


@R.case
def power_cut_keeps_the_named_key():
    """The regression test of the key swap: never a state file naming a key
    that is not there (the in-place swap evicted the old key, then persisted
    the new one at its handle)."""
    power_cuts(one_key=False)


@R.case
def power_cut_leaves_one_key():
    """After the restart, recovery and the next swap leave one hub key."""
    power_cuts(one_key=True)


if __name__ == "__main__":
    R.main()
