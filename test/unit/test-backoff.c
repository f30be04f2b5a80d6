/* Tests for lib/backoff.c with a seeded generator: bounds, growth, cap,
 * Retry-After floor, reset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "backoff.h"

/* splitmix64: deterministic, good enough spread for statistics */
static uint64_t rnd(void *userdata) {
        uint64_t *s = userdata, z = (*s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static uint64_t zero_rnd(void *userdata) {
        return 0;
}
static uint64_t max_rnd(void *userdata) {
        return UINT64_MAX;
}

static void test_ceiling_growth(void **state) {
        struct backoff b;
        uint64_t seed = 1;
        const uint64_t expect[] = {2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000, 300000};

        backoff_init(&b, 0, 0, rnd, &seed);
        assert_int_equal(b.base_ms, BACKOFF_BASE_MS);
        assert_int_equal(b.cap_ms, BACKOFF_CAP_MS);
        for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
                assert_int_equal(backoff_ceiling(&b), expect[i]);
                uint64_t d = backoff_next(&b, 0);
                assert_true(d >= BACKOFF_MIN_MS && d <= expect[i]);
                assert_int_equal(b.attempts, i + 1);
        }
        /* far past the cap the shift must not overflow */
        b.attempts = UINT32_MAX - 1;
        assert_int_equal(backoff_ceiling(&b), BACKOFF_CAP_MS);
        backoff_next(&b, 0);
        backoff_next(&b, 0);
        assert_int_equal(b.attempts, UINT32_MAX); /* saturates */
        backoff_reset(&b);
        assert_int_equal(b.attempts, 0);
        assert_int_equal(backoff_ceiling(&b), BACKOFF_BASE_MS);
}

static void test_extremes(void **state) {
        struct backoff b;

        backoff_init(&b, 0, 0, zero_rnd, NULL);
        assert_int_equal(backoff_next(&b, 0), BACKOFF_MIN_MS); /* never 0 */
        backoff_init(&b, 0, 0, max_rnd, NULL);
        for (int i = 0; i < 20; i++)
                assert_true(backoff_next(&b, 0) <= BACKOFF_CAP_MS);
        /* base below the minimum: the ceiling wins */
        backoff_init(&b, 100, 1000, zero_rnd, NULL);
        assert_int_equal(backoff_next(&b, 0), 100);
        /* cap below base is raised to base */
        backoff_init(&b, 5000, 10, zero_rnd, NULL);
        assert_int_equal(b.cap_ms, 5000);
}

static void test_statistics(void **state) {
        /* Full jitter: at each attempt the mean is ~ (MIN + ceiling) / 2 and the
         * draws cover the range. 4000 draws per attempt, fixed seed. */
        uint64_t seed = 42;
        for (uint32_t attempt = 0; attempt < 10; attempt++) {
                struct backoff b;
                double sum = 0;
                uint64_t lo = UINT64_MAX, hi = 0, ceil;
                const int n = 4000;

                backoff_init(&b, 0, 0, rnd, &seed);
                b.attempts = attempt;
                ceil = backoff_ceiling(&b);
                for (int i = 0; i < n; i++) {
                        b.attempts = attempt;
                        uint64_t d = backoff_next(&b, 0);
                        assert_true(d >= BACKOFF_MIN_MS && d <= ceil);
                        sum += (double)d;
                        lo = d < lo ? d : lo;
                        hi = d > hi ? d : hi;
                }
                double mean = sum / n, expect = (BACKOFF_MIN_MS + (double)ceil) / 2;
                if (mean < expect * 0.95 || mean > expect * 1.05)
                        fail_msg("attempt %u: mean %.0f, expected ~%.0f", attempt, mean, expect);
                /* spread: near both ends of the range */
                assert_true(lo < BACKOFF_MIN_MS + (ceil - BACKOFF_MIN_MS) / 20);
                assert_true(hi > ceil - (ceil - BACKOFF_MIN_MS) / 20);
        }
}

static void test_floor(void **state) {
        struct backoff b;
        uint64_t seed = 7;

        backoff_init(&b, 0, 0, rnd, &seed);
        for (int i = 0; i < 100; i++) {
                b.attempts = 0; /* ceiling 2 s */
                assert_true(backoff_next(&b, 30000) == 30000);
        }
        /* floor above the cap is limited to the cap */
        assert_int_equal(backoff_next(&b, 10 * BACKOFF_CAP_MS), BACKOFF_CAP_MS);
        /* a floor below the draw does not lower it */
        backoff_init(&b, 0, 0, max_rnd, NULL);
        b.attempts = 3; /* ceiling 16 s; max_rnd lands near the top */
        assert_true(backoff_next(&b, 1000) > 1000);
}

static void test_default_random(void **state) {
        struct backoff b;

        backoff_init(&b, 0, 0, NULL, NULL);
        assert_non_null(b.rnd);
        for (int i = 0; i < 50; i++) {
                uint64_t c = backoff_ceiling(&b), d = backoff_next(&b, 0);
                assert_true(d >= BACKOFF_MIN_MS && d <= c);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_ceiling_growth), cmocka_unit_test(test_extremes),
                cmocka_unit_test(test_statistics),     cmocka_unit_test(test_floor),
                cmocka_unit_test(test_default_random),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
