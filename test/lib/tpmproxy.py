"""A TPM command proxy for the integration tests: a Unix socket for the
daemon's swtpm TCTI (tcti = "swtpm:path=" + proxy.path) that forwards each
command to swtpm, one upstream connection per client connection. A subclass
answers a command itself (answer(): the command never reaches swtpm, as if
the TPM had not run it) or acts after swtpm answered and before the answer
goes back (before_reply(): e.g. a delay)."""
import socket
import struct
import threading

TPM_HEADER_BYTES = 10  # tag (2), size (4), command or response code (4)


def read_exact(s, n):
    """n bytes from s, or None when the peer closed first."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class TpmProxy:
    def __init__(self, upstream, path):
        self.upstream, self.path = upstream, path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def answer(self, cc, body):
        """The whole response to send instead of forwarding command cc (its
        parameters in body), or None to forward it."""
        return None

    def before_reply(self, cc, body):
        """Called once swtpm answered command cc, before the answer goes back."""

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
                hdr = read_exact(c, TPM_HEADER_BYTES)
                if hdr is None:
                    return
                _, size, cc = struct.unpack(">HII", hdr)
                body = read_exact(c, size - TPM_HEADER_BYTES)
                if body is None:
                    return
                resp = self.answer(cc, body)
                if resp is not None:
                    c.sendall(resp)
                    continue
                if up is None:
                    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    up.connect(self.upstream)
                up.sendall(hdr + body)
                rh = read_exact(up, TPM_HEADER_BYTES)
                rbody = read_exact(up, struct.unpack(">HII", rh)[1] - TPM_HEADER_BYTES) if rh else None
                if rbody is None:
                    return  # swtpm went away: so does the client's connection
                self.before_reply(cc, body)
                c.sendall(rh + rbody)
        except OSError:
            return
        finally:
            c.close()
            if up is not None:
                up.close()

    def close(self):
        self.srv.close()
