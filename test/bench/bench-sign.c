/* bench-sign: sign_with_auth_key through tpmidd's socket next to three
 * baselines, measured in the same run, interleaved:
 *  - "floor-sapi": lib/tpm.h tpm_sign(), the code the daemon's TPM worker
 *    runs, in process, on the same TCTI (tpmidd's swtpm TCTI with its kept
 *    connection, or the device): the TPM's share of a signature;
 *  - "unix-echo": a bare Unix-socket round trip with the same request and
 *    response sizes, to an echo thread of this program that reads as many
 *    bytes as the HTTP request has and writes as many as the daemon's
 *    response had: the transport's share, wake-ups included;
 *  - "direct-esapi": Esys_HMAC through tss2's own TCTI for the same config
 *    string (Tss2_TctiLdr), what a program that talks to the TPM itself
 *    does.
 * The socket figure over each baseline is printed as a ratio; socket minus
 * (floor + echo) is what the daemon itself adds (HTTP, JSON, base64, the
 * hand-over to the TPM thread and back). Then throughput with 1, 8 and 64
 * keep-alive clients against the single direct clients' rates, and the
 * daemon's RSS idle and at its peak under load. Prints RESULT lines and
 * judges nothing.
 *
 *   bench-sign --socket PATH --tcti CONF [--pid DAEMON_PID] [-n N] [--bytes B]
 *
 * The auth key must already be imported (run-bench-sign.py does that through
 * the daemon). Phases run one after another so the daemon and the direct
 * clients never use the TPM at the same time (swtpm serves one connection at
 * a time; the daemon gives its connection back 2 ms after its last job). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "b64.h"
#include "tpm.h"
#include "util.h"

#define BENCH_DEFAULT_N 2000      /* signs per latency phase */
#define BENCH_DEFAULT_BYTES 64    /* bytes of data per sign (a SAS string-to-sign is ~60-100) */
#define BENCH_WARMUP 100          /* untimed signs before each latency phase */
#define BENCH_ROUNDS 4            /* alternations of direct and socket phases */
#define BENCH_THROUGHPUT_MS 3000  /* ms per throughput phase */
#define BENCH_RESP_MAX 4096       /* bytes of one response */

static const char *sock_path;
static uint8_t payload[1024];
static size_t payload_len = BENCH_DEFAULT_BYTES;
static char *request;
static size_t request_len;
static size_t response_len; /* bytes of the daemon's response, for the echo */

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static void percentiles(uint64_t *v, size_t n, double *median_us, double *p99_us) {
        qsort(v, n, sizeof *v, cmp_u64);
        *median_us = (double)v[n / 2] / 1000.0;
        *p99_us = (double)v[(n * 99) / 100] / 1000.0;
}

static int write_all(int fd, const void *buf, size_t len) {
        const char *p = buf;
        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

static int read_exact(int fd, void *buf, size_t len) {
        char *p = buf;
        while (len > 0) {
                ssize_t n = read(fd, p, len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n == 0 ? -ECONNRESET : -errno;
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

static int connect_socket(void) {
        return unix_connect(sock_path);
}

/* One keep-alive round trip; returns the HTTP status or -errno, and the
 * response's size in *got (may be NULL). */
static int sign_over_socket(int fd, size_t *got) {
        int r = write_all(fd, request, request_len);
        if (r < 0)
                return r;
        char buf[BENCH_RESP_MAX];
        size_t have = 0;
        for (;;) {
                ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
                if (n <= 0)
                        return n == 0 ? -ECONNRESET : -errno;
                have += (size_t)n;
                buf[have] = '\0';
                char *end = strstr(buf, "\r\n\r\n");
                if (!end)
                        continue;
                char *cl = strcasestr(buf, "Content-Length:");
                size_t body = cl ? strtoul(cl + 15, NULL, 10) : 0;
                if (have >= (size_t)(end + 4 - buf) + body) {
                        if (got)
                                *got = have;
                        return atoi(buf + 9);
                }
        }
}

/* The direct ESAPI client: tss2's TCTI for conf, the auth key's ESYS_TR. */
struct esapi {
        TSS2_TCTI_CONTEXT *tcti;
        ESYS_CONTEXT *esys;
        ESYS_TR key;
};

static int esapi_open(const char *conf, struct esapi *e) {
        *e = (struct esapi){ .key = ESYS_TR_NONE };
        TSS2_RC rc = Tss2_TctiLdr_Initialize(conf, &e->tcti);
        if (rc == TSS2_RC_SUCCESS)
                rc = Esys_Initialize(&e->esys, e->tcti, NULL);
        if (rc == TSS2_RC_SUCCESS)
                rc = Esys_TR_FromTPMPublic(e->esys, TPM_AUTH_KEY_BASE + TPM_AUTH_KEY_INDEX_DEFAULT, ESYS_TR_NONE,
                                           ESYS_TR_NONE, ESYS_TR_NONE, &e->key);
        if (rc != TSS2_RC_SUCCESS) {
                fprintf(stderr, "bench-sign: direct ESAPI client for '%s': 0x%x\n", conf, rc);
                return -EIO;
        }
        return 0;
}

static void esapi_close(struct esapi *e) {
        if (e->esys) {
                if (e->key != ESYS_TR_NONE)
                        (void)Esys_TR_Close(e->esys, &e->key);
                Esys_Finalize(&e->esys);
        }
        if (e->tcti)
                Tss2_TctiLdr_Finalize(&e->tcti);
}

static int esapi_sign(struct esapi *e) {
        TPM2B_MAX_BUFFER buf = { .size = (UINT16)payload_len };
        TPM2B_DIGEST *d = NULL;
        memcpy(buf.buffer, payload, payload_len);
        TSS2_RC rc = Esys_HMAC(e->esys, e->key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf, TPM2_ALG_SHA256, &d);
        Esys_Free(d);
        return rc == TSS2_RC_SUCCESS ? 0 : -EIO;
}

/* The echo thread: per round trip, reads request_len bytes and writes
 * response_len bytes, until the client closes its end. */
static void *echo_main(void *arg) {
        int fd = *(int *)arg;
        char *in = malloc(request_len), *out = calloc(1, response_len);
        while (in && out && read_exact(fd, in, request_len) == 0 && write_all(fd, out, response_len) == 0)
                ;
        free(in);
        free(out);
        close(fd);
        return NULL;
}

static int echo_round_trip(int fd, char *buf) {
        int r = write_all(fd, request, request_len);
        return r < 0 ? r : read_exact(fd, buf, response_len);
}

struct thr {
        pthread_t t;
        atomic_bool *stop;
        uint64_t ops, errors;
};

static void *thr_main(void *arg) {
        struct thr *t = arg;
        int fd = connect_socket();
        if (fd < 0) {
                t->errors++;
                return NULL;
        }
        while (!atomic_load(t->stop)) {
                if (sign_over_socket(fd, NULL) == 200)
                        t->ops++;
                else
                        t->errors++;
        }
        close(fd);
        return NULL;
}

static long rss_kib(long pid) {
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%ld/status", pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return -1;
        long v = -1;
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "VmRSS: %ld", &v) == 1)
                        break;
        fclose(f);
        return v;
}

static double throughput(unsigned clients, long pid, long *rss_peak, uint64_t *errors) {
        atomic_bool stop = false;
        struct thr *ts = calloc(clients, sizeof *ts);
        if (!ts)
                return -1;
        uint64_t t0 = now_ns();
        for (unsigned i = 0; i < clients; i++) {
                ts[i].stop = &stop;
                pthread_create(&ts[i].t, NULL, thr_main, &ts[i]);
        }
        /* Sample RSS while the load runs. */
        for (int ms = 0; ms < BENCH_THROUGHPUT_MS; ms += 100) {
                usleep(100 * 1000);
                long r = pid > 0 ? rss_kib(pid) : -1;
                if (r > *rss_peak)
                        *rss_peak = r;
        }
        atomic_store(&stop, true);
        uint64_t ops = 0;
        for (unsigned i = 0; i < clients; i++) {
                pthread_join(ts[i].t, NULL);
                ops += ts[i].ops;
                *errors += ts[i].errors;
        }
        double secs = (double)(now_ns() - t0) / 1e9;
        free(ts);
        return (double)ops / secs;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' }, { "tcti", required_argument, NULL, 't' },
                { "pid", required_argument, NULL, 'p' },    { "bytes", required_argument, NULL, 'b' },
                { "help", no_argument, NULL, 'h' },         { 0 },
        };
        const char *tcti = NULL;
        long pid = 0;
        size_t n = BENCH_DEFAULT_N;
        int o;
        while ((o = getopt_long(argc, argv, "n:h", opts, NULL)) >= 0) {
                switch (o) {
                case 's': sock_path = optarg; break;
                case 't': tcti = optarg; break;
                case 'p': pid = strtol(optarg, NULL, 10); break;
                case 'b': payload_len = strtoul(optarg, NULL, 10); break;
                case 'n': n = strtoul(optarg, NULL, 10); break;
                default:
                        fprintf(stderr, "usage: bench-sign --socket PATH --tcti CONF [--pid PID] [-n N] [--bytes B]\n");
                        return o == 'h' ? 0 : 2;
                }
        }
        if (!sock_path || !tcti || n < 100 || payload_len == 0 || payload_len > sizeof payload) {
                fprintf(stderr, "bench-sign: need --socket and --tcti; -n >= 100; 1 <= --bytes <= %zu\n", sizeof payload);
                return 2;
        }
        for (size_t i = 0; i < payload_len; i++)
                payload[i] = (uint8_t)('a' + i % 26);
        _cleanup_free_ char *b64 = b64_encode(payload, payload_len);
        _cleanup_free_ char *body = NULL;
        if (!b64 || asprintf(&body, "{\"data\":\"%s\"}", b64) < 0 ||
            asprintf(&request, "POST /sign_with_auth_key?api-version=2020-09-01 HTTP/1.1\r\nHost: tpmd.sock\r\n"
                               "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body) < 0)
                return 1;
        request_len = strlen(request);

        long rss_idle = pid > 0 ? rss_kib(pid) : -1;

        int fd = connect_socket();
        if (fd < 0) {
                fprintf(stderr, "bench-sign: connect %s: %s\n", sock_path, strerror(-fd));
                return 1;
        }
        /* One signature first: the key must be there, and the echo needs the
         * response's size. */
        if (sign_over_socket(fd, &response_len) != 200) {
                fprintf(stderr, "bench-sign: the daemon did not sign (is a key imported?)\n");
                return 1;
        }
        int echo_fds[2];
        pthread_t echo_thread;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, echo_fds) < 0 ||
            pthread_create(&echo_thread, NULL, echo_main, &echo_fds[1]) != 0) {
                fprintf(stderr, "bench-sign: echo thread: %s\n", strerror(errno));
                return 1;
        }
        char *echo_buf = malloc(response_len);
        if (!echo_buf)
                return 1;
        printf("RESULT setup tcti=%s request_bytes=%zu response_bytes=%zu data_bytes=%zu\n", tcti, request_len,
               response_len, payload_len);

        /* The latency phases, interleaved: BENCH_ROUNDS rounds of
         * n/BENCH_ROUNDS signs on each path, so noise on a shared VM hits
         * all paths alike. The direct clients close their TPM connections
         * after each round (swtpm serves one connection at a time). */
        enum { P_ESAPI, P_FLOOR, P_ECHO, P_SOCKET, P_MAX };
        static const char *const names[P_MAX] = { "direct-esapi", "floor-sapi", "unix-echo", "socket" };
        uint64_t *lat[P_MAX], ns[P_MAX] = { 0 };
        size_t per = n / BENCH_ROUNDS;
        n = per * BENCH_ROUNDS;
        for (int p = 0; p < P_MAX; p++)
                if (!(lat[p] = calloc(n, sizeof *lat[p])))
                        return 1;
        struct tpm_options to = { .tcti = tcti, .auth_key_index = TPM_AUTH_KEY_INDEX_DEFAULT };
        for (size_t round = 0; round < BENCH_ROUNDS; round++) {
                struct esapi es;
                if (esapi_open(tcti, &es) < 0)
                        return 1;
                for (int i = 0; i < BENCH_WARMUP; i++)
                        if (esapi_sign(&es) < 0) {
                                fprintf(stderr, "bench-sign: direct ESAPI sign failed\n");
                                return 1;
                        }
                uint64_t t0 = now_ns();
                for (size_t i = 0; i < per; i++) {
                        uint64_t a = now_ns();
                        if (esapi_sign(&es) < 0)
                                return 1;
                        lat[P_ESAPI][round * per + i] = now_ns() - a;
                }
                ns[P_ESAPI] += now_ns() - t0;
                esapi_close(&es);

                struct tpm *t = NULL;
                struct tpm_error err;
                uint8_t md[32];
                if (tpm_open(&to, &t, &err) < 0) {
                        fprintf(stderr, "bench-sign: %s: %s\n", err.step, err.msg);
                        return 1;
                }
                for (int i = 0; i < BENCH_WARMUP; i++)
                        if (tpm_sign(t, payload, payload_len, md, &err) < 0) {
                                fprintf(stderr, "bench-sign: direct sign: %s: %s\n", err.step, err.msg);
                                return 1;
                        }
                t0 = now_ns();
                for (size_t i = 0; i < per; i++) {
                        uint64_t a = now_ns();
                        if (tpm_sign(t, payload, payload_len, md, &err) < 0)
                                return 1;
                        lat[P_FLOOR][round * per + i] = now_ns() - a;
                }
                ns[P_FLOOR] += now_ns() - t0;
                t = tpm_close(t);

                for (int i = 0; i < BENCH_WARMUP; i++)
                        if (echo_round_trip(echo_fds[0], echo_buf) < 0)
                                return 1;
                t0 = now_ns();
                for (size_t i = 0; i < per; i++) {
                        uint64_t a = now_ns();
                        if (echo_round_trip(echo_fds[0], echo_buf) < 0)
                                return 1;
                        lat[P_ECHO][round * per + i] = now_ns() - a;
                }
                ns[P_ECHO] += now_ns() - t0;

                for (int i = 0; i < BENCH_WARMUP; i++)
                        if (sign_over_socket(fd, NULL) != 200) {
                                fprintf(stderr, "bench-sign: the daemon did not sign\n");
                                return 1;
                        }
                t0 = now_ns();
                for (size_t i = 0; i < per; i++) {
                        uint64_t a = now_ns();
                        int st = sign_over_socket(fd, NULL);
                        lat[P_SOCKET][round * per + i] = now_ns() - a;
                        if (st != 200) {
                                fprintf(stderr, "bench-sign: status %d\n", st);
                                return 1;
                        }
                }
                ns[P_SOCKET] += now_ns() - t0;
        }
        close(fd);
        close(echo_fds[0]); /* ends the echo thread */
        pthread_join(echo_thread, NULL);
        free(echo_buf);

        double med[P_MAX], p99[P_MAX], ops[P_MAX];
        for (int p = 0; p < P_MAX; p++) {
                percentiles(lat[p], n, &med[p], &p99[p]);
                ops[p] = (double)n / ((double)ns[p] / 1e9);
                printf("RESULT path=%-12s median_us=%.1f p99_us=%.1f ops_s=%.0f (n=%zu, %d rounds)\n", names[p], med[p],
                       p99[p], ops[p], n, BENCH_ROUNDS);
                free(lat[p]);
        }
        for (int p = 0; p < P_SOCKET; p++)
                printf("RESULT ratio socket/%-12s median=%.2f p99=%.2f\n", names[p], med[P_SOCKET] / med[p],
                       p99[P_SOCKET] / p99[p]);
        printf("RESULT daemon_own_us median=%.1f (socket - floor-sapi - unix-echo)\n",
               med[P_SOCKET] - med[P_FLOOR] - med[P_ECHO]);

        /* Throughput with 1, 8, 64 concurrent keep-alive clients. */
        long rss_load = -1;
        static const unsigned clients[] = { 1, 8, 64 };
        for (size_t i = 0; i < ELEMENTSOF(clients); i++) {
                uint64_t errors = 0;
                double rate = throughput(clients[i], pid, &rss_load, &errors);
                printf("RESULT clients=%-3u ops_s=%.0f errors=%llu vs_direct_esapi=%.2f vs_floor_sapi=%.2f\n",
                       clients[i], rate, (unsigned long long)errors, rate / ops[P_ESAPI], rate / ops[P_FLOOR]);
        }
        if (pid > 0)
                printf("RESULT rss_kib idle=%ld load_peak=%ld\n", rss_idle, rss_load);
        free(request);
        return 0;
}
