/* The provisioning state machine; the rules are in provision.h. */
#include "provision.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "httpdate.h"
#include "util.h"

static const char *const mode_table[_PROV_MODE_MAX] = {
        [PROV_MODE_DYNAMIC] = "Dynamic",
        [PROV_MODE_ALWAYS_ON_STARTUP] = "AlwaysOnStartup",
        [PROV_MODE_ON_ERROR_ONLY] = "OnErrorOnly",
};

static const char *const state_table[_PROV_STATE_MAX] = {
        [PROV_IDLE] = "idle",
        [PROV_LOADING_STATE] = "loading-state",
        [PROV_RECOVERING] = "recovering",
        [PROV_CHECKING_HUB] = "checking-hub",
        [PROV_REGISTERING] = "registering",
        [PROV_IMPORTING_CHALLENGE] = "importing-challenge",
        [PROV_AUTHENTICATING] = "authenticating",
        [PROV_POLLING] = "polling",
        [PROV_IMPORTING_FINAL] = "importing-final",
        [PROV_SAVING] = "saving",
        [PROV_RETIRING] = "retiring-old-key",
        [PROV_PROVISIONED] = "provisioned",
        [PROV_BACKING_OFF] = "backing-off",
        [PROV_FAILED_PERMANENT] = "failed",
};

static const char *const event_table[_PROV_EVENT_MAX] = {
        [PROV_EV_START] = "start",
        [PROV_EV_STATE_LOADED_VALID] = "state-loaded-valid",
        [PROV_EV_STATE_LOADED_STALE] = "state-loaded-stale",
        [PROV_EV_STATE_MISSING_OR_CORRUPT] = "state-missing-or-corrupt",
        [PROV_EV_HUB_OK] = "hub-ok",
        [PROV_EV_HUB_REJECTED] = "hub-rejected",
        [PROV_EV_HUB_UNREACHABLE] = "hub-unreachable",
        [PROV_EV_DPS_401_CHALLENGE] = "dps-401-challenge",
        [PROV_EV_IMPORT_OK] = "import-ok",
        [PROV_EV_IMPORT_FAILED] = "import-failed",
        [PROV_EV_DPS_202] = "dps-202",
        [PROV_EV_DPS_SAS_REFUSED] = "dps-sas-refused",
        [PROV_EV_POLL_ASSIGNING] = "poll-assigning",
        [PROV_EV_POLL_ASSIGNED] = "poll-assigned",
        [PROV_EV_POLL_FAILED] = "poll-failed",
        [PROV_EV_TRANSIENT_ERROR] = "transient-error",
        [PROV_EV_PERMANENT_ERROR] = "permanent-error",
        [PROV_EV_SAVED] = "saved",
        [PROV_EV_SAVE_FAILED] = "save-failed",
        [PROV_EV_TIMER] = "timer",
        [PROV_EV_CLIENT_REPROVISION] = "client-reprovision",
        [PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS] = "client-reports-bad-credentials",
        [PROV_EV_CONFIG_CHANGED] = "config-changed",
        [PROV_EV_EVICTED] = "evicted",
        [PROV_EV_EVICT_FAILED] = "evict-failed",
        [PROV_EV_CLOCK_STEPPED] = "clock-stepped",
};

static const char *const action_table[_PROV_ACT_MAX] = {
        [PROV_ACT_NONE] = "none",
        [PROV_ACT_LOAD_STATE] = "load-state",
        [PROV_ACT_CHECK_HUB] = "check-hub",
        [PROV_ACT_DPS_REGISTER] = "dps-register",
        [PROV_ACT_TPM_IMPORT_CHALLENGE] = "tpm-import-challenge",
        [PROV_ACT_DPS_AUTH_REGISTER] = "dps-auth-register",
        [PROV_ACT_DPS_POLL] = "dps-poll",
        [PROV_ACT_TPM_IMPORT_FINAL] = "tpm-import-final",
        [PROV_ACT_SAVE_STATE] = "save-state",
        [PROV_ACT_TPM_EVICT] = "tpm-evict",
        [PROV_ACT_ARM_TIMER] = "arm-timer",
        [PROV_ACT_NOTIFY_STATUS] = "notify-status",
};

static const char *const reason_table[_PROV_REASON_MAX] = {
        [PROV_REASON_NONE] = "none",
        [PROV_REASON_NO_STATE] = "no-saved-identity",
        [PROV_REASON_STARTUP] = "startup",
        [PROV_REASON_HUB_REJECTED] = "hub-rejected-credentials",
        [PROV_REASON_CLIENT_REQUEST] = "client-request",
        [PROV_REASON_CONFIG_CHANGED] = "config-changed",
};

static const char *const slot_table[_PROV_SLOT_MAX] = {
        [PROV_SLOT_NONE] = "none",
        [PROV_SLOT_A] = "a",
        [PROV_SLOT_B] = "b",
};

static const char *const blob_table[_PROV_BLOB_MAX] = {
        [PROV_BLOB_NONE] = "none",
        [PROV_BLOB_CHALLENGE] = "challenge",
        [PROV_BLOB_ASSIGNED] = "assigned",
};

/* Which slot of the current roles each action uses (see provision.h, "A/B
 * hub key slots"); TPM_EVICT names its slot itself. */
enum slot_role {
        ROLE_NONE,
        ROLE_SERVING,
        ROLE_STAGING,
};
static const enum slot_role action_role[_PROV_ACT_MAX] = {
        [PROV_ACT_CHECK_HUB] = ROLE_SERVING,
        [PROV_ACT_TPM_IMPORT_CHALLENGE] = ROLE_STAGING,
        [PROV_ACT_DPS_AUTH_REGISTER] = ROLE_STAGING,
        [PROV_ACT_DPS_POLL] = ROLE_STAGING,
        [PROV_ACT_TPM_IMPORT_FINAL] = ROLE_STAGING,
        [PROV_ACT_SAVE_STATE] = ROLE_STAGING,
};

const char *prov_slot_to_string(enum prov_slot s) {
        return (unsigned)s < _PROV_SLOT_MAX ? slot_table[s] : NULL;
}

const char *prov_blob_to_string(enum prov_blob b) {
        return (unsigned)b < _PROV_BLOB_MAX ? blob_table[b] : NULL;
}

const char *prov_mode_to_string(enum prov_mode m) {
        return (unsigned)m < _PROV_MODE_MAX ? mode_table[m] : NULL;
}

int prov_mode_from_string(const char *s, enum prov_mode *ret) {
        if (!s || !ret)
                return -EINVAL;
        for (unsigned i = 0; i < _PROV_MODE_MAX; i++)
                if (streq(s, mode_table[i])) {
                        *ret = (enum prov_mode)i;
                        return 0;
                }
        return -EINVAL;
}

const char *prov_state_to_string(enum prov_state s) {
        return (unsigned)s < _PROV_STATE_MAX ? state_table[s] : NULL;
}

const char *prov_event_to_string(enum prov_event e) {
        return (unsigned)e < _PROV_EVENT_MAX ? event_table[e] : NULL;
}

const char *prov_action_to_string(enum prov_action_kind a) {
        return (unsigned)a < _PROV_ACT_MAX ? action_table[a] : NULL;
}

const char *prov_reason_to_string(enum prov_reason r) {
        return (unsigned)r < _PROV_REASON_MAX ? reason_table[r] : NULL;
}

void prov_machine_init(struct prov_machine *m, enum prov_mode mode, backoff_random_fn rnd, void *userdata) {
        memset(m, 0, sizeof(*m));
        m->mode = mode;
        m->state = PROV_IDLE;
        m->serving_slot = PROV_SLOT_A;
        m->staging_slot = PROV_SLOT_B;
        backoff_init(&m->backoff, BACKOFF_BASE_MS, BACKOFF_CAP_MS, rnd, userdata);
        backoff_init(&m->save_backoff, BACKOFF_BASE_MS, BACKOFF_CAP_MS, rnd, userdata);
}

bool prov_is_busy(const struct prov_machine *m) {
        switch (m->state) {
        case PROV_REGISTERING:
        case PROV_IMPORTING_CHALLENGE:
        case PROV_AUTHENTICATING:
        case PROV_POLLING:
        case PROV_IMPORTING_FINAL:
        case PROV_SAVING:
        case PROV_RETIRING:
        case PROV_BACKING_OFF:
                return true;
        case PROV_IDLE:
        case PROV_LOADING_STATE:
        case PROV_RECOVERING:
        case PROV_CHECKING_HUB:
        case PROV_PROVISIONED:
        case PROV_FAILED_PERMANENT:
        case _PROV_STATE_MAX:
                break;
        }
        return false;
}

/* OnErrorOnly never reprovisions on hub signals (client reports). The one
 * place that decides it, for prov_step() and prov_report(). */
static bool hub_signals_ignored(const struct prov_machine *m) {
        return m->mode == PROV_MODE_ON_ERROR_ONLY;
}

static void record_error(struct prov_machine *m, const struct prov_event_data *d, const char *fallback,
                         bool permanent) {
        const char *msg = d->message && *d->message ? d->message : fallback;
        size_t n = strnlen(msg, DPS_ERROR_MESSAGE_MAX);

        m->last_http_status = d->http_status;
        m->last_code = d->code;
        memcpy(m->last_message, msg, n);
        m->last_message[n] = '\0';
        m->last_permanent = permanent;
}

static void clear_error(struct prov_machine *m) {
        m->last_http_status = 0;
        m->last_code = 0;
        m->last_message[0] = '\0';
        m->last_permanent = false;
        m->clock_skewed = false;
        m->clock_skew_s = 0;
}

static void act_in(const struct prov_machine *m, struct prov_action *a, enum prov_action_kind kind,
                   uint64_t delay_ms) {
        a->kind = kind;
        a->delay_ms = delay_ms;
        a->blob = PROV_BLOB_NONE;
        switch (action_role[kind]) {
        case ROLE_NONE:
                a->slot = PROV_SLOT_NONE;
                break;
        case ROLE_SERVING:
                a->slot = m->serving_slot;
                break;
        case ROLE_STAGING:
                a->slot = m->staging_slot;
                break;
        }
}
#define act(a, kind, delay_ms) act_in(m, (a), (kind), (delay_ms))

static void act_evict(struct prov_machine *m, struct prov_action *a, enum prov_slot slot) {
        act(a, PROV_ACT_TPM_EVICT, 0);
        a->slot = slot;
}

static void start_dps(struct prov_machine *m, enum prov_reason reason, struct prov_action *a) {
        /* Never the slot of a key being served; with none, the serving slot
         * itself. After a failed save the state file still names the other
         * slot, whose key a restart needs: then the served key's slot
         * stages (the import replaces it only once DPS assigned). */
        m->staging_slot = m->serving && !m->save_failed ? prov_slot_other(m->serving_slot) : m->serving_slot;
        m->state = PROV_REGISTERING;
        m->reason = reason;
        m->polls = 0;
        m->pending = false;
        m->pending_reason = PROV_REASON_NONE;
        m->last_permanent = false;
        m->retry_auth = false;
        act(a, PROV_ACT_DPS_REGISTER, 0);
}

static void request_pending(struct prov_machine *m, enum prov_reason reason, struct prov_action *a) {
        /* A config change outranks a client request: the run must use the new config. */
        if (!m->pending || reason == PROV_REASON_CONFIG_CHANGED)
                m->pending_reason = reason;
        m->pending = true;
        act(a, PROV_ACT_NONE, 0);
}

/* Nothing left to do in this run: serve, unless a run was requested meanwhile.
 * An identity served but not persisted is saved again after a backoff. */
static void settle(struct prov_machine *m, struct prov_action *a) {
        if (m->pending) {
                start_dps(m, m->pending_reason, a);
                return;
        }
        m->state = PROV_PROVISIONED;
        if (m->save_failed)
                act(a, PROV_ACT_ARM_TIMER, backoff_next(&m->save_backoff, 0));
        else
                act(a, PROV_ACT_NONE, 0);
}

static void back_off(struct prov_machine *m, const struct prov_event_data *d, const char *fallback,
                     struct prov_action *a) {
        record_error(m, d, fallback, false);
        if (m->pending) {
                /* A config change that arrived meanwhile is served by starting over now. */
                start_dps(m, m->pending_reason, a);
                return;
        }
        m->state = PROV_BACKING_OFF;
        act(a, PROV_ACT_ARM_TIMER, backoff_next(&m->backoff, (uint64_t)d->retry_after_s * 1000));
}

static void fail(struct prov_machine *m, const struct prov_event_data *d, const char *fallback,
                 struct prov_action *a) {
        record_error(m, d, fallback, true);
        if (m->pending) {
                /* The failure was for the old config; the new one may work. */
                start_dps(m, m->pending_reason, a);
                return;
        }
        m->state = PROV_FAILED_PERMANENT;
        act(a, PROV_ACT_NONE, 0);
}

static uint64_t poll_delay(const struct prov_event_data *d) {
        uint64_t ms = (uint64_t)d->retry_after_s * 1000;
        return ms ? ms : PROV_POLL_DEFAULT_MS;
}

static void start_polling(struct prov_machine *m, const struct prov_event_data *d, struct prov_action *a) {
        m->state = PROV_POLLING;
        m->polls = 0;
        act(a, PROV_ACT_DPS_POLL, poll_delay(d));
}

/* The staging slot holds the new hub key: save the state that names it. */
static void save_new(struct prov_machine *m, struct prov_action *a) {
        m->serving = true;
        m->state = PROV_SAVING;
        act(a, PROV_ACT_SAVE_STATE, 0);
}

static void assigned(struct prov_machine *m, const struct prov_event_data *d, struct prov_action *a) {
        m->assigned_has_key = d->has_auth_key;
        m->sas_refusals = 0; /* DPS accepted this run's signatures */
        /* Without a key of its own the challenge key (loaded, not
         * persisted) is the hub key: persist it into the staging slot. */
        m->state = PROV_IMPORTING_FINAL;
        act(a, PROV_ACT_TPM_IMPORT_FINAL, 0);
        a->blob = m->assigned_has_key ? PROV_BLOB_ASSIGNED : PROV_BLOB_CHALLENGE;
}

/* The saved identity and its key are there: what the mode does with it. */
static void after_load(struct prov_machine *m, enum prov_event ev, struct prov_action *a) {
        if (ev == PROV_EV_STATE_LOADED_STALE) {
                start_dps(m, PROV_REASON_CONFIG_CHANGED, a);
                return;
        }
        if (m->pending)
                start_dps(m, m->pending_reason, a);
        else if (m->mode == PROV_MODE_DYNAMIC) {
                m->state = PROV_CHECKING_HUB;
                act(a, PROV_ACT_CHECK_HUB, 0);
        } else if (m->mode == PROV_MODE_ALWAYS_ON_STARTUP)
                start_dps(m, PROV_REASON_STARTUP, a);
        else
                settle(m, a);
}

/* Client and config events before the saved identity is known. */
static int startup_common(struct prov_machine *m, enum prov_event ev, struct prov_action *a) {
        if (ev == PROV_EV_CLIENT_REPROVISION)
                request_pending(m, PROV_REASON_CLIENT_REQUEST, a);
        else if (ev == PROV_EV_CONFIG_CHANGED)
                request_pending(m, PROV_REASON_CONFIG_CHANGED, a);
        else if (ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                act(a, PROV_ACT_NONE, 0); /* nothing served yet that could be bad */
        else
                return -EINVAL;
        return 0;
}

/* The second PUT's SAS was refused. DPS keeps only the latest challenge of a
 * registration id, so the usual cause is a newer one issued to a request
 * still in flight from a crashed predecessor of ours; a fresh run then
 * succeeds. Only repeated refusals are DPS's verdict. */
static void sas_refused(struct prov_machine *m, const struct prov_event_data *d, struct prov_action *a) {
        if (d->clock_skewed)
                back_off(m, d, "DPS refused the signature: the clock is off", a); /* not DPS's verdict */
        else if (++m->sas_refusals < PROV_STALE_CHALLENGE_RUNS)
                back_off(m, d, "DPS refused this run's signature", a);
        else {
                m->sas_refusals = 0; /* the verdict is kept; a later request starts a fresh count */
                fail(m, d, "DPS rejected the SAS token", a);
        }
}

static void poll_failed(struct prov_machine *m, const struct prov_event_data *d, struct prov_action *a) {
        if (d->permanent)
                fail(m, d, "DPS assignment failed", a);
        else
                back_off(m, d, "DPS assignment failed temporarily", a);
}

/* A broken answer is transient (the next may be fine), but bounded. */
static void malformed_answer(struct prov_machine *m, const struct prov_event_data *d, struct prov_action *a) {
        if (++m->malformed_runs < PROV_MALFORMED_ANSWER_RUNS)
                back_off(m, d, "malformed DPS answer", a);
        else {
                m->malformed_runs = 0; /* the verdict is kept; a later request starts a fresh count */
                fail(m, d, "DPS kept sending malformed answers", a);
        }
}

/* Events that mean the same in every in-flight state of a DPS run. Returns
 * true if handled. */
static bool run_common(struct prov_machine *m, enum prov_event ev, const struct prov_event_data *d,
                       struct prov_action *a) {
        if (ev == PROV_EV_TRANSIENT_ERROR && d->malformed)
                malformed_answer(m, d, a);
        else if (ev == PROV_EV_TRANSIENT_ERROR)
                back_off(m, d, "temporary DPS error", a);
        else if (ev == PROV_EV_PERMANENT_ERROR && d->clock_skewed)
                back_off(m, d, "DPS refused the registration: the clock is off", a);
        else if (ev == PROV_EV_PERMANENT_ERROR)
                fail(m, d, "DPS refused the registration", a);
        else if (ev == PROV_EV_CLIENT_REPROVISION || ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                act(a, PROV_ACT_NONE, 0); /* coalesced: the run in progress is the reprovisioning asked for */
        else if (ev == PROV_EV_CONFIG_CHANGED)
                request_pending(m, PROV_REASON_CONFIG_CHANGED, a);
        else
                return false;
        return true;
}

/* Returns 0 handled, -EINVAL not valid here. The caller restores m on error. */
static int transition(struct prov_machine *m, enum prov_event ev, const struct prov_event_data *d,
                      struct prov_action *a) {
        switch (m->state) {
        case PROV_IDLE:
                if (ev != PROV_EV_START)
                        return -EINVAL;
                m->state = PROV_LOADING_STATE;
                act(a, PROV_ACT_LOAD_STATE, 0);
                return 0;

        case PROV_LOADING_STATE:
                /* The file's slot serves from now on (A without an intact file);
                 * the recovery table is in provision.h, "A/B hub key slots". */
                if (ev == PROV_EV_STATE_LOADED_VALID || ev == PROV_EV_STATE_LOADED_STALE) {
                        m->serving = true;
                        m->serving_slot = d->state_slot == PROV_SLOT_B ? PROV_SLOT_B : PROV_SLOT_A;
                        if (d->other_present) {
                                /* a swap died: before its state write (undo) or after it (finish) */
                                m->state = PROV_RECOVERING;
                                m->loaded_ev = ev;
                                act_evict(m, a, prov_slot_other(m->serving_slot));
                        } else
                                after_load(m, ev, a);
                } else if (ev == PROV_EV_STATE_MISSING_OR_CORRUPT) {
                        m->serving = false;
                        m->serving_slot = d->state_slot == PROV_SLOT_B ? PROV_SLOT_B : PROV_SLOT_A;
                        start_dps(m, PROV_REASON_NO_STATE, a);
                } else
                        return startup_common(m, ev, a);
                return 0;

        case PROV_RECOVERING:
                if (ev == PROV_EV_EVICTED || ev == PROV_EV_EVICT_FAILED) {
                        /* a key left behind costs nothing: the next import into that slot replaces it */
                        after_load(m, m->loaded_ev, a);
                        return 0;
                }
                return startup_common(m, ev, a);

        case PROV_CHECKING_HUB:
                if (ev == PROV_EV_HUB_OK || ev == PROV_EV_HUB_UNREACHABLE)
                        settle(m, a); /* unreachable is not evidence of a move: keep serving */
                else if (ev == PROV_EV_HUB_REJECTED)
                        start_dps(m, m->pending ? m->pending_reason : PROV_REASON_HUB_REJECTED, a);
                else if (ev == PROV_EV_CLIENT_REPROVISION)
                        request_pending(m, PROV_REASON_CLIENT_REQUEST, a);
                else if (ev == PROV_EV_CONFIG_CHANGED)
                        request_pending(m, PROV_REASON_CONFIG_CHANGED, a);
                else if (ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                        act(a, PROV_ACT_NONE, 0); /* a check is already in flight */
                else
                        return -EINVAL;
                return 0;

        case PROV_REGISTERING:
                if (ev == PROV_EV_DPS_401_CHALLENGE) {
                        m->malformed_runs = 0; /* a usable challenge */
                        m->state = PROV_IMPORTING_CHALLENGE;
                        act(a, PROV_ACT_TPM_IMPORT_CHALLENGE, 0);
                        a->blob = PROV_BLOB_CHALLENGE;
                        return 0;
                }
                return run_common(m, ev, d, a) ? 0 : -EINVAL;

        case PROV_IMPORTING_CHALLENGE:
                if (ev == PROV_EV_IMPORT_OK) {
                        m->state = PROV_AUTHENTICATING;
                        act(a, PROV_ACT_DPS_AUTH_REGISTER, 0);
                        return 0;
                }
                if (ev == PROV_EV_IMPORT_FAILED) {
                        back_off(m, d, "importing the DPS challenge into the TPM failed", a);
                        return 0;
                }
                return run_common(m, ev, d, a) ? 0 : -EINVAL;

        case PROV_AUTHENTICATING:
                /* A 200 answer to the second PUT may already carry the result. */
                if (ev == PROV_EV_DPS_202 || ev == PROV_EV_POLL_ASSIGNING)
                        start_polling(m, d, a);
                else if (ev == PROV_EV_POLL_ASSIGNED)
                        assigned(m, d, a);
                else if (ev == PROV_EV_POLL_FAILED)
                        poll_failed(m, d, a);
                else if (ev == PROV_EV_DPS_SAS_REFUSED)
                        sas_refused(m, d, a);
                else if (ev == PROV_EV_TRANSIENT_ERROR && !d->malformed && !m->pending &&
                         (d->http_status == 429 || d->http_status == 503)) {
                        /* throttled: resend this PUT later, not a new run (provision.h) */
                        record_error(m, d, "DPS throttled the registration", false);
                        m->state = PROV_BACKING_OFF;
                        m->retry_auth = true;
                        act(a, PROV_ACT_ARM_TIMER, backoff_next(&m->backoff, (uint64_t)d->retry_after_s * 1000));
                } else
                        return run_common(m, ev, d, a) ? 0 : -EINVAL;
                return 0;

        case PROV_POLLING:
                if (ev == PROV_EV_POLL_ASSIGNING) {
                        if (++m->polls >= PROV_POLL_MAX)
                                back_off(m, d, "DPS did not finish the assignment", a);
                        else
                                act(a, PROV_ACT_DPS_POLL, poll_delay(d));
                } else if (ev == PROV_EV_TRANSIENT_ERROR) {
                        /* The operation may still complete: poll it again rather
                         * than register anew, within the same poll budget. */
                        record_error(m, d, "temporary DPS error while polling", false);
                        if (m->pending || ++m->polls >= PROV_POLL_MAX)
                                back_off(m, d, "temporary DPS error while polling", a);
                        else
                                act(a, PROV_ACT_DPS_POLL, poll_delay(d));
                } else if (ev == PROV_EV_POLL_ASSIGNED)
                        assigned(m, d, a);
                else if (ev == PROV_EV_POLL_FAILED)
                        poll_failed(m, d, a);
                else
                        return run_common(m, ev, d, a) ? 0 : -EINVAL;
                return 0;

        case PROV_IMPORTING_FINAL:
                if (ev == PROV_EV_IMPORT_OK) {
                        save_new(m, a);
                        return 0;
                }
                if (ev == PROV_EV_IMPORT_FAILED) {
                        /* only the staging slot was written: the serving key is untouched */
                        back_off(m, d, "importing the assigned key into the TPM failed", a);
                        return 0;
                }
                return run_common(m, ev, d, a) ? 0 : -EINVAL;

        case PROV_SAVING:
                if (ev == PROV_EV_SAVED || ev == PROV_EV_SAVE_FAILED) {
                        backoff_reset(&m->backoff);
                        clear_error(m);
                        m->save_failed = ev == PROV_EV_SAVE_FAILED;
                        m->serving_slot = m->staging_slot; /* the new key serves */
                        if (m->save_failed) {
                                /* The file still names the old slot: keep its key;
                                 * settle() arms the save retry (save_backoff), whose
                                 * SAVED ends here again and retires the old key. */
                                settle(m, a);
                                return 0;
                        }
                        backoff_reset(&m->save_backoff);
                        m->state = PROV_RETIRING;
                        act_evict(m, a, prov_slot_other(m->serving_slot));
                        return 0;
                }
                /* DPS/TPM errors cannot happen while saving */
                if (ev == PROV_EV_CONFIG_CHANGED || ev == PROV_EV_CLIENT_REPROVISION ||
                    ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                        return run_common(m, ev, d, a) ? 0 : -EINVAL;
                return -EINVAL;

        case PROV_RETIRING:
                if (ev == PROV_EV_EVICTED || ev == PROV_EV_EVICT_FAILED) {
                        settle(m, a); /* a key left behind is removed by the next start (RECOVERING) */
                        return 0;
                }
                if (ev == PROV_EV_CONFIG_CHANGED || ev == PROV_EV_CLIENT_REPROVISION ||
                    ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                        return run_common(m, ev, d, a) ? 0 : -EINVAL;
                return -EINVAL;

        case PROV_PROVISIONED:
                if (ev == PROV_EV_TIMER && m->save_failed) {
                        /* the save retry settle() armed */
                        m->state = PROV_SAVING;
                        act(a, PROV_ACT_SAVE_STATE, 0);
                } else if (ev == PROV_EV_CLIENT_REPROVISION)
                        start_dps(m, PROV_REASON_CLIENT_REQUEST, a);
                else if (ev == PROV_EV_CONFIG_CHANGED)
                        start_dps(m, PROV_REASON_CONFIG_CHANGED, a);
                else if (ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS) {
                        if (hub_signals_ignored(m) || !m->serving)
                                act(a, PROV_ACT_NONE, 0); /* nothing to check, or OnErrorOnly */
                        else {
                                /* verify the report ourselves before acting on it */
                                m->state = PROV_CHECKING_HUB;
                                act(a, PROV_ACT_CHECK_HUB, 0);
                        }
                } else
                        return -EINVAL;
                return 0;

        case PROV_BACKING_OFF:
                if (ev == PROV_EV_TIMER && m->retry_auth) {
                        m->retry_auth = false;
                        m->state = PROV_AUTHENTICATING;
                        act(a, PROV_ACT_DPS_AUTH_REGISTER, 0);
                } else if (ev == PROV_EV_TIMER || (ev == PROV_EV_CLOCK_STEPPED && m->clock_skewed))
                        start_dps(m, m->reason, a); /* a step may have fixed the clock DPS refused */
                else if (ev == PROV_EV_CLOCK_STEPPED)
                        act(a, PROV_ACT_NONE, 0); /* DPS's trouble was not the clock: keep waiting */
                else if (ev == PROV_EV_CLIENT_REPROVISION)
                        start_dps(m, PROV_REASON_CLIENT_REQUEST, a);
                else if (ev == PROV_EV_CONFIG_CHANGED)
                        start_dps(m, PROV_REASON_CONFIG_CHANGED, a);
                else if (ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                        act(a, PROV_ACT_NONE, 0); /* a DPS run is already scheduled */
                else
                        return -EINVAL;
                return 0;

        case PROV_FAILED_PERMANENT:
                if (ev == PROV_EV_CLIENT_REPROVISION || ev == PROV_EV_CONFIG_CHANGED) {
                        backoff_reset(&m->backoff);
                        m->sas_refusals = 0;
                        m->malformed_runs = 0;
                        start_dps(m,
                                  ev == PROV_EV_CONFIG_CHANGED ? PROV_REASON_CONFIG_CHANGED
                                                               : PROV_REASON_CLIENT_REQUEST,
                                  a);
                } else if (ev == PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS)
                        act(a, PROV_ACT_NONE, 0); /* DPS already refused us; only a request retries */
                else
                        return -EINVAL;
                return 0;

        case _PROV_STATE_MAX:
                break;
        }
        return -EINVAL;
}

int prov_step(struct prov_machine *m, enum prov_event ev, const struct prov_event_data *d, struct prov_action *out) {
        static const struct prov_event_data zero = {0};
        struct prov_machine before;
        struct prov_action a = {0};
        int r;

        if (!m || !out || (unsigned)ev >= _PROV_EVENT_MAX)
                return -EINVAL;
        if (!d)
                d = &zero;
        before = *m;
        if (ev == PROV_EV_CLOCK_STEPPED && m->state != PROV_BACKING_OFF) {
                *out = a; /* NONE: only a clock-blamed backoff waits for the clock */
                return 0;
        }
        r = transition(m, ev, d, &a);
        if (r < 0) {
                *m = before;
                return r;
        }
        if (d->clock_skewed) {
                m->clock_skewed = true;
                m->clock_skew_s = d->clock_skew_s;
        }
        a.status_changed = m->state != before.state || m->mode != before.mode || m->serving != before.serving ||
                           m->reason != before.reason || m->last_code != before.last_code ||
                           m->last_http_status != before.last_http_status ||
                           m->last_permanent != before.last_permanent || m->save_failed != before.save_failed ||
                           m->clock_skewed != before.clock_skewed || m->clock_skew_s != before.clock_skew_s ||
                           !streq(m->last_message, before.last_message);
        if (a.kind == PROV_ACT_NONE && a.status_changed)
                a.kind = PROV_ACT_NOTIFY_STATUS;
        a.serving_slot = m->serving_slot;
        *out = a;
        return 0;
}

int prov_set_mode(struct prov_machine *m, enum prov_mode mode, struct prov_action *out) {
        struct prov_action a = {0};

        if (!m || !out || (unsigned)mode >= _PROV_MODE_MAX)
                return -EINVAL;
        a.status_changed = m->mode != mode;
        a.kind = a.status_changed ? PROV_ACT_NOTIFY_STATUS : PROV_ACT_NONE;
        a.serving_slot = m->serving_slot;
        m->mode = mode;
        *out = a;
        return 0;
}

enum api_report_action prov_report(struct prov_machine *m, int hub_status, uint64_t now_ms, struct prov_action *out) {
        struct prov_action none = {.serving_slot = m->serving_slot};

        *out = none;
        if (hub_signals_ignored(m) || prov_hub_event(0, hub_status) != PROV_EV_HUB_REJECTED)
                return API_REPORT_IGNORED;
        if (prov_is_busy(m))
                return API_REPORT_ALREADY_PROVISIONING;
        if (m->state == PROV_CHECKING_HUB)
                return API_REPORT_CHECKING_HUB; /* joins the check in flight */
        if (m->state != PROV_PROVISIONED || !m->serving)
                return API_REPORT_IGNORED; /* nothing served yet, or DPS refused us (FAILED_PERMANENT) */
        if (m->report_checked && now_ms - m->report_check_ms < PROV_REPORT_MIN_INTERVAL_MS)
                return API_REPORT_RATE_LIMITED;
        if (prov_step(m, PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS, NULL, out) < 0 || m->state != PROV_CHECKING_HUB)
                return API_REPORT_IGNORED;
        m->report_checked = true;
        m->report_check_ms = now_ms;
        return API_REPORT_CHECKING_HUB;
}

enum prov_event prov_hub_event(int error, long http_status) {
        if (error < 0)
                return PROV_EV_HUB_UNREACHABLE;
        if (http_status >= 200 && http_status <= 299)
                return PROV_EV_HUB_OK;
        if (http_status == 401 || http_status == 403 || http_status == 404)
                return PROV_EV_HUB_REJECTED;
        return PROV_EV_HUB_UNREACHABLE; /* 5xx, 429, a proxy's answer: no evidence of a move */
}

bool prov_state_usable(int load_r, enum state_match match) {
        if (load_r < 0)
                return false;
        switch (match) {
        case STATE_MATCH_OK:
        case STATE_MATCH_CONFIG_CHANGED:
                return true;
        case STATE_MATCH_OTHER_TPM:
                break;
        }
        return false;
}

enum prov_event prov_state_event(int load_r, enum state_match match, int key_r, bool key_present) {
        if (!prov_state_usable(load_r, match) || key_r < 0 || !key_present)
                return PROV_EV_STATE_MISSING_OR_CORRUPT;
        return match == STATE_MATCH_CONFIG_CHANGED ? PROV_EV_STATE_LOADED_STALE : PROV_EV_STATE_LOADED_VALID;
}

static uint32_t retry_after_of(const struct prov_dps_answer *ans) {
        uint32_t s = 0;
        if (ans->retry_after && dps_parse_retry_after(ans->retry_after, ans->now, &s) < 0)
                s = 0;
        return s;
}

static void result_set(struct prov_dps_result *out, enum prov_event ev, const char *status, const char *note) {
        out->event = ev;
        out->status = status;
        out->note = note;
        out->data.message = out->message;
}

/* A non-success answer (or none at all). */
static void interpret_failure(enum dps_request req, const struct prov_dps_answer *ans, struct prov_dps_result *out) {
        struct dps_error err;
        const char *reason = NULL, *defect;
        bool have_err;
        enum dps_class cls;

        out->data.retry_after_s = retry_after_of(ans);
        if (ans->error < 0) {
                snprintf(out->message, sizeof(out->message), "%s%s", ans->not_sent ? "" : "DPS unreachable: ",
                         ans->error_msg && *ans->error_msg ? ans->error_msg : "no answer");
                result_set(out, PROV_EV_TRANSIENT_ERROR, "error", NULL);
                return;
        }
        have_err = ans->body && dps_parse_error(ans->body, ans->body_len, &err) >= 0;
        cls = dps_classify(req, (int)ans->http_status, have_err ? &err : NULL, &reason);
        if (req == DPS_REQUEST_REGISTER && ans->http_status == 401 &&
            (defect = dps_challenge_defect(ans->body, ans->body_len))) {
                /* A challenge that cannot be used: a broken answer, not a
                 * verdict (DPS's challenges carry a "message" too). */
                snprintf(out->message, sizeof(out->message), "DPS sent a malformed challenge (HTTP 401): %s", defect);
                out->data.http_status = 401;
                out->data.malformed = true;
                result_set(out, PROV_EV_TRANSIENT_ERROR, "error", "DPS sent a malformed challenge, will retry");
                return;
        }
        if (req == DPS_REQUEST_REGISTER && ans->http_status == 401) {
                /* Only reached when the 401 carried no usable challenge. With a
                 * DPS error body it is DPS's verdict on this TPM's enrollment
                 * ("Endorsement key is invalid, or does not match the
                 * Enrollment", "Enrollment is disabled"): retrying cannot
                 * change it. Without one it is some proxy's or a garbled
                 * answer: retry. */
                bool verdict = have_err && (err.code != 0 || err.message[0]);
                cls = verdict ? DPS_CLASS_PERMANENT : DPS_CLASS_TRANSIENT;
                /* A disabled enrollment is not a failed attestation: say which. */
                reason = !verdict ? "DPS answered 401 without a usable challenge"
                         : strcasestr(err.message, "disabled") ? "the enrollment is disabled in DPS"
                                                               : "DPS refused the TPM attestation";
        }
        if (have_err && err.message[0])
                snprintf(out->message, sizeof(out->message), "%s (HTTP %ld): %s", reason ? reason : "DPS error",
                         ans->http_status, err.message);
        else
                snprintf(out->message, sizeof(out->message), "%s (HTTP %ld)", reason ? reason : "unexpected DPS answer",
                         ans->http_status);
        out->data.http_status = (int)ans->http_status;
        out->data.code = have_err ? err.code : 0;
        if (req == DPS_REQUEST_POLL && (ans->http_status == 401 || ans->http_status == 404)) {
                /* The second PUT of this run was accepted with the same challenge
                 * key, so DPS knows this TPM and its enrollment. A 401 now means
                 * that key went stale (DPS issued a newer challenge for this
                 * registration id); a 404 that DPS forgot the operation (expired,
                 * or lost). Polling again cannot help and neither is a verdict:
                 * POLL_FAILED, not permanent (TRANSIENT_ERROR would re-poll the
                 * same operation), starts a new run after a backoff. A real
                 * refusal shows on that run's first PUT. */
                out->data.permanent = false;
                result_set(out, PROV_EV_POLL_FAILED, "error",
                           ans->http_status == 401 ? "DPS no longer accepts this run's challenge key; registering again"
                                                   : "DPS no longer knows this run's operation; registering again");
                return;
        }
        if (req == DPS_REQUEST_AUTH_REGISTER && ans->http_status == 401) {
                result_set(out, PROV_EV_DPS_SAS_REFUSED, "error", "DPS refused this run's signature");
                return;
        }
        if (cls == DPS_CLASS_PERMANENT)
                result_set(out, PROV_EV_PERMANENT_ERROR, "failed", "DPS refused the registration");
        else
                result_set(out, PROV_EV_TRANSIENT_ERROR, "error", "DPS request failed, will retry");
}

/* An operation status (200/202 to a poll, 200 to the second PUT). */
static int interpret_registration(const struct prov_dps_answer *ans, struct prov_dps_result *out) {
        struct dps_registration reg;
        const char *reason = NULL, *status;
        int r = dps_parse_registration(ans->body, ans->body_len, &reg);

        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                out->data.http_status = (int)ans->http_status;
                out->data.retry_after_s = retry_after_of(ans);
                snprintf(out->message, sizeof(out->message), "malformed DPS operation status (HTTP %ld)",
                         ans->http_status);
                out->data.malformed = true;
                result_set(out, PROV_EV_TRANSIENT_ERROR, "error", "DPS sent a malformed operation status, will retry");
                return 0;
        }
        if (reg.operation_id[0])
                snprintf(out->operation_id, sizeof(out->operation_id), "%s", reg.operation_id);
        switch (reg.status) {
        case DPS_STATUS_ASSIGNING:
                dps_registration_clear(&reg);
                out->data.retry_after_s = retry_after_of(ans);
                result_set(out, PROV_EV_POLL_ASSIGNING, NULL, NULL);
                return 0;
        case DPS_STATUS_ASSIGNED:
                out->data.has_auth_key = reg.auth_blob != NULL;
                snprintf(out->message, sizeof(out->message), "%s", reg.substatus);
                out->reg = reg;
                result_set(out, PROV_EV_POLL_ASSIGNED, NULL, NULL);
                return 0;
        case DPS_STATUS_UNASSIGNED:
        case DPS_STATUS_FAILED:
        case DPS_STATUS_DISABLED:
        case _DPS_STATUS_MAX:
                break;
        }
        out->data.permanent = dps_classify_registration(&reg, &reason) == DPS_CLASS_PERMANENT;
        status = dps_status_to_string(reg.status) ? dps_status_to_string(reg.status) : "failed";
        snprintf(out->message, sizeof(out->message), "registration %s: %s", status,
                 reg.error_message[0] ? reg.error_message : (reason ? reason : "no reason given"));
        out->data.http_status = (int)ans->http_status;
        out->data.code = reg.error_code;
        dps_registration_clear(&reg);
        result_set(out, PROV_EV_POLL_FAILED, status, out->data.permanent ? "DPS assignment failed" : NULL);
        return 0;
}

static int dps_interpret(enum dps_request req, const struct prov_dps_answer *answer, struct prov_dps_result *out);

/* A refusal (a 401 that is not the first PUT's challenge) while the local
 * clock is off from DPS's Date by more than PROV_CLOCK_SKEW_MAX_S: the
 * clock's fault, not a verdict. Say so, and make it retryable. */
static void blame_clock(const struct prov_dps_answer *ans, struct prov_dps_result *out) {
        char msg[PROV_MESSAGE_MAX + HTTPDATE_MAX_BYTES + 96]; /* our words + the Date + DPS's message */
        int64_t skew;
        size_t n;

        if (ans->error < 0 || ans->http_status != 401 || out->event == PROV_EV_DPS_401_CHALLENGE ||
            httpdate_skew(ans->date, ans->now, &skew) < 0 || (skew <= PROV_CLOCK_SKEW_MAX_S && skew >= -PROV_CLOCK_SKEW_MAX_S))
                return;
        out->data.clock_skewed = true;
        out->data.clock_skew_s = skew;
        snprintf(msg, sizeof(msg), "the clock is off by %lld s (DPS's Date: %s): %s", (long long)skew, ans->date,
                 out->message);
        n = strnlen(msg, PROV_MESSAGE_MAX);
        memcpy(out->message, msg, n); /* DPS's words are cut, ours survive */
        out->message[n] = '\0';
        out->data.message = out->message;
        if (out->event == PROV_EV_PERMANENT_ERROR)
                out->event = PROV_EV_TRANSIENT_ERROR;
        out->status = "error";
        out->note = "DPS refused us while the clock is off; fix the clock (NTP), will retry";
}

int prov_dps_interpret(enum dps_request req, const struct prov_dps_answer *answer, struct prov_dps_result *out) {
        int r = dps_interpret(req, answer, out);
        if (r >= 0)
                blame_clock(answer, out);
        return r;
}

static int dps_interpret(enum dps_request req, const struct prov_dps_answer *answer, struct prov_dps_result *out) {
        struct prov_dps_answer copy = *answer;
        const struct prov_dps_answer *ans = &copy;

        if (!copy.body) {
                copy.body = (const uint8_t *)""; /* the parsers want a buffer, even an empty one */
                copy.body_len = 0;
        }
        memset(out, 0, sizeof(*out));
        out->data.message = out->message;
        if (ans->error >= 0) {
                switch (req) {
                case DPS_REQUEST_REGISTER:
                        if (ans->http_status == 401 &&
                            dps_parse_challenge(ans->body, ans->body_len, &out->challenge) >= 0) {
                                out->message[0] = '\0';
                                result_set(out, PROV_EV_DPS_401_CHALLENGE, NULL, NULL);
                                return 0;
                        }
                        break; /* no challenge: DPS refused the attestation itself, or garbage */
                case DPS_REQUEST_AUTH_REGISTER:
                        if (ans->http_status == 202) {
                                struct dps_operation op;
                                out->data.retry_after_s = retry_after_of(ans);
                                if (dps_parse_operation(ans->body, ans->body_len, &op) < 0) {
                                        out->data.http_status = 202;
                                        snprintf(out->message, sizeof(out->message),
                                                 "malformed DPS 202 answer: no usable operationId");
                                        out->data.malformed = true;
                                        result_set(out, PROV_EV_TRANSIENT_ERROR, "error",
                                                   "DPS sent a malformed 202 answer, will retry");
                                        return 0;
                                }
                                snprintf(out->operation_id, sizeof(out->operation_id), "%s", op.operation_id);
                                result_set(out, PROV_EV_DPS_202, NULL, NULL);
                                return 0;
                        }
                        if (ans->http_status == 200)
                                return interpret_registration(ans, out);
                        break;
                case DPS_REQUEST_POLL:
                        if (ans->http_status == 200 || ans->http_status == 202)
                                return interpret_registration(ans, out);
                        break;
                }
        }
        interpret_failure(req, ans, out);
        return 0;
}

void prov_dps_result_clear(struct prov_dps_result *r) {
        if (!r)
                return;
        dps_challenge_clear(&r->challenge);
        dps_registration_clear(&r->reg);
        memset(r, 0, sizeof(*r));
}
