#!/usr/bin/python3
"""Owned TPMs (non-empty owner/endorsement hierarchy passwords) and the TPM errors a user meets.

- tpmidctl tpm info|import|sign take the passwords from the configuration file
  ([tpm.hierarchy_authorization]) or from --owner-auth-file/--endorsement-auth-file,
  create the same EK as the docs' enrolment script run with the passwords, and
  refuse a wrong/missing password with one sentence naming the hierarchy and
  the configuration key, exit 4, nothing created, the DA counter not fed more
  than once.
- tpmidd with [tpm.hierarchy_authorization] provisions against the DPS
  simulator (the import's PolicySecret(endorsement) uses the password) and the
  hub accepts its token.
- permission denied on the TPM device, and dictionary-attack lockout.
"""
import base64
import hashlib
import json
import os
import re
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# test/integration/packaging.py would shadow the "packaging" package that
# tpm2_pytss imports: keep this directory off the module path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402
from harness import Runner, Swtpm, need, program, run, tmpdir  # noqa: E402

need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_createek", "tpm2_createprimary", "tpm2_changeauth",
     "tpm2_evictcontrol", "tpm2_readpublic", "tpm2_getcap", "tpm2_dictionarylockout", "tpm2_create", "setpriv")

import authblob  # noqa: E402  (python3-tpm2-pytss)
from daemon import HUB1, Daemon, Sim  # noqa: E402

CTL = program("tpmidctl")
EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG, EXIT_NOTPM = 1, 2, 3, 4
SEED_FMT = "Gathering the registration information...\n\nRegistration Id:\n%s\n\nEndorsement Key:\n%s\n"
OWNER_PW = "owner-s3cret"
ENDORSEMENT_PW = "endorse ment#2"  # a space and a '#': quoting in TOML and shell matters

R = Runner("owned-tpm")


def env_no_daemon(d, extra=None):
    """Environment in which `tpm info` without --tcti finds no daemon: TPMIDD_CONFIG names a
    config whose tpmd socket does not exist (and never the machine's /etc/aziot)."""
    e = dict(os.environ)
    e["TPMIDD_CONFIG"] = os.path.join(d, "no-daemon.toml")
    with open(e["TPMIDD_CONFIG"], "w") as f:
        f.write('[endpoints]\naziot_tpmd = "unix://%s/absent.sock"\n' % d)
    e.update(extra or {})
    return e


def ctl(*args, env=None, input=None, prefix=()):
    # Another user (prefix: setpriv) runs a copy: it may not enter the checkout.
    ctl_path = harness.program_for_user("tpmidctl") if prefix else CTL
    return subprocess.run(list(prefix) + [ctl_path, "tpm"] + list(args), input=input, capture_output=True,
                          timeout=60, env=env)


def ok(p):
    if p.returncode != 0:
        raise AssertionError("tpmidctl: rc %d\nstdout: %r\nstderr: %r" % (p.returncode, p.stdout, p.stderr))
    return p.stdout.decode()


def one_sentence(p):
    text = p.stderr.decode().strip()
    assert text, "no error message"
    assert "\n" not in text, "more than one line on stderr: %r" % text
    assert p.stdout == b"", p.stdout
    return text


def write(d, name, text, mode=0o600):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)
    return path


def toml_str(s):
    return json.dumps(s)  # a JSON string is a valid TOML basic string for these values


def config(d, tpm, owner=None, endorsement=None, name="config.toml", index=None):
    lines = ["[provisioning]", 'source = "none"', "", "[tpm]", "tcti = %s" % toml_str(tpm.tcti)]
    if index is not None:
        lines.append("auth_key_index = %s" % index)
    if owner is not None or endorsement is not None:
        lines += ["", "[tpm.hierarchy_authorization]"]
        if owner is not None:
            lines.append("owner = %s" % toml_str(owner))
        if endorsement is not None:
            lines.append("endorsement = %s" % toml_str(endorsement))
    lines += ["", "[endpoints]", 'aziot_tpmd = "unix://%s/absent-tpmd.sock"' % d]
    return write(d, name, "\n".join(lines) + "\n")


def take_ownership(tpm, owner=OWNER_PW, endorsement=ENDORSEMENT_PW):
    if owner:
        tpm.tool("tpm2_changeauth", "-c", "o", owner)
    if endorsement:
        tpm.tool("tpm2_changeauth", "-c", "e", endorsement)


def lockout_counter(tpm):
    out = tpm.tool("tpm2_getcap", "properties-variable").stdout
    m = re.search(r"TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+|\d+)", out)
    assert m, out
    return int(m.group(1), 0)


def in_lockout(tpm):
    out = tpm.tool("tpm2_getcap", "properties-variable").stdout
    m = re.search(r"inLockout:\s*(\d)", out)
    assert m, out
    return m.group(1) == "1"


def assert_clean(tpm):
    assert tpm.transient_handles() == [], "transient objects left: %s" % tpm.transient_handles()
    assert tpm.loaded_sessions() == [], "sessions left: %s" % tpm.loaded_sessions()


def readpublic(tpm, handle, d):
    path = os.path.join(d, "%x.pub" % handle)
    tpm.tool("tpm2_readpublic", "-c", hex(handle), "-o", path)
    return open(path, "rb").read()


def seed_script(tpm, d, owner, endorsement):
    """The docs' enrolment script with the hierarchy passwords added (tpm2-tools 5.4 options:
    createek -P endorsement -w owner, createprimary -P owner, evictcontrol -P owner)."""
    script = """set -e
cd "$1"
tpm2_readpublic -Q -c 0x81010001 -o ek.pub 2> /dev/null || {
  tpm2_createek -c 0x81010001 -G rsa -u ek.pub -P "$EPW" -w "$OPW"
  tpm2_createprimary -Q -C o -P "$OPW" -c srk.ctx > /dev/null
  tpm2_evictcontrol -C o -P "$OPW" -c srk.ctx 0x81000001 > /dev/null
  tpm2_flushcontext -t > /dev/null
}
tpm2_readpublic -c 0x81010001 -o ek.pub > /dev/null
printf "Gathering the registration information...\\n\\nRegistration Id:\\n%s\\n\\nEndorsement Key:\\n%s\\n" \\
  $(sha256sum -b ek.pub | cut -d' ' -f1 | sed -e 's/[^[:alnum:]]//g') $(base64 -w0 ek.pub)
"""
    return run(["sh", "-c", script, "seed", d], env=tpm.env({"OPW": owner, "EPW": endorsement})).stdout


def evict(tpm, handle, owner=OWNER_PW):
    tpm.tool("tpm2_evictcontrol", "-C", "o", "-P", owner, "-c", handle)


# ---------------------------------------------------------------- tpm info on an owned TPM

@R.case
def info_from_config_equals_seed_script():
    """Passwords from -c FILE (no --tcti: the daemon is asked first, then [tpm] tcti is used);
    the EK tpmidctl creates is the one the seed script creates with -P/-w."""
    d = tmpdir()
    with Swtpm() as tpm:
        take_ownership(tpm)
        expected = seed_script(tpm, d, OWNER_PW, ENDORSEMENT_PW)
        ek = readpublic(tpm, 0x81010001, d)
        assert expected == SEED_FMT % (hashlib.sha256(ek).hexdigest(), base64.b64encode(ek).decode())
        # Remove what the script made, so tpmidctl has to create EK and SRK itself.
        evict(tpm, "0x81010001")
        evict(tpm, "0x81000001")
        assert tpm.persistent_handles() == []
        cfg = config(d, tpm, owner=OWNER_PW, endorsement=ENDORSEMENT_PW)
        out = ok(ctl("info", "-c", cfg, env=env_no_daemon(d)))
        assert out == expected, "tpmidctl:\n%s\nscript:\n%s" % (out, expected)
        assert sorted(tpm.persistent_handles()) == ["0x81000001", "0x81010001"]
        assert readpublic(tpm, 0x81010001, d) == ek
        srk = readpublic(tpm, 0x81000001, d)
        assert srk[:12] == bytes.fromhex("011a0001000b000304720000"), srk[:12].hex()  # our noDA SRK
        assert_clean(tpm)
        # The script, run now, prints the same; so does $TPMIDD_CONFIG instead of -c, and --config.
        assert seed_script(tpm, d, OWNER_PW, ENDORSEMENT_PW) == out
        e = env_no_daemon(d)
        e["TPMIDD_CONFIG"] = cfg
        assert ok(ctl("info", env=e)) == out
        assert ok(ctl("info", "--config", cfg, env=env_no_daemon(d))) == out
        assert lockout_counter(tpm) == 0
        assert_clean(tpm)


@R.case
def info_from_auth_files():
    """--owner-auth-file/--endorsement-auth-file (one trailing newline stripped) with --tcti;
    they override the configuration's passwords."""
    d = tmpdir()
    with Swtpm() as tpm, Swtpm() as ref:
        for t in (tpm, ref):
            take_ownership(t)
        expected = seed_script(ref, d, OWNER_PW, ENDORSEMENT_PW)
        ek_ref = readpublic(ref, 0x81010001, d)
        of = write(d, "owner.pw", OWNER_PW + "\n")
        ef = write(d, "endorsement.pw", ENDORSEMENT_PW)  # no newline at all
        args = ["info", "--tcti", tpm.tcti, "--owner-auth-file", of, "--endorsement-auth-file", ef]
        out = ok(ctl(*args, env=env_no_daemon(d)))
        ek = readpublic(tpm, 0x81010001, d)
        # Two swtpms have different endorsement seeds: compare each with its own EK, and the
        # format with the script's.
        assert out == SEED_FMT % (hashlib.sha256(ek).hexdigest(), base64.b64encode(ek).decode()), out
        assert ek[:40] == ek_ref[:40] and len(ek) == len(ek_ref) == 316
        assert expected.startswith("Gathering") and seed_script(tpm, d, OWNER_PW, ENDORSEMENT_PW) == out
        assert sorted(tpm.persistent_handles()) == ["0x81000001", "0x81010001"]
        # Files win over a configuration with wrong passwords.
        evict(tpm, "0x81000001")
        bad = config(d, tpm, owner="wrong", endorsement="wrong", name="bad.toml")
        assert ok(ctl(*(args + ["-c", bad]), env=env_no_daemon(d))) == out
        assert "0x81000001" in tpm.persistent_handles()
        # Only one trailing newline is stripped: "pw\n\n" is the password "pw\n".
        evict(tpm, "0x81000001")
        two = write(d, "two.pw", OWNER_PW + "\n\n")
        p = ctl("info", "--tcti", tpm.tcti, "--owner-auth-file", two, "--endorsement-auth-file", ef,
                env=env_no_daemon(d))
        assert p.returncode == EXIT_NOTPM and "owner hierarchy password" in one_sentence(p), p
        # Password files that cannot be used.
        for name, content, words in (("missing.pw", None, "No such file"),
                                     ("nul.pw", b"ab\x00cd", "NUL byte"),
                                     ("huge.pw", b"x" * 5000, "larger than a password")):
            path = os.path.join(d, name) if content is None else write(d, name, content)
            p = ctl("info", "--tcti", tpm.tcti, "--owner-auth-file", path, env=env_no_daemon(d))
            assert p.returncode == EXIT_FAILURE, (name, p)
            msg = one_sentence(p)
            assert words in msg and "owner hierarchy password file" in msg, msg
        toolong = write(d, "long.pw", "y" * 65)
        p = ctl("info", "--tcti", tpm.tcti, "--owner-auth-file", toolong, env=env_no_daemon(d))
        assert p.returncode == EXIT_NOTPM, p
        msg = one_sentence(p)
        assert "longer than 64 bytes" in msg and "owner" in msg and "[tpm.hierarchy_authorization]" in msg, msg
        # The password never appears in the output of a failure.
        assert OWNER_PW not in msg
        assert_clean(tpm)


@R.case
def wrong_or_missing_password_refused():
    """Wrong/missing owner or endorsement password: one sentence naming the hierarchy and the
    configuration key, exit 4, nothing created, DA counter fed at most once per run."""
    d = tmpdir()
    with Swtpm() as tpm:
        take_ownership(tpm)
        cases = [
            # (owner, endorsement, hierarchy named)
            (None, ENDORSEMENT_PW, "owner"),        # owner missing: EK made transiently, persisting refused
            ("wrong", ENDORSEMENT_PW, "owner"),
            (OWNER_PW, None, "endorsement"),
            (OWNER_PW, "wrong", "endorsement"),
            (None, None, "endorsement"),            # an owned TPM and no configuration at all
        ]
        for owner, endorsement, which in cases:
            cfg = config(d, tpm, owner=owner, endorsement=endorsement)
            before = lockout_counter(tpm)
            p = ctl("info", "-c", cfg, env=env_no_daemon(d))
            after = lockout_counter(tpm)
            what = (owner, endorsement)
            assert p.returncode == EXIT_NOTPM, (what, p)
            msg = one_sentence(p)
            assert "the TPM rejected the %s hierarchy password" % which in msg, (what, msg)
            assert "set %s in [tpm.hierarchy_authorization]" % which in msg, (what, msg)
            for secret in (OWNER_PW, ENDORSEMENT_PW):
                assert secret not in msg, msg
            assert tpm.persistent_handles() == [], (what, tpm.persistent_handles())
            assert after - before <= 1, ("DA counter", what, before, after)
            assert_clean(tpm)
            print("   %-30s DA %d->%d: %s" % (what, before, after, msg[:150]))
        # The same through the password files (--tcti, no configuration).
        p = ctl("info", "--tcti", tpm.tcti, "--owner-auth-file", write(d, "o.pw", "nope\n"),
                "--endorsement-auth-file", write(d, "e.pw", ENDORSEMENT_PW + "\n"), env=env_no_daemon(d))
        assert p.returncode == EXIT_NOTPM and "rejected the owner hierarchy password" in one_sentence(p), p
        assert tpm.persistent_handles() == []
        # EK present (made by the script), SRK missing: creating the SRK needs the owner password.
        tpm.tool("tpm2_createek", "-c", "0x81010001", "-G", "rsa", "-u", os.path.join(d, "ek.pub"),
                 "-P", ENDORSEMENT_PW, "-w", OWNER_PW)
        p = ctl("info", "-c", config(d, tpm, owner="bad", endorsement=ENDORSEMENT_PW), env=env_no_daemon(d))
        assert p.returncode == EXIT_NOTPM, p
        msg = one_sentence(p)
        assert "CreatePrimary(SRK)" in msg and "owner hierarchy password" in msg, msg
        assert tpm.persistent_handles() == ["0x81010001"]
        assert lockout_counter(tpm) <= 1
        assert_clean(tpm)


@R.case
def config_errors():
    """-c names a file that is missing or invalid: exit 3 with the file's problems."""
    d = tmpdir()
    with Swtpm() as tpm:
        p = ctl("info", "-c", os.path.join(d, "absent.toml"), env=env_no_daemon(d))
        assert p.returncode == EXIT_CONFIG and b"absent.toml" in p.stderr, p
        bad = write(d, "bad.toml", "[tpm]\ntcti = %s\n[tpm.hierarchy_authorization]\nowner = 5\n" % toml_str(tpm.tcti))
        p = ctl("info", "-c", bad, env=env_no_daemon(d))
        assert p.returncode == EXIT_CONFIG, p
        assert b"bad.toml:4" in p.stderr and b"owner" in p.stderr, p.stderr
        assert tpm.persistent_handles() == []
        # import/sign without --tcti and without a configuration file: usage error
        e = env_no_daemon(d)
        del e["TPMIDD_CONFIG"]
        if not os.path.exists("/etc/aziot/config.toml"):
            p = ctl("sign", env=e, input=b"x")
            assert p.returncode == EXIT_USAGE and b"--tcti or a configuration file" in p.stderr, p


# ---------------------------------------------------------------- import and sign on an owned TPM

def make_blob(tpm, d, hmac_key=None):
    return authblob.make_auth_blob(readpublic(tpm, 0x81010001, d), readpublic(tpm, 0x81000001, d), hmac_key)


def sw_hmac(key, data):
    import hmac
    return base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode()


@R.case
def import_and_sign_owned():
    """import needs PolicySecret(endorsement) with the endorsement password and the owner password
    to persist; tcti and auth_key_index come from the configuration."""
    d = tmpdir()
    with Swtpm() as tpm:
        take_ownership(tpm)
        cfg = config(d, tpm, owner=OWNER_PW, endorsement=ENDORSEMENT_PW, index="0x102")
        ok(ctl("info", "-c", cfg, env=env_no_daemon(d)))
        blob, key = make_blob(tpm, d)
        bf = write(d, "blob.b64", base64.b64encode(blob) + b"\n")
        ok(ctl("import", "-c", cfg, bf, env=env_no_daemon(d)))
        assert "0x81000102" in tpm.persistent_handles(), tpm.persistent_handles()
        assert ok(ctl("sign", "-c", cfg, input=b"hello", env=env_no_daemon(d))).strip() == sw_hmac(key, b"hello")
        assert_clean(tpm)
        # Wrong endorsement password: PolicySecret refused, named, exit 4, the old key still works.
        blob2, key2 = make_blob(tpm, d)
        bf2 = write(d, "blob2.bin", blob2)
        for owner, endorsement, which in ((OWNER_PW, "bad", "endorsement"), ("bad", ENDORSEMENT_PW, "owner")):
            bad = config(d, tpm, owner=owner, endorsement=endorsement, index="0x102", name="bad.toml")
            p = ctl("import", "-c", bad, bf2, env=env_no_daemon(d))
            assert p.returncode == EXIT_NOTPM, p
            msg = one_sentence(p)
            assert "rejected the %s hierarchy password" % which in msg, msg
            assert ok(ctl("sign", "-c", cfg, input=b"probe", env=env_no_daemon(d))).strip() == sw_hmac(key, b"probe")
            assert_clean(tpm)
            print("   import, wrong %s: %s" % (which, msg[:140]))
        # The right passwords from files and --tcti/--auth-key-index override the configuration.
        of = write(d, "o.pw", OWNER_PW + "\n")
        ef = write(d, "e.pw", ENDORSEMENT_PW + "\n")
        bad = config(d, tpm, owner="bad", endorsement="bad", index="0x102", name="bad.toml")
        ok(ctl("import", "-c", bad, "--owner-auth-file", of, "--endorsement-auth-file", ef,
               "--tcti", tpm.tcti, "--auth-key-index", "0x103", bf2, env=env_no_daemon(d)))
        assert ok(ctl("sign", "--tcti", tpm.tcti, "--auth-key-index", "0x103", input=b"x",
                      env=env_no_daemon(d))).strip() == sw_hmac(key2, b"x")
        assert lockout_counter(tpm) == 0
        assert_clean(tpm)


# ---------------------------------------------------------------- the daemon on an owned TPM

@R.case
def daemon_provisions_owned_tpm():
    """tpmidd with [tpm.hierarchy_authorization] registers by TPM attestation (challenge key and
    final key imported with the endorsement password) and the hub accepts its token."""
    d = tmpdir()
    with Swtpm() as tpm, Sim(polls=1, retry_after=1) as sim:
        take_ownership(tpm)
        cfg = config(d, tpm, owner=OWNER_PW, endorsement=ENDORSEMENT_PW)
        j = json.loads(ok(ctl("info", "--json", "-c", cfg, env=env_no_daemon(d))))
        ek = base64.b64decode(j["endorsement_key"])
        regid = j["registration_id"]
        assert regid == hashlib.sha256(ek).hexdigest()
        sim.client.enroll(regid, ek, hubs=[HUB1])
        auth = "[tpm.hierarchy_authorization]\nowner = %s\nendorsement = %s\n" % (
            toml_str(OWNER_PW), toml_str(ENDORSEMENT_PW))
        with Daemon(tpm, sim, extra_toml=auth) as dm:
            p = dm.wait_provisioned()
            assert p["registrationId"] == regid and p["lastResult"]["status"] == "assigned", p
            hub, dev = dm.hub_token_ok()
            assert hub == HUB1, hub
            log = dm.log_since_start()
            for secret in (OWNER_PW, ENDORSEMENT_PW):
                assert secret not in log, "a hierarchy password is in the daemon's log"
        assert "0x81000100" in tpm.persistent_handles(), tpm.persistent_handles()
        assert_clean(tpm)
        assert lockout_counter(tpm) == 0


@R.case
def daemon_wrong_endorsement_password():
    """tpmidd with a wrong endorsement password: provisioning fails with the sentence naming the
    hierarchy and key (no silent retry loop feeding anything), the daemon stays up."""
    d = tmpdir()
    with Swtpm() as tpm, Sim() as sim:
        take_ownership(tpm)
        cfg = config(d, tpm, owner=OWNER_PW, endorsement=ENDORSEMENT_PW)
        j = json.loads(ok(ctl("info", "--json", "-c", cfg, env=env_no_daemon(d))))
        sim.client.enroll(j["registration_id"], base64.b64decode(j["endorsement_key"]), hubs=[HUB1])
        auth = "[tpm.hierarchy_authorization]\nowner = %s\nendorsement = \"wrong\"\n" % toml_str(OWNER_PW)
        with Daemon(tpm, sim, extra_toml=auth) as dm:
            def seen():
                dm.check_alive()
                return "rejected the endorsement hierarchy password" in dm.log_since_start()
            from daemon import wait_for
            wait_for(seen, 30, step=0.2, what="the endorsement password error in the log")
            line = [l for l in dm.log_since_start().splitlines() if "rejected the endorsement" in l][0]
            assert "[tpm.hierarchy_authorization]" in line, line
            print("   daemon: " + line.strip()[:220])
            st = dm.prov()
            print("   status: %s %s" % (st["state"], json.dumps(st.get("lastResult"))[:200]))
        assert "0x81000100" not in tpm.persistent_handles()
        assert lockout_counter(tpm) == 0


# ---------------------------------------------------------------- permissions and DA lockout

@R.case
def permission_denied_on_device():
    """A device: TCTI whose node the user may not open: the tss-group/udev sentence, exit 4."""
    d = tmpdir()
    node = write(d, "tpmrm0", b"", mode=0o600)
    if os.geteuid() == 0:
        os.chown(node, 0, 0)
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    else:
        os.chmod(node, 0)
        prefix = []
    e = env_no_daemon(d)
    p = ctl("info", "--tcti", "device:" + node, env=e, prefix=prefix)
    assert p.returncode == EXIT_NOTPM, p
    msg = one_sentence(p)
    assert ("permission denied on %s" % node) in msg and "group tss" in msg and "udev rule" in msg, msg
    print("   " + msg)
    # sign and import say the same
    p = ctl("sign", "--tcti", "device:" + node, env=e, prefix=prefix, input=b"x")
    assert p.returncode == EXIT_NOTPM and "group tss" in one_sentence(p), p
    # A configuration file holding the passwords that the user may not read (-c): exit 3, why.
    cfg = write(d, "config.toml", '[tpm]\ntcti = "device:%s"\n' % node, mode=0o600 if prefix else 0)
    if prefix or os.geteuid() != 0:
        p = ctl("info", "-c", cfg, env=e, prefix=prefix)
        assert p.returncode == EXIT_CONFIG, p
        msg = one_sentence(p)
        assert cfg in msg and "Permission denied" in msg, msg


@R.case
def dictionary_attack_lockout():
    """With max 1 try, one wrong password on a DA-protected object locks the TPM out. Our
    objects are DA-exempt (hierarchies, noDA SRK, EK policy, DPS's noDA HMAC key): info,
    import and sign keep working; a DA-protected key at the auth key handle gets the lockout
    sentence; `tpmidctl check` reports the lockout."""
    d = tmpdir()
    with Swtpm() as tpm:
        take_ownership(tpm)
        cfg = config(d, tpm, owner=OWNER_PW, endorsement=ENDORSEMENT_PW)
        env = env_no_daemon(d)
        # A DA-protected HMAC key (not noDA, empty password) at 0x81000105, as another tool might
        # leave at an auth key handle; and a DA-protected parent with a password to fail on.
        tpm.tool("tpm2_createprimary", "-C", "o", "-P", OWNER_PW, "-p", "right", "-c", os.path.join(d, "p.ctx"))
        tpm.tool("tpm2_flushcontext", "-t")  # a direct swtpm connection has 3 object slots
        tpm.tool("tpm2_create", "-C", os.path.join(d, "p.ctx"), "-P", "right", "-G", "hmac",
                 "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                 "-c", os.path.join(d, "hmac.ctx"))
        tpm.tool("tpm2_flushcontext", "-t")
        tpm.tool("tpm2_evictcontrol", "-C", "o", "-P", OWNER_PW, "-c", os.path.join(d, "hmac.ctx"), "0x81000105")
        tpm.tool("tpm2_flushcontext", "-t")
        tpm.tool("tpm2_dictionarylockout", "-s", "-n", "1", "-t", "120", "-l", "120")
        assert not in_lockout(tpm)
        # One wrong password on the DA-protected parent.
        p = tpm.tool("tpm2_create", "-C", os.path.join(d, "p.ctx"), "-P", "wrong", "-G", "hmac",
                     "-u", os.path.join(d, "x.pub"), "-r", os.path.join(d, "x.priv"), check=False)
        assert p.returncode != 0
        tpm.tool("tpm2_flushcontext", "-t")
        assert in_lockout(tpm), tpm.tool("tpm2_getcap", "properties-variable").stdout
        before = lockout_counter(tpm)

        # info creates EK/SRK in lockout (hierarchy authorisations are DA-exempt).
        out = ok(ctl("info", "-c", cfg, env=env))
        assert sorted(tpm.persistent_handles())[:2] == ["0x81000001", "0x81000105"], tpm.persistent_handles()
        assert "0x81010001" in tpm.persistent_handles()
        # import and sign of a DPS key (noDA) work in lockout.
        blob, key = make_blob(tpm, d)
        ok(ctl("import", "-c", cfg, write(d, "blob.bin", blob), env=env))
        assert ok(ctl("sign", "-c", cfg, input=b"lk", env=env)).strip() == sw_hmac(key, b"lk")
        # The DA-protected key is refused with the lockout sentence.
        p = ctl("sign", "-c", cfg, "--auth-key-index", "0x105", input=b"lk", env=env)
        assert p.returncode == EXIT_NOTPM, p
        msg = one_sentence(p)
        assert "dictionary-attack lockout" in msg and "tpm2_dictionarylockout" in msg, msg
        print("   sign with a DA-protected key: " + msg)
        assert in_lockout(tpm) and lockout_counter(tpm) == before, "tpmidctl fed the DA counter"
        assert_clean(tpm)
        # tpmidctl check names the lockout.
        e = dict(env)
        e["TPMIDD_CONFIG"] = cfg
        p = subprocess.run([CTL, "check", "--json"], capture_output=True, text=True, timeout=120, env=e)
        res = {r["id"]: r for r in json.loads(p.stdout)["checks"]}  # check --json: {"schemaVersion", "checks", ...}
        r = res["tpm-da-lockout"]
        assert r["result"] == "error" and "lockout" in r["message"], r
        print("   check: %s / fix: %s" % (r["message"], r["fix"]))
        assert "clear-lockout" in r["fix"], r
        tpm.tool("tpm2_dictionarylockout", "-c")  # leave the TPM usable for a clean stop
        assert not in_lockout(tpm)


R.main()
