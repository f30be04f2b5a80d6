/* libFuzzer target: every DPS response parser, the payload parser, the
 * Retry-After parser and the SAS token parser on the same arbitrary bytes,
 * and lib/provision.c's prov_dps_interpret() on them as the body of an answer
 * to each of the three DPS requests (the HTTP status is chosen by size % 6,
 * so no input bytes are mode bits). Beyond "no crash, no leak", it checks the
 * promises the driver relies on: an accepted hub/device id is safe for a URL
 * and a file, blobs are bounded, every answer maps to an event the machine
 * expects after that request. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dps.h"
#include "provision.h"
#include "sas.h"

/* The events an answer to req may produce (what prov_step() accepts after it). */
static int event_fits(enum dps_request req, enum prov_event ev) {
        if (ev == PROV_EV_TRANSIENT_ERROR || ev == PROV_EV_PERMANENT_ERROR)
                return 1;
        switch (req) {
        case DPS_REQUEST_REGISTER:
                return ev == PROV_EV_DPS_401_CHALLENGE;
        case DPS_REQUEST_AUTH_REGISTER:
                return ev == PROV_EV_DPS_202 || ev == PROV_EV_DPS_SAS_REFUSED || ev == PROV_EV_POLL_ASSIGNING ||
                       ev == PROV_EV_POLL_ASSIGNED || ev == PROV_EV_POLL_FAILED;
        case DPS_REQUEST_POLL:
                return ev == PROV_EV_POLL_ASSIGNING || ev == PROV_EV_POLL_ASSIGNED || ev == PROV_EV_POLL_FAILED;
        }
        return 0;
}

static void interpret(const uint8_t *data, size_t size) {
        static const long statuses[] = {200, 202, 401, 404, 429, 503};
        struct prov_dps_answer ans = {
                .http_status = statuses[size % 6],
                .body = data,
                .body_len = size,
                .retry_after = "5",
                /* a day ahead of now for odd sizes: the 401s take the clock rule */
                .date = size % 2 ? "Wed, 15 Nov 2023 22:13:20 GMT" : NULL,
                .now = 1700000000,
        };
        for (int req = DPS_REQUEST_REGISTER; req <= DPS_REQUEST_POLL; req++) {
                struct prov_dps_result res;
                if (prov_dps_interpret((enum dps_request)req, &ans, &res) < 0)
                        continue; /* -ENOMEM */
                if (!event_fits((enum dps_request)req, res.event) || res.data.message != res.message ||
                    strnlen(res.message, sizeof(res.message)) == sizeof(res.message))
                        abort();
                if (res.data.clock_skewed && (ans.http_status != 401 || res.event == PROV_EV_PERMANENT_ERROR ||
                                              res.event == PROV_EV_DPS_401_CHALLENGE || res.data.clock_skew_s != -86400))
                        abort();
                if (res.event == PROV_EV_DPS_401_CHALLENGE &&
                    (!res.challenge.blob || res.challenge.blob_len > DPS_AUTH_BLOB_MAX))
                        abort();
                if (res.event == PROV_EV_POLL_ASSIGNED &&
                    (!dps_hub_name_is_valid(res.reg.assigned_hub) || !dps_device_id_is_valid(res.reg.device_id) ||
                     res.data.has_auth_key != (res.reg.auth_blob != NULL)))
                        abort();
                prov_dps_result_clear(&res);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dps_challenge c;
        struct dps_operation o;
        struct dps_registration r;
        struct dps_error e;
        struct sas_token t;
        json_t *j;
        char err[160];
        uint32_t secs;

        if (dps_parse_challenge(data, size, &c) == 0) {
                if (c.blob_len == 0 || c.blob_len > DPS_AUTH_BLOB_MAX || !c.key_name[0])
                        abort();
                dps_challenge_clear(&c);
        }
        if (dps_parse_operation(data, size, &o) == 0) {
                char *url;
                if (!o.operation_id[0])
                        abort();
                if (dps_operation_url("https://h", "s", "r", o.operation_id, &url) == 0) {
                        if (strchr(url + 8, '?') != strrchr(url, '?') || strstr(url, "/../"))
                                abort();
                        free(url);
                }
        }
        if (dps_parse_registration(data, size, &r) == 0) {
                (void)dps_classify_registration(&r, NULL);
                if (r.status == DPS_STATUS_ASSIGNED) {
                        if (!dps_hub_name_is_valid(r.assigned_hub) || !dps_device_id_is_valid(r.device_id) ||
                            strchr(r.assigned_hub, '/') || strchr(r.device_id, '/'))
                                abort();
                        char *sr;
                        if (sas_hub_resource(r.assigned_hub, r.device_id, &sr) == 0)
                                free(sr);
                }
                if (r.auth_blob && (r.auth_blob_len == 0 || r.auth_blob_len > DPS_AUTH_BLOB_MAX))
                        abort();
                dps_registration_clear(&r);
        }
        if (dps_parse_error(data, size, &e) == 0) {
                if (strlen(e.message) > DPS_ERROR_MESSAGE_MAX || strlen(e.tracking_id) > DPS_TRACKING_ID_MAX)
                        abort();
                (void)dps_classify(DPS_REQUEST_POLL, 400, &e, NULL);
        }
        if (dps_payload_parse(data, size, &j, err) == 0)
                json_decref(j);
        if (sas_token_parse((const char *)data, size, &t) == 0)
                sas_token_clear(&t);
        interpret(data, size);

        if (size <= 256) {
                char s[257];
                memcpy(s, data, size);
                s[size] = '\0';
                if (dps_parse_retry_after(s, 1700000000, &secs) == 0 &&
                    (secs < DPS_RETRY_AFTER_MIN_S || secs > DPS_RETRY_AFTER_MAX_S))
                        abort();
                /* validators on NUL-terminated input */
                (void)dps_hub_name_is_valid(s);
                (void)dps_device_id_is_valid(s);
                char *enc;
                if (sas_resource_encode(s, &enc) == 0)
                        free(enc);
        }
        return 0;
}
