/* Identity socket routes. See identity-api.h. */
#include "identity-api.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "api.h"
#include "authz.h"
#include "http.h"
#include "log.h"
#include "modules.h"
#include "dps.h"
#include "sas.h"
#include "tpmid-config.h"
#include "util.h"

struct identity_api {
        struct manager *manager;
};

/* A request waiting for the manager: a reprovisioning outcome, or the end
 * of the saved-state check (then it is handled again, without waiting). */
struct pending {
        struct manager_waiter w; /* first: the done callbacks cast it back */
        struct identity_api *api;
        struct server_request *req;
        enum api_op op;
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

/* A module request waiting for manager_modules()' answer. The server keeps
 * req valid until it is answered (a reply to a connection that closed is
 * dropped), as for token_req; the manager ends every modules_*() call before
 * manager_close() reports closed. */
struct module_req {
        struct identity_api *api;
        struct server_request *req;
        enum api_op op; /* API_OP_MODULES_*, or API_OP_IDENTITY_GET for a module caller's own identity */
        uint64_t id;
};

_Static_assert(API_MODULE_ID_MAX == MODULES_ID_MAX, "lib/api.h and modules.h must agree on the module-id limit");

static const struct http_header retry_later[] = { { "Retry-After", IDENTITY_API_RETRY_AFTER_SEC } };

int identity_api_new(struct manager *m, struct identity_api **ret) {
        struct identity_api *api = calloc(1, sizeof(*api));
        if (!api)
                return -ENOMEM;
        api->manager = m;
        *ret = api;
        return 0;
}

/* The caller's facts for lib/authz: listed entries decide by themselves;
 * root and the socket's group count for the unlisted. */
static bool authorized(struct identity_api *api, struct server_request *req, enum api_op op, const char *module_id) {
        if (authz_op_allowed_by_config(manager_config(api->manager), req->uid, server_request_in_socket_group(req), op,
                                       module_id))
                return true;
        if (module_id && api_check_module_id(module_id, NULL) < 0)
                module_id = NULL; /* not valid yet: may hold newlines, kept out of the journal */
        log_struct(LOG_WARNING, LOG_MESSAGE_ACCESS_DENIED,
                   LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                              LOG_STR("API_OP", api_op_to_string(op))),
                   "identity API: uid %u may not call %s%s%s", (unsigned)req->uid, api_op_to_string(op),
                   module_id ? " for module " : "", module_id ? module_id : "");
        server_reply_error(req, 401, NULL, 0,
                           "authorization error: uid %u is not allowed to call %s%s%s (add a [[principal]] for it)",
                           (unsigned)req->uid, api_op_to_string(op), module_id ? " for module " : "",
                           module_id ? module_id : "");
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
        if (!manager_provisioning(api->manager)) {
                server_reply_error(req, 400, NULL, 0,
                                   "no device identity: [provisioning] source is \"none\" in the configuration");
                return;
        }
        server_reply_error(req, 503, retry_later, ELEMENTSOF(retry_later), "the device is not provisioned yet: %s",
                           manager_provisioning_text(api->manager));
}

static void dispatch(struct identity_api *api, struct server_request *req, enum api_op op, bool may_wait);

static void pending_identity_done(struct manager_waiter *w, enum manager_outcome outcome, const char *message) {
        struct pending *p = (struct pending *)w;
        struct identity_api *api = p->api;
        struct server_request *req = p->req;
        enum api_op op = p->op;
        free(p);
        if (outcome == MANAGER_OUTCOME_STOPPING) {
                server_reply_error(req, 503, retry_later, ELEMENTSOF(retry_later), "tpmidd is stopping");
                return;
        }
        dispatch(api, req, op, false); /* answered from what the check found (or still loading: 503) */
}

/* No identity (yet): wait for the saved-state check if it runs. Returns
 * true when req waits (it is answered later), false to answer it now. */
static bool wait_for_identity(struct identity_api *api, struct server_request *req, enum api_op op,
                              bool may_wait) {
        if (!may_wait)
                return false;
        struct pending *p = calloc(1, sizeof(*p));
        if (!p)
                return false;
        *p = (struct pending){ .w.done = pending_identity_done, .api = api, .req = req, .op = op };
        if (manager_wait_identity(api->manager, &p->w) < 0) {
                free(p);
                return false; /* nothing to wait for, or too many wait already: answer now */
        }
        return true;
}

static void handle_device(struct identity_api *api, struct server_request *req, enum api_op op, bool may_wait) {
        const char *hub, *dev;
        if (!manager_identity(api->manager, &hub, &dev)) {
                if (!wait_for_identity(api, req, op, may_wait))
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
        if (!manager_provisioning(api->manager)) {
                json_auto_t *o = json_pack("{s:s}", "source", "none");
                json = o ? json_dumps(o, JSON_COMPACT) : NULL;
                r = json ? 0 : -ENOMEM;
        } else {
                const struct tpmid_config *cfg = manager_config(api->manager);
                const char *regid = manager_registration_id(api->manager);
                struct api_provisioning p = {
                        .endpoint = cfg->provisioning.global_endpoint,
                        .scope_id = cfg->provisioning.id_scope,
                        .registration_id =
                                regid ? regid
                                      : (cfg->provisioning.registration_id ? cfg->provisioning.registration_id : ""),
                        .payload_json = manager_payload_json(api->manager),
                };
                r = api_encode_provisioning(&p, &json);
        }
        reply_json(req, r, json);
}

static void reprovision_done(struct manager_waiter *w, enum manager_outcome outcome, const char *message) {
        struct pending *p = (struct pending *)w;
        struct server_request *req = p->req;
        free(p);
        switch (outcome) {
        case MANAGER_OUTCOME_PROVISIONED:
                (void)server_reply(req, 204, NULL, NULL, 0);
                return;
        case MANAGER_OUTCOME_REFUSED:
                (void)server_reply_error(req, 502, NULL, 0, "%s", message ? message : "DPS refused the registration");
                return;
        case MANAGER_OUTCOME_RETRYING:
        case MANAGER_OUTCOME_NOT_STARTED:
        case MANAGER_OUTCOME_STOPPING:
        case MANAGER_OUTCOME_SETTLED:
        case MANAGER_OUTCOME_TIMED_OUT:
        case _MANAGER_OUTCOME_MAX:
                break;
        }
        (void)server_reply_error(req, 503, retry_later, ELEMENTSOF(retry_later), "%s",
                                 message ? message : "the reprovisioning did not finish");
}

static void handle_reprovision(struct identity_api *api, struct server_request *req) {
        struct pending *p = calloc(1, sizeof(*p));
        if (!p) {
                (void)server_reply_error(req, 500, NULL, 0, "out of memory");
                return;
        }
        *p = (struct pending){ .w.done = reprovision_done, .api = api, .req = req, .op = API_OP_IDENTITY_REPROVISION };
        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid)),
                   "identity API: uid %u asked to reprovision", (unsigned)req->uid);
        int r = manager_reprovision(api->manager, &p->w);
        if (r >= 0)
                return; /* reprovision_done() answers */
        free(p);
        if (r == -ENOENT)
                (void)server_reply_error(req, 400, NULL, 0, "cannot reprovision: [provisioning] source is \"none\"");
        else if (r == -ESHUTDOWN)
                (void)server_reply_error(req, 503, retry_later, ELEMENTSOF(retry_later), "tpmidd is stopping");
        else if (r == -EAGAIN)
                (void)server_reply_error(req, 503, retry_later, ELEMENTSOF(retry_later), "cannot reprovision yet: %s",
                                         manager_tpm_error(api->manager));
        else
                (void)server_reply_error(req, 429, retry_later, ELEMENTSOF(retry_later),
                                         "too many reprovision requests waiting");
}

/* POST /identities/device/report: a client says the hub rejected the
 * credentials. The answer says what the daemon does about it; the client's
 * word alone never starts DPS (see prov_driver_report_bad_credentials()). */
static void handle_report(struct identity_api *api, struct server_request *req, bool may_wait) {
        struct api_report rep;
        struct api_error err = {0};
        if (api_decode_report(req->http->body, req->http->body_len, &rep, &err) < 0) {
                (void)server_reply_error(req, err.status ? err.status : 400, NULL, 0, "%s", err.message);
                return;
        }
        const char *hub, *dev;
        if (!manager_identity(api->manager, &hub, &dev)) {
                if (!wait_for_identity(api, req, API_OP_IDENTITY_REPORT, may_wait))
                        reply_no_identity(api, req);
                return;
        }
        enum api_report_action action = manager_report_bad_credentials(api->manager, rep.hub_status);
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
        if (job->r < 0) {
                log_struct(LOG_ERR, LOG_MESSAGE_TPM_FAILURE, LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc)),
                           "identity API: signing a hub token failed: %s", job->err.msg);
                /* No key yet, a TPM that is (re)connecting or busy: transient. */
                bool later = job->r == -ENOKEY || job->r == -ENOTCONN || job->r == -ENODEV || job->r == -EAGAIN;
                server_reply_error(t->req, later ? 503 : 500, later ? retry_later : NULL,
                                   later ? ELEMENTSOF(retry_later) : 0, "signing in the TPM failed: %s", job->err.msg);
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
}

static void handle_token(struct identity_api *api, struct server_request *req, bool may_wait) {
        uint32_t lifetime = 0;
        struct api_error err = {0};
        if (api_decode_token(req->http->body, req->http->body_len, &lifetime, &err) < 0) {
                (void)server_reply_error(req, err.status ? err.status : 400, NULL, 0, "%s", err.message);
                return;
        }
        const char *hub, *dev;
        if (!manager_identity(api->manager, &hub, &dev)) {
                if (!wait_for_identity(api, req, API_OP_IDENTITY_TOKEN, may_wait))
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
        r = manager_submit(api->manager, &t->job);
        if (r < 0) {
                token_free(t);
                static const struct http_header ra[] = {{"Retry-After", "1"}};
                (void)server_reply_error(req, 503, ra, 1, "TPM queue full, retry");
        }
}

static void module_done(const struct modules_result *res, void *userdata) {
        struct module_req *mr = userdata;
        struct server_request *req = mr->req;
        enum api_op op = mr->op;
        free(mr);
        if (res->r < 0) {
                int status = res->status >= 400 && res->status <= 599 ? res->status : 500;
                bool later = status == 503 || status == 429;
                (void)server_reply_error(req, status, later ? retry_later : NULL, later ? ELEMENTSOF(retry_later) : 0,
                                         "%s", res->message[0] ? res->message : strerror(-res->r));
                return;
        }
        char *json = NULL;
        int r = -EINVAL; /* an op that never starts a module call */
        switch (op) {
        case API_OP_MODULES_DELETE:
                (void)server_reply(req, 204, NULL, NULL, 0);
                return;
        case API_OP_MODULES_LIST: {
                struct api_module_identity *list = calloc(res->n_list ? res->n_list : 1, sizeof(*list));
                if (!list) {
                        r = -ENOMEM;
                        break;
                }
                for (size_t i = 0; i < res->n_list; i++) {
                        const struct module_identity *m = &res->list[i];
                        /* aziot lists specs without auth: key_handle stays NULL */
                        list[i] = (struct api_module_identity){ .hub_name = m->hub, .gateway_host = m->hub,
                                                                .device_id = m->device_id,
                                                                .module_id = m->module_id, .gen_id = m->gen_id };
                }
                r = api_encode_module_list(list, res->n_list, &json);
                free(list);
                break;
        }
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_IDENTITY_GET: {
                const struct module_identity *m = res->identity;
                if (!m) {
                        r = -EINVAL;
                        break;
                }
                struct api_module_identity id = { .hub_name = m->hub, .gateway_host = m->hub,
                                                  .device_id = m->device_id, .module_id = m->module_id,
                                                  .gen_id = m->gen_id, .key_handle = m->key_handle };
                r = api_encode_module(&id, &json);
                break;
        }
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_TOKEN:
        case API_OP_IDENTITY_REPORT:
        case API_OP_STATUS:
        case API_OP_TRUST_BUNDLE:
        case _API_OP_MAX:
                break;
        }
        reply_json(req, r, json);
}

/* Ask manager_modules() for op on module_id (NULL for the list). */
static void start_module_call(struct identity_api *api, struct server_request *req, enum api_op op,
                              const char *module_id) {
        struct modules *mods = manager_modules(api->manager);
        struct module_req *mr = calloc(1, sizeof(*mr));
        if (!mr) {
                (void)server_reply_error(req, 500, NULL, 0, "out of memory");
                return;
        }
        *mr = (struct module_req){ .api = api, .req = req, .op = op };
        int r = -EINVAL;
        switch (op) {
        case API_OP_MODULES_LIST:
                r = modules_list(mods, module_done, mr, &mr->id);
                break;
        case API_OP_MODULES_GET:
        case API_OP_IDENTITY_GET:
                r = modules_get(mods, module_id, module_done, mr, &mr->id);
                break;
        case API_OP_MODULES_CREATE:
                r = modules_create(mods, module_id, module_done, mr, &mr->id);
                break;
        case API_OP_MODULES_UPDATE:
                r = modules_update(mods, module_id, module_done, mr, &mr->id);
                break;
        case API_OP_MODULES_DELETE:
                r = modules_delete(mods, module_id, module_done, mr, &mr->id);
                break;
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_TOKEN:
        case API_OP_IDENTITY_REPORT:
        case API_OP_STATUS:
        case API_OP_TRUST_BUNDLE:
        case _API_OP_MAX:
                break;
        }
        if (r >= 0)
                return; /* module_done() answers */
        free(mr);
        if (r == -ENOMEM)
                (void)server_reply_error(req, 500, NULL, 0, "out of memory");
        else
                (void)server_reply_error(req, 503, retry_later, ELEMENTSOF(retry_later),
                                         "module identities are not available: %s", strerror(-r));
}

/* GET /identities/identity: the caller's own identity (lib/authz rule 8). */
static void handle_caller_identity(struct identity_api *api, struct server_request *req, bool may_wait) {
        const char *module_id = NULL;
        switch (authz_caller_identity_by_config(manager_config(api->manager), req->uid,
                                                server_request_in_socket_group(req), &module_id)) {
        case AUTHZ_IDENTITY_DEVICE:
                handle_device(api, req, API_OP_IDENTITY_GET, may_wait);
                return;
        case AUTHZ_IDENTITY_MODULE:
                start_module_call(api, req, API_OP_IDENTITY_GET, module_id);
                return;
        case AUTHZ_IDENTITY_NONE:
                break;
        }
        /* Only after a wait, when a reload took the caller's identity away. */
        if (authorized(api, req, API_OP_IDENTITY_GET, NULL))
                (void)server_reply_error(req, 500, NULL, 0, "internal error: no identity for an authorized caller");
}

static void handle_trust_bundle(struct server_request *req) {
        char *json = NULL;
        int r = api_encode_trust_bundle("", &json);
        reply_json(req, r, json);
}

static void handle_status(struct identity_api *api, struct server_request *req) {
        struct api_status st;
        manager_fill_status(api->manager, &st);
        char *json = NULL;
        int r = api_encode_status(&st, &json);
        reply_json(req, r, json);
}

/* Routed and authorized requests. may_wait: the request has not waited for
 * the saved-state check yet. */
static void dispatch(struct identity_api *api, struct server_request *req, enum api_op op, bool may_wait) {
        switch (op) {
        case API_OP_IDENTITY_GET:
                handle_caller_identity(api, req, may_wait);
                return;
        case API_OP_IDENTITY_DEVICE:
                handle_device(api, req, op, may_wait);
                return;
        case API_OP_IDENTITY_TOKEN:
                handle_token(api, req, may_wait);
                return;
        case API_OP_IDENTITY_REPORT:
                handle_report(api, req, may_wait);
                return;
        case API_OP_IDENTITY_PROVISIONING:
                handle_provisioning(api, req);
                return;
        case API_OP_IDENTITY_REPROVISION:
                handle_reprovision(api, req);
                return;
        case API_OP_STATUS:
                handle_status(api, req);
                return;
        case API_OP_TRUST_BUNDLE:
                handle_trust_bundle(req);
                return;
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
                /* they carry a module id: identity_api_handle() starts them */
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case _API_OP_MAX:
                break;
        }
        server_reply_error(req, 404, NULL, 0, "not found");
}

/* A module route, routed and with its body decoded: authorize for the
 * module it names, then check type and id (aziot's order). type: the body's
 * (create) or the query's. */
static void handle_module(struct identity_api *api, struct server_request *req, enum api_op op, const char *type,
                          const char *module_id) {
        struct api_error err = { 0 };
        if (!authorized(api, req, op, module_id))
                return;
        if (api_check_module_type(op, type, &err) < 0 ||
            (op != API_OP_MODULES_LIST && api_check_module_id(module_id, &err) < 0)) {
                (void)server_reply_error(req, err.status, NULL, 0, "%s", err.message);
                return;
        }
        if (op != API_OP_MODULES_LIST)
                log_struct(LOG_INFO, NULL,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_STR("API_OP", api_op_to_string(op))),
                           "identity API: uid %u calls %s for module %s", (unsigned)req->uid, api_op_to_string(op),
                           module_id);
        start_module_call(api, req, op, op == API_OP_MODULES_LIST ? NULL : module_id);
}

void identity_api_handle(struct server_request *req, void *userdata) {
        struct identity_api *api = userdata;
        struct http_request *h = req->http;
        enum api_op op;
        struct api_error err = {0};
        _cleanup_free_ char *param = NULL, *type = NULL, *body_id = NULL;
        int r = api_route_param(API_SOCKET_IDENTITY, h->method, h->path, h->api_version, &op, &param, &err);
        if (r < 0) {
                struct http_header allow = {"Allow", err.allow};
                server_reply_error(req, err.status, err.allow ? &allow : NULL, err.allow ? 1 : 0, "%s", err.message);
                return;
        }
        switch (op) {
        case API_OP_IDENTITY_GET:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_TOKEN:
        case API_OP_IDENTITY_REPORT: /* any client that uses the identity may say the hub refused it */
        case API_OP_STATUS:
        case API_OP_TRUST_BUNDLE:
                if (!authorized(api, req, op, NULL))
                        return;
                break;
        case API_OP_IDENTITY_DEVICE:
                if (!authorized(api, req, op, NULL))
                        return;
                if (api_decode_device(h->body, h->body_len, &err) < 0) {
                        (void)server_reply_error(req, err.status, NULL, 0, "%s", err.message);
                        return;
                }
                break;
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
                /* aziot reads the body before it looks at the caller */
                if (op == API_OP_MODULES_UPDATE)
                        r = api_decode_module_update(h->content_type, h->body, h->body_len, &err);
                else if (op == API_OP_MODULES_DELETE)
                        r = api_decode_module_delete(h->content_type, h->body, h->body_len, &err);
                if (r < 0) {
                        (void)server_reply_error(req, err.status, NULL, 0, "%s", err.message);
                        return;
                }
                r = http_query_get(h->query, "type", &type);
                if (r == -ENOMEM) {
                        (void)server_reply_error(req, 500, NULL, 0, "out of memory");
                        return;
                }
                /* a type that decodes to a NUL is no type aziot knows: "" says "invalid type" */
                if (r == -EINVAL && !(type = strdup(""))) {
                        (void)server_reply_error(req, 500, NULL, 0, "out of memory");
                        return;
                }
                handle_module(api, req, op, type, param);
                return;
        case API_OP_MODULES_CREATE:
                if (api_decode_module_create(h->content_type, h->body, h->body_len, &type, &body_id, &err) < 0) {
                        (void)server_reply_error(req, err.status, NULL, 0, "%s", err.message);
                        return;
                }
                handle_module(api, req, op, type, body_id);
                return;
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case _API_OP_MAX:
                break;
        }
        dispatch(api, req, op, true);
}

struct identity_api *identity_api_free(struct identity_api *api) {
        free(api);
        return NULL;
}
