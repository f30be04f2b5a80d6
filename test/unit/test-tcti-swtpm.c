/* Tests for lib/tcti-swtpm.c: the configuration parser, and the TCTI's
 * behaviour against a scripted server on a Unix socket that answers the way
 * swtpm does, or breaks the protocol in each way the TCTI must survive
 * (responses in pieces, early EOF, bad lengths, trailing bytes), and its
 * kept connection (released on request, renewed, replaced when swtpm closed
 * it). The real swtpm is exercised by every integration test. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "tcti-swtpm.h"

/* ---- configuration --------------------------------------------------------- */

static void test_conf(void **state) {
        struct tcti_swtpm_conf c;
        (void)state;

        assert_int_equal(tcti_swtpm_parse_conf(NULL, &c), 0);
        assert_false(c.unix_socket);
        assert_string_equal(c.host, "localhost");
        assert_int_equal(c.port, TCTI_SWTPM_DEFAULT_PORT);
        assert_int_equal(tcti_swtpm_parse_conf("", &c), 0);

        assert_int_equal(tcti_swtpm_parse_conf("path=/run/swtpm.sock", &c), 0);
        assert_true(c.unix_socket);
        assert_string_equal(c.path, "/run/swtpm.sock");

        assert_int_equal(tcti_swtpm_parse_conf("host=127.0.0.1,port=65535", &c), 0);
        assert_false(c.unix_socket);
        assert_string_equal(c.host, "127.0.0.1");
        assert_int_equal(c.port, 65535);
        assert_int_equal(tcti_swtpm_parse_conf("port=1", &c), 0);
        assert_int_equal(c.port, 1);

        /* the last of path/host wins, as in libtss2-tcti-swtpm */
        assert_int_equal(tcti_swtpm_parse_conf("path=/a,host=h", &c), 0);
        assert_false(c.unix_socket);
        assert_int_equal(tcti_swtpm_parse_conf("host=h,path=/a", &c), 0);
        assert_true(c.unix_socket);

        static const char *const bad[] = {
                "path",        "path=",     "=x",      "port=0",   "port=65536", "port=-1", "port=12a",
                "port=",       "port=123456", "bogus=1", "path=/a,", ",",         "path=/a,,port=1",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                c.port = 7;
                assert_int_equal(tcti_swtpm_parse_conf(bad[i], &c), -EINVAL);
                assert_int_equal(c.port, 7); /* untouched on error */
        }

        char longpath[200];
        memset(longpath, 'a', sizeof(longpath));
        memcpy(longpath, "path=/", 6);
        longpath[sizeof(longpath) - 1] = '\0';
        assert_int_equal(tcti_swtpm_parse_conf(longpath, &c), -EINVAL); /* > sun_path */

        char *huge = malloc(TCTI_SWTPM_CONF_MAX + 2);
        assert_non_null(huge);
        memset(huge, 'x', TCTI_SWTPM_CONF_MAX + 1);
        huge[TCTI_SWTPM_CONF_MAX + 1] = '\0';
        assert_int_equal(tcti_swtpm_parse_conf(huge, &c), -EINVAL);
        free(huge);
}

/* ---- a scripted swtpm --------------------------------------------------------- */

enum mode {
        MODE_OK,     /* the whole response at once */
        MODE_SPLIT,  /* one byte at a time, 2 ms apart */
        MODE_EOF,    /* 6 bytes, then close */
        MODE_HUGE,   /* a header claiming 64 KiB */
        MODE_TINY,   /* a header claiming 5 bytes */
        MODE_EXTRA,  /* the response and 3 bytes more */
        MODE_CLOSE,  /* the whole response, then close the connection (a restarted swtpm) */
        MODE_LATE,   /* the whole response, then 3 bytes more once the test says so */
};

struct server {
        char dir[32], path[64];
        int listen_fd;
        int go[2]; /* MODE_SPLIT: the test writes a byte to let the rest go */
        pthread_t thread;
        volatile enum mode mode;
        _Atomic unsigned commands;    /* complete commands received */
        _Atomic unsigned connections; /* accepted */
        _Atomic unsigned closed;      /* connections the server closed */
        _Atomic unsigned late_sent;   /* MODE_LATE: stray bytes written */
};

static const uint8_t response[] = { 0x80, 0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
                                    0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02 };
static const uint8_t command[] = { 0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x7b, 0x00, 0x08 };

static bool read_all(int fd, uint8_t *buf, size_t n) {
        for (size_t off = 0; off < n;) {
                ssize_t r = read(fd, buf + off, n - off);
                if (r <= 0)
                        return false;
                off += (size_t)r;
        }
        return true;
}

/* Serve commands on fd until the client closes it or the mode ends it. */
static void serve_connection(struct server *s, int fd) {
        for (;;) {
                uint8_t hdr[10], rest[64];
                if (!read_all(fd, hdr, sizeof(hdr)))
                        return; /* the client closed it (or the TCTI's probe was never used) */
                uint32_t size = (uint32_t)hdr[2] << 24 | (uint32_t)hdr[3] << 16 | (uint32_t)hdr[4] << 8 | hdr[5];
                if (size < 10 || size - 10 > sizeof(rest) || !read_all(fd, rest, size - 10))
                        return;
                s->commands++;
                uint8_t out[sizeof(response) + 3];
                memcpy(out, response, sizeof(response));
                switch (s->mode) {
                case MODE_OK:
                        (void)!write(fd, out, sizeof(response));
                        break;
                case MODE_SPLIT:
                        for (size_t i = 0; i < sizeof(response); i++) {
                                (void)!write(fd, out + i, 1);
                                usleep(2000);
                        }
                        break;
                case MODE_EOF:
                        (void)!write(fd, out, 6);
                        break;
                case MODE_HUGE:
                        out[3] = 0x01; /* 0x00010010 bytes */
                        (void)!write(fd, out, sizeof(response));
                        break;
                case MODE_TINY:
                        out[5] = 0x05;
                        (void)!write(fd, out, sizeof(response));
                        break;
                case MODE_EXTRA:
                        out[sizeof(response)] = out[sizeof(response) + 1] = out[sizeof(response) + 2] = 0x55;
                        (void)!write(fd, out, sizeof(out));
                        break;
                case MODE_CLOSE:
                        (void)!write(fd, out, sizeof(response));
                        return;
                case MODE_LATE: {
                        char b;
                        (void)!write(fd, out, sizeof(response));
                        (void)!read(s->go[0], &b, 1);
                        (void)!write(fd, "\x55\x55\x55", 3);
                        s->late_sent++; /* in the client's receive queue once write returned */
                        break;
                }
                }
                if (s->mode == MODE_EOF)
                        return;
                /* swtpm keeps the connection for the next command until the client closes it */
        }
}

static void *server_main(void *arg) {
        struct server *s = arg;
        for (;;) {
                int fd = accept(s->listen_fd, NULL, NULL);
                if (fd < 0)
                        return NULL; /* shut down */
                s->connections++;
                serve_connection(s, fd);
                close(fd);
                s->closed++;
        }
}

static int setup(void **state) {
        struct server *s = calloc(1, sizeof(*s));
        assert_non_null(s);
        snprintf(s->dir, sizeof(s->dir), "/tmp/test-tcti-XXXXXX");
        assert_non_null(mkdtemp(s->dir));
        snprintf(s->path, sizeof(s->path), "%s/swtpm.sock", s->dir);
        s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(s->listen_fd >= 0);
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", s->path);
        assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(listen(s->listen_fd, 8), 0);
        assert_int_equal(pipe(s->go), 0);
        assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
        *state = s;
        return 0;
}

static int teardown(void **state) {
        struct server *s = *state;
        shutdown(s->listen_fd, SHUT_RDWR);
        pthread_join(s->thread, NULL);
        close(s->listen_fd);
        close(s->go[0]);
        close(s->go[1]);
        unlink(s->path);
        rmdir(s->dir);
        free(s);
        return 0;
}

static TSS2_TCTI_CONTEXT *open_tcti(struct server *s) {
        char conf[160];
        TSS2_TCTI_CONTEXT *t = NULL;
        snprintf(conf, sizeof(conf), "path=%s", s->path);
        assert_int_equal(tcti_swtpm_new(conf, &t), 0);
        assert_true(tcti_swtpm_is(t));
        return t;
}

static void test_round_trip(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        uint8_t buf[64];
        size_t n;

        /* receive before transmit is out of sequence */
        n = sizeof(buf);
        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_TCTI_RC_BAD_SEQUENCE);

        for (int round = 0; round < 3; round++) {
                s->mode = MODE_OK;
                assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
                assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_TCTI_RC_BAD_SEQUENCE);

                /* only blocking receives; a refused one changes nothing */
                n = sizeof(buf);
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_NONE), TSS2_TCTI_RC_BAD_VALUE);
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, 10), TSS2_TCTI_RC_BAD_VALUE);
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, -2), TSS2_TCTI_RC_BAD_VALUE);

                /* size query (what SAPI does first), too small a buffer, then the response */
                n = 0;
                assert_int_equal(Tss2_Tcti_Receive(t, &n, NULL, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
                assert_int_equal(n, sizeof(response));
                n = 8;
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK),
                                 TSS2_TCTI_RC_INSUFFICIENT_BUFFER);
                assert_int_equal(n, sizeof(response));
                n = sizeof(buf);
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
                assert_int_equal(n, sizeof(response));
                assert_memory_equal(buf, response, sizeof(response));
                /* the command is over */
                n = sizeof(buf);
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_TCTI_RC_BAD_SEQUENCE);
        }
        assert_int_equal(s->commands, 3);
        /* all three on the connection made at creation, kept open */
        assert_int_equal(s->connections, 1);
        assert_int_equal(s->closed, 0);
        tcti_swtpm_free(t);
}

/* A response that arrives in pieces is returned whole, to the size query
 * and to the read. */
static void test_split_response(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        uint8_t buf[64];
        size_t n = 0;

        s->mode = MODE_SPLIT;
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
        assert_int_equal(Tss2_Tcti_Receive(t, &n, NULL, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
        assert_int_equal(n, sizeof(response));
        n = sizeof(buf);
        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
        assert_int_equal(n, sizeof(response));
        assert_memory_equal(buf, response, sizeof(response));

        /* and again without the size query */
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
        n = sizeof(buf);
        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
        assert_int_equal(n, sizeof(response));
        assert_memory_equal(buf, response, sizeof(response));
        assert_int_equal(s->connections, 1);
        tcti_swtpm_free(t);
}

/* Wait (up to 5 s) until the server has closed n connections. */
static void wait_closed(struct server *s, unsigned n) {
        for (int i = 0; i < 5000 && s->closed < n; i++)
                usleep(1000);
        assert_int_equal(s->closed, n);
}

/* Each broken response fails the command and leaves the TCTI usable. */
static void test_broken_responses(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        static const struct {
                enum mode mode;
                TSS2_RC rc;
        } cases[] = {
                { MODE_EOF, TSS2_TCTI_RC_IO_ERROR },
                { MODE_HUGE, TSS2_TCTI_RC_MALFORMED_RESPONSE },
                { MODE_TINY, TSS2_TCTI_RC_MALFORMED_RESPONSE },
                { MODE_EXTRA, TSS2_TCTI_RC_MALFORMED_RESPONSE },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                uint8_t buf[64];
                size_t n = sizeof(buf);
                s->mode = cases[i].mode;
                assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
                TSS2_RC rc = Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK);
                if (cases[i].mode == MODE_EXTRA && rc == TSS2_RC_SUCCESS) {
                        /* all 19 bytes did not arrive in one read: then the
                         * response itself was complete and is good */
                        assert_memory_equal(buf, response, sizeof(response));
                } else {
                        assert_int_equal(rc, cases[i].rc);
                        /* the command is over, and its connection dropped */
                        n = sizeof(buf);
                        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK),
                                         TSS2_TCTI_RC_BAD_SEQUENCE);
                        wait_closed(s, (unsigned)i + 1);
                }

                s->mode = MODE_OK;
                n = sizeof(buf);
                assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
                assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
                assert_memory_equal(buf, response, sizeof(response));
        }
        tcti_swtpm_free(t);
}

static void round_trip(TSS2_TCTI_CONTEXT *t) {
        uint8_t buf[64];
        size_t n = sizeof(buf);
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
        assert_int_equal(n, sizeof(response));
        assert_memory_equal(buf, response, sizeof(response));
}

/* The kept connection goes back to swtpm on request, and only between
 * commands; the next command connects again. */
static void test_release(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        uint8_t buf[64];
        size_t n = sizeof(buf);

        s->mode = MODE_OK;
        round_trip(t);
        assert_true(tcti_swtpm_release(t));
        wait_closed(s, 1); /* swtpm sees the close and can serve someone else */
        assert_false(tcti_swtpm_release(t)); /* nothing kept any more */

        round_trip(t); /* a new connection */
        assert_int_equal(s->connections, 2);

        /* not while a command is in flight */
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
        assert_false(tcti_swtpm_release(t));
        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
        assert_int_equal(s->commands, 3);
        assert_false(tcti_swtpm_release(NULL));
        tcti_swtpm_free(t);
}

/* A steady stream of commands gives others a turn: a connection older than
 * TCTI_SWTPM_KEEP_MAX_MS is not used for the next command. */
static void test_keep_max(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        s->mode = MODE_OK;
        round_trip(t);
        round_trip(t);
        assert_int_equal(s->connections, 1);
        usleep((TCTI_SWTPM_KEEP_MAX_MS + 20) * 1000);
        round_trip(t);
        assert_int_equal(s->connections, 2);
        wait_closed(s, 1);
        tcti_swtpm_free(t);
}

/* swtpm closes the kept connection (it restarted): the next command goes
 * out on a new one, without an error. */
static void test_kept_connection_closed(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);

        for (unsigned i = 1; i <= 3; i++) {
                s->mode = MODE_CLOSE;
                round_trip(t);
                wait_closed(s, i);
        }
        s->mode = MODE_OK;
        round_trip(t);
        assert_int_equal(s->commands, 4);
        assert_int_equal(s->connections, 4);
        tcti_swtpm_free(t);
}

/* Bytes after a response stay in a kept connection: they must not be read
 * as the next response. */
static void test_stray_bytes_after_response(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        uint8_t buf[64];
        size_t n = sizeof(buf);

        s->mode = MODE_LATE;
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(command), command), TSS2_RC_SUCCESS);
        assert_int_equal(Tss2_Tcti_Receive(t, &n, buf, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
        assert_memory_equal(buf, response, sizeof(response));
        /* now the stray bytes, into the kept connection */
        s->mode = MODE_OK;
        assert_int_equal(write(s->go[1], "g", 1), 1);
        for (int i = 0; i < 5000 && s->late_sent < 1; i++)
                usleep(1000);
        assert_int_equal(s->late_sent, 1);

        round_trip(t); /* on a new connection: the kept one is not trusted any more */
        assert_int_equal(s->connections, 2);
        round_trip(t);
        assert_int_equal(s->connections, 2);
        tcti_swtpm_free(t);
}

static void test_bad_calls(void **state) {
        struct server *s = *state;
        TSS2_TCTI_CONTEXT *t = open_tcti(s);
        uint8_t cmd[sizeof(command)];
        memcpy(cmd, command, sizeof(cmd));

        /* header size and buffer size disagree; too short; too long */
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(cmd) - 1, cmd), TSS2_TCTI_RC_BAD_VALUE);
        assert_int_equal(Tss2_Tcti_Transmit(t, 9, cmd), TSS2_TCTI_RC_BAD_VALUE);
        uint8_t *big = calloc(1, TCTI_SWTPM_MAX_MESSAGE + 1);
        assert_non_null(big);
        big[4] = 0x10;
        big[5] = 0x01; /* 4097 */
        assert_int_equal(Tss2_Tcti_Transmit(t, TCTI_SWTPM_MAX_MESSAGE + 1, big), TSS2_TCTI_RC_BAD_VALUE);
        free(big);
        assert_int_equal(Tss2_Tcti_Transmit(t, sizeof(cmd), NULL), TSS2_TCTI_RC_BAD_REFERENCE);
        size_t n = 0;
        assert_int_equal(Tss2_Tcti_Receive(t, NULL, NULL, 0), TSS2_TCTI_RC_BAD_REFERENCE);
        /* blocking only: no poll handles */
        assert_int_equal(Tss2_Tcti_GetPollHandles(t, NULL, &n), TSS2_TCTI_RC_NOT_IMPLEMENTED);
        assert_int_equal(Tss2_Tcti_SetLocality(t, 0), TSS2_RC_SUCCESS);
        assert_int_equal(Tss2_Tcti_SetLocality(t, 3), TSS2_TCTI_RC_NOT_IMPLEMENTED);
        assert_int_equal(Tss2_Tcti_Cancel(t), TSS2_TCTI_RC_NOT_IMPLEMENTED);
        assert_int_equal(s->commands, 0);
        tcti_swtpm_free(t);
        assert_null(tcti_swtpm_free(NULL));
}

static void test_not_running(void **state) {
        (void)state;
        TSS2_TCTI_CONTEXT *t = NULL;
        char dir[] = "/tmp/test-tcti-XXXXXX", conf[96];
        assert_non_null(mkdtemp(dir));
        snprintf(conf, sizeof(conf), "path=%s/none.sock", dir);
        assert_int_equal(tcti_swtpm_new(conf, &t), -ENOENT);
        assert_null(t);
        assert_int_equal(tcti_swtpm_new("port=0", &t), -EINVAL);
        rmdir(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_conf),
                cmocka_unit_test(test_not_running),
                cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_split_response, setup, teardown),
                cmocka_unit_test_setup_teardown(test_broken_responses, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_calls, setup, teardown),
                cmocka_unit_test_setup_teardown(test_release, setup, teardown),
                cmocka_unit_test_setup_teardown(test_keep_max, setup, teardown),
                cmocka_unit_test_setup_teardown(test_kept_connection_closed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stray_bytes_after_response, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
