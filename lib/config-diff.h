/* What changed between two configs, and whether a reload is enough
 * (lib/config-diff.c). */
#pragma once

#include "config.h"

/* What differs between two configs, as a bit set of CONFIG_CHANGED_*. */
enum {
        /* log_level, limits, principals, auto_reprovisioning_mode and the provisioning settings
         * (global_endpoint, id_scope, payload, attestation): SIGHUP applies them */
        CONFIG_CHANGED_RELOADABLE = 1u << 0,
        /* provisioning.source, tpm, endpoints, state_dir, hostname, cloud_*: a reload keeps the running value */
        CONFIG_CHANGED_RESTART = 1u << 1,
};
/* Returns the CONFIG_CHANGED_* bits. When why is non-NULL it receives a
 * heap string naming the changed keys (e.g. "provisioning.id_scope, log_level"),
 * or NULL if nothing changed or on ENOMEM; the caller frees it. */
unsigned config_diff(const struct tpmid_config *a, const struct tpmid_config *b, char **why);
