/* Route table and JSON codecs of the TPM and identity sockets (see api.h).
 * Wire compatibility with aziot is the point: paths, field names, versions and
 * error texts follow aziot-identity-service 1.x. */
#include "api.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "b64.h"
#include "log.h"
#include "util.h"

static const char *const api_op_table[_API_OP_MAX] = {
        [API_OP_TPM_GET_KEYS] = "tpm.get_keys",
        [API_OP_TPM_IMPORT] = "tpm.import",
        [API_OP_TPM_SIGN] = "tpm.sign",
        [API_OP_IDENTITY_GET] = "identity.get",
        [API_OP_IDENTITY_DEVICE] = "identity.device",
        [API_OP_IDENTITY_PROVISIONING] = "identity.provisioning",
        [API_OP_IDENTITY_REPROVISION] = "identity.reprovision",
        [API_OP_IDENTITY_TOKEN] = "identity.token",
        [API_OP_IDENTITY_REPORT] = "identity.report",
        [API_OP_STATUS] = "status",
        [API_OP_MODULES_LIST] = "identity.modules.list",
        [API_OP_MODULES_GET] = "identity.modules.get",
        [API_OP_MODULES_CREATE] = "identity.modules.create",
        [API_OP_MODULES_UPDATE] = "identity.modules.update",
        [API_OP_MODULES_DELETE] = "identity.modules.delete",
        [API_OP_TRUST_BUNDLE] = "trust-bundle",
        [API_OP_LOG_LEVEL] = "log_level",
};

const char *api_op_to_string(enum api_op op) {
        if ((unsigned)op >= _API_OP_MAX)
                return NULL;
        return api_op_table[op];
}

int api_op_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < _API_OP_MAX; i++)
                if (streq(api_op_table[i], s))
                        return (int)i;
        return -EINVAL;
}

struct route {
        enum api_socket socket;
        const char *method;
        const char *path;        /* exact path, or with param: the prefix before {moduleId} */
        enum api_op op;
        const char *min_version; /* oldest api-version the route accepts */
        const char *allow;       /* every method the path takes, for the Allow header */
        bool param;              /* path + one segment, the {moduleId} */
};

#define MODULES_PATH "/identities/modules"

static const struct route routes[] = {
        { API_SOCKET_TPM, "GET", "/get_tpm_keys", API_OP_TPM_GET_KEYS, API_VERSION_2020_09_01, "GET", false },
        { API_SOCKET_TPM, "POST", "/import_auth_key", API_OP_TPM_IMPORT, API_VERSION_2020_09_01, "POST", false },
        { API_SOCKET_TPM, "POST", "/sign_with_auth_key", API_OP_TPM_SIGN, API_VERSION_2020_09_01, "POST", false },
        { API_SOCKET_IDENTITY, "GET", "/identities/identity", API_OP_IDENTITY_GET, API_VERSION_2020_09_01, "GET",
          false },
        { API_SOCKET_IDENTITY, "POST", "/identities/device", API_OP_IDENTITY_DEVICE, API_VERSION_2020_09_01, "POST",
          false },
        { API_SOCKET_IDENTITY, "GET", "/identities/provisioning", API_OP_IDENTITY_PROVISIONING,
          API_VERSION_2021_12_01, "GET", false },
        { API_SOCKET_IDENTITY, "POST", "/identities/device/reprovision", API_OP_IDENTITY_REPROVISION,
          API_VERSION_2020_09_01, "POST", false },
        { API_SOCKET_IDENTITY, "POST", "/identities/device/token", API_OP_IDENTITY_TOKEN, API_VERSION_2020_09_01,
          "POST", false },
        { API_SOCKET_IDENTITY, "POST", "/identities/device/report", API_OP_IDENTITY_REPORT, API_VERSION_2020_09_01,
          "POST", false },
        { API_SOCKET_IDENTITY, "GET", "/status", API_OP_STATUS, API_VERSION_2020_09_01, "GET", false },
        { API_SOCKET_IDENTITY, "GET", MODULES_PATH, API_OP_MODULES_LIST, API_VERSION_2020_09_01, "GET, POST",
          false },
        { API_SOCKET_IDENTITY, "POST", MODULES_PATH, API_OP_MODULES_CREATE, API_VERSION_2020_09_01, "GET, POST",
          false },
        { API_SOCKET_IDENTITY, "GET", MODULES_PATH "/", API_OP_MODULES_GET, API_VERSION_2020_09_01,
          "GET, PUT, DELETE", true },
        { API_SOCKET_IDENTITY, "PUT", MODULES_PATH "/", API_OP_MODULES_UPDATE, API_VERSION_2020_09_01,
          "GET, PUT, DELETE", true },
        { API_SOCKET_IDENTITY, "DELETE", MODULES_PATH "/", API_OP_MODULES_DELETE, API_VERSION_2020_09_01,
          "GET, PUT, DELETE", true },
        { API_SOCKET_IDENTITY, "GET", "/trust-bundle", API_OP_TRUST_BUNDLE, API_VERSION_2020_09_01, "GET", false },
        { API_SOCKET_IDENTITY, "PUT", "/log_level", API_OP_LOG_LEVEL, API_VERSION_2020_09_01, "PUT", false },
};

enum api_socket api_op_socket(enum api_op op) {
        for (size_t i = 0; i < ELEMENTSOF(routes); i++)
                if (routes[i].op == op)
                        return routes[i].socket;
        return API_SOCKET_IDENTITY;
}

/* The api-versions each socket knows, oldest first. ISO dates, so string
 * order is version order. */
static const char *const tpm_versions[] = { API_VERSION_2020_09_01 };
static const char *const identity_versions[] = { API_VERSION_2020_09_01, API_VERSION_2021_12_01,
                                                  API_VERSION_2022_08_01 };

static bool version_known(enum api_socket which, const char *v) {
        const char *const *list = which == API_SOCKET_TPM ? tpm_versions : identity_versions;
        size_t n = which == API_SOCKET_TPM ? ELEMENTSOF(tpm_versions) : ELEMENTSOF(identity_versions);
        for (size_t i = 0; i < n; i++)
                if (streq(list[i], v))
                        return true;
        return false;
}

void api_error_set(struct api_error *err, int status, const char *fmt, ...) {
        if (!err)
                return;
        err->status = status;
        err->allow = NULL;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
}


/* Strict UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF), no NUL. */
static bool utf8_valid(const unsigned char *s, size_t n) {
        for (size_t i = 0; i < n;) {
                unsigned char c = s[i];
                size_t len;
                uint32_t cp;
                if (c == 0)
                        return false;
                if (c < 0x80) {
                        i++;
                        continue;
                } else if ((c & 0xe0) == 0xc0) {
                        len = 2;
                        cp = c & 0x1f;
                } else if ((c & 0xf0) == 0xe0) {
                        len = 3;
                        cp = c & 0x0f;
                } else if ((c & 0xf8) == 0xf0) {
                        len = 4;
                        cp = c & 0x07;
                } else
                        return false;
                if (n - i < len)
                        return false;
                for (size_t k = 1; k < len; k++) {
                        if ((s[i + k] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (s[i + k] & 0x3f);
                }
                if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                i += len;
        }
        return true;
}

int api_path_segment_decode(const char *text, size_t len, char **ret) {
        if (!text && len)
                return -EINVAL;
        _cleanup_free_ char *out = malloc(len + 1);
        if (!out)
                return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                int hi, lo;
                if (text[i] == '%' && len - i >= 3 && (hi = hex_digit_value((unsigned char)text[i + 1])) >= 0 &&
                    (lo = hex_digit_value((unsigned char)text[i + 2])) >= 0) {
                        out[o++] = (char)(hi << 4 | lo);
                        i += 2;
                } else
                        out[o++] = text[i];
        }
        out[o] = 0;
        if (!utf8_valid((const unsigned char *)out, o))
                return -EINVAL;
        *ret = TAKE_PTR(out);
        return 0;
}

/* Does path match route r? For a param route, *seg and *seg_len give the segment. */
static bool route_matches(const struct route *r, const char *path, const char **seg, size_t *seg_len) {
        if (!r->param)
                return streq(r->path, path);
        size_t n = strlen(r->path);
        if (strncmp(path, r->path, n) != 0)
                return false;
        const char *s = path + n;
        if (*s == 0 || strchr(s, '/'))
                return false; /* aziot's ^/identities/modules/([^/]+)$ */
        *seg = s;
        *seg_len = strlen(s);
        return true;
}

int api_route_param(enum api_socket which, const char *method, const char *path, const char *api_version,
                    enum api_op *ret_op, char **ret_param, struct api_error *err) {
        if (!api_version) {
                api_error_set(err, 400, "api-version not specified");
                return -EINVAL;
        }
        if (!version_known(which, api_version)) {
                api_error_set(err, 400, "invalid api-version \"%s\"", api_version);
                return -EINVAL;
        }
        /* aziot skips a route whose versions do not include this one, then
         * matches the path; the method is checked on the route found. */
        const struct route *path_match = NULL, *found = NULL;
        const char *seg = NULL;
        size_t seg_len = 0;
        for (size_t i = 0; path && i < ELEMENTSOF(routes) && !found; i++) {
                const struct route *r = &routes[i];
                if (r->socket != which || strcmp(api_version, r->min_version) < 0 ||
                    !route_matches(r, path, &seg, &seg_len))
                        continue;
                if (!path_match)
                        path_match = r;
                if (method && streq(r->method, method))
                        found = r;
        }
        if (!path_match) {
                api_error_set(err, 404, "not found");
                return -ENOENT;
        }
        _cleanup_free_ char *param = NULL;
        if (path_match->param) {
                int r = api_path_segment_decode(seg, seg_len, &param);
                if (r == -ENOMEM) {
                        api_error_set(err, 500, "internal error");
                        return r;
                }
                if (r < 0) {
                        /* aziot's from_uri() gives no route: 404 */
                        api_error_set(err, 404, "not found");
                        return -ENOENT;
                }
        }
        if (!found) {
                api_error_set(err, 400, "method not allowed");
                if (err)
                        err->allow = path_match->allow;
                return -EINVAL;
        }
        *ret_op = found->op;
        if (ret_param)
                *ret_param = TAKE_PTR(param);
        return 0;
}

int api_route(enum api_socket which, const char *method, const char *path, const char *api_version,
              enum api_op *ret_op, struct api_error *err) {
        return api_route_param(which, method, path, api_version, ret_op, NULL, err);
}

int api_check_module_id(const char *module_id, struct api_error *err) {
        static const char extra[] = "-.+%_#*?!(),:=@$'";
        const char *why = NULL;
        size_t n = module_id ? strlen(module_id) : 0;
        bool blank = true;
        for (size_t i = 0; i < n; i++)
                if (module_id[i] != ' ' && (module_id[i] < '\t' || module_id[i] > '\r'))
                        blank = false;
        if (blank)
                why = "module name cannot be empty";
        else if (n > API_MODULE_ID_MAX) {
                api_error_set(err, 400,
                              "parameter \"module_id\" has an invalid value\ncaused by: module name is longer "
                              "than %d characters (IoT Hub's limit)",
                              API_MODULE_ID_MAX);
                return -EINVAL;
        } else
                for (size_t i = 0; i < n && !why; i++) {
                        char c = module_id[i];
                        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                              strchr(extra, c)))
                                why = "module name may only hold ASCII letters, digits and - . + % _ # * ? ! ( ) , "
                                      ": = @ $ ' (IoT Hub's rule)";
                }
        if (!why)
                return 0;
        api_error_set(err, 400, "parameter \"module_id\" has an invalid value\ncaused by: %s", why);
        return -EINVAL;
}

int api_check_module_type(enum api_op op, const char *type, struct api_error *err) {
        if (!type) {
                api_error_set(err, 400, "parameter \"type\" has an invalid value\ncaused by: missing parameter");
                return -EINVAL;
        }
        if (streq(type, "aziot"))
                return 0;
        if (streq(type, "local") && (op == API_OP_MODULES_GET || op == API_OP_MODULES_CREATE))
                api_error_set(err, 400,
                              "parameter \"type\" has an invalid value\ncaused by: local identities are not "
                              "supported by tpmidd");
        else
                api_error_set(err, 400, "parameter \"type\" has an invalid value\ncaused by: invalid type: %s",
                              type);
        return -EINVAL;
}

/* ---- Request bodies ---- */

/* Parse body as a JSON object. Returns the object (caller decrefs) or NULL with err set. */
static json_t *parse_body(const uint8_t *body, size_t len, struct api_error *err) {
        if (!body || len == 0) {
                api_error_set(err, 400, "missing request body");
                return NULL;
        }
        json_error_t jerr;
        json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                api_error_set(err, 422, "%s at line %d column %d", jerr.text, jerr.line, jerr.column);
                return NULL;
        }
        if (!json_is_object(root)) {
                json_decref(root);
                api_error_set(err, 422, "request body must be a JSON object");
                return NULL;
        }
        return root;
}

/* Unpack one required string field, naming it in the error. */
static int unpack_string(json_t *root, const char *field, const char **ret, size_t *ret_len,
                         struct api_error *err) {
        json_error_t jerr;
        const char *s;
        size_t n;
        if (json_unpack_ex(root, &jerr, 0, "{s:s%}", field, &s, &n) < 0) {
                if (!json_object_get(root, field))
                        api_error_set(err, 422, "missing field '%s'", field);
                else
                        api_error_set(err, 422, "field '%s' must be a string", field);
                return -EINVAL;
        }
        *ret = s;
        *ret_len = n;
        return 0;
}

static int decode_b64_field(const uint8_t *body, size_t len, const char *field, size_t max, bool allow_empty,
                            uint8_t **ret, size_t *ret_len, struct api_error *err) {
        json_auto_t *root = parse_body(body, len, err);
        if (!root)
                return -EINVAL;
        const char *text;
        size_t text_len;
        if (unpack_string(root, field, &text, &text_len, err) < 0)
                return -EINVAL;
        /* Size first from the encoded length, so an oversized value is refused
         * before anything is allocated for it. */
        if (text_len / 4 * 3 > max + 2) {
                api_error_set(err, 422, "field '%s' is too large", field);
                return -EINVAL;
        }
        uint8_t *data;
        size_t data_len;
        int r = b64_decode(text, text_len, &data, &data_len);
        if (r == -ENOMEM) {
                api_error_set(err, 500, "internal error");
                return r;
        }
        if (r < 0) {
                api_error_set(err, 422, "field '%s' is not valid base64", field);
                return -EINVAL;
        }
        if (data_len > max) {
                explicit_zero(data, data_len);
                free(data);
                api_error_set(err, 422, "field '%s' is too large", field);
                return -EINVAL;
        }
        if (data_len == 0 && !allow_empty) {
                free(data);
                api_error_set(err, 422, "field '%s' is empty", field);
                return -EINVAL;
        }
        *ret = data;
        *ret_len = data_len;
        return 0;
}

int api_decode_import(const uint8_t *body, size_t len, uint8_t **key, size_t *key_len, struct api_error *err) {
        return decode_b64_field(body, len, "key", API_MAX_IMPORT_KEY_BYTES, false, key, key_len, err);
}

int api_decode_sign(const uint8_t *body, size_t len, uint8_t **data, size_t *data_len, struct api_error *err) {
        return decode_b64_field(body, len, "data", API_MAX_SIGN_DATA_BYTES, true, data, data_len, err);
}

int api_decode_token(const uint8_t *body, size_t len, uint32_t *lifetime_sec, struct api_error *err) {
        if (!body || len == 0) {
                *lifetime_sec = API_TOKEN_LIFETIME_DEFAULT_SEC;
                return 0;
        }
        json_auto_t *root = parse_body(body, len, err);
        if (!root)
                return -EINVAL;
        json_t *v = json_object_get(root, "lifetime_sec");
        if (!v) {
                *lifetime_sec = API_TOKEN_LIFETIME_DEFAULT_SEC;
                return 0;
        }
        json_error_t jerr;
        json_int_t n;
        if (json_unpack_ex(v, &jerr, JSON_STRICT, "I", &n) < 0) {
                api_error_set(err, 422, "field 'lifetime_sec' must be an integer");
                return -EINVAL;
        }
        if (n < API_TOKEN_LIFETIME_MIN_SEC || n > API_TOKEN_LIFETIME_MAX_SEC) {
                api_error_set(err, 422, "field 'lifetime_sec' must be between %d and %d", API_TOKEN_LIFETIME_MIN_SEC,
                              API_TOKEN_LIFETIME_MAX_SEC);
                return -EINVAL;
        }
        *lifetime_sec = (uint32_t)n;
        return 0;
}

int api_decode_device(const uint8_t *body, size_t len, struct api_error *err) {
        json_auto_t *root = parse_body(body, len, err);
        if (!root)
                return -EINVAL;
        const char *type;
        size_t type_len;
        /* aziot's Request needs "type" as a string; get_device_identity() then ignores its value */
        return unpack_string(root, "type", &type, &type_len, err);
}

/* aziot's test: no Content-Type, or its media type (before ';', trimmed) is
 * exactly application/json. */
static bool content_type_json(const char *ct) {
        if (!ct)
                return true;
        size_t n = strcspn(ct, ";");
        while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
                n--;
        while (n > 0 && (*ct == ' ' || *ct == '\t')) {
                ct++;
                n--;
        }
        return n == strlen("application/json") && strncmp(ct, "application/json", n) == 0;
}

/* Any JSON value (aziot's serde IgnoredAny). */
static int parse_any(const uint8_t *body, size_t len, struct api_error *err) {
        if (!body || len == 0) {
                api_error_set(err, 422, "EOF while parsing a value at line 1 column 0");
                return -EINVAL;
        }
        json_error_t jerr;
        json_t *v = json_loadb((const char *)body, len, JSON_DECODE_ANY, &jerr);
        if (!v) {
                api_error_set(err, 422, "%s at line %d column %d", jerr.text, jerr.line, jerr.column);
                return -EINVAL;
        }
        json_decref(v);
        return 0;
}

int api_decode_module_create(const char *content_type, const uint8_t *body, size_t len, char **ret_type,
                             char **ret_module_id, struct api_error *err) {
        if (!content_type_json(content_type))
                len = 0; /* aziot: a body of another type is no body */
        json_auto_t *root = parse_body(body, len, err);
        if (!root)
                return -EINVAL;
        const char *type, *id;
        size_t type_len, id_len;
        if (unpack_string(root, "type", &type, &type_len, err) < 0 ||
            unpack_string(root, "moduleId", &id, &id_len, err) < 0)
                return -EINVAL;
        /* No NUL inside: parse_body() loads without JSON_ALLOW_NUL. */
        _cleanup_free_ char *t = strdup(type);
        _cleanup_free_ char *m = strdup(id);
        if (!t || !m) {
                api_error_set(err, 500, "internal error");
                return -ENOMEM;
        }
        *ret_type = TAKE_PTR(t);
        *ret_module_id = TAKE_PTR(m);
        return 0;
}

int api_decode_module_update(const char *content_type, const uint8_t *body, size_t len, struct api_error *err) {
        if (!content_type_json(content_type)) {
                api_error_set(err, 415, "request body must be application/json");
                return -EINVAL;
        }
        return parse_any(body, len, err);
}

int api_decode_module_delete(const char *content_type, const uint8_t *body, size_t len, struct api_error *err) {
        if (!body || len == 0 || !content_type_json(content_type))
                return 0;
        return parse_any(body, len, err);
}

int api_decode_report(const uint8_t *body, size_t len, struct api_report *out, struct api_error *err) {
        json_auto_t *root = parse_body(body, len, err);
        if (!root)
                return -EINVAL;
        json_t *v = json_object_get(root, "hubStatus");
        if (!v) {
                api_error_set(err, 422, "missing field 'hubStatus'");
                return -EINVAL;
        }
        if (!json_is_integer(v)) {
                api_error_set(err, 422, "field 'hubStatus' must be an integer");
                return -EINVAL;
        }
        json_int_t status = json_integer_value(v);
        if (status < API_HTTP_STATUS_MIN || status > API_HTTP_STATUS_MAX) {
                api_error_set(err, 422, "field 'hubStatus' must be an HTTP status between %d and %d",
                              API_HTTP_STATUS_MIN, API_HTTP_STATUS_MAX);
                return -EINVAL;
        }
        const char *reason = "";
        size_t reason_len = 0;
        json_t *rv = json_object_get(root, "reason");
        if (rv && !json_is_null(rv)) {
                if (!json_is_string(rv)) {
                        api_error_set(err, 422, "field 'reason' must be a string");
                        return -EINVAL;
                }
                reason = json_string_value(rv);
                reason_len = json_string_length(rv);
                if (reason_len > API_REPORT_REASON_MAX) {
                        api_error_set(err, 422, "field 'reason' is too large");
                        return -EINVAL;
                }
                /* The reason is logged: no control characters (newlines would
                 * forge log lines), and no NUL (jansson refuses \u0000 without
                 * JSON_ALLOW_NUL, checked again here because the length says so). */
                for (size_t i = 0; i < reason_len; i++) {
                        unsigned char c = (unsigned char)reason[i];
                        if (c < 0x20 || c == 0x7f) {
                                api_error_set(err, 422, "field 'reason' contains control characters");
                                return -EINVAL;
                        }
                }
        }
        out->hub_status = (int)status;
        memcpy(out->reason, reason, reason_len);
        out->reason[reason_len] = 0;
        return 0;
}

bool api_report_is_rejection(int hub_status) {
        return hub_status == 401 || hub_status == 403 || hub_status == 404;
}

/* ---- Responses ---- */

/* Serialise and consume o (json_pack's "o" steals; a NULL o means the pack
 * failed: a NULL field or text that is not UTF-8). */
static int dump(json_t *o, char **ret) {
        if (!o)
                return -EINVAL;
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

static int b64_pair(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, char **ra, char **rb) {
        if ((!a && a_len) || (!b && b_len))
                return -EINVAL;
        _cleanup_free_ char *x = b64_encode(a, a_len);
        _cleanup_free_ char *y = b64_encode(b, b_len);
        if (!x || !y)
                return -ENOMEM;
        *ra = TAKE_PTR(x);
        *rb = TAKE_PTR(y);
        return 0;
}

int api_encode_keys(const uint8_t *ek, size_t ek_len, const uint8_t *srk, size_t srk_len, char **ret) {
        _cleanup_free_ char *e = NULL, *s = NULL;
        int r = b64_pair(ek, ek_len, srk, srk_len, &e, &s);
        if (r < 0)
                return r;
        return dump(json_pack("{s:s, s:s}", "endorsement_key", e, "storage_root_key", s), ret);
}

int api_encode_empty(char **ret) {
        return dump(json_object(), ret);
}

int api_encode_sign(const uint8_t *digest, size_t len, char **ret) {
        if (!digest && len)
                return -EINVAL;
        _cleanup_free_ char *d = b64_encode(digest, len);
        if (!d)
                return -ENOMEM;
        return dump(json_pack("{s:s}", "digest", d), ret);
}

int api_encode_identity(const struct api_device_identity *id, char **ret) {
        if (!id)
                return -EINVAL;
        return dump(json_pack("{s:s, s:{s:s, s:s, s:s, s:{s:s}}}", "type", "aziot", "spec", "hubName", id->hub_name,
                              "gatewayHost", id->gateway_host, "deviceId", id->device_id, "auth", "type", "tpm"),
                    ret);
}

static json_t *module_object(const struct api_module_identity *m) {
        if (!m)
                return NULL;
        json_t *spec = json_pack("{s:s, s:s, s:s, s:s}", "hubName", m->hub_name, "gatewayHost", m->gateway_host,
                                 "deviceId", m->device_id, "moduleId", m->module_id);
        if (!spec)
                return NULL;
        if (m->gen_id && m->gen_id[0] && json_object_set_new(spec, "genId", json_string(m->gen_id)) < 0)
                goto fail;
        if (m->key_handle &&
            json_object_set_new(spec, "auth", json_pack("{s:s, s:s}", "type", "sas", "keyHandle", m->key_handle)) < 0)
                goto fail;
        return json_pack("{s:s, s:o}", "type", "aziot", "spec", spec);
fail:
        json_decref(spec);
        return NULL;
}

int api_encode_module(const struct api_module_identity *m, char **ret) {
        return dump(module_object(m), ret);
}

int api_encode_module_list(const struct api_module_identity *list, size_t n, char **ret) {
        if (!list && n)
                return -EINVAL;
        json_t *a = json_array();
        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                if (json_array_append_new(a, module_object(&list[i])) < 0) {
                        json_decref(a);
                        return -EINVAL;
                }
        return dump(json_pack("{s:o}", "identities", a), ret);
}

int api_encode_trust_bundle(const char *pem, char **ret) {
        return dump(json_pack("{s:s}", "certificate", pem), ret);
}

int api_encode_provisioning(const struct api_provisioning *p, char **ret) {
        if (!p)
                return -EINVAL;
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "source", "dps", "auth", "tpm", "endpoint", p->endpoint,
                              "scope_id", p->scope_id, "registration_id", p->registration_id);
        if (!o)
                return -EINVAL;
        json_t *payload = p->payload_json ? json_loads(p->payload_json, JSON_DECODE_ANY, NULL) : json_null();
        if (!payload || json_object_set_new(o, "payload", payload) < 0) {
                json_decref(o);
                return -EINVAL;
        }
        return dump(o, ret);
}

int api_encode_token(const char *sas_token, int64_t expires_on, const char *hub_name, const char *device_id,
                     char **ret) {
        return dump(json_pack("{s:s, s:I, s:s, s:s}", "sasToken", sas_token, "expiresOn", (json_int_t)expires_on,
                              "hubName", hub_name, "deviceId", device_id),
                    ret);
}

/* 0 stands for "none" in the status struct. */
static json_t *int_or_null(int64_t v) {
        return v ? json_integer((json_int_t)v) : json_null();
}

int api_encode_status(const struct api_status *s, char **ret) {
        if (!s || (s->n_restart_needed > 0 && !s->restart_needed))
                return -EINVAL;
        json_auto_t *restart = json_array();
        if (!restart)
                return -ENOMEM;
        for (size_t i = 0; i < s->n_restart_needed; i++)
                if (!s->restart_needed[i] || json_array_append_new(restart, json_string(s->restart_needed[i])) < 0)
                        return -EINVAL;
        json_t *last = NULL;
        if (s->has_last_result) {
                last = json_pack("{s:s, s:o, s:s?, s:I}", "status", s->last_status, "errorCode",
                                 int_or_null(s->last_error_code), "message", s->last_message, "at",
                                 (json_int_t)s->last_at);
                if (!last)
                        return -EINVAL;
        } else
                last = json_null();
        return dump(json_pack("{s:{s:s, s:s?, s:s?, s:s?, s:o, s:o, s:s?, s:s?, s:b, s:o}, s:{s:s, s:s?, s:s?},"
                              " s:{s:s, s:I, s:s, s:O, s:I}, s:{s:I, s:s?}}",
                              "provisioning", "state", s->provisioning_state, "hubName", s->hub_name, "deviceId",
                              s->device_id, "registrationId", s->registration_id, "lastResult", last,
                              "nextRetryAt", int_or_null(s->next_retry_at), "idScope", s->id_scope,
                              "globalEndpoint", s->global_endpoint, "persisted", !s->not_persisted, "clockSkewSec",
                              s->has_clock_skew ? json_integer((json_int_t)s->clock_skew_sec) : json_null(),
                              "tpm", "state", s->tpm_state, "lastError", s->tpm_last_error, "tcti", s->tcti,
                              "daemon", "version", s->version, "uptimeSec", (json_int_t)s->uptime_sec, "mode",
                              s->mode, "restartNeeded", restart, "refusedConnections",
                              (json_int_t)s->refused_connections, "modules", "count", (json_int_t)s->modules_count,
                              "lastReconcile", s->modules_last_reconcile),
                    ret);
}

static const char *const report_action_table[_API_REPORT_ACTION_MAX] = {
        [API_REPORT_CHECKING_HUB] = "checking-hub",
        [API_REPORT_IGNORED] = "ignored",
        [API_REPORT_ALREADY_PROVISIONING] = "already-provisioning",
        [API_REPORT_RATE_LIMITED] = "rate-limited",
};

const char *api_report_action_to_string(enum api_report_action a) {
        if ((unsigned)a >= _API_REPORT_ACTION_MAX)
                return NULL;
        return report_action_table[a];
}

int api_encode_report(enum api_report_action a, char **ret) {
        const char *s = api_report_action_to_string(a);
        if (!s)
                return -EINVAL;
        return dump(json_pack("{s:s}", "action", s), ret);
}

int api_encode_error(const char *message, char **ret) {
        return dump(json_pack("{s:s}", "message", message), ret);
}

/* ---- PUT /log_level ---- */

int api_decode_log_level(const uint8_t *body, size_t len, int *level, struct api_error *err) {
        json_auto_t *root = parse_body(body, len, err);
        if (!root)
                return -EINVAL;
        const char *name = NULL;
        size_t name_len = 0;
        int r = unpack_string(root, "level", &name, &name_len, err);
        if (r < 0)
                return r;
        int l = strlen(name) == name_len ? log_level_from_string(name) : -EINVAL;
        if (l < 0) {
                api_error_set(err, 422, "field 'level' must be one of error, warn, info, debug, trace");
                return -EINVAL;
        }
        *level = l;
        return 0;
}

int api_encode_log_level(int level, char **ret) {
        const char *name = log_level_to_string(level);
        if (!name)
                return -EINVAL;
        json_t *o = json_pack("{s:s}", "level", name);
        if (!o)
                return -ENOMEM;
        return dump(o, ret);
}
