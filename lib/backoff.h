/* Exponential backoff with full jitter and a cap ("Exponential Backoff And
 * Jitter", AWS architecture blog): attempt n waits a uniform random time in
 * [BACKOFF_MIN_MS, min(cap, base * 2^n)], then at least the server's
 * Retry-After. Full jitter spreads a fleet that lost DPS at the same moment.
 *
 * Pure: the random source is injected (tests pass a seeded generator); NULL
 * selects arc4random(), which needs no I/O and no seeding. */
#pragma once

#include <stdint.h>

#define BACKOFF_BASE_MS 2000u   /* ms: ceiling of the first retry */
#define BACKOFF_CAP_MS 300000u  /* ms: ceiling never exceeds 5 min */
#define BACKOFF_MIN_MS 500u     /* ms: never retry sooner, even when jitter draws ~0 */

/* Returns 64 uniformly random bits. */
typedef uint64_t (*backoff_random_fn)(void *userdata);

struct backoff {
        uint32_t attempts; /* backoff_next() calls since init/reset */
        uint64_t base_ms, cap_ms;
        backoff_random_fn rnd;
        void *userdata;
};

/* base_ms/cap_ms 0 → BACKOFF_BASE_MS/BACKOFF_CAP_MS; cap < base is raised to
 * base. rnd NULL → arc4random. Cannot fail. */
void backoff_init(struct backoff *b, uint64_t base_ms, uint64_t cap_ms, backoff_random_fn rnd, void *userdata);

/* The delay before the next attempt in ms, and count the attempt. floor_ms is
 * the server's Retry-After in ms (0 = none): the result is max(jittered,
 * floor_ms), where floor_ms itself is limited to cap_ms. */
uint64_t backoff_next(struct backoff *b, uint64_t floor_ms);

/* The ceiling the next backoff_next() draws under (for status/tests). */
uint64_t backoff_ceiling(const struct backoff *b);

/* Success: start over at the base. */
void backoff_reset(struct backoff *b);
