#!/usr/bin/python3
"""keyd_sim: a test stand-in for Microsoft's aziot-keyd (symmetric keys only), HTTP/1.1 over a Unix socket.

Written from iot-identity-service (commit a6b1d16) key/aziot-keyd/src/{lib.rs,error.rs,http/*.rs},
key/aziot-key-common-http/src/lib.rs, key/aziot-keys/src/key.rs and http-common/src/server.rs; the
wire format is theirs, the code is ours.

    ./keyd_sim.py serve --dir DIR [--socket PATH]

DIR holds keys.json (the keys and the handle-validation key, written atomically: a restarted sim keeps
them and its old handles stay valid), config.toml and config.d/*.toml ([[principal]] uid = N, keys =
["pattern", ...], as keyd's; re-read when a file changes, like keyd's config watcher; a file that does
not parse leaves the principals as they were), mode (see below), requests.log (one JSON object per
request: ts, uid, method, path, status, message) and ready (written once serving: {"pid","socket"}).
The socket (default DIR/keyd.sock) is mode 0666 so a client under another uid reaches it; the peer
uid comes from SO_PEERCRED as in keyd.

ROUTES (api-version=2020-09-01 or 2021-05-01 on every route)
    POST   /key                {"keyId","usage":"derive,sign"[, "keyBytes": b64]}  -> 200 {"keyHandle"}
                               creates 32 random bytes if the id has no key; keyBytes imports (replaces)
    DELETE /key                {"keyHandle"}                                       -> 204
    GET    /key/{keyId}        -> 200 {"keyHandle"}; no such key: 400 "a parameter has an invalid value"
    POST   /derivedkey         {"baseKeyHandle","derivationData": b64}             -> 200 {"keyHandle"}
    POST   /derivedkey/export  {"keyHandle"}                                       -> 200 {"key": b64}
    POST   /sign               {"keyHandle","algorithm":"HMAC-SHA256","parameters":{"message": b64}}
                                                                                   -> 200 {"signature"}
    Not here (404 "not found"): key pairs (/keypair...), /encrypt, /decrypt, /parameters.

CRYPTO (key.rs, lib.rs)
    derived key = HMAC-SHA256(base key bytes, derivationData); export returns those 32 bytes;
    /sign = HMAC-SHA256(key, message), for a derived handle with the derived key.
    keyHandle = "sr=" + b64(JSON) + "&sig=" + b64(HMAC-SHA256(handle-validation key, JSON)), JSON compact
    {"key_id":{"Key":"<id>"},"nonce":"<b64 of 64 random bytes>"} or, derived,
    {"key_id":{"Derived":["<base handle>",[<derivation bytes as numbers>]]},"nonce":...}; a fresh nonce
    each time. Nested derivation is refused.

ERRORS (http-common server.rs; body {"message": "..."}, Content-Type application/json)
    no api-version 400 "api-version not specified"; unknown one 400 'invalid api-version "X"';
    unknown path 404 "not found"; a method the route lacks 400 "method not allowed"; POST/DELETE
    without a body (or with a non-JSON Content-Type) 400 "missing request body"; a body that does not
    parse into the request 422 (serde-like text); a bad handle 400
    'parameter "handle" has an invalid value\\ncaused by: invalid handle'; no principal for a key on
    POST /key or GET /key/{id}: 401 "user U is not authorized to access the key K" (uid 0 always may).

MODE (file DIR/mode, read per connection; tests flip it with test/lib/keyd.py)
    up (default) | refuse (accept, then close without answering) | error (500 "internal error" to
    everything) | stall:SECONDS (wait, then answer normally)
"""
import argparse
import base64
import binascii
import glob
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import tomllib
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_VERSIONS = ("2020-09-01", "2021-05-01")
KEY_LEN = 32                # bytes of a generated key (aziot-keys: AES-256 / HMAC-SHA256 size)
NONCE_LEN = 64              # random bytes in a handle's nonce (lib.rs key_id_to_handle)
BODY_MAX = 1024 * 1024      # largest request body read (bytes)
IDLE_TIMEOUT = 60           # keep-alive idle timeout per connection (seconds)
LOG_MSG_MAX = 300           # characters of an error message kept in requests.log
HANDLE_KEY_ID = "handle-validation-key"
LOAD_RE = re.compile(r"^/(key|keypair)/([^/]+)$")


class KeydError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def invalid_parameter(name, cause):
    return KeydError(400, 'parameter "%s" has an invalid value\ncaused by: %s' % (name, cause))


INVALID_NONE = "a parameter has an invalid value"


def b64(b):
    return base64.b64encode(b).decode()


def compact(obj):
    """serde_json::to_string: no spaces, non-ASCII kept as UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def wildmatch(pattern, s):
    """The wildmatch crate: '*' any run (also empty), '?' one character, nothing else special."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, s, re.DOTALL) is not None


# ---------------------------------------------------------------- serde-like request decoding

class BodyError(Exception):
    pass


def _col(raw):
    return "at line 1 column %d" % len(raw)


def field(obj, raw, name, kind):
    if name not in obj:
        raise BodyError("missing field `%s` %s" % (name, _col(raw)))
    v = obj[name]
    if kind == "str" and not isinstance(v, str):
        raise BodyError("invalid type: %s, expected a string %s" % (type(v).__name__, _col(raw)))
    if kind == "bytes":
        if not isinstance(v, str):
            raise BodyError("invalid type: %s, expected a base64-encoded string %s" % (type(v).__name__, _col(raw)))
        try:
            return base64.b64decode(v, validate=True)
        except binascii.Error as e:
            raise BodyError("%s %s" % (e, _col(raw))) from None
    return v


def parse_json(raw):
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise BodyError("%s" % e) from None
    if not isinstance(obj, dict):
        raise BodyError("invalid type: %s, expected struct %s" % (type(obj).__name__, _col(raw)))
    return obj


# ---------------------------------------------------------------- keys + handles

class Keys:
    """Symmetric keys by id, persisted in DIR/keys.json."""

    def __init__(self, d):
        self.path = os.path.join(d, "keys.json")
        self.lock = threading.RLock()
        try:
            with open(self.path) as f:
                st = json.load(f)
        except FileNotFoundError:
            st = {"keys": {}}
        self.keys = {k: {"bytes": base64.b64decode(v["bytes"]), "usage": v.get("usage", "")}
                     for k, v in st["keys"].items()}
        if HANDLE_KEY_ID not in self.keys:   # keyd: create_key_if_not_exists("handle-validation-key")
            self.keys[HANDLE_KEY_ID] = {"bytes": os.urandom(KEY_LEN), "usage": "sign"}
            self.save()

    def save(self):
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": {k: {"bytes": b64(v["bytes"]), "usage": v["usage"]} for k, v in self.keys.items()}},
                      f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def get(self, key_id):
        with self.lock:
            k = self.keys.get(key_id)
            if k is None:
                raise KeydError(400, INVALID_NONE)
            return k["bytes"]

    def create_if_not_exists(self, key_id, usage):
        with self.lock:
            if key_id not in self.keys:
                self.keys[key_id] = {"bytes": os.urandom(KEY_LEN), "usage": usage}
                self.save()

    def import_key(self, key_id, data, usage):
        with self.lock:
            self.keys[key_id] = {"bytes": bytes(data), "usage": usage}
            self.save()

    def delete(self, key_id):
        with self.lock:
            if self.keys.pop(key_id, None) is not None:
                self.save()

    def make_handle(self, key_id):
        """key_id: {"Key": id} or {"Derived": [base handle, [bytes]]}."""
        sr = compact({"key_id": key_id, "nonce": b64(os.urandom(NONCE_LEN))})
        sig = hmac.new(self.get(HANDLE_KEY_ID), sr.encode(), hashlib.sha256).digest()
        return "sr=%s&sig=%s" % (b64(sr.encode()), b64(sig))

    def parse_handle(self, handle):
        """The key_id of a valid handle; KeydError 400 for any other string (lib.rs key_handle_to_id)."""
        bad = invalid_parameter("handle", "invalid handle")
        if not isinstance(handle, str):
            raise bad
        sr = sig = None
        for p in handle.split("&"):
            try:
                if p.startswith("sr="):
                    sr = base64.b64decode(p[3:], validate=True).decode("utf-8")
                elif p.startswith("sig="):
                    sig = base64.b64decode(p[4:], validate=True)
            except (binascii.Error, UnicodeDecodeError):
                raise bad from None
        if sr is None or sig is None:
            raise bad
        want = hmac.new(self.get(HANDLE_KEY_ID), sr.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, sig):
            raise bad
        try:
            j = json.loads(sr)
            kid = j["key_id"]
            if not isinstance(j.get("nonce"), str) or not isinstance(kid, dict) or len(kid) != 1:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise bad from None
        (kind, val), = kid.items()
        if kind in ("Key", "KeyPair") and isinstance(val, str):
            return kind, val
        if kind == "Derived" and isinstance(val, list) and len(val) == 2 and isinstance(val[0], str) and \
                isinstance(val[1], list) and all(isinstance(x, int) and 0 <= x <= 255 for x in val[1]):
            base_kind, base_id = self.parse_handle(val[0])[:2]
            if base_kind == "Derived":
                raise invalid_parameter("handle", "nested derived keys are not supported, "
                                                  "import the outer derived key first")
            return "Derived", base_id, bytes(val[1]), val[0]
        raise bad


# ---------------------------------------------------------------- principals

class Principals:
    """[[principal]] uid/keys from DIR/config.toml and DIR/config.d/*.toml, re-read when they change."""

    def __init__(self, d):
        self.dir = d
        self.stamp = None
        self.map = {}
        self.lock = threading.Lock()

    def _files(self):
        main = os.path.join(self.dir, "config.toml")
        return ([main] if os.path.exists(main) else []) + sorted(glob.glob(os.path.join(self.dir, "config.d",
                                                                                         "*.toml")))

    def current(self):
        with self.lock:
            files = self._files()
            stamp = []
            for f in files:
                try:
                    st = os.stat(f)
                    stamp.append((f, st.st_mtime_ns, st.st_size))
                except FileNotFoundError:
                    pass
            if stamp != self.stamp:
                new = {}
                try:
                    for f, _, _ in stamp:
                        with open(f, "rb") as fh:
                            doc = tomllib.load(fh)
                        for p in doc.get("principal", []):
                            uid, keys = p.get("uid"), p.get("keys")
                            if not isinstance(uid, int) or not isinstance(keys, list) or \
                                    not all(isinstance(k, str) for k in keys):
                                raise ValueError("%s: [[principal]] needs uid (integer) and keys (strings)" % f)
                            new.setdefault(uid, []).extend(keys)
                    self.map = new
                except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
                    # keyd's watcher keeps the old config when the new one does not load
                    sys.stderr.write("keyd_sim: config not reloaded: %s\n" % e)
                self.stamp = stamp
            return self.map

    def authorize(self, uid, key_id):
        if uid == 0:
            return True
        return any(wildmatch(p, key_id) for p in self.current().get(uid, []))


# ---------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keyd_sim"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        self.connection.settimeout(IDLE_TIMEOUT)

    def handle(self):
        mode = self.server.mode()
        if mode == "refuse":
            self.server.log_request(self.server.peer_uid(self.connection), "-", "-", 0, "refused (mode refuse)")
            return
        if mode.startswith("stall:"):
            try:
                time.sleep(float(mode[6:]))
            except ValueError:
                pass
        super().handle()

    def _send(self, status, obj=None):
        data = compact(obj).encode() if obj is not None else b""
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = self.headers.get("Content-Length")
        if n is None:
            if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                return self._chunked()
            return b""
        try:
            n = int(n)
        except ValueError:
            n = -1
        if not 0 <= n <= BODY_MAX:
            self.close_connection = True
            raise KeydError(400, "invalid Content-Length")
        return self.rfile.read(n)

    def _chunked(self):
        out = b""
        while True:
            line = self.rfile.readline(100)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline(100)
                return out
            out += self.rfile.read(size)
            self.rfile.readline(100)
            if len(out) > BODY_MAX:
                self.close_connection = True
                raise KeydError(400, "request body too large")

    def _dispatch(self):
        uid = self.server.peer_uid(self.connection)
        status, message = 500, None
        try:
            raw = self._body()
            if self.server.mode() == "error":
                raise KeydError(500, "internal error")
            status, out = self._route(uid, raw)
            self._send(status, out)
        except KeydError as e:
            status, message = e.status, e.message
            self._send(e.status, {"message": e.message})
        self.server.log_request(uid, self.command, self.path, status, message)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def _route(self, uid, raw):
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
        versions = [v for k, v in q if k == "api-version"]
        if not versions:
            raise KeydError(400, "api-version not specified")
        if versions[-1] not in API_VERSIONS:
            raise KeydError(400, "invalid api-version %s" % json.dumps(versions[-1]))
        path = u.path
        m = LOAD_RE.match(path)
        if path == "/key":
            route = "key"
        elif path in ("/derivedkey", "/derivedkey/export", "/sign"):
            route = path[1:]
        elif m:
            route = "load"
        else:
            raise KeydError(404, "not found")
        method = self.command
        if method not in ("GET", "POST", "PUT", "DELETE"):
            raise KeydError(400, "method not allowed")
        if method == "PUT":     # no keyd route takes PUT; the body is still read and checked first
            ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
            if ctype != "application/json":
                raise KeydError(415, "request body must be application/json")
            try:
                json.loads(raw)
            except ValueError as e:
                raise KeydError(422, str(e)) from None
            raise KeydError(400, "method not allowed")
        body = None
        if method in ("POST", "DELETE") and raw:
            ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
            if ctype == "application/json":
                try:
                    body = (parse_json(raw), raw)
                except BodyError as e:
                    raise KeydError(422, str(e)) from None
        try:
            return self._handle(route, method, uid, body, m)
        except BodyError as e:
            raise KeydError(422, str(e)) from None

    def _need(self, body):
        if body is None:
            raise KeydError(400, "missing request body")
        return body

    def _handle(self, route, method, uid, body, m):
        keys, principals = self.server.keys, self.server.principals
        if route == "key" and method == "POST":
            obj, raw = self._need(body)
            key_id = field(obj, raw, "keyId", "str")
            usage = field(obj, raw, "usage", "str")
            for u in usage.split(","):
                if u not in ("derive", "encrypt", "sign"):
                    raise BodyError("invalid value: string %s, expected KeyUsage %s" % (json.dumps(u), _col(raw)))
            data = field(obj, raw, "keyBytes", "bytes") if obj.get("keyBytes") is not None else None
            if not principals.authorize(uid, key_id):
                raise KeydError(401, "user %d is not authorized to access the key %s" % (uid, key_id))
            if "\0" in key_id:
                raise invalid_parameter("id", "nul byte found in provided data at position: %d" % key_id.index("\0"))
            if data is None:
                keys.create_if_not_exists(key_id, usage)
            else:
                keys.import_key(key_id, data, usage)
            return 200, {"keyHandle": keys.make_handle({"Key": key_id})}
        if route == "key" and method == "DELETE":
            obj, raw = self._need(body)
            h = keys.parse_handle(field(obj, raw, "keyHandle", "str"))
            if h[0] != "Key":
                raise invalid_parameter("handle", "handle is not for a key")
            keys.delete(h[1])
            return 204, None
        if route == "load" and method == "GET":
            typ, key_id = m.group(1), urllib.parse.unquote(m.group(2))
            if not principals.authorize(uid, key_id):
                raise KeydError(401, "user %d is not authorized to access the key %s" % (uid, key_id))
            if typ == "keypair":
                raise KeydError(400, INVALID_NONE)      # this sim has no key pairs
            keys.get(key_id)
            return 200, {"keyHandle": keys.make_handle({"Key": key_id})}
        if route == "load" and method == "POST":
            obj, raw = self._need(body)
            frm = field(obj, raw, "from", "str")
            if frm == urllib.parse.unquote(m.group(2)):
                raise KeydError(400, "source and destination for move are identical")
            if m.group(1) != "keypair":
                raise KeydError(400, "invalid type %s" % json.dumps(m.group(1)))
            raise KeydError(400, INVALID_NONE)
        if route == "derivedkey" and method == "POST":
            obj, raw = self._need(body)
            base = field(obj, raw, "baseKeyHandle", "str")
            data = field(obj, raw, "derivationData", "bytes")
            h = keys.parse_handle(base)
            if h[0] == "Derived":
                raise invalid_parameter("handle", "nested derived keys are not supported, "
                                                  "import the outer derived key first")
            return 200, {"keyHandle": keys.make_handle({"Derived": [base, list(data)]})}
        if route == "derivedkey/export" and method == "POST":
            obj, raw = self._need(body)
            h = keys.parse_handle(field(obj, raw, "keyHandle", "str"))
            if h[0] != "Derived":
                raise invalid_parameter("handle", "handle is not for a derived key")
            return 200, {"key": b64(derive(keys.get(h[1]), h[2]))}
        if route == "sign" and method == "POST":
            obj, raw = self._need(body)
            handle = field(obj, raw, "keyHandle", "str")
            alg = field(obj, raw, "algorithm", "str")
            if alg not in ("ECDSA", "HMAC-SHA256"):
                raise BodyError("unknown variant `%s`, expected `ECDSA` or `HMAC-SHA256` %s" % (alg, _col(raw)))
            params = field(obj, raw, "parameters", None)
            if not isinstance(params, dict):
                raise BodyError("invalid type: %s, expected struct variant %s" % (type(params).__name__, _col(raw)))
            msg = field(params, raw, "message" if alg == "HMAC-SHA256" else "digest", "bytes")
            h = keys.parse_handle(handle)
            if alg != "HMAC-SHA256" or h[0] == "KeyPair":
                raise invalid_parameter("mechanism", "mechanism cannot be used with this key type")
            key = keys.get(h[1]) if h[0] == "Key" else derive(keys.get(h[1]), h[2])
            return 200, {"signature": b64(hmac.new(key, msg, hashlib.sha256).digest())}
        raise KeydError(400, "method not allowed")


def derive(base_key, data):
    """aziot-keys key.rs derive_key_common: HMAC-SHA256 keyed with the base key over the data."""
    return hmac.new(base_key, data, hashlib.sha256).digest()


class Server(ThreadingHTTPServer):
    address_family = socket.AF_UNIX
    daemon_threads = True

    def __init__(self, path, d):
        self.dir = d
        self.keys = Keys(d)
        self.principals = Principals(d)
        self.log_lock = threading.Lock()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        super().__init__(path, Handler)
        os.chmod(path, 0o666)

    def server_bind(self):
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "localhost", 0

    def get_request(self):
        sock, _ = self.socket.accept()
        return sock, ("keyd", 0)

    @staticmethod
    def peer_uid(conn):
        try:
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
            return uid
        except OSError:
            return -1

    def mode(self):
        try:
            with open(os.path.join(self.dir, "mode")) as f:
                return f.read().strip() or "up"
        except FileNotFoundError:
            return "up"

    def log_request(self, uid, method, path, status, message):
        line = compact({"ts": time.time(), "uid": uid, "method": method, "path": path, "status": status,
                        "message": (message or "")[:LOG_MSG_MAX] or None}) + "\n"
        with self.log_lock:
            with open(os.path.join(self.dir, "requests.log"), "a") as f:
                f.write(line)


def serve(args):
    os.makedirs(os.path.join(args.dir, "config.d"), exist_ok=True)
    sock = args.socket or os.path.join(args.dir, "keyd.sock")
    srv = Server(sock, args.dir)
    ready = os.path.join(args.dir, "ready")
    with open(ready + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "socket": sock}, f)
    os.replace(ready + ".tmp", ready)
    print("keyd_sim: serving on %s" % sock, flush=True)

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        for p in (sock, ready):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="keyd_sim.py", description="aziot-keyd stand-in for tests",
                                epilog="See the module docstring for routes and formats.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run in the foreground")
    s.add_argument("--dir", required=True, help="state + config dir")
    s.add_argument("--socket", help="socket path (default DIR/keyd.sock)")
    s.set_defaults(fn=serve)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
