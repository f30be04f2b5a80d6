/* tpmidctl system status|logs|reprovision|restart|stop and identity show|token.
 *
 * The service side goes through systemctl/journalctl (as aziotctl does); the
 * daemon side through the identity socket (daemon/ctl-client.h). When systemd
 * is not PID 1 (containers, CI) `system status` says so and still shows what
 * the daemon answers, so the command is useful wherever tpmidd runs. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "api.h"
#include "config.h"
#include "ctl-client.h"
#include "ctl-status.h"
#include "ctl.h"
#include "util.h"

#define SYSTEM_SERVICE "tpmidd.service"
#define SYSTEM_SOCKET_TPMD "tpmidd-tpmd.socket"
#define SYSTEM_SOCKET_IDENTITYD "tpmidd-identityd.socket"
#define SYSTEM_CAPTURE_BYTES 4096    /* bytes of a helper command's output we keep */
#define SYSTEM_FAILED_LOG_LINES "10" /* journal lines shown for a failed unit */
#define SYSTEM_REPROVISION_TIMEOUT_MS 180000 /* ms: the daemon answers once the DPS run settled */

static char *const units[] = { SYSTEM_SERVICE, SYSTEM_SOCKET_TPMD, SYSTEM_SOCKET_IDENTITYD };

/* ---- helpers ---- */

static char *identity_socket(void) {
        return ctl_status_identity_socket();
}

static const char *client_strerror(int r) {
        switch (r) {
        case -ENOENT:
        case -ECONNREFUSED:
                return "tpmidd is not running (nothing listens on the socket)";
        case -EACCES:
                return "permission denied on the socket: run as root or as a member of group aziottpm";
        case -ETIMEDOUT:
                return "tpmidd did not answer in time";
        case -EBADMSG:
                return "the answer was not HTTP";
        default:
                return strerror(-r);
        }
}

/* The {"message"} of an error answer, or the body itself. Caller frees. */
static char *response_message(const struct ctl_response *resp) {
        json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
        const char *m = j ? json_string_value(json_object_get(j, "message")) : NULL;
        char *s = strdup(m ? m : (resp->body_len ? resp->body : "(no message)"));
        json_decref(j);
        return s;
}

/* One request to the identity socket. Prints the failure and returns the exit
 * code when the daemon could not be asked or answered other than want_status;
 * returns CTL_EXIT_OK and fills *ret otherwise. */
static int identity_call(const char *method, const char *target, const char *body, int timeout_ms,
                         int want_status, const char *what, struct ctl_response *ret) {
        _cleanup_free_ char *sock = identity_socket();
        if (!sock) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        struct ctl_response resp = {0};
        int r = ctl_client_request(sock, method, target, body, timeout_ms, &resp);
        if (r < 0) {
                fprintf(stderr, "tpmidctl: %s: %s: %s.\n", what, sock, client_strerror(r));
                return ctl_exit_from_errno(r);
        }
        if (resp.status != want_status) {
                _cleanup_free_ char *m = response_message(&resp);
                fprintf(stderr, "tpmidctl: %s: tpmidd answered %d: %s\n", what, resp.status, m ? m : "");
                if (resp.status == 404)
                        fprintf(stderr, "(the daemon on %s does not know this request: is it aziot-identityd "
                                "rather than tpmidd?)\n", sock);
                int code = ctl_exit_from_http(resp.status);
                ctl_response_done(&resp);
                return code == CTL_EXIT_OK ? CTL_EXIT_FAILURE : code;
        }
        *ret = resp;
        return CTL_EXIT_OK;
}

static void format_time(int64_t t, char *buf, size_t len) {
        time_t tt = (time_t)t;
        struct tm tm;
        if (!gmtime_r(&tt, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
                snprintf(buf, len, "%" PRId64, t);
}

static void format_duration(uint64_t s, char *buf, size_t len) {
        if (s >= 86400)
                snprintf(buf, len, "%" PRIu64 "d %" PRIu64 "h", s / 86400, s % 86400 / 3600);
        else if (s >= 3600)
                snprintf(buf, len, "%" PRIu64 "h %" PRIu64 "m", s / 3600, s % 3600 / 60);
        else if (s >= 60)
                snprintf(buf, len, "%" PRIu64 "m %" PRIu64 "s", s / 60, s % 60);
        else
                snprintf(buf, len, "%" PRIu64 "s", s);
}

static const char *jstr(json_t *o, const char *key) {
        return json_string_value(json_object_get(o, key));
}

/* ---- system status ---- */

#define SYSTEM_STATUS_SCHEMA_VERSION 1 /* of `system status --json`; bumped when a member changes meaning */

/* One unit's state in words (label) and whether it is healthy. */
struct unit_state {
        char load[128], active[128];
        const char *label;
        bool healthy, failed;
        bool down; /* label is systemd's own word for a stopped unit: print "Down - " before it */
};

static void unit_state(char *unit, struct unit_state *u) {
        *u = (struct unit_state){ 0 };
        char *show[] = { "systemctl", "show", "--property=LoadState", "--value", unit, NULL };
        int r = ctl_run_capture(show, u->load, sizeof u->load);
        if (r == 127 || r < 0) {
                u->label = "unknown (systemctl could not be run)";
                return;
        }
        if (streq(u->load, "not-found")) {
                u->label = "not installed";
                return;
        }
        char *isact[] = { "systemctl", "is-active", unit, NULL };
        (void)ctl_run_capture(isact, u->active, sizeof u->active);
        bool socket = !streq(unit, SYSTEM_SERVICE);
        if (streq(u->active, "active")) {
                u->label = socket ? "Listening" : "Running";
                u->healthy = true;
        } else if (streq(u->active, "inactive")) {
                /* A stopped service behind active sockets starts on the first request. */
                u->label = socket ? "Down - socket not listening" : "Ready (starts on demand)";
                u->healthy = !socket;
        } else {
                u->label = u->active[0] ? u->active : "unknown state";
                u->failed = streq(u->active, "failed");
                u->down = true;
        }
}

static void print_status_text(json_t *st) {
        json_t *prov = json_object_get(st, "provisioning"), *tpm = json_object_get(st, "tpm"),
               *dmn = json_object_get(st, "daemon");
        char buf[64];
        json_t *up = json_object_get(dmn, "uptimeSec");
        format_duration(json_is_integer(up) ? (uint64_t)json_integer_value(up) : 0, buf, sizeof buf);
        printf("tpmidd %s, up %s, mode %s\n", jstr(dmn, "version") ? jstr(dmn, "version") : "?", buf,
               jstr(dmn, "mode") ? jstr(dmn, "mode") : "?");

        const char *ts = jstr(tpm, "state");
        printf("    TPM:              %s", ts ? ts : "?");
        if (jstr(tpm, "lastError"))
                printf(" (%s)", jstr(tpm, "lastError"));
        printf("\n");

        const char *ps = jstr(prov, "state");
        printf("    Provisioning:     %s\n", ps ? ps : "?");
        printf("    IoT Hub:          %s\n", jstr(prov, "hubName") ? jstr(prov, "hubName") : "(none yet)");
        printf("    Device ID:        %s\n", jstr(prov, "deviceId") ? jstr(prov, "deviceId") : "(none yet)");
        if (jstr(prov, "registrationId"))
                printf("    Registration ID:  %s\n", jstr(prov, "registrationId"));
        json_t *last = json_object_get(prov, "lastResult");
        if (json_is_object(last)) {
                json_t *at = json_object_get(last, "at"), *code = json_object_get(last, "errorCode");
                printf("    Last DPS result:  %s", jstr(last, "status") ? jstr(last, "status") : "?");
                if (json_is_integer(code))
                        printf(", error %" JSON_INTEGER_FORMAT, json_integer_value(code));
                if (jstr(last, "message"))
                        printf(": %s", jstr(last, "message"));
                if (json_is_integer(at)) {
                        format_time(json_integer_value(at), buf, sizeof buf);
                        printf(" (%s)", buf);
                }
                printf("\n");
        }
        json_t *next = json_object_get(prov, "nextRetryAt");
        if (json_is_integer(next)) {
                int64_t n = json_integer_value(next), now = (int64_t)time(NULL);
                format_time(n, buf, sizeof buf);
                printf("    Next DPS attempt: %s (in %" PRId64 " s)\n", buf, n > now ? n - now : 0);
        }
        /* Module identities (IoT Edge): shown once there are any, or when
         * reconciling them with the hub is what fails. */
        json_t *mods = json_object_get(st, "modules"), *count = json_object_get(mods, "count");
        const char *rec = jstr(mods, "lastReconcile");
        if (json_is_integer(count) && (json_integer_value(count) > 0 || (rec && !startswith(rec, "ok: "))))
                printf("    Modules:          %" JSON_INTEGER_FORMAT " (%s)\n", json_integer_value(count),
                       rec ? rec : "not reconciled with the hub yet");
        char fixbuf[512];
        const char *what, *fix;
        if (ctl_status_provisioning_failed(st) && ctl_status_explain(last, NULL, fixbuf, sizeof fixbuf, &what, &fix))
                printf("    DPS refused the device: %s.\n    To fix: %s.\n", what, fix);
        else if (ctl_status_provisioning_failed(st))
                printf("    DPS refused the device; fix the enrollment or configuration, then run "
                       "'sudo tpmidctl system reprovision'.\n");
}

static int system_status(int argc, char **argv) {
        bool json = false;
        for (int i = 1; i < argc; i++) {
                if (streq(argv[i], "--json"))
                        json = true;
                else {
                        fprintf(stderr, "tpmidctl system status: unexpected argument '%s'\n", argv[i]);
                        return CTL_EXIT_USAGE;
                }
        }
        bool units_ok = true, have_systemd = ctl_systemd_running();
        json_t *junits = json ? json_object() : NULL;
        if (!json) {
                printf("System services:\n");
                if (!have_systemd)
                        printf("    systemd is not running on this system (not PID 1): unit states are unknown.\n");
        }
        for (size_t i = 0; have_systemd && i < ELEMENTSOF(units); i++) {
                struct unit_state u;
                unit_state(units[i], &u);
                units_ok &= u.healthy;
                if (json) {
                        json_object_set_new(junits, units[i],
                                            json_pack("{s:s, s:s, s:s, s:b}", "load", u.load, "active", u.active,
                                                      "state", u.label, "healthy", u.healthy));
                        continue;
                }
                printf("    %-26s %s%s\n", units[i], u.down ? "Down - " : "", u.label);
                if (u.failed) {
                        char *jc[] = { "journalctl", "-u", units[i], "--no-pager", "-e", "-n",
                                       SYSTEM_FAILED_LOG_LINES, NULL };
                        fflush(stdout);
                        (void)ctl_run(jc, true);
                }
        }
        if (!json) {
                printf("\n");
                fflush(stdout);
        }

        _cleanup_free_ char *sock = identity_socket();
        if (!sock) {
                json_decref(junits);
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        json_t *st = NULL;
        char err[1024] = "";
        int r = ctl_status_fetch(sock, &st, err, sizeof err);
        /* The exit code, most fundamental first: the daemon cannot be asked,
         * the TPM is unusable, DPS refused the device, a unit is down. */
        int code = r < 0 ? ctl_exit_from_errno(r)
                   : ctl_status_tpm_unavailable(st)     ? CTL_EXIT_NOTPM
                   : ctl_status_provisioning_failed(st) ? CTL_EXIT_PROVISIONING
                   : !units_ok                          ? CTL_EXIT_FAILURE
                                                        : CTL_EXIT_OK;
        if (json) {
                json_t *o = json_pack("{s:i, s:b, s:o, s:O?, s:s?, s:i}", "schemaVersion",
                                      SYSTEM_STATUS_SCHEMA_VERSION, "systemd", have_systemd, "units",
                                      have_systemd ? junits : json_null(), "daemon", st, "error", r < 0 ? err : NULL,
                                      "exitCode", code);
                if (!have_systemd)
                        json_decref(junits);
                char *txt = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
                if (!txt) {
                        fprintf(stderr, "tpmidctl: out of memory\n");
                        code = CTL_EXIT_FAILURE;
                } else
                        printf("%s\n", txt);
                free(txt);
                json_decref(o);
                json_decref(st);
                return code;
        }
        if (r < 0)
                fprintf(stderr, "tpmidctl: daemon status: %s.\n", err);
        else
                print_status_text(st);
        json_decref(st);
        printf("\nUse 'tpmidctl system logs' to check for non-fatal errors.\n"
               "Use 'tpmidctl check' to diagnose connectivity and configuration issues.\n");
        return code;
}

/* ---- system logs ---- */

#define SYSTEM_JOURNAL_RUN "/run/log/journal" /* volatile journal */
#define SYSTEM_JOURNAL_VAR "/var/log/journal" /* persistent journal */

/* journalctl is an executable somewhere on $PATH. */
static bool journalctl_installed(void) {
        const char *path = getenv("PATH");
        _cleanup_free_ char *copy = strdup(path && *path ? path : "/usr/bin:/bin");
        if (!copy)
                return true; /* let execvp() decide */
        char *save = NULL;
        for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
                _cleanup_free_ char *f = NULL;
                if (asprintf(&f, "%s/journalctl", dir) >= 0 && access(f, X_OK) == 0)
                        return true;
        }
        return false;
}

/* journald keeps a journal here (without one, journalctl prints only
 * "-- No entries --", which reads as "the daemon logged nothing"). */
static bool journal_present(void) {
        return access(SYSTEM_JOURNAL_RUN, F_OK) == 0 || access(SYSTEM_JOURNAL_VAR, F_OK) == 0;
}

static int system_logs(int argc, char **argv) {
        /* argv: "logs" ["--" ARGS...] */
        int first = 1;
        if (argc > 1) {
                if (!streq(argv[1], "--")) {
                        fprintf(stderr, "tpmidctl system logs: journalctl options go after '--', e.g. "
                                "'tpmidctl system logs -- -f'\n");
                        return CTL_EXIT_USAGE;
                }
                first = 2;
        }
        if (!journalctl_installed()) {
                fprintf(stderr, "tpmidctl system logs: journalctl is not installed, so there is no journal to show. "
                        "tpmidd logs to standard error when it is not run by systemd: look wherever it was "
                        "started.\n");
                return CTL_EXIT_FAILURE;
        }
        if (!ctl_systemd_running()) {
                /* journalctl would read whatever journal files lie around and
                 * print "-- No entries --", which reads as "tpmidd logged
                 * nothing". */
                fprintf(stderr, "tpmidctl system logs: systemd is not running on this system (not PID 1), so there "
                        "is no journal of tpmidd to show. Without systemd tpmidd logs to standard error: look "
                        "wherever it was started (its terminal, or the file its output goes to).\n");
                return CTL_EXIT_FAILURE;
        }
        if (!journal_present()) {
                fprintf(stderr, "tpmidctl system logs: this system has no systemd journal (%s and %s do not "
                        "exist), so the journal is not available. Check that systemd-journald runs "
                        "('systemctl status systemd-journald').\n", SYSTEM_JOURNAL_RUN, SYSTEM_JOURNAL_VAR);
                return CTL_EXIT_FAILURE;
        }
        size_t n_extra = (size_t)(argc - first);
        char **av = calloc(n_extra + 6, sizeof *av);
        if (!av) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        size_t k = 0;
        av[k++] = "journalctl";
        av[k++] = "-u";
        av[k++] = SYSTEM_SERVICE;
        if (n_extra == 0) {
                av[k++] = "-e";
                av[k++] = "--no-pager";
        } else
                for (int i = first; i < argc; i++)
                        av[k++] = argv[i];
        av[k] = NULL;
        fflush(stdout);
        execvp(av[0], av);
        fprintf(stderr, "tpmidctl system logs: cannot run journalctl: %s\n", strerror(errno));
        free(av);
        return CTL_EXIT_FAILURE;
}

/* ---- system reprovision ---- */

#define SYSTEM_WATCH_INTERVAL_MS 1000 /* ms between GET /status polls while a reprovision runs */

/* The POST runs on its own thread (it blocks until the daemon's run
 * settled); the main thread polls GET /status meanwhile and prints each state
 * it sees. done_fd[1] is written once the POST returned. */
struct reprovision_call {
        const char *sock;
        int r;
        struct ctl_response resp;
        int done_fd[2];
};

static void *reprovision_thread(void *userdata) {
        struct reprovision_call *call = userdata;
        call->r = ctl_client_request(call->sock, "POST",
                                     "/identities/device/reprovision?api-version=" API_VERSION_2020_09_01,
                                     "{\"type\":\"aziot\"}", SYSTEM_REPROVISION_TIMEOUT_MS, &call->resp);
        char c = 1;
        while (write(call->done_fd[1], &c, 1) < 0 && errno == EINTR)
                ;
        return NULL;
}

static void on_interrupt(int sig) {
        static const char msg[] = "\nStopped watching. tpmidd carries on with the registration: follow it with "
                                  "'tpmidctl system status'.\n";
        (void)sig;
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
        _exit(130);
}

/* What `system reprovision` printed last, so each state is printed once. */
struct watch_seen {
        char line[768];  /* the last line printed ("" before the first) */
        int64_t next_at; /* its retry time, 0 when none */
};

/* Print the daemon's provisioning state when it differs from what was
 * printed last: a new state, or a new retry time (the countdown alone is not
 * news). */
static void watch_print(json_t *st, struct watch_seen *seen) {
        const char *ps = ctl_status_str(st, "provisioning", "state");
        if (!ps)
                return;
        if (!seen->line[0] && streq(ps, "provisioned"))
                return; /* still the identity from before this run */
        json_t *prov = json_object_get(st, "provisioning");
        json_t *next = json_object_get(prov, "nextRetryAt");
        json_t *last = json_object_get(prov, "lastResult");
        char line[sizeof seen->line];
        int64_t next_at = 0;
        if (streq(ps, "backing-off") && json_is_integer(next)) {
                int64_t now = (int64_t)time(NULL);
                next_at = json_integer_value(next);
                char fixbuf[256];
                const char *what = NULL, *fix = NULL;
                bool throttled = ctl_status_explain(last, NULL, fixbuf, sizeof fixbuf, &what, &fix) &&
                                 strstr(what, "throttles");
                const char *m = jstr(last, "message");
                if (seen->next_at == next_at && startswith(seen->line, throttled ? "throttled" : "waiting"))
                        return;
                snprintf(line, sizeof line, "%s: next try in %" PRId64 " s%s%s%s",
                         throttled ? "throttled by DPS" : "waiting to retry", next_at > now ? next_at - now : 0,
                         !throttled && m ? " (" : "", !throttled && m ? m : "", !throttled && m ? ")" : "");
        } else if (streq(ps, "provisioned"))
                snprintf(line, sizeof line, "assigned");
        else
                snprintf(line, sizeof line, "%s", ps);
        if (streq(seen->line, line))
                return;
        printf("    %s\n", line);
        fflush(stdout);
        snprintf(seen->line, sizeof seen->line, "%s", line);
        seen->next_at = next_at;
}

/* After the daemon answered 503 (it retries on its own): poll GET /status,
 * printing its states, until this run settles. Returns 0 provisioned (a DPS
 * assignment at or after started), 1 failed for good, -ETIMEDOUT. */
static int watch_until_settled(const char *sock, int64_t started, struct watch_seen *prev) {
        int64_t deadline = now_monotonic_ms() + SYSTEM_REPROVISION_TIMEOUT_MS;
        while (now_monotonic_ms() < deadline) {
                struct pollfd none = { .fd = -1 };
                (void)poll(&none, 0, SYSTEM_WATCH_INTERVAL_MS);
                json_t *st = NULL;
                char err[512];
                if (ctl_status_fetch(sock, &st, err, sizeof err) < 0)
                        continue;
                watch_print(st, prev);
                json_t *last = json_object_get(json_object_get(st, "provisioning"), "lastResult");
                json_t *at = json_object_get(last, "at");
                const char *ls = jstr(last, "status");
                const char *ps = ctl_status_str(st, "provisioning", "state");
                bool fresh = json_is_integer(at) && json_integer_value(at) >= started;
                int v = ps && streq(ps, "provisioned") && fresh && ls && streq(ls, "assigned") ? 0
                        : ctl_status_provisioning_failed(st)                                    ? 1
                                                                                                : -1;
                json_decref(st);
                if (v >= 0)
                        return v;
        }
        return -ETIMEDOUT;
}

static int print_reprovisioned(const char *sock) {
        struct ctl_response id = {0};
        char hub[256] = "?", dev[256] = "?";
        if (ctl_client_request(sock, "POST", "/identities/device?api-version=" API_VERSION_2020_09_01,
                               "{\"type\":\"aziot\"}", 0, &id) == 0) {
                json_t *j = json_loadb(id.body, id.body_len, 0, NULL);
                json_t *spec = json_object_get(j, "spec");
                if (jstr(spec, "hubName"))
                        snprintf(hub, sizeof hub, "%s", jstr(spec, "hubName"));
                if (jstr(spec, "deviceId"))
                        snprintf(dev, sizeof dev, "%s", jstr(spec, "deviceId"));
                json_decref(j);
                ctl_response_done(&id);
        }
        printf("Reprovisioned: DPS assigned device %s on IoT Hub %s.\n", dev, hub);
        return CTL_EXIT_OK;
}

static int system_reprovision(int argc, char **argv) {
        if (argc > 1) {
                fprintf(stderr, "tpmidctl system reprovision: unexpected argument '%s'\n", argv[1]);
                return CTL_EXIT_USAGE;
        }
        _cleanup_free_ char *sock = identity_socket();
        if (!sock) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        printf("Asking tpmidd to register with DPS again...\n");
        fflush(stdout);
        /* The daemon answers once the run it started settled: 204 provisioned,
         * 502 DPS refused (permanent), 503 not reachable / not ready (it keeps
         * retrying), 429 too many waiting requests. Meanwhile its states are
         * shown; Ctrl-C stops watching, not the daemon's run. */
        struct reprovision_call call = { .sock = sock };
        int64_t started = (int64_t)time(NULL);
        if (pipe2(call.done_fd, O_CLOEXEC) < 0) {
                fprintf(stderr, "tpmidctl: %s\n", strerror(errno));
                return CTL_EXIT_FAILURE;
        }
        struct sigaction sa = { .sa_handler = on_interrupt };
        sigemptyset(&sa.sa_mask);
        (void)sigaction(SIGINT, &sa, NULL);
        pthread_t th;
        int e = pthread_create(&th, NULL, reprovision_thread, &call);
        if (e != 0) {
                close(call.done_fd[0]);
                close(call.done_fd[1]);
                fprintf(stderr, "tpmidctl: cannot start a thread: %s\n", strerror(e));
                return CTL_EXIT_FAILURE;
        }
        struct watch_seen seen = { .line = "" };
        for (;;) {
                struct pollfd p = { .fd = call.done_fd[0], .events = POLLIN };
                int k = poll(&p, 1, SYSTEM_WATCH_INTERVAL_MS);
                if (k > 0)
                        break;
                if (k < 0 && errno != EINTR)
                        break;
                json_t *st = NULL;
                char err[512];
                if (ctl_status_fetch(sock, &st, err, sizeof err) == 0) {
                        watch_print(st, &seen);
                        json_decref(st);
                }
        }
        (void)pthread_join(th, NULL);
        close(call.done_fd[0]);
        close(call.done_fd[1]);
        int r = call.r;
        struct ctl_response resp = call.resp;
        bool watch = false;
        if (r == 0 && resp.status == 503) {
                json_t *st = NULL;
                char err[256];
                if (ctl_status_fetch(sock, &st, err, sizeof err) == 0) {
                        const char *ps = ctl_status_str(st, "provisioning", "state");
                        watch = ps && !streq(ps, "provisioned") && !ctl_status_provisioning_failed(st) &&
                                !ctl_status_tpm_unavailable(st);
                        json_decref(st);
                }
        }
        if (r < 0) {
                if (r == -ETIMEDOUT)
                        fprintf(stderr, "Reprovisioning has no outcome after %d s; tpmidd carries on in the background: "
                                "follow it with 'tpmidctl system status'.\n", SYSTEM_REPROVISION_TIMEOUT_MS / 1000);
                else
                        fprintf(stderr, "Failed to reprovision: %s: %s.\n", sock, client_strerror(r));
                return r == -ETIMEDOUT ? CTL_EXIT_UNAVAILABLE : ctl_exit_from_errno(r);
        }
        _cleanup_free_ char *m = NULL;
        if (resp.status == 503 && watch) {
                /* DPS is unreachable or throttles: tpmidd answered at once and
                 * retries on its own; keep showing its states until it settles. */
                m = response_message(&resp);
                printf("    %s\n", m ? m : "DPS is not reachable now");
                fflush(stdout);
                int w = watch_until_settled(sock, started, &seen);
                if (w == 0) {
                        ctl_response_done(&resp);
                        return print_reprovisioned(sock);
                }
                if (w == 1) {
                        ctl_response_done(&resp);
                        resp.status = 502; /* the same verdict as a refusal answered at once */
                } else {
                        fprintf(stderr, "Reprovisioning has no outcome after %d s; tpmidd carries on in the "
                                "background: follow it with 'tpmidctl system status'.\n",
                                SYSTEM_REPROVISION_TIMEOUT_MS / 1000);
                        ctl_response_done(&resp);
                        return CTL_EXIT_UNAVAILABLE;
                }
        }
        if (resp.status == 204 || resp.status == 200) {
                ctl_response_done(&resp);
                return print_reprovisioned(sock);
        }
        if (!m)
                m = response_message(&resp);
        switch (resp.status) {
        case 502: {
                /* The daemon's last result says why; its message alone may
                 * word a disabled enrollment as a refused attestation. */
                json_t *st = NULL;
                char err[512], fixbuf[512];
                const char *what = NULL, *fix = NULL;
                bool explained = ctl_status_fetch(sock, &st, err, sizeof err) == 0 &&
                                 ctl_status_explain(json_object_get(json_object_get(st, "provisioning"), "lastResult"),
                                                    NULL, fixbuf, sizeof fixbuf, &what, &fix);
                const char *dm = jstr(json_object_get(json_object_get(st, "provisioning"), "lastResult"), "message");
                if (explained)
                        fprintf(stderr, "Failed to reprovision: %s (%s).\nTo fix: %s.\n", what,
                                dm ? dm : m ? m : "", fix);
                else
                        fprintf(stderr, "Failed to reprovision: DPS refused the registration: %s\n"
                                "Fix the enrollment (or [provisioning] in the configuration), then run "
                                "'tpmidctl system reprovision' again.\n", m ? m : "");
                json_decref(st);
                break;
        }
        case 503:
                fprintf(stderr, "Failed to reprovision: %s\n"
                        "tpmidd keeps retrying in the background; follow it with 'tpmidctl system status'.\n",
                        m ? m : "");
                break;
        case 401:
        case 403:
                fprintf(stderr, "Failed to reprovision: %s\nRun it as root (sudo).\n", m ? m : "");
                break;
        default:
                fprintf(stderr, "Failed to reprovision: tpmidd answered %d: %s\n", resp.status, m ? m : "");
                break;
        }
        int code = ctl_exit_from_http(resp.status);
        ctl_response_done(&resp);
        return code == CTL_EXIT_OK ? CTL_EXIT_FAILURE : code;
}

/* ---- system restart|stop ---- */

static int systemctl(char *verb, char *const *names, size_t n) {
        char *av[8];
        size_t k = 0;
        av[k++] = "systemctl";
        av[k++] = verb;
        for (size_t i = 0; i < n && k < ELEMENTSOF(av) - 1; i++)
                av[k++] = names[i];
        av[k] = NULL;
        int r = ctl_run(av, true);
        if (r != 0)
                fprintf(stderr, "tpmidctl: 'systemctl %s' failed (%s %d)%s\n", verb, r < 0 ? "error" : "exit",
                        r < 0 ? -r : r, r == 127 ? ": systemctl is not installed" : "");
        return r;
}

static int system_restart_stop(int argc, char **argv) {
        bool restart = streq(argv[0], "restart");
        if (argc > 1) {
                fprintf(stderr, "tpmidctl system %s: unexpected argument '%s'\n", argv[0], argv[1]);
                return CTL_EXIT_USAGE;
        }
        if (!ctl_systemd_running()) {
                fprintf(stderr, "tpmidctl system %s: systemd is not running on this system; stop or start "
                        "tpmidd the way it was started (SIGTERM stops it cleanly).\n", argv[0]);
                return CTL_EXIT_FAILURE;
        }
        /* Stopping the service stops its sockets too (PartOf=); sockets first
         * on the way up, so requests arriving meanwhile queue instead of failing. */
        if (systemctl("stop", units, ELEMENTSOF(units)) != 0)
                return CTL_EXIT_FAILURE;
        if (!restart) {
                printf("Stopped %s, %s and %s.\n", units[0], units[1], units[2]);
                return CTL_EXIT_OK;
        }
        if (systemctl("start", units + 1, 2) != 0 || systemctl("start", units, 1) != 0)
                return CTL_EXIT_FAILURE;
        printf("Restarted %s. Check it with 'tpmidctl system status'.\n", SYSTEM_SERVICE);
        return CTL_EXIT_OK;
}

/* ---- system set-log-level ---- */

/* The names aziotctl's set-log-level takes; the daemon accepts them (and
 * lib/log.h's aliases) in PUT /log_level. */
static const char *const log_levels[] = {"error", "warn", "info", "debug", "trace"};

static int system_set_log_level(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "Usage: tpmidctl system set-log-level error|warn|info|debug|trace\n");
                return CTL_EXIT_USAGE;
        }
        bool known = false;
        for (size_t i = 0; i < ELEMENTSOF(log_levels); i++)
                known = known || streq(argv[1], log_levels[i]);
        if (!known) {
                fprintf(stderr, "tpmidctl system set-log-level: unknown level '%s' (error, warn, info, debug, "
                        "trace)\n", argv[1]);
                return CTL_EXIT_USAGE;
        }
        json_t *o = json_pack("{s:s}", "level", argv[1]);
        char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!body) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        struct ctl_response resp = {0};
        int code = identity_call("PUT", "/log_level?api-version=" API_VERSION_2020_09_01, body, 0, 200,
                                 "set-log-level", &resp);
        free(body);
        if (code != CTL_EXIT_OK)
                return code;
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        const char *now = j ? jstr(j, "level") : NULL;
        printf("tpmidd logs at level %s now (until it restarts, or a reload changes log_level in its "
               "configuration; to keep it, set log_level in /etc/aziot/config.toml and run `tpmidctl config "
               "apply`).\n", now ? now : argv[1]);
        json_decref(j);
        ctl_response_done(&resp);
        return CTL_EXIT_OK;
}

/* ---- entry points ---- */

static void system_usage(FILE *f) {
        fputs("Usage: tpmidctl system status\n"
              "       tpmidctl system logs [-- JOURNALCTL-ARGS...]\n"
              "       tpmidctl system reprovision\n"
              "       tpmidctl system restart|stop\n"
              "       tpmidctl system set-log-level error|warn|info|debug|trace\n"
              "       tpmidctl system restore-aziot [--root DIR]\n"
              "\n"
              "  status       unit states and the daemon's provisioning/TPM status\n"
              "  logs         journalctl -u " SYSTEM_SERVICE " -e --no-pager (arguments after -- replace -e\n"
              "               --no-pager)\n"
              "  reprovision  run DPS registration again and wait for its outcome (the current\n"
              "               identity stays until DPS assigns a new one)\n"
              "  restart      restart the service and its sockets\n"
              "  stop         stop the service and its sockets\n"
              "  set-log-level  the running daemon's log level, through its socket (kept across reloads\n"
              "               unless the configuration's log_level changes; lost on restart)\n"
              "  restore-aziot  give /run/aziot/identityd.sock and tpmd.sock back to aziot-identityd and\n"
              "               aziot-tpmd (undoes what config apply did for them; config apply redoes it)\n",
              f);
}

int ctl_system_main(int argc, char **argv) {
        if (argc < 2) {
                system_usage(stderr);
                return CTL_EXIT_USAGE;
        }
        const char *verb = argv[1];
        if (streq(verb, "--help") || streq(verb, "-h") || streq(verb, "help")) {
                system_usage(stdout);
                return CTL_EXIT_OK;
        }
        for (int i = 2; i < argc; i++)
                if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
                        if (streq(verb, "logs") && i > 2)
                                break; /* after --: journalctl's */
                        system_usage(stdout);
                        return CTL_EXIT_OK;
                }
        if (streq(verb, "status"))
                return system_status(argc - 1, argv + 1);
        if (streq(verb, "logs"))
                return system_logs(argc - 1, argv + 1);
        if (streq(verb, "reprovision"))
                return system_reprovision(argc - 1, argv + 1);
        if (streq(verb, "restart") || streq(verb, "stop"))
                return system_restart_stop(argc - 1, argv + 1);
        if (streq(verb, "set-log-level"))
                return system_set_log_level(argc - 1, argv + 1);
        if (streq(verb, "restore-aziot"))
                return ctl_aziot_restore_main(argc - 1, argv + 1);
        fprintf(stderr, "tpmidctl system: unknown command '%s'. Try 'tpmidctl system --help'.\n", verb);
        return CTL_EXIT_USAGE;
}

static void identity_usage(FILE *f) {
        fputs("Usage: tpmidctl identity show [--json]\n"
              "       tpmidctl identity token [--lifetime SECONDS] [--json]\n"
              "\n"
              "  show    the device identity: IoT Hub, gateway host, device id\n"
              "  token   an IoT Hub SAS token for the device, signed in the TPM (printed alone on\n"
              "          stdout; expiry on stderr). --lifetime: 60..86400, default 3600\n",
              f);
}

static int identity_show(bool json) {
        struct ctl_response resp = {0};
        int code = identity_call("POST", "/identities/device?api-version=" API_VERSION_2020_09_01,
                                 "{\"type\":\"aziot\"}", 0, 200, "device identity", &resp);
        if (code != CTL_EXIT_OK)
                return code;
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        json_t *spec = json_object_get(j, "spec");
        if (!json_is_object(spec)) {
                fprintf(stderr, "tpmidctl: unexpected answer from tpmidd: %s\n", resp.body);
                code = CTL_EXIT_FAILURE;
        } else if (json) {
                printf("%s\n", resp.body);
        } else {
                json_t *auth = json_object_get(spec, "auth");
                printf("IoT Hub:       %s\n", jstr(spec, "hubName") ? jstr(spec, "hubName") : "?");
                printf("Gateway host:  %s\n", jstr(spec, "gatewayHost") ? jstr(spec, "gatewayHost") : "?");
                printf("Device ID:     %s\n", jstr(spec, "deviceId") ? jstr(spec, "deviceId") : "?");
                printf("Auth:          %s\n", jstr(auth, "type") ? jstr(auth, "type") : "?");
        }
        json_decref(j);
        ctl_response_done(&resp);
        return code;
}

static int identity_token(uint32_t lifetime, bool json) {
        _cleanup_free_ char *body = NULL;
        json_t *req = json_pack("{s:I}", "lifetime_sec", (json_int_t)lifetime);
        body = req ? json_dumps(req, JSON_COMPACT) : NULL;
        json_decref(req);
        if (!body) {
                fprintf(stderr, "tpmidctl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        struct ctl_response resp = {0};
        int code = identity_call("POST", "/identities/device/token?api-version=" API_VERSION_2020_09_01, body, 0, 200,
                                 "token", &resp);
        if (code != CTL_EXIT_OK)
                return code;
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        const char *tok = jstr(j, "sasToken");
        json_t *exp = json_object_get(j, "expiresOn");
        if (!tok) {
                fprintf(stderr, "tpmidctl: unexpected answer from tpmidd (no sasToken)\n");
                code = CTL_EXIT_FAILURE;
        } else if (json) {
                printf("%s\n", resp.body);
        } else {
                char when[64] = "?";
                if (json_is_integer(exp))
                        format_time(json_integer_value(exp), when, sizeof when);
                printf("%s\n", tok);
                fprintf(stderr, "Token for device %s on %s, expires %s.\n",
                        jstr(j, "deviceId") ? jstr(j, "deviceId") : "?", jstr(j, "hubName") ? jstr(j, "hubName") : "?",
                        when);
        }
        json_decref(j);
        explicit_zero(resp.body, resp.body_len); /* the token is a credential */
        ctl_response_done(&resp);
        return code;
}

int ctl_identity_main(int argc, char **argv) {
        enum { OPT_LIFETIME = 0x100, OPT_JSON };
        static const struct option opts[] = {
                { "lifetime", required_argument, NULL, OPT_LIFETIME },
                { "json", no_argument, NULL, OPT_JSON },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        if (argc < 2) {
                identity_usage(stderr);
                return CTL_EXIT_USAGE;
        }
        const char *verb = argv[1];
        if (streq(verb, "--help") || streq(verb, "-h") || streq(verb, "help")) {
                identity_usage(stdout);
                return CTL_EXIT_OK;
        }
        bool json = false, have_lifetime = false;
        uint32_t lifetime = API_TOKEN_LIFETIME_DEFAULT_SEC;
        int o;
        optind = 1;
        while ((o = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) >= 0)
                switch (o) {
                case OPT_LIFETIME: {
                        char *end = NULL;
                        errno = 0;
                        unsigned long v = strtoul(optarg, &end, 10);
                        if (errno || !end || *end || optarg[0] == '-' || v < API_TOKEN_LIFETIME_MIN_SEC ||
                            v > API_TOKEN_LIFETIME_MAX_SEC) {
                                fprintf(stderr, "tpmidctl identity token: --lifetime must be %d..%d seconds, not '%s'\n",
                                        API_TOKEN_LIFETIME_MIN_SEC, API_TOKEN_LIFETIME_MAX_SEC, optarg);
                                return CTL_EXIT_USAGE;
                        }
                        lifetime = (uint32_t)v;
                        have_lifetime = true;
                        break;
                }
                case OPT_JSON:
                        json = true;
                        break;
                case 'h':
                        identity_usage(stdout);
                        return CTL_EXIT_OK;
                default:
                        identity_usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        if (optind < argc - 1) {
                fprintf(stderr, "tpmidctl identity %s: unexpected argument '%s'\n", verb, argv[1 + optind]);
                return CTL_EXIT_USAGE;
        }
        if (streq(verb, "show")) {
                if (have_lifetime) {
                        fprintf(stderr, "tpmidctl identity show: --lifetime applies to 'identity token'\n");
                        return CTL_EXIT_USAGE;
                }
                return identity_show(json);
        }
        if (streq(verb, "token"))
                return identity_token(lifetime, json);
        fprintf(stderr, "tpmidctl identity: unknown command '%s'. Try 'tpmidctl identity --help'.\n", verb);
        return CTL_EXIT_USAGE;
}
