/* The daemon's core. See manager.h for what it owns and the reload rule. */
#include "manager.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-diff.h"
#include "log.h"
#include "modules.h"
#include "provision-driver.h"
#include "provision.h"
#include "tpm.h"
#include "tpmid-config.h"
#include "util.h"

#define MANAGER_STATUS_LINE_MAX 1024 /* bytes of the STATUS= line, NUL included */

struct waiters {
        struct manager_waiter *head, *tail;
        unsigned n;
};

struct manager {
        uv_loop_t *loop;
        struct tpmid_config *config; /* the running configuration */
        void (*changed)(void *userdata);
        void *userdata;
        uint64_t started_ms;

        struct tpm_worker *worker;
        struct prov_driver *prov; /* NULL when source is "none" */
        struct modules *modules;  /* the module identities; NULL when source is "none" */
        bool was_provisioned;     /* the driver's state was PROVISIONED at its last change */
        bool dps_ran;             /* a DPS run happened since the last reconciliation trigger */
        char reconciled_hub[DPS_HUB_NAME_MAX + 1], reconciled_device[DPS_DEVICE_ID_MAX + 1];

        /* TPM */
        enum manager_tpm_state tpm_state;
        struct tpm_keys keys;       /* read through manager_tpm_keys() while READY; written on the loop */
        struct tpm_keys start_keys; /* START writes here (the worker thread); copied to keys when it is done */
        char tpm_error[MANAGER_TPM_ERROR_MAX];
        struct tpm_job start_job, ping_job;
        bool start_pending, ping_pending;
        uv_timer_t retry_timer;
        uint64_t retry_ms, tpm_failures, pings;
        bool ever_ready;
        uint64_t lost_ms; /* when the connection broke under a job (0: it did not); for the recovery line */

        /* waiting requests */
        struct waiters reprovision, identity;
        bool reprovision_saw_busy; /* a DPS run started since the reprovision waiters came */
        uv_timer_t identity_timer;

        /* reload: refused keys whose file value differs from the running one */
        const char *restart_needed[MANAGER_MAX_RESTART_NEEDED];
        size_t n_restart_needed;

        char stop_why[64];
        bool stopping, closed;
        int open_handles;
        void (*closed_cb)(void *userdata);
        void *closed_userdata;
        char status_line[MANAGER_STATUS_LINE_MAX];
};

static void schedule_tpm_start(struct manager *m, uint64_t delay_ms);

int manager_log_level(const struct tpmid_config *c) {
        int l = log_level_from_string(getenv("AZIOT_LOG"));
        if (l >= 0)
                return l;
        return c->log_level; /* a LOG_* priority already (config.c) */
}

/* ---- what the views read ---- */

const char *manager_provisioning_text(const struct manager *m) {
        if (!m->prov)
                return "TPM broker only (provisioning source \"none\")";
        /* The driver formats into its own buffer; the text is a view of its
         * state, not a change of it. */
        return prov_driver_status_text((struct prov_driver *)m->prov);
}

static void update_status_line(struct manager *m) {
        const struct tpmid_config *c = m->config;
        if (m->stopping) {
                snprintf(m->status_line, sizeof m->status_line, "stopping: %s", m->stop_why);
                return;
        }
        switch (m->tpm_state) {
        case MANAGER_TPM_STARTING:
                snprintf(m->status_line, sizeof m->status_line, "sockets open, connecting to the TPM (%s)",
                         c->tpm.tcti);
                return;
        case MANAGER_TPM_UNAVAILABLE:
                /* Lost after it was ready: say so, not "waiting" as at start. */
                snprintf(m->status_line, sizeof m->status_line,
                         m->ever_ready ? "tpm: unavailable (%s); reconnecting" : "waiting for TPM: %s", m->tpm_error);
                return;
        case MANAGER_TPM_READY:
        case _MANAGER_TPM_STATE_MAX:
                break;
        }
        _cleanup_free_ char *regid = tpm_registration_id(m->keys.ek.buf, m->keys.ek.len);
        snprintf(m->status_line, sizeof m->status_line, "ready: serving %s, TPM ready (registration id %s); %s",
                 c->endpoints.tpmd_socket, regid ? regid : "?", manager_provisioning_text(m));
}

static void answer_identity_waiters(struct manager *m, enum manager_outcome o);
static bool identity_pending(const struct manager *m);

/* Every change of what views show ends here: one hook, one direction. */
static void changed(struct manager *m) {
        if (m->identity.head && !identity_pending(m))
                answer_identity_waiters(m, m->stopping ? MANAGER_OUTCOME_STOPPING : MANAGER_OUTCOME_SETTLED);
        update_status_line(m);
        if (m->changed && !m->closed)
                m->changed(m->userdata);
}

const struct tpmid_config *manager_config(const struct manager *m) {
        return m->config;
}

enum manager_tpm_state manager_tpm_state(const struct manager *m) {
        return m->tpm_state;
}

const char *manager_tpm_error(const struct manager *m) {
        return m->tpm_state == MANAGER_TPM_READY ? "" : m->tpm_error;
}

const struct tpm_keys *manager_tpm_keys(const struct manager *m) {
        return m->tpm_state == MANAGER_TPM_READY ? &m->keys : NULL;
}

uint64_t manager_tpm_retry_ms(const struct manager *m) {
        return uv_is_active((const uv_handle_t *)&m->retry_timer) ? m->retry_ms : 0;
}

uint64_t manager_tpm_failures(const struct manager *m) {
        return m->tpm_failures;
}

bool manager_ever_ready(const struct manager *m) {
        return m->ever_ready;
}

uint64_t manager_pings(const struct manager *m) {
        return m->pings;
}

bool manager_stopping(const struct manager *m) {
        return m->stopping;
}

const char *manager_status_line(const struct manager *m) {
        return m->status_line;
}

bool manager_provisioning(const struct manager *m) {
        return m->prov != NULL;
}

bool manager_identity(const struct manager *m, const char **hub, const char **device_id) {
        return m->prov && prov_driver_identity(m->prov, hub, device_id);
}

const char *manager_registration_id(const struct manager *m) {
        return m->prov ? prov_driver_registration_id(m->prov) : NULL;
}

const char *manager_payload_json(const struct manager *m) {
        return m->prov ? prov_driver_payload_json(m->prov) : NULL;
}

void manager_fill_status(const struct manager *m, struct api_status *st) {
        const struct tpmid_config *c = m->config;
        bool dps = c->provisioning.source == CONFIG_SOURCE_DPS;
        *st = (struct api_status){
                .provisioning_state = "disabled",
                .id_scope = dps ? c->provisioning.id_scope : NULL,
                .global_endpoint = dps ? c->provisioning.global_endpoint : NULL,
                .tpm_state = m->tpm_state == MANAGER_TPM_READY ? "ready" : "unavailable",
                .tpm_last_error = m->tpm_state == MANAGER_TPM_READY ? NULL : m->tpm_error,
                .tcti = c->tpm.tcti,
                .version = TPMID_VERSION,
                .uptime_sec = (uv_now(m->loop) - m->started_ms) / 1000,
                /* The mode the state machine runs, not the file's. */
                .mode = dps && m->prov ? prov_mode_to_string(prov_driver_mode(m->prov)) : "none",
                .restart_needed = m->restart_needed,
                .n_restart_needed = m->n_restart_needed,
        };
        if (m->prov)
                prov_driver_fill_status(m->prov, st);
}

/* ---- waiters ---- */

static void waiters_push(struct waiters *q, struct manager_waiter *w) {
        w->next = NULL;
        if (q->tail)
                q->tail->next = w;
        else
                q->head = w;
        q->tail = w;
        q->n++;
}

static struct manager_waiter *waiters_pop(struct waiters *q) {
        struct manager_waiter *w = q->head;
        if (!w)
                return NULL;
        q->head = w->next;
        if (!q->head)
                q->tail = NULL;
        q->n--;
        return w;
}

/* done may queue a new waiter on q (a re-dispatched request): answer only
 * the ones that were there when we started. */
static void waiters_answer(struct waiters *q, enum manager_outcome o, const char *message) {
        unsigned n = q->n;
        while (n-- > 0) {
                struct manager_waiter *w = waiters_pop(q);
                if (!w)
                        break;
                w->done(w, o, message);
        }
}

static void identity_timer_cb(uv_timer_t *t) {
        struct manager *m = t->data;
        uint64_t now = uv_now(m->loop);
        unsigned n = m->identity.n;
        while (n-- > 0 && m->identity.head && m->identity.head->deadline_ms <= now) {
                struct manager_waiter *w = waiters_pop(&m->identity);
                w->done(w, MANAGER_OUTCOME_TIMED_OUT, NULL);
        }
        if (m->identity.head)
                uv_timer_start(&m->identity_timer, identity_timer_cb, m->identity.head->deadline_ms - now, 0);
}

/* The answer to "which identity?" is not known yet: the TPM is being opened
 * for the first time (the saved identity is checked right after), or the
 * saved-state check runs. */
static bool identity_pending(const struct manager *m) {
        if (!m->prov || m->stopping)
                return false;
        switch (m->tpm_state) {
        case MANAGER_TPM_STARTING:
                return true;
        case MANAGER_TPM_READY:
                return prov_driver_state(m->prov) == PROV_LOADING_STATE;
        case MANAGER_TPM_UNAVAILABLE:
        case _MANAGER_TPM_STATE_MAX:
                break;
        }
        return false;
}

int manager_wait_identity(struct manager *m, struct manager_waiter *w) {
        if (!identity_pending(m))
                return -EALREADY;
        if (m->identity.n >= MANAGER_MAX_IDENTITY_WAITERS)
                return -EBUSY;
        w->deadline_ms = uv_now(m->loop) + MANAGER_IDENTITY_WAIT_MAX_MS;
        bool first = !m->identity.head;
        waiters_push(&m->identity, w);
        if (first)
                uv_timer_start(&m->identity_timer, identity_timer_cb, MANAGER_IDENTITY_WAIT_MAX_MS, 0);
        return 0;
}

static void answer_identity_waiters(struct manager *m, enum manager_outcome o) {
        uv_timer_stop(&m->identity_timer);
        waiters_answer(&m->identity, o, NULL);
}

/* ---- provisioning ---- */

/* Reconciliation of the module identities after every (re)provisioning:
 * whenever the driver settles with an identity for the first time (the
 * saved one at start), after a DPS run (a reprovisioning, also to the same
 * hub) or with another identity. A hub check alone (Dynamic mode, a
 * client's report) is no reprovisioning. */
static void maybe_reconcile(struct manager *m) {
        enum prov_state state = prov_driver_state(m->prov);
        bool now = state == PROV_PROVISIONED;
        switch (state) {
        case PROV_REGISTERING:
        case PROV_IMPORTING_CHALLENGE:
        case PROV_AUTHENTICATING:
        case PROV_POLLING:
        case PROV_IMPORTING_FINAL:
        case PROV_SAVING:
                m->dps_ran = true;
                break;
        case PROV_IDLE:
        case PROV_LOADING_STATE:
        case PROV_RECOVERING:
        case PROV_CHECKING_HUB:
        case PROV_RETIRING:
        case PROV_PROVISIONED:
        case PROV_BACKING_OFF:
        case PROV_FAILED_PERMANENT:
        case _PROV_STATE_MAX:
                break;
        }
        const char *hub = NULL, *dev = NULL;
        if (now && !m->was_provisioned && m->modules && prov_driver_identity(m->prov, &hub, &dev) &&
            (m->dps_ran || !m->reconciled_hub[0] || !streq(hub, m->reconciled_hub) ||
             !streq(dev, m->reconciled_device))) {
                bool first = !m->reconciled_hub[0];
                snprintf(m->reconciled_hub, sizeof m->reconciled_hub, "%s", hub);
                snprintf(m->reconciled_device, sizeof m->reconciled_device, "%s", dev);
                modules_reconcile(m->modules, first ? "start" : "provisioned");
                m->dps_ran = false;
        }
        m->was_provisioned = now;
}

static void prov_changed(void *userdata) {
        struct manager *m = userdata;
        maybe_reconcile(m);
        if (m->reprovision.head) {
                /* Reprovision requests are answered once the run they asked
                 * for settled. Compare states, not their status strings. */
                enum prov_state state = prov_driver_state(m->prov);
                bool settled =
                        state == PROV_PROVISIONED || state == PROV_FAILED_PERMANENT || state == PROV_BACKING_OFF;
                if (!settled)
                        m->reprovision_saw_busy = true;
                else if (m->reprovision_saw_busy) {
                        struct api_status st = { 0 };
                        prov_driver_fill_status(m->prov, &st);
                        if (state == PROV_PROVISIONED)
                                waiters_answer(&m->reprovision, MANAGER_OUTCOME_PROVISIONED, NULL);
                        else if (state == PROV_FAILED_PERMANENT)
                                waiters_answer(&m->reprovision, MANAGER_OUTCOME_REFUSED,
                                               st.last_message ? st.last_message : "DPS refused the registration");
                        else
                                waiters_answer(&m->reprovision, MANAGER_OUTCOME_RETRYING,
                                               st.last_message ? st.last_message
                                                               : "DPS could not be reached; retrying in the background");
                }
        }
        changed(m);
}

int manager_reprovision(struct manager *m, struct manager_waiter *w) {
        if (!m->prov)
                return -ENOENT;
        if (m->stopping)
                return -ESHUTDOWN; /* no run would answer it */
        if (m->tpm_state != MANAGER_TPM_READY)
                return -EAGAIN;
        if (m->reprovision.n >= MANAGER_MAX_REPROVISION_WAITERS)
                return -EBUSY;
        if (!m->reprovision.head)
                m->reprovision_saw_busy = false;
        /* Queued before the driver hears of it: the run's first status change
         * must find the waiter. */
        waiters_push(&m->reprovision, w);
        if (prov_driver_reprovision(m->prov) < 0)
                waiters_answer(&m->reprovision, MANAGER_OUTCOME_NOT_STARTED, "provisioning has not started yet");
        return 0;
}

enum api_report_action manager_report_bad_credentials(struct manager *m, int hub_status) {
        if (!m->prov)
                return API_REPORT_IGNORED;
        return prov_driver_report_bad_credentials(m->prov, hub_status);
}

struct modules *manager_modules(struct manager *m) {
        return m->modules;
}

int manager_submit(struct manager *m, struct tpm_job *job) {
        if (!m->worker)
                return -ESHUTDOWN;
        return tpm_worker_submit(m->worker, job);
}

/* ---- TPM start, retry, watchdog ---- */

static void tpm_failed(struct manager *m, const struct tpm_job *job) {
        snprintf(m->tpm_error, sizeof m->tpm_error, "%s: %s", job->err.step, job->err.msg);
        m->tpm_state = MANAGER_TPM_UNAVAILABLE;
        m->tpm_failures++;
}

static void start_done(struct tpm_job *job, void *userdata) {
        struct manager *m = userdata;
        m->start_pending = false;
        if (m->stopping)
                return;

        if (job->r >= 0) {
                m->keys = m->start_keys;
                m->tpm_state = MANAGER_TPM_READY;
                m->retry_ms = 0;
                m->tpm_error[0] = '\0';
                if (m->lost_ms) {
                        log_struct(LOG_NOTICE, NULL, LOG_FIELDS(LOG_STR("TCTI", m->config->tpm.tcti)),
                                   "TPM available again %.1f s after the connection broke",
                                   (double)(uv_now(m->loop) - m->lost_ms) / 1000.0);
                        m->lost_ms = 0;
                }
                log_info("TPM ready: endorsement key %s, storage root key %s",
                         m->keys.created_ek ? "created and persisted at 0x81010001" : "found at 0x81010001",
                         m->keys.created_srk ? "created and persisted at 0x81000001" : "found at 0x81000001");
                if (!m->ever_ready) {
                        m->ever_ready = true;
                        log_struct(LOG_INFO, LOG_MESSAGE_STARTED,
                                   LOG_FIELDS(LOG_STR("TPMD_SOCKET", m->config->endpoints.tpmd_socket)),
                                   "tpmidd %s ready", TPMID_VERSION);
                }
                /* Provisioning starts once (the driver ignores later starts);
                 * its status changes reach the views through prov_changed(). */
                if (m->prov && prov_driver_start(m->prov, &m->keys) < 0)
                        log_error("provisioning is not started: fix the configuration and reload "
                                  "(tpmidctl config apply)");
                changed(m);
                return;
        }

        char before[sizeof m->tpm_error];
        snprintf(before, sizeof before, "%s", m->tpm_error);
        tpm_failed(m, job);
        m->retry_ms = m->retry_ms == 0 ? MANAGER_TPM_RETRY_MIN_MS
                                       : (m->retry_ms * 2 > MANAGER_TPM_RETRY_MAX_MS ? MANAGER_TPM_RETRY_MAX_MS
                                                                                     : m->retry_ms * 2);
        /* One clear error per distinct reason; repeats are debug noise. */
        if (strcmp(before, m->tpm_error) != 0)
                log_struct(LOG_ERR, LOG_MESSAGE_TPM_UNAVAILABLE,
                           LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc), LOG_STR("TCTI", m->config->tpm.tcti)),
                           "TPM not usable (%s); retrying every %u s at most", m->tpm_error,
                           (unsigned)(MANAGER_TPM_RETRY_MAX_MS / 1000));
        else
                log_debug("TPM still not usable (%s), next try in %llu ms", m->tpm_error,
                          (unsigned long long)m->retry_ms);
        schedule_tpm_start(m, m->retry_ms);
        changed(m);
}

static void submit_start(struct manager *m) {
        if (m->start_pending || m->stopping)
                return;
        m->start_job = (struct tpm_job){ .kind = TPM_JOB_START, .keys_out = &m->start_keys, .done = start_done,
                                         .userdata = m };
        int r = tpm_worker_submit(m->worker, &m->start_job);
        if (r < 0) {
                log_error("could not queue the TPM start job: %s", strerror(-r));
                return;
        }
        m->start_pending = true;
}

static void retry_cb(uv_timer_t *t) {
        submit_start(t->data);
}

static void schedule_tpm_start(struct manager *m, uint64_t delay_ms) {
        if (m->stopping)
                return;
        if (delay_ms == 0) {
                submit_start(m);
                return;
        }
        uv_timer_start(&m->retry_timer, retry_cb, delay_ms, 0);
}

void manager_start(struct manager *m) {
        submit_start(m);
}

/* TPM recovery, the one path: the worker closed a TPM that broke under a
 * job (any job: a client's signature, a DPS import, the watchdog's PING),
 * and it is opened again here with START, at once and then with the start
 * backoff (start_done()). The state stays READY through the first attempt,
 * so that the requests behind it wait in the FIFO for the reopened TPM
 * instead of failing (one lost response costs one failed request); if the
 * TPM is not back, START fails and the state turns UNAVAILABLE with its
 * reason: /status, STATUS= and 503 answers say so until a START works.
 * tpm_open() flushes what the broken command left in a TPM without a
 * resource manager (flush_leftovers). */
static void tpm_connection_lost(struct manager *m, const struct tpm_job *job, const char *what) {
        if (m->stopping || m->tpm_state != MANAGER_TPM_READY || m->start_pending)
                return; /* already reconnecting: the start cycle reports its own failures */
        m->lost_ms = uv_now(m->loop);
        if (m->lost_ms == 0)
                m->lost_ms = 1;
        log_struct(LOG_ERR, LOG_MESSAGE_TPM_UNAVAILABLE,
                   LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc), LOG_STR("TCTI", m->config->tpm.tcti)),
                   "TPM unavailable: %s (%s); reconnecting", what, job->err.msg);
        m->retry_ms = 0;
        schedule_tpm_start(m, 0);
}

static void worker_lost(const struct tpm_job *job, void *userdata) {
        tpm_connection_lost(userdata, job, "the connection broke in the middle of a command");
}

static void ping_done(struct tpm_job *job, void *userdata) {
        struct manager *m = userdata;
        m->ping_pending = false;
        /* The worker thread came back: that is the progress the watchdog
         * wants, even when the TPM said no (then we report and retry). */
        m->pings++;
        if (job->r < 0) /* the worker closed the TPM */
                tpm_connection_lost(m, job, "the TPM stopped answering");
        changed(m);
}

void manager_watchdog_ping(struct manager *m) {
        if (m->ping_pending || m->stopping || !m->worker)
                return;
        m->ping_job = (struct tpm_job){ .kind = TPM_JOB_PING, .done = ping_done, .userdata = m };
        if (tpm_worker_submit(m->worker, &m->ping_job) >= 0)
                m->ping_pending = true;
}

/* ---- reload ---- */

/* The refused keys: file (the next running configuration) gets the running
 * value, noted as kept; the running configuration stays as it is, so that
 * config_diff() afterwards names exactly what the reload applies. The names
 * are config_diff()'s. */
static void note_kept(struct manager *m, const char *key, const char *shown) {
        log_struct(LOG_WARNING, NULL, LOG_FIELDS(LOG_STR("CONFIG_KEY", key)), "reload: %s needs a restart, kept %s",
                   key, shown);
        if (m->n_restart_needed < MANAGER_MAX_RESTART_NEEDED)
                m->restart_needed[m->n_restart_needed++] = key;
}

/* *file = a copy of run. Returns 0 or -ENOMEM (file untouched). */
static int copy_str(const char *run, char **file, bool secret) {
        char *c = NULL;
        if (run && !(c = strdup(run)))
                return -ENOMEM;
        if (secret && *file)
                explicit_zero(*file, strlen(*file));
        free(*file);
        *file = c;
        return 0;
}

static int keep_str(struct manager *m, const char *run, char **file, const char *key, bool secret) {
        if (streq_ptr(run, *file))
                return 0;
        int r = copy_str(run, file, secret);
        if (r < 0)
                return r;
        char shown[300];
        if (secret)
                snprintf(shown, sizeof shown, "the running value");
        else
                snprintf(shown, sizeof shown, "\"%s\"", run ? run : "");
        note_kept(m, key, shown);
        return 0;
}

static void keep_uint(struct manager *m, unsigned run, unsigned *file, const char *key) {
        if (run == *file)
                return;
        char shown[32];
        snprintf(shown, sizeof shown, "%u", run);
        note_kept(m, key, shown);
        *file = run;
}

/* Returns 0, or -ENOMEM (file is then half patched: the caller drops it). */
static int keep_running_values(struct manager *m, struct tpmid_config *file) {
        const struct tpmid_config *run = m->config;
        m->n_restart_needed = 0;
        if (run->provisioning.source != file->provisioning.source) {
                /* The other [provisioning] keys belong to their source ("none"
                 * has no id_scope): the running source keeps its settings. */
                if (copy_str(run->provisioning.global_endpoint, &file->provisioning.global_endpoint, false) < 0 ||
                    copy_str(run->provisioning.id_scope, &file->provisioning.id_scope, false) < 0 ||
                    copy_str(run->provisioning.payload_path, &file->provisioning.payload_path, false) < 0 ||
                    copy_str(run->provisioning.registration_id, &file->provisioning.registration_id, false) < 0)
                        return -ENOMEM;
                file->provisioning.source = run->provisioning.source;
                file->provisioning.method = run->provisioning.method;
                char shown[32];
                snprintf(shown, sizeof shown, "\"%s\"", config_provisioning_source_to_string(run->provisioning.source));
                note_kept(m, "provisioning.source", shown);
        }
        keep_uint(m, run->cloud_timeout_sec, &file->cloud_timeout_sec, "cloud_timeout_sec");
        keep_uint(m, run->cloud_retries, &file->cloud_retries, "cloud_retries");
        if (run->tpm.auth_key_index != file->tpm.auth_key_index) {
                char shown[32];
                snprintf(shown, sizeof shown, "0x%06x", (unsigned)run->tpm.auth_key_index);
                file->tpm.auth_key_index = run->tpm.auth_key_index;
                note_kept(m, "tpm.auth_key_index", shown);
        }
        const struct {
                const char *run;
                char **file;
                const char *key;
                bool secret;
        } strs[] = {
                { run->hostname, &file->hostname, "hostname", false },
                { run->tpm.tcti, &file->tpm.tcti, "tpm.tcti", false },
                { run->tpm.endorsement_auth, &file->tpm.endorsement_auth, "tpm.hierarchy_authorization.endorsement",
                  true },
                { run->tpm.owner_auth, &file->tpm.owner_auth, "tpm.hierarchy_authorization.owner", true },
                { run->endpoints.tpmd_socket, &file->endpoints.tpmd_socket, "endpoints.aziot_tpmd", false },
                { run->endpoints.identityd_socket, &file->endpoints.identityd_socket, "endpoints.aziot_identityd",
                  false },
                { run->state_dir, &file->state_dir, "state_dir", false },
                { run->cloud_ca_bundle, &file->cloud_ca_bundle, "cloud_ca_bundle", false },
        };
        for (size_t i = 0; i < ELEMENTSOF(strs); i++) {
                int r = keep_str(m, strs[i].run, strs[i].file, strs[i].key, strs[i].secret);
                if (r < 0)
                        return r;
        }
        return 0;
}

void manager_reload(struct manager *m, struct tpmid_config *file) {
        if (m->stopping) {
                config_free(file);
                return;
        }
        /* The kept keys' list describes the running configuration: rebuilt
         * from this file, or left as it was when the reload fails. */
        const char *kept_before[MANAGER_MAX_RESTART_NEEDED];
        size_t n_kept_before = m->n_restart_needed;
        memcpy(kept_before, m->restart_needed, sizeof kept_before);
        if (keep_running_values(m, file) < 0) {
                memcpy(m->restart_needed, kept_before, sizeof kept_before);
                m->n_restart_needed = n_kept_before;
                config_free(file);
                log_error("reload: out of memory, keeping the running configuration");
                return;
        }
        /* What is left to differ is what the rule applies. */
        _cleanup_free_ char *why = NULL;
        unsigned diff = config_diff(m->config, file, &why);
        if (diff & CONFIG_CHANGED_RESTART)
                /* keep_running_values() and config_diff()'s table disagree: a bug, say so. */
                log_error("reload: config_diff() names restart keys the reload kept: %s", why ? why : "?");
        struct tpmid_config *old = m->config;
        m->config = file;
        log_set_max_level(manager_log_level(file));
        tpm_worker_set_max_queued(m->worker, file->limits.max_queued_tpm_jobs);
        /* The driver compares old and new provisioning settings: old is still alive. */
        if (m->prov)
                prov_driver_set_config(m->prov, file);
        config_free(old);
        /* aziot reconciles on every configuration update (principals). */
        if (m->modules && m->was_provisioned)
                modules_reconcile(m->modules, "reload");
        log_struct(LOG_INFO, LOG_MESSAGE_RELOADED, LOG_FIELDS(LOG_STR("CONFIG_FILE", file->origin)),
                   "reloaded %s (%s%s)", file->origin ? file->origin : "the configuration",
                   why ? "applied: " : "no changes applied", why ? why : "");
        changed(m);
}

/* ---- life cycle ---- */

static void handle_closed(uv_handle_t *h) {
        struct manager *m = h->data;
        if (--m->open_handles == 0) {
                config_free(m->config);
                free(m);
        }
}

int manager_new(uv_loop_t *loop, struct tpmid_config *config, void (*changed_cb)(void *userdata), void *userdata,
                struct manager **ret) {
        struct manager *m = calloc(1, sizeof *m);
        if (!m) {
                config_free(config);
                return -ENOMEM;
        }
        m->loop = loop;
        m->config = config;
        m->started_ms = uv_now(loop);
        snprintf(m->tpm_error, sizeof m->tpm_error, "the TPM has not answered yet");
        struct tpm_options topts = {
                .tcti = config->tpm.tcti,
                .endorsement_auth = config->tpm.endorsement_auth,
                .owner_auth = config->tpm.owner_auth,
                .auth_key_index = config->tpm.auth_key_index,
        };
        int r = tpm_worker_new(loop, &topts, config->limits.max_queued_tpm_jobs, &m->worker);
        if (r < 0) {
                log_error("could not start the TPM worker thread: %s", strerror(-r));
                config_free(config);
                free(m);
                return r;
        }
        tpm_worker_on_lost(m->worker, worker_lost, m);
        if (config->provisioning.source == CONFIG_SOURCE_DPS) {
                r = prov_driver_new(loop, config, m->worker, &m->prov);
                if (r < 0) {
                        /* The worker must go before m: its stop runs on the loop. */
                        log_error("could not set up provisioning: %s", strerror(-r));
                        m->prov = NULL;
                        m->stopping = true;
                        uv_timer_init(loop, &m->retry_timer);
                        uv_timer_init(loop, &m->identity_timer);
                        m->retry_timer.data = m->identity_timer.data = m;
                        m->open_handles = 2;
                        manager_close(m, NULL, NULL);
                        return r;
                }
                prov_driver_set_status_cb(m->prov, prov_changed, m);
                r = modules_new(loop, m, &m->modules);
                if (r < 0) {
                        /* The daemon still serves the device identity. */
                        log_error("module identities are not available: %s", strerror(-r));
                        m->modules = NULL;
                }
        }
        uv_timer_init(loop, &m->retry_timer);
        uv_timer_init(loop, &m->identity_timer);
        m->retry_timer.data = m->identity_timer.data = m;
        m->open_handles = 2;
        update_status_line(m);
        /* Set last: nothing above may call the hook before *ret is the caller's. */
        m->changed = changed_cb;
        m->userdata = userdata;
        *ret = m;
        return 0;
}

void manager_begin_stop(struct manager *m, const char *why) {
        if (m->stopping)
                return;
        m->stopping = true;
        snprintf(m->stop_why, sizeof m->stop_why, "%s", why);
        uv_timer_stop(&m->retry_timer);
        waiters_answer(&m->reprovision, MANAGER_OUTCOME_STOPPING, "tpmidd is stopping");
        answer_identity_waiters(m, MANAGER_OUTCOME_STOPPING);
        /* Module calls waiting for the hub or keyd are answered now (503), so
         * that the sockets drain without waiting for them; the object goes
         * once its own TPM jobs are back. */
        modules_close(m->modules);
        m->modules = NULL;
        changed(m);
}

static void worker_stopped(void *userdata) {
        struct manager *m = userdata;
        m->worker = NULL;
        /* Every TPM job has completed, so nothing answers into a view now. */
        modules_close(m->modules);
        m->modules = NULL;
        prov_driver_close(m->prov);
        m->prov = NULL;
        m->closed = true;
        uv_close((uv_handle_t *)&m->retry_timer, handle_closed);
        uv_close((uv_handle_t *)&m->identity_timer, handle_closed);
        /* m stays allocated until its handles closed, after this call. */
        if (m->closed_cb)
                m->closed_cb(m->closed_userdata);
}

void manager_close(struct manager *m, void (*closed)(void *userdata), void *userdata) {
        manager_begin_stop(m, "closing");
        m->closed_cb = closed;
        m->closed_userdata = userdata;
        log_info("TPM jobs done: %llu", (unsigned long long)tpm_worker_completed(m->worker));
        tpm_worker_stop(m->worker, worker_stopped, m);
}
