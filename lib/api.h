/* The HTTP APIs of the two sockets, wire-compatible with aziot-tpmd and
 * aziot-identityd: the route table (method + exact path + api-version -> op),
 * request body decoders and response encoders. Pure code on top of jansson:
 * no I/O, no logging.
 *
 * TPM socket (tpmd.sock), api-version exactly 2020-09-01:
 *   GET  /get_tpm_keys        -> {"endorsement_key":b64,"storage_root_key":b64}
 *   POST /import_auth_key     {"key":b64}  -> {}
 *   POST /sign_with_auth_key  {"data":b64} -> {"digest":b64}
 * Identity socket (identityd.sock), api-version 2020-09-01, 2021-12-01, 2022-08-01:
 *   GET  /identities/identity              -> device identity (as POST /identities/device)
 *   POST /identities/device  {"type":"aziot"} -> {"type":"aziot","spec":{...}}
 *   GET  /identities/provisioning          (>= 2021-12-01) -> {"source":"dps",...}
 *   POST /identities/device/reprovision    (body ignored) -> 204
 *   GET  /identities/modules?type=aziot    -> {"identities":[module spec without auth, ...]}
 *   POST /identities/modules {"type":"aziot","moduleId":M} -> module spec
 *   GET  /identities/modules/{M}?type=aziot -> module spec (with auth.keyHandle)
 *   PUT  /identities/modules/{M}?type=aziot (any JSON body, ignored) -> module spec
 *   DELETE /identities/modules/{M}?type=aziot -> 204
 *   GET  /trust-bundle                     -> {"certificate":""} (aziot's answer, see
 *                                            api_encode_trust_bundle())
 *   aziot's routes take every version from the one they appeared in; a version
 *   a route does not take makes aziot skip the route: 404 "not found".
 *   tpmidd extensions, accepted with every identity api-version (a client that
 *   knows aziot's versions needs no new one; aziot answers 404 for these paths):
 *   POST /identities/device/token {"lifetime_sec":N}? -> {"sasToken","expiresOn","hubName","deviceId"}
 *   POST /identities/device/report {"hubStatus":N,"reason":"..."?} -> 202 {"action":"..."}
 *   GET  /status                           -> see api_encode_status()
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define API_VERSION_2020_09_01 "2020-09-01"
#define API_VERSION_2021_12_01 "2021-12-01"
#define API_VERSION_2022_08_01 "2022-08-01"

/* Decoded-size limits for request fields (the HTTP body limit comes first). */
#define API_MAX_IMPORT_KEY_BYTES 4096 /* bytes: a DPS authenticationKey blob is ~0.8 KiB */
#define API_MAX_SIGN_DATA_BYTES 16384 /* bytes: identityd signs short SAS string-to-sign values */
#define API_TOKEN_LIFETIME_MIN_SEC 60     /* seconds: shortest SAS token we issue */
#define API_TOKEN_LIFETIME_MAX_SEC 86400  /* seconds: longest SAS token we issue (1 day) */
#define API_TOKEN_LIFETIME_DEFAULT_SEC 3600 /* seconds: when the request gives no lifetime_sec */
#define API_ERROR_MESSAGE_MAX 256 /* bytes, NUL included, of api_error.message */
#define API_REPORT_REASON_MAX 256     /* bytes (UTF-8, NUL excluded) of a report's "reason" */
#define API_HTTP_STATUS_MIN 100       /* lowest HTTP status a report may carry */
#define API_HTTP_STATUS_MAX 599       /* highest HTTP status a report may carry */
#define API_MODULE_ID_MAX 128         /* chars of an IoT Hub module id (the hub's limit; = MODULES_ID_MAX) */

enum api_socket {
        API_SOCKET_TPM,
        API_SOCKET_IDENTITY,
};

enum api_op {
        API_OP_TPM_GET_KEYS,           /* "tpm.get_keys" */
        API_OP_TPM_IMPORT,             /* "tpm.import" */
        API_OP_TPM_SIGN,               /* "tpm.sign" */
        API_OP_IDENTITY_GET,           /* "identity.get" */
        API_OP_IDENTITY_DEVICE,        /* "identity.device" */
        API_OP_IDENTITY_PROVISIONING,  /* "identity.provisioning" */
        API_OP_IDENTITY_REPROVISION,   /* "identity.reprovision" */
        API_OP_IDENTITY_TOKEN,         /* "identity.token" */
        API_OP_IDENTITY_REPORT,        /* "identity.report" */
        API_OP_STATUS,                 /* "status" */
        API_OP_MODULES_LIST,           /* "identity.modules.list" */
        API_OP_MODULES_GET,            /* "identity.modules.get" */
        API_OP_MODULES_CREATE,         /* "identity.modules.create" */
        API_OP_MODULES_UPDATE,         /* "identity.modules.update" */
        API_OP_MODULES_DELETE,         /* "identity.modules.delete" */
        API_OP_TRUST_BUNDLE,           /* "trust-bundle" */
        _API_OP_MAX,
};

/* Stable names for logs (API_OP=) and principal permissions. Returns a static
 * string, or NULL for an out-of-range value. */
const char *api_op_to_string(enum api_op op);
/* Inverse of api_op_to_string(). Returns the op (>= 0) or -EINVAL. */
int api_op_from_string(const char *s);

/* The socket an op is served on. */
enum api_socket api_op_socket(enum api_op op);

/* An error to answer: status + the text of the {"message"} body. */
struct api_error {
        int status;                          /* HTTP status: 400, 404, 422, ... */
        char message[API_ERROR_MESSAGE_MAX]; /* NUL-terminated, may be truncated */
        const char *allow;                   /* for "method not allowed": the method the path
                                              * takes ("GET"/"POST"), for an Allow header; else NULL */
};

/* Match a request. path is the raw path without the query; paths match exactly,
 * except a route's {moduleId}: one non-empty path segment (no '/'), percent-
 * decoded as a URL path is ('+' stays '+'), which must be UTF-8 without NUL
 * (aziot: a segment that does not decode is no match: 404). api_version is the
 * decoded api-version query value or NULL when absent.
 * Check order (aziot's http-common): api-version missing -> 400 "api-version not
 * specified"; not one of this socket's versions -> 400 `invalid api-version "X"`;
 * no route for the path that takes this version -> 404 "not found"; known path,
 * wrong method -> 400 "method not allowed" (err->allow set to the methods the
 * path takes, e.g. "GET, POST", for an Allow header).
 * Returns 0 and sets *ret_op, or -EINVAL / -ENOENT (404) / -ENOMEM (500) with
 * err filled (err may be NULL). */
int api_route(enum api_socket which, const char *method, const char *path, const char *api_version,
              enum api_op *ret_op, struct api_error *err);

/* api_route() that also hands back the route's path parameter: on success
 * *ret_param is the decoded {moduleId} (heap, caller frees) for
 * API_OP_MODULES_GET/UPDATE/DELETE and NULL for every other op. ret_param may
 * be NULL only when the caller does not want it. Not validated beyond the
 * decoding: api_check_module_id() does that, after authorization (aziot's
 * order). */
int api_route_param(enum api_socket which, const char *method, const char *path, const char *api_version,
                    enum api_op *ret_op, char **ret_param, struct api_error *err);

/* Decode one URL path segment: %XX (either case) is a byte, a '%' not followed
 * by two hex digits stays literal (aziot's percent_decode_str), '+' is '+'.
 * The result must be valid UTF-8 without NUL. Returns 0 and *ret (heap),
 * -EINVAL (not UTF-8, or a NUL) or -ENOMEM. */
int api_path_segment_decode(const char *text, size_t len, char **ret);

/* IoT Hub's module-id rules: 1..API_MODULE_ID_MAX characters of ASCII letters,
 * digits and - . + % _ # * ? ! ( ) , : = @ $ ' (the hub's documented set;
 * "$edgeAgent" is valid). aziot's answer for an empty (or all-blank) id is 400
 * `parameter "module_id" has an invalid value` caused by "module name cannot be
 * empty"; tpmidd refuses the rest the same way instead of letting the hub answer
 * (aziot then says 404 "Hub client error"). Returns 0 or -EINVAL with err. */
int api_check_module_id(const char *module_id, struct api_error *err);

/* The identity type of a module request (aziot's match_id_type!): type is the
 * decoded `type` query parameter (GET/PUT/DELETE and the list) or the body's
 * "type" (POST), NULL when absent. "aziot" is 0. Absent: 400 `parameter "type"
 * has an invalid value` caused by "missing parameter"; any other value 400
 * caused by "invalid type: X", except "local" for get and create, where aziot
 * issues a local (X.509) identity: tpmidd has none, 400 caused by "local
 * identities are not supported by tpmidd". Returns 0 or -EINVAL with err. */
int api_check_module_type(enum api_op op, const char *type, struct api_error *err);

/* ---- Request bodies ----
 * All decoders: an empty body is 400 "missing request body"; text that is not JSON
 * is 422 with jansson's message and position ("... at line L column C"); a JSON
 * value that is not an object, or a field missing or of the wrong type, is 422 naming
 * the field; bad base64 is 422 "field 'X' is not valid base64"; a decoded value over
 * its limit is 422 "field 'X' is too large". Unknown extra fields are ignored (aziot).
 * Returns 0, -EINVAL (err filled; err may be NULL) or -ENOMEM (err 500). Out-params
 * are written only on success. */

/* {"key": b64} -> *key (heap, caller frees; may be non-NULL with *key_len 0 only if
 * the key was "" - refused, so never in practice), at most API_MAX_IMPORT_KEY_BYTES. */
int api_decode_import(const uint8_t *body, size_t len, uint8_t **key, size_t *key_len, struct api_error *err);

/* {"data": b64} -> *data (heap, caller frees), at most API_MAX_SIGN_DATA_BYTES.
 * Empty data ("") is allowed: an HMAC of nothing is defined. */
int api_decode_sign(const uint8_t *body, size_t len, uint8_t **data, size_t *data_len, struct api_error *err);

/* {"lifetime_sec": N} -> *lifetime_sec in [API_TOKEN_LIFETIME_MIN_SEC, _MAX_SEC].
 * An empty body or {} gives API_TOKEN_LIFETIME_DEFAULT_SEC (the extension is ours,
 * so no aziot behaviour to match). */
int api_decode_token(const uint8_t *body, size_t len, uint32_t *lifetime_sec, struct api_error *err);

/* A client's report that the hub refused the device's credentials
 * (POST /identities/device/report). */
struct api_report {
        int hub_status;                          /* HTTP status the hub answered, in
                                                  * [API_HTTP_STATUS_MIN, API_HTTP_STATUS_MAX] */
        char reason[API_REPORT_REASON_MAX + 1];  /* NUL-terminated; "" when absent */
};

/* {"hubStatus": N, "reason": "text"?} -> *out. The body is required (400 when
 * empty). hubStatus must be a JSON integer within [API_HTTP_STATUS_MIN,
 * API_HTTP_STATUS_MAX] (422 otherwise); reason, when present and not null,
 * must be a string of at most API_REPORT_REASON_MAX bytes without control
 * characters (it goes into the journal), else 422. Whether the status is
 * evidence of a credential rejection is the caller's decision
 * (api_report_is_rejection()). */
int api_decode_report(const uint8_t *body, size_t len, struct api_report *out, struct api_error *err);

/* Whether a hub status is a rejection of the device's credentials: 401, 403,
 * or 404 (the hub does not know the device), the same statuses the daemon's
 * own hub check treats as rejection. */
bool api_report_is_rejection(int hub_status);

/* {"type":"aziot"} for POST /identities/device. aziot requires the body and a
 * string "type" (422 otherwise), whose value its get_device_identity() ignores:
 * any string passes, as there. */
int api_decode_device(const uint8_t *body, size_t len, struct api_error *err);

/* POST /identities/modules: {"type":T,"moduleId":M} (aziot's create_module_identity
 * Request; its "localIdOpts" is ignored). content_type: the request's header or
 * NULL; aziot reads a body whose type is not application/json as no body at all:
 * 400 "missing request body". *ret_type and *ret_module_id are heap strings (caller
 * frees), checked later with api_check_module_type()/api_check_module_id(). */
int api_decode_module_create(const char *content_type, const uint8_t *body, size_t len, char **ret_type,
                             char **ret_module_id, struct api_error *err);

/* PUT /identities/modules/{M}: aziot ignores the body (the path names the module)
 * but requires it to be JSON: a Content-Type other than application/json is 415
 * "request body must be application/json"; an empty body is 422 "EOF while
 * parsing a value at line 1 column 0" (serde's text); other text that is not JSON
 * 422. Any JSON value passes, {"moduleId"} naming another module included. */
int api_decode_module_update(const char *content_type, const uint8_t *body, size_t len, struct api_error *err);

/* DELETE /identities/modules/{M}: the body is optional and ignored; when present
 * with no Content-Type or application/json it must be JSON (422 otherwise). */
int api_decode_module_delete(const char *content_type, const uint8_t *body, size_t len, struct api_error *err);

/* ---- Responses ----
 * All encoders: on success *ret is a compact NUL-terminated JSON heap string (caller
 * frees) with keys in the order documented; returns 0, -EINVAL for a NULL required
 * field or a string that is not UTF-8, or -ENOMEM. Binary is standard padded base64. */

/* {"endorsement_key":b64,"storage_root_key":b64} (marshalled TPM2B_PUBLICs). */
int api_encode_keys(const uint8_t *ek, size_t ek_len, const uint8_t *srk, size_t srk_len, char **ret);

/* {} - the import_auth_key answer. */
int api_encode_empty(char **ret);

/* {"digest":b64} */
int api_encode_sign(const uint8_t *digest, size_t len, char **ret);

struct api_device_identity {
        const char *hub_name;     /* required */
        const char *gateway_host; /* required; aziot sets it to hub_name when not nested */
        const char *device_id;    /* required */
};
/* {"type":"aziot","spec":{"hubName","gatewayHost","deviceId","auth":{"type":"tpm"}}} */
int api_encode_identity(const struct api_device_identity *id, char **ret);

/* A module identity (aziot's AzureIoTSpec with moduleId). */
struct api_module_identity {
        const char *hub_name;     /* required */
        const char *gateway_host; /* required; the hub's name when not nested */
        const char *device_id;    /* required */
        const char *module_id;    /* required */
        const char *gen_id;       /* NULL or "" -> "genId" omitted (aziot: the hub gave none) */
        const char *key_handle;   /* NULL -> "auth" omitted (aziot's lists); else {"type":"sas","keyHandle"} */
};
/* {"type":"aziot","spec":{"hubName","gatewayHost","deviceId","moduleId","genId"?,
 *  "auth"?:{"type":"sas","keyHandle"}}} */
int api_encode_module(const struct api_module_identity *m, char **ret);
/* {"identities":[<api_encode_module() of each>]}; n may be 0 ("[]"). */
int api_encode_module_list(const struct api_module_identity *list, size_t n, char **ret);

/* GET /trust-bundle: {"certificate":"<pem>"}. aziot-identityd 1.5 answers an
 * empty PEM ("TODO: invoke get trust bundle" in its source); tpmidd passes "" too. */
int api_encode_trust_bundle(const char *pem, char **ret);

struct api_provisioning {
        const char *endpoint;        /* DPS global endpoint, required */
        const char *scope_id;        /* required */
        const char *registration_id; /* required */
        const char *payload_json;    /* JSON text of the configured payload, or NULL: null */
};
/* {"source":"dps","auth":"tpm","endpoint","scope_id","registration_id","payload"}
 * (aziot's Option<Value> serialises as null when there is no payload).
 * A payload_json that does not parse is -EINVAL. */
int api_encode_provisioning(const struct api_provisioning *p, char **ret);

/* {"sasToken","expiresOn","hubName","deviceId"}; expiresOn in Unix seconds. */
int api_encode_token(const char *sas_token, int64_t expires_on, const char *hub_name,
                     const char *device_id, char **ret);

struct api_status {
        /* provisioning */
        const char *provisioning_state; /* required, e.g. provision.h's state name */
        const char *hub_name;           /* NULL -> JSON null */
        const char *device_id;          /* NULL -> JSON null */
        const char *registration_id;    /* NULL -> JSON null */
        bool has_last_result;           /* false -> "lastResult": null */
        const char *last_status;        /* DPS status ("assigned", "failed", ...) or our own
                                         * ("error" for transport failures); required if has_last_result */
        int64_t last_error_code;        /* DPS errorCode (e.g. 401002); 0 -> null */
        const char *last_message;       /* NULL -> null */
        int64_t last_at;                /* Unix seconds */
        int64_t next_retry_at;          /* Unix seconds; 0 -> null (no retry scheduled) */
        const char *id_scope;           /* the running value; NULL -> null */
        const char *global_endpoint;    /* the running value; NULL -> null */
        bool not_persisted;             /* the served identity's last save failed ("persisted": false) */
        bool has_clock_skew;            /* a DPS refusal came with a clock this far off: */
        int64_t clock_skew_sec;         /* local minus DPS's Date, s ("clockSkewSec"; null unless has_clock_skew) */
        /* tpm */
        const char *tpm_state;          /* required, e.g. "ready", "unavailable" */
        const char *tpm_last_error;     /* NULL -> null */
        const char *tcti;               /* the running TCTI; NULL -> null */
        /* daemon */
        const char *version;            /* required */
        uint64_t uptime_sec;
        const char *mode;               /* required: the running auto_reprovisioning_mode, or "none" */
        const char *const *restart_needed; /* n_restart_needed config keys whose file value differs from */
        size_t n_restart_needed;           /* the running one (a restart applies them); [] when 0 */
};
/* {"provisioning":{"state","hubName","deviceId","registrationId",
 *                  "lastResult":{"status","errorCode","message","at"}|null,"nextRetryAt",
 *                  "idScope","globalEndpoint","persisted","clockSkewSec"},
 *  "tpm":{"state","lastError","tcti"},
 *  "daemon":{"version","uptimeSec","mode","restartNeeded":[key,...]}}
 * -EINVAL when a required string or a restart_needed entry is NULL. */
int api_encode_status(const struct api_status *s, char **ret);

/* What the daemon does about a report (the "action" of the 202 answer). */
enum api_report_action {
        API_REPORT_CHECKING_HUB,          /* "checking-hub": the daemon asks the hub itself */
        API_REPORT_IGNORED,               /* "ignored": mode OnErrorOnly, a status that is not a
                                           * rejection, or DPS already refused the device */
        API_REPORT_ALREADY_PROVISIONING,  /* "already-provisioning": a DPS run is in progress or scheduled */
        API_REPORT_RATE_LIMITED,          /* "rate-limited": a report checked the hub too recently */
        _API_REPORT_ACTION_MAX,
};
/* Static string for an action, or NULL when out of range. */
const char *api_report_action_to_string(enum api_report_action a);

/* {"action":"<action>"}; -EINVAL for an out-of-range action. */
int api_encode_report(enum api_report_action a, char **ret);

/* {"message":"<message>"} */
int api_encode_error(const char *message, char **ret);

/* Fill err (NULL-safe) with a status and a printf-formatted message (truncated to fit). */
void api_error_set(struct api_error *err, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
