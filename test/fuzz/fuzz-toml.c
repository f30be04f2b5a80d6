/* libFuzzer target for lib/toml.c: parse arbitrary bytes; on success walk the
 * whole tree through every accessor and check the invariants the API
 * promises (lookups find what iteration found, positions are set, strings are
 * NUL-terminated), then merge a second parse of the same input into the first
 * and walk the result again. On failure the error must carry a message. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const struct toml_value *v, const struct toml_value *root, unsigned depth) {
        assert(depth <= TOML_MAX_DEPTH + 1);
        assert(toml_line(v) >= 1 && toml_col(v) >= 1);
        assert(toml_type_name(toml_type(v)) != NULL);
        switch (toml_type(v)) {
        case TOML_STRING: {
                size_t len;
                const char *s = toml_string(v, &len);
                assert(s && s[len] == 0);
                break;
        }
        case TOML_INTEGER:
                (void)toml_integer(v);
                break;
        case TOML_FLOAT:
                (void)isnan(toml_float(v));
                break;
        case TOML_BOOL:
                (void)toml_bool(v);
                break;
        case TOML_DATETIME:
        case TOML_DATETIME_LOCAL:
        case TOML_DATE_LOCAL:
        case TOML_TIME_LOCAL: {
                const char *t = toml_datetime_text(v);
                assert(t && strlen(t) >= 8);
                break;
        }
        case TOML_ARRAY:
                for (size_t i = 0; i < toml_array_size(v); i++)
                        walk(toml_array_at(v, i), root, depth + 1);
                break;
        case TOML_TABLE:
                for (size_t i = 0; i < toml_table_size(v); i++) {
                        size_t klen;
                        const char *k = toml_table_key_n(v, i, &klen);
                        const struct toml_value *e = toml_table_value(v, i);
                        assert(k && k[klen] == 0 && toml_table_key(v, i) == k);
                        if (strlen(k) == klen) {
                                assert(toml_table_get(v, k) == e);
                                if (!strchr(k, '.') && klen > 0) {
                                        const struct toml_value *t;
                                        const char *s;
                                        int64_t n;
                                        bool b;
                                        assert(toml_get(v, k) == e);
                                        assert((toml_get_table(v, k, &t) == 0) == (toml_type(e) == TOML_TABLE));
                                        assert((toml_get_string(v, k, &s) == 0) == (toml_type(e) == TOML_STRING));
                                        assert((toml_get_integer(v, k, &n) == 0) == (toml_type(e) == TOML_INTEGER));
                                        assert((toml_get_bool(v, k, &b) == 0) == (toml_type(e) == TOML_BOOL));
                                }
                        }
                        walk(e, root, depth + 1);
                }
                break;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct toml_value *a = NULL, *b = NULL;
        struct toml_error err = { 0 };
        int r;

        r = toml_parse((const char *)data, size, "fuzz", &a, &err);
        if (r < 0) {
                assert(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
                assert(err.msg[0] != 0 && err.line >= 1 && err.col >= 1);
                assert(a == NULL);
                return 0;
        }
        walk(a, a, 0);

        r = toml_parse((const char *)data, size, "fuzz2", &b, &err);
        assert(r == 0);
        r = toml_merge(a, b); /* consumes b */
        assert(r == 0 || r == -ENOMEM);
        walk(a, a, 0);
        toml_free(a);
        return 0;
}
