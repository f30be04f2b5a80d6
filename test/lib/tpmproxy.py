"""A TPM command proxy for the integration tests: a Unix socket for the
daemon's swtpm TCTI (tcti = "swtpm:path=" + proxy.path) that forwards each
command to swtpm, one upstream connection per client connection, and parses
the command codes on the way. It counts the commands that swtpm ran, and can
cut the line right after one of them, as a power cut would: swtpm has run
the command (an NV write is done), tpmidd never hears the answer, and every
later command of that daemon is dropped unsent. A subclass may answer a
command itself (answer(): the command never reaches swtpm, as if the TPM had
not run it) or act after swtpm answered and before the answer goes back
(before_reply(): e.g. a delay).

    proxy = TpmProxy(tpm.sock, path)
    daemon = Daemon(proxy.tpm_for(tpm), sim)    # tpmidd's [tpm] tcti is the proxy
    proxy.cut_after(CC_EVICT_CONTROL, 3)          # the 3rd EvictControl from now
    proxy.wait_cut(timeout)                       # it ran; the line is dead
    proxy.restore()                               # the next daemon gets through
"""
import os
import socket
import struct
import threading
import time

CC_EVICT_CONTROL = 0x120
CC_NV_WRITE = 0x137
CC_CREATE_PRIMARY = 0x131
CC_FLUSH_CONTEXT = 0x165
CC_GET_CAPABILITY = 0x17A
CC_READ_PUBLIC = 0x173
CC_START_AUTH_SESSION = 0x176
CC_POLICY_SECRET = 0x151
CC_HMAC = 0x155
CC_IMPORT = 0x156
CC_LOAD = 0x157
CC_ACTIVATE_CREDENTIAL = 0x147
TPM_HEADER_BYTES = 10  # tag (2), size (4), command or response code (4)
NV_WRITE_CCS = (CC_EVICT_CONTROL, CC_NV_WRITE)  # commands that write the TPM's NV memory

# A discrete TPM's time per command, in ms (HACKING.md "The modelled TPM"
# gives the sources and says which values are estimates). Commands not
# listed take MODEL_DEFAULT_MS.
DISCRETE_TPM_MODEL_MS = {
    CC_HMAC: 12,
    CC_ACTIVATE_CREDENTIAL: 180,
    CC_IMPORT: 140,
    CC_LOAD: 35,
    CC_EVICT_CONTROL: 60,
    CC_NV_WRITE: 60,
    CC_CREATE_PRIMARY: 6000,
    CC_START_AUTH_SESSION: 15,
    CC_POLICY_SECRET: 10,
    CC_READ_PUBLIC: 5,
    CC_GET_CAPABILITY: 3,
    CC_FLUSH_CONTEXT: 3,
}
MODEL_DEFAULT_MS = 5


def read_exact(s, n):
    """n bytes from s, or None when the peer closed first."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class _ProxiedTpm:
    """The harness's Swtpm with tcti pointing at the proxy (everything else,
    e.g. tpm.tool() for tpm2-tools, still goes to swtpm directly)."""

    def __init__(self, tpm, tcti):
        self._tpm, self.tcti = tpm, tcti

    def __getattr__(self, name):
        return getattr(self._tpm, name)


def modelled_busy_s(log, model=None):
    """Seconds a discrete TPM (DISCRETE_TPM_MODEL_MS) would be busy with the
    commands in log (command codes)."""
    model = DISCRETE_TPM_MODEL_MS if model is None else model
    return sum(model.get(cc, MODEL_DEFAULT_MS) for cc in log) / 1000.0


class TpmProxy:
    def __init__(self, upstream, path, model=None, scale=1.0):
        """model: {command code: ms} (DISCRETE_TPM_MODEL_MS) to delay each
        command by as a discrete TPM would take, times scale; None: no delay."""
        self.upstream, self.path = upstream, path
        self.model, self.scale = model, scale
        self.lock = threading.Lock()
        self.tpm_lock = threading.Lock()  # one command at a time, as one TPM chip runs them
        self.counts = {}            # command code -> commands swtpm ran
        self.log = []               # command codes swtpm answered (an error too), in order
        self.busy_s = 0.0           # modelled TPM time of those commands
        self.timeline = []          # (start, end, command code) on time.monotonic(), modelled time included
        self._cut_cc = None         # cut the line after the n-th command cc from now ...
        self._cut_left = 0
        self._cut_ran = True
        self.cut = threading.Event()  # ... and it happened: nothing reaches swtpm until restore()
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

    @property
    def tcti(self):
        return "swtpm:path=" + self.path

    def tpm_for(self, tpm):
        return _ProxiedTpm(tpm, self.tcti)

    def count(self, cc):
        with self.lock:
            return self.counts.get(cc, 0)

    def reset_counts(self):
        with self.lock:
            self.counts = {}
            self.log = []
            self.busy_s = 0.0
            self.timeline = []

    def total(self):
        """Commands swtpm ran since the last reset."""
        with self.lock:
            return len(self.log)

    def nv_writes(self):
        with self.lock:
            return sum(1 for cc in self.log if cc in NV_WRITE_CCS)

    def model_ms(self, cc):
        if self.model is None:
            return 0.0
        return self.model.get(cc, MODEL_DEFAULT_MS) * self.scale

    def cut_after(self, cc, n, ran=True):
        """After swtpm ran the n-th command cc from now (ran=False: instead of
        sending it to swtpm), drop the connection without an answer, and every
        later command."""
        assert n >= 1
        with self.lock:
            self._cut_cc, self._cut_left, self._cut_ran = cc, n, ran
            self.cut.clear()

    def wait_cut(self, timeout):
        return self.cut.wait(timeout)

    def restore(self):
        with self.lock:
            self._cut_cc, self._cut_left = None, 0
            self.cut.clear()

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
                if body is None or self.cut.is_set():
                    return  # the power is off: the command never reaches the TPM
                with self.lock:
                    if cc == self._cut_cc and not self._cut_ran and self._cut_left == 1:
                        self._cut_cc = None
                        self.cut.set()
                        return  # cut just before this one
                    if cc == self._cut_cc and not self._cut_ran:
                        self._cut_left -= 1
                resp = self.answer(cc, body)
                if resp is not None:
                    c.sendall(resp)
                    continue
                if up is None:
                    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    up.connect(self.upstream)
                with self.tpm_lock:
                    t0 = time.monotonic()
                    up.sendall(hdr + body)
                    rh = read_exact(up, TPM_HEADER_BYTES)
                    rbody = read_exact(up, struct.unpack(">HII", rh)[1] - TPM_HEADER_BYTES) if rh else None
                    # the chip is busy for the modelled time, swtpm's own included
                    left = self.model_ms(cc) / 1000.0 - (time.monotonic() - t0)
                    if left > 0:
                        time.sleep(left)
                    t1 = time.monotonic()
                if rbody is None:
                    return  # swtpm went away: so does the client's connection
                ok = struct.unpack(">I", rh[6:10])[0] == 0
                with self.lock:
                    # every command the TPM answered costs its time, an error too
                    self.log.append(cc)
                    self.busy_s += self.model_ms(cc) / 1000.0
                    self.timeline.append((t0, t1, cc))
                    if ok:
                        self.counts[cc] = self.counts.get(cc, 0) + 1
                    if ok and cc == self._cut_cc and self._cut_ran:
                        self._cut_left -= 1
                        if self._cut_left == 0:
                            self._cut_cc = None
                            self.cut.set()
                if self.cut.is_set():
                    return  # swtpm ran it; the answer is lost with the line
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
        try:
            os.unlink(self.path)
        except OSError:
            pass


def wait_idle(proxy, cc, quiet_s=1.0, timeout=30):
    """Wait until no command cc reached swtpm for quiet_s seconds."""
    deadline = time.time() + timeout
    last, since = proxy.count(cc), time.time()
    while time.time() < deadline:
        time.sleep(0.1)
        n = proxy.count(cc)
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= quiet_s:
            return n
    raise AssertionError("TPM command 0x%x still running after %d s" % (cc, timeout))
