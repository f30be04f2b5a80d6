"""Crypto for the DPS simulator: the test CA / TLS server certificate and SAS tokens.

The authenticationKey blob itself lives in test/lib/authblob.py (shared with other tests);
this module re-exports make_auth_blob and parse_tpm2b_public from it.

SAS rules (protocol reference §4.5 / §5): the token is
    SharedAccessSignature sr=<sr>&sig=<urlenc b64 sig>&se=<unix secs>[&skn=<name>]
in any field order; the signature covers the *raw* sr as sent, "\\n", se. Verification
keeps sr raw for the HMAC and compares urldecode(sr) with the expected resource
case-insensitively, so every known client encoding (C SDK, C#, Node, identity-service) passes.
"""
import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import sys
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from authblob import make_auth_blob, parse_tpm2b_public  # noqa: E402  (re-exported)

__all__ = ["make_auth_blob", "parse_tpm2b_public", "ensure_tls", "SasError", "parse_sas", "verify_sas",
           "encode_sr", "string_to_sign", "sas_from_sig", "make_sas"]

SAS_PREFIX = "SharedAccessSignature "
SAS_MAX_LEN = 4096          # longest Authorization header we parse (bytes)
CLOCK_SKEW = 300            # accepted clock skew for 'se' in the past (seconds); 0 in strict mode
CERT_DAYS = 3650            # test CA and server certificate lifetime (days)

# Names the server certificate covers. Hubs are addressed by their real-looking
# names (hub1.azure-devices.net) with curl's CONNECT_TO / RESOLVE, so the wildcard
# covers them; OpenSSL refuses single-label wildcards like *.localhost, so those
# need explicit --san entries.
DEFAULT_SANS = ["localhost", "global.azure-devices-provisioning.net", "*.azure-devices-provisioning.net",
                "*.azure-devices.net"]


# ---------------------------------------------------------------- TLS material

def _write_private(path, data):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tpmidd test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ensure_tls(state_dir, extra_sans=()):
    """Create (once) a test CA and (every start) a server cert signed by it.

    The CA survives restarts so clients keep trusting the same ca.pem; the server
    certificate is re-issued so new --san names take effect. Returns
    (ca_path, cert_path, key_path), all inside state_dir.
    """
    ca_path = os.path.join(state_dir, "ca.pem")
    ca_key_path = os.path.join(state_dir, "ca.key")
    cert_path = os.path.join(state_dir, "server.pem")
    key_path = os.path.join(state_dir, "server.key")
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    if os.path.exists(ca_path) and os.path.exists(ca_key_path):
        ca_cert = x509.load_pem_x509_certificate(open(ca_path, "rb").read())
        ca_key = serialization.load_pem_private_key(open(ca_key_path, "rb").read(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (x509.CertificateBuilder()
                   .subject_name(_name("tpmidd DPS simulator test CA"))
                   .issuer_name(_name("tpmidd DPS simulator test CA"))
                   .public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        _write_private(ca_key_path, ca_key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        _write_public(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))

    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for n in list(DEFAULT_SANS) + list(extra_sans):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path, key_path


# ---------------------------------------------------------------- SAS tokens

class SasError(Exception):
    """A SAS token was malformed or did not verify; str() says why (safe to return to clients)."""


def parse_sas(header):
    """Split an Authorization header into its fields.

    Returns a dict with 'sr' kept raw (as signed) and 'sig', 'se', 'skn' URL-decoded
    ('skn' is None when absent). Raises SasError on any malformation or duplicate field.
    """
    if header is None:
        raise SasError("missing Authorization header")
    if len(header) > SAS_MAX_LEN:
        raise SasError("Authorization header too long")
    if not header.startswith(SAS_PREFIX):
        raise SasError("Authorization is not a SharedAccessSignature")
    fields = {}
    for part in header[len(SAS_PREFIX):].strip().split("&"):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise SasError("malformed SAS field %r" % part[:40])
        if k in fields:
            raise SasError("duplicate SAS field %r" % k)
        fields[k] = v
    for k in ("sr", "sig", "se"):
        if k not in fields:
            raise SasError("SAS field %r missing" % k)
    out = {"sr": fields["sr"], "sig": urllib.parse.unquote(fields["sig"]),
           "se": urllib.parse.unquote(fields["se"]),
           "skn": urllib.parse.unquote(fields["skn"]) if "skn" in fields else None}
    if not out["se"].isdigit() or len(out["se"]) > 12:
        raise SasError("SAS 'se' is not a decimal Unix time")
    return out


def verify_sas(header, resource, key, skn, now=None, skew=CLOCK_SKEW):
    """Check a SAS header against the expected resource and key.

    resource: e.g. '0ne00000001/registrations/dev1' or 'hub1.azure-devices.net/devices/dev1'.
    skn: required key name ('registration' for DPS) or None when the token must have no skn.
    Returns None on success; raises SasError naming the first failed check.
    """
    f = parse_sas(header)
    if skn is None and f["skn"] is not None:
        raise SasError("device token must not carry skn (got %r)" % f["skn"])
    if skn is not None and f["skn"] != skn:
        raise SasError("skn must be %r (got %r)" % (skn, f["skn"]))
    if urllib.parse.unquote(f["sr"]).lower() != resource.lower():
        raise SasError("sr %r does not match resource %r" % (urllib.parse.unquote(f["sr"]), resource))
    now = time.time() if now is None else now
    if int(f["se"]) + skew <= now:
        raise SasError("SAS token expired")
    try:
        sig = base64.b64decode(f["sig"], validate=True)
    except ValueError:
        raise SasError("SAS 'sig' is not base64") from None
    if key is None:
        raise SasError("no key issued for this resource yet")
    want = hmac.new(key, (f["sr"] + "\n" + f["se"]).encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, want):
        raise SasError("SAS signature mismatch")


def encode_sr(resource):
    """Recommended sr encoding (§5.1): lowercase, percent-encode all but unreserved, lowercase hex."""
    q = urllib.parse.quote(resource.lower(), safe="")
    out, i = [], 0
    while i < len(q):
        if q[i] == "%":
            out.append(q[i:i + 3].lower())
            i += 3
        else:
            out.append(q[i])
            i += 1
    return "".join(out)


def string_to_sign(sr, se):
    """The bytes a SAS signature covers (for clients that sign with a TPM)."""
    return (sr + "\n" + str(se)).encode()


def sas_from_sig(sr, se, sig, skn=None):
    """Assemble a token from a precomputed 32-byte HMAC (e.g. from tpm2_hmac)."""
    tok = "%ssr=%s&sig=%s&se=%d" % (SAS_PREFIX, sr, urllib.parse.quote(base64.b64encode(sig).decode(), safe=""),
                                     int(se))
    return tok + ("&skn=" + skn if skn else "")


def make_sas(resource, key, ttl=3600, skn=None, sr=None, se=None):
    """Sign a SAS token in software (tests and CLI). Returns the full Authorization value."""
    sr = encode_sr(resource) if sr is None else sr
    se = int(time.time()) + ttl if se is None else int(se)
    sig = hmac.new(key, string_to_sign(sr, se), hashlib.sha256).digest()
    return sas_from_sig(sr, se, sig, skn)
