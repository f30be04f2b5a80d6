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
 * then `sha256sum ek.pub`). `tpmidctl tpm info` prints the same value.
 *
 * One concern per file: config.c (this model, the key table and its value
 * parsers, the walk and the checks across keys), config-diag.{c,h}
 * (diagnostics, "did you mean", syntax-error recovery), config-load.c
 * (config_load() with drop-ins, config_check_files(), config_path_from_env()),
 * config-write.{c,h} (the TOML writer), config-diff.{c,h} (what changed);
 * who may call what is lib/authz.{c,h}. config-internal.h is what they share. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config-diag.h"
#include "log.h"
#include "provision.h"
#include "toml.h"

#define CONFIG_DEFAULT_PATH "/etc/aziot/config.toml"
#define CONFIG_APPLIED_PATH "/etc/aziot/tpmidd/config.toml"
#define CONFIG_ENV_PATH "TPMIDD_CONFIG"
#define CONFIG_DROPIN_DIR "config.d"
#define CONFIG_MAX_DROPINS 128                 /* files read from config.d */
#define CONFIG_MAX_FILE_BYTES (1u << 20)       /* bytes per config file, = TOML_MAX_INPUT_BYTES */
#define CONFIG_MAX_PAYLOAD_BYTES (64u * 1024)  /* bytes of the DPS payload JSON file */
#define CONFIG_MAX_PRINCIPALS 256              /* [[principal]] entries */

/* Defaults. */
#define CONFIG_DEFAULT_GLOBAL_ENDPOINT "https://global.azure-devices-provisioning.net/"
#define CONFIG_DEFAULT_TCTI "device:/dev/tpmrm0"
#define CONFIG_DEFAULT_AUTH_KEY_INDEX 0x000100u /* offset from 0x81000000, as aziot-tpmd */
#define CONFIG_MAX_AUTH_KEY_INDEX 0x7FFFFFu
#define CONFIG_DEFAULT_TPMD_SOCKET "/run/aziot/tpmd.sock"
#define CONFIG_DEFAULT_IDENTITYD_SOCKET "/run/aziot/identityd.sock"
#define CONFIG_DEFAULT_KEYD_SOCKET "/run/aziot/keyd.sock" /* aziot-keyd's socket ([endpoints] aziot_keyd) */
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

enum config_provisioning_source {
        CONFIG_SOURCE_DPS,
        CONFIG_SOURCE_NONE,
        _CONFIG_SOURCE_MAX,
};

enum config_attestation_method {
        CONFIG_ATTESTATION_TPM,
        _CONFIG_ATTESTATION_MAX,
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
};

struct tpmid_config {
        char *origin; /* the main file's path (or the origin given to config_parse_string) */

        char *hostname; /* NULL = use gethostname() */
        enum prov_mode auto_reprovisioning_mode; /* lib/provision.h's enum, parsed with prov_mode_from_string() */
        unsigned cloud_timeout_sec; /* 1..3600 */
        unsigned cloud_retries;     /* 0..100 */
        /* aziot-identityd's key: true = a module GET answers from the module
         * cache and asks the hub only for a module the cache lacks; false =
         * the hub first, the cache when the hub cannot be reached. */
        bool prefer_module_identity_cache;

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
                char *keyd_socket;      /* aziot-keyd's, for module keys; never NULL */
        } endpoints;

        char *state_dir;       /* never NULL */
        int log_level;         /* a syslog priority: LOG_ERR, LOG_WARNING, LOG_INFO or LOG_DEBUG (lib/log.h names) */
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

/* Principals. Returns the entry for uid, or NULL. */
const struct config_principal *config_principal_for_uid(const struct tpmid_config *c, uid_t uid);
/* The operations aziot grants a role: no idtype (daemon) → everything;
 * with idtype → identity.get, identity.provisioning and identity.token. */
uint32_t config_role_default_allow(unsigned idtype);

/* Names ↔ enums/bits. *_to_string return static strings (NULL if out of range);
 * *_from_string return the value, or -EINVAL if unknown. */
const char *config_provisioning_source_to_string(enum config_provisioning_source s);
const char *config_op_to_string(uint32_t op);     /* one bit */
int config_op_from_string(const char *s);          /* bit, CONFIG_OP_ALL for "*", or -EINVAL */
const char *config_idtype_to_string(unsigned bit); /* one CONFIG_IDTYPE_* bit */
/* auto_reprovisioning_mode names: prov_mode_to_string()/prov_mode_from_string()
 * (lib/provision.h); log_level names: log_level_to_string()/log_level_from_string()
 * (lib/log.h). One table each, shared with the daemon. */
