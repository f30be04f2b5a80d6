/* lib/authblob.c: golden layout (the sizes of a real DPS blob, dps-tpm-protocol
 * §3.1), truncation at every byte, limits of every element, empty elements,
 * the optional 6th element and trailing bytes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authblob.h"

#define N_EL _AUTHBLOB_ELEMENT_MAX

/* Element body sizes of the captured real blob: 920 bytes in all. */
static const size_t real_sizes[N_EL] = { 52, 256, 142, 256, 48, 154 };

/* Write n elements with the given body sizes; body byte j of element i is
 * (i << 5) ^ j so a misplaced span shows up. Returns the total length. */
static size_t build(uint8_t *buf, const size_t *sizes, size_t n) {
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
                buf[off++] = (uint8_t)(sizes[i] >> 8);
                buf[off++] = (uint8_t)sizes[i];
                for (size_t j = 0; j < sizes[i]; j++)
                        buf[off++] = (uint8_t)((i << 5) ^ j);
        }
        return off;
}

static uint8_t *blob_alloc(const size_t *sizes, size_t n, size_t extra, size_t *len) {
        size_t total = extra;
        for (size_t i = 0; i < n; i++)
                total += 2 + sizes[i];
        uint8_t *b = calloc(1, total ? total : 1);
        assert_non_null(b);
        *len = build(b, sizes, n) + extra;
        return b;
}

static void check_spans(const uint8_t *b, const struct authblob *ab, const size_t *sizes, size_t n) {
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
                assert_ptr_equal(ab->el[i].raw, b + off);
                assert_int_equal(ab->el[i].raw_len, 2 + sizes[i]);
                assert_ptr_equal(ab->el[i].body, b + off + 2);
                assert_int_equal(ab->el[i].body_len, sizes[i]);
                for (size_t j = 0; j < sizes[i]; j++)
                        assert_int_equal(ab->el[i].body[j], (uint8_t)((i << 5) ^ j));
                off += 2 + sizes[i];
        }
}

static void test_golden_real_layout(void **state) {
        (void)state;
        size_t len;
        uint8_t *b = blob_alloc(real_sizes, N_EL, 0, &len);
        struct authblob ab;

        assert_int_equal(len, 920);
        /* Offsets of dps-tpm-protocol.md §3.1. */
        static const uint8_t at0[] = { 0x00, 0x34 }, at312[] = { 0x00, 0x8e }, at714[] = { 0x00, 0x30 };
        assert_memory_equal(b, at0, 2);
        assert_memory_equal(b + 312, at312, 2);
        assert_memory_equal(b + 714, at714, 2);

        assert_int_equal(authblob_parse(b, len, &ab, NULL), 0);
        check_spans(b, &ab, real_sizes, N_EL);
        assert_true(ab.has_enc_uri);
        assert_int_equal(ab.trailing, 0);
        assert_int_equal(ab.el[AUTHBLOB_ENC_SECRET].raw - b, 54);
        assert_int_equal(ab.el[AUTHBLOB_IN_SYM_SEED].raw - b, 456);
        assert_int_equal(ab.el[AUTHBLOB_ENC_URI].raw - b, 764);
        free(b);
}

static void test_no_uri_and_trailing(void **state) {
        (void)state;
        size_t len;
        struct authblob ab;

        /* identity-service style: five elements only. */
        uint8_t *b = blob_alloc(real_sizes, 5, 0, &len);
        assert_int_equal(authblob_parse(b, len, &ab, NULL), 0);
        assert_false(ab.has_enc_uri);
        assert_null(ab.el[AUTHBLOB_ENC_URI].raw);
        assert_int_equal(ab.el[AUTHBLOB_ENC_URI].body_len, 0);
        check_spans(b, &ab, real_sizes, 5);
        free(b);

        /* Trailing bytes after element 6 are ignored and counted. */
        b = blob_alloc(real_sizes, N_EL, 7, &len);
        assert_int_equal(authblob_parse(b, len, &ab, NULL), 0);
        assert_int_equal(ab.trailing, 7);
        check_spans(b, &ab, real_sizes, N_EL);
        free(b);

        /* An empty 6th element is fine. */
        size_t s[N_EL] = { 52, 256, 142, 256, 48, 0 };
        b = blob_alloc(s, N_EL, 0, &len);
        assert_int_equal(authblob_parse(b, len, &ab, NULL), 0);
        assert_true(ab.has_enc_uri);
        assert_int_equal(ab.el[AUTHBLOB_ENC_URI].body_len, 0);
        free(b);

        /* A 6th element larger than TPM2B_DATA (64 bytes) is the normal case. */
        size_t s2[N_EL] = { 52, 256, 142, 256, 48, AUTHBLOB_ENC_URI_MAX };
        b = blob_alloc(s2, N_EL, 0, &len);
        assert_int_equal(authblob_parse(b, len, &ab, NULL), 0);
        assert_int_equal(ab.el[AUTHBLOB_ENC_URI].body_len, AUTHBLOB_ENC_URI_MAX);
        free(b);
}

/* Which element covers byte offset off, and is off inside its size field? */
static enum authblob_element element_at(size_t off, bool *in_size) {
        size_t start = 0;
        for (size_t i = 0; i < N_EL; i++) {
                if (off < start + 2 + real_sizes[i]) {
                        *in_size = off < start + 2;
                        return (enum authblob_element)i;
                }
                start += 2 + real_sizes[i];
        }
        *in_size = false;
        return _AUTHBLOB_ELEMENT_MAX;
}

static void test_truncated_everywhere(void **state) {
        (void)state;
        size_t len;
        uint8_t *full = blob_alloc(real_sizes, N_EL, 0, &len);
        size_t end5 = len - 2 - real_sizes[AUTHBLOB_ENC_URI];

        for (size_t n = 0; n < len; n++) {
                /* A fresh copy of exactly n bytes so ASan sees any overread. */
                uint8_t *b = malloc(n ? n : 1);
                assert_non_null(b);
                memcpy(b, full, n);
                struct authblob ab;
                memset(&ab, 0x5a, sizeof(ab));
                struct authblob before = ab;
                struct authblob_error e = { 0 };
                int r = authblob_parse(b, n, &ab, &e);
                if (n == end5) {
                        assert_int_equal(r, 0);
                        assert_false(ab.has_enc_uri);
                        free(b);
                        continue;
                }
                if (r != -EBADMSG)
                        fail_msg("length %zu: got %d", n, r);
                bool in_size;
                enum authblob_element want = element_at(n, &in_size);
                assert_int_equal(e.element, want);
                assert_int_equal(e.problem, in_size ? AUTHBLOB_TRUNCATED_SIZE : AUTHBLOB_TRUNCATED_BODY);
                /* Out-parameter untouched on failure. */
                assert_memory_equal(&ab, &before, sizeof(ab));
                free(b);
        }
        free(full);
}

static void test_too_large(void **state) {
        (void)state;
        for (size_t i = 0; i < N_EL; i++) {
                size_t s[N_EL];
                memcpy(s, real_sizes, sizeof(s));
                size_t max = authblob_element_max((enum authblob_element)i);
                struct authblob ab;
                struct authblob_error e;
                size_t len;

                /* Exactly the limit parses. */
                s[i] = max;
                uint8_t *b = blob_alloc(s, N_EL, 0, &len);
                assert_int_equal(authblob_parse(b, len, &ab, &e), 0);
                assert_int_equal(ab.el[i].body_len, max);
                free(b);

                /* One more byte is refused even though the bytes are there. */
                s[i] = max + 1;
                b = blob_alloc(s, N_EL, 0, &len);
                assert_int_equal(authblob_parse(b, len, &ab, &e), -EBADMSG);
                assert_int_equal(e.element, i);
                assert_int_equal(e.problem, AUTHBLOB_TOO_LARGE);
                assert_int_equal(e.size, max + 1);
                free(b);
        }
        assert_int_equal(authblob_element_max(AUTHBLOB_CRED_BLOB), AUTHBLOB_ID_OBJECT_MAX);
        assert_int_equal(authblob_element_max(AUTHBLOB_ENC_SECRET), AUTHBLOB_ENC_SECRET_MAX);
        assert_int_equal(authblob_element_max(AUTHBLOB_DUPLICATE), AUTHBLOB_PRIVATE_MAX);
        assert_int_equal(authblob_element_max(AUTHBLOB_IN_SYM_SEED), AUTHBLOB_ENC_SECRET_MAX);
        assert_int_equal(authblob_element_max(AUTHBLOB_ID_KEY_PUB), AUTHBLOB_PUBLIC_MAX);
        assert_int_equal(authblob_element_max(AUTHBLOB_ENC_URI), AUTHBLOB_ENC_URI_MAX);
        assert_int_equal(authblob_element_max(_AUTHBLOB_ELEMENT_MAX), 0);

        /* 0xffff size fields everywhere. */
        uint8_t ff[4096];
        memset(ff, 0xff, sizeof(ff));
        struct authblob ab;
        struct authblob_error e;
        assert_int_equal(authblob_parse(ff, sizeof(ff), &ab, &e), -EBADMSG);
        assert_int_equal(e.element, AUTHBLOB_CRED_BLOB);
        assert_int_equal(e.problem, AUTHBLOB_TOO_LARGE);
        assert_int_equal(e.offset, 0);
}

static void test_empty_elements(void **state) {
        (void)state;
        for (size_t i = 0; i < 5; i++) {
                size_t s[N_EL];
                memcpy(s, real_sizes, sizeof(s));
                s[i] = 0;
                size_t len;
                uint8_t *b = blob_alloc(s, N_EL, 0, &len);
                struct authblob ab;
                struct authblob_error e;
                assert_int_equal(authblob_parse(b, len, &ab, &e), -EBADMSG);
                assert_int_equal(e.element, i);
                assert_int_equal(e.problem, AUTHBLOB_EMPTY);
                free(b);
        }
}

static void test_args_and_messages(void **state) {
        (void)state;
        struct authblob ab;
        struct authblob_error e;
        char msg[256];

        assert_int_equal(authblob_parse(NULL, 5, &ab, &e), -EINVAL);
        assert_int_equal(authblob_parse((const uint8_t *)"", 0, NULL, &e), -EINVAL);
        assert_int_equal(authblob_parse(NULL, 0, &ab, &e), -EBADMSG);
        assert_int_equal(e.element, AUTHBLOB_CRED_BLOB);
        assert_int_equal(e.problem, AUTHBLOB_TRUNCATED_SIZE);

        /* One byte left where element 6's size field would be. */
        size_t len;
        uint8_t *b = blob_alloc(real_sizes, 5, 1, &len);
        assert_int_equal(authblob_parse(b, len, &ab, &e), -EBADMSG);
        assert_int_equal(e.element, AUTHBLOB_ENC_URI);
        assert_int_equal(e.problem, AUTHBLOB_TRUNCATED_SIZE);
        assert_int_equal(e.offset, len - 1);
        authblob_error_format(&e, msg, sizeof(msg));
        assert_non_null(strstr(msg, "element 6"));
        free(b);

        e = (struct authblob_error){ AUTHBLOB_ID_KEY_PUB, AUTHBLOB_TOO_LARGE, 714, 700 };
        authblob_error_format(&e, msg, sizeof(msg));
        assert_string_equal(msg, "the authenticationKey blob is malformed: the key public area (TPM2B_PUBLIC, "
                                 "element 5) is larger than the TPM structure can hold (size 700 > 612 at byte 714)");
        e = (struct authblob_error){ AUTHBLOB_IN_SYM_SEED, AUTHBLOB_TRUNCATED_BODY, 456, 256 };
        authblob_error_format(&e, msg, sizeof(msg));
        assert_non_null(strstr(msg, "import seed (TPM2B_ENCRYPTED_SECRET, element 4) is cut off"));
        assert_non_null(strstr(msg, "size 256 at byte 456"));
        e = (struct authblob_error){ AUTHBLOB_DUPLICATE, AUTHBLOB_EMPTY, 312, 0 };
        authblob_error_format(&e, msg, sizeof(msg));
        assert_non_null(strstr(msg, "key duplicate (TPM2B_PRIVATE, element 3) is empty"));
        authblob_error_format(NULL, msg, sizeof(msg));
        assert_string_equal(msg, "the authenticationKey blob is malformed");
        /* Small buffers are still terminated. */
        authblob_error_format(&e, msg, 8);
        assert_int_equal(strlen(msg), 7);
        assert_string_equal(authblob_element_name(_AUTHBLOB_ELEMENT_MAX), "unknown element");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_golden_real_layout),
                cmocka_unit_test(test_no_uri_and_trailing),
                cmocka_unit_test(test_truncated_everywhere),
                cmocka_unit_test(test_too_large),
                cmocka_unit_test(test_empty_elements),
                cmocka_unit_test(test_args_and_messages),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
