#include "b64.h"

#include <errno.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *b64_encode(const uint8_t *data, size_t len) {
        size_t olen = 4 * ((len + 2) / 3);
        char *out = malloc(olen + 1), *o = out;
        if (!out)
                return NULL;
        size_t i = 0;
        for (; i + 3 <= len; i += 3) {
                uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
                *o++ = b64_alphabet[v >> 18 & 63];
                *o++ = b64_alphabet[v >> 12 & 63];
                *o++ = b64_alphabet[v >> 6 & 63];
                *o++ = b64_alphabet[v & 63];
        }
        if (len - i == 1) {
                uint32_t v = (uint32_t)data[i] << 16;
                *o++ = b64_alphabet[v >> 18 & 63];
                *o++ = b64_alphabet[v >> 12 & 63];
                *o++ = '=';
                *o++ = '=';
        } else if (len - i == 2) {
                uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
                *o++ = b64_alphabet[v >> 18 & 63];
                *o++ = b64_alphabet[v >> 12 & 63];
                *o++ = b64_alphabet[v >> 6 & 63];
                *o++ = '=';
        }
        *o = 0;
        return out;
}

static int b64_value(char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int b64_decode(const char *text, size_t n, uint8_t **ret, size_t *ret_len) {
        if (n % 4 != 0)
                return -EINVAL;
        size_t pad = 0;
        if (n >= 1 && text[n - 1] == '=')
                pad++;
        if (n >= 2 && text[n - 2] == '=')
                pad++;
        size_t olen = n / 4 * 3 - pad;
        uint8_t *out = malloc(olen ? olen : 1);
        if (!out)
                return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < n; i += 4) {
                int v[4];
                for (int j = 0; j < 4; j++) {
                        char c = text[i + j];
                        bool is_pad_pos = i + 4 == n && ((j == 3 && pad >= 1) || (j == 2 && pad == 2));
                        if (is_pad_pos) {
                                v[j] = 0;
                                continue;
                        }
                        v[j] = b64_value(c);
                        if (v[j] < 0) {
                                free(out);
                                return -EINVAL;
                        }
                }
                uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
                /* Reject non-canonical encodings: bits below the padding must be zero. */
                if (i + 4 == n && ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))) {
                        free(out);
                        return -EINVAL;
                }
                uint8_t b[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
                size_t take = i + 4 == n ? 3 - pad : 3;
                memcpy(out + o, b, take);
                o += take;
        }
        *ret = out;
        *ret_len = olen;
        return 0;
}

char *b32_encode_lower_nopad(const uint8_t *data, size_t len) {
        static const char alpha[] = "abcdefghijklmnopqrstuvwxyz234567";
        size_t olen = (len * 8 + 4) / 5;
        char *out = malloc(olen + 1);
        if (!out)
                return NULL;
        uint32_t buf = 0;
        int bits = 0;
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                buf = buf << 8 | data[i];
                bits += 8;
                while (bits >= 5) {
                        out[o++] = alpha[(buf >> (bits - 5)) & 31];
                        bits -= 5;
                }
        }
        if (bits > 0)
                out[o++] = alpha[(buf << (5 - bits)) & 31];
        out[o] = 0;
        return out;
}

char *hex_encode(const uint8_t *data, size_t len) {
        static const char digits[] = "0123456789abcdef";
        char *out = malloc(len * 2 + 1);
        if (!out)
                return NULL;
        for (size_t i = 0; i < len; i++) {
                out[2 * i] = digits[data[i] >> 4];
                out[2 * i + 1] = digits[data[i] & 15];
        }
        out[len * 2] = 0;
        return out;
}

int hex_digit_value(int c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int hex_decode(const char *text, size_t n, uint8_t *out, size_t out_max) {
        if (n % 2)
                return -EINVAL;
        if (n / 2 > out_max)
                return -ENOBUFS;
        for (size_t i = 0; i < n; i += 2) {
                int hi = hex_digit_value((unsigned char)text[i]), lo = hex_digit_value((unsigned char)text[i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                out[i / 2] = (uint8_t)(hi << 4 | lo);
        }
        return (int)(n / 2);
}
