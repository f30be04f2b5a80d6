/* The identity socket (identityd.sock): aziot-identityd compatible routes
 * for the device identity, plus tpmidd's extensions (a hub SAS token signed
 * in the TPM, a credentials report, and a status document).
 *
 * A view of the manager: the identity, the provisioning status and the TPM's
 * state are read from it on every request; reprovisioning, reports and
 * signatures are asked of it. Nothing here keeps a copy of its state.
 *
 * An identity request that finds no identity before the saved identity was
 * checked (the TPM's first start, then the milliseconds after READY=1) waits
 * for the check's end, at most MANAGER_IDENTITY_WAIT_MAX_MS
 * (manager_wait_identity()), and is answered from what the check found.
 *
 * Module identities (GET/POST /identities/modules, GET/PUT/DELETE
 * /identities/modules/{id}) are asked of manager_modules() (modules.h) and
 * answered from its callback; GET /identities/identity answers a module
 * principal with its own module identity (the entry's name). GET
 * /trust-bundle answers aziot's {"certificate":""}.
 *
 * Authorization: lib/authz.h (authz_op_allowed(), authz_caller_identity()):
 * a [[principal]] entry decides by its idtype, name and allow list; an
 * unlisted root or member of the socket's group is allowed everything; anyone
 * else is refused with 401 "authorization error" (aziot's answer) naming the
 * uid, the operation and, for a module route, the module. A module route is
 * checked in aziot's order: body (400/415/422), caller (401), `type` (400),
 * module id (400), then the module call. */
#pragma once

#include "manager.h"
#include "server.h"

#define IDENTITY_API_RETRY_AFTER_SEC "5" /* Retry-After while not provisioned yet */

struct identity_api;

/* m stays owned by the caller and must outlive the API's last request.
 * Returns 0 and *ret, or -ENOMEM. */
int identity_api_new(struct manager *m, struct identity_api **ret);
void identity_api_handle(struct server_request *req, void *userdata);

/* NULL-safe; returns NULL. Call after the manager closed (no request waits). */
struct identity_api *identity_api_free(struct identity_api *api);
