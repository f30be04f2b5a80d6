/* libFuzzer target: every DPS response parser, the payload parser, the
 * Retry-After parser and the SAS token parser on the same arbitrary bytes.
 * Beyond "no crash, no leak", it checks the promises the driver relies on:
 * an accepted hub/device id is safe for a URL and a file, blobs are bounded. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dps.h"
#include "sas.h"

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
