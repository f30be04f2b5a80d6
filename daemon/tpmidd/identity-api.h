/* The identity socket (identityd.sock): aziot-identityd compatible routes
 * for the device identity, plus tpmidd's extensions (a hub SAS token signed
 * in the TPM, and a status document). It owns the provisioning driver.
 *
 * Authorization (aziot §2.7): a [[principal]] entry decides by its allow
 * list; an unlisted root is allowed everything; anyone else is refused with
 * 401 "authorization error" (aziot's answer) naming the uid and operation. */
#pragma once

#include <stdbool.h>
#include <uv.h>

#include "config.h"
#include "server.h"
#include "tpm-worker.h"

#define IDENTITY_API_RETRY_AFTER_SEC "5" /* Retry-After while not provisioned yet */
#define IDENTITY_API_MAX_WAITERS 64      /* reprovision requests waiting for the outcome */

struct identity_api;

int identity_api_new(uv_loop_t *loop, const struct tpmid_config *config, struct tpm_worker *worker,
                     struct identity_api **ret);
void identity_api_handle(struct server_request *req, void *userdata);
void identity_api_set_config(struct identity_api *api, const struct tpmid_config *config);

/* The TPM answered (keys copied): provisioning starts. */
void identity_api_tpm_ready(struct identity_api *api, const struct tpm_keys *keys);
/* TPM state for GET /status. reason NULL when ready. */
void identity_api_set_tpm_state(struct identity_api *api, bool ready, const char *reason);
/* Called when the provisioning status text changed (for sd_notify STATUS=). */
void identity_api_set_status_cb(struct identity_api *api, void (*cb)(const char *text, void *userdata),
                                void *userdata);
const char *identity_api_status_text(struct identity_api *api);

/* Frees once handles are closed (run the loop). NULL-safe; returns NULL. */
struct identity_api *identity_api_free(struct identity_api *api);
