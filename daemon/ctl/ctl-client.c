/* Blocking HTTP/1.1 over a Unix socket for tpmidctl. See ctl-client.h. */
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "b64.h"
#include "config.h"
#include "ctl-client.h"
#include "ctl.h"
#include "util.h"

#define CTL_CLIENT_READ_CHUNK 4096 /* bytes per read() */

struct resp_state {
        char *body;
        size_t len, cap;
        bool complete;
        bool too_big;
};

/* Wait for fd to become ready for events until deadline. Returns 0 or -ETIMEDOUT/-errno. */
static int wait_fd(int fd, short events, int64_t deadline) {
        for (;;) {
                int64_t left = deadline - now_monotonic_ms();
                if (left <= 0)
                        return -ETIMEDOUT;
                struct pollfd p = { .fd = fd, .events = events };
                int r = poll(&p, 1, (int)left);
                if (r > 0)
                        return 0;
                if (r == 0)
                        return -ETIMEDOUT;
                if (errno != EINTR)
                        return -errno;
        }
}

static int on_body(http_parser *p, const char *at, size_t len) {
        struct resp_state *s = p->data;
        if (s->len + len > CTL_CLIENT_MAX_RESPONSE_BYTES) {
                s->too_big = true;
                return -1;
        }
        if (s->len + len + 1 > s->cap) {
                size_t cap = (s->len + len + 1) * 2;
                char *n = realloc(s->body, cap);
                if (!n)
                        return -1;
                s->body = n;
                s->cap = cap;
        }
        memcpy(s->body + s->len, at, len);
        s->len += len;
        s->body[s->len] = '\0';
        return 0;
}

static int on_complete(http_parser *p) {
        struct resp_state *s = p->data;
        s->complete = true;
        return 0;
}

static int write_all(int fd, const char *buf, size_t len, int64_t deadline) {
        while (len > 0) {
                ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                int r = wait_fd(fd, POLLOUT, deadline);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        return -errno;
                }
                buf += n;
                len -= (size_t)n;
        }
        return 0;
}

int ctl_client_request(const char *socket_path, const char *method, const char *target, const char *json_body,
                       int timeout_ms, struct ctl_response *ret) {
        int64_t deadline = now_monotonic_ms() + (timeout_ms > 0 ? timeout_ms : CTL_CLIENT_TIMEOUT_MS);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(socket_path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, socket_path);

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                if (errno != EINPROGRESS && errno != EAGAIN)
                        return -errno;
                int r = wait_fd(fd, POLLOUT, deadline);
                if (r < 0)
                        return r;
                int err = 0;
                socklen_t l = sizeof err;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
                        return -errno;
                if (err)
                        return -err;
        }

        size_t body_len = json_body ? strlen(json_body) : 0;
        _cleanup_free_ char *head = NULL;
        int n = asprintf(&head,
                         "%s %s HTTP/1.1\r\nHost: tpmd.sock\r\nConnection: close\r\n%s"
                         "Content-Length: %zu\r\n\r\n",
                         method, target, json_body ? "Content-Type: application/json\r\n" : "", body_len);
        if (n < 0)
                return -ENOMEM;
        int r = write_all(fd, head, (size_t)n, deadline);
        if (r >= 0 && body_len > 0)
                r = write_all(fd, json_body, body_len, deadline);
        if (r < 0)
                return r;

        struct resp_state st = { 0 };
        http_parser p;
        http_parser_init(&p, HTTP_RESPONSE);
        p.data = &st;
        http_parser_settings settings = { .on_body = on_body, .on_message_complete = on_complete };
        char buf[CTL_CLIENT_READ_CHUNK];
        while (!st.complete) {
                ssize_t k = recv(fd, buf, sizeof buf, 0);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                r = wait_fd(fd, POLLIN, deadline);
                                if (r < 0)
                                        goto fail;
                                continue;
                        }
                        r = -errno;
                        goto fail;
                }
                size_t used = http_parser_execute(&p, &settings, buf, (size_t)k);
                if (k == 0) /* EOF: lets the parser finish a body delimited by close */
                        break;
                if (used != (size_t)k || HTTP_PARSER_ERRNO(&p) != HPE_OK) {
                        if (st.complete)
                                break;
                        r = st.too_big ? -EFBIG : -EBADMSG;
                        goto fail;
                }
        }
        if (!st.complete) {
                r = -EBADMSG;
                goto fail;
        }
        if (!st.body) {
                st.body = strdup("");
                if (!st.body)
                        return -ENOMEM;
        }
        *ret = (struct ctl_response){ .status = p.status_code, .body = st.body, .body_len = st.len };
        return 0;
fail:
        free(st.body);
        return r;
}

void ctl_response_done(struct ctl_response *r) {
        if (!r)
                return;
        free(r->body);
        *r = (struct ctl_response){ 0 };
}

char *ctl_client_tpmd_socket(void) {
        const char *path = config_path_from_env(CONFIG_APPLIED_PATH);
        if (!getenv(CONFIG_ENV_PATH) && access(path, F_OK) < 0)
                path = CONFIG_DEFAULT_PATH;
        struct config_diags diags = { 0 };
        struct tpmid_config *c = NULL;
        char *ret = NULL;
        if (access(path, R_OK) == 0 && config_load(path, &c, &diags) >= 0)
                ret = strdup(c->endpoints.tpmd_socket);
        else
                ret = strdup(CONFIG_DEFAULT_TPMD_SOCKET);
        config_free(c);
        config_diags_free(&diags);
        return ret;
}

static int decode_public(json_t *o, const char *field, struct tpm_public *out) {
        const char *s = json_string_value(json_object_get(o, field));
        if (!s)
                return -EBADMSG;
        _cleanup_free_ uint8_t *raw = NULL;
        size_t len = 0;
        if (b64_decode(s, strlen(s), &raw, &len) < 0 || len == 0 || len > sizeof out->buf)
                return -EBADMSG;
        memcpy(out->buf, raw, len);
        out->len = len;
        return 0;
}

int ctl_client_get_tpm_keys(const char *socket_path, struct tpm_public *ek, struct tpm_public *srk, char *errbuf,
                            size_t errlen) {
        struct ctl_response resp = { 0 };
        int r = ctl_client_request(socket_path, "GET", "/get_tpm_keys?api-version=" CTL_CLIENT_TPMD_API_VERSION, NULL,
                                   0, &resp);
        if (r < 0) {
                snprintf(errbuf, errlen, "cannot talk to tpmidd on %s: %s%s", socket_path, strerror(-r),
                         r == -ENOENT || r == -ECONNREFUSED ? " (is tpmidd running? without it, use --tcti)"
                         : r == -EACCES                     ? " (run as root or as a member of the socket's group)"
                                                            : "");
                return r;
        }
        json_error_t jerr;
        json_t *o = json_loadb(resp.body, resp.body_len, 0, &jerr);
        if (resp.status != 200) {
                const char *m = o ? json_string_value(json_object_get(o, "message")) : NULL;
                snprintf(errbuf, errlen, "tpmidd answered %d: %s", resp.status, m ? m : resp.body);
                r = resp.status == 401 || resp.status == 403 ? -EACCES
                    : resp.status == 503                     ? -EAGAIN
                    : resp.status == 502                     ? -EPROTO
                                                             : -EIO;
                goto out;
        }
        struct tpm_public e, s;
        if (!o || decode_public(o, "endorsement_key", &e) < 0 || decode_public(o, "storage_root_key", &s) < 0) {
                snprintf(errbuf, errlen, "tpmidd sent an unexpected get_tpm_keys answer");
                r = -EBADMSG;
                goto out;
        }
        *ek = e;
        *srk = s;
        r = 0;
out:
        json_decref(o);
        ctl_response_done(&resp);
        return r;
}

int ctl_exit_from_http(int status) {
        if (status >= 200 && status < 300)
                return CTL_EXIT_OK;
        switch (status) {
        case 401:
        case 403:
                return CTL_EXIT_PERMISSION;
        case 502:
                return CTL_EXIT_PROVISIONING;
        case 503:
                return CTL_EXIT_UNAVAILABLE;
        }
        return CTL_EXIT_FAILURE;
}

int ctl_exit_from_errno(int r) {
        switch (r) {
        case 0:
                return CTL_EXIT_OK;
        case -EACCES:
        case -EPERM:
                return CTL_EXIT_PERMISSION;
        case -EAGAIN:
                return CTL_EXIT_UNAVAILABLE;
        case -EPROTO:
                return CTL_EXIT_PROVISIONING;
        case -ENOENT:
        case -ECONNREFUSED:
        case -ETIMEDOUT:
        case -EBADMSG:
        case -ENAMETOOLONG:
        case -ENOTSOCK:
                return CTL_EXIT_DAEMON;
        }
        return CTL_EXIT_FAILURE;
}
