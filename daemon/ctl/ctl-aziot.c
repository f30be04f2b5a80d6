/* tpmidd beside Microsoft's aziot-identity-service and IoT Edge.
 *
 * Coexistence. aziot-edge depends on aziot-identity-service, whose
 * aziot-identityd and aziot-tpmd units listen on the sockets tpmidd serves
 * (/run/aziot/identityd.sock, /run/aziot/tpmd.sock). The tpmidd package
 * installs the drop-in units/aziot-coexist.conf as 50-tpmidd.conf of those
 * four units: ConditionPathExists=!CTL_AZIOT_MARKER. `config apply` creates
 * the marker (and stops those units if they run); `system restore-aziot`
 * removes it and hands the sockets back. Why a condition and not a mask:
 * `iotedge config apply` / `aziotctl system restart` (aziotctl-common
 * src/system/restart.rs) run `systemctl stop` on every aziot service, then
 * `systemctl start` on every aziot socket and on the first service; a unit
 * whose condition fails "starts" with exit 0 and does nothing, a masked one
 * fails the start (and every unit with Requires= on it). aziot-keyd and
 * aziot-certd are not touched.
 *
 * IoT Edge. `iotedge config apply` (iotedge edgelet/iotedge/src/config/
 * apply.rs) gives aziot-edged (user iotedge) an identityd [[principal]] with
 * name "aziot-edge" and no idtype, and aziot-identityd (user aziotid) a keyd
 * principal for "aziot_identityd_master_id" (aziotctl-common config/apply.rs).
 * Where the iotedge user exists, `config apply` does the same for tpmidd: the
 * principal in the daemon's configuration, and a keyd drop-in
 * CTL_KEYD_DROPIN for tpmidd's user, mode 0600, owned by aziotks as aziotctl
 * writes keyd's files (keyd concatenates [[principal]] arrays across its
 * config.d files: config-common's merge_toml). */
#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "ctl.h"
#include "util.h"

#define IOTEDGE_USER "iotedge"        /* created by the aziot-edge package */
#define IOTEDGE_PRINCIPAL "aziot-edge" /* the name iotedge config apply gives edged in identityd's config */
#define TPMIDD_USER "aziottpm"
#define KEYD_USER "aziotks"
#define KEYD_MASTER_KEY "aziot_identityd_master_id"
#define KEYD_DIR "/etc/aziot/keyd"
#define KEYD_DROPIN_MODE 0600     /* as aziotctl/iotedge write keyd's config files */
#define KEYD_DROPIN_DIR_MODE 0700 /* /etc/aziot/keyd/config.d in aziot's package */
#define MARKER_MODE 0644
#define MARKER_DIR_MODE 0750
#define KEYD_DROPIN_MAX_BYTES 4096 /* bytes of a keyd drop-in we read back to compare */

static char *const aziot_units[] = {
        "aziot-identityd.service", "aziot-tpmd.service", "aziot-identityd.socket", "aziot-tpmd.socket",
};
static const char *const unit_dirs[] = {"/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"};

char *ctl_prefixed(const char *root, const char *path) {
        char *s = NULL;
        if (!root || !*root)
                return strdup(path);
        if (asprintf(&s, "%s%s%s", root, path[0] == '/' ? "" : "/", path) < 0)
                return NULL;
        return s;
}

/* The uid and gid of user name: from ROOT/etc/passwd under --root (the
 * image's users, not this machine's), else NSS. 0, -ENOENT or -errno. */
static int lookup_user(const char *root, const char *name, uid_t *uid, gid_t *gid) {
        if (root) {
                _cleanup_free_ char *p = ctl_prefixed(root, "/etc/passwd");
                if (!p)
                        return -ENOMEM;
                _cleanup_fclose_ FILE *f = fopen(p, "re");
                if (!f)
                        return errno == ENOENT ? -ENOENT : -errno;
                struct passwd *pw;
                while ((pw = fgetpwent(f)))
                        if (streq(pw->pw_name, name)) {
                                *uid = pw->pw_uid;
                                *gid = pw->pw_gid;
                                return 0;
                        }
                return -ENOENT;
        }
        errno = 0;
        struct passwd *pw = getpwnam(name);
        if (!pw)
                return errno ? -errno : -ENOENT;
        *uid = pw->pw_uid;
        *gid = pw->pw_gid;
        return 0;
}

static bool exists(const char *root, const char *path) {
        _cleanup_free_ char *p = ctl_prefixed(root, path);
        return p && access(p, F_OK) == 0;
}

static int mkdir_p(const char *path, mode_t last_mode) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, last_mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

bool ctl_aziot_installed(const char *root) {
        for (size_t i = 0; i < ELEMENTSOF(unit_dirs); i++) {
                _cleanup_free_ char *p = NULL;
                if (asprintf(&p, "%s/aziot-identityd.service", unit_dirs[i]) >= 0 && exists(root, p))
                        return true;
        }
        return false;
}

bool ctl_iotedge_present(const char *root) {
        uid_t u;
        gid_t g;
        return lookup_user(root, IOTEDGE_USER, &u, &g) == 0;
}

int ctl_iotedge_add_principal(struct tpmid_config *c, const char *root) {
        uid_t uid;
        gid_t gid;
        int r = lookup_user(root, IOTEDGE_USER, &uid, &gid);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_principals; i++)
                if (c->principals[i].uid == uid || streq_ptr(c->principals[i].name, IOTEDGE_PRINCIPAL)) {
                        printf("IoT Edge: %s keeps the [[principal]] the configuration gives uid %u (\"%s\").\n",
                               "tpmidd", (unsigned)c->principals[i].uid,
                               c->principals[i].name ? c->principals[i].name : "");
                        return 0;
                }
        if (c->n_principals >= CONFIG_MAX_PRINCIPALS)
                return -E2BIG;
        struct config_principal *arr = realloc(c->principals, (c->n_principals + 1) * sizeof *arr);
        if (!arr)
                return -ENOMEM;
        c->principals = arr;
        char *name = strdup(IOTEDGE_PRINCIPAL);
        if (!name)
                return -ENOMEM;
        arr[c->n_principals++] = (struct config_principal){
                .uid = uid,
                .name = name,
                .idtype = 0, /* aziot's daemon role, as iotedge config apply writes it for identityd */
                .allow = config_role_default_allow(0),
        };
        printf("IoT Edge: added [[principal]] uid = %u (user %s), name = \"%s\", no idtype (the daemon role), as "
               "`iotedge config apply` does for aziot-identityd.\n", (unsigned)uid, IOTEDGE_USER, IOTEDGE_PRINCIPAL);
        return 1;
}

static int systemctl_quiet(char *verb, char *unit) {
        char *av[] = {"systemctl", verb, "--quiet", unit, NULL};
        return ctl_run(av, false);
}

int ctl_keyd_principal_apply(const char *root, bool act) {
        _cleanup_free_ char *path = ctl_prefixed(root, CTL_KEYD_DROPIN);
        if (!path)
                return -ENOMEM;
        bool edge = ctl_iotedge_present(root);
        if (!edge || !exists(root, KEYD_DIR)) {
                if (unlink(path) == 0)
                        printf("Removed %s (%s).\n", path,
                               edge ? "aziot-keyd is not installed" : "IoT Edge (user " IOTEDGE_USER ") is gone");
                return 0;
        }
        uid_t tuid = 0, kuid = 0; /* set by lookup_user(); 0 only for the analyzer, which cannot see that */
        gid_t tgid = 0, kgid = 0;
        if (lookup_user(root, TPMIDD_USER, &tuid, &tgid) < 0) {
                printf("IoT Edge: user %s does not exist, so aziot-keyd gets no principal for tpmidd; install the "
                       "tpmidd package (it creates the user) and run `tpmidctl config apply` again.\n", TPMIDD_USER);
                return 0;
        }
        bool have_keyd_user = lookup_user(root, KEYD_USER, &kuid, &kgid) == 0;
        _cleanup_free_ char *text = NULL;
        if (asprintf(&text,
                     "# This file is auto-generated by `tpmidctl config apply`\n"
                     "# Do not edit it manually; any edits will be lost when the command is run again.\n"
                     "# tpmidd (user %s) serves the identity API in place of aziot-identityd and\n"
                     "# derives IoT Edge's module keys from aziot-keyd's master identity key.\n"
                     "\n"
                     "[[principal]]\n"
                     "uid = %u\n"
                     "keys = [\"%s\"]\n",
                     TPMIDD_USER, (unsigned)tuid, KEYD_MASTER_KEY) < 0)
                return -ENOMEM;
        _cleanup_free_ char *old = NULL;
        size_t old_len = 0;
        bool same = read_full_file(path, KEYD_DROPIN_MAX_BYTES, &old, &old_len) == 0 && old_len == strlen(text) &&
                    memcmp(old, text, old_len) == 0;
        bool own = geteuid() == 0 && have_keyd_user;
        if (same) {
                printf("%s is up to date.\n", path);
                return 0;
        }
        _cleanup_free_ char *dir = ctl_prefixed(root, KEYD_DIR "/config.d");
        if (!dir)
                return -ENOMEM;
        bool made = access(dir, F_OK) != 0;
        int r = mkdir_p(dir, KEYD_DROPIN_DIR_MODE);
        if (r < 0)
                return r;
        if (made && own && chown(dir, kuid, kgid) < 0) /* keyd (aziotks) must read it, as aziot's package has it */
                return -errno;
        r = write_file_atomic_owned(path, text, strlen(text), KEYD_DROPIN_MODE, own ? kuid : (uid_t)-1,
                                    own ? kgid : (gid_t)-1);
        if (r < 0)
                return r;
        printf("Wrote %s (mode 0600%s): aziot-keyd lets tpmidd (uid %u) use \"%s\".\n", path,
               own ? ", " KEYD_USER ":" KEYD_USER : "", (unsigned)tuid, KEYD_MASTER_KEY);
        if (act) {
                /* keyd reads its configuration at start only */
                char *av[] = {"systemctl", "try-restart", "aziot-keyd.service", NULL};
                if (ctl_run(av, true) == 0)
                        printf("Restarted aziot-keyd.service if it was running (it reads its principals at "
                               "start).\n");
        }
        return 1;
}

int ctl_aziot_replace(const char *root, bool act) {
        _cleanup_free_ char *path = ctl_prefixed(root, CTL_AZIOT_MARKER);
        _cleanup_free_ char *dcopy = path ? strdup(path) : NULL;
        if (!path || !dcopy)
                return -ENOMEM;
        static const char text[] =
                "# Written by `tpmidctl config apply`: tpmidd serves /run/aziot/identityd.sock and\n"
                "# /run/aziot/tpmd.sock, so aziot-identityd and aziot-tpmd do not start while this\n"
                "# file exists (ConditionPathExists= in their drop-ins 50-tpmidd.conf).\n"
                "# `tpmidctl system restore-aziot` removes it and starts them again.\n";
        bool installed = ctl_aziot_installed(root);
        if (access(path, F_OK) != 0) {
                char *slash = strrchr(dcopy, '/');
                if (slash && slash != dcopy) {
                        *slash = 0;
                        int r = mkdir_p(dcopy, MARKER_DIR_MODE);
                        if (r < 0)
                                return r;
                }
                int r = write_file_atomic(path, text, strlen(text), MARKER_MODE);
                if (r < 0)
                        return r;
                printf("Wrote %s: aziot-identityd and aziot-tpmd %s while tpmidd serves their sockets (undo: "
                       "`tpmidctl system restore-aziot`).\n", path, installed ? "stay stopped" : "will not start");
        }
        if (!act || !installed)
                return 0;
        /* Units started before the marker existed still run and listen. */
        char *stop[ELEMENTSOF(aziot_units) + 3] = {"systemctl", "stop"};
        size_t n = 2;
        bool socket_stopped = false;
        for (size_t i = 0; i < ELEMENTSOF(aziot_units); i++)
                if (systemctl_quiet("is-active", aziot_units[i]) == 0) {
                        stop[n++] = aziot_units[i];
                        socket_stopped = socket_stopped || strstr(aziot_units[i], ".socket");
                }
        stop[n] = NULL;
        if (n == 2)
                return 0;
        printf("Stopping aziot's units that hold tpmidd's sockets:");
        for (size_t i = 2; i < n; i++)
                printf(" %s", stop[i]);
        printf("\n");
        fflush(stdout);
        int s = ctl_run(stop, true);
        if (s != 0)
                return -EIO;
        if (socket_stopped) {
                /* The socket started last owns the path (systemd unlinks and
                 * binds again): tpmidd's listening sockets may be orphaned.
                 * Stop the service and bind them anew; the caller starts it. */
                char *down[] = {"systemctl", "stop", "tpmidd.service", "tpmidd-tpmd.socket", "tpmidd-identityd.socket",
                                NULL};
                char *up[] = {"systemctl", "start", "tpmidd-tpmd.socket", "tpmidd-identityd.socket", NULL};
                printf("Binding tpmidd's sockets again (aziot's held the paths).\n");
                fflush(stdout);
                if (ctl_run(down, true) != 0 || ctl_run(up, true) != 0)
                        return -EIO;
        }
        return 1;
}

static void restore_usage(FILE *f) {
        fputs("Usage: tpmidctl system restore-aziot [--root DIR]\n"
              "\n"
              "Undo what `tpmidctl config apply` did for aziot-identity-service: remove\n"
              CTL_AZIOT_MARKER " (aziot-identityd and aziot-tpmd may start again) and\n"
              CTL_KEYD_DROPIN ", stop and disable tpmidd and its sockets, and start\n"
              "aziot's sockets and aziot-identityd. `tpmidctl config apply` gives the sockets back to tpmidd.\n"
              "\n"
              "  --root DIR   act on the files under DIR only (no systemctl)\n",
              f);
}

int ctl_aziot_restore_main(int argc, char **argv) {
        enum { OPT_ROOT = 0x100 };
        static const struct option opts[] = {
                {"root", required_argument, NULL, OPT_ROOT},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        const char *root = NULL;
        int o;
        optind = 1;
        while ((o = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                switch (o) {
                case OPT_ROOT:
                        root = optarg;
                        break;
                case 'h':
                        restore_usage(stdout);
                        return CTL_EXIT_OK;
                default:
                        restore_usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "tpmidctl system restore-aziot: unexpected argument '%s'\n", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        if (root && root[0] != '/') {
                fprintf(stderr, "tpmidctl system restore-aziot: --root needs an absolute directory, not '%s'\n", root);
                return CTL_EXIT_USAGE;
        }
        if (!root && geteuid() != 0) {
                fprintf(stderr, "tpmidctl system restore-aziot: this command must be run as root; try: sudo "
                        "tpmidctl system restore-aziot\n");
                return CTL_EXIT_PERMISSION;
        }
        bool removed_keyd = false;
        const char *const files[] = {CTL_AZIOT_MARKER, CTL_KEYD_DROPIN};
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                _cleanup_free_ char *p = ctl_prefixed(root, files[i]);
                if (!p) {
                        fprintf(stderr, "tpmidctl system restore-aziot: out of memory\n");
                        return CTL_EXIT_FAILURE;
                }
                if (unlink(p) == 0) {
                        printf("Removed %s.\n", p);
                        removed_keyd = removed_keyd || i == 1;
                } else if (errno != ENOENT) {
                        fprintf(stderr, "tpmidctl system restore-aziot: cannot remove %s: %s\n", p, strerror(errno));
                        return errno == EACCES || errno == EPERM ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE;
                }
        }
        bool installed = ctl_aziot_installed(root);
        if (root || !ctl_systemd_running()) {
                printf("%s: units not touched. With systemd: `systemctl disable --now tpmidd.service "
                       "tpmidd-tpmd.socket tpmidd-identityd.socket`, then `systemctl start aziot-identityd.socket "
                       "aziot-tpmd.socket aziot-identityd.service`.\n",
                       root ? "--root given" : "systemd is not running");
                return CTL_EXIT_OK;
        }
        char *down[] = {"systemctl", "disable", "--now", "tpmidd.service", "tpmidd-tpmd.socket",
                        "tpmidd-identityd.socket", NULL};
        printf("Running: systemctl disable --now tpmidd.service tpmidd-tpmd.socket tpmidd-identityd.socket\n");
        fflush(stdout);
        if (ctl_run(down, true) != 0) {
                fprintf(stderr, "tpmidctl system restore-aziot: `systemctl disable --now` of tpmidd's units failed\n");
                return CTL_EXIT_FAILURE;
        }
        if (!installed) {
                printf("aziot-identity-service is not installed: nothing serves /run/aziot/identityd.sock and "
                       "tpmd.sock now. `tpmidctl config apply` starts tpmidd again.\n");
                return CTL_EXIT_OK;
        }
        char *sockets[] = {"systemctl", "start", "aziot-identityd.socket", "aziot-tpmd.socket", NULL};
        char *service[] = {"systemctl", "start", "aziot-identityd.service", NULL};
        printf("Running: systemctl start aziot-identityd.socket aziot-tpmd.socket aziot-identityd.service\n");
        fflush(stdout);
        if (ctl_run(sockets, true) != 0 || ctl_run(service, true) != 0) {
                fprintf(stderr, "tpmidctl system restore-aziot: starting aziot's units failed; see `journalctl -u "
                        "aziot-identityd`\n");
                return CTL_EXIT_FAILURE;
        }
        if (removed_keyd) {
                char *keyd[] = {"systemctl", "try-restart", "aziot-keyd.service", NULL};
                (void)ctl_run(keyd, true);
        }
        printf("aziot-identityd and aziot-tpmd serve their sockets again. `tpmidctl config apply` gives them back to "
               "tpmidd.\n");
        return CTL_EXIT_OK;
}
