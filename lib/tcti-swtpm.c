/* A TCTI for swtpm's data socket that keeps its connection between
 * commands. See tcti-swtpm.h for why it exists. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tcti-swtpm.h"
#include "util.h"

#define TCTI_SWTPM_MAGIC 0x74706d6964737774ULL /* "tpmidswt" */
#define TPM_HEADER_BYTES 10                    /* tag u16, size u32, code u32 */

enum tcti_state {
        STATE_TRANSMIT, /* ready for a command */
        STATE_RECEIVE,  /* a command went out; its response is (partly) unread */
};

struct tcti_swtpm {
        TSS2_TCTI_CONTEXT_COMMON_V2 common; /* first: the TSS casts the context to this */
        struct sockaddr_storage addr;
        socklen_t addr_len;
        int fd; /* the connection: of the command in flight, or kept from the last one; else -1 */
        int64_t connected_ms; /* when fd was connected (now_monotonic_ms()) */
        enum tcti_state state;
        size_t have;     /* response bytes read so far */
        size_t resp_len; /* set once the response is complete */
        uint8_t resp[TCTI_SWTPM_MAX_MESSAGE];
};

static struct tcti_swtpm *cast(TSS2_TCTI_CONTEXT *ctx) {
        struct tcti_swtpm *t = (struct tcti_swtpm *)ctx;
        if (!t || t->common.v1.magic != TCTI_SWTPM_MAGIC)
                return NULL;
        return t;
}

bool tcti_swtpm_is(const TSS2_TCTI_CONTEXT *tcti) {
        return tcti && ((const TSS2_TCTI_CONTEXT_COMMON_V1 *)tcti)->magic == TCTI_SWTPM_MAGIC;
}

static uint32_t be32(const uint8_t *p) {
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- configuration ------------------------------------------------------ */

static int set_value(char *dst, size_t dst_size, const char *v, size_t n) {
        if (n == 0 || n >= dst_size)
                return -EINVAL;
        memcpy(dst, v, n);
        dst[n] = '\0';
        return 0;
}

int tcti_swtpm_parse_conf(const char *conf, struct tcti_swtpm_conf *out) {
        struct tcti_swtpm_conf c = { .port = TCTI_SWTPM_DEFAULT_PORT };
        snprintf(c.host, sizeof(c.host), "localhost");

        if (conf && strlen(conf) > TCTI_SWTPM_CONF_MAX)
                return -EINVAL;
        for (const char *p = conf ? conf : ""; *p;) {
                size_t n = strcspn(p, ",");
                const char *eq = memchr(p, '=', n);
                if (!eq)
                        return -EINVAL;
                size_t kl = (size_t)(eq - p);
                const char *v = eq + 1;
                size_t vl = n - kl - 1;
                int r;
                if (kl == 4 && !memcmp(p, "path", 4)) {
                        r = set_value(c.path, sizeof(c.path), v, vl);
                        c.unix_socket = true;
                } else if (kl == 4 && !memcmp(p, "host", 4)) {
                        r = set_value(c.host, sizeof(c.host), v, vl);
                        c.unix_socket = false;
                } else if (kl == 4 && !memcmp(p, "port", 4)) {
                        unsigned long port = 0;
                        r = vl >= 1 && vl <= 5 ? 0 : -EINVAL;
                        for (size_t i = 0; r == 0 && i < vl; i++) {
                                if (v[i] < '0' || v[i] > '9')
                                        r = -EINVAL;
                                else
                                        port = port * 10 + (unsigned long)(v[i] - '0');
                        }
                        if (r == 0 && (port == 0 || port > 65535))
                                r = -EINVAL;
                        c.port = (uint16_t)port;
                } else
                        r = -EINVAL;
                if (r < 0)
                        return r;
                p += n;
                if (*p == ',') {
                        p++;
                        if (!*p)
                                return -EINVAL; /* trailing comma */
                }
        }
        *out = c;
        return 0;
}

/* ---- connection ---------------------------------------------------------- */

static int resolve(const struct tcti_swtpm_conf *c, struct tcti_swtpm *t) {
        if (c->unix_socket) {
                struct sockaddr_un *un = (struct sockaddr_un *)&t->addr;
                un->sun_family = AF_UNIX;
                memcpy(un->sun_path, c->path, strlen(c->path) + 1);
                t->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(c->path) + 1);
                return 0;
        }
        /* Resolved once here, so sending a command never waits for DNS. */
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%u", (unsigned)c->port);
        if (getaddrinfo(c->host, port, &hints, &ai) != 0 || !ai)
                return -EHOSTUNREACH;
        memcpy(&t->addr, ai->ai_addr, ai->ai_addrlen);
        t->addr_len = ai->ai_addrlen;
        freeaddrinfo(ai);
        return 0;
}

/* A blocking connect: swtpm accepts at once, or the kernel queues us while
 * it serves another client; either way this does not wait for the TPM. */
static int connect_swtpm(const struct tcti_swtpm *t) {
        int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        while (connect(fd, (const struct sockaddr *)&t->addr, t->addr_len) < 0) {
                if (errno == EINTR)
                        continue;
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

/* Whether the connection kept from the last command can carry the next one:
 * swtpm has not closed it (a restart) and sent nothing since (it never
 * does; bytes here would be read as the next response). */
static bool kept_connection_usable(const struct tcti_swtpm *t) {
        if (now_monotonic_ms() - t->connected_ms >= TCTI_SWTPM_KEEP_MAX_MS)
                return false; /* let whoever waits in swtpm's queue have a turn */
        uint8_t b;
        ssize_t n = recv(t->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* 0, or -errno with *sent = the bytes that went out before the error. A
 * command is at most 4 KiB into the socket's buffer: this never waits for
 * the TPM. */
static int send_all(int fd, const uint8_t *cmd, size_t size, size_t *sent) {
        size_t off = 0;
        while (off < size) {
                ssize_t n = send(fd, cmd + off, size - off, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        *sent = off;
                        return n < 0 ? -errno : -EIO;
                }
                off += (size_t)n;
        }
        *sent = off;
        return 0;
}

static void drop_connection(struct tcti_swtpm *t) {
        if (t->fd >= 0)
                close(t->fd);
        t->fd = -1;
        t->state = STATE_TRANSMIT;
        t->have = t->resp_len = 0;
}

/* ---- the TCTI functions ----------------------------------------------------- */

static TSS2_RC swtpm_transmit(TSS2_TCTI_CONTEXT *ctx, size_t size, const uint8_t *cmd) {
        struct tcti_swtpm *t = cast(ctx);
        if (!t)
                return TSS2_TCTI_RC_BAD_CONTEXT;
        if (!cmd)
                return TSS2_TCTI_RC_BAD_REFERENCE;
        if (t->state != STATE_TRANSMIT)
                return TSS2_TCTI_RC_BAD_SEQUENCE;
        if (size < TPM_HEADER_BYTES || size > TCTI_SWTPM_MAX_MESSAGE || be32(cmd + 2) != size)
                return TSS2_TCTI_RC_BAD_VALUE;

        bool kept = t->fd >= 0;
        if (kept && !kept_connection_usable(t)) {
                drop_connection(t);
                kept = false;
        }
        for (;;) {
                if (t->fd < 0) {
                        int fd = connect_swtpm(t);
                        if (fd < 0)
                                return TSS2_TCTI_RC_IO_ERROR;
                        t->fd = fd;
                        t->connected_ms = now_monotonic_ms();
                }
                size_t sent = 0;
                int r = send_all(t->fd, cmd, size, &sent);
                if (r == 0)
                        break;
                drop_connection(t);
                /* swtpm closed the kept connection between our check and
                 * the send: nothing of the command went out, so a new
                 * connection can carry it. */
                if (!kept || sent > 0 || (r != -EPIPE && r != -ECONNRESET))
                        return TSS2_TCTI_RC_IO_ERROR;
                kept = false;
        }
        t->state = STATE_RECEIVE;
        t->have = t->resp_len = 0;
        return TSS2_RC_SUCCESS;
}

int tcti_swtpm_response_state(const uint8_t *buf, size_t have, size_t *len) {
        if (have < TPM_HEADER_BYTES)
                return 0;
        uint32_t size = be32(buf + 2);
        if (size < TPM_HEADER_BYTES || size > TCTI_SWTPM_MAX_MESSAGE || have > size)
                return -EBADMSG;
        if (have < size)
                return 0;
        *len = size;
        return 1;
}

/* Read until the response is complete. 0 = complete (t->resp_len set), or
 * a TCTI error (drop the connection). */
static TSS2_RC read_response(struct tcti_swtpm *t) {
        while (t->resp_len == 0) {
                ssize_t n = recv(t->fd, t->resp + t->have, sizeof(t->resp) - t->have, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return TSS2_TCTI_RC_IO_ERROR; /* EOF before a whole response, or a socket error */
                t->have += (size_t)n;
                if (tcti_swtpm_response_state(t->resp, t->have, &t->resp_len) < 0)
                        return TSS2_TCTI_RC_MALFORMED_RESPONSE;
        }
        return TSS2_RC_SUCCESS;
}

static TSS2_RC swtpm_receive(TSS2_TCTI_CONTEXT *ctx, size_t *size, uint8_t *response, int32_t timeout) {
        struct tcti_swtpm *t = cast(ctx);
        if (!t)
                return TSS2_TCTI_RC_BAD_CONTEXT;
        if (!size)
                return TSS2_TCTI_RC_BAD_REFERENCE;
        if (t->state != STATE_RECEIVE)
                return TSS2_TCTI_RC_BAD_SEQUENCE;
        if (timeout != TSS2_TCTI_TIMEOUT_BLOCK)
                return TSS2_TCTI_RC_BAD_VALUE; /* blocking only (tcti-swtpm.h) */

        TSS2_RC rc = read_response(t);
        if (rc != TSS2_RC_SUCCESS) {
                drop_connection(t);
                return rc;
        }
        if (!response) {
                *size = t->resp_len; /* the caller asks how much room it needs */
                return TSS2_RC_SUCCESS;
        }
        if (*size < t->resp_len) {
                *size = t->resp_len;
                return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
        }
        memcpy(response, t->resp, t->resp_len);
        *size = t->resp_len;
        /* Keep the connection for the next command (tcti_swtpm_release()). */
        t->state = STATE_TRANSMIT;
        t->have = t->resp_len = 0;
        return TSS2_RC_SUCCESS;
}

static void swtpm_finalize(TSS2_TCTI_CONTEXT *ctx) {
        struct tcti_swtpm *t = cast(ctx);
        if (!t)
                return;
        drop_connection(t);
        t->common.v1.magic = 0;
}

static TSS2_RC swtpm_cancel(TSS2_TCTI_CONTEXT *ctx) {
        (void)ctx;
        return TSS2_TCTI_RC_NOT_IMPLEMENTED; /* swtpm does not implement cancellation either */
}

static TSS2_RC swtpm_set_locality(TSS2_TCTI_CONTEXT *ctx, uint8_t locality) {
        /* swtpm starts in locality 0 and tpmidd never asks for another. */
        if (!cast(ctx))
                return TSS2_TCTI_RC_BAD_CONTEXT;
        return locality == 0 ? TSS2_RC_SUCCESS : TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

static TSS2_RC swtpm_make_sticky(TSS2_TCTI_CONTEXT *ctx, TPM2_HANDLE *handle, uint8_t sticky) {
        (void)ctx;
        (void)handle;
        (void)sticky;
        return TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

int tcti_swtpm_new(const char *conf, TSS2_TCTI_CONTEXT **ret) {
        struct tcti_swtpm_conf c;
        int r = tcti_swtpm_parse_conf(conf, &c);
        if (r < 0)
                return r;
        struct tcti_swtpm *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->fd = -1;
        r = resolve(&c, t);
        if (r < 0) {
                free(t);
                return r;
        }
        /* Kept for the first command. */
        t->fd = connect_swtpm(t);
        t->connected_ms = now_monotonic_ms();
        if (t->fd < 0) {
                r = t->fd;
                free(t);
                return r;
        }

        TSS2_TCTI_CONTEXT_COMMON_V1 *v1 = &t->common.v1;
        v1->magic = TCTI_SWTPM_MAGIC;
        v1->version = 2;
        v1->transmit = swtpm_transmit;
        v1->receive = swtpm_receive;
        v1->finalize = swtpm_finalize;
        v1->cancel = swtpm_cancel;
        v1->getPollHandles = NULL; /* blocking only: Tss2_Tcti_GetPollHandles() says not implemented */
        v1->setLocality = swtpm_set_locality;
        t->common.makeSticky = swtpm_make_sticky;
        *ret = (TSS2_TCTI_CONTEXT *)t;
        return 0;
}

bool tcti_swtpm_release(TSS2_TCTI_CONTEXT *tcti) {
        struct tcti_swtpm *t = cast(tcti);
        if (!t || t->state != STATE_TRANSMIT || t->fd < 0)
                return false;
        drop_connection(t);
        return true;
}

TSS2_TCTI_CONTEXT *tcti_swtpm_free(TSS2_TCTI_CONTEXT *tcti) {
        if (!tcti)
                return NULL;
        swtpm_finalize(tcti);
        free(tcti);
        return NULL;
}
