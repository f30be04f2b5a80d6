/* The daemon's GET /status document (tpmidd-api(7), lib/api.c's
 * api_encode_status) as tpmidctl reads it: fetched once, and its DPS result
 * turned into one sentence and one fix. Shared by system status, system
 * reprovision, check and support-bundle so they say the same thing. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* The identity socket: [endpoints] aziot_identityd of the configuration the
 * daemon reads (as ctl_client_tpmd_socket() finds it), else the default.
 * Heap string, NULL on OOM. */
char *ctl_status_identity_socket(void);

/* GET /status from sock. Returns 0 and *ret (a JSON object, caller
 * json_decref()s), or -errno from ctl_client_request(), or -EACCES (401/403),
 * -EAGAIN (503), -EIO (another status), -EBADMSG (not a JSON object); then
 * err holds one sentence. */
int ctl_status_fetch(const char *sock, json_t **ret, char *err, size_t errlen);

/* A string member of member obj of st, or NULL. */
const char *ctl_status_str(json_t *st, const char *obj, const char *key);

/* provisioning.state says DPS refused the device for good ("failed"; the
 * man page's "failed-permanent" too). */
bool ctl_status_provisioning_failed(json_t *st);

/* tpm.state is present and not "ready". */
bool ctl_status_tpm_unavailable(json_t *st);

/* What a DPS result (provisioning.lastResult: status, errorCode, message)
 * means, in words: *what gets a sentence ("the enrollment is disabled"), *fix
 * what to do (may name the endpoint's host:port from endpoint, the
 * configuration's global_endpoint, or NULL). Both point into buf. Returns
 * false when last is not an object or reports success. */
bool ctl_status_explain(json_t *last, const char *endpoint, char *buf, size_t len, const char **what,
                        const char **fix);

/* "host:port" of an https URL (port 443 when none is given) into buf. */
void ctl_url_host_port(const char *url, char *buf, size_t len);
