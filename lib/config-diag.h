/* Diagnostics of a config load: what is wrong, where (file:line:col), and an
 * example of a right value. lib/config-diag.c records them (all of a load's
 * problems in one pass, with "did you mean" for misspelt names) and formats
 * them; lib/config.c and lib/config-load.c raise them. */
#pragma once

#include <stddef.h>

#define CONFIG_MAX_DIAGS 1000 /* diagnostics kept per load; more are counted, not stored */

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

/* Free the items of *diags and zero it (the struct itself is the caller's). */
void config_diags_free(struct config_diags *diags);

/* "file:line:col: error: message" (line/col omitted when 0; "warning:",
 * "note:" for the other severities). Returns a heap string the caller frees,
 * or NULL on ENOMEM. */
char *config_format_diag(const struct config_diag *d);
