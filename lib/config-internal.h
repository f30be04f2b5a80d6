/* What the config modules share and nobody else sees: the load context and
 * the diagnostics recorder that lib/config.c (schema walk),
 * lib/config-diag.c (diagnostics, syntax-error recovery) and
 * lib/config-load.c (files and drop-ins) write into. Not installed, not
 * included outside lib/config*.c. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "toml.h"
#include "util.h"

#define CONFIG_MAX_SUGGEST_DISTANCE 2 /* edit distance for "did you mean" */
#define CONFIG_MAX_SYNTAX_ERRORS 50   /* syntax errors reported per file before giving up */
/* What a table header line with a syntax error is replaced by (config-diag.c),
 * and the key the walk (config.c) therefore skips without a word. */
#define SYNTAX_PLACEHOLDER_HEADER "[[__tpmidd_syntax_error__]]"
#define SYNTAX_PLACEHOLDER_KEY "__tpmidd_syntax_error__"

/* A file as read, kept for diagnostics that quote or search its lines. */
struct config_file {
        char *origin;
        char *text; /* as read (before any line was blanked) */
        size_t len;
};

/* One load: the config under construction, where its diagnostics go, and
 * what the walk saw for checks across keys. */
struct config_ctx {
        struct config_diags *diags;
        struct tpmid_config *c; /* owned until config_finish() hands it out */
        const char *origin;     /* main file, for diagnostics without a value */
        bool oom;

        struct config_file *files;
        size_t n_files;

        /* keys whose line had a syntax error and was blanked (config-diag.c) */
        char **blanked;
        size_t n_blanked;
        bool blanked_header;

        /* seen while walking, for cross-key checks (config.c) */
        const struct toml_value *v_provisioning, *v_attestation, *v_source, *v_method, *v_id_scope,
                *v_scope_id, *v_local_gateway, *v_limits_per_uid, *v_tpm_max_requests, *v_aziot_tpmd;
        int64_t tpm_max_requests, aziot_tpmd_max_requests;
        bool source_unsupported;
};

/* ---- lib/config.c ---- */

/* Zero *x, point it at diags and create the default config named origin.
 * Returns 0 or -ENOMEM. Release with config_ctx_done() in every case. */
int config_ctx_init(struct config_ctx *x, struct config_diags *diags, const char *origin);
/* Walk root (NULL: nothing could be parsed) against the schema, run the
 * cross-key checks, sort the diagnostics added since diag_from. Returns 0
 * and hands the config to *ret when no error was added since
 * errors_before; -EINVAL; -ENOMEM. */
int config_finish(struct config_ctx *x, const struct toml_value *root, size_t diag_from, size_t errors_before,
                  struct tpmid_config **ret);

/* How the schema wants a value written, for syntax-error hints. */
enum config_value_shape {
        CONFIG_SHAPE_UNKNOWN,    /* no key of that name (with an example) in any table */
        CONFIG_SHAPE_INTEGER,    /* an unquoted integer */
        CONFIG_SHAPE_STRUCTURED, /* an array or an inline table */
        CONFIG_SHAPE_TEXT,       /* a string */
};
/* The shape of the first schema key called name, and its example. */
enum config_value_shape config_schema_shape(const char *name, const char **example);
/* Is name a top-level value key (not a table)? */
bool config_schema_is_top_value(const char *name);

/* ---- lib/config-diag.c ---- */

/* Record a diagnostic; message is consumed (NULL = out of memory). */
void config_diag_add(struct config_ctx *x, enum config_severity sev, const char *file, unsigned line, unsigned col,
                     const char *key, char *message);
void config_diag_at(struct config_ctx *x, enum config_severity sev, const char *file, unsigned line, unsigned col,
                    const char *key, const char *fmt, ...) _printf_(7, 8);
/* At v's position (v NULL: the main file, no position). */
void config_diag_v(struct config_ctx *x, enum config_severity sev, const struct toml_value *v, const char *key,
                   const char *fmt, ...) _printf_(5, 6);
#define error_v(x, v, key, ...) config_diag_v(x, CONFIG_SEVERITY_ERROR, v, key, __VA_ARGS__)
#define warn_v(x, v, key, ...) config_diag_v(x, CONFIG_SEVERITY_WARNING, v, key, __VA_ARGS__)
#define info_v(x, v, key, ...) config_diag_v(x, CONFIG_SEVERITY_INFO, v, key, __VA_ARGS__)

/* Sort the diagnostics added since index from by file (load order), line, column. */
void config_diags_sort(struct config_ctx *x, size_t from);
/* The closest of names[] within CONFIG_MAX_SUGGEST_DISTANCE ("did you mean"), or NULL. */
const char *config_closest(const char *s, const char *const *names, size_t n);
/* Did a syntax error blank the line of key leaf (the last dotted part)? */
bool config_ctx_was_blanked(const struct config_ctx *x, const char *leaf);
/* Line of the first [table] header of the file named origin; 0 if none or unknown. */
unsigned config_ctx_first_header(const struct config_ctx *x, const char *origin);
/* Parse one file's text, recovering from syntax errors so that all of them
 * are reported. Returns 0 with *ret set (even after recovered syntax
 * errors, which are in the diagnostics), -EINVAL when no tree could be
 * built, -ENOMEM. */
int config_parse_text(struct config_ctx *x, const char *text, size_t len, const char *origin,
                      struct toml_value **ret);
/* Free what x holds (files, blanked keys, the config not handed out). */
void config_ctx_done(struct config_ctx *x);
