#!/usr/bin/python3
"""tpmidctl tpm info|import|sign against a fresh swtpm per case.

Checks equality with the enrolment script of the IoT Edge docs (tpm2-tools),
EK/SRK creation and reuse, maker-provisioned TPMs with an EK certificate,
refusal of a foreign object at the SRK handle, clear errors without a TPM,
no leaked transient objects or sessions, and the DPS authenticationKey import
with a blob built by an independent implementation (test/lib/authblob.py,
tpm2-pytss), whose HMAC must equal HMAC-SHA256 computed in software.
"""
import base64
import hashlib
import hmac
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# This directory holds packaging.py, which would shadow the PyPI 'packaging'
# module that tpm2-pytss imports: keep it off the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from harness import Runner, Swtpm, need, program, run, tmpdir  # noqa: E402

need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_createek", "tpm2_readpublic", "tpm2_getcap", "openssl")

import authblob  # noqa: E402  (needs python3-tpm2-pytss)

CTL = program("tpmidctl")
EXIT_FAILURE, EXIT_USAGE, EXIT_NOTPM = 1, 2, 4
SEED_FMT = "Gathering the registration information...\n\nRegistration Id:\n%s\n\nEndorsement Key:\n%s\n"

R = Runner("tpm-info")


def ctl(*args, tpm=None, input=None, check=True):
    cmd = [CTL, "tpm"] + list(args)
    if tpm is not None:
        cmd[3:3] = ["--tcti", tpm.tcti]
    p = subprocess.run(cmd, input=input, capture_output=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError("tpmidctl %s: rc %d\nstdout: %r\nstderr: %r" % (
            " ".join(args), p.returncode, p.stdout, p.stderr))
    return p


def info(tpm, *extra):
    return ctl("info", *extra, tpm=tpm).stdout.decode()


def assert_clean(tpm):
    """Every command must leave no transient object and no session behind."""
    assert tpm.transient_handles() == [], "transient objects left: %s" % tpm.transient_handles()
    assert tpm.loaded_sessions() == [], "sessions left: %s" % tpm.loaded_sessions()


def readpublic(tpm, handle, d):
    path = os.path.join(d, "%x.pub" % handle)
    tpm.tool("tpm2_readpublic", "-c", hex(handle), "-o", path)
    return open(path, "rb").read()


def one_sentence(stderr):
    text = stderr.decode().strip()
    assert text, "no error message"
    assert "\n" not in text, "more than one line on stderr: %r" % text
    return text


def seed_script(tpm, d):
    """The enrolment script of the docs, verbatim apart from sudo and -Q."""
    script = """set -e
cd %s
tpm2_readpublic -Q -c 0x81010001 -o ek.pub 2> /dev/null || {
  tpm2_createek -c 0x81010001 -G rsa -u ek.pub
  tpm2_createprimary -Q -C o -c srk.ctx > /dev/null
  tpm2_evictcontrol -c srk.ctx 0x81000001 > /dev/null
  tpm2_flushcontext -t > /dev/null
}
tpm2_readpublic -c 0x81010001 -o ek.pub > /dev/null
printf "Gathering the registration information...\\n\\nRegistration Id:\\n%%s\\n\\nEndorsement Key:\\n%%s\\n" \
  $(sha256sum -b ek.pub | cut -d' ' -f1 | sed -e 's/[^[:alnum:]]//g') $(base64 -w0 ek.pub)
""" % d
    return run(["sh", "-c", script], env=tpm.env()).stdout


def expected_from(ek_pub):
    return SEED_FMT % (hashlib.sha256(ek_pub).hexdigest(), base64.b64encode(ek_pub).decode())


@R.case
def blank_tpm_tpmidctl_creates_keys():
    d = tmpdir()
    with Swtpm() as tpm:
        assert tpm.persistent_handles() == []
        out = info(tpm)
        assert_clean(tpm)
        assert re.fullmatch(SEED_FMT.replace("\n", r"\n").replace(".", r"\.") % ("[0-9a-f]{64}", "[A-Za-z0-9+/=]+"),
                            out), out
        assert sorted(tpm.persistent_handles()) == ["0x81000001", "0x81010001"]
        ek = readpublic(tpm, 0x81010001, d)
        assert len(ek) == 316 and ek.startswith(bytes.fromhex("013a0001000b000300b20020837197674484b3f8"))
        assert out == expected_from(ek)
        # The script run now (keys present) prints the very same text.
        assert seed_script(tpm, d) == out
        srk = readpublic(tpm, 0x81000001, d)
        assert srk[:12] == bytes.fromhex("011a0001000b000304720000"), srk[:12].hex()  # noDA SRK
        # Second run: same answer, nothing created.
        before = tpm.persistent_handles()
        assert info(tpm) == out
        assert tpm.persistent_handles() == before
        assert readpublic(tpm, 0x81000001, d) == srk
        assert_clean(tpm)
        # JSON and base32 forms of the same keys.
        import json
        j = json.loads(info(tpm, "--json"))
        assert j["registration_id"] == hashlib.sha256(ek).hexdigest()
        assert base64.b64decode(j["endorsement_key"]) == ek
        assert base64.b64decode(j["storage_root_key"]) == srk
        assert "ek_certificate" not in j
        b32 = base64.b32encode(hashlib.sha256(ek).digest()).decode().lower().rstrip("=")
        assert info(tpm, "--regid-format", "base32") == SEED_FMT % (b32, base64.b64encode(ek).decode())
        assert_clean(tpm)


@R.case
def blank_tpm_script_first():
    d = tmpdir()
    with Swtpm() as tpm:
        expected = seed_script(tpm, d)
        tpm.tool("tpm2_flushcontext", "-t")
        before = tpm.persistent_handles()
        # tpm2_createprimary's SRK lacks noDA (0x00030072): still accepted.
        out = info(tpm)
        assert out == expected, "tpmidctl:\n%s\nscript:\n%s" % (out, expected)
        assert tpm.persistent_handles() == before
        assert_clean(tpm)


@R.case
def provisioned_tpm_with_ek_certificate():
    d = tmpdir()
    with Swtpm(provisioned=True) as tpm:
        before = tpm.persistent_handles()
        out = info(tpm)
        ek = readpublic(tpm, 0x81010001, d)
        assert out == expected_from(ek)
        assert tpm.persistent_handles() == before, "created something on a provisioned TPM"
        import json
        j = json.loads(info(tpm, "--json"))
        assert_clean(tpm)
        pem_file = os.path.join(d, "cert.pem")
        with open(pem_file, "w") as f:
            f.write(j["ek_certificate"])
        ours = run(["openssl", "x509", "-in", pem_file, "-outform", "DER"], input=b"").stdout
        raw = open(tpm.ek_cert_file, "rb").read()
        if raw.startswith(b"-----BEGIN"):
            raw = run(["openssl", "x509", "-in", tpm.ek_cert_file, "-outform", "DER"], input=b"").stdout
        assert ours == raw, "ek_certificate differs from the file swtpm_setup wrote"
        assert j["ek_certificate"].startswith("-----BEGIN CERTIFICATE-----\n")
        # The certificate's key is the EK's.
        certkey = run(["openssl", "x509", "-in", pem_file, "-noout", "-pubkey"]).stdout
        tpm.tool("tpm2_readpublic", "-c", "0x81010001", "-f", "pem", "-o", os.path.join(d, "ek.pem"))
        assert certkey.strip() == open(os.path.join(d, "ek.pem")).read().strip()


@R.case
def foreign_object_at_srk_handle_refused():
    d = tmpdir()
    with Swtpm() as tpm:
        tpm.tool("tpm2_createek", "-c", "0x81010001", "-G", "rsa", "-u", os.path.join(d, "ek.pub"))
        tpm.tool("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", os.path.join(d, "ecc.ctx"))
        tpm.tool("tpm2_evictcontrol", "-c", os.path.join(d, "ecc.ctx"), "0x81000001")
        tpm.tool("tpm2_flushcontext", "-t")
        ecc = readpublic(tpm, 0x81000001, d)
        p = ctl("info", tpm=tpm, check=False)
        assert p.returncode == EXIT_NOTPM, p
        assert p.stdout == b""
        msg = one_sentence(p.stderr)
        assert "0x81000001" in msg and "ECC key" in msg and "storage root key" in msg, msg
        assert readpublic(tpm, 0x81000001, d) == ecc, "the foreign object was touched"
        assert_clean(tpm)


@R.case
def no_tpm():
    d = tmpdir()
    for tcti, words in (("swtpm:path=" + os.path.join(d, "absent.sock"), "no swtpm socket"),
                        ("device:" + os.path.join(d, "tpmrm0"), "no TPM at"),
                        ("nosuchtcti", "unknown or unusable TCTI")):
        p = subprocess.run([CTL, "tpm", "info", "--tcti", tcti], capture_output=True, timeout=30)
        assert p.returncode == EXIT_NOTPM, (tcti, p)
        assert p.stdout == b""
        msg = one_sentence(p.stderr)
        assert words in msg, msg
    # A socket file nobody listens on.
    with Swtpm() as tpm:
        pass
    p = subprocess.run([CTL, "tpm", "info", "--tcti", "swtpm:path=" + tpm.sock], capture_output=True, timeout=30)
    assert p.returncode == EXIT_NOTPM, p


def sw_hmac(key, data):
    return base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode()


def sign(tpm, data, *extra):
    return ctl("sign", *extra, tpm=tpm, input=data).stdout.decode().strip()


def make_blob(tpm, d, hmac_key=None):
    ek = readpublic(tpm, 0x81010001, d)
    srk = readpublic(tpm, 0x81000001, d)
    return authblob.make_auth_blob(ek, srk, hmac_key)


def write(d, name, data):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@R.case
def import_and_sign():
    d = tmpdir()
    with Swtpm() as tpm:
        info(tpm)
        p = ctl("sign", tpm=tpm, input=b"x", check=False)
        assert p.returncode == EXIT_FAILURE and "no auth key" in one_sentence(p.stderr), p
        blob, key = make_blob(tpm, d)
        # base64 text with a newline, as pasted from the DPS response
        f = write(d, "blob.b64", base64.b64encode(blob) + b"\n")
        ctl("import", f, tpm=tpm)
        assert_clean(tpm)
        assert "0x81000100" in tpm.persistent_handles()
        for data in (b"", b"hello", os.urandom(1024), os.urandom(1025), os.urandom(3000), os.urandom(4096)):
            assert sign(tpm, data) == sw_hmac(key, data), len(data)
            assert_clean(tpm)
        # A SAS string-to-sign.
        sts = b"myscope.azure-devices-provisioning.net%2fregistrations%2fdevice1\n1700000000"
        assert sign(tpm, sts) == sw_hmac(key, sts)
        # Raw blob file, other auth key index.
        f = write(d, "blob.bin", blob)
        ctl("import", "--auth-key-index", "0x101", f, tpm=tpm)
        assert "0x81000101" in tpm.persistent_handles()
        assert sign(tpm, b"abc", "--auth-key-index", "0x101") == sw_hmac(key, b"abc")
        assert_clean(tpm)


@R.case
def bad_blobs_keep_working_key():
    d = tmpdir()
    with Swtpm() as tpm, Swtpm() as other:
        info(tpm)
        info(other)
        blob, key = make_blob(tpm, d)
        ctl("import", write(d, "good.bin", blob), tpm=tpm)
        old = sign(tpm, b"probe")
        assert old == sw_hmac(key, b"probe")
        foreign, _ = make_blob(other, tmpdir())
        bad = {
            "truncated": (blob[:500], "malformed"),
            "cut_in_uri": (blob[:-3], "malformed"),
            "oversize": (b"\xff\xff" + blob[2:], "malformed"),
            "garbage": (b"\x00\x05hello", "malformed"),
            "corrupt_credential": (blob[:10] + bytes([blob[10] ^ 1]) + blob[11:], "not made for this TPM"),
            "corrupt_secret": (blob[:100] + bytes([blob[100] ^ 1]) + blob[101:], "not made for this TPM"),
            "corrupt_duplicate": (blob[:400] + bytes([blob[400] ^ 1]) + blob[401:], "not made for this TPM"),
            "other_tpm": (foreign, "not made for this TPM"),
        }
        for name, (data, words) in bad.items():
            p = ctl("import", write(d, name, data), tpm=tpm, check=False)
            assert p.returncode == EXIT_FAILURE, (name, p)
            msg = one_sentence(p.stderr)
            assert words in msg, (name, msg)
            assert sign(tpm, b"probe") == old, "%s: the working key was lost" % name
            assert_clean(tpm)
        p = ctl("import", write(d, "notb64", b"QUJD*==="), tpm=tpm, check=False)
        assert p.returncode == EXIT_FAILURE
        # A new valid blob replaces the key.
        blob2, key2 = make_blob(tpm, d)
        ctl("import", write(d, "good2.bin", blob2), tpm=tpm)
        assert sign(tpm, b"probe") == sw_hmac(key2, b"probe") != old
        assert tpm.persistent_handles().count("0x81000100") == 1
        assert_clean(tpm)


@R.case
def usage_and_help():
    for verb in ("info", "import", "sign"):
        p = subprocess.run([CTL, "tpm", verb, "--help"], capture_output=True, timeout=10)
        assert p.returncode == 0 and p.stdout.startswith(b"Usage: tpmidctl tpm " + verb.encode()), p
    assert subprocess.run([CTL, "tpm", "info", "--regid-format", "b64"], capture_output=True).returncode == EXIT_USAGE
    assert subprocess.run([CTL, "tpm", "frob"], capture_output=True).returncode == EXIT_USAGE
    assert subprocess.run([CTL, "tpm", "import", "x"], capture_output=True).returncode == EXIT_USAGE
    assert subprocess.run([CTL, "tpm", "sign", "--tcti", "x", "--auth-key-index", "0x1000000"],
                          capture_output=True).returncode == EXIT_USAGE


R.main()
