/* Tests for lib/sha256.c: the FIPS 180-4 / NIST example vectors, then a
 * differential comparison with OpenSSL's EVP SHA-256 (the implementation the
 * module replaces) over every length 0..300, random lengths up to 10 kB, every
 * two-way split of the padding-boundary lengths, and random chunkings, plus
 * the API's promises (NULL with 0 bytes, wipe on final, reuse after init). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "sha256.h"

#define MAX_RANDOM_LEN 10240  /* bytes: longest message of the random-length tests */
#define RANDOM_ROUNDS 300     /* messages of random length */
#define EVERY_LEN_MAX 300     /* bytes: every length 0..this is compared */
#define MILLION 1000000       /* bytes of 'a' in the long NIST vector */

static uint8_t data[MAX_RANDOM_LEN + 16]; /* + room for a misaligned start */

/* splitmix64: deterministic, so a failure reproduces */
static uint64_t rnd_state = 0x5eed5eed12345678ull;
static uint64_t rnd(void) {
        uint64_t z = (rnd_state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static size_t rnd_below(size_t n) {
        return (size_t)(rnd() % n);
}

static int setup(void **state) {
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t)rnd();
        return 0;
}

static void to_hex(const uint8_t d[SHA256_DIGEST_LEN], char out[2 * SHA256_DIGEST_LEN + 1]) {
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < SHA256_DIGEST_LEN; i++) {
                out[2 * i] = digits[d[i] >> 4];
                out[2 * i + 1] = digits[d[i] & 15];
        }
        out[2 * SHA256_DIGEST_LEN] = '\0';
}

static void assert_digest_hex(const uint8_t d[SHA256_DIGEST_LEN], const char *want) {
        char hex[2 * SHA256_DIGEST_LEN + 1];
        to_hex(d, hex);
        assert_string_equal(hex, want);
}

static void evp(const uint8_t *p, size_t len, uint8_t out[SHA256_DIGEST_LEN]) {
        unsigned n = 0;
        assert_int_equal(EVP_Digest(p, len, out, &n, EVP_sha256(), NULL), 1);
        assert_int_equal(n, SHA256_DIGEST_LEN);
}

/* Our digest of p[0..len) fed in chunks of random size (0 included, so empty
 * updates between real ones are exercised too), at most max_chunk bytes. */
static void ours_chunked(const uint8_t *p, size_t len, size_t max_chunk, uint8_t out[SHA256_DIGEST_LEN]) {
        struct sha256 s;
        size_t off = 0;

        sha256_init(&s);
        while (off < len) {
                size_t n = rnd_below(max_chunk + 1);
                if (n > len - off)
                        n = len - off;
                sha256_update(&s, p + off, n);
                off += n;
        }
        sha256_final(&s, out);
}

/* Compares one-shot, byte-at-a-time when short, and two random chunkings
 * against EVP; the message starts at a random (often misaligned) offset. */
static void check_len(size_t len) {
        const uint8_t *p = data + rnd_below(16);
        uint8_t want[SHA256_DIGEST_LEN], got[SHA256_DIGEST_LEN];

        evp(p, len, want);
        sha256(p, len, got);
        if (memcmp(got, want, sizeof(want)) != 0)
                fail_msg("one shot differs from EVP at length %zu", len);
        ours_chunked(p, len, 70, got);
        if (memcmp(got, want, sizeof(want)) != 0)
                fail_msg("chunks of <= 70 bytes differ from EVP at length %zu", len);
        ours_chunked(p, len, 300, got);
        if (memcmp(got, want, sizeof(want)) != 0)
                fail_msg("chunks of <= 300 bytes differ from EVP at length %zu", len);
        if (len <= 2 * SHA256_BLOCK_LEN + 1) {
                ours_chunked(p, len, 1, got); /* 0 or 1 byte per update */
                if (memcmp(got, want, sizeof(want)) != 0)
                        fail_msg("byte-at-a-time differs from EVP at length %zu", len);
        }
}

/* FIPS 180-4 / NIST CAVP example messages. */
static void test_nist_vectors(void **state) {
        static const struct {
                const char *msg, *hex;
        } v[] = {
                {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
                {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
                {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", /* 448 bits */
                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
                {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopq"
                 "rstnopqrstu", /* 896 bits: two blocks once padded */
                 "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
        };
        uint8_t d[SHA256_DIGEST_LEN];

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct sha256 s;
                size_t n = strlen(v[i].msg);

                sha256(v[i].msg, n, d);
                assert_digest_hex(d, v[i].hex);
                /* the same through init / update / final, split in the middle */
                sha256_init(&s);
                sha256_update(&s, v[i].msg, n / 2);
                sha256_update(&s, v[i].msg + n / 2, n - n / 2);
                sha256_final(&s, d);
                assert_digest_hex(d, v[i].hex);
        }
        sha256(NULL, 0, d);
        assert_digest_hex(d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* One million 'a', fed in odd-sized chunks that never line up with blocks. */
static void test_million_a(void **state) {
        static const size_t chunks[] = {1, 3, 7, 61, 63, 65, 127, 129, 1001, 4099};
        static const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
        uint8_t a[4099], d[SHA256_DIGEST_LEN];

        memset(a, 'a', sizeof(a));
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
                struct sha256 s;
                size_t left = MILLION;

                sha256_init(&s);
                while (left > 0) {
                        size_t n = left < chunks[c] ? left : chunks[c];
                        sha256_update(&s, a, n);
                        left -= n;
                }
                sha256_final(&s, d);
                assert_digest_hex(d, want);
        }
}

static void test_every_length(void **state) {
        for (size_t len = 0; len <= EVERY_LEN_MAX; len++)
                check_len(len);
}

static void test_random_lengths(void **state) {
        for (int i = 0; i < RANDOM_ROUNDS; i++)
                check_len(rnd_below(MAX_RANDOM_LEN + 1));
        check_len(MAX_RANDOM_LEN);
}

/* Lengths where the padding changes shape (the 0x80 and the 8-byte length
 * just fit, just do not, or a block is exactly full), split at every point. */
static void test_boundaries(void **state) {
        static const size_t lens[] = {55, 56, 63, 64, 65, 119, 120, 127, 128};
        uint8_t want[SHA256_DIGEST_LEN], got[SHA256_DIGEST_LEN];

        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
                size_t len = lens[i];

                evp(data, len, want);
                for (size_t k = 0; k <= len; k++) {
                        struct sha256 s;
                        sha256_init(&s);
                        sha256_update(&s, data, k);
                        sha256_update(&s, NULL, 0);
                        sha256_update(&s, data + k, len - k);
                        sha256_final(&s, got);
                        if (memcmp(got, want, sizeof(want)) != 0)
                                fail_msg("length %zu split at %zu differs from EVP", len, k);
                }
                check_len(len);
        }
}

/* final wipes the context; init makes it usable again; empty updates change
 * nothing. */
static void test_wipe_and_reuse(void **state) {
        static const uint8_t zero[sizeof(struct sha256)];
        struct sha256 s;
        uint8_t d1[SHA256_DIGEST_LEN], d2[SHA256_DIGEST_LEN];

        sha256_init(&s);
        sha256_update(&s, NULL, 0);
        sha256_update(&s, "secret key material", 19);
        sha256_update(&s, NULL, 0);
        sha256_final(&s, d1);
        assert_memory_equal(&s, zero, sizeof(s));

        sha256_init(&s);
        sha256_update(&s, "secret key material", 19);
        sha256_final(&s, d2);
        assert_memory_equal(d1, d2, sizeof(d1));
        evp((const uint8_t *)"secret key material", 19, d2);
        assert_memory_equal(d1, d2, sizeof(d1));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_nist_vectors),   cmocka_unit_test(test_million_a),
                cmocka_unit_test(test_every_length),   cmocka_unit_test(test_random_lengths),
                cmocka_unit_test(test_boundaries),     cmocka_unit_test(test_wipe_and_reuse),
        };
        return cmocka_run_group_tests(tests, setup, NULL);
}
