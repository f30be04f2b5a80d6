/* The TPM's one owner: one worker thread that runs every TPM command with
 * blocking calls, fed by one bounded FIFO and answering through one
 * uv_async_t. See tpm-worker.h. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tpm-worker.h"

#include "log.h"
#include "util.h"

struct tpm_worker {
        uv_loop_t *loop;
        uv_async_t async; /* thread -> loop: jobs done, or the thread exited */
        pthread_t thread;

        /* copies of the options (tpm_open keeps only what it needs) */
        char *tcti, *endorsement_auth, *owner_auth;
        struct tpm_options opts;

        pthread_mutex_t lock; /* held only to move jobs between lists, never across a TPM call */
        pthread_cond_t cond;  /* on CLOCK_MONOTONIC: the thread's idle deadline is a timed wait on it */
        /* under lock */
        struct tpm_job *queue_head, *queue_tail; /* submitted, not started: the FIFO */
        unsigned n_queued;                       /* user jobs among them (START/PING not counted) */
        struct tpm_job *done_head, *done_tail;   /* run, done callback not called yet */
        bool stopping;                           /* the thread exits once the FIFO is empty */
        bool exited;                             /* the thread has closed the TPM and is returning */

        /* loop thread only */
        unsigned max_queued;
        bool stop_requested;
        bool joined;
        void (*stopped)(void *userdata);
        void *stopped_userdata;
        void (*lost)(const struct tpm_job *job, void *userdata);
        void *lost_userdata;

        atomic_uint_fast64_t completed; /* read by the watchdog */

        /* worker thread only */
        struct tpm *tpm;
        uint32_t serving_index; /* slot of jobs without has_key_index (TPM_JOB_SET_SERVING); survives reopening */
};

static bool job_counts(const struct tpm_job *job) {
        return job->kind == TPM_JOB_SIGN || job->kind == TPM_JOB_IMPORT || job->kind == TPM_JOB_HAS_KEY ||
               job->kind == TPM_JOB_EVICT || job->kind == TPM_JOB_PERSIST;
}

static void set_err(struct tpm_error *err, const char *step, const char *msg) {
        memset(err, 0, sizeof *err);
        snprintf(err->step, sizeof err->step, "%s", step);
        snprintf(err->msg, sizeof err->msg, "%s", msg);
}

/* ---- the worker thread ------------------------------------------------------ */

/* Runs on the worker thread: the only place that touches w->tpm. */
static void run_job_on_tpm(struct tpm_worker *w, struct tpm_job *job) {
        if (job->kind == TPM_JOB_START) {
                struct tpm_keys k = { 0 };
                if (!w->tpm) {
                        job->r = tpm_open(&w->opts, &w->tpm, &job->err);
                        if (job->r < 0)
                                return;
                        if (tpm_leftovers_flushed(w->tpm) > 0)
                                log_warn("flushed %u transient object(s)/session(s) a previous run left in the TPM",
                                         tpm_leftovers_flushed(w->tpm));
                }
                job->r = tpm_ensure_primary_keys(w->tpm, &k.created_ek, &k.created_srk, &job->err);
                if (job->r >= 0)
                        job->r = tpm_get_keys(w->tpm, &k.ek, &k.srk, &job->err);
                if (job->r < 0) {
                        /* Start over with a fresh connection on the next attempt. */
                        w->tpm = tpm_close(w->tpm);
                        return;
                }
                if (job->keys_out)
                        *job->keys_out = k;
                return;
        }

        if (job->kind == TPM_JOB_SET_SERVING) {
                w->serving_index = job->key_index; /* no TPM command: valid while the TPM is closed too */
                return;
        }
        if (!w->tpm) {
                job->r = -ENODEV;
                set_err(&job->err, "TPM connection", "the TPM is not open yet (still starting or reconnecting)");
                return;
        }

        uint32_t index = job->has_key_index ? job->key_index : w->serving_index;
        switch (job->kind) {
        case TPM_JOB_SIGN:
                job->r = tpm_sign_at(w->tpm, index, job->in, job->in_len, job->digest, &job->err);
                break;
        case TPM_JOB_IMPORT:
                job->r = tpm_import_auth_key_at(w->tpm, index, job->in, job->in_len, &job->err);
                break;
        case TPM_JOB_HAS_KEY:
                job->r = tpm_has_auth_key_at(w->tpm, index, &job->present, &job->err);
                break;
        case TPM_JOB_EVICT:
                job->r = tpm_evict_auth_key_at(w->tpm, job->key_index, &job->present, &job->err);
                break;
        case TPM_JOB_PERSIST:
                job->r = tpm_persist_challenge_key_at(w->tpm, job->key_index, &job->err);
                break;
        case TPM_JOB_PING:
                job->r = tpm_ping(w->tpm, &job->err);
                if (job->r < 0)
                        w->tpm = tpm_close(w->tpm);
                break;
        case TPM_JOB_START:
        case TPM_JOB_SET_SERVING: /* handled above */
                break;
        }
}

/* One job, then the one check for a connection that broke under it
 * (tpm_lost()): whatever the verb made of the failure, the job says
 * -ENOTCONN and lost, the TPM is closed here, and until a START opens it
 * again every job gets -ENODEV. The manager hears of it before the job's
 * own done callback (tpm_worker_on_lost()). */
static void run_job(struct tpm_worker *w, struct tpm_job *job) {
        memset(&job->err, 0, sizeof job->err);
        job->r = 0;
        job->lost = false;
        run_job_on_tpm(w, job);
        if (!tpm_lost(w->tpm))
                return;
        w->tpm = tpm_close(w->tpm);
        job->lost = true;
        if (job->r >= 0) {
                /* the command's own result came before the break (a later
                 * step, e.g. a cleanup flush, hit it): still a failed job */
                job->r = -ENOTCONN;
                set_err(&job->err, "TPM connection", "lost the connection to the TPM after the command");
        } else
                job->r = -ENOTCONN;
}

/* now + ms on CLOCK_MONOTONIC, the clock of w->cond. */
static struct timespec deadline_after_ms(unsigned ms) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

/* Hand a finished job to the loop thread (called without the lock). One
 * wake-up of the loop per job: a signature's answer does not wait for the
 * jobs queued behind it. */
static void finish_job(struct tpm_worker *w, struct tpm_job *job) {
        pthread_mutex_lock(&w->lock);
        job->next = NULL;
        if (w->done_tail)
                w->done_tail->next = job;
        else
                w->done_head = job;
        w->done_tail = job;
        pthread_mutex_unlock(&w->lock);
        uv_async_send(&w->async);
}

/* Background work that signatures may overtake: an import into a slot that
 * does not serve (the provisioning driver's staging slot, the DPS challenge
 * key). An import into the serving slot replaces the key that signs, so a
 * signature sent after it waits for it and gets the new key (one job). */
static bool import_is_background(const struct tpm_worker *w, const struct tpm_job *job) {
        return job->has_key_index && (job->key_index == TPM_AUTH_KEY_TRANSIENT || job->key_index != w->serving_index);
}

/* One step (one TPM command) of the background import bg. Returns true
 * while more steps follow; else bg is finished. */
static bool import_step(struct tpm_worker *w, struct tpm_job *bg, struct tpm_import_op **op) {
        int r = tpm_import_step(w->tpm, *op, &bg->err);
        if (r <= 0)
                *op = NULL; /* freed by the step */
        if (tpm_lost(w->tpm)) {
                tpm_import_abort(NULL, *op); /* its handles died with the connection */
                *op = NULL;
                w->tpm = tpm_close(w->tpm);
                bg->lost = true;
                if (r >= 0)
                        set_err(&bg->err, "TPM connection", "lost the connection to the TPM after the command");
                r = -ENOTCONN;
        }
        if (r > 0)
                return true;
        bg->r = r;
        finish_job(w, bg);
        return false;
}

static void *worker_main(void *arg) {
        struct tpm_worker *w = arg;
        /* A job ran since the TPM was last given back: release it at idle_at
         * unless another job comes first. */
        bool holding = false;
        struct timespec idle_at = { 0 };
        /* The import in progress, one TPM command per step (tpm_import_step()):
         * between two steps the signatures at the head of the FIFO go first
         * (at most TPM_WORKER_SIGNS_BETWEEN_STEPS), so a signature waits for
         * one command of it, not for the whole import. Every other job keeps
         * its place behind the import. */
        struct tpm_job *bg = NULL;
        struct tpm_import_op *bg_op = NULL;
        unsigned signs_since_step = 0;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                struct tpm_job *job = w->queue_head;
                if (bg && !(job && job->kind == TPM_JOB_SIGN && signs_since_step < TPM_WORKER_SIGNS_BETWEEN_STEPS)) {
                        pthread_mutex_unlock(&w->lock);
                        signs_since_step = 0;
                        if (!import_step(w, bg, &bg_op))
                                bg = NULL;
                        holding = true;
                        idle_at = deadline_after_ms(TPM_IDLE_RELEASE_MS);
                        pthread_mutex_lock(&w->lock);
                        continue;
                }
                if (!job) {
                        if (w->stopping)
                                break; /* drained */
                        if (!holding) {
                                pthread_cond_wait(&w->cond, &w->lock);
                                continue;
                        }
                        /* A wake-up without a job (spurious, or stop) waits
                         * again for the same deadline. */
                        if (pthread_cond_timedwait(&w->cond, &w->lock, &idle_at) != ETIMEDOUT ||
                            w->queue_head || w->stopping)
                                continue;
                        holding = false;
                        pthread_mutex_unlock(&w->lock);
                        if (tpm_idle(w->tpm))
                                log_debug("TPM idle: released the simulator connection");
                        pthread_mutex_lock(&w->lock);
                        continue;
                }

                w->queue_head = job->next;
                if (!w->queue_head)
                        w->queue_tail = NULL;
                if (job_counts(job))
                        w->n_queued--;
                pthread_mutex_unlock(&w->lock);

                if (bg) {
                        /* a signature between two steps of the import */
                        signs_since_step++;
                        run_job(w, job);
                        finish_job(w, job);
                        if (!w->tpm) {
                                /* the connection broke under it: so did the import's */
                                tpm_import_abort(NULL, bg_op);
                                bg_op = NULL;
                                bg->r = -ENOTCONN;
                                set_err(&bg->err, "TPM connection", "lost the connection to the TPM during the import");
                                finish_job(w, bg);
                                bg = NULL;
                        }
                } else if (job->kind == TPM_JOB_IMPORT && w->tpm && import_is_background(w, job)) {
                        memset(&job->err, 0, sizeof job->err);
                        job->r = 0;
                        job->lost = false;
                        uint32_t index = job->has_key_index ? job->key_index : w->serving_index;
                        int r = tpm_import_begin(w->tpm, index, job->in, job->in_len, &bg_op, &job->err);
                        if (r >= 0)
                                bg = job; /* its steps follow */
                        else {
                                job->r = r;
                                if (tpm_lost(w->tpm)) { /* the old challenge key's flush broke it */
                                        w->tpm = tpm_close(w->tpm);
                                        job->lost = true;
                                        job->r = -ENOTCONN;
                                }
                                finish_job(w, job);
                        }
                        signs_since_step = 0;
                } else {
                        run_job(w, job);
                        finish_job(w, job);
                }
                holding = true;
                idle_at = deadline_after_ms(TPM_IDLE_RELEASE_MS);
                pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);

        w->tpm = tpm_close(w->tpm);

        pthread_mutex_lock(&w->lock);
        w->exited = true;
        pthread_mutex_unlock(&w->lock);
        uv_async_send(&w->async);
        return NULL;
}

/* ---- the loop side -------------------------------------------------------------- */

static void worker_free(struct tpm_worker *w) {
        if (!w)
                return;
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        free(w->tcti);
        if (w->endorsement_auth)
                explicit_zero(w->endorsement_auth, strlen(w->endorsement_auth));
        if (w->owner_auth)
                explicit_zero(w->owner_auth, strlen(w->owner_auth));
        free(w->endorsement_auth);
        free(w->owner_auth);
        free(w);
}

/* The async handle's close callback: the last thing that references w. */
static void async_closed(uv_handle_t *h) {
        struct tpm_worker *w = h->data;
        void (*stopped)(void *) = w->stopped;
        void *ud = w->stopped_userdata;
        worker_free(w);
        if (stopped)
                stopped(ud);
}

static void async_cb(uv_async_t *a) {
        struct tpm_worker *w = a->data;

        pthread_mutex_lock(&w->lock);
        struct tpm_job *done = w->done_head;
        w->done_head = w->done_tail = NULL;
        /* Read with the list: once exited is set, every job is on it. */
        bool exited = w->exited;
        pthread_mutex_unlock(&w->lock);

        while (done) {
                struct tpm_job *next = done->next;
                done->next = NULL;
                atomic_fetch_add(&w->completed, 1);
                if (done->lost && w->lost)
                        w->lost(done, w->lost_userdata); /* first: its reconnect goes ahead of what done submits */
                done->done(done, done->userdata); /* may free done, and submit */
                done = next;
        }

        if (exited && !w->joined) {
                /* The thread set exited last and only sends the wake-up
                 * after it, so this join waits for nothing but its return. */
                pthread_join(w->thread, NULL);
                w->joined = true;
                uv_close((uv_handle_t *)&w->async, async_closed);
        }
}

static char *strdup_or_null(const char *s, bool *oom) {
        if (!s)
                return NULL;
        char *d = strdup(s);
        if (!d)
                *oom = true;
        return d;
}

int tpm_worker_new(uv_loop_t *loop, const struct tpm_options *opts, unsigned max_queued, struct tpm_worker **ret) {
        struct tpm_worker *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        bool oom = false;
        w->loop = loop;
        w->max_queued = max_queued;
        w->tcti = strdup_or_null(opts->tcti, &oom);
        w->endorsement_auth = strdup_or_null(opts->endorsement_auth, &oom);
        w->owner_auth = strdup_or_null(opts->owner_auth, &oom);
        w->opts = (struct tpm_options){ .tcti = w->tcti,
                                        .endorsement_auth = w->endorsement_auth,
                                        .owner_auth = w->owner_auth,
                                        .auth_key_index = opts->auth_key_index,
                                        /* the worker owns the TPM: clean up after a crashed run */
                                        .flush_leftovers = true,
                                        .tcti_source = opts->tcti_source };
        w->serving_index = opts->auth_key_index;
        pthread_mutex_init(&w->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        /* The idle deadline must not move with the wall clock. */
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&w->cond, &ca);
        pthread_condattr_destroy(&ca);
        if (oom) {
                worker_free(w);
                return -ENOMEM;
        }
        int r = uv_async_init(loop, &w->async, async_cb);
        if (r < 0) {
                worker_free(w);
                return r;
        }
        w->async.data = w;

        pthread_attr_t attr;
        pthread_attr_init(&attr);
        /* A small stack keeps the daemon's footprint small; SAPI and the
         * marshalling code use far less than this. */
        pthread_attr_setstacksize(&attr, TPM_WORKER_STACK_BYTES);
        r = -pthread_create(&w->thread, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
        if (r < 0) {
                /* Nothing references w but the handle: it goes once closed. */
                w->joined = true;
                uv_close((uv_handle_t *)&w->async, async_closed);
                return r;
        }
        *ret = w;
        return 0;
}

int tpm_worker_submit(struct tpm_worker *w, struct tpm_job *job) {
        if (w->stop_requested)
                return -ESHUTDOWN;
        pthread_mutex_lock(&w->lock);
        if (job_counts(job) && w->n_queued >= w->max_queued) {
                pthread_mutex_unlock(&w->lock);
                return -EAGAIN;
        }
        job->next = NULL;
        if (w->queue_tail)
                w->queue_tail->next = job;
        else
                w->queue_head = job;
        w->queue_tail = job;
        if (job_counts(job))
                w->n_queued++;
        pthread_cond_signal(&w->cond); /* one waiter: the thread */
        pthread_mutex_unlock(&w->lock);
        return 0;
}

void tpm_worker_on_lost(struct tpm_worker *w, void (*lost)(const struct tpm_job *job, void *userdata),
                        void *userdata) {
        w->lost = lost;
        w->lost_userdata = userdata;
}

void tpm_worker_set_max_queued(struct tpm_worker *w, unsigned max_queued) {
        w->max_queued = max_queued; /* loop thread only, like submit */
}

unsigned tpm_worker_queued(const struct tpm_worker *w) {
        struct tpm_worker *m = (struct tpm_worker *)(uintptr_t)w;
        pthread_mutex_lock(&m->lock);
        unsigned n = m->n_queued;
        pthread_mutex_unlock(&m->lock);
        return n;
}

uint64_t tpm_worker_completed(const struct tpm_worker *w) {
        return atomic_load(&w->completed);
}

void tpm_worker_stop(struct tpm_worker *w, void (*stopped)(void *userdata), void *userdata) {
        w->stopped = stopped;
        w->stopped_userdata = userdata;
        w->stop_requested = true;
        pthread_mutex_lock(&w->lock);
        w->stopping = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}
