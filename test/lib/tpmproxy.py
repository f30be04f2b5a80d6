"""A proxy between tpmidd and swtpm that reads TPM command codes, so a test
can make the TPM fail in chosen ways: answer a command with a response code
in swtpm's place (tpm-retry), or drop the connection in the middle of a
command, after it reached the TPM and before its response (tpm-recovery:
how a TPM that dies, or a simulator that is killed, looks to the daemon).

One upstream connection per client connection, as swtpm allows one client
at a time. While swtpm is down the proxy accepts and closes at once (the
daemon sees a TCTI I/O error, as with a missing TPM)."""
import socket
import struct
import threading


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class Proxy:
    """rules[cc]: response codes for the next commands with that code
    (consumed in order) instead of forwarding; drops[cc]: how many of the
    next commands with that code are forwarded and then cut off (the
    response is read from swtpm and thrown away, both connections closed),
    calling on_drop(cc) each time (e.g. to stop swtpm)."""

    def __init__(self, upstream, path):
        self.upstream, self.path = upstream, path
        self.rules, self.drops = {}, {}
        self.injected, self.dropped, self.seen = [], [], []
        self.on_drop = None
        self.down = False  # True: behave as if swtpm were gone (close every connection at once)
        self.lock = threading.Lock()
        self.conns = set()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def inject(self, cc, codes):
        with self.lock:
            self.rules.setdefault(cc, []).extend(codes)

    def drop_after(self, cc, n=1):
        with self.lock:
            self.drops[cc] = self.drops.get(cc, 0) + n

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        up = None
        try:
            while True:
                hdr = read_exact(c, 10)
                if hdr is None:
                    return
                tag, size, cc = struct.unpack(">HII", hdr)
                body = read_exact(c, size - 10)
                if body is None:
                    return
                with self.lock:
                    self.seen.append(cc)
                    codes = self.rules.get(cc)
                    rc = codes.pop(0) if codes else None
                    if rc is not None:
                        self.injected.append((cc, rc))
                    drop = rc is None and self.drops.get(cc, 0) > 0
                    if drop:
                        self.drops[cc] -= 1
                        self.dropped.append(cc)
                if rc is not None:
                    c.sendall(struct.pack(">HII", 0x8001, 10, rc))
                    continue
                if self.down:
                    return
                if up is None:
                    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    up.connect(self.upstream)  # swtpm down: OSError, the client's connection closes
                up.sendall(hdr + body)
                rh = read_exact(up, 10)
                rbody = read_exact(up, struct.unpack(">HII", rh)[1] - 10) if rh else None
                if rbody is None:
                    return  # swtpm went away: so does the client's connection
                if drop:
                    self.down = True  # from here on the TPM is gone, until the test says otherwise
                    up.close()
                    up = None
                    if self.on_drop:
                        self.on_drop(cc)
                    return  # mid-command: the command ran, its response never comes
                c.sendall(rh + rbody)
        except OSError:
            return
        finally:
            c.close()
            if up is not None:
                up.close()

    def close(self):
        self.srv.close()
