/* Unit tests for lib/toml.c: typed accessors, positions, errors, merge,
 * limits and the corners of TOML 1.0 that hand-edited configs hit. The full
 * toml-test suite runs in test/integration/toml-conformance.py. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "toml.h"
#include "util.h"

static struct toml_value *parse_ok(const char *s) {
        struct toml_value *root = NULL;
        struct toml_error err = { 0 };
        int r = toml_parse(s, strlen(s), "test.toml", &root, &err);
        if (r < 0)
                fail_msg("unexpected parse error %d at %u:%u: %s\ninput:\n%s", r, err.line, err.col, err.msg, s);
        assert_non_null(root);
        return root;
}

/* Parse must fail with r; returns the error for position/message checks. */
static struct toml_error parse_err_n(const char *s, size_t len, int want) {
        struct toml_value *root = (struct toml_value *)0x1; /* must stay untouched */
        struct toml_error err = { 0 };
        int r = toml_parse(s, len, "test.toml", &root, &err);
        if (r != want)
                fail_msg("want %d, got %d for input:\n%s", want, r, s);
        assert_ptr_equal(root, (struct toml_value *)0x1);
        assert_true(err.msg[0] != 0);
        assert_true(err.line >= 1 && err.col >= 1);
        return err;
}

static struct toml_error parse_err(const char *s) {
        return parse_err_n(s, strlen(s), -EINVAL);
}

static const char *typed_doc =
        "title = \"tpmidd\"\n"
        "count = -42\n"
        "ratio = 0.5\n"
        "on = true\n"
        "[provisioning]\n"
        "source = \"dps\"\n"
        "attestation.method = \"tpm\"\n"
        "attestation.retries = 3\n";

static void test_get_typed(void **state) {
        struct toml_value *root = parse_ok(typed_doc);
        const char *s = NULL;
        int64_t i = 0;
        bool b = false;
        const struct toml_value *t = NULL;

        assert_int_equal(toml_get_string(root, "title", &s), 0);
        assert_string_equal(s, "tpmidd");
        assert_int_equal(toml_get_integer(root, "count", &i), 0);
        assert_int_equal(i, -42);
        assert_int_equal(toml_get_bool(root, "on", &b), 0);
        assert_true(b);
        assert_int_equal(toml_get_string(root, "provisioning.attestation.method", &s), 0);
        assert_string_equal(s, "tpm");
        assert_int_equal(toml_get_integer(root, "provisioning.attestation.retries", &i), 0);
        assert_int_equal(i, 3);
        assert_int_equal(toml_get_table(root, "provisioning.attestation", &t), 0);
        assert_int_equal(toml_table_size(t), 2);
        assert_string_equal(toml_table_key(t, 0), "method");
        assert_string_equal(toml_table_key(t, 1), "retries");
        assert_true(toml_float(toml_get(root, "ratio")) == 0.5);
        assert_int_equal(toml_type(toml_get(root, "ratio")), TOML_FLOAT);
        assert_string_equal(toml_type_name(TOML_TABLE), "table");

        /* -ENOENT: missing leaf or intermediate; out untouched */
        s = "untouched";
        assert_int_equal(toml_get_string(root, "nope", &s), -ENOENT);
        assert_int_equal(toml_get_string(root, "provisioning.nope.method", &s), -ENOENT);
        assert_string_equal(s, "untouched");
        assert_null(toml_get(root, "provisioning.nope"));

        /* -EINVAL: wrong type, or an intermediate that is not a table */
        i = 7;
        assert_int_equal(toml_get_integer(root, "title", &i), -EINVAL);
        assert_int_equal(i, 7);
        assert_int_equal(toml_get_string(root, "count", &s), -EINVAL);
        assert_int_equal(toml_get_bool(root, "count", &b), -EINVAL);
        assert_int_equal(toml_get_table(root, "title", &t), -EINVAL);
        assert_int_equal(toml_get_string(root, "title.x", &s), -EINVAL);
        assert_string_equal(s, "untouched");
        toml_free(root);
}

static void test_line_col(void **state) {
        struct toml_value *root = parse_ok("# comment\n"
                                           "a = 1\n"
                                           "  [srv]\n"
                                           "  x.y = \"é\"\n"
                                           "  arr = [\n"
                                           "    10,\n"
                                           "      20 ]\n"
                                           "  \"ü\" = 1\n");
        const struct toml_value *v;

        v = toml_get(root, "a");
        assert_int_equal(toml_line(v), 2);
        assert_int_equal(toml_col(v), 1);
        assert_string_equal(toml_origin(v), "test.toml");
        v = toml_get(root, "srv");
        assert_int_equal(toml_line(v), 3);
        assert_int_equal(toml_col(v), 4);
        v = toml_get(root, "srv.x");
        assert_int_equal(toml_line(v), 4);
        assert_int_equal(toml_col(v), 3);
        v = toml_get(root, "srv.x.y");
        assert_int_equal(toml_line(v), 4);
        assert_int_equal(toml_col(v), 5);
        v = toml_get(root, "srv.arr");
        assert_int_equal(toml_line(v), 5);
        assert_int_equal(toml_col(v), 3);
        assert_int_equal(toml_line(toml_array_at(v, 0)), 6);
        assert_int_equal(toml_col(toml_array_at(v, 0)), 5);
        assert_int_equal(toml_line(toml_array_at(v, 1)), 7);
        assert_int_equal(toml_col(toml_array_at(v, 1)), 7);
        v = toml_table_get(toml_get(root, "srv"), "ü");
        assert_non_null(v);
        assert_int_equal(toml_line(v), 8);
        assert_int_equal(toml_col(v), 3);
        toml_free(root);

        /* non-ASCII bare key: error column counts characters, not bytes */
        struct toml_error e = parse_err("\"é\" = \"é\" x\n");
        assert_int_equal(e.line, 1);
        assert_int_equal(e.col, 11);
}

static void test_error_positions(void **state) {
        struct toml_error e;

        e = parse_err("a = 1\nb = 2\nb = 3\n");
        assert_int_equal(e.line, 3);
        assert_int_equal(e.col, 1);
        assert_non_null(strstr(e.msg, "duplicate key 'b'"));
        assert_non_null(strstr(e.msg, "2:1"));

        e = parse_err("[a]\nx = 1\n\n  [a]\n");
        assert_int_equal(e.line, 4);
        assert_int_equal(e.col, 4);
        assert_non_null(strstr(e.msg, "defined twice"));

        e = parse_err("s = \"abc\n");
        assert_int_equal(e.line, 1);
        assert_int_equal(e.col, 5);
        assert_non_null(strstr(e.msg, "unterminated string"));

        e = parse_err("s = \"\"\"\nabc\n\nmore");
        assert_int_equal(e.line, 1);
        assert_non_null(strstr(e.msg, "unterminated multi-line string"));

        e = parse_err("a = [1,\n 2,\n 3 4]\n");
        assert_int_equal(e.line, 3);
        assert_int_equal(e.col, 4);
        assert_non_null(strstr(e.msg, "expected ',' or ']'"));

        e = parse_err("a = \"x\" b = 1\n");
        assert_int_equal(e.col, 9);
        assert_non_null(strstr(e.msg, "expected the end of the line"));

        e = parse_err("ok = 1\nbad\n");
        assert_int_equal(e.line, 2);
        assert_non_null(strstr(e.msg, "expected '=' after key 'bad'"));

        e = parse_err("a = \n");
        assert_non_null(strstr(e.msg, "expected a value after '='"));

        e = parse_err("a = 1\r\nb = 2\rc = 3\n");
        assert_int_equal(e.line, 2);
        assert_int_equal(e.col, 6);

        e = parse_err("a = \"\x01\"\n");
        assert_non_null(strstr(e.msg, "U+0001"));
        e = parse_err("a = \"\xc3\x28\"\n");
        assert_non_null(strstr(e.msg, "UTF-8"));
        e = parse_err("a = \"\xed\xa0\x80\"\n"); /* encoded surrogate */
        assert_non_null(strstr(e.msg, "UTF-8"));
        e = parse_err("a = \"\xc0\xaf\"\n"); /* overlong */
        assert_non_null(strstr(e.msg, "overlong"));
}

static void test_bare_word(void **state) {
        struct toml_error e = parse_err("[provisioning]\nauto_reprovisioning_mode = Dynamic\n");
        assert_int_equal(e.line, 2);
        assert_int_equal(e.col, 28);
        assert_string_equal(e.msg, "expected a value, found bare word 'Dynamic'; strings must be quoted: \"Dynamic\"");

        e = parse_err("modes = [ \"a\", OnStartup ]\n");
        assert_string_equal(e.msg,
                            "expected a value, found bare word 'OnStartup'; strings must be quoted: \"OnStartup\"");
        e = parse_err("a = tru\n");
        assert_non_null(strstr(e.msg, "strings must be quoted: \"tru\""));
        e = parse_err("t = { a = Yes }\n");
        assert_non_null(strstr(e.msg, "bare word 'Yes'"));
        e = parse_err("p = /dev/tpmrm0\n");
        assert_non_null(strstr(e.msg, "expected a value"));
}

static void test_limits_size(void **state) {
        size_t n = TOML_MAX_INPUT_BYTES;
        char *buf = malloc(n + 1);
        struct toml_value *root = NULL;
        struct toml_error err;

        assert_non_null(buf);
        /* exactly the limit: one long comment is fine */
        memset(buf, ' ', n + 1);
        buf[0] = '#';
        assert_int_equal(toml_parse(buf, n, NULL, &root, &err), 0);
        assert_null(toml_origin(root));
        root = toml_free(root);
        assert_null(root);
        /* one byte more is refused before parsing */
        err = parse_err_n(buf, n + 1, -E2BIG);
        assert_non_null(strstr(err.msg, "larger than"));
        free(buf);
}

static char *repeat(const char *a, unsigned na, const char *mid, const char *b, unsigned nb) {
        size_t la = strlen(a), lb = strlen(b), lm = strlen(mid);
        char *s = malloc(la * na + lm + lb * nb + 1), *o = s;
        assert_non_null(s);
        for (unsigned i = 0; i < na; i++, o += la)
                memcpy(o, a, la);
        memcpy(o, mid, lm);
        o += lm;
        for (unsigned i = 0; i < nb; i++, o += lb)
                memcpy(o, b, lb);
        *o = 0;
        return s;
}

static void test_limits_depth(void **state) {
        /* the value of a = is at depth 1: TOML_MAX_DEPTH nested arrays fit */
        {
                _cleanup_free_ char *inner = repeat("[", TOML_MAX_DEPTH, "", "]", TOML_MAX_DEPTH);
                _cleanup_free_ char *doc = malloc(strlen(inner) + 8);
                sprintf(doc, "a = %s\n", inner);
                toml_free(parse_ok(doc));
                _cleanup_free_ char *inner2 = repeat("[", TOML_MAX_DEPTH + 1, "", "]", TOML_MAX_DEPTH + 1);
                _cleanup_free_ char *doc2 = malloc(strlen(inner2) + 8);
                sprintf(doc2, "a = %s\n", inner2);
                parse_err_n(doc2, strlen(doc2), -E2BIG);
        }
        {
                _cleanup_free_ char *t = repeat("{b = ", TOML_MAX_DEPTH + 1, "1", "}", TOML_MAX_DEPTH + 1);
                _cleanup_free_ char *doc = malloc(strlen(t) + 8);
                sprintf(doc, "a = %s\n", t);
                parse_err_n(doc, strlen(doc), -E2BIG);
                _cleanup_free_ char *t2 = repeat("{b = ", TOML_MAX_DEPTH, "1", "}", TOML_MAX_DEPTH);
                _cleanup_free_ char *doc2 = malloc(strlen(t2) + 8);
                sprintf(doc2, "a = %s\n", t2);
                toml_free(parse_ok(doc2));
        }
        {
                /* dotted keys and headers: TOML_MAX_DEPTH parts fit, one more does not */
                _cleanup_free_ char *k = repeat("k.", TOML_MAX_DEPTH - 1, "k", "", 0);
                _cleanup_free_ char *doc = malloc(strlen(k) + 16);
                sprintf(doc, "%s = 1\n", k);
                toml_free(parse_ok(doc));
                sprintf(doc, "[%s]\n", k);
                toml_free(parse_ok(doc));
                _cleanup_free_ char *k2 = repeat("k.", TOML_MAX_DEPTH, "k", "", 0);
                _cleanup_free_ char *doc2 = malloc(strlen(k2) + 16);
                sprintf(doc2, "%s = 1\n", k2);
                parse_err_n(doc2, strlen(doc2), -E2BIG);
                sprintf(doc2, "[%s]\n", k2);
                parse_err_n(doc2, strlen(doc2), -E2BIG);
                /* header depth plus value depth counts together */
                sprintf(doc, "[%s]\nv = [1]\n", k);
                parse_err_n(doc, strlen(doc), -E2BIG);
        }
}

static void test_merge(void **state) {
        struct toml_value *dst = parse_ok("a = 1\n"
                                          "list = [1, 2, 3]\n"
                                          "[t]\n"
                                          "x = \"old\"\n"
                                          "keep = true\n"
                                          "[t.sub]\n"
                                          "deep = 1\n");
        struct toml_value *src = NULL;
        struct toml_error err;
        const char *s;
        int64_t i;
        bool b;

        assert_int_equal(toml_parse("list = [9]\n[t]\nx = \"new\"\nadded = 5\n[t.sub]\nmore = 2\n[n]\nq = 1\n", 62,
                                    "drop-in.toml", &src, &err), 0);
        assert_int_equal(toml_merge(dst, src), 0);

        assert_int_equal(toml_get_integer(dst, "a", &i), 0);
        assert_int_equal(i, 1);
        assert_int_equal(toml_array_size(toml_get(dst, "list")), 1); /* arrays replace */
        assert_int_equal(toml_get_string(dst, "t.x", &s), 0);
        assert_string_equal(s, "new");
        assert_string_equal(toml_origin(toml_get(dst, "t.x")), "drop-in.toml");
        assert_int_equal(toml_get_bool(dst, "t.keep", &b), 0);
        assert_string_equal(toml_origin(toml_get(dst, "t.keep")), "test.toml");
        assert_int_equal(toml_get_integer(dst, "t.added", &i), 0);
        assert_int_equal(i, 5);
        assert_int_equal(toml_get_integer(dst, "t.sub.deep", &i), 0);
        assert_int_equal(toml_get_integer(dst, "t.sub.more", &i), 0);
        assert_int_equal(toml_get_integer(dst, "n.q", &i), 0);
        assert_string_equal(toml_origin(toml_get(dst, "n")), "drop-in.toml");
        /* definition order: new keys go last */
        assert_string_equal(toml_table_key(dst, toml_table_size(dst) - 1), "n");

        /* a scalar replaces a table and a table replaces a scalar */
        assert_int_equal(toml_parse("t = 3\na.b = 1\n", 14, NULL, &src, &err), 0);
        assert_int_equal(toml_merge(dst, src), 0);
        assert_int_equal(toml_get_integer(dst, "t", &i), 0);
        assert_int_equal(i, 3);
        assert_int_equal(toml_get_integer(dst, "a.b", &i), 0);

        assert_int_equal(toml_merge(dst, NULL), 0);
        toml_free(dst);
}

static void test_strings(void **state) {
        struct toml_value *root = parse_ok("b = \"tab\\there \\\"q\\\" \\\\ \\u00e9 \\U0001F600 \\u0000end\"\n"
                                           "l = 'C:\\path\\n'\n"
                                           "ml = \"\"\"\r\nline1\r\nline2 \\\r\n    cont\"\"\"\"\"\n"
                                           "ll = '''\n'quoted' ''x'''''\n"
                                           "e = \"\"\n"
                                           "\"k\\u0000z\" = 1\n");
        size_t len;
        const char *s = toml_string(toml_get(root, "b"), &len);
        static const char want[] = "tab\there \"q\" \\ \xc3\xa9 \xf0\x9f\x98\x80 \0end";
        assert_int_equal(len, sizeof(want) - 1);
        assert_memory_equal(s, want, len);
        assert_string_equal(toml_string(toml_get(root, "l"), NULL), "C:\\path\\n");
        assert_string_equal(toml_string(toml_get(root, "ml"), NULL), "line1\nline2 cont\"\"");
        assert_string_equal(toml_string(toml_get(root, "ll"), NULL), "'quoted' ''x''");
        assert_string_equal(toml_string(toml_get(root, "e"), &len), "");
        assert_int_equal(len, 0);
        toml_table_key_n(root, 5, &len);
        assert_int_equal(len, 3);
        toml_free(root);

        parse_err("a = \"\\uD800\"\n");
        parse_err("a = \"\\uDFFF\"\n");
        parse_err("a = \"\\U00110000\"\n");
        parse_err("a = \"\\u12\"\n");
        parse_err("a = \"\\x41\"\n");
        parse_err("a = \"\\e\"\n");
        parse_err("a = \"\"\"a\\  b\"\"\"\n");       /* backslash-space not at end of line */
        parse_err("a = '''x''''''\n");                /* six quotes */
        parse_err("\"\"\"k\"\"\" = 1\n");            /* multi-line key */
        toml_free(parse_ok("a = \"\\U0010FFFF\"\n"));
}

static void test_numbers(void **state) {
        struct toml_value *root = parse_ok("max = 9223372036854775807\n"
                                           "min = -9223372036854775808\n"
                                           "hex = 0x7FFF_FFFF_FFFF_FFFF\n"
                                           "oct = 0o755\n"
                                           "bin = 0b1010\n"
                                           "u = 1_000\n"
                                           "z = -0\n"
                                           "f1 = -1.5e-3\n"
                                           "f2 = 6.626e+3_4\n"
                                           "f3 = -inf\n"
                                           "f4 = nan\n"
                                           "f5 = 1e06\n");
        int64_t i;
        assert_int_equal(toml_get_integer(root, "max", &i), 0);
        assert_true(i == INT64_MAX);
        assert_int_equal(toml_get_integer(root, "min", &i), 0);
        assert_true(i == INT64_MIN);
        assert_int_equal(toml_get_integer(root, "hex", &i), 0);
        assert_true(i == INT64_MAX);
        assert_int_equal(toml_integer(toml_get(root, "oct")), 0755);
        assert_int_equal(toml_integer(toml_get(root, "bin")), 10);
        assert_int_equal(toml_integer(toml_get(root, "u")), 1000);
        assert_int_equal(toml_integer(toml_get(root, "z")), 0);
        assert_true(toml_float(toml_get(root, "f1")) == -1.5e-3);
        assert_true(toml_float(toml_get(root, "f2")) == 6.626e34);
        assert_true(isinf(toml_float(toml_get(root, "f3"))) && toml_float(toml_get(root, "f3")) < 0);
        assert_true(isnan(toml_float(toml_get(root, "f4"))));
        assert_true(toml_float(toml_get(root, "f5")) == 1e6);
        toml_free(root);

        static const char *bad[] = {
                "a = 9223372036854775808\n", "a = -9223372036854775809\n", "a = 0x8000000000000000\n",
                "a = 01\n", "a = +01\n", "a = 1__0\n", "a = _1\n", "a = 1_\n", "a = 0x_1\n", "a = +0x1\n",
                "a = 0o8\n", "a = 0b2\n", "a = 0X1\n", "a = 1.\n", "a = .1\n", "a = 1.e5\n", "a = 1e\n",
                "a = 1e_5\n", "a = 00.1\n", "a = 1._5\n", "a = +nan_\n", "a = infinity\n", "a = 1 2\n",
        };
        for (size_t k = 0; k < ELEMENTSOF(bad); k++)
                parse_err(bad[k]);
}

static void test_datetimes(void **state) {
        struct toml_value *root = parse_ok("odt = 1979-05-27T07:32:00.999-07:00\n"
                                           "sp = 1979-05-27 07:32:00z\n"
                                           "ldt = 1979-05-27t07:32:00\n"
                                           "ld = 2000-02-29\n"
                                           "lt = 23:59:60.5\n");
        assert_int_equal(toml_type(toml_get(root, "odt")), TOML_DATETIME);
        assert_string_equal(toml_datetime_text(toml_get(root, "odt")), "1979-05-27T07:32:00.999-07:00");
        assert_int_equal(toml_type(toml_get(root, "sp")), TOML_DATETIME);
        assert_string_equal(toml_datetime_text(toml_get(root, "sp")), "1979-05-27 07:32:00z");
        assert_int_equal(toml_type(toml_get(root, "ldt")), TOML_DATETIME_LOCAL);
        assert_int_equal(toml_type(toml_get(root, "ld")), TOML_DATE_LOCAL);
        assert_int_equal(toml_type(toml_get(root, "lt")), TOML_TIME_LOCAL);
        toml_free(root);
        toml_free(parse_ok("d = 2024-02-29\n"));

        static const char *bad[] = {
                "d = 1900-02-29\n", "d = 2023-02-29\n", "d = 2023-04-31\n", "d = 2023-13-01\n",
                "d = 2023-00-01\n", "d = 2023-01-00\n", "t = 24:00:00\n", "t = 12:60:00\n", "t = 12:00:61\n",
                "t = 12:00\n", "d = 1979-05-27T07:32:00+24:00\n", "d = 1979-05-27T07:32:00+01:60\n",
                "d = 1979-05-27T07:32\n", "d = 1979-5-27\n", "t = 07:32:00Z\n", "d = 1979-05-27T07:32:00.\n",
                "d = 1979-05-27X07:32:00\n",
        };
        for (size_t k = 0; k < ELEMENTSOF(bad); k++)
                parse_err(bad[k]);
}

static void test_redefinitions(void **state) {
        static const char *bad[] = {
                "a = 1\na = 2\n",
                "a = 1\na.b = 2\n",
                "a.b = 1\na = 2\n",
                "[a]\n[a]\n",
                "a = {}\n[a]\n",
                "a = {b = 1}\na.c = 2\n",
                "a = {b = {c = 1}}\n[a.b]\n",
                "a = {b = 1, b = 2}\n",
                "a = {b = 1,}\n",
                "a = {b = 1\n}\n",
                "a = []\n[[a]]\n",
                "[[a]]\n[a]\n",
                "[a]\nb.c = 1\n[a.b]\n",
                "[a.b.c]\n[a]\nb.c.d = 1\n",
                "a = [{b = 1}]\n[a.c]\n",
                "a.b = 1\n[a]\n",
                "[a]\nb = 1\n[a.b]\n",
        };
        for (size_t k = 0; k < ELEMENTSOF(bad); k++)
                parse_err(bad[k]);

        struct toml_error e = parse_err("a = {b = 1}\na.c = 2\n");
        assert_non_null(strstr(e.msg, "inline table"));
        e = parse_err("a = []\n[[a]]\n");
        assert_non_null(strstr(e.msg, "cannot append"));

        /* valid neighbours of the above */
        struct toml_value *root = parse_ok("[a.b.c]\nz = 1\n[a]\nx = 1\n"
                                           "[f]\napple.color = \"red\"\n[f.apple.texture]\nsmooth = true\n"
                                           "[[p]]\nn = 1\n[p.sub]\nq = 1\n[[p]]\nn = 2\n"
                                           "[t]\nu = {k.l = 1, k.m = 2}\n");
        const struct toml_value *p = toml_get(root, "p");
        assert_int_equal(toml_array_size(p), 2);
        assert_int_equal(toml_integer(toml_table_get(toml_array_at(p, 1), "n")), 2);
        assert_non_null(toml_table_get(toml_table_get(toml_array_at(p, 0), "sub"), "q"));
        assert_int_equal(toml_table_size(toml_get(root, "t.u.k")), 2);
        assert_true(toml_bool(toml_get(root, "f.apple.texture.smooth")));
        toml_free(root);
}

static void test_big_table(void **state) {
        /* enough keys to use the hash index, in one inline table and as lines */
        enum { N = 5000 };
        size_t cap = N * 32 + 64;
        _cleanup_free_ char *doc = malloc(cap);
        size_t o = 0;
        o += (size_t)snprintf(doc + o, cap - o, "t = {");
        for (unsigned i = 0; i < N; i++)
                o += (size_t)snprintf(doc + o, cap - o, "%sk%u = %u", i ? ", " : "", i, i);
        o += (size_t)snprintf(doc + o, cap - o, "}\n");
        for (unsigned i = 0; i < N; i++)
                o += (size_t)snprintf(doc + o, cap - o, "r%u = %u\n", i, i);
        struct toml_value *root = parse_ok(doc);
        const struct toml_value *t = toml_get(root, "t");
        assert_int_equal(toml_table_size(t), N);
        assert_int_equal(toml_table_size(root), N + 1);
        for (unsigned i = 0; i < N; i++) {
                char k[32];
                snprintf(k, sizeof(k), "k%u", i);
                assert_int_equal(toml_integer(toml_table_get(t, k)), i);
                assert_string_equal(toml_table_key(t, i), k);
                snprintf(k, sizeof(k), "r%u", i);
                assert_int_equal(toml_integer(toml_table_get(root, k)), i);
        }
        /* position of a key far along a long line */
        assert_int_equal(toml_line(toml_table_get(t, "k4999")), 1);
        assert_true(toml_col(toml_table_get(t, "k4999")) > 40000);
        toml_free(root);

        /* a duplicate among many keys is still found */
        snprintf(doc + o, cap - o, "r7 = 1\n");
        parse_err(doc);
}

static void test_misc(void **state) {
        struct toml_value *root = parse_ok("\xEF\xBB\xBF"
                                           "a = 1 # comment with é and \t tab\n"
                                           "\"\" = 'empty key'\n"
                                           "1234 = 'numeric key'\n"
                                           "arr = [ 1, 'two', [3], {four = 4}, ]\n");
        assert_int_equal(toml_line(toml_get(root, "a")), 1);
        assert_int_equal(toml_col(toml_get(root, "a")), 1);
        assert_string_equal(toml_string(toml_table_get(root, ""), NULL), "empty key");
        assert_string_equal(toml_string(toml_get(root, "1234"), NULL), "numeric key");
        assert_int_equal(toml_array_size(toml_get(root, "arr")), 4);
        toml_free(root);
        toml_free(parse_ok(""));
        assert_null(toml_free(NULL));
        parse_err("[]\n");
        parse_err("[a\n");
        parse_err("[[a]\n");
        parse_err("a = [1,,2]\n");
        parse_err("a = [,]\n");
        parse_err("a = [1\n");
        parse_err("a = {\n");
        parse_err("= 1\n");
        parse_err("a.b. = 1\n");
        parse_err("a b = 1\n");
        parse_err("# \x7f\n");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_get_typed),
                cmocka_unit_test(test_line_col),
                cmocka_unit_test(test_error_positions),
                cmocka_unit_test(test_bare_word),
                cmocka_unit_test(test_limits_size),
                cmocka_unit_test(test_limits_depth),
                cmocka_unit_test(test_merge),
                cmocka_unit_test(test_strings),
                cmocka_unit_test(test_numbers),
                cmocka_unit_test(test_datetimes),
                cmocka_unit_test(test_redefinitions),
                cmocka_unit_test(test_big_table),
                cmocka_unit_test(test_misc),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
