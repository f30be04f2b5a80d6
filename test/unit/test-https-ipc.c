/* Tests for lib/https-ipc.c: round trips of every frame type, a golden byte
 * vector, truncation at every byte, every limit (at and one past), bad
 * tags, absent-marker misuse, NULs in strings, trailing bytes, range checks. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "https-ipc.h"

static uint8_t *enc(const struct https_ipc_msg *m, size_t *len) {
        uint8_t *buf = NULL;
        assert_int_equal(https_ipc_encode(m, &buf, len), 0);
        assert_non_null(buf);
        size_t total = 0;
        assert_int_equal(https_ipc_frame_peek(buf, *len, &total), 0);
        assert_int_equal(total, *len);
        return buf;
}

static void put32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)(v >> 24);
        p[1] = (uint8_t)(v >> 16);
        p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
}

static const uint8_t body_bin[] = {'{', 0, '}', 0xff};

static struct https_ipc_msg sample_request(void) {
        return (struct https_ipc_msg){
                .type = HTTPS_IPC_REQUEST,
                .request = {.id = 0x0102030405060708ull,
                            .method = "PUT",
                            .url = "https://global.azure-devices-provisioning.net/0ne/registrations/x/register",
                            .authorization = "SharedAccessSignature sr=a&sig=b&se=1",
                            .body = body_bin,
                            .body_len = sizeof(body_bin),
                            .timeout_ms = 70000},
        };
}

static struct https_ipc_msg sample_response(void) {
        return (struct https_ipc_msg){
                .type = HTTPS_IPC_RESPONSE,
                .response = {.id = 42,
                             .error = 0,
                             .error_msg = "",
                             .status = 202,
                             .body = (const uint8_t *)"{\"status\":\"assigning\"}",
                             .body_len = 22,
                             .retry_after = "3",
                             .error_code_header = NULL,
                             .date = "Tue, 01 Dec 2026 20:38:41 GMT",
                             .total_usec = 1234567},
        };
}

static struct https_ipc_msg sample_hello(void) {
        return (struct https_ipc_msg){
                .type = HTTPS_IPC_HELLO,
                .hello = {.version = HTTPS_IPC_VERSION,
                          .ca_bundle = "/etc/ssl/ca.pem",
                          .connect_to = "hub1:443:127.0.0.1:5000,hub2:443:127.0.0.1:5000",
                          .user_agent = "tpmidd/0.1.0"},
        };
}

static void test_roundtrip_request(void **state) {
        struct https_ipc_msg m = sample_request(), d;
        size_t len;
        uint8_t *buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(d.type, HTTPS_IPC_REQUEST);
        assert_true(d.request.id == m.request.id);
        assert_string_equal(d.request.method, "PUT");
        assert_string_equal(d.request.url, m.request.url);
        assert_string_equal(d.request.authorization, m.request.authorization);
        assert_int_equal(d.request.body_len, sizeof(body_bin));
        assert_memory_equal(d.request.body, body_bin, sizeof(body_bin));
        assert_int_equal(d.request.body[d.request.body_len], 0); /* NUL after the body */
        assert_int_equal(d.request.timeout_ms, 70000);
        https_ipc_msg_clear(&d);
        assert_null(d.storage_);
        free(buf);

        /* absent authorization and body stay absent; an empty body stays present */
        m.request.authorization = NULL;
        m.request.body = NULL;
        m.request.body_len = 0;
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_null(d.request.authorization);
        assert_null(d.request.body);
        https_ipc_msg_clear(&d);
        free(buf);
        m.request.body = (const uint8_t *)"";
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_non_null(d.request.body);
        assert_int_equal(d.request.body_len, 0);
        https_ipc_msg_clear(&d);
        free(buf);
}

static void test_roundtrip_response(void **state) {
        struct https_ipc_msg m = sample_response(), d;
        size_t len;
        uint8_t *buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(d.type, HTTPS_IPC_RESPONSE);
        assert_true(d.response.id == 42);
        assert_int_equal(d.response.error, 0);
        assert_string_equal(d.response.error_msg, "");
        assert_int_equal(d.response.status, 202);
        assert_int_equal(d.response.body_len, 22);
        assert_string_equal((const char *)d.response.body, "{\"status\":\"assigning\"}");
        assert_string_equal(d.response.retry_after, "3");
        assert_null(d.response.error_code_header);
        assert_string_equal(d.response.date, "Tue, 01 Dec 2026 20:38:41 GMT");
        assert_true(d.response.total_usec == 1234567);
        https_ipc_msg_clear(&d);
        free(buf);

        /* a transport error: negative errno survives the u32 */
        m.response = (struct https_ipc_response){.id = UINT64_MAX,
                                                  .error = -ETIMEDOUT,
                                                  .error_msg = "Operation timed out after 70001 milliseconds",
                                                  .body = (const uint8_t *)"",
                                                  .error_code_header = "ServiceUnavailable"};
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_true(d.response.id == UINT64_MAX);
        assert_int_equal(d.response.error, -ETIMEDOUT);
        assert_string_equal(d.response.error_msg, m.response.error_msg);
        assert_int_equal(d.response.status, 0);
        assert_int_equal(d.response.body_len, 0);
        assert_string_equal(d.response.error_code_header, "ServiceUnavailable");
        assert_null(d.response.date); /* absent stays absent */
        https_ipc_msg_clear(&d);
        free(buf);
}

static void test_roundtrip_hello_cancel(void **state) {
        struct https_ipc_msg m = sample_hello(), d;
        size_t len;
        uint8_t *buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(d.type, HTTPS_IPC_HELLO);
        assert_int_equal(d.hello.version, HTTPS_IPC_VERSION);
        assert_string_equal(d.hello.ca_bundle, "/etc/ssl/ca.pem");
        assert_string_equal(d.hello.connect_to, m.hello.connect_to);
        assert_string_equal(d.hello.user_agent, "tpmidd/0.1.0");
        https_ipc_msg_clear(&d);
        free(buf);

        m.hello.ca_bundle = NULL;
        m.hello.connect_to = NULL;
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_null(d.hello.ca_bundle);
        assert_null(d.hello.connect_to);
        https_ipc_msg_clear(&d);
        free(buf);

        m = (struct https_ipc_msg){.type = HTTPS_IPC_CANCEL, .cancel = {.id = 7}};
        buf = enc(&m, &len);
        assert_int_equal(len, 4 + 1 + 8);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(d.type, HTTPS_IPC_CANCEL);
        assert_true(d.cancel.id == 7);
        https_ipc_msg_clear(&d);
        free(buf);
}

/* The layout is a contract between two binaries: pin it. */
static void test_golden(void **state) {
        struct https_ipc_msg m = {.type = HTTPS_IPC_REQUEST,
                                  .request = {.id = 1, .method = "GET", .url = "https://h/", .timeout_ms = 1000}};
        static const uint8_t want[] = {
                0, 0, 0, 46,                                  /* payload length */
                2,                                            /* REQUEST */
                0, 0, 0, 0, 0, 0, 0, 1,                       /* id */
                0, 0, 0, 3, 'G', 'E', 'T',                    /* method */
                0, 0, 0, 10, 'h', 't', 't', 'p', 's', ':', '/', '/', 'h', '/', /* url */
                0xff, 0xff, 0xff, 0xff,                       /* no authorization */
                0xff, 0xff, 0xff, 0xff,                       /* no If-Match */
                0xff, 0xff, 0xff, 0xff,                       /* no body */
                0, 0, 0x03, 0xe8,                             /* timeout_ms */
        };
        size_t len;
        uint8_t *buf = enc(&m, &len);
        assert_int_equal(len, sizeof(want));
        assert_memory_equal(buf, want, sizeof(want));
        free(buf);
}

/* Every proper prefix of a valid frame fails to decode, and so does every
 * frame whose length prefix claims fewer bytes than the fields need. */
static void check_truncations(const struct https_ipc_msg *m) {
        size_t len;
        uint8_t *buf = enc(m, &len);
        struct https_ipc_msg d = {.type = HTTPS_IPC_CANCEL, .cancel = {.id = 99}};
        for (size_t n = 0; n < len; n++) {
                assert_int_equal(https_ipc_decode(buf, n, &d), -EBADMSG);
                if (n >= HTTPS_IPC_HEADER_BYTES + 1) {
                        /* a consistent prefix, a short payload */
                        uint8_t *cut = malloc(n);
                        memcpy(cut, buf, n);
                        put32(cut, (uint32_t)(n - HTTPS_IPC_HEADER_BYTES));
                        assert_int_equal(https_ipc_decode(cut, n, &d), -EBADMSG);
                        free(cut);
                }
        }
        /* untouched on failure */
        assert_int_equal(d.type, HTTPS_IPC_CANCEL);
        assert_true(d.cancel.id == 99);
        assert_null(d.storage_);
        /* and a trailing byte is rejected too */
        uint8_t *longer = malloc(len + 1);
        memcpy(longer, buf, len);
        longer[len] = 0;
        put32(longer, (uint32_t)(len + 1 - HTTPS_IPC_HEADER_BYTES));
        assert_int_equal(https_ipc_decode(longer, len + 1, &d), -EBADMSG);
        free(longer);
        free(buf);
}

static void test_truncation(void **state) {
        struct https_ipc_msg m = sample_request();
        check_truncations(&m);
        m = sample_response();
        check_truncations(&m);
        m = sample_hello();
        check_truncations(&m);
        m = (struct https_ipc_msg){.type = HTTPS_IPC_CANCEL, .cancel = {.id = 3}};
        check_truncations(&m);
}

static void test_peek(void **state) {
        uint8_t b[8] = {0};
        size_t total = 0;
        assert_int_equal(https_ipc_frame_peek(b, 3, &total), -EAGAIN);
        assert_int_equal(https_ipc_frame_peek(b, 4, &total), -EBADMSG); /* length 0 */
        put32(b, HTTPS_IPC_MAX_FRAME_BYTES);
        assert_int_equal(https_ipc_frame_peek(b, 4, &total), 0);
        assert_int_equal(total, HTTPS_IPC_MAX_FRAME_BYTES + 4);
        put32(b, HTTPS_IPC_MAX_FRAME_BYTES + 1);
        assert_int_equal(https_ipc_frame_peek(b, 4, &total), -EBADMSG);
        put32(b, UINT32_MAX);
        assert_int_equal(https_ipc_frame_peek(b, 8, &total), -EBADMSG);
        assert_int_equal(https_ipc_decode(b, 8, &(struct https_ipc_msg){0}), -EBADMSG);
}

static void test_bad_tags(void **state) {
        struct https_ipc_msg m = {.type = HTTPS_IPC_CANCEL, .cancel = {.id = 3}}, d;
        size_t len;
        uint8_t *buf = enc(&m, &len);
        const uint8_t bad[] = {0, 5, 6, 0x7f, 0x80, 0xff};
        for (size_t i = 0; i < sizeof(bad); i++) {
                buf[4] = bad[i];
                assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        }
        free(buf);
        /* the encoder refuses a type outside the enum */
        uint8_t *out = NULL;
        m.type = (enum https_ipc_type)9;
        assert_int_equal(https_ipc_encode(&m, &out, &len), -EINVAL);
        assert_null(out);
        /* a hello of another version */
        m = sample_hello();
        m.hello.version = HTTPS_IPC_VERSION + 1;
        assert_int_equal(https_ipc_encode(&m, &out, &len), -EINVAL);
        m.hello.version = HTTPS_IPC_VERSION;
        buf = enc(&m, &len);
        put32(buf + 5, HTTPS_IPC_VERSION + 1);
        assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        free(buf);
}

static char *filled(size_t n) {
        char *s = malloc(n + 1);
        memset(s, 'a', n);
        s[n] = 0;
        return s;
}

static void test_limits(void **state) {
        struct https_ipc_msg m = sample_request(), d;
        uint8_t *buf = NULL;
        size_t len;
        char *at = filled(HTTPS_IPC_MAX_STRING_BYTES), *over = filled(HTTPS_IPC_MAX_STRING_BYTES + 1);

        /* strings at the limit pass, one past fails */
        m.request.url = at;
        m.request.authorization = at;
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(strlen(d.request.url), HTTPS_IPC_MAX_STRING_BYTES);
        https_ipc_msg_clear(&d);
        free(buf);
        m.request.url = over;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EMSGSIZE);
        m.request.url = at;
        m.request.authorization = over;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EMSGSIZE);
        m.request.authorization = NULL;

        /* a decoder given an over-long string built by hand */
        m = (struct https_ipc_msg){.type = HTTPS_IPC_REQUEST,
                                   .request = {.id = 1, .method = "GET", .url = at, .timeout_ms = 1}};
        buf = enc(&m, &len);
        uint8_t *big = malloc(len + 1);
        memcpy(big, buf, 4 + 1 + 8 + 4 + 3); /* up to and including the method */
        size_t url_off = 4 + 1 + 8 + 4 + 3;
        put32(big + url_off, HTTPS_IPC_MAX_STRING_BYTES + 1);
        memset(big + url_off + 4, 'a', HTTPS_IPC_MAX_STRING_BYTES + 1);
        memcpy(big + url_off + 4 + HTTPS_IPC_MAX_STRING_BYTES + 1, buf + url_off + 4 + HTTPS_IPC_MAX_STRING_BYTES,
               len - (url_off + 4 + HTTPS_IPC_MAX_STRING_BYTES));
        put32(big, (uint32_t)(len + 1 - 4));
        assert_int_equal(https_ipc_decode(big, len + 1, &d), -EBADMSG);
        free(big);
        free(buf);

        /* bodies: at the limit in both directions, one past fails */
        uint8_t *body = calloc(1, HTTPS_IPC_MAX_BODY_BYTES + 1);
        m = sample_request();
        m.request.body = body;
        m.request.body_len = HTTPS_IPC_MAX_BODY_BYTES;
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(d.request.body_len, HTTPS_IPC_MAX_BODY_BYTES);
        https_ipc_msg_clear(&d);
        free(buf);
        m.request.body_len = HTTPS_IPC_MAX_BODY_BYTES + 1;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EMSGSIZE);

        m = sample_response();
        m.response.body = body;
        m.response.body_len = HTTPS_IPC_MAX_BODY_BYTES;
        m.response.error_msg = at;
        m.response.retry_after = at;
        m.response.error_code_header = at;
        m.response.date = at;
        buf = enc(&m, &len);
        assert_true(len - HTTPS_IPC_HEADER_BYTES <= HTTPS_IPC_MAX_FRAME_BYTES);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        https_ipc_msg_clear(&d);
        /* one more body byte, smuggled in by hand: the body length check fires */
        uint8_t *big2 = malloc(len + 1);
        size_t body_off = 4 + 1 + 8 + 4 + 4 + HTTPS_IPC_MAX_STRING_BYTES + 4;
        memcpy(big2, buf, body_off);
        put32(big2 + body_off, HTTPS_IPC_MAX_BODY_BYTES + 1);
        memset(big2 + body_off + 4, 0, HTTPS_IPC_MAX_BODY_BYTES + 1);
        memcpy(big2 + body_off + 4 + HTTPS_IPC_MAX_BODY_BYTES + 1, buf + body_off + 4 + HTTPS_IPC_MAX_BODY_BYTES,
               len - (body_off + 4 + HTTPS_IPC_MAX_BODY_BYTES));
        put32(big2, (uint32_t)(len + 1 - 4));
        assert_int_equal(https_ipc_decode(big2, len + 1, &d), -EBADMSG);
        free(big2);
        free(buf);
        m.response.body_len = HTTPS_IPC_MAX_BODY_BYTES + 1;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EMSGSIZE);

        free(body);
        free(at);
        free(over);
}

static void test_ranges(void **state) {
        uint8_t *buf = NULL;
        size_t len;
        struct https_ipc_msg m = sample_request(), d;

        /* required fields */
        m.request.method = NULL;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m = sample_request();
        m.request.url = NULL;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m = sample_request();
        m.request.timeout_ms = 0;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m = sample_hello();
        m.hello.user_agent = NULL;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m = sample_response();
        m.response.error_msg = NULL;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m = sample_response();
        m.response.status = HTTPS_IPC_MAX_STATUS + 1;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m = sample_response();
        m.response.error = 5;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m.response.error = -HTTPS_IPC_MAX_ERRNO - 1;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
        m.response.error = -HTTPS_IPC_MAX_ERRNO;
        buf = enc(&m, &len);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        assert_int_equal(d.response.error, -HTTPS_IPC_MAX_ERRNO);
        https_ipc_msg_clear(&d);
        /* the same fields patched in the bytes */
        size_t err_off = 4 + 1 + 8;
        put32(buf + err_off, 1);
        assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        put32(buf + err_off, (uint32_t)-(HTTPS_IPC_MAX_ERRNO + 1));
        assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        put32(buf + err_off, 0);
        size_t status_off = err_off + 4 + 4 + strlen(m.response.error_msg);
        put32(buf + status_off, HTTPS_IPC_MAX_STATUS + 1);
        assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        put32(buf + status_off, HTTPS_IPC_MAX_STATUS);
        assert_int_equal(https_ipc_decode(buf, len, &d), 0);
        https_ipc_msg_clear(&d);
        free(buf);

        /* timeout 0 on the wire */
        m = (struct https_ipc_msg){.type = HTTPS_IPC_REQUEST,
                                   .request = {.id = 1, .method = "GET", .url = "https://h/", .timeout_ms = 1}};
        buf = enc(&m, &len);
        put32(buf + len - 4, 0);
        assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        free(buf);
        https_ipc_msg_clear(NULL);
}

static void test_absent_and_nul(void **state) {
        struct https_ipc_msg m = {.type = HTTPS_IPC_REQUEST,
                                  .request = {.id = 1, .method = "GET", .url = "https://h/", .timeout_ms = 1}}, d;
        size_t len;
        uint8_t *buf = enc(&m, &len);
        /* required method marked absent */
        size_t method_off = 4 + 1 + 8;
        uint8_t *b = malloc(len);
        memcpy(b, buf, len);
        put32(b + method_off, UINT32_MAX);
        assert_int_equal(https_ipc_decode(b, len, &d), -EBADMSG);
        /* a NUL inside the method */
        memcpy(b, buf, len);
        b[method_off + 4 + 1] = 0;
        assert_int_equal(https_ipc_decode(b, len, &d), -EBADMSG);
        /* a NUL inside the url */
        memcpy(b, buf, len);
        b[method_off + 4 + 3 + 4 + 5] = 0;
        assert_int_equal(https_ipc_decode(b, len, &d), -EBADMSG);
        free(b);
        free(buf);

        /* a response body marked absent */
        m = sample_response();
        m.response.body = (const uint8_t *)"";
        m.response.body_len = 0;
        buf = enc(&m, &len);
        size_t body_off = 4 + 1 + 8 + 4 + 4 + 0 + 4;
        put32(buf + body_off, UINT32_MAX);
        assert_int_equal(https_ipc_decode(buf, len, &d), -EBADMSG);
        free(buf);
        /* the encoder: a body length without a body */
        m.response.body = NULL;
        m.response.body_len = 3;
        assert_int_equal(https_ipc_encode(&m, &buf, &len), -EINVAL);
}

/* Two frames back to back, as a stream delivers them. */
static void test_stream(void **state) {
        struct https_ipc_msg a = sample_request(), b = {.type = HTTPS_IPC_CANCEL, .cancel = {.id = 5}}, d;
        size_t la, lb, total;
        uint8_t *fa = enc(&a, &la), *fb = enc(&b, &lb);
        uint8_t *s = malloc(la + lb);
        memcpy(s, fa, la);
        memcpy(s + la, fb, lb);
        assert_int_equal(https_ipc_frame_peek(s, la + lb, &total), 0);
        assert_int_equal(total, la);
        assert_int_equal(https_ipc_decode(s, la + lb, &d), -EBADMSG); /* not exactly one frame */
        assert_int_equal(https_ipc_decode(s, total, &d), 0);
        assert_int_equal(d.type, HTTPS_IPC_REQUEST);
        https_ipc_msg_clear(&d);
        assert_int_equal(https_ipc_frame_peek(s + total, la + lb - total, &total), 0);
        assert_int_equal(total, lb);
        assert_int_equal(https_ipc_decode(s + la, total, &d), 0);
        assert_int_equal(d.type, HTTPS_IPC_CANCEL);
        https_ipc_msg_clear(&d);
        free(s);
        free(fa);
        free(fb);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_roundtrip_request), cmocka_unit_test(test_roundtrip_response),
                cmocka_unit_test(test_roundtrip_hello_cancel), cmocka_unit_test(test_golden),
                cmocka_unit_test(test_truncation), cmocka_unit_test(test_peek),
                cmocka_unit_test(test_bad_tags), cmocka_unit_test(test_limits),
                cmocka_unit_test(test_ranges), cmocka_unit_test(test_absent_and_nul),
                cmocka_unit_test(test_stream),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
