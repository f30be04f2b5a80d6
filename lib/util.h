/* Small helpers every module uses: cleanup attributes, ownership transfer,
 * array sizes, checked secure zeroing. Header-only except util.c. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define _unused_ __attribute__((unused))
#define _cleanup_(f) __attribute__((cleanup(f)))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _warn_unused_ __attribute__((warn_unused_result))

/* Hand ownership of *p to the caller and leave NULL behind, so the
 * cleanup attribute on the source variable does nothing. */
#define TAKE_PTR(p)                      \
        __extension__({                               \
                __typeof__(p) _p_ = (p); \
                (p) = NULL;              \
                _p_;                     \
        })
#define TAKE_FD(fd)                 \
        __extension__({                          \
                int _fd_ = (fd);    \
                (fd) = -1;          \
                _fd_;               \
        })

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void freep(void *p) {
        free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd) {
        if (*fd >= 0)
                close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Milliseconds on the monotonic clock (for deadlines and idle times). */
static inline int64_t now_monotonic_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}
static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return streq(a, b);
}
static inline bool startswith(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Zero memory that held secrets in a way the compiler may not drop. */
void explicit_zero(void *p, size_t n);

/* Constant-time comparison of two equal-length buffers: returns true when equal. */
bool memeq_consttime(const void *a, const void *b, size_t n);

/* Read a whole file of at most max bytes. On success *ret is a NUL-terminated
 * heap buffer (caller frees) and *ret_len its length without the NUL.
 * Returns 0, -errno from open/read, or -EFBIG when the file exceeds max. */
int read_full_file(const char *path, size_t max, char **ret, size_t *ret_len);

/* Write data to path atomically: a temp file in the same directory, fsync,
 * rename over path, fsync of the directory. mode is applied to the new file.
 * Returns 0 or -errno; on failure path is untouched and no temp file is left. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* write_file_atomic() that also sets the owner of the temp file before the
 * rename, so the file never appears under its final name with the wrong
 * owner or group. (uid_t)-1 / (gid_t)-1 leave that id unchanged. */
int write_file_atomic_owned(const char *path, const void *data, size_t len, mode_t mode, uid_t uid, gid_t gid);

/* A blocking SOCK_STREAM connection to the Unix socket at path (close-on-exec).
 * Returns the descriptor, or -errno: -ENAMETOOLONG for a path that does not
 * fit sun_path, else socket()'s or connect()'s (-ENOENT, -ECONNREFUSED, ...). */
int unix_connect(const char *path);
