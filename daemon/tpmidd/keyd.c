/* The aziot-keyd client. See keyd.h. */
#include "keyd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "module.h"
#include "util.h"

#define KEYD_READ_CHUNK 4096 /* bytes asked of libuv per read */

struct keyd_req {
        struct keyd *k;
        struct keyd_req *next;
        uint64_t id;
        uv_pipe_t pipe;
        uv_timer_t timer;
        uv_connect_t connect;
        uv_write_t write;
        char *out; /* the request */
        size_t out_len;
        char *in; /* the response so far, MODULE_KEYD_RESPONSE_MAX + 1 bytes */
        size_t in_len;
        char socket_path[108];
        keyd_cb cb;
        void *userdata;
        int open_handles;
        bool done; /* the callback ran or will not run */
};

struct keyd {
        uv_loop_t *loop;
        struct keyd_req *reqs;
        unsigned n;
        uint64_t next_id;
        bool closing;
};

static void maybe_free_keyd(struct keyd *k) {
        if (k->closing && !k->reqs)
                free(k);
}

static void unlink_req(struct keyd_req *q) {
        struct keyd *k = q->k;
        for (struct keyd_req **p = &k->reqs; *p; p = &(*p)->next)
                if (*p == q) {
                        *p = q->next;
                        k->n--;
                        break;
                }
}

static void req_handle_closed(uv_handle_t *h) {
        struct keyd_req *q = h->data;
        if (--q->open_handles > 0)
                return;
        struct keyd *k = q->k;
        unlink_req(q);
        if (q->out)
                explicit_zero(q->out, q->out_len);
        if (q->in)
                explicit_zero(q->in, q->in_len); /* exported keys pass through here */
        free(q->out);
        free(q->in);
        free(q);
        maybe_free_keyd(k);
}

static void req_close(struct keyd_req *q) {
        q->done = true;
        if (!uv_is_closing((uv_handle_t *)&q->pipe))
                uv_close((uv_handle_t *)&q->pipe, req_handle_closed);
        if (!uv_is_closing((uv_handle_t *)&q->timer))
                uv_close((uv_handle_t *)&q->timer, req_handle_closed);
}

/* The [[principal]] line keyd needs for us (aziot-keyd's config.d). */
static void principal_hint(char *buf, size_t sz) {
        snprintf(buf, sz,
                 "; aziot-keyd must run and list tpmidd: [[principal]] uid = %u keys = [\"%s\"] in a file in "
                 "/etc/aziot/keyd/config.d/ (tpmidctl config apply writes it), then restart aziot-keyd",
                 (unsigned)getuid(), MODULE_MASTER_KEY_ID);
}

static void finish(struct keyd_req *q, int r, int status, const char *body, size_t body_len) {
        if (q->done)
                return;
        struct keyd_result res = { .r = r, .status = status, .body = body ? body : "", .body_len = body_len };
        char hint[300] = "";
        if (r == -ENOENT || r == -ECONNREFUSED || r == -EACCES || r == -EPERM || status == 401 || status == 403)
                principal_hint(hint, sizeof hint);
        if (r < 0)
                snprintf(res.message, sizeof res.message, "aziot-keyd at %s: %s%s", q->socket_path,
                         r == -ETIMEDOUT                    ? "no answer in time"
                         : r == -EBADMSG                    ? "not an HTTP answer"
                         : r == -ECONNRESET || r == -EPIPE ? "closed the connection without an answer"
                                                            : strerror(-r),
                         hint);
        else if (status != 200) {
                char m[MODULE_ERROR_MAX];
                module_keyd_parse_error(body, body_len, m, sizeof m);
                snprintf(res.message, sizeof res.message, "aziot-keyd at %s answered HTTP %d%s%s%s", q->socket_path,
                         status, m[0] ? ": " : "", m, hint);
        }
        keyd_cb cb = q->cb;
        void *ud = q->userdata;
        q->done = true;
        cb(&res, ud);
        req_close(q);
}

static void timer_cb(uv_timer_t *t) {
        finish(t->data, -ETIMEDOUT, 0, NULL, 0);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        struct keyd_req *q = h->data;
        size_t room = MODULE_KEYD_RESPONSE_MAX + 1 - q->in_len;
        (void)suggested;
        buf->base = q->in + q->in_len;
        buf->len = room < KEYD_READ_CHUNK ? room : KEYD_READ_CHUNK;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
        struct keyd_req *q = s->data;
        (void)buf;
        if (q->done)
                return;
        bool eof = n == UV_EOF;
        if (n < 0 && !eof) {
                finish(q, (int)n, 0, NULL, 0);
                return;
        }
        if (n > 0)
                q->in_len += (size_t)n;
        if (q->in_len > MODULE_KEYD_RESPONSE_MAX) {
                finish(q, -E2BIG, 0, NULL, 0);
                return;
        }
        int status = 0;
        const char *body = NULL;
        size_t blen = 0;
        int r = module_http_response_parse(q->in, q->in_len, eof, &status, &body, &blen);
        if (r == 0)
                return;
        if (r < 0)
                finish(q, r == -EPIPE ? -ECONNRESET : r, 0, NULL, 0); /* EOF before a whole answer */
        else
                finish(q, 0, status, body, blen);
}

static void write_cb(uv_write_t *w, int status) {
        struct keyd_req *q = w->data;
        if (status < 0 && !q->done)
                finish(q, status, 0, NULL, 0);
}

static void connect_cb(uv_connect_t *c, int status) {
        struct keyd_req *q = c->data;
        if (q->done)
                return;
        if (status < 0) {
                finish(q, status, 0, NULL, 0);
                return;
        }
        uv_buf_t b = uv_buf_init(q->out, (unsigned)q->out_len);
        q->write.data = q;
        int r = uv_write(&q->write, (uv_stream_t *)&q->pipe, &b, 1, write_cb);
        if (r >= 0)
                r = uv_read_start((uv_stream_t *)&q->pipe, alloc_cb, read_cb);
        if (r < 0)
                finish(q, r, 0, NULL, 0);
}

int keyd_new(uv_loop_t *loop, struct keyd **ret) {
        struct keyd *k = calloc(1, sizeof *k);
        if (!k)
                return -ENOMEM;
        k->loop = loop;
        k->next_id = 1;
        *ret = k;
        return 0;
}

int keyd_post(struct keyd *k, const char *socket_path, const char *path, const char *body, keyd_cb cb,
              void *userdata, uint64_t *ret_id) {
        if (k->closing)
                return -ESHUTDOWN;
        if (!socket_path || strlen(socket_path) >= sizeof(((struct keyd_req *)0)->socket_path) || !cb)
                return -EINVAL;
        if (k->n >= KEYD_MAX_INFLIGHT)
                return -EAGAIN;
        struct keyd_req *q = calloc(1, sizeof *q);
        if (!q)
                return -ENOMEM;
        int r = module_keyd_request("POST", path, body, &q->out, &q->out_len);
        if (r >= 0 && !(q->in = malloc(MODULE_KEYD_RESPONSE_MAX + 1)))
                r = -ENOMEM;
        if (r >= 0)
                r = uv_pipe_init(k->loop, &q->pipe, 0);
        if (r < 0) {
                free(q->out);
                free(q->in);
                free(q);
                return r;
        }
        uv_timer_init(k->loop, &q->timer);
        q->k = k;
        q->id = k->next_id++;
        q->cb = cb;
        q->userdata = userdata;
        q->pipe.data = q->timer.data = q->connect.data = q;
        q->open_handles = 2;
        snprintf(q->socket_path, sizeof q->socket_path, "%s", socket_path);
        q->next = k->reqs;
        k->reqs = q;
        k->n++;
        uv_timer_start(&q->timer, timer_cb, KEYD_TIMEOUT_MS, 0);
        /* A failed connect is reported through connect_cb, from the loop. */
        uv_pipe_connect(&q->connect, &q->pipe, q->socket_path, connect_cb);
        *ret_id = q->id;
        return 0;
}

int keyd_cancel(struct keyd *k, uint64_t id) {
        for (struct keyd_req *q = k->reqs; q; q = q->next)
                if (q->id == id && !q->done) {
                        req_close(q);
                        return 0;
                }
        return -ENOENT;
}

void keyd_close(struct keyd *k) {
        if (!k)
                return;
        k->closing = true;
        for (struct keyd_req *q = k->reqs; q; q = q->next)
                req_close(q);
        maybe_free_keyd(k);
}
