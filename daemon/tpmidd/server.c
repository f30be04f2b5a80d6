/* Unix-socket HTTP/1.1 server on libuv: listening, accepting with
 * SO_PEERCRED, connection limits, keep-alive, timeouts, answers, lingering
 * close, authorisation helpers. See server.h. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "api.h"
#include "authz.h"
#include "log.h"
#include "server.h"

#define SERVER_MAX_GROUPS 1024 /* supplementary groups looked at for one user */

enum conn_state {
        CONN_READING,  /* waiting for (more of) a request */
        CONN_BUSY,     /* the handler owns the request */
        CONN_WRITING,  /* writing an answer; reading resumes afterwards (keep-alive) */
        CONN_LINGER,   /* final answer written and shut down; discarding input until EOF */
        CONN_CLOSING,  /* uv_close() called */
};

struct server_conn {
        uv_pipe_t pipe;
        uv_timer_t timer;
        uv_write_t wreq;
        uv_shutdown_t sreq;
        struct server *srv; /* NULL once the server was freed */
        struct server_conn *prev, *next;
        enum conn_state state;
        bool rejected;        /* over a connection limit: answered without reading */
        size_t discarded;     /* bytes read and thrown away after a final answer */
        bool dead;            /* handles closed while the handler owed an answer */
        bool close_after;     /* close after the answer being written */
        bool in_request;      /* request timer (not idle timer) is armed */
        int handles_open;     /* pipe + timer close callbacks still due */
        struct server_request req;
        struct http_request_parser parser;
        uint8_t *pending;     /* bytes read after the request in progress (pipelining) */
        size_t pending_len;
        uint8_t *wbuf;
        bool in_group;
        bool parser_live;     /* parser initialised and not yet released */
        bool reading;         /* uv_read_start() is in effect */
        bool peer_eof;        /* the client shut down its side: answer, then close */
};

struct server {
        uv_loop_t *loop;
        uv_pipe_t listener;
        bool listening;
        bool draining;
        bool closing;
        char *name, *path;
        bool bound_path; /* we created path and remove it at close */
        gid_t sock_gid;
        bool has_sock_gid;
        server_handler_t handler;
        void *userdata;
        struct server_limits limits;
        const struct tpmid_config *config;
        int stranger_status;
        struct server_conn *conns;
        unsigned n_conns;    /* accepted and counted against the limits */
        unsigned n_rejected; /* refused connections being answered or lingering (SERVER_REFUSALS_MAX) */
        uint64_t refused;    /* connections refused at accept since the start */
        int64_t refusal_log_ms;     /* monotonic ms of the last refusal log line; 0: none yet */
        uint64_t refusals_unlogged; /* refusals since then that were not logged */
        uint64_t seq;
        void (*drained)(void *userdata);
        void *drained_userdata;
        int handles_open; /* the listener */
        uint8_t rbuf[SERVER_READ_BUFFER_BYTES];
        bool rbuf_busy;
};

/* All servers of the process: one daemon has two, and its status reports both. */
static uint64_t refused_total;

struct server_limits server_limits_from_config(const struct config_limits *l) {
        return (struct server_limits){
                .max_connections = l->max_connections,
                .max_connections_per_uid = l->max_connections_per_uid,
                .max_header_bytes = l->max_header_bytes,
                .max_body_bytes = l->max_body_bytes,
                .idle_timeout_ms = (uint64_t)l->idle_timeout_sec * 1000,
                .request_timeout_ms = (uint64_t)l->request_timeout_sec * 1000,
        };
}

static void conn_close(struct server_conn *c);
static void conn_resume(struct server_conn *c);
static bool input_waiting(struct server_conn *c);
static void maybe_drained(struct server *s);

/* ---- lifetime ---- */

static void parser_release(struct server_conn *c) {
        if (c->parser_live)
                http_request_parser_done(&c->parser);
        c->parser_live = false;
}

static void conn_free(struct server_conn *c) {
        parser_release(c);
        c->req.http = http_request_free(c->req.http);
        free(c->pending);
        free(c->wbuf);
        free(c);
}

static void conn_unlink(struct server_conn *c) {
        struct server *s = c->srv;
        if (!s)
                return;
        if (c->prev)
                c->prev->next = c->next;
        else if (s->conns == c)
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
        if (c->rejected)
                s->n_rejected--;
        else
                s->n_conns--;
        c->srv = NULL;
        maybe_drained(s);
}

static void conn_handle_closed(uv_handle_t *h) {
        struct server_conn *c = h->data;
        if (--c->handles_open > 0)
                return;
        if (c->state == CONN_BUSY) {
                /* The handler still owes an answer (a TPM job runs): free in server_reply. */
                c->dead = true;
                return;
        }
        conn_free(c);
}

static void conn_close(struct server_conn *c) {
        if (c->state == CONN_CLOSING || c->dead)
                return;
        bool busy = c->state == CONN_BUSY;
        c->state = busy ? CONN_BUSY : CONN_CLOSING;
        if (busy)
                c->dead = true; /* marks "closing" for a busy connection */
        uv_timer_stop(&c->timer);
        uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
        uv_close((uv_handle_t *)&c->pipe, conn_handle_closed);
        /* Stop counting it now, not a loop turn later: a client that closed
         * and reconnects must find its slot free. */
        conn_unlink(c);
}

/* ---- writing ---- */

static void linger_timeout(uv_timer_t *t) {
        conn_close(t->data);
}

static void shutdown_done(uv_shutdown_t *req, int status) {
        struct server_conn *c = req->data;
        if (c->state == CONN_CLOSING)
                return;
        if (status < 0 || c->peer_eof) {
                /* The client already shut down its side: nothing left to discard. */
                conn_close(c);
                return;
        }
        /* Half-closed: the client reads our answer and EOF. Keep reading (and
         * discarding) for a moment so unread input does not turn into a
         * connection reset that could destroy the answer on the client side. */
        c->state = CONN_LINGER;
        uv_timer_start(&c->timer, linger_timeout, SERVER_LINGER_MS, 0);
}

static void deferred_resume(uv_timer_t *t) {
        struct server_conn *c = t->data;
        c->state = CONN_READING;
        conn_resume(c);
}

/* The answer is out: close, or go on with the next request. sync is true
 * when called from inside server_reply(), where processing stashed bytes
 * right away could recurse once per pipelined request. */
static void write_finished(struct server_conn *c, bool sync) {
        /* Draining: a request that already arrived is still answered (with
         * Connection: close); an idle connection ends here. */
        if (c->close_after || !c->srv || (c->peer_eof && !c->pending) ||
            (c->srv->draining && !c->pending && !input_waiting(c))) {
                c->sreq.data = c;
                if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->pipe, shutdown_done) < 0)
                        conn_close(c);
                return;
        }
        if (sync && c->pending) {
                /* Stay "writing" (new bytes keep being stashed) until the next loop turn. */
                uv_timer_start(&c->timer, deferred_resume, 0, 0);
                return;
        }
        c->state = CONN_READING;
        conn_resume(c);
}

static void write_done(uv_write_t *w, int status) {
        struct server_conn *c = w->data;
        free(c->wbuf);
        c->wbuf = NULL;
        if (c->state == CONN_CLOSING)
                return;
        if (status < 0) {
                log_debug("%s: write to uid %u failed: %s", c->srv ? c->srv->name : "?", (unsigned)c->req.uid,
                          uv_strerror(status));
                conn_close(c);
                return;
        }
        write_finished(c, false);
}

/* Takes ownership of buf. Answers are small and the socket buffer is
 * almost always empty, so try a plain write first: no write request, no
 * poll-for-writable registration, no extra loop turn. */
static int conn_write(struct server_conn *c, uint8_t *buf, size_t len) {
        c->state = CONN_WRITING;
        uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
        int r = uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
        if (r == (int)len) {
                free(buf);
                write_finished(c, true);
                return 0;
        }
        if (r < 0 && r != UV_EAGAIN) {
                free(buf);
                conn_close(c);
                return r;
        }
        size_t done = r > 0 ? (size_t)r : 0;
        c->wbuf = buf;
        b = uv_buf_init((char *)buf + done, (unsigned)(len - done));
        c->wreq.data = c;
        r = uv_write(&c->wreq, (uv_stream_t *)&c->pipe, &b, 1, write_done);
        if (r < 0) {
                free(c->wbuf);
                c->wbuf = NULL;
                conn_close(c);
        }
        return r;
}

static int conn_answer_error(struct server_conn *c, int status, const char *message, const struct http_header *extra,
                             size_t n_extra) {
        uint8_t *buf = NULL;
        size_t len = 0;
        c->close_after = true;
        uv_timer_stop(&c->timer);
        int r = http_response_format_error(status, message, false, extra, n_extra, &buf, &len);
        if (r < 0) {
                conn_close(c);
                return r;
        }
        return conn_write(c, buf, len);
}

/* ---- reading ---- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        struct server_conn *c = h->data;
        struct server *s = c->srv;
        /* One buffer per server is enough: read_cb consumes or copies every
         * byte before returning, and libuv calls read callbacks one at a time. */
        if (!s || s->rbuf_busy) {
                *buf = uv_buf_init(NULL, 0);
                return;
        }
        s->rbuf_busy = true;
        *buf = uv_buf_init((char *)s->rbuf, sizeof s->rbuf);
}

static void timer_cb(uv_timer_t *t) {
        struct server_conn *c = t->data;
        if (c->state != CONN_READING)
                return;
        if (c->in_request) {
                log_struct(LOG_INFO, LOG_MESSAGE_LIMIT_HIT,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", c->req.uid), LOG_NUM("CLIENT_PID", c->req.pid),
                                      LOG_NUM("HTTP_STATUS", 408)),
                           "%s: request from uid %u not complete within %llu ms, answering 408",
                           c->srv ? c->srv->name : "?", (unsigned)c->req.uid,
                           c->srv ? (unsigned long long)c->srv->limits.request_timeout_ms : 0ULL);
                conn_answer_error(c, 408, "request not received in time", NULL, 0);
        } else {
                log_debug("%s: closing idle connection of uid %u", c->srv ? c->srv->name : "?", (unsigned)c->req.uid);
                conn_close(c);
        }
}

static void arm_timer(struct server_conn *c) {
        struct server *s = c->srv;
        bool in_req = http_request_parser_in_request(&c->parser) || c->pending_len > 0;
        if (in_req && c->in_request)
                return; /* the request timer runs from the request's first byte */
        c->in_request = in_req;
        uv_timer_start(&c->timer, timer_cb, in_req ? s->limits.request_timeout_ms : s->limits.idle_timeout_ms, 0);
}

static void dispatch(struct server_conn *c) {
        struct server *s = c->srv;
        uv_timer_stop(&c->timer);
        c->in_request = false;
        c->state = CONN_BUSY;
        c->req.seq = ++s->seq;
        s->handler(&c->req, s->userdata);
}

/* Feed bytes; stashes what follows a complete request. Returns true when the
 * connection is still reading afterwards. */
static bool conn_feed(struct server_conn *c, const uint8_t *data, size_t len) {
        while (c->state == CONN_READING) {
                size_t used = 0;
                int r = http_request_parser_feed(&c->parser, data, len, &used);
                data += used;
                len -= used;
                if (r == HTTP_FEED_EXPECT_CONTINUE) {
                        /* curl asks for this before bodies over 1 KiB and would
                         * otherwise wait a second. The socket buffer is empty
                         * while a request is read, so a plain write fits; if it
                         * does not, the client sends the body after its timeout. */
                        uv_buf_t b = uv_buf_init((char *)HTTP_CONTINUE_RESPONSE, sizeof HTTP_CONTINUE_RESPONSE - 1);
                        (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
                        continue;
                }
                if (r == HTTP_FEED_NEED_MORE) {
                        arm_timer(c);
                        return true;
                }
                if (r == HTTP_FEED_REQUEST) {
                        if (len > 0) {
                                uint8_t *p = malloc(len);
                                if (!p) {
                                        conn_close(c);
                                        return false;
                                }
                                memcpy(p, data, len);
                                free(c->pending);
                                c->pending = p;
                                c->pending_len = len;
                        }
                        struct http_request *hr = NULL;
                        if (http_request_take(&c->parser, &hr) < 0) {
                                conn_close(c);
                                return false;
                        }
                        c->req.http = hr;
                        /* Reading goes on while the handler works (no epoll
                         * change per request); what arrives is stashed. */
                        dispatch(c);
                        return false;
                }
                if (r == -EBADMSG) {
                        const char *msg = NULL;
                        int status = http_request_parser_error(&c->parser, &msg);
                        log_struct(LOG_INFO, status == 431 || status == 413 ? LOG_MESSAGE_LIMIT_HIT : NULL,
                                   LOG_FIELDS(LOG_NUM("CLIENT_UID", c->req.uid), LOG_NUM("CLIENT_PID", c->req.pid),
                                              LOG_NUM("HTTP_STATUS", status)),
                                   "%s: refused a request from uid %u: %d %s", c->srv->name, (unsigned)c->req.uid,
                                   status, msg ? msg : "");
                        conn_answer_error(c, status ? status : 400, msg ? msg : "bad request", NULL, 0);
                        return false;
                }
                conn_close(c);
                return false;
        }
        return false;
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
        struct server_conn *c = st->data;
        struct server *s = c->srv;
        if (s && buf->base == (char *)s->rbuf)
                s->rbuf_busy = false;
        if (n == 0)
                return;
        if (n == UV_EOF && (c->state == CONN_BUSY || c->state == CONN_WRITING)) {
                /* Half-closed after sending: still owed an answer, and so is
                 * every complete request stashed behind it (write_finished
                 * goes on with them and closes when none is left). */
                c->peer_eof = true;
                c->reading = false;
                uv_read_stop(st);
                return;
        }
        if (n < 0) {
                if (c->state == CONN_READING && c->parser_live && http_request_parser_in_request(&c->parser) && n == UV_EOF)
                        log_debug("%s: uid %u closed in the middle of a request", s ? s->name : "?",
                                  (unsigned)c->req.uid);
                conn_close(c);
                return;
        }
        if (c->state == CONN_LINGER || c->rejected) {
                /* Discard, but not without end: past one request's worth a
                 * client is not sending a request but using our loop. */
                c->discarded += (size_t)n;
                if (c->discarded > SERVER_DISCARD_MAX_BYTES)
                        conn_close(c);
                return;
        }
        if (c->state == CONN_BUSY || c->state == CONN_WRITING) {
                /* The next request (pipelined, or sent right after our answer
                 * arrived) waits; past one maximal request, stop reading until
                 * this one is answered. */
                uint8_t *p = realloc(c->pending, c->pending_len + (size_t)n);
                if (!p) {
                        conn_close(c);
                        return;
                }
                memcpy(p + c->pending_len, buf->base, (size_t)n);
                c->pending = p;
                c->pending_len += (size_t)n;
                if (s && c->pending_len >= (size_t)s->limits.max_header_bytes + s->limits.max_body_bytes) {
                        uv_read_stop(st);
                        c->reading = false;
                }
                return;
        }
        if (c->state != CONN_READING)
                return;
        conn_feed(c, (const uint8_t *)buf->base, (size_t)n);
}

/* After an answer on a keep-alive connection: process stashed bytes, then read. */
static void conn_resume(struct server_conn *c) {
        parser_release(c);
        c->parser_live = true;
        http_request_parser_init(&c->parser, &(struct http_limits){
                                                     .max_header_bytes = c->srv->limits.max_header_bytes,
                                                     .max_body_bytes = c->srv->limits.max_body_bytes,
                                                     .max_url_bytes = HTTP_MAX_URL_BYTES,
                                                     .max_headers = HTTP_MAX_HEADERS,
                                             });
        if (c->pending) {
                uint8_t *p = c->pending;
                size_t n = c->pending_len;
                c->pending = NULL;
                c->pending_len = 0;
                bool reading = conn_feed(c, p, n);
                free(p);
                if (!reading)
                        return;
        }
        if (c->peer_eof) {
                /* What is left is at most the start of a request that can
                 * never complete: the client has shut down its side. */
                conn_close(c);
                return;
        }
        if (!c->reading) {
                if (uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) < 0) {
                        conn_close(c);
                        return;
                }
                c->reading = true;
        }
        arm_timer(c);
}

/* ---- answers from handlers ---- */

int server_reply(struct server_request *req, int status, const char *json_body, const struct http_header *extra,
                 size_t n_extra) {
        struct server_conn *c = req->conn;
        bool keep_alive = req->http && req->http->keep_alive;
        c->req.http = http_request_free(c->req.http);

        if (c->dead) {
                /* Closed while the handler worked: nobody to answer. */
                if (c->handles_open == 0)
                        conn_free(c);
                else
                        c->state = CONN_CLOSING;
                return -ECONNRESET;
        }
        struct server *s = c->srv;
        /* After the client's EOF only the stashed bytes are left: the answer
         * to the last request there says "close". */
        if (s->draining || (c->peer_eof && !c->pending))
                keep_alive = false;
        c->close_after = !keep_alive;
        parser_release(c);

        uint8_t *buf = NULL;
        size_t len = 0;
        int r = http_response_format(status, json_body ? "application/json" : NULL, (const uint8_t *)json_body,
                                     json_body ? strlen(json_body) : 0, keep_alive, extra, n_extra, &buf, &len);
        if (r < 0) {
                c->state = CONN_READING;
                conn_close(c);
                return r;
        }
        return conn_write(c, buf, len);
}

int server_reply_error(struct server_request *req, int status, const struct http_header *extra, size_t n_extra,
                       const char *fmt, ...) {
        char msg[API_ERROR_MESSAGE_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        _cleanup_free_ char *body = NULL;
        size_t len;
        if (http_error_body(msg, &body, &len) < 0)
                return server_reply(req, 500, NULL, extra, n_extra);
        return server_reply(req, status, body, extra, n_extra);
}

/* ---- authorisation ---- */

static bool uid_in_group(uid_t uid, gid_t primary, gid_t want) {
        if (primary == want)
                return true;
        char pwbuf[4096];
        struct passwd pw, *pwp = NULL;
        if (getpwuid_r(uid, &pw, pwbuf, sizeof pwbuf, &pwp) != 0 || !pwp)
                return false;
        if (pw.pw_gid == want)
                return true;
        gid_t groups[SERVER_MAX_GROUPS];
        int n = (int)ELEMENTSOF(groups);
        if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
                n = (int)ELEMENTSOF(groups); /* more groups than we look at: check the first ones */
        for (int i = 0; i < n; i++)
                if (groups[i] == want)
                        return true;
        return false;
}

bool server_request_in_socket_group(const struct server_request *req) {
        return req->uid == 0 || req->conn->in_group;
}

bool server_request_allowed(const struct server_request *req, uint32_t op) {
        const struct server *s = req->conn->srv;
        return authz_allowed_by_config(s ? s->config : NULL, req->uid, req->conn->in_group, op);
}

/* ---- accepting ---- */

static unsigned conns_of_uid(const struct server *s, uid_t uid) {
        unsigned n = 0;
        for (const struct server_conn *c = s->conns; c; c = c->next)
                if (!c->rejected && c->req.uid == uid)
                        n++;
        return n;
}

/* One line per refusal, but at most one per SERVER_REFUSAL_LOG_INTERVAL_MS:
 * a flood of connections must not become a flood of journal writes (each a
 * syscall on the loop). The next line says how many were not logged. */
static void log_refusal(struct server *s, const struct ucred *cred, int status, const char *why, const char *msg) {
        int64_t now = now_monotonic_ms();
        if (s->refusal_log_ms && now - s->refusal_log_ms < SERVER_REFUSAL_LOG_INTERVAL_MS) {
                s->refusals_unlogged++;
                return;
        }
        char more[64] = "";
        if (s->refusals_unlogged)
                snprintf(more, sizeof more, " (and %llu more since the last such message)",
                         (unsigned long long)s->refusals_unlogged);
        log_struct(LOG_WARNING, LOG_MESSAGE_LIMIT_HIT,
                   LOG_FIELDS(LOG_NUM("CLIENT_UID", cred->uid), LOG_NUM("CLIENT_PID", cred->pid),
                              LOG_NUM("HTTP_STATUS", status), LOG_STR("LIMIT", why)),
                   "%s: connection from uid %u refused with %d: %s%s", s->name, (unsigned)cred->uid, status, msg,
                   more);
        s->refusal_log_ms = now ? now : 1;
        s->refusals_unlogged = 0;
}

/* The answer in one non-blocking write, nothing queued: the socket was just
 * accepted, its send buffer is empty and far larger than this answer. */
static void answer_at_once(struct server_conn *c, int status, const char *msg, const struct http_header *extra,
                           size_t n_extra) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t len = 0;
        if (http_response_format_error(status, msg, false, extra, n_extra, &buf, &len) < 0)
                return;
        uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
        (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
}

static void on_connection(uv_stream_t *l, int status) {
        struct server *s = l->data;
        if (status < 0) {
                log_warn("%s: accept failed: %s, ignoring", s->name, uv_strerror(status));
                return;
        }
        struct server_conn *c = calloc(1, sizeof *c);
        if (!c) {
                log_error("%s: out of memory accepting a connection", s->name);
                return;
        }
        if (uv_pipe_init(s->loop, &c->pipe, 0) < 0) {
                free(c);
                return;
        }
        c->pipe.data = c;
        uv_timer_init(s->loop, &c->timer);
        c->timer.data = c;
        c->handles_open = 2;
        c->srv = s;
        c->req.conn = c;
        c->state = CONN_READING;

        /* Link first so that every path below ends in conn_close(). */
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        s->n_conns++;

        if (uv_accept(l, (uv_stream_t *)&c->pipe) < 0) {
                conn_close(c);
                return;
        }

        uv_os_fd_t fd;
        struct ucred cred = { 0 };
        socklen_t cl = sizeof cred;
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
                log_warn("%s: could not read the peer credentials of a connection: %s, closing it", s->name, strerror(errno));
                conn_close(c);
                return;
        }
        c->req.uid = cred.uid;
        c->req.gid = cred.gid;
        c->req.pid = cred.pid;

        /* Once per connection, not per request. NSS may be slow (LDAP); root
         * needs no lookup. Before the limits: a caller with no rights at all
         * is answered at once and never holds a slot, so strangers who can
         * reach the socket cannot use up max_connections. */
        c->in_group = cred.uid != 0 && s->has_sock_gid && uid_in_group(cred.uid, cred.gid, s->sock_gid);
        unsigned per_uid = conns_of_uid(s, cred.uid); /* includes this one */
        const char *why = NULL;
        int st = 0;
        char msg[160];
        bool retry = true;
        if (!authz_any_allowed_by_config(s->config, cred.uid, c->in_group)) {
                st = s->stranger_status;
                why = "no_rights";
                retry = false;
                snprintf(msg, sizeof msg,
                         "uid %u may not use this socket: it has no [[principal]] entry allowing anything, is not "
                         "root and is not in the socket's group",
                         (unsigned)cred.uid);
        } else if (s->n_conns > s->limits.max_connections) {
                st = 503;
                why = "max_connections";
                snprintf(msg, sizeof msg, "too many connections (%u), retry", s->limits.max_connections);
        } else if (per_uid > s->limits.max_connections_per_uid) {
                st = 429;
                why = "max_connections_per_uid";
                snprintf(msg, sizeof msg, "too many connections for uid %u (%u), retry", (unsigned)cred.uid,
                         s->limits.max_connections_per_uid);
        }
        if (st) {
                /* Move from the counted connections to the refused ones. */
                static const struct http_header retry_after[] = { { "Retry-After", SERVER_RETRY_AFTER_SEC } };
                const struct http_header *extra = retry ? retry_after : NULL;
                size_t n_extra = retry ? ELEMENTSOF(retry_after) : 0;
                s->n_conns--;
                s->n_rejected++;
                c->rejected = true;
                s->refused++;
                refused_total++;
                log_refusal(s, &cred, st, why, msg);
                if (s->n_rejected > SERVER_REFUSALS_MAX) {
                        /* A flood: SERVER_REFUSALS_MAX refusals already linger.
                         * Answer and close now: uv_close() releases the fd at
                         * once and the struct in this loop turn's close
                         * callbacks, so however many come, refusals never hold
                         * more than SERVER_REFUSALS_MAX fds plus the one being
                         * accepted. A client whose request has arrived (the usual
                         * case: the kernel queued connection and request before
                         * we accepted) reads the answer, then ECONNRESET
                         * instead of EOF. One that writes after the close gets
                         * EPIPE; the answer still waits in its receive queue
                         * (AF_UNIX delivers queued bytes before the error), but
                         * most HTTP clients give up at the failed write. */
                        answer_at_once(c, st, msg, extra, n_extra);
                        conn_close(c);
                        return;
                }
                if (uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) < 0) {
                        conn_close(c);
                        return;
                }
                c->reading = true;
                conn_answer_error(c, st, msg, extra, n_extra);
                return;
        }

        log_debug("%s: connection from uid %u gid %u pid %u", s->name, (unsigned)cred.uid, (unsigned)cred.gid,
                  (unsigned)cred.pid);
        c->state = CONN_READING;
        conn_resume(c);
}

/* ---- listening ---- */

static int mkdir_parents(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = '\0';
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        return 0;
}

/* One directory on the way to a socket we bind, as sshd's StrictModes
 * checks a path: another non-root user who owns it, or anyone who may write
 * to it (group/other write without the sticky bit, which keeps others from
 * renaming or removing what they do not own), could swap the socket (or a
 * directory below) for their own listener. Returns 0 or -EACCES with why. */
static int check_dir(const char *dir, char *why, size_t n) {
        struct stat st;
        if (lstat(dir, &st) < 0) {
                snprintf(why, n, "could not check %s: %s", dir, strerror(errno));
                return -EACCES;
        }
        if (S_ISLNK(st.st_mode))
                return 0; /* followed by realpath(); the link itself lies in a checked directory */
        if (!S_ISDIR(st.st_mode)) {
                snprintf(why, n, "%s is not a directory", dir);
                return -EACCES;
        }
        if (st.st_uid != 0 && st.st_uid != geteuid()) {
                snprintf(why, n,
                         "directory %s is owned by uid %u, who could replace the socket: make it owned by root "
                         "(chown root %s) or use systemd's RuntimeDirectory=",
                         dir, (unsigned)st.st_uid, dir);
                return -EACCES;
        }
        if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
                snprintf(why, n,
                         "directory %s is %s-writable (mode %04o), so another user could replace the socket: "
                         "remove that write permission (chmod go-w %s) or use systemd's RuntimeDirectory=",
                         dir, (st.st_mode & S_IWOTH) ? "world" : "group", (unsigned)(st.st_mode & 07777), dir);
                return -EACCES;
        }
        return 0;
}

/* Every directory from / down to dir, as written and as resolved. */
static int check_dir_chain(const char *dir, char *why, size_t n) {
        char resolved[PATH_MAX];
        if (!realpath(dir, resolved)) {
                snprintf(why, n, "could not resolve %s: %s", dir, strerror(errno));
                return -EACCES;
        }
        const char *paths[] = { dir, resolved };
        for (size_t k = 0; k < ELEMENTSOF(paths); k++) {
                _cleanup_free_ char *p = strdup(paths[k]);
                if (!p)
                        return -ENOMEM;
                int r = check_dir("/", why, n);
                for (char *sl = p + 1; r >= 0 && *sl; sl++) {
                        if (*sl != '/')
                                continue;
                        *sl = '\0';
                        r = check_dir(p, why, n);
                        *sl = '/';
                }
                if (r >= 0 && p[0] && !streq(p, "/"))
                        r = check_dir(p, why, n);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_socket_dir(const char *path, char *why, size_t n) {
        _cleanup_free_ char *dir = strdup(path);
        if (!dir)
                return -ENOMEM;
        char *sl = strrchr(dir, '/');
        if (!sl)
                return check_dir_chain(".", why, n);
        if (sl == dir)
                sl[1] = '\0';
        else
                *sl = '\0';
        return check_dir_chain(dir, why, n);
}

/* A socket file is stale when nothing accepts on it. */
static int remove_stale_socket(const char *path) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;
        _cleanup_close_ int fd = unix_connect(path);
        if (fd >= 0)
                return -EADDRINUSE;
        if (fd != -ECONNREFUSED && fd != -ENOENT)
                return fd;
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

static int socket_path_of_fd(int fd, char *buf, size_t n) {
        struct sockaddr_un sa = { 0 };
        socklen_t l = sizeof sa;
        if (getsockname(fd, (struct sockaddr *)&sa, &l) < 0)
                return -errno;
        if (sa.sun_family != AF_UNIX || l <= offsetof(struct sockaddr_un, sun_path) || sa.sun_path[0] == '\0')
                return -ENOENT;
        snprintf(buf, n, "%.*s", (int)(l - offsetof(struct sockaddr_un, sun_path)), sa.sun_path);
        return 0;
}

static void server_free(struct server *s) {
        if (!s)
                return;
        free(s->name);
        free(s->path);
        free(s);
}

int server_new(uv_loop_t *loop, const struct server_options *opts, struct server **ret) {
        struct server *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->name = strdup(opts->name ? opts->name : "server");
        s->path = opts->path ? strdup(opts->path) : NULL;
        if (!s->name || (opts->path && !s->path)) {
                server_free(s);
                return -ENOMEM;
        }
        s->handler = opts->handler;
        s->userdata = opts->userdata;
        s->limits = opts->limits;
        s->config = opts->config;
        s->stranger_status = opts->stranger_status ? opts->stranger_status
                             : streq(s->name, "identityd") ? 401 /* what aziot-identityd answers */
                                                           : 403;

        int r = uv_pipe_init(loop, &s->listener, 0);
        if (r < 0) {
                server_free(s);
                return r;
        }
        s->listener.data = s;
        s->handles_open = 1;

        char pathbuf[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
        if (opts->fd >= 0) {
                (void)fcntl(opts->fd, F_SETFD, FD_CLOEXEC);
                r = uv_pipe_open(&s->listener, opts->fd);
                if (r >= 0 && socket_path_of_fd(opts->fd, pathbuf, sizeof pathbuf) >= 0) {
                        struct stat st;
                        if (stat(pathbuf, &st) == 0) {
                                s->sock_gid = st.st_gid;
                                s->has_sock_gid = true;
                        }
                }
        } else if (!s->path) {
                r = -EINVAL;
        } else {
                r = mkdir_parents(s->path, SERVER_RUNDIR_MODE);
                if (r >= 0) {
                        char why[PATH_MAX + 256];
                        r = check_socket_dir(s->path, why, sizeof why);
                        if (r == -EACCES) {
                                if (opts->error && opts->error_size > 0)
                                        snprintf(opts->error, opts->error_size, "%s", why);
                                else
                                        log_error("%s: not binding %s: %s", s->name, s->path, why);
                        }
                }
                if (r >= 0)
                        r = remove_stale_socket(s->path);
                if (r >= 0) {
                        /* The umask makes the file 0660 from its creation on. */
                        mode_t old = umask(0777 & ~SERVER_SOCKET_MODE);
                        r = uv_pipe_bind(&s->listener, s->path);
                        umask(old);
                }
                if (r >= 0) {
                        s->bound_path = true;
                        if (chmod(s->path, SERVER_SOCKET_MODE) < 0)
                                r = -errno;
                }
                struct stat st;
                if (r >= 0 && stat(s->path, &st) == 0) {
                        s->sock_gid = st.st_gid;
                        s->has_sock_gid = true;
                }
        }
        if (r >= 0)
                r = uv_listen((uv_stream_t *)&s->listener, SERVER_LISTEN_BACKLOG, on_connection);
        if (r < 0) {
                s->closing = true;
                if (s->bound_path && s->path)
                        unlink(s->path);
                s->bound_path = false;
                /* The handle must be closed before s is freed; nothing else
                 * references s, so free it from the close callback. */
                uv_close((uv_handle_t *)&s->listener, NULL);
                /* uv_close needs a loop turn; run just that. */
                uv_run(loop, UV_RUN_NOWAIT);
                server_free(s);
                return r;
        }
        s->listening = true;
        *ret = s;
        return 0;
}

void server_set_limits(struct server *s, const struct server_limits *l) {
        s->limits = *l;
}

void server_set_config(struct server *s, const struct tpmid_config *config) {
        s->config = config;
}

unsigned server_connections(const struct server *s) {
        return s->n_conns;
}

uint64_t server_refused(const struct server *s) {
        return s->refused;
}

uint64_t server_refused_total(void) {
        return refused_total;
}

static void maybe_drained(struct server *s) {
        if (!s->draining || !s->drained || s->conns)
                return;
        void (*cb)(void *) = s->drained;
        s->drained = NULL;
        cb(s->drained_userdata);
}

static void listener_closed(uv_handle_t *h) {
        struct server *s = h->data;
        s->handles_open--;
        if (s->closing && s->handles_open == 0 && !s->conns)
                server_free(s);
}

static void stop_listening(struct server *s) {
        if (!s->listening)
                return;
        s->listening = false;
        if (s->bound_path && s->path)
                unlink(s->path);
        s->bound_path = false;
        uv_close((uv_handle_t *)&s->listener, listener_closed);
}

/* Bytes the client sent that the loop has not read yet: a request that was
 * accepted by the kernel before we started draining deserves an answer. */
static bool input_waiting(struct server_conn *c) {
        uv_os_fd_t fd;
        char b;
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0)
                return false;
        return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
}

void server_drain(struct server *s, void (*drained)(void *userdata), void *userdata) {
        s->draining = true;
        s->drained = drained;
        s->drained_userdata = userdata;
        stop_listening(s);
        /* Idle keep-alive connections have nothing in flight: close them now.
         * Connections in the middle of a request finish it (bounded by the
         * request timeout) and close after the answer. */
        for (struct server_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (c->state == CONN_READING && (!c->parser_live || !http_request_parser_in_request(&c->parser)) &&
                    !c->pending && !input_waiting(c))
                        conn_close(c);
        }
        maybe_drained(s);
}

void server_close(struct server *s) {
        if (!s)
                return;
        s->closing = true;
        s->drained = NULL;
        stop_listening(s);
        for (struct server_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                conn_close(c);
        }
        /* Connections unlink themselves in their close callbacks; detach the
         * ones still linked so they never touch s after it is freed. */
        for (struct server_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                c->srv = NULL;
                c->prev = c->next = NULL;
        }
        s->conns = NULL;
        if (s->handles_open == 0)
                server_free(s);
}
