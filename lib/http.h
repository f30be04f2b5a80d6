/* HTTP/1.1 codec for the Unix-socket servers: an incremental request parser
 * (on top of the system http-parser library, HTTP_REQUEST mode), a response
 * serialiser, the {"message": ...} error body, and query-string decoding.
 *
 * Pure code: no I/O, no event loop, no logging. The daemon reads bytes from a
 * connection, hands them to http_request_parser_feed(), and when a request is complete
 * takes it with http_request_take(), answers it, and feeds the bytes that were
 * not consumed (pipelined requests) again.
 *
 * Names: the request parser is http_request_parser_*, never http_parser_*,
 * which is the namespace of the library underneath (http_parser_init(),
 * http_parser_execute(), ...). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <http_parser.h>

/* Default limits. Every one is checked "at the limit: accepted, one over: refused". */
#define HTTP_MAX_HEADER_BYTES 8192 /* bytes: the request head, from the first byte of the
                                    * request line through the blank line that ends the
                                    * headers (CRLFs included) -> 431 */
#define HTTP_MAX_BODY_BYTES 65536  /* bytes: the (de-chunked) request body -> 413 */
#define HTTP_MAX_URL_BYTES 2048    /* bytes: the request target, path + '?' + query -> 414 */
#define HTTP_MAX_HEADERS 64        /* header fields in one request (trailers included) -> 431 */
#define HTTP_MAX_CHUNK_EXT_BYTES 256 /* bytes: the chunk extensions of one chunk-size line, from
                                      * the ';' to before the CR (ignored, so only bounded) -> 400 */

/* What the daemon needs to know about one request; everything else is parsed
 * and dropped. Strings are NUL-terminated heap copies owned by the request. */
struct http_request {
        const char *method;      /* static string from http-parser: "GET", "POST", ... */
        char *path;              /* raw path (no percent-decoding), never NULL, e.g. "/get_tpm_keys" */
        char *query;             /* raw query string without '?', NULL when the URL has none */
        char *api_version;       /* decoded value of the first api-version query parameter, or NULL */
        char *content_type;      /* Content-Type header value, or NULL when absent */
        int64_t content_length;  /* Content-Length header value, -1 when absent */
        bool chunked;            /* Transfer-Encoding: chunked */
        bool expect_continue;    /* Expect: 100-continue */
        bool keep_alive;         /* connection stays open after the response (HTTP/1.0 and
                                  * "Connection: close" rules applied) */
        unsigned short http_major, http_minor;
        uint8_t *body;           /* decoded body, NUL-terminated for convenience (the NUL is
                                  * not counted); never NULL, body_len 0 when there is none */
        size_t body_len;
};

/* Free a request and everything it owns. NULL-safe; returns NULL. */
struct http_request *http_request_free(struct http_request *r);
static inline void http_request_freep(struct http_request **r) {
        http_request_free(*r);
}
#define _cleanup_http_request_ __attribute__((cleanup(http_request_freep)))

struct http_limits {
        size_t max_header_bytes; /* see HTTP_MAX_HEADER_BYTES */
        size_t max_body_bytes;   /* see HTTP_MAX_BODY_BYTES */
        size_t max_url_bytes;    /* see HTTP_MAX_URL_BYTES */
        size_t max_headers;      /* see HTTP_MAX_HEADERS */
};
#define HTTP_LIMITS_DEFAULT                                                                   \
        ((struct http_limits){ .max_header_bytes = HTTP_MAX_HEADER_BYTES,                     \
                               .max_body_bytes = HTTP_MAX_BODY_BYTES,                         \
                               .max_url_bytes = HTTP_MAX_URL_BYTES,                           \
                               .max_headers = HTTP_MAX_HEADERS })

/* Results of http_request_parser_feed() (negative values are errors). */
enum {
        HTTP_FEED_NEED_MORE = 0,       /* all bytes consumed, request not complete yet */
        HTTP_FEED_REQUEST = 1,         /* a complete request is ready: http_request_take() */
        HTTP_FEED_EXPECT_CONTINUE = 2, /* the head asked "Expect: 100-continue" and a body
                                        * follows: write HTTP_CONTINUE_RESPONSE, then feed
                                        * the remaining bytes (reported once per request) */
};
#define HTTP_CONTINUE_RESPONSE "HTTP/1.1 100 Continue\r\n\r\n"

/* One per connection. Embed it; the fields are private to http.c. */
struct http_request_parser {
        http_parser hp;
        struct http_limits limits;
        struct http_request *cur;   /* request being built, or complete and not yet taken */
        enum { HTTP_RP_IDLE, HTTP_RP_HEAD, HTTP_RP_BODY, HTTP_RP_READY, HTTP_RP_ERROR } state;
        const char *exec_base;      /* start of the current http_parser_execute() segment */
        size_t head_bytes;          /* raw bytes of the current head seen so far */
        size_t trailer_bytes;       /* name + value bytes of chunked trailers */
        char *url;                  /* request target being accumulated */
        size_t url_len;
        size_t n_headers;
        char *field;                /* current header name being accumulated */
        size_t field_len;
        char *value;                /* current header value being accumulated */
        size_t value_len;
        bool in_value;
        bool in_trailers;
        bool continue_reported;
        bool saw_transfer_encoding;
        bool te_last_chunked;       /* the last transfer coding so far is chunked */
        bool te_other;              /* a transfer coding other than chunked was named */
        /* RFC 9112 framing, checked on the raw bytes beside http-parser
         * (which tolerates bare LF, obs-fold, junk after a chunk size and
         * chunk data not followed by CRLF): see frame_scan() in http.c. */
        int frame;                  /* enum frame_state in http.c */
        bool frame_chunked;         /* the head said chunked: the body is scanned as chunks */
        bool frame_trailers;        /* scanning the trailer section */
        uint64_t frame_chunk;       /* chunk size being read, then bytes of chunk data left */
        size_t frame_ext_bytes;     /* bytes of the chunk extensions on this chunk-size line */
        int error_status;           /* HTTP status to answer, when state is HTTP_RP_ERROR */
        char error_message[128];
};

/* Framing is strict (RFC 9112), so that no other HTTP implementation on the
 * path can read a different request boundary from the same bytes. Refused
 * with 400: a line (request line, header, chunk-size, trailer) not ended by
 * CRLF (a bare LF or a CR followed by something else); obs-fold (a header
 * line starting with SP/HT); whitespace in or after a field name; a repeated
 * or unparsable Content-Length; Content-Length with Transfer-Encoding;
 * Transfer-Encoding whose last coding is not chunked, or chunked twice; a
 * chunk-size that is not 1*HEXDIG followed by CRLF (leading or trailing
 * junk such as whitespace, overflow past 64 bits); chunk data not followed
 * by CRLF. Chunk extensions (";name=value", right after the size) are
 * accepted and ignored, as RFC 9112 7.1.1 says, but may hold only visible
 * characters, SP and HT, at most HTTP_MAX_CHUNK_EXT_BYTES of them. Transfer-Encoding "<other>, chunked" is
 * 501 (a coding we cannot undo), per RFC 9112 6.1. */

/* Initialise p for a new connection. limits may be NULL for HTTP_LIMITS_DEFAULT. */
void http_request_parser_init(struct http_request_parser *p, const struct http_limits *limits);

/* Release everything p holds (a pending request too). p can be re-initialised after. */
void http_request_parser_done(struct http_request_parser *p);

/* Feed up to len bytes. *consumed is always set to the number of bytes used; the
 * rest (the next pipelined request) must be fed again after the current request
 * was taken. Returns HTTP_FEED_NEED_MORE, HTTP_FEED_REQUEST, HTTP_FEED_EXPECT_CONTINUE,
 * -EBUSY when a complete request has not been taken yet (nothing consumed), or
 * -EBADMSG when the request is refused: http_request_parser_error() then gives the status
 * to answer (400, 413, 414, 431, 501, 505) and a message; the connection must be
 * closed after that answer, because the byte stream can no longer be trusted. Every
 * later call returns -EBADMSG again. -ENOMEM on allocation failure. */
int http_request_parser_feed(struct http_request_parser *p, const uint8_t *data, size_t len, size_t *consumed);

/* After -EBADMSG: the HTTP status to answer, and (if message is non-NULL) a
 * static-lifetime-of-p text for the {"message"} body. Returns 0 when there is no error. */
int http_request_parser_error(const struct http_request_parser *p, const char **message);

/* Hand the completed request to the caller (caller frees with http_request_free())
 * and get ready for the next one. Returns 0, or -EAGAIN when no request is complete. */
int http_request_take(struct http_request_parser *p, struct http_request **ret);

/* True while a request has started but is not complete (for the daemon's
 * idle/read timeouts: a half-sent request is a slow client, not an idle one). */
bool http_request_parser_in_request(const struct http_request_parser *p);

/* ---- Responses ---- */

struct http_header {
        const char *name;  /* e.g. "Retry-After" */
        const char *value; /* e.g. "30" */
};

/* Reason phrase for a status ("OK", "Not Found", ...); "Unknown" for codes we do not use. */
const char *http_status_reason(int status);

/* Serialise a complete response:
 *   HTTP/1.1 <status> <reason>\r\n
 *   Content-Type: <content_type>\r\n      (omitted when content_type is NULL)
 *   Content-Length: <len>\r\n             (omitted for 1xx, 204 and 304, which carry no body)
 *   Connection: close\r\n                 (only when !keep_alive)
 *   <extra headers>\r\n
 *   \r\n<body>
 * Header names/values containing CR, LF or NUL are refused (-EINVAL), so a value
 * built from input cannot split the response. A body given with 1xx/204/304 is -EINVAL.
 * On success *ret is a heap buffer (caller frees), *ret_len its length; returns 0,
 * -EINVAL or -ENOMEM. */
int http_response_format(int status, const char *content_type, const uint8_t *body, size_t len,
                         bool keep_alive, const struct http_header *extra, size_t n_extra,
                         uint8_t **ret, size_t *ret_len);

/* The aziot error body {"message":"<message>"} built with jansson (compact, so
 * the bytes are stable). *ret is a heap NUL-terminated string (caller frees),
 * *ret_len its length. Returns 0, -EINVAL (message not UTF-8 or NULL) or -ENOMEM. */
int http_error_body(const char *message, char **ret, size_t *ret_len);

/* http_error_body() + http_response_format() with Content-Type application/json. */
int http_response_format_error(int status, const char *message, bool keep_alive,
                               const struct http_header *extra, size_t n_extra,
                               uint8_t **ret, size_t *ret_len);

/* ---- Query strings ---- */

#define HTTP_QUERY_MAX_PARAMS 32 /* parameters looked at in one query string; later ones are ignored */

/* Decode application/x-www-form-urlencoded text: '+' is a space, %XX a byte;
 * a '%' not followed by two hex digits stays literal (what aziot's form decoder
 * does). Decoded NUL bytes are refused. On success *ret is a heap NUL-terminated
 * string (caller frees). Returns 0, -EINVAL (decoded NUL) or -ENOMEM. */
int http_percent_decode(const char *text, size_t len, char **ret);

/* Find the first parameter whose decoded key equals key in a raw query string
 * (split on '&'; a parameter without '=' has the empty value). query may be NULL.
 * On success *ret is the decoded value (caller frees). Returns 0, -ENOENT when
 * absent, -EINVAL (bad encoding) or -ENOMEM. */
int http_query_get(const char *query, const char *key, char **ret);
