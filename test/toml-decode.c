/* toml-test decoder for lib/toml.c: TOML on stdin; on success the tagged JSON
 * of toml-test ({"type": ..., "value": ...} for every scalar) on stdout and
 * exit 0; on invalid input the error on stderr and exit 1. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "toml.h"
#include "util.h"

static json_t *tagged(const char *type, const char *value) {
        return json_pack("{s:s, s:s}", "type", type, "value", value);
}

/* toml-test wants date-times in RFC 3339 form: upper-case T and Z, and a T
 * rather than the space TOML also allows. */
static json_t *datetime(const char *type, const char *text) {
        _cleanup_free_ char *s = strdup(text);
        if (!s)
                return NULL;
        for (char *c = s; *c; c++) {
                if (*c == 't' || *c == ' ')
                        *c = 'T';
                else if (*c == 'z')
                        *c = 'Z';
        }
        return tagged(type, s);
}

static json_t *convert(const struct toml_value *v) {
        char buf[64];
        json_t *j;

        switch (toml_type(v)) {
        case TOML_STRING: {
                size_t len;
                const char *s = toml_string(v, &len);
                return json_pack("{s:s, s:s%}", "type", "string", "value", s, len);
        }
        case TOML_INTEGER:
                snprintf(buf, sizeof(buf), "%" PRId64, toml_integer(v));
                return tagged("integer", buf);
        case TOML_FLOAT: {
                double d = toml_float(v);
                if (isnan(d))
                        snprintf(buf, sizeof(buf), "nan");
                else if (isinf(d))
                        snprintf(buf, sizeof(buf), "%sinf", d < 0 ? "-" : "");
                else
                        snprintf(buf, sizeof(buf), "%.17g", d);
                return tagged("float", buf);
        }
        case TOML_BOOL:
                return tagged("bool", toml_bool(v) ? "true" : "false");
        case TOML_DATETIME:
                return datetime("datetime", toml_datetime_text(v));
        case TOML_DATETIME_LOCAL:
                return datetime("datetime-local", toml_datetime_text(v));
        case TOML_DATE_LOCAL:
                return datetime("date-local", toml_datetime_text(v));
        case TOML_TIME_LOCAL:
                return datetime("time-local", toml_datetime_text(v));
        case TOML_ARRAY:
                j = json_array();
                if (!j)
                        return NULL;
                for (size_t i = 0; i < toml_array_size(v); i++) {
                        json_t *e = convert(toml_array_at(v, i));
                        if (!e || json_array_append_new(j, e) < 0) {
                                json_decref(j);
                                return NULL;
                        }
                }
                return j;
        case TOML_TABLE:
                j = json_object();
                if (!j)
                        return NULL;
                for (size_t i = 0; i < toml_table_size(v); i++) {
                        size_t klen;
                        const char *k = toml_table_key_n(v, i, &klen);
                        json_t *e = convert(toml_table_value(v, i));
                        if (!e || json_object_setn_new(j, k, klen, e) < 0) {
                                json_decref(j);
                                return NULL;
                        }
                }
                return j;
        }
        return NULL;
}

int main(void) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, cap = 0;
        struct toml_value *root = NULL;
        struct toml_error err = { 0 };
        json_t *j;
        int r;

        /* read one byte more than the parser accepts, so the size limit is exercised */
        for (;;) {
                if (cap - len < 4096) {
                        cap = cap ? cap * 2 : 65536;
                        char *n = realloc(buf, cap);
                        if (!n) {
                                fprintf(stderr, "toml-decode: out of memory\n");
                                return 2;
                        }
                        buf = n;
                }
                size_t n = fread(buf + len, 1, cap - len, stdin);
                len += n;
                if (n == 0 || len > TOML_MAX_INPUT_BYTES)
                        break;
        }
        if (ferror(stdin)) {
                fprintf(stderr, "toml-decode: read error: %s\n", strerror(errno));
                return 2;
        }

        r = toml_parse(buf, len, "<stdin>", &root, &err);
        if (r < 0) {
                fprintf(stderr, "<stdin>:%u:%u: %s\n", err.line, err.col, err.msg);
                return 1;
        }
        j = convert(root);
        toml_free(root);
        if (!j) {
                fprintf(stderr, "toml-decode: out of memory\n");
                return 2;
        }
        r = json_dumpf(j, stdout, JSON_INDENT(1));
        json_decref(j);
        if (r < 0 || fputc('\n', stdout) == EOF || fflush(stdout) != 0) {
                fprintf(stderr, "toml-decode: cannot write output\n");
                return 2;
        }
        return 0;
}
