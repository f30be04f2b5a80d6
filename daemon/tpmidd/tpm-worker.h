/* The TPM worker: the one owner of the struct tpm. Every TPM command runs
 * on one worker thread, one job after another in submission order (but for
 * signatures between an import's commands, below), with blocking calls; the
 * libuv loop never waits for the TPM.
 *
 * The loop submits jobs into one bounded FIFO; the thread takes them from
 * its head, runs each (opening the TPM, imports, lookups, signatures of any
 * length: the same path for all) and returns it through one uv_async_t,
 * whose callback calls the job's done callback on the loop thread. An
 * import into a slot that does not serve (background work: the
 * provisioning driver's staging slot, the DPS challenge key) runs one TPM
 * command at a time (tpm_import_step()); between two of its commands the
 * signatures at the head of the FIFO go first, so a signature arriving
 * during a reprovisioning waits behind at most one command of the import (a
 * priority between steps, not a second path: every other job keeps its
 * FIFO place). An import into the serving slot stays one job: a signature
 * sent after it waits and signs with the new key. Between jobs the thread keeps the
 * TPM connection; TPM_IDLE_RELEASE_MS after the
 * last job it gives it back (tpm_idle()) from a timed wait, so nothing on
 * the loop has to watch for idleness.
 *
 * Why a thread and not the loop: every TPM call is a blocking SAPI call
 * (Tss2_Sys_Execute through libtss2-tcti-device on /dev/tpmrm0 in
 * production, through lib/tcti-swtpm.c on swtpm), a real TPM takes
 * milliseconds per command and seconds to create a primary key, and with
 * one path for every command nothing is handed over between threads: only
 * this thread ever touches the struct tpm.
 *
 * Every done callback runs on the loop thread. Jobs are caller-owned memory
 * (no allocation per job); a job must stay valid until its done callback
 * has run. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "tpm.h"

#define TPM_WORKER_STACK_BYTES (256u * 1024) /* bytes of the worker thread's stack (SAPI needs < 64 KiB) */
/* ms without TPM jobs after which the worker thread gives the TPM
 * connection back to other programs (tpm_idle(): swtpm's single
 * connection). Long enough to keep it through a burst of requests, short
 * enough that tpm2-tools run next to the daemon hardly notice the wait. */
#define TPM_IDLE_RELEASE_MS 2
/* Signatures the worker runs between two steps (TPM commands) of an import
 * before the import's next step: a signature waits for at most one command
 * of a background import, and a flood of signatures cannot stall the
 * import. */
#define TPM_WORKER_SIGNS_BETWEEN_STEPS 16

enum tpm_job_kind {
        TPM_JOB_START,  /* open the TPM if closed, ensure EK/SRK, read their publics into keys_out */
        TPM_JOB_SIGN,   /* HMAC-SHA256 of in/in_len with the auth key into digest */
        TPM_JOB_IMPORT, /* import the authenticationKey blob in/in_len */
        TPM_JOB_PING,   /* cheap liveness probe; on failure the TPM is closed (re-open with START) */
        TPM_JOB_HAS_KEY, /* is there an auth key (configured slot, or key_index) → present */
        TPM_JOB_EVICT,   /* remove the auth key at key_index if there is one → present: one was there */
        TPM_JOB_PERSIST, /* persist the loaded DPS challenge key (TPM_AUTH_KEY_TRANSIENT) at key_index */
        TPM_JOB_SET_SERVING, /* from this job on, SIGN/IMPORT/HAS_KEY without has_key_index use key_index
                              * (the provisioning driver's serving slot, provision.h "A/B slots") */
};

struct tpm_keys {
        struct tpm_public ek, srk;
        bool created_ek, created_srk;
};

struct tpm_job;
typedef void (*tpm_job_done_t)(struct tpm_job *job, void *userdata);

struct tpm_job {
        /* filled by the submitter */
        enum tpm_job_kind kind;
        const uint8_t *in; /* SIGN/IMPORT input; the submitter owns it and keeps it alive until done */
        size_t in_len;
        struct tpm_keys *keys_out; /* START: receives EK/SRK publics on success */
        bool has_key_index;        /* SIGN/IMPORT/HAS_KEY: use key_index instead of the serving slot */
        uint32_t key_index;        /* offset from TPM_AUTH_KEY_BASE (EVICT, PERSIST, SET_SERVING: always
                                    * used); TPM_AUTH_KEY_TRANSIENT: the DPS challenge key (SIGN, IMPORT) */
        tpm_job_done_t done;       /* runs on the loop thread; may free the job */
        void *userdata;

        /* filled by the worker */
        int r;                /* 0 or -errno; -ENOTCONN: the connection to the TPM broke (lost) */
        struct tpm_error err; /* when r < 0; never holds secrets */
        uint8_t digest[32];   /* SIGN result */
        bool present;         /* HAS_KEY result */
        bool lost;            /* the connection broke under this job (tpm_lost()); the TPM is closed */

        struct tpm_job *next; /* queue link, private */
};

struct tpm_worker;

/* Start the thread. opts is copied (opts->tcti_source, a test's fake TPM, is
 * not: it must outlive the worker). max_queued bounds the jobs waiting for
 * the thread (START/PING are internal and never refused). Returns 0 and
 * *ret, or -errno (nothing left behind once the loop has run: the async
 * handle closes through it). The TPM is not opened until a START job. */
int tpm_worker_new(uv_loop_t *loop, const struct tpm_options *opts, unsigned max_queued, struct tpm_worker **ret);

/* Queue a job. Returns 0 (done will be called exactly once), -EAGAIN when
 * max_queued jobs already wait, -ESHUTDOWN after tpm_worker_stop(). On error
 * done is never called. Loop thread only. */
int tpm_worker_submit(struct tpm_worker *w, struct tpm_job *job);

/* lost(job) runs on the loop thread for a job whose connection broke
 * (job->lost), just before the job's done callback: the TPM is closed by
 * then, and every job gets -ENODEV until a START opens it again. One owner
 * (the manager) reopens it. */
void tpm_worker_on_lost(struct tpm_worker *w, void (*lost)(const struct tpm_job *job, void *userdata),
                        void *userdata);

void tpm_worker_set_max_queued(struct tpm_worker *w, unsigned max_queued);
unsigned tpm_worker_queued(const struct tpm_worker *w);    /* jobs waiting, not counting the running one */
uint64_t tpm_worker_completed(const struct tpm_worker *w); /* jobs completed so far (progress counter) */

/* Refuse new jobs, let the thread finish the queued ones, close the TPM and
 * join the thread; then close the async handle and free w, and call
 * stopped(userdata) from the loop. Jobs already queued still get their done
 * callback before stopped. Call once. */
void tpm_worker_stop(struct tpm_worker *w, void (*stopped)(void *userdata), void *userdata);
