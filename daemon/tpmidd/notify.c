/* sd_notify wrapper and the progress-gated watchdog timer. See notify.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "notify.h"
#include "util.h"

#define NOTIFY_STATUS_MAX 256 /* bytes of the STATUS= text, NUL included */

struct notify {
        uv_timer_t timer;
        uint64_t watchdog_usec;
        bool timer_started;
        bool sent_ready, sent_stopping;
        uint64_t pings_seen, failures_seen;
        void (*tick)(void *userdata);
        void *userdata;
        char status[NOTIFY_STATUS_MAX];
};

static void send_text(const char *text) {
        /* Failing to notify is not fatal: systemd then times us out, which
         * is the right outcome for a daemon that cannot talk to it. */
        int r = sd_notify(0, text);
        if (r < 0)
                log_debug("sd_notify(\"%s\") failed: %s, ignoring", text, strerror(-r));
}

static void timer_cb(uv_timer_t *t) {
        struct notify *n = t->data;
        if (n->tick)
                n->tick(n->userdata);
}

int notify_new(uv_loop_t *loop, void (*tick)(void *userdata), void *userdata, struct notify **ret) {
        struct notify *n = calloc(1, sizeof *n);
        if (!n)
                return -ENOMEM;
        n->tick = tick;
        n->userdata = userdata;
        uint64_t usec = 0;
        if (sd_watchdog_enabled(0, &usec) > 0)
                n->watchdog_usec = usec;
        int r = uv_timer_init(loop, &n->timer);
        if (r < 0) {
                free(n);
                return r;
        }
        n->timer.data = n;
        *ret = n;
        return 0;
}

int notify_watchdog_start(struct notify *n) {
        if (n->watchdog_usec == 0 || n->timer_started)
                return 0;
        uint64_t ms = n->watchdog_usec / 2000; /* half the interval, as sd_watchdog_enabled(3) advises */
        if (ms == 0)
                ms = 1;
        int r = uv_timer_start(&n->timer, timer_cb, ms, ms);
        if (r == 0)
                n->timer_started = true;
        return r;
}

bool notify_watchdog_enabled(const struct notify *n) {
        return n->watchdog_usec > 0;
}

uint64_t notify_watchdog_usec(const struct notify *n) {
        return n->watchdog_usec;
}

void notify_sync(struct notify *n, const struct manager *m) {
        const char *line = manager_status_line(m);
        if (!streq(line, n->status))
                notify_status(n, "%s", line);
        if (manager_stopping(m)) {
                if (!n->sent_stopping)
                        notify_stopping(n);
                n->sent_stopping = true;
                return;
        }
        if (manager_ever_ready(m) && !n->sent_ready) {
                n->sent_ready = true;
                notify_ready(n);
                int r = notify_watchdog_start(n);
                if (r < 0)
                        log_warn("could not start the watchdog timer: %s, ignoring", uv_strerror(r));
        }
        /* Not ready before the TPM answered (READY=1 means "the TPM API
         * works"), but not a failed start either: keep the start job alive
         * while the manager retries, so systemd does not kill and restart us
         * in a loop (aziot's "Down - activating" restart loop, iotedge#6658).
         * The sockets answer 503 with the reason meanwhile. */
        uint64_t failures = manager_tpm_failures(m);
        if (failures != n->failures_seen && !manager_ever_ready(m))
                notify_extend_timeout(n, (manager_tpm_retry_ms(m) + NOTIFY_EXTEND_MARGIN_MS) * 1000);
        n->failures_seen = failures;
        uint64_t pings = manager_pings(m);
        if (pings != n->pings_seen && n->watchdog_usec > 0)
                send_text("WATCHDOG=1");
        n->pings_seen = pings;
}

void notify_ready(struct notify *n) {
        char buf[NOTIFY_STATUS_MAX + 32];
        snprintf(buf, sizeof buf, "READY=1\nSTATUS=%s", n->status);
        send_text(buf);
}

void notify_reloading(struct notify *n) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        char buf[96];
        snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL);
        send_text(buf);
}

void notify_extend_timeout(struct notify *n, uint64_t usec) {
        char buf[64];
        snprintf(buf, sizeof buf, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
        send_text(buf);
}

void notify_stopping(struct notify *n) {
        send_text("STOPPING=1");
}

void notify_status(struct notify *n, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(n->status, sizeof n->status, fmt, ap);
        va_end(ap);
        char buf[NOTIFY_STATUS_MAX + 8];
        snprintf(buf, sizeof buf, "STATUS=%s", n->status);
        send_text(buf);
}

const char *notify_status_text(const struct notify *n) {
        return n->status;
}

static void timer_closed(uv_handle_t *h) {
        free(h->data);
}

void notify_close(struct notify *n) {
        if (!n)
                return;
        uv_timer_stop(&n->timer);
        uv_close((uv_handle_t *)&n->timer, timer_closed);
}
