/* libFuzzer target for lib/tcti-swtpm.c's two parsers: the configuration
 * string (first byte even) and the framing of swtpm's response stream
 * (first byte odd). Invariants: a complete response is exactly its header's
 * size and within the limit, and every shorter prefix of it is "need more". */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tcti-swtpm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        if ((data[0] & 1) == 0) {
                char *s = malloc(size);
                if (!s)
                        return 0;
                memcpy(s, data + 1, size - 1);
                s[size - 1] = '\0';
                struct tcti_swtpm_conf c;
                if (tcti_swtpm_parse_conf(s, &c) == 0) {
                        if (c.unix_socket ? !c.path[0] : (!c.host[0] || c.port == 0))
                                abort();
                }
                free(s);
                return 0;
        }
        size_t len = 0;
        int r = tcti_swtpm_response_state(data + 1, size - 1, &len);
        if (r == 1) {
                if (len != size - 1 || len < 10 || len > TCTI_SWTPM_MAX_MESSAGE)
                        abort();
                for (size_t n = 0; n < len; n++) {
                        size_t l2 = 0;
                        if (tcti_swtpm_response_state(data + 1, n, &l2) != 0)
                                abort();
                }
        } else if (r != 0 && r != -EBADMSG) {
                abort();
        }
        return 0;
}
