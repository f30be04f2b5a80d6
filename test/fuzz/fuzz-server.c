/* libFuzzer target for a whole connection: the bytes a client writes to
 * tpmd.sock or identityd.sock go through lib/http's parser (pipelined, as
 * daemon/server.c feeds them), lib/api's router and body decoders, a fake
 * in-memory TPM (import parses the authenticationKey blob, sign is an HMAC
 * with the imported key) and lib/api's encoders, and every answer is
 * serialised with lib/http's response writer - the daemon's request path
 * without libuv, sockets or a real TPM.
 *
 * Input: byte 0 selects the socket (bit 0: 0 = tpmd, 1 = identityd), whether
 * the fake TPM is ready (bit 1 clear) and whether a key is already imported
 * (bit 2); the rest is the byte stream of one connection.
 *
 * Invariants checked: every request gets exactly one well-formed response
 * (status line, Content-Length equal to the body), an error answer has a
 * {"message"} body, and a stream error ends the connection. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "api.h"
#include "authblob.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAKE_KEY_MAX 64 /* bytes of the fake TPM's HMAC key (taken from the imported blob) */
#define MAX_REQUESTS 64 /* requests answered per input: bounds the time of one input */

/* The fake TPM: what tpm.c does, as far as a client can see. */
struct fake_tpm {
        bool ready;
        bool have_key;
        uint8_t key[FAKE_KEY_MAX];
        size_t key_len;
};

static const uint8_t fake_ek[] = { 0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b, 0xde, 0xad };
static const uint8_t fake_srk[] = { 0x01, 0x18, 0x00, 0x01, 0x00, 0x0b, 0xbe, 0xef };

/* Check one serialised response and drop it. */
static int check_response(uint8_t *out, size_t out_len, int status) {
        char line[32];
        int n = snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
        if (n <= 0 || out_len < (size_t)n || memcmp(out, line, (size_t)n) != 0)
                abort();
        const uint8_t *end = NULL;
        for (size_t i = 0; i + 4 <= out_len; i++)
                if (memcmp(out + i, "\r\n\r\n", 4) == 0) {
                        end = out + i + 4;
                        break;
                }
        if (!end)
                abort();
        size_t body = out_len - (size_t)(end - out);
        const char *cl = memmem(out, (size_t)(end - out), "Content-Length: ", 16);
        if (cl) {
                if (strtoull(cl + 16, NULL, 10) != body)
                        abort();
        } else if (body != 0)
                abort();
        free(out);
        return 0;
}

static int reply(int status, const char *json, bool keep_alive, const struct http_header *extra, size_t n_extra) {
        uint8_t *out = NULL;
        size_t out_len = 0;
        if (http_response_format(status, json ? "application/json" : NULL, (const uint8_t *)json,
                                 json ? strlen(json) : 0, keep_alive, extra, n_extra, &out, &out_len) < 0)
                abort(); /* our own bodies and headers are always valid */
        return check_response(out, out_len, status);
}

static int reply_error(int status, const char *message, bool keep_alive, const struct http_header *extra,
                        size_t n_extra) {
        uint8_t *out = NULL;
        size_t out_len = 0;
        int r = http_response_format_error(status, message, keep_alive, extra, n_extra, &out, &out_len);
        if (r == -ENOMEM)
                return 0;
        if (r < 0) /* a message echoing input that is not UTF-8: the daemon answers 500 then */
                return reply(500, NULL, false, NULL, 0);
        if (!memmem(out, out_len, "{\"message\":", 11))
                abort();
        return check_response(out, out_len, status);
}

static int reply_json(int status, int r, char *json, bool keep_alive) {
        if (r < 0)
                reply_error(500, "cannot encode the answer", keep_alive, NULL, 0);
        else
                reply(status, json, keep_alive, NULL, 0);
        free(json);
        return 0;
}

static const struct http_header retry_after[] = { { "Retry-After", "5" } };

static int handle_tpm(struct fake_tpm *tpm, const struct http_request *h, enum api_op op) {
        struct api_error err = { 0 };
        char *json = NULL;
        uint8_t *in = NULL;
        size_t in_len = 0;
        int r;

        switch (op) {
        case API_OP_TPM_GET_KEYS:
                if (!tpm->ready)
                        return reply_error(503, "TPM not available", h->keep_alive, retry_after, 1);
                r = api_encode_keys(fake_ek, sizeof fake_ek, fake_srk, sizeof fake_srk, &json);
                return reply_json(200, r, json, h->keep_alive);
        case API_OP_TPM_IMPORT: {
                r = api_decode_import(h->body, h->body_len, &in, &in_len, &err);
                if (r < 0)
                        return reply_error(err.status, err.message, h->keep_alive, NULL, 0);
                if (!tpm->ready) {
                        free(in);
                        return reply_error(503, "TPM not available", h->keep_alive, retry_after, 1);
                }
                struct authblob ab;
                struct authblob_error ae;
                char msg[256];
                r = authblob_parse(in, in_len, &ab, &ae);
                if (r < 0) {
                        authblob_error_format(&ae, msg, sizeof msg);
                        free(in);
                        return reply_error(400, msg, h->keep_alive, NULL, 0);
                }
                /* The fake "imported key": the first bytes of the sealed private part. */
                const struct authblob_span *priv = &ab.el[AUTHBLOB_DUPLICATE];
                tpm->key_len = priv->body_len < FAKE_KEY_MAX ? priv->body_len : FAKE_KEY_MAX;
                memcpy(tpm->key, priv->body, tpm->key_len);
                tpm->have_key = true;
                free(in);
                return reply(200, "{}", h->keep_alive, NULL, 0);
        }
        case API_OP_TPM_SIGN: {
                r = api_decode_sign(h->body, h->body_len, &in, &in_len, &err);
                if (r < 0)
                        return reply_error(err.status, err.message, h->keep_alive, NULL, 0);
                if (!tpm->ready) {
                        free(in);
                        return reply_error(503, "TPM not available", h->keep_alive, retry_after, 1);
                }
                if (!tpm->have_key) {
                        free(in);
                        return reply_error(500, "no authentication key is imported", h->keep_alive, NULL, 0);
                }
                uint8_t digest[EVP_MAX_MD_SIZE];
                unsigned dlen = 0;
                if (!HMAC(EVP_sha256(), tpm->key, (int)tpm->key_len, in, in_len, digest, &dlen))
                        abort();
                free(in);
                r = api_encode_sign(digest, dlen, &json);
                return reply_json(200, r, json, h->keep_alive);
        }
        case API_OP_IDENTITY_GET:
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_TOKEN:
        case API_OP_IDENTITY_REPORT:
        case API_OP_STATUS:
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
        case API_OP_TRUST_BUNDLE:
        case _API_OP_MAX:
                break;
        }
        abort(); /* api_route() gave another socket's op */
}

static int handle_identity(const struct fake_tpm *tpm, const struct http_request *h, enum api_op op) {
        struct api_error err = { 0 };
        char *json = NULL;
        int r;

        switch (op) {
        case API_OP_IDENTITY_DEVICE:
                r = api_decode_device(h->body, h->body_len, &err);
                if (r < 0)
                        return reply_error(err.status, err.message, h->keep_alive, NULL, 0);
                /* fall through: the same answer as GET /identities/identity */
        case API_OP_IDENTITY_GET: {
                if (!tpm->have_key)
                        return reply_error(503, "not provisioned yet", h->keep_alive, retry_after, 1);
                const struct api_device_identity id = { "hub.azure-devices.net", "hub.azure-devices.net", "dev-01" };
                r = api_encode_identity(&id, &json);
                return reply_json(200, r, json, h->keep_alive);
        }
        case API_OP_IDENTITY_PROVISIONING: {
                const struct api_provisioning p = { "https://global.azure-devices-provisioning.net", "0ne000ABCDE",
                                                    "dev-01", "{\"modelId\":\"dtmi:x;1\"}" };
                r = api_encode_provisioning(&p, &json);
                return reply_json(200, r, json, h->keep_alive);
        }
        case API_OP_IDENTITY_REPROVISION:
                return reply(204, NULL, h->keep_alive, NULL, 0);
        case API_OP_IDENTITY_TOKEN: {
                uint32_t lifetime;
                r = api_decode_token(h->body, h->body_len, &lifetime, &err);
                if (r < 0)
                        return reply_error(err.status, err.message, h->keep_alive, NULL, 0);
                if (!tpm->have_key)
                        return reply_error(503, "not provisioned yet", h->keep_alive, retry_after, 1);
                r = api_encode_token("SharedAccessSignature sr=hub.azure-devices.net%2Fdevices%2Fdev-01&sig=x&se=1",
                                     1700000000 + (int64_t)lifetime, "hub.azure-devices.net", "dev-01", &json);
                return reply_json(200, r, json, h->keep_alive);
        }
        case API_OP_IDENTITY_REPORT: {
                struct api_report rep;
                r = api_decode_report(h->body, h->body_len, &rep, &err);
                if (r < 0)
                        return reply_error(err.status, err.message, h->keep_alive, NULL, 0);
                r = api_encode_report(api_report_is_rejection(rep.hub_status) ? API_REPORT_CHECKING_HUB
                                                                               : API_REPORT_IGNORED,
                                      &json);
                return reply_json(202, r, json, h->keep_alive);
        }
        case API_OP_STATUS: {
                const struct api_status st = { .provisioning_state = tpm->have_key ? "assigned" : "unprovisioned",
                                               .tpm_state = tpm->ready ? "ready" : "unavailable",
                                               .version = "0", .uptime_sec = 1, .mode = "aziot" };
                r = api_encode_status(&st, &json);
                return reply_json(200, r, json, h->keep_alive);
        }
        case API_OP_TRUST_BUNDLE:
                r = api_encode_trust_bundle("", &json);
                return reply_json(200, r, json, h->keep_alive);
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE: {
                /* identity-api.c's decoding; the module itself is a fixed one */
                char *type = NULL, *id = NULL;
                if (op == API_OP_MODULES_CREATE)
                        r = api_decode_module_create(h->content_type, h->body, h->body_len, &type, &id, &err);
                else if (op == API_OP_MODULES_UPDATE)
                        r = api_decode_module_update(h->content_type, h->body, h->body_len, &err);
                else
                        r = api_decode_module_delete(h->content_type, h->body, h->body_len, &err);
                free(type);
                free(id);
                if (r < 0)
                        return reply_error(err.status, err.message, h->keep_alive, NULL, 0);
                if (op == API_OP_MODULES_DELETE)
                        return reply(204, NULL, h->keep_alive, NULL, 0);
                const struct api_module_identity m = { "hub.azure-devices.net", "hub.azure-devices.net", "dev-01",
                                                       "$edgeAgent", "637", op == API_OP_MODULES_LIST ? NULL : "kh" };
                r = op == API_OP_MODULES_LIST ? api_encode_module_list(&m, 1, &json) : api_encode_module(&m, &json);
                return reply_json(200, r, json, h->keep_alive);
        }
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case _API_OP_MAX:
                break;
        }
        abort(); /* api_route() gave another socket's op */
}

/* One complete request, answered as tpmd-api.c / identity-api.c do. */
static int handle(struct fake_tpm *tpm, enum api_socket which, const struct http_request *h) {
        struct api_error err = { 0 };
        enum api_op op;
        if (api_route(which, h->method, h->path, h->api_version, &op, &err) < 0) {
                if (err.status < 400 || err.status > 499)
                        abort();
                const struct http_header allow[] = { { "Allow", err.allow } };
                return reply_error(err.status, err.message, h->keep_alive, err.allow ? allow : NULL,
                                   err.allow ? 1 : 0);
        }
        if (api_op_socket(op) != which)
                abort();
        return which == API_SOCKET_TPM ? handle_tpm(tpm, h, op) : handle_identity(tpm, h, op);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        enum api_socket which = data[0] & 1 ? API_SOCKET_IDENTITY : API_SOCKET_TPM;
        struct fake_tpm tpm = { .ready = !(data[0] & 2), .have_key = data[0] & 4, .key_len = 1 };
        data++;
        size--;

        struct http_request_parser p;
        http_request_parser_init(&p, NULL);
        for (unsigned n = 0; n < MAX_REQUESTS && size > 0;) {
                size_t used = 0;
                int r = http_request_parser_feed(&p, data, size, &used);
                if (used > size)
                        abort();
                data += used;
                size -= used;
                if (r == HTTP_FEED_NEED_MORE || r == HTTP_FEED_EXPECT_CONTINUE)
                        continue; /* EOF while NEED_MORE: the loop ends, the connection closes */
                if (r == HTTP_FEED_REQUEST) {
                        struct http_request *h = NULL;
                        if (http_request_take(&p, &h) != 0 || !h)
                                abort();
                        handle(&tpm, which, h);
                        http_request_free(h);
                        n++;
                        continue;
                }
                if (r == -EBADMSG) {
                        const char *msg = NULL;
                        int status = http_request_parser_error(&p, &msg);
                        if (status < 400 || status > 599 || !msg)
                                abort();
                        reply_error(status, msg, false, NULL, 0);
                }
                break; /* -EBADMSG: answered, connection closed; -ENOMEM: closed */
        }
        http_request_parser_done(&p);
        return 0;
}
