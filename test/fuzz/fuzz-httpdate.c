/* libFuzzer target for lib/httpdate.c (the Date header of every DPS and hub
 * answer, which the HTTPS helper passes on unchecked). The input is the
 * header value. httpdate_parse() must return 0, -EINVAL or -ENODATA and read
 * nothing past the NUL; whatever it accepts must agree with glibc's timegm()
 * on the same fields, and httpdate_skew() with the parsed value. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "httpdate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
        char *s = malloc(size + 1);
        int64_t t = 0, skew = 0;
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';
        int r = httpdate_parse(s, &t);
        if (r != 0 && r != -EINVAL && r != -ENODATA)
                abort();
        if (r == 0) {
                const char *p = s + strspn(s, " \t");
                struct tm tm = {0};
                tm.tm_mday = atoi(p + 5);
                tm.tm_mon = (int)((strstr(months, (char[]){p[8], p[9], p[10], 0}) - months) / 3);
                tm.tm_year = atoi(p + 12) - 1900;
                tm.tm_hour = atoi(p + 17);
                tm.tm_min = atoi(p + 20);
                tm.tm_sec = atoi(p + 23);
                if ((int64_t)timegm(&tm) != t)
                        abort();
                if (httpdate_skew(s, 1000, &skew) != 0 || skew != 1000 - t)
                        abort();
        } else if (httpdate_skew(s, 0, &skew) != r)
                abort();
        free(s);
        return 0;
}
