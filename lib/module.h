/* Module identities, the pure part (issue 12): the wire formats of the IoT
 * hub's module registry and of aziot-keyd, a strict HTTP/1.1 response
 * reader for keyd's Unix socket, and the on-disk module cache. No I/O except
 * module_cache_save()/module_cache_load() (one file, written atomically).
 *
 * Hub (aziot-cloud-client-async hub/mod.rs, api-version 2017-11-08-preview):
 *   PUT    /devices/{d}/modules/{m}  {"moduleId","deviceId"}            create
 *   PUT    /devices/{d}/modules/{m}  {... ,"authentication":{"symmetricKey":
 *          {"primaryKey","secondaryKey"},"type":"sas"}} + If-Match: *   update
 *   GET    /devices/{d}/modules[/{m}]                                   get/list
 *   DELETE /devices/{d}/modules/{m}  + If-Match: *  → 204               delete
 * Replies are Module objects {"moduleId","deviceId","generationId"?,"etag"?,
 * "managedBy"?,...}; errors {"Message"|"errorMessage", "networkError"?}.
 *
 * keyd (aziot-key-common-http, api-version 2020-09-01):
 *   POST /key               {"keyId","keyBytes":null,"usage":"derive,sign"} → {"keyHandle"}
 *   POST /derivedkey        {"baseKeyHandle","derivationData":b64}          → {"keyHandle"}
 *   POST /derivedkey/export {"keyHandle"}                                   → {"key":b64}
 *   errors                  {"message"}
 *
 * Module cache (version 1), two lines, like the state file (lib/state.h):
 *     {"version":1,"hub":"...","deviceId":"...","modules":[{"moduleId":"...","generationId":"...",
 *      "principal":true},...]}\n   (one line)
 *     sha256:<64 lowercase hex digits of SHA-256 over the first line incl. its \n>\n
 * A truncated, torn or altered file fails the digest and is rejected whole
 * (-EBADMSG), never half loaded. No key material is stored: keyd derives the
 * keys again from the module id and generationId. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MODULE_HUB_API_VERSION "2017-11-08-preview" /* aziot's module registry api-version */
#define MODULE_KEYD_API_VERSION "2020-09-01"        /* keyd api-version aziot-identityd uses */
#define MODULE_MASTER_KEY_ID "aziot_identityd_master_id" /* keyd key the module keys derive from */
#define MODULE_MASTER_KEY_USAGE "derive,sign"       /* aziot's usage for the master key */

#define MODULE_ID_MAX 128          /* chars of an IoT Hub module id (hub limit) */
#define MODULE_DEVICE_ID_MAX 128   /* chars of an IoT Hub device id (hub limit) */
#define MODULE_HUB_MAX 255         /* bytes of a hub host name (DNS limit) */
#define MODULE_GEN_ID_MAX 128      /* chars of a generationId we keep (the hub's are 18 digits) */
#define MODULE_ETAG_MAX 128        /* chars of an etag we keep (the hub's are ~12) */
#define MODULE_MANAGED_BY_MAX 128  /* chars of managedBy we keep */
#define MODULE_MAX_MODULES 1000    /* modules in one hub list or cache (hub: 1000 per Edge device is far above use) */
#define MODULE_HUB_REPLY_MAX (512u * 1024u) /* bytes of a hub module reply we parse */
#define MODULE_ERROR_MAX 256       /* bytes, NUL included, of an error message taken from a reply */
#define MODULE_KEY_HANDLE_MAX 4096 /* bytes of a keyd keyHandle (keyd's are ~300 for a derived key) */
#define MODULE_KEY_MAX_BYTES 64    /* bytes of an exported derived key (keyd's are 32: HMAC-SHA256) */
#define MODULE_KEYD_RESPONSE_MAX (64u * 1024u) /* bytes of a whole keyd HTTP response, head included */
#define MODULE_KEYD_HEAD_MAX 8192  /* bytes of a keyd response head */
#define MODULE_CACHE_VERSION 1
#define MODULE_CACHE_MAX_BYTES (512u * 1024u) /* bytes of a cache file we read (1000 modules fit) */
#define MODULE_CACHE_FILE_MODE 0600
#define MODULE_CACHE_FILE_NAME "module-cache" /* under state_dir */

/* One module as the hub describes it. Strings are "" when absent. */
struct module_hub_entry {
        char module_id[MODULE_ID_MAX + 1];
        char device_id[MODULE_DEVICE_ID_MAX + 1];
        char gen_id[MODULE_GEN_ID_MAX + 1];
        char etag[MODULE_ETAG_MAX + 1];
        char managed_by[MODULE_MANAGED_BY_MAX + 1];
};

/* A module id the hub accepts: 1..MODULE_ID_MAX of ASCII letters, digits and
 * -:.+%_#*?!(),=@$' (IoT Hub's set; edged's system modules start with '$'). */
bool module_id_is_valid(const char *id);

/* The hub's create body (primary == NULL) or update body (both keys given,
 * set as the module's SAS keys). Returns 0 and *ret (heap, NUL-terminated,
 * caller frees; it holds the keys when given: wipe it), -EINVAL for an
 * invalid id or a key length of 0 or > MODULE_KEY_MAX_BYTES, -ENOMEM. */
int module_hub_body(const char *module_id, const char *device_id, const uint8_t *primary, size_t primary_len,
                    const uint8_t *secondary, size_t secondary_len, char **ret);

/* Parse one Module object (get/create/update replies). Returns 0 and *out;
 * -EBADMSG for malformed JSON, a missing or invalid moduleId/deviceId or an
 * over-limit field; -E2BIG for len > MODULE_HUB_REPLY_MAX. */
int module_hub_parse_one(const char *buf, size_t len, struct module_hub_entry *out);

/* Parse a list reply (a JSON array of Module objects). Returns 0, *ret (heap
 * array, caller frees) and *ret_n; an empty array gives *ret = NULL, n = 0.
 * -EBADMSG as above or for more than MODULE_MAX_MODULES entries; -E2BIG. */
int module_hub_parse_list(const char *buf, size_t len, struct module_hub_entry **ret, size_t *ret_n);

/* The message of a hub error body into msg (msgsz bytes, NUL-terminated,
 * printable ASCII only; "" when the body has none) and whether it carries
 * "networkError": true (a nested Edge parent's way to say "no network").
 * Never fails. */
void module_hub_parse_error(const char *buf, size_t len, char *msg, size_t msgsz, bool *network_error);

/* keyd request bodies. Return 0 and *ret (heap, caller frees), -EINVAL, -ENOMEM. */
int module_keyd_create_key_body(const char *key_id, char **ret);
int module_keyd_derive_body(const char *base_handle, const uint8_t *data, size_t len, char **ret);
int module_keyd_export_body(const char *handle, char **ret);
/* "{moduleId}:{genId}:primary" or ":secondary" (aziot's derivation data).
 * Returns 0 and *ret (heap), -EINVAL, -ENOMEM. */
int module_keyd_derivation_data(const char *module_id, const char *gen_id, bool primary, char **ret);

/* keyd replies. {"keyHandle":...} → *ret (heap string of 1..MODULE_KEY_HANDLE_MAX
 * printable ASCII bytes); {"key":b64} → *ret (heap, 1..MODULE_KEY_MAX_BYTES
 * bytes, caller wipes and frees). -EBADMSG, -ENOMEM. */
int module_keyd_parse_handle(const char *buf, size_t len, char **ret);
int module_keyd_parse_key(const char *buf, size_t len, uint8_t **ret, size_t *ret_len);
/* {"message":...} into msg (printable ASCII, "" when none). Never fails. */
void module_keyd_parse_error(const char *buf, size_t len, char *msg, size_t msgsz);

/* A keyd HTTP request: "POST {path}?api-version=... HTTP/1.1" with Host,
 * Content-Type, Content-Length and Connection: close. Returns 0, *ret (heap)
 * and *ret_len; -EINVAL for a path with bytes outside '/'..'z' or a body
 * over MODULE_KEYD_RESPONSE_MAX; -ENOMEM. */
int module_keyd_request(const char *method, const char *path, const char *body, char **ret, size_t *ret_len);

/* Read a whole HTTP/1.1 response from buf (the bytes received so far; eof:
 * the peer closed). Returns 1 and *status, *body (points into buf), *body_len
 * when complete; 0 when more bytes are needed; -EBADMSG for a malformed or
 * unsupported response (HTTP/1.x only; Content-Length or chunked; a 1xx is
 * refused), -E2BIG past MODULE_KEYD_RESPONSE_MAX or MODULE_KEYD_HEAD_MAX,
 * -EPIPE for eof before the response is complete. A body is de-chunked in
 * place (buf is modified). */
int module_http_response_parse(char *buf, size_t len, bool eof, int *status, const char **body, size_t *body_len);

/* The module cache. */
struct module_cache_entry {
        char module_id[MODULE_ID_MAX + 1];
        char gen_id[MODULE_GEN_ID_MAX + 1];
        bool principal; /* a [[principal]] declared it at the last reconciliation (aziot's prev_state) */
};

struct module_cache {
        char hub[MODULE_HUB_MAX + 1];
        char device_id[MODULE_DEVICE_ID_MAX + 1];
        struct module_cache_entry *modules; /* heap; module_cache_clear() frees */
        size_t n_modules;
};

void module_cache_clear(struct module_cache *c);
/* The entry for id, or NULL. */
const struct module_cache_entry *module_cache_find(const struct module_cache *c, const char *id);
/* Add id's entry (principal false) or replace its gen id. Returns 0, -EINVAL (invalid id or gen id over
 * the limit), -E2BIG past MODULE_MAX_MODULES, -ENOMEM. */
int module_cache_set(struct module_cache *c, const char *id, const char *gen_id);
/* Mark id's entry; -ENOENT when there is none. */
int module_cache_set_principal(struct module_cache *c, const char *id, bool principal);
/* Remove id's entry; returns whether there was one. */
bool module_cache_remove(struct module_cache *c, const char *id);

/* Serialise (hub and device id must be non-empty). Returns 0, *ret (heap) and
 * *ret_len; -EINVAL; -ENOMEM. */
int module_cache_format(const struct module_cache *c, char **ret, size_t *ret_len);
/* Parse and verify. Returns 0 and *out (clear it); -EBADMSG for anything that
 * is not a complete, intact version-1 file with valid fields (torn,
 * truncated, digest mismatch, other version, duplicate or invalid module id,
 * over a limit); -E2BIG for len > MODULE_CACHE_MAX_BYTES; -ENOMEM. */
int module_cache_parse(const char *buf, size_t len, struct module_cache *out);
/* format + write_file_atomic(path, MODULE_CACHE_FILE_MODE). 0 or -errno; on
 * failure the old file is untouched. */
int module_cache_save(const char *path, const struct module_cache *c);
/* Read + parse. 0, -ENOENT (no file), -EBADMSG (corrupt or too large), -errno. */
int module_cache_load(const char *path, struct module_cache *out);

/* ---- policy ---- */

/* What a hub answer means (aziot-cloud-client-async: a 500, or
 * "networkError": true, is a network error, as a nested Edge parent says). */
enum module_hub_outcome {
        MODULE_HUB_OK,            /* 200 (204 for delete) */
        MODULE_HUB_NOT_FOUND,     /* 404: no such module (or device) */
        MODULE_HUB_CONFLICT,      /* 409: the module exists already */
        MODULE_HUB_PRECONDITION,  /* 412: etag mismatch */
        MODULE_HUB_UNAUTHORIZED,  /* 401: the device's SAS is refused (moved, deleted, clock) */
        MODULE_HUB_FORBIDDEN,     /* 403: e.g. a plain (not IoT Edge) device asking for modules */
        MODULE_HUB_THROTTLED,     /* 429: honour Retry-After */
        MODULE_HUB_UNAVAILABLE,   /* 500, 502, 503, 504, networkError, a transport error: offline */
        MODULE_HUB_FAILED,        /* anything else */
        _MODULE_HUB_OUTCOME_MAX,
};
enum module_hub_outcome module_hub_classify(int transport_error, long status, bool network_error, bool is_delete);
const char *module_hub_outcome_to_string(enum module_hub_outcome o);

/* Reconciliation (aziot's reconcile_hub_identities): for each module id,
 * what to do given the hub's list, the module ids the [[principal]] entries
 * declare now, and the cache's principal marks from the last run (prev:
 * pass NULL when the cache belongs to another hub or device). A hub module
 * that a principal declared last time and no longer does is deleted; a
 * declared module that exists on the hub but was not declared last time is
 * deleted and created again (aziot: it takes the module over); a declared
 * module missing on the hub is created; other hub modules (edgeAgent's) are
 * left alone. */
enum module_plan_action {
        MODULE_PLAN_KEEP,
        MODULE_PLAN_CREATE,
        MODULE_PLAN_DELETE,
        MODULE_PLAN_RECREATE, /* delete, then create */
        _MODULE_PLAN_ACTION_MAX,
};
struct module_plan_step {
        char module_id[MODULE_ID_MAX + 1];
        enum module_plan_action action;
};
/* Returns 0, *ret (heap, caller frees; NULL when n is 0) and *ret_n, steps
 * in a stable order (hub list order, then the declared ones missing on the
 * hub, in declaration order); -EINVAL for an invalid declared id; -ENOMEM. */
int module_reconcile_plan(const struct module_hub_entry *hub, size_t n_hub, const char *const *declared,
                          size_t n_declared, const struct module_cache *prev, struct module_plan_step **ret,
                          size_t *ret_n);
const char *module_plan_action_to_string(enum module_plan_action a);
