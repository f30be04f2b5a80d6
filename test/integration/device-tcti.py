#!/usr/bin/python3
"""The production TCTI, libtss2-tcti-device ("device:PATH", what every device
in the field uses for /dev/tpmrm0), end to end: start, import, sign and a
whole provisioning, with tpmidd running as a user that the shipped udev rule
admits and the node owned as that rule sets it; a node the user may not open
(503 with the reason, then recovery once the mode is fixed).

The node is test/devtpm's FUSE stand-in for /dev/tpmrm0 forwarding to swtpm
(harness.TpmDevice); node_like_kernel checks it behaves like the kernel's
tpmrm device for what libtss2-tcti-device does (O_NONBLOCK open, one write per
command, poll, partial reads) and for sizes, a write before the response was
read, a read before the response is there and a second open while a command
is in flight."""
import base64
import errno
import grp
import json
import os
import pwd
import select
import socket
import stat
import struct
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
import harness  # noqa: E402
from harness import TpmDevice  # noqa: E402

harness.need("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_readpublic", "tpm2_getcap", "setpriv")
why = harness.devtpm_unavailable()
if why:
    harness.skip("no TPM device stand-in: " + why)
if os.geteuid() != 0:
    harness.skip("needs root: the daemon runs as the udev rule's user, and the node's owner is set")

import authblob  # noqa: E402
import broker  # noqa: E402
from daemon import Daemon as DpsDaemon, HUB1, HUB2, Sim, wait_for  # noqa: E402

R = harness.Runner("device-tcti")
API = broker.API
TPM_BUFSIZE = 4096


def get_random(n):
    """TPM2_GetRandom(n): 12 bytes; its response is 12 + n bytes."""
    return struct.pack(">HIIH", 0x8001, 12, 0x17B, n)


def service_user():
    """(uid, gid, supplementary gids, description) of a user the udev rule
    admits, as tpmidd.service runs it: the rule's owner (aziottpm) if it
    exists, else nobody, in the rule's group (SupplementaryGroups=tss)."""
    owner, group, _ = harness.udev_tpmrm_attrs()
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise harness.SkipCase("no group %s here (Debian's tpm-udev creates it)" % group)
    try:
        u = pwd.getpwnam(owner)
        return u.pw_uid, u.pw_gid, [gid], "%s in group %s" % (owner, group)
    except KeyError:
        u = pwd.getpwnam("nobody")
        return u.pw_uid, u.pw_gid, [gid], "nobody in group %s (no user %s here)" % (group, owner)


def setpriv(uid, gid, groups):
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid,
            "--groups=" + ",".join(str(g) for g in groups) if groups else "--clear-groups"]


def chown_tree(path, uid, gid):
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for f in files:
            os.chown(os.path.join(root, f), uid, gid)


def open_fds(pid, path):
    """How many descriptors of process pid are open on path."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == path:
                n += 1
        except OSError:
            pass
    return n


def readable(fd, timeout_ms):
    """poll() the node for POLLIN as libtss2-tcti-device does; revents or 0."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    ev = p.poll(timeout_ms)
    return ev[0][1] if ev else 0


def events(fd):
    """What poll() reports now for POLLIN | POLLOUT."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLOUT)
    ev = p.poll(0)
    return ev[0][1] if ev else 0


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


class HoldSwtpm:
    """Holds swtpm's one connection, so commands queue behind it (in flight)."""

    def __init__(self, tpm):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(tpm.sock)
        # One command answered on this connection proves swtpm serves it now.
        self.s.sendall(get_random(1))
        got = b""
        while len(got) < 13:
            got += self.s.recv(64)

    def release(self):
        self.s.close()


@R.case
def node_like_kernel():
    with harness.Swtpm() as tpm, TpmDevice(tpm) as dev:
        owner, group, mode = harness.udev_tpmrm_attrs()
        st = os.stat(dev.path)
        assert (st.st_uid, st.st_gid) == harness.udev_ids(owner, group), st
        assert stat.S_IMODE(st.st_mode) == mode, oct(st.st_mode)

        fd = os.open(dev.path, os.O_RDWR | os.O_NONBLOCK)  # as libtss2-tcti-device opens it
        try:
            assert os.read(fd, TPM_BUFSIZE) == b"", "a read with no command must return 0 bytes"
            assert events(fd) == select.POLLOUT, events(fd)
            # sizes: the kernel's TPM_BUFSIZE, at least 6 bytes, no fewer than the header says
            assert errno_of(os.write, fd, b"\x80\x01" + struct.pack(">I", TPM_BUFSIZE + 1) +
                            bytes(TPM_BUFSIZE - 5)) == errno.E2BIG
            assert errno_of(os.write, fd, b"\x80\x01\x00\x00\x00") == errno.EINVAL
            assert errno_of(os.write, fd, get_random(8)[:11]) == errno.EINVAL
            # one command, its response in two reads (the TCTI reads the header first)
            assert os.write(fd, get_random(8)) == 12
            assert readable(fd, 5000) & select.POLLIN
            # a second command before the response was read: EBUSY
            assert errno_of(os.write, fd, get_random(8)) == errno.EBUSY
            head = os.read(fd, 10)
            tag, size, rc = struct.unpack(">HII", head)
            assert (tag, size, rc) == (0x8001, 20, 0), (tag, size, rc)
            rest = os.read(fd, TPM_BUFSIZE)
            assert len(rest) == 10 and rest[:2] == b"\x00\x08", rest
            assert os.read(fd, TPM_BUFSIZE) == b"" and events(fd) == select.POLLOUT
            # after a partial read a new command may go (the rest is dropped)
            assert os.write(fd, get_random(4)) == 12
            assert readable(fd, 5000) & select.POLLIN
            assert len(os.read(fd, 4)) == 4
            assert os.write(fd, get_random(2)) == 12
            assert readable(fd, 5000) & select.POLLIN
            assert len(os.read(fd, TPM_BUFSIZE)) == 14

            # in flight: swtpm is busy with another client, the command waits
            hold = HoldSwtpm(tpm)
            try:
                assert os.write(fd, get_random(8)) == 12
                time.sleep(0.2)
                assert events(fd) == select.POLLOUT, "a response while swtpm served someone else"
                assert os.read(fd, TPM_BUFSIZE) == b"", "a read before the response is there returns 0"
                assert errno_of(os.write, fd, get_random(8)) == errno.EBUSY
                # a second open meanwhile works (tpmrm, not the exclusive tpm0) and queues
                fd2 = os.open(dev.path, os.O_RDWR | os.O_NONBLOCK)
                assert os.write(fd2, get_random(16)) == 12
                # and a third, closed with its command still in flight
                fd3 = os.open(dev.path, os.O_RDWR | os.O_NONBLOCK)
                assert os.write(fd3, get_random(1)) == 12
                os.close(fd3)
            finally:
                hold.release()
            assert readable(fd, 10000) & select.POLLIN and readable(fd2, 10000) & select.POLLIN
            r1, r2 = os.read(fd, TPM_BUFSIZE), os.read(fd2, TPM_BUFSIZE)
            assert len(r1) == 20 and len(r2) == 28, "each file gets the response to its own command"
            os.close(fd2)
        finally:
            os.close(fd)
        # without O_NONBLOCK write() returns after the response is there
        fd = os.open(dev.path, os.O_RDWR)
        try:
            assert os.write(fd, get_random(8)) == 12
            assert readable(fd, 0) & select.POLLIN
            assert len(os.read(fd, TPM_BUFSIZE)) == 20
        finally:
            os.close(fd)
        # libtss2-tcti-device itself, through tpm2-tools
        out = harness.run(["tpm2_getrandom", "-T", dev.tcti, "--hex", "8"]).stdout
        assert len(out.strip()) == 16, out
        assert tpm.transient_handles() == []


@R.case
def start_import_sign_as_service_user():
    """tpmidd as the rule's user, the node as the rule sets it: keys equal
    tpm2-tools', import and sign (on the loop and on the thread)."""
    uid, gid, groups, who = service_user()
    print("   daemon runs as " + who)
    with harness.Swtpm() as tpm, TpmDevice(tpm) as dev:
        work = harness.tmpdir("tpmidd-dev-")
        d = broker.Daemon(tpm, workdir=work, tcti=dev.tcti, argv_prefix=setpriv(uid, gid, groups))
        chown_tree(work, uid, gid)
        with d, broker.Client(d.sock) as c:
            assert open_fds(d.proc.pid, dev.path) == 1, "tpmidd does not hold the device node open"
            ek, srk = c.keys()
            ekpub = os.path.join(work, "ek.pub")
            tpm.tool("tpm2_readpublic", "-c", "0x81010001", "-o", ekpub)
            assert ek == open(ekpub, "rb").read(), "EK through the device differs from tpm2-tools' on swtpm"
            blob, key = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob)[0] == 200
            for data in (b"short", b"x" * 2000):  # one HMAC on the loop, a sequence on the thread
                assert c.sign(data) == (200, broker.hmac_sha256(key, data)), data[:10]
            for i in range(50):
                data = b"%d" % i
                assert c.sign(data) == (200, broker.hmac_sha256(key, data))
        assert tpm.transient_handles() == [] and tpm.loaded_sessions() == []


@R.case
def device_error_recovers():
    """read() on the node fails once (how the kernel reports a TPM timeout):
    that request fails, and the next one works, on the loop's asynchronous
    path, on the worker thread and in an import (no BAD_SEQUENCE after)."""
    with harness.Swtpm() as tpm, TpmDevice(tpm) as dev:
        d = broker.Daemon(tpm, tcti=dev.tcti)
        with d, broker.Client(d.sock) as c:
            ek, srk = c.keys()
            blob, key = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob)[0] == 200
            for data in (b"short", b"y" * 2000):  # loop (one HMAC), thread (a sequence)
                assert c.sign(data) == (200, broker.hmac_sha256(key, data))
                dev.fail_next()
                st, body = c.sign(data)
                assert st in (500, 503) and b"lost the connection to the TPM" in body, (st, body)
                assert c.sign(data) == (200, broker.hmac_sha256(key, data)), "no recovery after one device error"
            dev.fail_next()
            assert c.import_key(authblob.make_auth_blob(ek, srk)[0])[0] in (500, 503)
            blob2, key2 = authblob.make_auth_blob(ek, srk)
            assert c.import_key(blob2)[0] == 200
            assert c.sign(b"z") == (200, broker.hmac_sha256(key2, b"z"))
            assert "0x80007" not in d.read_log(), "a command after the error found SAPI mid-command"
        assert tpm.transient_handles() == [] and tpm.loaded_sessions() == []


@R.case
def provisioning_as_service_user():
    """A whole DPS registration (TPM attestation: ActivateCredential, import
    of the hub key, SAS tokens signed by the TPM) through the device node."""
    uid, gid, groups, _ = service_user()
    with harness.Swtpm() as tpm, TpmDevice(tpm) as dev, Sim(polls=1, retry_after=1) as sim:
        p = harness.run([harness.program("tpmidctl"), "tpm", "info", "--json", "--tcti", dev.tcti])
        info = json.loads(p.stdout)
        sim.client.enroll(info["registration_id"], base64.b64decode(info["endorsement_key"]), hubs=[HUB1, HUB2])
        d = DpsDaemon(tpm, sim, tcti=dev.tcti, argv_prefix=setpriv(uid, gid, groups))
        chown_tree(d.dir, uid, gid)
        with d:
            assert open_fds(d.proc.pid, dev.path) == 1
            d.wait_provisioned(timeout=60)
            hub, dev_id = d.identity()
            assert dev_id == info["registration_id"] and hub in (HUB1, HUB2), (hub, dev_id)
            assert d.hub_token_ok() == (hub, dev_id)
        assert "0x81000100" in tpm.persistent_handles()
        assert tpm.transient_handles() == [] and tpm.loaded_sessions() == []


@R.case
def permission_denied_then_fixed():
    """The node as the kernel leaves it without the rule (root:root 0600):
    the daemon says it cannot open the TPM device and why, both sockets
    answer 503 with that reason; once the node is given the rule's owner,
    group and mode, the daemon's retry succeeds."""
    uid, gid, groups, _ = service_user()
    with harness.Swtpm() as tpm, TpmDevice(tpm, uid=0, gid=0, mode=0o600) as dev:
        work = harness.tmpdir("tpmidd-dev-")
        d = broker.Daemon(tpm, workdir=work, tcti=dev.tcti, argv_prefix=setpriv(uid, gid, groups), wait=False)
        chown_tree(work, uid, gid)
        with d:
            def unavailable():
                try:
                    with broker.Client(d.sock) as c:
                        st, body, h = c.request("GET", "/get_tpm_keys?" + API)
                        msg = json.loads(body)["message"] if st == 503 else ""
                        return (st, msg, h) if "permission denied" in msg else None
                except OSError:
                    return None
            st, msg, h = wait_for(unavailable, 20, what="503 from the TPM socket")
            assert ("permission denied on %s" % dev.path) in msg and "group tss" in msg, msg
            assert "retry-after" in h, h
            print("   503: " + msg)
            log = d.read_log()
            line = [l for l in log.splitlines() if "TPM not usable" in l]
            assert line and "permission denied on " + dev.path in line[0], log[-3000:]
            r = broker.Client(os.path.join(work, "run", "identityd.sock"))
            with r:
                st2, body, _ = r.request("GET", "/status?" + API)
            tpm_status = json.loads(body).get("tpm", {})
            assert tpm_status.get("state") == "unavailable", body
            assert "permission denied on " + dev.path in (tpm_status.get("lastError") or ""), body
            # the fix: what udev/70-tpmidd.rules does
            owner, group, mode = harness.udev_tpmrm_attrs()
            ruid, rgid = harness.udev_ids(owner, group)
            os.chown(dev.path, ruid, rgid)
            os.chmod(dev.path, mode)
            t0 = time.time()
            d.wait_keys(timeout=40)
            print("   recovered %.1f s after the fix" % (time.time() - t0))
            assert open_fds(d.proc.pid, dev.path) == 1


if __name__ == "__main__":
    R.main()
