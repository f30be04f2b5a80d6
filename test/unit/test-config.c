/* Unit tests for lib/config.c: every key's valid and invalid values, the
 * seed's DPS-TPM block, the helpful errors for its unquoted/misplaced
 * auto_reprovisioning_mode, all-errors-in-one-pass, drop-ins, unknown-key
 * suggestions, Microsoft's template keys, serialisation, diff, principals. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "config-diff.h"
#include "config-write.h"
#include "util.h"

#define DATA TEST_DATA_DIR "/data/config/"

/* A valid DPS-TPM provisioning block: 5 lines. */
#define PROV "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne00A1B2C3\"\n[provisioning.attestation]\nmethod = \"tpm\"\n"

static int parse(const char *text, struct tpmid_config **c, struct config_diags *d) {
        return config_parse_string(text, strlen(text), "test.toml", c, d);
}

static const struct config_diag *find_diag(const struct config_diags *d, enum config_severity sev,
                                           const char *needle) {
        for (size_t i = 0; i < d->n; i++)
                if (d->items[i].severity == sev && strstr(d->items[i].message, needle))
                        return &d->items[i];
        return NULL;
}

static void dump(const struct config_diags *d) {
        for (size_t i = 0; i < d->n; i++) {
                char *s = config_format_diag(&d->items[i]);
                fprintf(stderr, "  %s\n", s);
                free(s);
        }
}

/* Parse text; expect exactly one error, at line, whose message has needle. */
static void expect_one_error(const char *text, unsigned line, const char *needle) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        int r = parse(text, &c, &d);
        if (r != -EINVAL || d.n_errors != 1 || !find_diag(&d, CONFIG_SEVERITY_ERROR, needle)) {
                fprintf(stderr, "text:\n%s\nexpected one error with '%s' at line %u, got r=%d:\n", text, needle,
                        line, r);
                dump(&d);
        }
        assert_int_equal(r, -EINVAL);
        assert_null(c);
        assert_int_equal(d.n_errors, 1);
        const struct config_diag *g = find_diag(&d, CONFIG_SEVERITY_ERROR, needle);
        assert_non_null(g);
        assert_int_equal(g->line, line);
        assert_string_equal(g->file, "test.toml");
        config_diags_free(&d);
}

static struct tpmid_config *expect_ok(const char *text) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        int r = parse(text, &c, &d);
        if (r != 0) {
                fprintf(stderr, "text:\n%s\nexpected OK, got r=%d:\n", text, r);
                dump(&d);
        }
        assert_int_equal(r, 0);
        assert_non_null(c);
        assert_int_equal(d.n_errors, 0);
        config_diags_free(&d);
        return c;
}

/* ---- the seed ------------------------------------------------------------ */

static void test_seed_fixed(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_load(DATA "seed-fixed.toml", &c, &d), 0);
        assert_int_equal(d.n, 0);
        assert_int_equal(c->auto_reprovisioning_mode, PROV_MODE_ALWAYS_ON_STARTUP);
        assert_int_equal(c->provisioning.source, CONFIG_SOURCE_DPS);
        /* the seed writes it without the trailing slash; the model always has one */
        assert_string_equal(c->provisioning.global_endpoint, "https://global.azure-devices-provisioning.net/");
        assert_string_equal(c->provisioning.id_scope, "0ne00A1B2C3");
        assert_int_equal(c->provisioning.method, CONFIG_ATTESTATION_TPM);
        assert_string_equal(c->provisioning.registration_id,
                            "4f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b");
        assert_null(c->provisioning.payload_path);
        /* defaults */
        assert_null(c->hostname);
        assert_int_equal(c->cloud_timeout_sec, 70);
        assert_int_equal(c->cloud_retries, 1);
        assert_string_equal(c->tpm.tcti, "device:/dev/tpmrm0");
        assert_int_equal(c->tpm.auth_key_index, 0x100);
        assert_string_equal(c->tpm.endorsement_auth, "");
        assert_string_equal(c->tpm.owner_auth, "");
        assert_string_equal(c->endpoints.tpmd_socket, "/run/aziot/tpmd.sock");
        assert_string_equal(c->endpoints.identityd_socket, "/run/aziot/identityd.sock");
        assert_string_equal(c->state_dir, "/var/lib/tpmidd");
        assert_int_equal(c->log_level, LOG_INFO);
        assert_null(c->cloud_ca_bundle);
        assert_int_equal(c->limits.max_connections, CONFIG_DEFAULT_MAX_CONNECTIONS);
        assert_int_equal(c->limits.max_connections_per_uid, CONFIG_DEFAULT_MAX_CONNECTIONS_PER_UID);
        assert_int_equal(c->limits.max_header_bytes, CONFIG_DEFAULT_MAX_HEADER_BYTES);
        assert_int_equal(c->limits.max_body_bytes, CONFIG_DEFAULT_MAX_BODY_BYTES);
        assert_int_equal(c->limits.idle_timeout_sec, CONFIG_DEFAULT_IDLE_TIMEOUT_SEC);
        assert_int_equal(c->limits.request_timeout_sec, CONFIG_DEFAULT_REQUEST_TIMEOUT_SEC);
        assert_int_equal(c->limits.max_queued_tpm_jobs, CONFIG_DEFAULT_MAX_QUEUED_TPM_JOBS);
        assert_int_equal(c->n_principals, 0);
        config_free(c);
        config_diags_free(&d);
}

static void test_seed_verbatim(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_load(DATA "seed-verbatim.toml", &c, &d), -EINVAL);
        assert_null(c);
        assert_int_equal(d.n_errors, 3);
        /* the unquoted, misplaced mode: both fixes, at its line */
        const struct config_diag *g = find_diag(&d, CONFIG_SEVERITY_ERROR, "auto_reprovisioning_mode = \"Dynamic\"");
        assert_non_null(g);
        assert_int_equal(g->line, 14);
        assert_int_equal(g->col, 28);
        assert_non_null(strstr(g->message, "above the first [table] header (line 2)"));
        assert_non_null(strstr(g->message, "[provisioning.attestation]"));
        assert_non_null(strstr(g->file, "seed-verbatim.toml"));
        /* the template placeholders */
        g = find_diag(&d, CONFIG_SEVERITY_ERROR, "DPS_ID_SCOPE_HERE");
        assert_non_null(g);
        assert_int_equal(g->line, 5);
        g = find_diag(&d, CONFIG_SEVERITY_ERROR, "REGISTRATION_ID_HERE");
        assert_non_null(g);
        assert_int_equal(g->line, 12);
        /* sorted by line */
        assert_true(d.items[0].line <= d.items[1].line && d.items[1].line <= d.items[2].line);
        char *s = config_format_diag(&d.items[2]);
        assert_non_null(strstr(s, "seed-verbatim.toml:14:28: error: "));
        free(s);
        config_diags_free(&d);
}

static void test_mode_unquoted_at_top(void **state) {
        /* right place, missing quotes, wrong case: the fix is spelled out, no "move it" */
        const char *t = "auto_reprovisioning_mode = onerroronly\n" PROV;
        expect_one_error(t, 1, "write auto_reprovisioning_mode = \"OnErrorOnly\"");
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(parse(t, &c, &d), -EINVAL);
        assert_null(strstr(d.items[0].message, "move"));
        config_diags_free(&d);
}

static void test_mode_misplaced(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_load(DATA "seed-misplaced.toml", &c, &d), -EINVAL);
        assert_int_equal(d.n_errors, 1);
        const struct config_diag *g = &d.items[0];
        assert_int_equal(g->line, 11);
        assert_string_equal(g->key, "provisioning.attestation.auto_reprovisioning_mode");
        assert_non_null(strstr(g->message, "move it above the first [table] header (line 2)"));
        config_diags_free(&d);

        /* in any table, e.g. [tpm] */
        expect_one_error(PROV "[tpm]\nlog_level = \"debug\"\n", 7, "move it above the first [table] header");
}

static void test_mode_values(void **state) {
        static const struct {
                const char *v;
                enum prov_mode m;
        } ok[] = {
                {"Dynamic", PROV_MODE_DYNAMIC},
                {"AlwaysOnStartup", PROV_MODE_ALWAYS_ON_STARTUP},
                {"OnErrorOnly", PROV_MODE_ON_ERROR_ONLY},
        };
        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                char t[512];
                snprintf(t, sizeof t, "auto_reprovisioning_mode = \"%s\"\n" PROV, ok[i].v);
                struct tpmid_config *c = expect_ok(t);
                assert_int_equal(c->auto_reprovisioning_mode, ok[i].m);
                config_free(c);
        }
        expect_one_error("auto_reprovisioning_mode = \"AlwaysOnStart\"\n" PROV, 1, "\"AlwaysOnStartup\"");
        expect_one_error("auto_reprovisioning_mode = \"Never\"\n" PROV, 1, "is not a mode");
        expect_one_error("auto_reprovisioning_mode = 1\n" PROV, 1, "must be a string");
}

/* ---- all errors in one pass ------------------------------------------- */

static void test_ten_mistakes(void **state) {
        static const unsigned lines[] = {2, 3, 4, 5, 6, 10, 12, 15, 18, 21};
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_load(DATA "ten-mistakes.toml", &c, &d), -EINVAL);
        if (d.n_errors != 10)
                dump(&d);
        assert_int_equal(d.n_errors, 10);
        assert_int_equal(d.n_warnings, 1);
        size_t k = 0;
        for (size_t i = 0; i < d.n; i++) {
                if (d.items[i].severity != CONFIG_SEVERITY_ERROR)
                        continue;
                assert_true(k < ELEMENTSOF(lines));
                assert_int_equal(d.items[i].line, lines[k]);
                assert_non_null(strstr(d.items[i].message, "for example") ? d.items[i].message
                                : strstr(d.items[i].message, "write") ? d.items[i].message : NULL);
                k++;
        }
        assert_int_equal(k, 10);
        const struct config_diag *w = find_diag(&d, CONFIG_SEVERITY_WARNING, "did you mean tpm.tcti?");
        assert_non_null(w);
        assert_int_equal(w->line, 19);
        config_diags_free(&d);
}

static void test_syntax_errors_all_reported(void **state) {
        /* three syntax errors and a semantic one, in one pass; the broken
         * header does not drag the following keys into [provisioning] */
        const char *t = "log_level = debug\n"                  /* 1 */
                        "[provisioning]\n"                     /* 2 */
                        "source = \"dps\"\n"                   /* 3 */
                        "id_scope = \"0ne00A1B2C3\n"           /* 4: unterminated */
                        "[provisioning.attestation\n"          /* 5: broken header */
                        "method = \"tpm\"\n"                   /* 6 */
                        "[tpm]\n"                              /* 7 */
                        "auth_key_index = 0x8000000\n"         /* 8: out of range */
                        "tcti = \n";                           /* 9: no value */
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(parse(t, &c, &d), -EINVAL);
        if (d.n_errors != 5)
                dump(&d);
        assert_int_equal(d.n_errors, 5);
        static const unsigned lines[] = {1, 4, 5, 8, 9};
        for (size_t i = 0; i < 5; i++)
                assert_int_equal(d.items[i].line, lines[i]);
        assert_non_null(strstr(d.items[0].message, "log_level = \"debug\""));
        assert_non_null(strstr(d.items[3].message, "0x00_00_00..=0x7F_FF_FF"));
        /* no "id_scope is required" after its line was a syntax error */
        assert_null(find_diag(&d, CONFIG_SEVERITY_ERROR, "is required"));
        config_diags_free(&d);
}

static void test_syntax_error_limit(void **state) {
        /* more bad lines than CONFIG_MAX_SYNTAX_ERRORS (50): reporting stops, with a note */
        size_t n = 60;
        char *t = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&t, &len);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "k%zu = bare%zu\n", i, i);
        fclose(f);
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_parse_string(t, len, "many.toml", &c, &d), -EINVAL);
        assert_int_equal(d.n_errors, 51);
        assert_non_null(find_diag(&d, CONFIG_SEVERITY_ERROR, "further syntax errors"));
        free(t);
        config_diags_free(&d);
}

static void test_diag_limit(void **state) {
        /* more findings than CONFIG_MAX_DIAGS: counted, not stored */
        char *t = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&t, &len);
        for (size_t i = 0; i < CONFIG_MAX_DIAGS + 100; i++)
                fprintf(f, "unknown_%zu = 1\n", i);
        fputs(PROV, f);
        fclose(f);
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_parse_string(t, len, "x.toml", &c, &d), 0);
        assert_int_equal(d.n, CONFIG_MAX_DIAGS);
        assert_int_equal(d.n_warnings, CONFIG_MAX_DIAGS + 100);
        config_free(c);
        free(t);
        config_diags_free(&d);
}

/* ---- each key ------------------------------------------------------------ */

static void test_top_level_keys(void **state) {
        struct tpmid_config *c = expect_ok("hostname = \"dev-01.example\"\ncloud_timeout_sec = 10\ncloud_retries = 0\n"
                                           "state_dir = \"/srv/tpmidd\"\nlog_level = \"debug\"\n"
                                           "cloud_ca_bundle = \"/etc/ssl/certs/ca-certificates.crt\"\n" PROV);
        assert_string_equal(c->hostname, "dev-01.example");
        assert_int_equal(c->cloud_timeout_sec, 10);
        assert_int_equal(c->cloud_retries, 0);
        assert_string_equal(c->state_dir, "/srv/tpmidd");
        assert_int_equal(c->log_level, LOG_DEBUG);
        assert_string_equal(c->cloud_ca_bundle, "/etc/ssl/certs/ca-certificates.crt");
        config_free(c);
        /* lib/log.h's four canonical names, exactly; its AZIOT_LOG aliases are not config values */
        static const struct {
                const char *name;
                int level;
        } levels[] = {
                {"error", LOG_ERR}, {"warn", LOG_WARNING}, {"info", LOG_INFO}, {"debug", LOG_DEBUG},
        };
        for (size_t l = 0; l < ELEMENTSOF(levels); l++) {
                char t[256];
                snprintf(t, sizeof t, "log_level = \"%s\"\n" PROV, levels[l].name);
                c = expect_ok(t);
                assert_int_equal(c->log_level, levels[l].level);
                assert_string_equal(log_level_to_string(c->log_level), levels[l].name);
                config_free(c);
        }
        expect_one_error("log_level = \"Debug\"\n" PROV, 1, "is not a level");
        expect_one_error("log_level = \"7\"\n" PROV, 1, "is not a level");
        expect_one_error("log_level = \"loud\"\n" PROV, 1, "is not a level");

        expect_one_error("hostname = \"\"\n" PROV, 1, "not a valid host name");
        expect_one_error("hostname = 5\n" PROV, 1, "must be a string");
        expect_one_error("cloud_timeout_sec = 0\n" PROV, 1, "out of range 1..3600");
        expect_one_error("cloud_timeout_sec = 3601\n" PROV, 1, "out of range");
        expect_one_error("cloud_timeout_sec = \"70\"\n" PROV, 1, "unquoted integer");
        expect_one_error("cloud_timeout_sec = 7.5\n" PROV, 1, "must be an integer");
        expect_one_error("cloud_retries = -1\n" PROV, 1, "out of range 0..100");
        expect_one_error("cloud_retries = 101\n" PROV, 1, "out of range");
        expect_one_error("state_dir = \"relative\"\n" PROV, 1, "absolute path");
        expect_one_error("state_dir = true\n" PROV, 1, "must be a string");
        expect_one_error("log_level = \"trace\"\n" PROV, 1, "not a level");
        expect_one_error("cloud_ca_bundle = \"ca.pem\"\n" PROV, 1, "absolute path");
        expect_one_error("hostname = \"a\\u0000b\"\n" PROV, 1, "NUL");
}

static void test_provisioning_keys(void **state) {
        struct tpmid_config *c = expect_ok("[provisioning]\nsource = \"dps\"\n"
                                           "global_endpoint = \"https://dps.example.net/base\"\n"
                                           "id_scope = \"0ne00A1B2C3\"\n"
                                           "payload = { uri = \"file:///etc/aziot/my%20payload.json\" }\n"
                                           "[provisioning.attestation]\nmethod = \"tpm\"\n");
        assert_string_equal(c->provisioning.global_endpoint, "https://dps.example.net/base/");
        assert_string_equal(c->provisioning.payload_path, "/etc/aziot/my payload.json");
        assert_string_equal(c->payload_pos.file, "test.toml");
        assert_int_equal(c->payload_pos.line, 5);
        assert_null(c->provisioning.registration_id); /* derived from the EK by the daemon */
        config_free(c);

        c = expect_ok("[provisioning]\nsource = \"none\"\n");
        assert_int_equal(c->provisioning.source, CONFIG_SOURCE_NONE);
        config_free(c);

        /* file://localhost/ is the same as file:/// */
        c = expect_ok("[provisioning]\nsource = \"dps\"\nid_scope = \"0ne1\"\n"
                      "payload = { uri = \"file://localhost/p.json\" }\n[provisioning.attestation]\nmethod = \"tpm\"\n");
        assert_string_equal(c->provisioning.payload_path, "/p.json");
        config_free(c);

#define P1 "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne00A1B2C3\"\n"
#define ATT "[provisioning.attestation]\nmethod = \"tpm\"\n"
        expect_one_error("[provisioning]\nsource = \"manual\"\n", 2, "not supported by tpmidd, use \"dps\" or \"none\"");
        expect_one_error("[provisioning]\nsource = \"est\"\n", 2, "not supported by tpmidd");
        expect_one_error("[provisioning]\nsource = 1\n", 2, "must be a string");
        expect_one_error("[provisioning]\nid_scope = \"0ne1\"\n", 1, "provisioning.source is missing");
        /* no [provisioning]: the TPM broker alone, with a warning (aziot-tpmd's empty file) */
        {
                struct config_diags d0 = {0};
                assert_int_equal(parse("log_level = \"info\"\n", &c, &d0), 0);
                assert_int_equal(c->provisioning.source, CONFIG_SOURCE_NONE);
                assert_int_equal(d0.n_warnings, 1);
                assert_non_null(find_diag(&d0, CONFIG_SEVERITY_WARNING, "[provisioning] is missing"));
                config_free(c);
                config_diags_free(&d0);
        }
        expect_one_error(P1 "global_endpoint = \"http://global.azure-devices-provisioning.net/\"\n" ATT, 4,
                         "must use https");
        expect_one_error(P1 "global_endpoint = \"ftp://x\"\n" ATT, 4, "not an https URL");
        expect_one_error(P1 "global_endpoint = \"https://\"\n" ATT, 4, "not a valid https URL");
        expect_one_error(P1 "global_endpoint = \"https://a b/\"\n" ATT, 4, "not a valid https URL");
        expect_one_error(P1 "global_endpoint = \"https://x/?q=1\"\n" ATT, 4, "not a valid https URL");
        expect_one_error("[provisioning]\nsource = \"dps\"\n" ATT, 1, "id_scope is required");
        expect_one_error("[provisioning]\nsource = \"dps\"\nid_scope = \"0ne-00\"\n" ATT, 3, "not a DPS ID scope");
        expect_one_error("[provisioning]\nsource = \"dps\"\nid_scope = \"\"\n" ATT, 3, "not a DPS ID scope");
        expect_one_error(P1, 1, "[provisioning.attestation] is required");
        expect_one_error(P1 "[provisioning.attestation]\nregistration_id = \"x\"\n", 4, "method is missing");
        expect_one_error(P1 "[provisioning.attestation]\nmethod = \"x509\"\n", 5, "not supported by tpmidd");
        expect_one_error(P1 "[provisioning.attestation]\nmethod = \"symmetric_key\"\n", 5, "TPM only");
        expect_one_error(P1 ATT "registration_id = \"bad id\"\n", 6, "not a valid DPS registration ID");
        expect_one_error(P1 ATT "registration_id = \"ends.\"\n", 6, "not a valid DPS registration ID");
        expect_one_error(P1 ATT "registration_id = \"REGISTRATION_ID_HERE\"\n", 6, "template placeholder");
        c = expect_ok(P1 ATT "registration_id = \"my-device.01:a_b-\"\n");
        assert_string_equal(c->provisioning.registration_id, "my-device.01:a_b-");
        config_free(c);

        /* payload */
        expect_one_error(P1 "payload = \"file:///p.json\"\n" ATT, 4, "inline table");
        expect_one_error(P1 "payload = { }\n" ATT, 4, "needs a uri");
        expect_one_error(P1 "payload = { uri = \"/etc/p.json\" }\n" ATT, 4, "payload = { uri = \"file:///etc/p.json\" }");
        expect_one_error(P1 "payload = { uri = \"https://x/p.json\" }\n" ATT, 4, "only file: URIs");
        expect_one_error(P1 "payload = { uri = \"PATH_TO_JSON_FILE\" }\n" ATT, 4, "not a URI");
        expect_one_error(P1 "payload = { uri = \"file://host/p.json\" }\n" ATT, 4, "three slashes");
        expect_one_error(P1 "payload = { uri = \"file:///a%00b\" }\n" ATT, 4, "%-escape");
        expect_one_error(P1 "payload = { uri = \"file:///a%zz\" }\n" ATT, 4, "%-escape");
        expect_one_error(P1 "payload = { uri = \"file:///dir/\" }\n" ATT, 4, "must name a file");

        /* nested mode is not for DPS */
        expect_one_error("local_gateway_hostname = \"parent\"\n" P1 ATT, 1, "nested mode");
        c = expect_ok("parent_hostname = \"parent\"\n[provisioning]\nsource = \"none\"\n");
        config_free(c);

        /* identityd's own name for id_scope: accepted, with a warning */
        struct config_diags d = {0};
        assert_int_equal(parse("[provisioning]\nsource = \"dps\"\nscope_id = \"0ne1\"\n" ATT, &c, &d), 0);
        assert_string_equal(c->provisioning.id_scope, "0ne1");
        assert_non_null(find_diag(&d, CONFIG_SEVERITY_WARNING, "id_scope"));
        config_free(c);
        config_diags_free(&d);

        /* source = "none" ignores DPS keys with a warning */
        assert_int_equal(parse("[provisioning]\nsource = \"none\"\nid_scope = \"0ne1\"\n", &c, &d), 0);
        assert_non_null(find_diag(&d, CONFIG_SEVERITY_WARNING, "ignored because source"));
        config_free(c);
        config_diags_free(&d);
}

static void test_tpm_keys(void **state) {
        struct tpmid_config *c = expect_ok(PROV "[tpm]\ntcti = \"swtpm:port=2321\"\nauth_key_index = 0x7F_FF_FF\n"
                                                "[tpm.hierarchy_authorization]\nendorsement = \"hello\"\nowner = \"world\"\n");
        assert_string_equal(c->tpm.tcti, "swtpm:port=2321");
        assert_int_equal(c->tpm.auth_key_index, 0x7FFFFF);
        assert_string_equal(c->tpm.endorsement_auth, "hello");
        assert_string_equal(c->tpm.owner_auth, "world");
        config_free(c);
        c = expect_ok(PROV "[tpm]\ntcti = \"\"\nauth_key_index = 0\n");
        assert_string_equal(c->tpm.tcti, "");
        assert_int_equal(c->tpm.auth_key_index, 0);
        config_free(c);

        expect_one_error(PROV "[tpm]\nauth_key_index = \"0x00_01_00\"\n", 7,
                         "must be an unquoted integer, not the string \"0x00_01_00\": remove the quotes, for example: "
                         "auth_key_index = 0x00_01_00");
        expect_one_error(PROV "[tpm]\nauth_key_index = 0x80_00_00\n", 7, "integer in range 0x00_00_00..=0x7F_FF_FF");
        expect_one_error(PROV "[tpm]\nauth_key_index = -1\n", 7, "0x00_00_00..=0x7F_FF_FF");
        expect_one_error(PROV "[tpm]\nauth_key_index = \"abc\"\n", 7, "unquoted integer");
        expect_one_error(PROV "[tpm]\ntcti = 1\n", 7, "must be a string");
        expect_one_error(PROV "[tpm]\ntcti = \"device:\\n\"\n", 7, "control characters");
        expect_one_error(PROV "[tpm.hierarchy_authorization]\nowner = 1\n", 7, "must be a string");
        expect_one_error(PROV "[tpm]\nhierarchy_authorization = 1\n", 7, "must be a table");
}

static void test_max_requests_mapping(void **state) {
        struct tpmid_config *c = expect_ok(PROV "[tpm]\nmax_requests = 10\n");
        assert_int_equal(c->limits.max_connections_per_uid, 10);
        config_free(c);
        c = expect_ok(PROV "[aziot_max_requests]\ntpmd = 7\n");
        assert_int_equal(c->limits.max_connections_per_uid, 7);
        config_free(c);
        /* [limits] wins, with a note */
        struct config_diags d = {0};
        assert_int_equal(parse(PROV "[tpm]\nmax_requests = 10\n[limits]\nmax_connections_per_uid = 3\n", &c, &d), 0);
        assert_int_equal(c->limits.max_connections_per_uid, 3);
        assert_non_null(find_diag(&d, CONFIG_SEVERITY_INFO, "max_requests is ignored"));
        config_free(c);
        config_diags_free(&d);
        expect_one_error(PROV "[tpm]\nmax_requests = 0\n", 7, "out of range 1..4096");
        expect_one_error(PROV "[tpm]\nmax_requests = 100\n[limits]\nmax_connections = 50\n", 7,
                         "larger than limits.max_connections");
}

static void test_endpoint_keys(void **state) {
        struct tpmid_config *c = expect_ok(PROV "[endpoints]\naziot_tpmd = \"unix:///tmp/t.sock\"\n"
                                                "aziot_identityd = \"unix:///tmp/i.sock\"\n");
        assert_string_equal(c->endpoints.tpmd_socket, "/tmp/t.sock");
        assert_string_equal(c->endpoints.identityd_socket, "/tmp/i.sock");
        assert_string_equal(c->endpoints.keyd_socket, CONFIG_DEFAULT_KEYD_SOCKET);
        assert_string_equal(CONFIG_DEFAULT_KEYD_SOCKET, "/run/aziot/keyd.sock");
        assert_false(c->prefer_module_identity_cache);
        config_free(c);
        /* aziot-keyd's socket (module keys) and aziot's module cache preference */
        c = expect_ok("prefer_module_identity_cache = true\n" PROV "[endpoints]\naziot_keyd = \"unix:///tmp/k.sock\"\n");
        assert_string_equal(c->endpoints.keyd_socket, "/tmp/k.sock");
        assert_true(c->prefer_module_identity_cache);
        config_free(c);
        expect_one_error(PROV "[endpoints]\naziot_keyd = \"http://keyd\"\n", 7, "only unix://");
        expect_one_error("prefer_module_identity_cache = \"yes\"\n" PROV, 1, "must be true or false");
        expect_one_error(PROV "[endpoints]\naziot_tpmd = \"http://localhost:8080\"\n", 7, "only unix://");
        expect_one_error(PROV "[endpoints]\naziot_identityd = \"unix://relative.sock\"\n", 7, "absolute socket path");
        char t[1024];
        char longpath[200];
        memset(longpath, 'a', sizeof longpath - 1);
        longpath[sizeof longpath - 1] = 0;
        snprintf(t, sizeof t, PROV "[endpoints]\naziot_tpmd = \"unix:///%s\"\n", longpath);
        expect_one_error(t, 7, "longer than 107 bytes");
}

static void test_limits_keys(void **state) {
        static const struct {
                const char *key;
                long lo, hi;
        } lim[] = {
                {"max_connections", 1, 4096},   {"max_connections_per_uid", 1, 4096},
                {"max_header_bytes", 1024, 65536}, {"max_body_bytes", 1024, 1048576},
                {"idle_timeout_sec", 1, 3600},  {"request_timeout_sec", 1, 300},
                {"max_queued_tpm_jobs", 1, 65536},
        };
        for (size_t i = 0; i < ELEMENTSOF(lim); i++) {
                char t[512];
                /* both ends of the range are valid (per-uid also fits under max_connections) */
                snprintf(t, sizeof t, PROV "[limits]\nmax_connections = 4096\n%s = %ld\n", lim[i].key, lim[i].lo);
                if (!streq(lim[i].key, "max_connections")) {
                        struct tpmid_config *c = expect_ok(t);
                        config_free(c);
                }
                snprintf(t, sizeof t, PROV "[limits]\n%s = %ld\n", lim[i].key, lim[i].hi);
                if (!streq(lim[i].key, "max_connections_per_uid")) {
                        struct tpmid_config *c = expect_ok(t);
                        config_free(c);
                }
                snprintf(t, sizeof t, PROV "[limits]\n%s = %ld\n", lim[i].key, lim[i].lo - 1);
                expect_one_error(t, 7, "out of range");
                snprintf(t, sizeof t, PROV "[limits]\n%s = %ld\n", lim[i].key, lim[i].hi + 1);
                expect_one_error(t, 7, "out of range");
                snprintf(t, sizeof t, PROV "[limits]\n%s = \"%ld\"\n", lim[i].key, lim[i].hi);
                expect_one_error(t, 7, "unquoted integer");
        }
        struct tpmid_config *c = expect_ok(PROV "[limits]\nmax_connections = 100\nmax_connections_per_uid = 100\n"
                                                "max_header_bytes = 4096\nmax_body_bytes = 2048\nidle_timeout_sec = 9\n"
                                                "request_timeout_sec = 2\nmax_queued_tpm_jobs = 3\n");
        assert_int_equal(c->limits.max_connections, 100);
        assert_int_equal(c->limits.max_connections_per_uid, 100);
        assert_int_equal(c->limits.max_header_bytes, 4096);
        assert_int_equal(c->limits.max_body_bytes, 2048);
        assert_int_equal(c->limits.idle_timeout_sec, 9);
        assert_int_equal(c->limits.request_timeout_sec, 2);
        assert_int_equal(c->limits.max_queued_tpm_jobs, 3);
        config_free(c);

        /* busy_poll_usec: no longer used, still accepted (old files load), with a warning, any value */
        static const char *const busy[] = {"busy_poll_usec = 50", "busy_poll_usec = 0", "busy_poll_usec = 99999",
                                           "busy_poll_usec = \"x\""};
        for (size_t i = 0; i < ELEMENTSOF(busy); i++) {
                char t[512];
                snprintf(t, sizeof t, PROV "[limits]\n%s\n", busy[i]);
                struct config_diags d = {0};
                c = NULL;
                assert_int_equal(config_parse_string(t, strlen(t), "t.toml", &c, &d), 0);
                assert_int_equal(d.n_errors, 0);
                assert_int_equal(d.n_warnings, 1);
                assert_int_equal(d.items[0].line, 7);
                assert_string_equal(d.items[0].key, "limits.busy_poll_usec");
                assert_non_null(strstr(d.items[0].message, "ignored: no longer used"));
                config_free(c);
                config_diags_free(&d);
        }
}

static void test_principals(void **state) {
        struct tpmid_config *c = expect_ok(PROV "[[principal]]\nuid = 1001\nname = \"edge\"\n"
                                                "[[principal]]\nuid = 1002\nname = \"app\"\nidtype = [\"device\", \"local\"]\n"
                                                "[[principal]]\nuid = 1003\nname = \"signer\"\nallow = [\"tpm.sign\", \"identity.token\"]\n");
        assert_int_equal(c->n_principals, 3);
        assert_int_equal(c->principals[0].uid, 1001);
        assert_string_equal(c->principals[0].name, "edge");
        assert_int_equal(c->principals[0].idtype, 0);
        assert_int_equal(c->principals[0].allow, CONFIG_OP_ALL);
        assert_int_equal(c->principals[1].idtype, CONFIG_IDTYPE_DEVICE | CONFIG_IDTYPE_LOCAL);
        assert_int_equal(c->principals[1].allow, config_role_default_allow(CONFIG_IDTYPE_DEVICE));
        assert_false(c->principals[1].allow_explicit);
        assert_int_equal(c->principals[2].allow, CONFIG_OP_TPM_SIGN | CONFIG_OP_IDENTITY_TOKEN);
        assert_true(c->principals[2].allow_explicit);

        /* what each may do is lib/authz's rule, tested in test-authz.c */
        assert_non_null(config_principal_for_uid(c, 1002));
        assert_null(config_principal_for_uid(c, 4242));
        config_free(c);

        c = expect_ok(PROV "[[principal]]\nuid = 5\nname = \"all\"\nallow = [\"*\"]\n");
        assert_int_equal(c->principals[0].allow, CONFIG_OP_ALL);
        config_free(c);

        expect_one_error(PROV "[[principal]]\nname = \"x\"\n", 6, "has no uid");
        expect_one_error(PROV "[[principal]]\nuid = 5\n", 6, "has no name");
        expect_one_error(PROV "[[principal]]\nuid = -5\nname = \"x\"\n", 7, "out of range");
        expect_one_error(PROV "[[principal]]\nuid = \"5\"\nname = \"x\"\n", 7, "unquoted integer");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"\"\n", 8, "must not be empty");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\nidtype = [\"devise\"]\n", 9,
                         "did you mean \"device\"");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\nidtype = \"device\"\n", 9, "array of strings");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\nallow = [\"tpm.sing\"]\n", 9,
                         "did you mean \"tpm.sign\"");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\nallow = [\"format.disk\"]\n", 9,
                         "is not an operation");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\nallow = [1]\n", 9, "must be a string");
        expect_one_error(PROV "[principal]\nuid = 5\nname = \"x\"\n", 6, "[[principal]] (double brackets)");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\n[[principal]]\nuid = 6\nname = \"x\"\n", 0,
                         "named \"x\"");
        expect_one_error(PROV "[[principal]]\nuid = 5\nname = \"x\"\n[[principal]]\nuid = 5\nname = \"y\"\n", 0,
                         "uid = 5");
        expect_one_error("[provisioning]\nsource = \"none\"\n[[principal]]\nuid = 5\nname = \"x\"\nidtype = [\"module\"]\n",
                         0, "needs a provisioned device");
        /* CONFIG_MAX_PRINCIPALS */
        char *t = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&t, &len);
        fputs(PROV, f);
        for (unsigned i = 0; i <= CONFIG_MAX_PRINCIPALS; i++)
                fprintf(f, "[[principal]]\nuid = %u\nname = \"p%u\"\n", i + 1, i);
        fclose(f);
        expect_one_error(t, 6, "more than 256 [[principal]] entries");
        free(t);
}

/* ---- unknown and Microsoft keys ------------------------------------------- */

static void test_unknown_keys(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(parse("log_levle = \"debug\"\nfrobnicate = 1\n" PROV "[tpm]\ntctl = \"x\"\n[limit]\na = 1\n",
                               &c, &d), 0);
        assert_int_equal(d.n_errors, 0);
        assert_int_equal(d.n_warnings, 4);
        const struct config_diag *g = find_diag(&d, CONFIG_SEVERITY_WARNING, "did you mean log_level?");
        assert_non_null(g);
        assert_int_equal(g->line, 1);
        g = find_diag(&d, CONFIG_SEVERITY_WARNING, "unknown key frobnicate (tpmidd ignores it)");
        assert_non_null(g);
        assert_null(strstr(g->message, "did you mean"));
        g = find_diag(&d, CONFIG_SEVERITY_WARNING, "did you mean tpm.tcti?");
        assert_non_null(g);
        assert_int_equal(g->line, 9);
        assert_non_null(find_diag(&d, CONFIG_SEVERITY_WARNING, "unknown table limit (tpmidd ignores it); did you mean limits?"));
        config_free(c);
        config_diags_free(&d);
}

static void test_microsoft_template(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_load(DATA "ms-edge-full.toml", &c, &d), 0);
        if (d.n_errors || d.n_warnings)
                dump(&d);
        assert_int_equal(d.n_errors, 0);
        assert_int_equal(d.n_warnings, 0);
        assert_true(d.n_infos >= 10);
        for (size_t i = 0; i < d.n; i++)
                assert_non_null(strstr(d.items[i].message, "ignored by tpmidd"));
        assert_string_equal(c->hostname, "my-device");
        assert_int_equal(c->cloud_timeout_sec, 10);
        assert_string_equal(c->tpm.tcti, "swtpm:port=2321");
        assert_string_equal(c->tpm.endorsement_auth, "hello");
        assert_int_equal(c->limits.max_connections_per_uid, 12); /* aziot_max_requests.tpmd */
        config_free(c);
        config_diags_free(&d);

        /* the mode appended at the end of the template lands in [moby_runtime]: not silently ignored */
        size_t len;
        char *text = NULL;
        assert_int_equal(read_full_file(DATA "ms-edge-full.toml", 1 << 20, &text, &len), 0);
        char *t2 = NULL;
        assert_true(asprintf(&t2, "%sauto_reprovisioning_mode = \"OnErrorOnly\"\n", text) > 0);
        unsigned last_line = 1;
        for (const char *p = t2; *p; p++)
                last_line += *p == '\n';
        assert_int_equal(config_parse_string(t2, strlen(t2), "ms.toml", &c, &d), -EINVAL);
        assert_int_equal(d.n_errors, 1);
        const struct config_diag *g = find_diag(&d, CONFIG_SEVERITY_ERROR, "inside [image_garbage_collection]");
        assert_non_null(g);
        assert_int_equal(g->line, last_line - 1);
        assert_non_null(strstr(g->message, "move it above the first [table] header (line 12)"));
        config_diags_free(&d);
        free(t2);
        free(text);
}

/* ---- drop-ins, files ------------------------------------------------------ */

static void test_dropins(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_load(DATA "dropin/config.toml", &c, &d), 0);
        assert_int_equal(d.n, 0);
        assert_int_equal(c->log_level, LOG_DEBUG);                     /* 10-debug replaces */
        assert_string_equal(c->tpm.tcti, "swtpm:port=2321");           /* 10-debug, table merged */
        assert_int_equal(c->limits.max_connections, 32);               /* main file, kept */
        assert_int_equal(c->limits.max_connections_per_uid, 4);        /* 20-limits, merged */
        assert_string_equal(c->provisioning.id_scope, "0ne00A1B2C3");
        config_free(c);

        /* an error in a drop-in names the drop-in and its line */
        assert_int_equal(config_load(DATA "dropin-bad/config.toml", &c, &d), -EINVAL);
        assert_int_equal(d.n_errors, 1);
        assert_non_null(strstr(d.items[0].file, "dropin-bad/config.d/50-bad.toml"));
        assert_int_equal(d.items[0].line, 4);
        config_diags_free(&d);
}

static void test_dropin_syntax_error_and_missing(void **state) {
        char dir[] = "/tmp/test-config-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char p[PATH_MAX], q[PATH_MAX], dd[PATH_MAX];
        snprintf(p, sizeof p, "%s/config.toml", dir);
        snprintf(dd, sizeof dd, "%s/config.d", dir);
        snprintf(q, sizeof q, "%s/config.d/01-broken.toml", dir);

        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        /* missing main file: an error diagnostic and its errno */
        assert_int_equal(config_load(p, &c, &d), -ENOENT);
        assert_int_equal(d.n_errors, 1);
        assert_non_null(strstr(d.items[0].message, "cannot read"));
        config_diags_free(&d);

        assert_int_equal(write_file_atomic(p, PROV, strlen(PROV), 0644), 0);
        assert_int_equal(mkdir(dd, 0755), 0);
        const char *broken = "\n\nlog_level = loud\n";
        assert_int_equal(write_file_atomic(q, broken, strlen(broken), 0644), 0);
        assert_int_equal(config_load(p, &c, &d), -EINVAL);
        assert_int_equal(d.n_errors, 1);
        assert_string_equal(d.items[0].file, q);
        assert_int_equal(d.items[0].line, 3);
        config_diags_free(&d);

        /* too large (CONFIG_MAX_FILE_BYTES) */
        size_t big = CONFIG_MAX_FILE_BYTES + 1;
        char *buf = malloc(big);
        memset(buf, '#', big);
        assert_int_equal(write_file_atomic(q, buf, big, 0644), 0);
        free(buf);
        assert_int_equal(config_load(p, &c, &d), -EINVAL);
        assert_non_null(find_diag(&d, CONFIG_SEVERITY_ERROR, "larger than"));
        config_diags_free(&d);

        unlink(q);
        rmdir(dd);
        unlink(p);
        rmdir(dir);
}

static void test_check_files(void **state) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        char t[1024];
        snprintf(t, sizeof t, P1 "payload = { uri = \"file://%s\" }\n" ATT, DATA "payload-ok.json");
        c = expect_ok(t);
        assert_int_equal(config_check_files(c, &d), 0);
        assert_int_equal(d.n, 0);
        config_free(c);

        snprintf(t, sizeof t, P1 "payload = { uri = \"file://%s\" }\n" ATT, DATA "payload-bad.json");
        c = expect_ok(t);
        assert_int_equal(config_check_files(c, &d), -EINVAL);
        assert_int_equal(d.n_errors, 1);
        assert_non_null(strstr(d.items[0].message, "is not JSON"));
        assert_int_equal(d.items[0].line, 4);
        assert_string_equal(d.items[0].file, "test.toml");
        config_free(c);
        config_diags_free(&d);

        c = expect_ok(P1 "payload = { uri = \"file:///nonexistent/p.json\" }\n" ATT
                      "[tpm]\n");
        assert_int_equal(config_check_files(c, &d), -EINVAL);
        assert_non_null(strstr(d.items[0].message, "cannot read the DPS payload file"));
        config_free(c);
        config_diags_free(&d);

        c = expect_ok("cloud_ca_bundle = \"/nonexistent/ca.pem\"\n" PROV);
        assert_int_equal(config_check_files(c, &d), -EINVAL);
        assert_int_equal(d.items[0].line, 1);
        config_free(c);
        config_diags_free(&d);

        /* CONFIG_MAX_PAYLOAD_BYTES */
        char path[] = "/tmp/test-config-payload-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        size_t big = CONFIG_MAX_PAYLOAD_BYTES + 1;
        char *buf = malloc(big);
        memset(buf, ' ', big);
        assert_int_equal(write(fd, buf, big), (ssize_t)big);
        close(fd);
        free(buf);
        snprintf(t, sizeof t, P1 "payload = { uri = \"file://%s\" }\n" ATT, path);
        c = expect_ok(t);
        assert_int_equal(config_check_files(c, &d), -EINVAL);
        assert_non_null(strstr(d.items[0].message, "larger than"));
        config_free(c);
        config_diags_free(&d);
        unlink(path);
}

/* ---- serialisation, diff ------------------------------------------------------ */

static void test_format_roundtrip(void **state) {
        const char *t = "hostname = \"h\"\nauto_reprovisioning_mode = \"OnErrorOnly\"\nlog_level = \"warn\"\n"
                        "prefer_module_identity_cache = true\n"
                        "cloud_ca_bundle = \"/etc/ca.pem\"\n"
                        "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne1\"\n"
                        "payload = { uri = \"file:///etc/a%20b/p\\\"q.json\" }\n"
                        "[provisioning.attestation]\nmethod = \"tpm\"\nregistration_id = \"r1\"\n"
                        "[tpm]\ntcti = \"swtpm:port=2321\"\nauth_key_index = 0x123\n"
                        "[tpm.hierarchy_authorization]\nendorsement = \"e\\\"\\\\\\n\"\nowner = \"o\"\n"
                        "[endpoints]\naziot_keyd = \"unix:///tmp/k.sock\"\n"
                        "[limits]\nmax_connections = 9\n"
                        "[[principal]]\nuid = 7\nname = \"n\"\nidtype = [\"module\"]\nallow = [\"reprovision\"]\n";
        struct tpmid_config *a = expect_ok(t);
        assert_string_equal(a->provisioning.payload_path, "/etc/a b/p\"q.json");
        char *out = NULL;
        assert_int_equal(config_format_toml(a, "generated\nby a test", &out), 0);
        assert_true(startswith(out, "# generated\n# by a test\n"));
        struct tpmid_config *b = expect_ok(out);
        char *why = NULL;
        assert_int_equal(config_diff(a, b, &why), 0);
        assert_null(why);
        assert_string_equal(b->tpm.endorsement_auth, "e\"\\\n");
        assert_int_equal(b->tpm.auth_key_index, 0x123);
        assert_true(b->prefer_module_identity_cache);
        assert_string_equal(b->endpoints.keyd_socket, "/tmp/k.sock");
        free(out);
        config_free(b);

        /* source = "none" serialises without DPS keys and still parses */
        struct tpmid_config *n = expect_ok("[provisioning]\nsource = \"none\"\n");
        assert_int_equal(config_format_toml(n, NULL, &out), 0);
        b = expect_ok(out);
        assert_int_equal(config_diff(n, b, NULL), 0);
        free(out);
        config_free(b);
        config_free(n);
        config_free(a);
}

static void test_diff(void **state) {
        struct tpmid_config *a = expect_ok(PROV);
        struct tpmid_config *b = expect_ok("log_level = \"debug\"\n" PROV "[limits]\nmax_connections = 5\n");
        char *why = NULL;
        assert_int_equal(config_diff(a, b, &why), CONFIG_CHANGED_RELOADABLE);
        assert_string_equal(why, "log_level, limits");
        free(why);
        config_free(b);
        b = expect_ok(PROV "[[principal]]\nuid = 1\nname = \"p\"\n");
        assert_int_equal(config_diff(a, b, NULL), CONFIG_CHANGED_RELOADABLE);
        config_free(b);
        b = expect_ok("[provisioning]\nsource = \"dps\"\nid_scope = \"0ne2\"\n[provisioning.attestation]\nmethod = \"tpm\"\n"
                      "[tpm]\ntcti = \"swtpm\"\n");
        assert_int_equal(config_diff(a, b, &why), CONFIG_CHANGED_RESTART | CONFIG_CHANGED_RELOADABLE);
        assert_string_equal(why, "provisioning.id_scope, tpm.tcti");
        free(why);
        config_free(b);
        /* the provisioning settings and the mode are reloadable (tpmidd(8), RELOAD) */
        b = expect_ok("auto_reprovisioning_mode = \"OnErrorOnly\"\n"
                      "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne2\"\n[provisioning.attestation]\nmethod = \"tpm\"\n");
        assert_int_equal(config_diff(a, b, &why), CONFIG_CHANGED_RELOADABLE);
        assert_string_equal(why, "auto_reprovisioning_mode, provisioning.id_scope");
        free(why);
        config_free(b);
        /* keyd's socket and the cache preference: reloadable (the next module call reads them) */
        b = expect_ok("prefer_module_identity_cache = true\n" PROV "[endpoints]\naziot_keyd = \"unix:///k.sock\"\n");
        assert_int_equal(config_diff(a, b, &why), CONFIG_CHANGED_RELOADABLE);
        assert_string_equal(why, "endpoints.aziot_keyd, prefer_module_identity_cache");
        free(why);
        config_free(b);
        b = expect_ok("log_level = \"error\"\n" PROV "[endpoints]\naziot_tpmd = \"unix:///x.sock\"\n");
        assert_int_equal(config_diff(a, b, NULL), CONFIG_CHANGED_RESTART | CONFIG_CHANGED_RELOADABLE);
        config_free(b);
        config_free(a);
}

static void test_names_and_misc(void **state) {
        assert_string_equal(config_provisioning_source_to_string(CONFIG_SOURCE_NONE), "none");
        assert_null(config_provisioning_source_to_string(_CONFIG_SOURCE_MAX));
        assert_string_equal(config_idtype_to_string(CONFIG_IDTYPE_MODULE), "module");
        assert_null(config_idtype_to_string(CONFIG_IDTYPE_DEVICE | CONFIG_IDTYPE_LOCAL));
        /* "dynamic" is not a mode: the config's spelling is lib/provision's, case-sensitive */
        expect_one_error("auto_reprovisioning_mode = \"dynamic\"\n" PROV, 1, "\"Dynamic\"");
        assert_string_equal(config_op_to_string(CONFIG_OP_TPM_SIGN), "tpm.sign");
        assert_null(config_op_to_string(CONFIG_OP_TPM_SIGN | CONFIG_OP_TPM_KEYS));
        assert_int_equal(config_op_from_string("reprovision"), CONFIG_OP_REPROVISION);
        assert_int_equal(config_op_from_string("*"), CONFIG_OP_ALL);
        assert_int_equal(config_op_from_string("nope"), -EINVAL);

        struct config_diag g = {.severity = CONFIG_SEVERITY_WARNING, .file = "f.toml", .line = 3, .col = 4, .message = "m"};
        char *s = config_format_diag(&g);
        assert_string_equal(s, "f.toml:3:4: warning: m");
        free(s);
        g.line = 0;
        g.severity = CONFIG_SEVERITY_INFO;
        s = config_format_diag(&g);
        assert_string_equal(s, "f.toml: note: m");
        free(s);

        setenv(CONFIG_ENV_PATH, "/tmp/x.toml", 1);
        assert_string_equal(config_path_from_env(CONFIG_DEFAULT_PATH), "/tmp/x.toml");
        setenv(CONFIG_ENV_PATH, "", 1);
        assert_string_equal(config_path_from_env(CONFIG_DEFAULT_PATH), CONFIG_DEFAULT_PATH);
        unsetenv(CONFIG_ENV_PATH);
        assert_string_equal(config_path_from_env(CONFIG_APPLIED_PATH), CONFIG_APPLIED_PATH);

        assert_null(config_free(NULL));
        config_diags_free(NULL);

        /* empty input (the daemon's "no file"): every default, provisioning off */
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        assert_int_equal(config_parse_string("", 0, "empty.toml", &c, &d), 0);
        assert_int_equal(c->provisioning.source, CONFIG_SOURCE_NONE);
        assert_int_equal(d.n_errors, 0);
        config_free(c);
        config_diags_free(&d);
        /* a long string (CONFIG_MAX_STRING_BYTES = 4096) */
        char *t = malloc(6000);
        char *big = malloc(4200);
        memset(big, 'a', 4199);
        big[4199] = 0;
        snprintf(t, 6000, "hostname = \"%s\"\n" PROV, big);
        expect_one_error(t, 1, "more than the 4096 allowed");
        free(big);
        free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_seed_fixed),
                cmocka_unit_test(test_seed_verbatim),
                cmocka_unit_test(test_mode_unquoted_at_top),
                cmocka_unit_test(test_mode_misplaced),
                cmocka_unit_test(test_mode_values),
                cmocka_unit_test(test_ten_mistakes),
                cmocka_unit_test(test_syntax_errors_all_reported),
                cmocka_unit_test(test_syntax_error_limit),
                cmocka_unit_test(test_diag_limit),
                cmocka_unit_test(test_top_level_keys),
                cmocka_unit_test(test_provisioning_keys),
                cmocka_unit_test(test_tpm_keys),
                cmocka_unit_test(test_max_requests_mapping),
                cmocka_unit_test(test_endpoint_keys),
                cmocka_unit_test(test_limits_keys),
                cmocka_unit_test(test_principals),
                cmocka_unit_test(test_unknown_keys),
                cmocka_unit_test(test_microsoft_template),
                cmocka_unit_test(test_dropins),
                cmocka_unit_test(test_dropin_syntax_error_and_missing),
                cmocka_unit_test(test_check_files),
                cmocka_unit_test(test_format_roundtrip),
                cmocka_unit_test(test_diff),
                cmocka_unit_test(test_names_and_misc),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
