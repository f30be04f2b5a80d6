/* Tests for lib/state.c: format/parse round trip, every truncation and every
 * bit flip detected, bad fields, atomic save/load with mode 0600. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "b64.h"
#include "state.h"
#include "util.h"

static void sample(struct tpmid_state *st) {
        memset(st, 0, sizeof(*st));
        strcpy(st->hub, "myhub.azure-devices.net");
        strcpy(st->device_id, "dev-01");
        strcpy(st->registration_id, "abc");
        strcpy(st->id_scope, "0ne000ABCDE");
        for (int i = 0; i < STATE_DIGEST_LEN; i++) {
                st->ek_digest[i] = (uint8_t)i;
                st->config_digest[i] = (uint8_t)(0xff - i);
        }
        st->assigned_at = 1700000000;
        strcpy(st->substatus, "initialAssignment");
}

static void test_roundtrip(void **state) {
        struct tpmid_state st, out;
        _cleanup_free_ char *buf = NULL;
        size_t len;

        sample(&st);
        assert_int_equal(state_format(&st, &buf, &len), 0);
        assert_int_equal(strlen(buf), len);
        assert_true(len <= STATE_MAX_BYTES);
        assert_int_equal(state_parse((uint8_t *)buf, len, &out), 0);
        assert_memory_equal(&st, &out, sizeof(st));
        /* the format is what the header documents */
        assert_true(startswith(buf, "{\"version\":2,\"hub\":\"myhub.azure-devices.net\""));
        assert_non_null(strstr(buf, ",\"keySlot\":\"a\"}\n"));

        /* slot b round-trips */
        st.key_slot = STATE_KEY_SLOT_B;
        free(buf);
        buf = NULL;
        assert_int_equal(state_format(&st, &buf, &len), 0);
        assert_non_null(strstr(buf, ",\"keySlot\":\"b\"}\n"));
        assert_int_equal(state_parse((uint8_t *)buf, len, &out), 0);
        assert_int_equal(out.key_slot, STATE_KEY_SLOT_B);
        st.key_slot = _STATE_KEY_SLOT_MAX;
        assert_int_equal(state_format(&st, &buf, &len), -EINVAL);
        st.key_slot = STATE_KEY_SLOT_A;
        assert_non_null(strstr(buf, "}\nsha256:"));
        assert_int_equal(buf[len - 1], '\n');

        /* empty substatus and a negative time are allowed */
        memset(st.substatus, 0, sizeof(st.substatus));
        st.assigned_at = -1;
        free(buf);
        buf = NULL;
        assert_int_equal(state_format(&st, &buf, &len), 0);
        assert_int_equal(state_parse((uint8_t *)buf, len, &out), 0);
        assert_memory_equal(&st, &out, sizeof(st));
}

static void test_truncation(void **state) {
        struct tpmid_state st, out;
        _cleanup_free_ char *buf = NULL;
        size_t len;

        sample(&st);
        assert_int_equal(state_format(&st, &buf, &len), 0);
        memset(&out, 0x5a, sizeof(out));
        for (size_t n = 0; n < len; n++) {
                int r = state_parse((uint8_t *)buf, n, &out);
                if (r != -EBADMSG)
                        fail_msg("truncated at %zu: %d", n, r);
        }
        for (size_t i = 0; i < sizeof(out); i++)
                assert_int_equal(((uint8_t *)&out)[i], 0x5a); /* never written */
}

static void test_bitflips(void **state) {
        struct tpmid_state st, out;
        _cleanup_free_ char *buf = NULL;
        size_t len;
        unsigned tested = 0;

        sample(&st);
        assert_int_equal(state_format(&st, &buf, &len), 0);
        for (size_t i = 0; i < len; i++)
                for (int b = 0; b < 8; b++) {
                        buf[i] ^= (char)(1 << b);
                        int r = state_parse((uint8_t *)buf, len, &out);
                        if (r != -EBADMSG)
                                fail_msg("flip at byte %zu bit %d accepted: %d", i, b, r);
                        buf[i] ^= (char)(1 << b);
                        tested++;
                }
        assert_int_equal(tested, len * 8);
        /* appended garbage */
        {
                _cleanup_free_ char *more = malloc(len + 1);
                memcpy(more, buf, len);
                more[len] = '\n';
                assert_int_equal(state_parse((uint8_t *)more, len + 1, &out), -EBADMSG);
        }
}

/* Build a file with a correct trailer around an arbitrary body, so the tests
 * reach the field checks behind the digest. */
static size_t with_trailer(const char *body, char *out) {
        uint8_t dig[32];
        unsigned n;
        size_t blen = strlen(body);
        _cleanup_free_ char *hex = NULL;

        memcpy(out, body, blen);
        out[blen] = '\n';
        assert_int_equal(EVP_Digest(out, blen + 1, dig, &n, EVP_sha256(), NULL), 1);
        hex = hex_encode(dig, 32);
        return (size_t)(blen + 1 + (size_t)sprintf(out + blen + 1, "sha256:%s\n", hex));
}

static void test_bad_fields(void **state) {
#define D64 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define GOOD_REST "\"deviceId\":\"d\",\"registrationId\":\"r\",\"idScope\":\"s\",\"ekDigest\":\"" D64 "\",\"assignedAt\":1,\"substatus\":\"\",\"configDigest\":\"" D64 "\""
        static const char *bad[] = {
                "{\"version\":2,\"hub\":\"h.net\"," GOOD_REST "}", /* version 2 needs its keySlot */
                "{\"version\":3,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"a\"}",
                "{\"version\":1,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"a\"}", /* version 1 had none */
                "{\"version\":2,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"c\"}",
                "{\"version\":2,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"A\"}",
                "{\"version\":2,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":1}",
                "{\"version\":2,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"\"}",
                "{\"version\":\"1\",\"hub\":\"h.net\"," GOOD_REST "}",
                "{\"hub\":\"h.net\"," GOOD_REST "}",
                "{\"version\":1,\"hub\":\"../etc\"," GOOD_REST "}",
                "{\"version\":1,\"hub\":5," GOOD_REST "}",
                "{\"version\":1,\"hub\":\"h.net\"," GOOD_REST ",\"extra\":1}",
                "{\"version\":1,\"hub\":\"h.net\",\"hub\":\"h.net\"," GOOD_REST "}",
                "{\"version\":1,\"hub\":\"h.net\",\"deviceId\":\"a/b\",\"registrationId\":\"r\",\"idScope\":\"s\",\"ekDigest\":\"" D64
                "\",\"assignedAt\":1,\"substatus\":\"\",\"configDigest\":\"" D64 "\"}",
                "{\"version\":1,\"hub\":\"h.net\",\"deviceId\":\"d\",\"registrationId\":\"r\",\"idScope\":\"s\",\"ekDigest\":\"00\","
                "\"assignedAt\":1,\"substatus\":\"\",\"configDigest\":\"" D64 "\"}",
                "{\"version\":1,\"hub\":\"h.net\",\"deviceId\":\"d\",\"registrationId\":\"r\",\"idScope\":\"s\",\"ekDigest\":\""
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F\","
                "\"assignedAt\":1,\"substatus\":\"\",\"configDigest\":\"" D64 "\"}",
                "{\"version\":1,\"hub\":\"h.net\",\"deviceId\":\"d\",\"registrationId\":\"r\",\"idScope\":\"s\",\"ekDigest\":\"" D64
                "\",\"assignedAt\":1.5,\"substatus\":\"\",\"configDigest\":\"" D64 "\"}",
                "{\"version\":1,\"hub\":\"h.net\",\"deviceId\":\"d\",\"registrationId\":\"r\",\"idScope\":\"s\",\"ekDigest\":\"" D64
                "\",\"assignedAt\":1,\"substatus\":\"a\\nb\",\"configDigest\":\"" D64 "\"}",
                "[1]",
                "{}",
        };
        char buf[2048];
        struct tpmid_state out;
        size_t n;

        /* the control cases pass, so the failures below are the field checks; a
         * version 1 file (written before the A/B slots) names slot a */
        n = with_trailer("{\"version\":1,\"hub\":\"h.net\"," GOOD_REST "}", buf);
        memset(&out, 0x5a, sizeof(out));
        assert_int_equal(state_parse((uint8_t *)buf, n, &out), 0);
        assert_string_equal(out.hub, "h.net");
        assert_int_equal(out.key_slot, STATE_KEY_SLOT_A);
        n = with_trailer("{\"version\":2,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"b\"}", buf);
        assert_int_equal(state_parse((uint8_t *)buf, n, &out), 0);
        assert_int_equal(out.key_slot, STATE_KEY_SLOT_B);
        n = with_trailer("{\"version\":2,\"hub\":\"h.net\"," GOOD_REST ",\"keySlot\":\"a\"}", buf);
        assert_int_equal(state_parse((uint8_t *)buf, n, &out), 0);
        assert_int_equal(out.key_slot, STATE_KEY_SLOT_A);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                n = with_trailer(bad[i], buf);
                int r = state_parse((uint8_t *)buf, n, &out);
                if (r != -EBADMSG)
                        fail_msg("case %zu accepted: %d", i, r);
        }
        /* a newline inside the body */
        n = with_trailer("{\"version\":1,\n\"hub\":\"h.net\"," GOOD_REST "}", buf);
        assert_int_equal(state_parse((uint8_t *)buf, n, &out), -EBADMSG);
}

static void test_format_bad(void **state) {
        struct tpmid_state st;
        char *buf;
        size_t len;

        sample(&st);
        strcpy(st.hub, "a/b");
        assert_int_equal(state_format(&st, &buf, &len), -EINVAL);
        sample(&st);
        st.device_id[0] = '\0';
        assert_int_equal(state_format(&st, &buf, &len), -EINVAL);
        sample(&st);
        strcpy(st.substatus, "x\ny");
        assert_int_equal(state_format(&st, &buf, &len), -EINVAL);
}

static void test_limit(void **state) {
        static uint8_t big[STATE_MAX_BYTES + 1];
        struct tpmid_state out;

        assert_int_equal(state_parse(big, sizeof(big), &out), -E2BIG);
        assert_int_equal(state_parse(big, STATE_MAX_BYTES, &out), -EBADMSG);
}

static void test_save_load(void **state) {
        char dir[] = "/tmp/test-state-XXXXXX", path[64];
        struct tpmid_state st, out;
        struct stat sb;
        FILE *f;

        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/" STATE_FILE_NAME, dir);
        assert_int_equal(state_load(path, &out), -ENOENT);

        sample(&st);
        assert_int_equal(state_save(path, &st), 0);
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal(sb.st_mode & 07777, 0600);
        assert_int_equal(state_load(path, &out), 0);
        assert_memory_equal(&st, &out, sizeof(st));

        /* overwrite keeps the file valid */
        strcpy(st.device_id, "dev-02");
        assert_int_equal(state_save(path, &st), 0);
        assert_int_equal(state_load(path, &out), 0);
        assert_string_equal(out.device_id, "dev-02");

        /* an invalid state is refused and the old file survives */
        strcpy(st.hub, "../x");
        assert_int_equal(state_save(path, &st), -EINVAL);
        assert_int_equal(state_load(path, &out), 0);
        assert_string_equal(out.device_id, "dev-02");

        /* torn file on disk */
        assert_non_null(f = fopen(path, "r+"));
        assert_int_equal(ftruncate(fileno(f), 40), 0);
        fclose(f);
        assert_int_equal(state_load(path, &out), -EBADMSG);

        /* oversize file on disk */
        assert_non_null(f = fopen(path, "w"));
        for (int i = 0; i < STATE_MAX_BYTES + 10; i++)
                fputc('x', f);
        fclose(f);
        assert_int_equal(state_load(path, &out), -EBADMSG);

        unlink(path);
        rmdir(dir);
}

static void test_digests(void **state) {
        uint8_t a[32], b[32], c[32];
        json_t *p1 = json_pack("{s:i, s:i}", "x", 1, "y", 2), *p2 = json_pack("{s:i, s:i}", "y", 2, "x", 1);
        struct state_config_input in = {.id_scope = "0ne1", .registration_id = "r"};
        struct tpmid_state st;

        assert_int_equal(state_ek_digest((const uint8_t *)"abc", 3, a), 0);
        /* SHA-256("abc") */
        assert_int_equal(a[0], 0xba);
        assert_int_equal(a[31], 0xad);
        assert_int_equal(state_ek_digest(NULL, 3, a), -EINVAL);
        assert_int_equal(state_ek_digest((const uint8_t *)"", 0, a), -EINVAL);

        assert_int_equal(state_config_digest(&in, a), 0);
        in.global_endpoint = DPS_GLOBAL_ENDPOINT; /* explicit default == default */
        assert_int_equal(state_config_digest(&in, b), 0);
        assert_memory_equal(a, b, 32);
        in.payload = p1;
        assert_int_equal(state_config_digest(&in, b), 0);
        assert_memory_not_equal(a, b, 32);
        in.payload = p2; /* key order does not matter */
        assert_int_equal(state_config_digest(&in, c), 0);
        assert_memory_equal(b, c, 32);
        in.registration_id = "r2";
        assert_int_equal(state_config_digest(&in, c), 0);
        assert_memory_not_equal(b, c, 32);
        in.id_scope = NULL;
        assert_int_equal(state_config_digest(&in, c), -EINVAL);
        json_decref(p1);
        json_decref(p2);

        sample(&st);
        memcpy(a, st.ek_digest, 32);
        memcpy(b, st.config_digest, 32);
        assert_int_equal(state_check(&st, a, b), STATE_MATCH_OK);
        b[0] ^= 1;
        assert_int_equal(state_check(&st, a, b), STATE_MATCH_CONFIG_CHANGED);
        a[0] ^= 1;
        assert_int_equal(state_check(&st, a, b), STATE_MATCH_OTHER_TPM);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_roundtrip),  cmocka_unit_test(test_truncation), cmocka_unit_test(test_bitflips),
                cmocka_unit_test(test_bad_fields), cmocka_unit_test(test_format_bad), cmocka_unit_test(test_limit),
                cmocka_unit_test(test_save_load),  cmocka_unit_test(test_digests),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
