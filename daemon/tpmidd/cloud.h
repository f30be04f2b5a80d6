/* Asynchronous HTTPS client for DPS and IoT Hub, for the libuv loop. The
 * transfers do not run in this process: cloud.c hands them to the helper
 * tpmidd-https (libcurl multi) over a Unix stream socket, either the
 * helper's own socket-activated unit (TPMIDD_HTTPS_SOCKET, set by
 * tpmidd.service) or a helper it starts as its child; tpmidd itself links
 * no libcurl and, under systemd, has no IP sockets at all. The loop never
 * blocks on the network either way.
 *
 * Contract (libuv's): if cloud_send() fails, the callback is never called;
 * otherwise it is called exactly once, from the loop, unless the request is
 * cancelled with cloud_cancel() first. A helper that cannot be reached or
 * goes away completes its requests with -EIO and a message that says so. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CLOUD_MAX_RESPONSE_BYTES (256u * 1024u) /* bytes of one response body we keep */
#define CLOUD_MAX_INFLIGHT 16                   /* requests at once; the daemon needs 1-2 */
#define CLOUD_DEFAULT_TIMEOUT_MS 70000          /* per request, aziot's cloud_timeout_sec default */

struct cloud;

struct cloud_options {
        const char *ca_bundle;  /* PEM file of trusted CAs; NULL = the system store */
        const char *connect_to; /* optional "HOST:PORT:HOST2:PORT2[,...]" redirects (curl --connect-to) */
        const char *user_agent; /* NULL = "tpmidd/<version>" */
};

struct cloud_request {
        const char *method;        /* "GET", "PUT", "POST", "DELETE" */
        const char *url;           /* https://... */
        const char *authorization; /* full header value or NULL; never logged */
        const char *if_match;      /* If-Match header value or NULL (the hub's module update and delete: "*") */
        const char *body;          /* JSON or NULL */
        size_t body_len;
        long timeout_ms; /* 0 = CLOUD_DEFAULT_TIMEOUT_MS */
};

struct cloud_response {
        int error;             /* 0, or -errno-style transport error: -ETIMEDOUT, -ECONNREFUSED, -EPROTO (TLS), -EMSGSIZE (body too big), -EIO */
        const char *error_msg; /* curl's text for a transport error, else "" */
        long status;           /* HTTP status, 0 on transport error */
        const char *body;      /* NUL-terminated, valid during the callback only */
        size_t body_len;
        const char *retry_after; /* Retry-After header value or NULL */
        const char *error_code_header; /* x-ms-error-code or NULL */
        const char *date;      /* Date header value or NULL (unchecked: lib/httpdate.h reads it) */
        double total_sec;      /* wall time of the transfer */
};

typedef void (*cloud_cb)(const struct cloud_response *resp, void *userdata);

/* Create a client on loop. TPMIDD_HTTPS_SOCKET, read here, chooses how
 * helpers are reached (see cloud.c). Returns 0 and *ret, or -ENOMEM / -EIO. */
int cloud_new(uv_loop_t *loop, const struct cloud_options *opts, struct cloud **ret);

/* Start a request. Returns 0 and an id (for cloud_cancel) or -errno
 * (-EAGAIN when CLOUD_MAX_INFLIGHT requests are running). */
int cloud_send(struct cloud *c, const struct cloud_request *req, cloud_cb cb, void *userdata, uint64_t *ret_id);

/* Cancel a running request; its callback will not be called. -ENOENT if unknown. */
int cloud_cancel(struct cloud *c, uint64_t id);

/* Cancel everything and close the uv handles; the struct is freed once the
 * handles' close callbacks ran (so the loop must run afterwards). NULL-safe. */
void cloud_close(struct cloud *c);
