/* Binary-to-text codecs: standard base64 (RFC 4648 §4, padded), lowercase
 * base32 without padding (the old Azure C SDK registration id form), and hex.
 * Pure functions, no I/O. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Encode len bytes. Returns a NUL-terminated heap string (caller frees) or NULL on OOM. */
char *b64_encode(const uint8_t *data, size_t len);

/* Decode standard padded base64; whitespace is not allowed. On success *ret is a
 * heap buffer (caller frees; may be non-NULL with *ret_len 0) and 0 is returned.
 * Returns -EINVAL for bad characters, bad padding or bad length, -ENOMEM on OOM. */
int b64_decode(const char *text, size_t text_len, uint8_t **ret, size_t *ret_len);

/* Lowercase RFC 4648 base32 with trailing '=' stripped. Caller frees; NULL on OOM. */
char *b32_encode_lower_nopad(const uint8_t *data, size_t len);

/* Lowercase hex. Caller frees; NULL on OOM. */
char *hex_encode(const uint8_t *data, size_t len);

/* Value of one hex digit (either case), or -1. */
int hex_digit_value(int c);

/* Decode hex (either case) into out, which holds out_max bytes.
 * Returns the number of bytes written or -EINVAL / -ENOBUFS. */
int hex_decode(const char *text, size_t text_len, uint8_t *out, size_t out_max);
