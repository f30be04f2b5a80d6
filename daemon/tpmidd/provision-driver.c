/* Provisioning driver. See provision-driver.h for the contract and
 * lib/provision.h for the policy it carries out.
 *
 * The driver keeps no state machine of its own: what it remembers is the
 * action in flight (cur: the machine's action and which of its asynchronous
 * parts runs), the data the run collected (challenge blob, operation id,
 * assignment) and what status shows. Completions carry the operation
 * generation, so a completion that arrives after the machine moved on (e.g.
 * reprovision requested while a poll was waiting) is dropped instead of being
 * fed as an event for the wrong state. */
#include "provision-driver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "dps.h"
#include "httpdate.h"
#include "log.h"
#include "sas.h"
#include "tpm.h"
#include "util.h"

#define PROV_STATUS_TEXT_MAX 1024 /* bytes of the STATUS= line */
/* s ahead of now the clock-step timerfd is armed (it only exists to be
 * cancelled by a step; reaching it just re-arms it) */
#define PROV_CLOCK_WATCH_SPAN_S (365 * 86400)

/* Which asynchronous part of the current action is in flight. */
enum step {
        STEP_NONE,
        STEP_KEY,     /* LOAD_STATE: TPM lookup of the key in the slot the state file names */
        STEP_OTHER_KEY, /* LOAD_STATE: TPM lookup of the other slot (a crashed swap left a key there?) */
        STEP_EVICT,   /* TPM_EVICT */
        STEP_DELAY,   /* DPS_POLL: waiting action.delay_ms; ARM_TIMER: the backoff */
        STEP_SIGN,    /* a TPM signature of the request's SAS */
        STEP_SEND,    /* the HTTPS request */
        STEP_IMPORT,  /* a TPM import */
};

struct prov_driver {
        const struct tpmid_config *cfg;
        struct prov_io io;
        bool not_persisted; /* the last save failed (for the log line when one succeeds again) */

        struct prov_machine m;
        bool started, closing, io_closed;

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
        struct tpmid_state loaded; /* LOAD_STATE: the file, until its key is found */
        enum state_match loaded_match;
        int loaded_key_r;          /* LOAD_STATE: the named slot's lookup */
        bool loaded_key_present;

        /* the slot the TPM worker signs with for jobs without a slot (the socket's) */
        enum prov_slot told_slot;
        enum prov_slot told_pending; /* changed while serving_job was in flight */
        struct tpm_job serving_job;
        bool serving_job_busy;

        /* what the current DPS run collected */
        struct dps_challenge challenge;
        char operation_id[DPS_OPERATION_ID_MAX + 1];
        struct dps_registration reg;
        bool reg_valid;

        /* the action in flight */
        struct prov_action cur;
        enum step step;
        uint64_t gen;
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
        char last_message[PROV_MESSAGE_MAX + 1];
        int64_t last_at;
        int64_t next_retry_at;
        char status_text[PROV_STATUS_TEXT_MAX];
        void (*status_cb)(void *userdata);
        void *status_userdata;
};

static void perform(struct prov_driver *d);
static void switch_identity(struct prov_driver *d);

static void maybe_free(struct prov_driver *d) {
        if (!d->closing || !d->io_closed || d->job_busy || d->serving_job_busy)
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
        d->last_at = d->io.now_unix(d->io.userdata);
}

static void publish_status(struct prov_driver *d) {
        if (d->status_cb)
                d->status_cb(d->status_userdata);
}

/* Carry out an action the machine returned. A new operation supersedes
 * whatever was in flight; an event the machine coalesced (NONE, e.g. a
 * reprovision request during a run) leaves the operation in flight valid: its
 * completion is still the machine's next event, so dropping it would stall
 * the run. */
static void tell_serving(struct prov_driver *d, enum prov_slot slot);

static void run(struct prov_driver *d, const struct prov_action *a) {
        /* Before any TPM job of the action: later jobs without a slot sign with the new serving key. */
        tell_serving(d, a->serving_slot);
        if (a->kind != PROV_ACT_NONE && a->kind != PROV_ACT_NOTIFY_STATUS) {
                d->gen++;
                d->io.timer_stop(d->io.userdata);
                d->next_retry_at = 0;
                if (d->cloud_busy) {
                        d->io.cloud_cancel(d->io.userdata, d->cloud_id);
                        d->cloud_busy = false;
                }
                d->cur = *a;
                d->step = STEP_NONE;
                perform(d);
        }
        if (a->status_changed)
                publish_status(d);
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
        log_debug("provisioning: %s --%s--> %s, action %s (slot %s, blob %s)", prov_state_to_string(before),
                  prov_event_to_string(ev), prov_state_to_string(d->m.state), prov_action_to_string(a.kind),
                  prov_slot_to_string(a.slot), prov_blob_to_string(a.blob));
        run(d, &a);
}

static void feed_simple(struct prov_driver *d, enum prov_event ev) {
        feed(d, ev, NULL);
}

/* ---- TPM ---- */

static void job_done(struct tpm_job *job, void *userdata);

static void serving_job_done(struct tpm_job *job, void *userdata) {
        struct prov_driver *d = userdata;
        d->serving_job_busy = false;
        if (d->closing) {
                maybe_free(d);
                return;
        }
        if (job->r < 0)
                log_warn("provisioning: could not switch the TPM socket's signing slot: %s", job->err.msg);
        if (d->told_pending != d->told_slot)
                tell_serving(d, d->told_pending);
}

/* TPM_JOB_SET_SERVING when the machine's serving slot changed. The worker
 * runs jobs in submission order, so every job submitted after this one uses
 * the new slot. */
static void tell_serving(struct prov_driver *d, enum prov_slot slot) {
        if (slot == PROV_SLOT_NONE || d->closing)
                return;
        d->told_pending = slot;
        if (slot == d->told_slot || d->serving_job_busy)
                return;
        memset(&d->serving_job, 0, sizeof(d->serving_job));
        d->serving_job.kind = TPM_JOB_SET_SERVING;
        d->serving_job.key_index = prov_slot_key_index(d->cfg->tpm.auth_key_index, slot);
        d->serving_job.done = serving_job_done;
        d->serving_job.userdata = d;
        int r = d->io.tpm_submit(d->io.userdata, &d->serving_job);
        if (r < 0) {
                log_warn("provisioning: could not switch the TPM socket's signing slot: %s", strerror(-r));
                return;
        }
        d->serving_job_busy = true;
        d->told_slot = slot;
}

static int submit_job(struct prov_driver *d, enum tpm_job_kind kind, const uint8_t *in, size_t len,
                      enum prov_slot slot, enum step step) {
        if (d->job_busy)
                return -EBUSY; /* cannot happen: one operation at a time; keeps the job memory safe */
        memset(&d->job, 0, sizeof(d->job));
        d->job.kind = kind;
        d->job.in = in;
        d->job.in_len = len;
        d->job.done = job_done;
        d->job.userdata = d;
        d->job.has_key_index = true; /* the driver always names its slot */
        d->job.key_index = prov_slot_key_index(d->cfg->tpm.auth_key_index, slot);
        int r = d->io.tpm_submit(d->io.userdata, &d->job);
        if (r < 0)
                return r;
        d->job_busy = true;
        d->job_gen = d->gen;
        d->step = step;
        return 0;
}

/* ---- HTTPS ---- */

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
        int r = d->io.cloud_send(d->io.userdata, &req, cloud_done, d, &d->cloud_id);
        if (r < 0)
                return r;
        d->cloud_busy = true;
        d->step = STEP_SEND;
        return 0;
}

static long cloud_timeout_ms(const struct prov_driver *d) {
        return (long)d->cfg->cloud_timeout_sec * 1000L;
}

static enum dps_request dps_request_of(enum prov_action_kind kind) {
        switch (kind) {
        case PROV_ACT_DPS_AUTH_REGISTER:
                return DPS_REQUEST_AUTH_REGISTER;
        case PROV_ACT_DPS_POLL:
                return DPS_REQUEST_POLL;
        case PROV_ACT_NONE:
        case PROV_ACT_LOAD_STATE:
        case PROV_ACT_CHECK_HUB:
        case PROV_ACT_DPS_REGISTER:
        case PROV_ACT_TPM_IMPORT_CHALLENGE:
        case PROV_ACT_TPM_IMPORT_FINAL:
        case PROV_ACT_SAVE_STATE:
        case PROV_ACT_TPM_EVICT:
        case PROV_ACT_ARM_TIMER:
        case PROV_ACT_NOTIFY_STATUS:
        case _PROV_ACT_MAX:
                break;
        }
        return DPS_REQUEST_REGISTER;
}

static void set_last_from(struct prov_driver *d, const struct prov_dps_result *res) {
        if (res->status)
                set_last(d, res->status, res->data.code, res->message);
}

/* A DPS request of the current action failed before anything was sent. */
static void dps_not_sent(struct prov_driver *d, int r, const char *what) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s: %s", what, strerror(-r));
        log_warn("provisioning: %s", msg);
        struct prov_dps_answer ans = {.error = r, .error_msg = msg, .not_sent = true};
        struct prov_dps_result res;
        (void)prov_dps_interpret(dps_request_of(d->cur.kind), &ans, &res); /* cannot fail without a body */
        set_last_from(d, &res);
        feed(d, res.event, &res.data);
        prov_dps_result_clear(&res);
}

/* The hub check could not be made or answered. */
static void hub_failed(struct prov_driver *d, int r, const char *what) {
        log_warn("provisioning: %s: %s; keeping the saved identity", what, strerror(-r));
        feed_simple(d, prov_hub_event(r, 0));
}

/* Prepare the SAS string-to-sign for resource sr (already encoded). */
static int prepare_sas(struct prov_driver *d, char *sr, uint64_t lifetime) {
        free(d->sr);
        free(d->sts);
        d->sts = NULL;
        d->sr = sr;
        d->sas_expiry = (uint64_t)d->io.now_unix(d->io.userdata) + lifetime;
        return sas_string_to_sign(d->sr, d->sas_expiry, &d->sts, &d->sts_len);
}

/* A request signed by the action's slot: the SAS resource is the hub's
 * device or the DPS registration. */
static void start_signing(struct prov_driver *d) {
        bool hub = d->cur.kind == PROV_ACT_CHECK_HUB;
        char *sr = NULL;
        int r = hub ? sas_hub_resource(d->hub, d->device_id, &sr)
                    : sas_dps_resource(d->cfg->provisioning.id_scope, d->regid, &sr);
        if (r >= 0)
                r = prepare_sas(d, sr, hub ? SAS_HUB_LIFETIME_S : SAS_DPS_LIFETIME_S);
        if (r >= 0)
                r = submit_job(d, TPM_JOB_SIGN, (const uint8_t *)d->sts, d->sts_len, d->cur.slot, STEP_SIGN);
        if (r >= 0)
                return;
        if (hub)
                hub_failed(d, r, "could not start the hub check");
        else
                dps_not_sent(d, r, "could not sign the DPS request");
}

static char *signed_token(struct prov_driver *d, const char *skn) {
        char *tok = NULL;
        if (sas_token_format(d->sr, d->job.digest, d->sas_expiry, skn, &tok) < 0)
                return NULL;
        return tok;
}

/* The signature is there: send the request it authorises. */
static void send_signed(struct prov_driver *d) {
        bool hub = d->cur.kind == PROV_ACT_CHECK_HUB;
        _cleanup_free_ char *tok = signed_token(d, hub ? NULL : SAS_DPS_KEY_NAME), *url = NULL, *body = NULL,
                            *dev = NULL;
        int r = tok ? 0 : -ENOMEM;
        if (r >= 0 && hub) {
                /* The hub liveness check: the device-side cloud-to-device
                 * receive, which IoT Hub grants to the device's own SAS
                 * (DeviceConnect) for IoT Edge and plain devices alike; its
                 * module registry (GET .../modules) answers a plain device
                 * 401, which would read as "moved". No message queued: 204.
                 * See tpmidd(8), HUB CHECK. */
                static const char c2d_api_version[] = "2020-03-13";
                r = sas_percent_encode(d->device_id, strlen(d->device_id), &dev);
                if (r >= 0 && asprintf(&url, "https://%s/devices/%s/messages/deviceBound?api-version=%s", d->hub,
                                       dev, c2d_api_version) < 0) {
                        url = NULL;
                        r = -ENOMEM;
                }
                if (r >= 0)
                        r = send_cloud(d, "GET", url, tok, NULL, PROV_HUB_CHECK_TIMEOUT_MS);
        } else if (r >= 0 && d->cur.kind == PROV_ACT_DPS_AUTH_REGISTER) {
                r = dps_register_url(d->cfg->provisioning.global_endpoint, d->cfg->provisioning.id_scope, d->regid,
                                     &url);
                if (r >= 0)
                        r = dps_auth_register_body(d->regid, d->payload, &body);
                if (r >= 0)
                        r = send_cloud(d, "PUT", url, tok, body, cloud_timeout_ms(d));
        } else if (r >= 0) {
                r = dps_operation_url(d->cfg->provisioning.global_endpoint, d->cfg->provisioning.id_scope, d->regid,
                                      d->operation_id, &url);
                if (r >= 0)
                        r = send_cloud(d, "GET", url, tok, NULL, cloud_timeout_ms(d));
        }
        if (tok)
                explicit_zero(tok, strlen(tok));
        if (r >= 0)
                return;
        if (hub)
                hub_failed(d, r, "could not send the hub check");
        else
                dps_not_sent(d, r, "could not send the DPS request");
}

static void start_register(struct prov_driver *d) {
        _cleanup_free_ char *url = NULL, *body = NULL;
        dps_challenge_clear(&d->challenge);
        dps_registration_clear(&d->reg);
        d->reg_valid = false;
        d->operation_id[0] = 0;
        int r = dps_register_url(d->cfg->provisioning.global_endpoint, d->cfg->provisioning.id_scope, d->regid, &url);
        if (r >= 0)
                r = dps_register_body(d->regid, d->keys.ek.buf, d->keys.ek.len, d->keys.srk.buf, d->keys.srk.len,
                                      d->payload, &body);
        if (r >= 0)
                r = send_cloud(d, "PUT", url, NULL, body, cloud_timeout_ms(d));
        if (r < 0) {
                dps_not_sent(d, r, "could not send the DPS registration");
                return;
        }
        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid)),
                   "provisioning: registering \"%s\" with DPS (scope %s, reason: %s)", d->regid,
                   d->cfg->provisioning.id_scope, prov_reason_to_string(d->m.reason));
}

static void start_import(struct prov_driver *d) {
        const uint8_t *blob = NULL;
        size_t len = 0;
        switch (d->cur.blob) {
        case PROV_BLOB_CHALLENGE:
                blob = d->challenge.blob;
                len = d->challenge.blob_len;
                break;
        case PROV_BLOB_ASSIGNED:
                if (d->reg_valid) {
                        blob = d->reg.auth_blob;
                        len = d->reg.auth_blob_len;
                }
                break;
        case PROV_BLOB_NONE:
        case _PROV_BLOB_MAX:
                break;
        }
        const char *why = "no authenticationKey to import";
        int r = blob ? submit_job(d, TPM_JOB_IMPORT, blob, len, d->cur.slot, STEP_IMPORT) : -ENODATA;
        if (r >= 0)
                return;
        if (blob)
                why = "TPM queue full";
        set_last(d, "error", 0, why);
        struct prov_event_data ed = {.message = why};
        feed(d, PROV_EV_IMPORT_FAILED, &ed);
}

/* ---- the saved identity ---- */

static void load_state(struct prov_driver *d) {
        enum state_match match = STATE_MATCH_OK;
        int r = d->io.state_load(d->io.userdata, d->state_path, &d->loaded);
        if (r == -ENOENT)
                log_info("provisioning: no saved identity in %s", d->state_path);
        else if (r == -EBADMSG)
                log_warn("provisioning: the saved identity in %s is corrupt or incomplete and is not trusted; "
                         "provisioning again",
                         d->state_path);
        else if (r < 0)
                log_warn("provisioning: could not read %s: %s; provisioning again", d->state_path, strerror(-r));
        else {
                match = state_check(&d->loaded, d->ek_digest, d->config_digest);
                switch (match) {
                case STATE_MATCH_OK:
                        break;
                case STATE_MATCH_CONFIG_CHANGED:
                        log_info("provisioning: the saved identity was made with other provisioning settings; "
                                 "serving it while DPS runs again");
                        break;
                case STATE_MATCH_OTHER_TPM:
                        log_warn("provisioning: the saved identity belongs to another TPM (its endorsement key "
                                 "differs); not serving it");
                        break;
                }
        }
        if (!prov_state_usable(r, match)) {
                feed_simple(d, prov_state_event(r, match, 0, false));
                return;
        }
        /* The saved identity is only usable while its key is in the TPM. */
        d->loaded_match = match;
        enum prov_slot named = prov_slot_of_state(d->loaded.key_slot);
        int k = submit_job(d, TPM_JOB_HAS_KEY, NULL, 0, named, STEP_KEY);
        if (k < 0) {
                log_warn("provisioning: could not look for the saved identity's key: %s", strerror(-k));
                struct prov_event_data ed = {.state_slot = named};
                feed(d, prov_state_event(r, match, k, false), &ed);
        }
}

static void key_found_both(struct prov_driver *d, const struct tpm_job *job, const struct tpm_job *other);

static void key_found(struct prov_driver *d, const struct tpm_job *job) {
        enum prov_slot named = prov_slot_of_state(d->loaded.key_slot);
        d->loaded_key_r = job->r;
        d->loaded_key_present = job->present;
        if (job->r >= 0 && job->present) {
                /* and the other slot: a swap that crashed leaves a key there */
                int k = submit_job(d, TPM_JOB_HAS_KEY, NULL, 0, prov_slot_other(named), STEP_OTHER_KEY);
                if (k >= 0)
                        return;
                log_warn("provisioning: could not look at the other key slot: %s", strerror(-k));
        }
        struct tpm_job none = {.r = job->r, .present = false};
        if (job->r < 0)
                none.err = job->err;
        key_found_both(d, job, &none);
}

static void key_found_both(struct prov_driver *d, const struct tpm_job *job, const struct tpm_job *other) {
        enum prov_slot named = prov_slot_of_state(d->loaded.key_slot);
        enum prov_event ev = prov_state_event(0, d->loaded_match, d->loaded_key_r, d->loaded_key_present);
        struct prov_event_data ed = {.state_slot = named, .other_present = other->r >= 0 && other->present};
        if (ev != PROV_EV_STATE_MISSING_OR_CORRUPT) {
                snprintf(d->hub, sizeof(d->hub), "%s", d->loaded.hub);
                snprintf(d->device_id, sizeof(d->device_id), "%s", d->loaded.device_id);
                d->have_identity = true;
                log_info("provisioning: serving the saved identity: hub %s, device %s (key slot %s, 0x%08x)",
                         d->hub, d->device_id, prov_slot_to_string(named),
                         TPM_AUTH_KEY_BASE + prov_slot_key_index(d->cfg->tpm.auth_key_index, named));
                if (ed.other_present)
                        log_info("provisioning: key slot %s (0x%08x) holds a key the state file does not name "
                                   "(an interrupted key swap); removing it",
                                   prov_slot_to_string(prov_slot_other(named)),
                                   TPM_AUTH_KEY_BASE + prov_slot_key_index(d->cfg->tpm.auth_key_index,
                                                                           prov_slot_other(named)));
        } else if (d->loaded_key_r < 0)
                log_warn("provisioning: could not check the TPM for the saved identity's key: %s", job->err.msg);
        else
                log_warn("provisioning: the saved identity's key is not in the TPM (key slot %s, handle 0x%08x); "
                         "provisioning again",
                         prov_slot_to_string(named),
                         TPM_AUTH_KEY_BASE + prov_slot_key_index(d->cfg->tpm.auth_key_index, named));
        feed(d, ev, &ed);
}

static int write_state(struct prov_driver *d) {
        struct tpmid_state st = {0};
        snprintf(st.hub, sizeof(st.hub), "%s", d->hub);
        snprintf(st.device_id, sizeof(st.device_id), "%s", d->device_id);
        snprintf(st.registration_id, sizeof(st.registration_id), "%s", d->regid);
        snprintf(st.id_scope, sizeof(st.id_scope), "%s", d->cfg->provisioning.id_scope);
        memcpy(st.ek_digest, d->ek_digest, sizeof(st.ek_digest));
        memcpy(st.config_digest, d->config_digest, sizeof(st.config_digest));
        st.assigned_at = d->io.now_unix(d->io.userdata);
        if (d->reg_valid)
                snprintf(st.substatus, sizeof(st.substatus), "%s", d->reg.substatus);
        st.key_slot = prov_slot_to_state(d->cur.slot);
        /* A few hundred bytes to local storage: done inline; the rename is
         * atomic and the fsyncs are what make the state survive a power cut. */
        return d->io.state_save(d->io.userdata, d->state_path, &st);
}

/* ---- performing actions ---- */

static void timer_cb(void *userdata) {
        struct prov_driver *d = userdata;
        if (d->closing || d->step != STEP_DELAY)
                return;
        d->step = STEP_NONE;
        if (d->cur.kind == PROV_ACT_DPS_POLL)
                start_signing(d);
        else
                feed_simple(d, PROV_EV_TIMER);
}

static void perform(struct prov_driver *d) {
        switch (d->cur.kind) {
        case PROV_ACT_NONE:
        case PROV_ACT_NOTIFY_STATUS:
        case _PROV_ACT_MAX:
                break;
        case PROV_ACT_LOAD_STATE:
                load_state(d);
                break;
        case PROV_ACT_CHECK_HUB:
        case PROV_ACT_DPS_AUTH_REGISTER:
                start_signing(d);
                break;
        case PROV_ACT_DPS_REGISTER:
                start_register(d);
                break;
        case PROV_ACT_TPM_IMPORT_CHALLENGE:
        case PROV_ACT_TPM_IMPORT_FINAL:
                start_import(d);
                break;
        case PROV_ACT_DPS_POLL:
                d->step = STEP_DELAY;
                d->io.timer_start(d->io.userdata, d->cur.delay_ms, timer_cb, d);
                break;
        case PROV_ACT_SAVE_STATE: {
                switch_identity(d);
                int r = write_state(d);
                if (r < 0) {
                        char msg[sizeof(d->last_message)];
                        snprintf(msg, sizeof(msg), "identity not persisted: could not save it to %s: %s",
                                 d->state_path, strerror(-r));
                        log_error("provisioning: %s; it is served but will not survive a restart until a "
                                  "retry succeeds",
                                  msg);
                        set_last(d, "error", 0, msg);
                        d->not_persisted = true;
                        feed_simple(d, PROV_EV_SAVE_FAILED);
                } else {
                        if (d->not_persisted) {
                                log_info("provisioning: identity saved to %s (hub %s)", d->state_path, d->hub);
                                set_last(d, "assigned", 0, "identity persisted after a failed save");
                        }
                        d->not_persisted = false;
                        feed_simple(d, PROV_EV_SAVED);
                }
                break;
        }
        case PROV_ACT_TPM_EVICT: {
                int r = submit_job(d, TPM_JOB_EVICT, NULL, 0, d->cur.slot, STEP_EVICT);
                if (r < 0) {
                        log_warn("provisioning: could not remove the key in slot %s: %s",
                                 prov_slot_to_string(d->cur.slot), strerror(-r));
                        feed_simple(d, PROV_EV_EVICT_FAILED);
                }
                break;
        }
        case PROV_ACT_ARM_TIMER:
                d->next_retry_at = d->io.now_unix(d->io.userdata) + (int64_t)((d->cur.delay_ms + 999) / 1000);
                d->step = STEP_DELAY;
                d->io.timer_start(d->io.userdata, d->cur.delay_ms, timer_cb, d);
                if (d->m.state == PROV_PROVISIONED) /* settle() retries a failed save */
                        log_info("provisioning: saving the identity again in %.1f s",
                                 (double)d->cur.delay_ms / 1000.0);
                else
                        log_info("provisioning: next DPS attempt in %.1f s", (double)d->cur.delay_ms / 1000.0);
                break;
        }
}

/* ---- completions ---- */

static void hub_answered(struct prov_driver *d, const struct cloud_response *resp) {
        enum prov_event ev = prov_hub_event(resp->error, resp->status);
        int64_t skew = 0;
        if (ev == PROV_EV_HUB_OK)
                log_info("provisioning: hub %s accepts device %s", d->hub, d->device_id);
        else if (ev == PROV_EV_HUB_REJECTED && resp->status == 401 &&
                 httpdate_skew(resp->date, d->io.now_unix(d->io.userdata), &skew) == 0 &&
                 (skew > PROV_CLOCK_SKEW_MAX_S || skew < -PROV_CLOCK_SKEW_MAX_S))
                log_struct(LOG_WARNING, NULL, LOG_FIELDS(LOG_NUM("HTTP_STATUS", resp->status)),
                           "provisioning: hub %s rejects device %s (HTTP 401) and the clock is off by %lld s "
                           "(hub's Date: %s): our tokens look expired to it; asking DPS",
                           d->hub, d->device_id, (long long)skew, resp->date);
        else if (ev == PROV_EV_HUB_REJECTED)
                log_struct(LOG_WARNING, NULL, LOG_FIELDS(LOG_NUM("HTTP_STATUS", resp->status)),
                           "provisioning: hub %s rejects device %s (HTTP %ld): the device may have moved", d->hub,
                           d->device_id, resp->status);
        else if (resp->error < 0)
                log_warn("provisioning: hub %s unreachable (%s); keeping the saved identity", d->hub,
                         resp->error_msg);
        else
                log_warn("provisioning: hub %s answered HTTP %ld; keeping the saved identity", d->hub, resp->status);
        feed_simple(d, ev);
}

/* Log what a DPS answer meant. A SAS refusal is logged by the caller once
 * the machine decided between a new run and a verdict. */
static void log_dps_result(struct prov_driver *d, const struct prov_dps_result *res) {
        bool failure = res->event == PROV_EV_PERMANENT_ERROR || res->event == PROV_EV_POLL_FAILED ||
                       res->event == PROV_EV_TRANSIENT_ERROR;
        bool permanent = res->event == PROV_EV_PERMANENT_ERROR || (res->event == PROV_EV_POLL_FAILED && res->data.permanent);

        if (res->event == PROV_EV_DPS_202)
                log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_STR("DPS_OPERATION_ID", d->operation_id)),
                           "provisioning: DPS accepted the registration, operation %s", d->operation_id);
        else if (res->event == PROV_EV_POLL_ASSIGNED)
                log_info("provisioning: DPS assigned \"%s\" to hub %s as device %s (%s)", d->regid,
                         d->reg.assigned_hub, d->reg.device_id,
                         d->reg.substatus[0] ? d->reg.substatus : "no substatus");
        else if (permanent)
                log_struct(LOG_ERR, LOG_MESSAGE_DPS_FAILED,
                           LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid),
                                      LOG_NUM("HTTP_STATUS", res->data.http_status),
                                      LOG_NUM("DPS_ERROR_CODE", res->data.code),
                                      LOG_STR("DPS_OPERATION_ID", d->operation_id)),
                           "provisioning: %s: %s; not retrying until reprovisioning is requested or the "
                           "configuration changes",
                           res->note ? res->note : "DPS refused the registration", res->message);
        else if (failure)
                log_struct(LOG_WARNING, NULL,
                           LOG_FIELDS(LOG_NUM("HTTP_STATUS", res->data.http_status),
                                      LOG_NUM("DPS_ERROR_CODE", res->data.code)),
                           "provisioning: %s (%s)", res->note ? res->note : "DPS request failed, will retry",
                           res->message);
}

static void dps_answered(struct prov_driver *d, const struct cloud_response *resp) {
        struct prov_dps_answer ans = {
                .error = resp->error,
                .error_msg = resp->error_msg,
                .http_status = resp->status,
                .body = (const uint8_t *)resp->body,
                .body_len = resp->body_len,
                .retry_after = resp->retry_after,
                .date = resp->date,
                .now = d->io.now_unix(d->io.userdata),
        };
        struct prov_dps_result res;
        int r = prov_dps_interpret(dps_request_of(d->cur.kind), &ans, &res);
        if (r < 0) {
                prov_dps_result_clear(&res);
                dps_not_sent(d, r, "could not read the DPS answer");
                return;
        }
        if (res.operation_id[0])
                snprintf(d->operation_id, sizeof(d->operation_id), "%s", res.operation_id);
        if (res.event == PROV_EV_DPS_401_CHALLENGE) {
                dps_challenge_clear(&d->challenge);
                d->challenge = res.challenge;
                memset(&res.challenge, 0, sizeof(res.challenge));
        } else if (res.event == PROV_EV_POLL_ASSIGNED) {
                dps_registration_clear(&d->reg);
                d->reg = res.reg;
                d->reg_valid = true;
                memset(&res.reg, 0, sizeof(res.reg));
        }
        log_dps_result(d, &res);
        set_last_from(d, &res);
        feed(d, res.event, &res.data);
        if (res.event == PROV_EV_DPS_SAS_REFUSED) {
                if (d->m.state == PROV_FAILED_PERMANENT) {
                        /* the machine took it as DPS's verdict */
                        snprintf(d->last_status, sizeof(d->last_status), "failed");
                        publish_status(d);
                        log_struct(LOG_ERR, LOG_MESSAGE_DPS_FAILED,
                                   LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid),
                                              LOG_NUM("HTTP_STATUS", res.data.http_status),
                                              LOG_NUM("DPS_ERROR_CODE", res.data.code)),
                                   "provisioning: DPS refused the registration: %s; not retrying until "
                                   "reprovisioning is requested or the configuration changes",
                                   res.message);
                } else if (res.data.clock_skewed) /* not counted: see PROV_CLOCK_SKEW_MAX_S */
                        log_struct(LOG_WARNING, NULL,
                                   LOG_FIELDS(LOG_NUM("HTTP_STATUS", res.data.http_status),
                                              LOG_NUM("DPS_ERROR_CODE", res.data.code)),
                                   "provisioning: %s (%s)", res.note, res.message);
                else
                        log_struct(LOG_WARNING, NULL,
                                   LOG_FIELDS(LOG_NUM("HTTP_STATUS", res.data.http_status),
                                              LOG_NUM("DPS_ERROR_CODE", res.data.code)),
                                   "provisioning: %s (%s); registering again (%u of %u)", res.note, res.message,
                                   (unsigned)d->m.sas_refusals, (unsigned)PROV_STALE_CHALLENGE_RUNS);
        }
        prov_dps_result_clear(&res);
}

static void cloud_done(const struct cloud_response *resp, void *userdata) {
        struct prov_driver *d = userdata;
        d->cloud_busy = false;
        if (d->closing || d->step != STEP_SEND)
                return;
        d->step = STEP_NONE;
        if (d->cur.kind == PROV_ACT_CHECK_HUB)
                hub_answered(d, resp);
        else
                dps_answered(d, resp);
}

static void imported(struct prov_driver *d, const struct tpm_job *job) {
        if (job->r < 0) {
                log_struct(LOG_ERR, NULL, LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc)),
                           "provisioning: importing the DPS key into the TPM failed: %s", job->err.msg);
                struct prov_event_data ed = {.message = job->err.msg};
                set_last(d, "error", 0, job->err.msg);
                feed(d, PROV_EV_IMPORT_FAILED, &ed);
                return;
        }
        feed_simple(d, PROV_EV_IMPORT_OK);
}

/* SAVE_STATE: the staging slot holds the new key; serve the new identity. */
static void switch_identity(struct prov_driver *d) {
        if (d->reg_valid) {
                snprintf(d->hub, sizeof(d->hub), "%s", d->reg.assigned_hub);
                snprintf(d->device_id, sizeof(d->device_id), "%s", d->reg.device_id);
                d->have_identity = true;
                set_last(d, "assigned", 0, d->reg.substatus);
                log_struct(LOG_NOTICE, LOG_MESSAGE_PROVISIONED,
                           LOG_FIELDS(LOG_STR("REGISTRATION_ID", d->regid), LOG_STR("IOTHUB", d->hub),
                                      LOG_STR("DEVICE_ID", d->device_id),
                                      LOG_STR("DPS_OPERATION_ID", d->operation_id)),
                           "provisioned: device %s on hub %s (key slot %s)", d->device_id, d->hub,
                           prov_slot_to_string(d->cur.slot));
        }
}

static void job_done(struct tpm_job *job, void *userdata) {
        struct prov_driver *d = userdata;
        d->job_busy = false;
        if (d->closing) {
                maybe_free(d);
                return;
        }
        if (d->job_gen != d->gen)
                return; /* superseded while the TPM worked */
        enum step step = d->step;
        d->step = STEP_NONE;
        switch (step) {
        case STEP_KEY:
                key_found(d, job);
                return;
        case STEP_OTHER_KEY:
                key_found_both(d, job, job);
                return;
        case STEP_EVICT:
                if (job->r < 0) {
                        log_warn("provisioning: could not remove the key in slot %s (it stays until the next "
                                 "start): %s",
                                 prov_slot_to_string(d->cur.slot), job->err.msg);
                        feed_simple(d, PROV_EV_EVICT_FAILED);
                } else {
                        if (job->present)
                                log_info("provisioning: removed the key in slot %s (0x%08x)",
                                         prov_slot_to_string(d->cur.slot),
                                         TPM_AUTH_KEY_BASE +
                                                 prov_slot_key_index(d->cfg->tpm.auth_key_index, d->cur.slot));
                        feed_simple(d, PROV_EV_EVICTED);
                }
                return;
        case STEP_IMPORT:
                imported(d, job);
                return;
        case STEP_SIGN:
                if (job->r >= 0) {
                        send_signed(d);
                        return;
                }
                if (d->cur.kind == PROV_ACT_CHECK_HUB) {
                        log_warn("provisioning: could not sign the hub check: %s", job->err.msg);
                        feed_simple(d, prov_hub_event(job->r, 0));
                } else {
                        struct prov_dps_answer ans = {.error = job->r, .error_msg = job->err.msg, .not_sent = true};
                        struct prov_dps_result res;
                        (void)prov_dps_interpret(dps_request_of(d->cur.kind), &ans, &res);
                        set_last_from(d, &res);
                        feed(d, res.event, &res.data);
                        prov_dps_result_clear(&res);
                }
                return;
        case STEP_NONE:
        case STEP_DELAY:
        case STEP_SEND:
                break;
        }
}

/* ---- the real io: the TPM worker, cloud.c, a libuv timer, the state file ---- */

struct real_io {
        struct tpm_worker *worker;
        struct cloud *cloud;
        uv_loop_t *loop;
        uv_timer_t timer;
        void (*timer_fn)(void *);
        void *timer_userdata;
        void (*closed)(void *);
        void *closed_userdata;
        struct prov_driver *driver; /* for clock steps */
        int clock_fd;               /* timerfd cancelled by realtime clock steps, or -1 */
        uv_poll_t clock_poll;
};

/* Arm the clock-step watch: an absolute CLOCK_REALTIME timer with
 * TFD_TIMER_CANCEL_ON_SET is cancelled (read() fails with ECANCELED)
 * whenever the clock is set discontinuously (NTP step, date -s). */
static int clock_watch_arm(int fd) {
        struct itimerspec its = {.it_value = {.tv_sec = time(NULL) + PROV_CLOCK_WATCH_SPAN_S}};
        return timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its, NULL) < 0 ? -errno : 0;
}

static void clock_poll_cb(uv_poll_t *p, int status, int events) {
        struct real_io *io = p->data;
        uint64_t expirations;
        ssize_t n = read(io->clock_fd, &expirations, sizeof(expirations));
        bool stepped = n < 0 && errno == ECANCELED;
        if (n < 0 && errno == EAGAIN)
                return;
        if (clock_watch_arm(io->clock_fd) < 0) {
                log_warn("provisioning: cannot watch for clock steps any more: %s", strerror(errno));
                uv_poll_stop(p);
        }
        if (stepped && io->driver)
                prov_driver_clock_stepped(io->driver);
}

/* Best effort: without it, a clock-blamed backoff just runs its course. */
static void clock_watch_start(struct real_io *io) {
        io->clock_fd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
        if (io->clock_fd < 0 || clock_watch_arm(io->clock_fd) < 0 ||
            uv_poll_init(io->loop, &io->clock_poll, io->clock_fd) < 0) {
                log_warn("provisioning: cannot watch for clock steps: %s", strerror(errno));
                if (io->clock_fd >= 0)
                        close(io->clock_fd);
                io->clock_fd = -1;
                return;
        }
        io->clock_poll.data = io;
        uv_poll_start(&io->clock_poll, UV_READABLE, clock_poll_cb);
}

static int real_tpm_submit(void *userdata, struct tpm_job *job) {
        struct real_io *io = userdata;
        return tpm_worker_submit(io->worker, job);
}

static int real_cloud_send(void *userdata, const struct cloud_request *req, cloud_cb cb, void *cb_userdata,
                           uint64_t *ret_id) {
        struct real_io *io = userdata;
        return cloud_send(io->cloud, req, cb, cb_userdata, ret_id);
}

static void real_cloud_cancel(void *userdata, uint64_t id) {
        struct real_io *io = userdata;
        (void)cloud_cancel(io->cloud, id); /* -ENOENT only if it just finished */
}

static void real_timer_cb(uv_timer_t *t) {
        struct real_io *io = t->data;
        io->timer_fn(io->timer_userdata);
}

static void real_timer_start(void *userdata, uint64_t ms, void (*cb)(void *), void *cb_userdata) {
        struct real_io *io = userdata;
        io->timer_fn = cb;
        io->timer_userdata = cb_userdata;
        uv_timer_start(&io->timer, real_timer_cb, ms, 0);
}

static void real_timer_stop(void *userdata) {
        struct real_io *io = userdata;
        uv_timer_stop(&io->timer);
}

static int real_state_load(void *userdata, const char *path, struct tpmid_state *out) {
        return state_load(path, out);
}

static int real_state_save(void *userdata, const char *path, const struct tpmid_state *st) {
        return state_save(path, st);
}

static uint64_t real_now_ms(void *userdata) {
        struct real_io *io = userdata;
        return uv_now(io->loop);
}

static int64_t real_now_unix(void *userdata) {
        return (int64_t)time(NULL);
}

static void real_timer_closed(uv_handle_t *h) {
        struct real_io *io = h->data;
        void (*closed)(void *) = io->closed;
        void *closed_userdata = io->closed_userdata;
        free(io);
        closed(closed_userdata);
}

static void real_clock_closed(uv_handle_t *h) {
        struct real_io *io = h->data;
        close(io->clock_fd);
        io->clock_fd = -1;
        uv_close((uv_handle_t *)&io->timer, real_timer_closed);
}

static void real_close(void *userdata, void (*done)(void *), void *done_userdata) {
        struct real_io *io = userdata;
        io->closed = done;
        io->closed_userdata = done_userdata;
        io->driver = NULL;
        cloud_close(io->cloud);
        io->cloud = NULL;
        uv_timer_stop(&io->timer);
        if (io->clock_fd >= 0) /* the timer is closed after the poll handle */
                uv_close((uv_handle_t *)&io->clock_poll, real_clock_closed);
        else
                uv_close((uv_handle_t *)&io->timer, real_timer_closed);
}

static const struct prov_io real_io_ops = {
        .tpm_submit = real_tpm_submit,
        .cloud_send = real_cloud_send,
        .cloud_cancel = real_cloud_cancel,
        .timer_start = real_timer_start,
        .timer_stop = real_timer_stop,
        .state_load = real_state_load,
        .state_save = real_state_save,
        .now_ms = real_now_ms,
        .now_unix = real_now_unix,
        .close = real_close,
};

/* ---- public API ---- */

int prov_driver_new_with_io(const struct tpmid_config *cfg, const struct prov_io *io, struct prov_driver **ret) {
        struct prov_driver *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->cfg = cfg;
        d->io = *io;
        if (asprintf(&d->state_path, "%s/%s", cfg->state_dir, STATE_FILE_NAME) < 0) {
                free(d);
                return -ENOMEM;
        }
        prov_machine_init(&d->m, cfg->auto_reprovisioning_mode, NULL, NULL);
        d->told_slot = PROV_SLOT_A; /* the worker starts with the configured slot */
        d->told_pending = PROV_SLOT_A;
        snprintf(d->status_text, sizeof(d->status_text), "waiting for the TPM");
        *ret = d;
        return 0;
}

int prov_driver_new(uv_loop_t *loop, const struct tpmid_config *cfg, struct tpm_worker *w, struct prov_driver **ret) {
        struct real_io *rio = calloc(1, sizeof(*rio));
        if (!rio)
                return -ENOMEM;
        rio->loop = loop;
        rio->worker = w;
        const char *connect_to = getenv("TPMIDD_CLOUD_CONNECT_TO");
        struct cloud_options co = {.ca_bundle = cfg->cloud_ca_bundle, .connect_to = connect_to};
        int r = cloud_new(loop, &co, &rio->cloud);
        if (r < 0) {
                free(rio);
                return r;
        }
        struct prov_io io = real_io_ops;
        io.userdata = rio;
        r = prov_driver_new_with_io(cfg, &io, ret);
        if (r < 0) {
                cloud_close(rio->cloud); /* frees itself once the loop runs */
                free(rio);
                return r;
        }
        uv_timer_init(loop, &rio->timer);
        rio->timer.data = rio;
        rio->driver = *ret;
        clock_watch_start(rio);
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
        struct prov_action a;
        enum api_report_action decided = prov_report(&d->m, hub_status, d->io.now_ms(d->io.userdata), &a);
        if (!d->closing)
                run(d, &a);
        return decided;
}

void prov_driver_set_config(struct prov_driver *d, const struct tpmid_config *cfg) {
        const struct tpmid_config *old = d->cfg;
        bool changed = !streq_ptr(old->provisioning.global_endpoint, cfg->provisioning.global_endpoint) ||
                       !streq_ptr(old->provisioning.id_scope, cfg->provisioning.id_scope) ||
                       !streq_ptr(old->provisioning.registration_id, cfg->provisioning.registration_id) ||
                       !streq_ptr(old->provisioning.payload_path, cfg->provisioning.payload_path);
        d->cfg = cfg;
        struct prov_action a;
        enum prov_mode mode = cfg->auto_reprovisioning_mode, was = d->m.mode;
        if (prov_set_mode(&d->m, mode, &a) >= 0 && mode != was) {
                log_info("provisioning: auto_reprovisioning_mode is now %s (was %s)", prov_mode_to_string(mode),
                         prov_mode_to_string(was));
                run(d, &a);
        }
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

enum prov_mode prov_driver_mode(const struct prov_driver *d) {
        return d->m.mode;
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
        st->not_persisted = d->m.save_failed;
        st->has_clock_skew = d->m.clock_skewed;
        st->clock_skew_sec = d->m.clock_skew_s;
}

void prov_driver_clock_stepped(struct prov_driver *d) {
        if (d->closing)
                return;
        log_info("provisioning: the system clock was set%s", d->m.clock_skewed && d->m.state == PROV_BACKING_OFF
                                                                    ? "; retrying DPS now"
                                                                    : "");
        feed_simple(d, PROV_EV_CLOCK_STEPPED);
}

const char *prov_driver_status_text(struct prov_driver *d) {
        const char *mode = prov_mode_to_string(d->m.mode);
        switch (d->m.state) {
        case PROV_PROVISIONED:
                snprintf(d->status_text, sizeof(d->status_text), "provisioned: hub %s, device %s (%s)%s", d->hub,
                         d->device_id, mode, d->m.save_failed ? "; identity not persisted, retrying" : "");
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
        case PROV_RECOVERING:
        case PROV_CHECKING_HUB:
        case PROV_REGISTERING:
        case PROV_IMPORTING_CHALLENGE:
        case PROV_AUTHENTICATING:
        case PROV_POLLING:
        case PROV_IMPORTING_FINAL:
        case PROV_SAVING:
        case PROV_RETIRING:
        case _PROV_STATE_MAX:
                snprintf(d->status_text, sizeof(d->status_text), "provisioning: %s%s%s",
                         prov_state_to_string(d->m.state), d->have_identity ? "; serving hub " : "",
                         d->have_identity ? d->hub : "");
                break;
        }
        return d->status_text;
}

static void io_closed(void *userdata) {
        struct prov_driver *d = userdata;
        d->io_closed = true;
        maybe_free(d);
}

void prov_driver_close(struct prov_driver *d) {
        if (!d || d->closing)
                return;
        d->closing = true;
        d->cloud_busy = false;
        d->io.close(d->io.userdata, io_closed, d);
}
