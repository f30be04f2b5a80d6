/* Exponential backoff with full jitter; see backoff.h. */
#include "backoff.h"

#include <stdlib.h>

static uint64_t default_random(void *userdata) {
        (void)userdata;
        return (uint64_t)arc4random() << 32 | arc4random();
}

void backoff_init(struct backoff *b, uint64_t base_ms, uint64_t cap_ms, backoff_random_fn rnd, void *userdata) {
        b->attempts = 0;
        b->base_ms = base_ms ? base_ms : BACKOFF_BASE_MS;
        b->cap_ms = cap_ms ? cap_ms : BACKOFF_CAP_MS;
        if (b->cap_ms < b->base_ms)
                b->cap_ms = b->base_ms;
        b->rnd = rnd ? rnd : default_random;
        b->userdata = userdata;
}

uint64_t backoff_ceiling(const struct backoff *b) {
        uint64_t c = b->base_ms;

        /* Double until the cap; stop early so the shift can never overflow. */
        for (uint32_t i = 0; i < b->attempts && c < b->cap_ms; i++)
                c *= 2;
        return c < b->cap_ms ? c : b->cap_ms;
}

uint64_t backoff_next(struct backoff *b, uint64_t floor_ms) {
        uint64_t ceil = backoff_ceiling(b), d;

        if (ceil <= BACKOFF_MIN_MS)
                d = ceil;
        else
                /* uniform in [MIN, ceil]; modulo bias is < 2^-40 for ceil <= 5 min */
                d = BACKOFF_MIN_MS + b->rnd(b->userdata) % (ceil - BACKOFF_MIN_MS + 1);
        if (floor_ms > b->cap_ms)
                floor_ms = b->cap_ms;
        if (d < floor_ms)
                d = floor_ms;
        if (b->attempts < UINT32_MAX)
                b->attempts++;
        return d;
}

void backoff_reset(struct backoff *b) {
        b->attempts = 0;
}
