/* tpmidd configuration: one schema read from Microsoft's super-config
 * (/etc/aziot/config.toml) plus tpmidd's own keys.
 *
 * The file is parsed with lib/toml, then validated against a key table. All
 * problems of a file (and its drop-ins) are collected in one pass into a
 * struct config_diags, each with file:line:col, the key, what is wrong and an
 * example of a right value. Errors make the load fail; warnings (unknown
 * keys, with "did you mean") and infos (Microsoft keys tpmidd ignores) do not.
 *
 * Files:
 *   CONFIG_DEFAULT_PATH  what the user edits (aziot's super-config), read by
 *                        `tpmidctl config check|apply`;
 *   CONFIG_APPLIED_PATH  the validated, normalised copy `tpmidctl config apply`
 *                        writes and tpmidd reads;
 *   <dir>/config.d/<name>.toml drop-ins beside either file, merged in name order
 *                        (tables merge, scalars and arrays replace).
 * $TPMIDD_CONFIG overrides the path in both programs.
 *
 * Unknown keys are warnings (with "did you mean" within edit distance 2);
 * Microsoft keys tpmidd does not use ([agent], [connect], [edge_ca], ...) are
 * info notes; a top-level key written below a [table] header (TOML then reads
 * it as part of that table) is an error that says to move it up.
 * Drop-ins: [[principal]] in a drop-in replaces the whole principal list.
 *
 * Key reference (defaults in brackets):
 *   hostname [gethostname()], auto_reprovisioning_mode ["Dynamic"], cloud_timeout_sec [70],
 *   cloud_retries [1], state_dir ["/var/lib/tpmidd"], log_level ["info"], cloud_ca_bundle [system store]
 *   [provisioning] source ("dps"|"none"; no [provisioning] at all = "none" with a warning:
 *       the TPM API only, as aziot-tpmd with an empty file), global_endpoint [https://global.azure-devices-provisioning.net/],
 *       id_scope (required for dps), payload = { uri = "file:///abs/path.json" }
 *   [provisioning.attestation] method ("tpm"), registration_id [derived from the EK, see below]
 *   [tpm] tcti ["device:/dev/tpmrm0"], auth_key_index [0x00_01_00], max_requests (= limits.max_connections_per_uid)
 *   [tpm.hierarchy_authorization] endorsement [""], owner [""]
 *   [aziot_max_requests] tpmd (= limits.max_connections_per_uid)
 *   [endpoints] aziot_tpmd ["unix:///run/aziot/tpmd.sock"], aziot_identityd ["unix:///run/aziot/identityd.sock"]
 *   [limits] see struct config_limits
 *   [[principal]] uid, name, idtype = ["device"|"module"|"local"], allow = ["tpm.sign", ...]
 *
 * registration_id: when absent, the daemon derives it from the endorsement key
 * exactly as Microsoft's documented script does: the lowercase hex SHA-256 of
 * the EK's marshalled TPM2B_PUBLIC (what `tpm2_readpublic -o ek.pub` writes,
 * then `sha256sum ek.pub`). `tpmidctl tpm info` prints the same value. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "toml.h"

#define CONFIG_DEFAULT_PATH "/etc/aziot/config.toml"
#define CONFIG_APPLIED_PATH "/etc/aziot/tpmidd/config.toml"
#define CONFIG_ENV_PATH "TPMIDD_CONFIG"
#define CONFIG_DROPIN_DIR "config.d"
#define CONFIG_MAX_DROPINS 128                 /* files read from config.d */
#define CONFIG_MAX_FILE_BYTES (1u << 20)       /* bytes per config file, = TOML_MAX_INPUT_BYTES */
#define CONFIG_MAX_PAYLOAD_BYTES (64u * 1024)  /* bytes of the DPS payload JSON file */
#define CONFIG_MAX_PRINCIPALS 256              /* [[principal]] entries */
#define CONFIG_MAX_DIAGS 1000                  /* diagnostics kept per load; more are counted, not stored */

/* Defaults. */
#define CONFIG_DEFAULT_GLOBAL_ENDPOINT "https://global.azure-devices-provisioning.net/"
#define CONFIG_DEFAULT_TCTI "device:/dev/tpmrm0"
#define CONFIG_DEFAULT_AUTH_KEY_INDEX 0x000100u /* offset from 0x81000000, as aziot-tpmd */
#define CONFIG_MAX_AUTH_KEY_INDEX 0x7FFFFFu
#define CONFIG_DEFAULT_TPMD_SOCKET "/run/aziot/tpmd.sock"
#define CONFIG_DEFAULT_IDENTITYD_SOCKET "/run/aziot/identityd.sock"
#define CONFIG_DEFAULT_STATE_DIR "/var/lib/tpmidd"
#define CONFIG_DEFAULT_CLOUD_TIMEOUT_SEC 70 /* seconds per cloud request, aziot's default */
#define CONFIG_DEFAULT_CLOUD_RETRIES 1      /* extra attempts after a failed cloud request */

/* [limits] defaults and ranges (inclusive). */
#define CONFIG_DEFAULT_MAX_CONNECTIONS 64          /* connections, all clients */
#define CONFIG_DEFAULT_MAX_CONNECTIONS_PER_UID 16  /* connections per peer uid */
#define CONFIG_DEFAULT_MAX_HEADER_BYTES 8192       /* bytes of request line + headers */
#define CONFIG_DEFAULT_MAX_BODY_BYTES 65536        /* bytes of request body */
#define CONFIG_DEFAULT_IDLE_TIMEOUT_SEC 60         /* seconds a connection may sit idle */
#define CONFIG_DEFAULT_REQUEST_TIMEOUT_SEC 5       /* seconds to receive a whole request (aziot: 5 s body read) */
#define CONFIG_DEFAULT_MAX_QUEUED_TPM_JOBS 256     /* TPM commands waiting for the worker */
#define CONFIG_DEFAULT_BUSY_POLL_USEC 50           /* microseconds the loop polls after activity before sleeping */
#define CONFIG_MAX_BUSY_POLL_USEC 1000             /* microseconds: more is a busy loop, not a poll */

enum config_reprovisioning_mode {
        CONFIG_REPROVISION_DYNAMIC,           /* reprovision when the hub says the device moved (default) */
        CONFIG_REPROVISION_ALWAYS_ON_STARTUP, /* reprovision at every daemon start */
        CONFIG_REPROVISION_ON_ERROR_ONLY,     /* only as fallback when the hub cannot be reached */
        _CONFIG_REPROVISION_MAX,
};

enum config_provisioning_source {
        CONFIG_SOURCE_DPS,
        CONFIG_SOURCE_NONE,
        _CONFIG_SOURCE_MAX,
};

enum config_attestation_method {
        CONFIG_ATTESTATION_TPM,
        _CONFIG_ATTESTATION_MAX,
};

enum config_log_level {
        CONFIG_LOG_ERROR,
        CONFIG_LOG_WARN,
        CONFIG_LOG_INFO,
        CONFIG_LOG_DEBUG,
        _CONFIG_LOG_MAX,
};

/* [[principal]] idtype, a bit set; 0 = no idtype (aziot's "daemon" role). */
enum {
        CONFIG_IDTYPE_DEVICE = 1u << 0,
        CONFIG_IDTYPE_MODULE = 1u << 1,
        CONFIG_IDTYPE_LOCAL = 1u << 2,
};

/* API operations a principal may be allowed, a bit set. Names (for `allow`)
 * in parentheses. */
enum {
        CONFIG_OP_TPM_KEYS = 1u << 0,              /* "tpm.keys": GET /get_tpm_keys */
        CONFIG_OP_TPM_IMPORT = 1u << 1,            /* "tpm.import": POST /import_auth_key */
        CONFIG_OP_TPM_SIGN = 1u << 2,              /* "tpm.sign": POST /sign_with_auth_key */
        CONFIG_OP_IDENTITY_GET = 1u << 3,          /* "identity.get": GET /identities/identity, POST /identities/device */
        CONFIG_OP_IDENTITY_PROVISIONING = 1u << 4, /* "identity.provisioning": GET /identities/provisioning */
        CONFIG_OP_IDENTITY_TOKEN = 1u << 5,        /* "identity.token": a hub SAS token signed in the TPM */
        CONFIG_OP_IDENTITY_MODULES = 1u << 6,      /* "identity.modules": module identity create/get/update/delete */
        CONFIG_OP_REPROVISION = 1u << 7,           /* "reprovision": POST /identities/device/reprovision */
        CONFIG_OP_ALL = (1u << 8) - 1,             /* "*" */
};

enum config_severity {
        CONFIG_SEVERITY_ERROR,
        CONFIG_SEVERITY_WARNING,
        CONFIG_SEVERITY_INFO,
};

struct config_diag {
        enum config_severity severity;
        char *file;    /* origin of the value (main file or drop-in); never NULL */
        unsigned line; /* 1-based; 0 when the problem has no position (e.g. a missing key) */
        unsigned col;
        char *key;     /* dotted key, e.g. "provisioning.id_scope"; NULL if none */
        char *message; /* one or two sentences: what is wrong, an example of a right value */
};

struct config_diags {
        struct config_diag *items; /* sorted by file, line, col after each load */
        size_t n;
        size_t n_errors, n_warnings, n_infos; /* counts, including any beyond CONFIG_MAX_DIAGS */
};

/* Where a value was written, for diagnostics raised after validation. */
struct config_pos {
        char *file; /* NULL when the value is a default */
        unsigned line, col;
};

struct config_principal {
        uid_t uid;
        char *name;
        unsigned idtype; /* CONFIG_IDTYPE_* bits; 0 = none given */
        uint32_t allow;  /* CONFIG_OP_* bits (explicit `allow`, or the role's default) */
        bool allow_explicit;
};

struct config_limits {
        unsigned max_connections;         /* 1..4096 */
        unsigned max_connections_per_uid; /* 1..4096, <= max_connections */
        unsigned max_header_bytes;        /* 1024..65536 */
        unsigned max_body_bytes;          /* 1024..1048576 */
        unsigned idle_timeout_sec;        /* 1..3600 */
        unsigned request_timeout_sec;     /* 1..300 */
        unsigned max_queued_tpm_jobs;     /* 1..65536 */
        unsigned busy_poll_usec;          /* 0..CONFIG_MAX_BUSY_POLL_USEC; 0 = sleep at once */
};

struct tpmid_config {
        char *origin; /* the main file's path (or the origin given to config_parse_string) */

        char *hostname; /* NULL = use gethostname() */
        enum config_reprovisioning_mode auto_reprovisioning_mode;
        unsigned cloud_timeout_sec; /* 1..3600 */
        unsigned cloud_retries;     /* 0..100 */

        struct {
                enum config_provisioning_source source;
                char *global_endpoint;  /* https URL, always ending in '/'; never NULL */
                char *id_scope;         /* non-NULL when source is dps */
                char *payload_path;     /* absolute path from payload.uri "file://...", or NULL */
                enum config_attestation_method method;
                char *registration_id;  /* NULL = derive from the EK (see top of file) */
        } provisioning;

        struct {
                char *tcti;               /* never NULL; "" lets the TCTI loader pick */
                uint32_t auth_key_index;  /* 0..CONFIG_MAX_AUTH_KEY_INDEX, offset from 0x81000000 */
                char *endorsement_auth;   /* hierarchy passwords; never NULL, "" = empty. Secret: wiped by config_free */
                char *owner_auth;
        } tpm;

        struct {
                char *tpmd_socket;      /* filesystem path (the unix:// URI without its scheme); never NULL */
                char *identityd_socket; /* never NULL */
        } endpoints;

        char *state_dir;       /* never NULL */
        enum config_log_level log_level;
        char *cloud_ca_bundle; /* PEM file; NULL = the system trust store */
        struct config_limits limits;

        struct config_principal *principals;
        size_t n_principals;

        struct config_pos payload_pos, cloud_ca_bundle_pos; /* for config_check_files() */
};

/* Parse and validate text (no drop-ins, no payload file check). origin names
 * the text in diagnostics (NULL → "<string>"). Diagnostics are appended to
 * *diags (which the caller zero-initialises and frees with config_diags_free).
 * Returns 0 and sets *ret (free with config_free) when there was no error
 * (warnings allowed); -EINVAL when at least one error was recorded; -ENOMEM.
 * *ret is untouched on failure. */
int config_parse_string(const char *text, size_t len, const char *origin, struct tpmid_config **ret,
                        struct config_diags *diags);

/* Read path and its drop-ins (<dirname(path)>/config.d/<name>.toml, name order),
 * merge, validate. Every file's syntax errors are reported, not just the
 * first file's. Returns as config_parse_string(); an unreadable main file is
 * recorded as an error diagnostic and returns its -errno (e.g. -ENOENT,
 * -EACCES). An unreadable drop-in is an error too. */
int config_load(const char *path, struct tpmid_config **ret, struct config_diags *diags);

/* Validate an already parsed (and merged) TOML root. Same contract as
 * config_parse_string; root stays owned by the caller. */
int config_from_toml(const struct toml_value *root, const char *origin, struct tpmid_config **ret,
                     struct config_diags *diags);

/* I/O checks that `tpmidctl config check` adds: the payload file exists, is
 * readable, at most CONFIG_MAX_PAYLOAD_BYTES and JSON; cloud_ca_bundle exists.
 * Appends errors to *diags. Returns 0 when it added no error, -EINVAL when it
 * did, -ENOMEM. */
int config_check_files(const struct tpmid_config *c, struct config_diags *diags);

/* $TPMIDD_CONFIG if set and non-empty, else def (CONFIG_DEFAULT_PATH for the
 * CLI, CONFIG_APPLIED_PATH for the daemon). Returns a pointer into the
 * environment or def; not to be freed. */
const char *config_path_from_env(const char *def);

/* Free a config (NULL is fine), wiping the hierarchy passwords. Returns NULL. */
struct tpmid_config *config_free(struct tpmid_config *c);

/* Free the items of *diags and zero it (the struct itself is the caller's). */
void config_diags_free(struct config_diags *diags);

/* "file:line:col: error: message" (line/col omitted when 0; "warning:",
 * "note:" for the other severities). Returns a heap string the caller frees,
 * or NULL on ENOMEM. */
char *config_format_diag(const struct config_diag *d);

/* Serialise c as normalised TOML (every key explicit, header comment naming
 * the generator) — what `config apply` installs as CONFIG_APPLIED_PATH.
 * Parsing the result gives an equal config. Returns 0 and a heap string in
 * *ret (caller frees; it holds the hierarchy passwords: wipe it), or -ENOMEM. */
int config_format_toml(const struct tpmid_config *c, const char *header, char **ret);

/* What differs between two configs, as a bit set of CONFIG_CHANGED_*. */
enum {
        /* log_level, limits, principals, auto_reprovisioning_mode and the provisioning settings
         * (global_endpoint, id_scope, payload, attestation): SIGHUP applies them */
        CONFIG_CHANGED_RELOADABLE = 1u << 0,
        /* provisioning.source, tpm, endpoints, state_dir, hostname, cloud_*: a reload keeps the running value */
        CONFIG_CHANGED_RESTART = 1u << 1,
};
/* Returns the CONFIG_CHANGED_* bits. When why is non-NULL it receives a
 * heap string naming the changed keys (e.g. "provisioning.id_scope, log_level"),
 * or NULL if nothing changed or on ENOMEM; the caller frees it. */
unsigned config_diff(const struct tpmid_config *a, const struct tpmid_config *b, char **why);

/* Principals. Returns the entry for uid, or NULL. */
const struct config_principal *config_principal_for_uid(const struct tpmid_config *c, uid_t uid);
/* The operations aziot grants a role: no idtype (daemon) → everything;
 * with idtype → identity.get, identity.provisioning and identity.token. */
uint32_t config_role_default_allow(unsigned idtype);
/* Is uid allowed op (one CONFIG_OP_* bit)? A listed principal → its allow
 * set; unlisted uid 0 → everything (aziot's LocalRoot); anyone else → no. */
bool config_allowed(const struct tpmid_config *c, uid_t uid, uint32_t op);

/* Names ↔ enums/bits. *_to_string return static strings (NULL if out of range);
 * *_from_string return the value, or -EINVAL if unknown. */
const char *config_reprovisioning_mode_to_string(enum config_reprovisioning_mode m);
int config_reprovisioning_mode_from_string(const char *s);
const char *config_provisioning_source_to_string(enum config_provisioning_source s);
const char *config_log_level_to_string(enum config_log_level l);
int config_log_level_from_string(const char *s);
const char *config_op_to_string(uint32_t op); /* one bit */
int config_op_from_string(const char *s);      /* bit, CONFIG_OP_ALL for "*", or -EINVAL */
