/* tpmidctl: one main (ctl.c) dispatching to verb groups, one file each.
 * Each group's entry gets argv starting at the group name ("tpm", "info", ...)
 * and returns the process exit code (see CTL_EXIT_*). */
#pragma once

enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILURE = 1, /* the operation failed (message printed) */
        CTL_EXIT_USAGE = 2,   /* bad command line */
        CTL_EXIT_CONFIG = 3,  /* configuration invalid */
        CTL_EXIT_NOTPM = 4,   /* TPM unreachable or refused */
        CTL_EXIT_DAEMON = 5,  /* daemon unreachable */
};

int ctl_tpm_main(int argc, char **argv);     /* ctl-tpm.c: tpm info|import|sign */
int ctl_config_main(int argc, char **argv);  /* ctl-config.c: config check|apply */
int ctl_system_main(int argc, char **argv);  /* ctl-system.c: system status|logs|reprovision */
int ctl_check_main(int argc, char **argv);   /* ctl-check.c: check */
int ctl_identity_main(int argc, char **argv);/* ctl-system.c: identity show|token */
