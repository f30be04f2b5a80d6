/* The tpmidd ↔ tpmidd-https frame codec (layout in https-ipc.h). Writing goes
 * through a sizing pass and a writing pass over the same field list, so the
 * buffer is exactly as large as the frame; reading goes through a checked
 * cursor that fails closed on the first short or out-of-range field. */
#include "https-ipc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define ABSENT UINT32_MAX /* length value of an absent optional string or body */

/* ---- writing ------------------------------------------------------------ */

/* With buf == NULL only counts; that is the sizing pass. */
struct wcur {
        uint8_t *buf;
        size_t pos;
};

static void put_u8(struct wcur *w, uint8_t v) {
        if (w->buf)
                w->buf[w->pos] = v;
        w->pos += 1;
}

static void put_u32(struct wcur *w, uint32_t v) {
        if (w->buf) {
                w->buf[w->pos] = (uint8_t)(v >> 24);
                w->buf[w->pos + 1] = (uint8_t)(v >> 16);
                w->buf[w->pos + 2] = (uint8_t)(v >> 8);
                w->buf[w->pos + 3] = (uint8_t)v;
        }
        w->pos += 4;
}

static void put_u64(struct wcur *w, uint64_t v) {
        put_u32(w, (uint32_t)(v >> 32));
        put_u32(w, (uint32_t)v);
}

static void put_bytes(struct wcur *w, const void *p, size_t n, bool present) {
        put_u32(w, present ? (uint32_t)n : ABSENT);
        if (present && n > 0 && w->buf)
                memcpy(w->buf + w->pos, p, n);
        if (present)
                w->pos += n;
}

static int check_str(const char *s, bool required) {
        if (!s)
                return required ? -EINVAL : 0;
        return strlen(s) <= HTTPS_IPC_MAX_STRING_BYTES ? 0 : -EMSGSIZE;
}

static void put_str(struct wcur *w, const char *s) {
        put_bytes(w, s, s ? strlen(s) : 0, s != NULL);
}

static int validate(const struct https_ipc_msg *m) {
        int r;
        switch (m->type) {
        case HTTPS_IPC_HELLO:
                if (m->hello.version != HTTPS_IPC_VERSION)
                        return -EINVAL;
                if ((r = check_str(m->hello.ca_bundle, false)) < 0 || (r = check_str(m->hello.connect_to, false)) < 0 ||
                    (r = check_str(m->hello.user_agent, true)) < 0)
                        return r;
                return 0;
        case HTTPS_IPC_REQUEST:
                if ((r = check_str(m->request.method, true)) < 0 || (r = check_str(m->request.url, true)) < 0 ||
                    (r = check_str(m->request.authorization, false)) < 0 ||
                    (r = check_str(m->request.if_match, false)) < 0)
                        return r;
                if (m->request.timeout_ms == 0)
                        return -EINVAL;
                if (m->request.if_match && strpbrk(m->request.if_match, "\r\n"))
                        return -EINVAL; /* one header line, never two */
                if (m->request.body && m->request.body_len > HTTPS_IPC_MAX_BODY_BYTES)
                        return -EMSGSIZE;
                return 0;
        case HTTPS_IPC_RESPONSE:
                if ((r = check_str(m->response.error_msg, true)) < 0 ||
                    (r = check_str(m->response.retry_after, false)) < 0 ||
                    (r = check_str(m->response.error_code_header, false)) < 0 ||
                    (r = check_str(m->response.date, false)) < 0)
                        return r;
                if (m->response.error > 0 || m->response.error < -HTTPS_IPC_MAX_ERRNO ||
                    m->response.status > HTTPS_IPC_MAX_STATUS)
                        return -EINVAL;
                if (!m->response.body && m->response.body_len > 0)
                        return -EINVAL;
                if (m->response.body_len > HTTPS_IPC_MAX_BODY_BYTES)
                        return -EMSGSIZE;
                return 0;
        case HTTPS_IPC_CANCEL:
                return 0;
        }
        return -EINVAL; /* a value outside the enum */
}

static void put_msg(struct wcur *w, const struct https_ipc_msg *m) {
        put_u8(w, (uint8_t)m->type);
        switch (m->type) {
        case HTTPS_IPC_HELLO:
                put_u32(w, m->hello.version);
                put_str(w, m->hello.ca_bundle);
                put_str(w, m->hello.connect_to);
                put_str(w, m->hello.user_agent);
                return;
        case HTTPS_IPC_REQUEST:
                put_u64(w, m->request.id);
                put_str(w, m->request.method);
                put_str(w, m->request.url);
                put_str(w, m->request.authorization);
                put_str(w, m->request.if_match);
                put_bytes(w, m->request.body, m->request.body_len, m->request.body != NULL);
                put_u32(w, m->request.timeout_ms);
                return;
        case HTTPS_IPC_RESPONSE:
                put_u64(w, m->response.id);
                put_u32(w, (uint32_t)m->response.error);
                put_str(w, m->response.error_msg);
                put_u32(w, m->response.status);
                put_bytes(w, m->response.body, m->response.body_len, true);
                put_str(w, m->response.retry_after);
                put_str(w, m->response.error_code_header);
                put_str(w, m->response.date);
                put_u64(w, m->response.total_usec);
                return;
        case HTTPS_IPC_CANCEL:
                put_u64(w, m->cancel.id);
                return;
        }
}

int https_ipc_encode(const struct https_ipc_msg *m, uint8_t **ret, size_t *ret_len) {
        int r = validate(m);
        if (r < 0)
                return r;
        struct wcur w = {0};
        put_msg(&w, m);
        size_t payload = w.pos;
        if (payload > HTTPS_IPC_MAX_FRAME_BYTES) /* cannot happen with the field limits; keep the invariant local */
                return -EMSGSIZE;
        uint8_t *buf = malloc(HTTPS_IPC_HEADER_BYTES + payload);
        if (!buf)
                return -ENOMEM;
        w = (struct wcur){.buf = buf};
        put_u32(&w, (uint32_t)payload);
        put_msg(&w, m);
        *ret = buf;
        *ret_len = w.pos;
        return 0;
}

/* ---- reading ------------------------------------------------------------ */

struct rcur {
        const uint8_t *p;
        size_t left;
        bool bad; /* sticky: once a read failed every later read fails too */
};

static bool take(struct rcur *c, size_t n, const uint8_t **ret) {
        if (c->bad || c->left < n) {
                c->bad = true;
                return false;
        }
        *ret = c->p;
        c->p += n;
        c->left -= n;
        return true;
}

static uint8_t get_u8(struct rcur *c) {
        const uint8_t *p;
        return take(c, 1, &p) ? p[0] : 0;
}

static uint32_t get_u32(struct rcur *c) {
        const uint8_t *p;
        if (!take(c, 4, &p))
                return 0;
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_u64(struct rcur *c) {
        uint64_t hi = get_u32(c);
        return hi << 32 | get_u32(c);
}

/* Copies the field into the storage arena (NUL appended) and points *ret at
 * the copy; absent optional fields give NULL. Strings must not contain NUL. */
struct arena {
        uint8_t *buf;
        size_t pos;
};

static void get_field(struct rcur *c, struct arena *a, bool optional, bool binary, size_t max, const uint8_t **ret,
                      size_t *ret_len) {
        uint32_t n = get_u32(c);
        if (c->bad)
                return;
        if (n == ABSENT) {
                if (!optional)
                        c->bad = true;
                *ret = NULL;
                if (ret_len)
                        *ret_len = 0;
                return;
        }
        const uint8_t *p;
        if (n > max || !take(c, n, &p)) {
                c->bad = true;
                return;
        }
        if (!binary && memchr(p, 0, n)) {
                c->bad = true;
                return;
        }
        uint8_t *dst = a->buf + a->pos;
        if (n > 0)
                memcpy(dst, p, n);
        dst[n] = 0;
        a->pos += (size_t)n + 1;
        *ret = dst;
        if (ret_len)
                *ret_len = n;
}

static const char *get_str(struct rcur *c, struct arena *a, bool optional) {
        const uint8_t *s = NULL;
        get_field(c, a, optional, false, HTTPS_IPC_MAX_STRING_BYTES, &s, NULL);
        return (const char *)s;
}

int https_ipc_frame_peek(const uint8_t *buf, size_t len, size_t *ret_total) {
        if (len < HTTPS_IPC_HEADER_BYTES)
                return -EAGAIN;
        struct rcur c = {.p = buf, .left = len};
        uint32_t n = get_u32(&c);
        if (n == 0 || n > HTTPS_IPC_MAX_FRAME_BYTES)
                return -EBADMSG;
        *ret_total = HTTPS_IPC_HEADER_BYTES + (size_t)n;
        return 0;
}

int https_ipc_decode(const uint8_t *buf, size_t len, struct https_ipc_msg *out) {
        size_t total;
        int r = https_ipc_frame_peek(buf, len, &total);
        if (r < 0)
                return -EBADMSG;
        if (total != len)
                return -EBADMSG;
        /* Every field copied into the arena is at most its bytes in the frame
         * plus one NUL, and a field takes at least 4 bytes of the frame, so
         * len + len/4 + 1 bytes always suffice. */
        size_t cap = len + len / 4 + 1;
        uint8_t *storage = malloc(cap);
        if (!storage)
                return -ENOMEM;
        struct arena a = {.buf = storage};
        struct rcur c = {.p = buf + HTTPS_IPC_HEADER_BYTES, .left = len - HTTPS_IPC_HEADER_BYTES};
        struct https_ipc_msg m = {0};
        uint8_t type = get_u8(&c);
        switch (type) {
        case HTTPS_IPC_HELLO:
                m.type = HTTPS_IPC_HELLO;
                m.hello.version = get_u32(&c);
                m.hello.ca_bundle = get_str(&c, &a, true);
                m.hello.connect_to = get_str(&c, &a, true);
                m.hello.user_agent = get_str(&c, &a, false);
                if (m.hello.version != HTTPS_IPC_VERSION)
                        c.bad = true;
                break;
        case HTTPS_IPC_REQUEST:
                m.type = HTTPS_IPC_REQUEST;
                m.request.id = get_u64(&c);
                m.request.method = get_str(&c, &a, false);
                m.request.url = get_str(&c, &a, false);
                m.request.authorization = get_str(&c, &a, true);
                m.request.if_match = get_str(&c, &a, true);
                get_field(&c, &a, true, true, HTTPS_IPC_MAX_BODY_BYTES, &m.request.body, &m.request.body_len);
                m.request.timeout_ms = get_u32(&c);
                if (m.request.timeout_ms == 0 || (m.request.if_match && strpbrk(m.request.if_match, "\r\n")))
                        c.bad = true;
                break;
        case HTTPS_IPC_RESPONSE: {
                m.type = HTTPS_IPC_RESPONSE;
                m.response.id = get_u64(&c);
                uint32_t e = get_u32(&c);
                m.response.error = (int32_t)e;
                m.response.error_msg = get_str(&c, &a, false);
                m.response.status = get_u32(&c);
                get_field(&c, &a, false, true, HTTPS_IPC_MAX_BODY_BYTES, &m.response.body, &m.response.body_len);
                m.response.retry_after = get_str(&c, &a, true);
                m.response.error_code_header = get_str(&c, &a, true);
                m.response.date = get_str(&c, &a, true);
                m.response.total_usec = get_u64(&c);
                if (e != 0 && (e < (uint32_t)-HTTPS_IPC_MAX_ERRNO))
                        c.bad = true; /* not 0 and not in [-4095, -1] as two's complement */
                if (m.response.status > HTTPS_IPC_MAX_STATUS)
                        c.bad = true;
                break;
        }
        case HTTPS_IPC_CANCEL:
                m.type = HTTPS_IPC_CANCEL;
                m.cancel.id = get_u64(&c);
                break;
        default: /* a wire byte, not our enum: anything else is malformed */
                c.bad = true;
                break;
        }
        if (c.bad || c.left != 0) {
                explicit_zero(storage, cap);
                free(storage);
                return -EBADMSG;
        }
        m.storage_ = storage;
        m.storage_len_ = cap;
        *out = m;
        return 0;
}

void https_ipc_msg_clear(struct https_ipc_msg *m) {
        if (!m)
                return;
        if (m->storage_) {
                explicit_zero(m->storage_, m->storage_len_); /* requests carry the SAS token */
                free(m->storage_);
        }
        *m = (struct https_ipc_msg){0};
}
