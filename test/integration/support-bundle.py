#!/usr/bin/python3
"""tpmidctl support-bundle: a tar.gz with status, check (json), versions, the TPM
as the daemon reports it, units, journal note and the configuration - with the
hierarchy passwords and every other secret redacted, and no key or blob."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402

harness.need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_getcap", "tar")
from daemon import HUB1, Device, offline_config, tpmidctl_path  # noqa: E402

R = harness.Runner("support-bundle")

FILES = {"status.json", "check.json", "versions.txt", "tpm-info.json", "tpm-properties.txt", "units.txt",
         "journal.txt", "config.toml", "os.txt"}
SECRETS = ["Endorse-PW-1", "Owner-PW-2", "Dropin-Owner-3", "inline-secret-4", "Sas-Key-5"]


def bundle(env, out):
    e = dict(os.environ)
    for k in ("TPMIDD_CONFIG", "TPMIDD_CLOUD_CONNECT_TO", "NOTIFY_SOCKET"):
        e.pop(k, None)
    e.update(env)
    p = subprocess.run([tpmidctl_path(), "support-bundle", "-o", out], env=e, capture_output=True, text=True,
                       timeout=200)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "Created support bundle at " + out in p.stderr, p.stderr
    with tarfile.open(out) as t:
        names = t.getnames()
        files = {n.split("/", 1)[1]: t.extractfile(n).read().decode(errors="replace")
                 for n in names if "/" in n and t.getmember(n).isfile()}
    assert all(n.startswith("tpmidd-support-bundle") for n in names), names
    return files


@R.case
def secrets_redacted():
    """A configuration with hierarchy passwords (a table, a multi-line string, a drop-in, an
    inline table) and a key-named value: none of them is anywhere in the bundle."""
    d = harness.tmpdir("tpmid-bundle-")
    try:
        # the comments in [endpoints]: in [tpm.hierarchy_authorization] every line is redacted
        cfg = offline_config(d, top='log_level = "info"\n', tables=(
            '# symmetric_key = "Sas-Key-5"\n# a comment = stays\n'
            '[tpm]\ntcti = "swtpm:path=/nonexistent"\n'
            '[tpm.hierarchy_authorization]\nendorsement = "Endorse-PW-1"\nowner = """\nOwner-PW-2"""\n'))
        os.makedirs(os.path.join(d, "config.d"))
        with open(os.path.join(d, "config.d", "50-owner.toml"), "w") as f:
            f.write('[tpm]\nhierarchy_authorization = { owner = "Dropin-Owner-3" }\n'
                    'sas_signing_key = "inline-secret-4"\n')
        out = os.path.join(d, "b.tar.gz")
        files = bundle({"TPMIDD_CONFIG": cfg}, out)
        assert FILES <= set(files), sorted(files)
        assert "config.d-50-owner.toml" in files, sorted(files)
        raw = open(out, "rb").read()
        for name, text in files.items():
            for s in SECRETS:
                assert s not in text, (s, name, text)
        assert files["config.toml"].count('"<redacted>"') == 3, files["config.toml"]
        assert 'id_scope = "0ne00000001"' in files["config.toml"], files["config.toml"]
        assert "# a comment = stays" in files["config.toml"], files["config.toml"]
        assert 'tcti = "swtpm:path=/nonexistent"' in files["config.toml"]
        assert files["config.d-50-owner.toml"].count('"<redacted>"') == 2, files["config.d-50-owner.toml"]
        assert b"Endorse-PW-1" not in raw
        doc = json.loads(files["check.json"])
        assert doc["schemaVersion"] == 1 and doc["checks"], doc
        assert "not running" in json.loads(files["status.json"])["error"], files["status.json"]
        assert "not asked" in json.loads(files["tpm-info.json"])["error"], files["tpm-info.json"]
        assert files["versions.txt"].startswith("tpmidctl "), files["versions.txt"]
        if not os.path.exists("/run/systemd/system"):
            assert "systemd is not running" in files["journal.txt"], files["journal.txt"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


@R.case
def running_daemon():
    """With a provisioned daemon: its status and its TPM keys (through the daemon) are in the
    bundle; no state file, blob or SAS token is."""
    with Device() as s:
        s.provision()
        sim, d, info = s.sim, s.d, s.info
        out = os.path.join(d.dir, "b.tar.gz")
        files = bundle({"TPMIDD_CONFIG": d.config, "TPMIDD_CLOUD_CONNECT_TO": sim.connect_to()}, out)
        st = json.loads(files["status.json"])
        assert st["provisioning"]["state"] == "provisioned" and st["provisioning"]["hubName"] == HUB1, st
        ti = json.loads(files["tpm-info.json"])
        assert ti["registration_id"] == info["registration_id"], ti
        checks = {c["id"]: c["result"] for c in json.loads(files["check.json"])["checks"]}
        assert checks["provisioning"] == "ok", checks
        for text in files.values():
            assert "SharedAccessSignature" not in text and "authenticationKey" not in text


if __name__ == "__main__":
    R.main()
