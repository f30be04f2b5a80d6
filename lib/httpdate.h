/* HTTP-date (RFC 9110 §5.6.7, the IMF-fixdate form every current server
 * sends: "Sun, 06 Nov 1994 08:49:37 GMT") and what a server's Date header
 * says about the local clock. Pure: no I/O, no clock, no logging; the caller
 * passes "now". */
#pragma once

#include <stdint.h>

#define HTTPDATE_MAX_BYTES 64u /* bytes of a Date header value looked at (IMF-fixdate is 29, plus blanks) */
#define HTTPDATE_FIXDATE_LEN 29u /* bytes of an IMF-fixdate */
#define HTTPDATE_MIN_YEAR 1970   /* earliest year accepted: no server's clock says less, and Unix time starts there */

/* Parse an IMF-fixdate, with optional blanks (SP, HTAB) around it, into Unix
 * seconds. The obsolete RFC 850 and asctime forms are refused (servers must
 * not send them). Returns 0 and *ret, -ENODATA for NULL or a value that is
 * only blanks, -EINVAL for anything else (wrong shape, unknown day or
 * month name, out-of-range field, a year before HTTPDATE_MIN_YEAR, a value
 * longer than HTTPDATE_MAX_BYTES). The day name is not checked against the
 * date: only the numbers are used. */
int httpdate_parse(const char *s, int64_t *ret);

/* How far the local clock is off from the server's Date header: local_now
 * minus the server's time, in seconds (negative: the local clock is behind).
 * Returns 0 and *ret_skew_s, or httpdate_parse()'s error. */
int httpdate_skew(const char *date, int64_t local_now, int64_t *ret_skew_s);
