/* devtpm: a stand-in for the kernel's /dev/tpmrm0 that forwards to swtpm, so
 * the tests can run libtss2-tcti-device (what every device in the field uses)
 * on a VM without a TPM, vtpm proxy or CUSE.
 *
 *     devtpm --swtpm SOCKET [--name tpmrm0] [--uid U] [--gid G] [--mode 0660] MOUNTPOINT
 *
 * mounts a FUSE file system (foreground; SIGTERM or the parent's death
 * unmounts) with one regular file MOUNTPOINT/NAME. It cannot be a character
 * device: the kernel would open the real driver of a device node. The file
 * is direct_io and non-seekable, mounted default_permissions + allow_other
 * so the kernel checks the mode bits (chmod/chown work) for every user, the
 * way it does for /dev/tpmrm0 as udev leaves it.
 *
 * Each open file is one of the kernel's tpm-dev-common.c "file_priv"s, and
 * calls behave as there (Linux 5.x/6.x, partial reads):
 * - write(): one whole TPM command; > TPM_BUFSIZE bytes is E2BIG, fewer than
 *   6 or fewer than the header's size is EINVAL, a write while this file's
 *   response is unread (not one byte read yet) or its command is still
 *   queued is EBUSY. With O_NONBLOCK (libtss2-tcti-device opens so) the
 *   command is queued and write() returns at once; without, write() returns
 *   after the response is there.
 * - poll(): POLLIN while response bytes are unread, else POLLOUT (also while
 *   the command is queued).
 * - read(): up to the unread part of the response (partial reads continue
 *   where the last stopped); 0 when there is none, also before it arrived.
 *   Writing a new command drops what was left unread.
 * - Any number of files may be open (tpmrm, not the exclusive tpm0);
 *   commands of all of them go to swtpm one at a time, in order, as the
 *   kernel's chip mutex serialises them, and each response goes to the file
 *   whose command it answers.
 * Differences, by choice: no resource manager (handles are not virtualised
 *   per file, nothing is flushed at close: tpmidd treats a device: path
 *   outside /dev/tpmrm* as one without, and flushes its leftovers at start),
 *   no 120 s discard of an unread response, and when swtpm cannot be reached
 *   the file reports POLLIN and read() fails with EIO (the kernel does so,
 *   with its own errno, when the chip is gone), so a test sees an error
 *   instead of a hang.
 *
 * Fault injection: after SIGUSR1 the next command fails as if swtpm could
 * not be reached (POLLIN, read() EIO), for tests of how a client recovers.
 *
 * Every command connects to swtpm and disconnects after the response, as
 * libtss2-tcti-swtpm does: swtpm serves one connection at a time, and
 * tpm2-tools in the tests talk to it directly meanwhile. */
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TPM_BUFSIZE 4096           /* bytes of a command or response (the kernel's TPM_BUFSIZE) */
#define TPM_HEADER_BYTES 10        /* tag u16, size u32, code u32 */
#define TPM_MIN_WRITE 6            /* bytes: the kernel refuses a write without the size field */
#define SWTPM_IO_TIMEOUT_MS 120000 /* ms for one command at swtpm, queueing behind tpm2-tools included */
#define NAME_MAX_BYTES 64          /* bytes of the file's name */

struct devfile {
        uint8_t buf[TPM_BUFSIZE]; /* the command, then its response */
        size_t cmd_len;
        size_t resp_len; /* response bytes not yet read */
        size_t resp_off; /* where the next read starts */
        bool response_read; /* a read took bytes of the current response */
        bool enqueued;      /* the command waits for or is at swtpm */
        bool released;      /* closed while enqueued: the worker frees it */
        bool nonblock;
        int error; /* errno of a failed forward, reported by the next read */
        struct fuse_pollhandle *ph;
        struct devfile *next; /* in the worker's queue */
};

static struct {
        char swtpm[sizeof(((struct sockaddr_un *)0)->sun_path)];
        char name[NAME_MAX_BYTES + 2]; /* "/" + name */
        /* The file's attributes; chmod/chown change them. */
        uid_t uid;
        gid_t gid;
        mode_t mode;
        time_t ctime;
        /* One lock for everything below and in every devfile: commands are
         * short and one at a time anyway. */
        pthread_mutex_t lock;
        pthread_cond_t queued; /* the worker: a command is in the queue */
        pthread_cond_t done;   /* blocking writers: a command finished */
        struct devfile *head, *tail;
        bool stop;
} g = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .queued = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER,
        .mode = 0660,
};

static volatile sig_atomic_t fail_next; /* SIGUSR1: fail the next command */

static void on_sigusr1(int sig) {
        (void)sig;
        fail_next = 1;
}

static uint32_t be32(const uint8_t *p) {
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- forwarding to swtpm ---------------------------------------------------- */

static int wait_fd(int fd, short events, int64_t deadline) {
        for (;;) {
                int64_t left = deadline - now_ms();
                if (left <= 0)
                        return -ETIMEDOUT;
                struct pollfd p = { .fd = fd, .events = events };
                int n = poll(&p, 1, (int)left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n > 0)
                        return 0;
        }
}

/* One command out, its response into rsp. Returns the response's size or
 * -errno (not reachable, closed early, not a response, too slow). */
static ssize_t forward(const uint8_t *cmd, size_t len, uint8_t rsp[TPM_BUFSIZE]) {
        struct sockaddr_un un = { .sun_family = AF_UNIX };
        int64_t deadline = now_ms() + SWTPM_IO_TIMEOUT_MS;
        ssize_t r = 0;
        size_t off = 0, want = TPM_HEADER_BYTES;

        memcpy(un.sun_path, g.swtpm, sizeof(g.swtpm));
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* Blocking: a non-blocking Unix connect fails with EAGAIN while
         * swtpm's listen queue is full (tpm2-tools or another file queue
         * behind the client it serves); this one waits there, at most
         * SO_SNDTIMEO. Then non-blocking for the deadline below. */
        struct timeval tv = { .tv_sec = SWTPM_IO_TIMEOUT_MS / 1000 };
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
                r = -errno;
                goto out;
        }
        while (connect(fd, (struct sockaddr *)&un, sizeof(un)) < 0) {
                if (errno == EINTR)
                        continue;
                r = errno == EAGAIN ? -ETIMEDOUT : -errno;
                goto out;
        }
        if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
                r = -errno;
                goto out;
        }
        while (off < len) {
                r = wait_fd(fd, POLLOUT, deadline);
                if (r < 0)
                        goto out;
                ssize_t n = send(fd, cmd + off, len - off, MSG_NOSIGNAL);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -EIO;
                        goto out;
                }
                off += (size_t)n;
        }
        for (off = 0; off < want;) {
                r = wait_fd(fd, POLLIN, deadline);
                if (r < 0)
                        goto out;
                ssize_t n = recv(fd, rsp + off, want - off, 0);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -ECONNRESET;
                        goto out;
                }
                off += (size_t)n;
                if (off == TPM_HEADER_BYTES && want == TPM_HEADER_BYTES) {
                        uint32_t size = be32(rsp + 2);
                        if (size < TPM_HEADER_BYTES || size > TPM_BUFSIZE) {
                                r = -EBADMSG;
                                goto out;
                        }
                        want = size;
                }
        }
        r = (ssize_t)want;
out:
        close(fd);
        return r;
}

static void devfile_free(struct devfile *f) {
        if (f->ph)
                fuse_pollhandle_destroy(f->ph);
        free(f);
}

/* The chip: one command at a time, in the order they were written. */
static void *worker(void *arg) {
        static uint8_t cmd[TPM_BUFSIZE], rsp[TPM_BUFSIZE];
        (void)arg;
        pthread_mutex_lock(&g.lock);
        for (;;) {
                while (!g.head && !g.stop)
                        pthread_cond_wait(&g.queued, &g.lock);
                if (g.stop)
                        break;
                struct devfile *f = g.head;
                g.head = f->next;
                if (!g.head)
                        g.tail = NULL;
                f->next = NULL;
                size_t len = f->cmd_len;
                memcpy(cmd, f->buf, len);
                pthread_mutex_unlock(&g.lock);

                ssize_t n;
                if (fail_next) {
                        fail_next = 0;
                        n = -ECONNREFUSED;
                } else {
                        n = forward(cmd, len, rsp);
                }

                pthread_mutex_lock(&g.lock);
                f->enqueued = false;
                if (f->released) {
                        devfile_free(f);
                        continue;
                }
                if (n > 0) {
                        memcpy(f->buf, rsp, (size_t)n);
                        f->resp_len = (size_t)n;
                } else {
                        fprintf(stderr, "devtpm: swtpm at %s: %s\n", g.swtpm, strerror((int)-n));
                        f->error = n == -ETIMEDOUT ? ETIMEDOUT : EIO;
                }
                if (f->ph)
                        fuse_notify_poll(f->ph);
                pthread_cond_broadcast(&g.done);
        }
        pthread_mutex_unlock(&g.lock);
        return NULL;
}

/* ---- the file system ---------------------------------------------------------- */

static bool is_file(const char *path) {
        return strcmp(path, g.name) == 0;
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
        (void)conn;
        /* Attributes are never cached, so a chmod is seen by the next open. */
        cfg->attr_timeout = 0;
        cfg->entry_timeout = 0;
        cfg->negative_timeout = 0;
        cfg->direct_io = 1;
        cfg->kernel_cache = 0;
        return NULL;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
        (void)fi;
        memset(st, 0, sizeof(*st));
        if (strcmp(path, "/") == 0) {
                st->st_mode = S_IFDIR | 0755;
                st->st_nlink = 2;
                return 0;
        }
        if (!is_file(path))
                return -ENOENT;
        pthread_mutex_lock(&g.lock);
        st->st_mode = S_IFREG | g.mode;
        st->st_uid = g.uid;
        st->st_gid = g.gid;
        st->st_ctime = st->st_mtime = st->st_atime = g.ctime;
        pthread_mutex_unlock(&g.lock);
        st->st_nlink = 1;
        return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
        (void)off, (void)fi, (void)flags;
        if (strcmp(path, "/") != 0)
                return -ENOTDIR;
        fill(buf, ".", NULL, 0, 0);
        fill(buf, "..", NULL, 0, 0);
        fill(buf, g.name + 1, NULL, 0, 0);
        return 0;
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
        (void)fi;
        if (!is_file(path))
                return -EPERM;
        pthread_mutex_lock(&g.lock);
        g.mode = mode & 07777;
        g.ctime = time(NULL);
        pthread_mutex_unlock(&g.lock);
        return 0;
}

static int fs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
        (void)fi;
        if (!is_file(path))
                return -EPERM;
        pthread_mutex_lock(&g.lock);
        if (uid != (uid_t)-1)
                g.uid = uid;
        if (gid != (gid_t)-1)
                g.gid = gid;
        g.ctime = time(NULL);
        pthread_mutex_unlock(&g.lock);
        return 0;
}

/* O_TRUNC (a shell's ">") on a device is a no-op. */
static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
        (void)size, (void)fi;
        return is_file(path) ? 0 : -EPERM;
}

static int fs_open(const char *path, struct fuse_file_info *fi) {
        if (!is_file(path))
                return -ENOENT;
        struct devfile *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        f->nonblock = (fi->flags & O_NONBLOCK) != 0;
        fi->fh = (uint64_t)(uintptr_t)f;
        fi->direct_io = 1;
        fi->nonseekable = 1;
        return 0;
}

static int fs_release(const char *path, struct fuse_file_info *fi) {
        struct devfile *f = (struct devfile *)(uintptr_t)fi->fh;
        (void)path;
        pthread_mutex_lock(&g.lock);
        if (f->enqueued)
                f->released = true;
        else
                devfile_free(f);
        pthread_mutex_unlock(&g.lock);
        return 0;
}

static int fs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
        struct devfile *f = (struct devfile *)(uintptr_t)fi->fh;
        int r;
        (void)path, (void)off;

        if (size > TPM_BUFSIZE)
                return -E2BIG;
        pthread_mutex_lock(&g.lock);
        if ((!f->response_read && f->resp_len) || f->enqueued) {
                r = -EBUSY;
                goto out;
        }
        if (size < TPM_MIN_WRITE || size < be32((const uint8_t *)buf + 2)) {
                r = -EINVAL;
                goto out;
        }
        memcpy(f->buf, buf, size);
        f->cmd_len = size;
        f->resp_len = f->resp_off = 0;
        f->response_read = false;
        f->error = 0;
        f->enqueued = true;
        if (g.tail)
                g.tail->next = f;
        else
                g.head = f;
        g.tail = f;
        pthread_cond_signal(&g.queued);
        r = (int)size;
        if (!f->nonblock) {
                while (f->enqueued)
                        pthread_cond_wait(&g.done, &g.lock);
                if (f->error) {
                        r = -f->error;
                        f->error = 0;
                }
        }
out:
        pthread_mutex_unlock(&g.lock);
        return r;
}

static int fs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
        struct devfile *f = (struct devfile *)(uintptr_t)fi->fh;
        int r = 0;
        (void)path, (void)off;

        pthread_mutex_lock(&g.lock);
        if (f->resp_len) {
                size_t n = size < f->resp_len ? size : f->resp_len;
                f->response_read = true;
                memcpy(buf, f->buf + f->resp_off, n);
                f->resp_off += n;
                f->resp_len -= n;
                if (!f->resp_len)
                        f->resp_off = 0;
                r = (int)n;
        } else if (f->error) {
                r = -f->error;
                f->error = 0;
        }
        pthread_mutex_unlock(&g.lock);
        return r;
}

static int fs_poll(const char *path, struct fuse_file_info *fi, struct fuse_pollhandle *ph, unsigned *reventsp) {
        struct devfile *f = (struct devfile *)(uintptr_t)fi->fh;
        (void)path;

        pthread_mutex_lock(&g.lock);
        if (ph) {
                if (f->ph)
                        fuse_pollhandle_destroy(f->ph);
                f->ph = ph;
        }
        *reventsp = f->resp_len || f->error ? POLLIN | POLLRDNORM : POLLOUT | POLLWRNORM;
        pthread_mutex_unlock(&g.lock);
        return 0;
}

static const struct fuse_operations ops = {
        .init = fs_init,
        .getattr = fs_getattr,
        .readdir = fs_readdir,
        .chmod = fs_chmod,
        .chown = fs_chown,
        .truncate = fs_truncate,
        .open = fs_open,
        .release = fs_release,
        .read = fs_read,
        .write = fs_write,
        .poll = fs_poll,
};

/* ---- main ------------------------------------------------------------------------ */

static int usage(const char *argv0) {
        fprintf(stderr, "usage: %s --swtpm SOCKET [--name tpmrm0] [--uid U] [--gid G] [--mode 0660] MOUNTPOINT\n",
                argv0);
        return 2;
}

static bool parse_ulong(const char *s, int base, unsigned long max, unsigned long *out) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, base);
        if (errno || end == s || *end || v > max)
                return false;
        *out = v;
        return true;
}

int main(int argc, char **argv) {
        static const struct option longopts[] = {
                { "swtpm", required_argument, NULL, 's' }, { "name", required_argument, NULL, 'n' },
                { "uid", required_argument, NULL, 'u' },   { "gid", required_argument, NULL, 'g' },
                { "mode", required_argument, NULL, 'm' },  { 0 },
        };
        const char *name = "tpmrm0";
        unsigned long v;
        int c;

        g.uid = getuid();
        g.gid = getgid();
        g.ctime = time(NULL);
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case 's':
                        if (strlen(optarg) >= sizeof(g.swtpm))
                                return usage(argv[0]);
                        snprintf(g.swtpm, sizeof(g.swtpm), "%s", optarg);
                        break;
                case 'n':
                        if (!*optarg || strlen(optarg) > NAME_MAX_BYTES || strchr(optarg, '/'))
                                return usage(argv[0]);
                        name = optarg;
                        break;
                case 'u':
                        if (!parse_ulong(optarg, 10, (uid_t)-2, &v))
                                return usage(argv[0]);
                        g.uid = (uid_t)v;
                        break;
                case 'g':
                        if (!parse_ulong(optarg, 10, (gid_t)-2, &v))
                                return usage(argv[0]);
                        g.gid = (gid_t)v;
                        break;
                case 'm':
                        if (!parse_ulong(optarg, 8, 07777, &v))
                                return usage(argv[0]);
                        g.mode = (mode_t)v;
                        break;
                default:
                        return usage(argv[0]);
                }
        }
        if (!*g.swtpm || optind != argc - 1)
                return usage(argv[0]);
        snprintf(g.name, sizeof(g.name), "/%s", name);
        const char *mountpoint = argv[optind];

        /* A test that dies must not leave the mount behind: SIGTERM, which
         * fuse's handler turns into an unmount, when the parent goes. */
        struct sigaction sa = { .sa_handler = on_sigusr1 };
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGUSR1, &sa, NULL) < 0)
                return 1;
        pid_t parent = getppid();
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                return 1;

        char *fargv[] = { argv[0], "-o",
                          getuid() == 0 ? "default_permissions,allow_other,fsname=devtpm,subtype=devtpm"
                                        : "default_permissions,fsname=devtpm,subtype=devtpm",
                          NULL };
        struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
        struct fuse *fuse = fuse_new(&args, &ops, sizeof(ops), NULL);
        if (!fuse)
                return 1;
        int r = 1;
        pthread_t th;
        if (fuse_mount(fuse, mountpoint) < 0)
                goto out_destroy;
        if (fuse_set_signal_handlers(fuse_get_session(fuse)) < 0)
                goto out_unmount;
        if (pthread_create(&th, NULL, worker, NULL) != 0)
                goto out_signals;
        fprintf(stderr, "devtpm: %s%s -> %s\n", mountpoint, g.name, g.swtpm);
        r = fuse_loop_mt(fuse, 0) == 0 ? 0 : 1;
        pthread_mutex_lock(&g.lock);
        g.stop = true;
        pthread_cond_signal(&g.queued);
        pthread_mutex_unlock(&g.lock);
        pthread_join(th, NULL);
out_signals:
        fuse_remove_signal_handlers(fuse_get_session(fuse));
out_unmount:
        fuse_unmount(fuse);
out_destroy:
        fuse_destroy(fuse);
        fuse_opt_free_args(&args);
        return r;
}
