/* The device's module identities (aziot-identityd's module side, issue 12).
 *
 * The manager owns one `struct modules` (manager_modules()); identity-api.c
 * is a view that asks it to act. It keeps the module identities of the
 * device the manager provisioned: in memory, in an on-disk cache beside the
 * state file (written atomically, read at start so that a device with no
 * network serves its modules offline), on the IoT hub's module registry
 * (called with a device SAS signed in the TPM, through cloud.c), and their
 * SAS keys in Microsoft's aziot-keyd (derived from
 * "aziot_identityd_master_id" with "{moduleId}:{genId}:primary" and
 * ":secondary", exported, set on the hub). The keyHandle handed to callers is
 * keyd's handle of the primary derived key, so a caller signs with keyd's
 * POST /sign exactly as it does with aziot-identityd.
 *
 * Reconciliation (modules_reconcile()) runs at start, after every
 * (re)provisioning and after a reload: it lists the hub's modules and creates
 * or deletes those the [[principal]] entries with idtype "module" declare.
 *
 * Contract for the asynchronous calls (libuv's): if the call returns < 0 the
 * callback is never called; otherwise it is called exactly once, from the
 * loop (never from inside the call), unless modules_cancel() came first. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define MODULES_ID_MAX 128      /* chars of an IoT Hub module id (the hub's own limit) */
#define MODULES_GEN_ID_MAX 128  /* chars of a hub generationId we keep */
#define MODULES_ERROR_MAX 512   /* bytes, NUL included, of an error message handed to a view */

struct modules;

/* One module identity as identity-api.c encodes it (aziot's spec with
 * "moduleId", "genId" and auth {"type":"sas","keyHandle"}). */
struct module_identity {
        char module_id[MODULES_ID_MAX + 1];
        char gen_id[MODULES_GEN_ID_MAX + 1]; /* "" when the hub gave none */
        const char *key_handle;              /* keyd's handle of the primary key; NULL in lists (aziot
                                              * lists specs without auth) */
        const char *hub;                     /* the device's hub and id, for the spec */
        const char *device_id;
};

/* How an asynchronous call ended. status/message are what identity-api.c
 * answers on failure, chosen here because only this module knows the cause
 * (aziot's mapping: module not found 400; hub, keyd or DPS client errors 404;
 * tpmidd: 503 + Retry-After while not provisioned or the TPM is unavailable). */
struct modules_result {
        int r;                           /* 0 or -errno */
        int status;                      /* HTTP status to answer when r < 0 */
        char message[MODULES_ERROR_MAX]; /* NUL-terminated; "" when r == 0 */
        const struct module_identity *identity; /* get/create/update: valid during the callback only */
        const struct module_identity *list;     /* list: n_list entries, valid during the callback only */
        size_t n_list;
};

typedef void (*modules_cb)(const struct modules_result *res, void *userdata);

/* GET /identities/modules: every module of the device (specs without auth). */
int modules_list(struct modules *m, modules_cb cb, void *userdata, uint64_t *ret_id);
/* GET /identities/modules/{id}: one module with its keyHandle. */
int modules_get(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id);
/* POST /identities/modules: create (aziot: an existing module is an error). */
int modules_create(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id);
/* PUT /identities/modules/{id}: update (aziot-edged's watchdog uses it to
 * create $edgeAgent too: a missing module is created). */
int modules_update(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id);
/* DELETE /identities/modules/{id}: 204 on success. */
int modules_delete(struct modules *m, const char *module_id, modules_cb cb, void *userdata, uint64_t *ret_id);
/* The caller (a client connection) went away: its callback will not be called. -ENOENT if unknown. */
int modules_cancel(struct modules *m, uint64_t id);

/* ---- the manager's side (manager.c owns the object) ---- */

struct manager;

#define MODULES_RECONCILE_RETRY_MIN_MS 5000u    /* ms before a failed reconciliation runs again */
#define MODULES_RECONCILE_RETRY_MAX_MS 300000u  /* ms: the retry interval doubles up to this */
#define MODULES_STATUS_MAX 256                  /* bytes, NUL included, of the last reconciliation's result */

/* Reads the module cache from the state directory (a corrupt one is logged
 * and ignored). mgr must outlive it. Returns 0 and *ret, or -ENOMEM / -EIO. */
int modules_new(uv_loop_t *loop, struct manager *mgr, struct modules **ret);
/* Run reconciliation (why: for the log): now, or once the running one ended.
 * Does nothing while the device has no identity. */
void modules_reconcile(struct modules *m, const char *why);
/* Modules in the cache of the current identity, and the last
 * reconciliation's result in words ("" before the first). */
size_t modules_count(const struct modules *m);
const char *modules_last_reconcile(const struct modules *m);
/* Cancel everything (no callback runs any more); m is freed once its handles
 * closed and no TPM job of its own is in flight (run the loop). NULL-safe. */
void modules_close(struct modules *m);
