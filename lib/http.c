/* HTTP/1.1 request parser and response serialiser (see http.h).
 *
 * http-parser does the tokenising, chunk decoding and keep-alive rules; this
 * file adds what a server needs on top: limits enforced while the bytes arrive
 * (so memory stays bounded by the limits, whatever the peer sends), one request
 * at a time (the parser is paused at the end of each message so pipelined bytes
 * stay with the caller), and an HTTP status for every way a request can be bad.
 *
 * Head bytes are counted exactly by pausing the parser at the start of a message
 * and when its headers are complete: every http_parser_execute() segment then
 * lies wholly inside one phase (before / head / body), so the count does not
 * depend on how the stream was split into reads. */
#include "http.h"

#include "b64.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util.h"

/* Where frame_scan() is in the raw bytes of one request. */
enum frame_state {
        F_START,          /* before the request line: only CRLF pairs may come */
        F_START_LF,       /* CR seen before the request line */
        F_LINE,           /* in the request line */
        F_LINE_LF,        /* CR seen at the end of the request line */
        F_FIELD_START,    /* at the start of a header (or trailer) line */
        F_NAME,           /* in a field name */
        F_VALUE,          /* after the colon */
        F_VALUE_LF,       /* CR seen at the end of a field line */
        F_HEAD_END_LF,    /* CR of the blank line that ends the head seen */
        F_BODY,           /* a Content-Length (or no) body: http-parser counts it */
        F_CHUNK_SIZE_START,
        F_CHUNK_SIZE,     /* after the first hex digit */
        F_CHUNK_EXT,      /* after ';' on a chunk-size line */
        F_CHUNK_SIZE_LF,  /* CR after the chunk size */
        F_CHUNK_DATA,     /* frame_chunk bytes of data left */
        F_CHUNK_DATA_CR,  /* the CRLF after chunk data */
        F_CHUNK_DATA_LF,
        F_TRAILER_END_LF, /* CR of the blank line that ends the trailers seen */
        F_DONE,           /* the request ended; http-parser pauses here */
};

static void *mfree_(void *ptr) {
        free(ptr);
        return NULL;
}

static struct http_request_parser *rp_of(http_parser *hp) {
        return container_of(hp, struct http_request_parser, hp);
}

struct http_request *http_request_free(struct http_request *r) {
        if (!r)
                return NULL;
        free(r->path);
        free(r->query);
        free(r->api_version);
        free(r->content_type);
        free(r->body);
        free(r);
        return NULL;
}

/* Record the first error; later ones (e.g. the parser's own error after a
 * callback refused) must not overwrite the precise status. */
_printf_(3, 4) static void rp_fail(struct http_request_parser *p, int status, const char *fmt, ...) {
        if (p->error_status != 0)
                return;
        p->error_status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->error_message, sizeof(p->error_message), fmt, ap);
        va_end(ap);
}

/* Append to a growable NUL-terminated buffer. The caller has already checked
 * the total against a limit, so the size cannot run away. */
static int buf_append(char **buf, size_t *len, const char *at, size_t n) {
        char *b = realloc(*buf, *len + n + 1);
        if (!b)
                return -ENOMEM;
        memcpy(b + *len, at, n);
        *len += n;
        b[*len] = 0;
        *buf = b;
        return 0;
}

static void header_reset(struct http_request_parser *p) {
        p->field = mfree_(p->field);
        p->value = mfree_(p->value);
        p->field_len = p->value_len = 0;
        p->in_value = false;
}

static void message_reset(struct http_request_parser *p) {
        p->cur = http_request_free(p->cur);
        header_reset(p);
        p->head_bytes = 0;
        p->trailer_bytes = 0;
        p->url = mfree_(p->url);
        p->url_len = 0;
        p->n_headers = 0;
        p->saw_transfer_encoding = false;
        p->te_last_chunked = p->te_other = false;
        p->in_trailers = false;
        p->continue_reported = false;
}

/* Bytes of the current head consumed up to (and including) at[len-1]. Only
 * meaningful in the head phase, where the current execute() segment started
 * inside the head. */
static size_t head_pos(const struct http_request_parser *p, const char *at, size_t len) {
        return p->head_bytes + (size_t)(at + len - p->exec_base);
}

static int check_head_size(struct http_request_parser *p, const char *at, size_t len) {
        if (p->in_trailers) {
                /* Trailers come after the body: count their name and value bytes
                 * against the same budget as the head. */
                p->trailer_bytes += len;
                if (p->trailer_bytes > p->limits.max_header_bytes) {
                        rp_fail(p, 431, "request header fields too large");
                        return -1;
                }
                return 0;
        }
        if (head_pos(p, at, len) > p->limits.max_header_bytes) {
                rp_fail(p, 431, "request header fields too large");
                return -1;
        }
        return 0;
}

static int on_message_begin(http_parser *hp) {
        struct http_request_parser *p = rp_of(hp);
        message_reset(p);
        p->cur = calloc(1, sizeof(*p->cur));
        if (!p->cur) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        p->cur->content_length = -1;
        p->state = HTTP_RP_HEAD;
        /* Stop here so the segment that follows starts exactly at the request line. */
        http_parser_pause(hp, 1);
        return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len) {
        struct http_request_parser *p = rp_of(hp);
        if (check_head_size(p, at, len) < 0)
                return -1;
        if (p->url_len + len > p->limits.max_url_bytes) {
                rp_fail(p, 414, "URI too long");
                return -1;
        }
        if (buf_append(&p->url, &p->url_len, at, len) < 0) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        return 0;
}

static bool field_is(const struct http_request_parser *p, const char *name) {
        return p->field && strcasecmp(p->field, name) == 0;
}

/* Trim optional whitespace (RFC 9110 OWS) around a header value, in place. */
static char *trim_ows(char *s) {
        while (*s == ' ' || *s == '\t')
                s++;
        size_t n = strlen(s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                s[--n] = 0;
        return s;
}

/* RFC 9110 5.1: a field name is a token. http-parser (non-strict build) lets
 * spaces through, and "Content-Length : 5" must not be half-understood. */
static bool is_token(const char *s) {
        if (!*s)
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                      strchr("!#$%&'*+-.^_`|~", *s)))
                        return false;
        return true;
}

/* A header field (name + value) is complete: keep what the daemon needs. */
static int header_commit(struct http_request_parser *p) {
        if (!p->field)
                return 0;
        if (!is_token(p->field)) {
                rp_fail(p, 400, "invalid header field name");
                return -1;
        }
        if (p->in_trailers) {
                /* Trailer fields carry nothing we use. */
                header_reset(p);
                return 0;
        }
        char *v = trim_ows(p->value ? p->value : (char *)"");
        if (field_is(p, "Content-Type")) {
                if (p->cur->content_type) {
                        rp_fail(p, 400, "duplicate Content-Type header");
                        return -1;
                }
                p->cur->content_type = strdup(v);
                if (!p->cur->content_type) {
                        rp_fail(p, 500, "out of memory");
                        return -1;
                }
        } else if (field_is(p, "Transfer-Encoding")) {
                /* A list of codings, over one or more field lines. RFC 9112
                 * 6.3: chunked must be the final one, and applied once; the body
                 * length cannot be known otherwise (400). http-parser decodes
                 * chunked and nothing else: any other coding is one we cannot
                 * undo (501, checked once the list is complete). */
                p->saw_transfer_encoding = true;
                for (char *tok = v, *next; tok; tok = next) {
                        next = strchr(tok, ',');
                        if (next)
                                *next++ = '\0';
                        tok = trim_ows(tok);
                        if (!*tok)
                                continue; /* empty list elements are allowed (RFC 9110 5.6.1) */
                        if (p->te_last_chunked) {
                                rp_fail(p, 400, "transfer-encoding: chunked must be the final coding, applied once");
                                return -1;
                        }
                        if (strcasecmp(tok, "chunked") == 0)
                                p->te_last_chunked = true;
                        else
                                p->te_other = true;
                }
        } else if (field_is(p, "Expect")) {
                if (strcasecmp(v, "100-continue") != 0) {
                        rp_fail(p, 417, "unsupported expectation");
                        return -1;
                }
                p->cur->expect_continue = true;
        }
        header_reset(p);
        return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len) {
        struct http_request_parser *p = rp_of(hp);
        if (check_head_size(p, at, len) < 0)
                return -1;
        if (p->in_value) {
                if (header_commit(p) < 0)
                        return -1;
        }
        if (!p->field) {
                /* First piece of a new field. */
                if (p->n_headers >= p->limits.max_headers) {
                        rp_fail(p, 431, "too many request header fields");
                        return -1;
                }
                p->n_headers++;
        }
        if (buf_append(&p->field, &p->field_len, at, len) < 0) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len) {
        struct http_request_parser *p = rp_of(hp);
        if (check_head_size(p, at, len) < 0)
                return -1;
        p->in_value = true;
        if (p->in_trailers)
                return 0; /* counted, not kept */
        if (buf_append(&p->value, &p->value_len, at, len) < 0) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        return 0;
}

static int split_url(struct http_request_parser *p) {
        struct http_parser_url u;
        http_parser_url_init(&u);
        const char *url = p->url ? p->url : "";
        if (http_parser_parse_url(url, p->url_len, 0, &u) != 0) {
                rp_fail(p, 400, "invalid request target");
                return -1;
        }
        if (u.field_set & (1 << UF_PATH))
                p->cur->path = strndup(url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
        else
                p->cur->path = strdup("/");
        if (!p->cur->path) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        if (u.field_set & (1 << UF_QUERY)) {
                p->cur->query = strndup(url + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
                if (!p->cur->query) {
                        rp_fail(p, 500, "out of memory");
                        return -1;
                }
        }
        int r = http_query_get(p->cur->query, "api-version", &p->cur->api_version);
        if (r == -ENOMEM) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        if (r < 0 && r != -ENOENT) {
                rp_fail(p, 400, "invalid query string");
                return -1;
        }
        return 0;
}

static int on_headers_complete(http_parser *hp) {
        struct http_request_parser *p = rp_of(hp);
        if (p->in_trailers) {
                /* Not reached for trailers by http-parser 2.9, kept for safety. */
                return header_commit(p) < 0 ? -1 : 0;
        }
        if (p->in_value && header_commit(p) < 0)
                return -1;
        struct http_request *r = p->cur;
        if (p->saw_transfer_encoding && !p->te_last_chunked) {
                rp_fail(p, 400, "transfer-encoding without chunked as the final coding");
                return -1;
        }
        if (p->te_other) {
                rp_fail(p, 501, "unsupported transfer-encoding");
                return -1;
        }
        if (hp->http_major != 1 || hp->http_minor > 1) {
                rp_fail(p, 505, "HTTP version not supported");
                return -1;
        }
        if (hp->method == HTTP_CONNECT) {
                rp_fail(p, 501, "method not implemented");
                return -1;
        }
        r->method = http_method_str((enum http_method)hp->method);
        r->http_major = hp->http_major;
        r->http_minor = hp->http_minor;
        r->chunked = (hp->flags & F_CHUNKED) != 0;
        p->frame_chunked = r->chunked;
        if (p->saw_transfer_encoding && hp->http_minor == 0) {
                /* RFC 9112 6.1: chunked is an HTTP/1.1 coding. */
                rp_fail(p, 400, "transfer-encoding in an HTTP/1.0 request");
                return -1;
        }
        if (hp->flags & F_CONTENTLENGTH) {
                if (hp->content_length > (uint64_t)INT64_MAX) {
                        rp_fail(p, 413, "request body too large");
                        return -1;
                }
                r->content_length = (int64_t)hp->content_length;
                /* Refuse before the body is sent, so a client waiting on
                 * 100-continue gets its answer at once. */
                if (hp->content_length > p->limits.max_body_bytes) {
                        rp_fail(p, 413, "request body too large");
                        return -1;
                }
        }
        if (split_url(p) < 0)
                return -1;
        p->state = HTTP_RP_BODY;
        /* Stop with the final LF of the head not yet consumed, so the head byte
         * count ends exactly here (http_request_parser_feed adds that LF). */
        http_parser_pause(hp, 1);
        return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len) {
        struct http_request_parser *p = rp_of(hp);
        struct http_request *r = p->cur;
        if (r->body_len + len > p->limits.max_body_bytes) {
                rp_fail(p, 413, "request body too large");
                return -1;
        }
        uint8_t *b = realloc(r->body, r->body_len + len + 1);
        if (!b) {
                rp_fail(p, 500, "out of memory");
                return -1;
        }
        memcpy(b + r->body_len, at, len);
        r->body_len += len;
        b[r->body_len] = 0;
        r->body = b;
        return 0;
}

static int on_chunk_header(http_parser *hp) {
        struct http_request_parser *p = rp_of(hp);
        /* The last chunk (size 0) is followed by optional trailer fields. */
        if (hp->content_length == 0)
                p->in_trailers = true;
        else if (hp->content_length > p->limits.max_body_bytes - p->cur->body_len) {
                rp_fail(p, 413, "request body too large");
                return -1;
        }
        return 0;
}

static int on_message_complete(http_parser *hp) {
        struct http_request_parser *p = rp_of(hp);
        if (p->in_value && header_commit(p) < 0)
                return -1;
        struct http_request *r = p->cur;
        if (!r->body) {
                r->body = calloc(1, 1);
                if (!r->body) {
                        rp_fail(p, 500, "out of memory");
                        return -1;
                }
        }
        r->keep_alive = http_should_keep_alive(hp) != 0;
        header_reset(p);
        p->url = mfree_(p->url);
        p->url_len = 0;
        p->state = HTTP_RP_READY;
        /* One request at a time: the bytes after it belong to the next one. */
        http_parser_pause(hp, 1);
        return 0;
}

static const http_parser_settings rp_settings = {
        .on_message_begin = on_message_begin,
        .on_url = on_url,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
        .on_chunk_header = on_chunk_header,
};

void http_request_parser_init(struct http_request_parser *p, const struct http_limits *limits) {
        *p = (struct http_request_parser){ 0 };
        http_parser_init(&p->hp, HTTP_REQUEST);
        p->limits = limits ? *limits : HTTP_LIMITS_DEFAULT;
        p->state = HTTP_RP_IDLE;
}

void http_request_parser_done(struct http_request_parser *p) {
        message_reset(p);
}

/* Check the framing of bytes http-parser has just consumed without error
 * (the same bytes, in the same order, so both agree on where the request
 * ends or the request is refused). Returns 0, or -1 after rp_fail(400). */
static int frame_scan(struct http_request_parser *p, const uint8_t *b, size_t len) {
        for (size_t i = 0; i < len; i++) {
                uint8_t c = b[i];
                switch ((enum frame_state)p->frame) {
                case F_START:
                        if (c == '\r')
                                p->frame = F_START_LF;
                        else if (c == '\n')
                                goto bare_lf;
                        else
                                p->frame = F_LINE;
                        break;
                case F_START_LF:
                        if (c != '\n')
                                goto bare_cr;
                        p->frame = F_START;
                        break;
                case F_LINE:
                        if (c == '\r')
                                p->frame = F_LINE_LF;
                        else if (c == '\n')
                                goto bare_lf;
                        break;
                case F_LINE_LF:
                        if (c != '\n')
                                goto bare_cr;
                        p->frame = F_FIELD_START;
                        break;
                case F_FIELD_START:
                        if (c == '\r')
                                p->frame = p->frame_trailers ? F_TRAILER_END_LF : F_HEAD_END_LF;
                        else if (c == ' ' || c == '\t') {
                                rp_fail(p, 400, "obsolete line folding in a header field");
                                return -1;
                        } else if (c == '\n')
                                goto bare_lf;
                        else
                                p->frame = F_NAME;
                        break;
                case F_NAME:
                        if (c == ':')
                                p->frame = F_VALUE;
                        else if (c == ' ' || c == '\t') {
                                rp_fail(p, 400, "whitespace in or after a header field name");
                                return -1;
                        } else if (c == '\r' || c == '\n') {
                                rp_fail(p, 400, "header line without a colon");
                                return -1;
                        }
                        break;
                case F_VALUE:
                        if (c == '\r')
                                p->frame = F_VALUE_LF;
                        else if (c == '\n')
                                goto bare_lf;
                        break;
                case F_VALUE_LF:
                        if (c != '\n')
                                goto bare_cr;
                        p->frame = F_FIELD_START;
                        break;
                case F_HEAD_END_LF:
                        if (c != '\n')
                                goto bare_cr;
                        p->frame = p->frame_chunked ? F_CHUNK_SIZE_START : F_BODY;
                        break;
                case F_BODY:
                        return 0; /* the rest of this segment is body bytes http-parser counted */
                case F_CHUNK_SIZE_START:
                        if (hex_digit_value(c) < 0) {
                                rp_fail(p, 400, "invalid chunk size");
                                return -1;
                        }
                        p->frame_chunk = (uint64_t)hex_digit_value(c);
                        p->frame = F_CHUNK_SIZE;
                        break;
                case F_CHUNK_SIZE:
                        if (hex_digit_value(c) >= 0) {
                                if (p->frame_chunk > UINT64_MAX >> 4) {
                                        rp_fail(p, 400, "chunk size overflows");
                                        return -1;
                                }
                                p->frame_chunk = p->frame_chunk << 4 | (uint64_t)hex_digit_value(c);
                        } else if (c == '\r')
                                p->frame = F_CHUNK_SIZE_LF;
                        else if (c == ';') {
                                p->frame = F_CHUNK_EXT;
                                p->frame_ext_bytes = 1;
                        } else if (c == '\n')
                                goto bare_lf;
                        else {
                                rp_fail(p, 400, "invalid chunk size");
                                return -1;
                        }
                        break;
                case F_CHUNK_EXT:
                        /* Ignored (RFC 9112 7.1.1), but only visible characters,
                         * SP and HT: no CR, LF or other control can hide in it. */
                        if (c == '\r')
                                p->frame = F_CHUNK_SIZE_LF;
                        else if (c == '\n')
                                goto bare_lf;
                        else if ((c < 0x20 && c != '\t') || c == 0x7f) {
                                rp_fail(p, 400, "control character in a chunk extension");
                                return -1;
                        } else if (++p->frame_ext_bytes > HTTP_MAX_CHUNK_EXT_BYTES) {
                                rp_fail(p, 400, "chunk extension too long");
                                return -1;
                        }
                        break;
                case F_CHUNK_SIZE_LF:
                        if (c != '\n')
                                goto bare_cr;
                        if (p->frame_chunk == 0) {
                                p->frame_trailers = true;
                                p->frame = F_FIELD_START;
                        } else
                                p->frame = F_CHUNK_DATA;
                        break;
                case F_CHUNK_DATA: {
                        /* This byte and as many more as the chunk has left. */
                        size_t n = len - i;
                        if ((uint64_t)n > p->frame_chunk)
                                n = (size_t)p->frame_chunk;
                        p->frame_chunk -= n;
                        i += n - 1;
                        if (p->frame_chunk == 0)
                                p->frame = F_CHUNK_DATA_CR;
                        break;
                }
                case F_CHUNK_DATA_CR:
                        if (c != '\r') {
                                rp_fail(p, 400, "chunk data not followed by CRLF");
                                return -1;
                        }
                        p->frame = F_CHUNK_DATA_LF;
                        break;
                case F_CHUNK_DATA_LF:
                        if (c != '\n') {
                                rp_fail(p, 400, "chunk data not followed by CRLF");
                                return -1;
                        }
                        p->frame = F_CHUNK_SIZE_START;
                        break;
                case F_TRAILER_END_LF:
                        if (c != '\n')
                                goto bare_cr;
                        p->frame = F_DONE;
                        break;
                case F_DONE:
                        rp_fail(p, 400, "bytes after the end of the request framing");
                        return -1;
                }
        }
        return 0;
bare_lf:
        rp_fail(p, 400, "line ended by a bare LF (CRLF required)");
        return -1;
bare_cr:
        rp_fail(p, 400, "CR not followed by LF");
        return -1;
}

/* Map a parser error we did not cause ourselves to the status to answer. */
static void fail_from_parser(struct http_request_parser *p, enum http_errno e) {
        switch (e) {
        case HPE_INVALID_METHOD:
                rp_fail(p, 501, "method not implemented");
                break;
        case HPE_INVALID_TRANSFER_ENCODING:
                rp_fail(p, 501, "unsupported transfer-encoding");
                break;
        case HPE_HEADER_OVERFLOW:
                rp_fail(p, 431, "request header fields too large");
                break;
        case HPE_INVALID_URL:
        case HPE_INVALID_HOST:
        case HPE_INVALID_PORT:
        case HPE_INVALID_PATH:
        case HPE_INVALID_QUERY_STRING:
        case HPE_INVALID_FRAGMENT:
                rp_fail(p, 400, "invalid request target");
                break;
        case HPE_INVALID_CONTENT_LENGTH:
        case HPE_UNEXPECTED_CONTENT_LENGTH:
                rp_fail(p, 400, "invalid content-length");
                break;
        case HPE_INVALID_CHUNK_SIZE:
                rp_fail(p, 400, "invalid chunk size");
                break;
        default:
                rp_fail(p, 400, "malformed request: %s", http_errno_description(e));
                break;
        }
}

int http_request_parser_feed(struct http_request_parser *p, const uint8_t *data, size_t len, size_t *consumed) {
        *consumed = 0;
        if (p->state == HTTP_RP_ERROR)
                return -EBADMSG;
        if (p->state == HTTP_RP_READY)
                return -EBUSY;

        size_t off = 0;
        while (off < len) {
                int phase = p->state;
                p->exec_base = (const char *)data + off;
                size_t n = http_parser_execute(&p->hp, &rp_settings, (const char *)data + off, len - off);
                enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
                bool paused = e == HPE_PAUSED;

                if (e != HPE_OK && !paused) {
                        /* A framing fault in the bytes before the one the parser
                         * stopped at is the first fault in the stream: report it,
                         * whatever the parser (or a callback) said about a later
                         * byte, so the answer does not depend on how the stream
                         * was split into reads. */
                        int saved = p->error_status;
                        char saved_msg[sizeof p->error_message];
                        memcpy(saved_msg, p->error_message, sizeof saved_msg);
                        p->error_status = 0;
                        if (frame_scan(p, data + off, n) == 0 || p->error_status == 0) {
                                p->error_status = saved;
                                memcpy(p->error_message, saved_msg, sizeof saved_msg);
                        }
                        if (p->error_status == 0)
                                fail_from_parser(p, e);
                        p->state = HTTP_RP_ERROR;
                        off += n;
                        *consumed = off;
                        return p->error_status == 500 ? -ENOMEM : -EBADMSG;
                }
                off += n;
                if (frame_scan(p, data + off - n, n) < 0 ||
                    (p->state == HTTP_RP_READY && p->frame != (p->frame_chunked ? F_DONE : F_BODY))) {
                        rp_fail(p, 400, "request framing does not add up");
                        p->state = HTTP_RP_ERROR;
                        *consumed = off;
                        return -EBADMSG;
                }
                if (p->state == HTTP_RP_READY) {
                        /* The next bytes start the next request. */
                        p->frame = F_START;
                        p->frame_chunked = p->frame_trailers = false;
                }

                if (phase == HTTP_RP_IDLE && p->state == HTTP_RP_HEAD)
                        /* Paused in on_message_begin, just after the first byte of
                         * the request line; anything before were stray CRLFs. */
                        p->head_bytes = 1;
                else if (phase == HTTP_RP_HEAD && p->state == HTTP_RP_HEAD)
                        p->head_bytes += n;
                else if (phase == HTTP_RP_HEAD && p->state == HTTP_RP_BODY) {
                        /* Paused in on_headers_complete before the final LF. */
                        p->head_bytes += n + 1;
                        if (p->head_bytes > p->limits.max_header_bytes) {
                                rp_fail(p, 431, "request header fields too large");
                                p->state = HTTP_RP_ERROR;
                                *consumed = off;
                                return -EBADMSG;
                        }
                }
                if (p->state == HTTP_RP_HEAD && p->head_bytes > p->limits.max_header_bytes) {
                        rp_fail(p, 431, "request header fields too large");
                        p->state = HTTP_RP_ERROR;
                        *consumed = off;
                        return -EBADMSG;
                }
                if (paused)
                        http_parser_pause(&p->hp, 0);

                if (p->state == HTTP_RP_READY) {
                        *consumed = off;
                        return HTTP_FEED_REQUEST;
                }
                if (phase == HTTP_RP_HEAD && p->state == HTTP_RP_BODY && p->cur->expect_continue &&
                    !p->continue_reported && (p->cur->chunked || p->cur->content_length > 0)) {
                        /* The client waits for our go-ahead before sending the body. */
                        p->continue_reported = true;
                        *consumed = off;
                        return HTTP_FEED_EXPECT_CONTINUE;
                }
                if (!paused && n < len - (off - n))
                        break; /* cannot happen without an error; do not spin */
        }
        *consumed = off;
        return HTTP_FEED_NEED_MORE;
}

int http_request_parser_error(const struct http_request_parser *p, const char **message) {
        if (p->state != HTTP_RP_ERROR)
                return 0;
        if (message)
                *message = p->error_message;
        return p->error_status;
}

int http_request_take(struct http_request_parser *p, struct http_request **ret) {
        if (p->state != HTTP_RP_READY)
                return -EAGAIN;
        *ret = TAKE_PTR(p->cur);
        message_reset(p);
        p->state = HTTP_RP_IDLE;
        return 0;
}

bool http_request_parser_in_request(const struct http_request_parser *p) {
        return p->state == HTTP_RP_HEAD || p->state == HTTP_RP_BODY;
}

/* ---- Responses ---- */

const char *http_status_reason(int status) {
        switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 304: return "Not Modified";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 411: return "Length Required";
        case 413: return "Payload Too Large";
        case 414: return "URI Too Long";
        case 415: return "Unsupported Media Type";
        case 417: return "Expectation Failed";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 505: return "HTTP Version Not Supported";
        default: return "Unknown";
        }
}

static bool header_text_ok(const char *s) {
        return s && !strpbrk(s, "\r\n");
}

static bool status_has_no_body(int status) {
        return (status >= 100 && status < 200) || status == 204 || status == 304;
}

int http_response_format(int status, const char *content_type, const uint8_t *body, size_t len,
                         bool keep_alive, const struct http_header *extra, size_t n_extra,
                         uint8_t **ret, size_t *ret_len) {
        if (status < 100 || status > 999)
                return -EINVAL;
        bool no_body = status_has_no_body(status);
        if (no_body && len > 0)
                return -EINVAL;
        if (len > 0 && !body)
                return -EINVAL;
        if (content_type && !header_text_ok(content_type))
                return -EINVAL;
        for (size_t i = 0; i < n_extra; i++)
                if (!header_text_ok(extra[i].name) || !header_text_ok(extra[i].value) ||
                    !extra[i].name[0] || strchr(extra[i].name, ':'))
                        return -EINVAL;

        char *out = NULL;
        size_t out_len = 0;
        FILE *f = open_memstream(&out, &out_len);
        if (!f)
                return -ENOMEM;
        fprintf(f, "HTTP/1.1 %d %s\r\n", status, http_status_reason(status));
        if (content_type && !no_body)
                fprintf(f, "Content-Type: %s\r\n", content_type);
        if (!no_body)
                fprintf(f, "Content-Length: %zu\r\n", len);
        if (!keep_alive)
                fputs("Connection: close\r\n", f);
        for (size_t i = 0; i < n_extra; i++)
                fprintf(f, "%s: %s\r\n", extra[i].name, extra[i].value);
        fputs("\r\n", f);
        if (len > 0)
                fwrite(body, 1, len, f);
        bool failed = ferror(f) != 0;
        if (fclose(f) != 0 || failed) {
                free(out);
                return -ENOMEM;
        }
        *ret = (uint8_t *)out;
        *ret_len = out_len;
        return 0;
}

int http_error_body(const char *message, char **ret, size_t *ret_len) {
        if (!message)
                return -EINVAL;
        json_t *s = json_string(message);
        if (!s)
                return -EINVAL; /* not UTF-8 (or OOM; jansson does not say which) */
        json_t *o = json_object();
        if (!o || json_object_set_new(o, "message", s) < 0) {
                json_decref(o);
                if (!o)
                        json_decref(s);
                return -ENOMEM;
        }
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_len = strlen(text);
        *ret = text;
        return 0;
}

int http_response_format_error(int status, const char *message, bool keep_alive,
                               const struct http_header *extra, size_t n_extra,
                               uint8_t **ret, size_t *ret_len) {
        _cleanup_free_ char *body = NULL;
        size_t body_len;
        int r = http_error_body(message, &body, &body_len);
        if (r < 0)
                return r;
        return http_response_format(status, "application/json", (const uint8_t *)body, body_len, keep_alive,
                                    extra, n_extra, ret, ret_len);
}

/* ---- Query strings ---- */

int http_percent_decode(const char *text, size_t len, char **ret) {
        char *out = malloc(len + 1);
        if (!out)
                return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                char c = text[i];
                if (c == '+')
                        c = ' ';
                else if (c == '%' && i + 2 < len && hex_digit_value(text[i + 1]) >= 0 && hex_digit_value(text[i + 2]) >= 0) {
                        c = (char)(hex_digit_value(text[i + 1]) << 4 | hex_digit_value(text[i + 2]));
                        i += 2;
                }
                if (c == 0) {
                        free(out);
                        return -EINVAL;
                }
                out[o++] = c;
        }
        out[o] = 0;
        *ret = out;
        return 0;
}

int http_query_get(const char *query, const char *key, char **ret) {
        if (!query)
                return -ENOENT;
        const char *s = query;
        for (unsigned i = 0; i < HTTP_QUERY_MAX_PARAMS && *s; i++) {
                size_t plen = strcspn(s, "&");
                const char *eq = memchr(s, '=', plen);
                size_t klen = eq ? (size_t)(eq - s) : plen;
                if (plen > 0) {
                        _cleanup_free_ char *k = NULL;
                        int r = http_percent_decode(s, klen, &k);
                        if (r == -ENOMEM)
                                return r;
                        if (r >= 0 && streq(k, key)) {
                                const char *v = eq ? eq + 1 : s + plen;
                                size_t vlen = eq ? plen - klen - 1 : 0;
                                return http_percent_decode(v, vlen, ret);
                        }
                }
                s += plen;
                if (*s == '&')
                        s++;
        }
        return -ENOENT;
}
