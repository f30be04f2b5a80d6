/* tpmidctl check: health checks for a tpmidd device, each ok / warning /
 * error / skipped with what was found and, when not ok, the fix.
 *
 * Sources, in order of preference: the configuration files, the daemon's two
 * sockets (GET /get_tpm_keys, GET /status, an empty sign_with_auth_key as the
 * auth-key probe), the TPM itself (only when that cannot disturb the daemon:
 * the daemon is not running, or the TCTI is the kernel resource manager which
 * multiplexes clients), and TLS connections to DPS and the assigned hub.
 * A check that cannot run says why instead of guessing. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "api.h"
#include "config.h"
#include "config-diff.h"
#include "ctl-client.h"
#include "ctl-status.h"
#include "ctl.h"
#include "tpm.h"
#include "util.h"

#define CHECK_USER "aziottpm"               /* the daemon's user (sysusers.d/tpmidd.conf) */
#define CHECK_MAX_GROUPS 256                /* supplementary groups looked at for the TPM device check */
#define CHECK_TLS_TIMEOUT_SEC 10L           /* seconds per TLS connection test */
#define CHECK_CLOCK_SKEW_ERROR_SEC 300      /* seconds: SAS tokens and TLS fail beyond this */
#define CHECK_CLOCK_SKEW_WARN_SEC 30        /* seconds: worth fixing (NTP) */
#define CHECK_MIN_PLAUSIBLE_TIME 1704067200 /* 2024-01-01T00:00:00Z: a clock before this is certainly wrong */
#define CHECK_TEXT_MAX 1024                 /* bytes of a message or fix */
#define CHECK_CONNECT_TO_ENV "TPMIDD_CLOUD_CONNECT_TO" /* the daemon's cloud redirection (curl --connect-to) */
#define CHECK_WHY_MAX 600                   /* bytes of why direct TPM access is unavailable (a tpm_error msg + prefix) */
#define CHECK_JSON_SCHEMA_VERSION 1         /* of `check --json`; bumped when a member changes meaning */
#define CHECK_GROUP "aziottpm"              /* the sockets' group (SocketGroup= of the .socket units) */

/* What a caller who may not use the sockets or read the configuration does. */
#define CHECK_PERMISSION_FIX                                                                                    \
        "run 'sudo tpmidctl check', or add your user to group " CHECK_GROUP " ('sudo usermod -aG " CHECK_GROUP \
        " $USER', then log in again)"

enum check_result {
        CHECK_OK,
        CHECK_WARNING,
        CHECK_ERROR,
        CHECK_SKIPPED,
};

struct check_ctx {
        bool json;
        json_t *results; /* array, for --json */
        unsigned n_ok, n_warn, n_err, n_skip;

        const char *user_path;         /* the super-config (points into user_path_buf) */
        char *user_path_buf;           /* heap: --root prefix + the super-config path */
        char *applied_path;            /* heap: --root prefix + the daemon's copy */
        struct tpmid_config *user;     /* NULL when it does not load */
        struct tpmid_config *applied;  /* the daemon's copy, NULL when it does not load */
        const struct tpmid_config *cfg; /* what the daemon uses: applied, else user; may be NULL */

        char *tpmd_sock, *identity_sock;
        bool daemon_up;        /* the TPM socket answered */
        bool have_keys;
        struct tpm_public ek, srk;
        json_t *status;        /* GET /status answer, or NULL */

        struct tpm *tpm;       /* direct TPM access, lazily opened */
        bool tpm_tried;
        char tpm_why[CHECK_WHY_MAX]; /* why direct access is not available */

        int64_t server_time;   /* Date: from DPS or the hub, 0 = none */
};

static const char *result_name(enum check_result r) {
        switch (r) {
        case CHECK_OK:
                return "ok";
        case CHECK_WARNING:
                return "warning";
        case CHECK_ERROR:
                return "error";
        case CHECK_SKIPPED:
                return "skipped";
        }
        return "?";
}

/* Record one result. fix may be NULL. */
static void report(struct check_ctx *c, const char *id, enum check_result r, const char *fix, const char *fmt, ...)
        _printf_(5, 6);
static void report(struct check_ctx *c, const char *id, enum check_result r, const char *fix, const char *fmt, ...) {
        char msg[CHECK_TEXT_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        switch (r) {
        case CHECK_OK:
                c->n_ok++;
                break;
        case CHECK_WARNING:
                c->n_warn++;
                break;
        case CHECK_ERROR:
                c->n_err++;
                break;
        case CHECK_SKIPPED:
                c->n_skip++;
                break;
        }
        if (c->json) {
                json_t *o = json_pack("{s:s, s:s, s:s, s:s?}", "id", id, "result", result_name(r), "message", msg,
                                      "fix", r == CHECK_OK ? NULL : fix);
                if (o)
                        json_array_append_new(c->results, o);
                return;
        }
        static const char *const tag[] = { "[ok]     ", "[warning]", "[error]  ", "[skipped]" };
        printf("%s %s: %s\n", tag[r], id, msg);
        if (fix && r != CHECK_OK)
                printf("          fix: %s\n", fix);
        fflush(stdout);
}

static struct tpmid_config *load_quiet(const char *path, int *ret_r, char *first_err, size_t len,
                                       size_t *n_errors, size_t *n_warnings) {
        struct tpmid_config *cfg = NULL;
        struct config_diags d = {0};
        int r = config_load(path, &cfg, &d);
        if (r == 0) {
                int r2 = config_check_files(cfg, &d);
                if (r2 < 0) {
                        cfg = config_free(cfg);
                        r = r2;
                }
        }
        if (first_err && len) {
                first_err[0] = '\0';
                for (size_t i = 0; i < d.n; i++)
                        if (d.items[i].severity == CONFIG_SEVERITY_ERROR ||
                            (!first_err[0] && d.items[i].severity == CONFIG_SEVERITY_WARNING)) {
                                _cleanup_free_ char *s = config_format_diag(&d.items[i]);
                                snprintf(first_err, len, "%s", s ? s : "");
                                if (d.items[i].severity == CONFIG_SEVERITY_ERROR)
                                        break;
                        }
        }
        if (n_errors)
                *n_errors = d.n_errors;
        if (n_warnings)
                *n_warnings = d.n_warnings;
        config_diags_free(&d);
        *ret_r = r;
        return cfg;
}

/* ---- configuration ---- */

static void check_config_valid(struct check_ctx *c) {
        char first[CHECK_TEXT_MAX];
        size_t ne = 0, nw = 0;
        int r;
        c->user = load_quiet(c->user_path, &r, first, sizeof first, &ne, &nw);
        if (r == -ENOENT) {
                report(c, "config-valid", CHECK_ERROR,
                       "sudo cp /etc/aziot/config.toml.template /etc/aziot/config.toml, edit it, then run "
                       "'sudo tpmidctl config apply'",
                       "%s does not exist", c->user_path);
        } else if (r == -EACCES) {
                report(c, "config-valid", CHECK_ERROR, CHECK_PERMISSION_FIX,
                       "%s is not readable by this user, so nothing can be checked against it", c->user_path);
        } else if (!c->user) {
                report(c, "config-valid", CHECK_ERROR, "run 'tpmidctl config check' for every problem and fix them",
                       "%zu error%s; first: %s", ne, ne == 1 ? "" : "s", first);
        } else if (nw) {
                report(c, "config-valid", CHECK_WARNING, "run 'tpmidctl config check' and fix the warnings",
                       "%s is valid with %zu warning%s; first: %s", c->user_path, nw, nw == 1 ? "" : "s", first);
        } else
                report(c, "config-valid", CHECK_OK, NULL, "%s is valid", c->user_path);
}

static void check_config_applied(struct check_ctx *c) {
        const char *env = getenv(CONFIG_ENV_PATH);
        if (env && *env) {
                report(c, "config-applied", CHECK_SKIPPED, NULL,
                       "skipped: $%s is set, so the daemon and this check read %s directly", CONFIG_ENV_PATH, env);
                c->cfg = c->user;
                return;
        }
        struct stat su, sa;
        if (stat(c->applied_path, &sa) < 0) {
                int e = errno;
                if (e == EACCES)
                        report(c, "config-applied", CHECK_ERROR, CHECK_PERMISSION_FIX,
                               "%s is not accessible to this user", c->applied_path);
                else
                        report(c, "config-applied", CHECK_ERROR, "run 'sudo tpmidctl config apply'",
                               "%s does not exist: the configuration was never applied (%s)", c->applied_path,
                               strerror(e));
                c->cfg = c->user;
                return;
        }
        int r;
        char first[CHECK_TEXT_MAX];
        c->applied = load_quiet(c->applied_path, &r, first, sizeof first, NULL, NULL);
        c->cfg = c->applied ? c->applied : c->user;
        if (r == -EACCES) {
                report(c, "config-applied", CHECK_ERROR, CHECK_PERMISSION_FIX,
                       "%s is not readable by this user", c->applied_path);
                return;
        }
        if (!c->applied) {
                report(c, "config-applied", CHECK_ERROR, "run 'sudo tpmidctl config apply' (never edit the copy)",
                       "the daemon's copy %s does not load: %s", c->applied_path, first);
                return;
        }
        if (!c->user) {
                report(c, "config-applied", CHECK_SKIPPED, NULL,
                       "skipped: %s does not load, nothing to compare with", c->user_path);
                return;
        }
        _cleanup_free_ char *why = NULL;
        unsigned diff = config_diff(c->applied, c->user, &why);
        if (diff) {
                report(c, "config-applied", CHECK_WARNING, "run 'sudo tpmidctl config apply'",
                       "%s has changes the daemon does not use yet: %s", c->user_path, why ? why : "several keys");
                return;
        }
        if (stat(c->user_path, &su) == 0 && su.st_mtime > sa.st_mtime)
                report(c, "config-applied", CHECK_OK, NULL,
                       "%s was edited after the last apply, but with the same settings", c->user_path);
        else
                report(c, "config-applied", CHECK_OK, NULL, "%s is up to date", c->applied_path);
}

/* ---- TPM device ---- */

static void check_tpm_device(struct check_ctx *c) {
        const char *tcti = c->cfg ? c->cfg->tpm.tcti : TPM_DEFAULT_TCTI;
        const char *path;
        if (streq(tcti, "") || streq(tcti, "device"))
                path = "/dev/tpmrm0";
        else if (startswith(tcti, "device:"))
                path = tcti + strlen("device:");
        else {
                report(c, "tpm-device", CHECK_SKIPPED, NULL, "skipped: the TCTI is \"%s\", not a TPM device", tcti);
                return;
        }
        struct stat st;
        if (stat(path, &st) < 0) {
                int e = errno;
                bool rm = strstr(path, "tpmrm") != NULL;
                report(c, "tpm-device", CHECK_ERROR,
                       rm && access("/dev/tpm0", F_OK) == 0
                               ? "the kernel has /dev/tpm0 but no resource manager device (kernel < 4.12?): set "
                                 "tcti = \"device:/dev/tpm0\" in [tpm]"
                               : "enable the TPM in the firmware setup and load its driver (tpm_tis, tpm_crb or "
                                 "tpm_tis_spi); 'ls /sys/class/tpm' must list it",
                       "%s: %s", path, strerror(e));
                return;
        }
        if (!S_ISCHR(st.st_mode)) {
                report(c, "tpm-device", CHECK_ERROR, "point [tpm] tcti at the TPM character device",
                       "%s is not a character device", path);
                return;
        }
        struct passwd *pw = getpwnam(CHECK_USER);
        if (!pw) {
                report(c, "tpm-device", CHECK_ERROR,
                       "run 'sudo systemd-sysusers' (the package's sysusers.d/tpmidd.conf creates it)",
                       "%s exists, but the user %s does not", path, CHECK_USER);
                return;
        }
        uid_t uid = pw->pw_uid;
        gid_t pgid = pw->pw_gid;
        gid_t groups[CHECK_MAX_GROUPS];
        int ng = CHECK_MAX_GROUPS;
        if (getgrouplist(CHECK_USER, pgid, groups, &ng) < 0)
                ng = CHECK_MAX_GROUPS; /* truncated list: still a valid subset */
        mode_t need;
        const char *how;
        if (st.st_uid == uid) {
                need = S_IRUSR | S_IWUSR;
                how = "as its owner";
        } else {
                bool in = false;
                for (int i = 0; i < ng; i++)
                        in |= groups[i] == st.st_gid;
                need = in ? (S_IRGRP | S_IWGRP) : (S_IROTH | S_IWOTH);
                how = in ? "through its group" : "as other";
        }
        struct group *g = getgrgid(st.st_gid);
        struct passwd *o = getpwuid(st.st_uid);
        char owner[64], group[64];
        snprintf(owner, sizeof owner, "%s", o ? o->pw_name : "?");
        snprintf(group, sizeof group, "%s", g ? g->gr_name : "?");
        if ((st.st_mode & need) == need) {
                report(c, "tpm-device", CHECK_OK, NULL, "%s (%s:%s, mode %04o): %s can read and write it %s", path,
                       owner, group, (unsigned)(st.st_mode & 07777), CHECK_USER, how);
                return;
        }
        report(c, "tpm-device", CHECK_ERROR,
               "install the udev rule 70-tpmidd.rules (owner aziottpm, group tss, mode 0660) or Debian's tpm-udev "
               "and add the user to tss ('sudo usermod -aG tss aziottpm'), then 'sudo udevadm trigger "
               "--subsystem-match=tpm --subsystem-match=tpmrm'",
               "%s (%s:%s, mode %04o): %s cannot read and write it (it would access it %s)", path, owner, group,
               (unsigned)(st.st_mode & 07777), CHECK_USER, how);
}

/* ---- daemon ---- */

static void check_daemon(struct check_ctx *c) {
        char err[CHECK_TEXT_MAX];
        int r = ctl_client_get_tpm_keys(c->tpmd_sock, &c->ek, &c->srk, err, sizeof err);
        if (r == 0) {
                c->daemon_up = c->have_keys = true;
                report(c, "daemon-tpm-socket", CHECK_OK, NULL, "%s answers", c->tpmd_sock);
        } else if (r == -ENOENT || r == -ECONNREFUSED) {
                report(c, "daemon-tpm-socket", CHECK_ERROR,
                       "sudo systemctl start tpmidd-tpmd.socket tpmidd-identityd.socket tpmidd.service; see "
                       "'tpmidctl system status' and 'tpmidctl system logs'",
                       "%s", err);
        } else if (r == -EACCES) {
                c->daemon_up = true;
                report(c, "daemon-tpm-socket", CHECK_ERROR, CHECK_PERMISSION_FIX,
                       "this user may not use the TPM socket: %s", err);
        } else {
                c->daemon_up = r != -ETIMEDOUT && r != -EBADMSG;
                report(c, "daemon-tpm-socket", CHECK_ERROR, "see 'tpmidctl system logs'", "%s", err);
        }

        struct ctl_response resp = {0};
        r = ctl_client_request(c->identity_sock, "GET", "/status?api-version=" API_VERSION_2020_09_01, NULL, 0, &resp);
        if (r < 0) {
                if (r == -EACCES)
                        report(c, "daemon-identity-socket", CHECK_ERROR, CHECK_PERMISSION_FIX,
                               "this user may not use the identity socket %s: %s", c->identity_sock, strerror(-r));
                else
                        report(c, "daemon-identity-socket", CHECK_ERROR, "see 'tpmidctl system status'", "%s: %s",
                               c->identity_sock, strerror(-r));
                return;
        }
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        if (resp.status == 200 && json_is_object(j)) {
                c->status = j;
                report(c, "daemon-identity-socket", CHECK_OK, NULL, "%s answers", c->identity_sock);
        } else {
                const char *m = json_string_value(json_object_get(j, "message"));
                bool denied = resp.status == 401 || resp.status == 403;
                report(c, "daemon-identity-socket", CHECK_ERROR,
                       denied ? CHECK_PERMISSION_FIX : "see 'tpmidctl system logs'", "%s answered %d: %s",
                       c->identity_sock, resp.status, m ? m : resp.body);
                json_decref(j);
        }
        ctl_response_done(&resp);
}

/* Direct TPM access for what the daemon does not expose. Returns NULL and
 * fills c->tpm_why when it would be unsafe or is impossible. */
static struct tpm *direct_tpm(struct check_ctx *c) {
        if (c->tpm_tried)
                return c->tpm;
        c->tpm_tried = true;
        const char *tcti = c->cfg ? c->cfg->tpm.tcti : TPM_DEFAULT_TCTI;
        bool multiplexed = startswith(tcti, "device:/dev/tpmrm") || streq(tcti, "") || streq(tcti, "device");
        if (c->daemon_up && !multiplexed) {
                snprintf(c->tpm_why, sizeof c->tpm_why,
                         "tpmidd holds the TPM (TCTI \"%s\" takes one client at a time) and does not report this",
                         tcti);
                return NULL;
        }
        struct tpm_options o = {
                .tcti = tcti[0] ? tcti : NULL,
                .endorsement_auth = c->cfg ? c->cfg->tpm.endorsement_auth : NULL,
                .owner_auth = c->cfg ? c->cfg->tpm.owner_auth : NULL,
                .auth_key_index = c->cfg ? ctl_serving_key_index(c->cfg) : TPM_AUTH_KEY_INDEX_DEFAULT,
        };
        struct tpm_error e = {0};
        if (tpm_open(&o, &c->tpm, &e) < 0) {
                snprintf(c->tpm_why, sizeof c->tpm_why, "cannot open the TPM: %s", e.msg);
                c->tpm = NULL;
        }
        return c->tpm;
}

/* The TPM answers: through the daemon's status when it runs (it owns the
 * TPM), else by opening it directly. An unreachable TPM is an error here once;
 * the checks that need the TPM then say they were skipped. */
static void check_tpm_reachable(struct check_ctx *c) {
        const char *tcti = c->cfg ? c->cfg->tpm.tcti : TPM_DEFAULT_TCTI;
        char fix[CHECK_TEXT_MAX];
        snprintf(fix, sizeof fix,
                 "make sure the TPM is present and [tpm] tcti (\"%s\") names it, and that user %s may open it "
                 "(see tpm-device); then restart tpmidd and read 'tpmidctl system logs'",
                 tcti[0] ? tcti : "device:/dev/tpmrm0", CHECK_USER);
        json_t *tpm = json_object_get(c->status, "tpm");
        const char *state = json_string_value(json_object_get(tpm, "state"));
        if (state) {
                const char *err = json_string_value(json_object_get(tpm, "lastError"));
                if (streq(state, "ready"))
                        report(c, "tpm-reachable", CHECK_OK, NULL, "tpmidd uses the TPM");
                else
                        report(c, "tpm-reachable", CHECK_ERROR, fix, "tpmidd cannot use the TPM (%s)%s%s", state,
                               err ? ": " : "", err ? err : "");
                return;
        }
        if (c->daemon_up) {
                report(c, "tpm-reachable", CHECK_SKIPPED, NULL,
                       "skipped: tpmidd holds the TPM but its status is not available");
                return;
        }
        if (direct_tpm(c))
                report(c, "tpm-reachable", CHECK_OK, NULL, "the TPM answers (tpmidd is not running)");
        else
                report(c, "tpm-reachable", CHECK_ERROR, fix, "%s", c->tpm_why);
}

/* ---- TPM objects ---- */

static void check_primary_keys(struct check_ctx *c) {
        if (!c->have_keys) {
                struct tpm *t = direct_tpm(c);
                if (!t) {
                        report(c, "tpm-ek-srk", CHECK_SKIPPED, NULL, "skipped: %s", c->tpm_why);
                        return;
                }
                struct tpm_error e = {0};
                int r = tpm_get_keys(t, &c->ek, &c->srk, &e);
                if (r == -ENOENT) {
                        report(c, "tpm-ek-srk", CHECK_WARNING,
                               "run 'sudo tpmidctl tpm info' (creates them from the standard templates), or start "
                               "tpmidd, which does the same",
                               "the TPM has no EK at 0x%08x or no SRK at 0x%08x yet", TPM_EK_HANDLE, TPM_SRK_HANDLE);
                        return;
                }
                if (r == -EBADMSG) {
                        /* An object of another type at a primary's handle (tpm.c's sentence names it). */
                        report(c, "tpm-ek-srk", CHECK_ERROR,
                               "if nothing else uses it, evict it ('tpm2_evictcontrol -C o -c HANDLE') and let "
                               "'sudo tpmidctl tpm info' create the standard key from the TCG template",
                               "%s", e.msg);
                        return;
                }
                if (r < 0) {
                        report(c, "tpm-ek-srk", CHECK_ERROR,
                               "check [tpm.hierarchy_authorization] and the TPM with 'tpmidctl tpm info'",
                               "reading EK/SRK failed: %s", e.msg);
                        return;
                }
                c->have_keys = true;
        }
        char why[CHECK_TEXT_MAX] = "";
        if (tpm_public_check_storage_key(c->ek.buf, c->ek.len, false, why, sizeof why) < 0) {
                report(c, "tpm-ek-srk", CHECK_ERROR,
                       "DPS needs an RSA-2048 EK: evict the object at 0x81010001 (tpm2_evictcontrol) and let "
                       "'tpmidctl tpm info' create the standard one",
                       "the EK at 0x%08x is not the expected RSA-2048 restricted decryption key: %s", TPM_EK_HANDLE, why);
                return;
        }
        if (tpm_public_check_storage_key(c->srk.buf, c->srk.len, true, why, sizeof why) < 0) {
                report(c, "tpm-ek-srk", CHECK_ERROR,
                       "evict the object at 0x81000001 (tpm2_evictcontrol) and let 'tpmidctl tpm info' create the "
                       "standard SRK",
                       "the SRK at 0x%08x is not the expected RSA-2048 storage key: %s", TPM_SRK_HANDLE, why);
                return;
        }
        report(c, "tpm-ek-srk", CHECK_OK, NULL, "EK at 0x%08x and SRK at 0x%08x are RSA-2048 storage keys",
               TPM_EK_HANDLE, TPM_SRK_HANDLE);
}

static const char *status_str(const struct check_ctx *c, const char *obj, const char *key) {
        return json_string_value(json_object_get(json_object_get(c->status, obj), key));
}

static void check_auth_key(struct check_ctx *c) {
        bool dps = c->cfg && c->cfg->provisioning.source == CONFIG_SOURCE_DPS;
        const char *pstate = status_str(c, "provisioning", "state");
        bool provisioned = pstate && streq(pstate, "provisioned");
        int present = -1; /* -1 unknown, 0 no, 1 yes */
        char detail[CHECK_TEXT_MAX] = "";

        if (c->daemon_up) {
                struct ctl_response resp = {0};
                int r = ctl_client_request(c->tpmd_sock, "POST",
                                           "/sign_with_auth_key?api-version=" CTL_CLIENT_TPMD_API_VERSION,
                                           "{\"data\":\"\"}", 0, &resp);
                if (r == 0 && resp.status == 200)
                        present = 1;
                else if (r == 0 && resp.status == 500 && strstr(resp.body, "no authentication key"))
                        present = 0;
                else if (r == 0)
                        snprintf(detail, sizeof detail, "the sign probe answered %d", resp.status);
                else
                        snprintf(detail, sizeof detail, "the sign probe failed: %s", strerror(-r));
                if (r == 0 && resp.status == 403) {
                        ctl_response_done(&resp);
                        report(c, "tpm-auth-key", CHECK_ERROR, CHECK_PERMISSION_FIX,
                               "this user may not call sign_with_auth_key, so the key cannot be probed");
                        return;
                }
                ctl_response_done(&resp);
        }
        if (present < 0) {
                struct tpm *t = direct_tpm(c);
                if (t) {
                        bool p = false;
                        struct tpm_error e = {0};
                        if (tpm_has_auth_key(t, &p, &e) == 0)
                                present = p;
                        else
                                snprintf(detail, sizeof detail, "%s", e.msg);
                } else if (!detail[0])
                        snprintf(detail, sizeof detail, "%s", c->tpm_why);
        }
        uint32_t handle = TPM_AUTH_KEY_BASE + (c->cfg ? ctl_serving_key_index(c->cfg) : TPM_AUTH_KEY_INDEX_DEFAULT);
        if (present < 0)
                report(c, "tpm-auth-key", CHECK_SKIPPED, NULL, "skipped: %s", detail);
        else if (present)
                report(c, "tpm-auth-key", CHECK_OK, NULL, "an authentication key is present at 0x%08x", handle);
        else if (!dps)
                report(c, "tpm-auth-key", CHECK_OK, NULL,
                       "no authentication key at 0x%08x (none needed: provisioning source is not DPS)", handle);
        else if (provisioned)
                report(c, "tpm-auth-key", CHECK_ERROR, "run 'sudo tpmidctl system reprovision'",
                       "the daemon reports a provisioned identity but there is no authentication key at 0x%08x",
                       handle);
        else
                report(c, "tpm-auth-key", CHECK_WARNING,
                       "DPS registration imports it; see 'tpmidctl system status' for its progress",
                       "no authentication key at 0x%08x yet", handle);
}

static void check_da(struct check_ctx *c) {
        struct tpm *t = direct_tpm(c);
        if (!t) {
                report(c, "tpm-da-lockout", CHECK_SKIPPED, NULL, "skipped: %s", c->tpm_why);
                return;
        }
        struct tpm_da_info da = {0};
        struct tpm_error e = {0};
        if (tpm_da_info(t, &da, &e) < 0) {
                report(c, "tpm-da-lockout", CHECK_ERROR, "check the TPM with 'tpmidctl tpm info'",
                       "reading the dictionary-attack state failed: %s", e.msg);
                return;
        }
        if (da.in_lockout)
                report(c, "tpm-da-lockout", CHECK_ERROR,
                       "wait for the recovery time, or clear it with the lockout password "
                       "('tpm2_dictionarylockout --clear-lockout -p LOCKOUT-AUTH'); check [tpm.hierarchy_authorization]",
                       "the TPM is in dictionary-attack lockout (%" PRIu32 "/%" PRIu32 " failures; recovery %" PRIu32
                       " s per failure)",
                       da.lockout_counter, da.max_auth_fail, da.lockout_recovery);
        else if (da.lockout_counter > 0)
                report(c, "tpm-da-lockout", CHECK_WARNING,
                       "check the hierarchy passwords in [tpm.hierarchy_authorization]; the counter drops by one "
                       "every lockout_interval",
                       "%" PRIu32 " of %" PRIu32 " authorization failures counted (lockout at %" PRIu32 ")",
                       da.lockout_counter, da.max_auth_fail, da.max_auth_fail);
        else
                report(c, "tpm-da-lockout", CHECK_OK, NULL, "no authorization failures counted (lockout after %" PRIu32 ")",
                       da.max_auth_fail);
}

static bool is_hex64(const char *s) {
        if (strlen(s) != 64)
                return false;
        for (; *s; s++)
                if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
                        return false;
        return true;
}

static void check_registration_id(struct check_ctx *c) {
        if (!c->cfg || c->cfg->provisioning.source != CONFIG_SOURCE_DPS) {
                report(c, "registration-id", CHECK_SKIPPED, NULL, "skipped: %s",
                       c->cfg ? "provisioning source is not DPS" : "no configuration loads");
                return;
        }
        if (!c->have_keys) {
                report(c, "registration-id", CHECK_SKIPPED, NULL, "skipped: the endorsement key could not be read");
                return;
        }
        _cleanup_free_ char *derived = tpm_registration_id(c->ek.buf, c->ek.len);
        if (!derived) {
                report(c, "registration-id", CHECK_ERROR, "free some memory and run the check again",
                       "out of memory");
                return;
        }
        const char *conf = c->cfg->provisioning.registration_id;
        const char *used = status_str(c, "provisioning", "registrationId");
        if (used && !streq(used, conf ? conf : derived)) {
                report(c, "registration-id", CHECK_WARNING, "run 'sudo tpmidctl config apply' (or restart tpmidd)",
                       "the daemon uses registration id %s, the configuration gives %s", used, conf ? conf : derived);
                return;
        }
        if (!conf)
                report(c, "registration-id", CHECK_OK, NULL,
                       "%s, derived from the EK; the DPS enrollment must use it", derived);
        else if (streq(conf, derived))
                report(c, "registration-id", CHECK_OK, NULL, "%s matches the EK", conf);
        else if (is_hex64(conf))
                report(c, "registration-id", CHECK_WARNING,
                       "if the enrollment was made for another TPM (or this one was cleared), enrol this EK "
                       "('tpmidctl tpm info') or remove registration_id to use the derived one",
                       "registration_id %s looks derived from an EK, but this TPM's EK gives %s", conf, derived);
        else
                report(c, "registration-id", CHECK_WARNING,
                       "fine if the DPS enrollment uses this id; otherwise remove registration_id to use the "
                       "EK-derived one",
                       "registration_id %s (a custom id) is not the EK-derived one, %s", conf, derived);
}

/* ---- provisioning ---- */

static void format_utc(int64_t t, char *buf, size_t len) {
        time_t tt = (time_t)t;
        struct tm tm;
        if (!gmtime_r(&tt, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
                snprintf(buf, len, "%" PRId64, t);
}

/* The daemon's provisioning state, its last DPS result with the fix, and
 * the next retry, from GET /status. */
static void check_provisioning(struct check_ctx *c) {
        if (c->cfg && c->cfg->provisioning.source != CONFIG_SOURCE_DPS) {
                report(c, "provisioning", CHECK_SKIPPED, NULL, "skipped: provisioning source is not DPS");
                return;
        }
        if (!c->status) {
                report(c, "provisioning", CHECK_SKIPPED, NULL,
                       "skipped: the daemon's status is not available (see daemon-identity-socket)");
                return;
        }
        json_t *prov = json_object_get(c->status, "provisioning");
        const char *state = json_string_value(json_object_get(prov, "state"));
        if (!state) {
                report(c, "provisioning", CHECK_SKIPPED, NULL,
                       "skipped: the daemon's status has no provisioning.state (an older tpmidd?)");
                return;
        }
        json_t *last = json_object_get(prov, "lastResult");
        json_t *next = json_object_get(prov, "nextRetryAt");
        const char *endpoint = c->cfg ? c->cfg->provisioning.global_endpoint : NULL;
        char fixbuf[CHECK_TEXT_MAX], when[128] = "", lastmsg[CHECK_TEXT_MAX] = "";
        const char *what = NULL, *fix = NULL;
        bool bad = ctl_status_explain(last, endpoint, fixbuf, sizeof fixbuf, &what, &fix);
        if (json_is_object(last)) {
                json_t *code = json_object_get(last, "errorCode");
                const char *st = json_string_value(json_object_get(last, "status"));
                const char *m = json_string_value(json_object_get(last, "message"));
                char codebuf[32] = "";
                if (json_is_integer(code))
                        snprintf(codebuf, sizeof codebuf, " %" JSON_INTEGER_FORMAT, json_integer_value(code));
                snprintf(lastmsg, sizeof lastmsg, "last DPS result: %s%s%s%s", st ? st : "?", codebuf, m ? ": " : "",
                         m ? m : "");
        }
        if (json_is_integer(next)) {
                int64_t n = json_integer_value(next), now = (int64_t)time(NULL);
                char t[40];
                format_utc(n, t, sizeof t);
                snprintf(when, sizeof when, "next attempt %s (in %" PRId64 " s)", t, n > now ? n - now : 0);
        }
        const char *hub = ctl_status_str(c->status, "provisioning", "hubName");
        const char *dev = ctl_status_str(c->status, "provisioning", "deviceId");
        if (streq(state, "provisioned") && json_is_false(json_object_get(prov, "persisted")))
                /* served, but lost at the next restart until the daemon's save retry succeeds */
                report(c, "provisioning", CHECK_WARNING, "free space in the state directory (state_dir)",
                       "provisioned: device %s on %s, but identity not persisted (the daemon retries the save)%s%s",
                       dev ? dev : "?", hub ? hub : "?", lastmsg[0] ? "; " : "", lastmsg);
        else if (streq(state, "provisioned"))
                report(c, "provisioning", CHECK_OK, NULL, "provisioned: device %s on %s%s%s", dev ? dev : "?",
                       hub ? hub : "?", lastmsg[0] ? "; " : "", lastmsg);
        else if (ctl_status_provisioning_failed(c->status))
                report(c, "provisioning", CHECK_ERROR,
                       fix ? fix : "fix the enrollment or [provisioning], then run 'sudo tpmidctl system reprovision'",
                       "provisioning failed: %s; %s", what ? what : "DPS refused the device",
                       lastmsg[0] ? lastmsg : "no DPS result recorded");
        else if (streq(state, "backing-off"))
                /* Without an identity nothing on the device works: an error. */
                report(c, "provisioning", hub ? CHECK_WARNING : CHECK_ERROR,
                       fix ? fix : "see 'tpmidctl system logs'", "%s: %s%s%s%s%s",
                       hub ? "serving the previous identity, but DPS registration is retrying"
                           : "not provisioned, DPS registration is retrying",
                       what ? what : "the last attempt failed", lastmsg[0] ? "; " : "", lastmsg, when[0] ? "; " : "",
                       when);
        else
                report(c, "provisioning", CHECK_WARNING, "wait, and follow it with 'tpmidctl system status'",
                       "not provisioned yet: %s%s%s%s%s", state, bad ? "; " : "", bad ? what : "",
                       when[0] ? "; " : "", when);
}

/* ---- network ---- */

static size_t header_cb(char *buf, size_t size, size_t n, void *userdata) {
        int64_t *t = userdata;
        size_t len = size * n;
        if (len > 5 && strncasecmp(buf, "date:", 5) == 0) {
                char line[128];
                size_t k = len - 5 < sizeof line - 1 ? len - 5 : sizeof line - 1;
                memcpy(line, buf + 5, k);
                line[k] = '\0';
                time_t d = curl_getdate(line, NULL);
                if (d > 0)
                        *t = (int64_t)d;
        }
        return len;
}

static size_t discard_cb(char *buf, size_t size, size_t n, void *userdata) {
        return size * n;
}

/* HEAD url over TLS. Returns 0 when the TLS session was established (any
 * HTTP status), else -1 with err filled. *date gets the server's Date:. */
static int tls_probe(const char *url, const char *ca_bundle, int64_t *date, char *err, size_t errlen) {
        CURL *h = curl_easy_init();
        if (!h) {
                snprintf(err, errlen, "out of memory");
                return -1;
        }
        char ebuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, CHECK_TLS_TIMEOUT_SEC);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, date);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_cb);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        if (ca_bundle)
                curl_easy_setopt(h, CURLOPT_CAINFO, ca_bundle);
        /* The daemon's cloud redirection ("HOST:PORT:HOST2:PORT2,..." as curl's
         * --connect-to), so the check reaches what the daemon reaches. */
        struct curl_slist *connect_to = NULL;
        const char *ct = getenv(CHECK_CONNECT_TO_ENV);
        if (ct && *ct) {
                _cleanup_free_ char *copy = strdup(ct);
                char *save = NULL;
                for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
                        struct curl_slist *n = curl_slist_append(connect_to, tok);
                        if (!n)
                                break;
                        connect_to = n;
                }
                curl_easy_setopt(h, CURLOPT_CONNECT_TO, connect_to);
        }
        CURLcode rc = curl_easy_perform(h);
        curl_easy_cleanup(h);
        curl_slist_free_all(connect_to);
        if (rc != CURLE_OK) {
                snprintf(err, errlen, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
                return -1;
        }
        return 0;
}

static void check_dps(struct check_ctx *c) {
        if (!c->cfg || c->cfg->provisioning.source != CONFIG_SOURCE_DPS) {
                report(c, "dps-endpoint", CHECK_SKIPPED, NULL, "skipped: %s",
                       c->cfg ? "provisioning source is not DPS" : "no configuration loads");
                return;
        }
        char err[CHECK_TEXT_MAX], hp[256], fix[CHECK_TEXT_MAX];
        const char *url = c->cfg->provisioning.global_endpoint;
        ctl_url_host_port(url, hp, sizeof hp);
        snprintf(fix, sizeof fix,
                 "allow outbound HTTPS to %s (TCP port %s); check DNS, proxy and firewall, and cloud_ca_bundle if set",
                 hp, strrchr(hp, ':') ? strrchr(hp, ':') + 1 : "443");
        if (tls_probe(url, c->cfg->cloud_ca_bundle, &c->server_time, err, sizeof err) < 0)
                report(c, "dps-endpoint", CHECK_ERROR, fix, "%s: %s", url, err);
        else
                report(c, "dps-endpoint", CHECK_OK, NULL, "%s: TLS connection established", url);
}

static void check_hub(struct check_ctx *c) {
        const char *hub = status_str(c, "provisioning", "hubName");
        if (!hub) {
                report(c, "iothub-endpoint", CHECK_SKIPPED, NULL, "skipped: %s",
                       c->status ? "no IoT Hub assigned yet" : "the daemon's status is not available");
                return;
        }
        char url[512], err[CHECK_TEXT_MAX];
        snprintf(url, sizeof url, "https://%s/", hub);
        int64_t date = 0;
        if (tls_probe(url, c->cfg ? c->cfg->cloud_ca_bundle : NULL, &date, err, sizeof err) < 0)
                report(c, "iothub-endpoint", CHECK_ERROR,
                       "allow outbound HTTPS to the hub (TCP port 443); check DNS, proxy and firewall", "%s: %s", hub,
                       err);
        else
                report(c, "iothub-endpoint", CHECK_OK, NULL, "%s: TLS connection established", hub);
        if (!c->server_time)
                c->server_time = date;
}

static void check_clock(struct check_ctx *c) {
        int64_t now = (int64_t)time(NULL);
        if (now < CHECK_MIN_PLAUSIBLE_TIME) {
                report(c, "clock", CHECK_ERROR, "enable time synchronisation (systemd-timesyncd, chrony)",
                       "the system clock says %" PRId64 ", before 2024: TLS and SAS tokens cannot work", now);
                return;
        }
        if (!c->server_time) {
                report(c, "clock", CHECK_SKIPPED, NULL,
                       "skipped: no server time to compare with (DPS/hub not reached); the clock is at least after 2024");
                return;
        }
        int64_t skew = now - c->server_time;
        int64_t a = skew < 0 ? -skew : skew;
        if (a > CHECK_CLOCK_SKEW_ERROR_SEC)
                report(c, "clock", CHECK_ERROR, "enable time synchronisation (systemd-timesyncd, chrony)",
                       "the clock is %" PRId64 " s %s the server's: SAS tokens will be refused", a,
                       skew > 0 ? "ahead of" : "behind");
        else if (a > CHECK_CLOCK_SKEW_WARN_SEC)
                report(c, "clock", CHECK_WARNING, "enable time synchronisation (systemd-timesyncd, chrony)",
                       "the clock is %" PRId64 " s %s the server's", a, skew > 0 ? "ahead of" : "behind");
        else
                report(c, "clock", CHECK_OK, NULL, "within %" PRId64 " s of the server's clock", a);
}

/* ---- entry ---- */

/* Every check, in the order they run (later ones use what earlier ones
 * found: the configuration, the daemon's keys and status, DPS's Date). */
static const struct check_def {
        const char *id;
        const char *what;
        void (*fn)(struct check_ctx *c);
} checks[] = {
        { "config-valid", "the configuration file loads and validates", check_config_valid },
        { "config-applied", "the daemon's copy exists and matches the configuration", check_config_applied },
        { "tpm-device", "the TPM device node exists and the daemon's user may open it", check_tpm_device },
        { "daemon-tpm-socket", "tpmidd answers on the TPM socket (get_tpm_keys)", check_daemon },
        { "daemon-identity-socket", "tpmidd answers on the identity socket (GET /status)", NULL },
        { "tpm-reachable", "the TPM answers (through tpmidd when it runs)", check_tpm_reachable },
        { "tpm-ek-srk", "EK and SRK are the standard RSA-2048 storage keys", check_primary_keys },
        { "tpm-auth-key", "the DPS authentication key is imported", check_auth_key },
        { "tpm-da-lockout", "the TPM is not in (or near) dictionary-attack lockout", check_da },
        { "registration-id", "the registration id is the one derived from the EK", check_registration_id },
        { "provisioning", "DPS provisioning state, last DPS result and next retry", check_provisioning },
        { "dps-endpoint", "the DPS endpoint is reachable over TLS", check_dps },
        { "iothub-endpoint", "the assigned IoT Hub is reachable over TLS", check_hub },
        { "clock", "the system clock agrees with DPS's (or the hub's) Date", check_clock },
};

static void check_usage(FILE *f) {
        fputs("Usage: tpmidctl check [-o text|json] [--json] [--warnings-as-errors] [--root DIR]\n"
              "       tpmidctl check --list [-o text|json]\n"
              "\n"
              "Health checks of a tpmidd device, each ok, warning, error or skipped (with why), and\n"
              "for a warning or an error the fix. Exit 0 when no check reported an error, 1\n"
              "otherwise (see tpmidctl(1), EXIT STATUS).\n"
              "\n"
              "  --list                  every check's id and what it checks\n"
              "  -o, --output FORMAT     text (default) or json: {\"schemaVersion\",\"checks\":[{\"id\",\n"
              "                          \"result\",\"message\",\"fix\"}],\"summary\"}\n"
              "      --json              the same as -o json\n"
              "      --warnings-as-errors  exit 1 on a warning too\n"
              "      --root DIR          read the configuration files under DIR (an image, a test)\n",
              f);
}

static int check_list(bool json) {
        json_t *arr = json ? json_array() : NULL;
        for (size_t i = 0; i < ELEMENTSOF(checks); i++) {
                if (json)
                        json_array_append_new(arr, json_pack("{s:s, s:s}", "id", checks[i].id, "description",
                                                             checks[i].what));
                else
                        printf("%-24s %s\n", checks[i].id, checks[i].what);
        }
        if (!json)
                return CTL_EXIT_OK;
        json_t *o = json_pack("{s:i, s:o}", "schemaVersion", CHECK_JSON_SCHEMA_VERSION, "checks", arr);
        char *txt = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        if (!txt) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        printf("%s\n", txt);
        free(txt);
        return CTL_EXIT_OK;
}

int ctl_check_main(int argc, char **argv) {
        enum { OPT_JSON = 0x100, OPT_ROOT, OPT_LIST, OPT_WAE };
        static const struct option opts[] = {
                { "json", no_argument, NULL, OPT_JSON },
                { "output", required_argument, NULL, 'o' },
                { "list", no_argument, NULL, OPT_LIST },
                { "warnings-as-errors", no_argument, NULL, OPT_WAE },
                { "root", required_argument, NULL, OPT_ROOT },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        struct check_ctx c = {0};
        const char *root = NULL;
        bool list = false, warnings_as_errors = false;
        int o;
        optind = 1;
        while ((o = getopt_long(argc, argv, "ho:", opts, NULL)) >= 0)
                switch (o) {
                case OPT_JSON:
                        c.json = true;
                        break;
                case 'o':
                        if (streq(optarg, "json"))
                                c.json = true;
                        else if (streq(optarg, "text"))
                                c.json = false;
                        else {
                                fprintf(stderr, "tpmidctl check: -o takes text or json, not '%s'\n", optarg);
                                return CTL_EXIT_USAGE;
                        }
                        break;
                case OPT_LIST:
                        list = true;
                        break;
                case OPT_WAE:
                        warnings_as_errors = true;
                        break;
                case OPT_ROOT:
                        if (optarg[0] != '/') {
                                fprintf(stderr, "tpmidctl check: --root needs an absolute directory, not '%s'\n",
                                        optarg);
                                return CTL_EXIT_USAGE;
                        }
                        root = optarg;
                        break;
                case 'h':
                        check_usage(stdout);
                        return CTL_EXIT_OK;
                default:
                        check_usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "tpmidctl check: unexpected argument '%s'\n", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        if (list)
                return check_list(c.json);
        if (c.json && !(c.results = json_array())) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        /* The TSS prints its own ERROR lines for a missing TPM; the checks
         * already say it once, with the fix. */
        setenv("TSS2_LOG", "all+none", 0);

        int code = CTL_EXIT_OK;
        if (asprintf(&c.user_path_buf, "%s%s", root ? root : "", config_path_from_env(CONFIG_DEFAULT_PATH)) < 0)
                c.user_path_buf = NULL; /* asprintf leaves it undefined on failure */
        if (asprintf(&c.applied_path, "%s%s", root ? root : "", CONFIG_APPLIED_PATH) < 0)
                c.applied_path = NULL;
        if (!c.user_path_buf || !c.applied_path) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                code = CTL_EXIT_FAILURE;
                goto out;
        }
        c.user_path = c.user_path_buf;
        for (size_t i = 0; i < ELEMENTSOF(checks); i++) {
                if (streq(checks[i].id, "tpm-device")) {
                        /* The sockets of the configuration the daemon uses (as checked above). */
                        c.tpmd_sock = c.cfg ? strdup(c.cfg->endpoints.tpmd_socket) : ctl_client_tpmd_socket();
                        c.identity_sock = strdup(c.cfg ? c.cfg->endpoints.identityd_socket
                                                       : CONFIG_DEFAULT_IDENTITYD_SOCKET);
                        if (!c.tpmd_sock || !c.identity_sock) {
                                fprintf(stderr, "tpmidctl: out of memory\n");
                                code = CTL_EXIT_FAILURE;
                                goto out;
                        }
                }
                if (checks[i].fn) /* NULL: reported by the check before it (one probe, two results) */
                        checks[i].fn(&c);
        }

        if (c.json) {
                json_t *doc = json_pack("{s:i, s:O, s:{s:i, s:i, s:i, s:i}}", "schemaVersion",
                                        CHECK_JSON_SCHEMA_VERSION, "checks", c.results, "summary", "ok", c.n_ok,
                                        "warnings", c.n_warn, "errors", c.n_err, "skipped", c.n_skip);
                char *txt = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
                json_decref(doc);
                if (!txt) {
                        fprintf(stderr, "tpmidctl: out of memory\n");
                        code = CTL_EXIT_FAILURE;
                        goto out;
                }
                printf("%s\n", txt);
                free(txt);
        } else
                printf("\n%u ok, %u warning%s, %u error%s, %u skipped.\n", c.n_ok, c.n_warn, c.n_warn == 1 ? "" : "s",
                       c.n_err, c.n_err == 1 ? "" : "s", c.n_skip);
        code = c.n_err || (warnings_as_errors && c.n_warn) ? CTL_EXIT_FAILURE : CTL_EXIT_OK;
out:
        tpm_close(c.tpm);
        json_decref(c.status);
        json_decref(c.results);
        config_free(c.user);
        config_free(c.applied);
        free(c.tpmd_sock);
        free(c.identity_sock);
        free(c.user_path_buf);
        free(c.applied_path);
        curl_global_cleanup();
        return code;
}
