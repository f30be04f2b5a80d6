/* libFuzzer target: state_parse() on arbitrary bytes. The digest line would
 * stop the fuzzer at the door, so when the first byte is odd the rest gets a
 * correct "sha256:" trailer appended and the JSON field checks are fuzzed too.
 * An accepted state must survive format → parse unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const uint8_t *data, size_t size) {
        struct tpmid_state st, again;
        char *buf;
        size_t len;

        if (state_parse(data, size, &st) != 0)
                return;
        if (state_format(&st, &buf, &len) != 0)
                abort();
        if (state_parse((const uint8_t *)buf, len, &again) != 0 || memcmp(&st, &again, sizeof(st)) != 0)
                abort();
        free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint8_t *buf, dig[32];
        unsigned n;

        check(data, size);
        if (size == 0 || !(data[0] & 1) || size > STATE_MAX_BYTES)
                return 0;
        buf = malloc(size + 80);
        if (!buf)
                return 0;
        memcpy(buf, data + 1, size - 1);
        buf[size - 1] = '\n';
        if (EVP_Digest(buf, size, dig, &n, EVP_sha256(), NULL) == 1) {
                size_t len = size;
                len += (size_t)sprintf((char *)buf + len, "sha256:");
                for (unsigned i = 0; i < 32; i++)
                        len += (size_t)sprintf((char *)buf + len, "%02x", dig[i]);
                buf[len++] = '\n';
                check(buf, len);
        }
        free(buf);
        return 0;
}
