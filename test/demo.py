#!/usr/bin/python3
"""The tpmidd demo: a fresh software TPM is provisioned through the local DPS
simulator onto a simulated IoT Hub, following the steps of Microsoft's guide
"Create and provision IoT Edge devices at scale on Linux with a TPM", and then
does what aziot-edged does first: it asks for the $edgeAgent module identity
(its keys come from aziot-keyd; here the test stand-in test/keyd) and sends
that module's telemetry to the simulated hub with a keyd-signed module SAS.

Run by test/demo.sh (which installs packages and builds first); it uses the
build in $TPMID_BUILD_DIR (default: build/). Exits non-zero if any step fails.
Everything it starts is stopped and every temp file removed at the end."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_ioctl", "tpm2_getcap", "setpriv")
from daemon import HUB1, ID_SCOPE, Daemon, Sim, hub_get, hub_post, tamper, tpmidctl_path  # noqa: E402
from keyd import KeydSim, module_sas  # noqa: E402

MODULE = "$edgeAgent"
MODULE_API = "api-version=2020-09-01&type=aziot"
TELEMETRY_API = "api-version=2020-03-13"

T0 = time.time()

# Colour only for a terminal, and never with NO_COLOR set (https://no-color.org):
# a pipe or a log file gets plain text.
COLOUR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def sgr(code, text):
    return "\033[%sm%s\033[0m" % (code, text) if COLOUR else text


def step(n, text):
    print("\n" + sgr("1", "[%d] %s" % (n, text)), flush=True)


def show(text, indent="    "):
    for line in text.rstrip("\n").splitlines():
        print(indent + line)
    sys.stdout.flush()


def fail(msg):
    print("\n" + sgr("31", "DEMO FAILED: %s" % msg), flush=True)
    raise SystemExit(1)


class LogFollower(threading.Thread):
    """Prints the daemon's new log lines as they appear."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.stop_flag = threading.Event()

    def run(self):
        pos = 0
        while not self.stop_flag.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                chunk = b""
            if chunk:
                end = chunk.rfind(b"\n") + 1
                pos += end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    print("    " + sgr("2", "tpmidd | %s" % line), flush=True)
            time.sleep(0.1)

    def stop(self):
        self.stop_flag.set()
        self.join(2)


def main():
    for tool in ("tpmidd", "tpmidctl"):
        if not os.path.exists(harness.program(tool)):
            fail("%s is not built (expected in %s/daemon)" % (tool, harness.BUILD))
    work = harness.tmpdir("tpmid-demo-")
    tpm = sim = d = follower = keyd = None
    try:
        step(1, "A device with a TPM (a fresh software TPM, swtpm)")
        tpm = harness.Swtpm(workdir=os.path.join(work, "swtpm")).start()
        print("    swtpm listens on %s" % tpm.sock)

        step(2, "Read its registration id and endorsement key (the guide's script)")
        print("    $ tpmidctl tpm info --tcti %s" % tpm.tcti)
        p = subprocess.run([tpmidctl_path(), "tpm", "info", "--tcti", tpm.tcti], capture_output=True, text=True,
                           timeout=60)
        if p.returncode != 0:
            fail("tpmidctl tpm info: %s" % p.stderr)
        show(p.stdout, "    | ")
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        regid = lines[lines.index("Registration Id:") + 1]
        ek_b64 = lines[lines.index("Endorsement Key:") + 1]

        step(3, "The cloud: a local Device Provisioning Service + IoT Hub simulator")
        sim = Sim(workdir=os.path.join(work, "cloud")).start()
        print("    DPS endpoint %s, ID scope %s, hubs answer as *.azure-devices.net" % (sim.endpoint, ID_SCOPE))

        step(4, "Enrol the device (what an operator does in the Azure portal)")
        print("    Portal: DPS > Manage enrollments > Add individual enrollment")
        print("      Attestation mechanism: TPM")
        print("      Endorsement key:       %s...%s" % (ek_b64[:24], ek_b64[-12:]))
        print("      Registration ID:       %s" % regid)
        print("      IoT Edge device:       True")
        print("      IoT Hub:               %s" % HUB1)
        sim.client.enroll(regid, ek_b64, hubs=[HUB1], iot_edge=True)
        print("    enrolled; status: %s" % sim.client.status(regid)["registrationState"]["status"])

        step(5, "Write /etc/aziot/config.toml (here: a temp file) as the guide says")
        # aziot-keyd keeps the module keys, as on an IoT Edge device (here the stand-in test/keyd)
        keyd = KeydSim(workdir=os.path.join(work, "keyd")).start()
        d = Daemon(tpm, sim, workdir=os.path.join(work, "tpmidd"), log_level="info",
                   extra_toml='aziot_keyd = "%s"' % keyd.url)
        show(open(d.config).read(), "    | ")
        print("    $ tpmidctl config check -c %s" % d.config)
        p = subprocess.run([tpmidctl_path(), "config", "check", "-c", d.config], capture_output=True, text=True,
                           timeout=30)
        show(p.stdout + p.stderr, "    | ")
        if p.returncode != 0:
            fail("the configuration does not check out")

        step(6, "Start tpmidd and watch it provision the device")
        follower = LogFollower(d.log)
        follower.start()
        d.start()
        p = d.wait_provisioned(timeout=40)
        time.sleep(0.3)
        follower.stop()
        follower = None

        step(7, "Service status")
        env = dict(os.environ, TPMIDD_CONFIG=d.config)
        print("    $ tpmidctl system status")
        r = subprocess.run([tpmidctl_path(), "system", "status"], capture_output=True, text=True, env=env, timeout=30)
        if r.returncode == 0 and "provision" in r.stdout.lower():
            show(r.stdout, "    | ")
        else:
            print("    (tpmidctl system status is not available here; the daemon's /status instead)")
            show(json.dumps(d.status(), indent=2), "    | ")

        step(8, "The device identity, from the identity socket (POST /identities/device)")
        hub, dev = d.identity()
        print("    hub %s, device id %s" % (hub, dev))

        step(9, "The enrollment in DPS (the guide's last check)")
        st = sim.client.status(regid)["registrationState"]
        print("    status %s, assigned hub %s, device id %s" % (st["status"], st.get("assignedHub"),
                                                                 st.get("deviceId")))
        if st["status"] != "assigned" or (st["assignedHub"], st["deviceId"]) != (hub, dev):
            fail("DPS and the device disagree: %s vs %s/%s" % (st, hub, dev))

        step(10, "Connect to IoT Hub with a SAS token signed inside the TPM")
        r = d.token(600)
        if r.status != 200:
            fail("no token: %r" % r)
        tok = r.json["sasToken"]
        print("    token: %s...&se=%s" % (tok[:60], tok.rsplit("se=", 1)[-1][:10]))
        code, _ = hub_get(sim, hub, dev, tok, sub="")
        print("    GET https://%s/devices/%s -> HTTP %d" % (hub, dev, code))
        if code != 200:
            fail("the hub rejected the device's token")
        code, _ = hub_get(sim, hub, dev, tamper(tok), sub="")
        print("    the same token with one signature character changed -> HTTP %d" % code)
        if code != 401:
            fail("the hub accepted a tampered token")

        step(11, "IoT Edge: the module identity aziot-edged asks for, and that module's telemetry")
        print("    $ PUT /identities/modules/%s?%s   (aziot-edged's watchdog)" % (MODULE, MODULE_API))
        r = d.request("PUT", "/identities/modules/%s?%s" % (MODULE.replace("$", "%24"), MODULE_API),
                      {"type": "aziot", "moduleId": MODULE})
        if r.status != 200:
            fail("no module identity for %s: %r" % (MODULE, r))
        spec = r.json["spec"]
        print("    module %s of device %s, genId %s, auth %s" % (spec["moduleId"], spec["deviceId"], spec.get("genId"),
                                                               spec["auth"]["type"]))
        print("    keyHandle (aziot-keyd's, for \"%s:%s:primary\"): %s..." % (MODULE, spec.get("genId"),
                                                                           spec["auth"]["keyHandle"][:40]))
        try:
            mtok = module_sas(keyd, spec["auth"]["keyHandle"], hub, dev, MODULE)
        except AssertionError as e:
            fail("keyd refused to sign with the module's keyHandle: %s" % e)
        path = "/devices/%s/modules/%s/messages/events?%s" % (dev, MODULE.replace("$", "%24"), TELEMETRY_API)
        code = hub_post(sim, hub, path, {"temperature": 21.5}, mtok)
        print("    POST https://%s/devices/%s/modules/%s/messages/events (SAS signed by keyd) -> HTTP %d"
              % (hub, dev, MODULE, code))
        if code != 204:
            fail("the hub rejected the module's telemetry")
        code = hub_post(sim, hub, path, {"temperature": 21.5}, tamper(mtok))
        print("    the same token with one signature character changed -> HTTP %d" % code)
        if code != 401:
            fail("the hub accepted a tampered module token")

        step(12, "Clean up")
        d.stop()
        print("    tpmidd stopped (exit 0)")
        d = None
    except AssertionError as e:
        if follower:
            follower.stop()
        fail(str(e)[-3000:])
    finally:
        if follower:
            follower.stop()
        if d is not None:
            d.kill()
        if keyd is not None:
            keyd.stop()
        if sim is not None:
            sim.stop()
        if tpm is not None:
            tpm.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("    simulator, keyd stand-in and swtpm stopped, %s removed" % work)
    print("\n" + sgr("32", "Demo complete in %.1f s: the TPM-backed device is provisioned and talks to its hub, "
                            "and so does its module %s." % (time.time() - T0, MODULE)))


if __name__ == "__main__":
    main()
