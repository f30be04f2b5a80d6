/* libFuzzer target: aziot-keyd's replies (lib/module.c). Byte 0 picks (mod
 * 4): 0 module_keyd_parse_handle, 1 module_keyd_parse_key, 2
 * module_keyd_parse_error on the rest; 3 module_http_response_parse, the
 * strict HTTP/1.1 response reader, fed the rest in two pieces split at byte
 * 1 (a complete answer from the prefix must be the same answer from the
 * whole, and a body lies inside the buffer). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "module.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void http(const uint8_t *data, size_t size) {
        if (size < 1)
                return;
        size_t cut = data[0];
        data++;
        size--;
        if (cut > size)
                cut = size;
        char *a = malloc(size + 1), *b = malloc(size + 1);
        if (!a || !b)
                abort();
        memcpy(a, data, size);
        memcpy(b, data, size);
        int st1 = 0, st2 = 0;
        const char *b1 = NULL, *b2 = NULL;
        size_t l1 = 0, l2 = 0;
        int r1 = module_http_response_parse(a, cut, false, &st1, &b1, &l1);
        int r2 = module_http_response_parse(b, size, true, &st2, &b2, &l2);
        if (r2 == 1 && (st2 < 200 || st2 > 599 || b2 < b || b2 + l2 > b + size))
                abort();
        if (r1 == 1 && size <= MODULE_KEYD_RESPONSE_MAX) {
                if (b1 < a || b1 + l1 > a + cut)
                        abort();
                /* the prefix was complete: the whole says the same (a
                 * body that runs to the end of the connection is the one
                 * exception, and needs eof, which the prefix did not have) */
                if (r2 != 1 || st1 != st2 || l1 != l2 || memcmp(b1, b2, l1) != 0)
                        abort();
        }
        free(a);
        free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        const char *text = (const char *)data + 1;
        size_t len = size - 1;
        switch (data[0] % 4) {
        case 0: {
                char *h = NULL;
                if (module_keyd_parse_handle(text, len, &h) == 0) {
                        char *body = NULL;
                        if (strlen(h) == 0 || strlen(h) > MODULE_KEY_HANDLE_MAX || module_keyd_export_body(h, &body) != 0)
                                abort();
                        free(body);
                        free(h);
                }
                break;
        }
        case 1: {
                uint8_t *k = NULL;
                size_t n = 0;
                if (module_keyd_parse_key(text, len, &k, &n) == 0) {
                        if (n == 0 || n > MODULE_KEY_MAX_BYTES)
                                abort();
                        free(k);
                }
                break;
        }
        case 2: {
                char msg[MODULE_ERROR_MAX];
                module_keyd_parse_error(text, len, msg, sizeof msg);
                if (strlen(msg) >= sizeof msg)
                        abort();
                break;
        }
        default:
                http(data + 1, size - 1);
                break;
        }
        return 0;
}
