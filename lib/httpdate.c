/* HTTP-date parsing; see httpdate.h. */
#include "httpdate.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static bool blank(char c) {
        return c == ' ' || c == '\t';
}

/* n decimal digits at s, or -1. */
static int digits(const char *s, unsigned n) {
        int v = 0;
        for (unsigned i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -1;
                v = v * 10 + (s[i] - '0');
        }
        return v;
}

/* 1-based index of the three letters at s in names (3 letters each), or 0. */
static int name_index(const char *s, const char *names, unsigned count) {
        for (unsigned i = 0; i < count; i++)
                if (memcmp(s, names + 3 * i, 3) == 0)
                        return (int)i + 1;
        return 0;
}

static bool leap(int y) {
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days from 1970-01-01 to y-m-d (Gregorian; y >= HTTPDATE_MIN_YEAR here). */
static int64_t days_since_epoch(int y, int m, int d) {
        static const int before_month[12] = {0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
        int64_t yy = (int64_t)y - 1; /* whole years before y */
        int64_t days = yy * 365 + yy / 4 - yy / 100 + yy / 400;
        days += before_month[m - 1] + (m > 2 && leap(y)) + (d - 1);
        return days - 719162; /* the same count for 1970-01-01 */
}

int httpdate_parse(const char *s, int64_t *ret) {
        static const char wdays[] = "MonTueWedThuFriSatSun";
        static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
        static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        size_t n;
        int day, mon, year, hh, mm, ss;

        if (!ret)
                return -EINVAL;
        if (!s)
                return -ENODATA;
        n = strnlen(s, HTTPDATE_MAX_BYTES + 1);
        if (n > HTTPDATE_MAX_BYTES)
                return -EINVAL;
        while (n > 0 && blank(*s)) {
                s++;
                n--;
        }
        while (n > 0 && blank(s[n - 1]))
                n--;
        if (n == 0)
                return -ENODATA;
        /* "Sun, 06 Nov 1994 08:49:37 GMT" */
        if (n != HTTPDATE_FIXDATE_LEN || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
            s[19] != ':' || s[22] != ':' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
                return -EINVAL;
        if (!name_index(s, wdays, 7) || !(mon = name_index(s + 8, months, 12)))
                return -EINVAL;
        day = digits(s + 5, 2);
        year = digits(s + 12, 4);
        hh = digits(s + 17, 2);
        mm = digits(s + 20, 2);
        ss = digits(s + 23, 2);
        if (day < 1 || year < HTTPDATE_MIN_YEAR || hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 60)
                return -EINVAL; /* ss 60: a leap second, counted as the next second like POSIX time does */
        if (day > mdays[mon - 1] || (mon == 2 && day == 29 && !leap(year)))
                return -EINVAL;
        *ret = days_since_epoch(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
        return 0;
}

int httpdate_skew(const char *date, int64_t local_now, int64_t *ret_skew_s) {
        int64_t server;
        int r;

        if (!ret_skew_s)
                return -EINVAL;
        r = httpdate_parse(date, &server);
        if (r < 0)
                return r;
        *ret_skew_s = local_now - server;
        return 0;
}
