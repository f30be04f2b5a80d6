/* What differs between two configs, and whether applying it needs a
 * restart or a reload is enough. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-diff.h"
#include "util.h"

struct diff {
        unsigned bits;
        FILE *why; /* the changed keys, ", "-separated; NULL when not asked for */
};

static void changed(struct diff *d, unsigned bit, const char *name) {
        if (d->why)
                fprintf(d->why, "%s%s", d->bits ? ", " : "", name);
        d->bits |= bit;
}

unsigned config_diff(const struct tpmid_config *a, const struct tpmid_config *b, char **why) {
        struct diff d = {0};
        char *text = NULL;
        size_t len = 0;
        d.why = why ? open_memstream(&text, &len) : NULL;
        const unsigned R = CONFIG_CHANGED_RESTART, L = CONFIG_CHANGED_RELOADABLE;
        if (!streq_ptr(a->hostname, b->hostname))
                changed(&d, R, "hostname");
        if (a->auto_reprovisioning_mode != b->auto_reprovisioning_mode)
                changed(&d, L, "auto_reprovisioning_mode");
        if (a->cloud_timeout_sec != b->cloud_timeout_sec)
                changed(&d, R, "cloud_timeout_sec");
        if (a->cloud_retries != b->cloud_retries)
                changed(&d, R, "cloud_retries");
        if (a->provisioning.source != b->provisioning.source)
                changed(&d, R, "provisioning.source");
        if (!streq_ptr(a->provisioning.global_endpoint, b->provisioning.global_endpoint))
                changed(&d, L, "provisioning.global_endpoint");
        if (!streq_ptr(a->provisioning.id_scope, b->provisioning.id_scope))
                changed(&d, L, "provisioning.id_scope");
        if (!streq_ptr(a->provisioning.payload_path, b->provisioning.payload_path))
                changed(&d, L, "provisioning.payload");
        if (a->provisioning.method != b->provisioning.method)
                changed(&d, L, "provisioning.attestation.method");
        if (!streq_ptr(a->provisioning.registration_id, b->provisioning.registration_id))
                changed(&d, L, "provisioning.attestation.registration_id");
        if (!streq_ptr(a->tpm.tcti, b->tpm.tcti))
                changed(&d, R, "tpm.tcti");
        if (a->tpm.auth_key_index != b->tpm.auth_key_index)
                changed(&d, R, "tpm.auth_key_index");
        if (!streq_ptr(a->tpm.endorsement_auth, b->tpm.endorsement_auth))
                changed(&d, R, "tpm.hierarchy_authorization.endorsement");
        if (!streq_ptr(a->tpm.owner_auth, b->tpm.owner_auth))
                changed(&d, R, "tpm.hierarchy_authorization.owner");
        if (!streq_ptr(a->endpoints.tpmd_socket, b->endpoints.tpmd_socket))
                changed(&d, R, "endpoints.aziot_tpmd");
        if (!streq_ptr(a->endpoints.identityd_socket, b->endpoints.identityd_socket))
                changed(&d, R, "endpoints.aziot_identityd");
        if (!streq_ptr(a->endpoints.keyd_socket, b->endpoints.keyd_socket))
                changed(&d, L, "endpoints.aziot_keyd");
        if (a->prefer_module_identity_cache != b->prefer_module_identity_cache)
                changed(&d, L, "prefer_module_identity_cache");
        if (!streq_ptr(a->state_dir, b->state_dir))
                changed(&d, R, "state_dir");
        if (!streq_ptr(a->cloud_ca_bundle, b->cloud_ca_bundle))
                changed(&d, R, "cloud_ca_bundle");
        if (a->log_level != b->log_level)
                changed(&d, L, "log_level");
        if (memcmp(&a->limits, &b->limits, sizeof(a->limits)) != 0)
                changed(&d, L, "limits");
        bool pd = a->n_principals != b->n_principals;
        for (size_t i = 0; !pd && i < a->n_principals; i++) {
                const struct config_principal *p = &a->principals[i], *q = &b->principals[i];
                pd = p->uid != q->uid || !streq_ptr(p->name, q->name) || p->idtype != q->idtype ||
                     p->allow != q->allow;
        }
        if (pd)
                changed(&d, L, "principal");
        if (why) {
                bool failed = !d.why || ferror(d.why) != 0;
                if (d.why && fclose(d.why) != 0)
                        failed = true;
                if (failed || !d.bits) {
                        free(text);
                        text = NULL;
                }
                *why = text;
        }
        return d.bits;
}
