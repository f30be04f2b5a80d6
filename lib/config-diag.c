/* Config diagnostics: recording, sorting, formatting, "did you mean", and
 * the recovery from TOML syntax errors that lets one run report them all.
 *
 * Syntax errors: lib/toml stops at the first one. To still report all of a
 * file's mistakes in one pass, the offending line is blanked (a bad table
 * header becomes an anonymous array-of-tables entry the walk skips) and the
 * text parsed again, up to CONFIG_MAX_SYNTAX_ERRORS times; a valid file is
 * parsed once. Checks that would only repeat a syntax error (e.g. "id_scope
 * is missing" after the id_scope line was blanked) are suppressed through
 * config_ctx_was_blanked(). The re-parse is the price of a parser without
 * error recovery: each pass is linear in the file (at most 1 MiB), so the
 * worst case is CONFIG_MAX_SYNTAX_ERRORS + 1 passes over a file that is
 * mostly errors, in `tpmidctl config check`, never on a valid file.
 *
 * What the schema knows (which keys want integers, which are top-level) is
 * asked from lib/config.c, so no table is written twice. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-internal.h"

/* ---- did you mean ---- */

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

const char *config_closest(const char *s, const char *const *names, size_t n) {
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

void config_diag_add(struct config_ctx *x, enum config_severity sev, const char *file, unsigned line, unsigned col,
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

/* The message fmt formats (malloc'd), or NULL when it could not be built
 * (config_diag_add() counts that as running out of memory). */
_printf_(1, 0) static char *diag_message(const char *fmt, va_list ap) {
        char *m = NULL;
        if (vasprintf(&m, fmt, ap) < 0)
                return NULL;
        return m;
}

void config_diag_at(struct config_ctx *x, enum config_severity sev, const char *file, unsigned line, unsigned col,
                    const char *key, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        char *m = diag_message(fmt, ap);
        va_end(ap);
        config_diag_add(x, sev, file, line, col, key, m);
}

void config_diag_v(struct config_ctx *x, enum config_severity sev, const struct toml_value *v, const char *key,
                   const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        char *m = diag_message(fmt, ap);
        va_end(ap);
        if (v)
                config_diag_add(x, sev, toml_origin(v), toml_line(v), toml_col(v), key, m);
        else
                config_diag_add(x, sev, x->origin, 0, 0, key, m);
}

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

static const struct config_file *file_find(const struct config_ctx *x, const char *origin) {
        for (size_t i = 0; i < x->n_files; i++)
                if (streq_ptr(x->files[i].origin, origin))
                        return &x->files[i];
        return NULL;
}

static size_t file_index(const struct config_ctx *x, const char *origin) {
        for (size_t i = 0; i < x->n_files; i++)
                if (streq_ptr(x->files[i].origin, origin))
                        return i;
        return SIZE_MAX;
}

/* Sort the diagnostics added since index `from` by file (load order), line,
 * column; positionless ones last in their file; insertion order breaks ties
 * (insertion sort: lists are short and this keeps it stable). */
static bool diag_before(const struct config_ctx *x, const struct config_diag *a, const struct config_diag *b) {
        size_t fa = file_index(x, a->file), fb = file_index(x, b->file);
        if (fa != fb)
                return fa < fb;
        unsigned la = a->line ? a->line : UINT_MAX, lb = b->line ? b->line : UINT_MAX;
        if (la != lb)
                return la < lb;
        return a->col < b->col;
}

void config_diags_sort(struct config_ctx *x, size_t from) {
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

bool config_ctx_was_blanked(const struct config_ctx *x, const char *leaf) {
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

unsigned config_ctx_first_header(const struct config_ctx *x, const char *origin) {
        const struct config_file *f = file_find(x, origin);
        return f ? find_header(f->text, f->len, 0, false, NULL, 0) : 0;
}

/* ---- the context's files ---- */

void config_ctx_done(struct config_ctx *x) {
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

static int ctx_add_file(struct config_ctx *x, const char *origin, const char *text, size_t len) {
        struct config_file *f = realloc(x->files, (x->n_files + 1) * sizeof(*f));
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

static void ctx_add_blanked(struct config_ctx *x, const char *key, size_t len) {
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
static void syntax_diag(struct config_ctx *x, const struct config_file *f, const char *origin, const struct toml_error *err,
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
                config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, err->col, NULL, "TOML syntax error: %s",
                        err->msg);
                return;
        }

        /* a bare word where the schema wants a number or a list: say so */
        const char *example = NULL;
        enum config_value_shape shape = config_schema_shape(key, &example);
        if (shape == CONFIG_SHAPE_INTEGER) {
                config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                               "%s = %s: %s must be an integer (no quotes); for example: %s", key, val, key, example);
                return;
        }
        if (shape == CONFIG_SHAPE_STRUCTURED) {
                config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                               "%s = %s is not valid TOML; for example: %s", key, val, example);
                return;
        }

        /* a bare word: TOML needs quotes around text */
        const char *fixed = val;
        if (streq(key, "auto_reprovisioning_mode")) {
                const char *modes[_PROV_MODE_MAX];
                for (unsigned m = 0; m < _PROV_MODE_MAX; m++) {
                        modes[m] = prov_mode_to_string((enum prov_mode)m);
                        if (strcasecmp(val, modes[m]) == 0)
                                fixed = modes[m];
                }
                if (fixed == val) {
                        const char *near = config_closest(val, modes, ELEMENTSOF(modes));
                        fixed = near ? near : prov_mode_to_string(PROV_MODE_DYNAMIC);
                }
        }
        char hdr[128] = "";
        unsigned first = 0;
        if (f && config_schema_is_top_value(key)) {
                first = find_header(f->text, f->len, err->line, false, NULL, 0);
                if (first)
                        (void)find_header(f->text, f->len, err->line, true, hdr, sizeof hdr);
        }
        if (first)
                config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                        "%s = %s: text values need double quotes in TOML: write %s = \"%s\". Also move the "
                        "line above the first [table] header (line %u); here it is under %s and would be read "
                        "as part of that table",
                        key, val, key, fixed, first, hdr);
        else
                config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err->line, (unsigned)vcol, key,
                        "%s = %s: text values need double quotes in TOML: write %s = \"%s\"", key, val, key, fixed);
}

/* Parse one file's text, recovering from syntax errors (see top of file).
 * Returns 0 with *ret set (even after recovered syntax errors, which are in
 * the diagnostics), -EINVAL when no tree could be built, -ENOMEM. */
int config_parse_text(struct config_ctx *x, const char *text, size_t len, const char *origin, struct toml_value **ret) {
        int r = ctx_add_file(x, origin, text, len);
        if (r < 0)
                return r;
        const struct config_file *f = &x->files[x->n_files - 1];
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
                        config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err.line, err.col, NULL,
                                "%s (limit: %u bytes, nesting depth %u)", err.msg, (unsigned)TOML_MAX_INPUT_BYTES,
                                (unsigned)TOML_MAX_DEPTH);
                        return -EINVAL;
                }
                size_t ll = 0;
                const char *l = err.line > 0 ? text_line(buf, blen, err.line, &ll) : NULL;
                if (!l || err.line == last_line || tries == CONFIG_MAX_SYNTAX_ERRORS) {
                        /* cannot recover further: report this one and stop */
                        config_diag_at(x, CONFIG_SEVERITY_ERROR, origin, err.line, err.col, NULL, "TOML syntax error: %s%s",
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
                        /* the last dotted part of the key before '=' */
                        _cleanup_free_ char *line = strndup(l, ll);
                        if (!line)
                                return -ENOMEM;
                        const char *k = line + strspn(line, " \t");
                        size_t kl = strcspn(k, "= \t");
                        const char *dot = memrchr(k, '.', kl);
                        if (dot) {
                                kl -= (size_t)(dot + 1 - k);
                                k = dot + 1;
                        }
                        if (kl > 0)
                                ctx_add_blanked(x, k, kl);
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

