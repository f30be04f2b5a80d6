/* The TOML writer: a validated config back to text, every key explicit.
 *
 * Text goes through a memory stream (open_memstream), so there is no string
 * builder of our own; the only escaping needed is that of TOML basic strings
 * and of file: URIs. The output holds the hierarchy passwords, so every
 * failure path wipes what was written. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-write.h"
#include "util.h"

/* A TOML basic string with escapes. */
static void put_str(FILE *f, const char *s) {
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p < 0x20 || *p == 0x7f)
                        fprintf(f, "\\u%04X", *p);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

static void put_kv_str(FILE *f, const char *key, const char *val) {
        fprintf(f, "%s = ", key);
        put_str(f, val);
        fputc('\n', f);
}

/* key = "<prefix><s>", with s percent-encoded when encode is set (file: URIs). */
static void put_kv_uri(FILE *f, const char *key, const char *prefix, const char *s, bool encode) {
        fprintf(f, "%s = \"%s", key, prefix);
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (encode && !(isalnum(*p) || strchr("/-._~", *p)))
                        fprintf(f, "%%%02X", *p);
                else if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p < 0x20 || *p == 0x7f)
                        fprintf(f, "\\u%04X", *p);
                else
                        fputc(*p, f);
        }
        fputs("\"", f);
}

/* name = ["a", "b"] for the set bits of bits, named by to_string. */
static void put_names(FILE *f, const char *name, uint32_t bits, const char *(*to_string)(uint32_t bit)) {
        fprintf(f, "%s = [", name);
        bool first = true;
        for (unsigned j = 0; j < 32; j++) {
                const char *n = (bits & (1u << j)) ? to_string(1u << j) : NULL;
                if (!n)
                        continue;
                if (!first)
                        fputs(", ", f);
                put_str(f, n);
                first = false;
        }
        fputs("]\n", f);
}

static const char *idtype_name(uint32_t bit) {
        return config_idtype_to_string(bit);
}

static void write_config(FILE *f, const struct tpmid_config *c, const char *header) {
        if (header) {
                for (const char *p = header; *p;) {
                        size_t n = strcspn(p, "\n");
                        fprintf(f, "# %.*s\n", (int)n, p);
                        p += n;
                        if (*p)
                                p++;
                }
                fputc('\n', f);
        }
        if (c->hostname)
                put_kv_str(f, "hostname", c->hostname);
        put_kv_str(f, "auto_reprovisioning_mode", prov_mode_to_string(c->auto_reprovisioning_mode));
        fprintf(f, "cloud_timeout_sec = %u\ncloud_retries = %u\n", c->cloud_timeout_sec, c->cloud_retries);
        if (c->prefer_module_identity_cache)
                fputs("prefer_module_identity_cache = true\n", f);
        put_kv_str(f, "state_dir", c->state_dir);
        put_kv_str(f, "log_level", log_level_to_string(c->log_level));
        if (c->cloud_ca_bundle)
                put_kv_str(f, "cloud_ca_bundle", c->cloud_ca_bundle);

        fputs("\n[provisioning]\n", f);
        put_kv_str(f, "source", config_provisioning_source_to_string(c->provisioning.source));
        if (c->provisioning.source == CONFIG_SOURCE_DPS) {
                put_kv_str(f, "global_endpoint", c->provisioning.global_endpoint);
                if (c->provisioning.id_scope)
                        put_kv_str(f, "id_scope", c->provisioning.id_scope);
                if (c->provisioning.payload_path) {
                        fputs("payload = { ", f);
                        put_kv_uri(f, "uri", "file://", c->provisioning.payload_path, true);
                        fputs(" }\n", f);
                }
                fputs("\n[provisioning.attestation]\nmethod = \"tpm\"\n", f);
                if (c->provisioning.registration_id)
                        put_kv_str(f, "registration_id", c->provisioning.registration_id);
        }

        fputs("\n[tpm]\n", f);
        put_kv_str(f, "tcti", c->tpm.tcti);
        fprintf(f, "auth_key_index = 0x%06" PRIX32 "\n", c->tpm.auth_key_index);
        fputs("\n[tpm.hierarchy_authorization]\n", f);
        put_kv_str(f, "endorsement", c->tpm.endorsement_auth);
        put_kv_str(f, "owner", c->tpm.owner_auth);

        fputs("\n[endpoints]\n", f);
        put_kv_uri(f, "aziot_tpmd", "unix://", c->endpoints.tpmd_socket, false);
        fputc('\n', f);
        put_kv_uri(f, "aziot_identityd", "unix://", c->endpoints.identityd_socket, false);
        fputc('\n', f);
        put_kv_uri(f, "aziot_keyd", "unix://", c->endpoints.keyd_socket, false);
        fputc('\n', f);

        const struct config_limits *l = &c->limits;
        fprintf(f,
                "\n[limits]\nmax_connections = %u\nmax_connections_per_uid = %u\nmax_header_bytes = %u\n"
                "max_body_bytes = %u\nidle_timeout_sec = %u\nrequest_timeout_sec = %u\nmax_queued_tpm_jobs = %u\n",
                l->max_connections, l->max_connections_per_uid, l->max_header_bytes, l->max_body_bytes,
                l->idle_timeout_sec, l->request_timeout_sec, l->max_queued_tpm_jobs);

        for (size_t i = 0; i < c->n_principals; i++) {
                const struct config_principal *p = &c->principals[i];
                fprintf(f, "\n[[principal]]\nuid = %u\n", (unsigned)p->uid);
                put_kv_str(f, "name", p->name ? p->name : "");
                if (p->idtype)
                        put_names(f, "idtype", p->idtype, idtype_name);
                if (p->allow_explicit)
                        put_names(f, "allow", p->allow, config_op_to_string);
        }
}

int config_format_toml(const struct tpmid_config *c, const char *header, char **ret) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;
        write_config(f, c, header);
        bool failed = ferror(f) != 0;
        if (fclose(f) != 0)
                failed = true;
        if (failed || !buf) {
                if (buf)
                        explicit_zero(buf, len);
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        return 0;
}
