/* The provisioning driver: runs lib/provision.c's state machine against the
 * real world. Each action the machine returns is carried out here with one
 * asynchronous operation (a TPM job on the worker thread, an HTTPS request
 * through cloud.c, a timer, or a small state-file read/write), and its
 * completion is fed back as the next event. At most one operation is in
 * flight; a single timer serves both poll delays and backoff.
 *
 * It also owns the "serving" identity (hub + device id) that the identity
 * API hands out, and the DPS outcome that status reports. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "api.h"
#include "config.h"
#include "provision.h"
#include "tpm-worker.h"

#define PROV_HUB_API_VERSION "2021-04-12" /* IoT Hub api-version of the hub credential check */
#define PROV_HUB_CHECK_TIMEOUT_MS 30000   /* ms for the hub credential check */
#define PROV_REPORT_MIN_INTERVAL_MS 60000 /* ms between hub checks started by client reports */

struct prov_driver;

/* cfg must outlive the driver (or be replaced with prov_driver_set_config).
 * The environment variable TPMIDD_CLOUD_CONNECT_TO ("HOST:PORT:HOST2:PORT2",
 * curl's --connect-to) redirects cloud connections, for split-horizon DNS and
 * for the local simulator. Returns 0 and *ret, -ENOMEM, -EIO. */
int prov_driver_new(uv_loop_t *loop, const struct tpmid_config *cfg, struct tpm_worker *w, struct prov_driver **ret);

/* Called whenever status changed (state, identity, last result). */
void prov_driver_set_status_cb(struct prov_driver *d, void (*cb)(void *userdata), void *userdata);

/* The TPM answered: start (once). keys are copied. Derives the registration
 * id from the EK when the config has none, reads the payload file. Returns 0,
 * or -errno for a payload file that cannot be read (logged). */
int prov_driver_start(struct prov_driver *d, const struct tpm_keys *keys);

/* Authorized client asked for reprovisioning. Returns 0, or -EAGAIN if
 * provisioning is not configured or the TPM did not answer yet. */
int prov_driver_reprovision(struct prov_driver *d);

/* A client reports that the hub answered hub_status to the device's
 * credentials (POST /identities/device/report). The client's word alone
 * never starts DPS: a rejection status (api_report_is_rejection()) makes the
 * daemon check the hub itself (CLIENT_REPORTS_BAD_CREDENTIALS → CHECK_HUB),
 * and only the hub's own rejection leads to a DPS run. OnErrorOnly ignores
 * reports. Reports start at most one hub check per
 * PROV_REPORT_MIN_INTERVAL_MS (the startup check does not count), so a
 * misbehaving client cannot make the daemon hammer the hub. Returns what was
 * decided, for the client's answer; does not log (the caller does). */
enum api_report_action prov_driver_report_bad_credentials(struct prov_driver *d, int hub_status);

/* Reload: the new config replaces the old; a change of the provisioning
 * settings triggers a DPS run (CONFIG_CHANGED). */
void prov_driver_set_config(struct prov_driver *d, const struct tpmid_config *cfg);

/* The identity being served. Returns false when there is none yet. */
bool prov_driver_identity(const struct prov_driver *d, const char **hub, const char **device_id);
/* The state machine's current state. */
enum prov_state prov_driver_state(const struct prov_driver *d);
/* Registration id in use (configured or derived), NULL before start. */
const char *prov_driver_registration_id(const struct prov_driver *d);
/* The payload JSON text (compact) or NULL. */
const char *prov_driver_payload_json(const struct prov_driver *d);

/* Fill the provisioning part of a status answer; strings point into d. */
void prov_driver_fill_status(const struct prov_driver *d, struct api_status *st);
/* One line in words for sd_notify STATUS= and logs. Points into d. */
const char *prov_driver_status_text(struct prov_driver *d);

/* Cancel everything; d is freed once its handles are closed (run the loop). NULL-safe. */
void prov_driver_close(struct prov_driver *d);
