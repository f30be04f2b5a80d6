/* libFuzzer target for lib/http.c: arbitrary bytes fed in input-chosen splits
 * (and with input-chosen small limits), every request taken and answered
 * through the response serialiser, as the daemon does; the same bytes fed
 * all at once must give the same requests and the same verdict. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void answer(const struct http_request *r) {
        /* Echo what was parsed into a response, covering the serialiser and the
         * query decoder with parser output. */
        char *v = NULL;
        if (http_query_get(r->query, "type", &v) == 0)
                free(v);
        uint8_t *out = NULL;
        size_t out_len = 0;
        const struct http_header extra[] = { { "X-Path", r->path } };
        int status = r->body_len > 0 ? 200 : 204;
        if (http_response_format(status, r->content_type, r->body, r->body_len, r->keep_alive, extra, 1, &out,
                                 &out_len) == 0)
                free(out);
        if (http_response_format_error(400, r->api_version ? r->api_version : "x", r->keep_alive, NULL, 0, &out,
                                       &out_len) == 0)
                free(out);
}

/* What one run found: a digest of every request taken (path, method,
 * body, framing) and the final verdict. */
struct outcome {
        uint64_t digest;
        unsigned requests;
        int status; /* 0: no error */
};

static uint64_t mix(uint64_t h, const void *p, size_t n) {
        const uint8_t *b = p;
        for (size_t i = 0; i < n; i++)
                h = (h ^ b[i]) * 0x100000001b3ULL; /* FNV-1a */
        return h;
}

static struct outcome run(const uint8_t *data, size_t size, size_t step, const struct http_limits *l) {
        struct outcome o = { .digest = 0xcbf29ce484222325ULL };
        struct http_request_parser p;
        http_request_parser_init(&p, l);
        size_t off = 0, pending = 0; /* pending: bytes offered but not consumed */
        while (off < size) {
                size_t n = step == 0 ? size - off : (step < size - off ? step : size - off);
                if (pending > n)
                        n = pending;
                size_t c = 0;
                int r = http_request_parser_feed(&p, data + off, n, &c);
                if (c > n)
                        abort();
                off += c;
                pending = n - c;
                if (r == HTTP_FEED_REQUEST) {
                        struct http_request *req = NULL;
                        if (http_request_take(&p, &req) != 0 || !req || !req->path || !req->body)
                                abort();
                        if (req->body_len > l->max_body_bytes || strlen(req->path) > l->max_url_bytes)
                                abort();
                        o.requests++;
                        o.digest = mix(o.digest, req->path, strlen(req->path) + 1);
                        o.digest = mix(o.digest, req->method, strlen(req->method) + 1);
                        o.digest = mix(o.digest, req->body, req->body_len);
                        o.digest = mix(o.digest, &req->body_len, sizeof req->body_len);
                        o.digest = mix(o.digest, &req->chunked, sizeof req->chunked);
                        o.digest = mix(o.digest, &req->keep_alive, sizeof req->keep_alive);
                        o.digest = mix(o.digest, &off, sizeof off); /* where the request ended */
                        answer(req);
                        http_request_free(req);
                } else if (r < 0) {
                        const char *msg = NULL;
                        int status = http_request_parser_error(&p, &msg);
                        if (r == -EBADMSG && (status < 400 || status > 599 || !msg))
                                abort();
                        o.status = r == -EBADMSG ? status : r;
                        uint8_t *out = NULL;
                        size_t out_len;
                        if (msg && http_response_format_error(status, msg, false, NULL, 0, &out, &out_len) == 0)
                                free(out);
                        break;
                } else if (r == HTTP_FEED_NEED_MORE) {
                        if (c != n)
                                abort(); /* need-more consumes everything */
                        pending = 0;
                }
        }
        http_request_parser_done(&p);
        return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 2)
                return 0;
        /* Byte 0: split step (0 = all at once). Byte 1: bit 0 selects tiny limits,
         * so the limit paths are reached with short inputs. */
        size_t step = data[0];
        bool tiny = data[1] & 1;
        data += 2;
        size += -2;
        struct http_limits l = HTTP_LIMITS_DEFAULT;
        if (tiny)
                l = (struct http_limits){ .max_header_bytes = 64, .max_body_bytes = 16, .max_url_bytes = 16,
                                          .max_headers = 3 };
        struct outcome split = run(data, size, step, &l);
        /* The framing (where each request ends, what it holds, whether the
         * stream is refused) must not depend on how the bytes were split into
         * reads: a split-dependent verdict is a smuggling hazard. (Which
         * status a refusal gets may: e.g. 414 and 431 are checked as the
         * bytes arrive.) */
        if (step != 0) {
                struct outcome whole = run(data, size, 0, &l);
                if (whole.digest != split.digest || whole.requests != split.requests ||
                    (whole.status != 0) != (split.status != 0))
                        abort();
        }
        return 0;
}
