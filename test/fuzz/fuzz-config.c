/* libFuzzer target for lib/config.c: validate arbitrary bytes as a tpmidd
 * configuration. Invariants: the return value agrees with the error count;
 * every diagnostic has a file and a message and formats; a config that
 * validates serialises (config_format_toml) to text that validates again to
 * an equal config (config_diff == 0). */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "config-diff.h"
#include "config-write.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct config_diags d = {0};
        struct tpmid_config *c = NULL;
        int r = config_parse_string((const char *)data, size, "fuzz.toml", &c, &d);
        assert(r == 0 || r == -EINVAL || r == -ENOMEM);
        if (r == 0)
                assert(c && d.n_errors == 0);
        else {
                assert(!c);
                assert(r == -ENOMEM || d.n_errors > 0);
        }
        assert(d.n <= CONFIG_MAX_DIAGS);
        for (size_t i = 0; i < d.n; i++) {
                assert(d.items[i].file && d.items[i].message);
                char *s = config_format_diag(&d.items[i]);
                assert(s);
                free(s);
        }
        config_diags_free(&d);
        if (c) {
                char *text = NULL;
                assert(config_format_toml(c, "fuzz", &text) == 0);
                struct tpmid_config *again = NULL;
                struct config_diags d2 = {0};
                r = config_parse_string(text, strlen(text), "again.toml", &again, &d2);
                assert(r == 0 && d2.n_errors == 0);
                assert(config_diff(c, again, NULL) == 0);
                config_free(again);
                config_diags_free(&d2);
                free(text);
                config_free(c);
        }
        return 0;
}
