/* SHA-256 (FIPS 180-4), a pure codec: no allocation, no I/O, no errors.
 *
 * Why our own: tpmidd hashes only a few small things (the state file, the EK
 * digest, the config digest, DPS/TPM byte strings), and linking OpenSSL's
 * libcrypto for that costs about 3 MiB of resident memory once it initialises,
 * in a daemon whose idle-RSS target is 4 MiB. This file is the whole cost.
 *
 * Use either the one-shot sha256() or init / update... / final on a struct
 * sha256 the caller owns (stack is fine; nothing to free). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32 /* bytes of a digest */
#define SHA256_BLOCK_LEN 64  /* bytes of one compression-function block */

struct sha256 {
        uint32_t h[8];                 /* chaining value */
        uint64_t len;                  /* bytes hashed so far */
        uint8_t buf[SHA256_BLOCK_LEN]; /* bytes of the current, incomplete block */
        size_t fill;                   /* how many of buf are in use: 0..SHA256_BLOCK_LEN-1 between calls */
};

/* Start a new digest in *s (any previous content is overwritten). */
void sha256_init(struct sha256 *s);

/* Hash len more bytes of data; data may be NULL only when len == 0. Any split
 * of the message over calls gives the same digest. */
void sha256_update(struct sha256 *s, const void *data, size_t len);

/* Write the digest of everything passed to sha256_update() since
 * sha256_init() to out, then wipe *s (explicit_zero), so it must be
 * sha256_init()ed again before reuse. */
void sha256_final(struct sha256 *s, uint8_t out[SHA256_DIGEST_LEN]);

/* One shot: out = SHA-256(data[0..len)); data may be NULL only when len == 0. */
void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_LEN]);
