/* Identity socket routes. See identity-api.h. */
#include "identity-api.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "api.h"
#include "log.h"
#include "provision-driver.h"
#include "provision.h"
#include "sas.h"
#include "tpmid-config.h"
#include "util.h"

struct waiter {
        struct server_request *req;
        struct waiter *next;
};

struct identity_api {
        uv_loop_t *loop;
        const struct tpmid_config *cfg;
        struct tpm_worker *worker;
        struct prov_driver *prov; /* NULL when provisioning source is "none" */
        bool tpm_ready;
        char tpm_error[512];
        uint64_t started_ms;
        struct waiter *waiters;
        unsigned n_waiters;
        bool waiters_saw_busy; /* a DPS run started since the waiters came */
        unsigned tokens_in_flight;
        bool freeing;
        void (*status_cb)(const char *text, void *userdata);
        void *status_userdata;
};

/* A hub SAS token request waiting for its TPM signature. */
struct token_req {
        struct tpm_job job;
        struct identity_api *api;
        struct server_request *req;
        char *sr, *sts;
        size_t sts_len;
        uint64_t expiry;
        char hub[DPS_HUB_NAME_MAX + 1];
        char device_id[DPS_DEVICE_ID_MAX + 1];
};

static void answer_waiters(struct identity_api *api, int status, const char *msg) {
        while (api->waiters) {
                struct waiter *w = api->waiters;
                api->waiters = w->next;
                if (status == 204)
                        server_reply(w->req, 204, NULL, NULL, 0);
                else
                        server_reply_error(w->req, status,
                                           status == 503 ? (const struct http_header[]){{"Retry-After",
                                                                                         IDENTITY_API_RETRY_AFTER_SEC}}
                                                         : NULL,
                                           status == 503 ? 1 : 0, "%s", msg);
                free(w);
        }
        api->n_waiters = 0;
}

static void prov_status_changed(void *userdata) {
        struct identity_api *api = userdata;
        if (!api->prov)
                return;
        struct api_status st = {0};
        prov_driver_fill_status(api->prov, &st);
        const char *text = prov_driver_status_text(api->prov);
        if (api->status_cb)
                api->status_cb(text, api->status_userdata);
        if (!api->waiters)
                return;
        /* Reprovision requests are answered once the run they asked for settled.
         * Compare states, not their status strings (the failed state's name is
         * "failed", and a string typo here would leave requests hanging). */
        enum prov_state state = prov_driver_state(api->prov);
        bool settled = state == PROV_PROVISIONED || state == PROV_FAILED_PERMANENT || state == PROV_BACKING_OFF;
        if (!settled) {
                api->waiters_saw_busy = true;
                return;
        }
        if (!api->waiters_saw_busy)
                return;
        if (state == PROV_PROVISIONED)
                answer_waiters(api, 204, NULL);
        else if (state == PROV_FAILED_PERMANENT)
                answer_waiters(api, 502, st.last_message ? st.last_message : "DPS refused the registration");
        else
                answer_waiters(api, 503,
                               st.last_message ? st.last_message
                                               : "DPS could not be reached; retrying in the background");
}

int identity_api_new(uv_loop_t *loop, const struct tpmid_config *config, struct tpm_worker *worker,
                     struct identity_api **ret) {
        struct identity_api *api = calloc(1, sizeof(*api));
        if (!api)
                return -ENOMEM;
        api->loop = loop;
        api->cfg = config;
        api->worker = worker;
        api->started_ms = uv_now(loop);
        snprintf(api->tpm_error, sizeof(api->tpm_error), "the TPM has not answered yet");
        if (config->provisioning.source == CONFIG_SOURCE_DPS) {
                int r = prov_driver_new(loop, config, worker, &api->prov);
                if (r < 0) {
                        free(api);
                        return r;
                }
                prov_driver_set_status_cb(api->prov, prov_status_changed, api);
        }
        *ret = api;
        return 0;
}

void identity_api_set_status_cb(struct identity_api *api, void (*cb)(const char *text, void *userdata),
                                void *userdata) {
        api->status_cb = cb;
        api->status_userdata = userdata;
}

const char *identity_api_status_text(struct identity_api *api) {
        if (!api->prov)
                return "TPM broker only (provisioning source \"none\")";
        return prov_driver_status_text(api->prov);
}

void identity_api_tpm_ready(struct identity_api *api, const struct tpm_keys *keys) {
        identity_api_set_tpm_state(api, true, NULL);
        if (api->prov && prov_driver_start(api->prov, keys) < 0)
                log_error("provisioning is not started: fix the configuration and reload (tpmidctl config apply)");
}

void identity_api_set_tpm_state(struct identity_api *api, bool ready, const char *reason) {
        api->tpm_ready = ready;
        snprintf(api->tpm_error, sizeof(api->tpm_error), "%s", reason ? reason : "");
}

void identity_api_set_config(struct identity_api *api, const struct tpmid_config *config) {
        api->cfg = config;
        if (api->prov)
                prov_driver_set_config(api->prov, config);
}

static bool authorized(struct identity_api *api, struct server_request *req, enum api_op op, uint32_t bit) {
        if (server_request_allowed(req, bit))
                return true;
        log_struct(LOG_WARNING, LOG_MESSAGE_ACCESS_DENIED,
                   LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                              LOG_STR("API_OP", api_op_to_string(op))),
                   "identity API: uid %u may not call %s", (unsigned)req->uid, api_op_to_string(op));
        server_reply_error(req, 401, NULL, 0,
                           "authorization error: uid %u is not allowed to call %s (add a [[principal]] for it)",
                           (unsigned)req->uid, api_op_to_string(op));
        return false;
}

static void reply_json(struct server_request *req, int r, char *json) {
        if (r < 0 || !json) {
                server_reply_error(req, 500, NULL, 0, "could not encode the answer: %s", strerror(r < 0 ? -r : ENOMEM));
                return;
        }
        server_reply(req, 200, json, NULL, 0);
        free(json);
}

/* No identity to hand out: say why, in words the operator can act on. */
static void reply_no_identity(struct identity_api *api, struct server_request *req) {
        if (!api->prov) {
                server_reply_error(req, 400, NULL, 0,
                                   "no device identity: [provisioning] source is \"none\" in the configuration");
                return;
        }
        static const struct http_header ra[] = {{"Retry-After", IDENTITY_API_RETRY_AFTER_SEC}};
        server_reply_error(req, 503, ra, 1, "the device is not provisioned yet: %s",
                           prov_driver_status_text(api->prov));
}

static void handle_device(struct identity_api *api, struct server_request *req) {
        const char *hub, *dev;
        if (!api->prov || !prov_driver_identity(api->prov, &hub, &dev)) {
                reply_no_identity(api, req);
                return;
        }
        char *json = NULL;
        struct api_device_identity id = {.hub_name = hub, .gateway_host = hub, .device_id = dev};
        int r = api_encode_identity(&id, &json);
        reply_json(req, r, json);
}

static void handle_provisioning(struct identity_api *api, struct server_request *req) {
        char *json = NULL;
        int r;
        if (!api->prov) {
                json_auto_t *o = json_pack("{s:s}", "source", "none");
                json = o ? json_dumps(o, JSON_COMPACT) : NULL;
                r = json ? 0 : -ENOMEM;
        } else {
                const char *regid = prov_driver_registration_id(api->prov);
                struct api_provisioning p = {
                        .endpoint = api->cfg->provisioning.global_endpoint,
                        .scope_id = api->cfg->provisioning.id_scope,
                        .registration_id =
                                regid ? regid
                                      : (api->cfg->provisioning.registration_id ? api->cfg->provisioning.registration_id
                                                                                : ""),
                        .payload_json = prov_driver_payload_json(api->prov),
                };
                r = api_encode_provisioning(&p, &json);
        }
        reply_json(req, r, json);
}

static void handle_reprovision(struct identity_api *api, struct server_request *req) {
        if (!api->prov) {
                (void)server_reply_error(req, 400, NULL, 0, "cannot reprovision: [provisioning] source is \"none\"");
                return;
        }
        if (!api->tpm_ready) {
                static const struct http_header ra[] = {{"Retry-After", IDENTITY_API_RETRY_AFTER_SEC}};
                (void)server_reply_error(req, 503, ra, 1, "cannot reprovision yet: %s", api->tpm_error);
                return;
        }
        if (api->n_waiters >= IDENTITY_API_MAX_WAITERS) {
                static const struct http_header ra[] = {{"Retry-After", IDENTITY_API_RETRY_AFTER_SEC}};
                (void)server_reply_error(req, 429, ra, 1, "too many reprovision requests waiting");
                return;
        }
        struct waiter *w = calloc(1, sizeof(*w));
        if (!w) {
                (void)server_reply_error(req, 500, NULL, 0, "out of memory");
                return;
        }
        w->req = req;
        w->next = api->waiters;
        if (!api->waiters)
                api->waiters_saw_busy = false;
        api->waiters = w;
        api->n_waiters++;
        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid)),
                   "identity API: uid %u asked to reprovision", (unsigned)req->uid);
        if (prov_driver_reprovision(api->prov) < 0)
                answer_waiters(api, 503, "provisioning has not started yet");
}

/* POST /identities/device/report: a client says the hub rejected the
 * credentials. The answer says what the daemon does about it; the client's
 * word alone never starts DPS (see prov_driver_report_bad_credentials()). */
static void handle_report(struct identity_api *api, struct server_request *req) {
        struct api_report rep;
        struct api_error err = {0};
        if (api_decode_report(req->http->body, req->http->body_len, &rep, &err) < 0) {
                (void)server_reply_error(req, err.status ? err.status : 400, NULL, 0, "%s", err.message);
                return;
        }
        const char *hub, *dev;
        if (!api->prov || !prov_driver_identity(api->prov, &hub, &dev)) {
                reply_no_identity(api, req);
                return;
        }
        enum api_report_action action = prov_driver_report_bad_credentials(api->prov, rep.hub_status);
        log_struct(action == API_REPORT_CHECKING_HUB ? LOG_NOTICE : LOG_INFO, NULL,
                   LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                              LOG_STR("API_OP", api_op_to_string(API_OP_IDENTITY_REPORT)),
                              LOG_NUM("HTTP_STATUS", rep.hub_status)),
                   "identity API: uid %u reports that hub %s answered HTTP %d for device %s%s%s%s; %s",
                   (unsigned)req->uid, hub, rep.hub_status, dev, rep.reason[0] ? " (\"" : "", rep.reason,
                   rep.reason[0] ? "\")" : "", api_report_action_to_string(action));
        char *json = NULL;
        int r = api_encode_report(action, &json);
        if (r < 0) {
                (void)server_reply_error(req, 500, NULL, 0, "could not encode the answer: %s", strerror(-r));
                return;
        }
        (void)server_reply(req, 202, json, NULL, 0);
        free(json);
}

static void token_free(struct token_req *t) {
        free(t->sr);
        if (t->sts)
                explicit_zero(t->sts, t->sts_len);
        free(t->sts);
        free(t);
}

static void token_signed(struct tpm_job *job, void *userdata) {
        struct token_req *t = userdata;
        struct identity_api *api = t->api;
        api->tokens_in_flight--;
        if (job->r < 0) {
                log_struct(LOG_ERR, LOG_MESSAGE_TPM_FAILURE, LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc)),
                           "identity API: signing a hub token failed: %s", job->err.msg);
                server_reply_error(t->req, job->r == -ENOKEY ? 503 : 500, NULL, 0, "signing in the TPM failed: %s",
                                   job->err.msg);
        } else {
                _cleanup_free_ char *tok = NULL;
                char *json = NULL;
                int r = sas_token_format(t->sr, job->digest, t->expiry, NULL, &tok);
                if (r >= 0)
                        r = api_encode_token(tok, (int64_t)t->expiry, t->hub, t->device_id, &json);
                if (tok)
                        explicit_zero(tok, strlen(tok));
                reply_json(t->req, r, json);
        }
        token_free(t);
        if (api->freeing && api->tokens_in_flight == 0)
                identity_api_free(api);
}

static void handle_token(struct identity_api *api, struct server_request *req) {
        uint32_t lifetime = 0;
        struct api_error err = {0};
        if (api_decode_token(req->http->body, req->http->body_len, &lifetime, &err) < 0) {
                (void)server_reply_error(req, err.status ? err.status : 400, NULL, 0, "%s", err.message);
                return;
        }
        const char *hub, *dev;
        if (!api->prov || !prov_driver_identity(api->prov, &hub, &dev)) {
                reply_no_identity(api, req);
                return;
        }
        struct token_req *t = calloc(1, sizeof(*t));
        if (!t) {
                (void)server_reply_error(req, 500, NULL, 0, "out of memory");
                return;
        }
        t->api = api;
        t->req = req;
        snprintf(t->hub, sizeof(t->hub), "%s", hub);
        snprintf(t->device_id, sizeof(t->device_id), "%s", dev);
        t->expiry = (uint64_t)time(NULL) + lifetime;
        int r = sas_hub_resource(hub, dev, &t->sr);
        if (r >= 0)
                r = sas_string_to_sign(t->sr, t->expiry, &t->sts, &t->sts_len);
        if (r < 0) {
                token_free(t);
                (void)server_reply_error(req, 500, NULL, 0, "could not build the token: %s", strerror(-r));
                return;
        }
        t->job.kind = TPM_JOB_SIGN;
        t->job.in = (const uint8_t *)t->sts;
        t->job.in_len = t->sts_len;
        t->job.done = token_signed;
        t->job.userdata = t;
        r = tpm_worker_submit(api->worker, &t->job);
        if (r < 0) {
                token_free(t);
                static const struct http_header ra[] = {{"Retry-After", "1"}};
                (void)server_reply_error(req, 503, ra, 1, "TPM queue full, retry");
                return;
        }
        api->tokens_in_flight++;
}

static void handle_status(struct identity_api *api, struct server_request *req) {
        struct api_status st = {
                .provisioning_state = "disabled",
                .tpm_state = api->tpm_ready ? "ready" : "unavailable",
                .tpm_last_error = api->tpm_error[0] ? api->tpm_error : NULL,
                .version = TPMID_VERSION,
                .uptime_sec = (uv_now(api->loop) - api->started_ms) / 1000,
                .mode = api->cfg->provisioning.source == CONFIG_SOURCE_DPS
                                ? prov_mode_to_string(api->cfg->auto_reprovisioning_mode)
                                : "none",
        };
        if (api->prov)
                prov_driver_fill_status(api->prov, &st);
        char *json = NULL;
        int r = api_encode_status(&st, &json);
        reply_json(req, r, json);
}

void identity_api_handle(struct server_request *req, void *userdata) {
        struct identity_api *api = userdata;
        struct http_request *h = req->http;
        enum api_op op;
        struct api_error err = {0};
        if (api_route(API_SOCKET_IDENTITY, h->method, h->path, h->api_version, &op, &err) < 0) {
                struct http_header allow = {"Allow", err.allow};
                server_reply_error(req, err.status, err.allow ? &allow : NULL, err.allow ? 1 : 0, "%s", err.message);
                return;
        }
        switch (op) {
        case API_OP_IDENTITY_GET:
                if (authorized(api, req, op, CONFIG_OP_IDENTITY_GET))
                        handle_device(api, req);
                return;
        case API_OP_IDENTITY_DEVICE:
                if (!authorized(api, req, op, CONFIG_OP_IDENTITY_GET))
                        return;
                if (api_decode_device(h->body, h->body_len, &err) < 0) {
                        (void)server_reply_error(req, err.status, NULL, 0, "%s", err.message);
                        return;
                }
                handle_device(api, req);
                return;
        case API_OP_IDENTITY_PROVISIONING:
                if (authorized(api, req, op, CONFIG_OP_IDENTITY_PROVISIONING))
                        handle_provisioning(api, req);
                return;
        case API_OP_IDENTITY_REPROVISION:
                if (authorized(api, req, op, CONFIG_OP_REPROVISION))
                        handle_reprovision(api, req);
                return;
        case API_OP_IDENTITY_TOKEN:
                if (authorized(api, req, op, CONFIG_OP_IDENTITY_TOKEN))
                        handle_token(api, req);
                return;
        case API_OP_IDENTITY_REPORT:
                /* Any client that uses the identity may say the hub refused it. */
                if (authorized(api, req, op, CONFIG_OP_IDENTITY_GET))
                        handle_report(api, req);
                return;
        case API_OP_STATUS:
                if (server_request_in_socket_group(req) || server_request_allowed(req, CONFIG_OP_IDENTITY_GET))
                        handle_status(api, req);
                else
                        authorized(api, req, op, CONFIG_OP_IDENTITY_GET);
                return;
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case _API_OP_MAX:
                break;
        }
        server_reply_error(req, 404, NULL, 0, "not found");
}

struct identity_api *identity_api_free(struct identity_api *api) {
        if (!api)
                return NULL;
        if (!api->freeing) {
                api->freeing = true;
                answer_waiters(api, 503, "tpmidd is stopping");
                prov_driver_close(api->prov);
                api->prov = NULL;
        }
        /* Token requests hold pointers to api until the worker hands them back. */
        if (api->tokens_in_flight == 0)
                free(api);
        return NULL;
}
