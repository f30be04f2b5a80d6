/* DPS client codec: URLs, request bodies, response parsers, classification.
 * Everything from the server is untrusted: sizes are checked before parsing,
 * types after, and values that later end up in a URL or a file name (hub,
 * device id) are validated here so the driver never sees a bad one. */
#include "dps.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "sas.h"
#include "util.h"

static bool is_alnum(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* ---- validation ---- */

bool dps_hub_name_is_valid(const char *s) {
        size_t len, label = 0;

        if (!s)
                return false;
        len = strnlen(s, DPS_HUB_NAME_MAX + 1);
        if (len == 0 || len > DPS_HUB_NAME_MAX)
                return false;
        for (size_t i = 0; i <= len; i++) {
                char c = s[i];
                if (c == '.' || c == '\0') {
                        /* empty label (leading dot, "..", trailing dot) or '-' at a label edge */
                        if (label == 0 || s[i - 1] == '-')
                                return false;
                        label = 0;
                        continue;
                }
                if (!is_alnum(c) && c != '-')
                        return false;
                if (c == '-' && label == 0)
                        return false;
                if (++label > DPS_HUB_LABEL_MAX)
                        return false;
        }
        return true;
}

/* Length of s if it is 1..max bytes of ASCII alphanumerics and characters
 * of extra, else 0. The identifier validators below differ only in these. */
static size_t token_len(const char *s, size_t max, const char *extra) {
        if (!s)
                return 0;
        size_t len = strnlen(s, max + 1);
        if (len == 0 || len > max)
                return 0;
        for (size_t i = 0; i < len; i++)
                if (!is_alnum(s[i]) && !strchr(extra, s[i]))
                        return 0;
        return len;
}

bool dps_device_id_is_valid(const char *s) {
        return token_len(s, DPS_DEVICE_ID_MAX, "-.%_*?!(),:=@$'+#") > 0 && !streq(s, ".") && !streq(s, "..");
}

bool dps_registration_id_is_valid(const char *s) {
        size_t len = token_len(s, DPS_REGISTRATION_ID_MAX, "._:-");
        return len > 0 && is_alnum(s[0]) && is_alnum(s[len - 1]);
}

bool dps_id_scope_is_valid(const char *s) {
        return token_len(s, DPS_ID_SCOPE_MAX, "") > 0;
}

/* ---- URLs ---- */

/* Split endpoint into a lowercase scheme and the authority; the rest is dropped. */
static int endpoint_base(const char *endpoint, const char **scheme, const char **auth, size_t *auth_len) {
        const char *p;
        size_t n;

        if (!endpoint || strnlen(endpoint, DPS_ENDPOINT_MAX + 1) > DPS_ENDPOINT_MAX)
                return -EINVAL;
        if (strncasecmp(endpoint, "https://", 8) == 0) {
                *scheme = "https";
                p = endpoint + 8;
        } else if (strncasecmp(endpoint, "http://", 7) == 0) {
                *scheme = "http";
                p = endpoint + 7;
        } else
                return -EINVAL;
        n = strcspn(p, "/?#");
        if (n == 0)
                return -EINVAL;
        /* host, IPv6 literal, port. No userinfo: credentials never go in our URLs. */
        for (size_t i = 0; i < n; i++)
                if (!is_alnum(p[i]) && !strchr(".-:[]_", p[i]))
                        return -EINVAL;
        *auth = p;
        *auth_len = n;
        return 0;
}

static int build_url(const char *endpoint, const char *id_scope, const char *registration_id,
                     const char *operation_id, char **ret) {
        _cleanup_free_ char *scope_enc = NULL, *reg_enc = NULL, *op_enc = NULL;
        const char *scheme, *auth;
        size_t auth_len;
        char *url;
        int r;

        if (!ret)
                return -EINVAL;
        r = endpoint_base(endpoint, &scheme, &auth, &auth_len);
        if (r < 0)
                return r;
        if (!dps_id_scope_is_valid(id_scope) || !dps_registration_id_is_valid(registration_id))
                return -EINVAL;
        r = sas_percent_encode(id_scope, strlen(id_scope), &scope_enc);
        if (r < 0)
                return r;
        r = sas_percent_encode(registration_id, strlen(registration_id), &reg_enc);
        if (r < 0)
                return r;
        if (operation_id) {
                size_t n = strnlen(operation_id, DPS_OPERATION_ID_MAX + 1);
                if (n == 0 || n > DPS_OPERATION_ID_MAX)
                        return -EINVAL;
                r = sas_percent_encode(operation_id, n, &op_enc);
                if (r < 0)
                        return r;
                r = asprintf(&url, "%s://%.*s/%s/registrations/%s/operations/%s?api-version=" DPS_API_VERSION,
                             scheme, (int)auth_len, auth, scope_enc, reg_enc, op_enc);
        } else
                r = asprintf(&url, "%s://%.*s/%s/registrations/%s/register?api-version=" DPS_API_VERSION, scheme,
                             (int)auth_len, auth, scope_enc, reg_enc);
        if (r < 0)
                return -ENOMEM;
        *ret = url;
        return 0;
}

int dps_register_url(const char *endpoint, const char *id_scope, const char *registration_id, char **ret) {
        return build_url(endpoint, id_scope, registration_id, NULL, ret);
}

int dps_operation_url(const char *endpoint, const char *id_scope, const char *registration_id,
                      const char *operation_id, char **ret) {
        if (!operation_id)
                return -EINVAL;
        return build_url(endpoint, id_scope, registration_id, operation_id, ret);
}

/* ---- request bodies ---- */

static bool json_depth_ok(const json_t *j, unsigned depth) {
        if (depth > DPS_PAYLOAD_MAX_DEPTH)
                return false;
        if (json_is_object(j)) {
                const char *k;
                json_t *v;
                json_object_foreach((json_t *)(uintptr_t)j, k, v)
                        if (!json_depth_ok(v, depth + 1))
                                return false;
        } else if (json_is_array(j)) {
                size_t i;
                json_t *v;
                json_array_foreach(j, i, v)
                        if (!json_depth_ok(v, depth + 1))
                                return false;
        }
        return true;
}

int dps_payload_parse(const uint8_t *buf, size_t len, json_t **ret, char err[160]) {
        json_error_t e;
        json_t *j;

        if (!buf || !ret)
                return -EINVAL;
        if (len > DPS_PAYLOAD_MAX_BYTES) {
                if (err)
                        snprintf(err, 160, "payload is larger than %u bytes", DPS_PAYLOAD_MAX_BYTES);
                return -E2BIG;
        }
        j = json_loadb((const char *)buf, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &e);
        if (!j) {
                if (err)
                        snprintf(err, 160, "%d:%d: %.120s", e.line, e.column, e.text);
                return -EBADMSG;
        }
        if (!json_depth_ok(j, 1)) {
                json_decref(j);
                if (err)
                        snprintf(err, 160, "payload nests deeper than %d levels", DPS_PAYLOAD_MAX_DEPTH);
                return -E2BIG;
        }
        *ret = j;
        return 0;
}

static int dump_body(json_t *body, const json_t *payload, char **ret) {
        char *s;

        if (payload) {
                if (json_object_set_new(body, "payload", json_deep_copy(payload)) < 0)
                        return -ENOMEM;
        }
        s = json_dumps(body, JSON_COMPACT);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int dps_register_body(const char *registration_id, const uint8_t *ek, size_t ek_len, const uint8_t *srk,
                      size_t srk_len, const json_t *payload, char **ret) {
        _cleanup_free_ char *ek64 = NULL, *srk64 = NULL;
        json_auto_t *body = NULL;

        if (!dps_registration_id_is_valid(registration_id) || !ek || !ek_len || !srk || !srk_len || !ret)
                return -EINVAL;
        ek64 = b64_encode(ek, ek_len);
        srk64 = b64_encode(srk, srk_len);
        if (!ek64 || !srk64)
                return -ENOMEM;
        body = json_pack("{s:s, s:{s:s, s:s}}", "registrationId", registration_id, "tpm", "endorsementKey", ek64,
                         "storageRootKey", srk64);
        if (!body)
                return -ENOMEM;
        return dump_body(body, payload, ret);
}

int dps_auth_register_body(const char *registration_id, const json_t *payload, char **ret) {
        json_auto_t *body = NULL;

        if (!dps_registration_id_is_valid(registration_id) || !ret)
                return -EINVAL;
        body = json_pack("{s:s}", "registrationId", registration_id);
        if (!body)
                return -ENOMEM;
        return dump_body(body, payload, ret);
}

/* ---- response helpers ---- */

static int load_object(const uint8_t *buf, size_t len, json_t **ret) {
        json_t *j;

        if (!buf && len > 0)
                return -EINVAL;
        if (len > DPS_MAX_BODY_BYTES)
                return -E2BIG;
        if (len == 0)
                return -EBADMSG;
        j = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
        if (!j)
                return -EBADMSG;
        if (!json_is_object(j)) {
                json_decref(j);
                return -EBADMSG;
        }
        *ret = j;
        return 0;
}

/* Cut s (NUL-terminated) to at most max bytes without splitting a UTF-8
 * sequence (jansson guarantees valid UTF-8 in), and copy it to dst[max+1]. */
static void copy_truncated(char *dst, size_t max, const char *s) {
        size_t n = strnlen(s, max + 1);

        if (n > max) {
                n = max;
                while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
                        n--;
        }
        memcpy(dst, s, n);
        dst[n] = '\0';
}

/* Copy string member key of obj into dst[max+1]. Absent or null → "" and
 * -ENOENT (callers decide whether that matters). Not a string, too long, or
 * containing a control character → -EBADMSG. */
static int get_str(json_t *obj, const char *key, char *dst, size_t max) {
        json_t *v = json_object_get(obj, key);
        const char *s;
        size_t n;

        if (!v || json_is_null(v)) {
                dst[0] = '\0';
                return -ENOENT;
        }
        if (!json_is_string(v))
                return -EBADMSG;
        s = json_string_value(v);
        n = json_string_length(v);
        if (n > max || strlen(s) != n)
                return -EBADMSG;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                        return -EBADMSG;
        memcpy(dst, s, n + 1);
        return 0;
}

static int opt_str(json_t *obj, const char *key, char *dst, size_t max) {
        int r = get_str(obj, key, dst, max);
        return r == -ENOENT ? 0 : r;
}

/* base64 string member → heap blob of 1..DPS_AUTH_BLOB_MAX bytes. Absent/null → -ENOENT. */
static int get_blob(json_t *obj, const char *key, uint8_t **ret, size_t *ret_len) {
        json_t *v = json_object_get(obj, key);
        uint8_t *blob;
        size_t n;
        int r;

        if (!v || json_is_null(v))
                return -ENOENT;
        if (!json_is_string(v))
                return -EBADMSG;
        /* Bound the encoded size before decoding anything. */
        if (json_string_length(v) == 0 || json_string_length(v) > (DPS_AUTH_BLOB_MAX + 2) / 3 * 4)
                return -EBADMSG;
        r = b64_decode(json_string_value(v), json_string_length(v), &blob, &n);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return -EBADMSG;
        if (n == 0 || n > DPS_AUTH_BLOB_MAX) {
                explicit_zero(blob, n);
                free(blob);
                return -EBADMSG;
        }
        *ret = blob;
        *ret_len = n;
        return 0;
}

static void free_blob(uint8_t *blob, size_t len) {
        if (blob) {
                explicit_zero(blob, len);
                free(blob);
        }
}

/* ---- 401 challenge ---- */

int dps_parse_challenge(const uint8_t *buf, size_t len, struct dps_challenge *out) {
        json_auto_t *j = NULL;
        char key_name[DPS_KEY_NAME_MAX + 1];
        uint8_t *blob;
        size_t blob_len;
        int r;

        if (!out)
                return -EINVAL;
        r = load_object(buf, len, &j);
        if (r < 0)
                return r;
        r = get_str(j, "keyName", key_name, DPS_KEY_NAME_MAX);
        if (r == -ENOENT)
                strcpy(key_name, SAS_DPS_KEY_NAME);
        else if (r < 0)
                return r;
        if (!key_name[0])
                return -EBADMSG;
        /* keyName goes into the token's skn: keep it to a plain token. */
        for (const char *p = key_name; *p; p++)
                if (!is_alnum(*p) && !strchr("._-", *p))
                        return -EBADMSG;
        r = get_blob(j, "authenticationKey", &blob, &blob_len);
        if (r == -ENOENT)
                return -EBADMSG;
        if (r < 0)
                return r;

        out->blob = blob;
        out->blob_len = blob_len;
        memcpy(out->key_name, key_name, sizeof(key_name));
        return 0;
}

const char *dps_challenge_defect(const uint8_t *buf, size_t len) {
        json_auto_t *j = NULL;
        char key_name[DPS_KEY_NAME_MAX + 1];
        uint8_t *blob = NULL;
        size_t blob_len = 0;
        int r;

        if (load_object(buf, len, &j) < 0)
                return NULL;
        if (!json_object_get(j, "authenticationKey") && !json_object_get(j, "keyName") &&
            !json_object_get(j, "unencryptedAuthenticationKey"))
                return NULL; /* not challenge-shaped: an error answer */
        r = get_str(j, "keyName", key_name, DPS_KEY_NAME_MAX);
        if (r < 0 && r != -ENOENT)
                return "keyName is not a short string";
        if (r == 0) {
                if (!key_name[0])
                        return "keyName is empty";
                for (const char *p = key_name; *p; p++)
                        if (!is_alnum(*p) && !strchr("._-", *p))
                                return "keyName is not a plain token";
        }
        r = get_blob(j, "authenticationKey", &blob, &blob_len);
        if (r == -ENOENT)
                return "no authenticationKey";
        if (r < 0)
                return "authenticationKey is not a valid base64 blob";
        free_blob(blob, blob_len);
        return "unusable challenge";
}

void dps_challenge_clear(struct dps_challenge *c) {
        if (!c)
                return;
        free_blob(c->blob, c->blob_len);
        memset(c, 0, sizeof(*c));
}

/* ---- status ---- */

static const char *const status_table[_DPS_STATUS_MAX] = {
        [DPS_STATUS_UNASSIGNED] = "unassigned",
        [DPS_STATUS_ASSIGNING] = "assigning",
        [DPS_STATUS_ASSIGNED] = "assigned",
        [DPS_STATUS_FAILED] = "failed",
        [DPS_STATUS_DISABLED] = "disabled",
};

const char *dps_status_to_string(enum dps_status s) {
        if ((unsigned)s >= _DPS_STATUS_MAX)
                return NULL;
        return status_table[s];
}

int dps_status_from_string(const char *s, enum dps_status *ret) {
        if (!s || !ret)
                return -EINVAL;
        for (unsigned i = 0; i < _DPS_STATUS_MAX; i++)
                if (streq(s, status_table[i])) {
                        *ret = (enum dps_status)i;
                        return 0;
                }
        if (streq(s, "blacklisted")) {
                *ret = DPS_STATUS_DISABLED;
                return 0;
        }
        return -EBADMSG;
}

static int get_status(json_t *obj, bool required, enum dps_status dflt, enum dps_status *ret) {
        char s[32];
        int r = get_str(obj, "status", s, sizeof(s) - 1);

        if (r == -ENOENT) {
                if (required)
                        return -EBADMSG;
                *ret = dflt;
                return 0;
        }
        if (r < 0)
                return r;
        return dps_status_from_string(s, ret);
}

static int get_operation_id(json_t *obj, char dst[DPS_OPERATION_ID_MAX + 1], bool required) {
        int r = get_str(obj, "operationId", dst, DPS_OPERATION_ID_MAX);

        if (r == -ENOENT)
                return required ? -EBADMSG : 0;
        if (r < 0)
                return r;
        if (!dst[0] && required)
                return -EBADMSG;
        return 0;
}

int dps_parse_operation(const uint8_t *buf, size_t len, struct dps_operation *out) {
        json_auto_t *j = NULL;
        struct dps_operation op = {0};
        int r;

        if (!out)
                return -EINVAL;
        r = load_object(buf, len, &j);
        if (r < 0)
                return r;
        r = get_operation_id(j, op.operation_id, true);
        if (r < 0)
                return r;
        r = get_status(j, false, DPS_STATUS_ASSIGNING, &op.status);
        if (r < 0)
                return r;
        *out = op;
        return 0;
}

/* errorCode as an integer, or a string of digits (some services send that). */
static int get_code(json_t *obj, const char *key, int64_t *ret) {
        json_t *v = json_object_get(obj, key);
        const char *s;
        char *end;
        long long n;

        if (!v || json_is_null(v))
                return -ENOENT;
        if (json_is_integer(v)) {
                *ret = json_integer_value(v);
                return 0;
        }
        if (!json_is_string(v))
                return -EBADMSG;
        s = json_string_value(v);
        if (!*s || json_string_length(v) > 20 || !isdigit((unsigned char)s[0]))
                return -EBADMSG;
        errno = 0;
        n = strtoll(s, &end, 10);
        if (errno || *end)
                return -EBADMSG;
        *ret = n;
        return 0;
}

/* errorMessage truncated to our limit; wrong type → -EBADMSG. */
static int get_message(json_t *obj, const char *key, char dst[DPS_ERROR_MESSAGE_MAX + 1]) {
        json_t *v = json_object_get(obj, key);

        if (!v || json_is_null(v))
                return -ENOENT;
        if (!json_is_string(v))
                return -EBADMSG;
        copy_truncated(dst, DPS_ERROR_MESSAGE_MAX, json_string_value(v));
        return 0;
}

int dps_parse_registration(const uint8_t *buf, size_t len, struct dps_registration *out) {
        json_auto_t *j = NULL;
        struct dps_registration reg = {0};
        json_t *rs, *tpm, *payload;
        int r;

        if (!out)
                return -EINVAL;
        r = load_object(buf, len, &j);
        if (r < 0)
                return r;
        r = get_status(j, true, DPS_STATUS_ASSIGNING, &reg.status);
        if (r < 0)
                return r;
        r = get_operation_id(j, reg.operation_id, false);
        if (r < 0)
                return r;

        rs = json_object_get(j, "registrationState");
        if (json_is_null(rs)) /* json_is_null() is false for NULL */
                rs = NULL;
        if (rs && !json_is_object(rs))
                return -EBADMSG;

        if (reg.status == DPS_STATUS_ASSIGNING) {
                /* nothing else matters while assigning; still reject a wrong-typed id */
                if (rs) {
                        r = opt_str(rs, "registrationId", reg.registration_id, DPS_REGISTRATION_ID_MAX);
                        if (r < 0)
                                return r;
                }
                *out = reg;
                return 0;
        }
        if (!rs)
                return -EBADMSG;

        r = opt_str(rs, "registrationId", reg.registration_id, DPS_REGISTRATION_ID_MAX);
        if (r < 0)
                return r;
        r = opt_str(rs, "substatus", reg.substatus, DPS_SUBSTATUS_MAX);
        if (r < 0)
                return r;
        r = opt_str(rs, "createdDateTimeUtc", reg.created_at, DPS_TIMESTAMP_MAX);
        if (r < 0)
                return r;
        r = opt_str(rs, "lastUpdatedDateTimeUtc", reg.updated_at, DPS_TIMESTAMP_MAX);
        if (r < 0)
                return r;

        if (reg.status != DPS_STATUS_ASSIGNED) {
                r = get_code(rs, "errorCode", &reg.error_code);
                if (r < 0 && r != -ENOENT)
                        return r;
                r = get_message(rs, "errorMessage", reg.error_message);
                if (r < 0 && r != -ENOENT)
                        return r;
                *out = reg;
                return 0;
        }

        /* assigned: hub and device id are about to be used in URLs and files */
        r = get_str(rs, "assignedHub", reg.assigned_hub, DPS_HUB_NAME_MAX);
        if (r < 0 || !dps_hub_name_is_valid(reg.assigned_hub))
                return -EBADMSG;
        r = get_str(rs, "deviceId", reg.device_id, DPS_DEVICE_ID_MAX);
        if (r < 0 || !dps_device_id_is_valid(reg.device_id))
                return -EBADMSG;

        payload = json_object_get(rs, "payload");
        if (payload && !json_is_null(payload)) {
                if (!json_depth_ok(payload, 1))
                        return -EBADMSG;
                reg.payload = json_incref(payload);
        }

        tpm = json_object_get(rs, "tpm");
        if (tpm && !json_is_null(tpm)) {
                if (!json_is_object(tpm)) {
                        json_decref(reg.payload);
                        return -EBADMSG;
                }
                r = get_blob(tpm, "authenticationKey", &reg.auth_blob, &reg.auth_blob_len);
                if (r < 0 && r != -ENOENT) {
                        json_decref(reg.payload);
                        return r;
                }
        }
        *out = reg;
        return 0;
}

void dps_registration_clear(struct dps_registration *r) {
        if (!r)
                return;
        free_blob(r->auth_blob, r->auth_blob_len);
        if (r->payload)
                json_decref(r->payload);
        memset(r, 0, sizeof(*r));
}

/* ---- error bodies ---- */

int dps_parse_error(const uint8_t *buf, size_t len, struct dps_error *out) {
        json_auto_t *j = NULL;
        struct dps_error e = {0};
        json_t *v;
        int r;

        if (!out)
                return -EINVAL;
        r = load_object(buf, len, &j);
        if (r < 0)
                return r;
        /* Best effort: a field of the wrong type is ignored, not fatal, so
         * whatever else the server said still reaches the status line. */
        if (get_code(j, "errorCode", &e.code) < 0)
                (void)get_code(j, "code", &e.code);
        if (get_message(j, "errorMessage", e.message) < 0)
                (void)get_message(j, "message", e.message);
        v = json_object_get(j, "trackingId");
        if (json_is_string(v))
                copy_truncated(e.tracking_id, DPS_TRACKING_ID_MAX, json_string_value(v));
        *out = e;
        return 0;
}

/* ---- retry-after ---- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
        /* Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date. */
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        unsigned yoe = (unsigned)(y - era * 400);
        unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + (int64_t)doe - 719468;
}

static int parse_digits(const char *s, size_t n, unsigned *ret) {
        unsigned v = 0;
        for (size_t i = 0; i < n; i++) {
                if (!isdigit((unsigned char)s[i]))
                        return -EINVAL;
                v = v * 10 + (unsigned)(s[i] - '0');
        }
        *ret = v;
        return 0;
}

/* IMF-fixdate, exactly "Sun, 06 Nov 1994 08:49:37 GMT" (29 bytes). */
static int parse_http_date(const char *s, size_t n, int64_t *ret) {
        static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
        static const char days[] = "MonTueWedThuFriSatSun";
        unsigned d, y, hh, mm, ss, mon = 0;
        bool wday_ok = false;

        if (n != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' || s[19] != ':' ||
            s[22] != ':' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
                return -EINVAL;
        for (unsigned i = 0; i < 7; i++)
                if (memcmp(s, days + 3 * i, 3) == 0)
                        wday_ok = true;
        if (!wday_ok)
                return -EINVAL;
        for (unsigned i = 0; i < 12; i++)
                if (memcmp(s + 8, months + 3 * i, 3) == 0)
                        mon = i + 1;
        if (mon == 0)
                return -EINVAL;
        if (parse_digits(s + 5, 2, &d) < 0 || parse_digits(s + 12, 4, &y) < 0 || parse_digits(s + 17, 2, &hh) < 0 ||
            parse_digits(s + 20, 2, &mm) < 0 || parse_digits(s + 23, 2, &ss) < 0)
                return -EINVAL;
        if (d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60)
                return -EINVAL;
        *ret = days_from_civil(y, mon, d) * 86400 + hh * 3600 + mm * 60 + ss;
        return 0;
}

int dps_parse_retry_after(const char *value, int64_t now_unix, uint32_t *ret_seconds) {
        const char *s, *e;
        int64_t secs;
        size_t n;

        if (!ret_seconds)
                return -EINVAL;
        if (!value)
                return -ENODATA;
        s = value;
        while (*s == ' ' || *s == '\t')
                s++;
        e = s + strnlen(s, 64);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
        n = (size_t)(e - s);
        if (n == 0)
                return -ENODATA;

        if (isdigit((unsigned char)s[0])) {
                secs = 0;
                for (size_t i = 0; i < n; i++) {
                        if (!isdigit((unsigned char)s[i]))
                                return -EINVAL;
                        if (secs < DPS_RETRY_AFTER_MAX_S)
                                secs = secs * 10 + (s[i] - '0');
                }
        } else {
                int64_t when;
                if (parse_http_date(s, n, &when) < 0)
                        return -EINVAL;
                secs = when - now_unix;
        }
        if (secs < DPS_RETRY_AFTER_MIN_S)
                secs = DPS_RETRY_AFTER_MIN_S;
        if (secs > DPS_RETRY_AFTER_MAX_S)
                secs = DPS_RETRY_AFTER_MAX_S;
        *ret_seconds = (uint32_t)secs;
        return 0;
}

/* ---- classification ---- */

static bool transient_http(int status) {
        return status == 408 || status == 429 || (status >= 500 && status <= 599);
}

enum dps_class dps_classify(enum dps_request req, int http_status, const struct dps_error *err, const char **reason) {
        const char *why;
        enum dps_class c;

        if (http_status == 0) {
                c = DPS_CLASS_TRANSIENT;
                why = "no answer from DPS (network, TLS or timeout)";
        } else if (http_status == 401) {
                if (req == DPS_REQUEST_REGISTER) {
                        c = DPS_CLASS_OK;
                        why = "TPM challenge";
                } else {
                        c = DPS_CLASS_PERMANENT;
                        why = "DPS rejected the SAS token (the TPM key does not match, or the clock is wrong)";
                }
        } else if (http_status >= 200 && http_status <= 299) {
                if (req == DPS_REQUEST_REGISTER) {
                        c = DPS_CLASS_PERMANENT;
                        why = "DPS answered the unauthenticated registration without a TPM challenge";
                } else {
                        c = DPS_CLASS_OK;
                        why = "accepted";
                }
        } else if (transient_http(http_status)) {
                c = DPS_CLASS_TRANSIENT;
                why = http_status == 429 ? "DPS is throttling this device"
                      : http_status == 408 ? "DPS timed out the request"
                                           : "DPS server error";
        } else {
                c = DPS_CLASS_PERMANENT;
                switch (http_status) {
                case 400:
                        why = "DPS refused the registration (EK does not match the enrollment, or a bad request)";
                        break;
                case 403:
                        why = "DPS forbids this registration (enrollment disabled?)";
                        break;
                case 404:
                        why = "no enrollment for this registration id in this ID scope";
                        break;
                case 412:
                        why = "DPS precondition failed";
                        break;
                default:
                        why = "unexpected HTTP status from DPS";
                        break;
                }
        }
        /* A DPS errorCode is HTTP status * 1000 + detail; trust it when it says
         * "retry later" even if the HTTP status did not. */
        if (c == DPS_CLASS_PERMANENT && err && err->code >= 100000 && err->code <= 999999 &&
            transient_http((int)(err->code / 1000))) {
                c = DPS_CLASS_TRANSIENT;
                why = "DPS reports a temporary error";
        }
        if (reason)
                *reason = why;
        return c;
}

enum dps_class dps_classify_registration(const struct dps_registration *r, const char **reason) {
        const char *why = "invalid status";
        enum dps_class c = DPS_CLASS_PERMANENT;

        if (!r) {
                if (reason)
                        *reason = "no registration";
                return DPS_CLASS_PERMANENT;
        }
        switch (r->status) {
        case DPS_STATUS_ASSIGNED:
                c = DPS_CLASS_OK;
                why = "assigned";
                break;
        case DPS_STATUS_ASSIGNING:
                c = DPS_CLASS_OK;
                why = "assigning";
                break;
        case DPS_STATUS_DISABLED:
                c = DPS_CLASS_PERMANENT;
                why = "the enrollment is disabled";
                break;
        case DPS_STATUS_UNASSIGNED:
                c = DPS_CLASS_PERMANENT;
                why = "DPS did not assign an IoT hub";
                break;
        case DPS_STATUS_FAILED:
                if (r->error_code >= 100000 && r->error_code <= 999999 && transient_http((int)(r->error_code / 1000))) {
                        c = DPS_CLASS_TRANSIENT;
                        why = "DPS assignment failed temporarily";
                } else {
                        c = DPS_CLASS_PERMANENT;
                        why = "DPS assignment failed";
                }
                break;
        case _DPS_STATUS_MAX:
                break;
        }
        if (reason)
                *reason = why;
        return c;
}
