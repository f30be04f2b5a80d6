/* libFuzzer target: module_cache_parse() on arbitrary bytes. The digest line
 * would stop the fuzzer at the door, so when the first byte is odd the rest
 * gets a correct "sha256:" trailer appended and the JSON checks are fuzzed
 * too. An accepted cache must survive format → parse unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "module.h"
#include "sha256.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const char *buf, size_t len) {
        struct module_cache c, again;
        if (module_cache_parse(buf, len, &c) != 0)
                return;
        char *text = NULL;
        size_t n = 0;
        if (module_cache_format(&c, &text, &n) != 0)
                abort();
        if (module_cache_parse(text, n, &again) != 0 || again.n_modules != c.n_modules ||
            strcmp(again.hub, c.hub) != 0 || strcmp(again.device_id, c.device_id) != 0)
                abort();
        for (size_t i = 0; i < c.n_modules; i++)
                if (strcmp(again.modules[i].module_id, c.modules[i].module_id) != 0 ||
                    strcmp(again.modules[i].gen_id, c.modules[i].gen_id) != 0 ||
                    again.modules[i].principal != c.modules[i].principal)
                        abort();
        free(text);
        module_cache_clear(&c);
        module_cache_clear(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        check((const char *)data, size);
        if (size == 0 || !(data[0] & 1) || size > MODULE_CACHE_MAX_BYTES)
                return 0;
        char *buf = malloc(size + 80);
        if (!buf)
                return 0;
        memcpy(buf, data + 1, size - 1);
        buf[size - 1] = '\n';
        uint8_t dig[SHA256_DIGEST_LEN];
        sha256(buf, size, dig);
        size_t len = size;
        len += (size_t)sprintf(buf + len, "sha256:");
        for (unsigned i = 0; i < SHA256_DIGEST_LEN; i++)
                len += (size_t)sprintf(buf + len, "%02x", dig[i]);
        buf[len++] = '\n';
        check(buf, len);
        free(buf);
        return 0;
}
