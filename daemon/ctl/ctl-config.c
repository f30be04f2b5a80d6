/* tpmidctl config check|apply.
 *
 * check: parse + validate the super-config (default /etc/aziot/config.toml,
 *        or $TPMIDD_CONFIG, or -c FILE) and its drop-ins, check the payload
 *        and CA files; print every diagnostic.
 * apply: the same validation; then install the normalised configuration for
 *        the daemon (CONFIG_APPLIED_PATH) atomically, root:aziottpm 0640,
 *        keeping the previous one as .bak, and reload or restart tpmidd
 *        depending on which keys changed. On any error nothing is written. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "config.h"
#include "config-diff.h"
#include "config-write.h"
#include "ctl.h"
#include "util.h"

#define TPMIDD_UNIT "tpmidd.service"
#define TPMIDD_GROUP "aziottpm"
#define APPLIED_MODE 0640 /* root:aziottpm: the daemon reads it, others must not (hierarchy passwords) */
#define APPLIED_DIR_MODE 0750
#define CMDLINE_MAX_BYTES 4096           /* bytes of /proc/PID/cmdline read to recognise tpmidd and its -c */

static void config_usage(FILE *f) {
        fputs("Usage: tpmidctl config check [-c FILE]\n"
              "       tpmidctl config apply [-c FILE] [-o OUT] [--no-reload] [--root DIR]\n"
              "\n"
              "  check   validate FILE (default " CONFIG_DEFAULT_PATH ", or $" CONFIG_ENV_PATH ")\n"
              "          and its config.d drop-ins; exit 0 when valid (warnings allowed), 3 when not\n"
              "  apply   validate, then install the configuration tpmidd reads\n"
              "          (default " CONFIG_APPLIED_PATH ") and reload or restart tpmidd\n"
              "\n"
              "  -c, --config FILE   the super-config to read\n"
              "  -o, --output FILE   where apply writes the daemon's configuration\n"
              "      --no-reload     install only; do not reload or restart tpmidd\n"
              "      --root DIR      prefix every path with DIR and skip systemctl (for tests and images)\n"
              "\n"
              "apply also keeps aziot-identityd and aziot-tpmd from starting while tpmidd serves their\n"
              "sockets (" CTL_AZIOT_MARKER "; undo: tpmidctl system restore-aziot), and where\n"
              "IoT Edge is installed (user iotedge) adds aziot-edged's [[principal]] and tpmidd's\n"
              "aziot-keyd principal (" CTL_KEYD_DROPIN ").\n",
              f);
}

/* Print diagnostics; returns nothing. Errors and warnings go to stderr. */
static void print_diags(const struct config_diags *d) {
        for (size_t i = 0; i < d->n; i++) {
                _cleanup_free_ char *s = config_format_diag(&d->items[i]);
                fprintf(stderr, "%s\n", s ? s : "(out of memory formatting a diagnostic)");
        }
        size_t shown = d->n, total = d->n_errors + d->n_warnings + d->n_infos;
        if (total > shown)
                fprintf(stderr, "(%zu more diagnostics not shown)\n", total - shown);
}

static int validate(const char *path, struct tpmid_config **ret, struct config_diags *d) {
        struct tpmid_config *c = NULL;
        int r = config_load(path, &c, d);
        if (r == -ENOMEM)
                return r;
        if (r == 0) {
                r = config_check_files(c, d);
                if (r < 0) {
                        config_free(c);
                        return r;
                }
                *ret = c;
        }
        return r;
}

static int verb_check(int argc, char **argv) {
        static const struct option opts[] = {
                {"config", required_argument, NULL, 'c'},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        const char *path = NULL;
        int o;
        optind = 1;
        while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0)
                switch (o) {
                case 'c':
                        path = optarg;
                        break;
                case 'h':
                        config_usage(stdout);
                        return CTL_EXIT_OK;
                default:
                        config_usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "tpmidctl config check: unexpected argument '%s'\n", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        if (!path)
                path = config_path_from_env(CONFIG_DEFAULT_PATH);

        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        int r = validate(path, &c, &d);
        print_diags(&d);
        if (r == -ENOMEM) {
                fprintf(stderr, "tpmidctl config check: out of memory\n");
                config_diags_free(&d);
                return CTL_EXIT_FAILURE;
        }
        if (r < 0) {
                fprintf(stderr, "%s: the configuration is invalid (%zu error%s, %zu warning%s)\n", path,
                        d.n_errors, d.n_errors == 1 ? "" : "s", d.n_warnings, d.n_warnings == 1 ? "" : "s");
                config_diags_free(&d);
                return CTL_EXIT_CONFIG;
        }
        if (d.n_warnings)
                printf("%s: configuration OK (%zu warning%s)\n", path, d.n_warnings, d.n_warnings == 1 ? "" : "s");
        else
                printf("%s: configuration OK\n", path);
        config_free(c);
        config_diags_free(&d);
        return CTL_EXIT_OK;
}

/* mkdir -p for the parent directories of path (only the last one gets mode). */
static int mkdir_parents(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        char *slash = strrchr(p, '/');
        if (!slash || slash == p)
                return 0;
        *slash = 0;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* The pid of the process that listens on the Unix socket path (SO_PEERCRED
 * of a connection gives the listener's credentials), or -errno. With socket
 * activation that is systemd (pid 1). */
static pid_t socket_listener_pid(const char *path) {
        _cleanup_close_ int fd = unix_connect(path);
        if (fd < 0)
                return fd;
        struct ucred cr;
        socklen_t l = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0)
                return -errno;
        return cr.pid;
}

/* Is pid a tpmidd (an argv word whose basename is "tpmidd", so a wrapper
 * such as valgrind counts)? On true, *config gets its -c/--config argument
 * (heap, NULL when none). */
static bool pid_is_tpmidd(pid_t pid, char **config) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        if (read_full_file(path, CMDLINE_MAX_BYTES, &buf, &len) < 0 || len == 0)
                return false;
        bool found = false;
        *config = NULL;
        for (size_t i = 0; i < len; i += strlen(buf + i) + 1) {
                const char *w = buf + i, *base = strrchr(w, '/');
                base = base ? base + 1 : w;
                if (streq(base, "tpmidd"))
                        found = true;
                if (found && (streq(w, "-c") || streq(w, "--config")) && i + strlen(w) + 1 < len) {
                        free(*config);
                        *config = strdup(w + strlen(w) + 1);
                } else if (found && startswith(w, "--config=")) {
                        free(*config);
                        *config = strdup(w + strlen("--config="));
                }
        }
        if (!found) {
                free(*config);
                *config = NULL;
        }
        return found;
}

/* The same file (by device and inode). */
static bool same_file(const char *a, const char *b) {
        struct stat sa, sb;
        return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* A tpmidd running outside systemd that listens on sock: reload it with
 * SIGHUP when it reads out. Returns true when one was found (and the outcome
 * printed; *exit_code set when the signal could not be sent), false when
 * none listens or systemd does. */
static bool reload_foreground(const char *sock, const char *out, bool restart, int *exit_code) {
        pid_t pid = socket_listener_pid(sock);
        if (pid <= 1)
                return false; /* nobody listens, or systemd does (socket activation) */
        _cleanup_free_ char *cfg = NULL;
        if (!pid_is_tpmidd(pid, &cfg))
                return false;
        const char *reads = cfg ? cfg : CONFIG_APPLIED_PATH;
        if (!same_file(reads, out)) {
                printf("tpmidd (pid %d) listens on %s but reads %s, not %s: not reloading it.\n", (int)pid, sock,
                       reads, out);
                return true;
        }
        if (kill(pid, SIGHUP) < 0) {
                fprintf(stderr, "tpmidctl config apply: cannot send SIGHUP to tpmidd (pid %d): %s; the new "
                        "configuration is installed\n", (int)pid, strerror(errno));
                *exit_code = errno == EPERM ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE;
                return true;
        }
        printf("Reloaded tpmidd (pid %d, running outside systemd) with SIGHUP.\n", (int)pid);
        if (restart)
                printf("Some changes need a restart, which SIGHUP does not do: stop tpmidd (SIGTERM) and start it "
                       "again the way it was started.\n");
        return true;
}

static int verb_apply(int argc, char **argv) {
        enum { OPT_NO_RELOAD = 0x100, OPT_ROOT };
        static const struct option opts[] = {
                {"config", required_argument, NULL, 'c'},
                {"output", required_argument, NULL, 'o'},
                {"no-reload", no_argument, NULL, OPT_NO_RELOAD},
                {"root", required_argument, NULL, OPT_ROOT},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        const char *in_arg = NULL, *out_arg = NULL, *root = NULL;
        bool no_reload = false;
        int o;
        optind = 1;
        while ((o = getopt_long(argc, argv, "c:o:h", opts, NULL)) >= 0)
                switch (o) {
                case 'c':
                        in_arg = optarg;
                        break;
                case 'o':
                        out_arg = optarg;
                        break;
                case OPT_NO_RELOAD:
                        no_reload = true;
                        break;
                case OPT_ROOT:
                        root = optarg;
                        break;
                case 'h':
                        config_usage(stdout);
                        return CTL_EXIT_OK;
                default:
                        config_usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "tpmidctl config apply: unexpected argument '%s'\n", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        if (root && root[0] != '/') {
                fprintf(stderr, "tpmidctl config apply: --root needs an absolute directory, not '%s'\n", root);
                return CTL_EXIT_USAGE;
        }
        _cleanup_free_ char *in = ctl_prefixed(root, in_arg ? in_arg : config_path_from_env(CONFIG_DEFAULT_PATH));
        _cleanup_free_ char *out = ctl_prefixed(root, out_arg ? out_arg : CONFIG_APPLIED_PATH);
        _cleanup_free_ char *bak = NULL;
        if (!in || !out || asprintf(&bak, "%s.bak", out) < 0) {
                fprintf(stderr, "tpmidctl config apply: out of memory\n");
                return CTL_EXIT_FAILURE;
        }

        /* Installing the daemon's configuration is root's job; a test may
         * write elsewhere with --root or an -o it can write. */
        if (geteuid() != 0 && !root) {
                _cleanup_free_ char *dcopy = strdup(out);
                bool writable = out_arg && dcopy && access(dirname(dcopy), W_OK) == 0;
                if (!writable) {
                        fprintf(stderr, "tpmidctl config apply: this command must be run as root (it writes %s); "
                                "try: sudo tpmidctl config apply\n", out);
                        return CTL_EXIT_PERMISSION;
                }
        }

        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        int r = validate(in, &c, &d);
        print_diags(&d);
        if (r == -ENOMEM) {
                fprintf(stderr, "tpmidctl config apply: out of memory\n");
                config_diags_free(&d);
                return CTL_EXIT_FAILURE;
        }
        if (r < 0 || !c) {
                fprintf(stderr, "%s: the configuration is invalid (%zu error%s); nothing was written, %s is "
                        "unchanged\n", in, d.n_errors, d.n_errors == 1 ? "" : "s", out);
                config_diags_free(&d);
                return CTL_EXIT_CONFIG;
        }
        config_diags_free(&d);

        /* IoT Edge and aziot-identity-service (ctl-aziot.c): edged's
         * principal goes into the daemon's configuration; keyd's principal
         * for tpmidd and the marker that keeps aziot-identityd/aziot-tpmd
         * down are written even when the daemon's file is up to date. */
        bool act = !root && !no_reload && ctl_systemd_running();
        bool start_tpmidd = false;
        /* -o elsewhere (without --root): a configuration for some other
         * tpmidd; this system's aziot and keyd files are not its business. */
        bool system_wide = root || !out_arg || streq(out_arg, CONFIG_APPLIED_PATH);
        r = system_wide ? ctl_iotedge_add_principal(c, root) : 0;
        if (r >= 0 && system_wide)
                r = ctl_keyd_principal_apply(root, act);
        if (r >= 0 && system_wide) {
                r = ctl_aziot_replace(root, act);
                start_tpmidd = r > 0;
        }
        if (r < 0) {
                fprintf(stderr, "tpmidctl config apply: %s: %s; %s\n",
                        r == -E2BIG ? "too many [[principal]] entries for IoT Edge's" : "IoT Edge / aziot coexistence",
                        strerror(-r), start_tpmidd ? "" : "the daemon's configuration is unchanged");
                config_free(c);
                return r == -EACCES || r == -EPERM ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE;
        }
        if (system_wide && !act && !root && ctl_aziot_installed(NULL))
                printf("aziot-identity-service is installed: if aziot-identityd or aziot-tpmd run, stop them "
                       "(`systemctl stop aziot-identityd.service aziot-identityd.socket aziot-tpmd.service "
                       "aziot-tpmd.socket`) and restart tpmidd's sockets.\n");

        _cleanup_free_ char *header = NULL, *text = NULL;
        if (asprintf(&header, "This file is auto-generated by `tpmidctl config apply` from %s.\n"
                              "Do not edit it manually; edit %s and run `tpmidctl config apply` again.",
                     in_arg ? in_arg : config_path_from_env(CONFIG_DEFAULT_PATH),
                     in_arg ? in_arg : config_path_from_env(CONFIG_DEFAULT_PATH)) < 0 ||
            config_format_toml(c, header, &text) < 0) {
                fprintf(stderr, "tpmidctl config apply: out of memory\n");
                config_free(c);
                return CTL_EXIT_FAILURE;
        }
        size_t text_len = strlen(text);

        /* the previous applied config: for .bak and the reload decision */
        _cleanup_free_ char *old_text = NULL;
        size_t old_len = 0;
        int ro = read_full_file(out, CONFIG_MAX_FILE_BYTES, &old_text, &old_len);
        struct tpmid_config *old = NULL;
        if (ro == 0) {
                struct config_diags od = {0};
                (void)config_parse_string(old_text, old_len, out, &old, &od);
                config_diags_free(&od);
        }

        int exit_code = CTL_EXIT_OK;
        _cleanup_free_ char *why = NULL; /* before the first goto: done runs its cleanup */
        if (ro == 0 && old_len == text_len && memcmp(old_text, text, text_len) == 0) {
                printf("%s is already up to date; nothing to do.\n", out);
                if (start_tpmidd) {
                        char *cmd[] = {"systemctl", "start", TPMIDD_UNIT, NULL};
                        printf("Running: systemctl start %s\n", TPMIDD_UNIT);
                        fflush(stdout);
                        if (ctl_run(cmd, true) != 0) {
                                fprintf(stderr, "tpmidctl config apply: `systemctl start %s` failed; see "
                                        "`tpmidctl system logs`\n", TPMIDD_UNIT);
                                exit_code = CTL_EXIT_FAILURE;
                                goto done;
                        }
                }
                printf("tpmidd has been configured successfully!\n");
                goto done;
        }

        struct group *g = getgrnam(TPMIDD_GROUP);
        bool do_chown = geteuid() == 0 && g;
        gid_t gid = g ? g->gr_gid : 0;
        r = mkdir_parents(out, APPLIED_DIR_MODE);
        if (r < 0) {
                fprintf(stderr, "tpmidctl config apply: cannot create the directory of %s: %s\n", out, strerror(-r));
                exit_code = CTL_EXIT_FAILURE;
                goto done;
        }
        if (do_chown) {
                /* a directory we just made is root:root; the daemon (group aziottpm) must enter it */
                _cleanup_free_ char *dcopy = strdup(out);
                struct stat st;
                const char *dir = dcopy ? dirname(dcopy) : NULL; /* dirname() edits dcopy: call it once */
                if (dir && stat(dir, &st) == 0 && st.st_uid == 0 && st.st_gid == 0)
                        (void)chown(dir, 0, gid); /* best effort: packaging normally owns it */
        }
        if (ro == 0) {
                r = write_file_atomic_owned(bak, old_text, old_len, APPLIED_MODE, do_chown ? 0 : (uid_t)-1,
                                            do_chown ? gid : (gid_t)-1);
                if (r < 0) {
                        fprintf(stderr, "tpmidctl config apply: cannot keep the previous configuration as %s: %s; "
                                "nothing was changed\n", bak, strerror(-r));
                        exit_code = CTL_EXIT_FAILURE;
                        goto done;
                }
        }
        r = write_file_atomic_owned(out, text, text_len, APPLIED_MODE, do_chown ? 0 : (uid_t)-1,
                                    do_chown ? gid : (gid_t)-1);
        explicit_zero(text, text_len); /* it holds the hierarchy passwords */
        if (r < 0) {
                fprintf(stderr, "tpmidctl config apply: cannot write %s: %s; the previous configuration is "
                        "unchanged\n", out, strerror(-r));
                exit_code = CTL_EXIT_FAILURE;
                goto done;
        }
        printf("Wrote %s (mode 0640%s)%s%s.\n", out, do_chown ? ", root:" TPMIDD_GROUP : "",
               ro == 0 ? "; the previous one is in " : "", ro == 0 ? bak : "");

        /* reload or restart? */
        unsigned ch = old ? config_diff(old, c, &why) : CONFIG_CHANGED_RESTART;
        bool restart = ch & CONFIG_CHANGED_RESTART;
        if (!old)
                printf("No previous configuration: tpmidd needs a restart to use it.\n");
        else if (!ch)
                printf("No setting changed (only formatting): no reload needed.\n");
        else if (restart)
                printf("Changed: %s. TPM, endpoint, state or cloud settings changed, so tpmidd needs a "
                       "restart.\n", why ? why : "(several keys)");
        else
                printf("Changed: %s. These settings are reloadable, so a reload is enough.\n",
                       why ? why : "(several keys)");

        if (old && !ch && !start_tpmidd) {
                /* nothing for the daemon to do */
        } else if (root) {
                printf("--root given: not touching the running service; the configuration will take effect when "
                       "tpmidd starts.\n");
        } else if (no_reload) {
                printf("--no-reload given: run `systemctl %s %s` to use the new configuration.\n",
                       restart ? "restart" : "reload", TPMIDD_UNIT);
        } else if (reload_foreground(c->endpoints.tpmd_socket, out, restart, &exit_code)) {
                if (exit_code != CTL_EXIT_OK)
                        goto done;
        } else if (!ctl_systemd_running()) {
                printf("systemd is not running here and no tpmidd listens on %s: the configuration will take "
                       "effect when tpmidd starts.\n", c->endpoints.tpmd_socket);
        } else {
                char enabled[64] = "";
                char *is_enabled[] = {"systemctl", "is-enabled", TPMIDD_UNIT, NULL};
                int s = ctl_run_capture(is_enabled, enabled, sizeof enabled);
                if (s == 127 || s < 0) {
                        printf("systemctl is not available: the configuration will take effect when tpmidd "
                               "starts.\n");
                } else if (!streq(enabled, "enabled") && !streq(enabled, "static") && !streq(enabled, "alias") &&
                           !streq(enabled, "indirect")) {
                        /* The first apply: the package leaves the service off until
                         * there is a configuration (as aziotctl/iotedge config apply). */
                        char *cmd[] = {"systemctl", "enable", "--now", TPMIDD_UNIT, NULL};
                        printf("Running: systemctl enable --now %s (%s was %s)\n", TPMIDD_UNIT, TPMIDD_UNIT,
                               enabled[0] ? enabled : "not enabled");
                        fflush(stdout);
                        s = ctl_run(cmd, true);
                        if (s != 0) {
                                fprintf(stderr, "tpmidctl config apply: `systemctl enable --now %s` failed (exit "
                                        "%d); the new configuration is installed; see `tpmidctl system logs`\n",
                                        TPMIDD_UNIT, s);
                                exit_code = CTL_EXIT_FAILURE;
                                goto done;
                        }
                        printf("Enabled and started %s.\n", TPMIDD_UNIT);
                } else {
                        char *active[] = {"systemctl", "is-active", "--quiet", TPMIDD_UNIT, NULL};
                        s = ctl_run(active, false);
                        char *cmd[] = {"systemctl", s == 0 ? (restart ? "restart" : "reload") : "start",
                                       TPMIDD_UNIT, NULL};
                        printf("Running: systemctl %s %s\n", cmd[1], TPMIDD_UNIT);
                        fflush(stdout);
                        s = ctl_run(cmd, true);
                        if (s != 0) {
                                fprintf(stderr, "tpmidctl config apply: `systemctl %s %s` failed (exit %d); the "
                                        "new configuration is installed; see `tpmidctl system logs`\n", cmd[1],
                                        TPMIDD_UNIT, s);
                                exit_code = CTL_EXIT_FAILURE;
                                goto done;
                        }
                }
        }
        printf("tpmidd has been configured successfully!\n");
done:
        if (old_text)
                explicit_zero(old_text, old_len);
        config_free(old);
        config_free(c);
        return exit_code;
}

int ctl_config_main(int argc, char **argv) {
        if (argc < 2) {
                config_usage(stderr);
                return CTL_EXIT_USAGE;
        }
        const char *verb = argv[1];
        if (streq(verb, "--help") || streq(verb, "-h") || streq(verb, "help")) {
                config_usage(stdout);
                return CTL_EXIT_OK;
        }
        if (streq(verb, "check"))
                return verb_check(argc - 1, argv + 1);
        if (streq(verb, "apply"))
                return verb_apply(argc - 1, argv + 1);
        fprintf(stderr, "tpmidctl config: unknown verb '%s'\n", verb);
        config_usage(stderr);
        return CTL_EXIT_USAGE;
}
