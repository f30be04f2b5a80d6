/* Logging adapter: journal when stderr is the journal, "<N>" lines on stderr
 * otherwise. See log.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include "log.h"

#define LOG_MESSAGE_MAX 2048 /* bytes of one formatted message; longer ones are cut */
#define LOG_FIELD_MAX 256    /* bytes of one formatted extra field */
#define LOG_FIELDS_MAX 16    /* extra fields per record */

static atomic_int max_level = LOG_INFO;
/* -1 = not checked yet, 0 = stderr, 1 = journal */
static atomic_int use_journal = -1;

void log_set_max_level(int level) {
        if (level < LOG_EMERG)
                level = LOG_EMERG;
        if (level > LOG_DEBUG)
                level = LOG_DEBUG;
        atomic_store(&max_level, level);
}

int log_get_max_level(void) {
        return atomic_load(&max_level);
}

int log_level_from_string(const char *s) {
        static const struct {
                const char *name;
                int level;
        } names[] = {
                { "error", LOG_ERR },   { "err", LOG_ERR },     { "warn", LOG_WARNING },
                { "warning", LOG_WARNING }, { "info", LOG_INFO }, { "notice", LOG_NOTICE },
                { "debug", LOG_DEBUG }, { "trace", LOG_DEBUG },
        };
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcasecmp(s, names[i].name) == 0)
                        return names[i].level;
        if (s[0] >= '0' && s[0] <= '7' && s[1] == '\0')
                return s[0] - '0';
        return -EINVAL;
}

const char *log_level_to_string(int level) {
        switch (level) {
        case LOG_EMERG:
        case LOG_ALERT:
        case LOG_CRIT:
        case LOG_ERR:
                return "error";
        case LOG_WARNING:
                return "warn";
        case LOG_NOTICE:
        case LOG_INFO:
                return "info";
        case LOG_DEBUG:
                return "debug";
        }
        return "info";
}

/* JOURNAL_STREAM is "DEV:INO" of the stream systemd connected to our stdout
 * and stderr; if stderr still is that stream, native journal records carry
 * the fields that stderr lines would lose. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        if (!e)
                return false;
        /* "DEV:INO", both decimal (systemd.exec(5)). */
        char *end = NULL;
        errno = 0;
        unsigned long long dev = strtoull(e, &end, 10);
        if (errno != 0 || end == e || *end != ':')
                return false;
        const char *p = end + 1;
        unsigned long long ino = strtoull(p, &end, 10);
        if (errno != 0 || end == p || *end != 0)
                return false;
        struct stat st;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_open(void) {
        atomic_store(&use_journal, stderr_is_journal() ? 1 : 0);
}

static void format_field(char *buf, size_t n, const struct log_field *f) {
        if (f->str)
                snprintf(buf, n, "%s=%s", f->name, f->str);
        else if (f->hex)
                snprintf(buf, n, "%s=0x%llx", f->name, (unsigned long long)f->num);
        else
                snprintf(buf, n, "%s=%lld", f->name, f->num);
}

static void write_journal(int prio, int error, const char *message_id, const struct log_field *fields,
                          size_t n_fields, const char *msg) {
        char prio_buf[16], msgid_buf[48], errno_buf[32];
        char field_buf[LOG_FIELDS_MAX][LOG_FIELD_MAX];
        struct iovec iov[LOG_FIELDS_MAX + 5];
        size_t n = 0;

        _cleanup_free_ char *m = NULL;
        if (asprintf(&m, "MESSAGE=%s", msg) < 0)
                return;
        iov[n++] = (struct iovec){ .iov_base = m, .iov_len = strlen(m) };
        snprintf(prio_buf, sizeof prio_buf, "PRIORITY=%d", prio);
        iov[n++] = (struct iovec){ .iov_base = prio_buf, .iov_len = strlen(prio_buf) };
        iov[n++] = (struct iovec){ .iov_base = (char *)"SYSLOG_IDENTIFIER=tpmidd", .iov_len = 24 };
        if (message_id) {
                snprintf(msgid_buf, sizeof msgid_buf, "MESSAGE_ID=%s", message_id);
                iov[n++] = (struct iovec){ .iov_base = msgid_buf, .iov_len = strlen(msgid_buf) };
        }
        if (error) {
                snprintf(errno_buf, sizeof errno_buf, "ERRNO=%d", abs(error));
                iov[n++] = (struct iovec){ .iov_base = errno_buf, .iov_len = strlen(errno_buf) };
        }
        for (size_t i = 0; i < n_fields && i < LOG_FIELDS_MAX; i++) {
                format_field(field_buf[i], sizeof field_buf[i], &fields[i]);
                iov[n++] = (struct iovec){ .iov_base = field_buf[i], .iov_len = strlen(field_buf[i]) };
        }
        sd_journal_sendv(iov, (int)n);
}

static void write_stderr(int prio, const struct log_field *fields, size_t n_fields, const char *msg) {
        /* Build the whole line first so concurrent threads never interleave. */
        char line[LOG_MESSAGE_MAX + LOG_FIELDS_MAX * 64];
        size_t len = 0;
        int k = snprintf(line, sizeof line, "<%d>%s", prio, msg);
        len = k < 0 ? 0 : (size_t)k >= sizeof line ? sizeof line - 1 : (size_t)k;
        for (size_t i = 0; i < n_fields && len + 4 < sizeof line; i++) {
                char f[LOG_FIELD_MAX];
                format_field(f, sizeof f, &fields[i]);
                k = snprintf(line + len, sizeof line - len, "%s%s%s", i == 0 ? " [" : " ", f,
                             i + 1 == n_fields ? "]" : "");
                if (k < 0)
                        break;
                len += (size_t)k >= sizeof line - len ? sizeof line - len - 1 : (size_t)k;
        }
        if (len + 1 < sizeof line)
                line[len++] = '\n';
        else
                line[sizeof line - 2] = '\n', len = sizeof line - 1;
        /* A failed write to stderr has nowhere to be reported. */
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
}

int log_internal(int prio, int error, const char *message_id, const struct log_field *fields, size_t n_fields,
                 const char *fmt, ...) {
        int saved_errno = errno;
        int ret = error == 0 ? 0 : -abs(error);

        if ((prio & LOG_PRIMASK) > atomic_load(&max_level))
                goto out;
        if (atomic_load(&use_journal) < 0)
                log_open();

        char msg[LOG_MESSAGE_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);

        if (atomic_load(&use_journal) == 1)
                write_journal(prio & LOG_PRIMASK, error, message_id, fields, n_fields, msg);
        else
                write_stderr(prio & LOG_PRIMASK, fields, n_fields, msg);
out:
        errno = saved_errno;
        return ret;
}
