/* Frames between tpmidd (daemon/cloud.c) and its HTTPS helper tpmidd-https
 * (daemon/https-helper.c). Pure codec: no I/O, no logging.
 *
 * The two processes talk over a SOCK_STREAM socketpair, so every frame
 * carries its own length:
 *
 *     u32 BE payload length | payload
 *     payload = u8 type | fields of that type, in the order of the structs below
 *
 * Field encodings (all integers big-endian):
 *     u8, u32, u64         as is
 *     string               u32 length | bytes (no NUL inside; not terminated)
 *     optional string      u32 length, or 0xFFFFFFFF for "absent" | bytes
 *     bytes / opt. bytes   like (optional) string, NULs allowed
 *
 * The daemon sends HTTPS_IPC_HELLO once, then HTTPS_IPC_REQUEST and
 * HTTPS_IPC_CANCEL frames; the helper answers every request it did not see
 * cancelled with exactly one HTTPS_IPC_RESPONSE of the same id. Either side
 * treats a frame it cannot decode as the end of the connection. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTPS_IPC_VERSION 3u                            /* hello.version; bump on any layout change (2: response.date, 3: request.if_match) */
#define HTTPS_IPC_MAX_BODY_BYTES (256u * 1024u)         /* bytes of a request or response body */
#define HTTPS_IPC_MAX_STRING_BYTES 8192u                /* bytes of any other string (url, token, path...) */
#define HTTPS_IPC_MAX_STRINGS 6u                        /* strings in the largest frame type (response) */
#define HTTPS_IPC_HEADER_BYTES 4u                       /* the u32 length prefix */
/* bytes of one frame's payload: a full body, every string at its maximum, and the fixed fields */
#define HTTPS_IPC_MAX_FRAME_BYTES \
        (HTTPS_IPC_MAX_BODY_BYTES + HTTPS_IPC_MAX_STRINGS * (4u + HTTPS_IPC_MAX_STRING_BYTES) + 64u)
#define HTTPS_IPC_MAX_INFLIGHT 16u                     /* requests the helper runs at once (= CLOUD_MAX_INFLIGHT) */
#define HTTPS_IPC_MAX_STATUS 999u                       /* largest HTTP status a response may carry */
#define HTTPS_IPC_MAX_ERRNO 4095                        /* response.error is 0 or in [-4095, -1] */

enum https_ipc_type {
        HTTPS_IPC_HELLO = 1,    /* daemon → helper, first frame: per-client curl options */
        HTTPS_IPC_REQUEST = 2,  /* daemon → helper: start one transfer */
        HTTPS_IPC_RESPONSE = 3, /* helper → daemon: one transfer finished */
        HTTPS_IPC_CANCEL = 4,   /* daemon → helper: abandon a transfer, send no response */
};

struct https_ipc_hello {
        uint32_t version;       /* HTTPS_IPC_VERSION */
        const char *ca_bundle;  /* optional: PEM file of trusted CAs */
        const char *connect_to; /* optional: "HOST:PORT:HOST2:PORT2[,...]" */
        const char *user_agent; /* required */
};

struct https_ipc_request {
        uint64_t id;
        const char *method;        /* required, e.g. "PUT" */
        const char *url;           /* required */
        const char *authorization; /* optional: the full header value; a secret, never log it */
        const char *if_match;      /* optional: the If-Match header value (the hub's module update/delete: "*") */
        const uint8_t *body;       /* optional (NULL = no body) */
        size_t body_len;
        uint32_t timeout_ms; /* > 0 */
};

struct https_ipc_response {
        uint64_t id;
        int32_t error;                 /* 0 or a negative errno */
        const char *error_msg;         /* required, "" when error == 0 */
        uint32_t status;               /* HTTP status, 0 on a transport error */
        const uint8_t *body;           /* required, may be empty */
        size_t body_len;
        const char *retry_after;       /* optional */
        const char *error_code_header; /* optional: x-ms-error-code */
        const char *date;              /* optional: the Date header, unchecked (lib/httpdate.h reads it) */
        uint64_t total_usec;           /* wall time of the transfer in microseconds */
};

struct https_ipc_cancel {
        uint64_t id;
};

/* One frame. After a successful https_ipc_decode() the pointers point into
 * storage_, which https_ipc_msg_clear() wipes and frees; strings are then
 * NUL-terminated and bodies have a NUL after body_len (not counted). For
 * encoding, fill type and the matching member and leave storage_ NULL. */
struct https_ipc_msg {
        enum https_ipc_type type;
        union {
                struct https_ipc_hello hello;
                struct https_ipc_request request;
                struct https_ipc_response response;
                struct https_ipc_cancel cancel;
        };
        uint8_t *storage_;
        size_t storage_len_;
};

/* Encode m as one whole frame (length prefix included) into a new buffer.
 * Returns 0 with *ret (caller frees; it may hold a token: wipe it with
 * explicit_zero() first) and *ret_len, -EINVAL when a required field is NULL
 * or a value is out of range (timeout 0, status > HTTPS_IPC_MAX_STATUS, error
 * not a negative errno, unknown type), -EMSGSIZE when a string or body
 * exceeds its limit, -ENOMEM. */
int https_ipc_encode(const struct https_ipc_msg *m, uint8_t **ret, size_t *ret_len);

/* Look at the start of a byte stream. Returns 0 and *ret_total, the size of
 * the whole first frame (length prefix included; it may not have fully
 * arrived yet), -EAGAIN when fewer than HTTPS_IPC_HEADER_BYTES bytes are
 * there, -EBADMSG when the announced length is 0 or above
 * HTTPS_IPC_MAX_FRAME_BYTES. */
int https_ipc_frame_peek(const uint8_t *buf, size_t len, size_t *ret_total);

/* Decode exactly one whole frame (length prefix included; len must equal the
 * prefix + 4). Returns 0 and fills *out (release with https_ipc_msg_clear()),
 * -EBADMSG for anything malformed: wrong length, unknown type, a truncated or
 * oversized field, a NUL inside a string, trailing bytes, out-of-range values;
 * -ENOMEM. *out is untouched on failure. */
int https_ipc_decode(const uint8_t *buf, size_t len, struct https_ipc_msg *out);

/* Wipe and free what https_ipc_decode() allocated and zero *m. NULL-safe. */
void https_ipc_msg_clear(struct https_ipc_msg *m);
