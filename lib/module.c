/* Module identities, the pure part. See module.h for the formats. */
#include "module.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "sha256.h"
#include "util.h"

#define TRAILER_PREFIX "sha256:"
#define TRAILER_LEN (sizeof(TRAILER_PREFIX) - 1 + 2 * SHA256_DIGEST_LEN + 1) /* "sha256:" hex "\n" */
#define JSON_DUMP_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER)

#define _cleanup_json_ _cleanup_(json_decrefp)

bool module_id_is_valid(const char *id) {
        static const char extra[] = "-:.+%_#*?!(),=@$'";
        if (!id)
                return false;
        size_t n = strlen(id);
        if (n == 0 || n > MODULE_ID_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)id[i];
                if (!(c < 0x80 && (isalnum(c) || strchr(extra, c))))
                        return false;
        }
        return true;
}

/* A string field we keep: printable ASCII, at most max bytes. */
static bool printable(const char *s, size_t max) {
        size_t n = strlen(s);
        if (n > max)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
                        return false;
        return true;
}

static bool device_id_ok(const char *s) {
        return s[0] && printable(s, MODULE_DEVICE_ID_MAX);
}

static int dump(json_t *j, char **ret) {
        char *s = json_dumps(j, JSON_DUMP_FLAGS);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

/* ---- hub ---- */

int module_hub_body(const char *module_id, const char *device_id, const uint8_t *primary, size_t primary_len,
                    const uint8_t *secondary, size_t secondary_len, char **ret) {
        if (!module_id_is_valid(module_id) || !device_id || !device_id_ok(device_id))
                return -EINVAL;
        _cleanup_json_ json_t *j = json_pack("{s:s, s:s}", "moduleId", module_id, "deviceId", device_id);
        if (!j)
                return -ENOMEM;
        if (!primary)
                return dump(j, ret);
        if (!secondary || primary_len == 0 || primary_len > MODULE_KEY_MAX_BYTES || secondary_len == 0 ||
            secondary_len > MODULE_KEY_MAX_BYTES)
                return -EINVAL;
        _cleanup_free_ char *p = b64_encode(primary, primary_len), *s = b64_encode(secondary, secondary_len);
        if (!p || !s)
                return -ENOMEM;
        json_t *auth = json_pack("{s:{s:s, s:s}, s:s}", "symmetricKey", "primaryKey", p, "secondaryKey", s, "type",
                                 "sas");
        explicit_zero(p, strlen(p));
        explicit_zero(s, strlen(s));
        if (!auth || json_object_set_new(j, "authentication", auth) < 0)
                return -ENOMEM;
        return dump(j, ret);
}

/* An optional string member copied into out (outsz bytes); absent or null
 * gives "". false for a wrong type or an over-limit value. */
static bool opt_str(json_t *o, const char *key, char *out, size_t outsz) {
        json_t *v = json_object_get(o, key);
        out[0] = '\0';
        if (!v || json_is_null(v))
                return true;
        const char *s = json_string_value(v);
        if (!s || strlen(s) != json_string_length(v) || !printable(s, outsz - 1))
                return false;
        memcpy(out, s, strlen(s) + 1);
        return true;
}

static int entry_from_json(json_t *o, struct module_hub_entry *out) {
        struct module_hub_entry e;
        if (!json_is_object(o))
                return -EBADMSG;
        if (!opt_str(o, "moduleId", e.module_id, sizeof e.module_id) || !module_id_is_valid(e.module_id) ||
            !opt_str(o, "deviceId", e.device_id, sizeof e.device_id) || !device_id_ok(e.device_id) ||
            !opt_str(o, "generationId", e.gen_id, sizeof e.gen_id) || !opt_str(o, "etag", e.etag, sizeof e.etag) ||
            !opt_str(o, "managedBy", e.managed_by, sizeof e.managed_by))
                return -EBADMSG;
        *out = e;
        return 0;
}

static json_t *load_json(const char *buf, size_t len, size_t max, int *r) {
        if (len > max) {
                *r = -E2BIG;
                return NULL;
        }
        json_error_t err;
        json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
        *r = j ? 0 : -EBADMSG;
        return j;
}

int module_hub_parse_one(const char *buf, size_t len, struct module_hub_entry *out) {
        int r;
        _cleanup_json_ json_t *j = load_json(buf, len, MODULE_HUB_REPLY_MAX, &r);
        if (!j)
                return r;
        return entry_from_json(j, out);
}

int module_hub_parse_list(const char *buf, size_t len, struct module_hub_entry **ret, size_t *ret_n) {
        int r;
        _cleanup_json_ json_t *j = load_json(buf, len, MODULE_HUB_REPLY_MAX, &r);
        if (!j)
                return r;
        if (!json_is_array(j) || json_array_size(j) > MODULE_MAX_MODULES)
                return -EBADMSG;
        size_t n = json_array_size(j);
        _cleanup_free_ struct module_hub_entry *v = NULL;
        if (n > 0 && !(v = calloc(n, sizeof *v)))
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = entry_from_json(json_array_get(j, i), &v[i]);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

/* A message made safe to log and to hand to a client: printable ASCII,
 * others as '?', cut to msgsz - 1 bytes. */
static void copy_message(const char *s, char *msg, size_t msgsz) {
        if (msgsz == 0)
                return;
        size_t i = 0;
        for (; s && s[i] && i + 1 < msgsz; i++)
                msg[i] = ((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] <= 0x7e) ? s[i] : '?';
        msg[i] = '\0';
}

void module_hub_parse_error(const char *buf, size_t len, char *msg, size_t msgsz, bool *network_error) {
        int r;
        *network_error = false;
        copy_message(NULL, msg, msgsz);
        _cleanup_json_ json_t *j = load_json(buf, len, MODULE_HUB_REPLY_MAX, &r);
        if (!json_is_object(j))
                return;
        const char *m = json_string_value(json_object_get(j, "Message"));
        if (!m)
                m = json_string_value(json_object_get(j, "errorMessage"));
        copy_message(m, msg, msgsz);
        *network_error = json_is_true(json_object_get(j, "networkError"));
}

/* ---- keyd ---- */

static bool handle_ok(const char *h) {
        return h && h[0] && printable(h, MODULE_KEY_HANDLE_MAX);
}

int module_keyd_create_key_body(const char *key_id, char **ret) {
        if (!key_id || !key_id[0] || !printable(key_id, MODULE_ID_MAX))
                return -EINVAL;
        _cleanup_json_ json_t *j = json_pack("{s:s, s:n, s:s}", "keyId", key_id, "keyBytes", "usage",
                                             MODULE_MASTER_KEY_USAGE);
        return j ? dump(j, ret) : -ENOMEM;
}

int module_keyd_derive_body(const char *base_handle, const uint8_t *data, size_t len, char **ret) {
        if (!handle_ok(base_handle) || !data || len == 0 || len > 4 * MODULE_ID_MAX)
                return -EINVAL;
        _cleanup_free_ char *d = b64_encode(data, len);
        if (!d)
                return -ENOMEM;
        _cleanup_json_ json_t *j = json_pack("{s:s, s:s}", "baseKeyHandle", base_handle, "derivationData", d);
        return j ? dump(j, ret) : -ENOMEM;
}

int module_keyd_export_body(const char *handle, char **ret) {
        if (!handle_ok(handle))
                return -EINVAL;
        _cleanup_json_ json_t *j = json_pack("{s:s}", "keyHandle", handle);
        return j ? dump(j, ret) : -ENOMEM;
}

int module_keyd_derivation_data(const char *module_id, const char *gen_id, bool primary, char **ret) {
        if (!module_id_is_valid(module_id) || !gen_id || !printable(gen_id, MODULE_GEN_ID_MAX))
                return -EINVAL;
        if (asprintf(ret, "%s:%s:%s", module_id, gen_id, primary ? "primary" : "secondary") < 0)
                return -ENOMEM;
        return 0;
}

int module_keyd_parse_handle(const char *buf, size_t len, char **ret) {
        int r;
        _cleanup_json_ json_t *j = load_json(buf, len, MODULE_KEYD_RESPONSE_MAX, &r);
        if (!j)
                return r < 0 && r != -E2BIG ? r : -EBADMSG;
        json_t *v = json_object_get(j, "keyHandle");
        const char *h = json_string_value(v);
        if (!h || strlen(h) != json_string_length(v) || !handle_ok(h))
                return -EBADMSG;
        char *c = strdup(h);
        if (!c)
                return -ENOMEM;
        *ret = c;
        return 0;
}

int module_keyd_parse_key(const char *buf, size_t len, uint8_t **ret, size_t *ret_len) {
        int r;
        _cleanup_json_ json_t *j = load_json(buf, len, MODULE_KEYD_RESPONSE_MAX, &r);
        if (!j)
                return -EBADMSG;
        json_t *v = json_object_get(j, "key");
        const char *k = json_string_value(v);
        if (!k)
                return -EBADMSG;
        uint8_t *key = NULL;
        size_t n = 0;
        r = b64_decode(k, json_string_length(v), &key, &n);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || n == 0 || n > MODULE_KEY_MAX_BYTES) {
                if (key)
                        explicit_zero(key, n);
                free(key);
                return -EBADMSG;
        }
        *ret = key;
        *ret_len = n;
        return 0;
}

void module_keyd_parse_error(const char *buf, size_t len, char *msg, size_t msgsz) {
        int r;
        copy_message(NULL, msg, msgsz);
        _cleanup_json_ json_t *j = load_json(buf, len, MODULE_KEYD_RESPONSE_MAX, &r);
        copy_message(json_string_value(json_object_get(j, "message")), msg, msgsz);
}

int module_keyd_request(const char *method, const char *path, const char *body, char **ret, size_t *ret_len) {
        if (!method || !path || path[0] != '/')
                return -EINVAL;
        for (const char *p = path; *p; p++)
                if (*p < '/' || *p > 'z')
                        return -EINVAL;
        size_t blen = body ? strlen(body) : 0;
        if (blen > MODULE_KEYD_RESPONSE_MAX)
                return -EINVAL;
        char *s = NULL;
        int n = asprintf(&s,
                         "%s %s?api-version=%s HTTP/1.1\r\nHost: keyd.sock\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                         method, path, MODULE_KEYD_API_VERSION, blen, body ? body : "");
        if (n < 0)
                return -ENOMEM;
        *ret = s;
        *ret_len = (size_t)n;
        return 0;
}

/* ---- a strict HTTP/1.1 response reader ---- */

/* The header value of name in head (lines after the status line), or NULL. */
static const char *find_header(const char *head, size_t head_len, const char *name, size_t *vlen, int *dups) {
        const char *found = NULL;
        size_t nlen = strlen(name);
        const char *p = memchr(head, '\n', head_len);
        *dups = 0;
        while (p && (size_t)(p + 1 - head) < head_len) {
                const char *line = p + 1;
                const char *eol = memchr(line, '\n', head_len - (size_t)(line - head));
                if (!eol)
                        break;
                size_t llen = (size_t)(eol - line);
                if (llen > 0 && line[llen - 1] == '\r')
                        llen--;
                if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
                        const char *v = line + nlen + 1;
                        const char *end = line + llen;
                        while (v < end && (*v == ' ' || *v == '\t'))
                                v++;
                        while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                                end--;
                        if (found)
                                (*dups)++;
                        found = v;
                        *vlen = (size_t)(end - v);
                }
                p = eol;
        }
        return found;
}

/* Walk a chunked body in buf[0, len). Returns 1 and the de-chunked length
 * (moving data to the front when move), 0 when incomplete, -EBADMSG. */
static int dechunk(char *buf, size_t len, bool move, size_t *out_len) {
        size_t pos = 0, out = 0;
        for (;;) {
                size_t start = pos, size = 0;
                while (pos < len && isxdigit((unsigned char)buf[pos])) {
                        if (size > MODULE_KEYD_RESPONSE_MAX)
                                return -EBADMSG;
                        size = size * 16 + (size_t)hex_digit_value(buf[pos]);
                        pos++;
                }
                if (pos == len)
                        return 0;
                if (pos == start || size > MODULE_KEYD_RESPONSE_MAX)
                        return -EBADMSG;
                /* chunk extensions are not used by keyd; refuse them (strict) */
                if (buf[pos] != '\r')
                        return -EBADMSG;
                if (pos + 1 >= len)
                        return 0;
                if (buf[pos + 1] != '\n')
                        return -EBADMSG;
                pos += 2;
                if (size == 0) {
                        /* no trailers: the final CRLF */
                        if (pos + 2 > len)
                                return 0;
                        if (buf[pos] != '\r' || buf[pos + 1] != '\n')
                                return -EBADMSG;
                        *out_len = out;
                        return 1;
                }
                if (len - pos < size + 2)
                        return 0;
                if (buf[pos + size] != '\r' || buf[pos + size + 1] != '\n')
                        return -EBADMSG;
                if (move)
                        memmove(buf + out, buf + pos, size);
                out += size;
                pos += size + 2;
        }
}

int module_http_response_parse(char *buf, size_t len, bool eof, int *status, const char **body, size_t *body_len) {
        if (len > MODULE_KEYD_RESPONSE_MAX)
                return -E2BIG;
        const char *end = NULL;
        for (size_t i = 0; i + 3 < len; i++)
                if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
                        end = buf + i;
                        break;
                }
        if (!end) {
                if (len > MODULE_KEYD_HEAD_MAX)
                        return -E2BIG;
                return eof ? -EPIPE : 0;
        }
        size_t head_len = (size_t)(end - buf) + 2; /* through the last header's CRLF */
        if (head_len > MODULE_KEYD_HEAD_MAX)
                return -E2BIG;
        for (size_t i = 0; i < head_len; i++) {
                unsigned char c = (unsigned char)buf[i];
                if ((c < 0x20 && c != '\r' && c != '\n' && c != '\t') || c == 0x7f)
                        return -EBADMSG;
                if (c == '\n' && (i == 0 || buf[i - 1] != '\r'))
                        return -EBADMSG;
        }
        /* "HTTP/1.x DDD " */
        if (head_len < 14 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') || buf[8] != ' ' ||
            !isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) || !isdigit((unsigned char)buf[11]) ||
            (buf[12] != ' ' && buf[12] != '\r'))
                return -EBADMSG;
        int st = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
        if (st < 200 || st > 599)
                return -EBADMSG;
        char *b = buf + head_len + 2;
        size_t avail = len - head_len - 2;
        size_t vlen = 0;
        int dups = 0;
        const char *te = find_header(buf, head_len, "Transfer-Encoding", &vlen, &dups);
        size_t clen_len = 0;
        int cdups = 0;
        const char *cl = find_header(buf, head_len, "Content-Length", &clen_len, &cdups);
        if (dups || cdups || (te && cl))
                return -EBADMSG;
        if (st == 204 || st == 304) {
                *status = st;
                *body = b;
                *body_len = 0;
                return 1;
        }
        if (te) {
                if (vlen != 7 || strncasecmp(te, "chunked", 7) != 0)
                        return -EBADMSG;
                size_t out = 0;
                int r = dechunk(b, avail, false, &out);
                if (r == 0)
                        return eof ? -EPIPE : 0;
                if (r < 0)
                        return r;
                (void)dechunk(b, avail, true, &out);
                *status = st;
                *body = b;
                *body_len = out;
                return 1;
        }
        if (cl) {
                if (clen_len == 0 || clen_len > 7)
                        return -EBADMSG;
                size_t n = 0;
                for (size_t i = 0; i < clen_len; i++) {
                        if (!isdigit((unsigned char)cl[i]))
                                return -EBADMSG;
                        n = n * 10 + (size_t)(cl[i] - '0');
                }
                if (n > MODULE_KEYD_RESPONSE_MAX)
                        return -E2BIG;
                if (avail < n)
                        return eof ? -EPIPE : 0;
                *status = st;
                *body = b;
                *body_len = n;
                return 1;
        }
        /* Neither: the body ends with the connection (we sent Connection: close). */
        if (!eof)
                return 0;
        *status = st;
        *body = b;
        *body_len = avail;
        return 1;
}

/* ---- the module cache ---- */

void module_cache_clear(struct module_cache *c) {
        free(c->modules);
        *c = (struct module_cache){ 0 };
}

const struct module_cache_entry *module_cache_find(const struct module_cache *c, const char *id) {
        for (size_t i = 0; i < c->n_modules; i++)
                if (streq(c->modules[i].module_id, id))
                        return &c->modules[i];
        return NULL;
}

int module_cache_set(struct module_cache *c, const char *id, const char *gen_id) {
        if (!module_id_is_valid(id) || !gen_id || !printable(gen_id, MODULE_GEN_ID_MAX))
                return -EINVAL;
        struct module_cache_entry *e = NULL;
        for (size_t i = 0; i < c->n_modules && !e; i++)
                if (streq(c->modules[i].module_id, id))
                        e = &c->modules[i];
        if (!e) {
                if (c->n_modules >= MODULE_MAX_MODULES)
                        return -E2BIG;
                struct module_cache_entry *v = realloc(c->modules, (c->n_modules + 1) * sizeof *v);
                if (!v)
                        return -ENOMEM;
                c->modules = v;
                e = &v[c->n_modules++];
                memcpy(e->module_id, id, strlen(id) + 1);
                e->principal = false;
        }
        memcpy(e->gen_id, gen_id, strlen(gen_id) + 1);
        return 0;
}

int module_cache_set_principal(struct module_cache *c, const char *id, bool principal) {
        for (size_t i = 0; i < c->n_modules; i++)
                if (streq(c->modules[i].module_id, id)) {
                        c->modules[i].principal = principal;
                        return 0;
                }
        return -ENOENT;
}

bool module_cache_remove(struct module_cache *c, const char *id) {
        for (size_t i = 0; i < c->n_modules; i++)
                if (streq(c->modules[i].module_id, id)) {
                        memmove(&c->modules[i], &c->modules[i + 1], (c->n_modules - i - 1) * sizeof c->modules[0]);
                        c->n_modules--;
                        return true;
                }
        return false;
}

static bool hub_ok(const char *s) {
        return s[0] && printable(s, MODULE_HUB_MAX) && !strchr(s, '/');
}

int module_cache_format(const struct module_cache *c, char **ret, size_t *ret_len) {
        if (!hub_ok(c->hub) || !device_id_ok(c->device_id))
                return -EINVAL;
        _cleanup_json_ json_t *mods = json_array();
        if (!mods)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_modules; i++) {
                if (!module_id_is_valid(c->modules[i].module_id))
                        return -EINVAL;
                json_t *e = json_pack("{s:s, s:s, s:b}", "moduleId", c->modules[i].module_id, "generationId",
                                      c->modules[i].gen_id, "principal", c->modules[i].principal);
                if (!e || json_array_append_new(mods, e) < 0)
                        return -ENOMEM;
        }
        _cleanup_json_ json_t *j = json_pack("{s:i, s:s, s:s, s:O}", "version", MODULE_CACHE_VERSION, "hub", c->hub,
                                             "deviceId", c->device_id, "modules", mods);
        if (!j)
                return -ENOMEM;
        _cleanup_free_ char *line = json_dumps(j, JSON_DUMP_FLAGS);
        if (!line)
                return -ENOMEM;
        size_t n = strlen(line);
        char *out = malloc(n + 1 + TRAILER_LEN + 1);
        if (!out)
                return -ENOMEM;
        memcpy(out, line, n); // NOLINT(bugprone-not-null-terminated-result): '\n' and the trailer follow, snprintf ends it
        out[n] = '\n';
        uint8_t dig[SHA256_DIGEST_LEN];
        sha256(out, n + 1, dig);
        _cleanup_free_ char *hex = hex_encode(dig, sizeof dig);
        if (!hex) {
                free(out);
                return -ENOMEM;
        }
        snprintf(out + n + 1, TRAILER_LEN + 1, "%s%s\n", TRAILER_PREFIX, hex);
        *ret = out;
        *ret_len = n + 1 + TRAILER_LEN;
        return 0;
}

int module_cache_parse(const char *buf, size_t len, struct module_cache *out) {
        if (len > MODULE_CACHE_MAX_BYTES)
                return -E2BIG;
        if (len < TRAILER_LEN + 2 || buf[len - 1] != '\n')
                return -EBADMSG;
        size_t body = len - TRAILER_LEN; /* the JSON line incl. its \n */
        if (buf[body - 1] != '\n' || memcmp(buf + body, TRAILER_PREFIX, strlen(TRAILER_PREFIX)) != 0)
                return -EBADMSG;
        uint8_t want[SHA256_DIGEST_LEN], got[SHA256_DIGEST_LEN];
        if (hex_decode(buf + body + strlen(TRAILER_PREFIX), 2 * SHA256_DIGEST_LEN, want, sizeof want) !=
            SHA256_DIGEST_LEN)
                return -EBADMSG;
        sha256(buf, body, got);
        if (!memeq_consttime(want, got, sizeof got))
                return -EBADMSG;
        if (memchr(buf, '\n', body - 1))
                return -EBADMSG;
        json_error_t err;
        _cleanup_json_ json_t *j = json_loadb(buf, body - 1, JSON_REJECT_DUPLICATES, &err);
        if (!json_is_object(j) || json_object_size(j) != 4)
                return -EBADMSG;
        json_t *ver = json_object_get(j, "version"), *mods = json_object_get(j, "modules");
        if (!json_is_integer(ver) || json_integer_value(ver) != MODULE_CACHE_VERSION || !json_is_array(mods) ||
            json_array_size(mods) > MODULE_MAX_MODULES)
                return -EBADMSG;
        struct module_cache c = { 0 };
        if (!opt_str(j, "hub", c.hub, sizeof c.hub) || !hub_ok(c.hub) ||
            !opt_str(j, "deviceId", c.device_id, sizeof c.device_id) || !device_id_ok(c.device_id))
                return -EBADMSG;
        for (size_t i = 0; i < json_array_size(mods); i++) {
                json_t *e = json_array_get(mods, i);
                struct module_cache_entry m;
                json_t *gid = json_object_get(e, "generationId"), *pr = json_object_get(e, "principal");
                if (!json_is_object(e) || json_object_size(e) != 3 || !json_is_string(gid) || !json_is_boolean(pr) ||
                    !opt_str(e, "moduleId", m.module_id, sizeof m.module_id) || !module_id_is_valid(m.module_id) ||
                    !opt_str(e, "generationId", m.gen_id, sizeof m.gen_id) || module_cache_find(&c, m.module_id)) {
                        module_cache_clear(&c);
                        return -EBADMSG;
                }
                int r = module_cache_set(&c, m.module_id, m.gen_id);
                if (r >= 0)
                        r = module_cache_set_principal(&c, m.module_id, json_is_true(pr));
                if (r < 0) {
                        module_cache_clear(&c);
                        return r == -ENOMEM ? r : -EBADMSG;
                }
        }
        *out = c;
        return 0;
}

int module_cache_save(const char *path, const struct module_cache *c) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r = module_cache_format(c, &text, &len);
        if (r < 0)
                return r;
        return write_file_atomic(path, text, len, MODULE_CACHE_FILE_MODE);
}

int module_cache_load(const char *path, struct module_cache *out) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r = read_full_file(path, MODULE_CACHE_MAX_BYTES, &text, &len);
        if (r == -EFBIG)
                return -EBADMSG;
        if (r < 0)
                return r;
        r = module_cache_parse(text, len, out);
        return r == -E2BIG ? -EBADMSG : r;
}

/* ---- policy ---- */

enum module_hub_outcome module_hub_classify(int transport_error, long status, bool network_error, bool is_delete) {
        if (transport_error < 0 || network_error)
                return MODULE_HUB_UNAVAILABLE;
        switch (status) {
        case 200:
                return is_delete ? MODULE_HUB_FAILED : MODULE_HUB_OK;
        case 204:
                return is_delete ? MODULE_HUB_OK : MODULE_HUB_FAILED;
        case 401:
                return MODULE_HUB_UNAUTHORIZED;
        case 403:
                return MODULE_HUB_FORBIDDEN;
        case 404:
                return MODULE_HUB_NOT_FOUND;
        case 409:
                return MODULE_HUB_CONFLICT;
        case 412:
                return MODULE_HUB_PRECONDITION;
        case 429:
                return MODULE_HUB_THROTTLED;
        case 500:
        case 502:
        case 503:
        case 504:
                return MODULE_HUB_UNAVAILABLE;
        default:
                return MODULE_HUB_FAILED;
        }
}

const char *module_hub_outcome_to_string(enum module_hub_outcome o) {
        static const char *const names[_MODULE_HUB_OUTCOME_MAX] = {
                [MODULE_HUB_OK] = "ok",
                [MODULE_HUB_NOT_FOUND] = "not found",
                [MODULE_HUB_CONFLICT] = "already exists",
                [MODULE_HUB_PRECONDITION] = "precondition failed",
                [MODULE_HUB_UNAUTHORIZED] = "the device's credentials were refused",
                [MODULE_HUB_FORBIDDEN] = "forbidden",
                [MODULE_HUB_THROTTLED] = "throttled",
                [MODULE_HUB_UNAVAILABLE] = "unreachable",
                [MODULE_HUB_FAILED] = "failed",
        };
        return (unsigned)o < _MODULE_HUB_OUTCOME_MAX ? names[o] : NULL;
}

const char *module_plan_action_to_string(enum module_plan_action a) {
        static const char *const names[_MODULE_PLAN_ACTION_MAX] = {
                [MODULE_PLAN_KEEP] = "keep",
                [MODULE_PLAN_CREATE] = "create",
                [MODULE_PLAN_DELETE] = "delete",
                [MODULE_PLAN_RECREATE] = "recreate",
        };
        return (unsigned)a < _MODULE_PLAN_ACTION_MAX ? names[a] : NULL;
}

static bool declared_has(const char *const *declared, size_t n, const char *id) {
        for (size_t i = 0; i < n; i++)
                if (streq(declared[i], id))
                        return true;
        return false;
}

static bool prev_has(const struct module_cache *prev, const char *id) {
        const struct module_cache_entry *e = prev ? module_cache_find(prev, id) : NULL;
        return e && e->principal;
}

int module_reconcile_plan(const struct module_hub_entry *hub, size_t n_hub, const char *const *declared,
                          size_t n_declared, const struct module_cache *prev, struct module_plan_step **ret,
                          size_t *ret_n) {
        for (size_t i = 0; i < n_declared; i++)
                if (!module_id_is_valid(declared[i]))
                        return -EINVAL;
        size_t cap = n_hub + n_declared, n = 0;
        if (cap == 0) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        _cleanup_free_ struct module_plan_step *v = calloc(cap, sizeof *v);
        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < n_hub; i++) {
                const char *id = hub[i].module_id;
                bool now = declared_has(declared, n_declared, id), before = prev_has(prev, id);
                enum module_plan_action a;
                if (now)
                        a = before ? MODULE_PLAN_KEEP : MODULE_PLAN_RECREATE;
                else if (before)
                        a = MODULE_PLAN_DELETE;
                else
                        continue; /* not ours: another client's (edgeAgent's) module */
                memcpy(v[n].module_id, id, strlen(id) + 1);
                v[n++].action = a;
        }
        for (size_t i = 0; i < n_declared; i++) {
                bool on_hub = false, dup = false;
                for (size_t j = 0; j < n_hub && !on_hub; j++)
                        on_hub = streq(hub[j].module_id, declared[i]);
                for (size_t j = 0; j < i && !dup; j++)
                        dup = streq(declared[j], declared[i]);
                if (on_hub || dup)
                        continue;
                memcpy(v[n].module_id, declared[i], strlen(declared[i]) + 1);
                v[n++].action = MODULE_PLAN_CREATE;
        }
        *ret = n ? TAKE_PTR(v) : NULL;
        *ret_n = n;
        return 0;
}
