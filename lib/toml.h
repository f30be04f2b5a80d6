/* TOML 1.0 parser: bytes in, an immutable-after-parse tree out.
 *
 * Pure: no I/O, no globals, no logging. Every value remembers where it was
 * written (origin name, line, column, 1-based) so config errors can say
 * "file:line:col". Dates and times are validated and kept as their text.
 *
 * Ownership: toml_parse() returns a root table the caller frees with
 * toml_free(); every pointer obtained from it lives as long as the root. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum toml_type {
        TOML_STRING,
        TOML_INTEGER,
        TOML_FLOAT,
        TOML_BOOL,
        TOML_DATETIME,       /* offset date-time, e.g. 1979-05-27T07:32:00Z */
        TOML_DATETIME_LOCAL, /* 1979-05-27T07:32:00 */
        TOML_DATE_LOCAL,     /* 1979-05-27 */
        TOML_TIME_LOCAL,     /* 07:32:00 */
        TOML_ARRAY,
        TOML_TABLE,
};

/* Hard limits on untrusted input; exceeding one is a parse error. */
#define TOML_MAX_INPUT_BYTES (1u << 20) /* bytes per document */
#define TOML_MAX_DEPTH 64               /* nesting of arrays/inline tables/dotted keys */

struct toml_value;

struct toml_error {
        unsigned line, col; /* 1-based position of the error */
        char msg[256];      /* what was wrong and what was expected, one sentence */
};

/* Parse len bytes of TOML. origin (may be NULL) names the source for error
 * messages and is copied. On success returns 0 and sets *ret to the root
 * table. On failure returns -EINVAL (syntax/semantic error, *err filled),
 * -E2BIG (over a limit, *err filled) or -ENOMEM; *ret is untouched. */
int toml_parse(const char *buf, size_t len, const char *origin, struct toml_value **ret, struct toml_error *err);

/* Free a root returned by toml_parse(); NULL is fine. Returns NULL. */
struct toml_value *toml_free(struct toml_value *root);

enum toml_type toml_type(const struct toml_value *v);
const char *toml_type_name(enum toml_type t); /* "string", "integer", ... */
const char *toml_origin(const struct toml_value *v); /* NULL when parsed with origin NULL */
unsigned toml_line(const struct toml_value *v); /* line of the key that defined v (or of v in an array) */
unsigned toml_col(const struct toml_value *v);

/* Tables keep keys in definition order. */
size_t toml_table_size(const struct toml_value *table);
const char *toml_table_key(const struct toml_value *table, size_t i);
/* The same key with its length in *len (quoted keys may contain "\u0000"). */
const char *toml_table_key_n(const struct toml_value *table, size_t i, size_t *len);
const struct toml_value *toml_table_value(const struct toml_value *table, size_t i);
const struct toml_value *toml_table_get(const struct toml_value *table, const char *key); /* NULL if absent */

size_t toml_array_size(const struct toml_value *array);
const struct toml_value *toml_array_at(const struct toml_value *array, size_t i);

/* Scalar accessors; the value must have the matching type (assert). */
const char *toml_string(const struct toml_value *v, size_t *len); /* NUL-terminated; may contain NULs, see len */
int64_t toml_integer(const struct toml_value *v);
double toml_float(const struct toml_value *v);
bool toml_bool(const struct toml_value *v);
const char *toml_datetime_text(const struct toml_value *v); /* as written, validated */

/* Typed lookup by dotted path of bare keys ("provisioning.attestation.method").
 * Returns 0 and sets *out, -ENOENT if a component is missing, -EINVAL if the
 * value (or an intermediate) has another type. *out is untouched on error. */
int toml_get_string(const struct toml_value *root, const char *path, const char **out);
int toml_get_integer(const struct toml_value *root, const char *path, int64_t *out);
int toml_get_bool(const struct toml_value *root, const char *path, bool *out);
int toml_get_table(const struct toml_value *root, const char *path, const struct toml_value **out);
const struct toml_value *toml_get(const struct toml_value *root, const char *path); /* NULL if absent */

/* Merge the root src into the root dst, as config drop-ins do: tables merge
 * recursively, arrays and scalars in src replace those in dst. src is
 * consumed (freed) whether or not the merge succeeds. Returns 0 or -ENOMEM. */
int toml_merge(struct toml_value *dst, struct toml_value *src);
