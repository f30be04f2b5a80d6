/* HTTP/1.1 over a Unix stream socket on the libuv loop: one struct server per
 * listening socket (tpmd.sock, identityd.sock), each with its own request
 * handler. server.c owns sockets, connections, keep-alive, limits, timeouts
 * and the caller's credentials; the handler only sees complete requests.
 *
 * A request is answered exactly once with server_reply*(), synchronously
 * from the handler or later (after a TPM job). One request per connection is
 * in flight at a time (pipelined requests wait, and reading pauses), which
 * keeps memory per connection bounded.
 *
 * Limits (config [limits]; each answered, then the connection closed):
 *   a caller with no rights at all → stranger_status at accept, never counted
 *   max_connections          → 503 "too many connections, retry" + Retry-After
 *   max_connections_per_uid  → 429 "too many connections for uid N" + Retry-After
 *   max_header_bytes → 431, max_body_bytes → 413 (from lib/http)
 *   request_timeout_sec      → 408 when a started request is not complete in time
 *   idle_timeout_sec         → a keep-alive connection with no request is closed
 *
 * Refused connections (the first three) are answered at accept, without
 * reading the request: the answer is written, our side shut down, and what
 * the client still sends is discarded until its EOF (SERVER_LINGER_MS,
 * SERVER_DISCARD_MAX_BYTES at most), so that a client still sending its
 * request can read the answer instead of failing with EPIPE. At most
 * SERVER_REFUSALS_MAX refusals of one server linger at once; past that (a
 * flood) each refusal is written in one non-blocking write and closed within
 * the accept callback, keeping no fd (a client still sending then gets
 * EPIPE before it reads the answer). Only when the process runs out of
 * fds does a connection go unanswered: accept() fails and libuv closes the
 * waiting connections with its reserve fd; there is no fd to answer on. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "util.h"

#define SERVER_LISTEN_BACKLOG 128        /* pending connections the kernel queues for accept() */
#define SERVER_READ_BUFFER_BYTES 16384   /* bytes of the shared read buffer of one server */
#define SERVER_LINGER_MS 1000            /* ms to discard input after a final answer before closing */
#define SERVER_RETRY_AFTER_SEC "1"       /* Retry-After value for 503/429 overload answers */
#define SERVER_SOCKET_MODE 0660          /* mode of a socket file we bind ourselves */
#define SERVER_RUNDIR_MODE 0755          /* mode of a socket's parent directory we create */
#define SERVER_ERROR_MAX 512             /* bytes that hold any sentence server_new() puts in opts->error */
#define SERVER_REFUSALS_MAX 256          /* refused connections lingering at once, per server (1 fd each) */
#define SERVER_DISCARD_MAX_BYTES 65536   /* bytes discarded after a final answer before closing anyway */
#define SERVER_REFUSAL_LOG_INTERVAL_MS 1000 /* ms: at most one refusal log line per server in this time */

struct server_limits {
        unsigned max_connections;
        unsigned max_connections_per_uid;
        unsigned max_header_bytes;
        unsigned max_body_bytes;
        uint64_t idle_timeout_ms;
        uint64_t request_timeout_ms;
};

/* From the config's [limits] (values already validated there). */
struct server_limits server_limits_from_config(const struct config_limits *l);

struct server;

struct server_request {
        struct http_request *http; /* owned by the server; valid until the reply was handed over */
        uid_t uid;                 /* SO_PEERCRED of the connection */
        gid_t gid;
        pid_t pid;
        uint64_t seq;              /* request number on this server, for logs */
        struct server_conn *conn;  /* private */
};

typedef void (*server_handler_t)(struct server_request *req, void *userdata);

struct server_options {
        const char *name;      /* "tpmd", "identityd": for logs */
        const char *path;      /* socket path (bound when fd < 0; for logs otherwise) */
        int fd;                /* an inherited listening socket (socket activation), or -1 */
        server_handler_t handler;
        void *userdata;
        struct server_limits limits;
        const struct tpmid_config *config; /* principals for server_request_allowed(); may be NULL */
        /* Status for a caller with no rights at all (authz_any_allowed() false),
         * answered at accept, before it counts against any limit; 0: 401 for a
         * server named "identityd" (aziot-identityd's answer), 403 otherwise. */
        int stranger_status;
        /* When binding path: where to put the sentence that says why the
         * directory was refused (-EACCES) and how to fix it; NULL: server_new
         * logs it itself. */
        char *error;
        size_t error_size;
};

/* Listen on opts->fd, or bind opts->path (creating its parent directory;
 * replacing a stale socket file only when nothing answers on it; refusing
 * any other kind of file) with mode SERVER_SOCKET_MODE. Before binding, the
 * socket's directory and every directory above it (as written and resolved)
 * must be owned by root or by us and not group/world-writable unless sticky
 * (sshd's StrictModes): otherwise another user could put their own listener
 * at path. Returns 0 and *ret, or -errno with *ret untouched: -EADDRINUSE (a
 * live server answers on the path), -EEXIST (path is not a socket), -EACCES
 * (an unsafe directory, explained in opts->error), others from bind/listen. */
int server_new(uv_loop_t *loop, const struct server_options *opts, struct server **ret);

/* Reload: limits apply to new connections and new requests; config is the new
 * principals table (the caller keeps it alive while the server uses it). */
void server_set_limits(struct server *s, const struct server_limits *l);
void server_set_config(struct server *s, const struct tpmid_config *config);

/* Answer req. body is a NUL-terminated JSON text or NULL (no body, e.g. 204).
 * extra headers may be NULL/0. After this call req must not be used. If the
 * connection went away meanwhile, the answer is dropped. Returns 0 or -errno
 * (the connection is closed then; the request is finished either way). */
int server_reply(struct server_request *req, int status, const char *json_body,
                 const struct http_header *extra, size_t n_extra);
/* {"message": "<printf text>"} with status. */
int server_reply_error(struct server_request *req, int status, const struct http_header *extra, size_t n_extra,
                       const char *fmt, ...) _printf_(5, 6);

/* Authorisation of the caller of req for CONFIG_OP_* bits: the rule of
 * lib/authz.h, with the caller's uid and whether it is in the socket file's
 * group (primary gid or supplementary groups of the uid's user, looked up
 * once per connection). */
bool server_request_allowed(const struct server_request *req, uint32_t op);
/* Whether the caller is root or in the socket file's group. */
bool server_request_in_socket_group(const struct server_request *req);

/* Counters for status and tests. */
unsigned server_connections(const struct server *s);
/* Connections s refused at accept (answered 503/429/401/403 or, past
 * SERVER_REFUSALS_MAX lingering, answered and closed at once). */
uint64_t server_refused(const struct server *s);
/* The same, summed over every server of the process since it started (the
 * "refusedConnections" of GET /status). */
uint64_t server_refused_total(void);

/* Shutdown, step 1: close the listening socket (new connects are refused by
 * the kernel) and close idle connections; requests in progress finish and
 * their connections close after the answer. drained(userdata) is called once
 * no connection is left (maybe right away). */
void server_drain(struct server *s, void (*drained)(void *userdata), void *userdata);

/* Shutdown, step 2: close everything that is left and free s once all
 * handles are closed (the loop must run). Replies still owed by handlers are
 * accepted and dropped. NULL-safe. */
void server_close(struct server *s);
