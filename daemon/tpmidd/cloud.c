/* The HTTPS client of cloud.h, without libcurl in this process.
 *
 * The transfers run in the helper process tpmidd-https (daemon/https/
 * https-helper.c), spoken to over one Unix stream connection in the frames
 * of lib/https-ipc.h: the hello first, then requests and cancels; one
 * response comes back per request. libcurl and the whole TLS stack stay out
 * of the daemon's memory, and TLS parsing out of the process that owns the
 * TPM. The connection is made in one of two ways, and everything after that
 * (the frames, the reads and writes, how requests complete) is the same code:
 *
 * - Under systemd, tpmidd.service sets TPMIDD_HTTPS_SOCKET (CLOUD_SOCKET_ENV)
 *   to the socket of tpmidd-https.socket, and we connect() to it: the helper
 *   is its own sandboxed unit with the network access and without the TPM,
 *   while this process has neither AF_INET nor AF_INET6. We close the
 *   connection whenever nothing is in flight, so the helper never has to
 *   decide that a connection is idle (it exits when it has had none for a
 *   while; the next connect() starts it again). End of file while we hold
 *   the connection therefore always means the helper went away: what it was
 *   running completes with -EIO and a message saying so.
 *
 * - Otherwise (foreground runs, tests, the demo) we start the helper
 *   ourselves on the first cloud_send() with uv_spawn(), its end of a
 *   socketpair on its fd 3. It exits on its own after a few idle seconds;
 *   the next cloud_send() starts a new one. Such a helper is done when it
 *   has exited and its socket reached end of file (both always happen, in
 *   either order). Then every request it was running completes with -EIO
 *   and a message naming the exit status or signal, except after a clean
 *   exit (status 0): the helper only exits cleanly when nothing was in
 *   flight, so a request it never saw (sent while it was deciding to exit)
 *   is sent again, once, to a new helper.
 *
 * Either way a request has a deadline, its own timeout (which the helper
 * enforces) plus CLOUD_HELPER_GRACE_MS: a helper that has not answered by
 * then is stopped or wedged, and we give up on it (kill it when it is our
 * child, close the connection otherwise), which fails what it was running
 * and lets the next request reach a new one. */
#include "cloud.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "https-ipc.h"
#include "log.h"
#include "tpmid-config.h"
#include "util.h"

#ifndef TPMIDD_HTTPS_HELPER_PATH
/* daemon/meson.build passes PREFIX/LIBEXECDIR/tpmidd-https; this default only
 * serves tools that compile the file on its own (cppcheck). */
#define TPMIDD_HTTPS_HELPER_PATH "/usr/libexec/tpmidd-https"
#endif

#define CLOUD_HELPER_ENV "TPMIDD_HTTPS_HELPER" /* overrides TPMIDD_HTTPS_HELPER_PATH */
#define CLOUD_SOCKET_ENV "TPMIDD_HTTPS_SOCKET" /* the helper's socket (set by tpmidd.service); unset = spawn it */
#define CLOUD_HELPER_FD 3                      /* where the helper finds its socket */
#define CLOUD_ERRMSG_MAX 256                   /* bytes of an error message made here */
#define CLOUD_READ_CHUNK 65536                 /* bytes offered to one socket read */
/* ms a helper may take beyond a request's own timeout (which the helper
 * enforces) before we stop waiting for it: its start, by us or by systemd,
 * and the answer's way back. A helper that is stopped or wedged must not
 * hold a request for ever. */
#define CLOUD_HELPER_GRACE_MS 5000

/* Equal on purpose: cloud.h and https-ipc.h state the same limits. */
// NOLINTBEGIN(misc-redundant-expression)
_Static_assert(CLOUD_MAX_RESPONSE_BYTES == HTTPS_IPC_MAX_BODY_BYTES, "the helper caps bodies at the frame limit");
_Static_assert(CLOUD_MAX_INFLIGHT == HTTPS_IPC_MAX_INFLIGHT, "the helper runs as many transfers as we allow");
// NOLINTEND(misc-redundant-expression)

enum xfer_state {
        XFER_QUEUED, /* waiting for a helper */
        XFER_SENT,   /* written to the current helper */
        XFER_FAILED, /* completes with error/errmsg from the fail timer */
};

struct cloud_xfer {
        uint64_t id;
        cloud_cb cb;
        void *userdata;
        uint8_t *frame; /* the encoded request, kept to send it (again); holds the token */
        size_t frame_len;
        enum xfer_state state;
        bool resent;
        long timeout_ms;      /* the request's own timeout */
        uint64_t deadline_ms; /* monotonic: when the helper must have answered (timeout + grace) */
        int error;
        char errmsg[CLOUD_ERRMSG_MAX];
        struct cloud_xfer *next;
};

/* One connection to a helper; with child set, also the helper process we
 * started for it. */
struct helper {
        struct cloud *cloud;
        bool child;       /* proc is a process we spawned (else: connected to CLOUD_SOCKET_ENV) */
        uv_process_t proc; /* valid when child */
        uv_pipe_t pipe;
        int open_handles;
        bool exited, eof, dying, finalized;
        int64_t exit_status;
        int term_signal;
        char failure[CLOUD_ERRMSG_MAX]; /* a protocol error we killed it for */
        uint8_t *in;                    /* received bytes, not yet a whole frame */
        size_t in_len, in_cap;
};

struct write_req {
        uv_write_t req;
        uint8_t *buf;
        size_t len;
};

struct cloud {
        uv_loop_t *loop;
        uv_timer_t fail_timer;     /* delivers XFER_FAILED completions from the loop */
        uv_timer_t deadline_timer; /* at the earliest deadline_ms of a request not yet failed */
        char *ca_bundle;
        char *connect_to;
        char *user_agent;
        char *socket_path; /* CLOUD_SOCKET_ENV, or NULL: start helpers as children */
        uint8_t *hello; /* the encoded hello frame every helper gets first */
        size_t hello_len;
        struct cloud_xfer *xfers; /* in send order */
        size_t n_xfers;
        uint64_t next_id;
        struct helper *h; /* the current helper, or NULL */
        int open_handles; /* the fail timer and every helper's handles */
        bool closing;
};

static const char *helper_path(void) {
        const char *p = getenv(CLOUD_HELPER_ENV);
        return p && *p ? p : TPMIDD_HTTPS_HELPER_PATH;
}

static void cloud_maybe_free(struct cloud *c) {
        if (!c->closing || c->open_handles > 0)
                return;
        free(c->ca_bundle);
        free(c->connect_to);
        free(c->user_agent);
        free(c->socket_path);
        free(c->hello);
        free(c);
}

static void timer_closed(uv_handle_t *handle) {
        struct cloud *c = handle->data;
        c->open_handles--;
        cloud_maybe_free(c);
}

static void xfer_free(struct cloud_xfer *x) {
        if (!x)
                return;
        if (x->frame) {
                explicit_zero(x->frame, x->frame_len);
                free(x->frame);
        }
        free(x);
}

static void xfer_unlink(struct cloud *c, struct cloud_xfer *x) {
        for (struct cloud_xfer **p = &c->xfers; *p; p = &(*p)->next)
                if (*p == x) {
                        *p = x->next;
                        x->next = NULL;
                        c->n_xfers--;
                        return;
                }
}

/* Complete a detached list of failed transfers. A callback may close the
 * client; the rest are then cancelled (freed without a callback). */
static void complete_failed(struct cloud *c, struct cloud_xfer *list) {
        while (list) {
                struct cloud_xfer *x = list;
                list = x->next;
                if (!c->closing) {
                        struct cloud_response r = {
                                .error = x->error,
                                .error_msg = x->errmsg,
                                .body = "",
                        };
                        x->cb(&r, x->userdata);
                }
                xfer_free(x);
        }
}

static void helper_release_if_idle(struct cloud *c);

static void fail_timer_cb(uv_timer_t *t) {
        struct cloud *c = t->data;
        struct cloud_xfer *list = NULL, **tail = &list;
        for (struct cloud_xfer *x = c->xfers, *next; x; x = next) {
                next = x->next;
                if (x->state != XFER_FAILED)
                        continue;
                xfer_unlink(c, x);
                *tail = x;
                tail = &x->next;
        }
        complete_failed(c, list);
        if (!c->closing)
                helper_release_if_idle(c);
}

/* Arm the deadline timer for the earliest request still waiting for an
 * answer, or stop it. Called when a request starts and after each expiry;
 * requests that complete early leave it armed, and it then finds nothing. */
static void deadline_cb(uv_timer_t *t);
static void deadline_arm(struct cloud *c) {
        uint64_t first = UINT64_MAX;
        for (struct cloud_xfer *x = c->xfers; x; x = x->next)
                if (x->state != XFER_FAILED && x->deadline_ms < first)
                        first = x->deadline_ms;
        if (first == UINT64_MAX) {
                uv_timer_stop(&c->deadline_timer);
                return;
        }
        uint64_t now = (uint64_t)now_monotonic_ms();
        uv_timer_start(&c->deadline_timer, deadline_cb, first > now ? first - now : 0, 0);
}

/* ---- the helper process ---- */

static void helper_handle_closed(uv_handle_t *handle) {
        struct helper *h = handle->data;
        struct cloud *c = h->cloud;
        if (--h->open_handles == 0) {
                if (h->in) {
                        explicit_zero(h->in, h->in_cap);
                        free(h->in);
                }
                free(h);
        }
        c->open_handles--;
        cloud_maybe_free(c);
}

static void write_done(uv_write_t *req, int status) {
        struct write_req *w = container_of(req, struct write_req, req);
        explicit_zero(w->buf, w->len); /* request frames carry the SAS token */
        free(w->buf);
        free(w);
        /* A failed write means the helper is gone; its exit and end of file
         * finish the requests. */
}

/* Queue one frame (copied) on the helper's socket. */
static int helper_write(struct helper *h, const uint8_t *frame, size_t len) {
        struct write_req *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->buf = malloc(len);
        if (!w->buf) {
                free(w);
                return -ENOMEM;
        }
        memcpy(w->buf, frame, len);
        w->len = len;
        uv_buf_t b = uv_buf_init((char *)w->buf, (unsigned)len);
        int r = uv_write(&w->req, (uv_stream_t *)&h->pipe, &b, 1, write_done);
        if (r < 0) {
                explicit_zero(w->buf, w->len);
                free(w->buf);
                free(w);
        }
        return r;
}

/* Stop using a helper that misbehaved or cannot be written to; its exit and
 * end of file complete its requests. */
static void helper_abandon(struct helper *h, const char *why) {
        if (h->dying)
                return;
        h->dying = true;
        if (why && !h->failure[0])
                snprintf(h->failure, sizeof(h->failure), "%s", why);
        if (!h->eof) {
                uv_read_stop((uv_stream_t *)&h->pipe);
                h->eof = true;
        }
        if (h->child && !h->exited)
                (void)uv_process_kill(&h->proc, SIGKILL);
}

/* Connected to the helper's socket with nothing in flight: close the
 * connection (the helper then waits for the next one, and exits when none
 * comes). A request later makes a new connection. Helpers we started
 * ourselves keep theirs: they exit when idle, and a new process costs more
 * than a connect(). */
static void helper_release_if_idle(struct cloud *c) {
        struct helper *h = c->h;
        if (!h || h->child || h->dying || c->n_xfers > 0)
                return;
        h->dying = h->eof = h->finalized = true;
        c->h = NULL;
        uv_close((uv_handle_t *)&h->pipe, helper_handle_closed);
        log_debug("closed the connection to the HTTPS helper (idle)");
}

static void fail_queued(struct cloud *c, int error, const char *msg) {
        bool any = false;
        for (struct cloud_xfer *x = c->xfers; x; x = x->next)
                if (x->state == XFER_QUEUED) {
                        x->state = XFER_FAILED;
                        x->error = error;
                        snprintf(x->errmsg, sizeof(x->errmsg), "%s", msg);
                        any = true;
                }
        if (any)
                uv_timer_start(&c->fail_timer, fail_timer_cb, 0, 0);
}

static void helper_finalize(struct helper *h);

/* Send every queued request to the current helper. */
static void flush_queue(struct cloud *c) {
        struct helper *h = c->h;
        for (struct cloud_xfer *x = c->xfers; x && h && !h->dying; x = x->next) {
                if (x->state != XFER_QUEUED)
                        continue;
                int r = helper_write(h, x->frame, x->frame_len);
                if (r < 0) {
                        char msg[CLOUD_ERRMSG_MAX];
                        snprintf(msg, sizeof(msg), "could not write to the HTTPS helper tpmidd-https: %s",
                                 uv_strerror(r));
                        helper_abandon(h, msg);
                        fail_queued(c, -EIO, msg); /* the sent ones fail when it is gone */
                        helper_finalize(h);
                        return;
                }
                x->state = XFER_SENT;
        }
}

static void dispatch_response(struct cloud *c, const struct https_ipc_response *resp) {
        struct cloud_xfer *x = c->xfers;
        while (x && !(x->id == resp->id && x->state == XFER_SENT))
                x = x->next;
        if (!x)
                return; /* cancelled while the answer was on its way */
        xfer_unlink(c, x);
        struct cloud_response r = {
                .error = resp->error,
                .error_msg = resp->error_msg,
                .status = (long)resp->status,
                .body = (const char *)resp->body,
                .body_len = resp->body_len,
                .retry_after = resp->retry_after,
                .error_code_header = resp->error_code_header,
                .date = resp->date,
                .total_sec = (double)resp->total_usec / 1e6,
        };
        x->cb(&r, x->userdata);
        xfer_free(x);
}

static void read_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
        struct helper *h = handle->data;
        if (h->in_cap - h->in_len < CLOUD_READ_CHUNK) {
                size_t cap = h->in_len + CLOUD_READ_CHUNK;
                uint8_t *p = realloc(h->in, cap);
                if (!p) {
                        *buf = uv_buf_init(NULL, 0); /* read_done gets UV_ENOBUFS */
                        return;
                }
                h->in = p;
                h->in_cap = cap;
        }
        *buf = uv_buf_init((char *)h->in + h->in_len, (unsigned)(h->in_cap - h->in_len));
}

static void read_done(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
        struct helper *h = s->data;
        struct cloud *c = h->cloud;
        if (n == 0)
                return;
        if (n < 0) {
                if (n != UV_EOF && n != UV_ECONNRESET)
                        helper_abandon(h, n == UV_ENOBUFS ? "out of memory reading from the HTTPS helper"
                                                          : "could not read from the HTTPS helper tpmidd-https");
                uv_read_stop(s);
                h->eof = true;
                h->dying = true;
                helper_finalize(h);
                return;
        }
        h->in_len += (size_t)n;
        size_t off = 0;
        for (;;) {
                size_t total;
                int r = https_ipc_frame_peek(h->in + off, h->in_len - off, &total);
                if (r == -EAGAIN || (r == 0 && h->in_len - off < total))
                        break;
                struct https_ipc_msg m = {0};
                if (r == 0)
                        r = https_ipc_decode(h->in + off, total, &m);
                if (r == 0 && m.type != HTTPS_IPC_RESPONSE) {
                        https_ipc_msg_clear(&m);
                        r = -EBADMSG;
                }
                if (r < 0) {
                        log_error("the HTTPS helper tpmidd-https sent a malformed frame (%s); stopping it",
                                  strerror(-r));
                        helper_abandon(h, "the HTTPS helper tpmidd-https sent a malformed frame");
                        helper_finalize(h);
                        return;
                }
                off += total;
                dispatch_response(c, &m.response);
                https_ipc_msg_clear(&m);
                /* The callback may have closed the client (which closes this
                 * socket) or sent requests; stop if this helper is done. */
                if (c->closing || h->dying)
                        return;
        }
        memmove(h->in, h->in + off, h->in_len - off);
        h->in_len -= off;
        helper_release_if_idle(c);
}

static void exit_done(uv_process_t *p, int64_t exit_status, int term_signal) {
        struct helper *h = p->data;
        h->exited = true;
        h->exit_status = exit_status;
        h->term_signal = term_signal;
        uv_close((uv_handle_t *)&h->proc, helper_handle_closed);
        helper_finalize(h);
}

static int helper_start(struct cloud *c);

/* A request outlived its deadline. Still queued: it fails. Sent: the helper
 * is stopped or wedged; we give up on it (and kill it if it is our child),
 * which fails everything it was running, and the next request gets a new
 * connection. */
static void deadline_cb(uv_timer_t *t) {
        struct cloud *c = t->data;
        uint64_t now = (uint64_t)now_monotonic_ms();
        long late_timeout = -1; /* of the first late request the helper has */
        bool failed = false;
        for (struct cloud_xfer *x = c->xfers; x; x = x->next) {
                if (x->state == XFER_FAILED || x->deadline_ms > now)
                        continue;
                if (x->state == XFER_SENT) {
                        if (late_timeout < 0)
                                late_timeout = x->timeout_ms;
                        /* The helper's end completes it; look again after
                         * another grace period rather than at once. */
                        x->deadline_ms = now + CLOUD_HELPER_GRACE_MS;
                        continue;
                }
                x->state = XFER_FAILED;
                x->error = -ETIMEDOUT;
                snprintf(x->errmsg, sizeof(x->errmsg), "no HTTPS helper took the request within %ld s",
                         (x->timeout_ms + CLOUD_HELPER_GRACE_MS) / 1000);
                failed = true;
        }
        if (failed)
                uv_timer_start(&c->fail_timer, fail_timer_cb, 0, 0);
        struct helper *h = c->h;
        if (late_timeout >= 0 && h) {
                char msg[CLOUD_ERRMSG_MAX];
                snprintf(msg, sizeof(msg), "the HTTPS helper tpmidd-https did not answer within %ld s",
                         (late_timeout + CLOUD_HELPER_GRACE_MS) / 1000);
                if (!h->dying)
                        helper_abandon(h, msg);
                else if (h->child && !h->exited) /* it closed its socket but does not exit */
                        (void)uv_process_kill(&h->proc, SIGKILL);
                helper_finalize(h); /* at once over a socket; after the exit for a child */
        }
        if (!c->closing) /* a completion callback may have closed the client */
                deadline_arm(c);
}

/* Once the connection is at end of file (and a helper we started has
 * exited): complete or requeue what it was running, and start a new one if
 * requests wait. */
static void helper_finalize(struct helper *h) {
        struct cloud *c = h->cloud;
        if (!h->eof || (h->child && !h->exited) || h->finalized)
                return;
        h->finalized = true;
        if (!uv_is_closing((uv_handle_t *)&h->pipe))
                uv_close((uv_handle_t *)&h->pipe, helper_handle_closed);
        if (c->h == h)
                c->h = NULL;
        if (c->closing)
                return;
        char msg[CLOUD_ERRMSG_MAX];
        /* Over a socket the helper never ends a connection that works (we
         * close it when idle), so any end of file is the helper going away. */
        bool clean = h->child && !h->failure[0] && h->term_signal == 0 && h->exit_status == 0;
        if (h->failure[0])
                snprintf(msg, sizeof(msg), "%s", h->failure);
        else if (!h->child)
                snprintf(msg, sizeof(msg), "the HTTPS helper tpmidd-https closed the connection (%s)", c->socket_path);
        else if (h->term_signal)
                snprintf(msg, sizeof(msg), "the HTTPS helper tpmidd-https exited with signal %d (%s)", h->term_signal,
                         strsignal(h->term_signal));
        else
                snprintf(msg, sizeof(msg), "the HTTPS helper tpmidd-https exited with status %lld",
                         (long long)h->exit_status);

        struct cloud_xfer *failed = NULL, **tail = &failed;
        size_t n_failed = 0, n_requeued = 0;
        for (struct cloud_xfer *x = c->xfers, *next; x; x = next) {
                next = x->next;
                if (x->state != XFER_SENT)
                        continue;
                if (clean && !x->resent) {
                        x->state = XFER_QUEUED;
                        x->resent = true;
                        n_requeued++;
                        continue;
                }
                xfer_unlink(c, x);
                x->error = -EIO;
                snprintf(x->errmsg, sizeof(x->errmsg), "%s", msg);
                *tail = x;
                tail = &x->next;
                n_failed++;
        }
        if (!clean && n_failed == 0) /* else the requests' owners report it */
                log_warn("%s while idle", msg);
        else if (clean)
                log_debug("the HTTPS helper tpmidd-https exited (idle)%s", n_requeued ? "; sending again what it did not start" : "");

        bool queued = false;
        for (struct cloud_xfer *x = c->xfers; x; x = x->next)
                queued |= x->state == XFER_QUEUED;
        if (queued)
                (void)helper_start(c); /* failures are reported through the fail timer */
        complete_failed(c, failed);
}

/* Start a helper process with its end of a new socketpair on its fd 3 and
 * give back ours in *ret_fd. Once uv_spawn() ran, the process handle is
 * initialised and counted in open_handles, also when it failed (then it is
 * closed here). Returns 0, or -EIO with msg set. */
static int helper_spawn(struct cloud *c, struct helper *h, int *ret_fd, char msg[static CLOUD_ERRMSG_MAX]) {
        const char *path = helper_path();
        _cleanup_free_ char *arg0 = NULL;
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
                snprintf(msg, CLOUD_ERRMSG_MAX, "could not create a socket for the HTTPS helper: %s", strerror(errno));
                return -EIO;
        }
        /* The helper gets /dev/null on stdin and stdout, our stderr (the
         * journal) for its log, and its socket end on fd 3; everything else
         * of ours is close-on-exec (and the helper closes any stray fd). */
        uv_stdio_container_t stdio[CLOUD_HELPER_FD + 1] = {
                {.flags = UV_IGNORE},
                {.flags = UV_IGNORE},
                {.flags = UV_INHERIT_FD, .data.fd = STDERR_FILENO},
                {.flags = UV_INHERIT_FD, .data.fd = sv[1]},
        };
        arg0 = strdup(path); /* uv_process_options_t wants char *, not const */
        if (!arg0) {
                close(sv[0]);
                close(sv[1]);
                snprintf(msg, CLOUD_ERRMSG_MAX, "out of memory starting the HTTPS helper");
                return -EIO;
        }
        char *args[] = {arg0, NULL};
        uv_process_options_t o = {
                .exit_cb = exit_done,
                .file = path,
                .args = args,
                .stdio = stdio,
                .stdio_count = CLOUD_HELPER_FD + 1,
        };
        h->proc.data = h;
        int r = uv_spawn(c->loop, &h->proc, &o);
        close(sv[1]);
        h->open_handles++;
        c->open_handles++;
        if (r < 0) {
                close(sv[0]);
                uv_close((uv_handle_t *)&h->proc, helper_handle_closed);
                snprintf(msg, CLOUD_ERRMSG_MAX, "could not start the HTTPS helper %s: %s", path, uv_strerror(r));
                return -EIO;
        }
        h->child = true;
        log_debug("started the HTTPS helper %s (pid %d)", path, h->proc.pid);
        *ret_fd = sv[0];
        return 0;
}

/* Connect to the helper's socket (c->socket_path) and give back the fd.
 * A Unix connect() does not wait: it succeeds at once, also while systemd
 * is still starting the helper (the connection waits in the backlog), or
 * fails. Returns 0, or -EIO with msg set. */
static int helper_connect(struct cloud *c, int *ret_fd, char msg[static CLOUD_ERRMSG_MAX]) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t len = strlen(c->socket_path);
        if (len >= sizeof(sa.sun_path)) {
                snprintf(msg, CLOUD_ERRMSG_MAX, "could not connect to the HTTPS helper at %s: %s", c->socket_path,
                         strerror(ENAMETOOLONG));
                return -EIO;
        }
        memcpy(sa.sun_path, c->socket_path, len);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                snprintf(msg, CLOUD_ERRMSG_MAX, "could not create a socket for the HTTPS helper: %s", strerror(errno));
                return -EIO;
        }
        if (connect(fd, (const struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1)) <
            0) {
                /* EAGAIN: the backlog is full, which only a flood of other
                 * clients does; the request fails and is retried like any. */
                snprintf(msg, CLOUD_ERRMSG_MAX, "could not connect to the HTTPS helper at %s: %s", c->socket_path,
                         strerror(errno));
                close(fd);
                return -EIO;
        }
        log_debug("connected to the HTTPS helper at %s", c->socket_path);
        *ret_fd = fd;
        return 0;
}

/* Get a helper connection (connect or spawn), send it the hello and every
 * queued request. On failure the queued requests complete with -EIO from
 * the fail timer. Returns 0 or -errno. */
static int helper_start(struct cloud *c) {
        char msg[CLOUD_ERRMSG_MAX];
        struct helper *h = calloc(1, sizeof(*h));
        if (!h) {
                fail_queued(c, -EIO, "out of memory starting the HTTPS helper");
                return -ENOMEM;
        }
        h->cloud = c;
        uv_pipe_init(c->loop, &h->pipe, 0);
        h->pipe.data = h;
        h->open_handles = 1;
        c->open_handles++;
        int fd = -1;
        int r = c->socket_path ? helper_connect(c, &fd, msg) : helper_spawn(c, h, &fd, msg);
        if (r < 0)
                goto fail;
        /* From here on both ways are one: a connected stream socket. */
        r = uv_pipe_open(&h->pipe, fd);
        if (r < 0) {
                close(fd);
                snprintf(msg, sizeof(msg), "could not set up the socket for the HTTPS helper: %s", uv_strerror(r));
                goto fail;
        }
        r = uv_read_start((uv_stream_t *)&h->pipe, read_alloc, read_done);
        if (r < 0) {
                snprintf(msg, sizeof(msg), "could not read from the HTTPS helper: %s", uv_strerror(r));
                goto fail;
        }
        c->h = h;
        r = helper_write(h, c->hello, c->hello_len);
        if (r < 0) {
                snprintf(msg, sizeof(msg), "could not write to the HTTPS helper tpmidd-https: %s", uv_strerror(r));
                helper_abandon(h, msg);
                fail_queued(c, -EIO, msg); /* never sent: fail them now rather than after the exit */
                helper_finalize(h);
                return r;
        }
        flush_queue(c);
        return 0;

fail:
        /* A process we started is killed; its exit callback closes its handle. */
        if (h->child && !h->exited)
                (void)uv_process_kill(&h->proc, SIGKILL);
        h->eof = h->dying = h->finalized = true;
        uv_close((uv_handle_t *)&h->pipe, helper_handle_closed);
        fail_queued(c, -EIO, msg);
        return -EIO;
}

/* ---- cloud.h ---- */

int cloud_new(uv_loop_t *loop, const struct cloud_options *opts, struct cloud **ret) {
        struct cloud *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->loop = loop;
        c->next_id = 1;
        if (opts && opts->ca_bundle && !(c->ca_bundle = strdup(opts->ca_bundle)))
                goto oom;
        if (opts && opts->connect_to && *opts->connect_to && !(c->connect_to = strdup(opts->connect_to)))
                goto oom;
        if (!(c->user_agent = strdup(opts && opts->user_agent ? opts->user_agent : "tpmidd/" TPMID_VERSION)))
                goto oom;
        const char *sock = getenv(CLOUD_SOCKET_ENV);
        if (sock && *sock && !(c->socket_path = strdup(sock)))
                goto oom;
        struct https_ipc_msg hello = {
                .type = HTTPS_IPC_HELLO,
                .hello = {.version = HTTPS_IPC_VERSION,
                          .ca_bundle = c->ca_bundle,
                          .connect_to = c->connect_to,
                          .user_agent = c->user_agent},
        };
        int r = https_ipc_encode(&hello, &c->hello, &c->hello_len);
        if (r < 0) { /* -EMSGSIZE: a path or list above HTTPS_IPC_MAX_STRING_BYTES */
                free(c->ca_bundle);
                free(c->connect_to);
                free(c->user_agent);
                free(c->socket_path);
                free(c);
                return r == -ENOMEM ? -ENOMEM : -EIO;
        }
        uv_timer_init(loop, &c->fail_timer);
        c->fail_timer.data = c;
        uv_timer_init(loop, &c->deadline_timer);
        c->deadline_timer.data = c;
        c->open_handles = 2;
        *ret = c;
        return 0;
oom:
        free(c->ca_bundle);
        free(c->connect_to);
        free(c->user_agent);
        free(c->socket_path);
        free(c);
        return -ENOMEM;
}

int cloud_send(struct cloud *c, const struct cloud_request *req, cloud_cb cb, void *userdata, uint64_t *ret_id) {
        if (c->closing)
                return -ESHUTDOWN;
        if (c->n_xfers >= CLOUD_MAX_INFLIGHT)
                return -EAGAIN;
        if (!req->method || !req->url || !cb)
                return -EINVAL;
        long timeout = req->timeout_ms > 0 ? req->timeout_ms : (long)CLOUD_DEFAULT_TIMEOUT_MS;
        struct https_ipc_msg m = {
                .type = HTTPS_IPC_REQUEST,
                .request = {.id = c->next_id,
                            .method = req->method,
                            .url = req->url,
                            .authorization = req->authorization,
                            .if_match = req->if_match,
                            .body = (const uint8_t *)req->body,
                            .body_len = req->body ? req->body_len : 0,
                            .timeout_ms = timeout > (long)UINT32_MAX ? UINT32_MAX : (uint32_t)timeout},
        };
        struct cloud_xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        int r = https_ipc_encode(&m, &x->frame, &x->frame_len);
        if (r < 0) {
                free(x);
                return r; /* -EMSGSIZE: a body or URL above the frame limits */
        }
        x->id = c->next_id++;
        x->cb = cb;
        x->userdata = userdata;
        x->state = XFER_QUEUED;
        x->timeout_ms = timeout;
        x->deadline_ms = (uint64_t)now_monotonic_ms() + (uint64_t)timeout + CLOUD_HELPER_GRACE_MS;
        struct cloud_xfer **p = &c->xfers;
        while (*p)
                p = &(*p)->next;
        *p = x;
        c->n_xfers++;
        if (!c->h)
                (void)helper_start(c); /* a failure completes the request with -EIO from the loop */
        else if (!c->h->dying)
                flush_queue(c);
        /* else: the helper is on its way out; helper_finalize() starts a new one. */
        deadline_arm(c);
        if (ret_id)
                *ret_id = x->id;
        return 0;
}

int cloud_cancel(struct cloud *c, uint64_t id) {
        for (struct cloud_xfer *x = c->xfers; x; x = x->next)
                if (x->id == id) {
                        if (x->state == XFER_SENT && c->h && !c->h->dying) {
                                /* Best effort: the helper stops the transfer and sends
                                 * nothing; a response already on its way is ignored. */
                                struct https_ipc_msg m = {.type = HTTPS_IPC_CANCEL, .cancel = {.id = id}};
                                _cleanup_free_ uint8_t *frame = NULL;
                                size_t len;
                                if (https_ipc_encode(&m, &frame, &len) >= 0)
                                        (void)helper_write(c->h, frame, len);
                        }
                        xfer_unlink(c, x);
                        xfer_free(x);
                        helper_release_if_idle(c);
                        return 0;
                }
        return -ENOENT;
}

void cloud_close(struct cloud *c) {
        if (!c || c->closing)
                return;
        c->closing = true;
        while (c->xfers) {
                struct cloud_xfer *x = c->xfers;
                c->xfers = x->next;
                c->n_xfers--;
                xfer_free(x);
        }
        struct helper *h = c->h;
        c->h = NULL;
        if (h) {
                /* End of file on its socket makes the helper exit (or, over
                 * its socket, wait for the next connection); SIGTERM makes
                 * sure a wedged child does too, so the loop can finish. Its
                 * exit callback closes the process handle. */
                h->dying = true;
                h->eof = true;
                if (!uv_is_closing((uv_handle_t *)&h->pipe))
                        uv_close((uv_handle_t *)&h->pipe, helper_handle_closed);
                if (h->child && !h->exited)
                        (void)uv_process_kill(&h->proc, SIGTERM);
        }
        uv_timer_stop(&c->fail_timer);
        uv_close((uv_handle_t *)&c->fail_timer, timer_closed);
        uv_timer_stop(&c->deadline_timer);
        uv_close((uv_handle_t *)&c->deadline_timer, timer_closed);
}
