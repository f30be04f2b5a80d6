/* Tests for lib/sas.c. Golden signatures were computed independently with
 *   printf '<sr>\n<se>' | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f -binary | base64
 * and are hard-coded here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "sas.h"
#include "util.h"

static const uint8_t key[32] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a,
                                0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
                                0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};

/* HMAC(key, "0ne000abcde%2fregistrations%2fabc\n1700000000") */
static const uint8_t sig_dps[32] = {0xa8, 0x7a, 0x01, 0xc4, 0xfa, 0x70, 0x5d, 0x93, 0x50, 0x4e, 0x7f,
                                    0xee, 0x31, 0x22, 0xbc, 0xa4, 0x1e, 0x33, 0x27, 0x7c, 0x60, 0x89,
                                    0xe7, 0xf4, 0xe7, 0x7c, 0xdd, 0xf8, 0xd7, 0xe2, 0xf5, 0xbd};
/* HMAC(key, "myhub.azure-devices.net%2fdevices%2fdev-01\n1700003600") */
static const uint8_t sig_hub[32] = {0x72, 0x40, 0xbb, 0x0c, 0x94, 0x63, 0x0a, 0xdc, 0x26, 0x5a, 0x91,
                                    0xf6, 0xe3, 0x69, 0x53, 0xec, 0xba, 0x76, 0xc6, 0x5b, 0x0a, 0xdc,
                                    0x7e, 0x8d, 0x0f, 0x49, 0x64, 0x5e, 0xfb, 0xd0, 0x8f, 0x73};

static const char *tok_dps = "SharedAccessSignature sr=0ne000abcde%2fregistrations%2fabc"
                             "&sig=qHoBxPpwXZNQTn%2fuMSK8pB4zJ3xgief053zd%2bNfi9b0%3d&se=1700000000&skn=registration";
static const char *tok_hub = "SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fdev-01"
                             "&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1700003600";

static void hmac(const char *data, size_t len, uint8_t out[32]) {
        unsigned n = 32;
        assert_non_null(HMAC(EVP_sha256(), key, sizeof(key), (const uint8_t *)data, len, out, &n));
        assert_int_equal(n, 32);
}

static void test_encode(void **state) {
        char *s;

        assert_int_equal(sas_resource_encode("0ne000ABCDE/registrations/Abc", &s), 0);
        assert_string_equal(s, "0ne000abcde%2fregistrations%2fabc");
        free(s);
        /* unreserved pass, everything else %xx lowercase, incl. UTF-8 bytes */
        assert_int_equal(sas_resource_encode("a-b.c_d~e f+g=h:i?\xc3\xa9", &s), 0);
        assert_string_equal(s, "a-b.c_d~e%20f%2bg%3dh%3ai%3f%c3%a9");
        free(s);
        assert_int_equal(sas_percent_encode("AB/c", 4, &s), 0);
        assert_string_equal(s, "AB%2fc");
        free(s);
        assert_int_equal(sas_resource_encode("", &s), -EINVAL);
        assert_int_equal(sas_resource_encode(NULL, &s), -EINVAL);
        assert_int_equal(sas_resource_encode("a\nb", &s), -EINVAL);
        assert_int_equal(sas_resource_encode("a\x7f", &s), -EINVAL);
}

static void test_encode_limit(void **state) {
        char big[SAS_RESOURCE_MAX + 2];
        char *s;

        memset(big, 'a', sizeof(big));
        big[SAS_RESOURCE_MAX] = '\0';
        assert_int_equal(sas_resource_encode(big, &s), 0);
        assert_int_equal(strlen(s), SAS_RESOURCE_MAX);
        free(s);
        big[SAS_RESOURCE_MAX] = 'a';
        big[SAS_RESOURCE_MAX + 1] = '\0';
        assert_int_equal(sas_resource_encode(big, &s), -EINVAL);
        assert_int_equal(sas_percent_encode(big, SAS_RESOURCE_MAX + 1, &s), -EINVAL);
}

static void test_resources(void **state) {
        char *s;

        assert_int_equal(sas_dps_resource("0ne000ABCDE", "abc", &s), 0);
        assert_string_equal(s, "0ne000abcde%2fregistrations%2fabc");
        free(s);
        assert_int_equal(sas_hub_resource("MyHub.azure-devices.net", "dev-01", &s), 0);
        assert_string_equal(s, "myhub.azure-devices.net%2fdevices%2fdev-01");
        free(s);
        assert_int_equal(sas_dps_resource("", "abc", &s), -EINVAL);
        assert_int_equal(sas_dps_resource("x", "", &s), -EINVAL);
        assert_int_equal(sas_hub_resource(NULL, "d", &s), -EINVAL);
}

static void test_golden_dps(void **state) {
        _cleanup_free_ char *sr = NULL, *sts = NULL, *tok = NULL;
        uint8_t sig[32];
        size_t len;

        assert_int_equal(sas_dps_resource("0ne000ABCDE", "abc", &sr), 0);
        assert_int_equal(sas_string_to_sign(sr, 1700000000, &sts, &len), 0);
        assert_int_equal(len, strlen("0ne000abcde%2fregistrations%2fabc\n1700000000"));
        assert_memory_equal(sts, "0ne000abcde%2fregistrations%2fabc\n1700000000", len);
        hmac(sts, len, sig);
        assert_memory_equal(sig, sig_dps, 32); /* matches the openssl CLI */
        assert_int_equal(sas_token_format(sr, sig, 1700000000, SAS_DPS_KEY_NAME, &tok), 0);
        assert_string_equal(tok, tok_dps);
}

static void test_golden_hub(void **state) {
        _cleanup_free_ char *sr = NULL, *sts = NULL, *tok = NULL;
        uint8_t sig[32];
        size_t len;

        assert_int_equal(sas_hub_resource("myhub.azure-devices.net", "dev-01", &sr), 0);
        assert_int_equal(sas_string_to_sign(sr, 1700003600, &sts, &len), 0);
        hmac(sts, len, sig);
        assert_memory_equal(sig, sig_hub, 32);
        assert_int_equal(sas_token_format(sr, sig, 1700003600, NULL, &tok), 0);
        assert_string_equal(tok, tok_hub);
}

static void test_format_bad(void **state) {
        char *s;
        size_t n;

        assert_int_equal(sas_token_format("", sig_dps, 1, NULL, &s), -EINVAL);
        assert_int_equal(sas_token_format("x", NULL, 1, NULL, &s), -EINVAL);
        assert_int_equal(sas_token_format("x", sig_dps, 1, "", &s), -EINVAL);
        assert_int_equal(sas_string_to_sign("", 1, &s, &n), -EINVAL);
        assert_int_equal(sas_string_to_sign("x", UINT64_MAX, &s, &n), 0);
        assert_string_equal(s, "x\n18446744073709551615");
        free(s);
}

static void test_parse_roundtrip(void **state) {
        struct sas_token t;

        assert_int_equal(sas_token_parse(tok_dps, strlen(tok_dps), &t), 0);
        assert_string_equal(t.sr, "0ne000abcde%2fregistrations%2fabc"); /* raw, as signed */
        assert_memory_equal(t.sig, sig_dps, 32);
        assert_true(t.expiry == 1700000000);
        assert_string_equal(t.skn, "registration");
        sas_token_clear(&t);
        assert_null(t.sr);

        assert_int_equal(sas_token_parse(tok_hub, strlen(tok_hub), &t), 0);
        assert_null(t.skn);
        assert_memory_equal(t.sig, sig_hub, 32);
        sas_token_clear(&t);
        sas_token_clear(NULL);

        /* any field order; uppercase hex in sig (C#/Node style) */
        const char *o = "SharedAccessSignature se=5&skn=registration&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3D&sr=a";
        assert_int_equal(sas_token_parse(o, strlen(o), &t), 0);
        assert_true(t.expiry == 5);
        assert_string_equal(t.sr, "a");
        sas_token_clear(&t);
}

static void test_parse_bad(void **state) {
        static const char *bad[] = {
                "",
                "SharedAccessSignature ",
                "SharedAccessSignature",
                "sharedaccesssignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1",
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d",          /* no se */
                "SharedAccessSignature sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1",           /* no sr */
                "SharedAccessSignature sr=a&se=1",                                                        /* no sig */
                "SharedAccessSignature sr=a&sig=ckC7&se=1",                                               /* short sig */
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3&se=1",      /* bad % */
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1x",
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=",
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=99999999999999999999",
                "SharedAccessSignature sr=a&sr=b&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1", /* dup */
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1&x=y", /* unknown */
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1&",    /* trailing & */
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1&skn=",
                "SharedAccessSignature sr=a&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1&skn=a%00",
                "SharedAccessSignature sr&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1",
                "SharedAccessSignature sr=&sig=ckC7DJRjCtwmWpH242lT7Lp2xlsK3H6ND0lkXvvQj3M%3d&se=1",
        };
        struct sas_token t = {0};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = sas_token_parse(bad[i], strlen(bad[i]), &t);
                if (r != -EBADMSG)
                        fail_msg("case %zu (%s): %d", i, bad[i], r);
                assert_null(t.sr); /* out untouched */
        }
        /* embedded NUL inside the given length */
        assert_int_equal(sas_token_parse("SharedAccessSignature sr=a\0", 27, &t), -EBADMSG);
}

static void test_parse_limit(void **state) {
        static char big[SAS_TOKEN_MAX + 2];
        struct sas_token t;

        memset(big, 'a', sizeof(big) - 1);
        assert_int_equal(sas_token_parse(big, SAS_TOKEN_MAX + 1, &t), -E2BIG);
        assert_int_equal(sas_token_parse(big, SAS_TOKEN_MAX, &t), -EBADMSG);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_encode),         cmocka_unit_test(test_encode_limit),
                cmocka_unit_test(test_resources),      cmocka_unit_test(test_golden_dps),
                cmocka_unit_test(test_golden_hub),     cmocka_unit_test(test_format_bad),
                cmocka_unit_test(test_parse_roundtrip), cmocka_unit_test(test_parse_bad),
                cmocka_unit_test(test_parse_limit),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
