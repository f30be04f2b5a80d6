/* DPS (Azure IoT Hub Device Provisioning Service) client codec for TPM
 * attestation over HTTPS, api-version 2021-06-01 (protocol reference §1).
 *
 * Pure: URL builders, request body builders and response parsers. No I/O, no
 * logging. Every parser takes untrusted bytes (buf, len), enforces the named
 * limits below, rejects wrong JSON types, and writes *out only on success.
 *
 * Ownership: builders return heap strings the caller frees. Parsed structs
 * with heap members are released with their *_clear() function, which is
 * NULL-safe and leaves the struct zeroed. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define DPS_API_VERSION "2021-06-01"
#define DPS_GLOBAL_ENDPOINT "https://global.azure-devices-provisioning.net"

/* Limits on what we accept from the server (or config); exceeding one is -EBADMSG
 * (server data) or -EINVAL (our inputs). */
#define DPS_MAX_BODY_BYTES (64u * 1024)    /* bytes of a DPS response body we parse */
#define DPS_PAYLOAD_MAX_BYTES (32u * 1024) /* bytes of the custom-allocation payload file */
#define DPS_ENDPOINT_MAX 512               /* bytes of the configured global endpoint URL */
#define DPS_ID_SCOPE_MAX 64                /* bytes of an ID scope (real ones are 11: 0ne00000000) */
#define DPS_REGISTRATION_ID_MAX 128        /* bytes of a registration id (DPS limit) */
#define DPS_OPERATION_ID_MAX 256           /* bytes of an operationId */
#define DPS_HUB_NAME_MAX 255               /* bytes of an assigned hub host name */
#define DPS_HUB_LABEL_MAX 63               /* bytes of one DNS label of the hub name */
#define DPS_DEVICE_ID_MAX 128              /* bytes of an IoT Hub device id (hub limit) */
#define DPS_KEY_NAME_MAX 64                /* bytes of the 401 keyName */
#define DPS_SUBSTATUS_MAX 64               /* bytes of registrationState.substatus */
#define DPS_TIMESTAMP_MAX 64               /* bytes of a *DateTimeUtc string */
#define DPS_TRACKING_ID_MAX 128            /* bytes of an error trackingId */
#define DPS_ERROR_MESSAGE_MAX 512          /* bytes of an error message we keep; longer ones are truncated */
#define DPS_AUTH_BLOB_MAX 4096             /* bytes of a decoded authenticationKey blob */
#define DPS_PAYLOAD_MAX_DEPTH 32           /* nesting of the payload JSON (jansson's own limit is 2048) */

/* Retry-After handling (seconds). Absent or unparseable → the caller uses
 * DPS_RETRY_AFTER_DEFAULT_S. Values are clamped to [MIN, MAX] like the C SDK. */
#define DPS_RETRY_AFTER_MIN_S 1
#define DPS_RETRY_AFTER_MAX_S 300
#define DPS_RETRY_AFTER_DEFAULT_S 3 /* poll interval when DPS sends no retry-after */

/* ---- inputs validation (also used on server-provided values) ---- */

/* A DNS host name: dot-separated labels of [A-Za-z0-9-], 1..DPS_HUB_LABEL_MAX
 * bytes each, no leading/trailing '-', total <= DPS_HUB_NAME_MAX, no port, no
 * trailing dot. So "../x", "a/b", "" and "a..b" are refused. */
bool dps_hub_name_is_valid(const char *s);
/* IoT Hub device id: 1..DPS_DEVICE_ID_MAX bytes of ASCII alphanumerics and
 * "-.%_*?!(),:=@$'+#" (the hub's set), not "." or "..". */
bool dps_device_id_is_valid(const char *s);
/* Registration id: 1..DPS_REGISTRATION_ID_MAX bytes of [A-Za-z0-9._:-], not
 * starting or ending with a non-alphanumeric (the DPS body rule). */
bool dps_registration_id_is_valid(const char *s);
/* ID scope: 1..DPS_ID_SCOPE_MAX bytes of [A-Za-z0-9]. */
bool dps_id_scope_is_valid(const char *s);

/* ---- URLs ---- */

/* "{scheme}://{authority}/{idScope}/registrations/{regid}/register?api-version=2021-06-01".
 * endpoint must be http:// or https:// with a non-empty authority; any path,
 * query or fragment in it is discarded (as aziot does). Each path component
 * is percent-encoded. Returns 0 and *ret (heap, caller frees), -EINVAL for a
 * bad endpoint or invalid scope/regid, -ENOMEM. */
int dps_register_url(const char *endpoint, const char *id_scope, const char *registration_id, char **ret);

/* ".../{idScope}/registrations/{regid}/operations/{operationId}?api-version=2021-06-01".
 * Same returns; operation_id must be 1..DPS_OPERATION_ID_MAX bytes (any bytes
 * but NUL, percent-encoded). */
int dps_operation_url(const char *endpoint, const char *id_scope, const char *registration_id,
                      const char *operation_id, char **ret);

/* ---- request bodies ---- */

/* Parse the custom-allocation payload file contents: any JSON value, at most
 * DPS_PAYLOAD_MAX_BYTES and DPS_PAYLOAD_MAX_DEPTH. Returns 0 and *ret (a new
 * reference, json_decref() it), -E2BIG when too large or too deep, -EBADMSG
 * when not JSON (err, if not NULL, gets jansson's message with line:column). */
int dps_payload_parse(const uint8_t *buf, size_t len, json_t **ret, char err[160]);

/* First PUT: {"registrationId","tpm":{"endorsementKey","storageRootKey"},"payload"?}
 * ek/srk are marshalled TPM2B_PUBLIC bytes (base64-encoded here). payload may
 * be NULL (omitted). Returns 0 and *ret (compact JSON, heap, caller frees),
 * -EINVAL, -ENOMEM. */
int dps_register_body(const char *registration_id, const uint8_t *ek, size_t ek_len, const uint8_t *srk,
                      size_t srk_len, const json_t *payload, char **ret);

/* Second PUT (after the challenge): {"registrationId","payload"?}, no tpm
 * object (aziot's form; DPS accepts it). Same returns. */
int dps_auth_register_body(const char *registration_id, const json_t *payload, char **ret);

/* ---- responses ---- */

/* The 401 challenge {"authenticationKey":"<b64>","keyName"?}. */
struct dps_challenge {
        uint8_t *blob; /* decoded activation blob (heap), 1..DPS_AUTH_BLOB_MAX bytes */
        size_t blob_len;
        char key_name[DPS_KEY_NAME_MAX + 1]; /* "registration" if absent or null */
};
/* Returns 0 and *out, -EBADMSG for malformed JSON, a missing/invalid field or
 * an over-limit value, -E2BIG for len > DPS_MAX_BODY_BYTES, -ENOMEM. */
int dps_parse_challenge(const uint8_t *buf, size_t len, struct dps_challenge *out);
/* For an answer dps_parse_challenge() refused: NULL when it is not
 * challenge-shaped (not a JSON object, or none of authenticationKey,
 * keyName, unencryptedAuthenticationKey: an error answer), else a static
 * phrase naming the defect ("no authenticationKey", ...). */
const char *dps_challenge_defect(const uint8_t *buf, size_t len);
void dps_challenge_clear(struct dps_challenge *c); /* zeroes the blob too */

enum dps_status {
        DPS_STATUS_UNASSIGNED,
        DPS_STATUS_ASSIGNING,
        DPS_STATUS_ASSIGNED,
        DPS_STATUS_FAILED,
        DPS_STATUS_DISABLED,
        _DPS_STATUS_MAX,
};
/* "unassigned", "assigning", ...; NULL for an out-of-range value. */
const char *dps_status_to_string(enum dps_status s);
/* -EBADMSG for an unknown string (the legacy "blacklisted" maps to DISABLED). */
int dps_status_from_string(const char *s, enum dps_status *ret);

/* The 202 (or 200) answer to the second PUT: {"operationId","status"?}.
 * status defaults to ASSIGNING when absent. Same returns as dps_parse_challenge(). */
struct dps_operation {
        char operation_id[DPS_OPERATION_ID_MAX + 1];
        enum dps_status status;
};
int dps_parse_operation(const uint8_t *buf, size_t len, struct dps_operation *out);

/* The operation status (GET poll, 200/202), also accepted for a 200 answer to
 * the second PUT. Fields by status:
 *  - ASSIGNING: operation_id; nothing else required.
 *  - ASSIGNED: assigned_hub (a valid host name), device_id (valid), optional
 *    auth_blob (registrationState.tpm.authenticationKey, decoded), substatus,
 *    created/updated timestamps, payload.
 *  - FAILED / DISABLED / UNASSIGNED: error_code (0 if absent) and error_message
 *    from registrationState, truncated to DPS_ERROR_MESSAGE_MAX.
 * Returns 0 and *out (release with dps_registration_clear()), -EBADMSG for
 * malformed JSON, a wrong type, a missing required field, an invalid hub or
 * device id or an over-limit field, -E2BIG for len > DPS_MAX_BODY_BYTES, -ENOMEM. */
struct dps_registration {
        enum dps_status status;
        char operation_id[DPS_OPERATION_ID_MAX + 1]; /* "" if absent */
        char registration_id[DPS_REGISTRATION_ID_MAX + 1];
        char assigned_hub[DPS_HUB_NAME_MAX + 1];
        char device_id[DPS_DEVICE_ID_MAX + 1];
        char substatus[DPS_SUBSTATUS_MAX + 1];
        char created_at[DPS_TIMESTAMP_MAX + 1];
        char updated_at[DPS_TIMESTAMP_MAX + 1];
        uint8_t *auth_blob; /* heap or NULL when DPS sent no tpm.authenticationKey */
        size_t auth_blob_len;
        json_t *payload;    /* own reference or NULL */
        int64_t error_code;
        char error_message[DPS_ERROR_MESSAGE_MAX + 1];
};
int dps_parse_registration(const uint8_t *buf, size_t len, struct dps_registration *out);
void dps_registration_clear(struct dps_registration *r);

/* Error bodies of 4xx/5xx answers: {"errorCode"|"code": int or numeric
 * string, "errorMessage"|"message": str, "trackingId"?}. Every field is
 * optional (an empty or non-JSON body is -EBADMSG; the caller then uses the
 * HTTP status alone). Same returns as dps_parse_challenge(). */
struct dps_error {
        int64_t code; /* 0 if absent; DPS codes are HTTP status * 1000 + n, e.g. 404201 */
        char message[DPS_ERROR_MESSAGE_MAX + 1];
        char tracking_id[DPS_TRACKING_ID_MAX + 1];
};
int dps_parse_error(const uint8_t *buf, size_t len, struct dps_error *out);

/* retry-after header value (without the name): delta seconds, or an
 * IMF-fixdate HTTP-date ("Sun, 06 Nov 1994 08:49:37 GMT") measured against
 * now_unix. Returns 0 and *ret_seconds clamped to [DPS_RETRY_AFTER_MIN_S,
 * DPS_RETRY_AFTER_MAX_S]; -ENODATA for NULL/empty; -EINVAL if unparseable
 * (the caller then uses DPS_RETRY_AFTER_DEFAULT_S). */
int dps_parse_retry_after(const char *value, int64_t now_unix, uint32_t *ret_seconds);

/* ---- classification ---- */

/* Which request a status belongs to: the meaning of 401 differs. */
enum dps_request {
        DPS_REQUEST_REGISTER,      /* first PUT, no Authorization: 401 is the expected challenge */
        DPS_REQUEST_AUTH_REGISTER, /* second PUT with SAS */
        DPS_REQUEST_POLL,          /* GET operation status with SAS */
};

enum dps_class {
        DPS_CLASS_OK,        /* expected answer: go on (401 on REGISTER, 200/202 otherwise) */
        DPS_CLASS_TRANSIENT, /* back off and retry: network, timeout, 408, 429, 5xx */
        DPS_CLASS_PERMANENT, /* stop: 400/403 (EK mismatch, disabled), 404 (no enrollment), 401 after auth, 412, ... */
};

/* Classify an HTTP answer. http_status 0 means no answer (connect failure,
 * TLS failure, timeout): transient. err (may be NULL) is the parsed error
 * body: a DPS errorCode overrides the HTTP status when its HTTP part (code /
 * 1000) is 429 or 5xx. *reason (may be NULL) gets a static one-line
 * explanation for status and logs, e.g. "no enrollment for this registration id". */
enum dps_class dps_classify(enum dps_request req, int http_status, const struct dps_error *err, const char **reason);

/* Classify a failed/disabled registration status (from a 200 poll): its
 * errorCode's HTTP part decides as above; no code → PERMANENT. */
enum dps_class dps_classify_registration(const struct dps_registration *r, const char **reason);
