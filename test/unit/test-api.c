/* Tests for lib/api.c: the route table of both sockets (every error path),
 * request body decoders (every status, limits at and over) and response
 * encoders (golden JSON). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "b64.h"
#include "util.h"

static void test_op_strings(void **state) {
        const char *names[] = { "tpm.get_keys", "tpm.import", "tpm.sign", "identity.get", "identity.device",
                                "identity.provisioning", "identity.reprovision", "identity.token", "identity.report",
                                "status", "identity.modules.list", "identity.modules.get", "identity.modules.create",
                                "identity.modules.update", "identity.modules.delete", "trust-bundle" };
        assert_int_equal(ELEMENTSOF(names), _API_OP_MAX);
        for (int i = 0; i < _API_OP_MAX; i++) {
                assert_string_equal(api_op_to_string((enum api_op)i), names[i]);
                assert_int_equal(api_op_from_string(names[i]), i);
        }
        assert_null(api_op_to_string(_API_OP_MAX));
        assert_int_equal(api_op_from_string("tpm"), -EINVAL);
        assert_int_equal(api_op_from_string(NULL), -EINVAL);
        assert_int_equal(api_op_socket(API_OP_TPM_SIGN), API_SOCKET_TPM);
        assert_int_equal(api_op_socket(API_OP_STATUS), API_SOCKET_IDENTITY);
        assert_int_equal(api_op_socket(API_OP_MODULES_DELETE), API_SOCKET_IDENTITY);
        assert_int_equal(api_op_socket(API_OP_TRUST_BUNDLE), API_SOCKET_IDENTITY);
}

static void test_route_ok(void **state) {
        struct {
                enum api_socket s;
                const char *method, *path, *version;
                enum api_op op;
        } cases[] = {
                { API_SOCKET_TPM, "GET", "/get_tpm_keys", "2020-09-01", API_OP_TPM_GET_KEYS },
                { API_SOCKET_TPM, "POST", "/import_auth_key", "2020-09-01", API_OP_TPM_IMPORT },
                { API_SOCKET_TPM, "POST", "/sign_with_auth_key", "2020-09-01", API_OP_TPM_SIGN },
                { API_SOCKET_IDENTITY, "GET", "/identities/identity", "2020-09-01", API_OP_IDENTITY_GET },
                { API_SOCKET_IDENTITY, "GET", "/identities/identity", "2022-08-01", API_OP_IDENTITY_GET },
                { API_SOCKET_IDENTITY, "POST", "/identities/device", "2021-12-01", API_OP_IDENTITY_DEVICE },
                { API_SOCKET_IDENTITY, "GET", "/identities/provisioning", "2021-12-01", API_OP_IDENTITY_PROVISIONING },
                { API_SOCKET_IDENTITY, "GET", "/identities/provisioning", "2022-08-01", API_OP_IDENTITY_PROVISIONING },
                { API_SOCKET_IDENTITY, "POST", "/identities/device/reprovision", "2020-09-01",
                  API_OP_IDENTITY_REPROVISION },
                { API_SOCKET_IDENTITY, "POST", "/identities/device/token", "2020-09-01", API_OP_IDENTITY_TOKEN },
                { API_SOCKET_IDENTITY, "GET", "/status", "2022-08-01", API_OP_STATUS },
                /* an extension: every identity api-version */
                { API_SOCKET_IDENTITY, "POST", "/identities/device/report", "2020-09-01", API_OP_IDENTITY_REPORT },
                { API_SOCKET_IDENTITY, "POST", "/identities/device/report", "2021-12-01", API_OP_IDENTITY_REPORT },
                { API_SOCKET_IDENTITY, "POST", "/identities/device/report", "2022-08-01", API_OP_IDENTITY_REPORT },
                { API_SOCKET_IDENTITY, "GET", "/identities/modules", "2020-09-01", API_OP_MODULES_LIST },
                { API_SOCKET_IDENTITY, "POST", "/identities/modules", "2021-12-01", API_OP_MODULES_CREATE },
                { API_SOCKET_IDENTITY, "GET", "/trust-bundle", "2020-09-01", API_OP_TRUST_BUNDLE },
                { API_SOCKET_IDENTITY, "GET", "/trust-bundle", "2022-08-01", API_OP_TRUST_BUNDLE },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                enum api_op op = _API_OP_MAX;
                struct api_error err = { 0 };
                assert_int_equal(api_route(cases[i].s, cases[i].method, cases[i].path, cases[i].version, &op, &err), 0);
                assert_int_equal(op, cases[i].op);
        }
}

static void expect_route_error(enum api_socket s, const char *method, const char *path, const char *version,
                               int ret, int status, const char *message, const char *allow) {
        enum api_op op = _API_OP_MAX;
        struct api_error err = { 0 };
        assert_int_equal(api_route(s, method, path, version, &op, &err), ret);
        assert_int_equal(op, _API_OP_MAX); /* untouched */
        assert_int_equal(err.status, status);
        assert_string_equal(err.message, message);
        assert_true(streq_ptr(err.allow, allow));
        /* err may be NULL. */
        assert_int_equal(api_route(s, method, path, version, &op, NULL), ret);
}

static void test_route_errors(void **state) {
        expect_route_error(API_SOCKET_TPM, "GET", "/get_tpm_keys", NULL, -EINVAL, 400, "api-version not specified",
                           NULL);
        /* Version is checked before the path, as aziot does. */
        expect_route_error(API_SOCKET_TPM, "GET", "/nope", NULL, -EINVAL, 400, "api-version not specified", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/get_tpm_keys", "2021-12-01", -EINVAL, 400,
                           "invalid api-version \"2021-12-01\"", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/get_tpm_keys", "", -EINVAL, 400, "invalid api-version \"\"", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/identity", "2019-01-01", -EINVAL, 400,
                           "invalid api-version \"2019-01-01\"", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/identity", "2020-09-01 ", -EINVAL, 400,
                           "invalid api-version \"2020-09-01 \"", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/get_tpm_keys/", "2020-09-01", -ENOENT, 404, "not found", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/GET_TPM_KEYS", "2020-09-01", -ENOENT, 404, "not found", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/identities/identity", "2020-09-01", -ENOENT, 404, "not found",
                           NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/get_tpm_keys", "2020-09-01", -ENOENT, 404, "not found", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/identities/modules", "2020-09-01", -ENOENT, 404, "not found",
                           NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/trust-bundle", "2020-09-01", -ENOENT, 404, "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", NULL, "2020-09-01", -ENOENT, 404, "not found", NULL);
        expect_route_error(API_SOCKET_TPM, "GET", "/import_auth_key", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "POST");
        expect_route_error(API_SOCKET_TPM, "PUT", "/get_tpm_keys", "2020-09-01", -EINVAL, 400, "method not allowed",
                           "GET");
        expect_route_error(API_SOCKET_IDENTITY, "DELETE", "/identities/device/reprovision", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "POST");
        expect_route_error(API_SOCKET_IDENTITY, "HEAD", "/status", "2020-09-01", -EINVAL, 400, "method not allowed",
                           "GET");
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/device/report", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "POST");
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/identities/device/report/", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_TPM, "POST", "/identities/device/report", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/identities/device/report", "2019-01-01", -EINVAL, 400,
                           "invalid api-version \"2019-01-01\"", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/identities/device/report", NULL, -EINVAL, 400,
                           "api-version not specified", NULL);
        /* /identities/provisioning needs >= 2021-12-01; aziot skips the route: 404. */
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/provisioning", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/identities/provisioning", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/identities/provisioning", "2021-12-01", -EINVAL, 400,
                           "method not allowed", "GET");
        /* A long version is truncated into the message, not overflowed. */
        char longv[600];
        memset(longv, 'v', sizeof(longv) - 1);
        longv[sizeof(longv) - 1] = 0;
        struct api_error err;
        enum api_op op;
        assert_int_equal(api_route(API_SOCKET_TPM, "GET", "/get_tpm_keys", longv, &op, &err), -EINVAL);
        assert_int_equal(strlen(err.message), API_ERROR_MESSAGE_MAX - 1);
}

static void expect_param(const char *method, const char *path, enum api_op want_op, const char *want_param) {
        enum api_op op = _API_OP_MAX;
        char *param = (char *)"untouched";
        struct api_error err = { 0 };
        assert_int_equal(api_route_param(API_SOCKET_IDENTITY, method, path, "2020-09-01", &op, &param, &err), 0);
        assert_int_equal(op, want_op);
        if (want_param)
                assert_string_equal(param, want_param);
        else
                assert_null(param);
        if (want_param)
                free(param);
}

static void test_route_modules(void **state) {
        /* aziot-edged sends $edgeAgent unencoded (PATH_SEGMENT_ENCODE_SET keeps '$') */
        expect_param("GET", "/identities/modules/$edgeAgent", API_OP_MODULES_GET, "$edgeAgent");
        expect_param("PUT", "/identities/modules/$edgeAgent", API_OP_MODULES_UPDATE, "$edgeAgent");
        expect_param("DELETE", "/identities/modules/$edgeHub", API_OP_MODULES_DELETE, "$edgeHub");
        expect_param("GET", "/identities/modules/%24edgeAgent", API_OP_MODULES_GET, "$edgeAgent");
        expect_param("GET", "/identities/modules/%2a%2A", API_OP_MODULES_GET, "**");
        /* a path keeps '+' (no form decoding); a lone or bad '%' stays literal */
        expect_param("GET", "/identities/modules/a+b", API_OP_MODULES_GET, "a+b");
        expect_param("GET", "/identities/modules/100%", API_OP_MODULES_GET, "100%");
        expect_param("GET", "/identities/modules/%zz%4", API_OP_MODULES_GET, "%zz%4");
        /* %2F decodes inside the segment (aziot matches the raw path); api_check_module_id() refuses it */
        expect_param("GET", "/identities/modules/a%2Fb", API_OP_MODULES_GET, "a/b");
        expect_param("GET", "/identities/modules/%C3%A9", API_OP_MODULES_GET, "\xc3\xa9");
        expect_param("GET", "/identities/modules", API_OP_MODULES_LIST, NULL);
        expect_param("POST", "/identities/modules", API_OP_MODULES_CREATE, NULL);
        expect_param("GET", "/identities/identity", API_OP_IDENTITY_GET, NULL);
        for (size_t v = 0; v < 3; v++) {
                static const char *const versions[] = { "2020-09-01", "2021-12-01", "2022-08-01" };
                enum api_op op;
                _cleanup_free_ char *param = NULL;
                assert_int_equal(api_route_param(API_SOCKET_IDENTITY, "DELETE", "/identities/modules/m", versions[v],
                                                 &op, &param, NULL),
                                 0);
                assert_int_equal(op, API_OP_MODULES_DELETE);
                assert_string_equal(param, "m");
        }
        /* ret_param may be NULL: api_route() */
        enum api_op op;
        assert_int_equal(api_route(API_SOCKET_IDENTITY, "GET", "/identities/modules/m", "2020-09-01", &op, NULL), 0);
        assert_int_equal(op, API_OP_MODULES_GET);

        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/", "2020-09-01", -ENOENT, 404, "not found",
                           NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/a/b", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/a/", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modulesX", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules//", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        /* a segment that is not UTF-8 (or holds NUL) is no match, as aziot's decode_utf8() */
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/%FF", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "PUT", "/identities/modules/%C0%AF", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/%ED%A0%80", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/a%00", "2020-09-01", -ENOENT, 404,
                           "not found", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "PUT", "/identities/modules", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "GET, POST");
        expect_route_error(API_SOCKET_IDENTITY, "DELETE", "/identities/modules", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "GET, POST");
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/identities/modules/m", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "GET, PUT, DELETE");
        expect_route_error(API_SOCKET_IDENTITY, "PATCH", "/identities/modules/m", "2022-08-01", -EINVAL, 400,
                           "method not allowed", "GET, PUT, DELETE");
        expect_route_error(API_SOCKET_IDENTITY, "POST", "/trust-bundle", "2020-09-01", -EINVAL, 400,
                           "method not allowed", "GET");
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/m", NULL, -EINVAL, 400,
                           "api-version not specified", NULL);
        expect_route_error(API_SOCKET_IDENTITY, "GET", "/identities/modules/m", "2019-01-01", -EINVAL, 400,
                           "invalid api-version \"2019-01-01\"", NULL);
}

static void test_path_segment_decode(void **state) {
        char *out = NULL;
        assert_int_equal(api_path_segment_decode("", 0, &out), 0);
        assert_string_equal(out, "");
        free(out);
        /* len bounds the input: "%4" of "%41" is literal */
        assert_int_equal(api_path_segment_decode("%41", 2, &out), 0);
        assert_string_equal(out, "%4");
        free(out);
        assert_int_equal(api_path_segment_decode("%f0%9f%98%80", 12, &out), 0);
        assert_string_equal(out, "\xf0\x9f\x98\x80");
        free(out);
        out = NULL;
        assert_int_equal(api_path_segment_decode("%f4%90%80%80", 12, &out), -EINVAL); /* > U+10FFFF */
        assert_int_equal(api_path_segment_decode("%e0%80%80", 9, &out), -EINVAL);     /* overlong */
        assert_int_equal(api_path_segment_decode("%c3", 3, &out), -EINVAL);           /* truncated */
        assert_int_equal(api_path_segment_decode("%c3%28", 6, &out), -EINVAL);        /* bad continuation */
        assert_int_equal(api_path_segment_decode("\x80", 1, &out), -EINVAL);
        assert_int_equal(api_path_segment_decode(NULL, 1, &out), -EINVAL);
        assert_null(out);
}

static void expect_id_error(const char *id, const char *cause) {
        struct api_error err = { 0 };
        assert_int_equal(api_check_module_id(id, &err), -EINVAL);
        assert_int_equal(err.status, 400);
        char want[API_ERROR_MESSAGE_MAX];
        snprintf(want, sizeof(want), "parameter \"module_id\" has an invalid value\ncaused by: %s", cause);
        assert_string_equal(err.message, want);
        assert_int_equal(api_check_module_id(id, NULL), -EINVAL);
}

static void test_check_module_id(void **state) {
        assert_int_equal(api_check_module_id("$edgeAgent", NULL), 0);
        assert_int_equal(api_check_module_id("a-.+%_#*?!(),:=@$'Z9", NULL), 0);
        char id[API_MODULE_ID_MAX + 2];
        memset(id, 'm', API_MODULE_ID_MAX);
        id[API_MODULE_ID_MAX] = 0;
        assert_int_equal(api_check_module_id(id, NULL), 0); /* at the limit */
        id[API_MODULE_ID_MAX] = 'm';
        id[API_MODULE_ID_MAX + 1] = 0;
        expect_id_error(id, "module name is longer than 128 characters (IoT Hub's limit)");
        expect_id_error("", "module name cannot be empty");
        expect_id_error(" \t ", "module name cannot be empty");
        expect_id_error(NULL, "module name cannot be empty");
        static const char *const bad[] = { "a/b", "a b", "\xc3\xa9", "a\nb", "a;b", "a&b", "a\"b", "a\\b", "{m}" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                expect_id_error(bad[i], "module name may only hold ASCII letters, digits and - . + % _ # * ? ! ( ) "
                                        ", : = @ $ ' (IoT Hub's rule)");
}

static void expect_type_error(enum api_op op, const char *type, const char *cause) {
        struct api_error err = { 0 };
        assert_int_equal(api_check_module_type(op, type, &err), -EINVAL);
        assert_int_equal(err.status, 400);
        char want[API_ERROR_MESSAGE_MAX];
        snprintf(want, sizeof(want), "parameter \"type\" has an invalid value\ncaused by: %s", cause);
        assert_string_equal(err.message, want);
}

static void test_check_module_type(void **state) {
        const enum api_op ops[] = { API_OP_MODULES_LIST, API_OP_MODULES_GET, API_OP_MODULES_CREATE,
                                    API_OP_MODULES_UPDATE, API_OP_MODULES_DELETE };
        for (size_t i = 0; i < ELEMENTSOF(ops); i++) {
                assert_int_equal(api_check_module_type(ops[i], "aziot", NULL), 0);
                expect_type_error(ops[i], NULL, "missing parameter");
                expect_type_error(ops[i], "AZIOT", "invalid type: AZIOT");
                expect_type_error(ops[i], "", "invalid type: ");
                bool local_exists = ops[i] == API_OP_MODULES_GET || ops[i] == API_OP_MODULES_CREATE;
                expect_type_error(ops[i], "local",
                                  local_exists ? "local identities are not supported by tpmidd"
                                               : "invalid type: local");
        }
}

static int decode_create(const char *ct, const char *body, char **type, char **id, struct api_error *err) {
        return api_decode_module_create(ct, (const uint8_t *)body, body ? strlen(body) : 0, type, id, err);
}

static void expect_create_error(const char *ct, const char *body, int status, const char *message) {
        char *type = (char *)"t", *id = (char *)"i";
        struct api_error err = { 0 };
        assert_int_equal(decode_create(ct, body, &type, &id, &err), -EINVAL);
        assert_string_equal(type, "t"); /* untouched */
        assert_string_equal(id, "i");
        assert_int_equal(err.status, status);
        if (message)
                assert_string_equal(err.message, message);
}

static void test_decode_module_create(void **state) {
        static const char *const cts[] = { NULL, "application/json", "application/json; charset=utf-8",
                                           " application/json ;x" };
        for (size_t i = 0; i < ELEMENTSOF(cts); i++) {
                _cleanup_free_ char *type = NULL, *id = NULL;
                /* what aziot-edged sends, plus a field aziot ignores */
                assert_int_equal(decode_create(cts[i], "{\"type\":\"aziot\",\"moduleId\":\"$edgeHub\",\"x\":1}",
                                               &type, &id, NULL),
                                 0);
                assert_string_equal(type, "aziot");
                assert_string_equal(id, "$edgeHub");
        }
        _cleanup_free_ char *type = NULL, *id = NULL;
        /* the type is checked later (api_check_module_type), not here */
        assert_int_equal(decode_create(NULL, "{\"type\":\"local\",\"moduleId\":\"\"}", &type, &id, NULL), 0);
        assert_string_equal(type, "local");
        assert_string_equal(id, "");
        expect_create_error(NULL, NULL, 400, "missing request body");
        expect_create_error(NULL, "", 400, "missing request body");
        /* aziot reads a body of another type as none */
        expect_create_error("text/plain", "{\"type\":\"aziot\",\"moduleId\":\"m\"}", 400, "missing request body");
        expect_create_error("application/jsonx", "{\"type\":\"aziot\",\"moduleId\":\"m\"}", 400,
                            "missing request body");
        expect_create_error(NULL, "{", 422, NULL);
        expect_create_error(NULL, "[]", 422, "request body must be a JSON object");
        expect_create_error(NULL, "{\"moduleId\":\"m\"}", 422, "missing field 'type'");
        expect_create_error(NULL, "{\"type\":\"aziot\"}", 422, "missing field 'moduleId'");
        expect_create_error(NULL, "{\"type\":1,\"moduleId\":\"m\"}", 422, "field 'type' must be a string");
        expect_create_error(NULL, "{\"type\":\"aziot\",\"moduleId\":null}", 422, "field 'moduleId' must be a string");
        expect_create_error(NULL, "{\"type\":\"aziot\",\"moduleId\":\"a\\u0000b\"}", 422, NULL);
        expect_create_error(NULL, "{\"type\":\"aziot\",\"moduleId\":\"m\",\"moduleId\":\"n\"}", 422, NULL);
}

static void test_decode_module_update_delete(void **state) {
        struct api_error err = { 0 };
        static const char *const ok[] = { "{\"type\":\"aziot\",\"moduleId\":\"$edgeAgent\"}", "{}", "null", "[1]",
                                          "\"x\"", "{\"moduleId\":\"another\"}" };
        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                /* aziot ignores the body, a different moduleId included: the path names the module */
                assert_int_equal(api_decode_module_update(NULL, (const uint8_t *)ok[i], strlen(ok[i]), &err), 0);
                assert_int_equal(
                        api_decode_module_update("application/json", (const uint8_t *)ok[i], strlen(ok[i]), &err), 0);
                assert_int_equal(api_decode_module_delete(NULL, (const uint8_t *)ok[i], strlen(ok[i]), &err), 0);
        }
        assert_int_equal(api_decode_module_update(NULL, NULL, 0, &err), -EINVAL);
        assert_int_equal(err.status, 422);
        assert_string_equal(err.message, "EOF while parsing a value at line 1 column 0");
        assert_int_equal(api_decode_module_update(NULL, (const uint8_t *)"{", 1, &err), -EINVAL);
        assert_int_equal(err.status, 422);
        assert_int_equal(api_decode_module_update(NULL, (const uint8_t *)"{} {}", 5, NULL), -EINVAL);
        assert_int_equal(api_decode_module_update("text/plain", (const uint8_t *)"{}", 2, &err), -EINVAL);
        assert_int_equal(err.status, 415);
        assert_string_equal(err.message, "request body must be application/json");
        /* DELETE: no body is fine; a JSON body must parse; another type is not read */
        assert_int_equal(api_decode_module_delete(NULL, NULL, 0, &err), 0);
        assert_int_equal(api_decode_module_delete("application/json", (const uint8_t *)"", 0, &err), 0);
        assert_int_equal(api_decode_module_delete("text/plain", (const uint8_t *)"{", 1, &err), 0);
        assert_int_equal(api_decode_module_delete(NULL, (const uint8_t *)"{", 1, &err), -EINVAL);
        assert_int_equal(err.status, 422);
}

static void expect_decode_error(int (*fn)(const uint8_t *, size_t, uint8_t **, size_t *, struct api_error *),
                                const char *body, int status, const char *message) {
        uint8_t *out = NULL;
        size_t out_len = 12345;
        struct api_error err = { 0 };
        assert_int_equal(fn((const uint8_t *)body, body ? strlen(body) : 0, &out, &out_len, &err), -EINVAL);
        assert_null(out);
        assert_int_equal(out_len, 12345);
        assert_int_equal(err.status, status);
        if (message)
                assert_string_equal(err.message, message);
        else
                assert_true(strlen(err.message) > 0);
        assert_int_equal(fn((const uint8_t *)body, body ? strlen(body) : 0, &out, &out_len, NULL), -EINVAL);
}

static void test_decode_import(void **state) {
        _cleanup_free_ uint8_t *key = NULL;
        size_t key_len;
        struct api_error err;
        const char *body = "{\"key\":\"AToAAQAL\",\"extra\":[1,2]}";
        assert_int_equal(api_decode_import((const uint8_t *)body, strlen(body), &key, &key_len, &err), 0);
        assert_int_equal(key_len, 6);
        assert_memory_equal(key, "\x01\x3a\x00\x01\x00\x0b", 6);

        expect_decode_error(api_decode_import, NULL, 400, "missing request body");
        expect_decode_error(api_decode_import, "", 400, "missing request body");
        expect_decode_error(api_decode_import, "{", 422, NULL);
        expect_decode_error(api_decode_import, "{\"key\":\"AA==\"} x", 422, NULL);
        expect_decode_error(api_decode_import, "[1]", 422, "request body must be a JSON object");
        expect_decode_error(api_decode_import, "{}", 422, "missing field 'key'");
        expect_decode_error(api_decode_import, "{\"Key\":\"AA==\"}", 422, "missing field 'key'");
        expect_decode_error(api_decode_import, "{\"key\":5}", 422, "field 'key' must be a string");
        expect_decode_error(api_decode_import, "{\"key\":null}", 422, "field 'key' must be a string");
        expect_decode_error(api_decode_import, "{\"key\":\"AA=\"}", 422, "field 'key' is not valid base64");
        expect_decode_error(api_decode_import, "{\"key\":\"A A=\"}", 422, "field 'key' is not valid base64");
        expect_decode_error(api_decode_import, "{\"key\":\"AA\\u0000=\"}", 422, NULL);
        expect_decode_error(api_decode_import, "{\"key\":\"\"}", 422, "field 'key' is empty");
        expect_decode_error(api_decode_import, "{\"key\":\"AA==\",\"key\":\"AA==\"}", 422, NULL);

        /* jansson's message and position. */
        uint8_t *k = NULL;
        assert_int_equal(api_decode_import((const uint8_t *)"{\n  \"key\" 1}", 12, &k, &key_len, &err), -EINVAL);
        assert_int_equal(err.status, 422);
        assert_non_null(strstr(err.message, "at line 2 column"));
}

/* {"<field>":"<base64 of n bytes>"} */
static char *b64_body(const char *field, size_t n) {
        uint8_t *raw = malloc(n + 1);
        assert_non_null(raw);
        for (size_t i = 0; i < n; i++)
                raw[i] = (uint8_t)i;
        _cleanup_free_ char *b = b64_encode(raw, n);
        free(raw);
        char *t = NULL;
        assert_true(asprintf(&t, "{\"%s\":\"%s\"}", field, b) > 0);
        return t;
}

static void test_decode_limits(void **state) {
        struct {
                int (*fn)(const uint8_t *, size_t, uint8_t **, size_t *, struct api_error *);
                const char *field;
                size_t max;
        } cases[] = {
                { api_decode_import, "key", API_MAX_IMPORT_KEY_BYTES },
                { api_decode_sign, "data", API_MAX_SIGN_DATA_BYTES },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                /* Every padding shape around the limit. */
                for (size_t n = cases[i].max - 2; n <= cases[i].max + 3; n++) {
                        _cleanup_free_ char *body = b64_body(cases[i].field, n);
                        uint8_t *out = NULL;
                        size_t out_len;
                        struct api_error err;
                        int r = cases[i].fn((const uint8_t *)body, strlen(body), &out, &out_len, &err);
                        if (n <= cases[i].max) {
                                assert_int_equal(r, 0);
                                assert_int_equal(out_len, n);
                                assert_int_equal(out[n - 1], (uint8_t)(n - 1));
                                free(out);
                        } else {
                                assert_int_equal(r, -EINVAL);
                                assert_int_equal(err.status, 422);
                                char want[64];
                                snprintf(want, sizeof(want), "field '%s' is too large", cases[i].field);
                                assert_string_equal(err.message, want);
                        }
                }
}

static void test_decode_sign(void **state) {
        _cleanup_free_ uint8_t *data = NULL;
        size_t data_len;
        const char *body = "{\"data\":\"c3IuLi4=\"}";
        assert_int_equal(api_decode_sign((const uint8_t *)body, strlen(body), &data, &data_len, NULL), 0);
        assert_int_equal(data_len, 5);
        assert_memory_equal(data, "sr...", 5);
        /* An empty string is valid data for an HMAC. */
        _cleanup_free_ uint8_t *empty = NULL;
        assert_int_equal(api_decode_sign((const uint8_t *)"{\"data\":\"\"}", 11, &empty, &data_len, NULL), 0);
        assert_int_equal(data_len, 0);

        expect_decode_error(api_decode_sign, "", 400, "missing request body");
        expect_decode_error(api_decode_sign, "nope", 422, NULL);
        expect_decode_error(api_decode_sign, "{\"key\":\"AA==\"}", 422, "missing field 'data'");
        expect_decode_error(api_decode_sign, "{\"data\":[]}", 422, "field 'data' must be a string");
        expect_decode_error(api_decode_sign, "{\"data\":\"!!!!\"}", 422, "field 'data' is not valid base64");
        expect_decode_error(api_decode_sign, "{\"data\":\"AAA\"}", 422, "field 'data' is not valid base64");
}

static void test_decode_token(void **state) {
        uint32_t l = 0;
        struct api_error err;
        assert_int_equal(api_decode_token(NULL, 0, &l, &err), 0);
        assert_int_equal(l, API_TOKEN_LIFETIME_DEFAULT_SEC);
        l = 0;
        assert_int_equal(api_decode_token((const uint8_t *)"{}", 2, &l, &err), 0);
        assert_int_equal(l, API_TOKEN_LIFETIME_DEFAULT_SEC);
        struct {
                const char *body;
                int ret;
                uint32_t value;
                int status;
        } cases[] = {
                { "{\"lifetime_sec\":60}", 0, 60, 0 },
                { "{\"lifetime_sec\":86400}", 0, 86400, 0 },
                { "{\"lifetime_sec\":59}", -EINVAL, 0, 422 },
                { "{\"lifetime_sec\":86401}", -EINVAL, 0, 422 },
                { "{\"lifetime_sec\":-1}", -EINVAL, 0, 422 },
                { "{\"lifetime_sec\":99999999999999999999}", -EINVAL, 0, 422 },
                { "{\"lifetime_sec\":600.0}", -EINVAL, 0, 422 },
                { "{\"lifetime_sec\":\"600\"}", -EINVAL, 0, 422 },
                { "{\"lifetime_sec\":null}", -EINVAL, 0, 422 },
                { "[]", -EINVAL, 0, 422 },
                { "{", -EINVAL, 0, 422 },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                l = 7;
                memset(&err, 0, sizeof(err));
                assert_int_equal(api_decode_token((const uint8_t *)cases[i].body, strlen(cases[i].body), &l, &err),
                                 cases[i].ret);
                if (cases[i].ret == 0)
                        assert_int_equal(l, cases[i].value);
                else {
                        assert_int_equal(l, 7);
                        assert_int_equal(err.status, cases[i].status);
                }
        }
        assert_int_equal(api_decode_token((const uint8_t *)"{\"lifetime_sec\":1}", 18, &l, &err), -EINVAL);
        assert_string_equal(err.message, "field 'lifetime_sec' must be between 60 and 86400");
        assert_int_equal(api_decode_token((const uint8_t *)"{\"lifetime_sec\":true}", 21, &l, &err), -EINVAL);
        assert_string_equal(err.message, "field 'lifetime_sec' must be an integer");
}

static void test_decode_device(void **state) {
        struct api_error err;
        assert_int_equal(api_decode_device((const uint8_t *)"{\"type\":\"aziot\"}", 16, &err), 0);
        /* aziot-identityd's get_device_identity() ignores the type's value */
        assert_int_equal(api_decode_device((const uint8_t *)"{\"type\":\"local\"}", 16, &err), 0);
        assert_int_equal(api_decode_device((const uint8_t *)"{\"type\":\"\"}", 11, &err), 0);
        struct {
                const char *body;
                int status;
                const char *message;
        } cases[] = {
                { "", 400, "missing request body" },
                { "x", 422, NULL },
                { "{}", 422, "missing field 'type'" },
                { "{\"type\":1}", 422, "field 'type' must be a string" },
                { "{\"type\":\"aziot\\u0000x\"}", 422, NULL },
                { "[\"aziot\"]", 422, "request body must be a JSON object" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                memset(&err, 0, sizeof(err));
                assert_int_equal(api_decode_device((const uint8_t *)cases[i].body, strlen(cases[i].body), &err),
                                 -EINVAL);
                assert_int_equal(err.status, cases[i].status);
                if (cases[i].message)
                        assert_string_equal(err.message, cases[i].message);
        }
}

static void test_decode_report(void **state) {
        struct api_report rep;
        struct api_error err;
        const char *ok = "{\"hubStatus\":401,\"reason\":\"Unauthorized: device not found\",\"extra\":[1]}";
        assert_int_equal(api_decode_report((const uint8_t *)ok, strlen(ok), &rep, &err), 0);
        assert_int_equal(rep.hub_status, 401);
        assert_string_equal(rep.reason, "Unauthorized: device not found");
        /* reason is optional; null is the same as absent */
        memset(&rep, 'x', sizeof(rep));
        assert_int_equal(api_decode_report((const uint8_t *)"{\"hubStatus\":404}", strlen("{\"hubStatus\":404}"), &rep, &err), 0);
        assert_int_equal(rep.hub_status, 404);
        assert_string_equal(rep.reason, "");
        const char *null_reason = "{\"hubStatus\":403,\"reason\":null}";
        assert_int_equal(api_decode_report((const uint8_t *)null_reason, strlen(null_reason), &rep, &err), 0);
        assert_int_equal(rep.hub_status, 403);
        assert_string_equal(rep.reason, "");
        /* the status limits at and over */
        assert_int_equal(api_decode_report((const uint8_t *)"{\"hubStatus\":100}", strlen("{\"hubStatus\":100}"), &rep, &err), 0);
        assert_int_equal(rep.hub_status, API_HTTP_STATUS_MIN);
        assert_int_equal(api_decode_report((const uint8_t *)"{\"hubStatus\":599}", strlen("{\"hubStatus\":599}"), &rep, &err), 0);
        assert_int_equal(rep.hub_status, API_HTTP_STATUS_MAX);

        /* reason at its limit (multi-byte UTF-8 counts in bytes) and one over */
        char body[API_REPORT_REASON_MAX * 2 + 64];
        char reason[API_REPORT_REASON_MAX + 2];
        memset(reason, 'r', API_REPORT_REASON_MAX);
        reason[API_REPORT_REASON_MAX] = 0;
        snprintf(body, sizeof(body), "{\"hubStatus\":401,\"reason\":\"%s\"}", reason);
        assert_int_equal(api_decode_report((const uint8_t *)body, strlen(body), &rep, &err), 0);
        assert_int_equal(strlen(rep.reason), API_REPORT_REASON_MAX);
        assert_string_equal(rep.reason, reason);
        reason[API_REPORT_REASON_MAX] = 'r';
        reason[API_REPORT_REASON_MAX + 1] = 0;
        snprintf(body, sizeof(body), "{\"hubStatus\":401,\"reason\":\"%s\"}", reason);
        rep.hub_status = 7;
        memset(&err, 0, sizeof(err));
        assert_int_equal(api_decode_report((const uint8_t *)body, strlen(body), &rep, &err), -EINVAL);
        assert_int_equal(rep.hub_status, 7); /* untouched */
        assert_int_equal(err.status, 422);
        assert_string_equal(err.message, "field 'reason' is too large");
        /* 129 two-byte characters = 258 bytes: over, though only 129 characters */
        size_t n = 0;
        n += (size_t)snprintf(body, sizeof(body), "{\"hubStatus\":401,\"reason\":\"");
        for (int i = 0; i < API_REPORT_REASON_MAX / 2 + 1; i++) {
                body[n++] = (char)0xc3;
                body[n++] = (char)0xa9;
        }
        n += (size_t)snprintf(body + n, sizeof(body) - n, "\"}");
        assert_int_equal(api_decode_report((const uint8_t *)body, n, &rep, &err), -EINVAL);
        assert_string_equal(err.message, "field 'reason' is too large");

        struct {
                const char *body;
                int status;
                const char *message;
        } cases[] = {
                { "", 400, "missing request body" },
                { "{", 422, NULL },
                { "x", 422, NULL },
                { "[401]", 422, "request body must be a JSON object" },
                { "401", 422, NULL },
                { "{}", 422, "missing field 'hubStatus'" },
                { "{\"reason\":\"x\"}", 422, "missing field 'hubStatus'" },
                { "{\"hubstatus\":401}", 422, "missing field 'hubStatus'" },
                { "{\"hubStatus\":\"401\"}", 422, "field 'hubStatus' must be an integer" },
                { "{\"hubStatus\":401.0}", 422, "field 'hubStatus' must be an integer" },
                { "{\"hubStatus\":null}", 422, "field 'hubStatus' must be an integer" },
                { "{\"hubStatus\":true}", 422, "field 'hubStatus' must be an integer" },
                { "{\"hubStatus\":99}", 422, "field 'hubStatus' must be an HTTP status between 100 and 599" },
                { "{\"hubStatus\":600}", 422, "field 'hubStatus' must be an HTTP status between 100 and 599" },
                { "{\"hubStatus\":-401}", 422, "field 'hubStatus' must be an HTTP status between 100 and 599" },
                { "{\"hubStatus\":4294967697}", 422, "field 'hubStatus' must be an HTTP status between 100 and 599" },
                { "{\"hubStatus\":99999999999999999999}", 422, NULL },
                { "{\"hubStatus\":401,\"hubStatus\":401}", 422, NULL },
                { "{\"hubStatus\":401,\"reason\":5}", 422, "field 'reason' must be a string" },
                { "{\"hubStatus\":401,\"reason\":{}}", 422, "field 'reason' must be a string" },
                { "{\"hubStatus\":401,\"reason\":\"a\\nb\"}", 422, "field 'reason' contains control characters" },
                { "{\"hubStatus\":401,\"reason\":\"\\u001b[31m\"}", 422,
                  "field 'reason' contains control characters" },
                { "{\"hubStatus\":401,\"reason\":\"\\u007f\"}", 422, "field 'reason' contains control characters" },
                { "{\"hubStatus\":401,\"reason\":\"a\\u0000b\"}", 422, NULL },
                { "{\"hubStatus\":401,\"reason\":\"\xff\"}", 422, NULL },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                memset(&rep, 0, sizeof(rep));
                rep.hub_status = 7;
                memset(&err, 0, sizeof(err));
                assert_int_equal(api_decode_report((const uint8_t *)cases[i].body, strlen(cases[i].body), &rep, &err),
                                 -EINVAL);
                assert_int_equal(rep.hub_status, 7);
                assert_int_equal(err.status, cases[i].status);
                if (cases[i].message)
                        assert_string_equal(err.message, cases[i].message);
                else
                        assert_true(strlen(err.message) > 0);
                /* err may be NULL */
                assert_int_equal(api_decode_report((const uint8_t *)cases[i].body, strlen(cases[i].body), &rep, NULL),
                                 -EINVAL);
        }
        assert_int_equal(api_decode_report(NULL, 0, &rep, &err), -EINVAL);
        assert_int_equal(err.status, 400);

        assert_true(api_report_is_rejection(401));
        assert_true(api_report_is_rejection(403));
        assert_true(api_report_is_rejection(404));
        assert_false(api_report_is_rejection(400));
        assert_false(api_report_is_rejection(429));
        assert_false(api_report_is_rejection(500));
        assert_false(api_report_is_rejection(200));
}

static void expect_json(int r, char **gotp, const char *golden) {
        char *got = *gotp;
        *gotp = NULL;
        assert_int_equal(r, 0);
        assert_non_null(got);
        assert_string_equal(got, golden);
        free(got);
}

static void test_encoders(void **state) {
        char *s = NULL;
        const uint8_t ek[] = { 0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b };
        const uint8_t srk[] = { 0xff };
        expect_json(api_encode_keys(ek, sizeof(ek), srk, sizeof(srk), &s), &s,
                    "{\"endorsement_key\":\"AToAAQAL\",\"storage_root_key\":\"/w==\"}");
        expect_json(api_encode_empty(&s), &s, "{}");
        uint8_t digest[32];
        for (size_t i = 0; i < sizeof(digest); i++)
                digest[i] = (uint8_t)i;
        expect_json(api_encode_sign(digest, sizeof(digest), &s), &s,
                    "{\"digest\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"}");

        struct api_device_identity id = { "myhub.azure-devices.net", "myhub.azure-devices.net", "dev1" };
        expect_json(api_encode_identity(&id, &s), &s,
                    "{\"type\":\"aziot\",\"spec\":{\"hubName\":\"myhub.azure-devices.net\",\"gatewayHost\":"
                    "\"myhub.azure-devices.net\",\"deviceId\":\"dev1\",\"auth\":{\"type\":\"tpm\"}}}");

        struct api_provisioning p = { "https://global.azure-devices-provisioning.net/", "0ne00000000", "reg1", NULL };
        expect_json(api_encode_provisioning(&p, &s), &s,
                    "{\"source\":\"dps\",\"auth\":\"tpm\",\"endpoint\":\"https://global.azure-devices-provisioning."
                    "net/\",\"scope_id\":\"0ne00000000\",\"registration_id\":\"reg1\",\"payload\":null}");
        p.payload_json = "{\"modelId\": \"dtmi:x;1\"}";
        expect_json(api_encode_provisioning(&p, &s), &s,
                    "{\"source\":\"dps\",\"auth\":\"tpm\",\"endpoint\":\"https://global.azure-devices-provisioning."
                    "net/\",\"scope_id\":\"0ne00000000\",\"registration_id\":\"reg1\",\"payload\":{\"modelId\":"
                    "\"dtmi:x;1\"}}");

        expect_json(api_encode_token("SharedAccessSignature sr=h%2Fdevices%2Fd&sig=x&se=1700000000", 1700000000,
                                     "h", "d", &s),
                    &s,
                    "{\"sasToken\":\"SharedAccessSignature sr=h%2Fdevices%2Fd&sig=x&se=1700000000\","
                    "\"expiresOn\":1700000000,\"hubName\":\"h\",\"deviceId\":\"d\"}");

        /* aziot's AzureIoTSpec order; genId and auth omitted when absent */
        struct api_module_identity m = { "myhub.azure-devices.net", "myhub.azure-devices.net", "dev1", "$edgeAgent",
                                         "638012345678901234", "sr=eyJrZXlfaWQiOnt9fQ==&sig=ab+/cd=" };
        expect_json(api_encode_module(&m, &s), &s,
                    "{\"type\":\"aziot\",\"spec\":{\"hubName\":\"myhub.azure-devices.net\",\"gatewayHost\":"
                    "\"myhub.azure-devices.net\",\"deviceId\":\"dev1\",\"moduleId\":\"$edgeAgent\",\"genId\":"
                    "\"638012345678901234\",\"auth\":{\"type\":\"sas\",\"keyHandle\":"
                    "\"sr=eyJrZXlfaWQiOnt9fQ==&sig=ab+/cd=\"}}}");
        m.gen_id = "";
        expect_json(api_encode_module(&m, &s), &s,
                    "{\"type\":\"aziot\",\"spec\":{\"hubName\":\"myhub.azure-devices.net\",\"gatewayHost\":"
                    "\"myhub.azure-devices.net\",\"deviceId\":\"dev1\",\"moduleId\":\"$edgeAgent\",\"auth\":"
                    "{\"type\":\"sas\",\"keyHandle\":\"sr=eyJrZXlfaWQiOnt9fQ==&sig=ab+/cd=\"}}}");
        struct api_module_identity list[] = {
                { "h", "gw", "d", "$edgeAgent", "1", NULL },
                { "h", "gw", "d", "m2", NULL, NULL },
        };
        expect_json(api_encode_module_list(list, 2, &s), &s,
                    "{\"identities\":[{\"type\":\"aziot\",\"spec\":{\"hubName\":\"h\",\"gatewayHost\":\"gw\","
                    "\"deviceId\":\"d\",\"moduleId\":\"$edgeAgent\",\"genId\":\"1\"}},{\"type\":\"aziot\",\"spec\":"
                    "{\"hubName\":\"h\",\"gatewayHost\":\"gw\",\"deviceId\":\"d\",\"moduleId\":\"m2\"}}]}");
        expect_json(api_encode_module_list(NULL, 0, &s), &s, "{\"identities\":[]}");
        expect_json(api_encode_trust_bundle("", &s), &s, "{\"certificate\":\"\"}");

        expect_json(api_encode_report(API_REPORT_CHECKING_HUB, &s), &s, "{\"action\":\"checking-hub\"}");
        expect_json(api_encode_report(API_REPORT_IGNORED, &s), &s, "{\"action\":\"ignored\"}");
        expect_json(api_encode_report(API_REPORT_ALREADY_PROVISIONING, &s), &s,
                    "{\"action\":\"already-provisioning\"}");
        expect_json(api_encode_report(API_REPORT_RATE_LIMITED, &s), &s, "{\"action\":\"rate-limited\"}");
        assert_int_equal(api_encode_report(_API_REPORT_ACTION_MAX, &s), -EINVAL);
        assert_null(s);
        assert_null(api_report_action_to_string(_API_REPORT_ACTION_MAX));

        expect_json(api_encode_error("not found", &s), &s, "{\"message\":\"not found\"}");
        expect_json(api_encode_error("a \"b\"\n\x01", &s), &s, "{\"message\":\"a \\\"b\\\"\\n\\u0001\"}");
}

static void test_encode_status(void **state) {
        char *s = NULL;
        struct api_status st = {
                .provisioning_state = "provisioned",
                .hub_name = "h.azure-devices.net",
                .device_id = "d1",
                .registration_id = "r1",
                .has_last_result = true,
                .last_status = "assigned",
                .last_error_code = 0,
                .last_message = NULL,
                .last_at = 1700000000,
                .next_retry_at = 0,
                .tpm_state = "ready",
                .tpm_last_error = NULL,
                .version = "0.1.0",
                .uptime_sec = 42,
                .mode = "aziot",
        };
        expect_json(api_encode_status(&st, &s), &s,
                    "{\"provisioning\":{\"state\":\"provisioned\",\"hubName\":\"h.azure-devices.net\",\"deviceId\":"
                    "\"d1\",\"registrationId\":\"r1\",\"lastResult\":{\"status\":\"assigned\",\"errorCode\":null,"
                    "\"message\":null,\"at\":1700000000},\"nextRetryAt\":null,\"idScope\":null,\"globalEndpoint\":null,\"persisted\":true,\"clockSkewSec\":null},"
                    "\"tpm\":{\"state\":\"ready\",\"lastError\":null,\"tcti\":null},\"daemon\":{\"version\":"
                    "\"0.1.0\",\"uptimeSec\":42,\"mode\":\"aziot\",\"restartNeeded\":[]}}");
        /* the running values and the refused reload changes */
        static const char *const kept[] = { "tpm.tcti", "endpoints.aziot_tpmd" };
        st.id_scope = "0ne00000001";
        st.global_endpoint = "https://dps.example/";
        st.tcti = "swtpm:path=/x";
        st.restart_needed = kept;
        st.n_restart_needed = ELEMENTSOF(kept);
        expect_json(api_encode_status(&st, &s), &s,
                    "{\"provisioning\":{\"state\":\"provisioned\",\"hubName\":\"h.azure-devices.net\",\"deviceId\":"
                    "\"d1\",\"registrationId\":\"r1\",\"lastResult\":{\"status\":\"assigned\",\"errorCode\":null,"
                    "\"message\":null,\"at\":1700000000},\"nextRetryAt\":null,\"idScope\":\"0ne00000001\","
                    "\"globalEndpoint\":\"https://dps.example/\",\"persisted\":true,\"clockSkewSec\":null},\"tpm\":{\"state\":\"ready\",\"lastError\":null,"
                    "\"tcti\":\"swtpm:path=/x\"},\"daemon\":{\"version\":\"0.1.0\",\"uptimeSec\":42,\"mode\":"
                    "\"aziot\",\"restartNeeded\":[\"tpm.tcti\",\"endpoints.aziot_tpmd\"]}}");
        struct api_status st2 = {
                .provisioning_state = "backoff",
                .has_last_result = true,
                .last_status = "failed",
                .last_error_code = 401002,
                .last_message = "unauthorized",
                .last_at = 5,
                .next_retry_at = 65,
                .tpm_state = "unavailable",
                .tpm_last_error = "TPM_RC_LOCKOUT",
                .version = "0.1.0",
                .mode = "standalone",
        };
        expect_json(api_encode_status(&st2, &s), &s,
                    "{\"provisioning\":{\"state\":\"backoff\",\"hubName\":null,\"deviceId\":null,\"registrationId\":"
                    "null,\"lastResult\":{\"status\":\"failed\",\"errorCode\":401002,\"message\":\"unauthorized\","
                    "\"at\":5},\"nextRetryAt\":65,\"idScope\":null,\"globalEndpoint\":null,\"persisted\":true,\"clockSkewSec\":null},\"tpm\":{\"state\":"
                    "\"unavailable\",\"lastError\":\"TPM_RC_LOCKOUT\",\"tcti\":null},\"daemon\":{\"version\":"
                    "\"0.1.0\",\"uptimeSec\":0,\"mode\":\"standalone\",\"restartNeeded\":[]}}");
        /* a clock DPS refused and an identity not persisted (issue 14) */
        st2.not_persisted = true;
        st2.has_clock_skew = true;
        st2.clock_skew_sec = -86400;
        expect_json(api_encode_status(&st2, &s), &s,
                    "{\"provisioning\":{\"state\":\"backoff\",\"hubName\":null,\"deviceId\":null,\"registrationId\":"
                    "null,\"lastResult\":{\"status\":\"failed\",\"errorCode\":401002,\"message\":\"unauthorized\","
                    "\"at\":5},\"nextRetryAt\":65,\"idScope\":null,\"globalEndpoint\":null,\"persisted\":false,"
                    "\"clockSkewSec\":-86400},\"tpm\":{\"state\":"
                    "\"unavailable\",\"lastError\":\"TPM_RC_LOCKOUT\",\"tcti\":null},\"daemon\":{\"version\":"
                    "\"0.1.0\",\"uptimeSec\":0,\"mode\":\"standalone\",\"restartNeeded\":[]}}");
        st2.not_persisted = false;
        st2.has_clock_skew = false;
        st2.has_last_result = false;
        st2.next_retry_at = 0;
        expect_json(api_encode_status(&st2, &s), &s,
                    "{\"provisioning\":{\"state\":\"backoff\",\"hubName\":null,\"deviceId\":null,\"registrationId\":"
                    "null,\"lastResult\":null,\"nextRetryAt\":null,\"idScope\":null,\"globalEndpoint\":null,\"persisted\":true,\"clockSkewSec\":null},\"tpm\":{"
                    "\"state\":\"unavailable\",\"lastError\":\"TPM_RC_LOCKOUT\",\"tcti\":null},\"daemon\":{"
                    "\"version\":\"0.1.0\",\"uptimeSec\":0,\"mode\":\"standalone\",\"restartNeeded\":[]}}");
}

static void test_encoder_errors(void **state) {
        char *s = NULL;
        struct api_device_identity id = { "h", NULL, "d" };
        assert_int_equal(api_encode_identity(&id, &s), -EINVAL);
        assert_int_equal(api_encode_identity(NULL, &s), -EINVAL);
        struct api_provisioning p = { "e", "s", "r", "{not json" };
        assert_int_equal(api_encode_provisioning(&p, &s), -EINVAL);
        p.payload_json = NULL;
        p.scope_id = NULL;
        assert_int_equal(api_encode_provisioning(&p, &s), -EINVAL);
        assert_int_equal(api_encode_token(NULL, 1, "h", "d", &s), -EINVAL);
        assert_int_equal(api_encode_token("t", 1, "h\xff", "d", &s), -EINVAL);
        assert_int_equal(api_encode_error(NULL, &s), -EINVAL);
        assert_int_equal(api_encode_error("\xc3", &s), -EINVAL);
        assert_int_equal(api_encode_sign(NULL, 3, &s), -EINVAL);
        assert_int_equal(api_encode_keys(NULL, 1, NULL, 0, &s), -EINVAL);
        struct api_status st = { .provisioning_state = "x", .has_last_result = true, .last_status = NULL,
                                 .tpm_state = "t", .version = "v", .mode = "m" };
        assert_int_equal(api_encode_status(&st, &s), -EINVAL);
        st.last_status = "failed";
        st.last_error_code = 5;
        st.mode = NULL; /* the inner lastResult object must not leak */
        assert_int_equal(api_encode_status(&st, &s), -EINVAL);
        st.has_last_result = false;
        assert_int_equal(api_encode_status(&st, &s), -EINVAL);
        /* a restart_needed list with a NULL entry, or none at all */
        static const char *const bad[] = { "tpm.tcti", NULL };
        st.mode = "m";
        st.restart_needed = bad;
        st.n_restart_needed = 2;
        assert_int_equal(api_encode_status(&st, &s), -EINVAL);
        st.restart_needed = NULL;
        st.n_restart_needed = 1;
        assert_int_equal(api_encode_status(&st, &s), -EINVAL);
        assert_int_equal(api_encode_status(NULL, &s), -EINVAL);
        struct api_module_identity m = { "h", "h", "d", NULL, NULL, NULL };
        assert_int_equal(api_encode_module(&m, &s), -EINVAL);
        assert_int_equal(api_encode_module(NULL, &s), -EINVAL);
        assert_int_equal(api_encode_module_list(&m, 1, &s), -EINVAL);
        assert_int_equal(api_encode_module_list(NULL, 1, &s), -EINVAL);
        m.module_id = "m";
        m.gen_id = "\xff";
        assert_int_equal(api_encode_module(&m, &s), -EINVAL); /* not UTF-8 */
        m.gen_id = NULL;
        m.key_handle = "\xff";
        assert_int_equal(api_encode_module(&m, &s), -EINVAL);
        m.key_handle = NULL;
        m.hub_name = NULL;
        assert_int_equal(api_encode_module(&m, &s), -EINVAL);
        struct api_module_identity two[] = { { "h", "h", "d", "m", NULL, NULL }, { "h", "h", "d", NULL, NULL, NULL } };
        assert_int_equal(api_encode_module_list(two, 2, &s), -EINVAL);
        assert_int_equal(api_encode_trust_bundle(NULL, &s), -EINVAL);
        assert_null(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_op_strings),
                cmocka_unit_test(test_route_ok),
                cmocka_unit_test(test_route_errors),
                cmocka_unit_test(test_route_modules),
                cmocka_unit_test(test_path_segment_decode),
                cmocka_unit_test(test_check_module_id),
                cmocka_unit_test(test_check_module_type),
                cmocka_unit_test(test_decode_module_create),
                cmocka_unit_test(test_decode_module_update_delete),
                cmocka_unit_test(test_decode_import),
                cmocka_unit_test(test_decode_limits),
                cmocka_unit_test(test_decode_sign),
                cmocka_unit_test(test_decode_token),
                cmocka_unit_test(test_decode_device),
                cmocka_unit_test(test_decode_report),
                cmocka_unit_test(test_encoders),
                cmocka_unit_test(test_encode_status),
                cmocka_unit_test(test_encoder_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
