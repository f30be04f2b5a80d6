/* tpmidd's own TCTI for swtpm's data socket (what "swtpm:" names in [tpm]
 * tcti). The wire protocol is the one libtss2-tcti-swtpm speaks: the raw
 * TPM command out, the raw response back. Calls block, like every TPM call
 * in tpmidd (they run on the TPM worker thread, or in tpmidctl).
 *
 * Why not libtss2-tcti-swtpm: it connects for every command, so that other
 * programs get their turn (swtpm serves one connection at a time). That is
 * a socket, a connect and a close here and an accept and a close in swtpm,
 * per command, on the critical path of every signature. Here the connection
 * stays open after a response, so commands that follow each other closely
 * skip all that; the owner gives it back with tcti_swtpm_release() when it
 * goes idle (tpmidd: TPM_IDLE_RELEASE_MS after the last command), and
 * another program that connects meanwhile waits in swtpm's listen queue
 * until then, and under a steady stream of commands at most
 * TCTI_SWTPM_KEEP_MAX_MS: a connection older than that is closed before the
 * next command, and swtpm serves whoever queued first. A kept connection
 * that swtpm closed (a restart) is noticed before the next command and
 * replaced. (/dev/tpmrm0 needs none of this: the device stays open and the
 * kernel's resource manager lets others in between commands.)
 *
 * receive() blocks until the whole response is there; it accepts only
 * TSS2_TCTI_TIMEOUT_BLOCK (SAPI's Tss2_Sys_Execute() and ESAPI's default),
 * and there are no poll handles (getPollHandles: not implemented), as in
 * libtss2-tcti-swtpm.
 *
 * The configuration string is libtss2-tcti-swtpm's: "path=SOCKET",
 * "host=HOST,port=PORT", or empty (localhost:2321). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <tss2/tss2_tcti.h>

#define TCTI_SWTPM_MAX_MESSAGE 4096 /* bytes of one command or response (libtpms' TPM2_MAX_COMMAND_SIZE) */
#define TCTI_SWTPM_CONF_MAX 512     /* bytes of the configuration string */
#define TCTI_SWTPM_DEFAULT_PORT 2321
#define TCTI_SWTPM_KEEP_MAX_MS 100  /* ms one connection carries commands before others get a turn */

struct tcti_swtpm_conf {
        bool unix_socket;
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* unix_socket */
        char host[256];                                         /* !unix_socket */
        uint16_t port;
};

/* Parse a configuration string (NULL or "" = localhost:2321). Pure. Returns
 * 0, or -EINVAL for an unknown key, an empty or too long value, or a port
 * that is not 1..65535. */
int tcti_swtpm_parse_conf(const char *conf, struct tcti_swtpm_conf *out);

/* What the first have bytes of a response stream are: 0 = a response not
 * yet complete, 1 = exactly one complete response (*len = its size),
 * -EBADMSG = not a response (its header's size is below 10 or above
 * TCTI_SWTPM_MAX_MESSAGE, or more bytes than that size arrived; swtpm sends
 * one response per command). Pure. */
int tcti_swtpm_response_state(const uint8_t *buf, size_t have, size_t *len);

/* Create the TCTI and check that swtpm accepts a connection (as
 * libtss2-tcti-swtpm does, so "not running" shows at open). Returns 0 and
 * *ret (free with tcti_swtpm_free()), -EINVAL for a bad conf, -ENOMEM, or
 * the connect errno (-ENOENT, -EACCES, -ECONNREFUSED, ...). */
int tcti_swtpm_new(const char *conf, TSS2_TCTI_CONTEXT **ret);

/* Finalize and free; NULL-safe, returns NULL. */
TSS2_TCTI_CONTEXT *tcti_swtpm_free(TSS2_TCTI_CONTEXT *tcti);

/* Close the connection kept from the last command, so another program can
 * talk to swtpm. Returns true if one was closed; false (nothing done) when
 * there was none or a command is in flight. The next command connects
 * again. */
bool tcti_swtpm_release(TSS2_TCTI_CONTEXT *tcti);

/* Whether tcti was made by tcti_swtpm_new(). */
bool tcti_swtpm_is(const TSS2_TCTI_CONTEXT *tcti);
