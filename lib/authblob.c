/* DPS authenticationKey blob parser: a checked cursor over six big-endian
 * size-prefixed elements. See authblob.h for the layout. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "authblob.h"

/* A read-only cursor: every read checks the remaining length first, so no
 * pointer arithmetic happens outside these helpers. */
struct cursor {
        const uint8_t *p;
        size_t left;
        size_t off;
};

static bool cursor_u16(struct cursor *c, uint16_t *ret) {
        if (c->left < 2)
                return false;
        *ret = (uint16_t)((c->p[0] << 8) | c->p[1]);
        c->p += 2;
        c->left -= 2;
        c->off += 2;
        return true;
}

static bool cursor_skip(struct cursor *c, size_t n, const uint8_t **ret) {
        if (c->left < n)
                return false;
        *ret = c->p;
        c->p += n;
        c->left -= n;
        c->off += n;
        return true;
}

static const struct {
        const char *name;
        size_t max;
} elements[_AUTHBLOB_ELEMENT_MAX] = {
        [AUTHBLOB_CRED_BLOB] = { "credential blob (TPM2B_ID_OBJECT, element 1)", AUTHBLOB_ID_OBJECT_MAX },
        [AUTHBLOB_ENC_SECRET] = { "credential secret (TPM2B_ENCRYPTED_SECRET, element 2)", AUTHBLOB_ENC_SECRET_MAX },
        [AUTHBLOB_DUPLICATE] = { "key duplicate (TPM2B_PRIVATE, element 3)", AUTHBLOB_PRIVATE_MAX },
        [AUTHBLOB_IN_SYM_SEED] = { "import seed (TPM2B_ENCRYPTED_SECRET, element 4)", AUTHBLOB_ENC_SECRET_MAX },
        [AUTHBLOB_ID_KEY_PUB] = { "key public area (TPM2B_PUBLIC, element 5)", AUTHBLOB_PUBLIC_MAX },
        [AUTHBLOB_ENC_URI] = { "encrypted URI data (element 6)", AUTHBLOB_ENC_URI_MAX },
};

const char *authblob_element_name(enum authblob_element e) {
        if ((unsigned)e >= _AUTHBLOB_ELEMENT_MAX)
                return "unknown element";
        return elements[e].name;
}

size_t authblob_element_max(enum authblob_element e) {
        if ((unsigned)e >= _AUTHBLOB_ELEMENT_MAX)
                return 0;
        return elements[e].max;
}

const char *authblob_problem_name(enum authblob_problem p) {
        switch (p) {
        case AUTHBLOB_TRUNCATED_SIZE:
                return "is cut off before its size field";
        case AUTHBLOB_TRUNCATED_BODY:
                return "is cut off (its size field promises more bytes than the blob has)";
        case AUTHBLOB_EMPTY:
                return "is empty";
        case AUTHBLOB_TOO_LARGE:
                return "is larger than the TPM structure can hold";
        }
        return "is malformed";
}

int authblob_error_format(const struct authblob_error *err, char *buf, size_t n) {
        if (!err)
                return snprintf(buf, n, "the authenticationKey blob is malformed");
        switch (err->problem) {
        case AUTHBLOB_TRUNCATED_SIZE:
        case AUTHBLOB_EMPTY:
                return snprintf(buf, n, "the authenticationKey blob is malformed: the %s %s (at byte %zu)",
                                authblob_element_name(err->element), authblob_problem_name(err->problem),
                                err->offset);
        case AUTHBLOB_TRUNCATED_BODY:
                return snprintf(buf, n,
                                "the authenticationKey blob is malformed: the %s %s (size %zu at byte %zu)",
                                authblob_element_name(err->element), authblob_problem_name(err->problem),
                                err->size, err->offset);
        case AUTHBLOB_TOO_LARGE:
                return snprintf(buf, n,
                                "the authenticationKey blob is malformed: the %s %s (size %zu > %zu at byte %zu)",
                                authblob_element_name(err->element), authblob_problem_name(err->problem),
                                err->size, authblob_element_max(err->element), err->offset);
        }
        return snprintf(buf, n, "the authenticationKey blob is malformed");
}

static int fail(struct authblob_error *err, enum authblob_element e, enum authblob_problem p, size_t off,
                size_t size) {
        if (err)
                *err = (struct authblob_error){ .element = e, .problem = p, .offset = off, .size = size };
        return -EBADMSG;
}

int authblob_parse(const uint8_t *buf, size_t len, struct authblob *out, struct authblob_error *err) {
        struct authblob b = { 0 };
        struct cursor c = { .p = buf, .left = len, .off = 0 };

        if ((!buf && len > 0) || !out)
                return -EINVAL;

        for (enum authblob_element e = 0; e < _AUTHBLOB_ELEMENT_MAX; e++) {
                size_t start = c.off;
                const uint8_t *raw = c.p;
                uint16_t size;

                /* Element 6 is optional: a blob that ends right after the
                 * public area is what identity-service would accept. */
                if (e == AUTHBLOB_ENC_URI && c.left == 0)
                        break;
                if (!cursor_u16(&c, &size))
                        return fail(err, e, AUTHBLOB_TRUNCATED_SIZE, start, 0);
                if (size == 0 && e != AUTHBLOB_ENC_URI)
                        return fail(err, e, AUTHBLOB_EMPTY, start, 0);
                if (size > elements[e].max)
                        return fail(err, e, AUTHBLOB_TOO_LARGE, start, size);
                const uint8_t *body;
                if (!cursor_skip(&c, size, &body))
                        return fail(err, e, AUTHBLOB_TRUNCATED_BODY, start, size);
                b.el[e] = (struct authblob_span){
                        .raw = raw, .raw_len = AUTHBLOB_SIZE_FIELD + (size_t)size,
                        .body = body, .body_len = size,
                };
                if (e == AUTHBLOB_ENC_URI)
                        b.has_enc_uri = true;
        }
        b.trailing = c.left;
        *out = b;
        return 0;
}
