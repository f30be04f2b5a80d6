/* A small blocking HTTP/1.1 client over a Unix socket, for tpmidctl talking
 * to tpmidd (the same API aziot clients use). One request per connection
 * ("Connection: close"), JSON bodies, an overall deadline. */
#pragma once

#include <stddef.h>

#include "tpm.h"

#define CTL_CLIENT_TIMEOUT_MS 10000               /* ms for connect + request + whole response */
#define CTL_CLIENT_MAX_RESPONSE_BYTES (1u << 20)  /* bytes of a response we accept */
#define CTL_CLIENT_TPMD_API_VERSION "2020-09-01"

struct ctl_response {
        int status;   /* HTTP status */
        char *body;   /* NUL-terminated heap copy of the body (possibly ""); free with ctl_response_done() */
        size_t body_len;
};

/* Send METHOD target (path + query, e.g. "/get_tpm_keys?api-version=2020-09-01")
 * with an optional JSON body to the server on socket_path, and wait for the
 * answer at most timeout_ms (<= 0: CTL_CLIENT_TIMEOUT_MS). Returns 0 and fills
 * *ret (any HTTP status counts as success here), or -errno: -ENOENT/-ECONNREFUSED
 * (no daemon), -EACCES (socket permissions), -ETIMEDOUT, -EBADMSG (not HTTP),
 * -EFBIG (response too large), -ENOMEM. */
int ctl_client_request(const char *socket_path, const char *method, const char *target, const char *json_body,
                       int timeout_ms, struct ctl_response *ret);

/* Free what a response holds and zero it. */
void ctl_response_done(struct ctl_response *r);

/* The TPM socket tpmidctl should talk to: [endpoints] aziot_tpmd of the
 * daemon's configuration ($TPMIDD_CONFIG, else /etc/aziot/tpmidd/config.toml,
 * else /etc/aziot/config.toml) or /run/aziot/tpmd.sock. Returns a heap string
 * (caller frees) or NULL on OOM. */
char *ctl_client_tpmd_socket(void);

/* GET /get_tpm_keys from the daemon and decode the marshalled EK and SRK
 * publics. On failure returns -errno and writes one sentence for the user
 * into errbuf (e.g. the daemon's {"message"}). -ECONNREFUSED/-ENOENT mean the
 * daemon is not running: tpmidctl then says to use --tcti. An HTTP error
 * answer gives -EACCES (401/403), -EAGAIN (503), -EPROTO (502) or -EIO, which
 * ctl_exit_from_errno() turns into the exit code. */
int ctl_client_get_tpm_keys(const char *socket_path, struct tpm_public *ek, struct tpm_public *srk, char *errbuf,
                            size_t errlen);
