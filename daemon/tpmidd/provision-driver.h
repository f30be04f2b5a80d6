/* The provisioning driver: carries out lib/provision.c's actions. Every
 * decision (what to do next, what an answer means, which TPM slot signs
 * which request, when to retry, whether a report is acted on) is made by
 * lib/provision.c; this file performs each action with one asynchronous
 * operation (a TPM job, an HTTPS request, or a TPM signature followed by the
 * request it authorises; a timer; a small state-file read/write) and feeds
 * its completion back. At most one operation is in flight; a single timer
 * serves both poll delays and backoff.
 *
 * It performs its operations through an io table (struct prov_io):
 * prov_driver_new() uses the real TPM worker, cloud.c, a libuv timer and the
 * state file; the unit test (test/unit/test-provision-driver.c) passes fakes.
 *
 * It also keeps the "serving" identity (hub + device id) that the identity
 * API hands out, and the last DPS result that status reports. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "api.h"
#include "cloud.h"
#include "config.h"
#include "provision.h"
#include "state.h"
#include "tpm-worker.h"

#define PROV_HUB_CHECK_TIMEOUT_MS 30000   /* ms for the hub credential check */
/* ms between lookups of the saved identity's key while the TPM connection
 * is lost or not open yet: the lookup is retried, never taken for "no key" */
#define PROV_KEY_LOOKUP_RETRY_MS 1000
/* s of validity a DPS SAS token must have left to be used again for
 * another request of the same registration (one TPM signature per
 * registration instead of one per request) */
#define PROV_SAS_REUSE_MARGIN_S 300

/* What the driver needs from the world. Every function gets userdata first.
 * The asynchronous ones follow libuv's contract: 0 and exactly one callback
 * later (from the loop, never from inside the call), or -errno and none. */
struct prov_io {
        void *userdata;
        /* Queue a TPM job (TPM_JOB_SIGN, TPM_JOB_IMPORT, TPM_JOB_HAS_KEY) as
         * tpm_worker_submit() does; job->done(job, job->userdata) reports it. */
        int (*tpm_submit)(void *userdata, struct tpm_job *job);
        /* Start an HTTPS request as cloud_send() does. */
        int (*cloud_send)(void *userdata, const struct cloud_request *req, cloud_cb cb, void *cb_userdata,
                          uint64_t *ret_id);
        /* Cancel it: its callback will not run. */
        void (*cloud_cancel)(void *userdata, uint64_t id);
        /* The one timer: (re)arm it to call cb(cb_userdata) after ms, or stop it. */
        void (*timer_start)(void *userdata, uint64_t ms, void (*cb)(void *cb_userdata), void *cb_userdata);
        void (*timer_stop)(void *userdata);
        /* state_load() / state_save() of the state file at path. */
        int (*state_load)(void *userdata, const char *path, struct tpmid_state *out);
        int (*state_save)(void *userdata, const char *path, const struct tpmid_state *st);
        /* A monotonic clock in ms (the report rate limit) and the wall clock in
         * Unix seconds (SAS expiry, Retry-After dates, status times). */
        uint64_t (*now_ms)(void *userdata);
        int64_t (*now_unix)(void *userdata);
        /* Cancel everything; call done(done_userdata) once no io callback can
         * run any more (from the loop). A TPM job in flight still completes. */
        void (*close)(void *userdata, void (*done)(void *done_userdata), void *done_userdata);
};

struct prov_driver;

/* cfg must outlive the driver (or be replaced with prov_driver_set_config).
 * The environment variable TPMIDD_CLOUD_CONNECT_TO ("HOST:PORT:HOST2:PORT2",
 * curl's --connect-to) redirects cloud connections, for split-horizon DNS and
 * for the local simulator. Returns 0 and *ret, -ENOMEM, -EIO. */
int prov_driver_new(uv_loop_t *loop, const struct tpmid_config *cfg, struct tpm_worker *w, struct prov_driver **ret);

/* The same with the given io (copied; io->userdata must outlive the driver
 * until io->close() reported done). Returns 0 and *ret, or -ENOMEM. */
int prov_driver_new_with_io(const struct tpmid_config *cfg, const struct prov_io *io, struct prov_driver **ret);

/* Called whenever status changed (state, mode, identity, last result). */
void prov_driver_set_status_cb(struct prov_driver *d, void (*cb)(void *userdata), void *userdata);

/* The TPM answered: start (once). keys are copied. Derives the registration
 * id from the EK when the config has none, reads the payload file. Returns 0,
 * or -errno for a payload file that cannot be read (logged). */
int prov_driver_start(struct prov_driver *d, const struct tpm_keys *keys);

/* Authorized client asked for reprovisioning. Returns 0, or -EAGAIN if
 * provisioning is not configured or the TPM did not answer yet. */
int prov_driver_reprovision(struct prov_driver *d);

/* A client reports that the hub answered hub_status to the device's
 * credentials (POST /identities/device/report). lib/provision.c's
 * prov_report() decides (mode, busy, rate limit); a hub check it starts is
 * performed here. Returns what was decided, for the client's answer; does not
 * log (the caller does). */
enum api_report_action prov_driver_report_bad_credentials(struct prov_driver *d, int hub_status);

/* Reload: the new config replaces the old. Its auto_reprovisioning_mode is
 * applied to the machine at once (prov_set_mode(): nothing starts by
 * itself); a change of the provisioning settings (endpoint, scope,
 * registration id, payload file) triggers a DPS run (CONFIG_CHANGED). */
void prov_driver_set_config(struct prov_driver *d, const struct tpmid_config *cfg);

/* The identity being served. Returns false when there is none yet. */
bool prov_driver_identity(const struct prov_driver *d, const char **hub, const char **device_id);
/* The state machine's current state. */
enum prov_state prov_driver_state(const struct prov_driver *d);
/* The mode the machine runs in (after the last reload), for status. */
enum prov_mode prov_driver_mode(const struct prov_driver *d);
/* Registration id in use (configured or derived), NULL before start. */
const char *prov_driver_registration_id(const struct prov_driver *d);
/* The payload JSON text (compact) or NULL. */
const char *prov_driver_payload_json(const struct prov_driver *d);

/* The realtime clock was set (the real io's timerfd saw it): feeds
 * CLOCK_STEPPED, which ends a backoff the clock was blamed for. */
void prov_driver_clock_stepped(struct prov_driver *d);

/* Fill the provisioning part of a status answer; strings point into d. */
void prov_driver_fill_status(const struct prov_driver *d, struct api_status *st);
/* One line in words for sd_notify STATUS= and logs. Points into d. */
const char *prov_driver_status_text(struct prov_driver *d);

/* Cancel everything; d is freed once its io is closed and no TPM job is in
 * flight (run the loop). NULL-safe. */
void prov_driver_close(struct prov_driver *d);
