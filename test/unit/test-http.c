/* Tests for lib/http.c: request parsing (limits at and over, pipelining,
 * split feeding, chunked bodies, keep-alive rules, every error status),
 * response serialisation (golden bytes) and query decoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "util.h"

/* Feed text in pieces of `step` bytes (0 = all at once) until a request is
 * complete or an error happens; 100-continue is acknowledged and feeding goes
 * on. Returns the final feed result; *used = bytes consumed in total. */
static int feed_steps(struct http_request_parser *p, const char *text, size_t len, size_t step, size_t *used,
                      int *n_continue) {
        size_t off = 0;
        int r = HTTP_FEED_NEED_MORE;
        if (n_continue)
                *n_continue = 0;
        while (off < len) {
                size_t n = step == 0 || len - off < step ? len - off : step;
                size_t c;
                r = http_request_parser_feed(p, (const uint8_t *)text + off, n, &c);
                assert_true(c <= n);
                off += c;
                if (r == HTTP_FEED_EXPECT_CONTINUE) {
                        if (n_continue)
                                (*n_continue)++;
                        continue;
                }
                if (r != HTTP_FEED_NEED_MORE)
                        break;
                assert_int_equal(c, n); /* need-more means everything was used */
        }
        *used = off;
        return r;
}

/* Parse one complete request from text with default limits; fails the test if
 * it does not parse. */
static struct http_request *parse_one(const char *text, size_t len, size_t step) {
        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        size_t used;
        int r = feed_steps(&p, text, len, step, &used, NULL);
        assert_int_equal(r, HTTP_FEED_REQUEST);
        assert_int_equal(used, len);
        struct http_request *req = NULL;
        assert_int_equal(http_request_take(&p, &req), 0);
        assert_false(http_request_parser_in_request(&p));
        http_request_parser_done(&p);
        return req;
}

/* Parse text expecting a refusal; returns the HTTP status to answer. */
static int parse_error(const char *text, size_t len, const struct http_limits *limits, size_t step) {
        struct http_request_parser p;
        http_request_parser_init(&p, limits);
        size_t used;
        int r = feed_steps(&p, text, len, step, &used, NULL);
        assert_int_equal(r, -EBADMSG);
        const char *msg = NULL;
        int status = http_request_parser_error(&p, &msg);
        assert_non_null(msg);
        assert_true(strlen(msg) > 0);
        /* The error is sticky: the stream cannot be resynchronised. */
        size_t c = 99;
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18, &c), -EBADMSG);
        assert_int_equal(c, 0);
        struct http_request *req = NULL;
        assert_int_equal(http_request_take(&p, &req), -EAGAIN);
        assert_null(req);
        http_request_parser_done(&p);
        return status;
}

#define S(x) x, strlen(x)

static void test_get_basic(void **state) {
        const char *t = "GET /get_tpm_keys?api-version=2020-09-01 HTTP/1.1\r\nHost: tpmd.sock\r\n\r\n";
        struct http_request *r = parse_one(S(t), 0);
        assert_string_equal(r->method, "GET");
        assert_string_equal(r->path, "/get_tpm_keys");
        assert_string_equal(r->query, "api-version=2020-09-01");
        assert_string_equal(r->api_version, "2020-09-01");
        assert_null(r->content_type);
        assert_int_equal(r->content_length, -1);
        assert_false(r->chunked);
        assert_false(r->expect_continue);
        assert_true(r->keep_alive);
        assert_int_equal(r->http_major, 1);
        assert_int_equal(r->http_minor, 1);
        assert_non_null(r->body);
        assert_int_equal(r->body_len, 0);
        assert_null(http_request_free(r));
        assert_null(http_request_free(NULL));
}

static void test_post_body(void **state) {
        const char *t = "POST /sign_with_auth_key?x=1&api-version=2020%2D09-01&y HTTP/1.1\r\n"
                        "Content-Type:  application/json \r\nContent-Length: 13\r\n\r\n{\"data\":\"YQ==\"}";
        /* Content-Length 13 cuts the body: the last 2 bytes start the next request. */
        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        size_t used;
        assert_int_equal(feed_steps(&p, S(t), 0, &used, NULL), HTTP_FEED_REQUEST);
        assert_int_equal(used, strlen(t) - 2);
        _cleanup_http_request_ struct http_request *r = NULL;
        assert_int_equal(http_request_take(&p, &r), 0);
        assert_string_equal(r->method, "POST");
        assert_string_equal(r->path, "/sign_with_auth_key");
        assert_string_equal(r->api_version, "2020-09-01");
        assert_string_equal(r->content_type, "application/json");
        assert_int_equal(r->content_length, 13);
        assert_int_equal(r->body_len, 13);
        assert_memory_equal(r->body, "{\"data\":\"YQ==", 13);
        assert_int_equal(r->body[13], 0);
        http_request_parser_done(&p);
}

static void test_absolute_form_and_no_query(void **state) {
        _cleanup_http_request_ struct http_request *r =
                parse_one(S("GET http://identityd.sock/identities/identity HTTP/1.1\r\n\r\n"), 0);
        assert_string_equal(r->path, "/identities/identity");
        assert_null(r->query);
        assert_null(r->api_version);
        _cleanup_http_request_ struct http_request *r2 = parse_one(S("GET /status?api-version HTTP/1.1\r\n\r\n"), 0);
        assert_string_equal(r2->api_version, "");
        _cleanup_http_request_ struct http_request *r3 =
                parse_one(S("GET /a%2Fb?api-version=1&api-version=2 HTTP/1.1\r\n\r\n"), 0);
        assert_string_equal(r3->path, "/a%2Fb"); /* raw, not decoded */
        assert_string_equal(r3->api_version, "1");  /* first one wins */
}

static void expect_same(const struct http_request *a, const struct http_request *b) {
        assert_string_equal(a->method, b->method);
        assert_string_equal(a->path, b->path);
        assert_true(streq_ptr(a->query, b->query));
        assert_true(streq_ptr(a->api_version, b->api_version));
        assert_true(streq_ptr(a->content_type, b->content_type));
        assert_int_equal(a->content_length, b->content_length);
        assert_int_equal(a->chunked, b->chunked);
        assert_int_equal(a->expect_continue, b->expect_continue);
        assert_int_equal(a->keep_alive, b->keep_alive);
        assert_int_equal(a->body_len, b->body_len);
        assert_memory_equal(a->body, b->body, a->body_len);
}

static void test_split_every_byte(void **state) {
        const char *reqs[] = {
                "POST /import_auth_key?api-version=2020-09-01 HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 12\r\nX-Empty:\r\n\r\n{\"key\":\"AA\"}",
                "POST /identities/device/token?api-version=2022-08-01 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n5\r\n{\"lif\r\n10;ext=1\r\netime_sec\":3600}\r\n0\r\nX-Trailer: y\r\n\r\n",
                "GET /status?api-version=2020-09-01 HTTP/1.0\r\n\r\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(reqs); i++) {
                size_t len = strlen(reqs[i]);
                _cleanup_http_request_ struct http_request *whole = parse_one(reqs[i], len, 0);
                for (size_t step = 1; step <= 7; step++) {
                        _cleanup_http_request_ struct http_request *r = parse_one(reqs[i], len, step);
                        expect_same(whole, r);
                }
                /* Every two-way split point. */
                for (size_t cut = 1; cut < len; cut++) {
                        struct http_request_parser p;
                        http_request_parser_init(&p, NULL);
                        size_t c1, c2;
                        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)reqs[i], cut, &c1), HTTP_FEED_NEED_MORE);
                        assert_int_equal(c1, cut);
                        assert_true(http_request_parser_in_request(&p));
                        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)reqs[i] + cut, len - cut, &c2),
                                         HTTP_FEED_REQUEST);
                        assert_int_equal(c2, len - cut);
                        _cleanup_http_request_ struct http_request *r = NULL;
                        assert_int_equal(http_request_take(&p, &r), 0);
                        expect_same(whole, r);
                        http_request_parser_done(&p);
                }
        }
}

static void test_chunked(void **state) {
        _cleanup_http_request_ struct http_request *r =
                parse_one(S("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"),
                          0);
        assert_true(r->chunked);
        assert_int_equal(r->content_length, -1);
        assert_int_equal(r->body_len, 13);
        assert_memory_equal(r->body, "abc0123456789", 13);
        assert_true(r->keep_alive);
        /* Transfer codings other than chunked cannot be undone: 501 when
         * chunked is final; without a final chunked the body length is
         * unknown (RFC 9112 6.3): 400, as for chunked applied twice. */
        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), NULL, 0), 400);
        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), NULL, 0),
                         501);
        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n"),
                                     NULL, 0),
                         501);
        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n"),
                                     NULL, 0),
                         400);
        /* Content-Length together with chunked is a smuggling vector: 400. */
        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       "3\r\nabc\r\n0\r\n\r\n"),
                                     NULL, 0),
                         400);
        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), NULL, 0), 400);
        assert_int_equal(parse_error(S("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), NULL, 0),
                         400);
}

static void test_pipelined(void **state) {
        const char *t = "GET /a?api-version=1 HTTP/1.1\r\n\r\n"
                        "POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
                        "\r\nGET /c HTTP/1.1\r\nConnection: close\r\n\r\n";
        size_t len = strlen(t), off = 0, c;
        const char *paths[] = { "/a", "/b", "/c" };
        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        for (size_t i = 0; i < 3; i++) {
                assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)t + off, len - off, &c), HTTP_FEED_REQUEST);
                off += c;
                /* Not taken yet: the parser refuses more bytes and uses none. */
                size_t c2 = 7;
                if (off < len) {
                        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)t + off, len - off, &c2), -EBUSY);
                        assert_int_equal(c2, 0);
                }
                _cleanup_http_request_ struct http_request *r = NULL;
                assert_int_equal(http_request_take(&p, &r), 0);
                assert_string_equal(r->path, paths[i]);
                assert_int_equal(r->keep_alive, i < 2);
                if (i == 1)
                        assert_memory_equal(r->body, "hi", 3);
                assert_int_equal(http_request_take(&p, &r), -EAGAIN);
        }
        assert_int_equal(off, len);
        http_request_parser_done(&p);
}

/* Upgrade is not offered: the request is an ordinary one and the stream
 * stays HTTP (http-parser would otherwise stop at the head). */
static void test_upgrade_ignored(void **state) {
        const char *t = "POST /u HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nab"
                        "GET /next HTTP/1.1\r\n\r\n";
        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        size_t c, off = 0, len = strlen(t);
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)t, len, &c), HTTP_FEED_REQUEST);
        off += c;
        _cleanup_http_request_ struct http_request *r = NULL;
        assert_int_equal(http_request_take(&p, &r), 0);
        assert_string_equal(r->path, "/u");
        assert_memory_equal(r->body, "ab", 3);
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)t + off, len - off, &c), HTTP_FEED_REQUEST);
        assert_int_equal(off + c, len);
        _cleanup_http_request_ struct http_request *r2 = NULL;
        assert_int_equal(http_request_take(&p, &r2), 0);
        assert_string_equal(r2->path, "/next");
        http_request_parser_done(&p);
}

static void test_keep_alive(void **state) {
        struct {
                const char *text;
                bool keep_alive;
        } cases[] = {
                { "GET / HTTP/1.1\r\n\r\n", true },
                { "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false },
                { "GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false },
                { "GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true },
                { "GET / HTTP/1.0\r\n\r\n", false },
                { "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_http_request_ struct http_request *r = parse_one(S(cases[i].text), 0);
                assert_int_equal(r->keep_alive, cases[i].keep_alive);
        }
        _cleanup_http_request_ struct http_request *r = parse_one(S("GET / HTTP/1.0\r\n\r\n"), 0);
        assert_int_equal(r->http_minor, 0);
}

static void test_expect_continue(void **state) {
        const char *t = "POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd";
        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        size_t c, off = 0, len = strlen(t);
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)t, len, &c), HTTP_FEED_EXPECT_CONTINUE);
        assert_int_equal(c, len - 4 - 1); /* the head's final LF is used with the body */
        off += c;
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)t + off, len - off, &c), HTTP_FEED_REQUEST);
        off += c;
        assert_int_equal(off, len);
        _cleanup_http_request_ struct http_request *r = NULL;
        assert_int_equal(http_request_take(&p, &r), 0);
        assert_true(r->expect_continue);
        assert_memory_equal(r->body, "abcd", 4);
        http_request_parser_done(&p);

        /* Split at every byte: exactly one continue. */
        http_request_parser_init(&p, NULL);
        int n_continue;
        assert_int_equal(feed_steps(&p, t, len, 1, &off, &n_continue), HTTP_FEED_REQUEST);
        assert_int_equal(n_continue, 1);
        http_request_parser_done(&p);

        /* Nothing to continue without a body. */
        http_request_parser_init(&p, NULL);
        assert_int_equal(feed_steps(&p, S("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"), 0, &off, &n_continue),
                         HTTP_FEED_REQUEST);
        assert_int_equal(n_continue, 0);
        http_request_parser_done(&p);

        assert_int_equal(parse_error(S("POST /x HTTP/1.1\r\nExpect: magic\r\n\r\n"), NULL, 0), 417);
}

static void test_errors(void **state) {
        struct {
                const char *text;
                int status;
        } cases[] = {
                { "FOO / HTTP/1.1\r\n\r\n", 501 },
                { "CONNECT host:443 HTTP/1.1\r\n\r\n", 501 },
                { "GET / HTTP/2.0\r\n\r\n", 505 },
                { "GET / HTTP/1.2\r\n\r\n", 505 },
                { "GET / HTTP/1.x\r\n\r\n", 400 },
                { "GET / FTP/1.1\r\n\r\n", 400 },
                { "\x01\x02\x03", 501 },
                { "GET /a b HTTP/1.1\r\n\r\n", 400 },
                { "GET /\x7f HTTP/1.1\r\n\r\n", 400 },
                { "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400 },
                { "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400 },
                { "GET / HTTP/1.1\nX: a\r\r\n\r\n", 400 },
                { "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400 },
                { "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", 400 },
                { "POST / HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n", 400 },
                { "GET /?api-version=%00 HTTP/1.1\r\n\r\n", 400 },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                size_t len = strlen(cases[i].text);
                assert_int_equal(parse_error(cases[i].text, len, NULL, 0), cases[i].status);
                /* Same verdict however the bytes arrive. */
                assert_int_equal(parse_error(cases[i].text, len, NULL, 1), cases[i].status);
        }
}

/* Build "GET <url> HTTP/1.1\r\n<pad>\r\n" whose head is exactly head_len bytes. */
static char *head_of_size(size_t head_len) {
        const char *line = "GET / HTTP/1.1\r\n";
        const char *pre = "X-Pad: ";
        size_t fixed = strlen(line) + strlen(pre) + 2 /* CRLF */ + 2 /* blank line */;
        assert_true(head_len > fixed);
        size_t pad = head_len - fixed;
        /* Sized from the constants rather than sprintf's result, so the
         * compiler can see every write stays inside the buffer. */
        size_t n = strlen(line) + strlen(pre);
        char *t = malloc(n + pad + 5);
        if (!t) /* abort(), unlike assert_non_null(), tells gcc the writes below never see NULL */
                abort();
        memcpy(t, line, strlen(line));
        memcpy(t + strlen(line), pre, strlen(pre));
        memset(t + n, 'a', pad);
        memcpy(t + n + pad, "\r\n\r\n", 5);
        assert_int_equal(strlen(t), head_len);
        return t;
}

static void test_limit_header_bytes(void **state) {
        _cleanup_free_ char *at = head_of_size(HTTP_MAX_HEADER_BYTES);
        _cleanup_free_ char *over = head_of_size(HTTP_MAX_HEADER_BYTES + 1);
        for (size_t step = 0; step <= 1; step++) {
                _cleanup_http_request_ struct http_request *r = parse_one(at, strlen(at), step);
                assert_string_equal(r->path, "/");
                assert_int_equal(parse_error(over, strlen(over), NULL, step), 431);
        }
        /* With a body after the head, the body does not count. */
        _cleanup_free_ char *with_body = NULL;
        assert_true(asprintf(&with_body, "POST / HTTP/1.1\r\nContent-Length: 5\r\nX-Pad: %0*d\r\n\r\nhello",
                             (int)(HTTP_MAX_HEADER_BYTES - strlen("POST / HTTP/1.1\r\nContent-Length: 5\r\n"
                                                                  "X-Pad: \r\n\r\n")),
                             0) > 0);
        _cleanup_http_request_ struct http_request *r = parse_one(with_body, strlen(with_body), 0);
        assert_int_equal(r->body_len, 5);
        /* Stray CRLFs between pipelined requests are not part of the head. */
        _cleanup_free_ char *crlf = NULL;
        assert_true(asprintf(&crlf, "\r\n\r\n%s", at) > 0);
        _cleanup_http_request_ struct http_request *r2 = parse_one(crlf, strlen(crlf), 0);
        assert_non_null(r2);
        /* A custom limit. */
        struct http_limits l = HTTP_LIMITS_DEFAULT;
        l.max_header_bytes = 18;
        struct http_request_parser p;
        http_request_parser_init(&p, &l);
        size_t used;
        assert_int_equal(feed_steps(&p, S("GET / HTTP/1.1\r\n\r\n"), 0, &used, NULL), HTTP_FEED_REQUEST);
        http_request_parser_done(&p);
        assert_int_equal(parse_error(S("GET /a HTTP/1.1\r\n\r\n"), &l, 0), 431);
}

static char *request_with_url(size_t url_len) {
        char *url = malloc(url_len + 1);
        assert_non_null(url);
        url[0] = '/';
        memset(url + 1, 'u', url_len - 1);
        url[url_len] = 0;
        char *t = NULL;
        assert_true(asprintf(&t, "GET %s HTTP/1.1\r\n\r\n", url) > 0);
        free(url);
        return t;
}

static void test_limit_url(void **state) {
        _cleanup_free_ char *at = request_with_url(HTTP_MAX_URL_BYTES);
        _cleanup_free_ char *over = request_with_url(HTTP_MAX_URL_BYTES + 1);
        for (size_t step = 0; step <= 1; step++) {
                _cleanup_http_request_ struct http_request *r = parse_one(at, strlen(at), step);
                assert_int_equal(strlen(r->path), HTTP_MAX_URL_BYTES);
                assert_int_equal(parse_error(over, strlen(over), NULL, step), 414);
        }
}

static char *request_with_headers(size_t n) {
        char *t = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&t, &len);
        assert_non_null(f);
        fputs("GET / HTTP/1.1\r\n", f);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "H%zu: v\r\n", i);
        fputs("\r\n", f);
        assert_int_equal(fclose(f), 0);
        return t;
}

static void test_limit_headers(void **state) {
        _cleanup_free_ char *at = request_with_headers(HTTP_MAX_HEADERS);
        _cleanup_free_ char *over = request_with_headers(HTTP_MAX_HEADERS + 1);
        for (size_t step = 0; step <= 1; step++) {
                _cleanup_http_request_ struct http_request *r = parse_one(at, strlen(at), step);
                assert_non_null(r);
                assert_int_equal(parse_error(over, strlen(over), NULL, step), 431);
        }
        /* Trailers count too. */
        struct http_limits l = HTTP_LIMITS_DEFAULT;
        l.max_headers = 2;
        struct http_request_parser p;
        http_request_parser_init(&p, &l);
        size_t used;
        assert_int_equal(feed_steps(&p, S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n\r\n"), 0,
                                    &used, NULL),
                         HTTP_FEED_REQUEST);
        http_request_parser_done(&p);
        assert_int_equal(parse_error(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\nU: 2\r\n\r\n"),
                                     &l, 0),
                         431);
        /* Trailer bytes are bounded by the head limit. */
        l = HTTP_LIMITS_DEFAULT;
        l.max_header_bytes = 64;
        assert_int_equal(parse_error(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                                       "T: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n"),
                                     &l, 0),
                         431);
}

static char *request_with_body(size_t body_len, bool chunked) {
        char *t = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&t, &len);
        assert_non_null(f);
        if (chunked) {
                fputs("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", f);
                /* 1000-byte chunks, then the rest. */
                size_t left = body_len;
                while (left > 0) {
                        size_t n = left < 1000 ? left : 1000;
                        fprintf(f, "%zx\r\n", n);
                        for (size_t i = 0; i < n; i++)
                                fputc('b', f);
                        fputs("\r\n", f);
                        left -= n;
                }
                fputs("0\r\n\r\n", f);
        } else {
                fprintf(f, "POST / HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", body_len);
                for (size_t i = 0; i < body_len; i++)
                        fputc('b', f);
        }
        assert_int_equal(fclose(f), 0);
        return t;
}

static void test_limit_body(void **state) {
        for (int chunked = 0; chunked <= 1; chunked++) {
                _cleanup_free_ char *at = request_with_body(HTTP_MAX_BODY_BYTES, chunked);
                _cleanup_free_ char *over = request_with_body(HTTP_MAX_BODY_BYTES + 1, chunked);
                for (size_t step = 0; step <= 1; step++) {
                        _cleanup_http_request_ struct http_request *r = parse_one(at, strlen(at), step);
                        assert_int_equal(r->body_len, HTTP_MAX_BODY_BYTES);
                        assert_int_equal(parse_error(over, strlen(over), NULL, step), 413);
                }
        }
        /* Refused from the head alone: no body bytes needed. */
        assert_int_equal(parse_error(S("POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"), NULL, 0), 413);
        assert_int_equal(parse_error(S("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"), NULL, 0),
                         400);
        /* A chunk announced larger than the budget is refused before its bytes. */
        assert_int_equal(parse_error(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n"), NULL, 0), 413);
}

static void expect_response(int status, const char *ct, const char *body, bool keep_alive,
                            const struct http_header *extra, size_t n_extra, const char *golden) {
        _cleanup_free_ uint8_t *out = NULL;
        size_t out_len;
        assert_int_equal(http_response_format(status, ct, (const uint8_t *)body, body ? strlen(body) : 0, keep_alive,
                                              extra, n_extra, &out, &out_len),
                         0);
        assert_int_equal(out_len, strlen(golden));
        assert_memory_equal(out, golden, out_len);
}

static void test_response_format(void **state) {
        expect_response(200, "application/json", "{}", true, NULL, 0,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
        expect_response(204, NULL, NULL, true, NULL, 0, "HTTP/1.1 204 No Content\r\n\r\n");
        expect_response(204, "application/json", NULL, false, NULL, 0,
                        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        const struct http_header retry[] = { { "Retry-After", "30" }, { "Allow", "POST" } };
        expect_response(503, "application/json", "{\"message\":\"busy\"}", false, retry, 2,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 18\r\n"
                        "Connection: close\r\nRetry-After: 30\r\nAllow: POST\r\n\r\n{\"message\":\"busy\"}");
        expect_response(404, NULL, "", true, NULL, 0, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");

        uint8_t *out = NULL;
        size_t out_len = 0;
        const struct http_header bad_value[] = { { "Retry-After", "1\r\nX-Evil: 1" } };
        const struct http_header bad_name[] = { { "A:B", "1" } };
        const struct http_header empty_name[] = { { "", "1" } };
        assert_int_equal(http_response_format(200, NULL, NULL, 0, true, bad_value, 1, &out, &out_len), -EINVAL);
        assert_int_equal(http_response_format(200, NULL, NULL, 0, true, bad_name, 1, &out, &out_len), -EINVAL);
        assert_int_equal(http_response_format(200, NULL, NULL, 0, true, empty_name, 1, &out, &out_len), -EINVAL);
        assert_int_equal(http_response_format(200, "a\nb", NULL, 0, true, NULL, 0, &out, &out_len), -EINVAL);
        assert_int_equal(http_response_format(204, NULL, (const uint8_t *)"x", 1, true, NULL, 0, &out, &out_len),
                         -EINVAL);
        assert_int_equal(http_response_format(99, NULL, NULL, 0, true, NULL, 0, &out, &out_len), -EINVAL);
        assert_int_equal(http_response_format(200, NULL, NULL, 3, true, NULL, 0, &out, &out_len), -EINVAL);
        assert_null(out); /* untouched on failure */
}

static void test_reason_phrases(void **state) {
        struct {
                int status;
                const char *reason;
        } cases[] = {
                { 100, "Continue" }, { 200, "OK" }, { 204, "No Content" }, { 400, "Bad Request" },
                { 401, "Unauthorized" }, { 403, "Forbidden" }, { 404, "Not Found" }, { 408, "Request Timeout" },
                { 413, "Payload Too Large" }, { 414, "URI Too Long" }, { 415, "Unsupported Media Type" },
                { 417, "Expectation Failed" }, { 422, "Unprocessable Entity" }, { 429, "Too Many Requests" },
                { 431, "Request Header Fields Too Large" }, { 500, "Internal Server Error" },
                { 501, "Not Implemented" }, { 503, "Service Unavailable" }, { 505, "HTTP Version Not Supported" },
                { 299, "Unknown" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                assert_string_equal(http_status_reason(cases[i].status), cases[i].reason);
}

static void test_error_body(void **state) {
        _cleanup_free_ char *b = NULL;
        size_t len;
        assert_int_equal(http_error_body("invalid api-version \"x\"", &b, &len), 0);
        assert_string_equal(b, "{\"message\":\"invalid api-version \\\"x\\\"\"}");
        assert_int_equal(len, strlen(b));
        char *b2 = NULL;
        assert_int_equal(http_error_body("\xff\xfe", &b2, &len), -EINVAL);
        assert_int_equal(http_error_body(NULL, &b2, &len), -EINVAL);
        assert_null(b2);

        _cleanup_free_ uint8_t *out = NULL;
        size_t out_len;
        assert_int_equal(http_response_format_error(404, "not found", true, NULL, 0, &out, &out_len), 0);
        const char *golden = "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n"
                             "{\"message\":\"not found\"}";
        assert_int_equal(out_len, strlen(golden));
        assert_memory_equal(out, golden, out_len);
}

static void test_query(void **state) {
        char *v = NULL;
        assert_int_equal(http_query_get(NULL, "a", &v), -ENOENT);
        assert_int_equal(http_query_get("", "a", &v), -ENOENT);
        assert_int_equal(http_query_get("b=1&&c", "a", &v), -ENOENT);
        assert_null(v);
        struct {
                const char *query, *key, *value;
        } cases[] = {
                { "a=1", "a", "1" },
                { "x=2&a=1", "a", "1" },
                { "a", "a", "" },
                { "a=", "a", "" },
                { "a=1=2", "a", "1=2" },
                { "a=x+y%20z", "a", "x y z" },
                { "%61=%7e%7E", "a", "~~" },
                { "a=%zz%4", "a", "%zz%4" },
                { "a=%", "a", "%" },
                { "api-version=2020-09-01&type=aziot", "api-version", "2020-09-01" },
                { "type=aziot&api%2Dversion=2021-12-01", "api-version", "2021-12-01" },
                { "k%00=1&a=2", "a", "2" }, /* a key with NUL is skipped */
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *got = NULL;
                assert_int_equal(http_query_get(cases[i].query, cases[i].key, &got), 0);
                assert_string_equal(got, cases[i].value);
        }
        assert_int_equal(http_query_get("a=%00", "a", &v), -EINVAL);
        assert_null(v);

        /* Only the first HTTP_QUERY_MAX_PARAMS parameters are looked at. */
        _cleanup_free_ char *q = NULL;
        size_t qlen = 0;
        FILE *f = open_memstream(&q, &qlen);
        for (int i = 0; i < HTTP_QUERY_MAX_PARAMS - 1; i++)
                fprintf(f, "p%d=1&", i);
        fputs("a=yes&b=no", f);
        fclose(f);
        _cleanup_free_ char *got = NULL;
        assert_int_equal(http_query_get(q, "a", &got), 0);
        assert_string_equal(got, "yes");
        assert_int_equal(http_query_get(q, "b", &v), -ENOENT);

        _cleanup_free_ char *d = NULL;
        assert_int_equal(http_percent_decode("a%2", 3, &d), 0);
        assert_string_equal(d, "a%2");
}

/* RFC 9112 framing that libhttp-parser tolerates: each refused with 400,
 * however the bytes arrive; and the strict forms still accepted. */
static void test_strict_framing(void **state) {
        static const char *const bad[] = {
                /* chunk data not followed by CRLF (issue 14) */
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\rX0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
                /* bare LF: request line, header line, end of head, chunk-size line, trailers */
                "GET / HTTP/1.1\nHost: x\r\n\r\n",
                "GET / HTTP/1.1\r\nHost: x\n\r\n",
                "GET / HTTP/1.1\r\nHost: x\r\n\n",
                "\nGET / HTTP/1.1\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
                /* CR followed by something else */
                "GET / HTTP/1.1\rHost: x\r\n\r\n",
                /* obs-fold, in the head and in trailers */
                "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
                "GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n",
                "GET / HTTP/1.1\r\n X-A: a\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
                /* whitespace before the colon */
                "POST / HTTP/1.1\r\nContent-Length : 1\r\n\r\na",
                "POST / HTTP/1.1\r\nContent-Length\t: 1\r\n\r\na",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX : a\r\n\r\n",
                /* conflicting, repeated or listed Content-Length */
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
                "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na",
                "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                /* Transfer-Encoding other than a final chunked */
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
                /* chunk-size with leading or trailing junk, or too large for 64 bits */
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 ;a=b\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3g\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
                /* a chunk extension holding a control character */
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\x01\r\nabc\r\n0\r\n\r\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                size_t len = strlen(bad[i]);
                for (size_t step = 0; step <= 3; step++) {
                        int st = parse_error(bad[i], len, NULL, step);
                        if (st != 400)
                                fail_msg("case %zu (step %zu): %d, want 400: %s", i, step, st, bad[i]);
                }
        }
        /* still accepted: leading zeros, extensions right after the size, trailers, any letter case */
        static const char *const good[] = {
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0003\r\nabc\r\n0\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b;c=\"d e\"\r\nabc\r\n0;x\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: y\r\nX-U:\r\n\r\n",
                "POST /x HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        };
        for (size_t i = 0; i < ELEMENTSOF(good); i++)
                for (size_t step = 0; step <= 3; step++) {
                        _cleanup_http_request_ struct http_request *r = parse_one(good[i], strlen(good[i]), step);
                        assert_int_equal(r->body_len, 3);
                        assert_memory_equal(r->body, "abc", 3);
                }
        /* HTTP_MAX_CHUNK_EXT_BYTES: at the limit accepted, one over refused */
        for (size_t over = 0; over < 2; over++) {
                size_t ext = HTTP_MAX_CHUNK_EXT_BYTES + over;
                char *t = NULL;
                char *e = malloc(ext + 1);
                assert_non_null(e);
                e[0] = ';';
                memset(e + 1, 'a', ext - 1);
                e[ext] = '\0';
                assert_true(asprintf(&t, "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3%s\r\nabc\r\n0\r\n\r\n",
                                     e) > 0);
                if (over)
                        assert_int_equal(parse_error(t, strlen(t), NULL, 0), 400);
                else {
                        _cleanup_http_request_ struct http_request *r = parse_one(t, strlen(t), 0);
                        assert_int_equal(r->body_len, 3);
                }
                free(e);
                free(t);
        }
        /* the request after a strictly framed chunked one is read as the next request */
        const char *two = "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        size_t c, off = 0;
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)two, strlen(two), &c), HTTP_FEED_REQUEST);
        off = c;
        _cleanup_http_request_ struct http_request *r1 = NULL, *r2 = NULL;
        assert_int_equal(http_request_take(&p, &r1), 0);
        assert_int_equal(http_request_parser_feed(&p, (const uint8_t *)two + off, strlen(two) - off, &c),
                         HTTP_FEED_REQUEST);
        assert_int_equal(http_request_take(&p, &r2), 0);
        assert_string_equal(r2->path, "/b");
        http_request_parser_done(&p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_get_basic),
                cmocka_unit_test(test_post_body),
                cmocka_unit_test(test_absolute_form_and_no_query),
                cmocka_unit_test(test_split_every_byte),
                cmocka_unit_test(test_chunked),
                cmocka_unit_test(test_strict_framing),
                cmocka_unit_test(test_pipelined),
                cmocka_unit_test(test_upgrade_ignored),
                cmocka_unit_test(test_keep_alive),
                cmocka_unit_test(test_expect_continue),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_limit_header_bytes),
                cmocka_unit_test(test_limit_url),
                cmocka_unit_test(test_limit_headers),
                cmocka_unit_test(test_limit_body),
                cmocka_unit_test(test_response_format),
                cmocka_unit_test(test_reason_phrases),
                cmocka_unit_test(test_error_body),
                cmocka_unit_test(test_query),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
