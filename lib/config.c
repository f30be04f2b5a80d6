/* tpmidd configuration: the model. TOML tree → validated struct tpmid_config.
 *
 * Shape: a table of known keys (schema) drives a walk over the parsed tree;
 * each key has a parser that checks type and value and writes one field.
 * Nothing stops at the first problem: every finding becomes a diagnostic
 * (lib/config-diag.c), so one run of `tpmidctl config check` shows all of
 * them. Reading files and drop-ins is lib/config-load.c; writing TOML back
 * lib/config-write.c; comparing two configs lib/config-diff.c; deciding what
 * a principal may do lib/authz.c.
 *
 * Ownership: goto-free, cleanup attributes for locals; the context owns the
 * config under construction until it is handed to the caller. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "config-internal.h"

#define CONFIG_MAX_STRING_BYTES 4096 /* bytes of any string value */
#define CONFIG_UNIX_PATH_MAX 107     /* sizeof(sockaddr_un.sun_path) - 1 */

/* ---- names ---- */

static const char *const source_names[_CONFIG_SOURCE_MAX] = {
        [CONFIG_SOURCE_DPS] = "dps",
        [CONFIG_SOURCE_NONE] = "none",
};
static const char *const op_names[] = {
        "tpm.keys", "tpm.import", "tpm.sign", "identity.get", "identity.provisioning",
        "identity.token", "identity.modules", "reprovision",
};
static const char *const idtype_names[] = {"device", "module", "local"};

const char *config_provisioning_source_to_string(enum config_provisioning_source s) {
        if ((unsigned)s >= _CONFIG_SOURCE_MAX)
                return NULL;
        return source_names[s];
}

const char *config_op_to_string(uint32_t op) {
        for (size_t i = 0; i < ELEMENTSOF(op_names); i++)
                if (op == (1u << i))
                        return op_names[i];
        return NULL;
}

int config_op_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        if (streq(s, "*"))
                return CONFIG_OP_ALL;
        for (size_t i = 0; i < ELEMENTSOF(op_names); i++)
                if (streq(s, op_names[i]))
                        return (int)(1u << i);
        return -EINVAL;
}

const char *config_idtype_to_string(unsigned bit) {
        for (size_t i = 0; i < ELEMENTSOF(idtype_names); i++)
                if (bit == (1u << i))
                        return idtype_names[i];
        return NULL;
}

/* ---- small string helpers ---- */

static char *join_key(const char *prefix, const char *key) {
        char *s = NULL;
        if (!prefix || !*prefix)
                return strdup(key);
        if (asprintf(&s, "%s.%s", prefix, key) < 0)
                return NULL;
        return s;
}

/* Does s end with the template placeholder marker (e.g. "DPS_ID_SCOPE_HERE")? */
static bool is_placeholder(const char *s) {
        size_t n = strlen(s);
        return n >= 5 && strcasecmp(s + n - 5, "_HERE") == 0;
}

/* Parse an integer written inside a string ("0x00_01_00", "70"), to tell the
 * user to drop the quotes. Returns true if s is one. */
static bool string_is_integer(const char *s) {
        char buf[64];
        size_t n = 0;
        for (const char *p = s; *p; p++) {
                if (*p == '_')
                        continue;
                if (n + 1 >= sizeof buf)
                        return false;
                buf[n++] = *p;
        }
        buf[n] = 0;
        if (n == 0)
                return false;
        char *end = NULL;
        errno = 0;
        (void)strtoll(buf, &end, 0);
        return errno == 0 && end && *end == 0;
}

/* ------------------------------------------------------------------------ */
/* Schema */

struct key_def;
typedef void (*parse_fn)(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                         void *base);

enum key_kind {
        KEY_VALUE,       /* parse() handles it */
        KEY_TABLE,       /* a table whose children are in the schema */
        KEY_TABLE_ARRAY, /* [[name]]: each element a table of children */
        KEY_IGNORED,     /* a Microsoft key (or table) tpmidd does not use: info note */
};

struct key_def {
        const char *table; /* schema path of the parent ("" = top level, "principal" for [[principal]]) */
        const char *name;
        enum key_kind kind;
        parse_fn parse;
        size_t offset; /* into struct tpmid_config, or struct config_principal under "principal" */
        int64_t min, max;
        const char *example; /* a right value, e.g. `source = "dps"` */
};

#define CFG(field) offsetof(struct tpmid_config, field)
#define PRI(field) offsetof(struct config_principal, field)

static void *field_ptr(void *base, size_t offset) {
        return (char *)base + offset;
}

static const char *type_phrase(enum toml_type t) {
        switch (t) {
        case TOML_STRING:
                return "a string";
        case TOML_INTEGER:
                return "an integer";
        case TOML_FLOAT:
                return "a floating-point number";
        case TOML_BOOL:
                return "a boolean";
        case TOML_DATETIME:
        case TOML_DATETIME_LOCAL:
        case TOML_DATE_LOCAL:
        case TOML_TIME_LOCAL:
                return "a date/time";
        case TOML_ARRAY:
                return "an array";
        case TOML_TABLE:
                return "a table";
        }
        return "a value";
}

static void set_str(struct config_ctx *x, char **field, const char *s) {
        char *d = strdup(s);
        if (!d) {
                x->oom = true;
                return;
        }
        free(*field);
        *field = d;
}

/* Type check for a string value. Returns true and sets *out when v is a
 * string without NUL bytes and at most CONFIG_MAX_STRING_BYTES. */
static bool want_string(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                        const char **out) {
        if (toml_type(v) != TOML_STRING) {
                error_v(x, v, key, "%s must be a string in double quotes, not %s; for example: %s", key,
                        type_phrase(toml_type(v)), k->example);
                return false;
        }
        size_t len = 0;
        const char *s = toml_string(v, &len);
        if (strlen(s) != len) {
                error_v(x, v, key, "%s must not contain NUL characters; for example: %s", key, k->example);
                return false;
        }
        if (len > CONFIG_MAX_STRING_BYTES) {
                error_v(x, v, key, "%s is %zu bytes long, more than the %u allowed; for example: %s", key, len,
                        (unsigned)CONFIG_MAX_STRING_BYTES, k->example);
                return false;
        }
        *out = s;
        return true;
}

static bool want_integer(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                         int64_t *out) {
        if (toml_type(v) == TOML_STRING) {
                const char *s = toml_string(v, NULL);
                if (string_is_integer(s))
                        error_v(x, v, key,
                                "%s must be an unquoted integer, not the string \"%s\": remove the quotes, "
                                "for example: %s",
                                key, s, k->example);
                else
                        error_v(x, v, key, "%s must be an unquoted integer, not a string; for example: %s", key,
                                k->example);
                return false;
        }
        if (toml_type(v) != TOML_INTEGER) {
                error_v(x, v, key, "%s must be an integer, not %s; for example: %s", key,
                        type_phrase(toml_type(v)), k->example);
                return false;
        }
        int64_t n = toml_integer(v);
        if (n < k->min || n > k->max) {
                if (streq(k->name, "auth_key_index")) /* aziot-tpmd's wording, which users search for */
                        error_v(x, v, key,
                                "%s = %" PRId64 " is out of range: it must be an integer in range "
                                "0x00_00_00..=0x7F_FF_FF; for example: %s",
                                key, n, k->example);
                else
                        error_v(x, v, key,
                                "%s = %" PRId64 " is out of range %" PRId64 "..%" PRId64 "; for example: %s", key,
                                n, k->min, k->max, k->example);
                return false;
        }
        *out = n;
        return true;
}

/* --- value parsers ------------------------------------------------------ */

static void p_uint(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        int64_t n;
        if (want_integer(x, k, v, key, &n))
                *(unsigned *)field_ptr(base, k->offset) = (unsigned)n;
}

static void p_bool(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        if (toml_type(v) != TOML_BOOL) {
                error_v(x, v, key, "%s must be true or false (no quotes), not %s; for example: %s", key,
                        type_phrase(toml_type(v)), k->example);
                return;
        }
        *(bool *)field_ptr(base, k->offset) = toml_bool(v);
}

static void p_auth_key_index(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                             void *base) {
        int64_t n;
        if (want_integer(x, k, v, key, &n))
                *(uint32_t *)field_ptr(base, k->offset) = (uint32_t)n;
}

static void p_hostname(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                       void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        size_t n = strlen(s);
        bool ok = n > 0 && n <= 255;
        for (size_t i = 0; ok && i < n; i++)
                ok = isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_';
        if (!ok) {
                error_v(x, v, key,
                        "%s \"%s\" is not a valid host name (1..255 letters, digits, '-', '.', '_'); for example: %s",
                        key, s, k->example);
                return;
        }
        set_str(x, field_ptr(base, k->offset), s);
}

static void p_path(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        if (s[0] != '/') {
                error_v(x, v, key, "%s must be an absolute path, not \"%s\"; for example: %s", key, s, k->example);
                return;
        }
        if (strlen(s) >= PATH_MAX) {
                error_v(x, v, key, "%s is longer than PATH_MAX; for example: %s", key, k->example);
                return;
        }
        set_str(x, field_ptr(base, k->offset), s);
        if (k->offset == CFG(cloud_ca_bundle)) {
                struct config_pos *pos = &x->c->cloud_ca_bundle_pos;
                set_str(x, &pos->file, toml_origin(v));
                pos->line = toml_line(v);
                pos->col = toml_col(v);
        }
}

static void p_any_string(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                         void *base) {
        const char *s;
        if (want_string(x, k, v, key, &s))
                set_str(x, field_ptr(base, k->offset), s);
}

static void p_tcti(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        for (const char *p = s; *p; p++)
                if ((unsigned char)*p < 0x20) {
                        error_v(x, v, key, "%s must not contain control characters; for example: %s", key,
                                k->example);
                        return;
                }
        set_str(x, field_ptr(base, k->offset), s);
}

static void p_non_empty(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                        void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        if (!*s) {
                error_v(x, v, key, "%s must not be empty; for example: %s", key, k->example);
                return;
        }
        for (const char *p = s; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                        error_v(x, v, key, "%s must not contain control characters; for example: %s", key,
                                k->example);
                        return;
                }
        set_str(x, field_ptr(base, k->offset), s);
}

static void p_mode(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        enum prov_mode m;
        if (prov_mode_from_string(s, &m) < 0) {
                const char *modes[_PROV_MODE_MAX];
                for (unsigned i = 0; i < _PROV_MODE_MAX; i++)
                        modes[i] = prov_mode_to_string((enum prov_mode)i);
                const char *near = config_closest(s, modes, ELEMENTSOF(modes));
                if (near)
                        error_v(x, v, key,
                                "%s \"%s\" is not a mode: write %s = \"%s\" (the modes are \"Dynamic\", "
                                "\"AlwaysOnStartup\", \"OnErrorOnly\", spelled exactly so)",
                                key, s, key, near);
                else
                        error_v(x, v, key,
                                "%s \"%s\" is not a mode: use \"Dynamic\", \"AlwaysOnStartup\" or \"OnErrorOnly\"; "
                                "for example: %s",
                                key, s, k->example);
                return;
        }
        *(enum prov_mode *)field_ptr(base, k->offset) = m;
}

static void p_log_level(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                        void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        /* lib/log.h's canonical names only (what log_level_to_string() writes),
         * spelled exactly: AZIOT_LOG's aliases ("trace", "7") stay the
         * environment's. */
        int l = log_level_from_string(s);
        if (l < 0 || !streq(log_level_to_string(l), s)) {
                error_v(x, v, key, "%s \"%s\" is not a level: use \"error\", \"warn\", \"info\" or \"debug\"; "
                        "for example: %s", key, s, k->example);
                return;
        }
        *(int *)field_ptr(base, k->offset) = l;
}

static void p_source(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                     void *base) {
        const char *s;
        x->v_source = v;
        if (!want_string(x, k, v, key, &s)) {
                x->source_unsupported = true;
                return;
        }
        if (streq(s, "dps"))
                x->c->provisioning.source = CONFIG_SOURCE_DPS;
        else if (streq(s, "none"))
                x->c->provisioning.source = CONFIG_SOURCE_NONE;
        else {
                x->source_unsupported = true;
                if (streq(s, "manual") || streq(s, "est") || streq(s, "dps_x509"))
                        error_v(x, v, key,
                                "%s \"%s\" is not supported by tpmidd, use \"dps\" or \"none\"; for example: %s "
                                "(tpmidd provisions through DPS with TPM attestation)",
                                key, s, k->example);
                else
                        error_v(x, v, key, "%s \"%s\" is not supported by tpmidd, use \"dps\" or \"none\"; "
                                "for example: %s", key, s, k->example);
        }
}

static void p_method(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                     void *base) {
        const char *s;
        x->v_method = v;
        if (!want_string(x, k, v, key, &s))
                return;
        if (!streq(s, "tpm")) {
                error_v(x, v, key, "%s \"%s\" is not supported by tpmidd, which attests with the TPM only; "
                        "for example: %s", key, s, k->example);
                return;
        }
        x->c->provisioning.method = CONFIG_ATTESTATION_TPM;
}

static void p_https_url(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                        void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        if (is_placeholder(s)) {
                error_v(x, v, key, "%s is still the template placeholder \"%s\"; for example: %s", key, s,
                        k->example);
                return;
        }
        if (strncasecmp(s, "https://", 8) != 0) {
                if (strncasecmp(s, "http://", 7) == 0)
                        error_v(x, v, key, "%s must use https, not http; for example: %s", key, k->example);
                else
                        error_v(x, v, key, "%s \"%s\" is not an https URL; for example: %s", key, s, k->example);
                return;
        }
        const char *host = s + 8;
        size_t hl = strcspn(host, "/");
        bool ok = hl > 0;
        for (size_t i = 0; ok && i < hl; i++)
                ok = isalnum((unsigned char)host[i]) || strchr(".-:[]", host[i]);
        for (const char *p = host; ok && *p; p++)
                ok = (unsigned char)*p > 0x20 && *p != 0x7f && *p != '?' && *p != '#';
        if (!ok) {
                error_v(x, v, key, "%s \"%s\" is not a valid https URL (a host name, no spaces, query or "
                        "fragment); for example: %s", key, s, k->example);
                return;
        }
        /* always end in '/', so the daemon can append "<scope>/registrations/..." */
        char *norm = NULL;
        size_t n = strlen(s);
        if (asprintf(&norm, "%s%s", s, n > 0 && s[n - 1] == '/' ? "" : "/") < 0) {
                x->oom = true;
                return;
        }
        char **f = field_ptr(base, k->offset);
        free(*f);
        *f = norm;
}

static void p_id_scope(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                       void *base) {
        const char *s;
        if (k->name[0] == 's') { /* scope_id: identityd's own name for it */
                x->v_scope_id = v;
                warn_v(x, v, key, "provisioning.scope_id is the name in identityd's own file; the super-config "
                       "key is id_scope: write id_scope = \"0ne00A1B2C3\"");
                if (x->v_id_scope)
                        return;
        } else
                x->v_id_scope = v;
        if (!want_string(x, k, v, key, &s))
                return;
        if (is_placeholder(s)) {
                error_v(x, v, key, "%s is still the template placeholder \"%s\": put the ID scope from your DPS "
                        "instance's Overview page; for example: %s", key, s, k->example);
                return;
        }
        size_t n = strlen(s);
        bool ok = n > 0 && n <= 64;
        for (size_t i = 0; ok && i < n; i++)
                ok = isalnum((unsigned char)s[i]);
        if (!ok) {
                error_v(x, v, key, "%s \"%s\" is not a DPS ID scope (letters and digits, as shown on the DPS "
                        "Overview page); for example: %s", key, s, k->example);
                return;
        }
        set_str(x, &x->c->provisioning.id_scope, s);
}

static void p_registration_id(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                              void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        if (is_placeholder(s)) {
                error_v(x, v, key, "%s is still the template placeholder \"%s\": put the registration ID of "
                        "the DPS enrollment, or remove the line to use the one derived from the endorsement key "
                        "(`tpmidctl tpm info` prints it); for example: %s", key, s, k->example);
                return;
        }
        /* DPS: up to 128 characters: letters, digits, '-', '.', '_', ':'; the last alphanumeric or '-' */
        size_t n = strlen(s);
        bool ok = n > 0 && n <= 128;
        for (size_t i = 0; ok && i < n; i++)
                ok = isalnum((unsigned char)s[i]) || strchr("-._:", s[i]);
        if (ok)
                ok = isalnum((unsigned char)s[n - 1]) || s[n - 1] == '-';
        if (!ok) {
                error_v(x, v, key, "%s \"%s\" is not a valid DPS registration ID (1..128 letters, digits, '-', "
                        "'.', '_', ':', ending in a letter, digit or '-'); for example: %s", key, s, k->example);
                return;
        }
        set_str(x, field_ptr(base, k->offset), s);
}


static void p_payload(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                      void *base) {
        if (toml_type(v) != TOML_TABLE) {
                if (toml_type(v) == TOML_STRING)
                        error_v(x, v, key, "%s must be an inline table with a file: URI, not a string; for "
                                "example: %s", key, k->example);
                else
                        error_v(x, v, key, "%s must be an inline table with a file: URI, not %s; for example: %s",
                                key, type_phrase(toml_type(v)), k->example);
                return;
        }
        const struct toml_value *uri = NULL;
        for (size_t i = 0; i < toml_table_size(v); i++) {
                const char *kk = toml_table_key(v, i);
                _cleanup_free_ char *full = join_key(key, kk);
                if (!full) {
                        x->oom = true;
                        return;
                }
                if (streq(kk, "uri"))
                        uri = toml_table_value(v, i);
                else
                        warn_v(x, toml_table_value(v, i), full, "unknown key %s (tpmidd ignores it); payload "
                               "takes only uri, for example: %s", full, k->example);
        }
        _cleanup_free_ char *ukey = join_key(key, "uri");
        if (!ukey) {
                x->oom = true;
                return;
        }
        if (!uri) {
                error_v(x, v, key, "%s needs a uri; for example: %s", key, k->example);
                return;
        }
        const char *s;
        if (!want_string(x, k, uri, ukey, &s))
                return;
        const char *path = NULL;
        if (strncasecmp(s, "file://", 7) == 0) {
                if (s[7] == '/')
                        path = s + 7;
                else if (strncasecmp(s + 7, "localhost/", 10) == 0)
                        path = s + 16;
                else {
                        error_v(x, uri, ukey, "%s \"%s\" must be an absolute file: URI with three slashes "
                                "(no host); for example: %s", ukey, s, k->example);
                        return;
                }
        } else if (s[0] == '/') {
                error_v(x, uri, ukey, "%s must be a file: URI, not a bare path: write payload = { uri = "
                        "\"file://%s\" }", ukey, s);
                return;
        } else {
                const char *colon = strchr(s, ':');
                if (colon && colon != s && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-") ==
                                               (size_t)(colon - s))
                        error_v(x, uri, ukey, "%s \"%s\": only file: URIs are supported; for example: %s", ukey, s,
                                k->example);
                else
                        error_v(x, uri, ukey, "%s \"%s\" is not a URI: give the JSON file as a file: URI; for "
                                "example: %s", ukey, s, k->example);
                return;
        }
        /* percent-decode; %00 would truncate the path, so refuse it */
        _cleanup_free_ char *dec = malloc(strlen(path) + 1);
        if (!dec) {
                x->oom = true;
                return;
        }
        size_t n = 0;
        for (const char *p = path; *p; p++) {
                if (*p == '%') {
                        int hi = p[1] ? hex_digit_value((unsigned char)p[1]) : -1,
                            lo = (hi >= 0 && p[2]) ? hex_digit_value((unsigned char)p[2]) : -1;
                        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                                error_v(x, uri, ukey, "%s \"%s\" has a bad %%-escape; for example: %s", ukey, s,
                                        k->example);
                                return;
                        }
                        dec[n++] = (char)(hi * 16 + lo);
                        p += 2;
                } else if (*p == '?' || *p == '#') {
                        error_v(x, uri, ukey, "%s \"%s\" must not have a query or fragment; for example: %s", ukey,
                                s, k->example);
                        return;
                } else
                        dec[n++] = *p;
        }
        dec[n] = 0;
        if (n < 2 || dec[n - 1] == '/') {
                error_v(x, uri, ukey, "%s \"%s\" must name a file; for example: %s", ukey, s, k->example);
                return;
        }
        set_str(x, &x->c->provisioning.payload_path, dec);
        struct config_pos *pos = &x->c->payload_pos;
        set_str(x, &pos->file, toml_origin(uri));
        pos->line = toml_line(uri);
        pos->col = toml_col(uri);
}

static void p_unix_uri(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                       void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        if (strncmp(s, "unix://", 7) != 0) {
                error_v(x, v, key, "%s \"%s\": only unix:// socket URIs are accepted; for example: %s", key, s,
                        k->example);
                return;
        }
        const char *path = s + 7;
        if (path[0] != '/') {
                error_v(x, v, key, "%s \"%s\" needs an absolute socket path (unix:// then /path); for example: %s",
                        key, s, k->example);
                return;
        }
        if (strlen(path) > CONFIG_UNIX_PATH_MAX) {
                error_v(x, v, key, "%s: the socket path is longer than %u bytes, the limit of a Unix socket "
                        "address; for example: %s", key, (unsigned)CONFIG_UNIX_PATH_MAX, k->example);
                return;
        }
        set_str(x, field_ptr(base, k->offset), path);
}

static void p_max_requests(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                           void *base) {
        int64_t n;
        if (!want_integer(x, k, v, key, &n))
                return;
        if (streq(k->table, "tpm")) {
                x->v_tpm_max_requests = v;
                x->tpm_max_requests = n;
        } else {
                x->v_aziot_tpmd = v;
                x->aziot_tpmd_max_requests = n;
        }
}

static void p_limits_per_uid(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                             void *base) {
        x->v_limits_per_uid = v;
        p_uint(x, k, v, key, base);
}

static void p_local_gateway(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                            void *base) {
        /* checked against the source after the walk (nested DPS is unsupported) */
        x->v_local_gateway = v;
}

/* A key tpmidd once read and no longer uses: existing files still load. */
static void p_obsolete(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                       void *base) {
        warn_v(x, v, key, "%s is ignored: no longer used (remove the line)", key);
}

static void p_uid(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        int64_t n;
        if (want_integer(x, k, v, key, &n))
                ((struct config_principal *)base)->uid = (uid_t)n;
}

/* An array of names from `names`, as bits. */
static bool want_name_array(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                            const char *const *names, size_t n_names, const char *what, uint32_t *out) {
        if (toml_type(v) != TOML_ARRAY) {
                error_v(x, v, key, "%s must be an array of strings, not %s; for example: %s", key,
                        type_phrase(toml_type(v)), k->example);
                return false;
        }
        uint32_t bits = 0;
        bool ok = true;
        for (size_t i = 0; i < toml_array_size(v); i++) {
                const struct toml_value *e = toml_array_at(v, i);
                if (toml_type(e) != TOML_STRING) {
                        error_v(x, e, key, "%s[%zu] must be a string, not %s; for example: %s", key, i,
                                type_phrase(toml_type(e)), k->example);
                        ok = false;
                        continue;
                }
                const char *s = toml_string(e, NULL);
                uint32_t bit = 0;
                if (names == op_names) {
                        int r = config_op_from_string(s);
                        if (r > 0)
                                bit = (uint32_t)r;
                } else
                        for (size_t j = 0; j < n_names; j++)
                                if (streq(s, names[j]))
                                        bit = 1u << j;
                if (!bit) {
                        const char *near = config_closest(s, names, n_names);
                        if (near)
                                error_v(x, e, key, "%s: \"%s\" is not %s; did you mean \"%s\"? For example: %s",
                                        key, s, what, near, k->example);
                        else
                                error_v(x, e, key, "%s: \"%s\" is not %s; for example: %s", key, s, what,
                                        k->example);
                        ok = false;
                        continue;
                }
                if (bits & bit && bit != CONFIG_OP_ALL)
                        warn_v(x, e, key, "%s lists \"%s\" twice", key, s);
                bits |= bit;
        }
        if (ok)
                *out = bits;
        return ok;
}

static void p_idtype(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                     void *base) {
        uint32_t bits;
        if (want_name_array(x, k, v, key, idtype_names, ELEMENTSOF(idtype_names),
                            "an identity type (device, module, local)", &bits))
                ((struct config_principal *)base)->idtype = bits;
}

static void p_allow(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                    void *base) {
        uint32_t bits;
        if (want_name_array(x, k, v, key, op_names, ELEMENTSOF(op_names),
                            "an operation (tpm.keys, tpm.import, tpm.sign, identity.get, identity.provisioning, "
                            "identity.token, identity.modules, reprovision, *)",
                            &bits)) {
                struct config_principal *p = base;
                p->allow = bits;
                p->allow_explicit = true;
        }
}

static const struct key_def schema[] = {
        /* top level */
        {"", "hostname", KEY_VALUE, p_hostname, CFG(hostname), 0, 0, "hostname = \"my-device\""},
        {"", "auto_reprovisioning_mode", KEY_VALUE, p_mode, CFG(auto_reprovisioning_mode), 0, 0,
         "auto_reprovisioning_mode = \"Dynamic\""},
        {"", "cloud_timeout_sec", KEY_VALUE, p_uint, CFG(cloud_timeout_sec), 1, 3600, "cloud_timeout_sec = 70"},
        {"", "cloud_retries", KEY_VALUE, p_uint, CFG(cloud_retries), 0, 100, "cloud_retries = 1"},
        {"", "prefer_module_identity_cache", KEY_VALUE, p_bool, CFG(prefer_module_identity_cache), 0, 0,
         "prefer_module_identity_cache = false"},
        {"", "state_dir", KEY_VALUE, p_path, CFG(state_dir), 0, 0, "state_dir = \"/var/lib/tpmidd\""},
        {"", "log_level", KEY_VALUE, p_log_level, CFG(log_level), 0, 0, "log_level = \"info\""},
        {"", "cloud_ca_bundle", KEY_VALUE, p_path, CFG(cloud_ca_bundle), 0, 0,
         "cloud_ca_bundle = \"/etc/ssl/certs/ca-certificates.crt\""},
        {"", "provisioning", KEY_TABLE, NULL, 0, 0, 0, "[provisioning]\nsource = \"dps\""},
        {"", "tpm", KEY_TABLE, NULL, 0, 0, 0, "[tpm]"},
        {"", "endpoints", KEY_TABLE, NULL, 0, 0, 0, "[endpoints]"},
        {"", "limits", KEY_TABLE, NULL, 0, 0, 0, "[limits]"},
        {"", "principal", KEY_TABLE_ARRAY, NULL, 0, 0, 0, "[[principal]]"},
        {"", "aziot_max_requests", KEY_TABLE, NULL, 0, 0, 0, "[aziot_max_requests]"},
        {"", "local_gateway_hostname", KEY_VALUE, p_local_gateway, 0, 0, 0, ""},
        {"", "parent_hostname", KEY_VALUE, p_local_gateway, 0, 0, 0, ""},
        /* Microsoft keys tpmidd does not use */
        {"", "trust_bundle_cert", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "allow_elevated_docker_permissions", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "homedir", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "dps_trust_bundle", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "agent", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "connect", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "listen", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "watchdog", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "moby_runtime", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "edge_ca", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "cert_issuance", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "aziot_keys", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "preloaded_keys", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "preloaded_certs", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "localid", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "image_garbage_collection", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "additional_info", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "mqtt_broker", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"", "imported_master_encryption_key", KEY_IGNORED, NULL, 0, 0, 0, ""},
        /* [provisioning] */
        {"provisioning", "source", KEY_VALUE, p_source, 0, 0, 0, "source = \"dps\""},
        {"provisioning", "global_endpoint", KEY_VALUE, p_https_url, CFG(provisioning.global_endpoint), 0, 0,
         "global_endpoint = \"https://global.azure-devices-provisioning.net/\""},
        {"provisioning", "id_scope", KEY_VALUE, p_id_scope, 0, 0, 0, "id_scope = \"0ne00A1B2C3\""},
        {"provisioning", "scope_id", KEY_VALUE, p_id_scope, 0, 0, 0, "id_scope = \"0ne00A1B2C3\""},
        {"provisioning", "payload", KEY_VALUE, p_payload, 0, 0, 0,
         "payload = { uri = \"file:///etc/aziot/dps-payload.json\" }"},
        {"provisioning", "attestation", KEY_TABLE, NULL, 0, 0, 0, "[provisioning.attestation]\nmethod = \"tpm\""},
        {"provisioning", "local_gateway_hostname", KEY_VALUE, p_local_gateway, 0, 0, 0, ""},
        {"provisioning", "iothub_hostname", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning", "device_id", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning", "authentication", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning", "dps_trust_bundle", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning", "connection_string", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning", "dynamic_reprovisioning", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning", "always_reprovision_on_startup", KEY_IGNORED, NULL, 0, 0, 0, ""},
        /* [provisioning.attestation] */
        {"provisioning.attestation", "method", KEY_VALUE, p_method, 0, 0, 0, "method = \"tpm\""},
        {"provisioning.attestation", "registration_id", KEY_VALUE, p_registration_id,
         CFG(provisioning.registration_id), 0, 0, "registration_id = \"my-device\""},
        {"provisioning.attestation", "symmetric_key", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning.attestation", "identity_cert", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning.attestation", "identity_pk", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"provisioning.attestation", "trust_bundle_cert", KEY_IGNORED, NULL, 0, 0, 0, ""},
        /* [tpm] */
        {"tpm", "tcti", KEY_VALUE, p_tcti, CFG(tpm.tcti), 0, 0, "tcti = \"device:/dev/tpmrm0\""},
        {"tpm", "auth_key_index", KEY_VALUE, p_auth_key_index, CFG(tpm.auth_key_index), 0,
         CONFIG_MAX_AUTH_KEY_INDEX, "auth_key_index = 0x00_01_00"},
        {"tpm", "max_requests", KEY_VALUE, p_max_requests, 0, 1, 4096, "max_requests = 10"},
        {"tpm", "hierarchy_authorization", KEY_TABLE, NULL, 0, 0, 0, "[tpm.hierarchy_authorization]"},
        {"tpm.hierarchy_authorization", "endorsement", KEY_VALUE, p_any_string, CFG(tpm.endorsement_auth), 0, 0,
         "endorsement = \"hello\""},
        {"tpm.hierarchy_authorization", "owner", KEY_VALUE, p_any_string, CFG(tpm.owner_auth), 0, 0,
         "owner = \"world\""},
        /* [aziot_max_requests] */
        {"aziot_max_requests", "tpmd", KEY_VALUE, p_max_requests, 0, 1, 4096, "tpmd = 10"},
        {"aziot_max_requests", "keyd", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"aziot_max_requests", "certd", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"aziot_max_requests", "identityd", KEY_IGNORED, NULL, 0, 0, 0, ""},
        /* [endpoints] */
        {"endpoints", "aziot_tpmd", KEY_VALUE, p_unix_uri, CFG(endpoints.tpmd_socket), 0, 0,
         "aziot_tpmd = \"unix:///run/aziot/tpmd.sock\""},
        {"endpoints", "aziot_identityd", KEY_VALUE, p_unix_uri, CFG(endpoints.identityd_socket), 0, 0,
         "aziot_identityd = \"unix:///run/aziot/identityd.sock\""},
        {"endpoints", "aziot_keyd", KEY_VALUE, p_unix_uri, CFG(endpoints.keyd_socket), 0, 0,
         "aziot_keyd = \"unix:///run/aziot/keyd.sock\""},
        {"endpoints", "aziot_certd", KEY_IGNORED, NULL, 0, 0, 0, ""},
        {"endpoints", "aziot_edged", KEY_IGNORED, NULL, 0, 0, 0, ""},
        /* [limits] */
        {"limits", "max_connections", KEY_VALUE, p_uint, CFG(limits.max_connections), 1, 4096,
         "max_connections = 64"},
        {"limits", "max_connections_per_uid", KEY_VALUE, p_limits_per_uid, CFG(limits.max_connections_per_uid), 1,
         4096, "max_connections_per_uid = 16"},
        {"limits", "max_header_bytes", KEY_VALUE, p_uint, CFG(limits.max_header_bytes), 1024, 65536,
         "max_header_bytes = 8192"},
        {"limits", "max_body_bytes", KEY_VALUE, p_uint, CFG(limits.max_body_bytes), 1024, 1048576,
         "max_body_bytes = 65536"},
        {"limits", "idle_timeout_sec", KEY_VALUE, p_uint, CFG(limits.idle_timeout_sec), 1, 3600,
         "idle_timeout_sec = 60"},
        {"limits", "request_timeout_sec", KEY_VALUE, p_uint, CFG(limits.request_timeout_sec), 1, 300,
         "request_timeout_sec = 5"},
        {"limits", "max_queued_tpm_jobs", KEY_VALUE, p_uint, CFG(limits.max_queued_tpm_jobs), 1, 65536,
         "max_queued_tpm_jobs = 256"},
        {"limits", "busy_poll_usec", KEY_VALUE, p_obsolete, 0, 0, 0, ""},
        /* [[principal]] */
        {"principal", "uid", KEY_VALUE, p_uid, 0, 0, 0xFFFFFFFE, "uid = 1001"},
        {"principal", "name", KEY_VALUE, p_non_empty, PRI(name), 0, 0, "name = \"my-app\""},
        {"principal", "idtype", KEY_VALUE, p_idtype, 0, 0, 0, "idtype = [\"device\"]"},
        {"principal", "allow", KEY_VALUE, p_allow, 0, 0, 0, "allow = [\"identity.get\", \"identity.token\"]"},
        {"principal", "localid", KEY_IGNORED, NULL, 0, 0, 0, ""},
};

static const struct key_def *schema_find(const char *table, const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(schema); i++)
                if (streq(schema[i].table, table) && streq(schema[i].name, name))
                        return &schema[i];
        return NULL;
}

enum config_value_shape config_schema_shape(const char *name, const char **example) {
        for (size_t i = 0; i < ELEMENTSOF(schema); i++) {
                const struct key_def *k = &schema[i];
                if (!streq(k->name, name) || k->kind != KEY_VALUE || !k->example[0])
                        continue;
                *example = k->example;
                if (k->parse == p_uint || k->parse == p_auth_key_index || k->parse == p_uid ||
                    k->parse == p_max_requests || k->parse == p_limits_per_uid)
                        return CONFIG_SHAPE_INTEGER;
                if (k->parse == p_idtype || k->parse == p_allow || k->parse == p_payload)
                        return CONFIG_SHAPE_STRUCTURED;
                return CONFIG_SHAPE_TEXT;
        }
        return CONFIG_SHAPE_UNKNOWN;
}

bool config_schema_is_top_value(const char *name) {
        const struct key_def *k = schema_find("", name);
        return k && k->kind == KEY_VALUE;
}

/* ------------------------------------------------------------------------ */
/* Walk */

static void walk_table(struct config_ctx *x, const struct toml_value *t, const char *spath, const char *dpath, void *base);

static void unknown_key(struct config_ctx *x, const char *spath, const char *key, const char *full,
                        const struct toml_value *v) {
        if (streq(key, SYNTAX_PLACEHOLDER_KEY) && streq(spath, ""))
                return; /* a header line that had a syntax error, already reported */

        /* a top-level key inside a table: TOML put it there because it came after a [header] */
        const struct key_def *top = *spath ? schema_find("", key) : NULL;
        if (top && top->kind != KEY_TABLE && top->kind != KEY_TABLE_ARRAY) {
                unsigned first = config_ctx_first_header(x, toml_origin(v));
                enum config_severity sev = top->kind == KEY_IGNORED ? CONFIG_SEVERITY_WARNING : CONFIG_SEVERITY_ERROR;
                const char *ex = top->example && *top->example ? top->example : key;
                if (first)
                        config_diag_v(x, sev, v, full,
                               "%s is inside [%s], so TOML reads it as %s and it has no effect there: move it "
                               "above the first [table] header (line %u), e.g. %s at the top of the file",
                               key, spath, full, first, ex);
                else
                        config_diag_v(x, sev, v, full,
                               "%s is inside [%s], so TOML reads it as %s and it has no effect there: move it "
                               "above the first [table] header, e.g. %s at the top of the file",
                               key, spath, full, ex);
                return;
        }

        const char *names[ELEMENTSOF(schema)];
        size_t n = 0;
        for (size_t i = 0; i < ELEMENTSOF(schema); i++)
                if (streq(schema[i].table, spath))
                        names[n++] = schema[i].name;
        const char *near = config_closest(key, names, n);
        const char *what = toml_type(v) == TOML_TABLE ? "table" : "key";
        if (near)
                warn_v(x, v, full, "unknown %s %s (tpmidd ignores it); did you mean %s%s%s?", what, full, spath,
                       *spath ? "." : "", near);
        else
                warn_v(x, v, full, "unknown %s %s (tpmidd ignores it)", what, full);
}

static void walk_principals(struct config_ctx *x, const struct key_def *k, const struct toml_value *v, const char *full) {
        if (toml_type(v) != TOML_ARRAY) {
                error_v(x, v, full, "principal must be an array of tables: write [[principal]] (double "
                        "brackets) once per principal, with uid = 1001 and name = \"my-app\"");
                return;
        }
        size_t n = toml_array_size(v);
        if (n > CONFIG_MAX_PRINCIPALS) {
                error_v(x, v, full, "more than %u [[principal]] entries", (unsigned)CONFIG_MAX_PRINCIPALS);
                return;
        }
        struct tpmid_config *c = x->c;
        for (size_t i = 0; i < n; i++) {
                const struct toml_value *e = toml_array_at(v, i);
                char dpath[64];
                snprintf(dpath, sizeof dpath, "principal[%zu]", i);
                if (toml_type(e) != TOML_TABLE) {
                        error_v(x, e, dpath, "%s must be a table; for example: [[principal]] uid = 1001 "
                                "name = \"my-app\"", dpath);
                        continue;
                }
                struct config_principal *arr =
                        realloc(c->principals, (c->n_principals + 1) * sizeof(struct config_principal));
                if (!arr) {
                        x->oom = true;
                        return;
                }
                c->principals = arr;
                struct config_principal *p = &arr[c->n_principals++];
                *p = (struct config_principal){.uid = (uid_t)-1};
                walk_table(x, e, "principal", dpath, p);
                if (!toml_table_get(e, "uid") && !config_ctx_was_blanked(x, "uid"))
                        error_v(x, e, dpath, "%s has no uid: add uid = 1001 (the numeric user id of the caller)",
                                dpath);
                if (!toml_table_get(e, "name") && !config_ctx_was_blanked(x, "name"))
                        error_v(x, e, dpath, "%s has no name: add name = \"my-app\"", dpath);
                if (!p->allow_explicit)
                        p->allow = config_role_default_allow(p->idtype);
        }
}

/* Inside a Microsoft table we otherwise skip: a top-level key appended at the
 * end of the file lands in the last table (often [moby_runtime]) and would be
 * ignored silently. Report those as misplaced. */
static void scan_ignored_table(struct config_ctx *x, const struct toml_value *t, const char *dpath, unsigned depth) {
        static const char *const top_keys[] = {
                "auto_reprovisioning_mode", "cloud_timeout_sec", "cloud_retries", "state_dir", "log_level", "cloud_ca_bundle",
                "prefer_module_identity_cache",
        };
        if (depth > TOML_MAX_DEPTH)
                return;
        for (size_t i = 0; i < toml_table_size(t) && !x->oom; i++) {
                const char *key = toml_table_key(t, i);
                const struct toml_value *v = toml_table_value(t, i);
                _cleanup_free_ char *full = join_key(dpath, key);
                if (!full) {
                        x->oom = true;
                        return;
                }
                if (toml_type(v) == TOML_TABLE) {
                        scan_ignored_table(x, v, full, depth + 1);
                        continue;
                }
                for (size_t j = 0; j < ELEMENTSOF(top_keys); j++)
                        if (streq(key, top_keys[j]))
                                unknown_key(x, dpath, key, full, v);
        }
}

static void walk_table(struct config_ctx *x, const struct toml_value *t, const char *spath, const char *dpath, void *base) {
        for (size_t i = 0; i < toml_table_size(t) && !x->oom; i++) {
                const char *key = toml_table_key(t, i);
                const struct toml_value *v = toml_table_value(t, i);
                _cleanup_free_ char *full = join_key(dpath, key);
                _cleanup_free_ char *sfull = join_key(spath, key);
                if (!full || !sfull) {
                        x->oom = true;
                        return;
                }
                const struct key_def *k = schema_find(spath, key);
                if (!k) {
                        unknown_key(x, spath, key, full, v);
                        continue;
                }
                switch (k->kind) {
                case KEY_VALUE:
                        k->parse(x, k, v, full, base);
                        break;
                case KEY_TABLE:
                        if (toml_type(v) != TOML_TABLE) {
                                error_v(x, v, full, "%s must be a table, not %s; for example:\n%s", full,
                                        type_phrase(toml_type(v)), k->example);
                                break;
                        }
                        if (streq(sfull, "provisioning"))
                                x->v_provisioning = v;
                        else if (streq(sfull, "provisioning.attestation"))
                                x->v_attestation = v;
                        walk_table(x, v, sfull, full, base);
                        break;
                case KEY_TABLE_ARRAY:
                        walk_principals(x, k, v, full);
                        break;
                case KEY_IGNORED:
                        info_v(x, v, full, "%s is a Microsoft setting that is ignored by tpmidd", full);
                        if (toml_type(v) == TOML_TABLE)
                                scan_ignored_table(x, v, full, 0);
                        break;
                }
        }
}

/* Checks across keys, after the walk. */
static void cross_checks(struct config_ctx *x) {
        struct tpmid_config *c = x->c;
        if (!x->v_provisioning) {
                if (!x->blanked_header && !config_ctx_was_blanked(x, "provisioning"))
                        /* as aziot-tpmd with an empty file: serve the TPM, provision nothing */
                        warn_v(x, NULL, "provisioning",
                               "[provisioning] is missing, so tpmidd serves the TPM API only and does not "
                               "provision; to provision add [provisioning] with source = \"dps\", "
                               "id_scope = \"0ne00A1B2C3\" and [provisioning.attestation] method = \"tpm\" "
                               "(or write source = \"none\" to silence this)");
        } else if (!x->v_source) {
                if (!config_ctx_was_blanked(x, "source"))
                        error_v(x, x->v_provisioning, "provisioning.source",
                                "provisioning.source is missing; for example: source = \"dps\"");
        } else if (!x->source_unsupported && c->provisioning.source == CONFIG_SOURCE_DPS) {
                if (!c->provisioning.id_scope && !x->v_id_scope && !x->v_scope_id && !config_ctx_was_blanked(x, "id_scope"))
                        error_v(x, x->v_provisioning, "provisioning.id_scope",
                                "provisioning.id_scope is required with source = \"dps\"; for example: "
                                "id_scope = \"0ne00A1B2C3\" (the ID scope on your DPS instance's Overview page)");
                if (!x->v_attestation) {
                        if (!x->blanked_header)
                                error_v(x, x->v_provisioning, "provisioning.attestation",
                                        "[provisioning.attestation] is required with source = \"dps\"; for "
                                        "example: [provisioning.attestation] method = \"tpm\"");
                } else if (!x->v_method && !config_ctx_was_blanked(x, "method"))
                        error_v(x, x->v_attestation, "provisioning.attestation.method",
                                "provisioning.attestation.method is missing; for example: method = \"tpm\"");
                if (x->v_local_gateway)
                        error_v(x, x->v_local_gateway, "local_gateway_hostname",
                                "DPS provisioning is not supported in nested mode: remove "
                                "local_gateway_hostname/parent_hostname, or use source = \"none\"");
        } else if (!x->source_unsupported && c->provisioning.source == CONFIG_SOURCE_NONE) {
                if (x->v_id_scope)
                        warn_v(x, x->v_id_scope, "provisioning.id_scope",
                               "provisioning.id_scope is ignored because source = \"none\"");
                if (x->v_attestation)
                        warn_v(x, x->v_attestation, "provisioning.attestation",
                               "[provisioning.attestation] is ignored because source = \"none\"");
                for (size_t i = 0; i < c->n_principals; i++)
                        if (c->principals[i].idtype & (CONFIG_IDTYPE_DEVICE | CONFIG_IDTYPE_MODULE))
                                error_v(x, NULL, "principal",
                                        "principal \"%s\" has a device or module idtype, which needs a provisioned "
                                        "device: use source = \"dps\" or drop the idtype",
                                        c->principals[i].name ? c->principals[i].name : "?");
        }

        /* per-uid connections: [limits] wins over the Microsoft spellings */
        const struct toml_value *mr = x->v_tpm_max_requests ? x->v_tpm_max_requests : x->v_aziot_tpmd;
        int64_t mrv = x->v_tpm_max_requests ? x->tpm_max_requests : x->aziot_tpmd_max_requests;
        if (x->v_tpm_max_requests && x->v_aziot_tpmd && x->tpm_max_requests != x->aziot_tpmd_max_requests)
                warn_v(x, x->v_aziot_tpmd, "aziot_max_requests.tpmd",
                       "aziot_max_requests.tpmd = %" PRId64 " differs from tpm.max_requests = %" PRId64
                       "; tpmidd uses tpm.max_requests", x->aziot_tpmd_max_requests, x->tpm_max_requests);
        if (mr) {
                if (x->v_limits_per_uid)
                        info_v(x, mr, NULL, "limits.max_connections_per_uid is set, so this max_requests is "
                               "ignored by tpmidd");
                else
                        c->limits.max_connections_per_uid = (unsigned)mrv;
        }
        if (c->limits.max_connections_per_uid > c->limits.max_connections && !x->v_limits_per_uid && !mr)
                /* only the default is larger: follow the global limit down */
                c->limits.max_connections_per_uid = c->limits.max_connections;
        else if (c->limits.max_connections_per_uid > c->limits.max_connections)
                error_v(x, x->v_limits_per_uid ? x->v_limits_per_uid : mr, "limits.max_connections_per_uid",
                        "limits.max_connections_per_uid (%u) is larger than limits.max_connections (%u); for "
                        "example: max_connections_per_uid = 16",
                        c->limits.max_connections_per_uid, c->limits.max_connections);

        /* principals: names and uids are keys of the table */
        for (size_t i = 0; i < c->n_principals; i++)
                for (size_t j = 0; j < i; j++) {
                        const struct config_principal *a = &c->principals[j], *b = &c->principals[i];
                        if (a->name && b->name && streq(a->name, b->name))
                                error_v(x, NULL, "principal",
                                        "two [[principal]] entries are named \"%s\"; names must be unique",
                                        b->name);
                        if (a->uid != (uid_t)-1 && a->uid == b->uid)
                                error_v(x, NULL, "principal",
                                        "two [[principal]] entries have uid = %u; each uid may appear once",
                                        (unsigned)b->uid);
                }
}

/* ------------------------------------------------------------------------ */
/* Construction */

struct tpmid_config *config_free(struct tpmid_config *c) {
        if (!c)
                return NULL;
        free(c->origin);
        free(c->hostname);
        free(c->provisioning.global_endpoint);
        free(c->provisioning.id_scope);
        free(c->provisioning.payload_path);
        free(c->provisioning.registration_id);
        free(c->tpm.tcti);
        if (c->tpm.endorsement_auth) {
                explicit_zero(c->tpm.endorsement_auth, strlen(c->tpm.endorsement_auth));
                free(c->tpm.endorsement_auth);
        }
        if (c->tpm.owner_auth) {
                explicit_zero(c->tpm.owner_auth, strlen(c->tpm.owner_auth));
                free(c->tpm.owner_auth);
        }
        free(c->endpoints.tpmd_socket);
        free(c->endpoints.identityd_socket);
        free(c->endpoints.keyd_socket);
        free(c->state_dir);
        free(c->cloud_ca_bundle);
        for (size_t i = 0; i < c->n_principals; i++)
                free(c->principals[i].name);
        free(c->principals);
        free(c->payload_pos.file);
        free(c->cloud_ca_bundle_pos.file);
        free(c);
        return NULL;
}

static struct tpmid_config *config_new(const char *origin) {
        struct tpmid_config *c = calloc(1, sizeof(*c));
        if (!c)
                return NULL;
        *c = (struct tpmid_config){
                .origin = strdup(origin ? origin : "<string>"),
                .auto_reprovisioning_mode = PROV_MODE_DYNAMIC,
                .cloud_timeout_sec = CONFIG_DEFAULT_CLOUD_TIMEOUT_SEC,
                .cloud_retries = CONFIG_DEFAULT_CLOUD_RETRIES,
                .provisioning.source = CONFIG_SOURCE_NONE, /* until [provisioning] says otherwise */
                .provisioning.global_endpoint = strdup(CONFIG_DEFAULT_GLOBAL_ENDPOINT),
                .provisioning.method = CONFIG_ATTESTATION_TPM,
                .tpm.tcti = strdup(CONFIG_DEFAULT_TCTI),
                .tpm.auth_key_index = CONFIG_DEFAULT_AUTH_KEY_INDEX,
                .tpm.endorsement_auth = strdup(""),
                .tpm.owner_auth = strdup(""),
                .endpoints.tpmd_socket = strdup(CONFIG_DEFAULT_TPMD_SOCKET),
                .endpoints.identityd_socket = strdup(CONFIG_DEFAULT_IDENTITYD_SOCKET),
                .endpoints.keyd_socket = strdup(CONFIG_DEFAULT_KEYD_SOCKET),
                .state_dir = strdup(CONFIG_DEFAULT_STATE_DIR),
                .log_level = LOG_INFO,
                .limits =
                        {
                                .max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS,
                                .max_connections_per_uid = CONFIG_DEFAULT_MAX_CONNECTIONS_PER_UID,
                                .max_header_bytes = CONFIG_DEFAULT_MAX_HEADER_BYTES,
                                .max_body_bytes = CONFIG_DEFAULT_MAX_BODY_BYTES,
                                .idle_timeout_sec = CONFIG_DEFAULT_IDLE_TIMEOUT_SEC,
                                .request_timeout_sec = CONFIG_DEFAULT_REQUEST_TIMEOUT_SEC,
                                .max_queued_tpm_jobs = CONFIG_DEFAULT_MAX_QUEUED_TPM_JOBS,
                        },
        };
        if (!c->origin || !c->provisioning.global_endpoint || !c->tpm.tcti || !c->tpm.endorsement_auth ||
            !c->tpm.owner_auth || !c->endpoints.tpmd_socket || !c->endpoints.identityd_socket || !c->endpoints.keyd_socket || !c->state_dir)
                return config_free(c);
        return c;
}

int config_ctx_init(struct config_ctx *x, struct config_diags *diags, const char *origin) {
        *x = (struct config_ctx){.diags = diags, .origin = origin};
        x->c = config_new(origin);
        return x->c ? 0 : -ENOMEM;
}

int config_finish(struct config_ctx *x, const struct toml_value *root, size_t diag_from, size_t errors_before,
                  struct tpmid_config **ret) {
        if (root) {
                if (toml_type(root) == TOML_TABLE)
                        walk_table(x, root, "", "", x->c);
                if (!x->oom)
                        cross_checks(x);
        }
        if (x->oom)
                return -ENOMEM;
        config_diags_sort(x, diag_from);
        if (x->diags->n_errors > errors_before || !root)
                return -EINVAL;
        *ret = TAKE_PTR(x->c);
        return 0;
}

int config_from_toml(const struct toml_value *root, const char *origin, struct tpmid_config **ret,
                     struct config_diags *diags) {
        struct config_ctx x;
        size_t from = diags->n, errors = diags->n_errors;
        if (config_ctx_init(&x, diags, origin) < 0) {
                config_ctx_done(&x);
                return -ENOMEM;
        }
        int r = config_finish(&x, root, from, errors, ret);
        config_ctx_done(&x);
        return r;
}

int config_parse_string(const char *text, size_t len, const char *origin, struct tpmid_config **ret,
                        struct config_diags *diags) {
        if (!origin)
                origin = "<string>";
        struct config_ctx x;
        size_t from = diags->n, errors = diags->n_errors;
        if (config_ctx_init(&x, diags, origin) < 0) {
                config_ctx_done(&x);
                return -ENOMEM;
        }
        struct toml_value *root = NULL;
        int r = config_parse_text(&x, text, len, origin, &root);
        if (r == -ENOMEM) {
                config_ctx_done(&x);
                return r;
        }
        r = config_finish(&x, root, from, errors, ret);
        toml_free(root);
        config_ctx_done(&x);
        return r;
}

const struct config_principal *config_principal_for_uid(const struct tpmid_config *c, uid_t uid) {
        for (size_t i = 0; i < c->n_principals; i++)
                if (c->principals[i].uid == uid)
                        return &c->principals[i];
        return NULL;
}

bool config_declares_iot_edge(const struct tpmid_config *c) {
        for (size_t i = 0; c && i < c->n_principals; i++) {
                const struct config_principal *p = &c->principals[i];
                if ((p->idtype & CONFIG_IDTYPE_MODULE) ||
                    (p->idtype == 0 && p->name && streq(p->name, CONFIG_EDGED_PRINCIPAL_NAME)))
                        return true;
        }
        return false;
}

uint32_t config_role_default_allow(unsigned idtype) {
        if (idtype == 0)
                return CONFIG_OP_ALL;
        return CONFIG_OP_IDENTITY_GET | CONFIG_OP_IDENTITY_PROVISIONING | CONFIG_OP_IDENTITY_TOKEN;
}

