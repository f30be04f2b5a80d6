/* An asynchronous client of Microsoft's aziot-keyd on the libuv loop: one
 * HTTP/1.1 request per connection to keyd's Unix socket ([endpoints]
 * aziot_keyd, default unix:///run/aziot/keyd.sock), api-version 2020-09-01,
 * the response read with lib/module.c's strict reader. Bounded: each request
 * has KEYD_TIMEOUT_MS and a response of at most MODULE_KEYD_RESPONSE_MAX
 * bytes.
 *
 * Contract (libuv's): if keyd_post() fails, the callback is never called;
 * otherwise it is called exactly once, from the loop (never from inside the
 * call), unless keyd_cancel() or keyd_close() came first. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define KEYD_TIMEOUT_MS 10000   /* ms for one keyd request, connect to last byte (keyd answers in ms) */
#define KEYD_MAX_INFLIGHT 16    /* keyd requests at once (a module needs 1-3 at a time) */
#define KEYD_MESSAGE_MAX 512    /* bytes, NUL included, of a failure's message */

struct keyd;

struct keyd_result {
        int r;             /* 0: keyd answered (any status); -errno: no answer (-ENOENT, -ECONNREFUSED,
                            * -EACCES: cannot reach keyd; -ECONNRESET, -EPIPE: closed without an answer;
                            * -ETIMEDOUT; -EBADMSG: not HTTP; -E2BIG) */
        int status;        /* keyd's HTTP status when r == 0 */
        const char *body;  /* the response body, valid during the callback only */
        size_t body_len;
        /* r < 0, or r == 0 with a status other than 200: what went wrong, naming
         * keyd's socket and, when keyd refused us or cannot be reached, the
         * [[principal]] line keyd needs for this process's uid. */
        char message[KEYD_MESSAGE_MAX];
};

typedef void (*keyd_cb)(const struct keyd_result *res, void *userdata);

/* Returns 0 and *ret, or -ENOMEM. */
int keyd_new(uv_loop_t *loop, struct keyd **ret);

/* POST path (e.g. "/derivedkey") with the JSON body to keyd at socket_path.
 * Returns 0 and *ret_id, -EAGAIN past KEYD_MAX_INFLIGHT, -EINVAL, -ENOMEM,
 * -ESHUTDOWN after keyd_close(). */
int keyd_post(struct keyd *k, const char *socket_path, const char *path, const char *body, keyd_cb cb,
              void *userdata, uint64_t *ret_id);

/* Its callback will not be called. -ENOENT if unknown (or already done). */
int keyd_cancel(struct keyd *k, uint64_t id);

/* Cancel everything; k is freed once its handles closed (run the loop). NULL-safe. */
void keyd_close(struct keyd *k);
