/* Tests for lib/httpdate.c. Expected values computed with
 *   date -u -d 'Sun, 06 Nov 1994 08:49:37 GMT' +%s */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "httpdate.h"

static void test_parse_valid(void **state) {
        (void)state;
        int64_t t;
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT", &t), 0);
        assert_int_equal(t, 784111777);
        assert_int_equal(httpdate_parse("Thu, 01 Jan 1970 00:00:00 GMT", &t), 0);
        assert_int_equal(t, 0);
        assert_int_equal(httpdate_parse("Tue, 01 Dec 2026 20:38:41 GMT", &t), 0);
        assert_int_equal(t, 1796157521);
        assert_int_equal(httpdate_parse("Tue, 29 Feb 2000 23:59:59 GMT", &t), 0);
        assert_int_equal(t, 951868799);
        /* blanks around the value (header values may carry them) */
        assert_int_equal(httpdate_parse(" \tSun, 06 Nov 1994 08:49:37 GMT\t ", &t), 0);
        assert_int_equal(t, 784111777);
        /* a leap second counts as the next second */
        assert_int_equal(httpdate_parse("Sat, 31 Dec 2016 23:59:60 GMT", &t), 0);
        assert_int_equal(t, 1483228800);
}

static void test_parse_invalid(void **state) {
        (void)state;
        int64_t t = 42;
        assert_int_equal(httpdate_parse(NULL, &t), -ENODATA);
        assert_int_equal(httpdate_parse("", &t), -ENODATA);
        assert_int_equal(httpdate_parse("  \t ", &t), -ENODATA);
        assert_int_equal(httpdate_parse("Sunday, 06-Nov-94 08:49:37 GMT", &t), -EINVAL); /* RFC 850 */
        assert_int_equal(httpdate_parse("Sun Nov  6 08:49:37 1994", &t), -EINVAL);       /* asctime */
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:49:37 UTC", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Xyz, 06 Nov 1994 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Foo 1994 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 00 Nov 1994 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 31 Nov 1994 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 29 Feb 1900 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 24:00:00 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:60:00 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:49:61 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Nov 199a 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMTX", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:49:3 GMT", &t), -EINVAL);
        /* the year limit: 1970 is read, 1969 and year 0 are not */
        assert_int_equal(httpdate_parse("Wed, 31 Dec 1969 23:59:59 GMT", &t), -EINVAL);
        assert_int_equal(httpdate_parse("Tue, 29 Feb 0000 23:59:34 GMT", &t), -EINVAL);
        assert_int_equal(t, 42); /* untouched on failure */
        assert_int_equal(httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT", NULL), -EINVAL);
}

/* The limit: a value over HTTPDATE_MAX_BYTES is refused even if it is only
 * a date padded with blanks; one at the limit is read. */
static void test_parse_limit(void **state) {
        (void)state;
        char buf[HTTPDATE_MAX_BYTES + 2];
        int64_t t;
        memset(buf, ' ', sizeof(buf));
        memcpy(buf, "Sun, 06 Nov 1994 08:49:37 GMT", HTTPDATE_FIXDATE_LEN);
        buf[HTTPDATE_MAX_BYTES] = '\0';
        assert_int_equal(httpdate_parse(buf, &t), 0);
        buf[HTTPDATE_MAX_BYTES] = ' ';
        buf[HTTPDATE_MAX_BYTES + 1] = '\0';
        assert_int_equal(httpdate_parse(buf, &t), -EINVAL);
}

static void test_skew(void **state) {
        (void)state;
        int64_t skew = 0;
        /* a local clock a day behind the server */
        assert_int_equal(httpdate_skew("Tue, 01 Dec 2026 20:38:41 GMT", 1796157521 - 86400, &skew), 0);
        assert_int_equal(skew, -86400);
        assert_int_equal(httpdate_skew("Tue, 01 Dec 2026 20:38:41 GMT", 1796157521 + 5, &skew), 0);
        assert_int_equal(skew, 5);
        assert_int_equal(httpdate_skew("garbage", 0, &skew), -EINVAL);
        assert_int_equal(httpdate_skew(NULL, 0, &skew), -ENODATA);
        assert_int_equal(httpdate_skew("Tue, 01 Dec 2026 20:38:41 GMT", 0, NULL), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_valid),
                cmocka_unit_test(test_parse_invalid),
                cmocka_unit_test(test_parse_limit),
                cmocka_unit_test(test_skew),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
