/* Logging adapter: the one lib/ module that writes log records.
 *
 * Records go to the journal through sd_journal_send() when stderr is connected
 * to it (the JOURNAL_STREAM environment variable names stderr's dev:ino), and
 * to stderr with a "<N>" syslog priority prefix otherwise (journald and
 * systemd's stderr parser both understand that prefix).
 *
 * Every entry point is printf-checked, thread-safe (one write per record) and
 * preserves errno. Structured variants carry journal fields such as
 * CLIENT_UID=, API_OP=, TPM_RC=. Never pass keys, blobs, signatures or SAS
 * tokens to any of these functions: log records are readable by admins and
 * often shipped off the device. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <syslog.h>

#include "util.h"

/* MESSAGE_IDs (128-bit, journalctl MESSAGE_ID=...). One per event class an
 * operator may want to find or alert on, each made with `systemd-id128 new`;
 * documented in man/tpmidd(8) and in the journal catalog man/tpmidd.catalog
 * (journalctl -x). test/integration/journal-catalog.py checks that the code,
 * the catalog and the man page name the same IDs and fields. */
#define LOG_MESSAGE_STARTED       "b9e2e114c76c4583ba62a9a97122233e" /* daemon ready: sockets serve, TPM answered */
#define LOG_MESSAGE_STOPPED       "c1f2f33b10bc4305883011051be998ec" /* daemon stopped cleanly */
#define LOG_MESSAGE_TPM_UNAVAILABLE "89717c92fae846a79dbe20fb76dcea14" /* TPM unreachable; retrying with backoff */
#define LOG_MESSAGE_TPM_FAILURE   "4243789d20b0442bafc2ee90e5767520" /* a TPM command failed (TPM_RC= set) */
#define LOG_MESSAGE_ACCESS_DENIED "5de9343c06234be784b7b4c9b14976a8" /* caller refused (CLIENT_UID= set) */
#define LOG_MESSAGE_LIMIT_HIT     "eedea8403e12404f93de19176a12c8ff" /* a connection/queue limit answered 4xx/503 */
#define LOG_MESSAGE_RELOADED      "5e00ccabb31d483fb5bd73d96181bc4d" /* configuration reloaded on SIGHUP */
#define LOG_MESSAGE_AUTH_KEY_IMPORTED "4c4c601038d149d3b9146d94501e7f2f" /* import_auth_key persisted a new key */
#define LOG_MESSAGE_PROVISIONED   "839a1f553cff4ffbb79828c0b1340543" /* DPS assigned the device to a hub (IOTHUB=, DEVICE_ID=) */
#define LOG_MESSAGE_DPS_FAILED    "4efde3dcc7da45b78dae588892c95406" /* a DPS run failed (HTTP_STATUS=, DPS_ERROR_CODE=) */

/* One extra journal field. Build with LOG_STR/LOG_NUM/LOG_HEX. */
struct log_field {
        const char *name;  /* upper-case journal field name, e.g. "CLIENT_UID" */
        const char *str;   /* string value, or NULL when the value is numeric */
        long long num;
        bool hex;          /* print num as 0x%x (TPM_RC) */
};
#define LOG_STR(k, v) ((struct log_field){ .name = (k), .str = (v) })
#define LOG_NUM(k, v) ((struct log_field){ .name = (k), .num = (long long)(v) })
#define LOG_HEX(k, v) ((struct log_field){ .name = (k), .num = (long long)(v), .hex = true })
/* Expands to the (array, count) argument pair that log_struct() takes. */
#define LOG_FIELDS(...) \
        ((const struct log_field[]){ __VA_ARGS__ }), \
        (sizeof((const struct log_field[]){ __VA_ARGS__ }) / sizeof(struct log_field))

/* Records above this priority (LOG_ERR=3 ... LOG_DEBUG=7) are dropped. Default LOG_INFO. */
void log_set_max_level(int level);
int log_get_max_level(void);

/* "error"/"err", "warn"/"warning", "info", "debug"/"trace" (aziot AZIOT_LOG
 * names) or a digit 0-7. Returns the priority or -EINVAL. */
int log_level_from_string(const char *s);
const char *log_level_to_string(int level); /* static string */

/* Re-check JOURNAL_STREAM against stderr (called implicitly on first use;
 * call again after redirecting stderr). */
void log_open(void);

/* The core. fields may be NULL with n_fields 0; message_id may be NULL.
 * Returns -abs(error) when error != 0, else 0, so callers can write
 * `return log_errno(...)`. errno is preserved. */
int log_internal(int prio, int error, const char *message_id, const struct log_field *fields, size_t n_fields,
                 const char *fmt, ...) _printf_(6, 7);

#define log_error(...) log_internal(LOG_ERR, 0, NULL, NULL, 0, __VA_ARGS__)
#define log_warn(...) log_internal(LOG_WARNING, 0, NULL, NULL, 0, __VA_ARGS__)
#define log_info(...) log_internal(LOG_INFO, 0, NULL, NULL, 0, __VA_ARGS__)
#define log_debug(...) log_internal(LOG_DEBUG, 0, NULL, NULL, 0, __VA_ARGS__)

/* Log and hand back -abs(r): `return log_error_errno(r, "could not bind %s: %s", p, strerror(-r));` */
#define log_error_errno(r, ...) log_internal(LOG_ERR, (r), NULL, NULL, 0, __VA_ARGS__)
#define log_warn_errno(r, ...) log_internal(LOG_WARNING, (r), NULL, NULL, 0, __VA_ARGS__)

/* Structured: log_struct(LOG_WARNING, LOG_MESSAGE_ACCESS_DENIED,
 *     LOG_FIELDS(LOG_NUM("CLIENT_UID", uid), LOG_STR("API_OP", op)), "denied %s", op); */
#define log_struct(prio, message_id, fields_and_count, ...) \
        log_internal((prio), 0, (message_id), fields_and_count, __VA_ARGS__)
