/* Persistent provisioning state: which hub and device id DPS assigned, and
 * enough context to know whether that assignment still applies (the TPM's EK
 * and the provisioning config that produced it).
 *
 * File format (version 2), two lines:
 *
 *     {"version":2,"hub":"...","deviceId":"...",...,"keySlot":"a"}\n
 *     sha256:<64 lowercase hex digits of SHA-256 over the first line incl. its \n>\n
 *
 * The digest covers the exact bytes, so no JSON canonicalisation is needed, and
 * any truncation, torn write or bit flip is detected; such a file is never
 * trusted (-EBADMSG) and the daemon provisions again. The file is written
 * atomically (temp + fsync + rename + directory fsync), mode 0600.
 *
 * No key material is stored: the hub key lives only at its TPM handle. keySlot
 * names that handle: "a" = TPM_AUTH_KEY_BASE + auth_key_index, "b" = the
 * next one (see provision.h, "A/B slots"). Version 1 files (no keySlot) are
 * still read, as slot "a": the only slot version 1 daemons served from.
 *
 * state_format()/state_parse()/state_*_digest() are pure; state_save() and
 * state_load() are the only functions in lib/ here that do file I/O. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dps.h"

#define STATE_FORMAT_VERSION 2
#define STATE_FORMAT_VERSION_V1 1    /* still read: no keySlot, the key is in slot a */
#define STATE_MAX_BYTES 8192          /* bytes of a state file we read */
#define STATE_FILE_MODE 0600          /* the state names the device; keep it private */
#define STATE_DIGEST_LEN 32           /* bytes of a SHA-256 */
#define STATE_FILE_NAME "device-state" /* under the daemon's StateDirectory */

/* Which of the two hub key slots holds the key the state names. */
enum state_key_slot {
        STATE_KEY_SLOT_A, /* TPM_AUTH_KEY_BASE + auth_key_index */
        STATE_KEY_SLOT_B, /* TPM_AUTH_KEY_BASE + auth_key_index + 1 */
        _STATE_KEY_SLOT_MAX,
};

struct tpmid_state {
        char hub[DPS_HUB_NAME_MAX + 1];
        char device_id[DPS_DEVICE_ID_MAX + 1];
        char registration_id[DPS_REGISTRATION_ID_MAX + 1];
        char id_scope[DPS_ID_SCOPE_MAX + 1];
        uint8_t ek_digest[STATE_DIGEST_LEN];     /* SHA-256 of the marshalled EK TPM2B_PUBLIC: detects a swapped TPM */
        int64_t assigned_at;                     /* Unix seconds when the identity was saved */
        char substatus[DPS_SUBSTATUS_MAX + 1];   /* DPS substatus, e.g. "initialAssignment"; may be "" */
        uint8_t config_digest[STATE_DIGEST_LEN]; /* state_config_digest() of the config that produced it */
        enum state_key_slot key_slot;            /* where the hub key is (version 1 files: A) */
};

/* Serialise st (all strings must be valid per dps_*_is_valid; substatus may
 * be empty). Returns 0, *ret (heap, caller frees) and *ret_len; -EINVAL for
 * an invalid field; -ENOMEM. */
int state_format(const struct tpmid_state *st, char **ret, size_t *ret_len);

/* Parse and verify a state file's bytes. Returns 0 and *out; -EBADMSG for
 * anything that is not a complete, intact version-2 file (or version-1 file,
 * read as key_slot A) with valid fields
 * (truncated, torn, digest mismatch, wrong version, unknown or missing field,
 * invalid hub/device id, over-limit); -E2BIG for len > STATE_MAX_BYTES. */
int state_parse(const uint8_t *buf, size_t len, struct tpmid_state *out);

/* state_format() + write_file_atomic(path, ..., STATE_FILE_MODE). Returns 0 or
 * -errno; on failure the previous file at path is untouched. */
int state_save(const char *path, const struct tpmid_state *st);

/* Read and state_parse() path. Returns 0 and *out; -ENOENT if there is no
 * file; -EBADMSG if it is corrupt (also when larger than STATE_MAX_BYTES);
 * other -errno from reading. */
int state_load(const char *path, struct tpmid_state *out);

/* SHA-256 of the marshalled EK public area (what ek_digest holds). Returns 0
 * or -EINVAL for NULL/empty input. */
int state_ek_digest(const uint8_t *ek_pub, size_t len, uint8_t out[STATE_DIGEST_LEN]);

/* The provisioning settings whose change makes a saved identity stale. */
struct state_config_input {
        const char *global_endpoint;  /* as configured (NULL → DPS_GLOBAL_ENDPOINT) */
        const char *id_scope;
        const char *registration_id;
        const json_t *payload;        /* NULL if none */
};
/* SHA-256 over a canonical JSON rendering (sorted keys, compact) of in,
 * prefixed with a version tag so the hash changes if the rendering does.
 * Returns 0, -EINVAL for a NULL scope or registration id, -ENOMEM. */
int state_config_digest(const struct state_config_input *in, uint8_t out[STATE_DIGEST_LEN]);

/* Whether a loaded state still describes this TPM and config: registration
 * id, scope, ek_digest and config_digest all equal. ek_digest mismatch means the
 * key at the auth handle belongs to another TPM's enrollment → treat the state
 * as missing; a config_digest mismatch alone means "stale": the identity is
 * still usable while DPS runs again (see provision.h). */
enum state_match {
        STATE_MATCH_OK,
        STATE_MATCH_CONFIG_CHANGED, /* same TPM; scope, registration id or config digest differ */
        STATE_MATCH_OTHER_TPM,      /* ek_digest differs: do not serve it */
};
enum state_match state_check(const struct tpmid_state *st, const uint8_t ek_digest[STATE_DIGEST_LEN],
                             const uint8_t config_digest[STATE_DIGEST_LEN]);
