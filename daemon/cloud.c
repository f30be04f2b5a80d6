/* libcurl multi + libuv glue. curl tells us which sockets to watch
 * (socket_cb) and when to wake it up (timer_cb); we translate that into
 * uv_poll_t handles and one uv_timer_t, and hand readiness back with
 * curl_multi_socket_action(). Completed transfers are collected in
 * check_done() and reported through the request's callback. */
#include "cloud.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tpmid-config.h"
#include "util.h"

struct cloud_xfer {
        struct cloud *cloud;
        CURL *easy;
        struct curl_slist *headers;
        char *body; /* copy of the request body */
        char *resp; /* response body, grown as it arrives */
        size_t resp_len, resp_cap;
        bool too_big;
        char *retry_after;
        char *ms_error_code;
        cloud_cb cb;
        void *userdata;
        uint64_t id;
        char errbuf[CURL_ERROR_SIZE];
        struct cloud_xfer *next;
};

struct cloud_sock {
        uv_poll_t poll;
        curl_socket_t fd;
        struct cloud *cloud;
        struct cloud_sock *next; /* all sockets being watched, so close can reach them */
};

struct cloud {
        uv_loop_t *loop;
        CURLM *multi;
        uv_timer_t timer;
        struct curl_slist *connect_to;
        char *ca_bundle;
        char *user_agent;
        struct cloud_xfer *xfers; /* running transfers, singly linked */
        struct cloud_sock *socks; /* watched sockets */
        size_t n_xfers;
        uint64_t next_id;
        int open_handles; /* uv handles not yet closed; free when 0 after close */
        bool closing;
};

static void cloud_maybe_free(struct cloud *c) {
        if (!c->closing || c->open_handles > 0)
                return;
        curl_slist_free_all(c->connect_to);
        free(c->ca_bundle);
        free(c->user_agent);
        free(c);
}

static void poll_close_cb(uv_handle_t *h);

static void sock_release(struct cloud *c, struct cloud_sock *s) {
        for (struct cloud_sock **p = &c->socks; *p; p = &(*p)->next)
                if (*p == s) {
                        *p = s->next;
                        break;
                }
        uv_poll_stop(&s->poll);
        uv_close((uv_handle_t *)&s->poll, poll_close_cb);
}

static void xfer_free(struct cloud_xfer *x) {
        if (!x)
                return;
        if (x->easy) {
                curl_multi_remove_handle(x->cloud->multi, x->easy);
                curl_easy_cleanup(x->easy);
        }
        curl_slist_free_all(x->headers);
        if (x->body) {
                /* Request bodies carry registration data, not secrets, but the
                 * Authorization header copy lives in curl; nothing to wipe here. */
                free(x->body);
        }
        free(x->resp);
        free(x->retry_after);
        free(x->ms_error_code);
        free(x);
}

static void xfer_unlink(struct cloud *c, struct cloud_xfer *x) {
        for (struct cloud_xfer **p = &c->xfers; *p; p = &(*p)->next)
                if (*p == x) {
                        *p = x->next;
                        c->n_xfers--;
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

static void check_done(struct cloud *c) {
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(c->multi, &left))) {
                if (msg->msg != CURLMSG_DONE)
                        continue;
                struct cloud_xfer *x = NULL;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
                if (!x)
                        continue;
                CURLcode cc = msg->data.result;
                struct cloud_response r = {0};
                if (x->too_big)
                        cc = CURLE_WRITE_ERROR;
                if (cc != CURLE_OK) {
                        r.error = curl_to_errno(cc);
                        r.error_msg = x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc);
                        if (x->too_big)
                                r.error_msg = "response body larger than CLOUD_MAX_RESPONSE_BYTES";
                } else {
                        r.error_msg = "";
                        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r.status);
                }
                r.body = x->resp ? x->resp : "";
                r.body_len = x->resp_len;
                r.retry_after = x->retry_after;
                r.error_code_header = x->ms_error_code;
                curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &r.total_sec);
                xfer_unlink(c, x);
                x->cb(&r, x->userdata);
                xfer_free(x);
        }
}

static void poll_close_cb(uv_handle_t *h) {
        struct cloud_sock *s = h->data;
        struct cloud *c = s->cloud;
        free(s);
        c->open_handles--;
        cloud_maybe_free(c);
}

static void poll_cb(uv_poll_t *p, int status, int events) {
        struct cloud_sock *s = p->data;
        struct cloud *c = s->cloud;
        int flags = 0, running;
        if (status < 0)
                flags = CURL_CSELECT_ERR;
        if (events & UV_READABLE)
                flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
                flags |= CURL_CSELECT_OUT;
        curl_multi_socket_action(c->multi, s->fd, flags, &running);
        check_done(c);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        struct cloud *c = userp;
        struct cloud_sock *s = socketp;
        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        curl_multi_assign(c->multi, fd, NULL);
                        sock_release(c, s);
                }
                return 0;
        }
        if (!s) {
                s = calloc(1, sizeof(*s));
                if (!s)
                        return -1;
                s->fd = fd;
                s->cloud = c;
                if (uv_poll_init_socket(c->loop, &s->poll, fd) < 0) {
                        free(s);
                        return -1;
                }
                s->poll.data = s;
                s->next = c->socks;
                c->socks = s;
                c->open_handles++;
                curl_multi_assign(c->multi, fd, s);
        }
        int ev = 0;
        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
                ev |= UV_READABLE;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
                ev |= UV_WRITABLE;
        uv_poll_start(&s->poll, ev, poll_cb);
        return 0;
}

static void timer_fire(uv_timer_t *t) {
        struct cloud *c = t->data;
        int running;
        curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_done(c);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
        struct cloud *c = userp;
        if (timeout_ms < 0)
                uv_timer_stop(&c->timer);
        else /* 0 means "as soon as possible": never call curl back from inside its own callback */
                uv_timer_start(&c->timer, timer_fire, (uint64_t)timeout_ms, 0);
        return 0;
}

static void timer_close_cb(uv_handle_t *h) {
        struct cloud *c = h->data;
        c->open_handles--;
        cloud_maybe_free(c);
}

int cloud_new(uv_loop_t *loop, const struct cloud_options *opts, struct cloud **ret) {
        static bool global_done;
        if (!global_done) {
                if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                        return -EIO;
                global_done = true;
        }
        struct cloud *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->loop = loop;
        c->next_id = 1;
        c->multi = curl_multi_init();
        if (!c->multi) {
                free(c);
                return -ENOMEM;
        }
        if (opts && opts->ca_bundle && !(c->ca_bundle = strdup(opts->ca_bundle)))
                goto oom;
        if (asprintf(&c->user_agent, "%s", opts && opts->user_agent ? opts->user_agent : "tpmidd/" TPMID_VERSION) < 0) {
                c->user_agent = NULL;
                goto oom;
        }
        if (opts && opts->connect_to && *opts->connect_to) {
                _cleanup_free_ char *copy = strdup(opts->connect_to);
                if (!copy)
                        goto oom;
                char *save = NULL;
                for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                        struct curl_slist *n = curl_slist_append(c->connect_to, tok);
                        if (!n)
                                goto oom;
                        c->connect_to = n;
                }
        }
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        c->open_handles = 1;
        *ret = c;
        return 0;
oom:
        curl_multi_cleanup(c->multi);
        curl_slist_free_all(c->connect_to);
        free(c->ca_bundle);
        free(c->user_agent);
        free(c);
        return -ENOMEM;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp) {
        struct cloud_xfer *x = userp;
        size_t len = size * n;
        if (x->resp_len + len > CLOUD_MAX_RESPONSE_BYTES) {
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

/* Keep the one or two response headers the protocol needs. */
static size_t header_cb(char *data, size_t size, size_t n, void *userp) {
        struct cloud_xfer *x = userp;
        size_t len = size * n;
        static const struct {
                const char *name;
                size_t off;
        } wanted[] = {
                {"retry-after:", offsetof(struct cloud_xfer, retry_after)},
                {"x-ms-error-code:", offsetof(struct cloud_xfer, ms_error_code)},
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
                if (vl > 128) /* no legitimate value is longer; ignore junk */
                        break;
                char **slot = (char **)((char *)x + wanted[i].off);
                free(*slot);
                *slot = strndup(v, vl);
        }
        return len;
}

int cloud_send(struct cloud *c, const struct cloud_request *req, cloud_cb cb, void *userdata, uint64_t *ret_id) {
        if (c->closing)
                return -ESHUTDOWN;
        if (c->n_xfers >= CLOUD_MAX_INFLIGHT)
                return -EAGAIN;
        struct cloud_xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->cloud = c;
        x->cb = cb;
        x->userdata = userdata;
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
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : (long)CLOUD_DEFAULT_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 30000L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, 0L);
        if (c->ca_bundle)
                curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_bundle);
        if (c->connect_to)
                curl_easy_setopt(e, CURLOPT_CONNECT_TO, c->connect_to);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
        struct curl_slist *h = NULL;
        const char *fixed[] = {"Accept: application/json", "Content-Type: application/json; charset=utf-8", "Expect:"};
        for (size_t i = 0; i < ELEMENTSOF(fixed); i++) {
                struct curl_slist *n = curl_slist_append(h, fixed[i]);
                if (!n)
                        goto oom_h;
                h = n;
        }
        if (req->authorization) {
                _cleanup_free_ char *line = NULL;
                if (asprintf(&line, "Authorization: %s", req->authorization) < 0) {
                        line = NULL;
                        goto oom_h;
                }
                struct curl_slist *n = curl_slist_append(h, line);
                explicit_zero(line, strlen(line));
                if (!n)
                        goto oom_h;
                h = n;
        }
        x->headers = h;
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        if (req->body) {
                x->body = malloc(req->body_len + 1);
                if (!x->body)
                        goto oom;
                memcpy(x->body, req->body, req->body_len);
                x->body[req->body_len] = 0;
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
        } else if (strcmp(req->method, "GET") != 0) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        }
        if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
                xfer_free(x);
                return -EIO;
        }
        x->id = c->next_id++;
        x->next = c->xfers;
        c->xfers = x;
        c->n_xfers++;
        if (ret_id)
                *ret_id = x->id;
        return 0;
oom_h:
        curl_slist_free_all(h);
oom:
        xfer_free(x);
        return -ENOMEM;
}

int cloud_cancel(struct cloud *c, uint64_t id) {
        for (struct cloud_xfer *x = c->xfers; x; x = x->next)
                if (x->id == id) {
                        xfer_unlink(c, x);
                        xfer_free(x);
                        return 0;
                }
        return -ENOENT;
}

void cloud_close(struct cloud *c) {
        if (!c || c->closing)
                return;
        while (c->xfers) {
                struct cloud_xfer *x = c->xfers;
                c->xfers = x->next;
                c->n_xfers--;
                xfer_free(x); /* removing the easy handle makes curl send CURL_POLL_REMOVE, closing polls */
        }
        c->closing = true;
        /* Cleaning up the multi handle closes cached connections; curl may or
         * may not report those sockets through socket_cb, so release whatever
         * is still watched afterwards. */
        curl_multi_cleanup(c->multi);
        c->multi = NULL;
        while (c->socks)
                sock_release(c, c->socks);
        uv_timer_stop(&c->timer);
        uv_close((uv_handle_t *)&c->timer, timer_close_cb);
}
