/* Tests for daemon/tpmidd/tpm-worker.c: the one thread that runs every TPM
 * command, against a fake TPM. The fake is a TSS2_TCTI_CONTEXT implemented
 * here and put behind lib/tpm.c's SAPI code through tpm_options.tcti_source;
 * it answers the commands the worker's jobs send (GetCapability, ReadPublic,
 * HMAC) with canned responses, or with the error, TPM_RC_RETRY-family code,
 * delay or transport failure a test asks for, and it records what it saw
 * and on which thread.
 *
 * What is checked: FIFO order; the queue limit (-EAGAIN, START/PING never
 * refused); stop with queued jobs; libuv's contract (if submit fails, done
 * is never called, otherwise exactly once, on the loop thread, never inside
 * submit); every command on one thread that is not the loop's, and the loop
 * free to run while a command takes long; the idle release of the kept
 * connection TPM_IDLE_RELEASE_MS after the last job; TPM errors turned into
 * job->r and job->err; re-sending after TPM_RC_RETRY/YIELDED/TESTING. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_tpm2_types.h>

#include "sha256.h"
#include "tpm-worker.h"
#include "util.h"

#define FAKE_MAX_MESSAGE 4096  /* bytes of one command or response */
#define FAKE_MAX_CODES 16      /* response codes queued for the next HMACs */
#define FAKE_LOG_MAX 256       /* commands remembered */
#define FAKE_GATE_MAX_MS 3000  /* ms a held command waits before it gives up (then the test fails) */
#define WAIT_MAX_MS 5000       /* ms a test waits for the worker before it fails */
#define AUTH_KEY_HANDLE (TPM_AUTH_KEY_BASE + TPM_AUTH_KEY_INDEX_DEFAULT)
#define FAKE_LOADED_HANDLE 0x80000001u /* what TPM2_Load answers: the key it loaded, until flushed */

/* ---- the fake TPM ------------------------------------------------------------ */

struct fake {
        TSS2_TCTI_CONTEXT_COMMON_V2 tcti; /* first: SAPI casts the context to this */
        pthread_mutex_t lock;
        pthread_cond_t cond;

        /* what the test sets (under lock once the worker runs) */
        bool key_present;                    /* an object at the auth key handle */
        uint32_t hmac_codes[FAKE_MAX_CODES]; /* answer the next HMACs with these, in order */
        unsigned n_hmac_codes;
        uint32_t ping_code;     /* answer GetCapability(MANUFACTURER) with this */
        unsigned fail_transmit; /* this many transmits fail with a TCTI I/O error */
        unsigned cut_response;  /* this many responses come cut short (8 of their bytes: out of step) */
        int open_error;         /* tcti_source.open fails with this */
        bool hold;              /* receive waits while set (the test's gate) */
        unsigned delay_ms;      /* each response takes this long */

        /* what the fake saw */
        unsigned opens, closes, releases;
        unsigned n_cmds;
        uint32_t cc[FAKE_LOG_MAX];    /* command codes in order */
        uint32_t handle[FAKE_LOG_MAX]; /* the first handle of each, or 0 */
        unsigned n_hmac;
        char hmac_data[FAKE_LOG_MAX][32]; /* each HMAC's data (NUL-terminated, tests send short strings) */
        unsigned waiting;                 /* commands held at the gate right now */
        bool gate_timed_out;
        bool other_thread;        /* a command came from a second thread */
        pthread_t tpm_thread;     /* the thread of the first command */
        unsigned cmds_at_release; /* n_cmds when the last release happened */
        int64_t last_response_ns, release_ns;

        /* the command in flight */
        bool in_flight;
        uint8_t resp[FAKE_MAX_MESSAGE];
        size_t resp_len;
};

static int64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The fake runs on the worker thread, where a cmocka assertion cannot jump
 * back into the test: a broken expectation there aborts the test program. */
#define FAKE_CHECK(cond)                                                                          \
        do {                                                                                      \
                if (!(cond)) {                                                                    \
                        fprintf(stderr, "%s:%d: fake TPM: check failed: %s\n", __FILE__, __LINE__, \
                                #cond);                                                           \
                        abort();                                                                  \
                }                                                                                 \
        } while (0)

static uint32_t get32(const uint8_t *p) {
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get16(const uint8_t *p) {
        return (uint16_t)(p[0] << 8 | p[1]);
}

static void put16(uint8_t *p, size_t *off, uint16_t v) {
        p[(*off)++] = (uint8_t)(v >> 8);
        p[(*off)++] = (uint8_t)v;
}

static void put32(uint8_t *p, size_t *off, uint32_t v) {
        for (int i = 3; i >= 0; i--)
                p[(*off)++] = (uint8_t)(v >> (8 * i));
}

static struct fake *fake_of(TSS2_TCTI_CONTEXT *ctx) {
        return (struct fake *)ctx;
}

/* Fill in the response header (tag, size, code) over the first 10 bytes. */
static void finish_response(struct fake *f, uint16_t tag, size_t len, uint32_t code) {
        size_t off = 0;
        put16(f->resp, &off, tag);
        put32(f->resp, &off, (uint32_t)len);
        put32(f->resp, &off, code);
        f->resp_len = len;
}

static void error_response(struct fake *f, uint32_t code) {
        finish_response(f, TPM2_ST_NO_SESSIONS, 10, code);
}

static void answer_get_capability(struct fake *f, const uint8_t *cmd, size_t size) {
        FAKE_CHECK(size >= 22);
        uint32_t cap = get32(cmd + 10), prop = get32(cmd + 14);
        TPMS_CAPABILITY_DATA cd = { .capability = cap };
        if (cap == TPM2_CAP_TPM_PROPERTIES) {
                if (prop == TPM2_PT_MANUFACTURER && f->ping_code) {
                        error_response(f, f->ping_code);
                        return;
                }
                cd.data.tpmProperties.count = 1;
                cd.data.tpmProperties.tpmProperty[0].property = prop;
                cd.data.tpmProperties.tpmProperty[0].value = prop == TPM2_PT_NV_BUFFER_MAX ? 1024 : 0x46414b45;
        } else {
                FAKE_CHECK(cap == TPM2_CAP_HANDLES); /* the leftover scan at open: nothing left */
        }
        size_t off = 10;
        f->resp[off++] = TPM2_NO; /* moreData */
        FAKE_CHECK(Tss2_MU_TPMS_CAPABILITY_DATA_Marshal(&cd, f->resp, sizeof(f->resp), &off) == TSS2_RC_SUCCESS);
        finish_response(f, TPM2_ST_NO_SESSIONS, off, TPM2_RC_SUCCESS);
}

static void answer_read_public(struct fake *f, uint32_t h) {
        struct tpm_public pub;
        if (h == TPM_EK_HANDLE)
                FAKE_CHECK(tpm_template_public(TPM_TEMPLATE_EK, &pub) == 0);
        else if (h == TPM_SRK_HANDLE || (h == AUTH_KEY_HANDLE && f->key_present))
                FAKE_CHECK(tpm_template_public(TPM_TEMPLATE_SRK, &pub) == 0); /* any public area will do */
        else {
                error_response(f, TPM2_RC_HANDLE | TPM2_RC_1);
                return;
        }
        size_t off = 10;
        memcpy(f->resp + off, pub.buf, pub.len);
        off += pub.len;
        put16(f->resp, &off, 0); /* name */
        put16(f->resp, &off, 0); /* qualifiedName */
        finish_response(f, TPM2_ST_NO_SESSIONS, off, TPM2_RC_SUCCESS);
}

/* TPM2_HMAC: handle, auth area, TPM2B_MAX_BUFFER, hash alg. The "HMAC" is
 * SHA-256 of the data, so a test can tell which job got which answer. */
static void answer_hmac(struct fake *f, const uint8_t *cmd, size_t size) {
        FAKE_CHECK(size >= 18);
        size_t at = 18 + get32(cmd + 14);
        FAKE_CHECK(at + 2 <= size);
        uint16_t n = get16(cmd + at);
        FAKE_CHECK(at + 2 + n <= size);
        const uint8_t *data = cmd + at + 2;
        if (f->n_hmac < FAKE_LOG_MAX)
                snprintf(f->hmac_data[f->n_hmac], sizeof f->hmac_data[0], "%.*s", (int)n, (const char *)data);
        f->n_hmac++;
        if (f->n_hmac_codes > 0) {
                uint32_t code = f->hmac_codes[0];
                memmove(f->hmac_codes, f->hmac_codes + 1, --f->n_hmac_codes * sizeof f->hmac_codes[0]);
                error_response(f, code);
                return;
        }
        if (!f->key_present && get32(cmd + 10) != FAKE_LOADED_HANDLE) {
                error_response(f, TPM2_RC_HANDLE | TPM2_RC_1);
                return;
        }
        size_t off = 10;
        put32(f->resp, &off, 2 + SHA256_DIGEST_LEN); /* parameterSize */
        put16(f->resp, &off, SHA256_DIGEST_LEN);
        sha256(data, n, f->resp + off);
        off += SHA256_DIGEST_LEN;
        put16(f->resp, &off, 0);                /* nonceTPM */
        f->resp[off++] = TPMA_SESSION_CONTINUESESSION;
        put16(f->resp, &off, 0);                /* hmac */
        finish_response(f, TPM2_ST_SESSIONS, off, TPM2_RC_SUCCESS);
}

/* The response auth area of a command with n sessions: an empty nonce,
 * continueSession, an empty HMAC each. */
static void put_auths(struct fake *f, size_t *off, unsigned n) {
        for (unsigned i = 0; i < n; i++) {
                put16(f->resp, off, 0);
                f->resp[(*off)++] = TPMA_SESSION_CONTINUESESSION;
                put16(f->resp, off, 0);
        }
}

/* The import's commands (lib/tpm.c tpm_import_step()), each answered with
 * a well-formed success that carries nothing but sizes. Returns false for
 * a command it does not know. */
static bool answer_import_command(struct fake *f, uint32_t cc, const uint8_t *cmd, size_t size) {
        size_t off = 10;
        switch (cc) {
        case TPM2_CC_StartAuthSession:
                put32(f->resp, &off, 0x03000000); /* the policy session */
                put16(f->resp, &off, 16);         /* nonceTPM */
                memset(f->resp + off, 0x5a, 16);
                off += 16;
                finish_response(f, TPM2_ST_NO_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        case TPM2_CC_PolicySecret:
                put32(f->resp, &off, 2 + 2 + 4 + 2); /* parameterSize */
                put16(f->resp, &off, 0);             /* timeout */
                put16(f->resp, &off, TPM2_ST_AUTH_SECRET);
                put32(f->resp, &off, TPM2_RH_NULL);
                put16(f->resp, &off, 0); /* ticket digest */
                put_auths(f, &off, 1);
                finish_response(f, TPM2_ST_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        case TPM2_CC_ActivateCredential:
                put32(f->resp, &off, 2 + 16);
                put16(f->resp, &off, 16); /* certInfo: the inner wrapper key */
                memset(f->resp + off, 0x11, 16);
                off += 16;
                put_auths(f, &off, 2);
                finish_response(f, TPM2_ST_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        case TPM2_CC_Import:
                put32(f->resp, &off, 2 + 4);
                put16(f->resp, &off, 4); /* outPrivate */
                memset(f->resp + off, 0x22, 4);
                off += 4;
                put_auths(f, &off, 1);
                finish_response(f, TPM2_ST_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        case TPM2_CC_Load:
                put32(f->resp, &off, FAKE_LOADED_HANDLE); /* objectHandle */
                put32(f->resp, &off, 2);
                put16(f->resp, &off, 0); /* name */
                put_auths(f, &off, 1);
                finish_response(f, TPM2_ST_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        case TPM2_CC_EvictControl: {
                FAKE_CHECK(size >= 22);
                size_t at = 22 + get32(cmd + 18);
                FAKE_CHECK(at + 4 <= size);
                if (get32(cmd + at) == AUTH_KEY_HANDLE)
                        f->key_present = get32(cmd + 14) != AUTH_KEY_HANDLE; /* evict, or persist */
                put32(f->resp, &off, 0);
                put_auths(f, &off, 1);
                finish_response(f, TPM2_ST_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        }
        case TPM2_CC_FlushContext:
                finish_response(f, TPM2_ST_NO_SESSIONS, off, TPM2_RC_SUCCESS);
                return true;
        default:
                return false;
        }
}

static TSS2_RC fake_transmit(TSS2_TCTI_CONTEXT *ctx, size_t size, const uint8_t *cmd) {
        struct fake *f = fake_of(ctx);
        pthread_mutex_lock(&f->lock);
        if (f->n_cmds == 0)
                f->tpm_thread = pthread_self();
        else if (!pthread_equal(f->tpm_thread, pthread_self()))
                f->other_thread = true;
        FAKE_CHECK(!(f->in_flight));
        FAKE_CHECK(size >= 10 && size <= FAKE_MAX_MESSAGE && get32(cmd + 2) == size);
        uint32_t cc = get32(cmd + 6);
        if (f->n_cmds < FAKE_LOG_MAX) {
                f->cc[f->n_cmds] = cc;
                f->handle[f->n_cmds] = size >= 14 ? get32(cmd + 10) : 0;
        }
        f->n_cmds++;
        if (f->fail_transmit > 0) {
                f->fail_transmit--;
                pthread_mutex_unlock(&f->lock);
                return TSS2_TCTI_RC_IO_ERROR;
        }
        switch (cc) {
        case TPM2_CC_GetCapability:
                answer_get_capability(f, cmd, size);
                break;
        case TPM2_CC_ReadPublic:
                answer_read_public(f, get32(cmd + 10));
                break;
        case TPM2_CC_HMAC:
                answer_hmac(f, cmd, size);
                break;
        default:
                if (!answer_import_command(f, cc, cmd, size))
                        error_response(f, TPM2_RC_COMMAND_CODE);
                break;
        }
        if (f->cut_response > 0) {
                f->cut_response--;
                f->resp_len = 8; /* less than a response header */
        }
        f->in_flight = true;
        pthread_mutex_unlock(&f->lock);
        return TSS2_RC_SUCCESS;
}

static TSS2_RC fake_receive(TSS2_TCTI_CONTEXT *ctx, size_t *size, uint8_t *response, int32_t timeout) {
        struct fake *f = fake_of(ctx);
        FAKE_CHECK(timeout == TSS2_TCTI_TIMEOUT_BLOCK); /* the worker only ever blocks */
        pthread_mutex_lock(&f->lock);
        FAKE_CHECK(f->in_flight);
        if (!response) {
                /* The size query comes first: the "TPM" works now. */
                if (f->hold) {
                        struct timespec until;
                        clock_gettime(CLOCK_REALTIME, &until);
                        until.tv_sec += FAKE_GATE_MAX_MS / 1000;
                        f->waiting++;
                        pthread_cond_broadcast(&f->cond);
                        while (f->hold)
                                if (pthread_cond_timedwait(&f->cond, &f->lock, &until) == ETIMEDOUT) {
                                        f->gate_timed_out = true;
                                        f->hold = false;
                                }
                        f->waiting--;
                }
                unsigned delay = f->delay_ms;
                pthread_mutex_unlock(&f->lock);
                if (delay)
                        usleep(delay * 1000);
                pthread_mutex_lock(&f->lock);
                *size = f->resp_len;
                pthread_mutex_unlock(&f->lock);
                return TSS2_RC_SUCCESS;
        }
        if (*size < f->resp_len) {
                pthread_mutex_unlock(&f->lock);
                return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
        }
        memcpy(response, f->resp, f->resp_len);
        *size = f->resp_len;
        f->in_flight = false;
        f->last_response_ns = now_ns();
        pthread_mutex_unlock(&f->lock);
        return TSS2_RC_SUCCESS;
}

static void fake_finalize(TSS2_TCTI_CONTEXT *ctx) {
        (void)ctx; /* the test owns the fake: tcti_source.close counts */
}

static int source_open(void *userdata, TSS2_TCTI_CONTEXT **ret) {
        struct fake *f = userdata;
        pthread_mutex_lock(&f->lock);
        int r = f->open_error;
        if (r == 0) {
                f->opens++;
                f->in_flight = false;
                *ret = (TSS2_TCTI_CONTEXT *)&f->tcti;
        }
        pthread_mutex_unlock(&f->lock);
        return r;
}

static void source_close(void *userdata, TSS2_TCTI_CONTEXT *tcti) {
        struct fake *f = userdata;
        FAKE_CHECK(tcti == (TSS2_TCTI_CONTEXT *)&f->tcti);
        pthread_mutex_lock(&f->lock);
        f->closes++;
        pthread_mutex_unlock(&f->lock);
}

static bool source_release(void *userdata, TSS2_TCTI_CONTEXT *tcti) {
        struct fake *f = userdata;
        FAKE_CHECK(tcti == (TSS2_TCTI_CONTEXT *)&f->tcti);
        pthread_mutex_lock(&f->lock);
        FAKE_CHECK(!(f->in_flight));
        f->releases++;
        f->cmds_at_release = f->n_cmds;
        f->release_ns = now_ns();
        pthread_mutex_unlock(&f->lock);
        return true;
}

/* ---- fixture ---------------------------------------------------------------- */

struct fixture {
        uv_loop_t loop;
        struct fake fake;
        struct tpm_tcti_source source;
        struct tpm_worker *w;
        pthread_t loop_thread;
        bool stopped;
        unsigned stopped_calls;
        uv_timer_t tick; /* wakes the loop while a test waits */
};

/* Lock-protected reads of the fake's counters. */
static unsigned fake_get(struct fixture *fx, const unsigned *field) {
        pthread_mutex_lock(&fx->fake.lock);
        unsigned v = *field;
        pthread_mutex_unlock(&fx->fake.lock);
        return v;
}

static void fake_set_hold(struct fixture *fx, bool hold) {
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.hold = hold;
        pthread_cond_broadcast(&fx->fake.cond);
        pthread_mutex_unlock(&fx->fake.lock);
}

/* Wait (from the test thread, without running the loop) until a command is
 * held at the gate: the worker thread is busy in the TPM. */
static void wait_held(struct fixture *fx) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += WAIT_MAX_MS / 1000;
        pthread_mutex_lock(&fx->fake.lock);
        while (fx->fake.waiting == 0)
                if (pthread_cond_timedwait(&fx->fake.cond, &fx->fake.lock, &until) == ETIMEDOUT)
                        break;
        unsigned waiting = fx->fake.waiting;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(waiting, 1);
}

static void tick_cb(uv_timer_t *t) {
        (void)t;
}

/* Run the loop until *flag (or WAIT_MAX_MS: fail). */
static void run_until(struct fixture *fx, const bool *flag) {
        int64_t deadline = now_ns() + (int64_t)WAIT_MAX_MS * 1000000;
        uv_timer_start(&fx->tick, tick_cb, 5, 5);
        while (!*flag && now_ns() < deadline)
                uv_run(&fx->loop, UV_RUN_ONCE);
        uv_timer_stop(&fx->tick);
        assert_true(*flag);
}

static void stopped_cb(void *userdata) {
        struct fixture *fx = userdata;
        fx->stopped = true;
        fx->stopped_calls++;
}

static struct fixture *fixture_new(unsigned max_queued) {
        struct fixture *fx = calloc(1, sizeof *fx);
        assert_non_null(fx);
        assert_int_equal(uv_loop_init(&fx->loop), 0);
        assert_int_equal(uv_timer_init(&fx->loop, &fx->tick), 0);
        fx->loop_thread = pthread_self();
        struct fake *f = &fx->fake;
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->cond, NULL);
        f->tcti.v1.magic = 0x66616b6574637469ULL; /* "faketcti" */
        f->tcti.v1.version = 2;
        f->tcti.v1.transmit = fake_transmit;
        f->tcti.v1.receive = fake_receive;
        f->tcti.v1.finalize = fake_finalize;
        f->key_present = true;
        fx->source = (struct tpm_tcti_source){ .open = source_open, .close = source_close,
                                               .release = source_release, .userdata = f };
        struct tpm_options o = { .tcti = "fake", .auth_key_index = TPM_AUTH_KEY_INDEX_DEFAULT,
                                 .tcti_source = &fx->source };
        assert_int_equal(tpm_worker_new(&fx->loop, &o, max_queued, &fx->w), 0);
        return fx;
}

/* Stop the worker (if the test did not), let the loop finish, and check that
 * nothing is left: uv_loop_close() == 0 means every handle was closed. */
static void fixture_free(struct fixture *fx) {
        if (!fx->stopped_calls && !fx->stopped) {
                tpm_worker_stop(fx->w, stopped_cb, fx);
                run_until(fx, &fx->stopped);
        }
        uv_close((uv_handle_t *)&fx->tick, NULL);
        uv_run(&fx->loop, UV_RUN_DEFAULT);
        assert_int_equal(fx->stopped_calls, 1);
        assert_int_equal(uv_loop_close(&fx->loop), 0);
        assert_false(fx->fake.gate_timed_out);
        assert_false(fx->fake.other_thread);
        assert_int_equal(fx->fake.opens, fx->fake.closes); /* every open TPM was closed */
        pthread_mutex_destroy(&fx->fake.lock);
        pthread_cond_destroy(&fx->fake.cond);
        free(fx);
}

/* ---- jobs --------------------------------------------------------------------- */

struct tjob {
        struct tpm_job job;
        struct fixture *fx;
        char data[32];
        unsigned calls;      /* done callbacks */
        unsigned order;      /* 1 + its place among all done callbacks */
        bool on_loop_thread; /* the done callback ran on the loop thread */
        bool after_stopped;  /* ... after the stopped callback */
        struct tpm_keys keys;
};

static unsigned done_seq;

static void tjob_done(struct tpm_job *job, void *userdata) {
        struct tjob *t = userdata;
        assert_ptr_equal(job, &t->job);
        t->calls++;
        t->order = ++done_seq;
        t->on_loop_thread = pthread_equal(pthread_self(), t->fx->loop_thread);
        t->after_stopped = t->fx->stopped;
}

static void tjob_init(struct tjob *t, struct fixture *fx, enum tpm_job_kind kind, const char *data) {
        memset(t, 0, sizeof *t);
        t->fx = fx;
        t->job.kind = kind;
        t->job.done = tjob_done;
        t->job.userdata = t;
        t->job.r = 1; /* not yet run */
        if (kind == TPM_JOB_START)
                t->job.keys_out = &t->keys;
        if (data) {
                snprintf(t->data, sizeof t->data, "%s", data);
                t->job.in = (const uint8_t *)t->data;
                t->job.in_len = strlen(t->data);
        }
}

static int submit(struct fixture *fx, struct tjob *t, enum tpm_job_kind kind, const char *data) {
        tjob_init(t, fx, kind, data);
        int r = tpm_worker_submit(fx->w, &t->job);
        assert_int_equal(t->calls, 0); /* never from inside submit */
        return r;
}

static void run_until_done(struct fixture *fx, struct tjob *t) {
        int64_t deadline = now_ns() + (int64_t)WAIT_MAX_MS * 1000000;
        uv_timer_start(&fx->tick, tick_cb, 5, 5);
        while (t->calls == 0 && now_ns() < deadline)
                uv_run(&fx->loop, UV_RUN_ONCE);
        uv_timer_stop(&fx->tick);
        assert_int_equal(t->calls, 1);
}

static void assert_signed(const struct tjob *t) {
        uint8_t md[SHA256_DIGEST_LEN];
        assert_int_equal(t->calls, 1);
        assert_int_equal(t->job.r, 0);
        sha256(t->data, strlen(t->data), md);
        assert_memory_equal(t->job.digest, md, sizeof md);
}

static void start_tpm(struct fixture *fx) {
        struct tjob s;
        assert_int_equal(submit(fx, &s, TPM_JOB_START, NULL), 0);
        run_until_done(fx, &s);
        assert_int_equal(s.job.r, 0);
}

/* ---- tests --------------------------------------------------------------------- */

/* START opens the TPM and reads EK/SRK; signatures run in submission order,
 * each answer goes to its own job, every done callback runs once on the
 * loop thread, and every command ran on one other thread. */
static void test_fifo_order(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob start, sign[10];
        done_seq = 0;

        assert_int_equal(submit(fx, &start, TPM_JOB_START, NULL), 0);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++) {
                char d[16];
                snprintf(d, sizeof d, "job %u", i);
                assert_int_equal(submit(fx, &sign[i], TPM_JOB_SIGN, d), 0);
        }
        run_until_done(fx, &sign[ELEMENTSOF(sign) - 1]);

        assert_int_equal(start.calls, 1);
        assert_int_equal(start.order, 1);
        assert_int_equal(start.job.r, 0);
        assert_true(start.on_loop_thread);
        struct tpm_public ek, srk;
        assert_int_equal(tpm_template_public(TPM_TEMPLATE_EK, &ek), 0);
        assert_int_equal(tpm_template_public(TPM_TEMPLATE_SRK, &srk), 0);
        assert_int_equal(start.keys.ek.len, ek.len);
        assert_memory_equal(start.keys.ek.buf, ek.buf, ek.len);
        assert_memory_equal(start.keys.srk.buf, srk.buf, srk.len);
        assert_false(start.keys.created_ek);
        assert_false(start.keys.created_srk);

        for (unsigned i = 0; i < ELEMENTSOF(sign); i++) {
                assert_signed(&sign[i]);
                assert_int_equal(sign[i].order, 2 + i);
                assert_true(sign[i].on_loop_thread);
                assert_string_equal(fx->fake.hmac_data[i], sign[i].data); /* the TPM saw them in order too */
        }
        assert_int_equal(fake_get(fx, &fx->fake.n_hmac), ELEMENTSOF(sign));
        assert_int_equal(tpm_worker_completed(fx->w), 1 + ELEMENTSOF(sign));
        assert_int_equal(tpm_worker_queued(fx->w), 0);
        assert_false(pthread_equal(fx->fake.tpm_thread, fx->loop_thread));
        /* the key was looked up once, before the first HMAC; then HMAC only */
        unsigned lookups = 0;
        for (unsigned i = 0; i < fx->fake.n_cmds; i++)
                if (fx->fake.cc[i] == TPM2_CC_ReadPublic && fx->fake.handle[i] == AUTH_KEY_HANDLE)
                        lookups++;
        assert_int_equal(lookups, 1);
        fixture_free(fx);
}

/* max_queued bounds the jobs waiting behind the running one: one more is
 * refused with -EAGAIN (and never completes), START and PING never are, and
 * a new limit applies at once. */
static void test_queue_limit(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(3);
        struct tjob sign[5], ping, start2, refused[2];
        start_tpm(fx);

        fake_set_hold(fx, true);
        assert_int_equal(submit(fx, &sign[0], TPM_JOB_SIGN, "running"), 0);
        wait_held(fx); /* sign[0] is in the TPM, not in the queue */
        for (unsigned i = 1; i <= 3; i++)
                assert_int_equal(submit(fx, &sign[i], TPM_JOB_SIGN, "queued"), 0);
        assert_int_equal(tpm_worker_queued(fx->w), 3);
        assert_int_equal(submit(fx, &refused[0], TPM_JOB_SIGN, "refused"), -EAGAIN);
        assert_int_equal(submit(fx, &refused[1], TPM_JOB_HAS_KEY, NULL), -EAGAIN);
        assert_int_equal(submit(fx, &ping, TPM_JOB_PING, NULL), 0);
        assert_int_equal(submit(fx, &start2, TPM_JOB_START, NULL), 0);
        assert_int_equal(tpm_worker_queued(fx->w), 3); /* internal jobs are not counted */
        tpm_worker_set_max_queued(fx->w, 4);
        assert_int_equal(submit(fx, &sign[4], TPM_JOB_SIGN, "queued"), 0);
        assert_int_equal(tpm_worker_queued(fx->w), 4);
        assert_int_equal(submit(fx, &refused[0], TPM_JOB_SIGN, "refused"), -EAGAIN);

        fake_set_hold(fx, false);
        run_until_done(fx, &sign[4]);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++)
                assert_signed(&sign[i]);
        assert_int_equal(ping.calls, 1);
        assert_int_equal(ping.job.r, 0);
        assert_int_equal(start2.calls, 1);
        assert_int_equal(start2.job.r, 0);
        assert_true(sign[3].order < ping.order && ping.order < start2.order && start2.order < sign[4].order);
        assert_int_equal(refused[0].calls, 0);
        assert_int_equal(refused[1].calls, 0);
        assert_int_equal(tpm_worker_queued(fx->w), 0);
        assert_int_equal(fake_get(fx, &fx->fake.opens), 1); /* START on an open TPM does not reopen it */
        fixture_free(fx);
}

/* Stop with jobs queued: new jobs are refused with -ESHUTDOWN, the queued
 * ones still run and complete before stopped, which runs once; the TPM is
 * closed and every handle is gone (uv_loop_close() == 0). */
static void test_stop_with_queued_jobs(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob start, sign[5], late;
        assert_int_equal(submit(fx, &start, TPM_JOB_START, NULL), 0);
        run_until_done(fx, &start);

        fake_set_hold(fx, true);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++)
                assert_int_equal(submit(fx, &sign[i], TPM_JOB_SIGN, i % 2 ? "odd" : "even"), 0);
        wait_held(fx);
        tpm_worker_stop(fx->w, stopped_cb, fx);
        assert_int_equal(submit(fx, &late, TPM_JOB_SIGN, "late"), -ESHUTDOWN);
        assert_int_equal(submit(fx, &late, TPM_JOB_PING, NULL), -ESHUTDOWN);
        assert_false(fx->stopped);

        fake_set_hold(fx, false);
        run_until(fx, &fx->stopped);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++) {
                assert_signed(&sign[i]);
                assert_false(sign[i].after_stopped);
        }
        assert_int_equal(late.calls, 0);
        assert_int_equal(fx->stopped_calls, 1);
        assert_int_equal(fake_get(fx, &fx->fake.closes), 1);
        fixture_free(fx);
}

/* Stop before the TPM was ever opened, and stop while idle with the
 * connection kept: both end cleanly. */
static void test_stop_idle(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        fixture_free(fx); /* never started */

        fx = fixture_new(64);
        start_tpm(fx);
        tpm_worker_stop(fx->w, stopped_cb, fx);
        run_until(fx, &fx->stopped);
        assert_int_equal(fake_get(fx, &fx->fake.closes), 1);
        fixture_free(fx);
}

/* A done callback may submit the next job and free its own: a chain of
 * heap jobs, each submitted from the previous one's callback. */
struct chain {
        struct tpm_job job;
        struct fixture *fx;
        unsigned left;
        unsigned *done_count;
        bool *finished;
};

static void chain_done(struct tpm_job *job, void *userdata) {
        struct chain *c = userdata;
        assert_int_equal(job->r, 0);
        (*c->done_count)++;
        if (c->left > 0) {
                struct chain *n = calloc(1, sizeof *n);
                assert_non_null(n);
                *n = (struct chain){ .job = { .kind = TPM_JOB_SIGN, .in = (const uint8_t *)"chain", .in_len = 5,
                                              .done = chain_done },
                                     .fx = c->fx, .left = c->left - 1, .done_count = c->done_count,
                                     .finished = c->finished };
                n->job.userdata = n;
                assert_int_equal(tpm_worker_submit(c->fx->w, &n->job), 0);
        } else {
                *c->finished = true;
        }
        free(c); /* the job is caller-owned: the worker must not touch it after done */
}

static void test_done_may_submit_and_free(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(1);
        unsigned count = 0;
        bool finished = false;
        start_tpm(fx);
        struct chain *c = calloc(1, sizeof *c);
        assert_non_null(c);
        *c = (struct chain){ .job = { .kind = TPM_JOB_SIGN, .in = (const uint8_t *)"chain", .in_len = 5,
                                      .done = chain_done },
                             .fx = fx, .left = 9, .done_count = &count, .finished = &finished };
        c->job.userdata = c;
        assert_int_equal(tpm_worker_submit(fx->w, &c->job), 0);
        run_until(fx, &finished);
        assert_int_equal(count, 10);
        assert_int_equal(fake_get(fx, &fx->fake.n_hmac), 10);
        fixture_free(fx);
}

/* The loop keeps running while a command takes long: a loop timer fires
 * while the worker is held in the TPM (it is what lets it go), and slow
 * responses still arrive in order. */
static bool gate_opened;

static void open_gate_cb(uv_timer_t *t) {
        struct fixture *fx = t->data;
        fake_set_hold(fx, false);
        gate_opened = true;
}

static void test_loop_runs_while_tpm_busy(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob sign[3];
        uv_timer_t gate;
        start_tpm(fx);

        fake_set_hold(fx, true);
        assert_int_equal(submit(fx, &sign[0], TPM_JOB_SIGN, "held"), 0);
        wait_held(fx);
        gate_opened = false;
        assert_int_equal(uv_timer_init(&fx->loop, &gate), 0);
        gate.data = fx;
        assert_int_equal(uv_timer_start(&gate, open_gate_cb, 10, 0), 0);
        run_until_done(fx, &sign[0]);
        assert_true(gate_opened);
        assert_signed(&sign[0]);

        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.delay_ms = 20;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &sign[1], TPM_JOB_SIGN, "slow 1"), 0);
        assert_int_equal(submit(fx, &sign[2], TPM_JOB_SIGN, "slow 2"), 0);
        run_until_done(fx, &sign[2]);
        assert_signed(&sign[1]);
        assert_signed(&sign[2]);
        assert_true(sign[1].order < sign[2].order);
        uv_close((uv_handle_t *)&gate, NULL);
        fixture_free(fx);
}

/* The kept connection is given back TPM_IDLE_RELEASE_MS after the last job,
 * once, from the worker thread, and not between jobs that follow each
 * other; the next job works after a release. */
static void wait_releases(struct fixture *fx, unsigned n) {
        for (int i = 0; i < WAIT_MAX_MS && fake_get(fx, &fx->fake.releases) < n; i++)
                usleep(1000);
        assert_int_equal(fake_get(fx, &fx->fake.releases), n);
}

static void test_idle_release(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob sign[6];
        start_tpm(fx);
        wait_releases(fx, 1);
        pthread_mutex_lock(&fx->fake.lock);
        int64_t idle_ns = fx->fake.release_ns - fx->fake.last_response_ns;
        assert_int_equal(fx->fake.cmds_at_release, fx->fake.n_cmds);
        pthread_mutex_unlock(&fx->fake.lock);
        assert_true(idle_ns >= (int64_t)TPM_IDLE_RELEASE_MS * 1000000);
        usleep(20 * 1000);
        assert_int_equal(fake_get(fx, &fx->fake.releases), 1); /* once per idle period */

        /* a burst: queued behind a held one, so the queue never runs dry */
        fake_set_hold(fx, true);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++)
                assert_int_equal(submit(fx, &sign[i], TPM_JOB_SIGN, "burst"), 0);
        wait_held(fx);
        fake_set_hold(fx, false);
        run_until_done(fx, &sign[ELEMENTSOF(sign) - 1]);
        wait_releases(fx, 2);
        pthread_mutex_lock(&fx->fake.lock);
        assert_int_equal(fx->fake.cmds_at_release, fx->fake.n_cmds); /* after the last command, not between */
        assert_int_equal(fx->fake.n_hmac, ELEMENTSOF(sign));
        pthread_mutex_unlock(&fx->fake.lock);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++)
                assert_signed(&sign[i]);
        fixture_free(fx);
}


/* The lost hook's record: how often, for which job, in which order. */
struct lost_seen {
        unsigned calls, order;
        const struct tpm_job *job;
};

static void lost_hook(const struct tpm_job *job, void *userdata) {
        struct lost_seen *l = userdata;
        l->calls++;
        l->job = job;
        l->order = ++done_seq;
}

/* TPM and TCTI failures come back as job->r and job->err. */
static void test_errors(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob t;
        struct lost_seen lost = { 0 };

        /* the TPM cannot be opened: START fails, jobs before a good START get -ENODEV */
        fx->fake.open_error = -ECONNREFUSED;
        assert_int_equal(submit(fx, &t, TPM_JOB_START, NULL), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -EIO);
        assert_string_equal(t.job.err.step, "tpm_open");
        assert_non_null(strstr(t.job.err.msg, "fake"));
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "x"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENODEV);
        assert_string_equal(t.job.err.step, "TPM connection");
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.open_error = 0;
        pthread_mutex_unlock(&fx->fake.lock);
        start_tpm(fx);

        /* a TPM error code */
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.hmac_codes[fx->fake.n_hmac_codes++] = TPM2_RC_LOCKOUT;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "locked"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -EPERM);
        assert_int_equal(t.job.err.rc, TPM2_RC_LOCKOUT);
        assert_string_equal(t.job.err.step, "TPM2_HMAC");
        assert_non_null(strstr(t.job.err.msg, "dictionary-attack lockout"));

        /* the connection fails mid-command: -ENOTCONN and lost, with the
         * TCTI's code; the worker closed the TPM, the lost hook ran before
         * the job's done, and jobs get -ENODEV until a START reopens it */
        tpm_worker_on_lost(fx->w, lost_hook, &lost);
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.fail_transmit = 1;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "io"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENOTCONN);
        assert_true(t.job.lost);
        assert_int_equal(t.job.err.rc, TSS2_TCTI_RC_IO_ERROR);
        assert_string_equal(t.job.err.step, "TPM2_HMAC");
        assert_non_null(strstr(t.job.err.msg, "lost the connection to the TPM"));
        assert_int_equal(lost.calls, 1);
        assert_ptr_equal(lost.job, &t.job);
        assert_int_equal(lost.order + 1, t.order); /* the hook first: its reconnect goes ahead */
        assert_int_equal(fake_get(fx, &fx->fake.closes), 1);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "closed"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENODEV);
        assert_false(t.job.lost);
        assert_int_equal(lost.calls, 1);
        start_tpm(fx);

        /* a response out of step (cut short): SAPI's code, the same -ENOTCONN and close */
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.cut_response = 1;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "cut"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENOTCONN);
        assert_true(t.job.lost);
        assert_int_equal(t.job.err.rc & TSS2_RC_LAYER_MASK, TSS2_SYS_RC_LAYER);
        assert_non_null(strstr(t.job.err.msg, "lost the connection to the TPM"));
        assert_int_equal(lost.calls, 2);
        assert_int_equal(fake_get(fx, &fx->fake.closes), 2);
        start_tpm(fx);
        assert_int_equal(fake_get(fx, &fx->fake.opens), 3);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "reopened"), 0); /* the key is known again */
        run_until_done(fx, &t);
        assert_signed(&t);

        /* the key was evicted: -ENOKEY, then looked up again (and found missing) */
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.key_present = false;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "gone"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENOKEY);
        assert_non_null(strstr(t.job.err.msg, "is gone"));
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "gone"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENOKEY);
        assert_non_null(strstr(t.job.err.msg, "not provisioned yet"));
        assert_int_equal(submit(fx, &t, TPM_JOB_HAS_KEY, NULL), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, 0);
        assert_false(t.job.present);
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.key_present = true;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "back"), 0);
        run_until_done(fx, &t);
        assert_signed(&t);

        /* a failed PING closes the TPM; jobs get -ENODEV until a START reopens it */
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.ping_code = TPM2_RC_FAILURE;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_PING, NULL), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -EIO);
        assert_int_equal(t.job.err.rc, TPM2_RC_FAILURE);
        assert_int_equal(fake_get(fx, &fx->fake.closes), 3);
        assert_false(t.job.lost); /* the TPM said no: closed, but not a broken connection */
        assert_int_equal(lost.calls, 2);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "closed"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -ENODEV);
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.ping_code = 0;
        pthread_mutex_unlock(&fx->fake.lock);
        start_tpm(fx);
        assert_int_equal(fake_get(fx, &fx->fake.opens), 4); /* start, after the I/O failure, the cut response, this START */
        assert_int_equal(submit(fx, &t, TPM_JOB_PING, NULL), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, 0);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "reopened"), 0);
        run_until_done(fx, &t);
        assert_signed(&t);
        fixture_free(fx);
}

/* TPM_RC_RETRY, _YIELDED and _TESTING: the command is sent again, up to 5
 * times in all; then the caller gets -EAGAIN ("busy") with the code, and the
 * next command works. */
static void test_retry(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob t;
        start_tpm(fx);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "warm"), 0); /* the key lookup, out of the way */
        run_until_done(fx, &t);
        assert_signed(&t);

        pthread_mutex_lock(&fx->fake.lock);
        unsigned base = fx->fake.n_hmac;
        fx->fake.hmac_codes[0] = TPM2_RC_RETRY;
        fx->fake.hmac_codes[1] = TPM2_RC_YIELDED;
        fx->fake.hmac_codes[2] = TPM2_RC_TESTING;
        fx->fake.n_hmac_codes = 3;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "again"), 0);
        run_until_done(fx, &t);
        assert_signed(&t);
        assert_int_equal(fake_get(fx, &fx->fake.n_hmac) - base, 4);
        for (unsigned i = base; i < base + 4; i++)
                assert_string_equal(fx->fake.hmac_data[i], "again"); /* the same command each time */

        pthread_mutex_lock(&fx->fake.lock);
        base = fx->fake.n_hmac;
        for (unsigned i = 0; i < 5; i++)
                fx->fake.hmac_codes[i] = TPM2_RC_RETRY;
        fx->fake.n_hmac_codes = 5;
        pthread_mutex_unlock(&fx->fake.lock);
        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "busy"), 0);
        run_until_done(fx, &t);
        assert_int_equal(t.job.r, -EAGAIN);
        assert_int_equal(t.job.err.rc, TPM2_RC_RETRY);
        assert_non_null(strstr(t.job.err.msg, "the TPM is busy"));
        assert_int_equal(fake_get(fx, &fx->fake.n_hmac) - base, 5);
        assert_int_equal(fake_get(fx, &fx->fake.n_hmac_codes), 0);

        assert_int_equal(submit(fx, &t, TPM_JOB_SIGN, "fine"), 0);
        run_until_done(fx, &t);
        assert_signed(&t);
        fixture_free(fx);
}

/* ---- imports in steps ------------------------------------------------------------ */

/* A well-formed authenticationKey blob as far as the parser and
 * tpm_import_begin() look (the fake TPM does not decrypt anything). */
static size_t make_blob(uint8_t *b, size_t cap) {
        TPM2B_PUBLIC pub = { 0 };
        pub.publicArea.type = TPM2_ALG_KEYEDHASH;
        pub.publicArea.nameAlg = TPM2_ALG_SHA256;
        pub.publicArea.objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_USERWITHAUTH;
        pub.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
        pub.publicArea.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
        pub.publicArea.unique.keyedHash.size = 32;
        size_t off = 0;
        for (int e = 0; e < 4; e++) { /* credential, secret, duplicate, seed: 4 bytes each */
                put16(b, &off, 4);
                memset(b + off, 0x30 + e, 4);
                off += 4;
        }
        assert_int_equal(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, b, cap, &off), TSS2_RC_SUCCESS);
        put16(b, &off, 0); /* no encrypted URI */
        return off;
}

static uint8_t blob[512];

#define STAGING_INDEX (TPM_AUTH_KEY_INDEX_DEFAULT + 1) /* a slot that does not serve */

/* An import into the staging slot (background work, run in steps), or with
 * serving into the serving slot (one job). */
static void submit_import_to(struct fixture *fx, struct tjob *t, bool serving) {
        tjob_init(t, fx, TPM_JOB_IMPORT, NULL);
        t->job.in = blob;
        t->job.in_len = make_blob(blob, sizeof blob);
        t->job.has_key_index = !serving;
        t->job.key_index = STAGING_INDEX;
        assert_int_equal(tpm_worker_submit(fx->w, &t->job), 0);
}

static void submit_import(struct fixture *fx, struct tjob *t) {
        submit_import_to(fx, t, false);
}

static unsigned index_of(const struct fake *f, uint32_t cc, unsigned nth) {
        for (unsigned i = 0; i < f->n_cmds && i < FAKE_LOG_MAX; i++)
                if (f->cc[i] == cc && nth-- == 0)
                        return i;
        fail_msg("command 0x%x not seen", cc);
        return 0;
}

/* An import into the staging slot (background work) runs as steps:
 * signatures that arrive while its first command runs go right after that
 * command, not after the whole import, and answer first; a job that is not
 * a signature keeps its FIFO place behind the import. An import into the
 * serving slot is one job: a signature sent during it waits for all of it
 * (and so signs with the new key). */
static void test_sign_between_import_steps(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob imp, sign[2], has, warm;
        done_seq = 0;
        start_tpm(fx);
        assert_int_equal(submit(fx, &warm, TPM_JOB_SIGN, "warm"), 0); /* the key's one lookup */
        run_until_done(fx, &warm);
        unsigned base = fake_get(fx, &fx->fake.n_cmds);

        fake_set_hold(fx, true);
        submit_import(fx, &imp);
        wait_held(fx); /* TPM2_StartAuthSession runs */
        assert_int_equal(submit(fx, &sign[0], TPM_JOB_SIGN, "fg 0"), 0);
        assert_int_equal(submit(fx, &has, TPM_JOB_HAS_KEY, NULL), 0);
        assert_int_equal(submit(fx, &sign[1], TPM_JOB_SIGN, "fg 1"), 0);
        fake_set_hold(fx, false);
        run_until_done(fx, &sign[1]);

        assert_int_equal(imp.job.r, 0);
        assert_signed(&sign[0]);
        assert_signed(&sign[1]);
        assert_true(has.job.present);
        const struct fake *f = &fx->fake;
        static const uint32_t want[] = {
                TPM2_CC_StartAuthSession, TPM2_CC_HMAC /* fg 0 */, TPM2_CC_PolicySecret, TPM2_CC_ActivateCredential,
                TPM2_CC_FlushContext, TPM2_CC_Import, TPM2_CC_Load, TPM2_CC_ReadPublic /* the staging slot: empty */,
                TPM2_CC_EvictControl, TPM2_CC_FlushContext, TPM2_CC_ReadPublic /* HAS_KEY */, TPM2_CC_HMAC /* fg 1 */,
        };
        /* fg 1 sits behind HAS_KEY, which keeps its place behind the import */
        assert_int_equal(f->n_cmds - base, ELEMENTSOF(want));
        for (unsigned i = 0; i < ELEMENTSOF(want); i++)
                if (f->cc[base + i] != want[i])
                        fail_msg("command %u: 0x%x, expected 0x%x", i, f->cc[base + i], want[i]);
        assert_string_equal(f->hmac_data[1], "fg 0");
        assert_true(sign[0].order < imp.order); /* answered before the import */
        assert_true(imp.order < has.order && has.order < sign[1].order);
        assert_true(f->key_present);

        /* into the serving slot, replacing its key: the signature waits */
        base = fake_get(fx, &fx->fake.n_cmds);
        fake_set_hold(fx, true);
        submit_import_to(fx, &imp, true);
        wait_held(fx);
        assert_int_equal(submit(fx, &sign[0], TPM_JOB_SIGN, "after"), 0);
        fake_set_hold(fx, false);
        run_until_done(fx, &sign[0]);
        assert_int_equal(imp.job.r, 0);
        assert_signed(&sign[0]);
        assert_true(imp.order < sign[0].order);
        static const uint32_t whole[] = {
                TPM2_CC_StartAuthSession, TPM2_CC_PolicySecret, TPM2_CC_ActivateCredential, TPM2_CC_FlushContext,
                TPM2_CC_Import, TPM2_CC_Load, /* no lookup: HAS_KEY above saw the key */
                TPM2_CC_HMAC /* check: a key is replaced */, TPM2_CC_EvictControl, TPM2_CC_EvictControl,
                TPM2_CC_FlushContext, TPM2_CC_HMAC /* "after" */,
        };
        assert_int_equal(f->n_cmds - base, ELEMENTSOF(whole));
        for (unsigned i = 0; i < ELEMENTSOF(whole); i++)
                if (f->cc[base + i] != whole[i])
                        fail_msg("command %u: 0x%x, expected 0x%x", i, f->cc[base + i], whole[i]);
        fixture_free(fx);
}

/* A flood of signatures cannot stall the import: after each of its steps at
 * most TPM_WORKER_SIGNS_BETWEEN_STEPS signatures run before the next step. */
static void test_import_not_starved(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob imp, sign[TPM_WORKER_SIGNS_BETWEEN_STEPS + 3];
        done_seq = 0;
        start_tpm(fx);

        fake_set_hold(fx, true);
        submit_import(fx, &imp);
        wait_held(fx);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++) {
                char d[16];
                snprintf(d, sizeof d, "s%u", i);
                assert_int_equal(submit(fx, &sign[i], TPM_JOB_SIGN, d), 0);
        }
        fake_set_hold(fx, false);
        run_until_done(fx, &imp);
        run_until_done(fx, &sign[ELEMENTSOF(sign) - 1]);
        for (unsigned i = 0; i < ELEMENTSOF(sign); i++)
                assert_signed(&sign[i]);
        assert_int_equal(imp.job.r, 0);
        const struct fake *f = &fx->fake;
        unsigned session = index_of(f, TPM2_CC_StartAuthSession, 0), policy = index_of(f, TPM2_CC_PolicySecret, 0),
                 activate = index_of(f, TPM2_CC_ActivateCredential, 0);
        unsigned hmacs = 0; /* the first signature also looks the key up (ReadPublic) */
        for (unsigned i = session + 1; i < policy; i++)
                hmacs += f->cc[i] == TPM2_CC_HMAC;
        assert_int_equal(hmacs, TPM_WORKER_SIGNS_BETWEEN_STEPS);
        assert_int_equal(activate - policy - 1, 3); /* the rest, then the import's next step */
        fixture_free(fx);
}

/* A connection that breaks under a signature between two steps takes the
 * import with it: both fail, the TPM is closed, and the next START opens it
 * again for a clean import. */
static void test_import_lost_between_steps(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob imp, sign, again;
        start_tpm(fx);

        fake_set_hold(fx, true);
        submit_import(fx, &imp);
        wait_held(fx);
        assert_int_equal(submit(fx, &sign, TPM_JOB_SIGN, "cut"), 0);
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.fail_transmit = 1; /* the signature's HMAC */
        pthread_mutex_unlock(&fx->fake.lock);
        fake_set_hold(fx, false);
        run_until_done(fx, &imp);
        assert_int_equal(sign.job.r, -ENOTCONN);
        assert_true(sign.job.lost);
        assert_int_equal(imp.job.r, -ENOTCONN);
        assert_true(sign.order < imp.order);
        assert_int_equal(fake_get(fx, &fx->fake.closes), 1);
        start_tpm(fx);
        submit_import(fx, &again);
        run_until_done(fx, &again);
        assert_int_equal(again.job.r, 0);
        fixture_free(fx);
}

static void expect_cmds(const struct fake *f, unsigned from, const uint32_t *want, size_t n) {
        assert_int_equal(f->n_cmds - from, n);
        for (unsigned i = 0; i < n; i++)
                if (f->cc[from + i] != want[i])
                        fail_msg("command %u: 0x%x, expected 0x%x", i, f->cc[from + i], want[i]);
}

/* The DPS challenge key (TPM_AUTH_KEY_TRANSIENT) is imported and kept
 * loaded: no check, no NV write, no flush; it signs on its transient
 * handle; PERSIST makes it the key of a slot seen empty with one NV write
 * and no lookup; then that slot signs with no lookup either. */
static void test_challenge_key_and_empty_slot(void **state) {
        (void)state;
        struct fixture *fx = fixture_new(64);
        struct tjob has, imp, sign, persist, sign2;
        const struct fake *f = &fx->fake;
        start_tpm(fx);
        pthread_mutex_lock(&fx->fake.lock);
        fx->fake.key_present = false;
        pthread_mutex_unlock(&fx->fake.lock);

        assert_int_equal(submit(fx, &has, TPM_JOB_HAS_KEY, NULL), 0);
        run_until_done(fx, &has);
        assert_false(has.job.present); /* the slot is seen empty */

        unsigned base = fake_get(fx, &fx->fake.n_cmds);
        tjob_init(&imp, fx, TPM_JOB_IMPORT, NULL);
        imp.job.in = blob;
        imp.job.in_len = make_blob(blob, sizeof blob);
        imp.job.has_key_index = true;
        imp.job.key_index = TPM_AUTH_KEY_TRANSIENT;
        assert_int_equal(tpm_worker_submit(fx->w, &imp.job), 0);
        run_until_done(fx, &imp);
        assert_int_equal(imp.job.r, 0);
        static const uint32_t import_cmds[] = {
                TPM2_CC_StartAuthSession, TPM2_CC_PolicySecret, TPM2_CC_ActivateCredential,
                TPM2_CC_FlushContext,     TPM2_CC_Import,       TPM2_CC_Load,
        };
        expect_cmds(f, base, import_cmds, ELEMENTSOF(import_cmds));

        base = fake_get(fx, &fx->fake.n_cmds);
        tjob_init(&sign, fx, TPM_JOB_SIGN, "dps sas");
        sign.job.has_key_index = true;
        sign.job.key_index = TPM_AUTH_KEY_TRANSIENT;
        assert_int_equal(tpm_worker_submit(fx->w, &sign.job), 0);
        run_until_done(fx, &sign);
        assert_signed(&sign);
        assert_int_equal(f->n_cmds - base, 1);
        assert_int_equal(f->handle[base], FAKE_LOADED_HANDLE);

        base = fake_get(fx, &fx->fake.n_cmds);
        tjob_init(&persist, fx, TPM_JOB_PERSIST, NULL);
        persist.job.key_index = TPM_AUTH_KEY_INDEX_DEFAULT;
        assert_int_equal(tpm_worker_submit(fx->w, &persist.job), 0);
        run_until_done(fx, &persist);
        assert_int_equal(persist.job.r, 0);
        static const uint32_t persist_cmds[] = { TPM2_CC_EvictControl, TPM2_CC_FlushContext };
        expect_cmds(f, base, persist_cmds, ELEMENTSOF(persist_cmds));
        assert_true(f->key_present);

        base = fake_get(fx, &fx->fake.n_cmds);
        assert_int_equal(submit(fx, &sign2, TPM_JOB_SIGN, "hub sas"), 0);
        run_until_done(fx, &sign2);
        assert_signed(&sign2);
        assert_int_equal(f->n_cmds - base, 1); /* HMAC only: the slot is known to hold the key */
        assert_int_equal(f->handle[base], AUTH_KEY_HANDLE);

        /* no challenge key any more: its signature says so */
        tjob_init(&sign, fx, TPM_JOB_SIGN, "late");
        sign.job.has_key_index = true;
        sign.job.key_index = TPM_AUTH_KEY_TRANSIENT;
        assert_int_equal(tpm_worker_submit(fx->w, &sign.job), 0);
        run_until_done(fx, &sign);
        assert_int_equal(sign.job.r, -ENOKEY);
        fixture_free(fx);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fifo_order),
                cmocka_unit_test(test_queue_limit),
                cmocka_unit_test(test_stop_with_queued_jobs),
                cmocka_unit_test(test_stop_idle),
                cmocka_unit_test(test_done_may_submit_and_free),
                cmocka_unit_test(test_loop_runs_while_tpm_busy),
                cmocka_unit_test(test_idle_release),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_retry),
                cmocka_unit_test(test_sign_between_import_steps),
                cmocka_unit_test(test_import_not_starved),
                cmocka_unit_test(test_import_lost_between_steps),
                cmocka_unit_test(test_challenge_key_and_empty_slot),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
