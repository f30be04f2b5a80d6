/* Unit tests for daemon/tpmidd/server.c on a real libuv loop and a Unix
 * socket in a temporary directory, with a trivial handler: keep-alive,
 * pipelining (also behind an answer that comes later), max_connections →
 * 503, max_connections_per_uid → 429 (all clients are this process's uid,
 * so the per-uid limit is tested as one uid), 431 and 413 at and over their
 * limits, request timeout → 408, idle timeout, drain, an answer owed to a
 * connection that went away, server_request_allowed() wired to lib/authz
 * with the connection's real credentials, and refusals: every one answered
 * and counted, past SERVER_REFUSALS_MAX lingering too, and the input
 * discarded after an answer bounded.
 *
 * The clients are plain non-blocking sockets of this thread; every wait
 * turns the loop (UV_RUN_NOWAIT) until what is expected arrived or a
 * deadline passed, so nothing here can hang. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "authz.h"
#include "config.h"
#include "server.h"
#include "util.h"

#define WAIT_MS 5000           /* ms any single wait may take before the test fails */
#define SHORT_TIMEOUT_MS 150   /* ms of the request/idle timeouts in the timeout tests */
#define CLIENT_BUF_BYTES 65536 /* bytes a test client keeps of what it received */

struct client {
        int fd;
        char buf[CLIENT_BUF_BYTES];
        size_t n;
        bool eof;
        bool reset; /* the end was ECONNRESET: we closed with its input unread */
};

struct response {
        int status;
        char head[2048];
        char body[2048];
        bool close; /* "Connection: close" */
};

struct fixture {
        uv_loop_t loop;
        char dir[64];
        char path[128];
        struct server *srv;
        struct server_request *deferred; /* a /defer request waiting for its answer */
        unsigned handled;
        bool drained;
        const struct tpmid_config *config;
};

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the handler ---- */

static void handler(struct server_request *req, void *userdata) {
        struct fixture *fx = userdata;
        fx->handled++;
        const char *path = req->http->path;
        char body[512];
        if (streq(path, "/defer")) {
                assert_null(fx->deferred);
                fx->deferred = req;
                return;
        }
        if (streq(path, "/authz")) {
                snprintf(body, sizeof body, "{\"keys\":%s,\"sign\":%s}",
                         server_request_allowed(req, CONFIG_OP_TPM_KEYS) ? "true" : "false",
                         server_request_allowed(req, CONFIG_OP_TPM_SIGN) ? "true" : "false");
                assert_int_equal(server_reply(req, 200, body, NULL, 0), 0);
                return;
        }
        snprintf(body, sizeof body, "{\"path\":\"%s\",\"seq\":%llu,\"uid\":%u,\"body_len\":%zu}", path,
                 (unsigned long long)req->seq, (unsigned)req->uid, req->http->body_len);
        assert_int_equal(req->uid, getuid());
        assert_int_equal(req->pid, getpid());
        assert_int_equal(server_reply(req, 200, body, NULL, 0), 0);
}

/* ---- setup ---- */

static struct server_limits default_limits(void) {
        return (struct server_limits){
                .max_connections = 8,
                .max_connections_per_uid = 8,
                .max_header_bytes = 4096,
                .max_body_bytes = 4096,
                .idle_timeout_ms = 60000,
                .request_timeout_ms = 60000,
        };
}

static struct fixture *fixture_new(const struct server_limits *limits, const struct tpmid_config *config) {
        struct fixture *fx = calloc(1, sizeof *fx);
        assert_non_null(fx);
        assert_int_equal(uv_loop_init(&fx->loop), 0);
        snprintf(fx->dir, sizeof fx->dir, "/tmp/tpmid-test-server-XXXXXX");
        assert_non_null(mkdtemp(fx->dir));
        snprintf(fx->path, sizeof fx->path, "%s/run/test.sock", fx->dir);
        fx->config = config;
        struct server_options o = {
                .name = "test",
                .path = fx->path,
                .fd = -1,
                .handler = handler,
                .userdata = fx,
                .limits = *limits,
                .config = config,
        };
        assert_int_equal(server_new(&fx->loop, &o, &fx->srv), 0);
        return fx;
}

static void fixture_free(struct fixture *fx) {
        server_close(fx->srv);
        (void)uv_run(&fx->loop, UV_RUN_DEFAULT);
        /* every handle of the server and its connections was closed */
        assert_int_equal(uv_loop_close(&fx->loop), 0);
        char run[160];
        snprintf(run, sizeof run, "%s/run", fx->dir);
        assert_int_equal(access(fx->path, F_OK), -1); /* the socket file went with the server */
        (void)rmdir(run);
        (void)rmdir(fx->dir);
        free(fx);
}

/* ---- clients ---- */

static void pump(struct fixture *fx) {
        (void)uv_run(&fx->loop, UV_RUN_NOWAIT);
}

static void pump_ms(struct fixture *fx, unsigned ms) {
        int64_t end = now_ms() + ms;
        while (now_ms() < end) {
                pump(fx);
                usleep(1000);
        }
}

static int try_connect(const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                int e = errno;
                close(fd);
                return -e;
        }
        assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
        return fd;
}

static struct client *client_new(struct fixture *fx) {
        struct client *c = calloc(1, sizeof *c);
        assert_non_null(c);
        c->fd = try_connect(fx->path);
        assert_true(c->fd >= 0);
        pump(fx); /* accepted and counted */
        return c;
}

static void client_free(struct client *c) {
        if (c->fd >= 0)
                close(c->fd);
        free(c);
}

static void client_send(struct fixture *fx, struct client *c, const char *data, size_t len) {
        size_t done = 0;
        int64_t end = now_ms() + WAIT_MS;
        while (done < len) {
                ssize_t k = send(c->fd, data + done, len - done, MSG_NOSIGNAL);
                if (k > 0)
                        done += (size_t)k;
                else {
                        assert_true(k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
                        assert_true(now_ms() < end);
                }
                pump(fx);
        }
}

static void client_sends(struct fixture *fx, struct client *c, const char *text) {
        client_send(fx, c, text, strlen(text));
}

/* Read what is there; false when nothing came. */
static bool client_read(struct client *c) {
        if (c->eof || c->n >= sizeof c->buf)
                return false;
        ssize_t k = recv(c->fd, c->buf + c->n, sizeof c->buf - c->n, 0);
        if (k > 0) {
                c->n += (size_t)k;
                return true;
        }
        if (k == 0 || (k < 0 && errno == ECONNRESET))
                c->eof = true;
        if (k < 0 && errno == ECONNRESET)
                c->reset = true;
        return false;
}

/* Take one complete response off the front of c->buf. */
static bool take_response(struct client *c, struct response *r) {
        char *end = memmem(c->buf, c->n, "\r\n\r\n", 4);
        if (!end)
                return false;
        size_t head_len = (size_t)(end - c->buf) + 4;
        assert_true(head_len < sizeof r->head);
        memcpy(r->head, c->buf, head_len);
        r->head[head_len] = 0;
        size_t body_len = 0;
        const char *cl = strcasestr(r->head, "\r\nContent-Length: ");
        if (cl)
                body_len = strtoul(cl + 18, NULL, 10);
        if (c->n < head_len + body_len)
                return false;
        assert_true(body_len < sizeof r->body);
        memcpy(r->body, c->buf + head_len, body_len);
        r->body[body_len] = 0;
        assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
        r->close = strcasestr(r->head, "\r\nConnection: close\r\n") != NULL;
        memmove(c->buf, c->buf + head_len + body_len, c->n - head_len - body_len);
        c->n -= head_len + body_len;
        return true;
}

static void expect_response(struct fixture *fx, struct client *c, struct response *r) {
        int64_t end = now_ms() + WAIT_MS;
        while (!take_response(c, r)) {
                if (c->eof || now_ms() > end)
                        fail_msg("no complete response (eof %d, %zu bytes: %.*s)", c->eof, c->n, (int)c->n, c->buf);
                pump(fx);
                if (!client_read(c))
                        usleep(500);
        }
}

static int expect_status(struct fixture *fx, struct client *c, int status) {
        struct response r;
        expect_response(fx, c, &r);
        if (r.status != status)
                fail_msg("expected %d, got:\n%s%s", status, r.head, r.body);
        return r.status;
}

static void expect_eof(struct fixture *fx, struct client *c) {
        int64_t end = now_ms() + WAIT_MS;
        while (!c->eof) {
                assert_true(now_ms() < end);
                pump(fx);
                if (!client_read(c))
                        usleep(500);
        }
        assert_int_equal(c->n, 0); /* nothing unread was left behind */
}

/* No answer and no EOF within ms. */
static void expect_silence(struct fixture *fx, struct client *c, unsigned ms) {
        int64_t end = now_ms() + ms;
        while (now_ms() < end) {
                pump(fx);
                (void)client_read(c);
                usleep(500);
        }
        assert_false(c->eof);
        assert_int_equal(c->n, 0);
}

#define GET(p) "GET " p " HTTP/1.1\r\nHost: x\r\n\r\n"

/* ---- tests ---- */

static void test_keep_alive(void **state) {
        struct server_limits l = default_limits();
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        for (unsigned i = 1; i <= 3; i++) {
                client_sends(fx, c, GET("/echo"));
                struct response r;
                expect_response(fx, c, &r);
                assert_int_equal(r.status, 200);
                assert_false(r.close);
                char want[32];
                snprintf(want, sizeof want, "\"seq\":%u", i);
                assert_non_null(strstr(r.body, want));
        }
        assert_int_equal(server_connections(fx->srv), 1);
        /* HTTP/1.0 without keep-alive: answered, then closed */
        client_sends(fx, c, "GET /old HTTP/1.0\r\n\r\n");
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 200);
        assert_true(r.close);
        expect_eof(fx, c);
        /* the server lingers (reading and discarding) until the client closes too */
        assert_int_equal(server_connections(fx->srv), 1);
        client_free(c);
        pump_ms(fx, 10);
        assert_int_equal(server_connections(fx->srv), 0);
        fixture_free(fx);
}

static void test_pipelining(void **state) {
        struct server_limits l = default_limits();
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        /* three requests in one write, the second with a body */
        client_sends(fx, c, GET("/a") "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" GET("/c"));
        static const char *const want[] = {"\"path\":\"/a\"", "\"path\":\"/b\"", "\"path\":\"/c\""};
        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                struct response r;
                expect_response(fx, c, &r);
                assert_int_equal(r.status, 200);
                assert_non_null(strstr(r.body, want[i]));
                if (i == 1)
                        assert_non_null(strstr(r.body, "\"body_len\":5"));
        }
        /* behind an answer that comes later: the next request waits for it, in order */
        client_sends(fx, c, GET("/defer") GET("/after"));
        pump_ms(fx, 50);
        assert_non_null(fx->deferred);
        unsigned handled = fx->handled;
        expect_silence(fx, c, 50);
        assert_int_equal(fx->handled, handled); /* /after not dispatched while /defer is owed */
        struct server_request *req = fx->deferred;
        fx->deferred = NULL;
        assert_int_equal(server_reply(req, 202, "{\"late\":true}", NULL, 0), 0);
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 202);
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"path\":\"/after\""));
        client_free(c);
        fixture_free(fx);
}

static void test_max_connections_503(void **state) {
        struct server_limits l = default_limits();
        l.max_connections = 2;
        l.max_connections_per_uid = 2;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *a = client_new(fx), *b = client_new(fx);
        assert_int_equal(server_connections(fx->srv), 2);
        /* per-uid is at 2 too: make the global limit the one that is hit first */
        struct client *c = client_new(fx);
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 503);
        assert_true(r.close);
        assert_non_null(strstr(r.head, "\r\nRetry-After: " SERVER_RETRY_AFTER_SEC "\r\n"));
        assert_non_null(strstr(r.body, "too many connections (2)"));
        expect_eof(fx, c);
        client_free(c);
        /* the two accepted ones still work */
        client_sends(fx, a, GET("/x"));
        expect_status(fx, a, 200);
        /* a freed slot is free at once */
        client_free(b);
        pump_ms(fx, 10);
        assert_int_equal(server_connections(fx->srv), 1);
        c = client_new(fx);
        client_sends(fx, c, GET("/y"));
        expect_status(fx, c, 200);
        client_free(c);
        client_free(a);
        fixture_free(fx);
}

static void test_per_uid_429(void **state) {
        struct server_limits l = default_limits();
        l.max_connections = 8;
        l.max_connections_per_uid = 2;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *a = client_new(fx), *b = client_new(fx), *c = client_new(fx);
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 429);
        assert_true(r.close);
        assert_non_null(strstr(r.head, "\r\nRetry-After: " SERVER_RETRY_AFTER_SEC "\r\n"));
        char want[64];
        snprintf(want, sizeof want, "too many connections for uid %u (2)", (unsigned)getuid());
        assert_non_null(strstr(r.body, want));
        expect_eof(fx, c);
        client_free(c);
        assert_int_equal(server_connections(fx->srv), 2);
        client_sends(fx, b, GET("/x"));
        expect_status(fx, b, 200);
        client_free(a);
        pump_ms(fx, 10);
        c = client_new(fx);
        client_sends(fx, c, GET("/y"));
        expect_status(fx, c, 200);
        client_free(c);
        client_free(b);
        fixture_free(fx);
}

/* A GET whose head is exactly head_len bytes. */
static char *get_of_size(size_t head_len) {
        const char *pre = "GET /h HTTP/1.1\r\nHost: x\r\nX-Pad: ";
        const char *post = "\r\n\r\n";
        size_t fixed = strlen(pre) + strlen(post);
        assert_true(head_len > fixed);
        size_t pad = head_len - fixed;
        char *s = malloc(head_len + 1);
        assert_non_null(s);
        /* A loop, not memset(): gcc's -Warray-bounds (with the sanitizers'
         * inlining) does not see that head_len > fixed was asserted. */
        size_t i = 0;
        for (const char *p = pre; *p; p++)
                s[i++] = *p;
        while (pad--)
                s[i++] = 'a';
        for (const char *p = post; *p; p++)
                s[i++] = *p;
        s[i] = '\0';
        assert_int_equal(strlen(s), head_len);
        return s;
}

static void test_header_limit_431(void **state) {
        struct server_limits l = default_limits();
        l.max_header_bytes = 1024;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        char *at = get_of_size(1024), *over = get_of_size(1025);
        client_sends(fx, c, at);
        expect_status(fx, c, 200);
        client_sends(fx, c, over);
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 431);
        assert_true(r.close);
        expect_eof(fx, c);
        free(at);
        free(over);
        client_free(c);
        fixture_free(fx);
}

static void test_body_limit_413(void **state) {
        struct server_limits l = default_limits();
        l.max_body_bytes = 1024;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        char body[1100];
        memset(body, 'b', sizeof body);
        char head[128];
        snprintf(head, sizeof head, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 1024);
        client_sends(fx, c, head);
        client_send(fx, c, body, 1024);
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"body_len\":1024"));
        snprintf(head, sizeof head, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 1025);
        client_sends(fx, c, head);
        client_send(fx, c, body, 1025);
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 413);
        assert_true(r.close);
        expect_eof(fx, c);
        client_free(c);
        fixture_free(fx);
}

static void test_request_timeout_408(void **state) {
        struct server_limits l = default_limits();
        l.request_timeout_ms = SHORT_TIMEOUT_MS;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        int64_t start = now_ms();
        client_sends(fx, c, "GET /slow HTTP/1.1\r\nHost: x\r\n"); /* the head never ends */
        /* more bytes do not restart the clock: it runs from the request's first byte */
        pump_ms(fx, SHORT_TIMEOUT_MS / 2);
        client_sends(fx, c, "X-More: 1\r\n");
        struct response r;
        expect_response(fx, c, &r);
        int64_t took = now_ms() - start;
        assert_int_equal(r.status, 408);
        assert_true(r.close);
        assert_true(took >= SHORT_TIMEOUT_MS - 5);
        assert_true(took < SHORT_TIMEOUT_MS + SHORT_TIMEOUT_MS / 2 + 1000);
        expect_eof(fx, c);
        assert_int_equal(fx->handled, 0);
        client_free(c);
        fixture_free(fx);
}

static void test_idle_timeout(void **state) {
        struct server_limits l = default_limits();
        l.idle_timeout_ms = SHORT_TIMEOUT_MS;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        client_sends(fx, c, GET("/x"));
        expect_status(fx, c, 200);
        int64_t start = now_ms();
        expect_eof(fx, c); /* idle after the answer: closed without a word */
        assert_true(now_ms() - start >= SHORT_TIMEOUT_MS - 5);
        client_free(c);
        fixture_free(fx);
}

static void drained_cb(void *userdata) {
        struct fixture *fx = userdata;
        assert_false(fx->drained);
        fx->drained = true;
}

static void test_drain(void **state) {
        struct server_limits l = default_limits();
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *idle = client_new(fx), *busy = client_new(fx);
        client_sends(fx, busy, GET("/defer"));
        pump_ms(fx, 20);
        assert_non_null(fx->deferred);
        server_drain(fx->srv, drained_cb, fx);
        /* the idle connection ends at once; the listener is gone */
        expect_eof(fx, idle);
        assert_int_equal(access(fx->path, F_OK), -1);
        int fd = try_connect(fx->path);
        assert_true(fd == -ENOENT || fd == -ECONNREFUSED);
        /* the request in progress is answered, with Connection: close */
        assert_false(fx->drained);
        struct server_request *req = fx->deferred;
        fx->deferred = NULL;
        assert_int_equal(server_reply(req, 200, "{}", NULL, 0), 0);
        struct response r;
        expect_response(fx, busy, &r);
        assert_int_equal(r.status, 200);
        assert_true(r.close);
        expect_eof(fx, busy);
        /* drained once the last client has closed its end too (or after SERVER_LINGER_MS) */
        assert_false(fx->drained);
        close(busy->fd);
        busy->fd = -1;
        pump_ms(fx, 10);
        assert_true(fx->drained);
        assert_int_equal(server_connections(fx->srv), 0);
        client_free(idle);
        client_free(busy);
        fixture_free(fx);
}

static void test_answer_after_client_left(void **state) {
        struct server_limits l = default_limits();
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *c = client_new(fx);
        client_sends(fx, c, GET("/defer"));
        pump_ms(fx, 20);
        assert_non_null(fx->deferred);
        client_free(c);
        pump_ms(fx, 20);
        /* a half-closed client may still read the answer, so the server keeps it until then */
        assert_int_equal(server_connections(fx->srv), 1);
        struct server_request *req = fx->deferred;
        fx->deferred = NULL;
        int r = server_reply(req, 200, "{}", NULL, 0);
        assert_true(r == -EPIPE || r == -ECONNRESET);
        pump_ms(fx, 20);
        assert_int_equal(server_connections(fx->srv), 0);
        fixture_free(fx);
}

static void expect_authz(struct fixture *fx, const char *body) {
        struct client *c = client_new(fx);
        client_sends(fx, c, GET("/authz"));
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 200);
        if (!streq(r.body, body))
                fail_msg("authz: expected %s, got %s", body, r.body);
        client_free(c);
}

static void test_authz_wiring(void **state) {
        /* No principals: this uid is root or in the group of the socket file it
         * created (its own primary group), so lib/authz's rule 3 allows it. */
        struct server_limits l = default_limits();
        struct fixture *fx = fixture_new(&l, NULL);
        expect_authz(fx, "{\"keys\":true,\"sign\":true}");
        fixture_free(fx);

        /* A [[principal]] for this uid narrows it to its allow list, root or not. */
        char text[512];
        snprintf(text, sizeof text, "[[principal]]\nuid = %u\nname = \"me\"\nallow = [\"tpm.keys\"]\n",
                 (unsigned)getuid());
        struct config_diags d = {0};
        struct tpmid_config *cfg = NULL;
        assert_int_equal(config_parse_string(text, strlen(text), "t.toml", &cfg, &d), 0);
        fx = fixture_new(&l, cfg);
        expect_authz(fx, "{\"keys\":true,\"sign\":false}");
        /* a reload to a config without the entry applies to the next request */
        server_set_config(fx->srv, NULL);
        expect_authz(fx, "{\"keys\":true,\"sign\":true}");
        fixture_free(fx);
        config_free(cfg);
        config_diags_free(&d);
}

/* Three pipelined requests, then shutdown(SHUT_WR): every one answered, in
 * order, the last with "Connection: close", then EOF. Both with an answer
 * given at once and with one that comes later (the EOF arrives while the
 * first request is owed). */
static void test_half_close_pipelined(void **state) {
        struct server_limits l = default_limits();
        struct fixture *fx = fixture_new(&l, NULL);
        for (int deferred = 0; deferred < 2; deferred++) {
                struct client *c = client_new(fx);
                if (deferred)
                        client_sends(fx, c, GET("/defer") GET("/b") GET("/c"));
                else
                        client_sends(fx, c, GET("/a") GET("/b") GET("/c"));
                assert_int_equal(shutdown(c->fd, SHUT_WR), 0);
                pump_ms(fx, 50);
                if (deferred) {
                        assert_non_null(fx->deferred);
                        struct server_request *req = fx->deferred;
                        fx->deferred = NULL;
                        assert_int_equal(server_reply(req, 202, "{\"late\":true}", NULL, 0), 0);
                }
                static const char *const want[] = {"/a", "/b", "/c"};
                for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                        struct response r;
                        expect_response(fx, c, &r);
                        if (i == 0 && deferred) {
                                assert_int_equal(r.status, 202);
                        } else {
                                assert_int_equal(r.status, 200);
                                char path[32];
                                snprintf(path, sizeof path, "\"path\":\"%s\"", want[i]);
                                assert_non_null(strstr(r.body, path));
                        }
                        /* only the last may say "close" (whether it does depends on
                         * whether the EOF was read before it was answered) */
                        if (i < ELEMENTSOF(want) - 1)
                                assert_false(r.close);
                }
                expect_eof(fx, c);
                client_free(c);
        }
        /* a half-closed connection with only the start of a request left is closed */
        struct client *c = client_new(fx);
        client_sends(fx, c, GET("/a") "GET /partial HTTP/1.1\r\n");
        assert_int_equal(shutdown(c->fd, SHUT_WR), 0);
        expect_status(fx, c, 200);
        expect_eof(fx, c);
        pump_ms(fx, 10);
        assert_int_equal(server_connections(fx->srv), 0);
        client_free(c);
        fixture_free(fx);
}

/* A caller with no rights at all (here: this uid listed with an empty allow
 * set) is answered at accept, without sending anything, and never counts
 * against max_connections, however many connect. */
static void test_stranger_answered_at_accept(void **state) {
        char text[256];
        snprintf(text, sizeof text, "[[principal]]\nuid = %u\nname = \"me\"\nallow = []\n", (unsigned)getuid());
        struct config_diags d = {0};
        struct tpmid_config *cfg = NULL;
        assert_int_equal(config_parse_string(text, strlen(text), "t.toml", &cfg, &d), 0);
        struct server_limits l = default_limits();
        l.max_connections = 4; /* also the number of refusals answered at a time */
        l.max_connections_per_uid = 1;
        struct fixture *fx = fixture_new(&l, cfg);
        struct client *cs[4];
        for (size_t i = 0; i < ELEMENTSOF(cs); i++) {
                cs[i] = client_new(fx);
                assert_int_equal(server_connections(fx->srv), 0);
        }
        for (size_t i = 0; i < ELEMENTSOF(cs); i++) {
                struct response r;
                expect_response(fx, cs[i], &r);
                assert_int_equal(r.status, 403);
                assert_true(r.close);
                assert_null(strstr(r.head, "Retry-After")); /* retrying will not help */
                char want[64];
                snprintf(want, sizeof want, "uid %u may not use this socket", (unsigned)getuid());
                assert_non_null(strstr(r.body, want));
                expect_eof(fx, cs[i]);
        }
        assert_int_equal(fx->handled, 0);
        /* the same uid with rights again (reload): accepted and counted */
        server_set_config(fx->srv, NULL);
        struct client *ok = client_new(fx);
        assert_int_equal(server_connections(fx->srv), 1);
        client_sends(fx, ok, GET("/x"));
        expect_status(fx, ok, 200);
        client_free(ok);
        for (size_t i = 0; i < ELEMENTSOF(cs); i++)
                client_free(cs[i]);
        fixture_free(fx);
        config_free(cfg);
        config_diags_free(&d);
}

/* A client that connects and sends its request before the server turns
 * its loop (as under overload: the kernel queues both before accept). */
static struct client *client_with_request(const char *path, const char *text) {
        struct client *c = calloc(1, sizeof *c);
        assert_non_null(c);
        c->fd = try_connect(path);
        assert_true(c->fd >= 0);
        assert_int_equal(send(c->fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
        return c;
}

static void expect_503_retry(struct fixture *fx, struct client *c) {
        struct response r;
        expect_response(fx, c, &r);
        assert_int_equal(r.status, 503);
        assert_true(r.close);
        assert_non_null(strstr(r.head, "\r\nRetry-After: " SERVER_RETRY_AFTER_SEC "\r\n"));
        assert_non_null(strstr(r.body, "too many connections (1)"));
}

/* Past max_connections every connection is answered: SERVER_REFUSALS_MAX of
 * them linger (answered, waiting for the client's EOF), the ones beyond are
 * answered and closed at once; each is counted. Nothing is left once the
 * clients are gone. */
static void test_refusal_flood_answered(void **state) {
        enum { EXTRA = 20, N = SERVER_REFUSALS_MAX + EXTRA };
        struct server_limits l = default_limits();
        l.max_connections = 1;
        l.max_connections_per_uid = 1;
        struct fixture *fx = fixture_new(&l, NULL);
        uint64_t total0 = server_refused_total();
        struct client *ok = client_new(fx);
        struct client **cs = calloc(N, sizeof *cs);
        assert_non_null(cs);
        int64_t t0 = now_ms();
        for (size_t i = 0; i < N; i++) {
                cs[i] = client_with_request(fx->path, GET("/refused"));
                pump(fx); /* accepted (and answered) one at a time: the backlog never fills */
        }
        /* Which refusals lingered is known only if none of them reached its
         * linger timeout meanwhile (valgrind makes the loop above slow). */
        bool timed = now_ms() - t0 < SERVER_LINGER_MS;
        if (!timed)
                print_message("the flood took %lld ms: not checking which refusals lingered\n",
                              (long long)(now_ms() - t0));
        assert_int_equal(server_refused(fx->srv), N);
        assert_int_equal(server_refused_total() - total0, N);
        for (size_t i = 0; i < N; i++) {
                expect_503_retry(fx, cs[i]);
                expect_eof(fx, cs[i]);
                /* lingering: read, shut down, EOF; past the limit: closed unread at once */
                if (timed)
                        assert_int_equal(cs[i]->reset, i >= SERVER_REFUSALS_MAX);
        }
        assert_int_equal(fx->handled, 0);
        client_sends(fx, ok, GET("/x")); /* the accepted one was never disturbed */
        expect_status(fx, ok, 200);
        for (size_t i = 0; i < N; i++)
                client_free(cs[i]);
        free(cs);
        client_free(ok);
        pump_ms(fx, 20);
        assert_int_equal(server_connections(fx->srv), 0);
        /* the lingering ones went with their clients: room for refusals to linger again */
        ok = client_new(fx);
        struct client *again = client_new(fx);
        client_sends(fx, again, GET("/late")); /* still open (lingering) when this is sent */
        expect_503_retry(fx, again);
        expect_eof(fx, again);
        client_free(again);
        client_free(ok);
        fixture_free(fx);
}

/* A refused client that keeps sending is closed after SERVER_DISCARD_MAX_BYTES,
 * before SERVER_LINGER_MS. */
static void test_refusal_discard_bounded(void **state) {
        struct server_limits l = default_limits();
        l.max_connections = 1;
        l.max_connections_per_uid = 1;
        struct fixture *fx = fixture_new(&l, NULL);
        struct client *ok = client_new(fx), *c = client_new(fx);
        expect_503_retry(fx, c);
        static char junk[SERVER_DISCARD_MAX_BYTES / 4];
        memset(junk, 'x', sizeof junk);
        int64_t t0 = now_ms();
        bool closed = false;
        for (int i = 0; i < 16 && !closed; i++) {
                size_t done = 0;
                while (done < sizeof junk && !closed) {
                        ssize_t k = send(c->fd, junk + done, sizeof junk - done, MSG_NOSIGNAL);
                        if (k > 0)
                                done += (size_t)k;
                        else if (k < 0 && (errno == EPIPE || errno == ECONNRESET))
                                closed = true;
                        pump(fx);
                }
        }
        if (!closed)
                expect_eof(fx, c);
        assert_true(now_ms() - t0 < SERVER_LINGER_MS); /* closed for the bytes, not by the linger timer */
        client_free(c);
        client_free(ok);
        fixture_free(fx);
}

static bool server_new_at(const char *path, char *err, size_t n) {
        uv_loop_t loop;
        assert_int_equal(uv_loop_init(&loop), 0);
        struct server *srv = NULL;
        struct server_options o = {
                .name = "test", .path = path, .fd = -1, .handler = handler, .limits = default_limits(),
                .error = err, .error_size = n,
        };
        err[0] = '\0';
        int r = server_new(&loop, &o, &srv);
        if (r == 0)
                server_close(srv);
        (void)uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&loop), 0);
        assert_true(r == 0 || r == -EACCES);
        return r == 0;
}

/* Socket directory checks (sshd's StrictModes): a group/world-writable
 * directory without the sticky bit, or one owned by another non-root user,
 * anywhere on the way, is refused with a sentence saying how to fix it. */
static void test_unsafe_socket_dir(void **state) {
        char dir[64], sub[96], path[160], err[512];
        snprintf(dir, sizeof dir, "/tmp/tpmid-test-sockdir-XXXXXX");
        assert_non_null(mkdtemp(dir));
        snprintf(sub, sizeof sub, "%s/run", dir);
        snprintf(path, sizeof path, "%s/run/x.sock", dir);
        assert_int_equal(mkdir(sub, 0755), 0);
        assert_true(server_new_at(path, err, sizeof err)); /* safe: accepted */
        assert_int_equal(chmod(sub, 0777), 0);
        assert_int_equal(chmod(sub, 0777), 0); /* umask-proof */
        assert_false(server_new_at(path, err, sizeof err));
        assert_non_null(strstr(err, "world-writable"));
        assert_non_null(strstr(err, "chmod go-w"));
        assert_int_equal(access(path, F_OK), -1); /* nothing was bound */
        assert_int_equal(chmod(sub, 01777), 0); /* sticky: others cannot rename what is ours */
        assert_true(server_new_at(path, err, sizeof err));
        assert_int_equal(chmod(sub, 0775), 0);
        assert_false(server_new_at(path, err, sizeof err));
        assert_non_null(strstr(err, "group-writable"));
        /* an ancestor, not the socket's own directory */
        assert_int_equal(chmod(sub, 0755), 0);
        assert_int_equal(chmod(dir, 0757), 0);
        assert_false(server_new_at(path, err, sizeof err));
        assert_non_null(strstr(err, dir));
        assert_int_equal(chmod(dir, 0700), 0);
        if (geteuid() == 0) {
                /* owned by another non-root user */
                assert_int_equal(chown(sub, 65534, 65534), 0);
                assert_false(server_new_at(path, err, sizeof err));
                assert_non_null(strstr(err, "owned by uid 65534"));
                assert_int_equal(chown(sub, 0, 0), 0);
        }
        /* a path through a symlink into an unsafe directory */
        char unsafe[96], link[112], lpath[160];
        snprintf(unsafe, sizeof unsafe, "%s/unsafe", dir);
        snprintf(link, sizeof link, "%s/link", dir);
        snprintf(lpath, sizeof lpath, "%s/link/x.sock", dir);
        assert_int_equal(mkdir(unsafe, 0755), 0);
        assert_int_equal(chmod(unsafe, 0777), 0);
        assert_int_equal(symlink(unsafe, link), 0);
        assert_false(server_new_at(lpath, err, sizeof err));
        assert_non_null(strstr(err, unsafe));
        assert_int_equal(unlink(link), 0);
        assert_int_equal(rmdir(unsafe), 0);
        assert_int_equal(rmdir(sub), 0);
        assert_int_equal(rmdir(dir), 0);
}

int main(void) {
        /* as tpmidd's main(): a write to a client that went away is an error, not a signal */
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_keep_alive),
                cmocka_unit_test(test_pipelining),
                cmocka_unit_test(test_max_connections_503),
                cmocka_unit_test(test_per_uid_429),
                cmocka_unit_test(test_header_limit_431),
                cmocka_unit_test(test_body_limit_413),
                cmocka_unit_test(test_request_timeout_408),
                cmocka_unit_test(test_idle_timeout),
                cmocka_unit_test(test_drain),
                cmocka_unit_test(test_answer_after_client_left),
                cmocka_unit_test(test_authz_wiring),
                cmocka_unit_test(test_half_close_pipelined),
                cmocka_unit_test(test_stranger_answered_at_accept),
                cmocka_unit_test(test_refusal_flood_answered),
                cmocka_unit_test(test_refusal_discard_bounded),
                cmocka_unit_test(test_unsafe_socket_dir),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
