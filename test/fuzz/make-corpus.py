#!/usr/bin/python3
"""Regenerate the fuzz seed corpora in test/fuzz/corpus/NAME/ from our own
test data: the files under test/unit/data and conf/, and the string literals
(test vectors, golden requests and bodies) of the unit tests. Each seed is
named after the SHA-1 of its content (as libFuzzer names corpus files), so a
rerun is idempotent. At most MAX_SEEDS seeds of at most MAX_SEED_BYTES each
per target.

    /usr/bin/python3 test/fuzz/make-corpus.py          # rewrite every corpus
    /usr/bin/python3 test/fuzz/make-corpus.py --check  # exit 1 if they differ

The input formats are the ones the targets document at the top of
test/fuzz/fuzz-NAME.c (some take a leading mode byte)."""
import base64
import glob
import hashlib
import os
import re
import shutil
import struct
import sys

MAX_SEEDS = 30        # files per target
MAX_SEED_BYTES = 4096  # bytes per file

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "test", "fuzz", "corpus")


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


# ---- C string literals of the unit tests -------------------------------------

ESC = {"n": 10, "r": 13, "t": 9, "0": 0, "\\": 92, '"': 34, "'": 39, "a": 7, "b": 8, "f": 12, "v": 11, "?": 63}


def unescape(body):
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = body[i + 1]
        if n == "x":
            m = re.match(r"[0-9a-fA-F]+", body[i + 2:])
            out.append(int(m.group(0), 16) & 0xFF)
            i += 2 + len(m.group(0))
        elif n in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(int(m.group(0), 8) & 0xFF)
            i += 1 + len(m.group(0))
        else:
            out.append(ESC.get(n, ord(n)))
            i += 2
    return bytes(out)


TOKEN = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[A-Za-z_]\w*|\s+|.', re.S)


def literals(rel):
    """Every maximal run of adjacent string literals (and macros defined as
    such runs) in a C file, concatenated and unescaped."""
    src = read(rel).decode("utf-8", "replace")
    macros = {}
    for m in re.finditer(r'^#define\s+(\w+)\s+((?:[^\n\\]|\\\n|\\.)*)$', src, re.M):
        val = m.group(2).replace("\\\n", " ")
        parts = [t for t in TOKEN.findall(val) if not t.isspace() and not t.startswith(("/*", "//"))]
        if parts and all(p.startswith('"') or p in macros for p in parts):
            macros[m.group(1)] = b"".join(unescape(p[1:-1]) if p.startswith('"') else macros[p] for p in parts)
    body = re.sub(r'^#.*$', "", src, flags=re.M)
    out, cur = [], None
    for t in TOKEN.findall(body):
        if t.isspace() or t.startswith(("/*", "//")):
            continue
        if t.startswith('"') or t in macros:
            v = unescape(t[1:-1]) if t.startswith('"') else macros[t]
            cur = v if cur is None else cur + v
        else:
            if cur is not None:
                out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out


def test_literals(*names):
    out = []
    for n in names:
        p = os.path.join("test", "unit", n)
        if os.path.exists(os.path.join(ROOT, p)):
            out += literals(p)
    return out


def data_files(pattern):
    return [read(os.path.relpath(p, ROOT)) for p in sorted(glob.glob(os.path.join(ROOT, pattern), recursive=True))
            if os.path.isfile(p)]


# ---- per-target seeds ---------------------------------------------------------

def is_request(b):
    return re.match(rb"^(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) \S", b) is not None


def authblob(sizes, extra=b""):
    """An authenticationKey blob laid out like test-authblob.c's build()."""
    out = bytearray()
    for i, n in enumerate(sizes):
        out += struct.pack(">H", n) + bytes(((i << 5) ^ j) & 0xFF for j in range(n))
    return bytes(out) + extra


REAL_SIZES = [52, 256, 142, 256, 48, 154]  # the real DPS blob's element sizes (920 bytes)


def seeds_authblob():
    return [authblob(REAL_SIZES), authblob(REAL_SIZES[:5]), authblob(REAL_SIZES, b"\x00\x00"),
            authblob([1, 1, 1, 1, 1]), authblob([1, 1, 1, 1, 1, 0]), authblob(REAL_SIZES)[:313],
            b"\x00", b"\x00\x34", b"\xff\xff" + b"\x00" * 8]


def seeds_toml():
    s = data_files("test/unit/data/**/*.toml") + data_files("conf/*.toml") + data_files("conf/*.toml.*")
    s += [b for b in test_literals("test-toml.c") if b"=" in b or b.startswith(b"[")]
    return s


def seeds_config():
    s = data_files("test/unit/data/**/*.toml") + data_files("conf/*.toml") + data_files("conf/*.toml.*")
    s += [b for b in test_literals("test-config.c") if b"=" in b and (b"[" in b or b"\n" in b)]
    return s


def seeds_http():
    # Byte 0: split step (0 = whole), byte 1 bit 0: tiny limits.
    reqs = [b for b in test_literals("test-http.c", "test-api.c") if is_request(b)]
    out = []
    for i, r in enumerate(reqs):
        out.append(bytes([0, 0]) + r)
        if i % 4 == 0:
            out.append(bytes([7, 0]) + r)
        if i % 6 == 0:
            out.append(bytes([0, 1]) + r)
    return out


ROUTES = [  # (socket bit, method, path, api-version, body) from lib/api.h's table
    (0, b"GET", b"/get_tpm_keys", b"2020-09-01", b""),
    (0, b"POST", b"/import_auth_key", b"2020-09-01", b'{"key":"' + base64.b64encode(authblob(REAL_SIZES)) + b'"}'),
    (0, b"POST", b"/sign_with_auth_key", b"2020-09-01", b'{"data":"aGVsbG8="}'),
    (1, b"GET", b"/identities/identity", b"2020-09-01", b""),
    (1, b"POST", b"/identities/device", b"2021-12-01", b'{"type":"aziot"}'),
    (1, b"GET", b"/identities/provisioning", b"2022-08-01", b""),
    (1, b"POST", b"/identities/device/reprovision", b"2020-09-01", b"{}"),
    (1, b"POST", b"/identities/device/token", b"2022-08-01", b'{"lifetime_sec":600}'),
    (1, b"GET", b"/status", b"2020-09-01", b""),
    (1, b"GET", b"/identities/modules", b"2020-09-01", b""),
    (1, b"POST", b"/identities/modules", b"2020-09-01", b'{"type":"aziot","moduleId":"$edgeHub"}'),
    (1, b"PUT", b"/identities/modules/$edgeAgent", b"2020-09-01", b'{"type":"aziot","moduleId":"$edgeAgent"}'),
    (1, b"GET", b"/identities/modules/%24edgeAgent", b"2021-12-01", b""),
    (1, b"DELETE", b"/identities/modules/m1", b"2022-08-01", b""),
    (1, b"GET", b"/trust-bundle", b"2020-09-01", b""),
]


def json_bodies():
    return [b for b in test_literals("test-api.c") if b.startswith(b"{") or b.startswith(b"[")]


def seeds_api():
    # Byte 0: bit 0 socket, bit 1 no api-version; then method\npath\nversion\nbody.
    out = [bytes([s]) + m + b"\n" + p + b"\n" + v + b"\n" + body for s, m, p, v, body in ROUTES]
    for i, body in enumerate(json_bodies()):
        s, m, p, v, _ = ROUTES[i % len(ROUTES)]
        out.append(bytes([s]) + m + b"\n" + p + b"\n" + v + b"\n" + body)
    return out


def request(m, p, v, body, extra=b""):
    target = p + (b"?api-version=" + v if v else b"")
    head = m + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + extra
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
    return head + b"\r\n" + body


def seeds_server():
    # Byte 0: bit 0 identityd socket, bit 1 TPM not ready, bit 2 key imported; then the stream.
    out = [bytes([s | 4]) + request(m, p, v, body) for s, m, p, v, body in ROUTES]
    out.append(bytes([0]) + request(*ROUTES[1][1:]) + request(*ROUTES[2][1:]) + request(*ROUTES[0][1:]))
    out.append(bytes([2]) + request(*ROUTES[0][1:]))
    out.append(bytes([1]) + request(b"GET", b"/identities/identity", None, b""))
    out.append(bytes([0]) + request(b"GET", b"/import_auth_key", b"2020-09-01", b""))
    out.append(bytes([5]) + b"POST /identities/device/token?api-version=2022-08-01 HTTP/1.1\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"lif\r\n0f\r\netime_sec\":120}\r\n0\r\n\r\n")
    for i, body in enumerate(json_bodies()[:8]):
        s, m, p, v, _ = ROUTES[(i * 2) % len(ROUTES)]
        out.append(bytes([s | 4]) + request(b"POST", p, v, body))
    return out


def seeds_dps():
    return [b for b in test_literals("test-dps.c", "test-sas.c")
            if b.startswith(b"{") or b.startswith(b"SharedAccessSignature") or re.match(rb"^\d+$", b)
            or b.startswith((b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"))]


def state_file(line):
    line = line.rstrip(b"\n") + b"\n"
    return line + b"sha256:" + hashlib.sha256(line).hexdigest().encode() + b"\n"


def seeds_state():
    # Whole files (digest included), and byte 0 odd + first line: the target appends the digest.
    lines = [b for b in test_literals("test-state.c") if b.startswith(b'{"version"') or b.startswith(b'{"hub"')]
    d64 = bytes(range(32)).hex().encode()
    good = (b'{"version":1,"hub":"myhub.azure-devices.net","deviceId":"dev-01","registrationId":"abc",'
            b'"idScope":"0ne000ABCDE","ekDigest":"' + d64 + b'","assignedAt":1700000000,'
            b'"substatus":"initialAssignment","configDigest":"' + d64 + b'"}')  # test-state.c's fill()
    out = [state_file(good), b"\x01" + good]
    for i, l in enumerate(lines):
        out.append(b"\x01" + l)
        if i % 3 == 0:
            out.append(state_file(l))
    return out


def ipc_frame(tag, *fields):
    """One tpmidd <-> tpmidd-https frame (lib/https-ipc.h): fields are
    ("u32"|"u64", int) or ("str", bytes or None for absent)."""
    payload = bytes([tag])
    for kind, v in fields:
        if kind == "u32":
            payload += struct.pack(">I", v & 0xFFFFFFFF)
        elif kind == "u64":
            payload += struct.pack(">Q", v)
        else:
            payload += struct.pack(">I", 0xFFFFFFFF) if v is None else struct.pack(">I", len(v)) + v
    return struct.pack(">I", len(payload)) + payload


def seeds_https_ipc():
    # A byte stream of frames, as the socket delivers it (test/fuzz/fuzz-https-ipc.c).
    hello = ipc_frame(1, ("u32", 3), ("str", b"/etc/ssl/certs/ca.pem"),
                      ("str", b"hub1.azure-devices.net:443:127.0.0.1:8443"), ("str", b"tpmidd/0.1.0"))
    hello_min = ipc_frame(1, ("u32", 3), ("str", None), ("str", None), ("str", b"tpmidd/0.1.0"))
    url = b"https://global.azure-devices-provisioning.net/0ne00000001/registrations/dev1/register?api-version=2021-06-01"
    body = b'{"registrationId":"dev1","tpm":{"endorsementKey":"AToAAQAL","storageRootKey":"ARgAAQAL"}}'
    put = ipc_frame(2, ("u64", 1), ("str", b"PUT"), ("str", url), ("str", None), ("str", None), ("str", body),
                    ("u32", 70000))
    get = ipc_frame(2, ("u64", 2), ("str", b"GET"), ("str", url), ("str", b"SharedAccessSignature sr=x&sig=y&se=1"),
                    ("str", None), ("str", None), ("u32", 15000))
    update = ipc_frame(2, ("u64", 3), ("str", b"PUT"), ("str", b"https://h/devices/d/modules/m?api-version=2017-11-08-preview"),
                       ("str", b"SharedAccessSignature sr=x&sig=y&se=1"), ("str", b"*"),
                       ("str", b'{"moduleId":"m","deviceId":"d"}'), ("u32", 70000))
    ok = ipc_frame(3, ("u64", 1), ("u32", 0), ("str", b""), ("u32", 202), ("str", b'{"status":"assigning"}'),
                   ("str", b"3"), ("str", None), ("str", b"Tue, 01 Dec 2026 20:38:41 GMT"), ("u64", 250000))
    err = ipc_frame(3, ("u64", 2), ("u32", -110), ("str", b"Operation timed out"), ("u32", 0), ("str", b""),
                    ("str", None), ("str", b"ServiceUnavailable"), ("str", None), ("u64", 70000000))
    cancel = ipc_frame(4, ("u64", 2))
    return [hello, hello_min, put, get, update, ok, err, cancel, hello + put + get + cancel, ok + err, put[:20],
            ok[:-3]]


def seeds_httpdate():
    # A Date header value as the helper passes it on (test/fuzz/fuzz-httpdate.c).
    return [b"Tue, 01 Dec 2026 20:38:41 GMT", b"Sun, 06 Nov 1994 08:49:37 GMT", b" Thu, 01 Jan 1970 00:00:00 GMT\t",
            b"Tue, 29 Feb 2000 23:59:59 GMT", b"Sat, 31 Dec 2016 23:59:60 GMT", b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994", b"Sun, 31 Nov 1994 08:49:37 GMT", b"", b"Sun, 06 Nov 1994 08:49:37 GMTX"]


def seeds_tcti():
    # Even first byte: a TCTI configuration string; odd: swtpm's response stream (test/fuzz/fuzz-tcti.c).
    confs = [b"", b"path=/run/swtpm/swtpm.sock", b"host=127.0.0.1,port=2321", b"port=65535", b"path=/a,host=h",
             b"port=0", b"path=", b"bogus=1", b"path=/a,"]
    hmac = bytes.fromhex("80010000002e00000000") + b"\x00\x20" + bytes(32) + bytes.fromhex("0100000000")[:0]
    resps = [bytes.fromhex("800100000010000000000000000000000000")[:16], hmac[:10 + 2 + 32 + 2],
             bytes.fromhex("80010000000a00000101"), bytes.fromhex("80010001001000000000"), b"\x80\x01\x00"]
    return [b"\x00" + c for c in confs] + [b"\x01" + r for r in resps]


def seeds_sha256():
    # Byte 0 low 4 bits: k chunk sizes follow, then the message (test/fuzz/fuzz-sha256.c).
    # NIST messages, and lengths and splits around the padding boundaries.
    nist = [b"abc", b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopq"
            b"rstnopqrstu"]
    body = bytes((i * 37 + 11) & 0xFF for i in range(300))
    out = [b"\x00"] + [b"\x00" + m for m in nist] + [b"\x01\x01" + nist[0], b"\x02\x00\x1c" + nist[1]]
    for n, splits in [(55, [55]), (56, [1, 0]), (63, [63]), (64, [0, 64]), (65, [64, 1]), (119, [55, 64]),
                      (120, [56]), (127, [3, 61]), (128, [65]), (300, [7, 13, 0, 255])]:
        out.append(bytes([len(splits)] + splits) + body[:n])
    return out


def module_literals():
    return test_literals("test-module.c")


def seeds_module_hub():
    # Byte 0 mod 3: 0 one module, 1 a list, 2 an error body (test/fuzz/fuzz-module-hub.c).
    lits = module_literals()
    objs = [b for b in lits if b.startswith(b"{")]
    lists = [b for b in lits if b.startswith(b"[")]
    errs = [b for b in objs if b"Message" in b or b"errorMessage" in b]
    out = [b"\x00" + o for o in objs] + [b"\x01" + l for l in lists] + [b"\x02" + e for e in errs]
    mod = [b for b in objs if b.startswith(b'{"moduleId":"$edgeAgent","managedBy"')]
    if mod:
        out.append(b"\x01[" + mod[0] + b',{"moduleId":"m2","deviceId":"dev-1"}]')
    return out


def seeds_keyd():
    # Byte 0 mod 4: 0 handle, 1 key, 2 error, 3 an HTTP response after a split byte (test/fuzz/fuzz-keyd.c).
    lits = module_literals()
    handles = [b for b in lits if b.startswith(b'{"keyHandle"')]
    keys = [b for b in lits if b.startswith(b'{"key"')]
    errs = [b for b in lits if b.startswith(b'{"message"')]
    resps = [b for b in lits if b.startswith(b"HTTP/")]
    out = [b"\x00" + h for h in handles] + [b"\x01" + k for k in keys] + [b"\x02" + e for e in errs]
    for r in resps:
        out.append(b"\x03" + bytes([min(len(r), 255) // 2]) + r)
    return out


def seeds_module_cache():
    # Whole files, and byte 0 odd + the JSON line: the target appends the digest (test/fuzz/fuzz-module-cache.c).
    lines = [b for b in module_literals() if b.startswith(b'{"version"')]
    good = (b'{"version":1,"hub":"hub1.azure-devices.net","deviceId":"dev-1","modules":[{"moduleId":"$edgeAgent",'
            b'"generationId":"111","principal":false},{"moduleId":"m2","generationId":"","principal":true}]}')
    out = [state_file(good), b"\x01" + good]
    for l in lines:
        out.append(b"\x01" + l)
    return out


TARGETS = {
    "module-hub": seeds_module_hub, "keyd": seeds_keyd, "module-cache": seeds_module_cache,
    "tcti": seeds_tcti,
    "authblob": seeds_authblob, "toml": seeds_toml, "config": seeds_config, "http": seeds_http,
    "api": seeds_api, "server": seeds_server, "dps": seeds_dps, "state": seeds_state,
    "https-ipc": seeds_https_ipc, "sha256": seeds_sha256, "httpdate": seeds_httpdate,
}


def pick(seeds):
    """Unique seeds within the size limit, spread over the list if too many."""
    uniq = []
    for s in seeds:
        if 0 < len(s) <= MAX_SEED_BYTES and s not in uniq:
            uniq.append(s)
    if len(uniq) > MAX_SEEDS:
        step = len(uniq) / MAX_SEEDS
        uniq = [uniq[int(i * step)] for i in range(MAX_SEEDS)]
    return {hashlib.sha1(s).hexdigest(): s for s in uniq}


def main():
    check = "--check" in sys.argv[1:]
    differ = False
    for name, fn in sorted(TARGETS.items()):
        want = pick(fn())
        d = os.path.join(OUT, name)
        have = {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)} if os.path.isdir(d) else {}
        if have == want:
            print(f"{name}: {len(want)} seeds, up to date")
            continue
        differ = True
        if check:
            print(f"{name}: differs from make-corpus.py's output")
            continue
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for f, b in want.items():
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(b)
        print(f"{name}: {len(want)} seeds written")
    return 1 if check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
