/* libFuzzer target: the hub module registry replies (lib/module.c). Byte 0
 * picks the parser (mod 3): 0 module_hub_parse_one, 1 module_hub_parse_list,
 * 2 module_hub_parse_error; the rest is the reply body. An accepted module
 * must make a valid create body that parses back to the same ids. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "module.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void roundtrip(const struct module_hub_entry *e) {
        char *body = NULL;
        struct module_hub_entry again;
        if (module_hub_body(e->module_id, e->device_id, NULL, 0, NULL, 0, &body) != 0)
                abort();
        if (module_hub_parse_one(body, strlen(body), &again) != 0 || strcmp(again.module_id, e->module_id) != 0 ||
            strcmp(again.device_id, e->device_id) != 0)
                abort();
        free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        const char *text = (const char *)data + 1;
        size_t len = size - 1;
        switch (data[0] % 3) {
        case 0: {
                struct module_hub_entry e;
                if (module_hub_parse_one(text, len, &e) == 0)
                        roundtrip(&e);
                break;
        }
        case 1: {
                struct module_hub_entry *v = NULL;
                size_t n = 0;
                if (module_hub_parse_list(text, len, &v, &n) == 0) {
                        if (n > MODULE_MAX_MODULES || (n == 0) != (v == NULL))
                                abort();
                        for (size_t i = 0; i < n; i++)
                                roundtrip(&v[i]);
                        free(v);
                }
                break;
        }
        default: {
                char msg[MODULE_ERROR_MAX];
                bool net;
                module_hub_parse_error(text, len, msg, sizeof msg, &net);
                if (strlen(msg) >= sizeof msg)
                        abort();
                for (const char *p = msg; *p; p++)
                        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                                abort();
                break;
        }
        }
        return 0;
}
