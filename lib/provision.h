/* The provisioning state machine (pure: no I/O, no clock, no logging).
 *
 * The daemon's driver (daemon/provision.c) feeds events in with prov_step();
 * each call returns the ONE action the driver performs next. The driver owns
 * a single timer: every new action cancels whatever delay was armed before,
 * so a stale TIMER can never reach the machine. At most one request (file,
 * TPM or HTTP) is in flight at a time; its completion is the next event.
 *
 * ---------------------------------------------------------------------------
 * "Serving" identity
 *
 * m->serving is true while a saved identity (hub, device id, and the hub key
 * at the serving TPM handle) is handed to clients. DPS runs never clear it:
 * the old identity is served until DPS has assigned a new one AND its key is
 * in the serving handle (IMPORTING_FINAL → IMPORT_OK). At that moment the
 * driver switches its in-memory identity to the new hub/device id, before
 * SAVE_STATE. If the final import fails, tpm_import_auth_key() leaves the old
 * key in place, so serving stays on the old identity.
 *
 * TPM slots (PROPOSAL for the TPM side; the lead wires it):
 *   serving slot   = TPM_AUTH_KEY_BASE + auth_key_index       (hub key)
 *   challenge slot = TPM_AUTH_KEY_BASE + prov_challenge_key_index(auth_key_index)
 * The 401 challenge blob is imported into the CHALLENGE slot, which signs the
 * DPS SAS tokens of the second PUT and the polls; only the final
 * registrationState.tpm.authenticationKey is imported into the SERVING slot.
 * This keeps the working hub key intact during reprovisioning (aziot imports
 * both into one handle and loses the old key at the challenge). It needs
 * tpm_import_auth_key/tpm_sign variants that take the index explicitly, e.g.
 *   int tpm_import_auth_key_at(struct tpm *, uint32_t index, const uint8_t *blob, size_t len, struct tpm_error *);
 *   int tpm_sign_at(struct tpm *, uint32_t index, const uint8_t *data, size_t len, uint8_t out[32], struct tpm_error *);
 * If DPS assigns without a tpm.authenticationKey, the driver imports the
 * retained challenge blob again into the serving slot (ActivateCredential
 * accepts the same credential blob repeatedly), so TPM_IMPORT_FINAL always
 * has a blob. The challenge slot may be evicted after SAVED.
 *
 * ---------------------------------------------------------------------------
 * auto_reprovisioning_mode (exact semantics; the man page copies this)
 *
 * Every mode:
 *   - No valid saved identity (file missing, corrupt, or from another TPM:
 *     STATE_MISSING_OR_CORRUPT) → provision with DPS; nothing is served until
 *     DPS assigns.
 *   - A saved identity whose provisioning config changed (scope, registration
 *     id, endpoint or payload: STATE_LOADED_STALE or CONFIG_CHANGED) → keep
 *     serving it and run DPS.
 *   - An authorized client's reprovision request (CLIENT_REPROVISION) → run
 *     DPS now (serving the old identity meanwhile). Coalesced with a DPS run
 *     already in progress.
 *   - DPS unreachable or failing transiently (network, timeout, 408, 429,
 *     5xx, failed import): back off (exponential, full jitter, 2 s..300 s,
 *     at least the server's Retry-After) and retry forever in the background;
 *     a saved identity keeps being served.
 *   - Permanent DPS failure (no enrollment, EK mismatch, enrollment disabled,
 *     401 after authentication, assignment failed): stop retrying
 *     (FAILED_PERMANENT); the DPS error code and message are kept for status;
 *     a saved identity keeps being served. Only CLIENT_REPROVISION,
 *     CONFIG_CHANGED or a daemon restart tries again.
 *   - The serving key is replaced only after DPS assigned (see above).
 * Dynamic (default):
 *   - Start with a valid saved identity: serve it, and check it against the
 *     hub once (CHECK_HUB: one TPM-signed hub request). HUB_REJECTED (the hub
 *     answers 401/403, or 404 for the device) is evidence the device moved →
 *     run DPS. HUB_UNREACHABLE is not evidence → keep serving, no DPS.
 *   - A client reports that the hub rejects the credentials
 *     (CLIENT_REPORTS_BAD_CREDENTIALS): check the hub ourselves (clients alone
 *     cannot trigger DPS without an authorized request), and run DPS only if
 *     the hub rejects us too.
 * AlwaysOnStartup:
 *   - Every start runs DPS, also with a valid saved identity, which is
 *     served while DPS runs and kept if DPS is unreachable or fails.
 *   - At runtime it behaves like Dynamic (reacts to hub rejection reports).
 * OnErrorOnly:
 *   - Start with a valid saved identity: serve it, no hub check, no DPS.
 *   - Never reprovisions on hub signals: CLIENT_REPORTS_BAD_CREDENTIALS is
 *     ignored. DPS runs only without a valid saved identity, on a config
 *     change, or when an authorized client asks.
 * ---------------------------------------------------------------------------
 *
 * One DPS run: REGISTERING (first PUT) → 401 → IMPORTING_CHALLENGE →
 * AUTHENTICATING (second PUT) → 202 → POLLING (GET after Retry-After, at most
 * PROV_POLL_MAX times) → assigned → IMPORTING_FINAL → SAVING → PROVISIONED.
 * A 200 "assigned" answer to the second PUT may be fed as POLL_ASSIGNED
 * directly. Every DPS run starts again with the first PUT. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "backoff.h"
#include "dps.h"

#define PROV_POLL_MAX 100                  /* GET polls per DPS run before starting over (transient) */
#define PROV_POLL_DEFAULT_MS (DPS_RETRY_AFTER_DEFAULT_S * 1000u) /* ms between polls without Retry-After */
#define PROV_CHALLENGE_KEY_OFFSET 1        /* challenge slot = auth_key_index + this */

/* The TPM index (relative to TPM_AUTH_KEY_BASE) of the challenge slot. */
static inline uint32_t prov_challenge_key_index(uint32_t auth_key_index) {
        return auth_key_index + PROV_CHALLENGE_KEY_OFFSET;
}

enum prov_mode {
        PROV_MODE_DYNAMIC,
        PROV_MODE_ALWAYS_ON_STARTUP,
        PROV_MODE_ON_ERROR_ONLY,
        _PROV_MODE_MAX,
};
/* "Dynamic", "AlwaysOnStartup", "OnErrorOnly" (the config spellings). */
const char *prov_mode_to_string(enum prov_mode m);
/* Exact, case-sensitive match. Returns 0 or -EINVAL. */
int prov_mode_from_string(const char *s, enum prov_mode *ret);

enum prov_state {
        PROV_IDLE,                /* before START */
        PROV_LOADING_STATE,       /* LOAD_STATE in flight */
        PROV_CHECKING_HUB,        /* CHECK_HUB in flight */
        PROV_REGISTERING,         /* first PUT in flight */
        PROV_IMPORTING_CHALLENGE, /* TPM import of the 401 blob (challenge slot) */
        PROV_AUTHENTICATING,      /* second PUT in flight */
        PROV_POLLING,             /* waiting the poll delay, or GET in flight */
        PROV_IMPORTING_FINAL,     /* TPM import of the final blob (serving slot) */
        PROV_SAVING,              /* SAVE_STATE in flight */
        PROV_PROVISIONED,         /* settled: serving, nothing to do */
        PROV_BACKING_OFF,         /* waiting before the next DPS run */
        PROV_FAILED_PERMANENT,    /* settled: DPS refused us; error kept */
        _PROV_STATE_MAX,
};
/* "idle", "loading-state", ..., for logs and the status API. */
const char *prov_state_to_string(enum prov_state s);

enum prov_event {
        PROV_EV_START,
        PROV_EV_STATE_LOADED_VALID,       /* state_check() == OK and the serving key exists */
        PROV_EV_STATE_LOADED_STALE,       /* STATE_MATCH_CONFIG_CHANGED, serving key exists */
        PROV_EV_STATE_MISSING_OR_CORRUPT, /* ENOENT, EBADMSG, OTHER_TPM or no serving key */
        PROV_EV_HUB_OK,
        PROV_EV_HUB_REJECTED,             /* hub 401/403, or 404 for our device */
        PROV_EV_HUB_UNREACHABLE,          /* network, timeout, 5xx, 429 */
        PROV_EV_DPS_401_CHALLENGE,        /* first PUT answered 401 with a parsed challenge */
        PROV_EV_IMPORT_OK,
        PROV_EV_IMPORT_FAILED,            /* TPM import failed (retried with backoff) */
        PROV_EV_DPS_202,                  /* second PUT accepted: data.retry_after_s */
        PROV_EV_POLL_ASSIGNING,           /* data.retry_after_s */
        PROV_EV_POLL_ASSIGNED,
        PROV_EV_POLL_FAILED,              /* status failed/disabled: data.permanent, code, message */
        PROV_EV_TRANSIENT_ERROR,          /* dps_classify() TRANSIENT: data.retry_after_s, http_status */
        PROV_EV_PERMANENT_ERROR,          /* dps_classify() PERMANENT: data.code, message, http_status */
        PROV_EV_SAVED,
        PROV_EV_SAVE_FAILED,              /* identity is in use but not persisted */
        PROV_EV_TIMER,                    /* the armed delay of ARM_TIMER elapsed */
        PROV_EV_CLIENT_REPROVISION,       /* authorized POST /identities/device/reprovision */
        PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS,
        PROV_EV_CONFIG_CHANGED,           /* reload changed the provisioning config */
        _PROV_EVENT_MAX,
};
const char *prov_event_to_string(enum prov_event e);

/* Optional details of an event; NULL means all zero. Strings are copied. */
struct prov_event_data {
        uint32_t retry_after_s; /* server Retry-After in seconds, 0 = none */
        int http_status;        /* 0 = no answer */
        int64_t code;           /* DPS errorCode, 0 if none */
        const char *message;    /* DPS errorMessage or the reason from dps_classify(); may be NULL */
        bool permanent;         /* POLL_FAILED: dps_classify_registration() said PERMANENT */
};

enum prov_action_kind {
        PROV_ACT_NONE,                  /* nothing to do (settled, or event coalesced) */
        PROV_ACT_LOAD_STATE,            /* state_load() + state_check() + tpm_has_auth_key() → STATE_* */
        PROV_ACT_CHECK_HUB,             /* one TPM-signed hub request → HUB_* */
        PROV_ACT_DPS_REGISTER,          /* first PUT → DPS_401_CHALLENGE / TRANSIENT / PERMANENT */
        PROV_ACT_TPM_IMPORT_CHALLENGE,  /* import 401 blob into the challenge slot → IMPORT_* */
        PROV_ACT_DPS_AUTH_REGISTER,     /* second PUT (SAS from challenge slot) → DPS_202 / POLL_* / errors */
        PROV_ACT_DPS_POLL,              /* after delay_ms, GET operation → POLL_* / errors */
        PROV_ACT_TPM_IMPORT_FINAL,      /* import final (or retained challenge) blob into the serving slot */
        PROV_ACT_SAVE_STATE,            /* state_save() the new identity → SAVED / SAVE_FAILED */
        PROV_ACT_ARM_TIMER,             /* after delay_ms, feed TIMER */
        PROV_ACT_NOTIFY_STATUS,         /* only the status changed: publish it */
        _PROV_ACT_MAX,
};
const char *prov_action_to_string(enum prov_action_kind a);

struct prov_action {
        enum prov_action_kind kind;
        uint64_t delay_ms;    /* DPS_POLL and ARM_TIMER: wait this long first */
        bool status_changed;  /* state, serving or last error changed: publish status (sd_notify STATUS=, API) */
};

/* Why the current/last DPS run was started (for status and logs). */
enum prov_reason {
        PROV_REASON_NONE,
        PROV_REASON_NO_STATE,
        PROV_REASON_STARTUP,            /* AlwaysOnStartup */
        PROV_REASON_HUB_REJECTED,
        PROV_REASON_CLIENT_REQUEST,
        PROV_REASON_CONFIG_CHANGED,
        _PROV_REASON_MAX,
};
const char *prov_reason_to_string(enum prov_reason r);

struct prov_machine {
        enum prov_mode mode;
        enum prov_state state;
        enum prov_reason reason;
        bool serving;            /* an identity is being served (see above) */
        bool pending;            /* a DPS run was requested while busy; start it when settled */
        enum prov_reason pending_reason;
        uint32_t polls;          /* GETs in the current DPS run */
        struct backoff backoff;  /* attempts = consecutive failed DPS runs */
        /* last failure, kept for status; cleared on PROVISIONED */
        int last_http_status;
        int64_t last_code;
        char last_message[DPS_ERROR_MESSAGE_MAX + 1];
        bool last_permanent;
        bool save_failed;        /* provisioned but state not persisted */
};

/* Initialise m in PROV_IDLE. rnd/userdata go to backoff_init() (NULL =
 * arc4random). Cannot fail. */
void prov_machine_init(struct prov_machine *m, enum prov_mode mode, backoff_random_fn rnd, void *userdata);

/* Feed one event. Returns 0 with m updated and *out = the next action; or
 * -EINVAL (m and *out untouched) for an event that is not valid in the current
 * state (the driver logs it ", ignoring"). d may be NULL. */
int prov_step(struct prov_machine *m, enum prov_event ev, const struct prov_event_data *d, struct prov_action *out);

/* Whether a DPS run is in progress (REGISTERING .. SAVING or BACKING_OFF). */
bool prov_is_busy(const struct prov_machine *m);
