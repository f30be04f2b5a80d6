/* SAS token formatting and parsing; see sas.h for the encoding rule. */
#include "sas.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "util.h"

#define SAS_PREFIX "SharedAccessSignature "

static bool is_unreserved(unsigned char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '.' || c == '_' || c == '~';
}

static int encode(const char *s, size_t len, bool lower, char **ret) {
        static const char hex[] = "0123456789abcdef";
        char *buf, *p;

        if (!s || !ret)
                return -EINVAL;
        if (len > SAS_RESOURCE_MAX)
                return -EINVAL;
        buf = malloc(len * 3 + 1);
        if (!buf)
                return -ENOMEM;
        p = buf;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];
                if (lower && c >= 'A' && c <= 'Z')
                        c = (unsigned char)(c - 'A' + 'a');
                if (is_unreserved(c))
                        *p++ = (char)c;
                else {
                        *p++ = '%';
                        *p++ = hex[c >> 4];
                        *p++ = hex[c & 0xf];
                }
        }
        *p = '\0';
        *ret = buf;
        return 0;
}

int sas_percent_encode(const char *s, size_t len, char **ret) {
        return encode(s, len, false, ret);
}

int sas_resource_encode(const char *resource, char **ret) {
        size_t len;

        if (!resource || !ret)
                return -EINVAL;
        len = strnlen(resource, SAS_RESOURCE_MAX + 1);
        if (len == 0 || len > SAS_RESOURCE_MAX)
                return -EINVAL;
        /* A control byte in an audience can only come from a bug or a hostile
         * server value; refuse instead of signing it. */
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)resource[i] < 0x20 || resource[i] == 0x7f)
                        return -EINVAL;
        return encode(resource, len, true, ret);
}

static int resource2(const char *a, const char *mid, const char *b, char **ret) {
        _cleanup_free_ char *raw = NULL;

        if (!a || !b || !*a || !*b || !ret)
                return -EINVAL;
        if (strnlen(a, SAS_RESOURCE_MAX + 1) + strnlen(b, SAS_RESOURCE_MAX + 1) + strlen(mid) > SAS_RESOURCE_MAX)
                return -EINVAL;
        if (asprintf(&raw, "%s%s%s", a, mid, b) < 0)
                return -ENOMEM;
        return sas_resource_encode(raw, ret);
}

int sas_dps_resource(const char *id_scope, const char *registration_id, char **ret) {
        return resource2(id_scope, "/registrations/", registration_id, ret);
}

int sas_hub_resource(const char *hub, const char *device_id, char **ret) {
        return resource2(hub, "/devices/", device_id, ret);
}

int sas_string_to_sign(const char *sr_encoded, uint64_t expiry, char **ret, size_t *ret_len) {
        char *s;
        int n;

        if (!sr_encoded || !*sr_encoded || !ret || !ret_len)
                return -EINVAL;
        if (strnlen(sr_encoded, SAS_TOKEN_MAX + 1) > SAS_TOKEN_MAX)
                return -EINVAL;
        n = asprintf(&s, "%s\n%" PRIu64, sr_encoded, expiry);
        if (n < 0)
                return -ENOMEM;
        *ret = s;
        *ret_len = (size_t)n;
        return 0;
}

int sas_token_format(const char *sr_encoded, const uint8_t sig[SAS_SIG_LEN], uint64_t expiry, const char *skn,
                     char **ret) {
        _cleanup_free_ char *sig64 = NULL, *sig_enc = NULL, *skn_enc = NULL;
        char *tok;
        int r, n;

        if (!sr_encoded || !*sr_encoded || !sig || !ret)
                return -EINVAL;
        if (strnlen(sr_encoded, SAS_TOKEN_MAX + 1) > SAS_TOKEN_MAX)
                return -EINVAL;
        sig64 = b64_encode(sig, SAS_SIG_LEN);
        if (!sig64)
                return -ENOMEM;
        r = sas_percent_encode(sig64, strlen(sig64), &sig_enc);
        if (r < 0)
                return r;
        if (skn) {
                if (!*skn)
                        return -EINVAL;
                r = sas_percent_encode(skn, strnlen(skn, SAS_RESOURCE_MAX + 1), &skn_enc);
                if (r < 0)
                        return r;
        }
        n = asprintf(&tok, SAS_PREFIX "sr=%s&sig=%s&se=%" PRIu64 "%s%s", sr_encoded, sig_enc, expiry,
                     skn_enc ? "&skn=" : "", skn_enc ? skn_enc : "");
        if (n < 0)
                return -ENOMEM;
        if ((size_t)n > SAS_TOKEN_MAX) {
                free(tok);
                return -EINVAL;
        }
        *ret = tok;
        return 0;
}

/* Percent-decode [s, s+len) into a new string; refuses a NUL result byte. */
static int pct_decode(const char *s, size_t len, char **ret, size_t *ret_len) {
        char *out, *p;

        out = malloc(len + 1);
        if (!out)
                return -ENOMEM;
        p = out;
        for (size_t i = 0; i < len; i++) {
                if (s[i] == '%') {
                        int hi, lo;
                        if (i + 2 >= len) {
                                free(out);
                                return -EBADMSG;
                        }
                        hi = hex_digit_value(s[i + 1]);
                        lo = hex_digit_value(s[i + 2]);
                        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                                free(out);
                                return -EBADMSG;
                        }
                        *p++ = (char)(hi << 4 | lo);
                        i += 2;
                } else
                        *p++ = s[i];
        }
        *p = '\0';
        *ret = out;
        *ret_len = (size_t)(p - out);
        return 0;
}

static int parse_u64(const char *s, size_t len, uint64_t *ret) {
        uint64_t v = 0;

        if (len == 0 || len > 20)
                return -EBADMSG;
        for (size_t i = 0; i < len; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -EBADMSG;
                if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
                        return -EBADMSG;
                v = v * 10 + (uint64_t)(s[i] - '0');
        }
        *ret = v;
        return 0;
}

int sas_token_parse(const char *token, size_t len, struct sas_token *out) {
        _cleanup_free_ char *sr = NULL, *skn = NULL;
        uint8_t sig[SAS_SIG_LEN];
        bool have_sig = false, have_se = false;
        uint64_t se = 0;
        const char *p, *end;
        int r;

        if (!token || !out)
                return -EINVAL;
        if (len > SAS_TOKEN_MAX)
                return -E2BIG;
        if (len < strlen(SAS_PREFIX) || memcmp(token, SAS_PREFIX, strlen(SAS_PREFIX)) != 0)
                return -EBADMSG;
        p = token + strlen(SAS_PREFIX);
        end = token + len;
        if (p == end)
                return -EBADMSG;

        while (p <= end) {
                const char *amp = memchr(p, '&', (size_t)(end - p));
                const char *fend = amp ? amp : end;
                const char *eq = memchr(p, '=', (size_t)(fend - p));
                size_t klen, vlen;
                const char *v;

                if (!eq)
                        return -EBADMSG;
                klen = (size_t)(eq - p);
                v = eq + 1;
                vlen = (size_t)(fend - v);
                if (memchr(p, '\0', (size_t)(fend - p)))
                        return -EBADMSG;

                if (klen == 2 && memcmp(p, "sr", 2) == 0) {
                        if (sr || vlen == 0)
                                return -EBADMSG;
                        sr = strndup(v, vlen);
                        if (!sr)
                                return -ENOMEM;
                } else if (klen == 3 && memcmp(p, "sig", 3) == 0) {
                        _cleanup_free_ char *dec = NULL;
                        _cleanup_free_ uint8_t *bin = NULL;
                        size_t dlen, blen;

                        if (have_sig)
                                return -EBADMSG;
                        r = pct_decode(v, vlen, &dec, &dlen);
                        if (r < 0)
                                return r;
                        r = b64_decode(dec, dlen, &bin, &blen);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0 || blen != SAS_SIG_LEN)
                                return -EBADMSG;
                        memcpy(sig, bin, SAS_SIG_LEN);
                        have_sig = true;
                } else if (klen == 2 && memcmp(p, "se", 2) == 0) {
                        if (have_se)
                                return -EBADMSG;
                        r = parse_u64(v, vlen, &se);
                        if (r < 0)
                                return r;
                        have_se = true;
                } else if (klen == 3 && memcmp(p, "skn", 3) == 0) {
                        size_t dlen;
                        if (skn || vlen == 0)
                                return -EBADMSG;
                        r = pct_decode(v, vlen, &skn, &dlen);
                        if (r < 0)
                                return r;
                } else
                        return -EBADMSG;

                if (!amp)
                        break;
                p = amp + 1;
        }
        if (!sr || !have_sig || !have_se)
                return -EBADMSG;

        out->sr = TAKE_PTR(sr);
        memcpy(out->sig, sig, SAS_SIG_LEN);
        out->expiry = se;
        out->skn = TAKE_PTR(skn);
        return 0;
}

void sas_token_clear(struct sas_token *t) {
        if (!t)
                return;
        free(t->sr);
        free(t->skn);
        memset(t, 0, sizeof(*t));
}
