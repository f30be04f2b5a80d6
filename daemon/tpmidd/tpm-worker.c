/* The TPM's one owner: a FIFO on the loop thread that hands the TPM to the
 * worker thread (slow jobs) or keeps it on the loop for one asynchronous
 * HMAC at a time (the hot path). See tpm-worker.h. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "tpm-worker.h"

#include "log.h"
#include "util.h"

enum tpm_owner {
        OWNER_NONE,   /* free: the next job may go either way */
        OWNER_THREAD, /* the worker thread has jobs, or is running them */
        OWNER_LOOP,   /* an asynchronous HMAC is in flight on the loop */
};

struct tpm_worker {
        uv_loop_t *loop;
        uv_async_t async; /* worker -> loop: completions ready, or the thread exited */
        pthread_t thread;

        /* copies of the options (tpm_open keeps only what it needs) */
        char *tcti, *endorsement_auth, *owner_auth;
        struct tpm_options opts;

        pthread_mutex_t lock;
        pthread_cond_t cond;
        /* under lock */
        struct tpm_job *queue_head, *queue_tail; /* handed to the thread, not started */
        unsigned n_queued;                       /* user jobs among them (START/PING not counted) */
        struct tpm_job *done_head, *done_tail;
        bool running;  /* the thread is running a batch */
        bool stopping; /* the thread may exit once its queue is empty */
        bool exited;

        /* loop thread only */
        struct tpm_job *pend_head, *pend_tail; /* accepted, the TPM not free yet */
        unsigned n_pending;                    /* user jobs among them */
        enum tpm_owner owner;
        struct tpm_job *loop_job; /* OWNER_LOOP: the signature in flight */
        int loop_fd;              /* OWNER_LOOP: the descriptor its response arrives on */
        bool loop_fd_armed;       /* loop_fd is armed in tpm_epoll (EPOLLONESHOT: one event disarms it) */
        uv_timer_t idle_timer;    /* TPM_IDLE_RELEASE_MS after the TPM went idle: tpm_idle() */
        /* The TPM's descriptor is watched through an epoll set of our own
         * that libuv polls as one descriptor: libuv unregisters a handle's
         * descriptor *number* when the handle closes, and the TCTI may have
         * closed that descriptor already (swtpm: a released or renewed
         * connection),
         * so the number may belong to a client connection by then. In our
         * set, the kernel drops a closed descriptor by itself. Entries are
         * one-shot: a response that arrives while the worker thread has the
         * TPM (and reads it itself) wakes nobody, and nothing has to be
         * removed after a signature, whether the TCTI keeps its descriptor
         * (the device, a kept swtpm connection) or closes it. */
        int tpm_epoll;
        uv_poll_t tpm_epoll_watch;
        bool async_open;
        unsigned open_handles; /* of tpm_epoll_watch, idle_timer and async; w is freed when the last one closed */
        unsigned max_queued;
        bool stop_requested;
        void (*stopped)(void *userdata);
        void *stopped_userdata;
        bool joined;
        uint64_t completed_on_loop;

        atomic_uint_fast64_t completed;

        /* The TPM: used by the thread while owner is OWNER_THREAD, by the
         * loop while OWNER_LOOP; the queue lock orders the hand-overs. */
        struct tpm *tpm;
};

/* Append job to the list head/tail. */
static void job_append(struct tpm_job **head, struct tpm_job **tail, struct tpm_job *job) {
        job->next = NULL;
        if (*tail)
                (*tail)->next = job;
        else
                *head = job;
        *tail = job;
}

static bool job_counts(const struct tpm_job *job) {
        return job->kind == TPM_JOB_SIGN || job->kind == TPM_JOB_IMPORT || job->kind == TPM_JOB_HAS_KEY;
}

static void set_err(struct tpm_error *err, const char *step, const char *msg) {
        memset(err, 0, sizeof *err);
        snprintf(err->step, sizeof err->step, "%s", step);
        snprintf(err->msg, sizeof err->msg, "%s", msg);
}

/* ---- the worker thread ------------------------------------------------------ */

/* Runs on the worker thread. */
static void run_job(struct tpm_worker *w, struct tpm_job *job) {
        memset(&job->err, 0, sizeof job->err);
        job->r = 0;

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
                k.can_async = tpm_can_async(w->tpm);
                if (job->keys_out)
                        *job->keys_out = k;
                return;
        }

        if (!w->tpm) {
                job->r = -ENODEV;
                set_err(&job->err, "TPM connection", "the TPM is not open yet (still starting or reconnecting)");
                return;
        }

        switch (job->kind) {
        case TPM_JOB_SIGN:
                job->r = job->has_key_index
                                 ? tpm_sign_at(w->tpm, job->key_index, job->in, job->in_len, job->digest, &job->err)
                                 : tpm_sign(w->tpm, job->in, job->in_len, job->digest, &job->err);
                break;
        case TPM_JOB_IMPORT:
                job->r = job->has_key_index
                                 ? tpm_import_auth_key_at(w->tpm, job->key_index, job->in, job->in_len, &job->err)
                                 : tpm_import_auth_key(w->tpm, job->in, job->in_len, &job->err);
                break;
        case TPM_JOB_HAS_KEY:
                job->r = job->has_key_index ? tpm_has_auth_key_at(w->tpm, job->key_index, &job->present, &job->err)
                                            : tpm_has_auth_key(w->tpm, &job->present, &job->err);
                break;
        case TPM_JOB_PING:
                job->r = tpm_ping(w->tpm, &job->err);
                if (job->r < 0)
                        w->tpm = tpm_close(w->tpm);
                break;
        case TPM_JOB_START:
                break;
        }
}

static void *worker_main(void *arg) {
        struct tpm_worker *w = arg;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->queue_head && !w->stopping)
                        pthread_cond_wait(&w->cond, &w->lock);
                if (!w->queue_head)
                        break; /* stopping and drained */

                /* Take everything queued: running a batch back to back costs one
                 * lock round and one wakeup of the loop for many jobs. */
                struct tpm_job *batch = w->queue_head;
                w->queue_head = w->queue_tail = NULL;
                w->n_queued = 0;
                w->running = true;
                pthread_mutex_unlock(&w->lock);

                struct tpm_job *last = NULL;
                for (struct tpm_job *j = batch; j; j = j->next) {
                        run_job(w, j);
                        last = j;
                }

                pthread_mutex_lock(&w->lock);
                if (w->done_tail)
                        w->done_tail->next = batch;
                else
                        w->done_head = batch;
                w->done_tail = last;
                w->running = false;
                pthread_mutex_unlock(&w->lock);
                uv_async_send(&w->async);
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

static void dispatch(struct tpm_worker *w);

static void complete_on_loop(struct tpm_worker *w, struct tpm_job *job) {
        atomic_fetch_add(&w->completed, 1);
        job->done(job, job->userdata); /* may free job */
}

/* A job that failed before reaching the TPM still completes from the loop,
 * never inside tpm_worker_submit(): queue it as if the thread had run it. */
static void complete_later(struct tpm_worker *w, struct tpm_job *job) {
        pthread_mutex_lock(&w->lock);
        job_append(&w->done_head, &w->done_tail, job);
        pthread_mutex_unlock(&w->lock);
        uv_async_send(&w->async);
}

static bool loop_eligible(const struct tpm_worker *w, const struct tpm_job *job) {
        return job->kind == TPM_JOB_SIGN && job->in_len <= TPM_HMAC_CHUNK && w->tpm && tpm_can_async(w->tpm);
}

/* Arm fd for one readable event (the loop's epoll set sees it through
 * tpm_epoll). A descriptor still in the set from an earlier command (the
 * same open connection or device) is re-armed; a new one is added. */
static int wait_readable(struct tpm_worker *w, int fd) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.fd = fd };
        if (epoll_ctl(w->tpm_epoll, EPOLL_CTL_MOD, fd, &ev) < 0) {
                if (errno != ENOENT || epoll_ctl(w->tpm_epoll, EPOLL_CTL_ADD, fd, &ev) < 0)
                        return -errno;
        }
        w->loop_fd_armed = true;
        return 0;
}

/* The last resort when fd cannot be watched (epoll_ctl failed): wait for
 * the response right here, sleeping in poll() rather than spinning on
 * TRY_AGAIN, so the SAPI context is ready for the next command. */
static int finish_blocking(struct tpm_worker *w, struct tpm_job *job, int fd) {
        int r;
        while ((r = tpm_sign_async_finish(w->tpm, job->digest, &fd, &job->err)) == -EINPROGRESS) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                (void)poll(&p, 1, -1);
        }
        return r;
}

/* The signature in flight is over (r = its result): free the TPM, start the
 * next job first (so the TPM is busy again at once), then answer. */
static void loop_job_done(struct tpm_worker *w, int r) {
        struct tpm_job *job = w->loop_job;
        w->loop_job = NULL;
        w->owner = OWNER_NONE;
        job->r = r;
        w->completed_on_loop++;
        dispatch(w);
        complete_on_loop(w, job);
}

/* Collect the response of the signature in flight if it is there. Called
 * when the descriptor is readable, and on every new submission: with many
 * clients one loop round may run dozens of request callbacks before it gets
 * to the TPM's event, and the TPM would sit idle meanwhile. */
static void loop_job_poll(struct tpm_worker *w) {
        struct tpm_job *job = w->loop_job;
        if (!job)
                return;
        int fd = w->loop_fd;
        int r = tpm_sign_async_finish(w->tpm, job->digest, &fd, &job->err);
        if (r == -EINPROGRESS) {
                if (fd == w->loop_fd && w->loop_fd_armed)
                        return; /* still watched */
                /* Not all there after an event, or the command was sent
                 * again (TPM_RC_RETRY), maybe on a new connection. */
                w->loop_fd = fd;
                r = wait_readable(w, fd);
                if (r >= 0)
                        return;
                r = finish_blocking(w, job, fd);
        }
        w->loop_fd = -1;
        w->loop_fd_armed = false;
        loop_job_done(w, r);
}

static void on_tpm_readable(uv_poll_t *h, int status, int events) {
        struct tpm_worker *w = h->data;
        (void)events;
        if (status < 0)
                log_debug("poll on the TPM descriptor: %s; collecting the response anyway", uv_strerror(status));
        w->loop_fd_armed = false; /* one-shot: the event disarmed it */
        loop_job_poll(w);
}

/* Start job as an asynchronous HMAC on the loop. Returns 0 (in flight),
 * -EWOULDBLOCK (use the thread), or another -errno with job->err set (the
 * job failed). */
static int start_on_loop(struct tpm_worker *w, struct tpm_job *job) {
        int fd = -1;
        memset(&job->err, 0, sizeof job->err);
        int r = tpm_sign_async_start(w->tpm, job->has_key_index ? &job->key_index : NULL, job->in, job->in_len, &fd,
                                     &job->err);
        if (r < 0)
                return r;
        w->loop_job = job;
        w->loop_fd = fd;
        w->owner = OWNER_LOOP;
        r = wait_readable(w, fd);
        if (r < 0) {
                w->loop_fd = -1;
                w->loop_fd_armed = false;
                r = finish_blocking(w, job, fd);
                w->loop_job = NULL;
                w->owner = OWNER_NONE;
                job->r = r;
                complete_later(w, job);
        }
        return 0;
}

static struct tpm_job *pend_pop(struct tpm_worker *w) {
        struct tpm_job *job = w->pend_head;
        w->pend_head = job->next;
        if (!w->pend_head)
                w->pend_tail = NULL;
        job->next = NULL;
        if (job_counts(job))
                w->n_pending--;
        return job;
}

static void maybe_stop_thread(struct tpm_worker *w) {
        if (!w->stop_requested || w->owner != OWNER_NONE || w->pend_head)
                return;
        pthread_mutex_lock(&w->lock);
        w->stopping = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}

/* The TPM has had nothing to do for TPM_IDLE_RELEASE_MS: let other programs
 * at it (swtpm serves one connection at a time). Between jobs the TPM is
 * the loop's to touch. */
static void on_idle(uv_timer_t *t) {
        struct tpm_worker *w = t->data;
        /* Not armed again once stopping (the thread may be closing the TPM). */
        if (w->owner != OWNER_NONE || w->pend_head || !w->tpm)
                return;
        if (tpm_idle(w->tpm))
                log_debug("TPM idle: released the simulator connection");
}

/* Give the free TPM to the head of the FIFO. Loop thread. */
static void dispatch(struct tpm_worker *w) {
        while (w->owner == OWNER_NONE && w->pend_head) {
                if (loop_eligible(w, w->pend_head)) {
                        struct tpm_job *job = pend_pop(w);
                        int r = start_on_loop(w, job);
                        if (r == 0)
                                return;
                        if (r != -EWOULDBLOCK) {
                                job->r = r;
                                complete_later(w, job);
                                continue;
                        }
                        /* The key is not resolved yet: the thread does that. */
                        job->next = w->pend_head;
                        w->pend_head = job;
                        if (!w->pend_tail)
                                w->pend_tail = job;
                        if (job_counts(job))
                                w->n_pending++;
                }

                /* Hand the thread the head and every following job that the
                 * loop could not run itself anyway. */
                pthread_mutex_lock(&w->lock);
                bool first = true;
                while (w->pend_head && (first || !loop_eligible(w, w->pend_head))) {
                        struct tpm_job *job = pend_pop(w);
                        job_append(&w->queue_head, &w->queue_tail, job);
                        if (job_counts(job))
                                w->n_queued++;
                        first = false;
                }
                w->owner = OWNER_THREAD;
                pthread_cond_signal(&w->cond);
                pthread_mutex_unlock(&w->lock);
        }
        if (w->owner == OWNER_NONE && !w->pend_head && !w->stop_requested)
                uv_timer_start(&w->idle_timer, on_idle, TPM_IDLE_RELEASE_MS, 0); /* restarts a running one */
        maybe_stop_thread(w);
}

static void worker_free(struct tpm_worker *w) {
        if (!w)
                return;
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        if (w->tpm_epoll >= 0)
                close(w->tpm_epoll);
        free(w->tcti);
        if (w->endorsement_auth)
                explicit_zero(w->endorsement_auth, strlen(w->endorsement_auth));
        if (w->owner_auth)
                explicit_zero(w->owner_auth, strlen(w->owner_auth));
        free(w->endorsement_auth);
        free(w->owner_auth);
        free(w);
}

/* Close callback of both handles: w goes when the last one is closed. */
static void handle_closed(uv_handle_t *h) {
        struct tpm_worker *w = h->data;
        if (--w->open_handles > 0)
                return;
        void (*stopped)(void *) = w->stopped;
        void *ud = w->stopped_userdata;
        worker_free(w);
        if (stopped)
                stopped(ud);
}

static void close_handles(struct tpm_worker *w) {
        uv_close((uv_handle_t *)&w->tpm_epoll_watch, handle_closed);
        if (w->idle_timer.data)
                uv_close((uv_handle_t *)&w->idle_timer, handle_closed);
        if (w->async_open)
                uv_close((uv_handle_t *)&w->async, handle_closed);
}

static void async_cb(uv_async_t *a) {
        struct tpm_worker *w = a->data;

        pthread_mutex_lock(&w->lock);
        struct tpm_job *done = w->done_head;
        w->done_head = w->done_tail = NULL;
        bool thread_idle = !w->running && !w->queue_head;
        bool exited = w->exited;
        pthread_mutex_unlock(&w->lock);

        /* The thread has nothing more: the TPM is free before the done
         * callbacks run, so what they submit can start at once. */
        if (thread_idle && w->owner == OWNER_THREAD)
                w->owner = OWNER_NONE;

        while (done) {
                struct tpm_job *next = done->next;
                done->next = NULL;
                complete_on_loop(w, done);
                done = next;
        }
        dispatch(w);

        if (exited && !w->joined) {
                /* The thread has returned (it set exited last), so this does not wait. */
                pthread_join(w->thread, NULL);
                w->joined = true;
                close_handles(w);
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
                                        .flush_leftovers = true };
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        w->loop_fd = -1;
        w->tpm_epoll = epoll_create1(EPOLL_CLOEXEC);
        if (oom || w->tpm_epoll < 0) {
                int r = oom ? -ENOMEM : -errno;
                worker_free(w);
                return r;
        }
        int r = uv_poll_init(loop, &w->tpm_epoll_watch, w->tpm_epoll);
        if (r < 0) {
                worker_free(w);
                return r;
        }
        w->tpm_epoll_watch.data = w;
        w->open_handles = 1;
        uv_timer_init(loop, &w->idle_timer); /* cannot fail */
        uv_unref((uv_handle_t *)&w->idle_timer); /* does not keep the loop alive */
        w->idle_timer.data = w;
        w->open_handles++;
        r = uv_async_init(loop, &w->async, async_cb);
        if (r >= 0) {
                w->async.data = w;
                w->async_open = true;
                w->open_handles++;
                r = uv_poll_start(&w->tpm_epoll_watch, UV_READABLE, on_tpm_readable);
        }
        if (r < 0) {
                /* w is freed once the handles are closed (the loop must run). */
                w->stopped = NULL;
                close_handles(w);
                return r;
        }

        pthread_attr_t attr;
        pthread_attr_init(&attr);
        /* A small stack keeps the daemon's footprint small; SAPI and the
         * marshalling code use far less than this. */
        pthread_attr_setstacksize(&attr, TPM_WORKER_STACK_BYTES);
        r = -pthread_create(&w->thread, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
        if (r < 0) {
                /* Nothing references w but the handles: free it once closed. */
                w->joined = true;
                w->stopped = NULL;
                close_handles(w);
                return r;
        }
        *ret = w;
        return 0;
}

int tpm_worker_submit(struct tpm_worker *w, struct tpm_job *job) {
        if (w->stop_requested)
                return -ESHUTDOWN;
        if (w->owner == OWNER_LOOP)
                loop_job_poll(w);
        if (job_counts(job) && tpm_worker_queued(w) >= w->max_queued)
                return -EAGAIN;
        job_append(&w->pend_head, &w->pend_tail, job);
        if (job_counts(job))
                w->n_pending++;
        dispatch(w);
        return 0;
}

void tpm_worker_set_max_queued(struct tpm_worker *w, unsigned max_queued) {
        w->max_queued = max_queued; /* loop thread only, like submit */
}

unsigned tpm_worker_queued(const struct tpm_worker *w) {
        struct tpm_worker *m = (struct tpm_worker *)(uintptr_t)w;
        pthread_mutex_lock(&m->lock);
        unsigned n = m->n_queued;
        pthread_mutex_unlock(&m->lock);
        return n + w->n_pending;
}

uint64_t tpm_worker_completed(const struct tpm_worker *w) {
        return atomic_load(&w->completed);
}

uint64_t tpm_worker_completed_on_loop(const struct tpm_worker *w) {
        return w->completed_on_loop;
}

void tpm_worker_stop(struct tpm_worker *w, void (*stopped)(void *userdata), void *userdata) {
        w->stopped = stopped;
        w->stopped_userdata = userdata;
        w->stop_requested = true;
        uv_timer_stop(&w->idle_timer);
        maybe_stop_thread(w);
}
