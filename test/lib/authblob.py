"""DPS TPM `authenticationKey` blob builder (server side, no TPM needed).

Builds the activation blob that Azure DPS returns in its 401 challenge and in
`registrationState.tpm.authenticationKey`, byte for byte as described in
/work/shared/reference/dps-tpm-protocol.md §3.1 and §4:

    1 TPM2B_ID_OBJECT         credBlob    MakeCredential(EK, innerKey, Name(SRK))
    2 TPM2B_ENCRYPTED_SECRET  encSecret   seed, RSA-OAEP to the EK, label "IDENTITY\\0"
    3 TPM2B_PRIVATE           duplicate   inner (AES-128-CFB, innerKey) + outer wrap to the SRK
    4 TPM2B_ENCRYPTED_SECRET  encWrapKey  seed, RSA-OAEP to the SRK, label "DUPLICATE\\0"
    5 u16 + TPMT_PUBLIC       idKeyPub    KEYEDHASH/HMAC-SHA256, attrs sign|noDA|userWithAuth
    6 u16 + bytes             encUriData  AES-128-CFB(innerKey, zero IV, UTF-16LE uri)

The device recovers innerKey with TPM2_ActivateCredential (only possible with
the EK private key and the SRK whose Name was bound in element 1), then
TPM2_Import(SRK, innerKey, 3, 4, 5) yields an HMAC key that only its TPM holds.

Uses tpm2_pytss.utils.make_credential / wrap (pure software, Debian's
python3-tpm2-pytss 1.2.0) and python3-cryptography.

API:
    parse_tpm2b_public(data) -> TpmPublic      (raises ValueError on anything unusable)
    name_of(tpm2b_public_bytes) -> bytes        (34-byte TPM Name, nameAlg SHA-256)
    make_auth_blob(ek_pub, srk_pub, hmac_key=None, uri="localhost/device")
        -> (blob, hmac_key)
    split_auth_blob(blob) -> AuthBlobParts     (elements, for tests)
    decrypt_uri(enc_uri, inner_key) -> str
"""
import hashlib
import os
import struct
from collections import namedtuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tpm2_pytss import types as T
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss import utils as tpmutils

TPM_ALG_RSA = 0x0001
TPM_ALG_KEYEDHASH = 0x0008
TPM_ALG_SHA256 = 0x000B
TPM_ALG_AES = 0x0006
TPM_ALG_CFB = 0x0043
TPM_ALG_NULL = 0x0010
TPM_ALG_HMAC = 0x0005

TPMA_RESTRICTED = 0x00010000
TPMA_DECRYPT = 0x00020000
TPMA_SIGN = 0x00040000
TPMA_NODA = 0x00000400
TPMA_USERWITHAUTH = 0x00000040
ID_KEY_ATTRS = TPMA_SIGN | TPMA_NODA | TPMA_USERWITHAUTH  # 0x00040440, as in the captured real blob

RSA_BITS = 2048            # only key size DPS clients use (bits)
SHA256_LEN = 32            # digest size (bytes)
INNER_KEY_LEN = 16         # AES-128 inner wrap key (bytes)
HMAC_KEY_LEN = 32          # device HMAC key; must be <= 64 (SHA-256 block size) (bytes)
TPM2B_PUBLIC_MAX = 1024    # generous upper bound for one marshalled TPM2B_PUBLIC (bytes)
URI_MAX = 1024             # Java client rejects encUriData > TPM_PT_INPUT_BUFFER (bytes)
DEFAULT_URI = "localhost/device"

TpmPublic = namedtuple("TpmPublic", "raw tpmt type name_alg attrs auth_policy sym_alg sym_bits sym_mode "
                                    "scheme key_bits exponent modulus name")
AuthBlobParts = namedtuple("AuthBlobParts", "cred_blob enc_secret duplicate enc_wrap_key id_key_pub enc_uri")


class _Cursor:
    """Checked big-endian reader over untrusted bytes; every overrun is a ValueError."""

    def __init__(self, data, what):
        self.data, self.off, self.what = data, 0, what

    def take(self, n):
        if n < 0 or self.off + n > len(self.data):
            raise ValueError("%s: truncated at offset %d (need %d more bytes, have %d)"
                             % (self.what, self.off, n, len(self.data) - self.off))
        b = self.data[self.off:self.off + n]
        self.off += n
        return b

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def tpm2b(self):
        return self.take(self.u16())

    def rest(self):
        return len(self.data) - self.off


def parse_tpm2b_public(data):
    """Parse and check a marshalled TPM2B_PUBLIC of an EK or SRK.

    Accepts only what DPS clients use: RSA-2048, nameAlg SHA-256, restricted|decrypt,
    symmetric AES-128-CFB, scheme NULL. Returns a TpmPublic; raises ValueError with a
    message naming the first problem found.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("TPM2B_PUBLIC: expected bytes")
    data = bytes(data)
    if len(data) > TPM2B_PUBLIC_MAX:
        raise ValueError("TPM2B_PUBLIC: %d bytes exceeds limit %d" % (len(data), TPM2B_PUBLIC_MAX))
    c = _Cursor(data, "TPM2B_PUBLIC")
    size = c.u16()
    if size != c.rest():
        raise ValueError("TPM2B_PUBLIC: size field %d but %d bytes follow" % (size, c.rest()))
    tpmt = data[2:]
    typ = c.u16()
    name_alg = c.u16()
    attrs = c.u32()
    auth_policy = c.tpm2b()
    if typ != TPM_ALG_RSA:
        raise ValueError("TPM2B_PUBLIC: type 0x%04x is not RSA" % typ)
    if name_alg != TPM_ALG_SHA256:
        raise ValueError("TPM2B_PUBLIC: nameAlg 0x%04x is not SHA-256" % name_alg)
    if attrs & (TPMA_RESTRICTED | TPMA_DECRYPT) != (TPMA_RESTRICTED | TPMA_DECRYPT):
        raise ValueError("TPM2B_PUBLIC: attributes 0x%08x lack restricted|decrypt" % attrs)
    sym_alg = c.u16()
    if sym_alg != TPM_ALG_AES:
        raise ValueError("TPM2B_PUBLIC: symmetric 0x%04x is not AES" % sym_alg)
    sym_bits = c.u16()
    sym_mode = c.u16()
    if sym_bits != 128 or sym_mode != TPM_ALG_CFB:
        raise ValueError("TPM2B_PUBLIC: symmetric AES-%d mode 0x%04x is not AES-128-CFB" % (sym_bits, sym_mode))
    scheme = c.u16()
    if scheme != TPM_ALG_NULL:
        raise ValueError("TPM2B_PUBLIC: scheme 0x%04x is not NULL" % scheme)
    key_bits = c.u16()
    if key_bits != RSA_BITS:
        raise ValueError("TPM2B_PUBLIC: RSA key size %d is not %d" % (key_bits, RSA_BITS))
    exponent = c.u32()
    modulus = c.tpm2b()
    if len(modulus) != RSA_BITS // 8:
        raise ValueError("TPM2B_PUBLIC: modulus is %d bytes, expected %d" % (len(modulus), RSA_BITS // 8))
    if c.rest():
        raise ValueError("TPM2B_PUBLIC: %d trailing bytes" % c.rest())
    name = struct.pack(">H", TPM_ALG_SHA256) + hashlib.sha256(tpmt).digest()
    return TpmPublic(data, tpmt, typ, name_alg, attrs, auth_policy, sym_alg, sym_bits, sym_mode,
                     scheme, key_bits, exponent or 65537, modulus, name)


def name_of(tpm2b_public_bytes):
    """TPM Name (u16 nameAlg || SHA-256(TPMT_PUBLIC)) of a checked TPM2B_PUBLIC; 34 bytes."""
    return parse_tpm2b_public(tpm2b_public_bytes).name


def _aes128_cfb(key, data):
    enc = Cipher(algorithms.AES(key), modes.CFB(b"\0" * 16)).encryptor()
    return enc.update(data) + enc.finalize()


def _aes128_cfb_decrypt(key, data):
    dec = Cipher(algorithms.AES(key), modes.CFB(b"\0" * 16)).decryptor()
    return dec.update(data) + dec.finalize()


def _id_key(hmac_key):
    """Public and sensitive areas of the HMAC 'ID key' (protocol reference §3.2)."""
    seed = os.urandom(SHA256_LEN)
    pub = T.TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT(ID_KEY_ATTRS),
        authPolicy=T.TPM2B_DIGEST(b""),
    )
    pub.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.HMAC
    pub.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG.SHA256
    pub.unique.keyedHash = T.TPM2B_DIGEST(hashlib.sha256(seed + hmac_key).digest())
    sens = T.TPMT_SENSITIVE(sensitiveType=TPM2_ALG.KEYEDHASH)
    sens.authValue = T.TPM2B_AUTH(b"")
    sens.seedValue = T.TPM2B_DIGEST(seed)
    sens.sensitive.bits = T.TPM2B_SENSITIVE_DATA(hmac_key)
    return T.TPM2B_PUBLIC(publicArea=pub), T.TPM2B_SENSITIVE(sensitiveArea=sens)


def _u16b(b):
    return struct.pack(">H", len(b)) + b


def make_auth_blob(ek_pub, srk_pub, hmac_key=None, uri=DEFAULT_URI, inner_key=None):
    """Build a DPS authenticationKey blob for the given EK and SRK (marshalled TPM2B_PUBLIC bytes).

    hmac_key: the device key to wrap (32 random bytes when None; 1..64 bytes allowed).
    uri: text put (UTF-16LE, encrypted) into element 6; str, or bytes holding UTF-8 text.
    inner_key: 16-byte inner wrap key, random when None (only tests pass one).
    Returns (blob bytes, hmac_key bytes). Raises ValueError on unusable keys or arguments.
    """
    ek = parse_tpm2b_public(ek_pub)
    srk = parse_tpm2b_public(srk_pub)
    if hmac_key is None:
        hmac_key = os.urandom(HMAC_KEY_LEN)
    if not 1 <= len(hmac_key) <= 64:
        raise ValueError("hmac_key must be 1..64 bytes, got %d" % len(hmac_key))
    if inner_key is None:
        inner_key = os.urandom(INNER_KEY_LEN)
    if len(inner_key) != INNER_KEY_LEN:
        raise ValueError("inner_key must be %d bytes" % INNER_KEY_LEN)
    if isinstance(uri, bytes):
        uri = uri.decode("utf-8")
    uri_plain = uri.encode("utf-16-le")
    if len(uri_plain) > URI_MAX:
        raise ValueError("uri too long: %d bytes UTF-16LE, limit %d" % (len(uri_plain), URI_MAX))

    ek_t, _ = T.TPM2B_PUBLIC.unmarshal(ek.raw)
    srk_t, _ = T.TPM2B_PUBLIC.unmarshal(srk.raw)

    # Elements 1-2: the inner key, released only to the TPM holding this EK and SRK.
    cred, secret = tpmutils.make_credential(ek_t, inner_key, T.TPM2B_NAME(srk.name))

    # Elements 3-5: the HMAC key, duplicated to the SRK with an inner wrapper under inner_key.
    idpub, idsens = _id_key(hmac_key)
    symdef = T.TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
    symdef.keyBits.aes = 128
    symdef.mode.aes = TPM2_ALG.CFB
    _, dup, symseed = tpmutils.wrap(srk_t.publicArea, idpub, idsens, inner_key, symdef)

    blob = (cred.marshal() + secret.marshal() + dup.marshal() + symseed.marshal()
            + idpub.marshal() + _u16b(_aes128_cfb(inner_key, uri_plain)))
    return blob, bytes(hmac_key)


def split_auth_blob(blob):
    """Split a blob into its six elements (contents without size fields).

    Tolerates trailing bytes after element 6 like real clients do; raises ValueError
    if any element is truncated.
    """
    c = _Cursor(bytes(blob), "authenticationKey")
    return AuthBlobParts(*(c.tpm2b() for _ in range(6)))


def decrypt_uri(enc_uri, inner_key):
    """Decrypt element 6 with the inner key; returns the UTF-16LE text as str."""
    return _aes128_cfb_decrypt(inner_key, enc_uri).decode("utf-16-le")


def tpm2tools_credential(blob):
    """Elements 1||2 in tpm2-tools' credential file format (BADCC0DE 00000001 header)."""
    p = split_auth_blob(blob)
    return bytes.fromhex("badcc0de00000001") + _u16b(p.cred_blob) + _u16b(p.enc_secret)
