/* Tests for lib/dps.c: URLs, bodies, every response parser with good and bad
 * input, Retry-After, classification. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "dps.h"
#include "util.h"

#define B(s) (const uint8_t *)(s), strlen(s)

static void test_hub_names(void **state) {
        static const char *good[] = {"myhub.azure-devices.net", "a", "A-1.b-2", "x.y.z", "h0"};
        static const char *bad[] = {"",      "../x",   "a/b",  "a..b", ".a",    "a.",   "-a.b", "a-.b",
                                    "a_b.c", "a b",    "a:443", "a@b", "a.b/../c", "\xc3\xa9.net", "a\n"};
        char label[DPS_HUB_LABEL_MAX + 2], name[DPS_HUB_NAME_MAX + 2];

        for (size_t i = 0; i < ELEMENTSOF(good); i++)
                assert_true(dps_hub_name_is_valid(good[i]));
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (dps_hub_name_is_valid(bad[i]))
                        fail_msg("accepted %s", bad[i]);
        assert_false(dps_hub_name_is_valid(NULL));

        memset(label, 'a', sizeof(label));
        label[DPS_HUB_LABEL_MAX] = '\0';
        assert_true(dps_hub_name_is_valid(label));
        label[DPS_HUB_LABEL_MAX] = 'a';
        label[DPS_HUB_LABEL_MAX + 1] = '\0';
        assert_false(dps_hub_name_is_valid(label));

        /* labels of 9 + dots up to exactly the limit */
        memset(name, 'b', sizeof(name));
        for (size_t i = 9; i < DPS_HUB_NAME_MAX; i += 10)
                name[i] = '.';
        name[DPS_HUB_NAME_MAX] = '\0';
        if (name[DPS_HUB_NAME_MAX - 1] == '.')
                name[DPS_HUB_NAME_MAX - 1] = 'b';
        assert_true(dps_hub_name_is_valid(name));
        name[DPS_HUB_NAME_MAX] = 'b';
        name[DPS_HUB_NAME_MAX + 1] = '\0';
        assert_false(dps_hub_name_is_valid(name));
}

static void test_ids(void **state) {
        char big[DPS_DEVICE_ID_MAX + 2];

        assert_true(dps_device_id_is_valid("dev-01"));
        assert_true(dps_device_id_is_valid("a.b%c_d*e?f!g(h)i,j:k=l@m$n'o+p#q"));
        assert_false(dps_device_id_is_valid(""));
        assert_false(dps_device_id_is_valid("."));
        assert_false(dps_device_id_is_valid(".."));
        assert_false(dps_device_id_is_valid("a/b"));
        assert_false(dps_device_id_is_valid("a b"));
        assert_false(dps_device_id_is_valid("a\\b"));
        assert_false(dps_device_id_is_valid(NULL));
        memset(big, 'd', sizeof(big));
        big[DPS_DEVICE_ID_MAX] = '\0';
        assert_true(dps_device_id_is_valid(big));
        big[DPS_DEVICE_ID_MAX] = 'd';
        big[DPS_DEVICE_ID_MAX + 1] = '\0';
        assert_false(dps_device_id_is_valid(big));

        assert_true(dps_registration_id_is_valid("abc-123"));
        assert_true(dps_registration_id_is_valid("a.b_c:d-e"));
        assert_false(dps_registration_id_is_valid("-abc"));
        assert_false(dps_registration_id_is_valid("abc."));
        assert_false(dps_registration_id_is_valid("a/b"));
        assert_false(dps_registration_id_is_valid(""));
        big[DPS_REGISTRATION_ID_MAX] = '\0';
        assert_true(dps_registration_id_is_valid(big));
        big[DPS_REGISTRATION_ID_MAX] = 'd';
        assert_false(dps_registration_id_is_valid(big));

        assert_true(dps_id_scope_is_valid("0ne000ABCDE"));
        assert_false(dps_id_scope_is_valid("0ne/.."));
        assert_false(dps_id_scope_is_valid(""));
}

static void test_urls(void **state) {
        char *u;

        assert_int_equal(dps_register_url("https://global.azure-devices-provisioning.net", "0ne000ABCDE", "abc", &u), 0);
        assert_string_equal(u, "https://global.azure-devices-provisioning.net/0ne000ABCDE/registrations/abc/register"
                               "?api-version=2021-06-01");
        free(u);
        /* the endpoint's path, query and fragment are discarded; scheme lowercased; port kept */
        assert_int_equal(dps_register_url("HTTPS://127.0.0.1:8443/some/path?x=1#f", "s", "a:b", &u), 0);
        assert_string_equal(u, "https://127.0.0.1:8443/s/registrations/a%3ab/register?api-version=2021-06-01");
        free(u);
        assert_int_equal(dps_register_url("http://[::1]:80", "s", "r", &u), 0);
        assert_string_equal(u, "http://[::1]:80/s/registrations/r/register?api-version=2021-06-01");
        free(u);

        assert_int_equal(dps_operation_url("https://h/", "s", "r", "4.a/b c", &u), 0);
        assert_string_equal(u, "https://h/s/registrations/r/operations/4.a%2fb%20c?api-version=2021-06-01");
        free(u);

        assert_int_equal(dps_register_url("ftp://h", "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("https://", "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("https:///x", "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("https://user:pw@h", "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("https://h h", "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("h", "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url(NULL, "s", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("https://h", "s/..", "r", &u), -EINVAL);
        assert_int_equal(dps_register_url("https://h", "s", "../r", &u), -EINVAL);
        assert_int_equal(dps_operation_url("https://h", "s", "r", "", &u), -EINVAL);
        assert_int_equal(dps_operation_url("https://h", "s", "r", NULL, &u), -EINVAL);
        {
                char op[DPS_OPERATION_ID_MAX + 2];
                memset(op, 'o', sizeof(op));
                op[DPS_OPERATION_ID_MAX] = '\0';
                assert_int_equal(dps_operation_url("https://h", "s", "r", op, &u), 0);
                free(u);
                op[DPS_OPERATION_ID_MAX] = 'o';
                op[DPS_OPERATION_ID_MAX + 1] = '\0';
                assert_int_equal(dps_operation_url("https://h", "s", "r", op, &u), -EINVAL);
        }
        {
                char ep[DPS_ENDPOINT_MAX + 2];
                memset(ep, 'h', sizeof(ep));
                memcpy(ep, "https://", 8);
                ep[DPS_ENDPOINT_MAX + 1] = '\0';
                assert_int_equal(dps_register_url(ep, "s", "r", &u), -EINVAL);
        }
}

static void test_payload(void **state) {
        char err[160];
        json_t *j;
        char deep[2 * (DPS_PAYLOAD_MAX_DEPTH + 1) + 1];

        assert_int_equal(dps_payload_parse(B("{\"modelId\":\"dtmi:x;1\"}"), &j, err), 0);
        assert_true(json_is_object(j));
        json_decref(j);
        assert_int_equal(dps_payload_parse(B("42"), &j, err), 0); /* any JSON value */
        json_decref(j);
        assert_int_equal(dps_payload_parse(B("{\"a\":"), &j, err), -EBADMSG);
        assert_non_null(strstr(err, "1:"));
        assert_int_equal(dps_payload_parse(B("{\"a\":1,\"a\":2}"), &j, err), -EBADMSG);
        assert_int_equal(dps_payload_parse(B(""), &j, err), -EBADMSG);

        /* depth limit: exactly MAX nested arrays pass, MAX+1 fail */
        memset(deep, '[', DPS_PAYLOAD_MAX_DEPTH);
        memset(deep + DPS_PAYLOAD_MAX_DEPTH, ']', DPS_PAYLOAD_MAX_DEPTH);
        deep[2 * DPS_PAYLOAD_MAX_DEPTH] = '\0';
        assert_int_equal(dps_payload_parse(B(deep), &j, err), 0);
        json_decref(j);
        memset(deep, '[', DPS_PAYLOAD_MAX_DEPTH + 1);
        memset(deep + DPS_PAYLOAD_MAX_DEPTH + 1, ']', DPS_PAYLOAD_MAX_DEPTH + 1);
        deep[2 * (DPS_PAYLOAD_MAX_DEPTH + 1)] = '\0';
        assert_int_equal(dps_payload_parse(B(deep), &j, err), -E2BIG);

        {
                size_t n = DPS_PAYLOAD_MAX_BYTES + 1;
                char *big = malloc(n);
                assert_non_null(big);
                memset(big, ' ', n);
                big[0] = '1';
                assert_int_equal(dps_payload_parse((uint8_t *)big, n, &j, err), -E2BIG);
                assert_int_equal(dps_payload_parse((uint8_t *)big, n - 1, &j, NULL), 0);
                json_decref(j);
                free(big);
        }
}

static void test_bodies(void **state) {
        static const uint8_t ek[] = {0x00, 0x01, 0xff}, srk[] = {0xfe, 0xed};
        json_t *payload;
        char *s;

        assert_int_equal(dps_register_body("abc", ek, sizeof(ek), srk, sizeof(srk), NULL, &s), 0);
        assert_string_equal(s, "{\"registrationId\":\"abc\",\"tpm\":{\"endorsementKey\":\"AAH/\",\"storageRootKey\":\"/u0=\"}}");
        free(s);
        assert_int_equal(dps_payload_parse(B("{\"k\":[1,\"\\\"\"]}"), &payload, NULL), 0);
        assert_int_equal(dps_register_body("abc", ek, sizeof(ek), srk, sizeof(srk), payload, &s), 0);
        assert_string_equal(s, "{\"registrationId\":\"abc\",\"tpm\":{\"endorsementKey\":\"AAH/\",\"storageRootKey\":\"/u0=\"},"
                               "\"payload\":{\"k\":[1,\"\\\"\"]}}");
        free(s);
        assert_int_equal(dps_auth_register_body("abc", payload, &s), 0);
        assert_string_equal(s, "{\"registrationId\":\"abc\",\"payload\":{\"k\":[1,\"\\\"\"]}}");
        free(s);
        assert_int_equal(dps_auth_register_body("abc", NULL, &s), 0);
        assert_string_equal(s, "{\"registrationId\":\"abc\"}");
        free(s);
        json_decref(payload);

        assert_int_equal(dps_register_body("a\"b", ek, sizeof(ek), srk, sizeof(srk), NULL, &s), -EINVAL);
        assert_int_equal(dps_register_body("abc", ek, 0, srk, sizeof(srk), NULL, &s), -EINVAL);
        assert_int_equal(dps_register_body("abc", ek, 1, NULL, 1, NULL, &s), -EINVAL);
        assert_int_equal(dps_auth_register_body("", NULL, &s), -EINVAL);
}

static void test_challenge(void **state) {
        struct dps_challenge c;

        assert_int_equal(dps_parse_challenge(B("{\"message\":\"Authorization required, resend request using supplied key\","
                                               "\"authenticationKey\":\"AAECAw==\",\"unencryptedAuthenticationKey\":null,"
                                               "\"keyName\":\"registration\"}"),
                                             &c),
                         0);
        assert_int_equal(c.blob_len, 4);
        assert_memory_equal(c.blob, "\x00\x01\x02\x03", 4);
        assert_string_equal(c.key_name, "registration");
        dps_challenge_clear(&c);
        assert_null(c.blob);
        dps_challenge_clear(NULL);

        assert_int_equal(dps_parse_challenge(B("{\"authenticationKey\":\"AAECAw==\"}"), &c), 0);
        assert_string_equal(c.key_name, "registration");
        dps_challenge_clear(&c);
        assert_int_equal(dps_parse_challenge(B("{\"authenticationKey\":\"AAECAw==\",\"keyName\":null}"), &c), 0);
        assert_string_equal(c.key_name, "registration");
        dps_challenge_clear(&c);
        assert_int_equal(dps_parse_challenge(B("{\"authenticationKey\":\"AAECAw==\",\"keyName\":\"other-key\"}"), &c), 0);
        assert_string_equal(c.key_name, "other-key");
        dps_challenge_clear(&c);
}

static void test_challenge_bad(void **state) {
        static const char *bad[] = {
                "",
                "not json",
                "[]",
                "\"x\"",
                "{}",
                "{\"authenticationKey\":null}",
                "{\"authenticationKey\":5}",
                "{\"authenticationKey\":\"\"}",
                "{\"authenticationKey\":\"AAECAw\"}",       /* bad padding */
                "{\"authenticationKey\":\"AA EC Aw==\"}",  /* whitespace */
                "{\"authenticationKey\":\"AAECAw==\",\"keyName\":5}",
                "{\"authenticationKey\":\"AAECAw==\",\"keyName\":\"\"}",
                "{\"authenticationKey\":\"AAECAw==\",\"keyName\":\"a&b\"}",
                "{\"authenticationKey\":\"AAECAw==\",\"authenticationKey\":\"AAECAw==\"}",
                "{\"authenticationKey\":\"AAECAw==\"} trailing",
        };
        struct dps_challenge c = {0};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = dps_parse_challenge(B(bad[i]), &c);
                if (r != -EBADMSG)
                        fail_msg("case %zu (%s): %d", i, bad[i], r);
                assert_null(c.blob);
        }
}

static char *json_with_blob(size_t blob_bytes) {
        size_t enc = (blob_bytes + 2) / 3 * 4;
        char *s = malloc(enc + 64);
        size_t n;

        assert_non_null(s);
        n = (size_t)sprintf(s, "{\"authenticationKey\":\"");
        for (size_t i = 0; i < blob_bytes / 3; i++, n += 4)
                memcpy(s + n, "AAAA", 4);
        if (blob_bytes % 3 == 1) {
                memcpy(s + n, "AA==", 4);
                n += 4;
        } else if (blob_bytes % 3 == 2) {
                memcpy(s + n, "AAA=", 4);
                n += 4;
        }
        strcpy(s + n, "\"}");
        return s;
}

static void test_limits(void **state) {
        struct dps_challenge c;
        char *s;
        uint8_t *big;

        s = json_with_blob(DPS_AUTH_BLOB_MAX);
        assert_int_equal(dps_parse_challenge(B(s), &c), 0);
        assert_int_equal(c.blob_len, DPS_AUTH_BLOB_MAX);
        dps_challenge_clear(&c);
        free(s);
        s = json_with_blob(DPS_AUTH_BLOB_MAX + 1);
        assert_int_equal(dps_parse_challenge(B(s), &c), -EBADMSG);
        free(s);

        /* body size limit, checked before parsing */
        big = malloc(DPS_MAX_BODY_BYTES + 1);
        assert_non_null(big);
        memset(big, ' ', DPS_MAX_BODY_BYTES + 1);
        memcpy(big, "{}", 2);
        assert_int_equal(dps_parse_challenge(big, DPS_MAX_BODY_BYTES + 1, &c), -E2BIG);
        {
                struct dps_registration r;
                struct dps_error e;
                struct dps_operation o;
                assert_int_equal(dps_parse_registration(big, DPS_MAX_BODY_BYTES + 1, &r), -E2BIG);
                assert_int_equal(dps_parse_error(big, DPS_MAX_BODY_BYTES + 1, &e), -E2BIG);
                assert_int_equal(dps_parse_operation(big, DPS_MAX_BODY_BYTES + 1, &o), -E2BIG);
                assert_int_equal(dps_parse_error(big, DPS_MAX_BODY_BYTES, &e), 0); /* "{}" + spaces */
        }
        free(big);
}

static void test_operation(void **state) {
        struct dps_operation o;

        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"4.abc.def\",\"status\":\"assigning\"}"), &o), 0);
        assert_string_equal(o.operation_id, "4.abc.def");
        assert_int_equal(o.status, DPS_STATUS_ASSIGNING);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"x\"}"), &o), 0);
        assert_int_equal(o.status, DPS_STATUS_ASSIGNING);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"x\",\"status\":\"assigned\"}"), &o), 0);
        assert_int_equal(o.status, DPS_STATUS_ASSIGNED);

        assert_int_equal(dps_parse_operation(B("{\"status\":\"assigning\"}"), &o), -EBADMSG);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"\"}"), &o), -EBADMSG);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":1}"), &o), -EBADMSG);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"x\",\"status\":\"weird\"}"), &o), -EBADMSG);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"x\",\"status\":7}"), &o), -EBADMSG);
        assert_int_equal(dps_parse_operation(B("{\"operationId\":\"a\\nb\"}"), &o), -EBADMSG);
        {
                char s[DPS_OPERATION_ID_MAX + 64];
                int n = sprintf(s, "{\"operationId\":\"");
                memset(s + n, 'o', DPS_OPERATION_ID_MAX);
                strcpy(s + n + DPS_OPERATION_ID_MAX, "\"}");
                assert_int_equal(dps_parse_operation(B(s), &o), 0);
                memset(s + n, 'o', DPS_OPERATION_ID_MAX + 1);
                strcpy(s + n + DPS_OPERATION_ID_MAX + 1, "\"}");
                assert_int_equal(dps_parse_operation(B(s), &o), -EBADMSG);
        }
}

static const char *assigned_body =
        "{\"operationId\":\"4.x\",\"status\":\"assigned\",\"registrationState\":{"
        "\"registrationId\":\"abc\",\"createdDateTimeUtc\":\"2017-11-13T00:00:00Z\","
        "\"assignedHub\":\"myhub.azure-devices.net\",\"deviceId\":\"dev-01\",\"status\":\"assigned\","
        "\"substatus\":\"initialAssignment\",\"lastUpdatedDateTimeUtc\":\"2017-11-13T00:00:01Z\",\"etag\":\"xx\","
        "\"tpm\":{\"authenticationKey\":\"AAECAw==\"},\"payload\":{\"a\":1}}}";

static void test_registration_assigned(void **state) {
        struct dps_registration r;

        assert_int_equal(dps_parse_registration(B(assigned_body), &r), 0);
        assert_int_equal(r.status, DPS_STATUS_ASSIGNED);
        assert_string_equal(r.operation_id, "4.x");
        assert_string_equal(r.registration_id, "abc");
        assert_string_equal(r.assigned_hub, "myhub.azure-devices.net");
        assert_string_equal(r.device_id, "dev-01");
        assert_string_equal(r.substatus, "initialAssignment");
        assert_string_equal(r.created_at, "2017-11-13T00:00:00Z");
        assert_string_equal(r.updated_at, "2017-11-13T00:00:01Z");
        assert_int_equal(r.auth_blob_len, 4);
        assert_memory_equal(r.auth_blob, "\x00\x01\x02\x03", 4);
        assert_int_equal(json_integer_value(json_object_get(r.payload, "a")), 1);
        assert_int_equal(dps_classify_registration(&r, NULL), DPS_CLASS_OK);
        dps_registration_clear(&r);
        assert_null(r.payload);
        dps_registration_clear(NULL);

        /* no tpm key (aziot treats it as optional) */
        assert_int_equal(dps_parse_registration(B("{\"status\":\"assigned\",\"registrationState\":{"
                                                  "\"assignedHub\":\"h.net\",\"deviceId\":\"d\",\"tpm\":null}}"),
                                                &r),
                         0);
        assert_null(r.auth_blob);
        assert_null(r.payload);
        dps_registration_clear(&r);
}

static void test_registration_other(void **state) {
        struct dps_registration r;
        const char *why;

        assert_int_equal(dps_parse_registration(B("{\"operationId\":\"o\",\"status\":\"assigning\"}"), &r), 0);
        assert_int_equal(r.status, DPS_STATUS_ASSIGNING);
        dps_registration_clear(&r);
        assert_int_equal(dps_parse_registration(B("{\"operationId\":\"o\",\"status\":\"assigning\","
                                                  "\"registrationState\":{\"registrationId\":\"abc\",\"status\":\"assigning\"}}"),
                                                &r),
                         0);
        assert_string_equal(r.registration_id, "abc");
        dps_registration_clear(&r);

        assert_int_equal(dps_parse_registration(B("{\"operationId\":\"o\",\"status\":\"failed\",\"registrationState\":{"
                                                  "\"registrationId\":\"abc\",\"status\":\"failed\",\"errorCode\":400209,"
                                                  "\"errorMessage\":\"Unauthorized to hub\"}}"),
                                                &r),
                         0);
        assert_int_equal(r.status, DPS_STATUS_FAILED);
        assert_true(r.error_code == 400209);
        assert_string_equal(r.error_message, "Unauthorized to hub");
        assert_int_equal(dps_classify_registration(&r, &why), DPS_CLASS_PERMANENT);
        assert_non_null(why);
        dps_registration_clear(&r);

        assert_int_equal(dps_parse_registration(B("{\"status\":\"failed\",\"registrationState\":{\"errorCode\":\"503001\"}}"), &r), 0);
        assert_true(r.error_code == 503001);
        assert_int_equal(dps_classify_registration(&r, NULL), DPS_CLASS_TRANSIENT);
        dps_registration_clear(&r);

        assert_int_equal(dps_parse_registration(B("{\"status\":\"disabled\",\"registrationState\":{}}"), &r), 0);
        assert_int_equal(r.status, DPS_STATUS_DISABLED);
        assert_int_equal(dps_classify_registration(&r, NULL), DPS_CLASS_PERMANENT);
        dps_registration_clear(&r);
        assert_int_equal(dps_parse_registration(B("{\"status\":\"blacklisted\",\"registrationState\":{}}"), &r), 0);
        assert_int_equal(r.status, DPS_STATUS_DISABLED);
        dps_registration_clear(&r);
        assert_int_equal(dps_parse_registration(B("{\"status\":\"unassigned\",\"registrationState\":{}}"), &r), 0);
        assert_int_equal(dps_classify_registration(&r, NULL), DPS_CLASS_PERMANENT);
        dps_registration_clear(&r);
}

static void test_registration_truncation(void **state) {
        struct dps_registration r;
        char body[DPS_ERROR_MESSAGE_MAX * 2 + 200];
        int n = sprintf(body, "{\"status\":\"failed\",\"registrationState\":{\"errorMessage\":\"");

        /* 'x' then 2-byte UTF-8 characters straddling the limit */
        body[n++] = 'x';
        for (int i = 0; i < DPS_ERROR_MESSAGE_MAX / 2 + 5; i++) {
                body[n++] = '\xc3';
                body[n++] = '\xa9';
        }
        strcpy(body + n, "\"}}");
        assert_int_equal(dps_parse_registration(B(body), &r), 0);
        assert_int_equal(strlen(r.error_message), DPS_ERROR_MESSAGE_MAX - 1); /* not a split sequence */
        assert_int_equal((unsigned char)r.error_message[DPS_ERROR_MESSAGE_MAX - 2], 0xa9);
        dps_registration_clear(&r);
}

static void test_registration_bad(void **state) {
        static const char *bad[] = {
                "{}",
                "{\"status\":5}",
                "{\"status\":\"nope\"}",
                "{\"status\":\"assigned\"}",
                "{\"status\":\"assigned\",\"registrationState\":[]}",
                "{\"status\":\"assigning\",\"registrationState\":\"x\"}",
                "{\"status\":\"assigned\",\"registrationState\":{\"deviceId\":\"d\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"../etc\",\"deviceId\":\"d\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net/x\",\"deviceId\":\"d\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":5,\"deviceId\":\"d\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"a/b\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"..\"}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"d\",\"tpm\":5}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"d\","
                "\"tpm\":{\"authenticationKey\":\"!!\"}}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"d\",\"substatus\":1}}",
                "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"d\",\"payload\":"
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}",
                "{\"status\":\"failed\",\"registrationState\":{\"errorCode\":\"12x\"}}",
                "{\"status\":\"failed\",\"registrationState\":{\"errorCode\":1.5}}",
                "{\"status\":\"failed\",\"registrationState\":{\"errorMessage\":[]}}",
                "{\"status\":\"failed\"}",
                "{\"status\":\"assigning\",\"operationId\":[]}",
                "[\"status\"]",
        };
        struct dps_registration r = {0};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int ret = dps_parse_registration(B(bad[i]), &r);
                if (ret != -EBADMSG)
                        fail_msg("case %zu (%s): %d", i, bad[i], ret);
                assert_null(r.payload);
                assert_null(r.auth_blob);
        }
}

static void test_error(void **state) {
        struct dps_error e;

        assert_int_equal(dps_parse_error(B("{\"errorCode\":404201,\"trackingId\":\"t-1\",\"message\":\"Not found\","
                                           "\"timestampUtc\":\"x\"}"),
                                         &e),
                         0);
        assert_true(e.code == 404201);
        assert_string_equal(e.message, "Not found");
        assert_string_equal(e.tracking_id, "t-1");
        assert_int_equal(dps_parse_error(B("{\"code\":\"401002\",\"errorMessage\":\"Unauthorized\"}"), &e), 0);
        assert_true(e.code == 401002);
        assert_string_equal(e.message, "Unauthorized");
        /* errorCode wins over code; wrong types are ignored */
        assert_int_equal(dps_parse_error(B("{\"errorCode\":1,\"code\":2,\"errorMessage\":3,\"message\":\"m\","
                                           "\"trackingId\":[]}"),
                                         &e),
                         0);
        assert_true(e.code == 1);
        assert_string_equal(e.message, "m");
        assert_string_equal(e.tracking_id, "");
        assert_int_equal(dps_parse_error(B("{}"), &e), 0);
        assert_true(e.code == 0);
        assert_int_equal(dps_parse_error(B(""), &e), -EBADMSG);
        assert_int_equal(dps_parse_error(B("<html>"), &e), -EBADMSG);
        assert_int_equal(dps_parse_error(B("[1]"), &e), -EBADMSG);
}

static void test_retry_after(void **state) {
        uint32_t s = 77;
        /* Sun, 06 Nov 1994 08:49:37 GMT = 784111777 */
        const int64_t t = 784111777;

        assert_int_equal(dps_parse_retry_after("5", 0, &s), 0);
        assert_int_equal(s, 5);
        assert_int_equal(dps_parse_retry_after(" 10\t", 0, &s), 0);
        assert_int_equal(s, 10);
        assert_int_equal(dps_parse_retry_after("0", 0, &s), 0);
        assert_int_equal(s, DPS_RETRY_AFTER_MIN_S);
        assert_int_equal(dps_parse_retry_after("300", 0, &s), 0);
        assert_int_equal(s, 300);
        assert_int_equal(dps_parse_retry_after("301", 0, &s), 0);
        assert_int_equal(s, DPS_RETRY_AFTER_MAX_S);
        assert_int_equal(dps_parse_retry_after("999999999999999999999999999", 0, &s), 0);
        assert_int_equal(s, DPS_RETRY_AFTER_MAX_S);
        assert_int_equal(dps_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t - 20, &s), 0);
        assert_int_equal(s, 20);
        assert_int_equal(dps_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t + 100, &s), 0);
        assert_int_equal(s, DPS_RETRY_AFTER_MIN_S); /* in the past */
        assert_int_equal(dps_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t - 100000, &s), 0);
        assert_int_equal(s, DPS_RETRY_AFTER_MAX_S);
        assert_int_equal(dps_parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 0, &s), 0);
        assert_int_equal(s, 10);
        assert_int_equal(dps_parse_retry_after("Tue, 29 Feb 2000 00:00:00 GMT", 951782400 - 7, &s), 0);
        assert_int_equal(s, 7);

        s = 77;
        assert_int_equal(dps_parse_retry_after(NULL, 0, &s), -ENODATA);
        assert_int_equal(dps_parse_retry_after("", 0, &s), -ENODATA);
        assert_int_equal(dps_parse_retry_after("   ", 0, &s), -ENODATA);
        assert_int_equal(dps_parse_retry_after("5s", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("-5", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("1.5", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("soon", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("Sun, 06 Nov 1994 08:49:37 UTC", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("Xyz, 06 Nov 1994 08:49:37 GMT", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("Sun, 36 Nov 1994 08:49:37 GMT", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("Sun, 06 Nov 1994 25:49:37 GMT", 0, &s), -EINVAL);
        assert_int_equal(dps_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 0, &s), -EINVAL);
        assert_int_equal(s, 77); /* untouched on error */
}

static void test_classify(void **state) {
        struct dps_error e = {0};
        const char *why = NULL;

        assert_int_equal(dps_classify(DPS_REQUEST_REGISTER, 401, NULL, &why), DPS_CLASS_OK);
        assert_int_equal(dps_classify(DPS_REQUEST_REGISTER, 200, NULL, NULL), DPS_CLASS_PERMANENT);
        assert_int_equal(dps_classify(DPS_REQUEST_AUTH_REGISTER, 401, NULL, &why), DPS_CLASS_PERMANENT);
        assert_non_null(strstr(why, "SAS"));
        assert_int_equal(dps_classify(DPS_REQUEST_POLL, 401, NULL, NULL), DPS_CLASS_PERMANENT);
        assert_int_equal(dps_classify(DPS_REQUEST_AUTH_REGISTER, 202, NULL, NULL), DPS_CLASS_OK);
        assert_int_equal(dps_classify(DPS_REQUEST_POLL, 200, NULL, NULL), DPS_CLASS_OK);

        for (int i = 0; i < 3; i++) {
                enum dps_request q = (enum dps_request)i;
                assert_int_equal(dps_classify(q, 0, NULL, &why), DPS_CLASS_TRANSIENT);
                assert_int_equal(dps_classify(q, 408, NULL, NULL), DPS_CLASS_TRANSIENT);
                assert_int_equal(dps_classify(q, 429, NULL, &why), DPS_CLASS_TRANSIENT);
                assert_non_null(strstr(why, "throttl"));
                assert_int_equal(dps_classify(q, 500, NULL, NULL), DPS_CLASS_TRANSIENT);
                assert_int_equal(dps_classify(q, 503, NULL, NULL), DPS_CLASS_TRANSIENT);
                assert_int_equal(dps_classify(q, 400, NULL, NULL), DPS_CLASS_PERMANENT);
                assert_int_equal(dps_classify(q, 403, NULL, NULL), DPS_CLASS_PERMANENT);
                assert_int_equal(dps_classify(q, 404, NULL, &why), DPS_CLASS_PERMANENT);
                assert_non_null(strstr(why, "enrollment"));
                assert_int_equal(dps_classify(q, 412, NULL, NULL), DPS_CLASS_PERMANENT);
                assert_int_equal(dps_classify(q, 302, NULL, NULL), DPS_CLASS_PERMANENT);
                assert_int_equal(dps_classify(q, 600, NULL, NULL), DPS_CLASS_PERMANENT);
        }
        /* a DPS errorCode saying "throttled" overrides a permanent-looking status */
        e.code = 429001;
        assert_int_equal(dps_classify(DPS_REQUEST_POLL, 400, &e, NULL), DPS_CLASS_TRANSIENT);
        e.code = 404201;
        assert_int_equal(dps_classify(DPS_REQUEST_POLL, 404, &e, NULL), DPS_CLASS_PERMANENT);
        e.code = 42;
        assert_int_equal(dps_classify(DPS_REQUEST_POLL, 404, &e, NULL), DPS_CLASS_PERMANENT);
        /* it never turns a transient status permanent */
        e.code = 400001;
        assert_int_equal(dps_classify(DPS_REQUEST_POLL, 503, &e, NULL), DPS_CLASS_TRANSIENT);
}

/* "<prefix><n x 'a'><suffix>" on the heap */
static char *fill(const char *prefix, size_t n, const char *suffix) {
        size_t a = strlen(prefix), b = strlen(suffix);
        char *s = malloc(a + n + b + 1);

        assert_non_null(s);
        memcpy(s, prefix, a);
        memset(s + a, 'a', n);
        memcpy(s + a + n, suffix, b + 1);
        return s;
}

static void test_field_limits(void **state) {
        struct dps_challenge c;
        struct dps_registration r;
        struct dps_error e;
        char *s;

        /* ID scope */
        s = fill("", DPS_ID_SCOPE_MAX, "");
        assert_true(dps_id_scope_is_valid(s));
        free(s);
        s = fill("", DPS_ID_SCOPE_MAX + 1, "");
        assert_false(dps_id_scope_is_valid(s));
        free(s);

        /* keyName */
        s = fill("{\"authenticationKey\":\"AAECAw==\",\"keyName\":\"", DPS_KEY_NAME_MAX, "\"}");
        assert_int_equal(dps_parse_challenge(B(s), &c), 0);
        assert_int_equal(strlen(c.key_name), DPS_KEY_NAME_MAX);
        dps_challenge_clear(&c);
        free(s);
        s = fill("{\"authenticationKey\":\"AAECAw==\",\"keyName\":\"", DPS_KEY_NAME_MAX + 1, "\"}");
        assert_int_equal(dps_parse_challenge(B(s), &c), -EBADMSG);
        free(s);

        /* substatus and timestamps: at the limit pass, one over fails */
        static const struct {
                const char *key;
                size_t max;
        } fields[] = {
                {"substatus", DPS_SUBSTATUS_MAX},
                {"createdDateTimeUtc", DPS_TIMESTAMP_MAX},
                {"lastUpdatedDateTimeUtc", DPS_TIMESTAMP_MAX},
                {"registrationId", DPS_REGISTRATION_ID_MAX},
        };
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                char prefix[200];
                snprintf(prefix, sizeof(prefix),
                         "{\"status\":\"assigned\",\"registrationState\":{\"assignedHub\":\"h.net\",\"deviceId\":\"d\",\"%s\":\"",
                         fields[i].key);
                s = fill(prefix, fields[i].max, "\"}}");
                assert_int_equal(dps_parse_registration(B(s), &r), 0);
                dps_registration_clear(&r);
                free(s);
                s = fill(prefix, fields[i].max + 1, "\"}}");
                assert_int_equal(dps_parse_registration(B(s), &r), -EBADMSG);
                free(s);
        }

        /* trackingId is kept truncated (it is only shown) */
        s = fill("{\"trackingId\":\"", DPS_TRACKING_ID_MAX + 10, "\"}");
        assert_int_equal(dps_parse_error(B(s), &e), 0);
        assert_int_equal(strlen(e.tracking_id), DPS_TRACKING_ID_MAX);
        free(s);
        s = fill("{\"message\":\"", DPS_ERROR_MESSAGE_MAX + 10, "\"}");
        assert_int_equal(dps_parse_error(B(s), &e), 0);
        assert_int_equal(strlen(e.message), DPS_ERROR_MESSAGE_MAX);
        free(s);
}

static void test_status_strings(void **state) {
        enum dps_status s;

        for (int i = 0; i < _DPS_STATUS_MAX; i++) {
                assert_non_null(dps_status_to_string((enum dps_status)i));
                assert_int_equal(dps_status_from_string(dps_status_to_string((enum dps_status)i), &s), 0);
                assert_int_equal(s, i);
        }
        assert_null(dps_status_to_string(_DPS_STATUS_MAX));
        assert_int_equal(dps_status_from_string("Assigned", &s), -EBADMSG);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_hub_names),
                cmocka_unit_test(test_ids),
                cmocka_unit_test(test_urls),
                cmocka_unit_test(test_payload),
                cmocka_unit_test(test_bodies),
                cmocka_unit_test(test_challenge),
                cmocka_unit_test(test_challenge_bad),
                cmocka_unit_test(test_limits),
                cmocka_unit_test(test_operation),
                cmocka_unit_test(test_registration_assigned),
                cmocka_unit_test(test_registration_other),
                cmocka_unit_test(test_registration_truncation),
                cmocka_unit_test(test_registration_bad),
                cmocka_unit_test(test_error),
                cmocka_unit_test(test_retry_after),
                cmocka_unit_test(test_classify),
                cmocka_unit_test(test_field_limits),
                cmocka_unit_test(test_status_strings),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
