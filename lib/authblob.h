/* Parser of the DPS authenticationKey activation blob (the bytes after
 * base64-decoding the registration response's tpm.authenticationKey).
 *
 * The blob is six big-endian size-prefixed elements, in this order:
 *   1 TPM2B_ID_OBJECT        credential blob      (ActivateCredential)
 *   2 TPM2B_ENCRYPTED_SECRET credential seed, to the EK
 *   3 TPM2B_PRIVATE          duplicate of the HMAC key (Import)
 *   4 TPM2B_ENCRYPTED_SECRET duplication seed, to the SRK
 *   5 TPM2B_PUBLIC           public area of the HMAC key
 *   6 u16 length + bytes     encUriData (optional; NOT a TPM2B_DATA: the real
 *                            service sends more than TPM2B_DATA's 64 bytes)
 * Bytes after element 6 are tolerated (identity-service ignores them too).
 *
 * Pure: no TSS headers, no I/O, no allocation. The element limits are the
 * buffer sizes of the tss2 structures the elements are unmarshalled into;
 * lib/tpm.c asserts them against tss2 at compile time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTHBLOB_ID_OBJECT_MAX 132   /* bytes: sizeof(TPMS_ID_OBJECT), TPM2B_ID_OBJECT.credential */
#define AUTHBLOB_ENC_SECRET_MAX 512  /* bytes: sizeof(TPMU_ENCRYPTED_SECRET), TPM2B_ENCRYPTED_SECRET.secret */
#define AUTHBLOB_PRIVATE_MAX 1550    /* bytes: sizeof(_PRIVATE), TPM2B_PRIVATE.buffer */
#define AUTHBLOB_PUBLIC_MAX 612      /* bytes: sizeof(TPMT_PUBLIC), the unmarshal target of TPM2B_PUBLIC */
#define AUTHBLOB_ENC_URI_MAX 1024    /* bytes: TPM_PT_INPUT_BUFFER; the Java SDK refuses more, DPS sends ~154 */
#define AUTHBLOB_SIZE_FIELD 2        /* bytes: the big-endian u16 in front of every element */

enum authblob_element {
        AUTHBLOB_CRED_BLOB,    /* TPM2B_ID_OBJECT */
        AUTHBLOB_ENC_SECRET,   /* TPM2B_ENCRYPTED_SECRET (to the EK) */
        AUTHBLOB_DUPLICATE,    /* TPM2B_PRIVATE */
        AUTHBLOB_IN_SYM_SEED,  /* TPM2B_ENCRYPTED_SECRET (to the SRK) */
        AUTHBLOB_ID_KEY_PUB,   /* TPM2B_PUBLIC */
        AUTHBLOB_ENC_URI,      /* u16 + bytes, optional */
        _AUTHBLOB_ELEMENT_MAX,
};

enum authblob_problem {
        AUTHBLOB_TRUNCATED_SIZE, /* fewer than 2 bytes left for the size field */
        AUTHBLOB_TRUNCATED_BODY, /* the size field promises more bytes than are left */
        AUTHBLOB_EMPTY,          /* a required element has size 0 */
        AUTHBLOB_TOO_LARGE,      /* the size field exceeds the element's limit */
};

/* What was wrong, filled on -EBADMSG. */
struct authblob_error {
        enum authblob_element element;
        enum authblob_problem problem;
        size_t offset;   /* byte offset of the element's size field */
        size_t size;     /* the size field's value (TRUNCATED_BODY, TOO_LARGE), else 0 */
};

/* One element, borrowed from the input buffer (valid while the buffer is). */
struct authblob_span {
        const uint8_t *raw;  /* the size field followed by the body */
        size_t raw_len;      /* 2 + body_len */
        const uint8_t *body; /* the bytes after the size field */
        size_t body_len;
};

struct authblob {
        struct authblob_span el[_AUTHBLOB_ELEMENT_MAX];
        bool has_enc_uri;    /* element 6 was present (el[AUTHBLOB_ENC_URI] is zeroed if not) */
        size_t trailing;     /* bytes after the last element, ignored */
};

/* Split buf into the six elements. Returns 0 and fills *out, or -EBADMSG and
 * fills *err (may be NULL) with the first bad element; -EINVAL for NULL
 * arguments. Elements 1-5 must be present, non-empty and within their limits;
 * element 6 may be absent (end of buffer) but, if its size field is there, it
 * must be complete and within AUTHBLOB_ENC_URI_MAX. Nothing is allocated:
 * *out points into buf. */
int authblob_parse(const uint8_t *buf, size_t len, struct authblob *out, struct authblob_error *err);

/* Static names for messages: "credential blob (TPM2B_ID_OBJECT, element 1)". */
const char *authblob_element_name(enum authblob_element e);
const char *authblob_problem_name(enum authblob_problem p);

/* One sentence describing err into buf (always NUL-terminated when n > 0).
 * Returns the length snprintf would have written. */
int authblob_error_format(const struct authblob_error *err, char *buf, size_t n);

/* The limit of an element's body in bytes (the AUTHBLOB_*_MAX constants). */
size_t authblob_element_max(enum authblob_element e);
