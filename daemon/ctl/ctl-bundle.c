/* tpmidctl support-bundle: one tar.gz with what a maintainer asks for first
 * (as `iotedge support-bundle`): the daemon's status, `check -o json`,
 * versions, the TPM's keys and capabilities as `tpm info --json` reports them
 * (through the daemon when it runs), the unit files, the journal since boot,
 * and the configuration with every secret redacted. Never a key, a blob or a
 * password: state_dir is not read, and configuration values are blanked by
 * name (redact_toml()). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"
#include "ctl-status.h"
#include "ctl.h"
#include "util.h"
#include "tpmid-config.h"

#define BUNDLE_DIR_NAME "tpmidd-support-bundle"
#define BUNDLE_MAX_CONFIG_BYTES CONFIG_MAX_FILE_BYTES /* bytes of a configuration file we redact and include */
#define BUNDLE_REDACTED "\"<redacted>\""
#define BUNDLE_MAX_DROPINS 64 /* config.d drop-ins included */
#define BUNDLE_LINE_MAX 4096  /* bytes of a redacted line; a longer one is dropped whole (never half a secret) */

/* Run argv with stdout (and stderr, when err_too) into the file path (mode
 * 0600). Returns the exit status, 127 when it could not run, or -errno. */
static int run_to_file(char *const argv[], const char *path, bool err_too) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        if (pid == 0) {
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                (void)dup2(fd, STDOUT_FILENO);
                (void)dup2(err_too ? fd : null, STDERR_FILENO);
                if (null >= 0)
                        (void)dup2(null, STDIN_FILENO);
                execvp(argv[0], argv);
                dprintf(fd, "(%s could not be run: %s)\n", argv[0], strerror(errno));
                _exit(127);
        }
        close(fd);
        return ctl_wait_exit(pid);
}

static int write_text(const char *dir, const char *name, const char *text) {
        _cleanup_free_ char *p = NULL;
        if (asprintf(&p, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        return write_file_atomic_owned(p, text, strlen(text), 0600, (uid_t)-1, (gid_t)-1);
}

static bool key_is_secret(const char *key, size_t len, bool in_auth_table) {
        if (in_auth_table)
                return true; /* every value of [tpm.hierarchy_authorization] is a password */
        char k[128];
        snprintf(k, sizeof k, "%.*s", (int)(len < sizeof k ? len : sizeof k - 1), key);
        for (char *c = k; *c; c++)
                if (*c >= 'A' && *c <= 'Z')
                        *c = (char)(*c - 'A' + 'a');
        if (strstr(k, "auth_key_index"))
                return false; /* a handle number, not a secret */
        static const char *const words[] = { "key", "password", "passwd", "secret", "auth", "token", "sas",
                                             "signature", "credential", "pin" };
        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                if (strstr(k, words[i]))
                        return true;
        return false;
}

/* A TOML document with the value of every secret key replaced by
 * "<redacted>" (see key_is_secret()): per line, tracking the current table,
 * skipping the continuation lines of a redacted multi-line string or array.
 * It does not need to be a full TOML parser: it errs on the side of
 * redacting (a key's name decides, not its value), and a line it cannot read
 * as key = value is kept only when it holds no '='. Heap string or NULL. */
static char *redact_toml(const char *text, size_t len) {
        size_t cap = len * 2 + 64, n = 0;
        char *out = malloc(cap);
        if (!out)
                return NULL;
        bool in_auth = false;
        const char *skip_until = NULL; /* a closing delimiter we are skipping to */
        int depth = 0;                 /* open '[' of a skipped array */
        for (const char *line = text; line < text + len;) {
                const char *eol = memchr(line, '\n', (size_t)(text + len - line));
                size_t l = eol ? (size_t)(eol - line) : (size_t)(text + len - line);
                const char *next = eol ? eol + 1 : text + len;
                char buf[BUNDLE_LINE_MAX];
                const char *emit = line;
                size_t emit_len = l;
                if (skip_until || depth > 0) {
                        if (skip_until && memmem(line, l, skip_until, 3))
                                skip_until = NULL;
                        for (size_t i = 0; !skip_until && i < l; i++)
                                depth += line[i] == '[' ? 1 : line[i] == ']' ? -1 : 0;
                        line = next;
                        continue;
                }
                size_t i = 0;
                while (i < l && (line[i] == ' ' || line[i] == '\t'))
                        i++;
                if (i < l && line[i] == '[') {
                        const char *h = line + i;
                        size_t hl = l - i;
                        in_auth = memmem(h, hl, "hierarchy_authorization", 23) != NULL;
                } else if (i < l) {
                        /* a commented-out assignment may hold an old password too */
                        bool comment = line[i] == '#';
                        while (i < l && (line[i] == '#' || line[i] == ' ' || line[i] == '\t'))
                                i++;
                        const char *eq = memchr(line + i, '=', l - i);
                        if (eq && comment && !key_is_secret(line + i, (size_t)(eq - (line + i)), in_auth))
                                eq = NULL;
                        if (eq && comment) {
                                int k = snprintf(buf, sizeof buf, "%.*s= %s", (int)(eq - line), line, BUNDLE_REDACTED);
                                emit = buf;
                                emit_len = k > 0 && (size_t)k < sizeof buf ? (size_t)k : 0;
                        } else if (eq) {
                                size_t klen = (size_t)(eq - (line + i));
                                if (key_is_secret(line + i, klen, in_auth)) {
                                        const char *v = eq + 1;
                                        while (v < line + l && (*v == ' ' || *v == '\t'))
                                                v++;
                                        size_t vl = (size_t)(line + l - v);
                                        if (vl >= 3 && (memcmp(v, "\"\"\"", 3) == 0 || memcmp(v, "'''", 3) == 0) &&
                                            !(vl >= 6 && memmem(v + 3, vl - 3, v, 3)))
                                                skip_until = memcmp(v, "\"\"\"", 3) == 0 ? "\"\"\"" : "'''";
                                        else if (vl >= 1 && (*v == '[' || *v == '{')) {
                                                int d = 0;
                                                for (const char *c = v; c < line + l; c++)
                                                        d += *c == '[' || *c == '{' ? 1 : *c == ']' || *c == '}' ? -1 : 0;
                                                depth = d > 0 ? d : 0;
                                        }
                                        int k = snprintf(buf, sizeof buf, "%.*s= %s", (int)(eq - line), line,
                                                         BUNDLE_REDACTED);
                                        emit = buf;
                                        emit_len = k > 0 && (size_t)k < sizeof buf ? (size_t)k : 0;
                                }
                        }
                }
                if (n + emit_len + 2 > cap) {
                        cap = (n + emit_len + 2) * 2;
                        char *m = realloc(out, cap);
                        if (!m) {
                                explicit_zero(out, n);
                                free(out);
                                return NULL;
                        }
                        out = m;
                }
                memcpy(out + n, emit, emit_len);
                n += emit_len;
                out[n++] = '\n';
                line = next;
        }
        out[n] = '\0';
        return out;
}

/* Copy the configuration file src, redacted, to dir/name; a note instead
 * when it cannot be read. */
static void add_config(const char *dir, const char *name, const char *src) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r = read_full_file(src, BUNDLE_MAX_CONFIG_BYTES, &text, &len);
        if (r < 0) {
                _cleanup_free_ char *note = NULL;
                if (asprintf(&note, "# %s: not included: %s%s\n", src, strerror(-r),
                             r == -EACCES ? " (run 'sudo tpmidctl support-bundle')" : "") >= 0)
                        (void)write_text(dir, name, note);
                return;
        }
        _cleanup_free_ char *red = redact_toml(text, len);
        explicit_zero(text, len);
        _cleanup_free_ char *doc = NULL;
        if (red && asprintf(&doc, "# %s, secrets redacted by tpmidctl support-bundle\n%s", src, red) >= 0)
                (void)write_text(dir, name, doc);
}

/* The drop-ins of config.d next to the super-config, each redacted. */
static void add_dropins(const char *dir, const char *super) {
        _cleanup_free_ char *copy = strdup(super);
        char *slash = copy ? strrchr(copy, '/') : NULL;
        if (!slash)
                return;
        *slash = '\0';
        _cleanup_free_ char *glob_dir = NULL;
        if (asprintf(&glob_dir, "%s/config.d", copy) < 0)
                return;
        char *ls[] = { "ls", "-1", glob_dir, NULL };
        _cleanup_free_ char *listing = NULL, *lpath = NULL;
        if (asprintf(&lpath, "%s/.dropins", dir) < 0 || run_to_file(ls, lpath, false) != 0)
                goto out;
        size_t len = 0;
        if (read_full_file(lpath, 1 << 16, &listing, &len) < 0)
                goto out;
        unsigned n = 0;
        char *save = NULL;
        for (char *f = strtok_r(listing, "\n", &save); f && n < BUNDLE_MAX_DROPINS; f = strtok_r(NULL, "\n", &save)) {
                size_t fl = strlen(f);
                if (fl < 5 || !streq(f + fl - 5, ".toml"))
                        continue;
                _cleanup_free_ char *src = NULL, *name = NULL;
                if (asprintf(&src, "%s/%s", glob_dir, f) < 0 || asprintf(&name, "config.d-%s", f) < 0)
                        break;
                add_config(dir, name, src);
                n++;
        }
out:
        if (lpath)
                (void)unlink(lpath);
}

static void bundle_usage(FILE *f) {
        fputs("Usage: tpmidctl support-bundle [-o FILE]\n"
              "\n"
              "Write a tar.gz for a bug report: the daemon's status, 'tpmidctl check -o json',\n"
              "versions, 'tpmidctl tpm info --json', the unit files, the daemon's journal since\n"
              "boot and the configuration with secrets and hierarchy passwords redacted. It holds\n"
              "no key or blob. Run it as root to include everything.\n"
              "\n"
              "  -o, --output FILE   where to write it (default: tpmidd-support-bundle-DATE.tar.gz);\n"
              "                      '-' writes to stdout\n",
              f);
}

/* The path of this program, to run its own verbs (check, tpm info). */
static char *self_exe(void) {
        char buf[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
        if (n <= 0)
                return strdup("tpmidctl");
        buf[n] = '\0';
        return strdup(buf);
}

int ctl_bundle_main(int argc, char **argv) {
        static const struct option opts[] = {
                { "output", required_argument, NULL, 'o' },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        const char *out_arg = NULL;
        int o;
        optind = 1;
        while ((o = getopt_long(argc, argv, "o:h", opts, NULL)) >= 0)
                switch (o) {
                case 'o':
                        out_arg = optarg;
                        break;
                case 'h':
                        bundle_usage(stdout);
                        return CTL_EXIT_OK;
                default:
                        bundle_usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "tpmidctl support-bundle: unexpected argument '%s'\n", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        char defname[96];
        time_t now = time(NULL);
        struct tm tm;
        if (!gmtime_r(&now, &tm) || strftime(defname, sizeof defname, "tpmidd-support-bundle-%Y%m%d-%H%M%S.tar.gz",
                                              &tm) == 0)
                snprintf(defname, sizeof defname, "tpmidd-support-bundle.tar.gz");
        const char *out = out_arg ? out_arg : defname;

        char tmpl[] = "/tmp/tpmidctl-bundle-XXXXXX";
        if (!mkdtemp(tmpl)) {
                fprintf(stderr, "tpmidctl support-bundle: cannot create a temporary directory: %s\n", strerror(errno));
                return CTL_EXIT_FAILURE;
        }
        int code = CTL_EXIT_OK;
        _cleanup_free_ char *sock = NULL, *outv = strdup(out);
        _cleanup_free_ char *p_check = NULL, *p_tpm = NULL, *p_ver = NULL, *p_units = NULL, *p_journal = NULL,
                            *p_os = NULL, *versions = NULL, *p_cap = NULL;
        _cleanup_free_ char *dir = NULL, *self = self_exe();
        if (asprintf(&dir, "%s/" BUNDLE_DIR_NAME, tmpl) < 0 || !self || !outv || mkdir(dir, 0700) < 0) {
                fprintf(stderr, "tpmidctl support-bundle: cannot prepare the bundle: %s\n", strerror(errno));
                code = CTL_EXIT_FAILURE;
                goto out;
        }
        fprintf(stderr, "Collecting status, checks, versions, TPM capabilities, units, journal and configuration...\n");

        /* the daemon's status, as the socket answers it */
        sock = ctl_status_identity_socket();
        json_t *st = NULL;
        char err[1024] = "";
        bool st_ok = false;
        if (sock && ctl_status_fetch(sock, &st, err, sizeof err) == 0) {
                st_ok = true;
                char *s = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
                if (s)
                        (void)write_text(dir, "status.json", s);
                free(s);
                json_decref(st);
        } else {
                json_t *e = json_pack("{s:s}", "error", err[0] ? err : "out of memory");
                char *s = e ? json_dumps(e, JSON_INDENT(2)) : NULL;
                if (s)
                        (void)write_text(dir, "status.json", s);
                free(s);
                json_decref(e);
        }

        /* our own verbs: one truth for the bundle and the terminal */
        if (asprintf(&p_check, "%s/check.json", dir) < 0 || asprintf(&p_tpm, "%s/tpm-info.json", dir) < 0 ||
            asprintf(&p_ver, "%s/versions.txt", dir) < 0 || asprintf(&p_units, "%s/units.txt", dir) < 0 ||
            asprintf(&p_journal, "%s/journal.txt", dir) < 0 || asprintf(&p_os, "%s/os.txt", dir) < 0) {
                code = CTL_EXIT_FAILURE;
                goto out;
        }
        char *check[] = { self, "check", "-o", "json", NULL };
        (void)run_to_file(check, p_check, false);
        if (st_ok) {
                /* through the daemon, which owns the TPM */
                char *tpminfo[] = { self, "tpm", "info", "--json", NULL };
                (void)run_to_file(tpminfo, p_tpm, true);
        } else
                /* Opening the TPM ourselves could create EK/SRK: a bundle changes nothing. */
                (void)write_text(dir, "tpm-info.json",
                                 "{\"error\": \"tpmidd is not running, so the TPM was not asked (run 'sudo tpmidctl "
                                 "tpm info --json' yourself; it creates the EK and SRK if they are missing)\"}\n");
        /* the TPM's fixed properties (manufacturer, firmware), only through the
         * kernel resource manager, which shares the TPM with the daemon */
        char *getcap[] = { "sh", "-c",
                           "if [ -c /dev/tpmrm0 ] && command -v tpm2_getcap >/dev/null; then "
                           "tpm2_getcap -T device:/dev/tpmrm0 properties-fixed; else "
                           "echo 'not collected: no /dev/tpmrm0 or no tpm2_getcap (tpm2-tools)'; fi",
                           NULL };
        if (asprintf(&p_cap, "%s/tpm-properties.txt", dir) >= 0)
                (void)run_to_file(getcap, p_cap, true);

        if (asprintf(&versions, "tpmidctl %s\n", TPMID_VERSION) >= 0)
                (void)write_text(dir, "versions.txt.head", versions);
        char *dpkg[] = { "dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\\n", "tpmidd", "libtss2-esys-3.0.2-0",
                         "libtss2-sys1", "libtss2-tcti-device0", "libuv1", "libcurl4", "libjansson4", "swtpm", NULL };
        (void)run_to_file(dpkg, p_ver, true);
        char *uname[] = { "sh", "-c", "uname -a; cat /etc/os-release; ls -l /dev/tpm* 2>&1; cat /sys/class/tpm/*/tpm_version_major 2>/dev/null", NULL };
        (void)run_to_file(uname, p_os, true);

        if (access("/run/systemd/system", F_OK) == 0) {
                char *cat[] = { "systemctl", "cat", "--no-pager", "tpmidd.service", "tpmidd-tpmd.socket",
                                "tpmidd-identityd.socket", NULL };
                (void)run_to_file(cat, p_units, true);
                char *jc[] = { "journalctl", "-b", "--no-pager", "-o", "short-iso-precise", "-u", "tpmidd.service",
                               "-u", "tpmidd-tpmd.socket", "-u", "tpmidd-identityd.socket", NULL };
                (void)run_to_file(jc, p_journal, true);
        } else {
                char *cat[] = { "sh", "-c",
                                "for f in /usr/lib/systemd/system/tpmidd*.s* /lib/systemd/system/tpmidd*.s* "
                                "/etc/systemd/system/tpmidd*.s*; do [ -f \"$f\" ] && { echo \"# $f\"; cat \"$f\"; }; "
                                "done; true",
                                NULL };
                (void)run_to_file(cat, p_units, true);
                (void)write_text(dir, "journal.txt",
                                 "systemd is not running on this system (not PID 1): there is no journal of tpmidd. "
                                 "Without systemd tpmidd logs to standard error; attach that output.\n");
        }

        /* configuration, redacted */
        const char *super = config_path_from_env(CONFIG_DEFAULT_PATH);
        add_config(dir, "config.toml", super);
        add_dropins(dir, super);
        if (!getenv(CONFIG_ENV_PATH))
                add_config(dir, "config-applied.toml", CONFIG_APPLIED_PATH);

        /* versions.txt: our line first */
        {
                _cleanup_free_ char *head = NULL, *rest = NULL, *all = NULL, *hp = NULL;
                size_t hl = 0, rl = 0;
                if (asprintf(&hp, "%s/versions.txt.head", dir) >= 0 && read_full_file(hp, 4096, &head, &hl) == 0 &&
                    read_full_file(p_ver, 1 << 16, &rest, &rl) == 0 && asprintf(&all, "%s%s", head, rest) >= 0)
                        (void)write_text(dir, "versions.txt", all);
                if (hp)
                        (void)unlink(hp);
        }

        /* '-': tar writes the archive to our stdout */
        char *tar[] = { "tar", "-czf", outv, "-C", tmpl, BUNDLE_DIR_NAME, NULL };
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                execvp(tar[0], tar);
                _exit(127);
        }
        int ts = 0, r = 1;
        if (pid > 0) {
                while (waitpid(pid, &ts, 0) < 0 && errno == EINTR)
                        ;
                r = WIFEXITED(ts) ? WEXITSTATUS(ts) : 128;
        }
        if (r != 0) {
                fprintf(stderr, "tpmidctl support-bundle: tar could not write %s (exit %d)\n", out, r);
                code = CTL_EXIT_FAILURE;
                goto out;
        }
        if (!streq(out, "-"))
                fprintf(stderr, "Created support bundle at %s\n", out);
out:;
        char *rm[] = { "rm", "-rf", tmpl, NULL };
        (void)run_to_file(rm, "/dev/null", false);
        return code;
}
