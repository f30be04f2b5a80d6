/* The TPM socket's three routes (aziot-tpmd api-version 2020-09-01):
 *   GET  /get_tpm_keys        served from the cached EK/SRK publics, no TPM round trip
 *   POST /import_auth_key     a TPM job (seconds)
 *   POST /sign_with_auth_key  a TPM job (~50 µs on swtpm)
 * Routing, body codecs and JSON come from lib/api; sockets, limits and
 * credentials from server.c. A view of the manager: the TPM's state and
 * keys are read from it on every request (no copy here), and TPM commands
 * go through the worker it owns (manager_submit()). */
#pragma once

#include <stdbool.h>

#include "server.h"
#include "manager.h"

#define TPMD_API_RETRY_AFTER_SEC "1" /* Retry-After for 503 "TPM queue full" and "TPM not available" */

struct tpmd_api;

/* m stays owned by the caller and must outlive the API's last job. Returns 0
 * and *ret, or -ENOMEM. TPM routes answer 503 "TPM not available: <reason>"
 * while the manager's TPM is not READY. */
int tpmd_api_new(struct manager *m, struct tpmd_api **ret);
struct tpmd_api *tpmd_api_free(struct tpmd_api *a); /* NULL-safe; returns NULL */

/* The server handler (userdata = struct tpmd_api *). */
void tpmd_api_handle(struct server_request *req, void *userdata);

/* Requests whose TPM job is queued or running (for draining and status). */
unsigned tpmd_api_jobs_in_flight(const struct tpmd_api *a);
