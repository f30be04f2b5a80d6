/* tpmidd: the process around the manager (manager.c owns the core). Here:
 * the command line, loading the configuration, the sockets (systemd-activated
 * or bound here) and their route views, signals (SIGHUP reloads), sd_notify
 * as a view of the manager, and an orderly shutdown that ends with
 * uv_loop_close() == 0.
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <uv.h>

#include "config.h"
#include "config-diff.h"
#include "identity-api.h"
#include "log.h"
#include "manager.h"
#include "notify.h"
#include "server.h"
#include "tpmd-api.h"
#include "tpmid-config.h"

#define TPMIDD_EXIT_CONFIG 78        /* EX_CONFIG: unrecoverable configuration error */
#define DRAIN_TIMEOUT_MS 10000       /* ms that in-flight requests get to finish at shutdown */
#define MALLOC_ARENAS 1              /* glibc arenas: one thread does real work, extra arenas only cost RSS */

struct daemon {
        uv_loop_t loop;
        char *config_path;
        bool config_path_explicit;

        struct manager *manager;
        struct notify *notify;
        struct tpmd_api *tpmd;
        struct identity_api *identity;
        struct server *tpmd_srv, *identity_srv;

        uv_signal_t sig_term, sig_int, sig_hup;
        uv_timer_t drain_timer;

        bool stopping, finishing;
        unsigned draining;
};

/* ---- configuration ---- */

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
        size_t n_errors = diags.n_errors; /* config_diags_free() zeroes it */
        config_diags_free(&diags);
        if (r < 0) {
                if (n_errors > 0)
                        log_error_errno(r, "configuration %s is not usable (%zu error(s) above)", path, n_errors);
                else
                        log_error_errno(r, "configuration %s is not usable: %s", path, strerror(-r));
                return r;
        }
        assert(c); /* config_parse_string()/config_load() set it on success */
        *ret = c;
        return 0;
}

/* ---- the manager's views ---- */

/* The manager's one changed hook: systemd hears what changed. */
static void manager_changed(void *userdata) {
        struct daemon *d = userdata;
        notify_sync(d->notify, d->manager);
}

static void watchdog_tick(void *userdata) {
        struct daemon *d = userdata;
        if (d->manager)
                manager_watchdog_ping(d->manager);
}

/* ---- shutdown ---- */

static void close_handle(uv_handle_t *h) {
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

/* The manager finished its TPM jobs: nothing can answer into a server now. */
static void manager_closed(void *userdata) {
        struct daemon *d = userdata;
        d->manager = NULL;
        server_close(d->tpmd_srv);
        d->tpmd_srv = NULL;
        server_close(d->identity_srv);
        d->identity_srv = NULL;
        d->identity = identity_api_free(d->identity);
        d->tpmd = tpmd_api_free(d->tpmd);
        close_handle((uv_handle_t *)&d->sig_term);
        close_handle((uv_handle_t *)&d->sig_int);
        close_handle((uv_handle_t *)&d->sig_hup);
        close_handle((uv_handle_t *)&d->drain_timer);
        notify_close(d->notify);
        d->notify = NULL;
}

static void finish(struct daemon *d) {
        if (d->finishing)
                return;
        d->finishing = true;
        uv_timer_stop(&d->drain_timer);
        if (d->manager)
                manager_close(d->manager, manager_closed, d);
        else
                manager_closed(d);
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
        /* Waiting requests are answered now, so draining does not wait for them. */
        manager_begin_stop(d->manager, why);
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

/* SIGHUP: main loads the file, the manager applies it by the reload rule
 * (manager.h, tpmidd(8)), and the servers take the running limits and
 * principals. */
static void reload(struct daemon *d) {
        notify_reloading(d->notify);
        notify_status(d->notify, "reloading %s", d->config_path);
        struct tpmid_config *c = NULL;
        if (load_config(d->config_path, d->config_path_explicit, &c) < 0)
                log_error("reload failed, keeping the running configuration");
        else {
                manager_reload(d->manager, c);
                const struct tpmid_config *run = manager_config(d->manager);
                struct server_limits l = server_limits_from_config(&run->limits);
                server_set_limits(d->tpmd_srv, &l);
                server_set_config(d->tpmd_srv, run);
                server_set_limits(d->identity_srv, &l);
                server_set_config(d->identity_srv, run);
        }
        notify_sync(d->notify, d->manager);
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

/* Listen for one API (server_new) on path, or on the socket systemd passed
 * (inherited_fd >= 0). api names it in the log ("the TPM API"); other is who
 * else answers at that path when it is taken. Returns 0 or the logged error. */
static int open_server(struct daemon *d, const struct tpmid_config *cfg, const struct server_limits *lim,
                       const char *name, const char *path, int inherited_fd, server_handler_t handler,
                       void *userdata, const char *api, const char *other, struct server **ret) {
        char why[SERVER_ERROR_MAX] = "";
        int r = server_new(&d->loop,
                           &(struct server_options){ .name = name, .path = path, .fd = inherited_fd,
                                                     .handler = handler, .userdata = userdata, .limits = *lim,
                                                     .config = cfg, .error = why, .error_size = sizeof why },
                           ret);
        if (r < 0)
                return log_error_errno(r, "could not listen on %s: %s%s", path, why[0] ? why : uv_strerror(r),
                                       r == -EADDRINUSE ? other
                                       : r == -EEXIST   ? " (a file that is not a socket is in the way)"
                                                        : "");
        log_info("serving %s on %s%s", api, path, inherited_fd >= 0 ? " (socket from systemd)" : "");
        return 0;
}

static int open_servers(struct daemon *d) {
        struct inherited inh;
        int r = get_inherited(&inh);
        if (r < 0)
                return r;
        const struct tpmid_config *cfg = manager_config(d->manager);
        struct server_limits lim = server_limits_from_config(&cfg->limits);

        r = open_server(d, cfg, &lim, "tpmd", cfg->endpoints.tpmd_socket, inh.tpmd_fd, tpmd_api_handle, d->tpmd,
                        "the TPM API", " (another tpmidd/aziot-tpmd answers there)", &d->tpmd_srv);
        if (r < 0)
                return r;
        return open_server(d, cfg, &lim, "identityd", cfg->endpoints.identityd_socket, inh.identity_fd,
                           identity_api_handle, d->identity, "the identity API",
                           " (another tpmidd/aziot-identityd answers there)", &d->identity_srv);
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

/* Two sockets at [limits] max_connections (up to 4096) each, plus the
 * refused connections server.c answers (SERVER_REFUSALS_MAX each), need more
 * fds than the soft limit systemd gives services (1024). Raise it to the hard
 * limit, as systemd.exec(5) (LimitNOFILE=) asks of programs that need more:
 * the soft 1024 only protects select(), which libuv does not use. A failure
 * leaves the soft limit; the server answers what it can past it. */
static void raise_nofile_limit(void) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
                return;
        rlim_t soft = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                log_debug("could not raise RLIMIT_NOFILE from %llu: %s", (unsigned long long)soft, strerror(errno));
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
        struct tpmid_config *config = NULL;
        const char *env_path = getenv(CONFIG_ENV_PATH);
        bool explicit_path = cfg_arg || (env_path && *env_path);
        const char *path = cfg_arg ? cfg_arg : config_path_from_env(CONFIG_APPLIED_PATH);
        if (!explicit_path && access(CONFIG_APPLIED_PATH, F_OK) < 0 && access(CONFIG_DEFAULT_PATH, F_OK) == 0)
                path = CONFIG_DEFAULT_PATH; /* not applied yet: read the super-config directly */
        d.config_path = strdup(path);
        d.config_path_explicit = explicit_path;
        if (!d.config_path)
                return 1;
        if (load_config(d.config_path, explicit_path, &config) < 0) {
                free(d.config_path);
                return TPMIDD_EXIT_CONFIG;
        }
        if (check_only) {
                printf("%s: valid\n", d.config_path);
                config_free(config);
                free(d.config_path);
                return 0;
        }
        log_set_max_level(manager_log_level(config));
        /* tpm.c turns every TSS failure into one sentence with the rc; the
         * TSS's own stderr lines would repeat it without context (and print
         * "errors" for the normal first-boot EK lookup). Keep them for debug.
         * Set before the TPM thread exists. */
        if (log_get_max_level() < LOG_DEBUG)
                setenv("TSS2_LOG", "all+none", 0);

        raise_nofile_limit();
        int r = uv_loop_init(&d.loop);
        if (r < 0) {
                log_error("uv_loop_init: %s", uv_strerror(r));
                config_free(config);
                free(d.config_path);
                return 1;
        }
        int exit_code = 0;
        uv_signal_init(&d.loop, &d.sig_term);
        uv_signal_init(&d.loop, &d.sig_int);
        uv_signal_init(&d.loop, &d.sig_hup);
        d.sig_term.data = d.sig_int.data = d.sig_hup.data = &d;
        uv_timer_init(&d.loop, &d.drain_timer);
        d.drain_timer.data = &d;

        r = notify_new(&d.loop, watchdog_tick, &d, &d.notify);
        if (r < 0) {
                log_error("out of memory");
                config_free(config);
                exit_code = 1;
                goto shutdown;
        }
        notify_status(d.notify, "starting");

        r = manager_new(&d.loop, config, manager_changed, &d, &d.manager); /* takes config */
        if (r < 0) {
                exit_code = 1;
                goto shutdown;
        }
        if (tpmd_api_new(d.manager, &d.tpmd) < 0 || identity_api_new(d.manager, &d.identity) < 0) {
                log_error("out of memory");
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

        /* READY=1 follows once the TPM answered (notify_sync()). */
        notify_sync(d.notify, d.manager);
        manager_start(d.manager);
        uv_run(&d.loop, UV_RUN_DEFAULT);
        goto done;

shutdown:
        /* Failed start: the same orderly teardown, without draining. */
        d.stopping = true;
        if (d.manager)
                manager_begin_stop(d.manager, "start failed");
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
        free(d.config_path);
        return exit_code;
}
