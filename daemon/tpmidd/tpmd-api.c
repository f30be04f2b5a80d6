/* The aziot-tpmd routes on top of server.c and the TPM worker. See tpmd-api.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "tpmd-api.h"

struct tpmd_api {
        struct manager *manager;
        unsigned in_flight;
};

/* One request waiting for the TPM worker. */
struct api_job {
        struct tpm_job job;
        struct tpmd_api *api;
        struct server_request *req;
        enum api_op op;
        uint8_t *input; /* decoded key blob or data */
        size_t input_len;
};

static const struct http_header retry_after[] = { { "Retry-After", TPMD_API_RETRY_AFTER_SEC } };

int tpmd_api_new(struct manager *m, struct tpmd_api **ret) {
        struct tpmd_api *a = calloc(1, sizeof *a);
        if (!a)
                return -ENOMEM;
        a->manager = m;
        *ret = a;
        return 0;
}

struct tpmd_api *tpmd_api_free(struct tpmd_api *a) {
        free(a);
        return NULL;
}

unsigned tpmd_api_jobs_in_flight(const struct tpmd_api *a) {
        return a->in_flight;
}

static uint32_t op_permission(enum api_op op) {
        switch (op) {
        case API_OP_TPM_GET_KEYS:
                return CONFIG_OP_TPM_KEYS;
        case API_OP_TPM_IMPORT:
                return CONFIG_OP_TPM_IMPORT;
        case API_OP_TPM_SIGN:
                return CONFIG_OP_TPM_SIGN;
        case API_OP_IDENTITY_GET:
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_TOKEN:
        case API_OP_IDENTITY_REPORT:
        case API_OP_STATUS:
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
        case API_OP_TRUST_BUNDLE:
        case _API_OP_MAX:
                break;
        }
        return 0;
}

static void log_failure(const struct server_request *req, enum api_op op, int status, const struct tpm_error *e,
                        const char *msg) {
        if (e)
                log_struct(LOG_ERR, LOG_MESSAGE_TPM_FAILURE,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                                      LOG_STR("API_OP", api_op_to_string(op)), LOG_NUM("HTTP_STATUS", status),
                                      LOG_HEX("TPM_RC", e->rc)),
                           "tpmd: %s for uid %u failed at %s: %s", api_op_to_string(op), (unsigned)req->uid,
                           e->step, e->msg);
        else
                log_struct(LOG_INFO, NULL,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                                      LOG_STR("API_OP", api_op_to_string(op)), LOG_NUM("HTTP_STATUS", status)),
                           "tpmd: %s for uid %u answered %d: %s", api_op_to_string(op), (unsigned)req->uid, status,
                           msg);
}

static void reply_unavailable(struct tpmd_api *a, struct server_request *req, enum api_op op) {
        const char *reason = manager_tpm_error(a->manager);
        log_failure(req, op, 503, NULL, reason);
        server_reply_error(req, 503, retry_after, ELEMENTSOF(retry_after), "TPM not available: %s", reason);
}

/* Map a TPM verb's failure to an answer. Errors in what the caller sent are
 * 4xx; everything else is the TPM's (500) or a transient state (503). The
 * message names the failed step; tpm.c never puts secrets in it. */
static void reply_tpm_error(struct tpmd_api *a, struct api_job *j) {
        const struct tpm_error *e = &j->job.err;
        int status;
        const char *what;
        switch (j->job.r) {
        case -EBADMSG:
                status = 400;
                what = "the authentication key blob is malformed";
                break;
        case -EACCES:
                status = 400;
                what = "the authentication key blob is not bound to this TPM's endorsement and storage root keys";
                break;
        case -ENOKEY:
                status = 500;
                what = "no authentication key is imported (call import_auth_key first)";
                break;
        case -ENODEV:
                status = 503;
                what = "TPM not available";
                break;
        case -ENOTCONN:
                /* the worker closed it; the manager is opening it again (TPM recovery) */
                status = 503;
                what = "TPM not available (the connection broke; reconnecting)";
                break;
        case -EAGAIN:
                /* TPM_RC_RETRY/YIELDED/TESTING/NV_RATE that outlasted tpm.c's re-sends: transient. */
                status = 503;
                what = "the TPM is busy";
                break;
        default:
                status = 500;
                what = j->op == API_OP_TPM_IMPORT ? "importing the authentication key failed"
                                                  : "signing with the authentication key failed";
                break;
        }
        log_failure(j->req, j->op, status, e, what);
        if (status == 503)
                server_reply_error(j->req, status, retry_after, ELEMENTSOF(retry_after), "%s: %s: %s", what, e->step,
                                   e->msg);
        else
                server_reply_error(j->req, status, NULL, 0, "%s: %s: %s", what, e->step, e->msg);
}

static void job_done(struct tpm_job *job, void *userdata) {
        struct api_job *j = userdata;
        struct tpmd_api *a = j->api;
        a->in_flight--;

        if (j->job.r < 0)
                reply_tpm_error(a, j);
        else if (j->op == API_OP_TPM_SIGN) {
                _cleanup_free_ char *json = NULL;
                if (api_encode_sign(j->job.digest, sizeof j->job.digest, &json) < 0)
                        server_reply_error(j->req, 500, NULL, 0, "out of memory");
                else
                        server_reply(j->req, 200, json, NULL, 0);
        } else {
                log_struct(LOG_INFO, LOG_MESSAGE_AUTH_KEY_IMPORTED,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", j->req->uid), LOG_NUM("CLIENT_PID", j->req->pid),
                                      LOG_STR("API_OP", api_op_to_string(j->op))),
                           "tpmd: uid %u imported a new authentication key", (unsigned)j->req->uid);
                server_reply(j->req, 200, "{}", NULL, 0);
        }
        explicit_zero(j->job.digest, sizeof j->job.digest);
        if (j->input) {
                explicit_zero(j->input, j->input_len);
                free(j->input);
        }
        free(j);
}

static void submit(struct tpmd_api *a, struct server_request *req, enum api_op op, uint8_t *input, size_t len) {
        struct api_job *j = calloc(1, sizeof *j);
        if (!j) {
                free(input);
                server_reply_error(req, 500, NULL, 0, "out of memory");
                return;
        }
        *j = (struct api_job){
                .job = { .kind = op == API_OP_TPM_SIGN ? TPM_JOB_SIGN : TPM_JOB_IMPORT,
                         .in = input, .in_len = len, .done = job_done, .userdata = j },
                .api = a, .req = req, .op = op, .input = input, .input_len = len,
        };
        int r = manager_submit(a->manager, &j->job);
        if (r < 0) {
                free(j->input);
                free(j);
                int status = 503;
                log_struct(LOG_WARNING, LOG_MESSAGE_LIMIT_HIT,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                                      LOG_STR("API_OP", api_op_to_string(op)), LOG_NUM("HTTP_STATUS", status)),
                           "tpmd: %s for uid %u refused: %s", api_op_to_string(op), (unsigned)req->uid,
                           r == -EAGAIN ? "TPM queue full" : "shutting down");
                server_reply_error(req, status, retry_after, ELEMENTSOF(retry_after), "%s",
                                   r == -EAGAIN ? "TPM queue full, retry" : "tpmidd is shutting down, retry");
                return;
        }
        a->in_flight++;
}

void tpmd_api_handle(struct server_request *req, void *userdata) {
        struct tpmd_api *a = userdata;
        struct http_request *h = req->http;
        struct api_error err = { 0 };
        enum api_op op;

        int r = api_route(API_SOCKET_TPM, h->method, h->path, h->api_version, &op, &err);
        if (r < 0) {
                log_debug("tpmd: %s %s from uid %u: %d %s", h->method, h->path, (unsigned)req->uid, err.status,
                          err.message);
                struct http_header allow[] = { { "Allow", err.allow } };
                server_reply_error(req, err.status, err.allow ? allow : NULL, err.allow ? 1 : 0, "%s", err.message);
                return;
        }

        if (!server_request_allowed(req, op_permission(op))) {
                log_struct(LOG_WARNING, LOG_MESSAGE_ACCESS_DENIED,
                           LOG_FIELDS(LOG_NUM("CLIENT_UID", req->uid), LOG_NUM("CLIENT_PID", req->pid),
                                      LOG_STR("API_OP", api_op_to_string(op)), LOG_NUM("HTTP_STATUS", 403)),
                           "tpmd: denied %s to uid %u pid %u: not root, not in the socket's group, no [[principal]] allowing it",
                           api_op_to_string(op), (unsigned)req->uid, (unsigned)req->pid);
                server_reply_error(req, 403, NULL, 0,
                                   "uid %u is not allowed to call %s: add a [[principal]] with allow = [\"%s\"] or "
                                   "add the user to the socket's group",
                                   (unsigned)req->uid, api_op_to_string(op), config_op_to_string(op_permission(op)));
                return;
        }

        switch (op) {
        case API_OP_TPM_GET_KEYS: {
                /* Encoded per request from the manager's keys: a few hundred
                 * bytes of base64, and no second copy to keep in step. */
                const struct tpm_keys *keys = manager_tpm_keys(a->manager);
                if (!keys) {
                        reply_unavailable(a, req, op);
                        return;
                }
                _cleanup_free_ char *json = NULL;
                if (api_encode_keys(keys->ek.buf, keys->ek.len, keys->srk.buf, keys->srk.len, &json) < 0)
                        server_reply_error(req, 500, NULL, 0, "out of memory");
                else
                        server_reply(req, 200, json, NULL, 0);
                return;
        }
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN: {
                uint8_t *input = NULL;
                size_t len = 0;
                r = op == API_OP_TPM_SIGN ? api_decode_sign(h->body, h->body_len, &input, &len, &err)
                                          : api_decode_import(h->body, h->body_len, &input, &len, &err);
                if (r < 0) {
                        log_failure(req, op, err.status, NULL, err.message);
                        server_reply_error(req, err.status, NULL, 0, "%s", err.message);
                        return;
                }
                if (manager_tpm_state(a->manager) != MANAGER_TPM_READY) {
                        free(input);
                        reply_unavailable(a, req, op);
                        return;
                }
                submit(a, req, op, input, len);
                return;
        }
        case API_OP_IDENTITY_GET:
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_TOKEN:
        case API_OP_IDENTITY_REPORT:
        case API_OP_STATUS:
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
        case API_OP_TRUST_BUNDLE:
        case _API_OP_MAX:
                break;
        }
        /* api_route() never returns another socket's op for API_SOCKET_TPM. */
        server_reply_error(req, 404, NULL, 0, "not found");
}
