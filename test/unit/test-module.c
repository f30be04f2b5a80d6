/* Tests for lib/module.c: the hub module registry bodies and replies (golden
 * bytes), keyd's bodies and replies, the strict HTTP response reader, the
 * module cache (round trip, every truncation and bit flip rejected, save and
 * load), the hub answer classification and the reconciliation plan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "module.h"
#include "sha256.h"
#include "util.h"

static void test_module_id(void **state) {
        assert_true(module_id_is_valid("$edgeAgent"));
        assert_true(module_id_is_valid("a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p'q"));
        assert_false(module_id_is_valid(""));
        assert_false(module_id_is_valid(NULL));
        assert_false(module_id_is_valid("a/b"));
        assert_false(module_id_is_valid("a b"));
        assert_false(module_id_is_valid("caf\xc3\xa9"));
        char id[MODULE_ID_MAX + 2];
        memset(id, 'a', sizeof id);
        id[MODULE_ID_MAX] = '\0';
        assert_true(module_id_is_valid(id));
        id[MODULE_ID_MAX] = 'a';
        id[MODULE_ID_MAX + 1] = '\0';
        assert_false(module_id_is_valid(id)); /* the limit + 1 */
}

static void test_hub_bodies(void **state) {
        _cleanup_free_ char *create = NULL, *update = NULL;
        assert_int_equal(module_hub_body("$edgeAgent", "dev-1", NULL, 0, NULL, 0, &create), 0);
        assert_string_equal(create, "{\"moduleId\":\"$edgeAgent\",\"deviceId\":\"dev-1\"}");
        const uint8_t p[3] = { 1, 2, 3 }, s[2] = { 0xff, 0xfe };
        assert_int_equal(module_hub_body("m1", "dev-1", p, sizeof p, s, sizeof s, &update), 0);
        assert_string_equal(update, "{\"moduleId\":\"m1\",\"deviceId\":\"dev-1\",\"authentication\":{\"symmetricKey\":"
                                    "{\"primaryKey\":\"AQID\",\"secondaryKey\":\"//4=\"},\"type\":\"sas\"}}");
        char *x = NULL;
        assert_int_equal(module_hub_body("a/b", "dev-1", NULL, 0, NULL, 0, &x), -EINVAL);
        assert_int_equal(module_hub_body("m", "", NULL, 0, NULL, 0, &x), -EINVAL);
        assert_int_equal(module_hub_body("m", "d", p, 0, s, 2, &x), -EINVAL);
        uint8_t big[MODULE_KEY_MAX_BYTES + 1] = { 0 };
        assert_int_equal(module_hub_body("m", "d", big, sizeof big, s, 2, &x), -EINVAL);
        assert_int_equal(module_hub_body("m", "d", big, MODULE_KEY_MAX_BYTES, s, 2, &x), 0);
        free(x);
}

static const char module_json[] =
        "{\"moduleId\":\"$edgeAgent\",\"managedBy\":\"iotEdge\",\"deviceId\":\"dev-1\",\"generationId\":"
        "\"638000000000000001\",\"etag\":\"MQ==\",\"connectionState\":\"Disconnected\",\"authentication\":"
        "{\"symmetricKey\":{\"primaryKey\":null,\"secondaryKey\":null},\"x509Thumbprint\":{\"primaryThumbprint\":"
        "null,\"secondaryThumbprint\":null},\"type\":\"sas\"}}";

static void test_hub_parse(void **state) {
        struct module_hub_entry e;
        assert_int_equal(module_hub_parse_one(module_json, strlen(module_json), &e), 0);
        assert_string_equal(e.module_id, "$edgeAgent");
        assert_string_equal(e.device_id, "dev-1");
        assert_string_equal(e.gen_id, "638000000000000001");
        assert_string_equal(e.etag, "MQ==");
        assert_string_equal(e.managed_by, "iotEdge");
        const char *bad[] = {
                "", "[]", "{}", "{\"moduleId\":\"m\"}", "{\"moduleId\":\"a/b\",\"deviceId\":\"d\"}",
                "{\"moduleId\":1,\"deviceId\":\"d\"}", "{\"moduleId\":\"m\",\"deviceId\":\"d\",\"etag\":5}",
                "{\"moduleId\":\"m\",\"moduleId\":\"n\",\"deviceId\":\"d\"}", /* duplicate key */
                "{\"moduleId\":\"m\",\"deviceId\":\"d\\u0000x\"}",            /* NUL inside */
                "{\"moduleId\":\"m\",\"deviceId\":\"d\"", "not json",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(module_hub_parse_one(bad[i], strlen(bad[i]), &e), -EBADMSG);
        /* a generationId over the limit */
        char big[400];
        snprintf(big, sizeof big, "{\"moduleId\":\"m\",\"deviceId\":\"d\",\"generationId\":\"%0*d\"}",
                 MODULE_GEN_ID_MAX + 1, 0);
        assert_int_equal(module_hub_parse_one(big, strlen(big), &e), -EBADMSG);
        snprintf(big, sizeof big, "{\"moduleId\":\"m\",\"deviceId\":\"d\",\"generationId\":\"%0*d\"}",
                 MODULE_GEN_ID_MAX, 0);
        assert_int_equal(module_hub_parse_one(big, strlen(big), &e), 0);
        /* a reply over MODULE_HUB_REPLY_MAX */
        assert_int_equal(module_hub_parse_one(module_json, MODULE_HUB_REPLY_MAX + 1, &e), -E2BIG);
}

static void test_hub_list(void **state) {
        struct module_hub_entry *v = NULL;
        size_t n = 99;
        assert_int_equal(module_hub_parse_list("[]", 2, &v, &n), 0);
        assert_null(v);
        assert_int_equal(n, 0);
        char two[2048];
        snprintf(two, sizeof two, "[%s,{\"moduleId\":\"m2\",\"deviceId\":\"dev-1\"}]", module_json);
        assert_int_equal(module_hub_parse_list(two, strlen(two), &v, &n), 0);
        assert_int_equal(n, 2);
        assert_string_equal(v[1].module_id, "m2");
        assert_string_equal(v[1].gen_id, "");
        free(v);
        assert_int_equal(module_hub_parse_list("{}", 2, &v, &n), -EBADMSG);
        assert_int_equal(module_hub_parse_list("[1]", 3, &v, &n), -EBADMSG);
        /* MODULE_MAX_MODULES + 1 entries */
        size_t cap = (MODULE_MAX_MODULES + 1) * 40 + 4;
        char *many = malloc(cap), *p = many;
        *p++ = '[';
        for (int i = 0; i <= MODULE_MAX_MODULES; i++)
                p += sprintf(p, "%s{\"moduleId\":\"m%d\",\"deviceId\":\"d\"}", i ? "," : "", i);
        *p++ = ']';
        *p = '\0';
        assert_int_equal(module_hub_parse_list(many, (size_t)(p - many), &v, &n), -EBADMSG);
        /* exactly the limit */
        char *last = strstr(many, ",{\"moduleId\":\"m1000\"");
        *last = ']';
        assert_int_equal(module_hub_parse_list(many, (size_t)(last + 1 - many), &v, &n), 0);
        assert_int_equal(n, MODULE_MAX_MODULES);
        free(v);
        free(many);
}

static void test_hub_error(void **state) {
        char msg[MODULE_ERROR_MAX];
        bool net = true;
        const char *b = "{\"Message\":\"ErrorCode:ModuleNotFound;no\\nsuch\",\"ExceptionMessage\":\"x\"}";
        module_hub_parse_error(b, strlen(b), msg, sizeof msg, &net);
        assert_string_equal(msg, "ErrorCode:ModuleNotFound;no?such"); /* control bytes replaced */
        assert_false(net);
        b = "{\"errorMessage\":\"offline\",\"networkError\":true}";
        module_hub_parse_error(b, strlen(b), msg, sizeof msg, &net);
        assert_string_equal(msg, "offline");
        assert_true(net);
        module_hub_parse_error("<html>", 6, msg, sizeof msg, &net);
        assert_string_equal(msg, "");
        assert_false(net);
        char small[4];
        b = "{\"Message\":\"abcdef\"}";
        module_hub_parse_error(b, strlen(b), small, sizeof small, &net);
        assert_string_equal(small, "abc");
}

static void test_keyd_bodies(void **state) {
        _cleanup_free_ char *k = NULL, *d = NULL, *e = NULL, *data = NULL, *sec = NULL;
        assert_int_equal(module_keyd_create_key_body(MODULE_MASTER_KEY_ID, &k), 0);
        assert_string_equal(k, "{\"keyId\":\"aziot_identityd_master_id\",\"keyBytes\":null,\"usage\":\"derive,sign\"}");
        assert_int_equal(module_keyd_derivation_data("$edgeAgent", "123", true, &data), 0);
        assert_string_equal(data, "$edgeAgent:123:primary");
        assert_int_equal(module_keyd_derivation_data("m", "", false, &sec), 0);
        assert_string_equal(sec, "m::secondary");
        assert_int_equal(module_keyd_derive_body("sr=x&sig=y", (const uint8_t *)"ab", 2, &d), 0);
        assert_string_equal(d, "{\"baseKeyHandle\":\"sr=x&sig=y\",\"derivationData\":\"YWI=\"}");
        assert_int_equal(module_keyd_export_body("h", &e), 0);
        assert_string_equal(e, "{\"keyHandle\":\"h\"}");
        char *x = NULL;
        assert_int_equal(module_keyd_export_body("", &x), -EINVAL);
        assert_int_equal(module_keyd_derive_body("h", NULL, 0, &x), -EINVAL);
        assert_int_equal(module_keyd_derivation_data("a/b", "1", true, &x), -EINVAL);
}

static void test_keyd_replies(void **state) {
        _cleanup_free_ char *h = NULL;
        const char *ok = "{\"keyHandle\":\"sr=eyJ9&sig=abc\"}";
        assert_int_equal(module_keyd_parse_handle(ok, strlen(ok), &h), 0);
        assert_string_equal(h, "sr=eyJ9&sig=abc");
        char *x = NULL;
        const char *bad[] = { "{}", "{\"keyHandle\":\"\"}", "{\"keyHandle\":1}", "[]", "x",
                              "{\"keyHandle\":\"a\\nb\"}" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(module_keyd_parse_handle(bad[i], strlen(bad[i]), &x), -EBADMSG);
        /* a handle over MODULE_KEY_HANDLE_MAX */
        size_t n = MODULE_KEY_HANDLE_MAX + 1;
        char *big = malloc(n + 32);
        int len = sprintf(big, "{\"keyHandle\":\"");
        memset(big + len, 'a', n);
        strcpy(big + len + n, "\"}");
        assert_int_equal(module_keyd_parse_handle(big, strlen(big), &x), -EBADMSG);
        big[len + n - 1] = '"';
        big[len + n] = '}';
        big[len + n + 1] = '\0';
        assert_int_equal(module_keyd_parse_handle(big, strlen(big), &x), 0);
        free(x);
        free(big);

        uint8_t *key = NULL;
        size_t klen = 0;
        const char *kj = "{\"key\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"}";
        assert_int_equal(module_keyd_parse_key(kj, strlen(kj), &key, &klen), 0);
        assert_int_equal(klen, 32);
        assert_int_equal(key[31], 31);
        free(key);
        const char *kbad[] = { "{\"key\":\"\"}", "{\"key\":\"!!\"}", "{\"key\":null}", "{}" };
        for (size_t i = 0; i < ELEMENTSOF(kbad); i++)
                assert_int_equal(module_keyd_parse_key(kbad[i], strlen(kbad[i]), &key, &klen), -EBADMSG);
        char msg[64];
        const char *eb = "{\"message\":\"parameter \\\"handle\\\" has an invalid value\"}";
        module_keyd_parse_error(eb, strlen(eb), msg, sizeof msg);
        assert_string_equal(msg, "parameter \"handle\" has an invalid value");
        module_keyd_parse_error("", 0, msg, sizeof msg);
        assert_string_equal(msg, "");
}

static void test_keyd_request(void **state) {
        _cleanup_free_ char *r = NULL;
        size_t len = 0;
        assert_int_equal(module_keyd_request("POST", "/derivedkey/export", "{\"keyHandle\":\"h\"}", &r, &len), 0);
        assert_string_equal(r, "POST /derivedkey/export?api-version=2020-09-01 HTTP/1.1\r\nHost: keyd.sock\r\n"
                               "Content-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n"
                               "{\"keyHandle\":\"h\"}");
        assert_int_equal(len, strlen(r));
        char *x = NULL;
        assert_int_equal(module_keyd_request("POST", "key", NULL, &x, &len), -EINVAL);
        assert_int_equal(module_keyd_request("POST", "/a b", NULL, &x, &len), -EINVAL);
        assert_int_equal(module_keyd_request("POST", "/a\r\n", NULL, &x, &len), -EINVAL);
}

static int parse(const char *text, bool eof, int *status, char *body_out, size_t body_sz) {
        char *copy = strdup(text);
        const char *body = NULL;
        size_t blen = 0;
        int r = module_http_response_parse(copy, strlen(copy), eof, status, &body, &blen);
        if (r == 1)
                snprintf(body_out, body_sz, "%.*s", (int)blen, body);
        free(copy);
        return r;
}

static void test_http_response(void **state) {
        int st = 0;
        char body[256];
        assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false, &st, body, sizeof body), 1);
        assert_int_equal(st, 200);
        assert_string_equal(body, "{}");
        /* incomplete, then eof before the end */
        assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", false, &st, body, sizeof body), 0);
        assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", true, &st, body, sizeof body),
                         -EPIPE);
        assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-", false, &st, body, sizeof body), 0);
        /* chunked, de-chunked */
        assert_int_equal(parse("HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"m\r\n2\r\n\"}\r\n0\r\n\r\n",
                               false, &st, body, sizeof body),
                         1);
        assert_int_equal(st, 400);
        assert_string_equal(body, "{\"m\"}");
        assert_int_equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", false, &st, body,
                               sizeof body),
                         0);
        /* the body ends with the connection */
        assert_int_equal(parse("HTTP/1.0 200 OK\r\n\r\nabc", false, &st, body, sizeof body), 0);
        assert_int_equal(parse("HTTP/1.0 200 OK\r\n\r\nabc", true, &st, body, sizeof body), 1);
        assert_string_equal(body, "abc");
        assert_int_equal(parse("HTTP/1.1 204 No Content\r\n\r\n", false, &st, body, sizeof body), 1);
        assert_int_equal(st, 204);
        const char *bad[] = {
                "HTTP/2 200 OK\r\n\r\n",
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 20x OK\r\n\r\n",
                "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",                          /* bare LF */
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",   /* two lengths */
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext\r\na\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = parse(bad[i], true, &st, body, sizeof body);
                if (r != -EBADMSG)
                        fail_msg("case %zu: %d", i, r);
        }
        /* limits: a head over MODULE_KEYD_HEAD_MAX, a length over MODULE_KEYD_RESPONSE_MAX */
        size_t n = MODULE_KEYD_HEAD_MAX + 10;
        char *big = malloc(n + 1);
        memset(big, 'a', n);
        memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
        big[n] = '\0';
        const char *b = NULL;
        size_t bl = 0;
        assert_int_equal(module_http_response_parse(big, n, false, &st, &b, &bl), -E2BIG);
        free(big);
        assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n", false, &st, body, sizeof body),
                         -E2BIG);
        char buf[8];
        assert_int_equal(module_http_response_parse(buf, MODULE_KEYD_RESPONSE_MAX + 1, false, &st, &b, &bl), -E2BIG);
}

static void sample_cache(struct module_cache *c) {
        *c = (struct module_cache){ 0 };
        strcpy(c->hub, "hub1.azure-devices.net");
        strcpy(c->device_id, "dev-1");
        assert_int_equal(module_cache_set(c, "$edgeAgent", "111"), 0);
        assert_int_equal(module_cache_set(c, "m2", ""), 0);
        assert_int_equal(module_cache_set_principal(c, "m2", true), 0);
}

static void test_cache_roundtrip(void **state) {
        struct module_cache c, out;
        sample_cache(&c);
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        assert_int_equal(module_cache_format(&c, &buf, &len), 0);
        assert_int_equal(strlen(buf), len);
        assert_true(startswith(buf, "{\"version\":1,\"hub\":\"hub1.azure-devices.net\",\"deviceId\":\"dev-1\","
                                    "\"modules\":[{\"moduleId\":\"$edgeAgent\",\"generationId\":\"111\","
                                    "\"principal\":false},{\"moduleId\":\"m2\",\"generationId\":\"\",\"principal\":"
                                    "true}]}\nsha256:"));
        assert_int_equal(module_cache_parse(buf, len, &out), 0);
        assert_string_equal(out.hub, c.hub);
        assert_string_equal(out.device_id, c.device_id);
        assert_int_equal(out.n_modules, 2);
        for (size_t i = 0; i < 2; i++) {
                assert_string_equal(out.modules[i].module_id, c.modules[i].module_id);
                assert_string_equal(out.modules[i].gen_id, c.modules[i].gen_id);
                assert_int_equal(out.modules[i].principal, c.modules[i].principal);
        }
        module_cache_clear(&out);

        /* every truncation and every single-bit flip is rejected whole */
        for (size_t i = 0; i < len; i++)
                assert_int_equal(module_cache_parse(buf, i, &out), -EBADMSG);
        for (size_t i = 0; i < len; i++)
                for (int bit = 0; bit < 8; bit++) {
                        buf[i] ^= (char)(1 << bit);
                        int r = module_cache_parse(buf, len, &out);
                        buf[i] ^= (char)(1 << bit);
                        if (r == 0) {
                                /* a flip in the hex digest that keeps the same value (case) */
                                module_cache_clear(&out);
                                assert_true(i >= len - 65);
                                continue;
                        }
                        assert_int_equal(r, -EBADMSG);
                }
        assert_int_equal(module_cache_parse(buf, MODULE_CACHE_MAX_BYTES + 1, &out), -E2BIG);

        /* set/remove */
        assert_int_equal(module_cache_set(&c, "$edgeAgent", "222"), 0);
        assert_string_equal(module_cache_find(&c, "$edgeAgent")->gen_id, "222");
        assert_false(module_cache_find(&c, "$edgeAgent")->principal);
        assert_true(module_cache_find(&c, "m2")->principal);
        assert_true(module_cache_remove(&c, "$edgeAgent"));
        assert_false(module_cache_remove(&c, "$edgeAgent"));
        assert_null(module_cache_find(&c, "$edgeAgent"));
        assert_int_equal(module_cache_set_principal(&c, "nope", true), -ENOENT);
        assert_int_equal(module_cache_set(&c, "a/b", "1"), -EINVAL);
        module_cache_clear(&c);
}

/* Valid JSON with a correct digest but wrong content. */
static int parse_signed(const char *line, struct module_cache *out) {
        size_t n = strlen(line);
        char *buf = malloc(n + 1 + 72 + 1);
        memcpy(buf, line, n);
        buf[n] = '\n';
        uint8_t d[32];
        sha256(buf, n + 1, d);
        char *p = buf + n + 1;
        p += sprintf(p, "sha256:");
        for (int i = 0; i < 32; i++)
                p += sprintf(p, "%02x", d[i]);
        *p++ = '\n';
        int r = module_cache_parse(buf, (size_t)(p - buf), out);
        free(buf);
        return r;
}

static void test_cache_fields(void **state) {
        struct module_cache out;
        assert_int_equal(parse_signed("{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[]}", &out), 0);
        module_cache_clear(&out);
        const char *bad[] = {
                "{\"version\":2,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[]}",
                "{\"version\":1,\"hub\":\"\",\"deviceId\":\"d\",\"modules\":[]}",
                "{\"version\":1,\"hub\":\"a/b\",\"deviceId\":\"d\",\"modules\":[]}",
                "{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":{}}",
                "{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[],\"x\":1}",
                "{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[{\"moduleId\":\"m\",\"generationId\":\"1\"}]}",
                "{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[{\"moduleId\":\"m\",\"generationId\":1,"
                "\"principal\":true}]}",
                "{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[{\"moduleId\":\"m\",\"generationId\":\"1\","
                "\"principal\":true},{\"moduleId\":\"m\",\"generationId\":\"2\",\"principal\":true}]}", /* duplicate */
                "{\"version\":1,\"hub\":\"h\",\"deviceId\":\"d\",\"modules\":[{\"moduleId\":\"a b\",\"generationId\":\"1\","
                "\"principal\":true}]}",
                "[1]",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (parse_signed(bad[i], &out) != -EBADMSG)
                        fail_msg("case %zu accepted", i);
}

static void test_cache_limit(void **state) {
        struct module_cache c = { 0 };
        strcpy(c.hub, "h");
        strcpy(c.device_id, "d");
        char id[16];
        for (int i = 0; i < MODULE_MAX_MODULES; i++) {
                snprintf(id, sizeof id, "m%d", i);
                assert_int_equal(module_cache_set(&c, id, "638000000000000001"), 0);
        }
        assert_int_equal(module_cache_set(&c, "one-more", "1"), -E2BIG);
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        assert_int_equal(module_cache_format(&c, &buf, &len), 0);
        assert_true(len <= MODULE_CACHE_MAX_BYTES); /* a full cache fits the read limit */
        module_cache_clear(&c);
}

static void test_cache_file(void **state) {
        char dir[] = "/tmp/test-module-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char path[128];
        snprintf(path, sizeof path, "%s/%s", dir, MODULE_CACHE_FILE_NAME);
        struct module_cache c, out;
        assert_int_equal(module_cache_load(path, &out), -ENOENT);
        sample_cache(&c);
        assert_int_equal(module_cache_save(path, &c), 0);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, MODULE_CACHE_FILE_MODE);
        assert_int_equal(module_cache_load(path, &out), 0);
        assert_int_equal(out.n_modules, 2);
        module_cache_clear(&out);
        /* a torn file: the first half of it */
        FILE *f = fopen(path, "r+");
        assert_non_null(f);
        assert_int_equal(ftruncate(fileno(f), 40), 0);
        fclose(f);
        assert_int_equal(module_cache_load(path, &out), -EBADMSG);
        module_cache_clear(&c);
        unlink(path);
        rmdir(dir);
}

static void test_classify(void **state) {
        assert_int_equal(module_hub_classify(0, 200, false, false), MODULE_HUB_OK);
        assert_int_equal(module_hub_classify(0, 204, false, true), MODULE_HUB_OK);
        assert_int_equal(module_hub_classify(0, 200, false, true), MODULE_HUB_FAILED);
        assert_int_equal(module_hub_classify(0, 401, false, false), MODULE_HUB_UNAUTHORIZED);
        assert_int_equal(module_hub_classify(0, 403, false, false), MODULE_HUB_FORBIDDEN);
        assert_int_equal(module_hub_classify(0, 404, false, false), MODULE_HUB_NOT_FOUND);
        assert_int_equal(module_hub_classify(0, 409, false, false), MODULE_HUB_CONFLICT);
        assert_int_equal(module_hub_classify(0, 412, false, false), MODULE_HUB_PRECONDITION);
        assert_int_equal(module_hub_classify(0, 429, false, false), MODULE_HUB_THROTTLED);
        assert_int_equal(module_hub_classify(0, 500, false, false), MODULE_HUB_UNAVAILABLE);
        assert_int_equal(module_hub_classify(0, 503, false, false), MODULE_HUB_UNAVAILABLE);
        assert_int_equal(module_hub_classify(0, 400, true, false), MODULE_HUB_UNAVAILABLE); /* networkError */
        assert_int_equal(module_hub_classify(-ETIMEDOUT, 0, false, false), MODULE_HUB_UNAVAILABLE);
        assert_int_equal(module_hub_classify(0, 400, false, false), MODULE_HUB_FAILED);
        for (int o = 0; o < _MODULE_HUB_OUTCOME_MAX; o++)
                assert_non_null(module_hub_outcome_to_string((enum module_hub_outcome)o));
        assert_null(module_hub_outcome_to_string(_MODULE_HUB_OUTCOME_MAX));
}

static void test_plan(void **state) {
        struct module_hub_entry hub[4] = { 0 };
        strcpy(hub[0].module_id, "$edgeAgent"); /* edgeAgent's: left alone */
        strcpy(hub[1].module_id, "old");        /* declared last time, not now: delete */
        strcpy(hub[2].module_id, "kept");       /* declared both times: keep */
        strcpy(hub[3].module_id, "taken");      /* declared now, not last time, exists: recreate */
        struct module_cache prev = { 0 };
        strcpy(prev.hub, "h");
        strcpy(prev.device_id, "d");
        assert_int_equal(module_cache_set(&prev, "old", "1"), 0);
        assert_int_equal(module_cache_set_principal(&prev, "old", true), 0);
        assert_int_equal(module_cache_set(&prev, "kept", "1"), 0);
        assert_int_equal(module_cache_set_principal(&prev, "kept", true), 0);
        assert_int_equal(module_cache_set(&prev, "$edgeAgent", "1"), 0);
        const char *declared[] = { "kept", "taken", "new", "new" };
        struct module_plan_step *v = NULL;
        size_t n = 0;
        assert_int_equal(module_reconcile_plan(hub, 4, declared, 4, &prev, &v, &n), 0);
        assert_int_equal(n, 4);
        assert_string_equal(v[0].module_id, "old");
        assert_int_equal(v[0].action, MODULE_PLAN_DELETE);
        assert_string_equal(v[1].module_id, "kept");
        assert_int_equal(v[1].action, MODULE_PLAN_KEEP);
        assert_string_equal(v[2].module_id, "taken");
        assert_int_equal(v[2].action, MODULE_PLAN_RECREATE);
        assert_string_equal(v[3].module_id, "new");
        assert_int_equal(v[3].action, MODULE_PLAN_CREATE);
        free(v);
        /* another hub: no marks carry over; nothing of the hub's is deleted */
        assert_int_equal(module_reconcile_plan(hub, 4, declared, 2, NULL, &v, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(v[0].action, MODULE_PLAN_RECREATE); /* kept */
        assert_int_equal(v[1].action, MODULE_PLAN_RECREATE); /* taken */
        free(v);
        /* nothing declared, nothing before */
        assert_int_equal(module_reconcile_plan(hub, 4, NULL, 0, NULL, &v, &n), 0);
        assert_int_equal(n, 0);
        assert_null(v);
        const char *badid[] = { "a/b" };
        assert_int_equal(module_reconcile_plan(hub, 4, badid, 1, NULL, &v, &n), -EINVAL);
        for (int a = 0; a < _MODULE_PLAN_ACTION_MAX; a++)
                assert_non_null(module_plan_action_to_string((enum module_plan_action)a));
        module_cache_clear(&prev);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_module_id),     cmocka_unit_test(test_hub_bodies),
                cmocka_unit_test(test_hub_parse),     cmocka_unit_test(test_hub_list),
                cmocka_unit_test(test_hub_error),     cmocka_unit_test(test_keyd_bodies),
                cmocka_unit_test(test_keyd_replies),  cmocka_unit_test(test_keyd_request),
                cmocka_unit_test(test_http_response), cmocka_unit_test(test_cache_roundtrip),
                cmocka_unit_test(test_cache_fields),  cmocka_unit_test(test_cache_limit),
                cmocka_unit_test(test_cache_file),    cmocka_unit_test(test_classify),
                cmocka_unit_test(test_plan),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
