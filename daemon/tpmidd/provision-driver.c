/* Provisioning driver. See provision-driver.h for the contract and
 * lib/provision.h for the state machine and the exact semantics of the
 * auto-reprovisioning modes.
 *
 * Every action is one "operation" that may take up to two asynchronous steps
 * (a TPM signature, then the HTTPS request it authorizes). Completions carry
 * the driver's operation generation, so a completion that arrives after the
 * machine moved on (e.g. reprovision requested while a poll was waiting) is
 * dropped instead of being fed as an event for the wrong state. */
#include "provision-driver.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "b64.h"
#include "cloud.h"
#include "dps.h"
#include "log.h"
#include "provision.h"
#include "sas.h"
#include "state.h"
#include "tpm.h"
#include "util.h"

#define LOG_MESSAGE_PROVISIONED "0d3c6f8e5b7a4f21a9e4c2d18b6f7a30" /* DPS assigned the device to a hub */
#define LOG_MESSAGE_DPS_FAILED "7f1b2c3d4e5f40718293a4b5c6d7e8f9"  /* a DPS run failed (DPS_ERROR_CODE= set) */
#define PROV_STATUS_TEXT_MAX 1024
#define PROV_STALE_CHALLENGE_RUNS 3 /* runs whose SAS DPS refused, before a 401 counts as DPS's verdict (C SDK: 3) */                                  /* bytes of the STATUS= line */

enum op_kind {
        OP_NONE,
        OP_HAS_KEY,   /* LOAD_STATE: TPM "is the serving key there?" */
        OP_HUB_SIGN,  /* CHECK_HUB step 1 */
        OP_HUB_GET,   /* CHECK_HUB step 2 */
        OP_REGISTER,  /* first PUT */
        OP_IMPORT,    /* challenge or final import */
        OP_AUTH_SIGN, /* second PUT step 1 */
        OP_AUTH_PUT,  /* second PUT step 2 */
        OP_POLL_SIGN, /* poll step 1 */
        OP_POLL_GET,  /* poll step 2 */
};

struct prov_driver {
        uv_loop_t *loop;
        const struct tpmid_config *cfg;
        struct tpm_worker *worker;
        struct cloud *cloud;
        uv_timer_t timer;
        bool timer_for_poll; /* the armed timer starts a poll (else it feeds TIMER) */

        struct prov_machine m;
        bool started, closing;
        int open_handles;
        bool report_checked;      /* a client report started a hub check (rate limit) */
        uint64_t report_check_ms; /* uv_now() of that check */

        struct tpm_keys keys;
        char *regid;
        json_t *payload;
        char *payload_json;
        uint8_t ek_digest[STATE_DIGEST_LEN];
        uint8_t config_digest[STATE_DIGEST_LEN];
        char *state_path;

        /* the identity being served */
        bool have_identity;
        char hub[DPS_HUB_NAME_MAX + 1];
        char device_id[DPS_DEVICE_ID_MAX + 1];

        /* the current DPS run */
        struct dps_challenge challenge;
        char operation_id[DPS_OPERATION_ID_MAX + 1];
        struct dps_registration reg;
        bool reg_valid;
        bool loaded_stale; /* LOAD_STATE found a stale (config changed) identity */
        unsigned stale_challenge_runs; /* consecutive runs whose second PUT got 401 */

        /* the operation in flight */
        enum op_kind op;
        uint64_t op_gen;
        struct tpm_job job;
        bool job_busy;
        uint64_t job_gen;
        char *sts; /* string-to-sign of the current SAS */
        size_t sts_len;
        char *sr; /* its encoded resource */
        uint64_t sas_expiry;
        bool cloud_busy;
        uint64_t cloud_id;

        /* status */
        bool has_last;
        char last_status[32];
        int64_t last_code;
        char last_message[DPS_ERROR_MESSAGE_MAX + 128]; /* DPS message plus our context */
        int64_t last_at;
        int64_t next_retry_at;
        char status_text[PROV_STATUS_TEXT_MAX];
        void (*status_cb)(void *userdata);
        void *status_userdata;
};

static void perform(struct prov_driver *d, const struct prov_action *a);

static void maybe_free(struct prov_driver *d) {
        if (!d->closing || d->open_handles > 0 || d->job_busy)
                return;
        dps_challenge_clear(&d->challenge);
        dps_registration_clear(&d->reg);
        json_decref(d->payload);
        free(d->payload_json);
        free(d->regid);
        free(d->state_path);
        free(d->sts);
        free(d->sr);
        free(d);
}

static void set_last(struct prov_driver *d, const char *status, int64_t code, const char *message) {
        d->has_last = true;
        snprintf(d->last_status, sizeof(d->last_status), "%s", status);
        d->last_code = code;
        snprintf(d->last_message, sizeof(d->last_message), "%s", message ? message : "");
        d->last_at = (int64_t)time(NULL);
}

static void publish_status(struct prov_driver *d) {
        if (d->status_cb)
                d->status_cb(d->status_userdata);
}

/* Feed one event into the machine and carry out the resulting action. */
static void feed(struct prov_driver *d, enum prov_event ev, const struct prov_event_data *data) {
        if (d->closing)
                return;
        struct prov_action a;
        enum prov_state before = d->m.state;
        int r = prov_step(&d->m, ev, data, &a);
        if (r < 0) {
                log_debug("provisioning: event %s not valid in state %s, ignoring", prov_event_to_string(ev),
                          prov_state_to_string(before));
                return;
        }
        log_debug("provisioning: %s --%s--> %s, action %s", prov_state_to_string(before), prov_event_to_string(ev),
                  prov_state_to_string(d->m.state), prov_action_to_string(a.kind));
        /* A new operation supersedes whatever was in flight. An event the
         * machine coalesced (NONE, e.g. a reprovision request during a run)
         * leaves the operation in flight valid: its completion is still the
         * machine's next event, so dropping it would stall the run. */
        if (a.kind != PROV_ACT_NONE && a.kind != PROV_ACT_NOTIFY_STATUS)
                d->op_gen++;
        perform(d, &a);
        if (a.status_changed)
                publish_status(d);
}

static void feed_simple(struct prov_driver *d, enum prov_event ev) {
        feed(d, ev, NULL);
}

/* ---- TPM steps ---- */

static void job_done(struct tpm_job *job, void *userdata);

static int submit_job(struct prov_driver *d, enum tpm_job_kind kind, const uint8_t *in, size_t len,
                      bool challenge_slot) {
        if (d->job_busy)
                return -EBUSY; /* cannot happen: one operation at a time; keeps the job memory safe */
        memset(&d->job, 0, sizeof(d->job));
        d->job.kind = kind;
        d->job.in = in;
        d->job.in_len = len;
        d->job.done = job_done;
        d->job.userdata = d;
        d->job.has_key_index = challenge_slot;
        d->job.key_index = prov_challenge_key_index(d->cfg->tpm.auth_key_index);
        int r = tpm_worker_submit(d->worker, &d->job);
        if (r < 0)
                return r;
        d->job_busy = true;
        d->job_gen = d->op_gen;
        return 0;
}

/* ---- HTTPS steps ---- */

static void cloud_done(const struct cloud_response *resp, void *userdata);

static int send_cloud(struct prov_driver *d, const char *method, const char *url, const char *auth, const char *body,
                      long timeout_ms) {
        struct cloud_request req = {
                .method = method,
                .url = url,
                .authorization = auth,
                .body = body,
                .body_len = body ? strlen(body) : 0,
                .timeout_ms = timeout_ms,
        };
        int r = cloud_send(d->cloud, &req, cloud_done, d, &d->cloud_id);
        if (r < 0)
                return r;
        d->cloud_busy = true;
        return 0;
}

static long cloud_timeout_ms(const struct prov_driver *d) {
        return (long)d->cfg->cloud_timeout_sec * 1000L;
}

/* Prepare the SAS string-to-sign for resource sr (already encoded). */
static int prepare_sas(struct prov_driver *d, char *sr, uint64_t lifetime) {
        free(d->sr);
        free(d->sts);
        d->sts = NULL;
        d->sr = sr;
        d->sas_expiry = (uint64_t)time(NULL) + lifetime;
        return sas_string_to_sign(d->sr, d->sas_expiry, &d->sts, &d->sts_len);
}

static void transient(struct prov_driver *d, int http_status, uint32_t retry_after, const char *message) {
        set_last(d, "error", 0, message);
        struct prov_event_data ed = {.retry_after_s = retry_after, .http_status = http_status, .message = message};
        feed(d, PROV_EV_TRANSIENT_ERROR, &ed);
}

/* A failed step before any request went out (out of memory, queue full,
 * a value DPS sent that we cannot use): treated as transient so the machine
 * backs off instead of spinning. */
static void step_failed(struct prov_driver *d, int r, const char *what) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s: %s", what, strerror(-r));
        log_warn("provisioning: %s", msg);
        transient(d, 0, 0, msg);
}

static void start_hub_check(struct prov_driver *d) {
        char *sr = NULL;
        int r = sas_hub_resource(d->hub, d->device_id, &sr);
        if (r >= 0)
                r = prepare_sas(d, sr, SAS_HUB_LIFETIME_S);
        if (r >= 0) {
                d->op = OP_HUB_SIGN;
                r = submit_job(d, TPM_JOB_SIGN, (const uint8_t *)d->sts, d->sts_len, false);
        }
        if (r < 0) {
                log_warn_errno(r, "provisioning: could not start the hub check: %s", strerror(-r));
                feed_simple(d, PROV_EV_HUB_UNREACHABLE);
        }
}

static void start_register(struct prov_driver *d) {
        _cleanup_free_ char *url = NULL, *body = NULL;
        int r = dps_register_url(d->cfg->provisioning.global_endpoint, d->cfg->provisioning.id_scope, d->regid, &url);
        if (r >= 0)
                r = dps_register_body(d->regid, d->keys.ek.buf, d->keys.ek.len, d->keys.srk.buf, d->keys.srk.len,
                                      d->payload, &body);
        if (r >= 0) {
                d->op = OP_REGISTER;
                r = send_cloud(d, "PUT", url, NULL, body, cloud_timeout_ms(d));
        }
        if (r < 0) {
                step_failed(d, r, "could not send the DPS registration");
                return;
        }
        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid)),
                   "provisioning: registering \"%s\" with DPS (scope %s, reason: %s)", d->regid,
                   d->cfg->provisioning.id_scope, prov_reason_to_string(d->m.reason));
}

static void start_import(struct prov_driver *d, bool challenge_slot) {
        const uint8_t *blob = d->challenge.blob;
        size_t len = d->challenge.blob_len;
        if (!challenge_slot && d->reg_valid && d->reg.auth_blob) {
                blob = d->reg.auth_blob;
                len = d->reg.auth_blob_len;
        }
        if (!blob) {
                struct prov_event_data ed = {.message = "no authenticationKey to import"};
                feed(d, PROV_EV_IMPORT_FAILED, &ed);
                return;
        }
        d->op = OP_IMPORT;
        int r = submit_job(d, TPM_JOB_IMPORT, blob, len, challenge_slot);
        if (r < 0) {
                struct prov_event_data ed = {.message = "TPM queue full"};
                feed(d, PROV_EV_IMPORT_FAILED, &ed);
        }
}

static void start_signed_dps_request(struct prov_driver *d, enum op_kind sign_op) {
        char *sr = NULL;
        int r = sas_dps_resource(d->cfg->provisioning.id_scope, d->regid, &sr);
        if (r >= 0)
                r = prepare_sas(d, sr, SAS_DPS_LIFETIME_S);
        if (r >= 0) {
                d->op = sign_op;
                r = submit_job(d, TPM_JOB_SIGN, (const uint8_t *)d->sts, d->sts_len, true);
        }
        if (r < 0)
                step_failed(d, r, "could not sign the DPS request");
}

static int write_state(struct prov_driver *d) {
        struct tpmid_state st = {0};
        snprintf(st.hub, sizeof(st.hub), "%s", d->hub);
        snprintf(st.device_id, sizeof(st.device_id), "%s", d->device_id);
        snprintf(st.registration_id, sizeof(st.registration_id), "%s", d->regid);
        snprintf(st.id_scope, sizeof(st.id_scope), "%s", d->cfg->provisioning.id_scope);
        memcpy(st.ek_digest, d->ek_digest, sizeof(st.ek_digest));
        memcpy(st.config_digest, d->config_digest, sizeof(st.config_digest));
        st.assigned_at = (int64_t)time(NULL);
        if (d->reg_valid)
                snprintf(st.substatus, sizeof(st.substatus), "%s", d->reg.substatus);
        /* A few hundred bytes to local storage: done inline; the rename is
         * atomic and the fsyncs are what make the state survive a power cut. */
        return state_save(d->state_path, &st);
}

static void timer_cb(uv_timer_t *t) {
        struct prov_driver *d = t->data;
        if (d->timer_for_poll) {
                d->timer_for_poll = false;
                start_signed_dps_request(d, OP_POLL_SIGN);
                return;
        }
        feed_simple(d, PROV_EV_TIMER);
}

static void load_state(struct prov_driver *d) {
        struct tpmid_state st;
        int r = state_load(d->state_path, &st);
        enum prov_event ev = PROV_EV_STATE_MISSING_OR_CORRUPT;
        if (r == -ENOENT)
                log_info("provisioning: no saved identity in %s", d->state_path);
        else if (r == -EBADMSG)
                log_warn("provisioning: the saved identity in %s is corrupt or incomplete and is not trusted; "
                         "provisioning again",
                         d->state_path);
        else if (r < 0)
                log_warn("provisioning: could not read %s: %s; provisioning again", d->state_path, strerror(-r));
        else
                switch (state_check(&st, d->ek_digest, d->config_digest)) {
                case STATE_MATCH_OK:
                        ev = PROV_EV_STATE_LOADED_VALID;
                        break;
                case STATE_MATCH_CONFIG_CHANGED:
                        log_info("provisioning: the saved identity was made with other provisioning settings; "
                                 "serving it while DPS runs again");
                        ev = PROV_EV_STATE_LOADED_STALE;
                        break;
                case STATE_MATCH_OTHER_TPM:
                        log_warn("provisioning: the saved identity belongs to another TPM (its endorsement key "
                                 "differs); not serving it");
                        break;
                }
        if (ev == PROV_EV_STATE_MISSING_OR_CORRUPT) {
                feed_simple(d, ev);
                return;
        }

        /* The saved identity is only usable while its key is in the TPM. */
        snprintf(d->hub, sizeof(d->hub), "%s", st.hub);
        snprintf(d->device_id, sizeof(d->device_id), "%s", st.device_id);
        d->loaded_stale = ev == PROV_EV_STATE_LOADED_STALE;
        d->op = OP_HAS_KEY;
        if (submit_job(d, TPM_JOB_HAS_KEY, NULL, 0, false) < 0)
                feed_simple(d, PROV_EV_STATE_MISSING_OR_CORRUPT);
}

static void reset_run(struct prov_driver *d) {
        dps_challenge_clear(&d->challenge);
        dps_registration_clear(&d->reg);
        d->reg_valid = false;
        d->operation_id[0] = 0;
}

static void perform(struct prov_driver *d, const struct prov_action *a) {
        if (a->kind != PROV_ACT_NONE && a->kind != PROV_ACT_NOTIFY_STATUS) {
                /* A new operation supersedes whatever was pending (the machine
                 * owns one timer and one request at a time). */
                uv_timer_stop(&d->timer);
                d->timer_for_poll = false;
                d->next_retry_at = 0;
                if (d->cloud_busy) {
                        (void)cloud_cancel(d->cloud, d->cloud_id); /* -ENOENT only if it just finished */
                        d->cloud_busy = false;
                }
        }
        switch (a->kind) {
        case PROV_ACT_NONE:
        case PROV_ACT_NOTIFY_STATUS:
        case _PROV_ACT_MAX:
                break;
        case PROV_ACT_LOAD_STATE:
                load_state(d);
                break;
        case PROV_ACT_CHECK_HUB:
                start_hub_check(d);
                break;
        case PROV_ACT_DPS_REGISTER:
                reset_run(d);
                start_register(d);
                break;
        case PROV_ACT_TPM_IMPORT_CHALLENGE:
                start_import(d, true);
                break;
        case PROV_ACT_DPS_AUTH_REGISTER:
                start_signed_dps_request(d, OP_AUTH_SIGN);
                break;
        case PROV_ACT_DPS_POLL:
                d->timer_for_poll = true;
                uv_timer_start(&d->timer, timer_cb, a->delay_ms, 0);
                break;
        case PROV_ACT_TPM_IMPORT_FINAL:
                start_import(d, false);
                break;
        case PROV_ACT_SAVE_STATE: {
                int r = write_state(d);
                if (r < 0) {
                        log_error("provisioning: could not save the identity to %s: %s; it is served but will "
                                  "not survive a restart",
                                  d->state_path, strerror(-r));
                        feed_simple(d, PROV_EV_SAVE_FAILED);
                } else
                        feed_simple(d, PROV_EV_SAVED);
                break;
        }
        case PROV_ACT_ARM_TIMER:
                d->next_retry_at = (int64_t)time(NULL) + (int64_t)((a->delay_ms + 999) / 1000);
                uv_timer_start(&d->timer, timer_cb, a->delay_ms, 0);
                log_info("provisioning: next DPS attempt in %.1f s", (double)a->delay_ms / 1000.0);
                break;
        }
}

static uint32_t retry_after_of(const struct cloud_response *resp) {
        uint32_t s = 0;
        if (resp->retry_after && dps_parse_retry_after(resp->retry_after, (int64_t)time(NULL), &s) < 0)
                s = 0;
        return s;
}

/* A non-success HTTP answer (or none at all) to a DPS request. */
static void dps_failure(struct prov_driver *d, enum dps_request req, const struct cloud_response *resp) {
        if (resp->error) {
                char msg[300];
                snprintf(msg, sizeof(msg), "DPS unreachable: %s", resp->error_msg);
                log_warn("provisioning: %s", msg);
                transient(d, 0, 0, msg);
                return;
        }
        struct dps_error err;
        bool have_err = dps_parse_error((const uint8_t *)resp->body, resp->body_len, &err) >= 0;
        const char *reason = NULL;
        enum dps_class cls = dps_classify(req, (int)resp->status, have_err ? &err : NULL, &reason);
        if (req == DPS_REQUEST_REGISTER && resp->status == 401) {
                /* Only reached when the 401 carried no usable challenge. With a
                 * DPS error body it is DPS's verdict on this TPM's enrollment
                 * ("Endorsement key is invalid, or does not match the
                 * Enrollment", "Enrollment is disabled"): retrying cannot
                 * change it. Without one it is some proxy's or a garbled
                 * answer: retry. */
                bool verdict = have_err && (err.code != 0 || err.message[0]);
                cls = verdict ? DPS_CLASS_PERMANENT : DPS_CLASS_TRANSIENT;
                reason = verdict ? "DPS refused the TPM attestation" : "DPS answered 401 without a usable challenge";
        }
        char msg[DPS_ERROR_MESSAGE_MAX + 64];
        if (have_err && err.message[0])
                snprintf(msg, sizeof(msg), "%s (HTTP %ld): %s", reason ? reason : "DPS error", resp->status,
                         err.message);
        else
                snprintf(msg, sizeof(msg), "%s (HTTP %ld)", reason ? reason : "unexpected DPS answer", resp->status);
        int64_t code = have_err ? err.code : 0;
        if (req == DPS_REQUEST_POLL && (resp->status == 401 || resp->status == 404)) {
                /* The second PUT of this run was accepted with the same challenge
                 * key, so DPS knows this TPM and its enrollment. A 401 now means
                 * that key went stale (DPS issued a newer challenge for this
                 * registration id, e.g. to a request a crashed predecessor of ours
                 * left in flight); a 404 that DPS forgot the operation (expired,
                 * or lost). Polling again cannot help and neither is a verdict on
                 * the enrollment: start a new run after a backoff. A real refusal
                 * shows on that run's first PUT. POLL_FAILED (not TRANSIENT_ERROR,
                 * which re-polls the same operation). */
                log_struct(LOG_WARNING, NULL,
                           LOG_FIELDS(LOG_NUM("HTTP_STATUS", resp->status), LOG_NUM("DPS_ERROR_CODE", code)),
                           "provisioning: DPS %s (%s); registering again",
                           resp->status == 401 ? "no longer accepts this run's challenge key"
                                               : "no longer knows this run's operation",
                           msg);
                set_last(d, "error", code, msg);
                struct prov_event_data ed = {.http_status = (int)resp->status,
                                             .code = code,
                                             .message = msg,
                                             .retry_after_s = retry_after_of(resp),
                                             .permanent = false};
                feed(d, PROV_EV_POLL_FAILED, &ed);
                return;
        }
        if (req == DPS_REQUEST_AUTH_REGISTER && resp->status == 401 &&
            ++d->stale_challenge_runs < PROV_STALE_CHALLENGE_RUNS) {
                /* DPS refused a SAS signed with the key it issued moments ago.
                 * The usual cause is a newer challenge for this registration id
                 * (DPS keeps only the latest), issued to a request still in
                 * flight from a crashed predecessor of ours; a fresh run then
                 * succeeds. Only repeated refusals are DPS's verdict. */
                log_struct(LOG_WARNING, NULL,
                           LOG_FIELDS(LOG_NUM("HTTP_STATUS", resp->status), LOG_NUM("DPS_ERROR_CODE", code)),
                           "provisioning: DPS refused this run's signature (%s); registering again (%u of %u)", msg,
                           d->stale_challenge_runs, (unsigned)PROV_STALE_CHALLENGE_RUNS);
                transient(d, (int)resp->status, retry_after_of(resp), msg);
                return;
        }
        if (cls == DPS_CLASS_PERMANENT) {
                log_struct(LOG_ERR, LOG_MESSAGE_DPS_FAILED,
                           LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid), LOG_NUM("HTTP_STATUS", resp->status),
                                      LOG_NUM("DPS_ERROR_CODE", code)),
                           "provisioning: DPS refused the registration: %s; not retrying until reprovisioning is "
                           "requested or the configuration changes",
                           msg);
                set_last(d, "failed", code, msg);
                struct prov_event_data ed = {.http_status = (int)resp->status, .code = code, .message = msg};
                feed(d, PROV_EV_PERMANENT_ERROR, &ed);
                return;
        }
        log_struct(LOG_WARNING, NULL, LOG_FIELDS(LOG_NUM("HTTP_STATUS", resp->status), LOG_NUM("DPS_ERROR_CODE", code)),
                   "provisioning: DPS request failed, will retry: %s", msg);
        transient(d, (int)resp->status, retry_after_of(resp), msg);
}

static void handle_registration(struct prov_driver *d, const struct cloud_response *resp) {
        struct dps_registration reg;
        int r = dps_parse_registration((const uint8_t *)resp->body, resp->body_len, &reg);
        if (r < 0) {
                log_warn("provisioning: DPS sent a malformed operation status (%s), will retry", strerror(-r));
                transient(d, (int)resp->status, retry_after_of(resp), "malformed DPS operation status");
                return;
        }
        if (reg.operation_id[0])
                snprintf(d->operation_id, sizeof(d->operation_id), "%s", reg.operation_id);
        switch (reg.status) {
        case DPS_STATUS_ASSIGNING: {
                dps_registration_clear(&reg);
                struct prov_event_data ed = {.retry_after_s = retry_after_of(resp)};
                feed(d, PROV_EV_POLL_ASSIGNING, &ed);
                return;
        }
        case DPS_STATUS_ASSIGNED:
                dps_registration_clear(&d->reg);
                d->reg = reg;
                d->reg_valid = true;
                d->stale_challenge_runs = 0;
                log_info("provisioning: DPS assigned \"%s\" to hub %s as device %s (%s)", d->regid, reg.assigned_hub,
                         reg.device_id, reg.substatus[0] ? reg.substatus : "no substatus");
                feed_simple(d, PROV_EV_POLL_ASSIGNED);
                return;
        case DPS_STATUS_UNASSIGNED:
        case DPS_STATUS_FAILED:
        case DPS_STATUS_DISABLED:
        case _DPS_STATUS_MAX: {
                const char *reason = NULL;
                enum dps_class cls = dps_classify_registration(&reg, &reason);
                char msg[DPS_ERROR_MESSAGE_MAX + 64];
                snprintf(msg, sizeof(msg), "registration %s: %s",
                         (dps_status_to_string(reg.status) ? dps_status_to_string(reg.status) : "failed"),
                         reg.error_message[0] ? reg.error_message : (reason ? reason : "no reason given"));
                log_struct(LOG_ERR, LOG_MESSAGE_DPS_FAILED,
                           LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid), LOG_NUM("DPS_ERROR_CODE", reg.error_code),
                                      LOG_STR("DPS_OPERATION_ID", d->operation_id)),
                           "provisioning: %s", msg);
                set_last(d, (dps_status_to_string(reg.status) ? dps_status_to_string(reg.status) : "failed"),
                         reg.error_code, msg);
                struct prov_event_data ed = {.http_status = (int)resp->status,
                                             .code = reg.error_code,
                                             .message = msg,
                                             .permanent = cls == DPS_CLASS_PERMANENT};
                dps_registration_clear(&reg);
                feed(d, PROV_EV_POLL_FAILED, &ed);
                return;
        }
        }
}

static void cloud_done(const struct cloud_response *resp, void *userdata) {
        struct prov_driver *d = userdata;
        d->cloud_busy = false;
        if (d->closing)
                return;
        switch (d->op) {
        case OP_HUB_GET:
                if (resp->error) {
                        log_warn("provisioning: hub %s unreachable (%s); keeping the saved identity", d->hub,
                                 resp->error_msg);
                        feed_simple(d, PROV_EV_HUB_UNREACHABLE);
                        return;
                }
                if (resp->status >= 200 && resp->status < 300) {
                        log_info("provisioning: hub %s accepts device %s", d->hub, d->device_id);
                        feed_simple(d, PROV_EV_HUB_OK);
                        return;
                }
                if (resp->status == 401 || resp->status == 403 || resp->status == 404) {
                        log_struct(LOG_WARNING, NULL, LOG_FIELDS(LOG_NUM("HTTP_STATUS", resp->status)),
                                   "provisioning: hub %s rejects device %s (HTTP %ld): the device may have moved",
                                   d->hub, d->device_id, resp->status);
                        feed_simple(d, PROV_EV_HUB_REJECTED);
                        return;
                }
                log_warn("provisioning: hub %s answered HTTP %ld; keeping the saved identity", d->hub, resp->status);
                feed_simple(d, PROV_EV_HUB_UNREACHABLE);
                return;
        case OP_REGISTER:
                if (!resp->error && resp->status == 401) {
                        dps_challenge_clear(&d->challenge);
                        int r = dps_parse_challenge((const uint8_t *)resp->body, resp->body_len, &d->challenge);
                        if (r < 0) {
                                /* No challenge: DPS refused the attestation itself
                                 * (EK mismatch, enrollment disabled); see dps_failure(). */
                                dps_failure(d, DPS_REQUEST_REGISTER, resp);
                                return;
                        }
                        feed_simple(d, PROV_EV_DPS_401_CHALLENGE);
                        return;
                }
                dps_failure(d, DPS_REQUEST_REGISTER, resp);
                return;
        case OP_AUTH_PUT:
                if (!resp->error && resp->status == 202) {
                        struct dps_operation op;
                        if (dps_parse_operation((const uint8_t *)resp->body, resp->body_len, &op) < 0) {
                                transient(d, 202, retry_after_of(resp), "malformed DPS 202 answer");
                                return;
                        }
                        snprintf(d->operation_id, sizeof(d->operation_id), "%s", op.operation_id);
                        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_STR("DPS_OPERATION_ID", op.operation_id)),
                                   "provisioning: DPS accepted the registration, operation %s", op.operation_id);
                        struct prov_event_data ed = {.retry_after_s = retry_after_of(resp)};
                        feed(d, PROV_EV_DPS_202, &ed);
                        return;
                }
                if (!resp->error && resp->status == 200) {
                        handle_registration(d, resp);
                        return;
                }
                dps_failure(d, DPS_REQUEST_AUTH_REGISTER, resp);
                return;
        case OP_POLL_GET:
                if (!resp->error && (resp->status == 200 || resp->status == 202)) {
                        handle_registration(d, resp);
                        return;
                }
                dps_failure(d, DPS_REQUEST_POLL, resp);
                return;
        case OP_NONE:
        case OP_HAS_KEY:
        case OP_HUB_SIGN:
        case OP_IMPORT:
        case OP_AUTH_SIGN:
        case OP_POLL_SIGN:
                break;
        }
}

static char *signed_token(struct prov_driver *d, const char *skn) {
        char *tok = NULL;
        if (sas_token_format(d->sr, d->job.digest, d->sas_expiry, skn, &tok) < 0)
                return NULL;
        return tok;
}

static void job_done(struct tpm_job *job, void *userdata) {
        struct prov_driver *d = userdata;
        d->job_busy = false;
        if (d->closing) {
                maybe_free(d);
                return;
        }
        if (d->job_gen != d->op_gen)
                return; /* superseded while the TPM worked */
        int r = job->r;
        switch (d->op) {
        case OP_HAS_KEY:
                if (r >= 0 && job->present) {
                        d->have_identity = true;
                        log_info("provisioning: serving the saved identity: hub %s, device %s", d->hub, d->device_id);
                        feed_simple(d, d->loaded_stale ? PROV_EV_STATE_LOADED_STALE : PROV_EV_STATE_LOADED_VALID);
                        return;
                }
                if (r < 0)
                        log_warn("provisioning: could not check the TPM for the saved identity's key: %s",
                                 job->err.msg);
                else
                        log_warn("provisioning: the saved identity's key is not in the TPM (handle 0x%08x); "
                                 "provisioning again",
                                 TPM_AUTH_KEY_BASE + d->cfg->tpm.auth_key_index);
                feed_simple(d, PROV_EV_STATE_MISSING_OR_CORRUPT);
                return;
        case OP_HUB_SIGN: {
                if (r < 0) {
                        log_warn("provisioning: could not sign the hub check: %s", job->err.msg);
                        feed_simple(d, PROV_EV_HUB_UNREACHABLE);
                        return;
                }
                _cleanup_free_ char *tok = signed_token(d, NULL), *dev = NULL, *url = NULL;
                int rr = tok ? sas_percent_encode(d->device_id, strlen(d->device_id), &dev) : -ENOMEM;
                if (rr >= 0 && asprintf(&url, "https://%s/devices/%s/modules?api-version=%s", d->hub, dev,
                                        PROV_HUB_API_VERSION) < 0) {
                        url = NULL;
                        rr = -ENOMEM;
                }
                if (rr >= 0) {
                        d->op = OP_HUB_GET;
                        rr = send_cloud(d, "GET", url, tok, NULL, PROV_HUB_CHECK_TIMEOUT_MS);
                }
                if (tok)
                        explicit_zero(tok, strlen(tok));
                if (rr < 0)
                        feed_simple(d, PROV_EV_HUB_UNREACHABLE);
                return;
        }
        case OP_IMPORT: {
                if (r < 0) {
                        log_struct(LOG_ERR, NULL, LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc)),
                                   "provisioning: importing the DPS key into the TPM failed: %s", job->err.msg);
                        struct prov_event_data ed = {.message = job->err.msg};
                        set_last(d, "error", 0, job->err.msg);
                        feed(d, PROV_EV_IMPORT_FAILED, &ed);
                        return;
                }
                if (d->m.state == PROV_IMPORTING_FINAL && d->reg_valid) {
                        /* The new key is in the serving slot: switch identities now. */
                        snprintf(d->hub, sizeof(d->hub), "%s", d->reg.assigned_hub);
                        snprintf(d->device_id, sizeof(d->device_id), "%s", d->reg.device_id);
                        d->have_identity = true;
                        set_last(d, "assigned", 0, d->reg.substatus);
                        log_struct(LOG_NOTICE, LOG_MESSAGE_PROVISIONED,
                                   LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid), LOG_STR("IOTHUB", d->hub),
                                              LOG_STR("DEVICE_ID", d->device_id),
                                              LOG_STR("DPS_OPERATION_ID", d->operation_id)),
                                   "provisioned: device %s on hub %s", d->device_id, d->hub);
                }
                feed_simple(d, PROV_EV_IMPORT_OK);
                return;
        }
        case OP_AUTH_SIGN:
        case OP_POLL_SIGN: {
                if (r < 0) {
                        set_last(d, "error", 0, job->err.msg);
                        struct prov_event_data ed = {.message = job->err.msg};
                        feed(d, PROV_EV_TRANSIENT_ERROR, &ed);
                        return;
                }
                _cleanup_free_ char *tok = signed_token(d, SAS_DPS_KEY_NAME), *url = NULL, *body = NULL;
                int rr = tok ? 0 : -ENOMEM;
                if (rr >= 0 && d->op == OP_AUTH_SIGN) {
                        rr = dps_register_url(d->cfg->provisioning.global_endpoint, d->cfg->provisioning.id_scope,
                                              d->regid, &url);
                        if (rr >= 0)
                                rr = dps_auth_register_body(d->regid, d->payload, &body);
                        if (rr >= 0) {
                                d->op = OP_AUTH_PUT;
                                rr = send_cloud(d, "PUT", url, tok, body, cloud_timeout_ms(d));
                        }
                } else if (rr >= 0) {
                        rr = dps_operation_url(d->cfg->provisioning.global_endpoint, d->cfg->provisioning.id_scope,
                                               d->regid, d->operation_id, &url);
                        if (rr >= 0) {
                                d->op = OP_POLL_GET;
                                rr = send_cloud(d, "GET", url, tok, NULL, cloud_timeout_ms(d));
                        }
                }
                if (tok)
                        explicit_zero(tok, strlen(tok));
                if (rr < 0)
                        step_failed(d, rr, "could not send the DPS request");
                return;
        }
        case OP_NONE:
        case OP_HUB_GET:
        case OP_REGISTER:
        case OP_AUTH_PUT:
        case OP_POLL_GET:
                break;
        }
}

/* ---- public API ---- */

static void timer_close_cb(uv_handle_t *h) {
        struct prov_driver *d = h->data;
        d->open_handles--;
        maybe_free(d);
}

static enum prov_mode mode_of(enum config_reprovisioning_mode m) {
        switch (m) {
        case CONFIG_REPROVISION_ALWAYS_ON_STARTUP:
                return PROV_MODE_ALWAYS_ON_STARTUP;
        case CONFIG_REPROVISION_ON_ERROR_ONLY:
                return PROV_MODE_ON_ERROR_ONLY;
        case CONFIG_REPROVISION_DYNAMIC:
        case _CONFIG_REPROVISION_MAX:
                break;
        }
        return PROV_MODE_DYNAMIC;
}

int prov_driver_new(uv_loop_t *loop, const struct tpmid_config *cfg, struct tpm_worker *w, struct prov_driver **ret) {
        struct prov_driver *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->loop = loop;
        d->cfg = cfg;
        d->worker = w;
        if (asprintf(&d->state_path, "%s/%s", cfg->state_dir, STATE_FILE_NAME) < 0) {
                free(d);
                return -ENOMEM;
        }
        const char *connect_to = getenv("TPMIDD_CLOUD_CONNECT_TO");
        struct cloud_options co = {.ca_bundle = cfg->cloud_ca_bundle, .connect_to = connect_to};
        int r = cloud_new(loop, &co, &d->cloud);
        if (r < 0) {
                free(d->state_path);
                free(d);
                return r;
        }
        uv_timer_init(loop, &d->timer);
        d->timer.data = d;
        d->open_handles = 1;
        prov_machine_init(&d->m, mode_of(cfg->auto_reprovisioning_mode), NULL, NULL);
        snprintf(d->status_text, sizeof(d->status_text), "waiting for the TPM");
        *ret = d;
        return 0;
}

void prov_driver_set_status_cb(struct prov_driver *d, void (*cb)(void *userdata), void *userdata) {
        d->status_cb = cb;
        d->status_userdata = userdata;
}

/* Registration id, payload and the digests that tie a saved state to them. */
static int load_provisioning_inputs(struct prov_driver *d) {
        char *regid = d->cfg->provisioning.registration_id ? strdup(d->cfg->provisioning.registration_id)
                                                           : tpm_registration_id(d->keys.ek.buf, d->keys.ek.len);
        if (!regid)
                return -ENOMEM;
        free(d->regid);
        d->regid = regid;
        json_decref(d->payload);
        d->payload = NULL;
        free(d->payload_json);
        d->payload_json = NULL;
        if (d->cfg->provisioning.payload_path) {
                _cleanup_free_ char *buf = NULL;
                size_t len = 0;
                char err[160] = "";
                int r = read_full_file(d->cfg->provisioning.payload_path, DPS_PAYLOAD_MAX_BYTES, &buf, &len);
                if (r < 0)
                        return log_error_errno(r, "provisioning: could not read the payload file %s: %s",
                                               d->cfg->provisioning.payload_path, strerror(-r));
                r = dps_payload_parse((const uint8_t *)buf, len, &d->payload, err);
                if (r < 0)
                        return log_error_errno(r, "provisioning: the payload file %s is not valid JSON: %s",
                                               d->cfg->provisioning.payload_path, err);
                d->payload_json = json_dumps(d->payload, JSON_COMPACT | JSON_ENCODE_ANY);
        }
        struct state_config_input in = {
                .global_endpoint = d->cfg->provisioning.global_endpoint,
                .id_scope = d->cfg->provisioning.id_scope,
                .registration_id = d->regid,
                .payload = d->payload,
        };
        int r = state_config_digest(&in, d->config_digest);
        if (r < 0)
                return r;
        return state_ek_digest(d->keys.ek.buf, d->keys.ek.len, d->ek_digest);
}

int prov_driver_start(struct prov_driver *d, const struct tpm_keys *keys) {
        if (d->started)
                return 0;
        d->keys = *keys;
        int r = load_provisioning_inputs(d);
        if (r < 0)
                return r;
        d->started = true;
        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid)),
                   "provisioning: registration id %s%s, mode %s", d->regid,
                   d->cfg->provisioning.registration_id ? "" : " (derived from the endorsement key)",
                   prov_mode_to_string(d->m.mode));
        feed_simple(d, PROV_EV_START);
        return 0;
}

int prov_driver_reprovision(struct prov_driver *d) {
        if (!d->started)
                return -EAGAIN;
        log_info("provisioning: reprovisioning requested by a client");
        feed_simple(d, PROV_EV_CLIENT_REPROVISION);
        return 0;
}

enum api_report_action prov_driver_report_bad_credentials(struct prov_driver *d, int hub_status) {
        if (d->m.mode == PROV_MODE_ON_ERROR_ONLY || !api_report_is_rejection(hub_status))
                return API_REPORT_IGNORED;
        if (prov_is_busy(&d->m))
                return API_REPORT_ALREADY_PROVISIONING;
        if (d->m.state == PROV_CHECKING_HUB)
                return API_REPORT_CHECKING_HUB; /* coalesced into the check in flight */
        if (!d->started || d->m.state != PROV_PROVISIONED)
                return API_REPORT_IGNORED; /* nothing served yet, or DPS refused us (FAILED_PERMANENT) */
        uint64_t now = uv_now(d->loop);
        if (d->report_checked && now - d->report_check_ms < PROV_REPORT_MIN_INTERVAL_MS)
                return API_REPORT_RATE_LIMITED;
        feed_simple(d, PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS);
        if (d->m.state != PROV_CHECKING_HUB)
                return API_REPORT_IGNORED; /* the machine declined (e.g. nothing served) */
        d->report_checked = true;
        d->report_check_ms = now;
        return API_REPORT_CHECKING_HUB;
}

void prov_driver_set_config(struct prov_driver *d, const struct tpmid_config *cfg) {
        const struct tpmid_config *old = d->cfg;
        bool changed = !streq_ptr(old->provisioning.global_endpoint, cfg->provisioning.global_endpoint) ||
                       !streq_ptr(old->provisioning.id_scope, cfg->provisioning.id_scope) ||
                       !streq_ptr(old->provisioning.registration_id, cfg->provisioning.registration_id) ||
                       !streq_ptr(old->provisioning.payload_path, cfg->provisioning.payload_path);
        d->cfg = cfg;
        d->m.mode = mode_of(cfg->auto_reprovisioning_mode); /* stand-in until the policy branch's setter merges */
        if (!changed || !d->started)
                return;
        if (load_provisioning_inputs(d) < 0)
                return; /* logged; keep serving what we have */
        log_info("provisioning: provisioning settings changed");
        feed_simple(d, PROV_EV_CONFIG_CHANGED);
}

bool prov_driver_identity(const struct prov_driver *d, const char **hub, const char **device_id) {
        if (!d->have_identity)
                return false;
        *hub = d->hub;
        *device_id = d->device_id;
        return true;
}

enum prov_state prov_driver_state(const struct prov_driver *d) {
        return d->m.state;
}

const char *prov_driver_registration_id(const struct prov_driver *d) {
        return d->regid;
}

const char *prov_driver_payload_json(const struct prov_driver *d) {
        return d->payload_json;
}

void prov_driver_fill_status(const struct prov_driver *d, struct api_status *st) {
        st->provisioning_state = prov_state_to_string(d->m.state);
        st->hub_name = d->have_identity ? d->hub : NULL;
        st->device_id = d->have_identity ? d->device_id : NULL;
        st->registration_id = d->regid;
        st->has_last_result = d->has_last;
        st->last_status = d->last_status;
        st->last_error_code = d->last_code;
        st->last_message = d->has_last && d->last_message[0] ? d->last_message : NULL;
        st->last_at = d->last_at;
        st->next_retry_at = d->m.state == PROV_BACKING_OFF ? d->next_retry_at : 0;
}

const char *prov_driver_status_text(struct prov_driver *d) {
        const char *mode = prov_mode_to_string(d->m.mode);
        switch (d->m.state) {
        case PROV_PROVISIONED:
                snprintf(d->status_text, sizeof(d->status_text), "provisioned: hub %s, device %s (%s)", d->hub,
                         d->device_id, mode);
                break;
        case PROV_BACKING_OFF:
                snprintf(d->status_text, sizeof(d->status_text), "DPS attempt failed (%s), retrying at %lld%s%s",
                         d->last_message[0] ? d->last_message : "error", (long long)d->next_retry_at,
                         d->have_identity ? "; serving hub " : "", d->have_identity ? d->hub : "");
                break;
        case PROV_FAILED_PERMANENT:
                snprintf(d->status_text, sizeof(d->status_text), "DPS refused the device: %s%s%s",
                         d->last_message[0] ? d->last_message : "error", d->have_identity ? "; serving hub " : "",
                         d->have_identity ? d->hub : "");
                break;
        case PROV_IDLE:
                snprintf(d->status_text, sizeof(d->status_text), "waiting for the TPM");
                break;
        case PROV_LOADING_STATE:
        case PROV_CHECKING_HUB:
        case PROV_REGISTERING:
        case PROV_IMPORTING_CHALLENGE:
        case PROV_AUTHENTICATING:
        case PROV_POLLING:
        case PROV_IMPORTING_FINAL:
        case PROV_SAVING:
        case _PROV_STATE_MAX:
                snprintf(d->status_text, sizeof(d->status_text), "provisioning: %s%s%s",
                         prov_state_to_string(d->m.state), d->have_identity ? "; serving hub " : "",
                         d->have_identity ? d->hub : "");
                break;
        }
        return d->status_text;
}

void prov_driver_close(struct prov_driver *d) {
        if (!d || d->closing)
                return;
        d->closing = true;
        cloud_close(d->cloud);
        d->cloud = NULL;
        d->cloud_busy = false;
        uv_timer_stop(&d->timer);
        uv_close((uv_handle_t *)&d->timer, timer_close_cb);
}
