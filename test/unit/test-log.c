/* lib/log.c: levels, the stderr format ("<N>message [FIELD=value ...]"),
 * errno preservation, return values, and the JOURNAL_STREAM check. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

static FILE *capture;
static int saved_stderr = -1;

static int setup(void **state) {
        unsetenv("JOURNAL_STREAM");
        log_open();
        capture = tmpfile();
        assert_non_null(capture);
        fflush(stderr);
        saved_stderr = dup(STDERR_FILENO);
        dup2(fileno(capture), STDERR_FILENO);
        log_set_max_level(LOG_DEBUG);
        return 0;
}

static int teardown(void **state) {
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        fclose(capture);
        log_set_max_level(LOG_INFO);
        return 0;
}

/* Everything written to stderr since the last call. */
static char *captured(void) {
        static char buf[8192];
        fflush(stderr);
        rewind(capture);
        size_t n = fread(buf, 1, sizeof buf - 1, capture);
        buf[n] = '\0';
        rewind(capture);
        if (ftruncate(fileno(capture), 0) < 0)
                fail();
        return buf;
}

static void test_levels_from_string(void **state) {
        assert_int_equal(log_level_from_string("error"), LOG_ERR);
        assert_int_equal(log_level_from_string("ERR"), LOG_ERR);
        assert_int_equal(log_level_from_string("warn"), LOG_WARNING);
        assert_int_equal(log_level_from_string("warning"), LOG_WARNING);
        assert_int_equal(log_level_from_string("info"), LOG_INFO);
        assert_int_equal(log_level_from_string("debug"), LOG_DEBUG);
        assert_int_equal(log_level_from_string("trace"), LOG_DEBUG);
        assert_int_equal(log_level_from_string("7"), 7);
        assert_int_equal(log_level_from_string("0"), 0);
        assert_int_equal(log_level_from_string("8"), -EINVAL);
        assert_int_equal(log_level_from_string(""), -EINVAL);
        assert_int_equal(log_level_from_string("verbose"), -EINVAL);
        assert_int_equal(log_level_from_string(NULL), -EINVAL);
        assert_string_equal(log_level_to_string(LOG_ERR), "error");
        assert_string_equal(log_level_to_string(LOG_WARNING), "warn");
        assert_string_equal(log_level_to_string(LOG_DEBUG), "debug");
}

static void test_stderr_format(void **state) {
        log_info("hello %s %d", "world", 42);
        assert_string_equal(captured(), "<6>hello world 42\n");
        log_error("bad");
        assert_string_equal(captured(), "<3>bad\n");
        log_struct(LOG_WARNING, LOG_MESSAGE_ACCESS_DENIED,
                   LOG_FIELDS(LOG_NUM("CLIENT_UID", 1000), LOG_STR("API_OP", "tpm.sign"), LOG_HEX("TPM_RC", 0x18b)),
                   "denied %s", "x");
        assert_string_equal(captured(), "<4>denied x [CLIENT_UID=1000 API_OP=tpm.sign TPM_RC=0x18b]\n");
        log_struct(LOG_INFO, NULL, LOG_FIELDS(LOG_NUM("HTTP_STATUS", -1)), "one");
        assert_string_equal(captured(), "<6>one [HTTP_STATUS=-1]\n");
}

static void test_max_level_filters(void **state) {
        log_set_max_level(LOG_WARNING);
        log_info("dropped");
        log_debug("dropped");
        log_warn("kept");
        assert_string_equal(captured(), "<4>kept\n");
        log_set_max_level(99); /* clamped to LOG_DEBUG */
        assert_int_equal(log_get_max_level(), LOG_DEBUG);
        log_set_max_level(-5);
        assert_int_equal(log_get_max_level(), LOG_EMERG);
        log_set_max_level(LOG_DEBUG);
}

static void test_errno_and_return(void **state) {
        errno = EBUSY;
        assert_int_equal(log_info("x"), 0);
        assert_int_equal(errno, EBUSY);
        assert_int_equal(log_error_errno(-ENOENT, "open: %s", strerror(ENOENT)), -ENOENT);
        assert_int_equal(errno, EBUSY);
        assert_string_equal(captured(), "<6>x\n<3>open: No such file or directory\n");
        assert_int_equal(log_warn_errno(EACCES, "positive errno"), -EACCES);
        /* a filtered record still returns the error */
        log_set_max_level(LOG_ERR);
        assert_int_equal(log_warn_errno(-EIO, "filtered"), -EIO);
        log_set_max_level(LOG_DEBUG);
        captured();
}

static void test_long_message_cut_not_overflowed(void **state) {
        char big[5000];
        memset(big, 'a', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        log_info("%s", big);
        const char *out = captured();
        size_t n = strlen(out);
        assert_true(n > 1000 && n < 3000);
        assert_int_equal(out[n - 1], '\n');
        assert_memory_equal(out, "<6>aaa", 6);
}

static void test_journal_stream_mismatch_uses_stderr(void **state) {
        /* JOURNAL_STREAM naming another file: stay on stderr. */
        setenv("JOURNAL_STREAM", "1:1", 1);
        log_open();
        log_info("still stderr");
        assert_string_equal(captured(), "<6>still stderr\n");
        setenv("JOURNAL_STREAM", "garbage", 1);
        log_open();
        log_info("again");
        assert_string_equal(captured(), "<6>again\n");
        unsetenv("JOURNAL_STREAM");
        log_open();
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_levels_from_string),
                cmocka_unit_test_setup_teardown(test_stderr_format, setup, teardown),
                cmocka_unit_test_setup_teardown(test_max_level_filters, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errno_and_return, setup, teardown),
                cmocka_unit_test_setup_teardown(test_long_message_cut_not_overflowed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_stream_mismatch_uses_stderr, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
