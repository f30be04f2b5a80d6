/* Pure parts of lib/tpm.c: registration ids, key templates, the storage-key
 * check and the TSS2_RC -> errno/sentence mapping. No TPM needed.
 *
 * Expected values were computed independently of this code:
 *   sha256sum -b ek.pub                                   (hex id)
 *   sha256sum ek.pub | cut -c1-64 | xxd -r -p | base32 -w0 | tr A-Z a-z | tr -d =
 * where ek.pub is `tpm2_readpublic -c 0x81010001 -o ek.pub` of a swtpm. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tpm.h"

/* A real EK TPM2B_PUBLIC (316 bytes) read from a swtpm with tpm2-tools. */
static const uint8_t ek_pub[] = {
  0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x20,
  0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d,
  0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64,
  0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa, 0x00, 0x06, 0x00, 0x80,
  0x00, 0x43, 0x00, 0x10, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
  0x94, 0x0e, 0x78, 0xcb, 0x5f, 0x33, 0x4f, 0x3c, 0x98, 0x6e, 0x66, 0x6e,
  0xd0, 0x2e, 0xea, 0x53, 0xa6, 0x35, 0xe5, 0x26, 0xf3, 0x1f, 0xde, 0x48,
  0xc6, 0x82, 0x2b, 0x65, 0xdc, 0x8f, 0x73, 0x2a, 0x0a, 0x2b, 0xd1, 0xf3,
  0x78, 0x2d, 0x75, 0xe7, 0xbc, 0x50, 0xa4, 0xf1, 0xa3, 0xaf, 0x68, 0xc5,
  0xe6, 0x64, 0xef, 0xb8, 0x7f, 0x8e, 0x09, 0x39, 0x6c, 0x36, 0xa5, 0x4b,
  0x0f, 0x13, 0x0f, 0xb7, 0x54, 0x59, 0x5f, 0x37, 0xdd, 0x3e, 0x9c, 0x74,
  0x82, 0x10, 0x7e, 0x58, 0xbb, 0x58, 0x53, 0x92, 0x4c, 0x5f, 0x17, 0xd5,
  0x8b, 0x8f, 0x87, 0xea, 0x6c, 0x64, 0xc0, 0x40, 0x2e, 0x43, 0x83, 0x59,
  0x90, 0x83, 0x42, 0x73, 0x1b, 0xae, 0x44, 0x7f, 0x86, 0x1e, 0x5f, 0x2f,
  0xa3, 0xb1, 0xfd, 0xf8, 0x4a, 0x39, 0xe3, 0x4c, 0xac, 0x2f, 0x0a, 0x0b,
  0xea, 0xb8, 0xba, 0xbe, 0x86, 0x8a, 0xb4, 0xc7, 0xc5, 0x53, 0x13, 0xb0,
  0x6d, 0xd6, 0xb1, 0x6c, 0x84, 0x5c, 0x9e, 0xd8, 0x2d, 0x1a, 0x29, 0x81,
  0x0c, 0x57, 0x97, 0xf3, 0x33, 0x85, 0xdb, 0x72, 0x6c, 0x72, 0x7a, 0x47,
  0x27, 0x24, 0x13, 0x02, 0x47, 0x58, 0xb6, 0x5e, 0x5b, 0xd3, 0xc0, 0xba,
  0x5b, 0xe3, 0x39, 0x9c, 0x1a, 0x63, 0x01, 0x22, 0xe2, 0x98, 0x77, 0xcd,
  0x36, 0x3c, 0x42, 0xeb, 0x5c, 0x62, 0xbb, 0xf0, 0xd8, 0x69, 0x02, 0xb3,
  0x1c, 0x2f, 0x65, 0xc0, 0x4d, 0xfa, 0x77, 0x47, 0xb1, 0x63, 0xf1, 0x38,
  0x84, 0xee, 0x8d, 0xd5, 0xf0, 0x0e, 0x4c, 0xcb, 0x36, 0x12, 0xbb, 0x5b,
  0xc0, 0x60, 0x0b, 0x75, 0xc6, 0xed, 0x16, 0x29, 0xbb, 0x05, 0xfa, 0x18,
  0x05, 0x94, 0x01, 0xbf, 0x46, 0x0b, 0x63, 0x94, 0xe7, 0xda, 0x0e, 0x8b,
  0xd9, 0x2a, 0xb1, 0x72, 0x60, 0x97, 0x7b, 0x9b, 0xb6, 0xb0, 0x4b, 0x16,
  0xd7, 0x41, 0x1b, 0xd5
};

static const uint8_t ek_policy[32] = {
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
        0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
};

static void test_regid_ek(void **state) {
        (void)state;
        assert_int_equal(sizeof(ek_pub), 316);
        char *hex = tpm_registration_id(ek_pub, sizeof(ek_pub));
        char *b32 = tpm_registration_id_base32(ek_pub, sizeof(ek_pub));
        assert_non_null(hex);
        assert_non_null(b32);
        assert_string_equal(hex, "b31271d41a70525a5206276564e55ea4351e5121ab4163af6b05305ad7a683b5");
        assert_string_equal(b32, "wmjhdva2objfuuqge5swjzk6uq2r4ujbvnawhl3lauyfvv5gqo2q");
        assert_int_equal(strlen(hex), 64);
        assert_int_equal(strlen(b32), 52);
        free(hex);
        free(b32);
}

static void test_regid_vectors(void **state) {
        (void)state;
        /* FIPS 180-2 "abc" and the empty string. */
        char *h = tpm_registration_id((const uint8_t *)"abc", 3);
        char *b = tpm_registration_id_base32((const uint8_t *)"abc", 3);
        assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_string_equal(b, "xj4bnp4pahh6uqkbidpf3lrceoyagyndsylxvhfucd7wd4qacwwq");
        free(h);
        free(b);
        b = tpm_registration_id_base32((const uint8_t *)"", 0);
        assert_string_equal(b, "4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbkq");
        free(b);
        /* The id covers the size prefix: dropping it changes the id. */
        h = tpm_registration_id(ek_pub + 2, sizeof(ek_pub) - 2);
        assert_string_not_equal(h, "b31271d41a70525a5206276564e55ea4351e5121ab4163af6b05305ad7a683b5");
        free(h);
        assert_null(tpm_registration_id(NULL, 0));
        assert_null(tpm_registration_id_base32(NULL, 0));
}

static void test_ek_template(void **state) {
        (void)state;
        struct tpm_public t;
        assert_int_equal(tpm_template_public(TPM_TEMPLATE_EK, &t), 0);
        assert_int_equal(t.len, 316);
        /* Everything up to the modulus equals the real EK (same template). */
        assert_memory_equal(t.buf, ek_pub, 316 - 256);
        static const uint8_t head[] = { 0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x20 };
        assert_memory_equal(t.buf, head, sizeof(head));
        assert_memory_equal(t.buf + 12, ek_policy, 32);
        static const uint8_t params[] = { 0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00,
                                          0x00, 0x00, 0x00, 0x00, 0x01, 0x00 };
        assert_memory_equal(t.buf + 44, params, sizeof(params));
        for (size_t i = 60; i < 316; i++)
                assert_int_equal(t.buf[i], 0);
}

static void test_srk_template(void **state) {
        (void)state;
        struct tpm_public t;
        assert_int_equal(tpm_template_public(TPM_TEMPLATE_SRK, &t), 0);
        assert_int_equal(t.len, 284);
        static const uint8_t head[] = { 0x01, 0x1a, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x04, 0x72, 0x00, 0x00,
                                        0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00,
                                        0x00, 0x00, 0x00, 0x00, 0x01, 0x00 };
        assert_memory_equal(t.buf, head, sizeof(head));
        for (size_t i = sizeof(head); i < 284; i++)
                assert_int_equal(t.buf[i], 0);
        assert_int_equal(tpm_template_public((enum tpm_template)7, &t), -EINVAL);
        assert_int_equal(tpm_template_public(TPM_TEMPLATE_EK, NULL), -EINVAL);
}

static void test_check_storage_key(void **state) {
        (void)state;
        struct tpm_public srk, ek;
        char why[160];

        assert_int_equal(tpm_template_public(TPM_TEMPLATE_SRK, &srk), 0);
        assert_int_equal(tpm_template_public(TPM_TEMPLATE_EK, &ek), 0);
        assert_int_equal(tpm_public_check_storage_key(srk.buf, srk.len, true, why, sizeof(why)), 0);
        assert_int_equal(tpm_public_check_storage_key(ek_pub, sizeof(ek_pub), false, why, sizeof(why)), 0);
        /* The EK needs a policy: not usable where a password is required. */
        assert_int_equal(tpm_public_check_storage_key(ek.buf, ek.len, true, why, sizeof(why)), -EBADMSG);
        assert_non_null(strstr(why, "userWithAuth"));

        /* tpm2_createprimary -C o default SRK (no noDA, 0x00030072) is accepted. */
        struct tpm_public p = srk;
        p.buf[9] = 0x72;
        p.buf[8] = 0x00;
        assert_int_equal(tpm_public_check_storage_key(p.buf, p.len, true, why, sizeof(why)), 0);

        /* sign set: a signing key, not a storage key. */
        p = srk;
        p.buf[7] |= 0x04; /* TPMA_OBJECT_SIGN_ENCRYPT = 0x00040000 */
        assert_int_equal(tpm_public_check_storage_key(p.buf, p.len, true, why, sizeof(why)), -EBADMSG);
        assert_non_null(strstr(why, "not a restricted decryption"));

        /* restricted clear. */
        p = srk;
        p.buf[7] &= (uint8_t)~0x01;
        assert_int_equal(tpm_public_check_storage_key(p.buf, p.len, true, why, sizeof(why)), -EBADMSG);

        /* RSA-3072 in the keyBits field. */
        p = srk;
        p.buf[20] = 0x0c;
        p.buf[21] = 0x00;
        assert_int_equal(tpm_public_check_storage_key(p.buf, p.len, true, why, sizeof(why)), -EBADMSG);
        assert_string_equal(why, "an RSA-3072 key");

        /* An ECC P-256 storage key, as `tpm2_createprimary -G ecc` makes. */
        uint8_t ecc[2 + 90] = { 0x00, 0x5a, 0x00, 0x23, 0x00, 0x0b, 0x00, 0x03, 0x04, 0x72, 0x00, 0x00,
                                0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x00, 0x03, 0x00, 0x10,
                                0x00, 0x20 };
        ecc[2 + 22 + 34] = 0x00;
        ecc[2 + 22 + 34 + 1] = 0x20;
        assert_int_equal(tpm_public_check_storage_key(ecc, sizeof(ecc), true, why, sizeof(why)), -EBADMSG);
        assert_string_equal(why, "an ECC key");

        /* Malformed: truncated, trailing bytes, size field lies, NULL. */
        assert_int_equal(tpm_public_check_storage_key(srk.buf, srk.len - 1, true, why, sizeof(why)), -EBADMSG);
        assert_string_equal(why, "a malformed public area");
        assert_int_equal(tpm_public_check_storage_key(srk.buf, srk.len + 1, true, why, sizeof(why)), -EBADMSG);
        p = srk;
        p.buf[1] = 0x19;
        assert_int_equal(tpm_public_check_storage_key(p.buf, p.len, true, why, sizeof(why)), -EBADMSG);
        assert_int_equal(tpm_public_check_storage_key(NULL, 0, true, why, sizeof(why)), -EBADMSG);
        for (size_t n = 0; n < srk.len; n++)
                assert_int_equal(tpm_public_check_storage_key(srk.buf, n, true, why, sizeof(why)), -EBADMSG);
}

static void test_rc_base(void **state) {
        (void)state;
        assert_int_equal(tpm_rc_base(0), 0);
        assert_int_equal(tpm_rc_base(0x18b), 0x8b);  /* TPM_RC_HANDLE, handle 1 */
        assert_int_equal(tpm_rc_base(0x1df), 0x9f);  /* TPM_RC_INTEGRITY, parameter 1 */
        assert_int_equal(tpm_rc_base(0x3df), 0x9f);  /* parameter 3 */
        assert_int_equal(tpm_rc_base(0x98e), 0x8e);  /* TPM_RC_AUTH_FAIL, session 1 */
        assert_int_equal(tpm_rc_base(0x921), 0x921); /* TPM_RC_LOCKOUT */
        assert_int_equal(tpm_rc_base(0x902), 0x902); /* TPM_RC_OBJECT_MEMORY */
        assert_int_equal(tpm_rc_base(0xc0921), 0x921); /* forwarded by a resource manager */
        assert_int_equal(tpm_rc_base(0xa000a), 0);   /* TCTI IO error */
        assert_int_equal(tpm_rc_base(0x7000b), 0);   /* ESAPI bad value */
}

static void expect_rc(uint32_t rc, int want, const char *needle) {
        struct tpm_error e;
        memset(&e, 0xaa, sizeof(e));
        assert_int_equal(tpm_error_from_rc(rc, "TPM2_Step(X)", &e), want);
        assert_int_equal(e.rc, rc);
        assert_string_equal(e.step, "TPM2_Step(X)");
        assert_non_null(strstr(e.msg, "TPM2_Step(X)"));
        if (!strstr(e.msg, needle))
                fail_msg("message for 0x%x lacks '%s': %s", rc, needle, e.msg);
        assert_null(strchr(e.msg, '\n'));
}

static void test_error_from_rc(void **state) {
        (void)state;
        expect_rc(0x921, -EPERM, "tpm2_dictionarylockout -c");
        expect_rc(0xc0921, -EPERM, "lockout");
        expect_rc(0x902, -ENOSPC, "tpm2_flushcontext -t");
        expect_rc(0x14b, -ENOSPC, "persistent storage is full");
        expect_rc(0x98e, -EACCES, "password");
        expect_rc(0x9a2, -EACCES, "password");
        expect_rc(0x100, -EIO, "TPM2_Startup");
        expect_rc(0x101, -EIO, "failure mode");
        expect_rc(0x922, -EAGAIN, "busy");
        expect_rc(0xa000a, -EIO, "connection");
        expect_rc(0x18b, -EIO, "0x18b");
        expect_rc(0x70017, -ENOMEM, "memory");
        /* NULL err only returns the errno. */
        assert_int_equal(tpm_error_from_rc(0x921, "x", NULL), -EPERM);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_regid_ek),
                cmocka_unit_test(test_regid_vectors),
                cmocka_unit_test(test_ek_template),
                cmocka_unit_test(test_srk_template),
                cmocka_unit_test(test_check_storage_key),
                cmocka_unit_test(test_rc_base),
                cmocka_unit_test(test_error_from_rc),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
