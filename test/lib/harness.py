"""Shared test harness for tpmidd integration tests (Debian's /usr/bin/python3).

- Swtpm: a fresh, unprivileged swtpm per test on a private Unix socket, blank or
  pre-provisioned like a manufacturer (swtpm_setup with a local CA, EK cert in NV),
  stopped cleanly (TPM2_Shutdown first, so the DA counter never climbs).
- TpmDevice: test/devtpm's FUSE stand-in for /dev/tpmrm0, forwarding to a
  swtpm socket, so libtss2-tcti-device ("device:PATH") runs as in the field.
  TPMID_TEST_TCTI=device makes Swtpm.tcti (the TCTI our programs get: the
  daemon's [tpm] tcti, tpmidctl --tcti) such a node, while tpm2-tools keep
  talking to swtpm directly (Swtpm.env(), Swtpm.direct_tcti).
- Runner: a tiny test runner; each case is a function, failures name the case,
  the process exits non-zero if any case failed, 77 if a required tool is missing.
"""
import atexit
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SRC = os.environ.get("TPMID_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.environ.get("TPMID_BUILD_DIR", os.path.join(SRC, "build"))

SKIP = 77

# TPMID_TEST_TCTI: "swtpm" (default: our programs use our own swtpm TCTI) or
# "device" (they use libtss2-tcti-device on a TpmDevice in front of swtpm).
TEST_TCTI = os.environ.get("TPMID_TEST_TCTI", "swtpm") or "swtpm"
if TEST_TCTI not in ("swtpm", "device"):
    raise SystemExit("TPMID_TEST_TCTI=%r: use swtpm or device" % TEST_TCTI)


def device_tcti():
    """True when our programs are to talk to the TPM through the device stand-in."""
    return TEST_TCTI == "device"


def skip(reason):
    """Exit with meson's skip code, saying why."""
    print("SKIP: " + reason)
    sys.exit(SKIP)


class SkipCase(Exception):
    """Raised by a case that does not apply here; Runner reports it as skipped."""


def skip_case_under_device_tcti(reason):
    """For a case that cannot apply with TPMID_TEST_TCTI=device (call it first)."""
    if device_tcti():
        raise SkipCase("not applicable with TPMID_TEST_TCTI=device: " + reason)


def need(*tools):
    """Exit with meson's skip code when a required external tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print("SKIP: missing tools: " + ", ".join(missing))
        sys.exit(SKIP)


def build_path(*parts):
    return os.path.join(BUILD, *parts)


# The three programs, each in its own build folder (daemon/meson.build).
PROGRAMS = {
    "tpmidd": ("daemon", "tpmidd", "tpmidd"),
    "tpmidd-https": ("daemon", "https", "tpmidd-https"),
    "tpmidctl": ("daemon", "ctl", "tpmidctl"),
}


def program(name):
    """Path of one of our programs in the build tree."""
    return build_path(*PROGRAMS[name])


def run(cmd, check=True, env=None, input=None, timeout=60, **kw):
    """Run a command, capture text output; raise with both streams on failure."""
    p = subprocess.run(cmd, env=env, input=input, timeout=timeout, capture_output=True,
                       text=not isinstance(input, bytes), **kw)
    if check and p.returncode != 0:
        raise AssertionError("command failed (rc %d): %s\nstdout:\n%s\nstderr:\n%s" % (
            p.returncode, " ".join(map(str, cmd)), p.stdout, p.stderr))
    return p


def _unpriv_prefix():
    """Run helpers as nobody when we are root: swtpm must never run privileged."""
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return []


def _chown_nobody(path):
    if os.geteuid() != 0:
        return
    nb = pwd.getpwnam("nobody")
    for root, dirs, files in os.walk(path):
        os.chown(root, nb.pw_uid, nb.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), nb.pw_uid, nb.pw_gid)


def tmpdir(prefix="tpmid-test-"):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


_copy_dirs = []


def readable_copy(*paths):
    """Copies of files (scripts, our binaries) in a fresh temp dir that every
    user can read and run, kept until exit: a client run as another uid
    (setpriv to nobody) may not be able to enter the checkout, e.g. a clone
    under a 0700 home. Returns the new paths in order."""
    d = tmpdir("tpmid-copy-")
    _copy_dirs.append(d)
    out = []
    for p in paths:
        dst = os.path.join(d, os.path.basename(p))
        shutil.copy(p, dst)
        os.chmod(dst, 0o755 if os.access(p, os.X_OK) else 0o644)
        out.append(dst)
    return out


_program_copies = {}


def program_for_user(name):
    """program(name) copied where a user other than us can run it (see
    readable_copy()), once per test process."""
    if name not in _program_copies:
        _program_copies[name] = readable_copy(program(name))[0]
    return _program_copies[name]


@atexit.register
def _remove_copies():
    for d in _copy_dirs:
        shutil.rmtree(d, ignore_errors=True)


# The stand-in's file as udev/70-tpmidd.rules sets /dev/tpmrm0.
UDEV_RULES = os.path.join(SRC, "udev", "70-tpmidd.rules")


def udev_tpmrm_attrs(rules=UDEV_RULES):
    """(owner, group, mode) that the shipped rule gives tpmrm devices, as
    names and an int, read from the rule itself."""
    import re
    for line in open(rules):
        if 'SUBSYSTEM=="tpmrm"' in line and not line.lstrip().startswith("#"):
            kv = dict(re.findall(r'(OWNER|GROUP|MODE)="([^"]*)"', line))
            return kv["OWNER"], kv["GROUP"], int(kv["MODE"], 8)
    raise AssertionError("no tpmrm rule in " + rules)


def udev_ids(owner, group):
    """uid and gid as udev resolves the rule's names: an unknown user or group
    is ignored ('Unknown user ..., ignoring') and stays root."""
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        uid = 0
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    return uid, gid


def devtpm_unavailable():
    """Why no TpmDevice can be made here (a sentence), or None."""
    if not os.path.exists(build_path("test", "devtpm", "devtpm")):
        return "test/devtpm was not built (libfuse3-dev missing at meson setup)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3"
    return None


_devices = []


class TpmDevice:
    """test/devtpm's stand-in for /dev/tpmrm0 in front of a swtpm socket
    (a Swtpm or a socket path: a proxy in front of swtpm chains). .path is
    the node, .tcti "device:PATH". uid/gid/mode are the node's; the
    defaults are what udev/70-tpmidd.rules gives /dev/tpmrm0. chmod/chown on
    .path work. The file is a regular file on a FUSE mount (see devtpm.c for
    how it behaves like the kernel's tpmrm device)."""

    def __init__(self, swtpm, uid=None, gid=None, mode=None, name="tpmrm0"):
        self.sock = swtpm if isinstance(swtpm, str) else swtpm.sock
        owner, group, rmode = udev_tpmrm_attrs()
        ruid, rgid = udev_ids(owner, group)
        self.uid = ruid if uid is None else uid
        self.gid = rgid if gid is None else gid
        self.mode = rmode if mode is None else mode
        self.dir = tmpdir("tpmid-devtpm-")
        self.mnt = os.path.join(self.dir, "dev")
        os.mkdir(self.mnt)
        os.chmod(self.mnt, 0o755)
        self.path = os.path.join(self.mnt, name)
        self.name = name
        self.log = os.path.join(self.dir, "devtpm.log")
        self.proc = None

    @property
    def tcti(self):
        return "device:" + self.path

    def start(self):
        why = devtpm_unavailable()
        if why:
            skip("no TPM device stand-in: " + why)
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([build_path("test", "devtpm", "devtpm"), "--swtpm", self.sock,
                                      "--name", self.name, "--uid", str(self.uid), "--gid", str(self.gid),
                                      "--mode", "%o" % self.mode, self.mnt],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError("devtpm did not mount %s:\n%s" % (self.mnt, self.read_log()))
            time.sleep(0.01)
        _devices.append(self)
        return self

    def read_log(self):
        try:
            return open(self.log, errors="replace").read()
        except OSError:
            return ""

    def fail_next(self):
        """The next command fails as if swtpm could not be reached: poll()
        says POLLIN and read() fails with EIO, as the kernel reports a TPM
        timeout (devtpm's SIGUSR1)."""
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(0.05)  # the signal is in before the test's next command

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # fuse's SIGTERM handler unmounts
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.logf.close()
        errors = [l for l in self.read_log().splitlines() if "swtpm at" in l]
        if errors:  # what the daemon saw as an I/O error on the device, for whoever reads the test log
            sys.stderr.write("--- devtpm %s ---\n%s\n" % (self.path, "\n".join(errors[-20:])))
        if self in _devices:
            _devices.remove(self)
        if os.path.ismount(self.mnt):  # killed, not stopped: the kernel keeps a dead mount
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


_socket_devices = {}


def our_tcti(tcti):
    """The TCTI for our programs given one a test chose: under
    TPMID_TEST_TCTI=device a "swtpm:path=SOCKET" (e.g. a proxy in front of
    swtpm) becomes a TpmDevice forwarding to SOCKET, kept until exit."""
    prefix = "swtpm:path="
    if not device_tcti() or not tcti.startswith(prefix) or "," in tcti:
        return tcti
    sock = tcti[len(prefix):]
    if sock not in _socket_devices:
        _socket_devices[sock] = TpmDevice(sock).start()
    return _socket_devices[sock].tcti


@atexit.register
def _stop_devices():
    for d in list(_devices):
        d.cleanup()


class Swtpm:
    """One swtpm instance with its own state dir and Unix socket.

    provisioned=True runs swtpm_setup like a TPM maker would: EK at 0x81010001,
    SRK at 0x81000001 and an RSA EK certificate in NV 0x01c00002 signed by a local CA.
    """

    def __init__(self, provisioned=False, workdir=None):
        self.dir = workdir or tmpdir("tpmid-swtpm-")
        self.state = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.dir, "swtpm.sock")
        self.ctrl = self.sock + ".ctrl"
        self.log = os.path.join(self.dir, "swtpm.log")
        self.pidfile = os.path.join(self.dir, "swtpm.pid")
        self.provisioned = provisioned
        self.pid = None
        self.device = None
        os.makedirs(self.state, exist_ok=True)

    @property
    def direct_tcti(self):
        """swtpm's socket through our swtpm TCTI (tpm2-tools: libtss2-tcti-swtpm)."""
        return "swtpm:path=" + self.sock

    @property
    def tcti(self):
        """The TCTI our programs (tpmidd, tpmidctl) get: swtpm's socket, or under
        TPMID_TEST_TCTI=device this swtpm's TpmDevice, made on first use and
        kept until cleanup() (across stop/start: it connects per command)."""
        if not device_tcti():
            return self.direct_tcti
        if self.device is None:
            self.device = TpmDevice(self).start()
        return self.device.tcti

    def env(self, extra=None):
        e = dict(os.environ)
        e["TPM2TOOLS_TCTI"] = self.direct_tcti
        if extra:
            e.update(extra)
        return e

    def _manufacture(self):
        conf = os.path.join(self.dir, "conf")
        ca = os.path.join(self.dir, "localca")
        certs = os.path.join(self.dir, "ekcerts")
        for d in (conf, ca, certs):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(conf, "swtpm_setup.conf"), "w") as f:
            f.write("create_certs_tool= /usr/bin/swtpm_localca\n"
                    "create_certs_tool_config = %s/swtpm-localca.conf\n"
                    "create_certs_tool_options = %s/swtpm-localca.options\n"
                    "active_pcr_banks = sha256\n" % (conf, conf))
        with open(os.path.join(conf, "swtpm-localca.conf"), "w") as f:
            f.write("statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\n"
                    "certserial = %s/certserial\n" % (ca, ca, ca, ca))
        with open(os.path.join(conf, "swtpm-localca.options"), "w") as f:
            f.write("--platform-manufacturer Debian\n--platform-version 2.1\n--platform-model swtpm\n")
        _chown_nobody(self.dir)
        run(_unpriv_prefix() + ["env", "HOME=" + self.dir, "swtpm_setup", "--tpm2", "--tpmstate", self.state,
             "--config", os.path.join(conf, "swtpm_setup.conf"), "--create-ek-cert", "--create-platform-cert",
             "--create-spk", "--pcr-banks", "sha256", "--write-ek-cert-files", certs, "--overwrite",
             "--logfile", os.path.join(self.dir, "swtpm_setup.log")], timeout=120)
        self.ek_cert_file = os.path.join(certs, "ek-rsa2048.crt")
        self.ca_dir = ca

    def start(self):
        if self.provisioned and not os.path.exists(os.path.join(self.state, "tpm2-00.permall")):
            self._manufacture()
        _chown_nobody(self.dir)
        run(_unpriv_prefix() + ["swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + self.state,
             "--server", "type=unixio,path=" + self.sock, "--ctrl", "type=unixio,path=" + self.ctrl,
             "--flags", "not-need-init,startup-clear", "--log", "file=%s,level=1" % self.log,
             "--pid", "file=" + self.pidfile, "--daemon"])
        deadline = time.time() + 10
        while time.time() < deadline:
            if os.path.exists(self.sock) and os.path.exists(self.pidfile):
                try:
                    self.pid = int(open(self.pidfile).read().strip())
                    break
                except ValueError:
                    pass
            time.sleep(0.02)
        else:
            raise AssertionError("swtpm did not start; log:\n" + (open(self.log).read() if os.path.exists(self.log) else ""))
        # Socket files of a nobody-owned swtpm must be reachable by test clients
        # running as another user (e.g. the daemon run as nobody or root).
        return self

    def tool(self, *args, check=True, **kw):
        return run(list(args), env=self.env(), check=check, **kw)

    def transient_handles(self):
        out = self.tool("tpm2_getcap", "handles-transient").stdout
        return [l.strip("- ").strip() for l in out.splitlines() if l.strip()]

    def loaded_sessions(self):
        out = self.tool("tpm2_getcap", "handles-loaded-session").stdout
        return [l.strip("- ").strip() for l in out.splitlines() if l.strip()]

    def persistent_handles(self):
        out = self.tool("tpm2_getcap", "handles-persistent").stdout
        return [l.strip("- ").strip().lower() for l in out.splitlines() if l.strip()]

    def stop(self):
        """Clean stop: TPM2_Shutdown(CLEAR) first so the DA lockout counter is not bumped."""
        if self.pid is None:
            return
        self.tool("tpm2_shutdown", "-c", check=False, timeout=10)
        r = run(["swtpm_ioctl", "--unix", self.ctrl, "-s"], check=False, timeout=10)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def cleanup(self):
        self.stop()
        if self.device is not None:
            self.device.cleanup()
            self.device = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class Runner:
    """Collects test cases; prints one line per case and a summary."""

    def __init__(self, name):
        self.name = name
        self.cases = []

    def case(self, fn):
        self.cases.append(fn)
        return fn

    def main(self):
        only = sys.argv[1:]
        passed = failed = skipped = 0
        for fn in self.cases:
            if only and fn.__name__ not in only:
                continue
            t0 = time.time()
            try:
                fn()
                passed += 1
                print("ok   %s/%s (%.2fs)" % (self.name, fn.__name__, time.time() - t0), flush=True)
            except SkipCase as e:
                skipped += 1
                print("skip %s/%s: %s" % (self.name, fn.__name__, e), flush=True)
            except Exception:
                failed += 1
                print("FAIL %s/%s (%.2fs)" % (self.name, fn.__name__, time.time() - t0), flush=True)
                traceback.print_exc()
                sys.stdout.flush()
        print("%s: %d passed, %d failed%s" % (self.name, passed, failed, ", %d skipped" % skipped if skipped else ""))
        sys.exit(1 if failed else 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def daemon_argv(*args):
    """argv to start tpmidd from the build tree. TPMID_DAEMON_WRAPPER (e.g.
    "valgrind --leak-check=full --error-exitcode=99") is prepended, so the
    valgrind gate runs the same tests under memcheck."""
    import shlex
    wrapper = shlex.split(os.environ.get("TPMID_DAEMON_WRAPPER", ""))
    return wrapper + [program("tpmidd")] + list(args)
