/* The TPM socket's three routes (aziot-tpmd api-version 2020-09-01):
 *   GET  /get_tpm_keys        served from the cached EK/SRK publics, no TPM round trip
 *   POST /import_auth_key     a TPM job (seconds)
 *   POST /sign_with_auth_key  a TPM job (~50 µs on swtpm)
 * Routing, body codecs and JSON come from lib/api; sockets, limits and
 * credentials from server.c; TPM commands run on the tpm-worker thread. */
#pragma once

#include <stdbool.h>

#include "server.h"
#include "tpm-worker.h"

#define TPMD_API_RETRY_AFTER_SEC "1" /* Retry-After for 503 "TPM queue full" and "TPM not available" */

struct tpmd_api;

/* w stays owned by the caller and must outlive the API's last job. Returns 0
 * and *ret, or -ENOMEM. The API starts "not available" until
 * tpmd_api_set_ready(). */
int tpmd_api_new(struct tpm_worker *w, struct tpmd_api **ret);
struct tpmd_api *tpmd_api_free(struct tpmd_api *a); /* NULL-safe; returns NULL */

/* The server handler (userdata = struct tpmd_api *). */
void tpmd_api_handle(struct server_request *req, void *userdata);

/* The TPM answered: serve TPM routes, get_tpm_keys from keys (copied). */
void tpmd_api_set_ready(struct tpmd_api *a, const struct tpm_keys *keys);
/* The TPM is not usable: TPM routes answer 503 with "TPM not available: <reason>". */
void tpmd_api_set_unavailable(struct tpmd_api *a, const char *reason);
bool tpmd_api_ready(const struct tpmd_api *a);

/* Requests whose TPM job is queued or running (for draining and status). */
unsigned tpmd_api_jobs_in_flight(const struct tpmd_api *a);
