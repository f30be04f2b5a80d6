/* The only module that talks to the TPM (the only file that includes
 * tss2_sys.h). It owns the SAPI context, flushes every transient object and
 * session on every path, and turns every TSS2_RC into a negative errno plus a
 * one-sentence explanation (struct tpm_error) that says which step failed and
 * what to do about it.
 *
 * Not thread-safe: one struct tpm is used by one thread at a time (the
 * daemon's TPM worker thread; tpmidctl directly). Every call blocks until
 * the TPM has answered. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <tss2/tss2_tcti.h>

#define TPM_EK_HANDLE 0x81010001u
#define TPM_SRK_HANDLE 0x81000001u
#define TPM_AUTH_KEY_BASE 0x81000000u
#define TPM_AUTH_KEY_INDEX_DEFAULT 0x100u
#define TPM_AUTH_KEY_INDEX_MAX 0x7fffffu
/* Index of the DPS challenge key for tpm_import_auth_key_at() and
 * tpm_sign_at(): imported and kept loaded on this connection, never
 * persisted (no NV write); a new one replaces it, a persistent import or
 * tpm_persist_challenge_key_at() ends it, and a reopened connection has
 * none (-ENOKEY: the registration starts again). Under a resource manager
 * (/dev/tpmrm0) it lives as long as the connection, which the TPM worker
 * keeps open; on swtpm it stays loaded across tpm_idle() (the simulator
 * keeps objects between connections), and tpm_open()'s flush_leftovers
 * removes one a crashed run left. */
#define TPM_AUTH_KEY_TRANSIENT UINT32_MAX
#define TPM_EK_CERT_NV_RSA 0x01c00002u
#define TPM_DEFAULT_TCTI "device:/dev/tpmrm0"
#define TPM_PUBLIC_MAX 1024 /* bytes of a marshalled TPM2B_PUBLIC we accept */
#define TPM_HMAC_CHUNK 1024 /* bytes: TPM2_MAX_DIGEST_BUFFER; larger data goes through an HMAC sequence */

struct tpm;

struct tpm_error {
        uint32_t rc;       /* the TSS2_RC, 0 if the failure was not from the TSS */
        char step[64];     /* e.g. "TPM2_CreatePrimary(EK)" */
        char msg[512];     /* one sentence with the fix; never secrets */
};

/* A TCTI that tpm_open() takes from its caller instead of opening the
 * configuration string: how the unit tests put a TPM of their own (canned
 * responses, errors, delays) behind SAPI. All three run on the thread that
 * calls tpm_open()/tpm_close()/tpm_idle(). */
struct tpm_tcti_source {
        /* 0 and *ret, or -errno (tpm_open() fails with -EIO and a sentence). */
        int (*open)(void *userdata, TSS2_TCTI_CONTEXT **ret);
        /* tpm_close(): the TCTI open made is no longer used. */
        void (*close)(void *userdata, TSS2_TCTI_CONTEXT *tcti);
        /* tpm_idle() (may be NULL: nothing to give back): true if something was released. */
        bool (*release)(void *userdata, TSS2_TCTI_CONTEXT *tcti);
        void *userdata;
};

struct tpm_options {
        const char *tcti;            /* TCTI config string; NULL = TPM_DEFAULT_TCTI (never the loader default list) */
        const char *endorsement_auth; /* hierarchy passwords; NULL or "" = empty */
        const char *owner_auth;
        uint32_t auth_key_index;     /* persistent handle = TPM_AUTH_KEY_BASE + index */
        bool flush_leftovers;        /* the owner of the TPM (the daemon): at open, flush transient objects and
                                      * sessions a crashed earlier run left behind, unless the TCTI is a resource
                                      * manager (/dev/tpmrm*, tabrmd) that already did */
        const struct tpm_tcti_source *tcti_source; /* NULL: open tcti; else the TCTI comes from here (tcti still
                                                    * names it in errors) and it must outlive every struct tpm
                                                    * opened with it */
};

/* Marshalled TPM2B_PUBLIC bytes (what tpm2_readpublic -o writes). */
struct tpm_public {
        uint8_t buf[TPM_PUBLIC_MAX];
        size_t len;
};

/* Open the TCTI and SAPI context. Does not touch EK/SRK. Returns 0 and *ret
 * (free with tpm_close()) or -errno with *err filled. */
int tpm_open(const struct tpm_options *opts, struct tpm **ret, struct tpm_error *err);
struct tpm *tpm_close(struct tpm *t); /* NULL-safe, returns NULL */

/* How many leftover transient objects and sessions tpm_open() flushed
 * (opts->flush_leftovers). */
unsigned tpm_leftovers_flushed(const struct tpm *t);

/* Make sure EK (0x81010001) and SRK (0x81000001) exist: read them, or create
 * them from the TCG templates and persist (every transient flushed). Returns 0,
 * or -EBADMSG (with a sentence naming the handle) for an object at either
 * handle that is not an RSA-2048 restricted decryption key, or another -errno
 * from tpm_error_from_rc(). created_* (may be NULL) report what was created.
 * The public areas are cached in t afterwards (tpm_get_keys costs no TPM
 * round trip). */
int tpm_ensure_primary_keys(struct tpm *t, bool *created_ek, bool *created_srk, struct tpm_error *err);

/* Marshalled public areas of EK and SRK (byte-identical to
 * `tpm2_readpublic -o`). Cached after the first read; if nothing was read yet
 * they are read (never created): -ENOENT when EK or SRK is missing. ek/srk
 * may be NULL. */
int tpm_get_keys(struct tpm *t, struct tpm_public *ek, struct tpm_public *srk, struct tpm_error *err);

/* The RSA EK certificate from NV 0x01c00002 as DER. -ENOENT if there is none.
 * *ret is heap (caller frees). */
int tpm_read_ek_cert(struct tpm *t, uint8_t **ret, size_t *ret_len, struct tpm_error *err);

/* Import a DPS authenticationKey blob (raw bytes, already base64-decoded):
 * ActivateCredential(SRK, EK) -> Import -> Load -> persist at the auth key
 * handle; when a key is there already, the new one is verified (one HMAC)
 * before the old one is removed, so the old key stays usable unless the new
 * one was fully imported, loaded and works. Into a slot this connection saw
 * empty: no lookup, no check (nothing is destroyed). -EBADMSG for a
 * malformed blob, -EACCES for a blob not bound to this TPM's EK/SRK. */
int tpm_import_auth_key(struct tpm *t, const uint8_t *blob, size_t len, struct tpm_error *err);

/* The same three operations for the auth key slot at TPM_AUTH_KEY_BASE + index
 * instead of the configured one (index <= TPM_AUTH_KEY_INDEX_MAX, else
 * -EINVAL). An import replaces a key already at that handle in place (evict,
 * then persist: two NV writes with no key in between), so the provisioning
 * driver imports only into the slot its state file does not name and swaps
 * slots (A/B, provision.h); the socket's and tpmidctl's imports replace the
 * serving key in place as before. */
int tpm_import_auth_key_at(struct tpm *t, uint32_t index, const uint8_t *blob, size_t len, struct tpm_error *err);
/* The same import one TPM command at a time, so that the TPM worker can run
 * a signature between two commands of a long import (on a discrete TPM
 * ActivateCredential and Import take 100+ ms each). tpm_import_begin()
 * parses the blob (no TPM command, but the flush of an old challenge key)
 * and returns the operation; each tpm_import_step() sends one command (two
 * for the eviction of an old key and the persist of the new one) and
 * returns 1 while more follow, 0 when the import is done, or -errno (as
 * tpm_import_auth_key_at()); op is freed on 0 and on -errno. Other commands
 * may run on t between steps, but no other import. tpm_import_abort() ends
 * an op early (flushing what it holds unless the connection is lost). */
struct tpm_import_op;
int tpm_import_begin(struct tpm *t, uint32_t index, const uint8_t *blob, size_t len, struct tpm_import_op **ret,
                     struct tpm_error *err);
int tpm_import_step(struct tpm *t, struct tpm_import_op *op, struct tpm_error *err);
void tpm_import_abort(struct tpm *t, struct tpm_import_op *op);
int tpm_sign_at(struct tpm *t, uint32_t index, const uint8_t *data, size_t len, uint8_t out[32], struct tpm_error *err);
int tpm_has_auth_key_at(struct tpm *t, uint32_t index, bool *present, struct tpm_error *err);
/* Persist the loaded challenge key (TPM_AUTH_KEY_TRANSIENT) at slot
 * TPM_AUTH_KEY_BASE + index and flush it: for an assignment that carries no
 * key of its own. One NV write into an empty slot; a key already there is
 * replaced (two). -ENOKEY if none is loaded. */
int tpm_persist_challenge_key_at(struct tpm *t, uint32_t index, struct tpm_error *err);
/* Remove the auth key at TPM_AUTH_KEY_BASE + index, if there is one (one
 * TPM2_ReadPublic, and one TPM2_EvictControl, an NV write, only when a key is
 * there). *evicted (may be NULL) says whether one was removed. Returns 0, or
 * -errno (-EINVAL for an index out of range). The provisioning driver uses it
 * to retire the old hub key of an A/B swap (provision.h). */
int tpm_evict_auth_key_at(struct tpm *t, uint32_t index, bool *evicted, struct tpm_error *err);

/* HMAC-SHA256 of data with the persisted auth key (any length; > 1024 bytes
 * goes through a sequence). out receives 32 bytes. -ENOKEY if no key. */
int tpm_sign(struct tpm *t, const uint8_t *data, size_t len, uint8_t out[32], struct tpm_error *err);

/* The caller will not send commands for a while: give back what holds the
 * TPM against other programs. With swtpm that is the connection kept from
 * the last command (swtpm serves one at a time; see tcti-swtpm.h); the
 * device and other TCTIs keep nothing that blocks others, so this does
 * nothing there (a tcti_source: its release hook). Returns true if a
 * connection was closed. */
bool tpm_idle(struct tpm *t);

/* Errors common to all calls below (see tpm_error_from_rc()): -EIO (TPM or
 * connection failure), -EPERM (dictionary-attack lockout), -EACCES (wrong
 * hierarchy password), -ENOSPC (no free TPM slots / persistent storage),
 * -EAGAIN (TPM busy), -ENOMEM. */

/* Whether an auth key is present at its handle (asks the TPM every time). */
int tpm_has_auth_key(struct tpm *t, bool *present, struct tpm_error *err);

/* Dictionary-attack state for `check` and status. */
struct tpm_da_info {
        uint32_t lockout_counter, max_auth_fail, lockout_interval, lockout_recovery;
        bool in_lockout;
};
int tpm_da_info(struct tpm *t, struct tpm_da_info *out, struct tpm_error *err);

/* Whether the connection to the TPM was lost in the middle of a command (a
 * TCTI I/O error, or SAPI finding a response lost or out of sequence): the
 * command's -EIO said so, and nothing is sent on this connection again
 * (every later call fails with -EIO). The owner tpm_close()s it and opens
 * the TPM again; a TPM without a resource manager then needs
 * tpm_options.flush_leftovers for what the broken command left loaded. */
bool tpm_lost(const struct tpm *t);

/* Cheap liveness probe (GetCapability) for the watchdog. */
int tpm_ping(struct tpm *t, struct tpm_error *err);

/* ---- pure helpers (no TPM; exposed for tests and tpmidctl) ---- */

/* Turn a TSS2_RC into -errno and a one-sentence *err (may be NULL) naming
 * step, the Tss2_RC_Decode text and the fix. */
int tpm_error_from_rc(uint32_t rc, const char *step, struct tpm_error *err);

/* The TPM response code without layer and handle/parameter numbers (e.g.
 * 0x18b -> 0x8b TPM_RC_HANDLE), or 0 when rc is not from the TPM. */
uint32_t tpm_rc_base(uint32_t rc);

enum tpm_template {
        TPM_TEMPLATE_EK,  /* TCG EK profile L-1: RSA-2048, policy 837197..69aa, 256 zero bytes unique */
        TPM_TEMPLATE_SRK, /* RSA-2048 storage key, attrs 0x00030472 (noDA), 256 zero bytes unique */
};
/* The marshalled TPM2B_PUBLIC template tpmidd creates the key from. */
int tpm_template_public(enum tpm_template which, struct tpm_public *out);

/* Check a marshalled TPM2B_PUBLIC is an RSA-2048 restricted decryption
 * (storage) key; with want_user_auth, usable with a password too. Returns 0,
 * or -EBADMSG with what it is instead in why ("an ECC key"). */
int tpm_public_check_storage_key(const uint8_t *pub, size_t len, bool want_user_auth, char *why, size_t why_len);

/* Registration ids: lowercase hex SHA-256 of the marshalled EK TPM2B_PUBLIC
 * (the seed's `sha256sum -b ek.pub`), or the old Azure C SDK form (lowercase
 * base32, no padding, of the same hash). Pure; caller frees. NULL on OOM. */
char *tpm_registration_id(const uint8_t *ek_pub, size_t len);
char *tpm_registration_id_base32(const uint8_t *ek_pub, size_t len);
