/* systemd notification (sd_notify) and the watchdog timer for tpmidd: a
 * view of the manager. notify_sync() reads the manager's state and sends
 * what changed (STATUS=, READY=1 once the TPM first answered,
 * EXTEND_TIMEOUT_USEC= while it was never ready and the TPM start failed,
 * WATCHDOG=1 for a ping that came back, STOPPING=1); the daemon calls it from
 * the manager's changed hook.
 *
 * All functions are no-ops when NOTIFY_SOCKET is unset, so the daemon runs
 * the same outside systemd. The watchdog is gated: the timer fires at half of
 * WATCHDOG_USEC and asks the daemon (tick callback) to prove progress; the
 * manager to ping the TPM worker; a ping that came back (manager_pings())
 * is the only thing that sends WATCHDOG=1. A wedged TPM thread therefore turns into a
 * watchdog restart instead of a daemon that looks healthy. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "manager.h"
#include "util.h"

#define NOTIFY_EXTEND_MARGIN_MS 30000 /* ms added to each start-timeout extension while waiting for the TPM */

struct notify;

/* Set up (reads sd_watchdog_enabled()). tick may be NULL. Returns 0 and *ret,
 * or -ENOMEM. The timer starts with notify_watchdog_start(). */
int notify_new(uv_loop_t *loop, void (*tick)(void *userdata), void *userdata, struct notify **ret);

/* Start the watchdog timer when systemd asked for one. Returns 0 (also when
 * no watchdog is configured) or a negative libuv error. */
int notify_watchdog_start(struct notify *n);
bool notify_watchdog_enabled(const struct notify *n);
uint64_t notify_watchdog_usec(const struct notify *n); /* 0 when disabled */

/* The manager changed: send what differs from what systemd was told. Starts
 * the watchdog timer with the first READY=1. */
void notify_sync(struct notify *n, const struct manager *m);

/* READY=1 (with the current STATUS=); after a reload. */
void notify_ready(struct notify *n);
/* RELOADING=1 + MONOTONIC_USEC=now (systemd >= 253 understands it; older ones ignore it). */
void notify_reloading(struct notify *n);
/* EXTEND_TIMEOUT_USEC=usec: still starting (e.g. waiting for the TPM), give
 * us that much more time before the start job times out. */
void notify_extend_timeout(struct notify *n, uint64_t usec);
/* STOPPING=1 */
void notify_stopping(struct notify *n);
/* STATUS=<text>, printf-style; the last text is kept for notify_status_text(). */
void notify_status(struct notify *n, const char *fmt, ...) _printf_(2, 3);
const char *notify_status_text(const struct notify *n);

/* Stop and close the timer; n is freed in the close callback (the loop must
 * run afterwards). NULL-safe. */
void notify_close(struct notify *n);
