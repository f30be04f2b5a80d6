/* The provisioning policy (pure: no I/O, no clock, no logging).
 *
 * Every provisioning decision of the daemon is made here; the driver
 * (daemon/tpmidd/provision-driver.c) only carries out actions and reports
 * what happened:
 *  - the state machine: the driver feeds events in with prov_step(); each
 *    call returns the ONE action the driver performs next, and the action says
 *    exactly what to do (which request, which TPM slot signs it or receives
 *    an import, which blob, how long to wait first);
 *  - what an answer means: prov_hub_event() for the hub check,
 *    prov_dps_interpret() for every DPS answer (including the 401 rules),
 *    prov_state_event() for the saved identity;
 *  - client reports (prov_report(): mode, busy, rate limit) and mode changes
 *    at reload (prov_set_mode()).
 * The driver owns a single timer: every new action cancels whatever delay
 * was armed before, so a stale TIMER can never reach the machine. At most
 * one operation (file, TPM or HTTP, or a TPM signature followed by the HTTP
 * request it authorises) is in flight at a time; its completion is the next
 * event.
 *
 * ---------------------------------------------------------------------------
 * "Serving" identity and the A/B hub key slots
 *
 *   slot A = TPM_AUTH_KEY_BASE + auth_key_index
 *   slot B = TPM_AUTH_KEY_BASE + auth_key_index + PROV_SLOT_B_OFFSET
 *
 * One of the two serves (m->serving_slot: the state file's keySlot; A when
 * there is no usable file); the other is the staging slot, except while
 * nothing is served (no usable file, or its key is gone): then no key needs
 * protecting and the serving slot itself stages (a first provisioning puts
 * the hub key in A, where it always was). A DPS run imports
 * the 401 challenge blob as a transient key (TPM_AUTH_KEY_TRANSIENT: loaded,
 * not persisted, no NV write), which signs the second PUT and the polls, so
 * the serving key keeps working while DPS runs. After DPS assigned,
 * registrationState.tpm.authenticationKey (if DPS sent one) is imported
 * into the staging slot (IMPORT_FINAL, blob ASSIGNED); without one the
 * challenge key is the hub key and is persisted there (IMPORT_FINAL, blob
 * CHALLENGE). Then the swap, in this
 * order, so that at every instant the state file names a key that exists:
 *   1. the new key is persisted in the staging slot (the import above);
 *   2. SAVE_STATE writes the state file naming the staging slot (atomic
 *      rename): from here on the new identity is served from it;
 *   3. TPM_EVICT removes the old key from the former serving slot (RETIRING).
 * A crash between 1 and 2 leaves the file naming the old slot (its key is
 * there); between 2 and 3 the file names the new slot (its key is there).
 * LOAD_STATE looks for both slots and removes the key in the slot the file
 * does not name (RECOVERING) before going on: that undoes a swap that died
 * before step 2 and finishes one that died before step 3. A failed import
 * leaves the serving slot untouched (only the staging slot is written).
 *
 * The aziot-tpmd socket and tpmidctl sign with the serving slot: every
 * action carries serving_slot, and the driver tells the TPM worker
 * (TPM_JOB_SET_SERVING) before any later TPM job runs; tpmidctl reads the
 * state file's keySlot.
 *
 * NV writes (TPM2_EvictControl) per run: one to persist the hub key (the
 * assigned one, or the challenge key) in the empty staging slot; one to
 * retire the old serving key if there is one. First provisioning: 1;
 * reprovisioning: 2 (test/integration/tpm-counts.py holds them there).
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
 *   - DPS refuses the SAS of the second PUT (401): usually a challenge that
 *     went stale (DPS keeps only the latest; a crashed predecessor's request
 *     may have fetched a newer one), so back off and start a new run; only
 *     PROV_STALE_CHALLENGE_RUNS refusals in a row are DPS's verdict
 *     (permanent).
 *   - A DPS refusal (a 401 other than the first PUT's challenge) whose Date
 *     is more than PROV_CLOCK_SKEW_MAX_S away from the local clock is the
 *     clock's fault (our SAS tokens look expired to DPS), not a verdict: it
 *     is not counted towards PROV_STALE_CHALLENGE_RUNS, never leads to
 *     FAILED_PERMANENT, and is backed off and retried like a transient error;
 *     status carries the skew ("the clock is off by N s"). A step of the
 *     realtime clock (CLOCK_STEPPED) ends such a backoff at once; it changes
 *     nothing anywhere else. The skew is cleared when a run succeeds.
 *   - Saving the new identity failed (SAVE_FAILED, e.g. a full disk): it is
 *     served, not persisted (save_failed); once settled the save is retried
 *     (ARM_TIMER → TIMER → SAVE_STATE) with its own backoff until it
 *     succeeds. The driver always saves the identity being served, so the
 *     file never keeps naming an older hub once a save succeeds. A DPS run
 *     started meanwhile ends in a save of its own.
 *   - Permanent DPS failure (no enrollment, EK mismatch, enrollment disabled,
 *     401 after authentication, assignment failed): stop retrying
 *     (FAILED_PERMANENT); the DPS error code and message are kept for status;
 *     a saved identity keeps being served. Only CLIENT_REPROVISION,
 *     CONFIG_CHANGED or a daemon restart tries again.
 *   - The serving key is replaced only after DPS assigned (see above).
 *   - A mode change at reload (prov_set_mode()) starts nothing by itself; the
 *     new mode governs every decision from then on (a startup decision still
 *     pending while the state loads, client reports).
 * Dynamic (default):
 *   - Start with a valid saved identity: serve it, and check it against the
 *     hub once (CHECK_HUB: one hub request signed with the serving key).
 *     HUB_REJECTED (the hub answers 401/403, or 404 for the device) is
 *     evidence the device moved → run DPS. HUB_UNREACHABLE (no answer, or any
 *     other status) is not evidence → keep serving, no DPS.
 *   - A client reports that the hub rejects the credentials (prov_report()):
 *     check the hub ourselves (clients alone cannot trigger DPS without an
 *     authorized request), and run DPS only if the hub rejects us too. At most
 *     one report-started check per PROV_REPORT_MIN_INTERVAL_MS.
 * AlwaysOnStartup:
 *   - Every start runs DPS, also with a valid saved identity, which is
 *     served while DPS runs and kept if DPS is unreachable or fails.
 *   - At runtime it behaves like Dynamic (reacts to hub rejection reports).
 * OnErrorOnly:
 *   - Start with a valid saved identity: serve it, no hub check, no DPS.
 *   - Never reprovisions on hub signals: client reports are ignored. DPS runs
 *     only without a valid saved identity, on a config change, or when an
 *     authorized client asks.
 * ---------------------------------------------------------------------------
 *
 * One DPS run: REGISTERING (first PUT) → 401 → IMPORTING_CHALLENGE →
 * AUTHENTICATING (second PUT) → 202 → POLLING (GET after Retry-After, at most
 * PROV_POLL_MAX times) → assigned → IMPORTING_FINAL (only when DPS sent a key)
 * → SAVING → RETIRING → PROVISIONED.
 * A 200 "assigned" answer to the second PUT may be fed as POLL_ASSIGNED
 * directly. Every DPS run starts again with the first PUT, with one
 * exception: DPS answering the second PUT with 429 or 503 (throttled, busy)
 * is retried after the backoff as that PUT, with the challenge key still
 * loaded, since DPS keeps a registration's latest challenge; a new run would
 * spend another request of DPS's registration quota on a challenge and a
 * TPM import. A 401 to the retried PUT (the challenge is gone) is
 * DPS_SAS_REFUSED, which starts a new run. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "backoff.h"
#include "dps.h"
#include "sas.h"
#include "state.h"

#define PROV_POLL_MAX 100                  /* GET polls per DPS run before starting over (transient) */
#define PROV_POLL_DEFAULT_MS (DPS_RETRY_AFTER_DEFAULT_S * 1000u) /* ms between polls without Retry-After */
#define PROV_SLOT_B_OFFSET 1               /* slot B = auth_key_index + this (A is auth_key_index) */
/* DPS runs in a row whose second PUT DPS refused (401) before a refusal is its
 * verdict (the Azure IoT C SDK also allows 3). */
#define PROV_STALE_CHALLENGE_RUNS 3
/* DPS runs in a row ended by a malformed DPS answer (a challenge without a
 * usable authenticationKey, a 202 or operation status that does not parse)
 * before that is final: a broken answer is retried as a transient fault, but
 * a DPS (or proxy) that only ever sends broken answers is not retried
 * forever. */
#define PROV_MALFORMED_ANSWER_RUNS 5
/* Seconds the local clock may be off from DPS's Date before a 401 is blamed
 * on the clock: a SAS token is valid SAS_DPS_LIFETIME_S from the local "now",
 * so a clock behind by more has DPS see every token expired on arrival. A
 * clock off by more in either direction is reported the same way. */
#define PROV_CLOCK_SKEW_MAX_S SAS_DPS_LIFETIME_S
#define PROV_REPORT_MIN_INTERVAL_MS 60000u /* ms between hub checks started by client reports */
#define PROV_MESSAGE_MAX (DPS_ERROR_MESSAGE_MAX + 128) /* bytes of a status message: DPS's text plus our context */


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
        PROV_RECOVERING,          /* TPM_EVICT of the slot the state file does not name (a crashed swap) */
        PROV_CHECKING_HUB,        /* CHECK_HUB in flight */
        PROV_REGISTERING,         /* first PUT in flight */
        PROV_IMPORTING_CHALLENGE, /* TPM import of the 401 blob (staging slot) */
        PROV_AUTHENTICATING,      /* second PUT in flight */
        PROV_POLLING,             /* waiting the poll delay, or GET in flight */
        PROV_IMPORTING_FINAL,     /* TPM import of the assigned blob (staging slot) */
        PROV_SAVING,              /* SAVE_STATE in flight */
        PROV_RETIRING,            /* TPM_EVICT of the old serving key after the state names the new one */
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
        PROV_EV_HUB_UNREACHABLE,          /* no answer, or any other status (5xx, 429, ...) */
        PROV_EV_DPS_401_CHALLENGE,        /* first PUT answered 401 with a parsed challenge */
        PROV_EV_IMPORT_OK,
        PROV_EV_IMPORT_FAILED,            /* TPM import failed (retried with backoff) */
        PROV_EV_DPS_202,                  /* second PUT accepted: data.retry_after_s */
        PROV_EV_DPS_SAS_REFUSED,          /* second PUT answered 401: stale challenge, or DPS's verdict */
        PROV_EV_POLL_ASSIGNING,           /* data.retry_after_s */
        PROV_EV_POLL_ASSIGNED,            /* data.has_auth_key: DPS sent registrationState.tpm.authenticationKey */
        PROV_EV_POLL_FAILED,              /* status failed/disabled: data.permanent, code, message */
        PROV_EV_TRANSIENT_ERROR,          /* dps_classify() TRANSIENT: data.retry_after_s, http_status */
        PROV_EV_PERMANENT_ERROR,          /* dps_classify() PERMANENT: data.code, message, http_status */
        PROV_EV_SAVED,
        PROV_EV_SAVE_FAILED,              /* identity is in use but not persisted */
        PROV_EV_TIMER,                    /* the armed delay of ARM_TIMER elapsed */
        PROV_EV_CLIENT_REPROVISION,       /* authorized POST /identities/device/reprovision */
        PROV_EV_CLIENT_REPORTS_BAD_CREDENTIALS, /* fed by prov_report(), which applies the report rules */
        PROV_EV_CONFIG_CHANGED,           /* reload changed the provisioning config */
        PROV_EV_EVICTED,                  /* TPM_EVICT done (also when the slot was empty) */
        PROV_EV_EVICT_FAILED,             /* TPM_EVICT failed: the key stays; the next start removes it */
        PROV_EV_CLOCK_STEPPED,            /* the realtime clock was set: a clock-blamed backoff retries now */
        _PROV_EVENT_MAX,
};
const char *prov_event_to_string(enum prov_event e);

/* A TPM key slot (see "A/B hub key slots" above). */
enum prov_slot {
        PROV_SLOT_NONE, /* no key: the first PUT is not signed */
        PROV_SLOT_A,    /* TPM_AUTH_KEY_BASE + auth_key_index */
        PROV_SLOT_B,    /* TPM_AUTH_KEY_BASE + auth_key_index + PROV_SLOT_B_OFFSET */
        _PROV_SLOT_MAX,
};
const char *prov_slot_to_string(enum prov_slot s);
/* The TPM index (relative to TPM_AUTH_KEY_BASE) of slot A or B. */
static inline uint32_t prov_slot_key_index(uint32_t auth_key_index, enum prov_slot s) {
        return s == PROV_SLOT_B ? auth_key_index + PROV_SLOT_B_OFFSET : auth_key_index;
}
/* The other one of A and B (A for NONE's other: B). */
static inline enum prov_slot prov_slot_other(enum prov_slot s) {
        return s == PROV_SLOT_B ? PROV_SLOT_A : PROV_SLOT_B;
}
/* The state file's slot and back. */
static inline enum prov_slot prov_slot_of_state(enum state_key_slot k) {
        return k == STATE_KEY_SLOT_B ? PROV_SLOT_B : PROV_SLOT_A;
}
static inline enum state_key_slot prov_slot_to_state(enum prov_slot s) {
        return s == PROV_SLOT_B ? STATE_KEY_SLOT_B : STATE_KEY_SLOT_A;
}

/* Optional details of an event; NULL means all zero. Strings are copied. */
struct prov_event_data {
        uint32_t retry_after_s; /* server Retry-After in seconds, 0 = none */
        int http_status;        /* 0 = no answer */
        int64_t code;           /* DPS errorCode, 0 if none */
        const char *message;    /* DPS errorMessage or the reason from dps_classify(); may be NULL */
        bool permanent;         /* POLL_FAILED: dps_classify_registration() said PERMANENT */
        bool has_auth_key;      /* POLL_ASSIGNED: the assignment carried its own key blob */
        bool malformed;         /* TRANSIENT_ERROR: DPS's answer itself was malformed (PROV_MALFORMED_ANSWER_RUNS) */
        enum prov_slot state_slot; /* STATE_LOADED_*: the slot the file names; MISSING_OR_CORRUPT: the file's
                                    * slot if it was intact, else NONE */
        bool other_present;     /* STATE_LOADED_*: the other slot holds a key too (a crashed swap) */
        bool clock_skewed;      /* a 401 while the clock was off by more than PROV_CLOCK_SKEW_MAX_S */
        int64_t clock_skew_s;   /* clock_skewed: local clock minus DPS's Date, in seconds */
};

enum prov_action_kind {
        PROV_ACT_NONE,                  /* nothing to do (settled, or event coalesced) */
        PROV_ACT_LOAD_STATE,            /* read + state_check(), look for both slots' keys → prov_state_event() */
        PROV_ACT_CHECK_HUB,             /* hub GET signed by slot → prov_hub_event() */
        PROV_ACT_DPS_REGISTER,          /* first PUT, unsigned → prov_dps_interpret() */
        PROV_ACT_TPM_IMPORT_CHALLENGE,  /* import blob into slot → IMPORT_* */
        PROV_ACT_DPS_AUTH_REGISTER,     /* second PUT signed by slot → prov_dps_interpret() */
        PROV_ACT_DPS_POLL,              /* after delay_ms, GET operation signed by slot → prov_dps_interpret() */
        PROV_ACT_TPM_IMPORT_FINAL,      /* import blob into slot → IMPORT_* */
        PROV_ACT_SAVE_STATE,            /* switch to the new identity, state_save() it naming slot → SAVED /
                                         * SAVE_FAILED */
        PROV_ACT_TPM_EVICT,             /* remove the key in slot if there is one → EVICTED / EVICT_FAILED */
        PROV_ACT_ARM_TIMER,             /* after delay_ms, feed TIMER */
        PROV_ACT_NOTIFY_STATUS,         /* only the status changed: publish it */
        _PROV_ACT_MAX,
};
const char *prov_action_to_string(enum prov_action_kind a);


/* Which blob a TPM import takes. */
enum prov_blob {
        PROV_BLOB_NONE,
        PROV_BLOB_CHALLENGE, /* the 401 challenge's authenticationKey (kept for the run) */
        PROV_BLOB_ASSIGNED,  /* registrationState.tpm.authenticationKey of the assignment */
        _PROV_BLOB_MAX,
};
const char *prov_blob_to_string(enum prov_blob b);

struct prov_action {
        enum prov_action_kind kind;
        uint64_t delay_ms;    /* DPS_POLL and ARM_TIMER: wait this long first */
        enum prov_slot slot;  /* CHECK_HUB, DPS_AUTH_REGISTER, DPS_POLL: the key that signs the SAS;
                               * TPM_IMPORT_*: where the key goes; SAVE_STATE: the slot the file names;
                               * TPM_EVICT: the slot to empty; else NONE */
        enum prov_slot serving_slot; /* every action: the slot the socket's and the hub's signatures use from now
                                      * on (the driver tells the TPM worker when it changes) */
        enum prov_blob blob;  /* TPM_IMPORT_*: what to import; else NONE */
        bool status_changed;  /* state, mode, serving or last error changed: publish status (sd_notify STATUS=, API) */
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
        enum prov_slot serving_slot; /* A or B: where the served key is (see "A/B hub key slots") */
        enum prov_slot staging_slot; /* A or B: where this DPS run imports (chosen when it starts) */
        enum prov_event loaded_ev;   /* RECOVERING: the STATE_LOADED_* event to go on with */
        bool pending;            /* a DPS run was requested while busy; start it when settled */
        enum prov_reason pending_reason;
        uint32_t polls;          /* GETs in the current DPS run */
        struct backoff backoff;  /* attempts = consecutive failed DPS runs */
        /* last failure, kept for status; cleared on PROVISIONED */
        int last_http_status;
        int64_t last_code;
        char last_message[DPS_ERROR_MESSAGE_MAX + 1];
        bool last_permanent;
        bool save_failed;        /* provisioned but state not persisted: the file still names the old slot,
                                  * whose key is kept, and the save is retried */
        struct backoff save_backoff; /* attempts = failed saves in a row */
        bool clock_skewed;       /* the last DPS refusal came with a clock off by clock_skew_s; cleared on success */
        int64_t clock_skew_s;
        bool assigned_has_key;   /* the current run's assignment carried its own key blob */
        uint32_t sas_refusals;   /* DPS_SAS_REFUSED in a row (PROV_STALE_CHALLENGE_RUNS) */
        uint32_t malformed_runs; /* runs in a row ended by a malformed answer (PROV_MALFORMED_ANSWER_RUNS) */
        bool retry_auth;         /* BACKING_OFF after DPS throttled the signed PUT: the timer resends it */
        bool report_checked;     /* a client report started a hub check ... */
        uint64_t report_check_ms; /* ... at this time (the caller's monotonic clock) */
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

/* Reload: run in mode from now on. Starts nothing by itself (see the modes
 * above). Returns 0 and *out (NOTIFY_STATUS when the mode changed, else
 * NONE), or -EINVAL for an out-of-range mode (m untouched). */
int prov_set_mode(struct prov_machine *m, enum prov_mode mode, struct prov_action *out);

/* A client reports that the hub answered hub_status to the device's
 * credentials, at now_ms (a monotonic clock in ms). The client's word alone
 * never starts DPS: a rejection (prov_hub_event() == HUB_REJECTED) makes the
 * daemon check the hub itself (CLIENT_REPORTS_BAD_CREDENTIALS → CHECK_HUB),
 * at most once per PROV_REPORT_MIN_INTERVAL_MS (the startup check does not
 * count). OnErrorOnly ignores reports. Returns what was decided, for the
 * client's answer, with *out the action to perform (NONE unless a check
 * starts). Cannot fail. */
enum api_report_action prov_report(struct prov_machine *m, int hub_status, uint64_t now_ms, struct prov_action *out);

/* ---- what answers mean ---- */

/* The hub check's answer: error < 0 when there was none (transport error,
 * or the signature or request could not be made), else http_status. 2xx →
 * HUB_OK; 401, 403, 404 → HUB_REJECTED (the device may have moved); anything
 * else → HUB_UNREACHABLE (not evidence of a move). */
enum prov_event prov_hub_event(int error, long http_status);

/* The saved identity: load_r is state_load()'s result, match state_check()'s
 * (ignored unless load_r is 0). Whether the serving key must be looked for:
 * true for an intact file of this TPM. */
bool prov_state_usable(int load_r, enum state_match match);
/* The LOAD_STATE event: key_r/key_present are the named slot's key lookup's
 * result (ignored unless prov_state_usable()). A key that cannot be found,
 * or an error looking for it, means the identity cannot be served. */
enum prov_event prov_state_event(int load_r, enum state_match match, int key_r, bool key_present);

/* One answer to a DPS request, as the transport delivered it. */
struct prov_dps_answer {
        int error;             /* 0, or -errno: no answer (transport error, or the request was not sent) */
        const char *error_msg; /* for error: what went wrong (may be NULL) */
        bool not_sent;         /* for error: a local step failed before sending; error_msg says which */
        long http_status;
        const uint8_t *body;   /* may be NULL */
        size_t body_len;
        const char *retry_after; /* Retry-After header value or NULL */
        const char *date;        /* Date header value or NULL: compared with now for 401s */
        int64_t now;             /* Unix seconds (the local clock), for an HTTP-date Retry-After and Date */
};

/* What a DPS answer means, and what it carried. */
struct prov_dps_result {
        enum prov_event event;        /* DPS_401_CHALLENGE, DPS_202, DPS_SAS_REFUSED, POLL_*, *_ERROR */
        struct prov_event_data data;  /* to feed with event; data.message points into message */
        const char *status;           /* static: the status API's lastResult.status for a failure
                                       * ("error", "failed", a DPS status), NULL for progress */
        const char *note;             /* static: what it means, for the log, or NULL */
        char message[PROV_MESSAGE_MAX + 1];
        struct dps_challenge challenge;                /* DPS_401_CHALLENGE: the blob to import */
        char operation_id[DPS_OPERATION_ID_MAX + 1];   /* "" or the operation to poll */
        struct dps_registration reg;                   /* POLL_ASSIGNED: the assignment */
};

/* Interpret the answer to req (the first PUT, the second PUT or a poll):
 * parse what the status says should be there, classify it with
 * dps_classify()/dps_classify_registration() and the 401 rules:
 *  - first PUT, 401 with a challenge: DPS_401_CHALLENGE; a challenge-shaped
 *    401 whose challenge is unusable (no authenticationKey, bad base64, bad
 *    keyName: dps_challenge_defect()) is a malformed answer (TRANSIENT,
 *    data.malformed, the defect in the message); any other 401 is DPS's
 *    verdict on this TPM's enrollment when it carries a DPS error
 *    (PERMANENT), else some proxy's or a garbled answer (TRANSIENT);
 *  - second PUT, 401: DPS_SAS_REFUSED (the machine counts them);
 *  - poll, 401 (the challenge key went stale) or 404 (DPS forgot the
 *    operation): POLL_FAILED, not permanent: polling cannot help and neither
 *    is a verdict on the enrollment, so a new run starts after a backoff;
 *  - malformed success answers: TRANSIENT_ERROR with data.malformed.
 * The machine retries malformed answers, PROV_MALFORMED_ANSWER_RUNS runs in
 * a row at most, then fails.
 * Returns 0 and *out (release with prov_dps_result_clear()), or -ENOMEM.
 * out is zeroed first either way. */
int prov_dps_interpret(enum dps_request req, const struct prov_dps_answer *ans, struct prov_dps_result *out);
void prov_dps_result_clear(struct prov_dps_result *r); /* NULL-safe; zeroes the blobs */
