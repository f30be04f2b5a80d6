/* libFuzzer target for the tpmidd ↔ tpmidd-https frame codec. The input is a
 * byte stream as the socket delivers it: frames are split off with
 * https_ipc_frame_peek() and decoded one by one. Every frame must decode to
 * 0 or -EBADMSG (never a read outside the frame), and whatever decodes must
 * encode back to exactly the same bytes: the encoding is canonical, so a
 * difference means the decoder accepted something the encoder cannot
 * produce or lost a field. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "https-ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_frame(const uint8_t *p, size_t n) {
        struct https_ipc_msg m;
        int r = https_ipc_decode(p, n, &m);
        if (r == -EBADMSG)
                return;
        if (r != 0)
                abort();
        uint8_t *again = NULL;
        size_t len = 0;
        if (https_ipc_encode(&m, &again, &len) != 0 || len != n || memcmp(again, p, n) != 0)
                abort();
        free(again);
        https_ipc_msg_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        size_t off = 0;
        while (off < size) {
                size_t total;
                int r = https_ipc_frame_peek(data + off, size - off, &total);
                if (r == -EAGAIN || r == -EBADMSG || (r == 0 && total > size - off)) {
                        /* what is left is no whole frame: it must not decode */
                        struct https_ipc_msg m;
                        if (https_ipc_decode(data + off, size - off, &m) != -EBADMSG)
                                abort();
                        return 0;
                }
                if (r != 0 || total < HTTPS_IPC_HEADER_BYTES + 1)
                        abort();
                one_frame(data + off, total);
                off += total;
        }
        return 0;
}
