/* tpmidd: wiring. Command line, configuration, sockets (systemd-activated or
 * bound here), the TPM worker and its start/retry cycle, signals, systemd
 * notification, and an orderly shutdown that ends with uv_loop_close() == 0.
 *
 * Exit codes: 0 clean stop; TPMIDD_EXIT_CONFIG (78, EX_CONFIG) for errors a
 * restart cannot fix (bad configuration, bad command line, a socket path
 * taken by something else) so the unit can list it in
 * RestartPreventExitStatus=; 1 for anything else. An unreachable TPM is not
 * an exit: the daemon waits for it, says so in STATUS=, and answers 503. */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <uv.h>

#include "config.h"
#include "config-diff.h"
#include "identity-api.h"
#include "log.h"
#include "notify.h"
#include "server.h"
#include "tpm-worker.h"
#include "tpmd-api.h"
#include "tpmid-config.h"

#define TPMIDD_EXIT_CONFIG 78        /* EX_CONFIG: unrecoverable configuration error */
#define DRAIN_TIMEOUT_MS 10000       /* ms that in-flight requests get to finish at shutdown */
#define TPM_RETRY_MIN_MS 1000        /* ms before the first retry of an unreachable TPM */
#define TPM_RETRY_MAX_MS 30000       /* ms: the retry interval doubles up to this */
#define TPM_EXTEND_MARGIN_MS 30000   /* ms added to each start-timeout extension while waiting for the TPM */
#define MALLOC_ARENAS 1              /* glibc arenas: one thread does real work, extra arenas only cost RSS */

struct daemon {
        uv_loop_t loop;
        char *config_path;
        bool config_path_explicit;
        struct tpmid_config *config;

        struct notify *notify;
        struct tpm_worker *worker;
        struct tpmd_api *tpmd;
        struct identity_api *identity;
        struct server *tpmd_srv, *identity_srv;

        uv_signal_t sig_term, sig_int, sig_hup;
        uv_timer_t retry_timer, drain_timer;

        struct tpm_job start_job, ping_job;
        bool start_pending, ping_pending;
        struct tpm_keys keys; /* START writes here; copied into tpmd-api on success */
        uint64_t retry_ms;
        char tpm_error[600];
        bool tpm_ready, ever_ready;

        bool stopping, finishing;
        unsigned draining;
};

static void schedule_tpm_start(struct daemon *d, uint64_t delay_ms);

/* ---- configuration ---- */

static void apply_log_level(const struct tpmid_config *c) {
        /* AZIOT_LOG is what `aziotctl system set-log-level` sets; it wins, as in aziot. */
        int l = log_level_from_string(getenv("AZIOT_LOG"));
        log_set_max_level(l >= 0 ? l : c->log_level);
}

static void print_diags(const struct config_diags *diags) {
        for (size_t i = 0; i < diags->n; i++) {
                _cleanup_free_ char *s = config_format_diag(&diags->items[i]);
                int prio = diags->items[i].severity == CONFIG_SEVERITY_ERROR     ? LOG_ERR
                           : diags->items[i].severity == CONFIG_SEVERITY_WARNING ? LOG_WARNING
                                                                                  : LOG_INFO;
                log_internal(prio, 0, NULL, NULL, 0, "%s", s ? s : "(out of memory formatting a diagnostic)");
        }
}

/* Returns 0 and *ret, or a negative errno after logging every diagnostic. */
static int load_config(const char *path, bool must_exist, struct tpmid_config **ret) {
        struct config_diags diags = { 0 };
        struct tpmid_config *c = NULL;
        int r;
        if (!must_exist && access(path, F_OK) < 0 && errno == ENOENT) {
                /* No file is an empty file, as in aziot: every key takes its default. */
                log_info("%s does not exist, using the defaults", path);
                r = config_parse_string("", 0, path, &c, &diags);
        } else
                r = config_load(path, &c, &diags);
        print_diags(&diags);
        config_diags_free(&diags);
        if (r < 0) {
                log_error_errno(r, "configuration %s is not usable (%d error(s) above)", path, (int)diags.n_errors);
                return r;
        }
        assert(c); /* config_parse_string()/config_load() set it on success */
        *ret = c;
        return 0;
}

/* ---- TPM start, retry, watchdog ---- */

static void set_serving_status(struct daemon *d) {
        _cleanup_free_ char *regid = tpm_registration_id(d->keys.ek.buf, d->keys.ek.len);
        const char *prov = d->identity ? identity_api_status_text(d->identity) : NULL;
        notify_status(d->notify, "ready: serving %s, TPM ready (registration id %s)%s%s",
                      d->config->endpoints.tpmd_socket, regid ? regid : "?", prov ? "; " : "", prov ? prov : "");
}

/* The provisioning state changed its words: keep STATUS= current. */
static void identity_status_changed(const char *text, void *userdata) {
        struct daemon *d = userdata;
        if (d->stopping)
                return;
        if (d->tpm_ready)
                set_serving_status(d);
}

static void identity_tpm_state(struct daemon *d, bool ready, const char *reason) {
        if (!d->identity)
                return;
        if (ready)
                identity_api_tpm_ready(d->identity, &d->keys);
        else
                identity_api_set_tpm_state(d->identity, false, reason);
}

static void start_done(struct tpm_job *job, void *userdata) {
        struct daemon *d = userdata;
        d->start_pending = false;
        if (d->stopping)
                return;

        if (job->r >= 0) {
                d->tpm_ready = true;
                d->retry_ms = 0;
                d->tpm_error[0] = '\0';
                tpmd_api_set_ready(d->tpmd, &d->keys);
                identity_tpm_state(d, true, NULL);
                log_info("TPM ready: endorsement key %s, storage root key %s",
                         d->keys.created_ek ? "created and persisted at 0x81010001" : "found at 0x81010001",
                         d->keys.created_srk ? "created and persisted at 0x81000001" : "found at 0x81000001");
                set_serving_status(d);
                if (!d->ever_ready) {
                        d->ever_ready = true;
                        notify_ready(d->notify);
                        int r = notify_watchdog_start(d->notify);
                        if (r < 0)
                                log_warn("could not start the watchdog timer: %s, ignoring", uv_strerror(r));
                        log_struct(LOG_INFO, LOG_MESSAGE_STARTED, LOG_FIELDS(LOG_STR("TPMD_SOCKET",
                                                                                     d->config->endpoints.tpmd_socket)),
                                   "tpmidd %s ready", TPMID_VERSION);
                }
                return;
        }

        char reason[sizeof d->tpm_error];
        snprintf(reason, sizeof reason, "%s: %s", job->err.step, job->err.msg);
        d->retry_ms = d->retry_ms == 0 ? TPM_RETRY_MIN_MS
                                       : (d->retry_ms * 2 > TPM_RETRY_MAX_MS ? TPM_RETRY_MAX_MS : d->retry_ms * 2);
        /* One clear error per distinct reason; repeats are debug noise. */
        if (strcmp(reason, d->tpm_error) != 0)
                log_struct(LOG_ERR, LOG_MESSAGE_TPM_UNAVAILABLE,
                           LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc), LOG_STR("TCTI", d->config->tpm.tcti)),
                           "TPM not usable (%s); retrying every %u s at most", reason,
                           (unsigned)(TPM_RETRY_MAX_MS / 1000));
        else
                log_debug("TPM still not usable (%s), next try in %llu ms", reason, (unsigned long long)d->retry_ms);
        snprintf(d->tpm_error, sizeof d->tpm_error, "%s", reason);
        tpmd_api_set_unavailable(d->tpmd, reason);
        identity_tpm_state(d, false, reason);
        notify_status(d->notify, "waiting for TPM: %s", reason);
        /* Not ready before the TPM answered (READY=1 means "the TPM API
         * works"), but not a failed start either: keep the start job alive
         * while we retry, so systemd does not kill and restart us in a loop
         * (aziot's "Down - activating" restart loop, iotedge#6658). The
         * sockets already answer 503 with the reason meanwhile. */
        if (!d->ever_ready)
                notify_extend_timeout(d->notify, (d->retry_ms + TPM_EXTEND_MARGIN_MS) * 1000);
        schedule_tpm_start(d, d->retry_ms);
}

static void submit_start(struct daemon *d) {
        if (d->start_pending || d->stopping)
                return;
        d->start_job = (struct tpm_job){ .kind = TPM_JOB_START, .keys_out = &d->keys, .done = start_done, .userdata = d };
        int r = tpm_worker_submit(d->worker, &d->start_job);
        if (r < 0) {
                log_error("could not queue the TPM start job: %s", strerror(-r));
                return;
        }
        d->start_pending = true;
}

static void retry_cb(uv_timer_t *t) {
        submit_start(t->data);
}

static void schedule_tpm_start(struct daemon *d, uint64_t delay_ms) {
        if (d->stopping)
                return;
        if (delay_ms == 0) {
                submit_start(d);
                return;
        }
        uv_timer_start(&d->retry_timer, retry_cb, delay_ms, 0);
}

static void ping_done(struct tpm_job *job, void *userdata) {
        struct daemon *d = userdata;
        d->ping_pending = false;
        /* The worker thread came back: that is the progress the watchdog wants,
         * even when the TPM said no (the daemon then reports and retries). */
        notify_watchdog_alive(d->notify);
        if (d->stopping || job->r >= 0 || !d->tpm_ready)
                return;
        d->tpm_ready = false;
        char reason[sizeof d->tpm_error];
        snprintf(reason, sizeof reason, "%s: %s", job->err.step, job->err.msg);
        log_struct(LOG_ERR, LOG_MESSAGE_TPM_UNAVAILABLE, LOG_FIELDS(LOG_HEX("TPM_RC", job->err.rc)),
                   "TPM stopped answering (%s); reconnecting", reason);
        snprintf(d->tpm_error, sizeof d->tpm_error, "%s", reason);
        tpmd_api_set_unavailable(d->tpmd, reason);
        identity_tpm_state(d, false, reason);
        notify_status(d->notify, "waiting for TPM: %s", reason);
        schedule_tpm_start(d, 0);
}

static void watchdog_tick(void *userdata) {
        struct daemon *d = userdata;
        if (d->ping_pending || d->stopping)
                return;
        d->ping_job = (struct tpm_job){ .kind = TPM_JOB_PING, .done = ping_done, .userdata = d };
        if (tpm_worker_submit(d->worker, &d->ping_job) >= 0)
                d->ping_pending = true;
}

/* ---- shutdown ---- */

static void close_handle(uv_handle_t *h) {
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

static void worker_stopped(void *userdata) {
        struct daemon *d = userdata;
        d->worker = NULL;
        /* Every TPM job has completed: nothing can answer into a server now. */
        server_close(d->tpmd_srv);
        d->tpmd_srv = NULL;
        server_close(d->identity_srv);
        d->identity_srv = NULL;
        if (d->identity)
                d->identity = identity_api_free(d->identity);
        d->tpmd = tpmd_api_free(d->tpmd);
        close_handle((uv_handle_t *)&d->sig_term);
        close_handle((uv_handle_t *)&d->sig_int);
        close_handle((uv_handle_t *)&d->sig_hup);
        close_handle((uv_handle_t *)&d->retry_timer);
        close_handle((uv_handle_t *)&d->drain_timer);
        notify_close(d->notify);
        d->notify = NULL;
}

static void finish(struct daemon *d) {
        if (d->finishing)
                return;
        d->finishing = true;
        uv_timer_stop(&d->drain_timer);
        if (d->worker) {
                log_info("TPM jobs done: %llu", (unsigned long long)tpm_worker_completed(d->worker));
                tpm_worker_stop(d->worker, worker_stopped, d);
        }
        else
                worker_stopped(d);
}

static void drain_timeout(uv_timer_t *t) {
        struct daemon *d = t->data;
        log_warn("requests still in progress after %u ms, closing their connections", (unsigned)DRAIN_TIMEOUT_MS);
        finish(d);
}

static void server_drained(void *userdata) {
        struct daemon *d = userdata;
        if (d->draining > 0 && --d->draining == 0)
                finish(d);
}

static void begin_shutdown(struct daemon *d, const char *why) {
        if (d->stopping)
                return;
        d->stopping = true;
        log_info("%s: stopping (in-flight requests get up to %u ms)", why, (unsigned)DRAIN_TIMEOUT_MS);
        notify_status(d->notify, "stopping: %s", why);
        notify_stopping(d->notify);
        uv_timer_stop(&d->retry_timer);
        d->draining = 1; /* held until both servers were asked, so a quick drain cannot finish early */
        if (d->tpmd_srv) {
                d->draining++;
                server_drain(d->tpmd_srv, server_drained, d);
        }
        if (d->identity_srv) {
                d->draining++;
                server_drain(d->identity_srv, server_drained, d);
        }
        uv_timer_start(&d->drain_timer, drain_timeout, DRAIN_TIMEOUT_MS, 0);
        server_drained(d);
}

/* ---- reload ---- */

static void reload(struct daemon *d) {
        notify_reloading(d->notify);
        notify_status(d->notify, "reloading %s", d->config_path);
        struct tpmid_config *c = NULL;
        int r = load_config(d->config_path, d->config_path_explicit, &c);
        if (r < 0) {
                log_error("reload failed, keeping the running configuration");
        } else {
                _cleanup_free_ char *why = NULL;
                unsigned changed = config_diff(d->config, c, &why);
                if (changed & CONFIG_CHANGED_RESTART)
                        log_warn("reload: changes to %s need a restart of tpmidd to take effect, ignoring them for now",
                                 why ? why : "some keys");
                /* Reloadable keys only; the rest keeps the values tpmidd started with. */
                struct tpmid_config *old = d->config;
                d->config = c;
                apply_log_level(c);
                struct server_limits l = server_limits_from_config(&c->limits);
                if (d->tpmd_srv) {
                        server_set_limits(d->tpmd_srv, &l);
                        server_set_config(d->tpmd_srv, c);
                }
                if (d->identity_srv) {
                        server_set_limits(d->identity_srv, &l);
                        server_set_config(d->identity_srv, c);
                }
                if (d->identity)
                        identity_api_set_config(d->identity, c);
                tpm_worker_set_max_queued(d->worker, c->limits.max_queued_tpm_jobs);
                /* Keep the endpoints and TPM options tpmidd actually runs with. */
                char *t;
                t = c->endpoints.tpmd_socket, c->endpoints.tpmd_socket = old->endpoints.tpmd_socket,
                old->endpoints.tpmd_socket = t;
                t = c->endpoints.identityd_socket, c->endpoints.identityd_socket = old->endpoints.identityd_socket,
                old->endpoints.identityd_socket = t;
                t = c->tpm.tcti, c->tpm.tcti = old->tpm.tcti, old->tpm.tcti = t;
                config_free(old);
                log_struct(LOG_INFO, LOG_MESSAGE_RELOADED, LOG_FIELDS(LOG_STR("CONFIG_FILE", d->config_path)),
                           "reloaded %s (%s)", d->config_path, why ? why : "no changes");
        }
        if (d->tpm_ready)
                set_serving_status(d);
        else
                notify_status(d->notify, "waiting for TPM: %s", d->tpm_error[0] ? d->tpm_error : "starting");
        notify_ready(d->notify);
}

static void signal_cb(uv_signal_t *s, int signum) {
        struct daemon *d = s->data;
        if (signum == SIGHUP) {
                if (!d->stopping)
                        reload(d);
                return;
        }
        begin_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- sockets ---- */

struct inherited {
        int tpmd_fd, identity_fd;
};

/* systemd socket activation: names "tpmd" and "identityd" (FileDescriptorName=);
 * a single unnamed socket is the TPM socket. */
static int get_inherited(struct inherited *out) {
        char **names = NULL;
        out->tpmd_fd = out->identity_fd = -1;
        int n = sd_listen_fds_with_names(true, &names);
        if (n < 0)
                return log_error_errno(n, "reading the sockets passed by systemd failed: %s", strerror(-n));
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                const char *name = names && names[i] ? names[i] : "unknown";
                if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
                        log_warn("inherited fd %d (%s) is not a listening Unix stream socket, ignoring", fd, name);
                        continue;
                }
                if (streq(name, "tpmd") || (n == 1 && !streq(name, "identityd")))
                        out->tpmd_fd = fd;
                else if (streq(name, "identityd"))
                        out->identity_fd = fd;
                else
                        log_warn("inherited socket fd %d has unknown name \"%s\" (expected tpmd or identityd), ignoring",
                                 fd, name);
        }
        if (names)
                for (int i = 0; i < n; i++)
                        free(names[i]);
        free(names);
        return 0;
}

static int open_servers(struct daemon *d) {
        struct inherited inh;
        int r = get_inherited(&inh);
        if (r < 0)
                return r;
        struct server_limits lim = server_limits_from_config(&d->config->limits);

        r = server_new(&d->loop,
                       &(struct server_options){ .name = "tpmd", .path = d->config->endpoints.tpmd_socket,
                                                 .fd = inh.tpmd_fd, .handler = tpmd_api_handle, .userdata = d->tpmd,
                                                 .limits = lim, .config = d->config },
                       &d->tpmd_srv);
        if (r < 0)
                return log_error_errno(r, "could not listen on %s: %s%s", d->config->endpoints.tpmd_socket,
                                       uv_strerror(r),
                                       r == -EADDRINUSE ? " (another tpmidd/aziot-tpmd answers there)"
                                       : r == -EEXIST   ? " (a file that is not a socket is in the way)"
                                                        : "");
        log_info("serving the TPM API on %s%s", d->config->endpoints.tpmd_socket,
                 inh.tpmd_fd >= 0 ? " (socket from systemd)" : "");

        r = identity_api_new(&d->loop, d->config, d->worker, &d->identity);
        if (r < 0)
                return log_error_errno(r, "could not set up the identity API: %s", strerror(-r));
        identity_api_set_status_cb(d->identity, identity_status_changed, d);
        {
                r = server_new(&d->loop,
                               &(struct server_options){ .name = "identityd",
                                                         .path = d->config->endpoints.identityd_socket,
                                                         .fd = inh.identity_fd,
                                                         .handler = identity_api_handle,
                                                         .userdata = d->identity, .limits = lim,
                                                         .config = d->config },
                               &d->identity_srv);
                if (r < 0)
                        return log_error_errno(r, "could not listen on %s: %s%s", d->config->endpoints.identityd_socket,
                                               uv_strerror(r),
                                               r == -EADDRINUSE ? " (another tpmidd/aziot-identityd answers there)"
                                               : r == -EEXIST   ? " (a file that is not a socket is in the way)"
                                                                : "");
                log_info("serving the identity API on %s%s", d->config->endpoints.identityd_socket,
                         inh.identity_fd >= 0 ? " (socket from systemd)" : "");
        }
        return 0;
}

/* ---- main ---- */

static void help(void) {
        printf("Usage: tpmidd [OPTIONS]\n"
               "\n"
               "TPM identity daemon: aziot-tpmd compatible TPM API on a Unix socket.\n"
               "\n"
               "  -c, --config FILE   configuration (default: $%s, else %s, else %s)\n"
               "      --check-config  validate the configuration and exit (0 valid, %d invalid)\n"
               "      --version       print the version\n"
               "  -h, --help          this help\n",
               CONFIG_ENV_PATH, CONFIG_APPLIED_PATH, CONFIG_DEFAULT_PATH, TPMIDD_EXIT_CONFIG);
}

static void walk_cb(uv_handle_t *h, void *arg) {
        log_error("handle still open at exit: %s%s", uv_handle_type_name(uv_handle_get_type(h)),
                  uv_is_closing(h) ? " (closing)" : "");
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, 'C' },
                { "version", no_argument, NULL, 'V' },
                { "help", no_argument, NULL, 'h' },
                { 0 },
        };
        const char *cfg_arg = NULL;
        bool check_only = false;
        int o;
        while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0) {
                switch (o) {
                case 'c':
                        cfg_arg = optarg;
                        break;
                case 'C':
                        check_only = true;
                        break;
                case 'V':
                        printf("tpmidd %s\n", TPMID_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'tpmidd --help'.\n");
                        return TPMIDD_EXIT_CONFIG;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "tpmidd: unexpected argument '%s'. Try 'tpmidd --help'.\n", argv[optind]);
                return TPMIDD_EXIT_CONFIG;
        }

        /* Before any thread exists: the worker thread would otherwise get its
         * own 64 MiB-reserving arena whose touched pages count in RSS. */
        mallopt(M_ARENA_MAX, MALLOC_ARENAS);
        signal(SIGPIPE, SIG_IGN);
        log_open();
        int lvl = log_level_from_string(getenv("AZIOT_LOG"));
        if (lvl >= 0)
                log_set_max_level(lvl);

        struct daemon d = { 0 };
        const char *env_path = getenv(CONFIG_ENV_PATH);
        bool explicit_path = cfg_arg || (env_path && *env_path);
        const char *path = cfg_arg ? cfg_arg : config_path_from_env(CONFIG_APPLIED_PATH);
        if (!explicit_path && access(CONFIG_APPLIED_PATH, F_OK) < 0 && access(CONFIG_DEFAULT_PATH, F_OK) == 0)
                path = CONFIG_DEFAULT_PATH; /* not applied yet: read the super-config directly */
        d.config_path = strdup(path);
        d.config_path_explicit = explicit_path;
        if (!d.config_path)
                return 1;
        if (load_config(d.config_path, explicit_path, &d.config) < 0) {
                free(d.config_path);
                return TPMIDD_EXIT_CONFIG;
        }
        if (check_only) {
                printf("%s: valid\n", d.config_path);
                config_free(d.config);
                free(d.config_path);
                return 0;
        }
        apply_log_level(d.config);
        /* tpm.c turns every TSS failure into one sentence with the rc; the
         * TSS's own stderr lines would repeat it without context (and print
         * "errors" for the normal first-boot EK lookup). Keep them for debug. */
        if (log_get_max_level() < LOG_DEBUG)
                setenv("TSS2_LOG", "all+none", 0);

        int r = uv_loop_init(&d.loop);
        if (r < 0) {
                log_error("uv_loop_init: %s", uv_strerror(r));
                return 1;
        }
        int exit_code = 0;
        uv_signal_init(&d.loop, &d.sig_term);
        uv_signal_init(&d.loop, &d.sig_int);
        uv_signal_init(&d.loop, &d.sig_hup);
        d.sig_term.data = d.sig_int.data = d.sig_hup.data = &d;
        uv_timer_init(&d.loop, &d.retry_timer);
        uv_timer_init(&d.loop, &d.drain_timer);
        d.retry_timer.data = d.drain_timer.data = &d;

        r = notify_new(&d.loop, watchdog_tick, &d, &d.notify);
        if (r < 0) {
                log_error("out of memory");
                exit_code = 1;
                goto shutdown;
        }
        notify_status(d.notify, "starting");

        struct tpm_options topts = {
                .tcti = d.config->tpm.tcti,
                .endorsement_auth = d.config->tpm.endorsement_auth,
                .owner_auth = d.config->tpm.owner_auth,
                .auth_key_index = d.config->tpm.auth_key_index,
        };
        r = tpm_worker_new(&d.loop, &topts, d.config->limits.max_queued_tpm_jobs, &d.worker);
        if (r < 0) {
                log_error("could not start the TPM worker thread: %s", strerror(-r));
                exit_code = 1;
                goto shutdown;
        }
        if (tpmd_api_new(d.worker, &d.tpmd) < 0) {
                exit_code = 1;
                goto shutdown;
        }

        r = open_servers(&d);
        if (r < 0) {
                exit_code = r == -EADDRINUSE || r == -EEXIST || r == -EACCES || r == -ENAMETOOLONG
                                    ? TPMIDD_EXIT_CONFIG
                                    : 1;
                goto shutdown;
        }

        uv_signal_start(&d.sig_term, signal_cb, SIGTERM);
        uv_signal_start(&d.sig_int, signal_cb, SIGINT);
        uv_signal_start(&d.sig_hup, signal_cb, SIGHUP);

        /* READY=1 follows once the TPM answered (start_done). */
        notify_status(d.notify, "sockets open, connecting to the TPM (%s)", d.config->tpm.tcti);
        submit_start(&d);
        uv_run(&d.loop, UV_RUN_DEFAULT);
        goto done;

shutdown:
        /* Failed start: the same orderly teardown, without draining. */
        d.stopping = true;
        finish(&d);
        uv_run(&d.loop, UV_RUN_DEFAULT);
done:
        r = uv_loop_close(&d.loop);
        if (r < 0) {
                uv_walk(&d.loop, walk_cb, NULL);
                log_error("uv_loop_close: %s", uv_strerror(r));
                if (exit_code == 0)
                        exit_code = 1;
        }
        if (exit_code == 0)
                log_struct(LOG_INFO, LOG_MESSAGE_STOPPED, LOG_FIELDS(LOG_STR("CONFIG_FILE", d.config_path)),
                           "tpmidd stopped");
        config_free(d.config);
        free(d.config_path);
        return exit_code;
}
