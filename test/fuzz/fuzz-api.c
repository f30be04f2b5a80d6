/* libFuzzer target for lib/api.c: route arbitrary method/path/api-version
 * triples (with the {moduleId} path parameter, its decoding and the module-id
 * and type checks) and run every body decoder and encoder on input-derived
 * values.
 *
 * Input: byte 0 (bit 0 identity socket, bit 1 no api-version, bits 2-3 the
 * Content-Type: none, application/json, "application/json; charset=utf-8",
 * text/plain), then method\npath\nversion\n, then the body. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Take the next '\n'-terminated field as a heap string (NULL if absent). */
static char *next_field(const uint8_t **data, size_t *size) {
        const uint8_t *nl = memchr(*data, '\n', *size);
        if (!nl)
                return NULL;
        size_t n = (size_t)(nl - *data);
        char *s = strndup((const char *)*data, n);
        *data += n + 1;
        *size -= n + 1;
        return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        enum api_socket which = data[0] & 1 ? API_SOCKET_IDENTITY : API_SOCKET_TPM;
        bool no_version = data[0] & 2;
        static const char *const content_types[] = { NULL, "application/json", "application/json; charset=utf-8",
                                                     "text/plain" };
        const char *ct = content_types[(data[0] >> 2) & 3];
        data++;
        size--;
        char *method = next_field(&data, &size);
        char *path = next_field(&data, &size);
        char *version = next_field(&data, &size);
        /* The rest is the body. */
        enum api_op op;
        struct api_error err;
        char *param = NULL;
        int rr = api_route_param(which, method, path, no_version ? NULL : version, &op, &param, &err);
        if (rr == 0) {
                if (!api_op_to_string(op) || api_op_socket(op) != which)
                        abort();
                bool has_param = op == API_OP_MODULES_GET || op == API_OP_MODULES_UPDATE || op == API_OP_MODULES_DELETE;
                if (has_param != (param != NULL))
                        abort();
                if (param && api_check_module_id(param, &err) == 0) {
                        /* a valid id is short printable ASCII without '/' */
                        size_t n = strlen(param);
                        if (n == 0 || n > API_MODULE_ID_MAX || strchr(param, '/'))
                                abort();
                        for (size_t i = 0; i < n; i++)
                                if ((unsigned char)param[i] <= 0x20 || (unsigned char)param[i] >= 0x7f)
                                        abort();
                } else if (param && (err.status != 400 || strlen(err.message) >= sizeof(err.message)))
                        abort();
                /* the api-version text stands in for a `type` value */
                if (api_check_module_type(op, no_version ? NULL : version, &err) == 0 &&
                    (!version || strcmp(version, "aziot") != 0))
                        abort();
                free(param);
        } else if (rr == -ENOMEM)
                ; /* out of memory: nothing to check */
        else if (err.status < 400 || err.status > 499 || strlen(err.message) >= sizeof(err.message))
                abort();
        if (path) {
                char *seg = NULL;
                if (api_path_segment_decode(path, strlen(path), &seg) == 0) {
                        if (strlen(seg) > strlen(path))
                                abort(); /* decoding never grows */
                        free(seg);
                }
        }

        uint8_t *out = NULL;
        size_t out_len;
        if (api_decode_import(data, size, &out, &out_len, &err) == 0) {
                if (out_len == 0 || out_len > API_MAX_IMPORT_KEY_BYTES)
                        abort();
                free(out);
        }
        if (api_decode_sign(data, size, &out, &out_len, &err) == 0) {
                if (out_len > API_MAX_SIGN_DATA_BYTES)
                        abort();
                char *j = NULL;
                if (api_encode_sign(out, out_len, &j) == 0)
                        free(j);
                free(out);
        }
        uint32_t lifetime;
        if (api_decode_token(data, size, &lifetime, &err) == 0 &&
            (lifetime < API_TOKEN_LIFETIME_MIN_SEC || lifetime > API_TOKEN_LIFETIME_MAX_SEC))
                abort();
        (void)api_decode_device(data, size, &err);
        char *mtype = NULL, *mid = NULL;
        if (api_decode_module_create(ct, data, size, &mtype, &mid, &err) == 0) {
                if (!mtype || !mid)
                        abort();
                (void)api_check_module_type(API_OP_MODULES_CREATE, mtype, &err);
                (void)api_check_module_id(mid, &err);
                struct api_module_identity mi = { "h", "h", "d", mid, mtype, mtype };
                char *mj = NULL;
                if (api_encode_module(&mi, &mj) == 0)
                        free(mj);
                free(mtype);
                free(mid);
        } else if (err.status != 400 && err.status != 422 && err.status != 500)
                abort();
        if (api_decode_module_update(ct, data, size, &err) < 0 && err.status != 415 && err.status != 422)
                abort();
        if (api_decode_module_delete(ct, data, size, &err) < 0 && err.status != 422)
                abort();
        struct api_report rep;
        if (api_decode_report(data, size, &rep, &err) == 0) {
                size_t n = strnlen(rep.reason, sizeof(rep.reason));
                if (rep.hub_status < API_HTTP_STATUS_MIN || rep.hub_status > API_HTTP_STATUS_MAX ||
                    n > API_REPORT_REASON_MAX)
                        abort();
                for (size_t i = 0; i < n; i++)
                        if ((unsigned char)rep.reason[i] < 0x20 || rep.reason[i] == 0x7f)
                                abort();
                char *rj = NULL;
                if (api_encode_report(api_report_is_rejection(rep.hub_status) ? API_REPORT_CHECKING_HUB
                                                                               : API_REPORT_IGNORED,
                                      &rj) != 0)
                        abort();
                free(rj);
        }

        /* Encoders with input strings (which may be NULL or not UTF-8). */
        char *j = NULL;
        struct api_device_identity id = { method, path, version };
        if (api_encode_identity(&id, &j) == 0)
                free(j);
        char *payload = strndup((const char *)data, size);
        struct api_provisioning pr = { method, path, version, payload };
        if (api_encode_provisioning(&pr, &j) == 0)
                free(j);
        if (api_encode_token(method, (int64_t)size, path, version, &j) == 0)
                free(j);
        struct api_status st = { .provisioning_state = method, .hub_name = path, .device_id = version,
                                 .registration_id = payload, .has_last_result = size & 1, .last_status = path,
                                 .last_error_code = (int64_t)size, .last_message = version, .last_at = 1,
                                 .next_retry_at = (int64_t)size, .tpm_state = "ready", .tpm_last_error = payload,
                                 .version = "0", .uptime_sec = size, .mode = version, .id_scope = method,
                                 .global_endpoint = payload, .tcti = path };
        const char *restart[] = { method, path, version };
        st.restart_needed = restart;
        st.n_restart_needed = size % 4; /* 0..3 entries, any of them maybe NULL (-EINVAL) */
        if (api_encode_status(&st, &j) == 0)
                free(j);
        if (api_encode_error(payload, &j) == 0)
                free(j);
        if (api_encode_keys(data, size, data, size / 2, &j) == 0)
                free(j);
        struct api_module_identity ml[2] = { { method, path, version, payload, method, NULL },
                                             { path, path, path, version, NULL, payload } };
        if (api_encode_module_list(ml, size % 3, &j) == 0)
                free(j);
        if (api_encode_trust_bundle(payload, &j) == 0)
                free(j);
        free(payload);
        free(method);
        free(path);
        free(version);
        return 0;
}
