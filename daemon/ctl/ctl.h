/* tpmidctl: one main (ctl.c) dispatching to verb groups, one file each.
 * Each group's entry gets argv starting at the group name ("tpm", "info", ...)
 * and returns the process exit code (see CTL_EXIT_*). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The exit codes of every verb: one table, documented in tpmidctl(1) under
 * EXIT STATUS. A verb that talks to tpmidd maps the daemon's answer through
 * ctl_exit_from_http() / ctl_exit_from_errno(), so the same answer gives the
 * same code whichever verb asked. */
enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILURE = 1,      /* the operation failed (message printed); check: an error was found */
        CTL_EXIT_USAGE = 2,        /* bad command line */
        CTL_EXIT_CONFIG = 3,       /* configuration invalid */
        CTL_EXIT_NOTPM = 4,        /* TPM unavailable: cannot be opened, refused, or tpmidd reports it unusable */
        CTL_EXIT_DAEMON = 5,       /* tpmidd unreachable: no socket, nothing listening, no answer, not HTTP */
        CTL_EXIT_PERMISSION = 6,   /* permission denied: socket not accessible, tpmidd answered 401/403, not root */
        CTL_EXIT_UNAVAILABLE = 7,  /* tpmidd answered 503: not ready for this yet (TPM, identity, DPS); retry */
        CTL_EXIT_PROVISIONING = 8, /* provisioning failed: DPS refused the device (tpmidd's 502, state failed) */
};

/* The exit code for an HTTP status tpmidd answered (2xx gives CTL_EXIT_OK). */
int ctl_exit_from_http(int status);

/* The exit code for a -errno of ctl_client_request() or
 * ctl_client_get_tpm_keys() (0 gives CTL_EXIT_OK). */
int ctl_exit_from_errno(int r);

/* ctl-tpm.c: the key index (from TPM_AUTH_KEY_BASE) of the hub key that
 * serves: the slot tpmidd's state file names (A/B slots, lib/provision.h),
 * slot A (auth_key_index) without a readable state file. */
struct tpmid_config;
uint32_t ctl_serving_key_index(const struct tpmid_config *cfg);

int ctl_tpm_main(int argc, char **argv);     /* ctl-tpm.c: tpm info|import|sign */
int ctl_config_main(int argc, char **argv);  /* ctl-config.c: config check|apply */
int ctl_system_main(int argc, char **argv);  /* ctl-system.c: system status|logs|reprovision */
int ctl_check_main(int argc, char **argv);   /* ctl-check.c: check */
int ctl_identity_main(int argc, char **argv);/* ctl-system.c: identity show|token */
int ctl_bundle_main(int argc, char **argv);  /* ctl-bundle.c: support-bundle */

/* ctl-aziot.c: tpmidd beside aziot-identity-service and IoT Edge (see the
 * file's top comment). root: --root (NULL = /); act: systemctl may be run. */
#define CTL_AZIOT_MARKER "/etc/aziot/tpmidd/replaces-aziot" /* units/aziot-coexist.conf's condition */
#define CTL_KEYD_DROPIN "/etc/aziot/keyd/config.d/50-tpmidd.toml"
char *ctl_prefixed(const char *root, const char *path); /* heap: root + path, or a copy of path */
bool ctl_aziot_installed(const char *root);             /* aziot-identityd.service is installed */
bool ctl_iotedge_present(const char *root);             /* the iotedge user exists */
/* Add edged's principal to c (IoT Edge present, none for its uid yet):
 * 1 added, 0 not needed, -errno. Prints what it did. */
int ctl_iotedge_add_principal(struct tpmid_config *c, const char *root);
/* Write (or remove when IoT Edge/keyd are gone) CTL_KEYD_DROPIN: 1 written,
 * 0 nothing to do, -errno. */
int ctl_keyd_principal_apply(const char *root, bool act);
/* Create CTL_AZIOT_MARKER; with act, stop aziot's identityd/tpmd units that
 * run and bind tpmidd's sockets again (tpmidd.service is left stopped for
 * the caller to start). 1 units stopped, 0 none, -errno. */
int ctl_aziot_replace(const char *root, bool act);
int ctl_aziot_restore_main(int argc, char **argv); /* system restore-aziot */

/* ctl-run.c: the programs tpmidctl drives. Each returns the program's exit
 * status, 127 when it could not be run, 128 when a signal ended it, or -errno. */
bool ctl_systemd_running(void); /* systemd is PID 1, or TPMIDCTL_ASSUME_SYSTEMD=1 says to act as if */
int ctl_wait_exit(pid_t pid);   /* wait for a forked child */
/* Run argv; show_output false: stdout and stderr go to /dev/null. */
int ctl_run(char *const argv[], bool show_output);
/* Run argv, its stdout into out (at most outlen - 1 bytes kept, NUL-terminated,
 * trailing newlines and spaces removed; stderr discarded); -EINVAL for outlen 0. */
int ctl_run_capture(char *const argv[], char *out, size_t outlen);
