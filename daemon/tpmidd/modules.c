/* The device's module identities: modules.h's interface, performed with the
 * IoT hub's module registry (cloud.c, a device SAS signed in the TPM through
 * the manager's worker), aziot-keyd (keyd.c) and the module cache
 * (lib/module.c). Policy (what a hub answer means, what reconciliation does)
 * is lib/module.c's; this file carries it out.
 *
 * Every operation is one struct op that walks its steps, at most one
 * asynchronous call (TPM signature, hub request, keyd request) in flight at a
 * time; the module flow is aziot-identityd's (identity.rs): hub create or
 * get (generationId) → keyd master key → derived primary/secondary → export
 * → hub update with the two keys (If-Match: *) → cache → the primary's
 * keyHandle to the caller. */
#include "modules.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backoff.h"
#include "cloud.h"
#include "dps.h"
#include "keyd.h"
#include "log.h"
#include "manager.h"
#include "module.h"
#include "sas.h"
#include "util.h"

_Static_assert(MODULES_ID_MAX == MODULE_ID_MAX, "one module id limit");
_Static_assert(MODULES_GEN_ID_MAX == MODULE_GEN_ID_MAX, "one generationId limit");

enum op_kind {
        OP_LIST,
        OP_GET,
        OP_CREATE,
        OP_UPDATE,
        OP_DELETE,
        _OP_KIND_MAX,
};

struct op;
typedef void (*hub_done_fn)(struct op *o, const struct cloud_response *resp);
typedef void (*keyd_done_fn)(struct op *o, const struct keyd_result *res);

struct op {
        struct modules *m;
        struct op *next;
        uint64_t id;
        enum op_kind kind;
        bool internal; /* reconciliation's own */
        char module_id[MODULE_ID_MAX + 1];
        char hub[MODULE_HUB_MAX + 1], device_id[MODULE_DEVICE_ID_MAX + 1]; /* the identity it started with */
        modules_cb cb;
        void *userdata;
        bool cancelled;
        int early_status; /* > 0: answer this failure at the first step (not provisioned, invalid id) */
        char early_msg[MODULES_ERROR_MAX];

        /* in flight */
        bool tpm_busy, cloud_busy, keyd_busy;
        uint64_t cloud_id, keyd_id;
        struct tpm_job job;

        /* the hub call being made */
        const char *h_method;
        bool h_if_match, h_module;
        char *h_body;
        hub_done_fn h_done;
        char *sr, *sts;
        size_t sts_len;
        uint64_t expiry;
        keyd_done_fn k_done;

        /* results */
        enum module_hub_outcome outcome; /* of the last hub answer */
        uint32_t retry_after_s;
        struct module_hub_entry entry;
        struct module_hub_entry *list;
        size_t n_list;
        char *master, *handle_p, *handle_s;
        uint8_t *key_p, *key_s;
        size_t key_p_len, key_s_len;
};

struct modules {
        uv_loop_t *loop;
        struct manager *mgr;
        struct cloud *cloud;
        struct keyd *keyd;
        char *cache_path;
        struct module_cache cache; /* hub == "" when there is none */
        struct op *ops;
        uint64_t next_id;

        /* reconciliation */
        bool rec_running, rec_again;
        char rec_why[64];
        struct module_plan_step *plan;
        size_t n_plan, plan_i;
        bool plan_recreate_deleted;
        struct module_hub_entry *rec_list; /* the hub's modules at the start of the run */
        size_t n_rec_list;
        uv_timer_t timer;
        struct backoff backoff;
        char last[MODULES_STATUS_MAX];
        enum module_hub_outcome rec_outcome; /* how reconciliation's last op ended */
        uint32_t rec_retry_after_s;

        /* The last device SAS token for the hub, reused for every hub call
         * while it has MODULES_SAS_REUSE_MARGIN_S left (one TPM HMAC an hour,
         * not one per call, as the DPS registration reuses its token). It is
         * dropped when the hub answers 401 and at every reconciliation (its
         * triggers are the identity's changes: start, a DPS run, a reload). */
        char *sas;         /* the token, secret; NULL = none */
        char *sas_sr;      /* the resource it signs (hub/devices/device) */
        uint64_t sas_expiry;

        bool closing;
        unsigned tpm_jobs; /* our TPM jobs in flight */
        unsigned kicks;    /* idle handles of ops not started yet */
        bool timer_closed;
};

static void rec_run(struct modules *m);

#define MODULES_SAS_REUSE_MARGIN_S 300 /* s of validity a reused hub token must have left */

static void sas_drop(struct modules *m) {
        if (m->sas)
                explicit_zero(m->sas, strlen(m->sas));
        free(m->sas);
        free(m->sas_sr);
        m->sas = m->sas_sr = NULL;
        m->sas_expiry = 0;
}

/* ---- life cycle of an op ---- */

static void wipe_free(void *p, size_t n) {
        if (p)
                explicit_zero(p, n);
        free(p);
}

static void sas_drop(struct modules *m);

static void maybe_free_modules(struct modules *m) {
        if (!m->closing || m->tpm_jobs > 0 || m->kicks > 0 || !m->timer_closed || m->ops)
                return;
        module_cache_clear(&m->cache);
        free(m->plan);
        free(m->rec_list);
        sas_drop(m);
        free(m->cache_path);
        free(m);
}

static void op_free(struct op *o) {
        struct modules *m = o->m;
        for (struct op **p = &m->ops; *p; p = &(*p)->next)
                if (*p == o) {
                        *p = o->next;
                        break;
                }
        if (o->h_body)
                explicit_zero(o->h_body, strlen(o->h_body)); /* an update body holds the module's keys */
        free(o->h_body);
        free(o->sr);
        free(o->sts);
        free(o->list);
        free(o->master);
        free(o->handle_p);
        free(o->handle_s);
        wipe_free(o->key_p, o->key_p_len);
        wipe_free(o->key_s, o->key_s_len);
        free(o);
        maybe_free_modules(m);
}

/* Stop what is in flight; a TPM job still completes (its memory is o's). */
static void op_abandon(struct op *o) {
        o->cancelled = true;
        if (o->cloud_busy && o->m->cloud)
                (void)cloud_cancel(o->m->cloud, o->cloud_id);
        if (o->keyd_busy && o->m->keyd)
                (void)keyd_cancel(o->m->keyd, o->keyd_id);
        o->cloud_busy = o->keyd_busy = false;
        if (!o->tpm_busy)
                op_free(o);
}

static void answer(struct op *o, const struct modules_result *res) {
        modules_cb cb = o->cb;
        void *ud = o->userdata;
        if (o->internal) {
                o->m->rec_outcome = res->r < 0 ? o->outcome : MODULE_HUB_OK;
                o->m->rec_retry_after_s = o->retry_after_s;
        }
        if (!o->cancelled)
                cb(res, ud);
        if (!o->tpm_busy)
                op_free(o);
        else
                o->cancelled = true;
}

static void fail(struct op *o, int r, int status, const char *fmt, ...) _printf_(4, 5);
static void fail(struct op *o, int r, int status, const char *fmt, ...) {
        struct modules_result res = { .r = r < 0 ? r : -EIO, .status = status };
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(res.message, sizeof res.message, fmt, ap);
        va_end(ap);
        answer(o, &res);
}

static void succeed_identity(struct op *o, const char *gen_id, const char *handle) {
        struct module_identity id = { .key_handle = handle, .hub = o->hub, .device_id = o->device_id };
        snprintf(id.module_id, sizeof id.module_id, "%s", o->module_id);
        snprintf(id.gen_id, sizeof id.gen_id, "%s", gen_id);
        struct modules_result res = { .identity = &id };
        answer(o, &res);
}

/* ---- the cache ---- */

static bool cache_is_for(const struct modules *m, const char *hub, const char *device_id) {
        return m->cache.hub[0] && streq(m->cache.hub, hub) && streq(m->cache.device_id, device_id);
}

/* The cache of hub/device, started empty when it belonged to another
 * identity. The old file stays until the new one is written over it. */
static void cache_adopt(struct modules *m, const char *hub, const char *device_id) {
        if (cache_is_for(m, hub, device_id))
                return;
        module_cache_clear(&m->cache);
        snprintf(m->cache.hub, sizeof m->cache.hub, "%s", hub);
        snprintf(m->cache.device_id, sizeof m->cache.device_id, "%s", device_id);
}

static void cache_write(struct modules *m) {
        int r = module_cache_save(m->cache_path, &m->cache);
        if (r < 0)
                log_warn("modules: could not write the module cache %s: %s, ignoring (a start without network "
                         "will not know the newest modules)",
                         m->cache_path, strerror(-r));
}

static void cache_note(struct op *o, const char *gen_id) {
        struct modules *m = o->m;
        cache_adopt(m, o->hub, o->device_id);
        int r = module_cache_set(&m->cache, o->module_id, gen_id);
        if (r < 0)
                log_warn("modules: module %s not cached: %s, ignoring", o->module_id, strerror(-r));
        else
                cache_write(m);
}

/* ---- hub calls ---- */

static long cloud_timeout(const struct modules *m) {
        return (long)manager_config(m->mgr)->cloud_timeout_sec * 1000L;
}

static void hub_answered(const struct cloud_response *resp, void *userdata) {
        struct op *o = userdata;
        o->cloud_busy = false;
        if (o->cancelled) {
                op_abandon(o);
                return;
        }
        bool network = false;
        char msg[MODULE_ERROR_MAX] = "";
        if (resp->error == 0 && resp->status != 200 && resp->status != 204)
                module_hub_parse_error(resp->body, resp->body_len, msg, sizeof msg, &network);
        o->outcome = module_hub_classify(resp->error, resp->status, network, streq(o->h_method, "DELETE"));
        o->retry_after_s = 0;
        if (o->outcome == MODULE_HUB_THROTTLED || o->outcome == MODULE_HUB_UNAVAILABLE) {
                uint32_t s = 0;
                if (resp->retry_after && dps_parse_retry_after(resp->retry_after, (int64_t)time(NULL), &s) == 0)
                        o->retry_after_s = s;
        }
        if (o->outcome == MODULE_HUB_UNAUTHORIZED) {
                sas_drop(o->m); /* the next call signs afresh, with the key serving then */
                /* The one who decides whether to ask DPS again. */
                (void)manager_report_bad_credentials(o->m->mgr, 401);
        }
        o->h_done(o, resp);
}

static void hub_send(struct op *o, int r, const char *tok);

static void hub_signed(struct tpm_job *job, void *userdata) {
        struct op *o = userdata;
        struct modules *m = o->m;
        o->tpm_busy = false;
        m->tpm_jobs--;
        if (o->cancelled) {
                op_free(o);
                return;
        }
        if (job->r < 0) {
                o->outcome = MODULE_HUB_UNAVAILABLE;
                struct cloud_response none = { .error = -ENODEV, .error_msg = job->err.msg, .body = "" };
                o->h_done(o, &none);
                return;
        }
        char *tok = NULL;
        int r = sas_token_format(o->sr, job->digest, o->expiry, NULL, &tok);
        explicit_zero(job->digest, sizeof job->digest);
        if (r >= 0) {
                sas_drop(m);
                m->sas = tok;
                m->sas_sr = strdup(o->sr);
                m->sas_expiry = o->expiry;
                if (!m->sas_sr)
                        m->sas = NULL; /* no reuse (out of memory); this call still goes, freed below */
        }
        bool cached = r >= 0 && m->sas == tok; /* then m owns tok (sas_drop() frees it) */
        hub_send(o, r, tok);
        if (!cached && tok) {
                explicit_zero(tok, strlen(tok));
                free(tok);
        }
}

/* Send the op's hub request with tok (r < 0: it could not be made). */
static void hub_send(struct op *o, int r, const char *tok) {
        struct modules *m = o->m;
        _cleanup_free_ char *dev = NULL, *mod = NULL, *url = NULL;
        if (r >= 0)
                r = sas_percent_encode(o->device_id, strlen(o->device_id), &dev);
        if (r >= 0 && o->h_module)
                r = sas_percent_encode(o->module_id, strlen(o->module_id), &mod);
        if (r >= 0 && asprintf(&url, "https://%s/devices/%s/modules%s%s?api-version=%s", o->hub, dev,
                               mod ? "/" : "", mod ? mod : "", MODULE_HUB_API_VERSION) < 0) {
                url = NULL;
                r = -ENOMEM;
        }
        struct cloud_request req = {
                .method = o->h_method,
                .url = url,
                .authorization = tok,
                .if_match = o->h_if_match ? "*" : NULL,
                .body = o->h_body,
                .body_len = o->h_body ? strlen(o->h_body) : 0,
                .timeout_ms = cloud_timeout(m),
        };
        if (r >= 0)
                r = cloud_send(m->cloud, &req, hub_answered, o, &o->cloud_id);
        if (r < 0) {
                o->outcome = MODULE_HUB_UNAVAILABLE;
                struct cloud_response none = { .error = r, .error_msg = strerror(-r), .body = "" };
                o->h_done(o, &none);
                return;
        }
        o->cloud_busy = true;
}

/* A hub request on the module registry: signed first (a device SAS from the
 * TPM's serving key), then sent; done gets the answer (o->outcome set).
 * Takes body. Failures to start end in done too, as UNAVAILABLE. */
static void hub_call(struct op *o, const char *method, bool module, char *body, bool if_match, hub_done_fn done) {
        struct modules *m = o->m;
        if (o->h_body)
                explicit_zero(o->h_body, strlen(o->h_body));
        free(o->h_body);
        o->h_body = body;
        o->h_method = method;
        o->h_module = module;
        o->h_if_match = if_match;
        o->h_done = done;
        o->retry_after_s = 0;
        free(o->sr);
        free(o->sts);
        o->sr = o->sts = NULL;
        int r = manager_tpm_state(m->mgr) == MANAGER_TPM_READY ? 0 : -ENODEV;
        if (r >= 0)
                r = sas_hub_resource(o->hub, o->device_id, &o->sr);
        uint64_t now = (uint64_t)time(NULL);
        if (r >= 0 && m->sas && o->sr && streq_ptr(m->sas_sr, o->sr) &&
            now + MODULES_SAS_REUSE_MARGIN_S < m->sas_expiry) {
                hub_send(o, 0, m->sas); /* still valid: no TPM command */
                return;
        }
        o->expiry = now + SAS_HUB_LIFETIME_S;
        if (r >= 0)
                r = sas_string_to_sign(o->sr, o->expiry, &o->sts, &o->sts_len);
        if (r >= 0) {
                o->job = (struct tpm_job){ .kind = TPM_JOB_SIGN, .in = (const uint8_t *)o->sts, .in_len = o->sts_len,
                                           .done = hub_signed, .userdata = o };
                r = manager_submit(m->mgr, &o->job);
        }
        if (r >= 0) {
                o->tpm_busy = true;
                m->tpm_jobs++;
                return;
        }
        o->outcome = MODULE_HUB_UNAVAILABLE;
        struct cloud_response none = { .error = r, .error_msg = r == -ENODEV ? manager_tpm_error(m->mgr) : strerror(-r),
                                       .body = "" };
        done(o, &none);
}

/* The status and message of a hub failure, in words a user can act on. */
static void hub_fail(struct op *o, const struct cloud_response *resp, const char *what) {
        char msg[MODULE_ERROR_MAX] = "";
        bool network = false;
        if (resp->error == 0)
                module_hub_parse_error(resp->body, resp->body_len, msg, sizeof msg, &network);
        char ra[48] = "";
        if (o->retry_after_s)
                snprintf(ra, sizeof ra, "; retry after %" PRIu32 " s", o->retry_after_s);
        int status = (o->outcome == MODULE_HUB_THROTTLED || o->outcome == MODULE_HUB_UNAVAILABLE) ? 503 : 404;
        const char *hint = "";
        if (o->outcome == MODULE_HUB_FORBIDDEN)
                hint = " (IoT Hub grants the module registry only to IoT Edge devices: enable IoT Edge on the "
                       "enrollment)";
        else if (o->outcome == MODULE_HUB_UNAUTHORIZED)
                hint = " (the hub refused the device's SAS: the device may have moved or been deleted)";
        if (resp->error < 0)
                fail(o, resp->error, status, "%s: hub %s %s (%s)%s", what, o->hub,
                     module_hub_outcome_to_string(o->outcome), resp->error_msg ? resp->error_msg : "", ra);
        else
                fail(o, -EIO, status, "%s: hub %s answered HTTP %ld, %s%s%s%s%s", what, o->hub, resp->status,
                     module_hub_outcome_to_string(o->outcome), msg[0] ? ": " : "", msg, hint, ra);
}

/* ---- keyd calls ---- */

static void keyd_answered(const struct keyd_result *res, void *userdata) {
        struct op *o = userdata;
        o->keyd_busy = false;
        if (o->cancelled) {
                op_abandon(o);
                return;
        }
        if (res->r < 0 || res->status != 200) {
                fail(o, res->r < 0 ? res->r : -EIO, 404, "module %s: %s", o->module_id, res->message);
                return;
        }
        o->k_done(o, res);
}

/* Takes body. */
static void keyd_call(struct op *o, const char *path, char *body, int r, keyd_done_fn done) {
        struct modules *m = o->m;
        o->k_done = done;
        if (r >= 0)
                r = keyd_post(m->keyd, manager_config(m->mgr)->endpoints.keyd_socket, path, body, keyd_answered, o,
                              &o->keyd_id);
        free(body);
        if (r < 0) {
                fail(o, r, 404, "module %s: could not ask aziot-keyd at %s: %s", o->module_id,
                     manager_config(m->mgr)->endpoints.keyd_socket, strerror(-r));
                return;
        }
        o->keyd_busy = true;
}

/* ---- the module flow ---- */

static void keys_set(struct op *o, const struct cloud_response *resp);

static void exported_s(struct op *o, const struct keyd_result *res) {
        int r = module_keyd_parse_key(res->body, res->body_len, &o->key_s, &o->key_s_len);
        if (r < 0) {
                fail(o, r, 404, "module %s: aziot-keyd's export answer is malformed", o->module_id);
                return;
        }
        char *body = NULL;
        r = module_hub_body(o->module_id, o->device_id, o->key_p, o->key_p_len, o->key_s, o->key_s_len, &body);
        wipe_free(o->key_p, o->key_p_len);
        wipe_free(o->key_s, o->key_s_len);
        o->key_p = o->key_s = NULL;
        if (r < 0) {
                fail(o, r, 500, "module %s: could not build the hub request: %s", o->module_id, strerror(-r));
                return;
        }
        hub_call(o, "PUT", true, body, true, keys_set);
}

static void exported_p(struct op *o, const struct keyd_result *res) {
        int r = module_keyd_parse_key(res->body, res->body_len, &o->key_p, &o->key_p_len);
        if (r < 0) {
                fail(o, r, 404, "module %s: aziot-keyd's export answer is malformed", o->module_id);
                return;
        }
        char *body = NULL;
        r = module_keyd_export_body(o->handle_s, &body);
        keyd_call(o, "/derivedkey/export", body, r, exported_s);
}

static void derived_s(struct op *o, const struct keyd_result *res) {
        int r = module_keyd_parse_handle(res->body, res->body_len, &o->handle_s);
        if (r < 0) {
                fail(o, r, 404, "module %s: aziot-keyd's /derivedkey answer is malformed", o->module_id);
                return;
        }
        char *body = NULL;
        r = module_keyd_export_body(o->handle_p, &body);
        keyd_call(o, "/derivedkey/export", body, r, exported_p);
}

static void derive(struct op *o, bool primary, keyd_done_fn done) {
        _cleanup_free_ char *data = NULL;
        char *body = NULL;
        int r = module_keyd_derivation_data(o->module_id, o->entry.gen_id, primary, &data);
        if (r >= 0)
                r = module_keyd_derive_body(o->master, (const uint8_t *)data, strlen(data), &body);
        keyd_call(o, "/derivedkey", body, r, done);
}

static void derived_p(struct op *o, const struct keyd_result *res) {
        int r = module_keyd_parse_handle(res->body, res->body_len, &o->handle_p);
        if (r < 0) {
                fail(o, r, 404, "module %s: aziot-keyd's /derivedkey answer is malformed", o->module_id);
                return;
        }
        if (o->kind == OP_GET) {
                succeed_identity(o, o->entry.gen_id, o->handle_p);
                return;
        }
        derive(o, false, derived_s);
}

static void got_master(struct op *o, const struct keyd_result *res) {
        int r = module_keyd_parse_handle(res->body, res->body_len, &o->master);
        if (r < 0) {
                fail(o, r, 404, "module %s: aziot-keyd's /key answer is malformed", o->module_id);
                return;
        }
        derive(o, true, derived_p);
}

/* aziot: load_key, else create_key_if_not_exists; POST /key does both. */
static void master_key(struct op *o) {
        char *body = NULL;
        int r = module_keyd_create_key_body(MODULE_MASTER_KEY_ID, &body);
        keyd_call(o, "/key", body, r, got_master);
}

static void keys_set(struct op *o, const struct cloud_response *resp) {
        if (o->outcome != MODULE_HUB_OK) {
                hub_fail(o, resp, "module keys not set");
                return;
        }
        struct module_hub_entry e;
        if (module_hub_parse_one(resp->body, resp->body_len, &e) == 0 && e.gen_id[0] &&
            !streq(e.gen_id, o->entry.gen_id))
                /* The keys were derived from the generationId the hub gave
                 * first; a hub that changed it has a new module. */
                log_warn("modules: hub %s changed module %s's generationId from %s to %s, ignoring", o->hub,
                         o->module_id, o->entry.gen_id, e.gen_id);
        cache_note(o, o->entry.gen_id);
        log_info("modules: module %s on hub %s has its keys (generationId %s)", o->module_id, o->hub,
                 o->entry.gen_id[0] ? o->entry.gen_id : "none");
        succeed_identity(o, o->entry.gen_id, o->handle_p);
}

static bool take_entry(struct op *o, const struct cloud_response *resp) {
        if (module_hub_parse_one(resp->body, resp->body_len, &o->entry) < 0 || !streq(o->entry.module_id, o->module_id)) {
                fail(o, -EBADMSG, 404, "module %s: hub %s's answer is not a module description", o->module_id,
                     o->hub);
                return false;
        }
        return true;
}

static void created(struct op *o, const struct cloud_response *resp) {
        if (o->outcome != MODULE_HUB_OK) {
                hub_fail(o, resp, o->outcome == MODULE_HUB_CONFLICT ? "module exists already" : "module not created");
                return;
        }
        if (take_entry(o, resp))
                master_key(o);
}

static void start_create(struct op *o) {
        char *body = NULL;
        int r = module_hub_body(o->module_id, o->device_id, NULL, 0, NULL, 0, &body);
        if (r < 0) {
                fail(o, r, 400, "module %s: invalid module id", o->module_id);
                return;
        }
        hub_call(o, "PUT", true, body, false, created);
}

static void update_got(struct op *o, const struct cloud_response *resp) {
        if (o->outcome == MODULE_HUB_NOT_FOUND) {
                /* aziot-edged's watchdog PUTs $edgeAgent to create it. */
                start_create(o);
                return;
        }
        if (o->outcome != MODULE_HUB_OK) {
                hub_fail(o, resp, "module not updated");
                return;
        }
        if (take_entry(o, resp))
                master_key(o);
}

static void get_from_cache(struct op *o, const struct cloud_response *resp) {
        const struct module_cache_entry *e =
                cache_is_for(o->m, o->hub, o->device_id) ? module_cache_find(&o->m->cache, o->module_id) : NULL;
        if (!e) {
                hub_fail(o, resp, "module not found");
                return;
        }
        snprintf(o->entry.gen_id, sizeof o->entry.gen_id, "%s", e->gen_id);
        log_debug("modules: module %s from the cache (hub %s)", o->module_id,
                  module_hub_outcome_to_string(o->outcome));
        master_key(o);
}

static void get_got(struct op *o, const struct cloud_response *resp) {
        if (o->outcome == MODULE_HUB_OK) {
                if (!take_entry(o, resp))
                        return;
                cache_note(o, o->entry.gen_id);
                master_key(o);
                return;
        }
        if (o->outcome == MODULE_HUB_NOT_FOUND) {
                struct modules *m = o->m;
                if (cache_is_for(m, o->hub, o->device_id) && module_cache_remove(&m->cache, o->module_id))
                        cache_write(m);
                hub_fail(o, resp, "module not found");
                return;
        }
        /* aziot: the hub first, the cache when the hub fails. */
        get_from_cache(o, resp);
}

static void deleted(struct op *o, const struct cloud_response *resp) {
        if (o->outcome != MODULE_HUB_OK) {
                hub_fail(o, resp, "module not deleted");
                return;
        }
        struct modules *m = o->m;
        if (cache_is_for(m, o->hub, o->device_id) && module_cache_remove(&m->cache, o->module_id))
                cache_write(m);
        log_info("modules: module %s deleted on hub %s", o->module_id, o->hub);
        struct modules_result res = { 0 };
        answer(o, &res);
}

static void answer_list(struct op *o, const struct module_hub_entry *v, size_t n) {
        _cleanup_free_ struct module_identity *ids = n ? calloc(n, sizeof *ids) : NULL;
        if (n && !ids) {
                fail(o, -ENOMEM, 500, "out of memory");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                snprintf(ids[i].module_id, sizeof ids[i].module_id, "%s", v[i].module_id);
                snprintf(ids[i].gen_id, sizeof ids[i].gen_id, "%s", v[i].gen_id);
                ids[i].hub = o->hub;
                ids[i].device_id = o->device_id;
        }
        struct modules_result res = { .list = ids, .n_list = n };
        answer(o, &res);
}

static void listed(struct op *o, const struct cloud_response *resp) {
        struct modules *m = o->m;
        if (o->outcome == MODULE_HUB_OK) {
                if (module_hub_parse_list(resp->body, resp->body_len, &o->list, &o->n_list) < 0) {
                        fail(o, -EBADMSG, 404, "hub %s's module list is malformed", o->hub);
                        return;
                }
                cache_adopt(m, o->hub, o->device_id);
                bool changed = false;
                for (size_t i = m->cache.n_modules; i-- > 0;) {
                        bool there = false;
                        for (size_t j = 0; j < o->n_list && !there; j++)
                                there = streq(o->list[j].module_id, m->cache.modules[i].module_id);
                        if (!there && module_cache_remove(&m->cache, m->cache.modules[i].module_id))
                                changed = true;
                }
                for (size_t i = 0; i < o->n_list; i++) {
                        const struct module_cache_entry *e = module_cache_find(&m->cache, o->list[i].module_id);
                        if (e && streq(e->gen_id, o->list[i].gen_id))
                                continue;
                        if (module_cache_set(&m->cache, o->list[i].module_id, o->list[i].gen_id) >= 0)
                                changed = true;
                }
                if (changed && !o->internal)
                        cache_write(m);
                answer_list(o, o->list, o->n_list);
                return;
        }
        if (!o->internal && o->outcome == MODULE_HUB_UNAVAILABLE && cache_is_for(m, o->hub, o->device_id)) {
                size_t n = m->cache.n_modules;
                _cleanup_free_ struct module_hub_entry *v = n ? calloc(n, sizeof *v) : NULL;
                if (n && !v) {
                        fail(o, -ENOMEM, 500, "out of memory");
                        return;
                }
                for (size_t i = 0; i < n; i++) {
                        snprintf(v[i].module_id, sizeof v[i].module_id, "%s", m->cache.modules[i].module_id);
                        snprintf(v[i].gen_id, sizeof v[i].gen_id, "%s", m->cache.modules[i].gen_id);
                }
                log_debug("modules: module list from the cache (hub unreachable)");
                answer_list(o, v, n);
                return;
        }
        hub_fail(o, resp, "module list not read");
}

/* ---- starting an op ---- */

static int op_new(struct modules *m, enum op_kind kind, const char *module_id, modules_cb cb, void *userdata,
                  bool internal, struct op **ret, int *status, char *msg, size_t msgsz) {
        const char *hub = NULL, *dev = NULL;
        if (m->closing)
                return -ESHUTDOWN;
        if (!cb)
                return -EINVAL;
        if (module_id && !module_id_is_valid(module_id)) {
                *status = 400;
                snprintf(msg, msgsz, "invalid module id");
                return -EINVAL;
        }
        if (!manager_identity(m->mgr, &hub, &dev)) {
                *status = 503;
                snprintf(msg, msgsz, "the device is not provisioned yet (%s)", manager_provisioning_text(m->mgr));
                return -EAGAIN;
        }
        struct op *o = calloc(1, sizeof *o);
        if (!o)
                return -ENOMEM;
        o->m = m;
        o->id = m->next_id++;
        o->kind = kind;
        o->internal = internal;
        o->cb = cb;
        o->userdata = userdata;
        snprintf(o->module_id, sizeof o->module_id, "%s", module_id ? module_id : "");
        snprintf(o->hub, sizeof o->hub, "%s", hub);
        snprintf(o->device_id, sizeof o->device_id, "%s", dev);
        o->next = m->ops;
        m->ops = o;
        *ret = o;
        return 0;
}

/* Runs from the loop, never inside the caller's call (modules.h's contract). */
static void op_kick(uv_idle_t *h);

struct kick {
        uv_idle_t idle;
        struct modules *m;
        uint64_t id;
};

static void kick_closed(uv_handle_t *h) {
        struct kick *k = h->data;
        struct modules *m = k->m;
        free(k);
        m->kicks--;
        maybe_free_modules(m);
}

static void op_begin(struct op *o) {
        struct modules *m = o->m;
        switch (o->kind) {
        case OP_LIST:
                hub_call(o, "GET", false, NULL, false, listed);
                return;
        case OP_GET:
                if (manager_config(m->mgr)->prefer_module_identity_cache && cache_is_for(m, o->hub, o->device_id)) {
                        const struct module_cache_entry *e = module_cache_find(&m->cache, o->module_id);
                        if (e) {
                                snprintf(o->entry.gen_id, sizeof o->entry.gen_id, "%s", e->gen_id);
                                master_key(o);
                                return;
                        }
                }
                hub_call(o, "GET", true, NULL, false, get_got);
                return;
        case OP_CREATE:
                start_create(o);
                return;
        case OP_UPDATE:
                hub_call(o, "GET", true, NULL, false, update_got);
                return;
        case OP_DELETE:
                hub_call(o, "DELETE", true, NULL, true, deleted);
                return;
        case _OP_KIND_MAX:
                break;
        }
        fail(o, -EINVAL, 500, "internal error");
}

static void op_kick(uv_idle_t *h) {
        struct kick *k = h->data;
        uv_idle_stop(h);
        uv_close((uv_handle_t *)h, kick_closed);
        for (struct op *o = k->m->ops; o; o = o->next)
                if (o->id == k->id) {
                        if (o->cancelled)
                                op_abandon(o);
                        else if (o->early_status)
                                fail(o, o->early_status == 503 ? -EAGAIN : -EINVAL, o->early_status, "%s",
                                     o->early_msg);
                        else
                                op_begin(o);
                        return;
                }
}

static int start(struct modules *m, enum op_kind kind, const char *module_id, modules_cb cb, void *userdata,
                 bool internal, uint64_t *ret_id) {
        struct op *o = NULL;
        int status = 0;
        char msg[MODULES_ERROR_MAX] = "";
        if (!m)
                return -ENODEV; /* the manager could not set up its module identities */
        int r = op_new(m, kind, module_id, cb, userdata, internal, &o, &status, msg, sizeof msg);
        if (r < 0 && status > 0) {
                /* Not provisioned, an invalid id: the caller gets the answer
                 * from the loop, from an op that fails at its first step. */
                o = calloc(1, sizeof *o);
                if (!o)
                        return -ENOMEM;
                o->m = m;
                o->id = m->next_id++;
                o->kind = kind;
                o->cb = cb;
                o->userdata = userdata;
                o->internal = internal;
                o->outcome = MODULE_HUB_FAILED;
                o->early_status = status;
                snprintf(o->early_msg, sizeof o->early_msg, "%s", msg);
                o->next = m->ops;
                m->ops = o;
                r = 0;
        }
        if (r < 0)
                return r;
        struct kick *k = calloc(1, sizeof *k);
        if (!k || uv_idle_init(m->loop, &k->idle) < 0) {
                free(k);
                op_free(o);
                return -ENOMEM;
        }
        k->m = m;
        k->id = o->id;
        k->idle.data = k;
        m->kicks++;
        uv_idle_start(&k->idle, op_kick);
        if (ret_id)
                *ret_id = o->id;
        return 0;
}

int modules_list(struct modules *m, modules_cb cb, void *userdata, uint64_t *ret_id) {
        return start(m, OP_LIST, NULL, cb, userdata, false, ret_id);
}
int modules_get(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id) {
        return start(m, OP_GET, module_id, cb, userdata, false, ret_id);
}
int modules_create(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id) {
        return start(m, OP_CREATE, module_id, cb, userdata, false, ret_id);
}
int modules_update(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id) {
        return start(m, OP_UPDATE, module_id, cb, userdata, false, ret_id);
}
int modules_delete(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id) {
        return start(m, OP_DELETE, module_id, cb, userdata, false, ret_id);
}

int modules_cancel(struct modules *m, uint64_t id) {
        for (struct op *o = m ? m->ops : NULL; o; o = o->next)
                if (o->id == id && !o->internal && !o->cancelled) {
                        o->cancelled = true;
                        if (o->cloud_busy || o->keyd_busy)
                                op_abandon(o);
                        /* else: a TPM job or the kick is pending; either frees it */
                        return 0;
                }
        return -ENOENT;
}

/* ---- reconciliation ---- */

static void rec_timer_cb(uv_timer_t *t) {
        struct modules *m = t->data;
        if (!m->rec_running && !m->closing)
                rec_run(m);
}

static void rec_finish(struct modules *m, const char *result, uint64_t retry_ms) {
        m->rec_running = false;
        free(m->plan);
        m->plan = NULL;
        m->n_plan = m->plan_i = 0;
        m->plan_recreate_deleted = false;
        snprintf(m->last, sizeof m->last, "%s", result);
        if (m->closing)
                return;
        if (m->rec_again) {
                /* A trigger came during the run (reload, reprovisioning): its
                 * inputs may differ, so run again at once. */
                m->rec_again = false;
                rec_run(m);
                return;
        }
        if (retry_ms > 0)
                uv_timer_start(&m->timer, rec_timer_cb, retry_ms, 0);
}

/* The module ids the [[principal]] entries with idtype "module" declare
 * (aziot: the principal's name is its module id). */
static void declared_ids(const struct tpmid_config *c, const char **out, size_t max, size_t *n, bool warn) {
        *n = 0;
        for (size_t i = 0; i < c->n_principals && *n < max; i++) {
                const struct config_principal *p = &c->principals[i];
                if (!(p->idtype & CONFIG_IDTYPE_MODULE) || !p->name)
                        continue;
                if (!module_id_is_valid(p->name)) {
                        if (warn)
                                log_warn("modules: [[principal]] name \"%s\" is not a valid module id, ignoring",
                                         p->name);
                        continue;
                }
                out[(*n)++] = p->name;
        }
}

/* Never sooner than the hub asked nor than MODULES_RECONCILE_RETRY_MIN_MS:
 * no tight loop. */
static uint64_t rec_retry_ms(struct modules *m, uint32_t retry_after_s) {
        uint64_t floor = (uint64_t)retry_after_s * 1000u;
        return backoff_next(&m->backoff, floor > MODULES_RECONCILE_RETRY_MIN_MS ? floor : MODULES_RECONCILE_RETRY_MIN_MS);
}

static void rec_failed(struct modules *m, const struct modules_result *res) {
        uint64_t ms = rec_retry_ms(m, m->rec_retry_after_s);
        char line[MODULES_STATUS_MAX];
        snprintf(line, sizeof line, "failed: %.200s", res->message);
        if (m->rec_outcome == MODULE_HUB_UNAVAILABLE || m->rec_outcome == MODULE_HUB_THROTTLED)
                log_warn("modules: no reconciliation with the hub (%s); serving the module cache, next try in "
                         "%.0f s",
                         res->message, (double)ms / 1000.0);
        else
                log_error("modules: reconciliation failed: %s; next try in %.0f s", res->message,
                          (double)ms / 1000.0);
        rec_finish(m, line, ms);
}

static void rec_next_step(struct modules *m);

static void rec_step_done(const struct modules_result *res, void *userdata) {
        struct modules *m = userdata;
        if (m->closing)
                return;
        if (res->r < 0) {
                rec_failed(m, res);
                return;
        }
        const struct module_plan_step *s = &m->plan[m->plan_i];
        if (s->action == MODULE_PLAN_RECREATE && !m->plan_recreate_deleted) {
                m->plan_recreate_deleted = true; /* now create it */
                rec_next_step(m);
                return;
        }
        log_info("modules: hub identity %s %s", s->module_id,
                 s->action == MODULE_PLAN_DELETE     ? "removed"
                 : s->action == MODULE_PLAN_RECREATE ? "recreated"
                                                     : "added");
        m->plan_i++;
        m->plan_recreate_deleted = false;
        rec_next_step(m);
}

static void rec_next_step(struct modules *m) {
        while (m->plan_i < m->n_plan && m->plan[m->plan_i].action == MODULE_PLAN_KEEP) {
                log_info("modules: hub identity %s already exists", m->plan[m->plan_i].module_id);
                m->plan_i++;
        }
        if (m->plan_i < m->n_plan) {
                const struct module_plan_step *s = &m->plan[m->plan_i];
                bool del = s->action == MODULE_PLAN_DELETE ||
                           (s->action == MODULE_PLAN_RECREATE && !m->plan_recreate_deleted);
                int r = start(m, del ? OP_DELETE : OP_CREATE, s->module_id, rec_step_done, m, true, NULL);
                if (r < 0) {
                        struct modules_result res = { .r = r };
                        snprintf(res.message, sizeof res.message, "could not start: %s", strerror(-r));
                        m->rec_outcome = MODULE_HUB_FAILED;
                        m->rec_retry_after_s = 0;
                        rec_failed(m, &res);
                }
                return;
        }
        /* Done: mark what the principals declare now (aziot's prev_state). */
        const char *ids[CONFIG_MAX_PRINCIPALS];
        size_t n = 0;
        declared_ids(manager_config(m->mgr), ids, ELEMENTSOF(ids), &n, false);
        for (size_t i = 0; i < m->cache.n_modules; i++) {
                bool now = false;
                for (size_t j = 0; j < n && !now; j++)
                        now = streq(ids[j], m->cache.modules[i].module_id);
                m->cache.modules[i].principal = now;
        }
        cache_write(m);
        backoff_reset(&m->backoff);
        char line[MODULES_STATUS_MAX];
        snprintf(line, sizeof line, "ok: %zu modules on hub %.150s, %zu declared by principals", m->cache.n_modules,
                 m->cache.hub, n);
        log_info("modules: reconciled with hub %s (%s): %zu modules, %zu declared by principals", m->cache.hub,
                 m->rec_why, m->cache.n_modules, n);
        rec_finish(m, line, 0);
}

static void rec_listed(const struct modules_result *res, void *userdata) {
        struct modules *m = userdata;
        if (m->closing)
                return;
        if (res->r < 0) {
                rec_failed(m, res);
                return;
        }
        const char *ids[CONFIG_MAX_PRINCIPALS];
        size_t n = 0;
        declared_ids(manager_config(m->mgr), ids, ELEMENTSOF(ids), &n, true);
        size_t nl = res->n_list;
        _cleanup_free_ struct module_hub_entry *hubl = nl ? calloc(nl, sizeof *hubl) : NULL;
        if (nl && !hubl) {
                rec_finish(m, "failed: out of memory", rec_retry_ms(m, 0));
                return;
        }
        for (size_t i = 0; i < nl; i++)
                snprintf(hubl[i].module_id, sizeof hubl[i].module_id, "%s", res->list[i].module_id);
        /* listed() made the cache this identity's: after a reprovisioning to
         * another hub it holds no principal marks, and every declared module
         * is made there afresh. */
        int r = module_reconcile_plan(hubl, nl, ids, n, &m->cache, &m->plan, &m->n_plan);
        if (r < 0) {
                rec_finish(m, "failed: could not plan", rec_retry_ms(m, 0));
                return;
        }
        m->plan_i = 0;
        m->plan_recreate_deleted = false;
        rec_next_step(m);
}

static void rec_run(struct modules *m) {
        const char *hub = NULL, *dev = NULL;
        uv_timer_stop(&m->timer);
        if (!manager_identity(m->mgr, &hub, &dev)) {
                snprintf(m->last, sizeof m->last, "skipped: not provisioned");
                return;
        }
        /* Nothing declared now, nothing a principal declared before: no hub
         * call. A plain (not IoT Edge) device, whose module registry IoT Hub
         * refuses, then never asks it. */
        const char *ids[CONFIG_MAX_PRINCIPALS];
        size_t n = 0;
        declared_ids(manager_config(m->mgr), ids, ELEMENTSOF(ids), &n, false);
        bool marked = false;
        for (size_t i = 0; cache_is_for(m, hub, dev) && i < m->cache.n_modules && !marked; i++)
                marked = m->cache.modules[i].principal;
        if (n == 0 && !marked) {
                snprintf(m->last, sizeof m->last, "ok: no module principals");
                log_debug("modules: no [[principal]] declares a module; nothing to reconcile (%s)", m->rec_why);
                return;
        }
        m->rec_running = true;
        int r = start(m, OP_LIST, NULL, rec_listed, m, true, NULL);
        if (r < 0) {
                struct modules_result res = { .r = r };
                snprintf(res.message, sizeof res.message, "could not start: %s", strerror(-r));
                m->rec_outcome = MODULE_HUB_FAILED;
                m->rec_retry_after_s = 0;
                rec_failed(m, &res);
        }
}

void modules_reconcile(struct modules *m, const char *why) {
        if (m->closing)
                return;
        if (m->rec_running) {
                m->rec_again = true;
                snprintf(m->rec_why, sizeof m->rec_why, "%s", why);
                return;
        }
        snprintf(m->rec_why, sizeof m->rec_why, "%s", why);
        backoff_reset(&m->backoff);
        sas_drop(m); /* a trigger is a new identity, key or config: sign afresh */
        rec_run(m);
}

size_t modules_count(const struct modules *m) {
        const char *hub = NULL, *dev = NULL;
        if (!manager_identity(m->mgr, &hub, &dev) || !cache_is_for(m, hub, dev))
                return 0;
        return m->cache.n_modules;
}

const char *modules_last_reconcile(const struct modules *m) {
        return m->last;
}

/* ---- life cycle ---- */

static void timer_closed(uv_handle_t *h) {
        struct modules *m = h->data;
        m->timer_closed = true;
        maybe_free_modules(m);
}

int modules_new(uv_loop_t *loop, struct manager *mgr, struct modules **ret) {
        const struct tpmid_config *c = manager_config(mgr);
        struct modules *m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->loop = loop;
        m->mgr = mgr;
        m->next_id = 1;
        if (asprintf(&m->cache_path, "%s/%s", c->state_dir, MODULE_CACHE_FILE_NAME) < 0) {
                free(m);
                return -ENOMEM;
        }
        struct cloud_options co = { .ca_bundle = c->cloud_ca_bundle, .connect_to = getenv("TPMIDD_CLOUD_CONNECT_TO") };
        int r = cloud_new(loop, &co, &m->cloud);
        if (r >= 0)
                r = keyd_new(loop, &m->keyd);
        if (r < 0) {
                cloud_close(m->cloud);
                free(m->cache_path);
                free(m);
                return r;
        }
        backoff_init(&m->backoff, MODULES_RECONCILE_RETRY_MIN_MS, MODULES_RECONCILE_RETRY_MAX_MS, NULL, NULL);
        uv_timer_init(loop, &m->timer);
        m->timer.data = m;
        r = module_cache_load(m->cache_path, &m->cache);
        if (r == -EBADMSG)
                log_warn("modules: the module cache %s is damaged (torn, truncated or altered), ignoring it: "
                         "modules are read from the hub again",
                         m->cache_path);
        else if (r < 0 && r != -ENOENT)
                log_warn("modules: could not read the module cache %s: %s, ignoring", m->cache_path, strerror(-r));
        else if (r >= 0)
                log_debug("modules: %zu modules in the cache for hub %s, device %s", m->cache.n_modules,
                          m->cache.hub, m->cache.device_id);
        *ret = m;
        return 0;
}

void modules_close(struct modules *m) {
        if (!m || m->closing)
                return;
        m->closing = true;
        /* Every caller still waiting is answered (modules.h: exactly one
         * callback); reconciliation's own ops just end. */
        struct op *o = m->ops;
        while (o) {
                struct op *next = o->next;
                bool waits = !o->internal && !o->cancelled;
                if (o->cloud_busy && m->cloud)
                        (void)cloud_cancel(m->cloud, o->cloud_id);
                if (o->keyd_busy && m->keyd)
                        (void)keyd_cancel(m->keyd, o->keyd_id);
                o->cloud_busy = o->keyd_busy = false;
                if (waits)
                        fail(o, -ESHUTDOWN, 503, "tpmidd is stopping");
                else if (o->tpm_busy)
                        o->cancelled = true;
                else
                        op_free(o);
                o = next;
        }
        cloud_close(m->cloud);
        m->cloud = NULL;
        keyd_close(m->keyd);
        m->keyd = NULL;
        uv_close((uv_handle_t *)&m->timer, timer_closed);
}
