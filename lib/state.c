/* Persistent provisioning state; format in state.h. */
#include "state.h"

#include <errno.h>
#include <string.h>

#include "b64.h"
#include "sha256.h"
#include "util.h"

#define TRAILER_PREFIX "sha256:"
#define TRAILER_LEN (sizeof(TRAILER_PREFIX) - 1 + 2 * STATE_DIGEST_LEN + 1) /* "sha256:" hex "\n" */
#define CONFIG_DIGEST_TAG "tpmid-config-v1\n" /* changes the digest if the rendering ever changes */

_Static_assert(STATE_DIGEST_LEN == SHA256_DIGEST_LEN, "state digests are SHA-256");

/* SHA-256 of a followed by b (b may be NULL when blen is 0). */
static void digest2(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[STATE_DIGEST_LEN]) {
        struct sha256 ctx;

        sha256_init(&ctx);
        sha256_update(&ctx, a, alen);
        sha256_update(&ctx, b, blen);
        sha256_final(&ctx, out);
}

static bool substatus_is_valid(const char *s) {
        size_t n = strnlen(s, DPS_SUBSTATUS_MAX + 1);

        if (n > DPS_SUBSTATUS_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
                        return false;
        return true;
}

static const char *const key_slot_names[_STATE_KEY_SLOT_MAX] = {
        [STATE_KEY_SLOT_A] = "a",
        [STATE_KEY_SLOT_B] = "b",
};

static bool state_is_valid(const struct tpmid_state *st) {
        return (unsigned)st->key_slot < _STATE_KEY_SLOT_MAX && dps_hub_name_is_valid(st->hub) && dps_device_id_is_valid(st->device_id) &&
               dps_registration_id_is_valid(st->registration_id) && dps_id_scope_is_valid(st->id_scope) &&
               substatus_is_valid(st->substatus);
}

int state_format(const struct tpmid_state *st, char **ret, size_t *ret_len) {
        _cleanup_free_ char *ek_hex = NULL, *cfg_hex = NULL, *body = NULL, *dig_hex = NULL;
        json_auto_t *j = NULL;
        uint8_t dig[STATE_DIGEST_LEN];
        size_t blen;
        char *out;

        if (!st || !ret || !ret_len)
                return -EINVAL;
        if (!state_is_valid(st))
                return -EINVAL;
        ek_hex = hex_encode(st->ek_digest, STATE_DIGEST_LEN);
        cfg_hex = hex_encode(st->config_digest, STATE_DIGEST_LEN);
        if (!ek_hex || !cfg_hex)
                return -ENOMEM;
        j = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s}", "version", STATE_FORMAT_VERSION, "hub",
                      st->hub, "deviceId", st->device_id, "registrationId", st->registration_id, "idScope",
                      st->id_scope, "ekDigest", ek_hex, "assignedAt", (json_int_t)st->assigned_at, "substatus",
                      st->substatus, "configDigest", cfg_hex, "keySlot", key_slot_names[st->key_slot]);
        if (!j)
                return -ENOMEM;
        body = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!body)
                return -ENOMEM;
        blen = strlen(body);

        out = malloc(blen + 1 + TRAILER_LEN + 1);
        if (!out)
                return -ENOMEM;
        memcpy(out, body, blen);
        out[blen] = '\n';
        digest2(out, blen + 1, NULL, 0, dig);
        dig_hex = hex_encode(dig, STATE_DIGEST_LEN);
        if (!dig_hex) {
                free(out);
                return -ENOMEM;
        }
        memcpy(out + blen + 1, TRAILER_PREFIX, strlen(TRAILER_PREFIX));
        memcpy(out + blen + 1 + strlen(TRAILER_PREFIX), dig_hex, 2 * STATE_DIGEST_LEN);
        out[blen + TRAILER_LEN] = '\n';
        out[blen + 1 + TRAILER_LEN] = '\0';
        *ret = out;
        *ret_len = blen + 1 + TRAILER_LEN;
        return 0;
}

static int copy_field(const char *src, char *dst, size_t max) {
        size_t n = strnlen(src, max + 1);
        if (n > max)
                return -EBADMSG;
        memcpy(dst, src, n + 1);
        return 0;
}

static int unhex_digest(const char *hex, uint8_t out[STATE_DIGEST_LEN]) {
        if (strlen(hex) != 2 * STATE_DIGEST_LEN)
                return -EBADMSG;
        for (const char *p = hex; *p; p++) /* lowercase only: one spelling per value */
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
                        return -EBADMSG;
        return hex_decode(hex, 2 * STATE_DIGEST_LEN, out, STATE_DIGEST_LEN) == STATE_DIGEST_LEN ? 0 : -EBADMSG;
}

int state_parse(const uint8_t *buf, size_t len, struct tpmid_state *out) {
        json_auto_t *j = NULL;
        struct tpmid_state st = {0};
        uint8_t dig[STATE_DIGEST_LEN];
        _cleanup_free_ char *dig_hex = NULL;
        const char *hub, *dev, *reg, *scope, *ekd, *sub, *cfg, *slot = "a";
        json_int_t version, assigned;
        size_t blen;

        if (!buf || !out)
                return -EINVAL;
        if (len > STATE_MAX_BYTES)
                return -E2BIG;
        /* at least "{}\n" + trailer */
        if (len < 3 + TRAILER_LEN)
                return -EBADMSG;
        blen = len - TRAILER_LEN;
        if (buf[blen - 1] != '\n' || buf[len - 1] != '\n' ||
            memcmp(buf + blen, TRAILER_PREFIX, strlen(TRAILER_PREFIX)) != 0)
                return -EBADMSG;
        /* the body is one line */
        if (memchr(buf, '\n', blen - 1))
                return -EBADMSG;
        digest2(buf, blen, NULL, 0, dig);
        dig_hex = hex_encode(dig, STATE_DIGEST_LEN);
        if (!dig_hex)
                return -ENOMEM;
        if (!memeq_consttime(dig_hex, buf + blen + strlen(TRAILER_PREFIX), 2 * STATE_DIGEST_LEN))
                return -EBADMSG;

        j = json_loadb((const char *)buf, blen - 1, JSON_REJECT_DUPLICATES, NULL);
        if (!j || !json_is_object(j))
                return -EBADMSG;
        if (json_unpack(j, "{s:I}", "version", &version) < 0 ||
            (version != STATE_FORMAT_VERSION && version != STATE_FORMAT_VERSION_V1))
                return -EBADMSG;
        /* Version 1 has no keySlot (its key is in slot a); version 2 must have it. */
        if (version == STATE_FORMAT_VERSION_V1
                    ? json_unpack(j, "{s:I, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s !}", "version", &version, "hub",
                                  &hub, "deviceId", &dev, "registrationId", &reg, "idScope", &scope, "ekDigest",
                                  &ekd, "assignedAt", &assigned, "substatus", &sub, "configDigest", &cfg) < 0
                    : json_unpack(j, "{s:I, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s !}", "version", &version,
                                  "hub", &hub, "deviceId", &dev, "registrationId", &reg, "idScope", &scope,
                                  "ekDigest", &ekd, "assignedAt", &assigned, "substatus", &sub, "configDigest", &cfg,
                                  "keySlot", &slot) < 0)
                return -EBADMSG;
        if (streq(slot, key_slot_names[STATE_KEY_SLOT_A]))
                st.key_slot = STATE_KEY_SLOT_A;
        else if (streq(slot, key_slot_names[STATE_KEY_SLOT_B]))
                st.key_slot = STATE_KEY_SLOT_B;
        else
                return -EBADMSG;
        if (copy_field(hub, st.hub, DPS_HUB_NAME_MAX) < 0 || copy_field(dev, st.device_id, DPS_DEVICE_ID_MAX) < 0 ||
            copy_field(reg, st.registration_id, DPS_REGISTRATION_ID_MAX) < 0 ||
            copy_field(scope, st.id_scope, DPS_ID_SCOPE_MAX) < 0 ||
            copy_field(sub, st.substatus, DPS_SUBSTATUS_MAX) < 0)
                return -EBADMSG;
        if (unhex_digest(ekd, st.ek_digest) < 0 || unhex_digest(cfg, st.config_digest) < 0)
                return -EBADMSG;
        st.assigned_at = assigned;
        if (!state_is_valid(&st))
                return -EBADMSG;
        *out = st;
        return 0;
}

int state_save(const char *path, const struct tpmid_state *st) {
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r;

        if (!path)
                return -EINVAL;
        r = state_format(st, &data, &len);
        if (r < 0)
                return r;
        return write_file_atomic(path, data, len, STATE_FILE_MODE);
}

int state_load(const char *path, struct tpmid_state *out) {
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r;

        if (!path || !out)
                return -EINVAL;
        r = read_full_file(path, STATE_MAX_BYTES, &data, &len);
        if (r == -EFBIG)
                return -EBADMSG;
        if (r < 0)
                return r;
        r = state_parse((const uint8_t *)data, len, out);
        return r == -E2BIG ? -EBADMSG : r;
}

int state_ek_digest(const uint8_t *ek_pub, size_t len, uint8_t out[STATE_DIGEST_LEN]) {
        if (!ek_pub || len == 0 || !out)
                return -EINVAL;
        digest2(ek_pub, len, NULL, 0, out);
        return 0;
}

int state_config_digest(const struct state_config_input *in, uint8_t out[STATE_DIGEST_LEN]) {
        _cleanup_free_ char *s = NULL;
        json_auto_t *j = NULL;

        if (!in || !in->id_scope || !in->registration_id || !out)
                return -EINVAL;
        j = json_pack("{s:s, s:s, s:s, s:s, s:O?}", "attestation", "tpm", "endpoint",
                      in->global_endpoint ? in->global_endpoint : DPS_GLOBAL_ENDPOINT, "idScope", in->id_scope,
                      "registrationId", in->registration_id, "payload", (json_t *)(uintptr_t)in->payload);
        if (!j)
                return -ENOMEM;
        s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
        if (!s)
                return -ENOMEM;
        digest2(CONFIG_DIGEST_TAG, strlen(CONFIG_DIGEST_TAG), s, strlen(s), out);
        return 0;
}

enum state_match state_check(const struct tpmid_state *st, const uint8_t ek_digest[STATE_DIGEST_LEN],
                             const uint8_t config_digest[STATE_DIGEST_LEN]) {
        if (memcmp(st->ek_digest, ek_digest, STATE_DIGEST_LEN) != 0)
                return STATE_MATCH_OTHER_TPM;
        if (memcmp(st->config_digest, config_digest, STATE_DIGEST_LEN) != 0)
                return STATE_MATCH_CONFIG_CHANGED;
        return STATE_MATCH_OK;
}
