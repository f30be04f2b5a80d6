/* The only module that talks to the TPM (the only file that includes
 * tss2_esys.h). It owns the ESYS context, flushes every transient object and
 * session on every path, and turns every TSS2_RC into a negative errno plus a
 * one-sentence explanation (struct tpm_error) that says which step failed and
 * what to do about it.
 *
 * Not thread-safe: one struct tpm is used by one thread at a time (the
 * daemon's TPM worker thread; tpmidctl directly). Blocking calls. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TPM_EK_HANDLE 0x81010001u
#define TPM_SRK_HANDLE 0x81000001u
#define TPM_AUTH_KEY_BASE 0x81000000u
#define TPM_AUTH_KEY_INDEX_DEFAULT 0x100u
#define TPM_AUTH_KEY_INDEX_MAX 0x7fffffu
#define TPM_EK_CERT_NV_RSA 0x01c00002u
#define TPM_DEFAULT_TCTI "device:/dev/tpmrm0"
#define TPM_PUBLIC_MAX 1024 /* bytes of a marshalled TPM2B_PUBLIC we accept */

struct tpm;

struct tpm_error {
        uint32_t rc;       /* the TSS2_RC, 0 if the failure was not from the TSS */
        char step[64];     /* e.g. "Esys_CreatePrimary(EK)" */
        char msg[512];     /* one sentence with the fix; never secrets */
};

struct tpm_options {
        const char *tcti;            /* TCTI config string; NULL = TPM_DEFAULT_TCTI (never the loader default list) */
        const char *endorsement_auth; /* hierarchy passwords; NULL or "" = empty */
        const char *owner_auth;
        uint32_t auth_key_index;     /* persistent handle = TPM_AUTH_KEY_BASE + index */
};

/* Marshalled TPM2B_PUBLIC bytes (what tpm2_readpublic -o writes). */
struct tpm_public {
        uint8_t buf[TPM_PUBLIC_MAX];
        size_t len;
};

/* Open the TCTI and ESYS context. Does not touch EK/SRK. Returns 0 and *ret
 * (free with tpm_close()) or -errno with *err filled. */
int tpm_open(const struct tpm_options *opts, struct tpm **ret, struct tpm_error *err);
struct tpm *tpm_close(struct tpm *t); /* NULL-safe, returns NULL */

/* Make sure EK (0x81010001) and SRK (0x81000001) exist: read them, or create
 * them from the TCG templates and persist. Refuses (-EEXIST? no: -EBADMSG) an
 * object at 0x81000001 that is not an RSA-2048 restricted decrypt storage key.
 * created_* (may be NULL) report what was created. */
int tpm_ensure_primary_keys(struct tpm *t, bool *created_ek, bool *created_srk, struct tpm_error *err);

/* Marshalled public areas of EK and SRK (after tpm_ensure_primary_keys()). */
int tpm_get_keys(struct tpm *t, struct tpm_public *ek, struct tpm_public *srk, struct tpm_error *err);

/* The RSA EK certificate from NV 0x01c00002 as DER. -ENOENT if there is none.
 * *ret is heap (caller frees). */
int tpm_read_ek_cert(struct tpm *t, uint8_t **ret, size_t *ret_len, struct tpm_error *err);

/* Import a DPS authenticationKey blob (raw bytes, already base64-decoded):
 * ActivateCredential(SRK, EK) -> Import -> Load -> verify -> persist at the
 * auth key handle. The old key at that handle stays usable unless the new one
 * was fully imported and loaded. -EBADMSG for a malformed blob, -EACCES for a
 * blob not bound to this TPM's EK/SRK. */
int tpm_import_auth_key(struct tpm *t, const uint8_t *blob, size_t len, struct tpm_error *err);

/* HMAC-SHA256 of data with the persisted auth key (any length; > 1024 bytes
 * goes through a sequence). out receives 32 bytes. -ENOKEY if no key. */
int tpm_sign(struct tpm *t, const uint8_t *data, size_t len, uint8_t out[32], struct tpm_error *err);

/* Whether an auth key is present at its handle. */
int tpm_has_auth_key(struct tpm *t, bool *present, struct tpm_error *err);

/* Dictionary-attack state for `check` and status. */
struct tpm_da_info {
        uint32_t lockout_counter, max_auth_fail, lockout_interval, lockout_recovery;
        bool in_lockout;
};
int tpm_da_info(struct tpm *t, struct tpm_da_info *out, struct tpm_error *err);

/* Cheap liveness probe (GetCapability) for the watchdog. */
int tpm_ping(struct tpm *t, struct tpm_error *err);

/* Registration ids: lowercase hex SHA-256 of the marshalled EK TPM2B_PUBLIC
 * (the seed's `sha256sum -b ek.pub`), or the old Azure C SDK form (lowercase
 * base32, no padding, of the same hash). Pure; caller frees. NULL on OOM. */
char *tpm_registration_id(const uint8_t *ek_pub, size_t len);
char *tpm_registration_id_base32(const uint8_t *ek_pub, size_t len);
