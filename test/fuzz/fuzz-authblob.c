/* libFuzzer target for the DPS authenticationKey parser: any input must give
 * 0 with spans inside the input that tile it exactly, or -EBADMSG with an
 * error that formats; never a read outside the buffer. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "authblob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct authblob ab;
        struct authblob_error e;
        char msg[512];

        int r = authblob_parse(data, size, &ab, &e);
        if (r == -EBADMSG) {
                if ((unsigned)e.element >= _AUTHBLOB_ELEMENT_MAX || e.offset > size)
                        abort();
                authblob_error_format(&e, msg, sizeof(msg));
                return 0;
        }
        if (r != 0)
                abort();
        size_t off = 0;
        for (int i = 0; i < _AUTHBLOB_ELEMENT_MAX; i++) {
                if (i == AUTHBLOB_ENC_URI && !ab.has_enc_uri)
                        break;
                const struct authblob_span *s = &ab.el[i];
                if (s->raw != data + off || s->body != s->raw + 2 || s->raw_len != s->body_len + 2 ||
                    s->body_len > authblob_element_max((enum authblob_element)i))
                        abort();
                /* Touch every byte so ASan checks the span. */
                volatile uint8_t x = 0;
                for (size_t j = 0; j < s->raw_len; j++)
                        x ^= s->raw[j];
                (void)x;
                off += s->raw_len;
        }
        if (off + ab.trailing != size)
                abort();
        return 0;
}
