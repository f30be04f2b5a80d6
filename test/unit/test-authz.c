/* Unit tests for lib/authz.c: every principal kind × every operation, root
 * (listed and not), members of the socket's group (listed and not),
 * strangers, multi-bit operations (all bits), malformed operations, and the
 * same rule through a parsed config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authz.h"
#include "config.h"
#include "util.h"

#define ROLE_IDENTITY (CONFIG_OP_IDENTITY_GET | CONFIG_OP_IDENTITY_PROVISIONING | CONFIG_OP_IDENTITY_TOKEN)

static const uint32_t all_ops[] = {
        CONFIG_OP_TPM_KEYS,         CONFIG_OP_TPM_IMPORT,     CONFIG_OP_TPM_SIGN,
        CONFIG_OP_IDENTITY_GET,     CONFIG_OP_IDENTITY_PROVISIONING, CONFIG_OP_IDENTITY_TOKEN,
        CONFIG_OP_IDENTITY_MODULES, CONFIG_OP_REPROVISION,
};

/* The kinds of [[principal]] entry, as the config parser builds them. */
static const struct {
        const char *what;
        struct config_principal p;
        uint32_t allowed; /* the ops this entry may call */
} kinds[] = {
        {"no idtype (daemon role)", {.uid = 1001, .idtype = 0, .allow = CONFIG_OP_ALL}, CONFIG_OP_ALL},
        {"idtype device", {.uid = 1002, .idtype = CONFIG_IDTYPE_DEVICE, .allow = ROLE_IDENTITY}, ROLE_IDENTITY},
        {"idtype module", {.uid = 1003, .idtype = CONFIG_IDTYPE_MODULE, .allow = ROLE_IDENTITY}, ROLE_IDENTITY},
        {"idtype local", {.uid = 1004, .idtype = CONFIG_IDTYPE_LOCAL, .allow = ROLE_IDENTITY}, ROLE_IDENTITY},
        {"explicit allow", {.uid = 1005, .allow = CONFIG_OP_TPM_SIGN | CONFIG_OP_IDENTITY_TOKEN, .allow_explicit = true},
         CONFIG_OP_TPM_SIGN | CONFIG_OP_IDENTITY_TOKEN},
        {"allow = [\"*\"]", {.uid = 1006, .idtype = CONFIG_IDTYPE_DEVICE, .allow = CONFIG_OP_ALL, .allow_explicit = true},
         CONFIG_OP_ALL},
        {"allow = []", {.uid = 1007, .allow = 0, .allow_explicit = true}, 0},
};

static void test_every_kind_every_op(void **state) {
        for (size_t k = 0; k < ELEMENTSOF(kinds); k++)
                for (size_t o = 0; o < ELEMENTSOF(all_ops); o++)
                        for (int in_group = 0; in_group <= 1; in_group++) {
                                bool want = (kinds[k].allowed & all_ops[o]) != 0;
                                bool got = authz_allowed(&kinds[k].p, 1, kinds[k].p.uid, in_group, all_ops[o]);
                                if (got != want)
                                        fprintf(stderr, "%s, op %s, in group %d: got %d\n", kinds[k].what,
                                                config_op_to_string(all_ops[o]), in_group, got);
                                /* a listed uid is decided by its entry, group or not */
                                assert_int_equal(got, want);
                        }
}

static void test_unlisted(void **state) {
        const struct config_principal table[] = {kinds[1].p, kinds[4].p};
        for (size_t o = 0; o < ELEMENTSOF(all_ops); o++) {
                /* root without an entry: everything (aziot's LocalRoot) */
                assert_true(authz_allowed(table, ELEMENTSOF(table), 0, false, all_ops[o]));
                /* a member of the socket's group without an entry: everything */
                assert_true(authz_allowed(table, ELEMENTSOF(table), 4242, true, all_ops[o]));
                /* a stranger: nothing */
                assert_false(authz_allowed(table, ELEMENTSOF(table), 4242, false, all_ops[o]));
                /* no principals at all (no config) changes none of that */
                assert_true(authz_allowed(NULL, 0, 0, false, all_ops[o]));
                assert_true(authz_allowed(NULL, 0, 4242, true, all_ops[o]));
                assert_false(authz_allowed(NULL, 0, 4242, false, all_ops[o]));
                assert_true(authz_allowed_by_config(NULL, 0, false, all_ops[o]));
                assert_false(authz_allowed_by_config(NULL, 4242, false, all_ops[o]));
        }
}

static void test_listed_root_and_group_member_are_narrowed(void **state) {
        const struct config_principal root = {.uid = 0, .allow = CONFIG_OP_IDENTITY_GET, .allow_explicit = true};
        assert_true(authz_allowed(&root, 1, 0, false, CONFIG_OP_IDENTITY_GET));
        assert_false(authz_allowed(&root, 1, 0, false, CONFIG_OP_TPM_SIGN));
        assert_false(authz_allowed(&root, 1, 0, true, CONFIG_OP_REPROVISION));
        const struct config_principal member = {.uid = 1500, .allow = CONFIG_OP_TPM_KEYS, .allow_explicit = true};
        assert_true(authz_allowed(&member, 1, 1500, true, CONFIG_OP_TPM_KEYS));
        assert_false(authz_allowed(&member, 1, 1500, true, CONFIG_OP_TPM_IMPORT));
        /* the entry of another uid does not narrow this one */
        assert_true(authz_allowed(&member, 1, 1501, true, CONFIG_OP_TPM_IMPORT));
        assert_true(authz_allowed(&root, 1, 1501, true, CONFIG_OP_TPM_IMPORT));
}

static void test_multi_bit_needs_all_bits(void **state) {
        const struct config_principal p = kinds[4].p; /* tpm.sign + identity.token */
        assert_true(authz_allowed(&p, 1, p.uid, false, CONFIG_OP_TPM_SIGN | CONFIG_OP_IDENTITY_TOKEN));
        assert_false(authz_allowed(&p, 1, p.uid, false, CONFIG_OP_TPM_SIGN | CONFIG_OP_TPM_IMPORT));
        assert_false(authz_allowed(&p, 1, p.uid, true, CONFIG_OP_ALL));
        assert_true(authz_allowed(&kinds[0].p, 1, kinds[0].p.uid, false, CONFIG_OP_ALL));
        /* unlisted root and group members have every bit */
        assert_true(authz_allowed(&p, 1, 0, false, CONFIG_OP_ALL));
        assert_true(authz_allowed(&p, 1, 77, true, CONFIG_OP_TPM_SIGN | CONFIG_OP_TPM_IMPORT));
        assert_false(authz_allowed(&p, 1, 77, false, CONFIG_OP_TPM_SIGN | CONFIG_OP_TPM_IMPORT));
}

static void test_malformed_op_is_denied(void **state) {
        const struct config_principal p = kinds[0].p;
        const uint32_t bad[] = {0, (uint32_t)CONFIG_OP_ALL + 1, 1u << 31, CONFIG_OP_TPM_SIGN | (1u << 20)};
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_false(authz_allowed(&p, 1, p.uid, true, bad[i]));
                assert_false(authz_allowed(&p, 1, 0, true, bad[i]));
                assert_false(authz_allowed(NULL, 0, 0, true, bad[i]));
        }
}

/* The rule applied to what the parser builds from text (role defaults included). */
static void test_through_config(void **state) {
        const char *t = "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne00A1B2C3\"\n"
                        "[provisioning.attestation]\nmethod = \"tpm\"\n"
                        "[[principal]]\nuid = 1001\nname = \"edge\"\n"
                        "[[principal]]\nuid = 1002\nname = \"app\"\nidtype = [\"device\", \"local\"]\n"
                        "[[principal]]\nuid = 1003\nname = \"signer\"\nallow = [\"tpm.sign\", \"identity.token\"]\n"
                        "[[principal]]\nuid = 0\nname = \"root\"\nallow = [\"tpm.keys\"]\n";
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_parse_string(t, strlen(t), "t.toml", &c, &d), 0);
        assert_true(authz_allowed_by_config(c, 1001, false, CONFIG_OP_REPROVISION));
        assert_true(authz_allowed_by_config(c, 1002, false, CONFIG_OP_IDENTITY_GET));
        assert_true(authz_allowed_by_config(c, 1002, false, CONFIG_OP_IDENTITY_TOKEN));
        assert_false(authz_allowed_by_config(c, 1002, true, CONFIG_OP_REPROVISION));
        assert_false(authz_allowed_by_config(c, 1002, false, CONFIG_OP_TPM_SIGN));
        assert_true(authz_allowed_by_config(c, 1003, false, CONFIG_OP_TPM_SIGN));
        assert_false(authz_allowed_by_config(c, 1003, false, CONFIG_OP_TPM_IMPORT));
        assert_true(authz_allowed_by_config(c, 0, false, CONFIG_OP_TPM_KEYS));
        assert_false(authz_allowed_by_config(c, 0, false, CONFIG_OP_TPM_SIGN)); /* listed root is narrowed */
        assert_false(authz_allowed_by_config(c, 4242, false, CONFIG_OP_IDENTITY_GET));
        assert_true(authz_allowed_by_config(c, 4242, true, CONFIG_OP_IDENTITY_GET));
        config_free(c);
        config_diags_free(&d);
}

static void test_any_allowed(void **state) {
        /* the query the server asks at accept: a stranger has no rights at all */
        const struct config_principal table[] = {
                {.uid = 1500, .allow = CONFIG_OP_TPM_KEYS, .allow_explicit = true},
                {.uid = 1600, .allow = 0, .allow_explicit = true},
                {.uid = 0, .allow = 0, .allow_explicit = true},
        };
        assert_true(authz_any_allowed(table, ELEMENTSOF(table), 1500, false));
        assert_false(authz_any_allowed(table, ELEMENTSOF(table), 1600, false)); /* an empty allow set */
        assert_false(authz_any_allowed(table, ELEMENTSOF(table), 1600, true));  /* the entry wins over the group */
        assert_false(authz_any_allowed(table, ELEMENTSOF(table), 0, false));    /* listed root narrowed to nothing */
        assert_false(authz_any_allowed(table, ELEMENTSOF(table), 1700, false)); /* stranger */
        assert_true(authz_any_allowed(table, ELEMENTSOF(table), 1700, true));   /* socket group member */
        assert_true(authz_any_allowed(NULL, 0, 0, false));                      /* unlisted root */
        assert_false(authz_any_allowed(NULL, 0, 1700, false));
        assert_true(authz_any_allowed_by_config(NULL, 0, false));
        assert_false(authz_any_allowed_by_config(NULL, 1700, false));
        /* it agrees with authz_allowed(): any rights exactly when some single op is allowed */
        for (uid_t uid = 0; uid < 1800; uid += 100)
                for (int g = 0; g < 2; g++) {
                        bool some = false;
                        for (uint32_t bit = 1; bit & (uint32_t)CONFIG_OP_ALL; bit <<= 1)
                                some |= authz_allowed(table, ELEMENTSOF(table), uid, g, bit);
                        assert_int_equal(some, authz_any_allowed(table, ELEMENTSOF(table), uid, g));
                }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_kind_every_op),
                cmocka_unit_test(test_unlisted),
                cmocka_unit_test(test_listed_root_and_group_member_are_narrowed),
                cmocka_unit_test(test_multi_bit_needs_all_bits),
                cmocka_unit_test(test_malformed_op_is_denied),
                cmocka_unit_test(test_through_config),
                cmocka_unit_test(test_any_allowed),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
