/* libFuzzer target: lib/sha256.c against OpenSSL's EVP SHA-256 (differential).
 *
 * Input: byte 0 = k (low 4 bits, 0..15), then k chunk-size bytes, then the
 * message (the rest). The message is fed to sha256_update() in chunks of
 * those sizes, cycling through them (a 0 is an empty update, made with a
 * NULL pointer as the API allows; k == 0 or all sizes 0 means one update of
 * everything). The digest must equal EVP's one-shot digest and our own
 * one-shot sha256(); abort() on any mismatch. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "sha256.h"

#define MAX_SPLITS 15 /* chunk-size bytes at the head of an input (low 4 bits of byte 0) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint8_t want[SHA256_DIGEST_LEN], got[SHA256_DIGEST_LEN];
        const uint8_t *splits, *msg;
        size_t k, len, off = 0, i = 0;
        bool any = false;
        unsigned n = 0;
        struct sha256 s;

        if (size == 0)
                return 0;
        k = data[0] & MAX_SPLITS;
        if (size < 1 + k)
                return 0;
        splits = data + 1;
        msg = data + 1 + k;
        len = size - 1 - k;
        for (size_t j = 0; j < k; j++)
                any = any || splits[j] != 0;

        if (EVP_Digest(msg, len, want, &n, EVP_sha256(), NULL) != 1 || n != SHA256_DIGEST_LEN)
                abort();

        sha256_init(&s);
        if (!any) {
                sha256_update(&s, NULL, 0);
                sha256_update(&s, msg, len);
        } else {
                /* Some size is non-zero, so every k steps make progress. */
                while (off < len) {
                        size_t c = splits[i++ % k];
                        if (c > len - off)
                                c = len - off;
                        sha256_update(&s, c ? msg + off : NULL, c);
                        off += c;
                }
        }
        sha256_final(&s, got);
        if (memcmp(got, want, sizeof(want)) != 0)
                abort();

        sha256(len ? msg : NULL, len, got);
        if (memcmp(got, want, sizeof(want)) != 0)
                abort();
        return 0;
}
