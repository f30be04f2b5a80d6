/* Shared access signature (SAS) tokens for DPS and IoT Hub (protocol
 * reference §5).
 *
 * Pure: no I/O, no logging. Signing is deliberately NOT done here: the HMAC
 * key lives in the TPM, so the daemon does
 *
 *     sr  = sas_dps_resource(scope, regid)      (or sas_hub_resource)
 *     sts = sas_string_to_sign(sr, expiry)
 *     sig = tpm_sign(sts)                       (TPM worker thread)
 *     tok = sas_token_format(sr, sig, expiry, "registration" or NULL)
 *
 * Encoding rule (one rule for DPS and the hub, matching the DPS docs' "lower
 * case URL-encoding" and the Azure C SDK): the resource is lowercased, then
 * every byte outside the RFC 3986 unreserved set [A-Za-z0-9-._~] is written
 * as %xx with lowercase hex, so "/" becomes "%2f". The token signs exactly
 * the sr it carries. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SAS_SIG_LEN 32                  /* bytes of an HMAC-SHA256 signature */
#define SAS_RESOURCE_MAX 1024           /* bytes of an unencoded resource (audience) */
#define SAS_TOKEN_MAX 4096              /* bytes of a token string we format or parse */
#define SAS_DPS_KEY_NAME "registration" /* skn DPS expects for the device API */
#define SAS_DPS_LIFETIME_S 3600         /* seconds a DPS registration token is valid */
#define SAS_HUB_LIFETIME_S 3600         /* seconds a hub device token is valid */

/* Percent-encode len bytes of s: RFC 3986 unreserved characters pass, every
 * other byte becomes %xx (lowercase hex). No case folding. Used for URL path
 * components too. Returns 0 and *ret (NUL-terminated heap string, caller
 * frees), -EINVAL if len > SAS_RESOURCE_MAX, -ENOMEM. */
int sas_percent_encode(const char *s, size_t len, char **ret);

/* Lowercase resource, then percent-encode it as above. Returns 0 and *ret
 * (caller frees), -EINVAL for NULL, an empty string, an embedded control or
 * a resource longer than SAS_RESOURCE_MAX bytes, -ENOMEM. */
int sas_resource_encode(const char *resource, char **ret);

/* Encoded DPS audience "{idScope}/registrations/{registrationId}" and hub
 * audience "{hub}/devices/{deviceId}". Same returns as sas_resource_encode(),
 * plus -EINVAL for an empty component. *ret is a heap string, caller frees. */
int sas_dps_resource(const char *id_scope, const char *registration_id, char **ret);
int sas_hub_resource(const char *hub, const char *device_id, char **ret);

/* The bytes to HMAC: sr_encoded + "\n" + decimal expiry (Unix seconds).
 * Returns 0, *ret (heap, NUL-terminated, caller frees) and *ret_len (without
 * the NUL); -EINVAL for an empty sr or one over SAS_TOKEN_MAX; -ENOMEM. */
int sas_string_to_sign(const char *sr_encoded, uint64_t expiry, char **ret, size_t *ret_len);

/* "SharedAccessSignature sr=<sr>&sig=<urlencoded base64 sig>&se=<expiry>"
 * plus "&skn=<skn>" when skn is not NULL (DPS: SAS_DPS_KEY_NAME; hub: NULL).
 * sr_encoded must be the same string that was signed. skn is percent-encoded.
 * Returns 0 and *ret (heap, caller frees), -EINVAL, -ENOMEM. */
int sas_token_format(const char *sr_encoded, const uint8_t sig[SAS_SIG_LEN], uint64_t expiry,
                     const char *skn, char **ret);

/* A parsed token. sr is kept raw (as sent, still encoded: that is what was
 * signed); skn is percent-decoded; NULL when absent. */
struct sas_token {
        char *sr;
        uint8_t sig[SAS_SIG_LEN];
        uint64_t expiry;
        char *skn;
};

/* Parse a token (with the "SharedAccessSignature " prefix) of len bytes.
 * Fields may come in any order; sr, sig and se are required, each field at
 * most once; unknown fields are rejected. Returns 0 and fills *out (release
 * with sas_token_clear()), -EBADMSG for anything malformed, -E2BIG when len >
 * SAS_TOKEN_MAX, -ENOMEM. */
int sas_token_parse(const char *token, size_t len, struct sas_token *out);

/* Free the strings in t and zero it. NULL-safe. */
void sas_token_clear(struct sas_token *t);
