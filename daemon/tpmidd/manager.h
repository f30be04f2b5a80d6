/* The daemon's core. The manager is the one owner of
 *   - the running configuration (one copy; reload replaces it),
 *   - the TPM: its worker thread, the start/retry cycle, the watchdog ping,
 *     the TPM's state and its endorsement and storage root publics,
 *   - the provisioning driver (when [provisioning] source is "dps"),
 *   - the module identities (modules.h; with the driver), reconciled after
 *     every (re)provisioning and every reload,
 *   - reload, with one rule (below and in tpmidd(8)).
 *
 * The sockets' routes (tpmd-api.c, identity-api.c) and sd_notify (notify.c)
 * are views of it. They read its state through the const functions below and
 * keep no copy of it; they ask it to act (manager_submit(),
 * manager_reprovision(), manager_wait_identity(),
 * manager_report_bad_credentials()). State flows one way: whenever anything a
 * view shows may have changed (TPM state, provisioning status, reload,
 * stopping, a watchdog ping that came back), the manager calls the one
 * changed hook given to manager_new(), which refreshes STATUS= and the other
 * sd_notify messages.
 *
 * The reload rule (manager_reload()). Applied: log_level, [limits],
 * [[principal]] (the module identities are reconciled again),
 * [endpoints] aziot_keyd, prefer_module_identity_cache, the provisioning settings ([provisioning] global_endpoint,
 * id_scope, payload, [provisioning.attestation]) and auto_reprovisioning_mode.
 * A change of the provisioning settings starts a DPS run (CONFIG_CHANGED);
 * the state machine takes the new mode. Refused, keeping the running value
 * (logged "KEY needs a restart, kept VALUE"): the socket paths ([endpoints]),
 * [tpm] tcti, auth_key_index and [tpm.hierarchy_authorization], and
 * [provisioning] source, state_dir, cloud_ca_bundle, cloud_timeout_sec,
 * cloud_retries and hostname. These are exactly config_diff()'s
 * CONFIG_CHANGED_RELOADABLE and CONFIG_CHANGED_RESTART keys. The running
 * configuration is the file's with the refused keys' running values, so
 * manager_config() and GET /status show what the daemon runs; the refused
 * keys whose file value differs are listed in the status document's
 * daemon.restartNeeded. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "api.h"
#include "config.h"
#include "tpm-worker.h"

#define MANAGER_TPM_RETRY_MIN_MS 1000         /* ms before the first retry of an unreachable TPM */
#define MANAGER_TPM_RETRY_MAX_MS 30000        /* ms: the retry interval doubles up to this */
#define MANAGER_TPM_ERROR_MAX 600             /* bytes of the TPM's last error text, NUL included */
#define MANAGER_MAX_REPROVISION_WAITERS 64    /* reprovision requests waiting for the run's outcome */
#define MANAGER_MAX_IDENTITY_WAITERS 64       /* identity requests waiting for the saved-state check */
#define MANAGER_IDENTITY_WAIT_MAX_MS 5000     /* ms an identity request waits for the TPM start and saved-state check */
#define MANAGER_MAX_RESTART_NEEDED 16         /* refused keys listed in the status (there are 12) */

enum manager_tpm_state {
        MANAGER_TPM_STARTING,    /* no answer yet */
        MANAGER_TPM_READY,       /* EK and SRK read; TPM routes served */
        MANAGER_TPM_UNAVAILABLE, /* the last start or ping failed; retrying */
        _MANAGER_TPM_STATE_MAX,
};

/* How a wait ended (manager_reprovision(), manager_wait_identity()). */
enum manager_outcome {
        MANAGER_OUTCOME_PROVISIONED, /* reprovision: the run settled with an identity */
        MANAGER_OUTCOME_REFUSED,     /* reprovision: DPS refused the device (message says why) */
        MANAGER_OUTCOME_RETRYING,    /* reprovision: the run failed, retrying in the background */
        MANAGER_OUTCOME_NOT_STARTED, /* reprovision: provisioning has not started */
        MANAGER_OUTCOME_SETTLED,     /* identity wait: the saved-state check ended */
        MANAGER_OUTCOME_TIMED_OUT,   /* identity wait: MANAGER_IDENTITY_WAIT_MAX_MS passed first */
        MANAGER_OUTCOME_STOPPING,    /* the daemon is stopping */
        _MANAGER_OUTCOME_MAX,
};

/* Caller-owned memory (embed it in the request's state); it must stay valid
 * until done has run. message may be NULL; it is valid during the call. */
struct manager_waiter {
        void (*done)(struct manager_waiter *w, enum manager_outcome outcome, const char *message);
        /* private */
        struct manager_waiter *next;
        uint64_t deadline_ms;
};

struct manager;

/* The syslog level for a configuration: AZIOT_LOG (what `aziotctl system
 * set-log-level` sets) wins, as in aziot, else log_level. */
int manager_log_level(const struct tpmid_config *c);

/* Takes config (freed by the manager, also on failure). Starts the TPM worker
 * thread and, for source "dps", the provisioning driver; the TPM is not
 * opened before manager_start(). changed(userdata) runs on the loop after
 * every change of what views show, never from inside manager_new(). Returns
 * 0 and *ret, or -errno (nothing left behind). */
int manager_new(uv_loop_t *loop, struct tpmid_config *config, void (*changed)(void *userdata), void *userdata,
                struct manager **ret);

/* Open the TPM (a START job). On success READY; on failure the manager
 * retries with a doubling interval and the views answer 503 meanwhile. */
void manager_start(struct manager *m);

/* SIGHUP: apply file by the reload rule above. Takes file. Logs what was
 * applied and what was kept. */
void manager_reload(struct manager *m, struct tpmid_config *file);

/* The watchdog timer ticked: ping the TPM worker. manager_pings() counts the
 * pings that came back (the progress the watchdog asks for). */
void manager_watchdog_ping(struct manager *m);

/* Shutdown, step 1: answer every waiter with MANAGER_OUTCOME_STOPPING, and
 * every module call in flight with 503; stop retrying and reconciling; the
 * status says "stopping: why". */
void manager_begin_stop(struct manager *m, const char *why);
/* Shutdown, step 2 (after the sockets drained): let the worker finish its
 * queued jobs (their done callbacks run), close the TPM, stop provisioning,
 * then call closed(userdata). m is freed once its handles closed (run the
 * loop); do not use it after closed. Call once. */
void manager_close(struct manager *m, void (*closed)(void *userdata), void *userdata);

/* ---- reading (the views' interface) ---- */

/* The running configuration; valid until the next manager_reload(). */
const struct tpmid_config *manager_config(const struct manager *m);
enum manager_tpm_state manager_tpm_state(const struct manager *m);
/* Why the TPM is not ready ("" when ready). */
const char *manager_tpm_error(const struct manager *m);
/* The EK and SRK publics; NULL unless READY. */
const struct tpm_keys *manager_tpm_keys(const struct manager *m);
/* ms until the next TPM start attempt (0 when none is scheduled), and how
 * many start attempts failed so far (sd_notify extends the start timeout
 * once per failure while the daemon was never ready). */
uint64_t manager_tpm_retry_ms(const struct manager *m);
uint64_t manager_tpm_failures(const struct manager *m);
bool manager_ever_ready(const struct manager *m);
uint64_t manager_pings(const struct manager *m);
bool manager_stopping(const struct manager *m);
/* One line for STATUS= (what the daemon does now). Points into m. */
const char *manager_status_line(const struct manager *m);

/* Whether [provisioning] source is "dps" (the driver exists). */
bool manager_provisioning(const struct manager *m);
/* The identity being served; false when none. Strings point into the driver. */
bool manager_identity(const struct manager *m, const char **hub, const char **device_id);
const char *manager_registration_id(const struct manager *m); /* NULL before the TPM answered */
const char *manager_payload_json(const struct manager *m);    /* NULL when none */
/* The provisioning status in words ("provisioned: hub ...", "provisioning:
 * loading-state", ...), for 503 answers. Points into m. */
const char *manager_provisioning_text(const struct manager *m);
/* The whole GET /status document's values; strings point into m. */
void manager_fill_status(const struct manager *m, struct api_status *st);

/* ---- asking it to act ---- */

/* The module identities (modules.h), NULL when source is "none" or they
 * could not be set up. */
struct modules *manager_modules(struct manager *m);

/* Queue a TPM job on the worker (tpm_worker_submit()'s contract). */
int manager_submit(struct manager *m, struct tpm_job *job);

/* A client asked for reprovisioning: w->done runs once the run it started
 * settled (PROVISIONED, REFUSED, RETRYING), or with NOT_STARTED or STOPPING;
 * it may run before this returns. Returns 0; -ENOENT when source is "none";
 * -EAGAIN when the TPM is not ready (manager_tpm_error() says why); -EBUSY
 * when MANAGER_MAX_REPROVISION_WAITERS wait already; -ESHUTDOWN after
 * manager_begin_stop(). On error done is never
 * called. */
int manager_reprovision(struct manager *m, struct manager_waiter *w);

/* An identity request found no identity: while the TPM is opened for the
 * first time and then while the saved-state check runs (a saved identity is
 * read and its key looked up in the TPM, the milliseconds after READY=1) the
 * answer is not known yet. Returns 0 and calls w->done later (SETTLED, also
 * when the TPM start failed; TIMED_OUT after MANAGER_IDENTITY_WAIT_MAX_MS;
 * STOPPING): the caller then answers from the state it finds. Returns
 * -EALREADY when there is nothing to wait for (answer now), -EBUSY when
 * MANAGER_MAX_IDENTITY_WAITERS wait already. */
int manager_wait_identity(struct manager *m, struct manager_waiter *w);

/* See prov_driver_report_bad_credentials(); IGNORED without provisioning. */
enum api_report_action manager_report_bad_credentials(struct manager *m, int hub_status);
