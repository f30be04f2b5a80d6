/* tpmidd-https: the process that does tpmidd's HTTPS.
 *
 * tpmidd owns the TPM and runs for months; libcurl with its TLS stack is
 * only needed for the seconds of a (re)provisioning run, and TLS parsing
 * has no business in the process that holds the TPM. So the daemon
 * (daemon/tpmidd/cloud.c) sends its requests here, in the frames of
 * lib/https-ipc.h: one HELLO with the client options, then REQUEST and
 * CANCEL frames; we answer every request we did not see cancelled with one
 * RESPONSE. Up to HTTPS_IPC_MAX_INFLIGHT transfers run at once on a libcurl
 * multi handle; curl_multi_poll() also watches our socket.
 *
 * Two ways to be started, one protocol:
 *
 * - By tpmidd, as its child (foreground runs, tests, the demo): the
 *   connection is a SOCK_STREAM socketpair on fd 3 (HTTPS_HELPER_FD). End of
 *   file on it (the daemon closed its end or died) makes us exit 0, and so
 *   does HTTPS_HELPER_IDLE_SEC seconds without a transfer in flight; the
 *   daemon starts a new helper when it needs one.
 *
 * - By systemd, socket-activated (units/tpmidd-https.socket, sd_listen_fds):
 *   fd 3 is a listening Unix stream socket that only tpmidd's user can
 *   connect to. We serve one connection at a time (tpmidd makes one; a
 *   second waits in the backlog until the first ends). tpmidd closes its
 *   connection once nothing is in flight, so end of file there is normal:
 *   we drop that connection's state and wait for the next one. We exit 0
 *   after HTTPS_HELPER_IDLE_SEC seconds without a connection; the next
 *   connect() makes systemd start us again, and one that arrives while we
 *   exit stays in the backlog for that new instance. Our own TLS
 *   connections (the multi handle's cache) outlive tpmidd's connections, so
 *   DPS polls a second apart reuse them.
 *
 * TPMIDD_HTTPS_IDLE_SEC overrides the idle time, for tests. A malformed
 * frame ends the connection (exit 1 when it was the only one). Errors go to
 * stderr, the daemon's or the service's (the journal), through lib/log.c.
 * Never logged: the Authorization header, request and response bodies. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "https-ipc.h"
#include "log.h"
#include "tpmid-config.h"
#include "util.h"

#define HTTPS_HELPER_FD 3                  /* the daemon's socketpair end, or the activated listening socket */
#define HTTPS_HELPER_IDLE_SEC 30           /* seconds without a transfer before we exit */
#define HTTPS_HELPER_IDLE_SEC_MAX 86400    /* largest TPMIDD_HTTPS_IDLE_SEC accepted (seconds) */
#define HTTPS_HELPER_CONNECT_TIMEOUT_MS 30000L /* TCP + TLS handshake, per transfer */
#define HTTPS_HELPER_HEADER_VALUE_MAX 128  /* bytes of a kept response header value; longer is junk */
#define HTTPS_HELPER_READ_CHUNK 65536      /* bytes read from the socket at once */
#define HTTPS_HELPER_POLL_MS 1000          /* longest curl_multi_poll() wait while transfers run (ms) */

struct xfer {
        CURL *easy;
        struct curl_slist *headers;
        uint8_t *body; /* copy of the request body */
        size_t body_len;
        char *resp; /* response body, grown as it arrives */
        size_t resp_len, resp_cap;
        bool too_big;
        char *retry_after;
        char *ms_error_code;
        char *date; /* Date: the daemon compares it with its clock */
        uint64_t id;
        char errbuf[CURL_ERROR_SIZE];
        struct xfer *next;
};

struct helper {
        int listen_fd; /* socket-activated: the listening socket; -1 when tpmidd started us */
        int fd;        /* the connection to tpmidd; -1 between connections (socket-activated only) */
        CURLM *multi;
        struct curl_slist *connect_to;
        char *ca_bundle;
        char *user_agent;
        bool have_hello;
        struct xfer *xfers;
        size_t n_xfers;
        uint8_t *in; /* bytes read, not yet a whole frame */
        size_t in_len, in_cap;
        uint8_t *out; /* encoded responses not yet written */
        size_t out_len, out_cap;
        uint64_t idle_since_ms; /* when we last became idle (see helper_idle()) */
        uint64_t idle_ms;
};

static void xfer_free(struct helper *h, struct xfer *x) {
        if (!x)
                return;
        if (x->easy) {
                curl_multi_remove_handle(h->multi, x->easy);
                curl_easy_cleanup(x->easy);
        }
        if (x->headers) {
                /* One entry holds the SAS token; wipe it before it goes back to malloc. */
                for (struct curl_slist *s = x->headers; s; s = s->next)
                        explicit_zero(s->data, strlen(s->data));
                curl_slist_free_all(x->headers);
        }
        free(x->body);
        free(x->resp);
        free(x->retry_after);
        free(x->ms_error_code);
        free(x->date);
        free(x);
}

static void xfer_unlink(struct helper *h, struct xfer *x) {
        for (struct xfer **p = &h->xfers; *p; p = &(*p)->next)
                if (*p == x) {
                        *p = x->next;
                        h->n_xfers--;
                        if (h->n_xfers == 0)
                                h->idle_since_ms = (uint64_t)now_monotonic_ms();
                        return;
                }
}

static int curl_to_errno(CURLcode cc) {
        switch (cc) {
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_COULDNT_CONNECT:
                return -ECONNREFUSED;
        case CURLE_COULDNT_RESOLVE_HOST:
                return -EHOSTUNREACH;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
                return -EPROTO;
        case CURLE_WRITE_ERROR:
                return -EMSGSIZE;
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
                return -ECONNRESET;
        default:
                return -EIO;
        }
}

/* Queue one encoded frame for writing. */
static int out_append(struct helper *h, const uint8_t *p, size_t n) {
        if (n == 0)
                return 0;
        if (h->out_len + n > h->out_cap) {
                size_t cap = h->out_cap ? h->out_cap : 4096;
                while (cap < h->out_len + n)
                        cap *= 2;
                uint8_t *b = realloc(h->out, cap);
                if (!b)
                        return -ENOMEM;
                h->out = b;
                h->out_cap = cap;
        }
        memcpy(h->out + h->out_len, p, n);
        h->out_len += n;
        return 0;
}

/* Write what the socket takes now. Returns 0, or -errno when the daemon is gone. */
static int out_flush(struct helper *h) {
        size_t done = 0;
        while (done < h->out_len) {
                ssize_t n = send(h->fd, h->out + done, h->out_len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                break;
                        return -errno;
                }
                done += (size_t)n;
        }
        if (done == 0)
                return 0;
        memmove(h->out, h->out + done, h->out_len - done);
        h->out_len -= done;
        return 0;
}

static int send_response(struct helper *h, const struct https_ipc_response *resp) {
        struct https_ipc_msg m = {.type = HTTPS_IPC_RESPONSE, .response = *resp};
        _cleanup_free_ uint8_t *frame = NULL;
        size_t len;
        int r = https_ipc_encode(&m, &frame, &len);
        if (r < 0)
                return r;
        return out_append(h, frame, len);
}

static int send_error(struct helper *h, uint64_t id, int error, const char *msg) {
        struct https_ipc_response resp = {.id = id, .error = error, .error_msg = msg, .body = (const uint8_t *)""};
        return send_response(h, &resp);
}

static int check_done(struct helper *h) {
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(h->multi, &left))) {
                if (msg->msg != CURLMSG_DONE)
                        continue;
                struct xfer *x = NULL;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
                if (!x)
                        continue;
                CURLcode cc = msg->data.result;
                struct https_ipc_response r = {.id = x->id};
                if (x->too_big)
                        cc = CURLE_WRITE_ERROR;
                if (cc != CURLE_OK) {
                        r.error = curl_to_errno(cc);
                        r.error_msg = x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc);
                        if (x->too_big)
                                r.error_msg = "response body larger than CLOUD_MAX_RESPONSE_BYTES";
                } else {
                        long status = 0;
                        r.error_msg = "";
                        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
                        r.status = status > 0 && status <= (long)HTTPS_IPC_MAX_STATUS ? (uint32_t)status : 0;
                        if (r.status == 0) {
                                r.error = -EPROTO;
                                r.error_msg = "the server sent an invalid HTTP status";
                        }
                }
                r.body = x->resp ? (const uint8_t *)x->resp : (const uint8_t *)"";
                r.body_len = x->resp_len;
                r.retry_after = x->retry_after;
                r.error_code_header = x->ms_error_code;
                r.date = x->date;
                curl_off_t usec = 0;
                if (curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &usec) == CURLE_OK && usec > 0)
                        r.total_usec = (uint64_t)usec;
                int e = send_response(h, &r);
                xfer_unlink(h, x);
                xfer_free(h, x);
                if (e < 0)
                        return log_error_errno(e, "could not encode a response: %s", strerror(-e));
        }
        return 0;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp) {
        struct xfer *x = userp;
        size_t len = size * n;
        if (x->resp_len + len > HTTPS_IPC_MAX_BODY_BYTES) {
                x->too_big = true;
                return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
        }
        if (x->resp_len + len + 1 > x->resp_cap) {
                size_t cap = x->resp_cap ? x->resp_cap : 1024;
                while (cap < x->resp_len + len + 1)
                        cap *= 2;
                char *p = realloc(x->resp, cap);
                if (!p)
                        return 0;
                x->resp = p;
                x->resp_cap = cap;
        }
        memcpy(x->resp + x->resp_len, data, len);
        x->resp_len += len;
        x->resp[x->resp_len] = 0;
        return len;
}

/* Keep the three response headers the protocol needs. */
static size_t header_cb(char *data, size_t size, size_t n, void *userp) {
        struct xfer *x = userp;
        size_t len = size * n;
        static const struct {
                const char *name;
                size_t off;
        } wanted[] = {
                {"retry-after:", offsetof(struct xfer, retry_after)},
                {"x-ms-error-code:", offsetof(struct xfer, ms_error_code)},
                {"date:", offsetof(struct xfer, date)},
        };
        for (size_t i = 0; i < ELEMENTSOF(wanted); i++) {
                size_t nl = strlen(wanted[i].name);
                if (len <= nl || strncasecmp(data, wanted[i].name, nl) != 0)
                        continue;
                const char *v = data + nl;
                size_t vl = len - nl;
                while (vl && (*v == ' ' || *v == '\t'))
                        v++, vl--;
                while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
                        vl--;
                if (vl > HTTPS_HELPER_HEADER_VALUE_MAX || memchr(v, 0, vl))
                        break; /* no legitimate value is longer; ignore junk */
                char **slot = (char **)((char *)x + wanted[i].off);
                free(*slot);
                *slot = strndup(v, vl);
        }
        return len;
}

/* Start one transfer. Returns 0, or -errno (the caller answers with an error). */
static int start_request(struct helper *h, const struct https_ipc_request *req) {
        struct xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->id = req->id;
        x->easy = curl_easy_init();
        if (!x->easy)
                goto oom;
        CURL *e = x->easy;
        curl_easy_setopt(e, CURLOPT_URL, req->url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, x);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, HTTPS_HELPER_CONNECT_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(e, CURLOPT_USERAGENT, h->user_agent);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, 0L);
        if (h->ca_bundle)
                curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_bundle);
        if (h->connect_to)
                curl_easy_setopt(e, CURLOPT_CONNECT_TO, h->connect_to);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
        const char *fixed[] = {"Accept: application/json", "Content-Type: application/json; charset=utf-8", "Expect:"};
        for (size_t i = 0; i < ELEMENTSOF(fixed); i++) {
                struct curl_slist *n = curl_slist_append(x->headers, fixed[i]);
                if (!n)
                        goto oom;
                x->headers = n;
        }
        if (req->authorization) {
                _cleanup_free_ char *line = NULL;
                if (asprintf(&line, "Authorization: %s", req->authorization) < 0) {
                        line = NULL;
                        goto oom;
                }
                struct curl_slist *n = curl_slist_append(x->headers, line);
                explicit_zero(line, strlen(line));
                if (!n)
                        goto oom;
                x->headers = n;
        }
        if (req->if_match) {
                _cleanup_free_ char *line = NULL;
                if (asprintf(&line, "If-Match: %s", req->if_match) < 0) {
                        line = NULL;
                        goto oom;
                }
                struct curl_slist *n = curl_slist_append(x->headers, line);
                if (!n)
                        goto oom;
                x->headers = n;
        }
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
        if (req->body) {
                x->body = malloc(req->body_len + 1);
                if (!x->body)
                        goto oom;
                memcpy(x->body, req->body, req->body_len);
                x->body[req->body_len] = 0;
                x->body_len = req->body_len;
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
        } else if (strcmp(req->method, "GET") != 0) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        }
        if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
                xfer_free(h, x);
                return -EIO;
        }
        x->next = h->xfers;
        h->xfers = x;
        h->n_xfers++;
        return 0;
oom:
        xfer_free(h, x);
        return -ENOMEM;
}

static int apply_hello(struct helper *h, const struct https_ipc_hello *hello) {
        if (hello->ca_bundle && !(h->ca_bundle = strdup(hello->ca_bundle)))
                return -ENOMEM;
        if (!(h->user_agent = strdup(hello->user_agent)))
                return -ENOMEM;
        if (hello->connect_to && *hello->connect_to) {
                _cleanup_free_ char *copy = strdup(hello->connect_to);
                if (!copy)
                        return -ENOMEM;
                char *save = NULL;
                for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                        struct curl_slist *n = curl_slist_append(h->connect_to, tok);
                        if (!n)
                                return -ENOMEM;
                        h->connect_to = n;
                }
        }
        h->have_hello = true;
        return 0;
}

/* Act on one decoded frame. Returns 0, or -errno to stop (a protocol error, logged). */
static int handle_msg(struct helper *h, const struct https_ipc_msg *m) {
        int r;
        switch (m->type) {
        case HTTPS_IPC_HELLO:
                if (h->have_hello) {
                        log_error("protocol error: a second hello frame");
                        return -EBADMSG;
                }
                r = apply_hello(h, &m->hello);
                if (r < 0)
                        return log_error_errno(r, "could not apply the client options: %s", strerror(-r));
                return 0;
        case HTTPS_IPC_REQUEST:
                if (!h->have_hello) {
                        log_error("protocol error: a request before the hello frame");
                        return -EBADMSG;
                }
                for (struct xfer *x = h->xfers; x; x = x->next)
                        if (x->id == m->request.id) {
                                log_error("protocol error: request id %llu is already running",
                                          (unsigned long long)m->request.id);
                                return -EBADMSG;
                        }
                h->idle_since_ms = (uint64_t)now_monotonic_ms();
                if (h->n_xfers >= HTTPS_IPC_MAX_INFLIGHT)
                        r = -EAGAIN; /* the daemon keeps to the same limit; answer, do not die */
                else
                        r = start_request(h, &m->request);
                if (r < 0) {
                        r = send_error(h, m->request.id, r, strerror(-r));
                        if (r < 0)
                                return log_error_errno(r, "could not encode a response: %s", strerror(-r));
                }
                return 0;
        case HTTPS_IPC_CANCEL:
                for (struct xfer *x = h->xfers; x; x = x->next)
                        if (x->id == m->cancel.id) {
                                xfer_unlink(h, x);
                                xfer_free(h, x);
                                break;
                        }
                return 0; /* unknown id: it finished while the cancel was on its way */
        case HTTPS_IPC_RESPONSE:
                log_error("protocol error: the daemon sent a response frame");
                return -EBADMSG;
        }
        return -EBADMSG;
}

/* Read what is there and act on every whole frame. Returns 1 on end of
 * file, 0 to go on, -errno to stop (logged). */
static int read_frames(struct helper *h) {
        for (;;) {
                if (h->in_cap - h->in_len < HTTPS_HELPER_READ_CHUNK) {
                        size_t cap = h->in_len + HTTPS_HELPER_READ_CHUNK;
                        uint8_t *b = realloc(h->in, cap);
                        if (!b)
                                return log_error_errno(-ENOMEM, "out of memory");
                        h->in = b;
                        h->in_cap = cap;
                }
                ssize_t n = recv(h->fd, h->in + h->in_len, h->in_cap - h->in_len, MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return 0;
                        if (errno == ECONNRESET)
                                return 1;
                        return log_error_errno(-errno, "reading from tpmidd: %s", strerror(errno));
                }
                if (n == 0)
                        return 1;
                h->in_len += (size_t)n;
                size_t off = 0;
                for (;;) {
                        size_t total;
                        int r = https_ipc_frame_peek(h->in + off, h->in_len - off, &total);
                        if (r == -EAGAIN)
                                break;
                        if (r < 0)
                                return log_error_errno(r, "protocol error: a frame with an invalid length");
                        if (h->in_len - off < total)
                                break;
                        struct https_ipc_msg m;
                        r = https_ipc_decode(h->in + off, total, &m);
                        explicit_zero(h->in + off, total); /* requests carry the SAS token */
                        if (r < 0)
                                return log_error_errno(r, "protocol error: a malformed frame (%s)", strerror(-r));
                        off += total;
                        r = handle_msg(h, &m);
                        https_ipc_msg_clear(&m);
                        if (r < 0)
                                return r;
                }
                memmove(h->in, h->in + off, h->in_len - off);
                h->in_len -= off;
        }
}

static uint64_t idle_ms_from_env(void) {
        const char *s = getenv("TPMIDD_HTTPS_IDLE_SEC");
        if (!s || !*s)
                return (uint64_t)HTTPS_HELPER_IDLE_SEC * 1000u;
        char *end = NULL;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || *end || v == 0 || v > HTTPS_HELPER_IDLE_SEC_MAX) {
                log_warn("TPMIDD_HTTPS_IDLE_SEC=%s is not a number of seconds in 1..%u, using %u, ignoring", s,
                         (unsigned)HTTPS_HELPER_IDLE_SEC_MAX, (unsigned)HTTPS_HELPER_IDLE_SEC);
                return (uint64_t)HTTPS_HELPER_IDLE_SEC * 1000u;
        }
        return (uint64_t)v * 1000u;
}

/* Forget one connection: its transfers (nobody wants their answers), its
 * client options, its buffers. The multi handle and its connection cache
 * stay for the next one. */
static void conn_end(struct helper *h) {
        while (h->xfers) {
                struct xfer *x = h->xfers;
                h->xfers = x->next;
                xfer_free(h, x);
        }
        h->n_xfers = 0;
        curl_slist_free_all(h->connect_to);
        h->connect_to = NULL;
        free(h->ca_bundle);
        h->ca_bundle = NULL;
        free(h->user_agent);
        h->user_agent = NULL;
        h->have_hello = false;
        if (h->in) {
                explicit_zero(h->in, h->in_cap);
                free(h->in);
        }
        h->in = NULL;
        h->in_len = h->in_cap = 0;
        free(h->out);
        h->out = NULL;
        h->out_len = h->out_cap = 0;
        if (h->fd >= 0)
                close(h->fd);
        h->fd = -1;
        h->idle_since_ms = (uint64_t)now_monotonic_ms();
}

/* Take the next connection from the activated listening socket. A failure
 * to accept one is not ours to die of: log it and keep listening. */
static void conn_accept(struct helper *h) {
        int fd = accept4(h->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                        log_warn("accept on the activated socket: %s, ignoring", strerror(errno));
                return;
        }
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
                log_debug("connection from pid %d uid %u", (int)cred.pid, (unsigned)cred.uid);
        h->fd = fd;
        h->idle_since_ms = (uint64_t)now_monotonic_ms();
}

/* Whether the idle clock runs: started by tpmidd, while no transfer is in
 * flight and nothing waits to be written; socket-activated, while no
 * connection is open (tpmidd closes its connection when it has nothing in
 * flight, and a connection must never be cut under a request it sent). */
static bool helper_idle(const struct helper *h) {
        if (h->listen_fd >= 0)
                return h->fd < 0;
        return h->n_xfers == 0 && h->out_len == 0;
}

static void helper_done(struct helper *h) {
        conn_end(h);
        if (h->listen_fd >= 0)
                close(h->listen_fd);
        curl_multi_cleanup(h->multi);
        curl_global_cleanup();
}

/* Find our socket on HTTPS_HELPER_FD: the listening socket systemd passed
 * (LISTEN_FDS=1 for our pid), or the connected end tpmidd gave us. Returns
 * 0, or -EBADF / -EINVAL (logged). */
static int find_socket(struct helper *h) {
        int n = sd_listen_fds(1); /* 1: nothing we run should see LISTEN_* */
        if (n < 0)
                return log_error_errno(n, "LISTEN_FDS: %s", strerror(-n));
        if (n > 1) {
                log_error("socket activation passed %d sockets; tpmidd-https.socket listens on one", n);
                return -EINVAL;
        }
        if (n == 1) {
                if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
                        log_error("the activated fd %d is not a listening Unix stream socket", SD_LISTEN_FDS_START);
                        return -EINVAL;
                }
                /* The file description is shared with systemd, which only polls it. */
                int fl = fcntl(SD_LISTEN_FDS_START, F_GETFL);
                if (fl < 0 || fcntl(SD_LISTEN_FDS_START, F_SETFL, fl | O_NONBLOCK) < 0)
                        return log_error_errno(-errno, "could not make the activated socket non-blocking: %s",
                                               strerror(errno));
                h->listen_fd = SD_LISTEN_FDS_START;
                log_debug("socket-activated: waiting for tpmidd's connections");
                return 0;
        }
        if (fcntl(HTTPS_HELPER_FD, F_GETFL) < 0) {
                log_error("fd %d is not open: tpmidd starts this helper with a socket there, "
                          "systemd through tpmidd-https.socket",
                          HTTPS_HELPER_FD);
                return -EBADF;
        }
        if (sd_is_socket_unix(HTTPS_HELPER_FD, SOCK_STREAM, 0, NULL, 0) <= 0) {
                log_error("fd %d is not a connected Unix stream socket", HTTPS_HELPER_FD);
                return -EINVAL;
        }
        h->fd = HTTPS_HELPER_FD;
        return 0;
}

int main(int argc, char **argv) {
        int l = log_level_from_string(getenv("AZIOT_LOG"));
        if (l >= 0)
                log_set_max_level(l);
        if (argc > 1) {
                log_error("%s takes no arguments: tpmidd starts it with a socket on fd %d", argv[0], HTTPS_HELPER_FD);
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        struct helper h = {.listen_fd = -1, .fd = -1};
        if (find_socket(&h) < 0)
                return 2;
        (void)fcntl(HTTPS_HELPER_FD, F_SETFD, FD_CLOEXEC);
        /* Whatever else tpmidd let through (a TPM device or TCTI socket opened
         * without O_CLOEXEC by a library) is not ours to hold. */
        (void)close_range(HTTPS_HELPER_FD + 1, ~0u, 0);
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error("curl_global_init failed");
                return 1;
        }
        h.multi = curl_multi_init();
        if (!h.multi) {
                log_error("curl_multi_init failed");
                curl_global_cleanup();
                return 1;
        }
        h.idle_ms = idle_ms_from_env();
        h.idle_since_ms = (uint64_t)now_monotonic_ms();
        int rc = 0;
        for (;;) {
                bool listening = h.fd < 0;
                struct curl_waitfd wfd = {
                        .fd = listening ? h.listen_fd : h.fd,
                        .events = CURL_WAIT_POLLIN | (h.out_len ? CURL_WAIT_POLLOUT : 0),
                };
                int timeout = HTTPS_HELPER_POLL_MS;
                if (helper_idle(&h)) {
                        uint64_t now = (uint64_t)now_monotonic_ms(), deadline = h.idle_since_ms + h.idle_ms;
                        if (now >= deadline) {
                                log_debug("no request for %llu s, exiting", (unsigned long long)(h.idle_ms / 1000u));
                                break;
                        }
                        timeout = (int)(deadline - now < (uint64_t)HTTPS_HELPER_POLL_MS ? deadline - now
                                                                                          : HTTPS_HELPER_POLL_MS);
                }
                CURLMcode mc = curl_multi_poll(h.multi, &wfd, 1, timeout, NULL);
                if (mc != CURLM_OK) {
                        log_error("curl_multi_poll: %s", curl_multi_strerror(mc));
                        rc = 1;
                        break;
                }
                if (listening) {
                        if (wfd.revents & CURL_WAIT_POLLIN)
                                conn_accept(&h);
                        continue;
                }
                /* Set when this connection is over: 1 at end of file, -errno
                 * after an error (logged). */
                int end = 0;
                if (wfd.revents & CURL_WAIT_POLLIN) /* also set at end of file */
                        end = read_frames(&h);
                if (end == 0) {
                        int running;
                        mc = curl_multi_perform(h.multi, &running);
                        if (mc != CURLM_OK) {
                                log_error("curl_multi_perform: %s", curl_multi_strerror(mc));
                                rc = 1;
                                break;
                        }
                        end = check_done(&h);
                }
                if (end == 0) {
                        int r = out_flush(&h);
                        if (r < 0) {
                                if (r != -EPIPE && r != -ECONNRESET)
                                        log_error_errno(r, "writing to tpmidd: %s", strerror(-r));
                                end = 1; /* the daemon is gone */
                        }
                }
                if (end == 0)
                        continue;
                if (h.listen_fd < 0) { /* our only connection: nobody wants our answers */
                        rc = end < 0 ? 1 : 0;
                        break;
                }
                conn_end(&h);
        }
        helper_done(&h);
        return rc;
}
