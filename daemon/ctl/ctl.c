/* tpmidctl entry point: dispatches "tpmidctl GROUP VERB ..." to the group's
 * file (ctl.h lists which file serves which group). */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "tpmid-config.h"

static void usage(FILE *f) {
        fputs("Usage: tpmidctl COMMAND ...\n"
              "\n"
              "TPM:\n"
              "  tpm info [--json] [--tcti CONF] [-c FILE]   registration id and endorsement key (the guide's script)\n"
              "  tpm import --tcti CONF FILE                 import a DPS authenticationKey blob\n"
              "  tpm sign --tcti CONF < DATA                 HMAC-SHA256 with the imported key\n"
              "\n"
              "Configuration:\n"
              "  config check [-c FILE]                      validate /etc/aziot/config.toml\n"
              "  config apply [-c FILE]                      validate, install for tpmidd, then start (first time),\n"
              "                                              reload or restart it\n"
              "\n"
              "Service:\n"
              "  system status [--json]                      units and provisioning state (exit 4: TPM unusable,\n"
              "                                              8: provisioning failed)\n"
              "  system logs [-- JOURNALCTL-ARGS]            the daemon's journal\n"
              "  system reprovision                          run DPS registration again, show its states and outcome\n"
              "  system restart | system stop                the units\n"
              "  system set-log-level LEVEL                  the running daemon's log level (error|warn|info|debug|trace)\n"
              "  system restore-aziot [--root DIR]           give the aziot sockets back to aziot-identityd/tpmd\n"
              "  identity show                               the device identity (hub, device id)\n"
              "  identity token [--lifetime SEC]             a hub SAS token signed in the TPM\n"
              "  check [-o json] [--warnings-as-errors]      TPM-aware health checks, each with its fix\n"
              "  check --list                                every check's id and what it checks\n"
              "  support-bundle [-o FILE]                    a tar.gz for a bug report (secrets redacted)\n"
              "\n"
              "  --version, --help; COMMAND --help for its options (man tpmidctl)\n",
              f);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                usage(stderr);
                return CTL_EXIT_USAGE;
        }
        const char *g = argv[1];
        if (strcmp(g, "--help") == 0 || strcmp(g, "-h") == 0 || strcmp(g, "help") == 0) {
                usage(stdout);
                return CTL_EXIT_OK;
        }
        if (strcmp(g, "--version") == 0) {
                printf("tpmidctl %s\n", TPMID_VERSION);
                return CTL_EXIT_OK;
        }
        int (*fn)(int, char **);
        if (strcmp(g, "tpm") == 0)
                fn = ctl_tpm_main;
        else if (strcmp(g, "config") == 0)
                fn = ctl_config_main;
        else if (strcmp(g, "system") == 0)
                fn = ctl_system_main;
        else if (strcmp(g, "check") == 0)
                fn = ctl_check_main;
        else if (strcmp(g, "identity") == 0)
                fn = ctl_identity_main;
        else if (strcmp(g, "support-bundle") == 0)
                fn = ctl_bundle_main;
        else {
                fprintf(stderr, "tpmidctl: unknown command '%s'. Try 'tpmidctl --help'.\n", g);
                return CTL_EXIT_USAGE;
        }
        return fn(argc - 1, argv + 1);
}
