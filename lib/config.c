/* tpmidd configuration: TOML tree → validated struct tpmid_config.
 *
 * Shape: a table of known keys (schema) drives a walk over the parsed tree;
 * each key has a parser that checks type and value and writes one field.
 * Nothing stops at the first problem: every finding becomes a diagnostic, so
 * one run of `tpmidctl config check` shows all of them.
 *
 * TOML syntax errors stop lib/toml at the first one. To still report all of
 * a file's mistakes in one pass, the offending line is blanked (a bad table
 * header becomes an anonymous array-of-tables entry the walk skips) and the
 * text parsed again, up to CONFIG_MAX_SYNTAX_ERRORS times. Checks that would
 * only repeat a syntax error (e.g. "id_scope is missing" after the id_scope
 * line was blanked) are suppressed.
 *
 * Ownership: goto-free, cleanup attributes for locals; the context owns the
 * config under construction until it is handed to the caller. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "util.h"

#define CONFIG_MAX_SYNTAX_ERRORS 50 /* syntax errors reported per file before giving up */
#define CONFIG_MAX_SUGGEST_DISTANCE 2 /* edit distance for "did you mean" */
#define CONFIG_MAX_STRING_BYTES 4096  /* bytes of any string value */
#define CONFIG_UNIX_PATH_MAX 107      /* sizeof(sockaddr_un.sun_path) - 1 */
#define SYNTAX_PLACEHOLDER_HEADER "[[__tpmidd_syntax_error__]]"
#define SYNTAX_PLACEHOLDER_KEY "__tpmidd_syntax_error__"

/* ------------------------------------------------------------------------ */
/* Names */

static const char *const mode_names[_CONFIG_REPROVISION_MAX] = {
        [CONFIG_REPROVISION_DYNAMIC] = "Dynamic",
        [CONFIG_REPROVISION_ALWAYS_ON_STARTUP] = "AlwaysOnStartup",
        [CONFIG_REPROVISION_ON_ERROR_ONLY] = "OnErrorOnly",
};
static const char *const source_names[_CONFIG_SOURCE_MAX] = {
        [CONFIG_SOURCE_DPS] = "dps",
        [CONFIG_SOURCE_NONE] = "none",
};
static const char *const log_level_names[_CONFIG_LOG_MAX] = {
        [CONFIG_LOG_ERROR] = "error",
        [CONFIG_LOG_WARN] = "warn",
        [CONFIG_LOG_INFO] = "info",
        [CONFIG_LOG_DEBUG] = "debug",
};
static const char *const op_names[] = {
        "tpm.keys", "tpm.import", "tpm.sign", "identity.get", "identity.provisioning",
        "identity.token", "identity.modules", "reprovision",
};
static const char *const idtype_names[] = {"device", "module", "local"};

const char *config_reprovisioning_mode_to_string(enum config_reprovisioning_mode m) {
        if ((unsigned)m >= _CONFIG_REPROVISION_MAX)
                return NULL;
        return mode_names[m];
}

int config_reprovisioning_mode_from_string(const char *s) {
        for (size_t i = 0; i < ELEMENTSOF(mode_names); i++)
                if (s && streq(s, mode_names[i]))
                        return (int)i;
        return -EINVAL;
}

const char *config_provisioning_source_to_string(enum config_provisioning_source s) {
        if ((unsigned)s >= _CONFIG_SOURCE_MAX)
                return NULL;
        return source_names[s];
}

const char *config_log_level_to_string(enum config_log_level l) {
        if ((unsigned)l >= _CONFIG_LOG_MAX)
                return NULL;
        return log_level_names[l];
}

int config_log_level_from_string(const char *s) {
        for (size_t i = 0; i < ELEMENTSOF(log_level_names); i++)
                if (s && streq(s, log_level_names[i]))
                        return (int)i;
        return -EINVAL;
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

/* ------------------------------------------------------------------------ */
/* Small string helpers */

/* Levenshtein distance, capped: strings longer than 63 bytes count as far. */
static unsigned edit_distance(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        if (la > 63 || lb > 63)
                return UINT_MAX;
        unsigned row[64], prev[64];
        for (size_t j = 0; j <= lb; j++)
                prev[j] = (unsigned)j;
        for (size_t i = 1; i <= la; i++) {
                row[0] = (unsigned)i;
                for (size_t j = 1; j <= lb; j++) {
                        unsigned cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
                        unsigned best = prev[j - 1] + cost;
                        if (prev[j] + 1 < best)
                                best = prev[j] + 1;
                        if (row[j - 1] + 1 < best)
                                best = row[j - 1] + 1;
                        row[j] = best;
                }
                memcpy(prev, row, sizeof(unsigned) * (lb + 1));
        }
        return prev[lb];
}

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
/* Diagnostics */

struct file_info {
        char *origin;
        char *text; /* as read (before any line was blanked) */
        size_t len;
};

struct ctx {
        struct config_diags *diags;
        struct tpmid_config *c;
        const char *origin; /* main file, for diagnostics without a value */
        bool oom;

        struct file_info *files;
        size_t n_files;

        /* keys whose line had a syntax error and was blanked */
        char **blanked;
        size_t n_blanked;
        bool blanked_header;

        /* seen while walking, for cross-key checks */
        const struct toml_value *v_provisioning, *v_attestation, *v_source, *v_method, *v_id_scope,
                *v_scope_id, *v_local_gateway, *v_limits_per_uid, *v_tpm_max_requests, *v_aziot_tpmd;
        int64_t tpm_max_requests, aziot_tpmd_max_requests;
        bool source_unsupported;
};

static void diags_add(struct ctx *x, enum config_severity sev, const char *file, unsigned line, unsigned col,
                      const char *key, char *message /* consumed */) {
        struct config_diags *d = x->diags;
        switch (sev) {
        case CONFIG_SEVERITY_ERROR:
                d->n_errors++;
                break;
        case CONFIG_SEVERITY_WARNING:
                d->n_warnings++;
                break;
        case CONFIG_SEVERITY_INFO:
                d->n_infos++;
                break;
        }
        if (!message) {
                x->oom = true;
                return;
        }
        if (d->n >= CONFIG_MAX_DIAGS) {
                free(message);
                return;
        }
        struct config_diag *items = realloc(d->items, (d->n + 1) * sizeof(*items));
        if (!items) {
                free(message);
                x->oom = true;
                return;
        }
        d->items = items;
        struct config_diag *g = &items[d->n];
        *g = (struct config_diag){
                .severity = sev,
                .file = strdup(file ? file : (x->origin ? x->origin : "<config>")),
                .line = line,
                .col = col,
                .key = key ? strdup(key) : NULL,
                .message = message,
        };
        if (!g->file || (key && !g->key)) {
                free(g->file);
                free(g->key);
                free(g->message);
                x->oom = true;
                return;
        }
        d->n++;
}

_printf_(7, 8) static void diag_at(struct ctx *x, enum config_severity sev, const char *file, unsigned line,
                                   unsigned col, const char *key, const char *fmt, ...) {
        va_list ap;
        char *m = NULL;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        diags_add(x, sev, file, line, col, key, m);
}

_printf_(5, 6) static void diag_v(struct ctx *x, enum config_severity sev, const struct toml_value *v,
                                  const char *key, const char *fmt, ...) {
        va_list ap;
        char *m = NULL;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        if (v)
                diags_add(x, sev, toml_origin(v), toml_line(v), toml_col(v), key, m);
        else
                diags_add(x, sev, x->origin, 0, 0, key, m);
}

#define error_v(x, v, key, ...) diag_v(x, CONFIG_SEVERITY_ERROR, v, key, __VA_ARGS__)
#define warn_v(x, v, key, ...) diag_v(x, CONFIG_SEVERITY_WARNING, v, key, __VA_ARGS__)
#define info_v(x, v, key, ...) diag_v(x, CONFIG_SEVERITY_INFO, v, key, __VA_ARGS__)

void config_diags_free(struct config_diags *diags) {
        if (!diags)
                return;
        for (size_t i = 0; i < diags->n; i++) {
                free(diags->items[i].file);
                free(diags->items[i].key);
                free(diags->items[i].message);
        }
        free(diags->items);
        *diags = (struct config_diags){0};
}

char *config_format_diag(const struct config_diag *d) {
        static const char *const sev[] = {
                [CONFIG_SEVERITY_ERROR] = "error",
                [CONFIG_SEVERITY_WARNING] = "warning",
                [CONFIG_SEVERITY_INFO] = "note",
        };
        char *s = NULL;
        const char *sv = (unsigned)d->severity < ELEMENTSOF(sev) ? sev[d->severity] : "error";
        int r;
        if (d->line > 0 && d->col > 0)
                r = asprintf(&s, "%s:%u:%u: %s: %s", d->file, d->line, d->col, sv, d->message);
        else if (d->line > 0)
                r = asprintf(&s, "%s:%u: %s: %s", d->file, d->line, sv, d->message);
        else
                r = asprintf(&s, "%s: %s: %s", d->file, sv, d->message);
        return r < 0 ? NULL : s;
}

static const struct file_info *file_find(const struct ctx *x, const char *origin) {
        for (size_t i = 0; i < x->n_files; i++)
                if (streq_ptr(x->files[i].origin, origin))
                        return &x->files[i];
        return NULL;
}

static size_t file_index(const struct ctx *x, const char *origin) {
        for (size_t i = 0; i < x->n_files; i++)
                if (streq_ptr(x->files[i].origin, origin))
                        return i;
        return SIZE_MAX;
}

/* Sort the diagnostics added since index `from` by file (load order), line,
 * column; positionless ones last in their file; insertion order breaks ties
 * (insertion sort: lists are short and this keeps it stable). */
static bool diag_before(const struct ctx *x, const struct config_diag *a, const struct config_diag *b) {
        size_t fa = file_index(x, a->file), fb = file_index(x, b->file);
        if (fa != fb)
                return fa < fb;
        unsigned la = a->line ? a->line : UINT_MAX, lb = b->line ? b->line : UINT_MAX;
        if (la != lb)
                return la < lb;
        return a->col < b->col;
}

static void diags_sort(struct ctx *x, size_t from) {
        struct config_diag *it = x->diags->items;
        for (size_t i = from + 1; i < x->diags->n; i++) {
                struct config_diag t = it[i];
                size_t j = i;
                while (j > from && diag_before(x, &t, &it[j - 1])) {
                        it[j] = it[j - 1];
                        j--;
                }
                it[j] = t;
        }
}

static bool was_blanked(const struct ctx *x, const char *leaf) {
        for (size_t i = 0; i < x->n_blanked; i++)
                if (streq(x->blanked[i], leaf))
                        return true;
        return false;
}

/* ------------------------------------------------------------------------ */
/* Text helpers for syntax errors and misplaced keys */

/* Find line n (1-based) in text: returns its start and sets *len (without newline), or NULL. */
static const char *text_line(const char *text, size_t tlen, unsigned n, size_t *len) {
        const char *p = text, *end = text + tlen;
        for (unsigned l = 1; l < n; l++) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl)
                        return NULL;
                p = nl + 1;
        }
        if (p > end)
                return NULL;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        *len = (size_t)((nl ? nl : end) - p);
        if (*len > 0 && p[*len - 1] == '\r')
                (*len)--;
        return p;
}

static bool line_is_header(const char *l, size_t len) {
        size_t i = 0;
        while (i < len && (l[i] == ' ' || l[i] == '\t'))
                i++;
        return i < len && l[i] == '[';
}

/* Line number of the first [table] header at or after line 1 and before
 * `before` (0 = anywhere); 0 if none. When hdr is non-NULL, the text of the
 * LAST header before `before` is copied to it instead of the first. */
static unsigned find_header(const char *text, size_t tlen, unsigned before, bool last, char *hdr, size_t hdr_size) {
        unsigned found = 0;
        const char *p = text, *end = text + tlen;
        for (unsigned n = 1; p <= end && (before == 0 || n < before); n++) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t len = (size_t)((nl ? nl : end) - p);
                if (line_is_header(p, len)) {
                        found = n;
                        if (hdr && hdr_size > 0) {
                                size_t i = 0, k = 0;
                                while (i < len && (p[i] == ' ' || p[i] == '\t'))
                                        i++;
                                /* up to the closing bracket(s), not a trailing comment */
                                while (i < len && k + 1 < hdr_size && p[i] != '#') {
                                        hdr[k++] = p[i];
                                        if (p[i] == ']' && (i + 1 >= len || p[i + 1] != ']'))
                                                break;
                                        i++;
                                }
                                hdr[k] = 0;
                        }
                        if (!last)
                                return found;
                }
                if (!nl)
                        break;
                p = nl + 1;
        }
        return found;
}

/* ------------------------------------------------------------------------ */
/* Schema */

struct key_def;
typedef void (*parse_fn)(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void set_str(struct ctx *x, char **field, const char *s) {
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
static bool want_string(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static bool want_integer(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

/* Suggest the closest of names[] within CONFIG_MAX_SUGGEST_DISTANCE, or NULL. */
static const char *closest(const char *s, const char *const *names, size_t n) {
        const char *best = NULL;
        unsigned bd = CONFIG_MAX_SUGGEST_DISTANCE + 1;
        for (size_t i = 0; i < n; i++) {
                unsigned d = edit_distance(s, names[i]);
                if (d < bd) {
                        bd = d;
                        best = names[i];
                }
        }
        return best;
}

/* --- value parsers ------------------------------------------------------ */

static void p_uint(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        int64_t n;
        if (want_integer(x, k, v, key, &n))
                *(unsigned *)field_ptr(base, k->offset) = (unsigned)n;
}

static void p_auth_key_index(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                             void *base) {
        int64_t n;
        if (want_integer(x, k, v, key, &n))
                *(uint32_t *)field_ptr(base, k->offset) = (uint32_t)n;
}

static void p_hostname(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_path(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
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

static void p_any_string(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                         void *base) {
        const char *s;
        if (want_string(x, k, v, key, &s))
                set_str(x, field_ptr(base, k->offset), s);
}

static void p_tcti(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
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

static void p_non_empty(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_mode(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        int m = config_reprovisioning_mode_from_string(s);
        if (m < 0) {
                const char *near = closest(s, mode_names, ELEMENTSOF(mode_names));
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
        *(enum config_reprovisioning_mode *)field_ptr(base, k->offset) = (enum config_reprovisioning_mode)m;
}

static void p_log_level(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                        void *base) {
        const char *s;
        if (!want_string(x, k, v, key, &s))
                return;
        int l = config_log_level_from_string(s);
        if (l < 0) {
                error_v(x, v, key, "%s \"%s\" is not a level: use \"error\", \"warn\", \"info\" or \"debug\"; "
                        "for example: %s", key, s, k->example);
                return;
        }
        *(enum config_log_level *)field_ptr(base, k->offset) = (enum config_log_level)l;
}

static void p_source(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_method(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_https_url(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_id_scope(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_registration_id(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char)tolower((unsigned char)c);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

static void p_payload(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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
                        int hi = p[1] ? hexval(p[1]) : -1, lo = (hi >= 0 && p[2]) ? hexval(p[2]) : -1;
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

static void p_unix_uri(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_max_requests(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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

static void p_limits_per_uid(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                             void *base) {
        x->v_limits_per_uid = v;
        p_uint(x, k, v, key, base);
}

static void p_local_gateway(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                            void *base) {
        /* checked against the source after the walk (nested DPS is unsupported) */
        x->v_local_gateway = v;
}

static void p_uid(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key, void *base) {
        int64_t n;
        if (want_integer(x, k, v, key, &n))
                ((struct config_principal *)base)->uid = (uid_t)n;
}

/* An array of names from `names`, as bits. */
static bool want_name_array(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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
                        const char *near = closest(s, names, n_names);
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

static void p_idtype(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
                     void *base) {
        uint32_t bits;
        if (want_name_array(x, k, v, key, idtype_names, ELEMENTSOF(idtype_names),
                            "an identity type (device, module, local)", &bits))
                ((struct config_principal *)base)->idtype = bits;
}

static void p_allow(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *key,
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
        {"", "prefer_module_identity_cache", KEY_IGNORED, NULL, 0, 0, 0, ""},
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
        {"endpoints", "aziot_keyd", KEY_IGNORED, NULL, 0, 0, 0, ""},
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
        {"limits", "busy_poll_usec", KEY_VALUE, p_uint, CFG(limits.busy_poll_usec), 0, CONFIG_MAX_BUSY_POLL_USEC,
         "busy_poll_usec = 50"},
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

/* ------------------------------------------------------------------------ */
/* Walk */

static void walk_table(struct ctx *x, const struct toml_value *t, const char *spath, const char *dpath, void *base);

static void unknown_key(struct ctx *x, const char *spath, const char *key, const char *full,
                        const struct toml_value *v) {
        if (streq(key, SYNTAX_PLACEHOLDER_KEY) && streq(spath, ""))
                return; /* a header line that had a syntax error, already reported */

        /* a top-level key inside a table: TOML put it there because it came after a [header] */
        const struct key_def *top = *spath ? schema_find("", key) : NULL;
        if (top && top->kind != KEY_TABLE && top->kind != KEY_TABLE_ARRAY) {
                const struct file_info *f = file_find(x, toml_origin(v));
                unsigned first = f ? find_header(f->text, f->len, 0, false, NULL, 0) : 0;
                enum config_severity sev = top->kind == KEY_IGNORED ? CONFIG_SEVERITY_WARNING : CONFIG_SEVERITY_ERROR;
                const char *ex = top->example && *top->example ? top->example : key;
                if (first)
                        diag_v(x, sev, v, full,
                               "%s is inside [%s], so TOML reads it as %s and it has no effect there: move it "
                               "above the first [table] header (line %u), e.g. %s at the top of the file",
                               key, spath, full, first, ex);
                else
                        diag_v(x, sev, v, full,
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
        const char *near = closest(key, names, n);
        const char *what = toml_type(v) == TOML_TABLE ? "table" : "key";
        if (near)
                warn_v(x, v, full, "unknown %s %s (tpmidd ignores it); did you mean %s%s%s?", what, full, spath,
                       *spath ? "." : "", near);
        else
                warn_v(x, v, full, "unknown %s %s (tpmidd ignores it)", what, full);
}

static void walk_principals(struct ctx *x, const struct key_def *k, const struct toml_value *v, const char *full) {
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
                if (!toml_table_get(e, "uid") && !was_blanked(x, "uid"))
                        error_v(x, e, dpath, "%s has no uid: add uid = 1001 (the numeric user id of the caller)",
                                dpath);
                if (!toml_table_get(e, "name") && !was_blanked(x, "name"))
                        error_v(x, e, dpath, "%s has no name: add name = \"my-app\"", dpath);
                if (!p->allow_explicit)
                        p->allow = config_role_default_allow(p->idtype);
        }
}

/* Inside a Microsoft table we otherwise skip: a top-level key appended at the
 * end of the file lands in the last table (often [moby_runtime]) and would be
 * ignored silently. Report those as misplaced. */
static void scan_ignored_table(struct ctx *x, const struct toml_value *t, const char *dpath, unsigned depth) {
        static const char *const top_keys[] = {
                "auto_reprovisioning_mode", "cloud_timeout_sec", "cloud_retries", "state_dir", "log_level", "cloud_ca_bundle",
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

static void walk_table(struct ctx *x, const struct toml_value *t, const char *spath, const char *dpath, void *base) {
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
static void cross_checks(struct ctx *x) {
        struct tpmid_config *c = x->c;
        if (!x->v_provisioning) {
                if (!x->blanked_header && !was_blanked(x, "provisioning"))
                        /* as aziot-tpmd with an empty file: serve the TPM, provision nothing */
                        warn_v(x, NULL, "provisioning",
                               "[provisioning] is missing, so tpmidd serves the TPM API only and does not "
                               "provision; to provision add [provisioning] with source = \"dps\", "
                               "id_scope = \"0ne00A1B2C3\" and [provisioning.attestation] method = \"tpm\" "
                               "(or write source = \"none\" to silence this)");
        } else if (!x->v_source) {
                if (!was_blanked(x, "source"))
                        error_v(x, x->v_provisioning, "provisioning.source",
                                "provisioning.source is missing; for example: source = \"dps\"");
        } else if (!x->source_unsupported && c->provisioning.source == CONFIG_SOURCE_DPS) {
                if (!c->provisioning.id_scope && !x->v_id_scope && !x->v_scope_id && !was_blanked(x, "id_scope"))
                        error_v(x, x->v_provisioning, "provisioning.id_scope",
                                "provisioning.id_scope is required with source = \"dps\"; for example: "
                                "id_scope = \"0ne00A1B2C3\" (the ID scope on your DPS instance's Overview page)");
                if (!x->v_attestation) {
                        if (!x->blanked_header)
                                error_v(x, x->v_provisioning, "provisioning.attestation",
                                        "[provisioning.attestation] is required with source = \"dps\"; for "
                                        "example: [provisioning.attestation] method = \"tpm\"");
                } else if (!x->v_method && !was_blanked(x, "method"))
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
                .auto_reprovisioning_mode = CONFIG_REPROVISION_DYNAMIC,
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
                .state_dir = strdup(CONFIG_DEFAULT_STATE_DIR),
                .log_level = CONFIG_LOG_INFO,
                .limits =
                        {
                                .max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS,
                                .max_connections_per_uid = CONFIG_DEFAULT_MAX_CONNECTIONS_PER_UID,
                                .max_header_bytes = CONFIG_DEFAULT_MAX_HEADER_BYTES,
                                .max_body_bytes = CONFIG_DEFAULT_MAX_BODY_BYTES,
                                .idle_timeout_sec = CONFIG_DEFAULT_IDLE_TIMEOUT_SEC,
                                .request_timeout_sec = CONFIG_DEFAULT_REQUEST_TIMEOUT_SEC,
                                .max_queued_tpm_jobs = CONFIG_DEFAULT_MAX_QUEUED_TPM_JOBS,
                                .busy_poll_usec = CONFIG_DEFAULT_BUSY_POLL_USEC,
                        },
        };
        if (!c->origin || !c->provisioning.global_endpoint || !c->tpm.tcti || !c->tpm.endorsement_auth ||
            !c->tpm.owner_auth || !c->endpoints.tpmd_socket || !c->endpoints.identityd_socket || !c->state_dir)
                return config_free(c);
        return c;
}

static void ctx_done(struct ctx *x) {
        for (size_t i = 0; i < x->n_files; i++) {
                free(x->files[i].origin);
                free(x->files[i].text);
        }
        free(x->files);
        for (size_t i = 0; i < x->n_blanked; i++)
                free(x->blanked[i]);
        free(x->blanked);
        config_free(x->c);
}

static int ctx_add_file(struct ctx *x, const char *origin, const char *text, size_t len) {
        struct file_info *f = realloc(x->files, (x->n_files + 1) * sizeof(*f));
        if (!f)
                return -ENOMEM;
        x->files = f;
        f = &f[x->n_files];
        f->origin = strdup(origin);
        f->text = malloc(len + 1);
        f->len = len;
        if (!f->origin || !f->text) {
                free(f->origin);
                free(f->text);
                return -ENOMEM;
        }
        memcpy(f->text, text, len);
        f->text[len] = 0;
        x->n_files++;
        return 0;
}

static void ctx_add_blanked(struct ctx *x, const char *key, size_t len) {
        char **b = realloc(x->blanked, (x->n_blanked + 1) * sizeof(char *));
        if (!b) {
                x->oom = true;
                return;
        }
        x->blanked = b;
        b[x->n_blanked] = strndup(key, len);
        if (!b[x->n_blanked]) {
                x->oom = true;
                return;
        }
        x->n_blanked++;
}

/* Explain a syntax error at line `line` of `l` (len bytes); records one diagnostic. */
static void syntax_diag(struct ctx *x, const struct file_info *f, const char *origin, const struct toml_error *err,
                        const char *l, size_t len) {
        /* `key = value`? */
        size_t i = 0;
        while (i < len && (l[i] == ' ' || l[i] == '\t'))
                i++;
        size_t ks = i;
        while (i < len && (isalnum((unsigned char)l[i]) || l[i] == '_' || l[i] == '-' || l[i] == '.'))
                i++;
        size_t ke = i;
        while (i < len && (l[i] == ' ' || l[i] == '\t'))
                i++;
        bool assign = ke > ks && i < len && l[i] == '=';
        char key[128] = "", val[128] = "";
        size_t vcol = 0;
        if (assign) {
                i++;
                while (i < len && (l[i] == ' ' || l[i] == '\t'))
                        i++;
                size_t vs = i;
                while (i < len && (isalnum((unsigned char)l[i]) || l[i] == '_' || l[i] == '-' || l[i] == '.' ||
                                   l[i] == '/' || l[i] == ':'))
                        i++;
                size_t ve = i;
                while (i < len && (l[i] == ' ' || l[i] == '\t'))
                        i++;
                bool bare = ve > vs && isalpha((unsigned char)l[vs]) && (i == len || l[i] == '#') &&
                            ke - ks < sizeof key && ve - vs < sizeof val;
                if (bare) {
                        memcpy(key, l + ks, ke - ks);
                        key[ke - ks] = 0;
                        memcpy(val, l + vs, ve - vs);
                        val[ve - vs] = 0;
                        vcol = vs + 1;
                        if (streq(val, "true") || streq(val, "false") || streq(val, "inf") || streq(val, "nan"))
                                key[0] = 0;
                }
        }
        if (!key[0]) {
                diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, err->col, NULL, "TOML syntax error: %s",
                        err->msg);
                return;
        }

        /* a bare word where the schema wants a number or a list: say so */
        const struct key_def *any = NULL;
        for (size_t j = 0; j < ELEMENTSOF(schema) && !any; j++)
                if (streq(schema[j].name, key) && schema[j].kind == KEY_VALUE && schema[j].example[0])
                        any = &schema[j];
        if (any && (any->parse == p_uint || any->parse == p_auth_key_index || any->parse == p_uid ||
                    any->parse == p_max_requests || any->parse == p_limits_per_uid)) {
                diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                        "%s = %s: %s must be an integer (no quotes); for example: %s", key, val, key, any->example);
                return;
        }
        if (any && (any->parse == p_idtype || any->parse == p_allow || any->parse == p_payload)) {
                diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                        "%s = %s is not valid TOML; for example: %s", key, val, any->example);
                return;
        }

        /* a bare word: TOML needs quotes around text */
        const char *fixed = val;
        const struct key_def *top = schema_find("", key);
        if (streq(key, "auto_reprovisioning_mode")) {
                for (size_t m = 0; m < ELEMENTSOF(mode_names); m++)
                        if (strcasecmp(val, mode_names[m]) == 0)
                                fixed = mode_names[m];
                if (fixed == val) {
                        const char *near = closest(val, mode_names, ELEMENTSOF(mode_names));
                        fixed = near ? near : "Dynamic";
                }
        }
        char hdr[128] = "";
        unsigned first = 0;
        if (top && top->kind == KEY_VALUE && f) {
                first = find_header(f->text, f->len, err->line, false, NULL, 0);
                if (first)
                        (void)find_header(f->text, f->len, err->line, true, hdr, sizeof hdr);
        }
        if (first)
                diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                        "%s = %s: text values need double quotes in TOML: write %s = \"%s\". Also move the "
                        "line above the first [table] header (line %u); here it is under %s and would be read "
                        "as part of that table",
                        key, val, key, fixed, first, hdr);
        else
                diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                        "%s = %s: text values need double quotes in TOML: write %s = \"%s\"", key, val, key, fixed);
}

/* Parse one file's text, recovering from syntax errors (see top of file).
 * Returns 0 with *ret set (even after recovered syntax errors, which are in
 * the diagnostics), -EINVAL when no tree could be built, -ENOMEM. */
static int parse_text(struct ctx *x, const char *text, size_t len, const char *origin, struct toml_value **ret) {
        int r = ctx_add_file(x, origin, text, len);
        if (r < 0)
                return r;
        const struct file_info *f = &x->files[x->n_files - 1];
        _cleanup_free_ char *buf = malloc(len + 1);
        if (!buf)
                return -ENOMEM;
        memcpy(buf, text, len);
        buf[len] = 0;
        size_t blen = len;
        unsigned last_line = 0;
        for (unsigned tries = 0; tries <= CONFIG_MAX_SYNTAX_ERRORS; tries++) {
                struct toml_value *root = NULL;
                struct toml_error err = {0};
                r = toml_parse(buf, blen, origin, &root, &err);
                if (r == 0) {
                        *ret = root;
                        return 0;
                }
                if (r == -ENOMEM)
                        return r;
                if (r == -E2BIG) {
                        diag_at(x, CONFIG_SEVERITY_ERROR, origin, err.line, err.col, NULL,
                                "%s (limit: %u bytes, nesting depth %u)", err.msg, (unsigned)TOML_MAX_INPUT_BYTES,
                                (unsigned)TOML_MAX_DEPTH);
                        return -EINVAL;
                }
                size_t ll = 0;
                const char *l = err.line > 0 ? text_line(buf, blen, err.line, &ll) : NULL;
                if (!l || err.line == last_line || tries == CONFIG_MAX_SYNTAX_ERRORS) {
                        /* cannot recover further: report this one and stop */
                        diag_at(x, CONFIG_SEVERITY_ERROR, origin, err.line, err.col, NULL, "TOML syntax error: %s%s",
                                err.msg, tries > 0 ? " (further syntax errors in this file are not reported)" : "");
                        return -EINVAL;
                }
                syntax_diag(x, f, origin, &err, l, ll);
                last_line = err.line;

                /* remember the key, so "missing key" checks do not repeat this error */
                bool header = line_is_header(l, ll);
                if (header)
                        x->blanked_header = true;
                else {
                        size_t i = 0;
                        while (i < ll && (l[i] == ' ' || l[i] == '\t'))
                                i++;
                        size_t s = i;
                        while (i < ll && l[i] != '=' && l[i] != ' ' && l[i] != '\t')
                                i++;
                        const char *dot = memrchr(l + s, '.', i - s);
                        if (dot)
                                s = (size_t)(dot - l) + 1;
                        if (i > s)
                                ctx_add_blanked(x, l + s, i - s);
                }

                /* replace the line: headers by a throwaway array-of-tables entry,
                 * so the keys below it do not land in the previous table */
                const char *rep = header ? SYNTAX_PLACEHOLDER_HEADER : "";
                size_t rl = strlen(rep), before = (size_t)(l - buf), after = blen - before - ll;
                char *nb = malloc(before + rl + after + 1);
                if (!nb)
                        return -ENOMEM;
                memcpy(nb, buf, before);
                memcpy(nb + before, rep, rl);
                memcpy(nb + before + rl, l + ll, after);
                blen = before + rl + after;
                nb[blen] = 0;
                free(buf);
                buf = nb;
        }
        return -EINVAL;
}

static int finish(struct ctx *x, const struct toml_value *root, size_t diag_from, size_t errors_before,
                  struct tpmid_config **ret) {
        if (root) {
                if (toml_type(root) == TOML_TABLE)
                        walk_table(x, root, "", "", x->c);
                if (!x->oom)
                        cross_checks(x);
        }
        if (x->oom)
                return -ENOMEM;
        diags_sort(x, diag_from);
        if (x->diags->n_errors > errors_before || !root)
                return -EINVAL;
        *ret = TAKE_PTR(x->c);
        return 0;
}

int config_from_toml(const struct toml_value *root, const char *origin, struct tpmid_config **ret,
                     struct config_diags *diags) {
        struct ctx x = {.diags = diags, .origin = origin};
        size_t from = diags->n, errors = diags->n_errors;
        x.c = config_new(origin);
        if (!x.c)
                return -ENOMEM;
        int r = finish(&x, root, from, errors, ret);
        ctx_done(&x);
        return r;
}

int config_parse_string(const char *text, size_t len, const char *origin, struct tpmid_config **ret,
                        struct config_diags *diags) {
        if (!origin)
                origin = "<string>";
        struct ctx x = {.diags = diags, .origin = origin};
        size_t from = diags->n, errors = diags->n_errors;
        x.c = config_new(origin);
        if (!x.c)
                return -ENOMEM;
        struct toml_value *root = NULL;
        int r = parse_text(&x, text, len, origin, &root);
        if (r == -ENOMEM) {
                ctx_done(&x);
                return r;
        }
        r = finish(&x, root, from, errors, ret);
        toml_free(root);
        ctx_done(&x);
        return r;
}

static int dropin_filter(const struct dirent *de) {
        size_t n = strlen(de->d_name);
        return de->d_name[0] != '.' && n > 5 && streq(de->d_name + n - 5, ".toml");
}

static int dropin_sort(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

/* Read one file into the context and parse it; a read failure is an error
 * diagnostic. Returns 0 (possibly *ret NULL), -errno of the read, -ENOMEM. */
static int load_one(struct ctx *x, const char *path, struct toml_value **ret) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        *ret = NULL;
        int r = read_full_file(path, CONFIG_MAX_FILE_BYTES, &text, &len);
        if (r == -ENOMEM)
                return r;
        if (r == -EFBIG) {
                diag_at(x, CONFIG_SEVERITY_ERROR, path, 0, 0, NULL, "the file is larger than %u bytes",
                        (unsigned)CONFIG_MAX_FILE_BYTES);
                return r;
        }
        if (r < 0) {
                diag_at(x, CONFIG_SEVERITY_ERROR, path, 0, 0, NULL, "cannot read the file: %s%s", strerror(-r),
                        r == -EACCES ? " (run as root, or pass -c FILE)" : "");
                return r;
        }
        r = parse_text(x, text, len, path, ret);
        return r == -ENOMEM ? r : 0;
}

int config_load(const char *path, struct tpmid_config **ret, struct config_diags *diags) {
        struct ctx x = {.diags = diags, .origin = path};
        size_t from = diags->n, errors = diags->n_errors;
        x.c = config_new(path);
        if (!x.c)
                return -ENOMEM;
        struct toml_value *root = NULL;
        int r = load_one(&x, path, &root);
        if (r == -ENOMEM || (r < 0 && !root)) {
                if (r != -ENOMEM)
                        diags_sort(&x, from);
                ctx_done(&x);
                return r;
        }

        /* drop-ins: <dir>/config.d/<name>.toml in name order */
        _cleanup_free_ char *pcopy = strdup(path);
        _cleanup_free_ char *ddir = NULL;
        if (!pcopy) {
                toml_free(root);
                ctx_done(&x);
                return -ENOMEM;
        }
        char *slash = strrchr(pcopy, '/');
        if (slash)
                *slash = 0;
        if (asprintf(&ddir, "%s/%s", slash ? (*pcopy ? pcopy : "/") : ".", CONFIG_DROPIN_DIR) < 0) {
                toml_free(root);
                ctx_done(&x);
                return -ENOMEM;
        }
        struct dirent **names = NULL;
        int n = scandir(ddir, &names, dropin_filter, dropin_sort);
        if (n < 0 && errno != ENOENT && errno != ENOTDIR)
                diag_at(&x, CONFIG_SEVERITY_ERROR, ddir, 0, 0, NULL, "cannot read the drop-in directory: %s",
                        strerror(errno));
        for (int i = 0; i < n; i++) {
                if (i >= CONFIG_MAX_DROPINS) {
                        if (i == CONFIG_MAX_DROPINS)
                                diag_at(&x, CONFIG_SEVERITY_ERROR, ddir, 0, 0, NULL,
                                        "more than %u drop-in files; the rest are not read",
                                        (unsigned)CONFIG_MAX_DROPINS);
                        free(names[i]);
                        continue;
                }
                _cleanup_free_ char *dpath = NULL;
                if (asprintf(&dpath, "%s/%s", ddir, names[i]->d_name) < 0)
                        x.oom = true;
                free(names[i]);
                if (x.oom)
                        continue;
                struct toml_value *d = NULL;
                if (load_one(&x, dpath, &d) == -ENOMEM)
                        x.oom = true;
                if (d && root) {
                        if (toml_merge(root, d) < 0)
                                x.oom = true;
                } else
                        toml_free(d);
        }
        free(names);
        if (x.oom) {
                toml_free(root);
                ctx_done(&x);
                return -ENOMEM;
        }
        r = finish(&x, root, from, errors, ret);
        toml_free(root);
        ctx_done(&x);
        return r;
}

const char *config_path_from_env(const char *def) {
        const char *e = getenv(CONFIG_ENV_PATH);
        return e && *e ? e : def;
}

/* ------------------------------------------------------------------------ */
/* File checks */

int config_check_files(const struct tpmid_config *c, struct config_diags *diags) {
        struct ctx x = {.diags = diags, .origin = c->origin};
        size_t errors = diags->n_errors;
        if (c->provisioning.source == CONFIG_SOURCE_DPS && c->provisioning.payload_path) {
                const struct config_pos *pos = &c->payload_pos;
                _cleanup_free_ char *text = NULL;
                size_t len = 0;
                int r = read_full_file(c->provisioning.payload_path, CONFIG_MAX_PAYLOAD_BYTES, &text, &len);
                if (r == -ENOMEM)
                        return r;
                if (r == -EFBIG)
                        diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col, "provisioning.payload.uri",
                                "the DPS payload file %s is larger than %u bytes", c->provisioning.payload_path,
                                (unsigned)CONFIG_MAX_PAYLOAD_BYTES);
                else if (r < 0)
                        diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col, "provisioning.payload.uri",
                                "cannot read the DPS payload file %s: %s", c->provisioning.payload_path,
                                strerror(-r));
                else {
                        json_error_t je;
                        json_t *j = json_loadb(text, len, JSON_DECODE_ANY, &je);
                        if (!j)
                                diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col,
                                        "provisioning.payload.uri",
                                        "the DPS payload file %s is not JSON: line %d column %d: %s; for "
                                        "example: {\"modelId\": \"dtmi:com:example:Thermostat;1\"}",
                                        c->provisioning.payload_path, je.line, je.column, je.text);
                        json_decref(j);
                }
        }
        if (c->cloud_ca_bundle && access(c->cloud_ca_bundle, R_OK) < 0) {
                const struct config_pos *pos = &c->cloud_ca_bundle_pos;
                diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col, "cloud_ca_bundle",
                        "cannot read cloud_ca_bundle %s: %s; remove the key to use the system trust store",
                        c->cloud_ca_bundle, strerror(errno));
        }
        if (x.oom)
                return -ENOMEM;
        return diags->n_errors > errors ? -EINVAL : 0;
}

/* ------------------------------------------------------------------------ */
/* Serialisation */

struct sbuf {
        char *p;
        size_t n, cap;
        bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n) {
        if (b->oom)
                return;
        if (b->n + n + 1 > b->cap) {
                size_t cap = (b->cap ? b->cap * 2 : 1024);
                while (cap < b->n + n + 1)
                        cap *= 2;
                char *p = realloc(b->p, cap);
                if (!p) {
                        b->oom = true;
                        return;
                }
                b->p = p;
                b->cap = cap;
        }
        memcpy(b->p + b->n, s, n);
        b->n += n;
        b->p[b->n] = 0;
}

_printf_(2, 3) static void sb_printf(struct sbuf *b, const char *fmt, ...) {
        char tmp[512];
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        if (k < 0 || (size_t)k >= sizeof tmp) {
                b->oom = true; /* callers print only short fixed text and numbers */
                return;
        }
        sb_add(b, tmp, (size_t)k);
}

/* A TOML basic string with escapes. */
static void sb_str(struct sbuf *b, const char *s) {
        sb_add(b, "\"", 1);
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                char e[8];
                if (*p == '"' || *p == '\\') {
                        e[0] = '\\';
                        e[1] = (char)*p;
                        sb_add(b, e, 2);
                } else if (*p < 0x20 || *p == 0x7f) {
                        snprintf(e, sizeof e, "\\u%04X", *p);
                        sb_add(b, e, 6);
                } else
                        sb_add(b, (const char *)p, 1);
        }
        sb_add(b, "\"", 1);
}

static void sb_kv_str(struct sbuf *b, const char *key, const char *val) {
        sb_add(b, key, strlen(key));
        sb_add(b, " = ", 3);
        sb_str(b, val);
        sb_add(b, "\n", 1);
}

static void sb_file_uri(struct sbuf *b, const char *path) {
        sb_add(b, "file://", 7);
        for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
                if (isalnum(*p) || strchr("/-._~", *p))
                        sb_add(b, (const char *)p, 1);
                else
                        sb_printf(b, "%%%02X", *p);
        }
}

int config_format_toml(const struct tpmid_config *c, const char *header, char **ret) {
        struct sbuf b = {0};
        if (header) {
                for (const char *p = header; *p;) {
                        size_t n = strcspn(p, "\n");
                        sb_add(&b, "# ", 2);
                        sb_add(&b, p, n);
                        sb_add(&b, "\n", 1);
                        p += n;
                        if (*p)
                                p++;
                }
                sb_add(&b, "\n", 1);
        }
        if (c->hostname)
                sb_kv_str(&b, "hostname", c->hostname);
        sb_kv_str(&b, "auto_reprovisioning_mode", config_reprovisioning_mode_to_string(c->auto_reprovisioning_mode));
        sb_printf(&b, "cloud_timeout_sec = %u\ncloud_retries = %u\n", c->cloud_timeout_sec, c->cloud_retries);
        sb_kv_str(&b, "state_dir", c->state_dir);
        sb_kv_str(&b, "log_level", config_log_level_to_string(c->log_level));
        if (c->cloud_ca_bundle)
                sb_kv_str(&b, "cloud_ca_bundle", c->cloud_ca_bundle);

        sb_add(&b, "\n[provisioning]\n", 16);
        sb_kv_str(&b, "source", config_provisioning_source_to_string(c->provisioning.source));
        if (c->provisioning.source == CONFIG_SOURCE_DPS) {
                sb_kv_str(&b, "global_endpoint", c->provisioning.global_endpoint);
                if (c->provisioning.id_scope)
                        sb_kv_str(&b, "id_scope", c->provisioning.id_scope);
                if (c->provisioning.payload_path) {
                        struct sbuf u = {0};
                        sb_file_uri(&u, c->provisioning.payload_path);
                        sb_add(&b, "payload = { uri = ", 18);
                        if (u.oom || !u.p)
                                b.oom = true;
                        else
                                sb_str(&b, u.p);
                        sb_add(&b, " }\n", 3);
                        free(u.p);
                }
                sb_add(&b, "\n[provisioning.attestation]\nmethod = \"tpm\"\n", 43);
                if (c->provisioning.registration_id)
                        sb_kv_str(&b, "registration_id", c->provisioning.registration_id);
        }

        sb_add(&b, "\n[tpm]\n", 7);
        sb_kv_str(&b, "tcti", c->tpm.tcti);
        sb_printf(&b, "auth_key_index = 0x%06" PRIX32 "\n", c->tpm.auth_key_index);
        sb_add(&b, "\n[tpm.hierarchy_authorization]\n", 31);
        sb_kv_str(&b, "endorsement", c->tpm.endorsement_auth);
        sb_kv_str(&b, "owner", c->tpm.owner_auth);

        sb_add(&b, "\n[endpoints]\n", 13);
        sb_add(&b, "aziot_tpmd = ", 13);
        {
                _cleanup_free_ char *u1 = NULL, *u2 = NULL;
                if (asprintf(&u1, "unix://%s", c->endpoints.tpmd_socket) < 0 ||
                    asprintf(&u2, "unix://%s", c->endpoints.identityd_socket) < 0)
                        b.oom = true;
                else {
                        sb_str(&b, u1);
                        sb_add(&b, "\n", 1);
                        sb_kv_str(&b, "aziot_identityd", u2);
                }
        }

        const struct config_limits *l = &c->limits;
        sb_printf(&b,
                  "\n[limits]\nmax_connections = %u\nmax_connections_per_uid = %u\nmax_header_bytes = %u\n"
                  "max_body_bytes = %u\nidle_timeout_sec = %u\nrequest_timeout_sec = %u\nmax_queued_tpm_jobs = %u\n"
                  "busy_poll_usec = %u\n",
                  l->max_connections, l->max_connections_per_uid, l->max_header_bytes, l->max_body_bytes,
                  l->idle_timeout_sec, l->request_timeout_sec, l->max_queued_tpm_jobs, l->busy_poll_usec);

        for (size_t i = 0; i < c->n_principals; i++) {
                const struct config_principal *p = &c->principals[i];
                sb_printf(&b, "\n[[principal]]\nuid = %u\n", (unsigned)p->uid);
                sb_kv_str(&b, "name", p->name ? p->name : "");
                if (p->idtype) {
                        sb_add(&b, "idtype = [", 10);
                        bool first = true;
                        for (size_t j = 0; j < ELEMENTSOF(idtype_names); j++)
                                if (p->idtype & (1u << j)) {
                                        if (!first)
                                                sb_add(&b, ", ", 2);
                                        sb_str(&b, idtype_names[j]);
                                        first = false;
                                }
                        sb_add(&b, "]\n", 2);
                }
                if (p->allow_explicit) {
                        sb_add(&b, "allow = [", 9);
                        bool first = true;
                        for (size_t j = 0; j < ELEMENTSOF(op_names); j++)
                                if (p->allow & (1u << j)) {
                                        if (!first)
                                                sb_add(&b, ", ", 2);
                                        sb_str(&b, op_names[j]);
                                        first = false;
                                }
                        sb_add(&b, "]\n", 2);
                }
        }
        if (b.oom || !b.p) {
                if (b.p)
                        explicit_zero(b.p, b.cap);
                free(b.p);
                return -ENOMEM;
        }
        *ret = b.p;
        return 0;
}

/* ------------------------------------------------------------------------ */
/* Diff and principals */

struct diff {
        unsigned bits;
        struct sbuf why;
};

static void changed(struct diff *d, unsigned bit, const char *name) {
        d->bits |= bit;
        if (d->why.n)
                sb_add(&d->why, ", ", 2);
        sb_add(&d->why, name, strlen(name));
}

unsigned config_diff(const struct tpmid_config *a, const struct tpmid_config *b, char **why) {
        struct diff d = {0};
        const unsigned R = CONFIG_CHANGED_RESTART, L = CONFIG_CHANGED_RELOADABLE;
        if (!streq_ptr(a->hostname, b->hostname))
                changed(&d, R, "hostname");
        if (a->auto_reprovisioning_mode != b->auto_reprovisioning_mode)
                changed(&d, L, "auto_reprovisioning_mode");
        if (a->cloud_timeout_sec != b->cloud_timeout_sec)
                changed(&d, R, "cloud_timeout_sec");
        if (a->cloud_retries != b->cloud_retries)
                changed(&d, R, "cloud_retries");
        if (a->provisioning.source != b->provisioning.source)
                changed(&d, R, "provisioning.source");
        if (!streq_ptr(a->provisioning.global_endpoint, b->provisioning.global_endpoint))
                changed(&d, L, "provisioning.global_endpoint");
        if (!streq_ptr(a->provisioning.id_scope, b->provisioning.id_scope))
                changed(&d, L, "provisioning.id_scope");
        if (!streq_ptr(a->provisioning.payload_path, b->provisioning.payload_path))
                changed(&d, L, "provisioning.payload");
        if (a->provisioning.method != b->provisioning.method)
                changed(&d, L, "provisioning.attestation.method");
        if (!streq_ptr(a->provisioning.registration_id, b->provisioning.registration_id))
                changed(&d, L, "provisioning.attestation.registration_id");
        if (!streq_ptr(a->tpm.tcti, b->tpm.tcti))
                changed(&d, R, "tpm.tcti");
        if (a->tpm.auth_key_index != b->tpm.auth_key_index)
                changed(&d, R, "tpm.auth_key_index");
        if (!streq_ptr(a->tpm.endorsement_auth, b->tpm.endorsement_auth))
                changed(&d, R, "tpm.hierarchy_authorization.endorsement");
        if (!streq_ptr(a->tpm.owner_auth, b->tpm.owner_auth))
                changed(&d, R, "tpm.hierarchy_authorization.owner");
        if (!streq_ptr(a->endpoints.tpmd_socket, b->endpoints.tpmd_socket))
                changed(&d, R, "endpoints.aziot_tpmd");
        if (!streq_ptr(a->endpoints.identityd_socket, b->endpoints.identityd_socket))
                changed(&d, R, "endpoints.aziot_identityd");
        if (!streq_ptr(a->state_dir, b->state_dir))
                changed(&d, R, "state_dir");
        if (!streq_ptr(a->cloud_ca_bundle, b->cloud_ca_bundle))
                changed(&d, R, "cloud_ca_bundle");
        if (a->log_level != b->log_level)
                changed(&d, L, "log_level");
        if (memcmp(&a->limits, &b->limits, sizeof(a->limits)) != 0)
                changed(&d, L, "limits");
        bool pd = a->n_principals != b->n_principals;
        for (size_t i = 0; !pd && i < a->n_principals; i++) {
                const struct config_principal *p = &a->principals[i], *q = &b->principals[i];
                pd = p->uid != q->uid || !streq_ptr(p->name, q->name) || p->idtype != q->idtype ||
                     p->allow != q->allow;
        }
        if (pd)
                changed(&d, L, "principal");
        if (why)
                *why = d.why.oom ? NULL : d.why.p;
        else
                free(d.why.p);
        if (why && d.why.oom)
                free(d.why.p);
        return d.bits;
}

const struct config_principal *config_principal_for_uid(const struct tpmid_config *c, uid_t uid) {
        for (size_t i = 0; i < c->n_principals; i++)
                if (c->principals[i].uid == uid)
                        return &c->principals[i];
        return NULL;
}

uint32_t config_role_default_allow(unsigned idtype) {
        if (idtype == 0)
                return CONFIG_OP_ALL;
        return CONFIG_OP_IDENTITY_GET | CONFIG_OP_IDENTITY_PROVISIONING | CONFIG_OP_IDENTITY_TOKEN;
}

bool config_allowed(const struct tpmid_config *c, uid_t uid, uint32_t op) {
        const struct config_principal *p = config_principal_for_uid(c, uid);
        if (p)
                return (p->allow & op) == op;
        return uid == 0;
}
