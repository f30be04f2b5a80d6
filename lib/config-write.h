/* The TOML writer for a validated config: what `tpmidctl config apply`
 * installs as CONFIG_APPLIED_PATH (lib/config-write.c). */
#pragma once

#include "config.h"

/* Serialise c as normalised TOML (every key explicit, header comment naming
 * the generator) — what `config apply` installs as CONFIG_APPLIED_PATH.
 * Parsing the result gives an equal config. Returns 0 and a heap string in
 * *ret (caller frees; it holds the hierarchy passwords: wipe it), or -ENOMEM. */
int config_format_toml(const struct tpmid_config *c, const char *header, char **ret);
