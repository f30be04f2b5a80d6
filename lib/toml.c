/* TOML 1.0 parser: recursive descent over a checked cursor.
 *
 * The document is first checked as a whole for valid UTF-8 and for raw
 * control characters (TOML allows none except tab and LF/CRLF anywhere, even
 * in strings and comments), so the grammar code below only deals with
 * structure. Redefinition rules are enforced with per-table flags:
 *   - a table with none of the flags was created implicitly by a [a.b.c]
 *     header path and may still be defined once by its own [header];
 *   - TF_EXPLICIT: defined by [header] or as an element of [[array]];
 *   - TF_DOTTED: created by a dotted key; only dotted keys may add to it, and
 *     no [header] may define it (a header may still pass through it);
 *   - TF_FROZEN: an inline table; nothing may add to it once written.
 * Arrays written as values are static; only arrays created by [[x]] can be
 * appended to by [[x]] headers. */
#include "toml.h"

#include "b64.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOML_HASH_MIN 16       /* keys: tables reaching this size get a hash index */
#define TOML_KEY_SHOWN 48      /* bytes of a key or word quoted in an error message */
#define TOML_NUMBER_MAX 128    /* bytes of a number token (longer is an error) */

enum {
        TF_EXPLICIT = 1 << 0,
        TF_DOTTED = 1 << 1,
        TF_FROZEN = 1 << 2,
        TF_ROOT = 1 << 3,
};

enum {
        AF_AOT = 1 << 0, /* created by [[x]]: headers may append */
};

struct toml_kv {
        char *key;
        size_t len;
        struct toml_value *v;
};

struct toml_value {
        enum toml_type type;
        unsigned flags;
        unsigned depth; /* containers only: nesting level, root = 0 */
        unsigned line, col;
        const char *origin; /* owned by the root's origins list */
        union {
                struct {
                        char *s;
                        size_t len;
                } str; /* strings and date/time text */
                int64_t i;
                double f;
                bool b;
                struct {
                        struct toml_value **v;
                        size_t n, cap;
                } arr;
                struct {
                        struct toml_kv *kv;
                        size_t n, cap;
                        uint32_t *slots; /* open addressing: 0 = empty, else index + 1 */
                        size_t nslots;
                } tab;
        } u;
};

/* The root carries the origin names every value in the tree points to;
 * merging moves src's names into dst so pointers stay valid. */
struct toml_root {
        struct toml_value v;
        char **origins;
        size_t n_origins;
};

/* ---------------------------------------------------------------- values */

static void value_free(struct toml_value *v) {
        if (!v)
                return;
        switch (v->type) {
        case TOML_STRING:
        case TOML_DATETIME:
        case TOML_DATETIME_LOCAL:
        case TOML_DATE_LOCAL:
        case TOML_TIME_LOCAL:
                free(v->u.str.s);
                break;
        case TOML_INTEGER:
        case TOML_FLOAT:
        case TOML_BOOL:
                break;
        case TOML_ARRAY:
                for (size_t i = 0; i < v->u.arr.n; i++)
                        value_free(v->u.arr.v[i]);
                free(v->u.arr.v);
                break;
        case TOML_TABLE:
                for (size_t i = 0; i < v->u.tab.n; i++) {
                        free(v->u.tab.kv[i].key);
                        value_free(v->u.tab.kv[i].v);
                }
                free(v->u.tab.kv);
                free(v->u.tab.slots);
                break;
        }
        if (v->flags & TF_ROOT && v->type == TOML_TABLE) {
                struct toml_root *r = (struct toml_root *)v;
                for (size_t i = 0; i < r->n_origins; i++)
                        free(r->origins[i]);
                free(r->origins);
        }
        free(v);
}

static struct toml_value *value_new(enum toml_type type, unsigned line, unsigned col, const char *origin) {
        struct toml_value *v = calloc(1, sizeof(*v));
        if (!v)
                return NULL;
        v->type = type;
        v->line = line;
        v->col = col;
        v->origin = origin;
        return v;
}

static uint32_t key_hash(const char *k, size_t len) {
        uint32_t h = 2166136261u; /* FNV-1a */
        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char)k[i];
                h *= 16777619u;
        }
        return h;
}

static int table_reindex(struct toml_value *t, size_t nslots) {
        uint32_t *slots = calloc(nslots, sizeof(*slots));
        if (!slots)
                return -ENOMEM;
        for (size_t i = 0; i < t->u.tab.n; i++) {
                size_t s = key_hash(t->u.tab.kv[i].key, t->u.tab.kv[i].len) & (nslots - 1);
                while (slots[s])
                        s = (s + 1) & (nslots - 1);
                slots[s] = (uint32_t)(i + 1);
        }
        free(t->u.tab.slots);
        t->u.tab.slots = slots;
        t->u.tab.nslots = nslots;
        return 0;
}

static struct toml_kv *table_find(const struct toml_value *t, const char *key, size_t len) {
        if (t->u.tab.slots) {
                size_t mask = t->u.tab.nslots - 1;
                for (size_t s = key_hash(key, len) & mask; t->u.tab.slots[s]; s = (s + 1) & mask) {
                        struct toml_kv *kv = &t->u.tab.kv[t->u.tab.slots[s] - 1];
                        if (kv->len == len && memcmp(kv->key, key, len) == 0)
                                return kv;
                }
                return NULL;
        }
        for (size_t i = 0; i < t->u.tab.n; i++) {
                struct toml_kv *kv = &t->u.tab.kv[i];
                if (kv->len == len && memcmp(kv->key, key, len) == 0)
                        return kv;
        }
        return NULL;
}

/* Append key (taken over on success only) → v; the key must be absent. */
static int table_add(struct toml_value *t, char *key, size_t len, struct toml_value *v) {
        if (t->u.tab.n >= UINT32_MAX - 1)
                return -ENOMEM;
        if (t->u.tab.n == t->u.tab.cap) {
                size_t cap = t->u.tab.cap ? t->u.tab.cap * 2 : 4;
                struct toml_kv *kv = realloc(t->u.tab.kv, cap * sizeof(*kv));
                if (!kv)
                        return -ENOMEM;
                t->u.tab.kv = kv;
                t->u.tab.cap = cap;
        }
        t->u.tab.kv[t->u.tab.n++] = (struct toml_kv){ .key = key, .len = len, .v = v };
        if (t->u.tab.n >= TOML_HASH_MIN && t->u.tab.n * 2 > t->u.tab.nslots) {
                size_t nslots = t->u.tab.nslots ? t->u.tab.nslots * 2 : TOML_HASH_MIN * 4;
                if (table_reindex(t, nslots) < 0) {
                        t->u.tab.n--;
                        return -ENOMEM;
                }
        } else if (t->u.tab.slots) {
                size_t mask = t->u.tab.nslots - 1;
                size_t s = key_hash(key, len) & mask;
                while (t->u.tab.slots[s])
                        s = (s + 1) & mask;
                t->u.tab.slots[s] = (uint32_t)t->u.tab.n;
        }
        return 0;
}

static int array_push(struct toml_value *a, struct toml_value *v) {
        if (a->u.arr.n == a->u.arr.cap) {
                size_t cap = a->u.arr.cap ? a->u.arr.cap * 2 : 4;
                /* an array of pointers: sizeof(*n) is the pointer size, as meant */
                struct toml_value **n = realloc(a->u.arr.v, cap * sizeof(*n)); // NOLINT(bugprone-sizeof-expression)
                if (!n)
                        return -ENOMEM;
                a->u.arr.v = n;
                a->u.arr.cap = cap;
        }
        a->u.arr.v[a->u.arr.n++] = v;
        return 0;
}

/* ---------------------------------------------------------------- cursor */

struct parser {
        const char *buf;
        size_t len, pos;
        unsigned line;     /* 1-based line of pos */
        size_t line_start; /* offset of the first byte of that line */
        size_t cc_pos;     /* column cache: cc_col is the column of cc_pos ... */
        unsigned cc_col;
        size_t cc_line_start; /* ... on the line starting here */
        const char *origin;
        struct toml_value *root, *cur;
        struct toml_error *err;
        locale_t cloc;
};

static unsigned count_chars(const char *s, size_t n) {
        unsigned c = 0;
        for (size_t i = 0; i < n; i++)
                if (((unsigned char)s[i] & 0xC0) != 0x80)
                        c++;
        return c;
}

/* Column of pos on the current line; cached so that many keys on one long
 * line (a big inline table) cost linear time overall. */
static unsigned col_of(struct parser *p, size_t pos) {
        if (p->cc_line_start != p->line_start || pos < p->cc_pos) {
                p->cc_line_start = p->line_start;
                p->cc_pos = p->line_start;
                p->cc_col = 1;
        }
        p->cc_col += count_chars(p->buf + p->cc_pos, pos - p->cc_pos);
        p->cc_pos = pos;
        return p->cc_col;
}

/* Error path only: line and column of any offset. */
static void locate(const struct parser *p, size_t pos, unsigned *line, unsigned *col) {
        unsigned l = 1;
        size_t ls = 0;
        if (pos > p->len)
                pos = p->len;
        if (pos >= p->line_start) {
                l = p->line;
                ls = p->line_start;
        }
        for (size_t i = ls; i < pos; i++)
                if (p->buf[i] == '\n') {
                        l++;
                        ls = i + 1;
                }
        *line = l;
        *col = count_chars(p->buf + ls, pos - ls) + 1;
}

_printf_(4, 5) static int fail_lc(struct parser *p, unsigned line, unsigned col, const char *fmt, ...);
static int fail_lc(struct parser *p, unsigned line, unsigned col, const char *fmt, ...) {
        va_list ap;
        p->err->line = line;
        p->err->col = col;
        va_start(ap, fmt);
        vsnprintf(p->err->msg, sizeof(p->err->msg), fmt, ap);
        va_end(ap);
        return -EINVAL;
}

#define fail_at(p, pos, ...)                                   \
        __extension__({                                        \
                unsigned _l, _c;                               \
                locate((p), (pos), &_l, &_c);                  \
                fail_lc((p), _l, _c, __VA_ARGS__);             \
        })
#define fail(p, ...) fail_at((p), (p)->pos, __VA_ARGS__)

static inline int peek_at(const struct parser *p, size_t off) {
        return p->pos + off < p->len ? (unsigned char)p->buf[p->pos + off] : -1;
}
static inline int peek(const struct parser *p) {
        return peek_at(p, 0);
}
static inline bool is_bare_key_char(int c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}
static inline bool is_digit(int c) {
        return c >= '0' && c <= '9';
}
static void skip_ws(struct parser *p) {
        while (peek(p) == ' ' || peek(p) == '\t')
                p->pos++;
}
/* Bytes of the newline at pos: 1 for LF, 2 for CRLF, else 0. */
static size_t newline_len(const struct parser *p) {
        if (peek(p) == '\n')
                return 1;
        if (peek(p) == '\r' && peek_at(p, 1) == '\n')
                return 2;
        return 0;
}
static void eat_newline(struct parser *p, size_t n) {
        p->pos += n;
        p->line++;
        p->line_start = p->pos;
}
static void skip_comment(struct parser *p) {
        if (peek(p) != '#')
                return;
        while (p->pos < p->len && p->buf[p->pos] != '\n' && p->buf[p->pos] != '\r')
                p->pos++;
}
/* Whitespace, comments and newlines, as allowed inside arrays. */
static void skip_ws_nl(struct parser *p) {
        for (;;) {
                size_t n;
                skip_ws(p);
                skip_comment(p);
                n = newline_len(p);
                if (!n)
                        return;
                eat_newline(p, n);
        }
}

/* Describe the byte at pos for "found ..." in messages. */
static const char *describe_at(const struct parser *p, size_t pos, char *buf, size_t size) {
        if (pos >= p->len)
                return "end of file";
        unsigned char c = (unsigned char)p->buf[pos];
        if (c == '\n' || c == '\r')
                return "end of line";
        if (c >= 0x20 && c < 0x7F)
                snprintf(buf, size, "'%c'", c);
        else {
                /* a whole UTF-8 character: validated up front */
                size_t n = 1;
                while (pos + n < p->len && ((unsigned char)p->buf[pos + n] & 0xC0) == 0x80 && n < 4)
                        n++;
                snprintf(buf, size, "'%.*s'", (int)n, p->buf + pos);
        }
        return buf;
}

/* Quote a key or word for a message: printable, at most TOML_KEY_SHOWN bytes,
 * never cut inside a UTF-8 character. */
static const char *show(const char *s, size_t len, char *buf, size_t size) {
        size_t o = 0;
        assert(size >= TOML_KEY_SHOWN * 4 + 8);
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];
                if (o >= TOML_KEY_SHOWN && (c & 0xC0) != 0x80) {
                        memcpy(buf + o, "...", 3);
                        o += 3;
                        break;
                }
                if (c < 0x20 || c == 0x7F) {
                        o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
                } else
                        buf[o++] = (char)c;
        }
        buf[o] = 0;
        return buf;
}

/* ------------------------------------------------------ whole-input checks */

/* Validate UTF-8 (shortest form, no surrogates, <= U+10FFFF) and reject raw
 * control characters other than tab and LF/CRLF. */
static int check_encoding(struct parser *p) {
        const unsigned char *s = (const unsigned char *)p->buf;
        size_t n = p->len;
        for (size_t i = 0; i < n;) {
                unsigned c = s[i];
                if (c < 0x80) {
                        if (c == '\r' && !(i + 1 < n && s[i + 1] == '\n'))
                                return fail_at(p, i, "carriage return without a line feed (newlines must be LF or CRLF)");
                        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F)
                                return fail_at(p, i,
                                               "control character U+%04X is not allowed (in strings write it as an escape such as \\u%04X)",
                                               c, c);
                        i++;
                        continue;
                }
                size_t need;
                uint32_t cp, min;
                if ((c & 0xE0) == 0xC0) {
                        need = 1;
                        cp = c & 0x1F;
                        min = 0x80;
                } else if ((c & 0xF0) == 0xE0) {
                        need = 2;
                        cp = c & 0x0F;
                        min = 0x800;
                } else if ((c & 0xF8) == 0xF0) {
                        need = 3;
                        cp = c & 0x07;
                        min = 0x10000;
                } else
                        return fail_at(p, i, "invalid UTF-8 byte 0x%02X (the file must be UTF-8)", c);
                if (n - i <= need)
                        return fail_at(p, i, "truncated UTF-8 sequence (the file must be UTF-8)");
                for (size_t k = 1; k <= need; k++) {
                        if ((s[i + k] & 0xC0) != 0x80)
                                return fail_at(p, i, "invalid UTF-8 sequence (the file must be UTF-8)");
                        cp = (cp << 6) | (s[i + k] & 0x3F);
                }
                if (cp < min)
                        return fail_at(p, i, "overlong UTF-8 sequence (the file must be UTF-8)");
                if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
                        return fail_at(p, i, "UTF-8 encodes an invalid code point U+%04X", (unsigned)cp);
                i += need + 1;
        }
        return 0;
}

/* ---------------------------------------------------------------- strings */

struct sbuf {
        char *s;
        size_t n, cap;
};

static int sb_put(struct sbuf *b, const char *d, size_t n) {
        if (b->cap - b->n <= n) {
                size_t cap = b->cap ? b->cap : 32;
                while (cap - b->n <= n)
                        cap *= 2;
                char *s = realloc(b->s, cap);
                if (!s)
                        return -ENOMEM;
                b->s = s;
                b->cap = cap;
        }
        memcpy(b->s + b->n, d, n);
        b->n += n;
        b->s[b->n] = 0;
        return 0;
}

static int sb_finish(struct sbuf *b) {
        /* empty strings still need a buffer */
        return b->s ? 0 : sb_put(b, "", 0);
}

/* At a backslash inside a basic string: decode one escape into b. In
 * multi-line strings a backslash ending a line trims following whitespace. */
static int parse_escape(struct parser *p, struct sbuf *b, bool multiline) {
        size_t start = p->pos;
        int e = peek_at(p, 1);
        char c;

        switch (e) {
        case 'b': c = '\b'; break;
        case 't': c = '\t'; break;
        case 'n': c = '\n'; break;
        case 'f': c = '\f'; break;
        case 'r': c = '\r'; break;
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case 'u':
        case 'U': {
                unsigned ndig = e == 'u' ? 4 : 8;
                uint32_t cp = 0;
                for (unsigned i = 0; i < ndig; i++) {
                        int h = hex_digit_value(peek_at(p, 2 + i));
                        if (h < 0)
                                return fail_at(p, start, "invalid escape: \\%c needs exactly %u hex digits", e, ndig);
                        cp = (cp << 4) | (uint32_t)h;
                }
                if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
                        return fail_at(p, start, "invalid escape: U+%04X is not a Unicode scalar value", (unsigned)cp);
                char u[4];
                size_t n;
                if (cp < 0x80) {
                        u[0] = (char)cp;
                        n = 1;
                } else if (cp < 0x800) {
                        u[0] = (char)(0xC0 | (cp >> 6));
                        u[1] = (char)(0x80 | (cp & 0x3F));
                        n = 2;
                } else if (cp < 0x10000) {
                        u[0] = (char)(0xE0 | (cp >> 12));
                        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                        u[2] = (char)(0x80 | (cp & 0x3F));
                        n = 3;
                } else {
                        u[0] = (char)(0xF0 | (cp >> 18));
                        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                        u[3] = (char)(0x80 | (cp & 0x3F));
                        n = 4;
                }
                p->pos += 2 + ndig;
                return sb_put(b, u, n);
        }
        default:
                if (multiline && (e == ' ' || e == '\t' || e == '\n' || e == '\r')) {
                        p->pos++;
                        skip_ws(p);
                        if (!newline_len(p))
                                return fail_at(p, start,
                                               "invalid escape: a line-ending backslash may only be followed by whitespace");
                        for (;;) {
                                size_t n;
                                skip_ws(p);
                                n = newline_len(p);
                                if (!n)
                                        break;
                                eat_newline(p, n);
                        }
                        return 0;
                }
                if (e < 0)
                        return fail_at(p, start, "unterminated string: backslash at the end of the input");
                size_t n = 1; /* show the whole (validated) UTF-8 character */
                while (start + 1 + n < p->len && ((unsigned char)p->buf[start + 1 + n] & 0xC0) == 0x80 && n < 4)
                        n++;
                return fail_at(p, start, "invalid escape sequence '\\%.*s' (valid: \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX \\UXXXXXXXX)",
                               (int)n, p->buf + start + 1);
        }
        p->pos += 2;
        return sb_put(b, &c, 1);
}

/* At the opening quote (' or "). Decodes any of the four string kinds. */
static int parse_string(struct parser *p, bool allow_multiline, char **ret, size_t *ret_len) {
        size_t start = p->pos;
        char q = p->buf[p->pos];
        bool basic = q == '"';
        bool ml = peek_at(p, 1) == q && peek_at(p, 2) == q;
        struct sbuf b = { 0 };
        int r;

        if (ml && !allow_multiline)
                return fail(p, "multi-line strings cannot be used as keys");
        if (ml) {
                p->pos += 3;
                size_t n = newline_len(p);
                if (n)
                        eat_newline(p, n); /* a newline right after the opening is trimmed */
        } else
                p->pos++;

        for (;;) {
                if (p->pos >= p->len) {
                        r = ml ? fail_at(p, start, "unterminated multi-line string: expected closing %c%c%c", q, q, q)
                               : fail_at(p, start, "unterminated string: expected closing %c", q);
                        goto out;
                }
                char c = p->buf[p->pos];
                if (c == q) {
                        if (!ml) {
                                p->pos++;
                                break;
                        }
                        size_t run = 0;
                        while (peek_at(p, run) == q)
                                run++;
                        if (run < 3) {
                                r = sb_put(&b, p->buf + p->pos, run);
                                if (r < 0)
                                        goto out;
                                p->pos += run;
                                continue;
                        }
                        if (run > 5) {
                                r = fail_at(p, p->pos + 5, "too many quotes: at most two %c may directly precede the closing %c%c%c", q, q, q, q);
                                goto out;
                        }
                        r = sb_put(&b, p->buf + p->pos, run - 3);
                        if (r < 0)
                                goto out;
                        p->pos += run;
                        break;
                }
                if (c == '\\' && basic) {
                        r = parse_escape(p, &b, ml);
                        if (r < 0)
                                goto out;
                        continue;
                }
                if (c == '\n' || c == '\r') {
                        if (!ml) {
                                r = fail_at(p, start, "unterminated string: expected closing %c before the end of the line "
                                            "(use %c%c%c for multi-line strings)", q, q, q, q);
                                goto out;
                        }
                        size_t n = newline_len(p);
                        assert(n > 0); /* lone CR rejected up front */
                        r = sb_put(&b, "\n", 1);
                        if (r < 0)
                                goto out;
                        eat_newline(p, n);
                        continue;
                }
                size_t e = p->pos;
                while (e < p->len && p->buf[e] != q && p->buf[e] != '\n' && p->buf[e] != '\r' &&
                       !(basic && p->buf[e] == '\\'))
                        e++;
                r = sb_put(&b, p->buf + p->pos, e - p->pos);
                if (r < 0)
                        goto out;
                p->pos = e;
        }
        r = sb_finish(&b);
        if (r < 0)
                goto out;
        *ret = b.s;
        *ret_len = b.n;
        return 0;
out:
        free(b.s);
        return r;
}

/* ------------------------------------------------------------------- keys */

struct keypart {
        char *s;
        size_t len;
        size_t pos;
        unsigned line, col;
};

struct keypath {
        struct keypart part[TOML_MAX_DEPTH];
        size_t n;
};

static void keypath_done(struct keypath *k) {
        for (size_t i = 0; i < k->n; i++)
                free(k->part[i].s);
        k->n = 0;
}

/* Returns 0 with k->n >= 1, or < 0. clang-tidy's analyzer does not inline the
 * variadic fail() and so assumes it may return >= 0 with k->n == 0; the
 * clang-tidy suppressions at the k->part[k->n - 1] uses after a call to this
 * function stand for that false positive. */
static int parse_key(struct parser *p, struct keypath *k) {
        char tmp[16];
        int r;

        k->n = 0;
        for (;;) {
                struct keypart kp = { .pos = p->pos, .line = p->line, .col = col_of(p, p->pos) };
                int c = peek(p);

                if (k->n >= TOML_MAX_DEPTH) {
                        fail(p, "key has more than %d dotted parts", TOML_MAX_DEPTH);
                        return -E2BIG;
                }
                if (c == '"' || c == '\'') {
                        r = parse_string(p, false, &kp.s, &kp.len);
                        if (r < 0)
                                return r;
                } else if (is_bare_key_char(c)) {
                        size_t e = p->pos;
                        while (e < p->len && is_bare_key_char((unsigned char)p->buf[e]))
                                e++;
                        kp.len = e - p->pos;
                        kp.s = strndup(p->buf + p->pos, kp.len);
                        if (!kp.s)
                                return -ENOMEM;
                        p->pos = e;
                } else if (k->n > 0)
                        return fail(p, "expected a key after '.', found %s", describe_at(p, p->pos, tmp, sizeof(tmp)));
                else
                        return fail(p, "expected a key (bare keys may use A-Z a-z 0-9 _ -; quote others), found %s",
                                    describe_at(p, p->pos, tmp, sizeof(tmp)));
                k->part[k->n++] = kp;
                skip_ws(p);
                if (peek(p) != '.')
                        return 0;
                p->pos++;
                skip_ws(p);
        }
}

/* --------------------------------------------------------- scalar values */

static bool digits_at(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!is_digit(s[i]))
                        return false;
        return true;
}

static unsigned num2(const char *s) {
        return (unsigned)(s[0] - '0') * 10 + (unsigned)(s[1] - '0');
}

/* Parse HH:MM:SS[.frac] at s[*i]; NULL or what is wrong. */
static const char *check_time(const char *s, size_t n, size_t *i) {
        size_t k = *i;
        if (n - k < 8 || !digits_at(s + k, 2) || s[k + 2] != ':' || !digits_at(s + k + 3, 2) || s[k + 5] != ':' ||
            !digits_at(s + k + 6, 2))
                return "invalid time: expected HH:MM:SS (seconds are required)";
        if (num2(s + k) > 23)
                return "invalid time: hour must be 00-23";
        if (num2(s + k + 3) > 59)
                return "invalid time: minute must be 00-59";
        if (num2(s + k + 6) > 60)
                return "invalid time: second must be 00-60";
        k += 8;
        if (k < n && s[k] == '.') {
                size_t f = ++k;
                while (k < n && is_digit(s[k]))
                        k++;
                if (k == f)
                        return "invalid time: expected digits after '.'";
        }
        *i = k;
        return NULL;
}

static const char *check_datetime(const char *s, size_t n, enum toml_type *type) {
        size_t i = 0;
        const char *e;

        if (n >= 10 && digits_at(s, 4) && s[4] == '-' && digits_at(s + 5, 2) && s[7] == '-' && digits_at(s + 8, 2)) {
                static const unsigned mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
                unsigned y = num2(s) * 100 + num2(s + 2), m = num2(s + 5), d = num2(s + 8), dim;
                if (m < 1 || m > 12)
                        return "invalid date: month must be 01-12";
                dim = mdays[m - 1];
                if (m == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))
                        dim = 29;
                if (d < 1 || d > dim)
                        return "invalid date: day out of range for the month";
                i = 10;
                if (i == n) {
                        *type = TOML_DATE_LOCAL;
                        return NULL;
                }
                if (s[i] != 'T' && s[i] != 't' && s[i] != ' ')
                        return "invalid date: expected YYYY-MM-DD, optionally followed by T and a time";
                i++;
                e = check_time(s, n, &i);
                if (e)
                        return e;
                if (i == n) {
                        *type = TOML_DATETIME_LOCAL;
                        return NULL;
                }
                if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == n) {
                        *type = TOML_DATETIME;
                        return NULL;
                }
                if ((s[i] == '+' || s[i] == '-') && n - i == 6 && digits_at(s + i + 1, 2) && s[i + 3] == ':' &&
                    digits_at(s + i + 4, 2)) {
                        if (num2(s + i + 1) > 23 || num2(s + i + 4) > 59)
                                return "invalid date-time: offset out of range";
                        *type = TOML_DATETIME;
                        return NULL;
                }
                return "invalid date-time: expected Z or an offset like +01:00 after the time";
        }
        if (n >= 5 && digits_at(s, 4) && s[4] == '-')
                return "invalid date: expected YYYY-MM-DD";
        e = check_time(s, n, &i);
        if (e)
                return e;
        if (i != n)
                return "invalid time: unexpected characters after the time (a local time has no offset)";
        *type = TOML_TIME_LOCAL;
        return NULL;
}

/* Digits of base with '_' only between digits; advances *i. Returns number
 * of digits, or -1 for a misplaced underscore. */
static int scan_digits(const char *s, size_t n, size_t *i, int base) {
        size_t k = *i;
        int nd = 0;
        bool prev_digit = false;
        while (k < n) {
                int h = hex_digit_value((unsigned char)s[k]);
                if (h >= 0 && h < base) {
                        prev_digit = true;
                        nd++;
                } else if (s[k] == '_') {
                        if (!prev_digit)
                                return -1;
                        prev_digit = false;
                } else
                        break;
                k++;
        }
        if (k > *i && s[k - 1] == '_')
                return -1;
        *i = k;
        return nd;
}

static const char *parse_number(struct parser *p, const char *s, size_t n, struct toml_value *v) {
        size_t i = 0;
        bool neg = false, sign = false;

        if (n > TOML_NUMBER_MAX)
                return "number is too long";
        if (s[0] == '+' || s[0] == '-') {
                neg = s[0] == '-';
                sign = true;
                i = 1;
        }
        if (n - i == 3 && (memcmp(s + i, "inf", 3) == 0 || memcmp(s + i, "nan", 3) == 0)) {
                v->type = TOML_FLOAT;
                v->u.f = s[i] == 'i' ? (neg ? -__builtin_inf() : __builtin_inf()) : (neg ? -__builtin_nan("") : __builtin_nan(""));
                return NULL;
        }
        if (n - i >= 2 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'o' || s[i + 1] == 'b')) {
                int base = s[i + 1] == 'x' ? 16 : s[i + 1] == 'o' ? 8 : 2;
                size_t k = i + 2;
                uint64_t val = 0;
                if (sign)
                        return "invalid integer: hexadecimal, octal and binary integers cannot have a sign";
                int nd = scan_digits(s, n, &k, base);
                if (nd < 0)
                        return "invalid integer: underscores must be between digits";
                if (nd == 0 || k != n)
                        return base == 16 ? "invalid hexadecimal integer" : base == 8 ? "invalid octal integer" : "invalid binary integer";
                for (size_t j = i + 2; j < n; j++) {
                        if (s[j] == '_')
                                continue;
                        uint64_t d = (uint64_t)hex_digit_value((unsigned char)s[j]);
                        if (val > ((uint64_t)INT64_MAX - d) / (uint64_t)base)
                                return "integer out of range (must fit in a signed 64-bit integer)";
                        val = val * (uint64_t)base + d;
                }
                v->type = TOML_INTEGER;
                v->u.i = (int64_t)val;
                return NULL;
        }

        size_t int_start = i;
        int nd = scan_digits(s, n, &i, 10);
        bool is_float = false;
        if (nd < 0)
                return "invalid number: underscores must be between digits";
        if (nd == 0)
                return "invalid number";
        if (nd > 1 && s[int_start] == '0')
                return "invalid number: leading zeros are not allowed";
        if (i < n && s[i] == '.') {
                i++;
                is_float = true;
                nd = scan_digits(s, n, &i, 10);
                if (nd < 0)
                        return "invalid float: underscores must be between digits";
                if (nd == 0)
                        return "invalid float: expected digits after '.'";
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                i++;
                is_float = true;
                if (i < n && (s[i] == '+' || s[i] == '-'))
                        i++;
                nd = scan_digits(s, n, &i, 10);
                if (nd < 0)
                        return "invalid float: underscores must be between digits";
                if (nd == 0)
                        return "invalid float: expected digits in the exponent";
        }
        if (i != n)
                return "invalid number";

        char clean[TOML_NUMBER_MAX + 1];
        size_t o = 0;
        for (size_t j = 0; j < n; j++)
                if (s[j] != '_')
                        clean[o++] = s[j];
        clean[o] = 0;

        if (is_float) {
                if (!p->cloc) {
                        /* strtod must not follow the process locale's decimal point */
                        p->cloc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
                        if (!p->cloc)
                                return "out of memory";
                }
                v->type = TOML_FLOAT;
                v->u.f = strtod_l(clean, NULL, p->cloc);
                return NULL;
        }
        uint64_t mag = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (size_t j = sign ? 1 : 0; j < o; j++) {
                uint64_t d = (uint64_t)(clean[j] - '0');
                if (mag > (lim - d) / 10)
                        return "integer out of range (must fit in a signed 64-bit integer)";
                mag = mag * 10 + d;
        }
        v->type = TOML_INTEGER;
        v->u.i = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        return NULL;
}

static inline bool is_token_char(int c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' || c == '+' || c == '-' ||
               c == '.' || c == ':';
}

/* ------------------------------------------------------------ structures */

static int parse_value(struct parser *p, unsigned depth, unsigned line, unsigned col, const char *ctx,
                       struct toml_value **ret);
static int parse_keyval(struct parser *p, struct toml_value *table);

static int check_depth(struct parser *p, unsigned depth) {
        if (depth <= TOML_MAX_DEPTH)
                return 0;
        fail(p, "nesting deeper than %d levels", TOML_MAX_DEPTH);
        return -E2BIG;
}

static int parse_array(struct parser *p, struct toml_value *a) {
        char tmp[16];
        size_t open = p->pos;
        int r;

        p->pos++;
        for (;;) {
                struct toml_value *v = NULL;
                skip_ws_nl(p);
                if (peek(p) == ']') {
                        p->pos++;
                        return 0;
                }
                if (p->pos >= p->len)
                        return fail_at(p, open, "unterminated array: expected ']'");
                r = parse_value(p, a->depth + 1, p->line, col_of(p, p->pos), "in array", &v);
                if (r < 0)
                        return r;
                r = array_push(a, v);
                if (r < 0) {
                        value_free(v);
                        return r;
                }
                skip_ws_nl(p);
                if (peek(p) == ',') {
                        p->pos++;
                        continue;
                }
                if (peek(p) == ']') {
                        p->pos++;
                        return 0;
                }
                if (p->pos >= p->len)
                        return fail_at(p, open, "unterminated array: expected ']'");
                return fail(p, "expected ',' or ']' after an array element, found %s", describe_at(p, p->pos, tmp, sizeof(tmp)));
        }
}

static int parse_inline_table(struct parser *p, struct toml_value *t) {
        char tmp[16];
        int r;

        p->pos++;
        skip_ws(p);
        if (peek(p) == '}') {
                p->pos++;
                goto done;
        }
        for (;;) {
                skip_ws(p);
                r = parse_keyval(p, t);
                if (r < 0)
                        return r;
                skip_ws(p);
                if (peek(p) == ',') {
                        p->pos++;
                        skip_ws(p);
                        if (peek(p) == '}')
                                return fail(p, "trailing comma is not allowed in an inline table");
                        continue;
                }
                if (peek(p) == '}') {
                        p->pos++;
                        break;
                }
                if (newline_len(p) || peek(p) == '#')
                        return fail(p, "inline tables must be on one line: expected ',' or '}'");
                return fail(p, "expected ',' or '}' in inline table, found %s", describe_at(p, p->pos, tmp, sizeof(tmp)));
        }
done:
        t->flags |= TF_FROZEN;
        return 0;
}

static int bare_word_error(struct parser *p, const char *ctx) {
        char w[TOML_KEY_SHOWN * 4 + 8], q[TOML_KEY_SHOWN * 8 + 16];
        size_t e = p->pos, o = 0;
        while (e < p->len && !strchr(" \t\r\n#,]}=", p->buf[e]) && p->buf[e] != 0)
                e++;
        show(p->buf + p->pos, e - p->pos, w, sizeof(w));
        /* the quoted suggestion escapes what a basic string needs escaped */
        for (const char *s = w; *s && o < sizeof(q) - 3; s++) {
                if (*s == '"' || *s == '\\')
                        q[o++] = '\\';
                q[o++] = *s;
        }
        q[o] = 0;
        (void)ctx;
        return fail(p, "expected a value, found bare word '%s'; strings must be quoted: \"%s\"", w, q);
}

/* Parse one value at pos. depth is the nesting level the value would have
 * if it is an array or inline table. line/col: where it is defined. */
static int parse_value(struct parser *p, unsigned depth, unsigned line, unsigned col, const char *ctx,
                       struct toml_value **ret) {
        struct toml_value *v;
        char tmp[16];
        int c = peek(p), r;

        v = value_new(TOML_STRING, line, col, p->origin);
        if (!v)
                return -ENOMEM;

        if (c == '"' || c == '\'') {
                r = parse_string(p, true, &v->u.str.s, &v->u.str.len);
                if (r < 0)
                        goto fail;
        } else if (c == '[' || c == '{') {
                r = check_depth(p, depth);
                if (r < 0)
                        goto fail;
                v->type = c == '[' ? TOML_ARRAY : TOML_TABLE;
                v->depth = depth;
                r = c == '[' ? parse_array(p, v) : parse_inline_table(p, v);
                if (r < 0)
                        goto fail;
        } else if (is_token_char(c)) {
                size_t s = p->pos, e = p->pos;
                enum toml_type dt;
                const char *msg;

                while (e < p->len && is_token_char((unsigned char)p->buf[e]))
                        e++;
                /* RFC 3339 allows a space between date and time */
                if (e - s == 10 && e + 3 < p->len && p->buf[e] == ' ' && is_digit(p->buf[e + 1]) &&
                    is_digit(p->buf[e + 2]) && p->buf[e + 3] == ':' && p->buf[s + 4] == '-') {
                        e++;
                        while (e < p->len && is_token_char((unsigned char)p->buf[e]))
                                e++;
                }
                if (e - s == 4 && memcmp(p->buf + s, "true", 4) == 0) {
                        v->type = TOML_BOOL;
                        v->u.b = true;
                } else if (e - s == 5 && memcmp(p->buf + s, "false", 5) == 0) {
                        v->type = TOML_BOOL;
                        v->u.b = false;
                } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z' && !(e - s == 3 && (memcmp(p->buf + s, "inf", 3) == 0 ||
                                                                                                 memcmp(p->buf + s, "nan", 3) == 0))) ||
                           c == '_') {
                        r = bare_word_error(p, ctx);
                        goto fail;
                } else if (e - s >= 5 && digits_at(p->buf + s, 4) && p->buf[s + 4] == '-') {
                        msg = check_datetime(p->buf + s, e - s, &dt);
                        if (msg) {
                                r = fail(p, "%s", msg);
                                goto fail;
                        }
                        v->type = dt;
                        v->u.str.s = strndup(p->buf + s, e - s);
                        if (!v->u.str.s) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        v->u.str.len = e - s;
                } else if (e - s >= 3 && digits_at(p->buf + s, 2) && p->buf[s + 2] == ':') {
                        msg = check_datetime(p->buf + s, e - s, &dt);
                        if (msg) {
                                r = fail(p, "%s", msg);
                                goto fail;
                        }
                        v->type = dt;
                        v->u.str.s = strndup(p->buf + s, e - s);
                        if (!v->u.str.s) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        v->u.str.len = e - s;
                } else {
                        msg = parse_number(p, p->buf + s, e - s, v);
                        if (msg) {
                                r = fail(p, "%s (in '%.*s')", msg, (int)(e - s > TOML_KEY_SHOWN ? TOML_KEY_SHOWN : e - s),
                                         p->buf + s);
                                goto fail;
                        }
                }
                p->pos = e;
        } else if (c >= 0x80) {
                r = bare_word_error(p, ctx);
                goto fail;
        } else {
                r = fail(p, "expected a value %s (a quoted string, number, true/false, date/time, [array] or {table}), found %s",
                         ctx, describe_at(p, p->pos, tmp, sizeof(tmp)));
                goto fail;
        }
        *ret = v;
        return 0;
fail:
        value_free(v);
        return r;
}

static const char *article_type(enum toml_type t) {
        switch (t) {
        case TOML_STRING: return "a string";
        case TOML_INTEGER: return "an integer";
        case TOML_FLOAT: return "a float";
        case TOML_BOOL: return "a boolean";
        case TOML_DATETIME: return "an offset date-time";
        case TOML_DATETIME_LOCAL: return "a local date-time";
        case TOML_DATE_LOCAL: return "a local date";
        case TOML_TIME_LOCAL: return "a local time";
        case TOML_ARRAY: return "an array";
        case TOML_TABLE: return "a table";
        }
        return "a value";
}

static struct toml_value *new_table(struct toml_value *parent, const struct keypart *kp, unsigned flags,
                                    const char *origin) {
        struct toml_value *t = value_new(TOML_TABLE, kp->line, kp->col, origin);
        if (!t)
                return NULL;
        t->flags = flags;
        t->depth = parent->depth + 1;
        return t;
}

/* Adds a fresh container under kp (key taken over on success). */
static int add_new(struct parser *p, struct toml_value *parent, struct keypart *kp, struct toml_value *v) {
        int r = table_add(parent, kp->s, kp->len, v);
        if (r < 0)
                return r;
        kp->s = NULL;
        return 0;
}

/* key = value, into table (the current [table] or an inline table). */
static int parse_keyval(struct parser *p, struct toml_value *table) {
        struct keypath *k = malloc(sizeof(*k)); /* heap: keeps deep recursion's frames small; parse_key sets n */
        char kb[TOML_KEY_SHOWN * 4 + 8], tmp[16];
        struct toml_value *t = table, *v = NULL;
        struct toml_kv *kv;
        int r;

        if (!k)
                return -ENOMEM;
        r = parse_key(p, k);
        if (r < 0)
                goto out;
        skip_ws(p);
        if (peek(p) != '=') {
                struct keypart *last = &k->part[k->n - 1];
                /* NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage): see parse_key() */
                r = fail(p, "expected '=' after key '%s', found %s", show(last->s, last->len, kb, sizeof(kb)),
                         describe_at(p, p->pos, tmp, sizeof(tmp)));
                goto out;
        }
        p->pos++;
        skip_ws(p);

        for (size_t i = 0; i + 1 < k->n; i++) {
                struct keypart *kp = &k->part[i];
                kv = table_find(t, kp->s, kp->len);
                if (!kv) {
                        struct toml_value *n;
                        if (check_depth(p, t->depth + 1) < 0) {
                                r = -E2BIG;
                                goto out;
                        }
                        n = new_table(t, kp, TF_DOTTED, p->origin);
                        if (!n) {
                                r = -ENOMEM;
                                goto out;
                        }
                        r = add_new(p, t, kp, n);
                        if (r < 0) {
                                value_free(n);
                                goto out;
                        }
                        t = n;
                        continue;
                }
                if (kv->v->type != TOML_TABLE) {
                        r = fail_lc(p, kp->line, kp->col, "key '%s' is already %s (defined at %u:%u), it cannot also be a table",
                                    show(kp->s, kp->len, kb, sizeof(kb)), article_type(kv->v->type), kv->v->line, kv->v->col);
                        goto out;
                }
                if (kv->v->flags & TF_FROZEN) {
                        r = fail_lc(p, kp->line, kp->col, "cannot add keys to inline table '%s' (defined at %u:%u); an inline table is complete once written",
                                    show(kp->s, kp->len, kb, sizeof(kb)), kv->v->line, kv->v->col);
                        goto out;
                }
                if (!(kv->v->flags & TF_DOTTED)) {
                        r = fail_lc(p, kp->line, kp->col,
                                    "cannot use a dotted key to add to table '%s' (defined by a [header] at %u:%u); put the key under that header",
                                    show(kp->s, kp->len, kb, sizeof(kb)), kv->v->line, kv->v->col);
                        goto out;
                }
                t = kv->v;
        }

        struct keypart *last = &k->part[k->n - 1];
        kv = table_find(t, last->s, last->len); /* NOLINT(clang-analyzer-core.CallAndMessage): see parse_key() */
        if (kv) {
                r = fail_lc(p, last->line, last->col, "duplicate key '%s' (first defined at %u:%u)",
                            show(last->s, last->len, kb, sizeof(kb)), kv->v->line, kv->v->col);
                goto out;
        }
        r = parse_value(p, t->depth + 1, last->line, last->col, "after '='", &v);
        if (r < 0)
                goto out;
        r = add_new(p, t, last, v);
        if (r < 0)
                value_free(v);
out:
        keypath_done(k);
        free(k);
        return r;
}

/* [a.b.c] or [[a.b.c]] */
static int parse_header(struct parser *p) {
        struct keypath *k = malloc(sizeof(*k));
        char kb[TOML_KEY_SHOWN * 4 + 8], tmp[16];
        struct toml_value *t = p->root;
        struct toml_kv *kv;
        bool aot = peek_at(p, 1) == '[';
        int r;

        p->pos += aot ? 2 : 1;
        skip_ws(p);
        if (!k)
                return -ENOMEM;
        r = parse_key(p, k);
        if (r < 0)
                goto out;
        skip_ws(p);
        if (peek(p) != ']' || (aot && peek_at(p, 1) != ']')) {
                r = fail(p, "expected '%s' to close the table header, found %s", aot ? "]]" : "]",
                         describe_at(p, p->pos, tmp, sizeof(tmp)));
                goto out;
        }
        p->pos += aot ? 2 : 1;

        for (size_t i = 0; i + 1 < k->n; i++) {
                struct keypart *kp = &k->part[i];
                kv = table_find(t, kp->s, kp->len);
                if (!kv) {
                        struct toml_value *n;
                        if (check_depth(p, t->depth + 1) < 0) {
                                r = -E2BIG;
                                goto out;
                        }
                        n = new_table(t, kp, 0, p->origin);
                        if (!n) {
                                r = -ENOMEM;
                                goto out;
                        }
                        r = add_new(p, t, kp, n);
                        if (r < 0) {
                                value_free(n);
                                goto out;
                        }
                        t = n;
                } else if (kv->v->type == TOML_TABLE) {
                        if (kv->v->flags & TF_FROZEN) {
                                r = fail_lc(p, kp->line, kp->col, "cannot add to inline table '%s' (defined at %u:%u); an inline table is complete once written",
                                            show(kp->s, kp->len, kb, sizeof(kb)), kv->v->line, kv->v->col);
                                goto out;
                        }
                        t = kv->v;
                } else if (kv->v->type == TOML_ARRAY && (kv->v->flags & AF_AOT)) {
                        assert(kv->v->u.arr.n > 0);
                        t = kv->v->u.arr.v[kv->v->u.arr.n - 1];
                } else {
                        r = fail_lc(p, kp->line, kp->col, "key '%s' is already %s (defined at %u:%u), it cannot also be a table",
                                    show(kp->s, kp->len, kb, sizeof(kb)), article_type(kv->v->type), kv->v->line, kv->v->col);
                        goto out;
                }
        }

        struct keypart *last = &k->part[k->n - 1];
        kv = table_find(t, last->s, last->len); /* NOLINT(clang-analyzer-core.CallAndMessage): see parse_key() */
        if (aot) {
                struct toml_value *arr, *el;
                if (!kv) {
                        if (check_depth(p, t->depth + 2) < 0) {
                                r = -E2BIG;
                                goto out;
                        }
                        arr = value_new(TOML_ARRAY, last->line, last->col, p->origin);
                        if (!arr) {
                                r = -ENOMEM;
                                goto out;
                        }
                        arr->flags = AF_AOT;
                        arr->depth = t->depth + 1;
                        r = add_new(p, t, last, arr);
                        if (r < 0) {
                                value_free(arr);
                                goto out;
                        }
                } else if (kv->v->type == TOML_ARRAY && (kv->v->flags & AF_AOT))
                        arr = kv->v;
                else {
                        r = fail_lc(p, last->line, last->col,
                                    kv->v->type == TOML_ARRAY
                                            ? "cannot append to '%s' with [[...]]: it is %s written as a value at %u:%u"
                                            : "[[%s]] conflicts with %s defined at %u:%u",
                                    show(last->s, last->len, kb, sizeof(kb)), article_type(kv->v->type), kv->v->line, kv->v->col);
                        goto out;
                }
                el = value_new(TOML_TABLE, last->line, last->col, p->origin);
                if (!el) {
                        r = -ENOMEM;
                        goto out;
                }
                el->flags = TF_EXPLICIT;
                el->depth = arr->depth + 1;
                r = array_push(arr, el);
                if (r < 0) {
                        value_free(el);
                        goto out;
                }
                p->cur = el;
        } else {
                if (!kv) {
                        struct toml_value *n;
                        if (check_depth(p, t->depth + 1) < 0) {
                                r = -E2BIG;
                                goto out;
                        }
                        n = new_table(t, last, TF_EXPLICIT, p->origin);
                        if (!n) {
                                r = -ENOMEM;
                                goto out;
                        }
                        r = add_new(p, t, last, n);
                        if (r < 0) {
                                value_free(n);
                                goto out;
                        }
                        p->cur = n;
                } else if (kv->v->type == TOML_TABLE && !(kv->v->flags & (TF_EXPLICIT | TF_DOTTED | TF_FROZEN))) {
                        kv->v->flags |= TF_EXPLICIT;
                        kv->v->line = last->line;
                        kv->v->col = last->col;
                        p->cur = kv->v;
                } else if (kv->v->type == TOML_TABLE) {
                        r = fail_lc(p, last->line, last->col,
                                    kv->v->flags & TF_EXPLICIT ? "table '%s' is defined twice (first at %u:%u)"
                                    : kv->v->flags & TF_FROZEN ? "table '%s' was already written as an inline table at %u:%u"
                                                               : "table '%s' was already created by dotted keys at %u:%u",
                                    show(last->s, last->len, kb, sizeof(kb)), kv->v->line, kv->v->col);
                        goto out;
                } else {
                        r = fail_lc(p, last->line, last->col,
                                    kv->v->type == TOML_ARRAY && (kv->v->flags & AF_AOT)
                                            ? "[%s] conflicts with the array of tables defined at %u:%u (use [[...]])"
                                            : "key '%s' is already defined at %u:%u, it cannot also be a table",
                                    show(last->s, last->len, kb, sizeof(kb)), kv->v->line, kv->v->col);
                        goto out;
                }
        }
        r = 0;
out:
        keypath_done(k);
        free(k);
        return r;
}

/* ------------------------------------------------------------- document */

int toml_parse(const char *buf, size_t len, const char *origin, struct toml_value **ret, struct toml_error *err) {
        struct toml_error dummy;
        struct toml_root *root;
        struct parser p = {
                .buf = buf,
                .len = len,
                .line = 1,
                .cc_col = 1,
                /* cppcheck-suppress uninitvar ; only the address is taken, fail_lc() writes it */
                .err = err ? err : &dummy,
        };
        char tmp[16];
        int r;

        assert(buf || len == 0);
        assert(ret);
        if (!buf)
                p.buf = "";

        if (len > TOML_MAX_INPUT_BYTES) {
                fail_lc(&p, 1, 1, "document is larger than %u bytes", TOML_MAX_INPUT_BYTES);
                return -E2BIG;
        }
        root = calloc(1, sizeof(*root));
        if (!root)
                return -ENOMEM;
        root->v.type = TOML_TABLE;
        root->v.flags = TF_ROOT | TF_EXPLICIT;
        root->v.line = root->v.col = 1;
        if (origin) {
                root->origins = malloc(sizeof(char *));
                if (!root->origins) {
                        free(root);
                        return -ENOMEM;
                }
                root->origins[0] = strdup(origin);
                if (!root->origins[0]) {
                        free(root->origins);
                        free(root);
                        return -ENOMEM;
                }
                root->n_origins = 1;
                p.origin = root->v.origin = root->origins[0];
        }
        p.root = p.cur = &root->v;

        r = check_encoding(&p);
        if (r < 0)
                goto out;
        /* a UTF-8 byte order mark is not part of the document */
        if (len >= 3 && memcmp(p.buf, "\xEF\xBB\xBF", 3) == 0)
                p.pos = p.line_start = 3;

        while (p.pos < p.len) {
                size_t n;
                skip_ws(&p);
                if (peek(&p) == '[') {
                        r = parse_header(&p);
                        if (r < 0)
                                goto out;
                } else if (peek(&p) != '#' && !newline_len(&p) && p.pos < p.len) {
                        r = parse_keyval(&p, p.cur);
                        if (r < 0)
                                goto out;
                }
                skip_ws(&p);
                skip_comment(&p);
                if (p.pos >= p.len)
                        break;
                n = newline_len(&p);
                if (!n) {
                        r = fail(&p, "expected the end of the line, found %s (one key = value or [table] per line)",
                                 describe_at(&p, p.pos, tmp, sizeof(tmp)));
                        goto out;
                }
                eat_newline(&p, n);
        }
        r = 0;
out:
        if (p.cloc)
                freelocale(p.cloc);
        if (r < 0) {
                if (r == -ENOMEM)
                        fail_lc(&p, 0, 0, "out of memory");
                value_free(&root->v);
                return r;
        }
        *ret = &root->v;
        return 0;
}

struct toml_value *toml_free(struct toml_value *root) {
        value_free(root);
        return NULL;
}

/* ------------------------------------------------------------- accessors */

enum toml_type toml_type(const struct toml_value *v) {
        assert(v);
        return v->type;
}

const char *toml_type_name(enum toml_type t) {
        switch (t) {
        case TOML_STRING: return "string";
        case TOML_INTEGER: return "integer";
        case TOML_FLOAT: return "float";
        case TOML_BOOL: return "boolean";
        case TOML_DATETIME: return "offset date-time";
        case TOML_DATETIME_LOCAL: return "local date-time";
        case TOML_DATE_LOCAL: return "local date";
        case TOML_TIME_LOCAL: return "local time";
        case TOML_ARRAY: return "array";
        case TOML_TABLE: return "table";
        }
        return "unknown";
}

const char *toml_origin(const struct toml_value *v) {
        assert(v);
        return v->origin;
}

unsigned toml_line(const struct toml_value *v) {
        assert(v);
        return v->line;
}

unsigned toml_col(const struct toml_value *v) {
        assert(v);
        return v->col;
}

size_t toml_table_size(const struct toml_value *table) {
        assert(table && table->type == TOML_TABLE);
        return table->u.tab.n;
}

const char *toml_table_key(const struct toml_value *table, size_t i) {
        assert(table && table->type == TOML_TABLE && i < table->u.tab.n);
        return table->u.tab.kv[i].key;
}

const char *toml_table_key_n(const struct toml_value *table, size_t i, size_t *len) {
        assert(table && table->type == TOML_TABLE && i < table->u.tab.n);
        if (len)
                *len = table->u.tab.kv[i].len;
        return table->u.tab.kv[i].key;
}

const struct toml_value *toml_table_value(const struct toml_value *table, size_t i) {
        assert(table && table->type == TOML_TABLE && i < table->u.tab.n);
        return table->u.tab.kv[i].v;
}

const struct toml_value *toml_table_get(const struct toml_value *table, const char *key) {
        const struct toml_kv *kv;
        assert(table && table->type == TOML_TABLE && key);
        kv = table_find(table, key, strlen(key));
        return kv ? kv->v : NULL;
}

size_t toml_array_size(const struct toml_value *array) {
        assert(array && array->type == TOML_ARRAY);
        return array->u.arr.n;
}

const struct toml_value *toml_array_at(const struct toml_value *array, size_t i) {
        assert(array && array->type == TOML_ARRAY && i < array->u.arr.n);
        return array->u.arr.v[i];
}

const char *toml_string(const struct toml_value *v, size_t *len) {
        assert(v && v->type == TOML_STRING);
        if (len)
                *len = v->u.str.len;
        return v->u.str.s;
}

int64_t toml_integer(const struct toml_value *v) {
        assert(v && v->type == TOML_INTEGER);
        return v->u.i;
}

double toml_float(const struct toml_value *v) {
        assert(v && v->type == TOML_FLOAT);
        return v->u.f;
}

bool toml_bool(const struct toml_value *v) {
        assert(v && v->type == TOML_BOOL);
        return v->u.b;
}

const char *toml_datetime_text(const struct toml_value *v) {
        assert(v && (v->type == TOML_DATETIME || v->type == TOML_DATETIME_LOCAL || v->type == TOML_DATE_LOCAL ||
                     v->type == TOML_TIME_LOCAL));
        return v->u.str.s;
}

/* Walk a dotted path of bare keys. Returns 0 with *out set, -ENOENT or -EINVAL. */
static int lookup(const struct toml_value *root, const char *path, const struct toml_value **out) {
        const struct toml_value *t = root;
        assert(root && path);
        for (;;) {
                const char *dot = strchr(path, '.');
                size_t n = dot ? (size_t)(dot - path) : strlen(path);
                const struct toml_kv *kv;
                if (t->type != TOML_TABLE)
                        return -EINVAL;
                kv = table_find(t, path, n);
                if (!kv)
                        return -ENOENT;
                t = kv->v;
                if (!dot)
                        break;
                path = dot + 1;
        }
        *out = t;
        return 0;
}

const struct toml_value *toml_get(const struct toml_value *root, const char *path) {
        const struct toml_value *v;
        return lookup(root, path, &v) < 0 ? NULL : v;
}

int toml_get_string(const struct toml_value *root, const char *path, const char **out) {
        const struct toml_value *v;
        int r = lookup(root, path, &v);
        if (r < 0)
                return r;
        if (v->type != TOML_STRING)
                return -EINVAL;
        *out = v->u.str.s;
        return 0;
}

int toml_get_integer(const struct toml_value *root, const char *path, int64_t *out) {
        const struct toml_value *v;
        int r = lookup(root, path, &v);
        if (r < 0)
                return r;
        if (v->type != TOML_INTEGER)
                return -EINVAL;
        *out = v->u.i;
        return 0;
}

int toml_get_bool(const struct toml_value *root, const char *path, bool *out) {
        const struct toml_value *v;
        int r = lookup(root, path, &v);
        if (r < 0)
                return r;
        if (v->type != TOML_BOOL)
                return -EINVAL;
        *out = v->u.b;
        return 0;
}

int toml_get_table(const struct toml_value *root, const char *path, const struct toml_value **out) {
        const struct toml_value *v;
        int r = lookup(root, path, &v);
        if (r < 0)
                return r;
        if (v->type != TOML_TABLE)
                return -EINVAL;
        *out = v;
        return 0;
}

/* ----------------------------------------------------------------- merge */

/* Move every key of src into dst; src's slots are emptied as they move so
 * that freeing src afterwards never frees what dst now owns. */
static int merge_tables(struct toml_value *dst, struct toml_value *src) {
        for (size_t i = 0; i < src->u.tab.n; i++) {
                struct toml_kv *s = &src->u.tab.kv[i];
                struct toml_kv *d = table_find(dst, s->key, s->len);
                int r;
                if (!s->v)
                        continue;
                if (d && d->v->type == TOML_TABLE && s->v->type == TOML_TABLE) {
                        r = merge_tables(d->v, s->v);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (d) {
                        value_free(d->v);
                        d->v = TAKE_PTR(s->v);
                        continue;
                }
                r = table_add(dst, s->key, s->len, s->v);
                if (r < 0)
                        return r;
                s->key = NULL;
                s->v = NULL;
        }
        return 0;
}

int toml_merge(struct toml_value *dst, struct toml_value *src) {
        struct toml_root *d, *s;
        int r;

        assert(dst && dst->type == TOML_TABLE && (dst->flags & TF_ROOT));
        if (!src)
                return 0;
        assert(src->type == TOML_TABLE && (src->flags & TF_ROOT));
        d = (struct toml_root *)dst;
        s = (struct toml_root *)src;

        /* dst takes over src's origin names first: moved values point at them */
        if (s->n_origins > 0) {
                char **o = realloc(d->origins, (d->n_origins + s->n_origins) * sizeof(char *));
                if (!o) {
                        value_free(src);
                        return -ENOMEM;
                }
                d->origins = o;
                memcpy(d->origins + d->n_origins, s->origins, s->n_origins * sizeof(char *));
                d->n_origins += s->n_origins;
                s->n_origins = 0;
        }
        r = merge_tables(dst, src);
        value_free(src);
        return r;
}
