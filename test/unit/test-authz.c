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

/* aziot-identityd's rules on the identity socket (authz.h rules 5-9): every
 * principal kind on every module route, for its own module and another. */
enum { C_LIST, C_GET_OWN, C_GET_OTHER, C_CREATE, C_UPDATE, C_DELETE, C_DEVICE, C_TOKEN, C_TRUST, _C_MAX };

static const struct config_principal id_table[] = {
        {.uid = 1001, .name = (char *)"edge", .idtype = 0, .allow = CONFIG_OP_ALL},
        {.uid = 1002, .name = (char *)"app", .idtype = CONFIG_IDTYPE_DEVICE, .allow = ROLE_IDENTITY},
        {.uid = 1003, .name = (char *)"mod1", .idtype = CONFIG_IDTYPE_MODULE, .allow = ROLE_IDENTITY},
        {.uid = 1004, .name = (char *)"loc1", .idtype = CONFIG_IDTYPE_LOCAL, .allow = ROLE_IDENTITY},
        {.uid = 1005, .name = (char *)"both", .idtype = CONFIG_IDTYPE_DEVICE | CONFIG_IDTYPE_MODULE,
         .allow = ROLE_IDENTITY},
        {.uid = 1006, .name = (char *)"m6", .idtype = CONFIG_IDTYPE_MODULE, .allow = CONFIG_OP_IDENTITY_TOKEN,
         .allow_explicit = true},
        {.uid = 1007, .name = (char *)"narrow", .idtype = 0, .allow = CONFIG_OP_IDENTITY_GET, .allow_explicit = true},
        {.uid = 1008, .name = (char *)"m8", .idtype = CONFIG_IDTYPE_MODULE, .allow = CONFIG_OP_ALL,
         .allow_explicit = true},
        {.uid = 1009, .name = NULL, .idtype = CONFIG_IDTYPE_MODULE, .allow = ROLE_IDENTITY},
};

static const struct {
        const char *what;
        uid_t uid;
        bool in_group;
        const char *own; /* the module it asks for as "its own" */
        bool want[_C_MAX];
        enum authz_identity identity;
} id_cases[] = {
        {"daemon principal", 1001, false, "edge", {1, 1, 1, 1, 1, 1, 1, 1, 1}, AUTHZ_IDENTITY_DEVICE},
        {"idtype device", 1002, false, "app", {0, 0, 0, 0, 0, 0, 1, 1, 1}, AUTHZ_IDENTITY_DEVICE},
        {"idtype device, in the socket's group", 1002, true, "app", {0, 0, 0, 0, 0, 0, 1, 1, 1},
         AUTHZ_IDENTITY_DEVICE},
        {"idtype module", 1003, false, "mod1", {0, 1, 0, 0, 0, 0, 0, 0, 1}, AUTHZ_IDENTITY_MODULE},
        {"idtype module, in the socket's group", 1003, true, "mod1", {0, 1, 0, 0, 0, 0, 0, 0, 1},
         AUTHZ_IDENTITY_MODULE},
        {"idtype local", 1004, false, "loc1", {0, 1, 0, 0, 0, 0, 0, 0, 1}, AUTHZ_IDENTITY_MODULE},
        {"idtype device+module", 1005, false, "both", {0, 1, 0, 0, 0, 0, 1, 1, 1}, AUTHZ_IDENTITY_DEVICE},
        {"idtype module without identity.get", 1006, false, "m6", {0, 0, 0, 0, 0, 0, 0, 0, 1}, AUTHZ_IDENTITY_NONE},
        {"daemon without identity.modules", 1007, false, "narrow", {0, 0, 0, 0, 0, 0, 1, 0, 1},
         AUTHZ_IDENTITY_DEVICE},
        {"idtype module, allow = [\"*\"]", 1008, false, "m8", {0, 1, 0, 0, 0, 0, 0, 0, 1}, AUTHZ_IDENTITY_MODULE},
        {"idtype module without a name", 1009, false, "", {0, 0, 0, 0, 0, 0, 0, 0, 1}, AUTHZ_IDENTITY_NONE},
        {"unlisted root", 0, false, "mod1", {1, 1, 1, 1, 1, 1, 1, 1, 1}, AUTHZ_IDENTITY_DEVICE},
        {"unlisted, in the socket's group", 4242, true, "mod1", {1, 1, 1, 1, 1, 1, 1, 1, 1}, AUTHZ_IDENTITY_DEVICE},
        {"stranger", 4243, false, "mod1", {0, 0, 0, 0, 0, 0, 0, 0, 1}, AUTHZ_IDENTITY_NONE},
};

static void test_identity_rules(void **state) {
        for (size_t k = 0; k < ELEMENTSOF(id_cases); k++) {
                const char *own = id_cases[k].own;
                const struct {
                        enum api_op op;
                        const char *module;
                } req[_C_MAX] = {
                        [C_LIST] = {API_OP_MODULES_LIST, NULL},       [C_GET_OWN] = {API_OP_MODULES_GET, own},
                        [C_GET_OTHER] = {API_OP_MODULES_GET, "other"}, [C_CREATE] = {API_OP_MODULES_CREATE, own},
                        [C_UPDATE] = {API_OP_MODULES_UPDATE, own},    [C_DELETE] = {API_OP_MODULES_DELETE, own},
                        [C_DEVICE] = {API_OP_IDENTITY_DEVICE, NULL},  [C_TOKEN] = {API_OP_IDENTITY_TOKEN, NULL},
                        [C_TRUST] = {API_OP_TRUST_BUNDLE, NULL},
                };
                for (size_t c = 0; c < _C_MAX; c++) {
                        bool got = authz_op_allowed(id_table, ELEMENTSOF(id_table), id_cases[k].uid,
                                                    id_cases[k].in_group, req[c].op, req[c].module);
                        if (got != id_cases[k].want[c])
                                fprintf(stderr, "%s, %s %s: got %d\n", id_cases[k].what, api_op_to_string(req[c].op),
                                        req[c].module ? req[c].module : "", got);
                        assert_int_equal(got, id_cases[k].want[c]);
                }
                const char *name = NULL;
                enum authz_identity id = authz_caller_identity(id_table, ELEMENTSOF(id_table), id_cases[k].uid,
                                                               id_cases[k].in_group, &name);
                assert_int_equal(id, id_cases[k].identity);
                if (id == AUTHZ_IDENTITY_MODULE)
                        assert_string_equal(name, own); /* its own module, by its name */
                else
                        assert_null(name);
                /* GET /identities/identity: allowed exactly when there is an identity to answer */
                assert_int_equal(authz_op_allowed(id_table, ELEMENTSOF(id_table), id_cases[k].uid,
                                                  id_cases[k].in_group, API_OP_IDENTITY_GET, NULL),
                                 id != AUTHZ_IDENTITY_NONE);
        }
        /* A module principal asking for a module whose name only starts like its own. */
        assert_false(authz_op_allowed(id_table, ELEMENTSOF(id_table), 1003, false, API_OP_MODULES_GET, "mod10"));
        assert_false(authz_op_allowed(id_table, ELEMENTSOF(id_table), 1003, false, API_OP_MODULES_GET, "mod"));
        assert_false(authz_op_allowed(id_table, ELEMENTSOF(id_table), 1003, false, API_OP_MODULES_GET, "MOD1"));
        assert_false(authz_op_allowed(id_table, ELEMENTSOF(id_table), 1003, false, API_OP_MODULES_GET, NULL));
        assert_false(authz_op_allowed(id_table, ELEMENTSOF(id_table), 0, false, _API_OP_MAX, NULL));
        assert_false(authz_op_allowed(id_table, ELEMENTSOF(id_table), 0, false, (enum api_op)-1, NULL));
        /* no principals at all: root and the group only */
        assert_true(authz_op_allowed(NULL, 0, 0, false, API_OP_MODULES_CREATE, "m"));
        assert_false(authz_op_allowed(NULL, 0, 1003, false, API_OP_MODULES_GET, "m"));
        assert_true(authz_op_allowed_by_config(NULL, 0, false, API_OP_MODULES_DELETE, "m"));
        assert_int_equal(authz_caller_identity_by_config(NULL, 1003, false, NULL), AUTHZ_IDENTITY_NONE);
        assert_int_equal(authz_caller_identity_by_config(NULL, 0, false, NULL), AUTHZ_IDENTITY_DEVICE);
}

/* The other ops keep rules 1-4 with their allow bits. */
static void test_identity_other_ops(void **state) {
        const size_t n = ELEMENTSOF(id_table);
        assert_int_equal(authz_op_bit(API_OP_TPM_SIGN), CONFIG_OP_TPM_SIGN);
        assert_int_equal(authz_op_bit(API_OP_MODULES_GET), CONFIG_OP_IDENTITY_MODULES);
        assert_int_equal(authz_op_bit(_API_OP_MAX), 0);
        for (int op = 0; op < _API_OP_MAX; op++)
                assert_int_not_equal(authz_op_bit((enum api_op)op), 0);
        assert_true(authz_op_allowed(id_table, n, 1003, false, API_OP_IDENTITY_PROVISIONING, NULL));
        assert_false(authz_op_allowed(id_table, n, 1003, false, API_OP_IDENTITY_REPROVISION, NULL));
        assert_false(authz_op_allowed(id_table, n, 1003, false, API_OP_TPM_SIGN, NULL));
        assert_true(authz_op_allowed(id_table, n, 1008, false, API_OP_TPM_SIGN, NULL));
        assert_true(authz_op_allowed(id_table, n, 1001, false, API_OP_IDENTITY_REPROVISION, NULL));
        assert_false(authz_op_allowed(id_table, n, 1007, false, API_OP_IDENTITY_REPROVISION, NULL));
        assert_true(authz_op_allowed(id_table, n, 1003, false, API_OP_IDENTITY_REPORT, NULL));
        assert_false(authz_op_allowed(id_table, n, 1006, false, API_OP_IDENTITY_REPORT, NULL));
        /* status: root, the group, or identity.get */
        assert_true(authz_op_allowed(id_table, n, 1006, true, API_OP_STATUS, NULL));
        assert_false(authz_op_allowed(id_table, n, 1006, false, API_OP_STATUS, NULL));
        assert_true(authz_op_allowed(id_table, n, 1003, false, API_OP_STATUS, NULL));
        assert_false(authz_op_allowed(id_table, n, 4243, false, API_OP_STATUS, NULL));
        assert_true(authz_op_allowed(id_table, n, 0, false, API_OP_STATUS, NULL));
}

/* The same through the parser: idtype and name as aziot's config writes them. */
static void test_identity_through_config(void **state) {
        const char *t = "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne00A1B2C3\"\n"
                        "[provisioning.attestation]\nmethod = \"tpm\"\n"
                        "[[principal]]\nuid = 1001\nname = \"aziot-edge\"\n"
                        "[[principal]]\nuid = 1003\nname = \"$edgeAgent\"\nidtype = [\"module\"]\n";
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_parse_string(t, strlen(t), "t.toml", &c, &d), 0);
        assert_true(authz_op_allowed_by_config(c, 1001, false, API_OP_MODULES_CREATE, "$edgeHub"));
        assert_true(authz_op_allowed_by_config(c, 1003, false, API_OP_MODULES_GET, "$edgeAgent"));
        assert_false(authz_op_allowed_by_config(c, 1003, false, API_OP_MODULES_GET, "$edgeHub"));
        assert_false(authz_op_allowed_by_config(c, 1003, false, API_OP_MODULES_UPDATE, "$edgeAgent"));
        assert_false(authz_op_allowed_by_config(c, 1003, false, API_OP_IDENTITY_DEVICE, NULL));
        const char *name = NULL;
        assert_int_equal(authz_caller_identity_by_config(c, 1003, false, &name), AUTHZ_IDENTITY_MODULE);
        assert_string_equal(name, "$edgeAgent");
        assert_int_equal(authz_caller_identity_by_config(c, 1001, false, &name), AUTHZ_IDENTITY_DEVICE);
        assert_int_equal(authz_caller_identity_by_config(c, 4242, false, NULL), AUTHZ_IDENTITY_NONE);
        config_free(c);
        config_diags_free(&d);
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
                cmocka_unit_test(test_identity_rules),
                cmocka_unit_test(test_identity_other_ops),
                cmocka_unit_test(test_identity_through_config),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
