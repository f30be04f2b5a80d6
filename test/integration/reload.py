#!/usr/bin/python3
"""The reload rule (tpmidd(8), RELOAD) against a real daemon, swtpm and the DPS
simulator. SIGHUP applies log_level, [limits], [[principal]], the provisioning
settings (a change runs DPS) and auto_reprovisioning_mode (the state machine
takes it); it refuses the socket paths, the TCTI, the hierarchy
authorization and auth_key_index (each logged "KEY needs a restart, kept
VALUE", and listed in GET /status daemon.restartNeeded); GET /status shows
the running values. Also: an identity request that arrives while the saved
identity is still being checked after READY=1 waits for the check instead of
getting 503 "loading-state"."""
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap", "setpriv")
from broker import NotifySocket  # noqa: E402
from tpmproxy import TpmProxy  # noqa: E402
from daemon import ID_API, HUB1, HUB2, Device, dps_config, wait_for  # noqa: E402

R = harness.Runner("reload")

CC_READ_PUBLIC = 0x173
AUTH_KEY_HANDLE = 0x81000100  # TPM_AUTH_KEY_BASE + the default auth_key_index
EK_HANDLE = 0x81010001
SECRET = "reload-test-endorsement-password"


class Setup(Device):
    """swtpm + simulator + an enrolled device (custom allocation: a payload may pick
    HUB2), provisioned once on HUB1. tpm_view: what the daemon's config names as
    the TPM (a proxy in front of swtpm, or swtpm itself)."""

    def __init__(self, mode="Dynamic", env=None, tpm_view=None):
        super().__init__(hubs=(HUB1, HUB2), policy="custom", tpm_view=tpm_view, mode=mode, env=env)

    def report_action(self, hub_status=401):
        r = self.d.request("POST", "/identities/device/report?" + ID_API, {"hubStatus": hub_status})
        assert r.status == 202 and r.json, r
        return r.json["action"]

    def reload(self, text):
        """Write text as the config, SIGHUP, wait for the reload's log line; returns
        this reload's part of the log."""
        before = len(self.d.log_since_start())
        with open(self.d.config, "w") as f:
            f.write(text)
        self.d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded " in self.d.log_since_start()[before:], 10, what="the reload")
        return self.d.log_since_start()[before:]

    def config_text(self, **changes):
        opts = dict(self.d.opts)
        opts.update(changes)
        return dps_config(self.d.tpm, self.sim, self.d.state_dir, self.d.run_dir, **opts)



@R.case
def applied_log_level_limits_principals_mode():
    with Setup(mode="Dynamic") as s:
        s.provision()
        assert s.d.status()["daemon"]["mode"] == "Dynamic"
        assert s.report_action(401) == "checking-hub"  # Dynamic: the daemon asks the hub itself
        s.d.wait_provisioned()
        seq = s.sim.last_seq()
        extra = ('[limits]\nmax_connections = 64\nmax_connections_per_uid = 1\n\n'
                 '[[principal]]\nuid = 0\nname = "root"\nallow = ["identity.get"]\n')
        log = s.reload(s.config_text(mode="OnErrorOnly", log_level="info", extra_toml=extra))
        assert "applied: auto_reprovisioning_mode, log_level, limits, principal" in log, log
        assert "needs a restart" not in log, log
        st = s.d.status()
        assert st["daemon"]["mode"] == "OnErrorOnly" and st["daemon"]["restartNeeded"] == [], st
        # the mode reached the state machine: OnErrorOnly ignores reports (the
        # old machine would have said "rate-limited", a hub check ran a moment ago)
        assert s.report_action(401) == "ignored"
        # [[principal]]: root may now only read the identity
        r = s.d.reprovision()
        assert r.status == 401 and "not allowed to call identity.reprovision" in r.message, r
        assert s.d.identity() == (HUB1, s.regid)
        # [limits]: a second connection of the same uid is refused while one is open
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.connect(s.d.identity_sock)
        try:
            wait_for(lambda: s.d.request("GET", "/status?" + ID_API).status == 429, 5,
                     what="429 for a second connection")
        finally:
            held.close()
        # the daemon notices the close on its own time (later under valgrind)
        wait_for(lambda: s.d.device().status == 200, 10, what="a connection once the held one closed")
        # log_level: no debug lines after the reload
        n = len(s.d.log_since_start())
        s.d.identity()
        assert "<7>" not in s.d.log_since_start()[n:], s.d.log_since_start()[n:]
        # neither a mode change nor the other keys run DPS
        assert "register-challenge" not in s.routes(seq), s.routes(seq)


@R.case
def provisioning_settings_run_dps():
    with Setup(mode="Dynamic") as s:
        s.provision()
        payload = os.path.join(s.d.dir, "payload.json")
        doc = {"iotHubHostName": HUB2}
        with open(payload, "w") as f:
            json.dump(doc, f)
        seq = s.sim.last_seq()
        log = s.reload(s.config_text(payload=payload))
        assert "applied: provisioning.payload" in log, log
        # CONFIG_CHANGED: a DPS run with the new payload, which moves the device to HUB2
        wait_for(lambda: s.d.identity() == (HUB2, s.regid), 40, step=0.2, what="the device on HUB2")
        s.d.wait_provisioned()
        assert "register-challenge" in s.routes(seq), s.routes(seq)
        assert "provisioning settings changed" in s.d.log_since_start()
        r = s.d.provisioning_info()
        assert r.status == 200 and r.json["payload"] == doc, r
        st = s.d.status()
        assert st["daemon"]["restartNeeded"] == [] and st["provisioning"]["hubName"] == HUB2, st
        s.d.hub_token_ok()


@R.case
def refused_keys_keep_running_values():
    with Setup(mode="Dynamic") as s:
        s.provision()
        st0 = s.d.status()
        tcti = s.tpm.tcti
        assert st0["tpm"]["tcti"] == tcti, st0
        assert st0["provisioning"]["idScope"] and st0["provisioning"]["globalEndpoint"] == s.sim.endpoint + "/", st0
        other = os.path.join(s.d.dir, "other")
        text = s.config_text(log_level="info",
                             extra_toml='[tpm.hierarchy_authorization]\nendorsement = "%s"\n' % SECRET)
        text = (text.replace('tcti = "%s"' % tcti, 'tcti = "swtpm:path=/nonexistent/swtpm.sock"\nauth_key_index = 0x000200')
                .replace("unix://%s/tpmd.sock" % s.d.run_dir, "unix://%s/tpmd.sock" % other)
                .replace("unix://%s/identityd.sock" % s.d.run_dir, "unix://%s/identityd.sock" % other))
        seq = s.sim.last_seq()
        log = s.reload(text)
        for key, kept in (("tpm.tcti", '"%s"' % tcti), ("tpm.auth_key_index", "0x000100"),
                          ("tpm.hierarchy_authorization.endorsement", "the running value"),
                          ("endpoints.aziot_tpmd", '"%s/tpmd.sock"' % s.d.run_dir),
                          ("endpoints.aziot_identityd", '"%s/identityd.sock"' % s.d.run_dir)):
            assert "%s needs a restart, kept %s" % (key, kept) in log, (key, log)
        assert SECRET not in s.d.read_log()
        assert "applied: log_level" in log, log  # the rest of the file was applied
        # the sockets stay where they were, the TPM and the key slot too
        assert not os.path.exists(os.path.join(other, "tpmd.sock"))
        assert not os.path.exists(os.path.join(other, "identityd.sock"))
        assert s.d.identity() == (HUB1, s.regid)
        s.d.hub_token_ok()  # signed in the running TPM with the running key slot
        st = s.d.status()
        assert st["tpm"]["state"] == "ready" and st["tpm"]["tcti"] == tcti, st
        assert sorted(st["daemon"]["restartNeeded"]) == sorted([
            "tpm.tcti", "tpm.auth_key_index", "tpm.hierarchy_authorization.endorsement",
            "endpoints.aziot_tpmd", "endpoints.aziot_identityd"]), st
        assert st["daemon"]["mode"] == "Dynamic" and st["provisioning"]["state"] == "provisioned", st
        assert "register-challenge" not in s.routes(seq)
        # the file back as it runs: nothing needs a restart any more
        log = s.reload(s.config_text(log_level="info"))
        assert "needs a restart" not in log, log
        assert s.d.status()["daemon"]["restartNeeded"] == []


class DelayProxy(TpmProxy):
    """While armed, delays the answer to TPM2_ReadPublic of handle (the auth
    key: the saved-state check's key lookup; the EK: the TPM start) by delay
    seconds, so that phase lasts long enough to be seen."""

    def __init__(self, upstream, path):
        self.delay = 0.0
        self.handle = AUTH_KEY_HANDLE
        self.delayed = 0
        super().__init__(upstream, path)

    def before_reply(self, cc, body):
        if (self.delay and cc == CC_READ_PUBLIC and len(body) >= 4
                and struct.unpack(">I", body[:4])[0] == self.handle):
            self.delayed += 1
            time.sleep(self.delay)


class ProxiedTpm:
    """What the daemon's config sees of the TPM: the proxy's socket."""

    def __init__(self, tpm, proxy):
        self.tcti = "swtpm:path=" + proxy.path


@contextlib.contextmanager
def provisioned_behind_delay_proxy():
    """A Setup (OnErrorOnly) whose TPM is behind a DelayProxy, provisioned once
    (so a saved identity exists) and stopped; yields (setup, proxy)."""
    box = {}

    def view(tpm):
        box["proxy"] = DelayProxy(tpm.sock, os.path.join(tpm.dir, "proxy.sock"))
        return ProxiedTpm(tpm, box["proxy"])

    with Setup(mode="OnErrorOnly", tpm_view=view) as s:
        proxy = box["proxy"]
        try:
            s.provision()
            s.d.stop()
            yield s, proxy
        finally:
            proxy.delay = 0.0
            proxy.close()


@R.case
def identity_waits_for_saved_state_check():
    with provisioned_behind_delay_proxy() as (s, proxy):
        n = NotifySocket(os.path.join(s.d.dir, "notify.sock"))
        s.d.extra_env["NOTIFY_SOCKET"] = n.path
        proxy.delay = 1.0
        s.d.start(wait=False)
        n.wait_for(lambda m: "READY=1" in m)
        t0 = time.time()
        results = [None] * 4

        def ask(i):
            results[i] = s.d.device() if i % 2 == 0 else s.d.token()
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        time.sleep(0.2)
        # meanwhile the status says what happens: the saved state is being checked
        assert s.d.prov()["state"] == "loading-state", s.d.prov()
        for t in threads:
            t.join(10)
        waited = time.time() - t0
        assert proxy.delayed >= 1, "the key lookup was not delayed: the test saw nothing"
        for r in results:
            assert r is not None and r.status == 200, (results, s.d.log_for_humans())
        assert results[0].json["spec"]["hubName"] == HUB1, results[0]
        assert results[1].json["hubName"] == HUB1, results[1]
        assert 0.5 <= waited < 5, waited  # held for the check, answered when it ended
        n.close()


@R.case
def identity_waits_for_first_tpm_start():
    """Before READY=1: the TPM is opened (slowly), the saved identity checked
    after; a request in between waits for both instead of 503 "waiting for the TPM"."""
    with provisioned_behind_delay_proxy() as (s, proxy):
        proxy.handle, proxy.delay = EK_HANDLE, 1.0
        s.d.start(wait=False)
        wait_for(lambda: os.path.exists(s.d.identity_sock), 10, what="the identity socket")
        t0 = time.time()
        r = s.d.device()
        assert proxy.delayed >= 1, "the TPM start was not delayed: the test saw nothing"
        assert r.status == 200 and r.json["spec"]["hubName"] == HUB1, (r, s.d.log_for_humans())
        assert time.time() - t0 < 5
        assert s.d.status()["tpm"]["state"] == "ready"


if __name__ == "__main__":
    R.main()
