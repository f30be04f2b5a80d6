/* The TPM adapter: the only file that talks to the TPM.
 *
 * It speaks SAPI (libtss2-sys) over a TCTI, not ESAPI. Everything tpmidd
 * sends is authorised with a password (hierarchies, the auth key) or an
 * unsalted policy session whose only job is PolicySecret(endorsement): no
 * command or response HMAC, no parameter encryption, so there is nothing
 * for ESAPI's session bookkeeping to do. What ESAPI would add is libcrypto:
 * initialising OpenSSL 3 costs ~3 MiB of resident memory and most of the
 * CPU of a short command, in a daemon that is idle almost all of its life
 * (the numbers are in HACKING.md). The one hash we need, the registration
 * id, is lib/sha256.c.
 *
 * Every TSS2_RC is converted exactly once, by tpm_error_from_rc() (or a
 * step-specific refinement right next to the call), into a negative errno
 * and a one-sentence struct tpm_error. Transient objects and sessions are
 * flushed on every path and every flush's rc is checked: a direct swtpm
 * connection has only 3 object slots and no resource manager to clean up
 * after us.
 *
 * Hot path: tpm_sign() is one TPM2_HMAC with a password session on the
 * persistent handle (no HMAC or salted session: those cost ~2 ms of CPU
 * each). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <tss2/tss2_sys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "authblob.h"
#include "b64.h"
#include "sha256.h"
#include "tcti-swtpm.h"
#include "tpm.h"
#include "util.h"

/* The blob parser is pure and cannot see tss2; make sure its limits are the
 * sizes of the structures its elements are copied into. */
_Static_assert(AUTHBLOB_ID_OBJECT_MAX == sizeof(((TPM2B_ID_OBJECT *)0)->credential), "ID_OBJECT size");
_Static_assert(AUTHBLOB_ENC_SECRET_MAX == sizeof(((TPM2B_ENCRYPTED_SECRET *)0)->secret), "ENCRYPTED_SECRET size");
_Static_assert(AUTHBLOB_PRIVATE_MAX == sizeof(((TPM2B_PRIVATE *)0)->buffer), "PRIVATE size");
_Static_assert(AUTHBLOB_PUBLIC_MAX == sizeof(TPMT_PUBLIC), "TPMT_PUBLIC size");
_Static_assert(AUTHBLOB_SIZE_FIELD + AUTHBLOB_PUBLIC_MAX <= TPM_PUBLIC_MAX, "TPM_PUBLIC_MAX too small");
_Static_assert(TPM_HMAC_CHUNK == TPM2_MAX_DIGEST_BUFFER, "HMAC chunk is TPM2B_MAX_BUFFER");

#define TPM_PASSWORD_MAX 64 /* bytes: TPM2B_AUTH.buffer (SHA-512 digest size) */

/* TCG EK Credential Profile, template L-1: PolicySecret(TPM_RH_ENDORSEMENT). */
static const uint8_t ek_policy[32] = {
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
        0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
};

/* How often a command the TPM answered with TPM_RC_RETRY, _YIELDED or
 * _TESTING is sent again before the error goes to the caller (the count
 * ESAPI uses). */
#define TPM_SUBMIT_MAX 5

/* No handle: transient objects (0x80..), sessions (0x02.., 0x03..) and
 * persistent objects (0x81..) are never 0. */
#define TPM_NO_HANDLE 0u

/* What this connection saw at an auth key slot. Neither flag: unknown
 * (ask the TPM). present: no lookup before a signature. absent: a lookup or
 * our own eviction found it empty, so an import into it needs no lookup and
 * protects no old key. Someone else writing the slot behind our back makes
 * a command fail, which resets what we know. */
struct key_seen {
        bool present, absent;
};

struct tpm {
        TSS2_TCTI_CONTEXT *tcti;
        TSS2_SYS_CONTEXT *sys;
        char tcti_conf[256];
        TPM2B_AUTH endorsement_auth, owner_auth; /* hierarchy passwords, wiped at close */
        uint32_t auth_key_handle;
        struct key_seen key; /* what we know of auth_key_handle */
        /* A second auth key slot (the staging slot of an A/B swap), looked
         * up on demand. */
        uint32_t alt_handle;
        struct key_seen alt;
        /* The DPS challenge key (TPM_AUTH_KEY_TRANSIENT): loaded, never
         * persisted; it signs one registration and is flushed after it. */
        TPM2_HANDLE challenge_key;
        bool keys_cached;
        struct tpm_public ek_pub, srk_pub;
        uint16_t nv_buffer_max;
        unsigned leftovers_flushed;
        const struct tpm_tcti_source *source; /* where tcti came from, if not from tcti_conf */
        bool lost; /* the connection failed mid-command (tpm_lost()): no command is sent on it again */
};


/* ---- errors ------------------------------------------------------------ */

static bool rc_connection_lost(TSS2_RC rc);

_printf_(5, 6) static int seterr(struct tpm_error *err, int r, uint32_t rc, const char *step, const char *fmt, ...) {
        if (err) {
                va_list ap;
                *err = (struct tpm_error){ .rc = rc };
                snprintf(err->step, sizeof(err->step), "%s", step ? step : "");
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
                va_end(ap);
        }
        return r;
}

uint32_t tpm_rc_base(uint32_t rc) {
        uint32_t layer = rc & TSS2_RC_LAYER_MASK;
        uint32_t r = rc & 0xffff;

        /* A resource manager forwards TPM codes in its own layer. */
        if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER)
                return 0;
        if (r & TPM2_RC_FMT1)
                return TPM2_RC_FMT1 | (r & 0x3f); /* drop the handle/session/parameter number */
        return r & 0xfff;
}

int tpm_error_from_rc(uint32_t rc, const char *step, struct tpm_error *err) {
        const char *dec = Tss2_RC_Decode(rc);
        uint32_t layer = rc & TSS2_RC_LAYER_MASK;
        uint32_t base = tpm_rc_base(rc);

        if (layer == TSS2_TCTI_RC_LAYER)
                return seterr(err, -EIO, rc, step,
                              "%s failed: lost the connection to the TPM (0x%x %s); check that the TPM (or swtpm) is "
                              "still there and that no other process holds it",
                              step, rc, dec);
        if (layer == TSS2_SYS_RC_LAYER && rc_connection_lost(rc))
                return seterr(err, -EIO, rc, step,
                              "%s failed: lost the connection to the TPM: its answer does not belong to the command "
                              "(0x%x %s; a response lost or out of sequence)",
                              step, rc, dec);
        switch (base) {
        case 0:
                break;
        case TPM2_RC_LOCKOUT:
                return seterr(err, -EPERM, rc, step,
                              "%s failed: the TPM is in dictionary-attack lockout (0x%x %s); wait for the lockout "
                              "recovery time (tpmidctl check shows it) or clear it with 'tpm2_dictionarylockout -c' "
                              "and the lockout password",
                              step, rc, dec);
        case TPM2_RC_OBJECT_MEMORY:
        case TPM2_RC_SESSION_MEMORY:
                return seterr(err, -ENOSPC, rc, step,
                              "%s failed: the TPM has no free transient slots (0x%x %s); another program left objects "
                              "loaded: run 'tpm2_flushcontext -t' or use the kernel resource manager /dev/tpmrm0",
                              step, rc, dec);
        case TPM2_RC_NV_SPACE:
                return seterr(err, -ENOSPC, rc, step,
                              "%s failed: the TPM's persistent storage is full (0x%x %s); remove unused persistent "
                              "objects with 'tpm2_evictcontrol'",
                              step, rc, dec);
        case TPM2_RC_BAD_AUTH:
        case TPM2_RC_AUTH_FAIL:
                return seterr(err, -EACCES, rc, step,
                              "%s failed: the TPM rejected the password (0x%x %s); set endorsement and owner in "
                              "[tpm.hierarchy_authorization] of the configuration to the TPM's hierarchy passwords",
                              step, rc, dec);
        case TPM2_RC_HIERARCHY:
        case TPM2_RC_DISABLED:
                return seterr(err, -EACCES, rc, step,
                              "%s failed: the TPM hierarchy is disabled (0x%x %s); enable the TPM's storage and "
                              "endorsement hierarchies in the firmware setup",
                              step, rc, dec);
        case TPM2_RC_INITIALIZE:
                return seterr(err, -EIO, rc, step,
                              "%s failed: the TPM was not started (0x%x %s); the firmware or swtpm must send "
                              "TPM2_Startup (swtpm: --flags startup-clear)",
                              step, rc, dec);
        case TPM2_RC_RETRY:
        case TPM2_RC_TESTING:
        case TPM2_RC_YIELDED:
        case TPM2_RC_NV_RATE:
        case TPM2_RC_NV_UNAVAILABLE:
                return seterr(err, -EAGAIN, rc, step, "%s failed: the TPM is busy (0x%x %s); try again later", step,
                              rc, dec);
        case TPM2_RC_FAILURE:
                return seterr(err, -EIO, rc, step,
                              "%s failed: the TPM is in failure mode (0x%x %s); it needs a reboot or a firmware fix",
                              step, rc, dec);
        default:
                break;
        }
        if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER &&
            (rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_MEMORY)
                return seterr(err, -ENOMEM, rc, step, "%s failed: out of memory (0x%x %s)", step, rc, dec);
        return seterr(err, -EIO, rc, step, "%s failed with 0x%x (%s)", step, rc, dec);
}

/* The hierarchy whose password authorised a command, for the sentence. */
enum hierarchy { HIERARCHY_ENDORSEMENT, HIERARCHY_OWNER };

/* tpm_error_from_rc() for a command authorised with a hierarchy password: a
 * rejected password names that hierarchy and the configuration key to set
 * (users meet this on TPMs an OS or a previous owner took ownership of). A
 * hierarchy's authorisation is exempt from dictionary-attack protection, so
 * the failure does not count towards lockout; we still stop at the first one
 * and never retry with another password. */
static int hierarchy_error(TSS2_RC rc, const char *step, enum hierarchy h, struct tpm_error *err) {
        uint32_t base = tpm_rc_base(rc);
        const char *name = h == HIERARCHY_OWNER ? "owner" : "endorsement";
        char letter = h == HIERARCHY_OWNER ? 'o' : 'e';

        if (base == TPM2_RC_BAD_AUTH || base == TPM2_RC_AUTH_FAIL)
                return seterr(err, -EACCES, rc, step,
                              "%s failed: the TPM rejected the %s hierarchy password (0x%x %s); set %s in "
                              "[tpm.hierarchy_authorization] of the configuration to the TPM's %s password (the "
                              "one 'tpm2_changeauth -c %c' set), or to \"\" if it has none",
                              step, name, rc, Tss2_RC_Decode(rc), name, name, letter);
        return tpm_error_from_rc(rc, step, err);
}

static bool rc_is(TSS2_RC rc, uint32_t base) {
        return rc != TSS2_RC_SUCCESS && tpm_rc_base(rc) == base;
}

/* ---- opening ----------------------------------------------------------- */

/* The loader only says "IO failure"; find out why by trying what the TCTI
 * tried, so the one sentence can name the fix. */
static int explain_tcti_failure(const char *conf, uint32_t rc, struct tpm_error *err) {
        const char *colon = strchr(conf, ':');
        size_t nl = colon ? (size_t)(colon - conf) : strlen(conf);
        const char *arg = colon ? colon + 1 : "";
        char name[64];

        snprintf(name, sizeof(name), "%.*s", (int)(nl < sizeof(name) ? nl : sizeof(name) - 1), conf);
        if (streq(name, "device") || startswith(name, "libtss2-tcti-device")) {
                const char *path = *arg ? arg : "/dev/tpm0";
                int fd = open(path, O_RDWR | O_CLOEXEC);
                int e = fd < 0 ? errno : 0;
                if (fd >= 0)
                        close(fd);
                switch (e) {
                case ENOENT:
                case ENODEV:
                case ENXIO:
                        return seterr(err, -ENOENT, rc, "Tss2_TctiLdr_Initialize",
                                      "no TPM at %s: is the tpm_tis/tpm_crb driver loaded? set [tpm] tcti=... for "
                                      "another TPM",
                                      path);
                case EACCES:
                case EPERM:
                        return seterr(err, -EACCES, rc, "Tss2_TctiLdr_Initialize",
                                      "permission denied on %s: add the service user to group tss or install the "
                                      "udev rule that gives group tss the TPM devices",
                                      path);
                case EBUSY:
                        return seterr(err, -EBUSY, rc, "Tss2_TctiLdr_Initialize",
                                      "%s is in use by another process (tpm2-abrmd?): use /dev/tpmrm0, the kernel "
                                      "resource manager",
                                      path);
                default:
                        break;
                }
                return seterr(err, -EIO, rc, "Tss2_TctiLdr_Initialize", "cannot open the TPM at %s (0x%x %s%s%s)",
                              path, rc, Tss2_RC_Decode(rc), e ? ": " : "", e ? strerror(e) : "");
        }
        if (streq(name, "swtpm") || streq(name, "mssim") || startswith(name, "libtss2-tcti-swtpm") ||
            startswith(name, "libtss2-tcti-mssim")) {
                const char *p = strstr(arg, "path=");
                if (p) {
                        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
                        size_t n = strcspn(p + 5, ",");
                        snprintf(path, sizeof(path), "%.*s", (int)(n < sizeof(path) ? n : sizeof(path) - 1), p + 5);
                        struct stat st;
                        if (stat(path, &st) < 0 && errno == ENOENT)
                                return seterr(err, -ENOENT, rc, "Tss2_TctiLdr_Initialize",
                                              "no swtpm socket at %s: is swtpm running? start it or set [tpm] tcti=...",
                                              path);
                        if (stat(path, &st) < 0 && errno == EACCES)
                                return seterr(err, -EACCES, rc, "Tss2_TctiLdr_Initialize",
                                              "permission denied on the swtpm socket %s", path);
                        return seterr(err, -ECONNREFUSED, rc, "Tss2_TctiLdr_Initialize",
                                      "swtpm at %s does not accept connections (0x%x %s): is swtpm running, and is "
                                      "its control socket %s.ctrl there?",
                                      path, rc, Tss2_RC_Decode(rc), path);
                }
                return seterr(err, -ECONNREFUSED, rc, "Tss2_TctiLdr_Initialize",
                              "cannot connect to the TPM simulator '%s' (0x%x %s): is swtpm running on that port?",
                              conf, rc, Tss2_RC_Decode(rc));
        }
        if (streq(name, "tabrmd") || startswith(name, "libtss2-tcti-tabrmd"))
                return seterr(err, -ECONNREFUSED, rc, "Tss2_TctiLdr_Initialize",
                              "cannot reach tpm2-abrmd (0x%x %s): is tpm2-abrmd.service running?", rc,
                              Tss2_RC_Decode(rc));
        if ((rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_NOT_SUPPORTED ||
            (rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_BAD_VALUE)
                return seterr(err, -EINVAL, rc, "Tss2_TctiLdr_Initialize",
                              "unknown or unusable TCTI '%s' (0x%x %s): use e.g. device:/dev/tpmrm0 or "
                              "swtpm:path=SOCKET",
                              conf, rc, Tss2_RC_Decode(rc));
        return seterr(err, -EIO, rc, "Tss2_TctiLdr_Initialize", "cannot open the TCTI '%s' (0x%x %s)", conf, rc,
                      Tss2_RC_Decode(rc));
}

/* The password bytes as given, no terminating NUL (aziot-tpmd sends one;
 * the TPM strips trailing zeros, so both forms authorise the same). */
static int set_hierarchy_auth(TPM2B_AUTH *a, const char *pw, const char *what, struct tpm_error *err) {
        size_t n = pw ? strlen(pw) : 0;

        if (n > TPM_PASSWORD_MAX)
                return seterr(err, -EINVAL, 0, "tpm_open",
                              "the %s hierarchy password is longer than %d bytes, more than a TPM accepts; check %s "
                              "in [tpm.hierarchy_authorization]",
                              what, TPM_PASSWORD_MAX, what);
        a->size = (UINT16)n;
        memcpy(a->buffer, pw ? pw : "", n);
        return 0;
}

/* A password session with the given password (NULL: empty) for the
 * command's one authorised handle. Callers wipe it when the password is a
 * hierarchy's. */
static void password_auth(TSS2L_SYS_AUTH_COMMAND *a, const TPM2B_AUTH *pw) {
        *a = (TSS2L_SYS_AUTH_COMMAND){ .count = 1 };
        a->auths[0].sessionHandle = TPM2_RS_PW;
        if (pw)
                a->auths[0].hmac = *pw;
}

static bool rc_retryable(TSS2_RC rc) {
        uint32_t base = tpm_rc_base(rc);
        return base == TPM2_RC_RETRY || base == TPM2_RC_YIELDED || base == TPM2_RC_TESTING;
}

/* The connection is gone or out of step: a TCTI failure other than "not
 * there yet" (the TPM or swtpm went away, libtss2-tcti-device's read() on
 * /dev/tpmrm0 failed, which is how the kernel reports a TPM timeout), or
 * SAPI finding the stream out of sequence (a response that does not belong
 * to the command, cut short, or SAPI still waiting for the response of a
 * command that failed mid-way: BAD_SEQUENCE, 0x80007, for every later
 * command). Nothing more can be sent on such a connection. */
static bool rc_connection_lost(TSS2_RC rc) {
        switch (rc & TSS2_RC_LAYER_MASK) {
        case TSS2_TCTI_RC_LAYER:
                return (rc & ~TSS2_RC_LAYER_MASK) != TSS2_BASE_RC_TRY_AGAIN;
        case TSS2_SYS_RC_LAYER:
                return rc == TSS2_SYS_RC_BAD_SEQUENCE || rc == TSS2_SYS_RC_MALFORMED_RESPONSE ||
                       rc == TSS2_SYS_RC_INSUFFICIENT_RESPONSE;
        }
        return false;
}

/* Give t->tcti back to where it came from. */
static void close_tcti(struct tpm *t) {
        if (t->source && t->tcti)
                t->source->close(t->source->userdata, t->tcti);
        else if (tcti_swtpm_is(t->tcti))
                t->tcti = tcti_swtpm_free(t->tcti);
        else if (t->tcti)
                Tss2_TctiLdr_Finalize(&t->tcti);
        t->tcti = NULL;
}

bool tpm_lost(const struct tpm *t) {
        return t && t->lost;
}

/* Run a SAPI one-call function, sending it again while the TPM asks for
 * that (SAPI restores the command after a TPM error; ESAPI used to do this
 * for us). After a lost connection nothing is sent: the owner closes the
 * TPM and opens it again (tpm_lost()), and until then every command fails
 * the same way. Needs t in scope. */
#define SYS_CALL(expr)                                                  \
        __extension__({                                                 \
                TSS2_RC rc_ = TSS2_TCTI_RC_IO_ERROR;                    \
                unsigned n_ = 0;                                        \
                if (!t->lost) {                                         \
                        do                                              \
                                rc_ = (expr);                           \
                        while (rc_retryable(rc_) && ++n_ < TPM_SUBMIT_MAX); \
                        if (rc_connection_lost(rc_))                    \
                                t->lost = true;                         \
                }                                                       \
                rc_;                                                    \
        })

/* One fixed property; used for the liveness probe and NV_BUFFER_MAX. */
static int get_fixed_property(struct tpm *t, TPM2_PT prop, uint32_t *ret, const char *step, struct tpm_error *err) {
        TPMS_CAPABILITY_DATA cd = { 0 };
        TPMI_YES_NO more = TPM2_NO;
        TSS2_RC rc = SYS_CALL(Tss2_Sys_GetCapability(t->sys, NULL, TPM2_CAP_TPM_PROPERTIES, prop, 1, &more, &cd, NULL));
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        if (cd.data.tpmProperties.count < 1 || cd.data.tpmProperties.tpmProperty[0].property != prop)
                return seterr(err, -ENOENT, 0, step, "the TPM does not report property 0x%x", prop);
        *ret = cd.data.tpmProperties.tpmProperty[0].value;
        return 0;
}

/* Whether the TCTI goes through a resource manager, which flushes what a
 * client left behind when its connection closes. */
static bool tcti_has_resource_manager(const char *conf) {
        return startswith(conf, "device:/dev/tpmrm") || startswith(conf, "tabrmd");
}

#define TPM_LEFTOVER_SCAN_MAX 64 /* handles per range we look at; swtpm has 3 object and 64 session slots */

/* Flush transient objects and loaded sessions in the TPM. Only the daemon,
 * which owns the TPM, does this at start: after a crash (kill -9 during an
 * import) a TPM without a resource manager keeps the dead run's policy
 * session and objects (the DPS challenge key is such an object on purpose),
 * and a few such crashes exhaust its slots. Two GetCapability: transient
 * objects, and loaded sessions (TPM_HT_LOADED_SESSION lists HMAC and policy
 * sessions alike; saved sessions need a ContextSave, which tpmidd never
 * does). A failure of the first one, which no TPM refuses, is the open's
 * probe failing (-errno, *err). */
static int flush_leftovers(struct tpm *t, struct tpm_error *err) {
        /* The handle-range starts (TPM2_TRANSIENT_FIRST, ...) written out:
         * tss2's macros shift a signed 0x80 into the sign bit (UB). */
        static const TPM2_HANDLE ranges[] = { 0x80000000u, 0x02000000u };
        for (size_t i = 0; i < ELEMENTSOF(ranges); i++) {
                TPMS_CAPABILITY_DATA cd = { 0 };
                TPMI_YES_NO more = TPM2_NO;
                TSS2_RC rc = SYS_CALL(Tss2_Sys_GetCapability(t->sys, NULL, TPM2_CAP_HANDLES, ranges[i],
                                                             TPM_LEFTOVER_SCAN_MAX, &more, &cd, NULL));
                if (rc != TSS2_RC_SUCCESS && i == 0)
                        return tpm_error_from_rc(rc, "TPM2_GetCapability(transient handles)", err);
                if (rc != TSS2_RC_SUCCESS)
                        continue; /* best effort: a TPM that cannot list sessions has none we could flush */
                for (UINT32 k = 0; k < cd.data.handles.count && k < TPM2_MAX_CAP_HANDLES; k++) {
                        TPM2_HANDLE h = cd.data.handles.handle[k];
                        uint32_t type = h >> 24; /* the handle type byte */
                        if (i == 0 ? type != 0x80 : type != 0x02 && type != 0x03)
                                continue;
                        if (Tss2_Sys_FlushContext(t->sys, h) == TSS2_RC_SUCCESS)
                                t->leftovers_flushed++;
                }
        }
        return 0;
}

unsigned tpm_leftovers_flushed(const struct tpm *t) {
        return t ? t->leftovers_flushed : 0;
}

int tpm_open(const struct tpm_options *opts, struct tpm **ret, struct tpm_error *err) {
        const char *conf = opts && opts->tcti && *opts->tcti ? opts->tcti : TPM_DEFAULT_TCTI;
        uint32_t index = opts ? opts->auth_key_index : TPM_AUTH_KEY_INDEX_DEFAULT;
        TSS2_ABI_VERSION abi = TSS2_ABI_VERSION_CURRENT;
        struct tpm *t;
        TSS2_RC rc;
        int r;

        if (!ret)
                return -EINVAL;
        if (index > TPM_AUTH_KEY_INDEX_MAX)
                return seterr(err, -EINVAL, 0, "tpm_open", "auth_key_index 0x%x is out of range (max 0x%x)", index,
                              TPM_AUTH_KEY_INDEX_MAX);
        if (strlen(conf) >= sizeof(t->tcti_conf))
                return seterr(err, -EINVAL, 0, "tpm_open", "the TCTI configuration string is too long");

        t = calloc(1, sizeof(*t));
        if (!t)
                return seterr(err, -ENOMEM, 0, "tpm_open", "out of memory");
        snprintf(t->tcti_conf, sizeof(t->tcti_conf), "%s", conf);
        t->auth_key_handle = TPM_AUTH_KEY_BASE + index;
        r = set_hierarchy_auth(&t->endorsement_auth, opts ? opts->endorsement_auth : NULL, "endorsement", err);
        if (r < 0)
                goto fail;
        r = set_hierarchy_auth(&t->owner_auth, opts ? opts->owner_auth : NULL, "owner", err);
        if (r < 0)
                goto fail;

        /* Never pass NULL here: the loader would then try its default list,
         * including a simulator on localhost, and could silently talk to a
         * TPM that is not the device's. */
        if (opts && opts->tcti_source) {
                r = opts->tcti_source->open(opts->tcti_source->userdata, &t->tcti);
                if (r < 0) {
                        t->tcti = NULL;
                        r = seterr(err, -EIO, 0, "tpm_open", "cannot open the TCTI '%s': %s", t->tcti_conf,
                                   strerror(-r));
                        goto fail;
                }
                t->source = opts->tcti_source;
        } else if (startswith(t->tcti_conf, "swtpm:") || streq(t->tcti_conf, "swtpm")) {
                /* Ours, not libtss2-tcti-swtpm: it keeps its connection
                 * between commands (tcti-swtpm.h says why). */
                r = tcti_swtpm_new(t->tcti_conf[5] == ':' ? t->tcti_conf + 6 : "", &t->tcti);
                if (r < 0) {
                        t->tcti = NULL;
                        r = explain_tcti_failure(t->tcti_conf,
                                                 r == -EINVAL ? TSS2_TCTI_RC_BAD_VALUE : TSS2_TCTI_RC_IO_ERROR, err);
                        goto fail;
                }
        } else {
                rc = Tss2_TctiLdr_Initialize(t->tcti_conf, &t->tcti);
                if (rc != TSS2_RC_SUCCESS) {
                        t->tcti = NULL;
                        r = explain_tcti_failure(t->tcti_conf, rc, err);
                        goto fail;
                }
        }
        /* 0: room for TPM2_MAX_COMMAND_SIZE, which every command we send fits. */
        size_t sz = Tss2_Sys_GetContextSize(0);
        t->sys = calloc(1, sz);
        if (!t->sys) {
                r = seterr(err, -ENOMEM, 0, "tpm_open", "out of memory");
                goto fail;
        }
        rc = Tss2_Sys_Initialize(t->sys, sz, t->tcti, &abi);
        if (rc != TSS2_RC_SUCCESS) {
                free(t->sys);
                t->sys = NULL;
                r = tpm_error_from_rc(rc, "Tss2_Sys_Initialize", err);
                goto fail;
        }

        /* A TCTI may not talk to the TPM before the first command, so "not
         * running" would show up only then: probe now so tpm_open() reports
         * it. The leftover scan's first GetCapability is that probe where
         * there is one; else one fixed property (the manufacturer). */
        if (opts && opts->flush_leftovers && !tcti_has_resource_manager(t->tcti_conf))
                r = flush_leftovers(t, err);
        else {
                uint32_t v = 0;
                r = get_fixed_property(t, TPM2_PT_MANUFACTURER, &v, "TPM2_GetCapability(probe)", err);
        }
        if (r < 0) {
                if (err && (err->rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER)
                        r = explain_tcti_failure(t->tcti_conf, err->rc, err);
                goto fail;
        }
        *ret = t;
        return 0;
fail:
        tpm_close(t);
        return r;
}

struct tpm *tpm_close(struct tpm *t) {
        if (!t)
                return NULL;
        if (t->sys) {
                /* Not left to flush_leftovers of the next run (best effort). */
                if (t->challenge_key != TPM_NO_HANDLE && !t->lost)
                        (void)Tss2_Sys_FlushContext(t->sys, t->challenge_key);
                Tss2_Sys_Finalize(t->sys);
                free(t->sys);
        }
        close_tcti(t);
        explicit_zero(&t->endorsement_auth, sizeof(t->endorsement_auth));
        explicit_zero(&t->owner_auth, sizeof(t->owner_auth));
        free(t);
        return NULL;
}


/* ---- pure helpers ------------------------------------------------------ */

static void ek_template(TPM2B_PUBLIC *p) {
        *p = (TPM2B_PUBLIC){ 0 };
        p->publicArea.type = TPM2_ALG_RSA;
        p->publicArea.nameAlg = TPM2_ALG_SHA256;
        p->publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                         TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                                         TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
        p->publicArea.authPolicy.size = sizeof(ek_policy);
        memcpy(p->publicArea.authPolicy.buffer, ek_policy, sizeof(ek_policy));
        p->publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
        p->publicArea.parameters.rsaDetail.symmetric.keyBits.aes = 128;
        p->publicArea.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
        p->publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
        p->publicArea.parameters.rsaDetail.keyBits = 2048;
        p->publicArea.parameters.rsaDetail.exponent = 0;
        p->publicArea.unique.rsa.size = 256; /* 256 zero bytes: TCG L-1, matches maker EK certs */
}

static void srk_template(TPM2B_PUBLIC *p) {
        *p = (TPM2B_PUBLIC){ 0 };
        p->publicArea.type = TPM2_ALG_RSA;
        p->publicArea.nameAlg = TPM2_ALG_SHA256;
        p->publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                         TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                         TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
        p->publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
        p->publicArea.parameters.rsaDetail.symmetric.keyBits.aes = 128;
        p->publicArea.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
        p->publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
        p->publicArea.parameters.rsaDetail.keyBits = 2048;
        p->publicArea.unique.rsa.size = 256;
}

static int marshal_public(const TPM2B_PUBLIC *p, struct tpm_public *out) {
        size_t off = 0;
        if (Tss2_MU_TPM2B_PUBLIC_Marshal(p, out->buf, sizeof(out->buf), &off) != TSS2_RC_SUCCESS)
                return -EOVERFLOW;
        out->len = off;
        return 0;
}

int tpm_template_public(enum tpm_template which, struct tpm_public *out) {
        TPM2B_PUBLIC p;
        if (!out)
                return -EINVAL;
        switch (which) {
        case TPM_TEMPLATE_EK:
                ek_template(&p);
                return marshal_public(&p, out);
        case TPM_TEMPLATE_SRK:
                srk_template(&p);
                return marshal_public(&p, out);
        }
        return -EINVAL;
}

static const char *alg_article_name(TPMI_ALG_PUBLIC type) {
        switch (type) {
        case TPM2_ALG_RSA:
                return "an RSA key";
        case TPM2_ALG_ECC:
                return "an ECC key";
        case TPM2_ALG_KEYEDHASH:
                return "a keyed-hash (HMAC or data) object";
        case TPM2_ALG_SYMCIPHER:
                return "a symmetric key";
        default:
                return "an object of an unknown type";
        }
}

int tpm_public_check_storage_key(const uint8_t *pub, size_t len, bool want_user_auth, char *why, size_t why_len) {
        TPM2B_PUBLIC p = { 0 };
        size_t off = 0;

        /* tss2 does not compare the size field with what it unmarshalled. */
        if (!pub || len < 2 || (size_t)((pub[0] << 8) | pub[1]) != len - 2 ||
            Tss2_MU_TPM2B_PUBLIC_Unmarshal(pub, len, &off, &p) != TSS2_RC_SUCCESS || off != len) {
                snprintf(why, why_len, "a malformed public area");
                return -EBADMSG;
        }
        const TPMT_PUBLIC *a = &p.publicArea;
        if (a->type != TPM2_ALG_RSA) {
                snprintf(why, why_len, "%s", alg_article_name(a->type));
                return -EBADMSG;
        }
        if (a->parameters.rsaDetail.keyBits != 2048) {
                snprintf(why, why_len, "an RSA-%u key", (unsigned)a->parameters.rsaDetail.keyBits);
                return -EBADMSG;
        }
        TPMA_OBJECT at = a->objectAttributes;
        if (!(at & TPMA_OBJECT_RESTRICTED) || !(at & TPMA_OBJECT_DECRYPT) || (at & TPMA_OBJECT_SIGN_ENCRYPT) ||
            a->parameters.rsaDetail.symmetric.algorithm == TPM2_ALG_NULL) {
                snprintf(why, why_len, "an RSA-2048 key that is not a restricted decryption (storage) key "
                                       "(attributes 0x%08x)",
                         (unsigned)at);
                return -EBADMSG;
        }
        if (want_user_auth && !(at & TPMA_OBJECT_USERWITHAUTH)) {
                snprintf(why, why_len, "an RSA-2048 storage key that needs a policy for use (userWithAuth clear)");
                return -EBADMSG;
        }
        return 0;
}

char *tpm_registration_id(const uint8_t *ek_pub, size_t len) {
        uint8_t md[SHA256_DIGEST_LEN];
        if (!ek_pub)
                return NULL;
        sha256(ek_pub, len, md);
        return hex_encode(md, sizeof(md));
}

char *tpm_registration_id_base32(const uint8_t *ek_pub, size_t len) {
        uint8_t md[SHA256_DIGEST_LEN];
        if (!ek_pub)
                return NULL;
        sha256(ek_pub, len, md);
        return b32_encode_lower_nopad(md, sizeof(md));
}

/* ---- flushing ---------------------------------------------------------- */

/* Flush a transient object, sequence or session; *h becomes TPM_NO_HANDLE.
 * On a path that already failed, a flush failure must not hide the first
 * error: r < 0 is returned unchanged then. */
static int flush(struct tpm *t, TPM2_HANDLE *h, const char *step, int r, struct tpm_error *err) {
        if (*h == TPM_NO_HANDLE)
                return r;
        TSS2_RC rc = SYS_CALL(Tss2_Sys_FlushContext(t->sys, *h));
        *h = TPM_NO_HANDLE;
        if (rc != TSS2_RC_SUCCESS && r >= 0)
                return tpm_error_from_rc(rc, step, err);
        return r;
}

/* ---- EK / SRK ---------------------------------------------------------- */

static int read_public(struct tpm *t, TPM2_HANDLE h, const char *step, struct tpm_public *out,
                       struct tpm_error *err) {
        TPM2B_PUBLIC p = { 0 };
        TPM2B_NAME name = { 0 }, qname = { 0 };
        TSS2_RC rc = SYS_CALL(Tss2_Sys_ReadPublic(t->sys, h, NULL, &p, &name, &qname, NULL));
        if (rc_is(rc, TPM2_RC_HANDLE))
                return seterr(err, -ENOENT, rc, step, "there is no object at 0x%08x", h);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        if (marshal_public(&p, out) < 0)
                return seterr(err, -EOVERFLOW, 0, step, "the public area does not fit %d bytes", TPM_PUBLIC_MAX);
        return 0;
}

struct primary_spec {
        const char *name;     /* "EK" */
        const char *longname; /* "endorsement key" */
        TPM2_HANDLE handle;
        TPMI_RH_HIERARCHY hierarchy;
        enum hierarchy hierarchy_name;
        void (*tmpl)(TPM2B_PUBLIC *);
        bool user_auth;       /* we use it with a password (SRK) or a policy (EK) */
};

static const struct primary_spec ek_spec = {
        "EK", "endorsement key", TPM_EK_HANDLE, TPM2_RH_ENDORSEMENT, HIERARCHY_ENDORSEMENT, ek_template, false,
};
static const struct primary_spec srk_spec = {
        "SRK", "storage root key", TPM_SRK_HANDLE, TPM2_RH_OWNER, HIERARCHY_OWNER, srk_template, true,
};

static const TPM2B_AUTH *hierarchy_auth(const struct tpm *t, enum hierarchy h) {
        return h == HIERARCHY_OWNER ? &t->owner_auth : &t->endorsement_auth;
}

/* Make an object persistent at handle (or, with obj == handle, remove the
 * persistent one): TPM2_EvictControl authorised by the owner password. */
static TSS2_RC evict_control(struct tpm *t, TPM2_HANDLE obj, TPM2_HANDLE handle) {
        TSS2L_SYS_AUTH_COMMAND auth;
        password_auth(&auth, &t->owner_auth);
        TSS2_RC rc = SYS_CALL(Tss2_Sys_EvictControl(t->sys, TPM2_RH_OWNER, obj, &auth, handle, NULL));
        explicit_zero(&auth, sizeof(auth));
        return rc;
}

static int create_primary(struct tpm *t, const struct primary_spec *s, struct tpm_public *pub,
                          struct tpm_error *err) {
        TSS2L_SYS_AUTH_COMMAND auth;
        TPM2B_PUBLIC in, out_pub = { 0 };
        TPM2B_SENSITIVE_CREATE sens = { 0 };
        TPM2B_DATA outside = { 0 };
        TPML_PCR_SELECTION pcrs = { 0 };
        TPM2B_CREATION_DATA cdata = { 0 };
        TPM2B_DIGEST chash = { 0 };
        TPMT_TK_CREATION ticket = { 0 };
        TPM2B_NAME name = { 0 };
        TPM2_HANDLE obj = TPM_NO_HANDLE;
        char step[64];
        TSS2_RC rc;
        int r;

        s->tmpl(&in);
        snprintf(step, sizeof(step), "TPM2_CreatePrimary(%s)", s->name);
        password_auth(&auth, hierarchy_auth(t, s->hierarchy_name));
        rc = SYS_CALL(Tss2_Sys_CreatePrimary(t->sys, s->hierarchy, &auth, &sens, &in, &outside, &pcrs, &obj, &out_pub,
                                             &cdata, &chash, &ticket, &name, NULL));
        explicit_zero(&auth, sizeof(auth));
        if (rc != TSS2_RC_SUCCESS)
                return hierarchy_error(rc, step, s->hierarchy_name, err);
        r = marshal_public(&out_pub, pub);
        if (r < 0) {
                r = seterr(err, r, 0, step, "the new %s's public area does not fit %d bytes", s->name,
                           TPM_PUBLIC_MAX);
                goto out;
        }
        snprintf(step, sizeof(step), "TPM2_EvictControl(%s)", s->name);
        rc = evict_control(t, obj, s->handle);
        if (rc != TSS2_RC_SUCCESS) {
                r = hierarchy_error(rc, step, HIERARCHY_OWNER, err);
                goto out;
        }
        r = 0;
out:
        snprintf(step, sizeof(step), "TPM2_FlushContext(%s)", s->name);
        return flush(t, &obj, step, r, err);
}

static int load_primary(struct tpm *t, const struct primary_spec *s, bool create, struct tpm_public *ret_pub,
                        bool *created, struct tpm_error *err) {
        struct tpm_public pub;
        char step[64], why[160];
        int r;

        snprintf(step, sizeof(step), "TPM2_ReadPublic(%s)", s->name);
        r = read_public(t, s->handle, step, &pub, err);
        if (r == -ENOENT) {
                if (!create)
                        return seterr(err, -ENOENT, err ? err->rc : 0, step,
                                      "there is no %s at 0x%08x yet: run 'tpmidctl tpm info' (or start tpmidd) to "
                                      "create it",
                                      s->longname, s->handle);
                r = create_primary(t, s, &pub, err);
                if (r < 0)
                        return r;
                *created = true;
        } else if (r < 0)
                return r;
        /* The analyzer does not inline the variadic seterr() behind tpm_error_from_rc() and
         * assumes read_public() can fail with r >= 0 and pub unset; it cannot. */
        // NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage)
        r = tpm_public_check_storage_key(pub.buf, pub.len, s->user_auth, why, sizeof(why));
        if (r < 0)
                return seterr(err, -EBADMSG, 0, step,
                              "the object at 0x%08x is %s, not the RSA-2048 %s tpmidd needs; systemd or another TPM "
                              "stack may own it: move it elsewhere or remove it with 'tpm2_evictcontrol -c 0x%08x' if "
                              "nothing uses it",
                              s->handle, why, s->longname, s->handle);
        *ret_pub = pub;
        return 0;
}

static int load_keys(struct tpm *t, bool create, bool *created_ek, bool *created_srk, struct tpm_error *err) {
        struct tpm_public ek_pub, srk_pub;
        bool c_ek = false, c_srk = false;
        int r;

        if (t->keys_cached)
                goto done;
        r = load_primary(t, &ek_spec, create, &ek_pub, &c_ek, err);
        if (r < 0)
                return r;
        r = load_primary(t, &srk_spec, create, &srk_pub, &c_srk, err);
        if (r < 0)
                return r;
        t->ek_pub = ek_pub;
        t->srk_pub = srk_pub;
        t->keys_cached = true;
done:
        if (created_ek)
                *created_ek = c_ek;
        if (created_srk)
                *created_srk = c_srk;
        return 0;
}

int tpm_ensure_primary_keys(struct tpm *t, bool *created_ek, bool *created_srk, struct tpm_error *err) {
        if (!t)
                return -EINVAL;
        return load_keys(t, true, created_ek, created_srk, err);
}

int tpm_get_keys(struct tpm *t, struct tpm_public *ek, struct tpm_public *srk, struct tpm_error *err) {
        if (!t)
                return -EINVAL;
        int r = load_keys(t, false, NULL, NULL, err);
        if (r < 0)
                return r;
        if (ek)
                *ek = t->ek_pub;
        if (srk)
                *srk = t->srk_pub;
        return 0;
}

/* ---- EK certificate ---------------------------------------------------- */

int tpm_read_ek_cert(struct tpm *t, uint8_t **ret, size_t *ret_len, struct tpm_error *err) {
        TPM2B_NV_PUBLIC nvpub = { 0 };
        TPM2B_NAME nvname = { 0 };
        uint8_t *buf = NULL;
        TSS2_RC rc;
        int r;

        if (!t || !ret || !ret_len)
                return -EINVAL;
        rc = SYS_CALL(Tss2_Sys_NV_ReadPublic(t->sys, TPM_EK_CERT_NV_RSA, NULL, &nvpub, &nvname, NULL));
        if (rc_is(rc, TPM2_RC_HANDLE))
                return seterr(err, -ENOENT, 0, "TPM2_NV_ReadPublic(EK certificate)",
                              "the TPM has no RSA EK certificate in NV index 0x%08x", TPM_EK_CERT_NV_RSA);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "TPM2_NV_ReadPublic(EK certificate)", err);
        uint16_t size = nvpub.nvPublic.dataSize;
        TPMA_NV attrs = nvpub.nvPublic.attributes;
        if (size == 0 || !(attrs & TPMA_NV_WRITTEN))
                return seterr(err, -ENOENT, 0, "TPM2_NV_ReadPublic(EK certificate)",
                              "NV index 0x%08x exists but holds no EK certificate", TPM_EK_CERT_NV_RSA);
        /* Makers set AUTHREAD (empty index password) and/or OWNERREAD. */
        bool by_index = attrs & TPMA_NV_AUTHREAD;
        if (t->nv_buffer_max == 0) { /* asked once per connection, and only here */
                uint32_t v = 0;
                if (get_fixed_property(t, TPM2_PT_NV_BUFFER_MAX, &v, "TPM2_GetCapability(NV_BUFFER_MAX)", NULL) < 0)
                        v = 0;
                t->nv_buffer_max = (uint16_t)(v == 0 || v > TPM2_MAX_NV_BUFFER_SIZE ? 512 : v);
        }
        TPMI_RH_NV_AUTH auth_handle = by_index ? TPM_EK_CERT_NV_RSA : TPM2_RH_OWNER;
        buf = malloc(size);
        if (!buf)
                return seterr(err, -ENOMEM, 0, "tpm_read_ek_cert", "out of memory");
        for (uint16_t off = 0; off < size;) {
                uint16_t n = (uint16_t)(size - off < t->nv_buffer_max ? size - off : t->nv_buffer_max);
                TPM2B_MAX_NV_BUFFER data = { 0 };
                TSS2L_SYS_AUTH_COMMAND auth;
                password_auth(&auth, by_index ? NULL : &t->owner_auth);
                rc = SYS_CALL(Tss2_Sys_NV_Read(t->sys, auth_handle, TPM_EK_CERT_NV_RSA, &auth, n, off, &data, NULL));
                explicit_zero(&auth, sizeof(auth));
                if (rc != TSS2_RC_SUCCESS) {
                        r = tpm_error_from_rc(rc, "TPM2_NV_Read(EK certificate)", err);
                        goto out;
                }
                if (data.size != n) {
                        r = seterr(err, -EIO, 0, "TPM2_NV_Read(EK certificate)",
                                   "the TPM returned %u bytes of the EK certificate where %u were asked for",
                                   (unsigned)data.size, (unsigned)n);
                        goto out;
                }
                memcpy(buf + off, data.buffer, n);
                off = (uint16_t)(off + n);
        }
        *ret = TAKE_PTR(buf);
        *ret_len = size;
        r = 0;
out:
        free(buf);
        return r;
}

/* ---- auth key ---------------------------------------------------------- */

/* What was seen at handle: the configured slot, or the one alternative
 * slot (re-pointed, and forgotten, when another is asked for). */
static struct key_seen *key_seen(struct tpm *t, uint32_t handle) {
        if (handle == t->auth_key_handle)
                return &t->key;
        if (t->alt_handle != handle) {
                t->alt = (struct key_seen){ 0 };
                t->alt_handle = handle;
        }
        return &t->alt;
}

/* A signature on a persistent handle needs no lookup first; only the first
 * one asks the TPM whether the key is there, so the caller gets -ENOKEY
 * with a sentence instead of a bare TPM_RC_HANDLE. */
static int resolve_auth_key(struct tpm *t, uint32_t handle, struct tpm_error *err) {
        struct key_seen *seen = key_seen(t, handle);
        if (seen->present)
                return 0;
        struct tpm_public pub;
        int r = read_public(t, handle, "TPM2_ReadPublic(auth key)", &pub, err);
        if (r == -ENOENT) {
                seen->absent = true;
                return seterr(err, -ENOKEY, 0, "TPM2_ReadPublic(auth key)",
                              "there is no auth key at 0x%08x: the device is not provisioned yet", handle);
        }
        if (r < 0)
                return r;
        *seen = (struct key_seen){ .present = true };
        return 0;
}

static int index_to_handle(uint32_t index, uint32_t *handle, struct tpm_error *err) {
        if (index > TPM_AUTH_KEY_INDEX_MAX)
                return seterr(err, -EINVAL, 0, "auth key index", "auth key index 0x%x is out of range (max 0x%x)",
                              index, TPM_AUTH_KEY_INDEX_MAX);
        *handle = TPM_AUTH_KEY_BASE + index;
        return 0;
}

int tpm_has_auth_key(struct tpm *t, bool *present, struct tpm_error *err) {
        if (!t)
                return -EINVAL;
        return tpm_has_auth_key_at(t, t->auth_key_handle - TPM_AUTH_KEY_BASE, present, err);
}

int tpm_has_auth_key_at(struct tpm *t, uint32_t index, bool *present, struct tpm_error *err) {
        uint32_t handle = 0;
        if (!t || !present)
                return -EINVAL;
        int r = index_to_handle(index, &handle, err);
        if (r < 0)
                return r;
        /* Not cached: the key may have been removed by someone else. */
        *key_seen(t, handle) = (struct key_seen){ 0 };
        r = resolve_auth_key(t, handle, err);
        if (r == -ENOKEY) {
                *present = false;
                return 0;
        }
        if (r < 0)
                return r;
        *present = true;
        return 0;
}

int tpm_evict_auth_key_at(struct tpm *t, uint32_t index, bool *evicted, struct tpm_error *err) {
        uint32_t handle = 0;
        struct tpm_public pub;

        if (evicted)
                *evicted = false;
        if (!t)
                return -EINVAL;
        int r = index_to_handle(index, &handle, err);
        if (r < 0)
                return r;
        struct key_seen *seen = key_seen(t, handle);
        if (seen->absent)
                return 0; /* we saw it empty: no command, no NV write */
        if (!seen->present) { /* a key we signed with needs no lookup */
                r = read_public(t, handle, "TPM2_ReadPublic(auth key to remove)", &pub, err);
                if (r == -ENOENT) {
                        seen->absent = true;
                        return 0; /* nothing there: no NV write */
                }
                if (r < 0)
                        return r;
        }
        *seen = (struct key_seen){ 0 };
        TSS2_RC rc = evict_control(t, handle, handle);
        if (rc_is(rc, TPM2_RC_HANDLE)) {
                seen->absent = true; /* gone behind our back: what we wanted */
                return 0;
        }
        if (rc != TSS2_RC_SUCCESS)
                return hierarchy_error(rc, "TPM2_EvictControl(remove auth key)", HIERARCHY_OWNER, err);
        seen->absent = true;
        if (evicted)
                *evicted = true;
        return 0;
}

/* Take the 32-byte HMAC out of d (and wipe it). */
static int hmac_digest(TPM2B_DIGEST *d, uint8_t out[32], const char *step, struct tpm_error *err) {
        int r = 0;
        if (d->size != 32)
                r = seterr(err, -EIO, 0, step, "the TPM returned a %u-byte HMAC instead of 32", (unsigned)d->size);
        else
                memcpy(out, d->buffer, 32);
        explicit_zero(d, sizeof(*d));
        return r;
}

/* The auth keys DPS sends have an empty password; so do HMAC sequences. */
static const TSS2L_SYS_AUTH_COMMAND empty_password = {
        .count = 1,
        .auths = { { .sessionHandle = TPM2_RS_PW } },
};

static int hmac_once(struct tpm *t, TPM2_HANDLE key, const uint8_t *data, size_t len, uint8_t out[32],
                     const char *step, struct tpm_error *err) {
        TPM2B_MAX_BUFFER buf;
        TPM2B_DIGEST d = { 0 };
        buf.size = (UINT16)len;
        memcpy(buf.buffer, data, len);
        TSS2_RC rc = SYS_CALL(Tss2_Sys_HMAC(t->sys, key, &empty_password, &buf, TPM2_ALG_SHA256, &d, NULL));
        explicit_zero(&buf, sizeof(buf));
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        return hmac_digest(&d, out, step, err);
}

static int hmac_sequence(struct tpm *t, TPM2_HANDLE key, const uint8_t *data, size_t len, uint8_t out[32],
                         struct tpm_error *err) {
        TPM2B_AUTH seq_auth = { 0 };
        TPM2B_MAX_BUFFER buf;
        TPM2B_DIGEST d = { 0 };
        TPMT_TK_HASHCHECK ticket = { 0 };
        TPM2_HANDLE seq = TPM_NO_HANDLE;
        TSS2_RC rc;
        int r;

        rc = SYS_CALL(Tss2_Sys_HMAC_Start(t->sys, key, &empty_password, &seq_auth, TPM2_ALG_SHA256, &seq, NULL));
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "TPM2_HMAC_Start", err);
        /* Keep the last (possibly full) chunk for SequenceComplete. */
        while (len > TPM_HMAC_CHUNK) {
                buf.size = TPM_HMAC_CHUNK;
                memcpy(buf.buffer, data, TPM_HMAC_CHUNK);
                rc = SYS_CALL(Tss2_Sys_SequenceUpdate(t->sys, seq, &empty_password, &buf, NULL));
                if (rc != TSS2_RC_SUCCESS) {
                        explicit_zero(&buf, sizeof(buf));
                        r = tpm_error_from_rc(rc, "TPM2_SequenceUpdate", err);
                        return flush(t, &seq, "TPM2_FlushContext(HMAC sequence)", r, err);
                }
                data += TPM_HMAC_CHUNK;
                len -= TPM_HMAC_CHUNK;
        }
        buf.size = (UINT16)len;
        memcpy(buf.buffer, data, len);
        rc = SYS_CALL(Tss2_Sys_SequenceComplete(t->sys, seq, &empty_password, &buf, TPM2_RH_NULL, &d, &ticket, NULL));
        explicit_zero(&buf, sizeof(buf));
        if (rc != TSS2_RC_SUCCESS) {
                r = tpm_error_from_rc(rc, "TPM2_SequenceComplete", err);
                return flush(t, &seq, "TPM2_FlushContext(HMAC sequence)", r, err);
        }
        /* SequenceComplete flushed the sequence object in the TPM. */
        return hmac_digest(&d, out, "TPM2_SequenceComplete", err);
}

static int hmac_any(struct tpm *t, TPM2_HANDLE key, const uint8_t *data, size_t len, uint8_t out[32],
                    struct tpm_error *err) {
        if (len <= TPM_HMAC_CHUNK)
                return hmac_once(t, key, data, len, out, "TPM2_HMAC", err);
        return hmac_sequence(t, key, data, len, out, err);
}

/* What the caller of a signature gets: out on success; a key evicted
 * behind our back becomes -ENOKEY and is looked up again next time. */
static int sign_result(struct tpm *t, uint32_t handle, int r, const struct tpm_error *e, uint8_t md[32],
                       uint8_t out[32], struct tpm_error *err) {
        if (r < 0 && rc_is(e->rc, TPM2_RC_HANDLE)) {
                *key_seen(t, handle) = (struct key_seen){ 0 };
                return seterr(err, -ENOKEY, e->rc, "TPM2_HMAC",
                              "the auth key at 0x%08x is gone: the device needs to be provisioned again", handle);
        }
        if (r < 0) {
                if (err)
                        *err = *e;
                return r;
        }
        memcpy(out, md, 32);
        explicit_zero(md, 32);
        return 0;
}

int tpm_sign(struct tpm *t, const uint8_t *data, size_t len, uint8_t out[32], struct tpm_error *err) {
        if (!t)
                return -EINVAL;
        return tpm_sign_at(t, t->auth_key_handle - TPM_AUTH_KEY_BASE, data, len, out, err);
}

int tpm_sign_at(struct tpm *t, uint32_t index, const uint8_t *data, size_t len, uint8_t out[32],
                struct tpm_error *err) {
        uint8_t md[32];
        uint32_t handle = 0;
        int r;

        if (!t || (!data && len > 0) || !out)
                return -EINVAL;
        struct tpm_error e;
        if (index == TPM_AUTH_KEY_TRANSIENT) {
                if (t->challenge_key == TPM_NO_HANDLE)
                        return seterr(err, -ENOKEY, 0, "TPM2_HMAC(challenge key)",
                                      "no DPS challenge key is loaded on this TPM connection (it was reopened): "
                                      "the registration starts again");
                r = hmac_any(t, t->challenge_key, data ? data : (const uint8_t *)"", len, md, &e);
                if (r < 0 && rc_is(e.rc, TPM2_RC_HANDLE)) {
                        t->challenge_key = TPM_NO_HANDLE; /* flushed behind our back */
                        return seterr(err, -ENOKEY, e.rc, "TPM2_HMAC(challenge key)",
                                      "the DPS challenge key is no longer loaded: the registration starts again");
                }
                if (r < 0) {
                        if (err)
                                *err = e;
                        return r;
                }
                memcpy(out, md, 32);
                explicit_zero(md, 32);
                return 0;
        }
        r = index_to_handle(index, &handle, err);
        if (r < 0)
                return r;
        r = resolve_auth_key(t, handle, err);
        if (r < 0)
                return r;
        r = hmac_any(t, handle, data ? data : (const uint8_t *)"", len, md, &e);
        return sign_result(t, handle, r, &e, md, out, err);
}

/* Refine the sentence for the activation steps: a blob for another TPM
 * fails the TPM's integrity or OAEP checks, which the generic text would
 * call a TPM failure. */
static int import_error(struct tpm *t, TSS2_RC rc, const char *step, struct tpm_error *err) {
        uint32_t base = tpm_rc_base(rc);
        uint32_t v;

        /* libtpms (swtpm) answers a failed RSA-OAEP decryption of the seed
         * with TPM_RC_FAILURE instead of TPM_RC_VALUE; if the TPM still
         * answers, it is not in failure mode and the blob was the problem. */
        if (base == TPM2_RC_FAILURE && get_fixed_property(t, TPM2_PT_MANUFACTURER, &v, "ping", NULL) == 0)
                base = TPM2_RC_VALUE;
        if (base == TPM2_RC_INTEGRITY || base == TPM2_RC_VALUE || base == TPM2_RC_SIZE || base == TPM2_RC_KEY ||
            base == TPM2_RC_ECC_POINT)
                return seterr(err, -EACCES, rc, step,
                              "%s failed (0x%x %s): the authenticationKey was not made for this TPM's endorsement "
                              "key and storage root key; check that the DPS enrollment has this device's "
                              "endorsement key",
                              step, rc, Tss2_RC_Decode(rc));
        if (base == TPM2_RC_BINDING || base == TPM2_RC_ATTRIBUTES || base == TPM2_RC_SCHEME ||
            base == TPM2_RC_HASH || base == TPM2_RC_SYMMETRIC || base == TPM2_RC_TYPE)
                return seterr(err, -EBADMSG, rc, step,
                              "%s failed (0x%x %s): the TPM does not accept the key in the authenticationKey blob",
                              step, rc, Tss2_RC_Decode(rc));
        return tpm_error_from_rc(rc, step, err);
}

#define TPM_IMPORT_CHECK_MSG "tpmidd import check" /* HMAC'd once to prove the new key works */

int tpm_import_auth_key(struct tpm *t, const uint8_t *blob, size_t len, struct tpm_error *err) {
        if (!t)
                return -EINVAL;
        return tpm_import_auth_key_at(t, t->auth_key_handle - TPM_AUTH_KEY_BASE, blob, len, err);
}

/* An import, one TPM command per step (tpm_import_step(); replacing an old
 * key is the one step of two: evict, persist), so that the TPM worker can
 * run a signature between two steps. */
enum import_stage {
        IMPORT_START_SESSION, /* TPM2_StartAuthSession(EK policy) */
        IMPORT_POLICY,        /* TPM2_PolicySecret(endorsement) */
        IMPORT_ACTIVATE,      /* TPM2_ActivateCredential */
        IMPORT_FLUSH_SESSION, /* TPM2_FlushContext(EK policy session) */
        IMPORT_IMPORT,        /* TPM2_Import */
        IMPORT_LOAD,          /* TPM2_Load; a challenge key ends here, loaded */
        IMPORT_LOOKUP,        /* TPM2_ReadPublic(old auth key), when the slot is unknown */
        IMPORT_CHECK,         /* TPM2_HMAC(new auth key check), when an old key is replaced */
        IMPORT_EVICT_OLD,     /* TPM2_EvictControl(remove old auth key), then IMPORT_PERSIST in the same step */
        IMPORT_PERSIST,       /* TPM2_EvictControl(persist auth key) */
        IMPORT_FLUSH_KEY,     /* TPM2_FlushContext(new auth key) */
        IMPORT_FLUSH_CHALLENGE, /* TPM2_FlushContext(challenge key): its registration is over */
        IMPORT_DONE,
};

struct tpm_import_op {
        enum import_stage stage;
        bool transient; /* TPM_AUTH_KEY_TRANSIENT */
        bool replace;   /* an old key is at handle */
        uint32_t handle;
        TPM2B_ID_OBJECT cred;
        TPM2B_ENCRYPTED_SECRET secret, seed;
        TPM2B_PRIVATE dup, priv;
        TPM2B_PUBLIC pub;
        TPM2B_DATA inner;
        TPM2_HANDLE sess, key;
};

int tpm_import_begin(struct tpm *t, uint32_t index, const uint8_t *blob, size_t len, struct tpm_import_op **ret,
                     struct tpm_error *err) {
        struct authblob ab;
        struct authblob_error abe;
        struct tpm_import_op *op;
        size_t off = 0;
        int r;

        if (!t || (!blob && len > 0) || !ret)
                return -EINVAL;
        op = calloc(1, sizeof(*op));
        if (!op)
                return seterr(err, -ENOMEM, 0, "tpm_import_begin", "out of memory");
        op->transient = index == TPM_AUTH_KEY_TRANSIENT;
        if (!op->transient) {
                r = index_to_handle(index, &op->handle, err);
                if (r < 0)
                        goto fail;
        }
        r = authblob_parse(blob, len, &ab, &abe);
        if (r < 0) {
                char msg[sizeof(err->msg)];
                authblob_error_format(&abe, msg, sizeof(msg));
                r = seterr(err, -EBADMSG, 0, "authblob_parse", "%s", msg);
                goto fail;
        }
        const struct authblob_span *el = ab.el;
        op->cred.size = (UINT16)el[AUTHBLOB_CRED_BLOB].body_len;
        memcpy(op->cred.credential, el[AUTHBLOB_CRED_BLOB].body, op->cred.size);
        op->secret.size = (UINT16)el[AUTHBLOB_ENC_SECRET].body_len;
        memcpy(op->secret.secret, el[AUTHBLOB_ENC_SECRET].body, op->secret.size);
        op->dup.size = (UINT16)el[AUTHBLOB_DUPLICATE].body_len;
        memcpy(op->dup.buffer, el[AUTHBLOB_DUPLICATE].body, op->dup.size);
        op->seed.size = (UINT16)el[AUTHBLOB_IN_SYM_SEED].body_len;
        memcpy(op->seed.secret, el[AUTHBLOB_IN_SYM_SEED].body, op->seed.size);
        if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(el[AUTHBLOB_ID_KEY_PUB].raw, el[AUTHBLOB_ID_KEY_PUB].raw_len, &off,
                                           &op->pub) != TSS2_RC_SUCCESS ||
            off != el[AUTHBLOB_ID_KEY_PUB].raw_len) {
                r = seterr(err, -EBADMSG, 0, "Tss2_MU_TPM2B_PUBLIC_Unmarshal",
                           "the authenticationKey blob is malformed: the %s is not a valid TPM2B_PUBLIC",
                           authblob_element_name(AUTHBLOB_ID_KEY_PUB));
                goto fail;
        }
        const TPMT_PUBLIC *pa = &op->pub.publicArea;
        if (pa->type != TPM2_ALG_KEYEDHASH || !(pa->objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) ||
            (pa->parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_HMAC &&
             pa->parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_NULL)) {
                r = seterr(err, -EBADMSG, 0, "Tss2_MU_TPM2B_PUBLIC_Unmarshal",
                           "the authenticationKey blob does not carry an HMAC signing key (it is %s)",
                           alg_article_name(pa->type));
                goto fail;
        }
        /* EK and SRK publics: cached after the start, so no command here. */
        r = load_keys(t, false, NULL, NULL, err);
        if (r < 0)
                goto fail;
        /* A new challenge replaces the previous one (a new registration):
         * the one command outside the steps, and only then. */
        if (op->transient) {
                r = flush(t, &t->challenge_key, "TPM2_FlushContext(old challenge key)", 0, err);
                if (r < 0)
                        goto fail;
        }
        *ret = op;
        return 0;
fail:
        free(op);
        return r;
}

/* Forget what op holds (secrets wiped); with flush, flush it first (after a
 * failure on a live connection). Returns r, or a flush's error if r >= 0. */
static int import_end(struct tpm *t, struct tpm_import_op *op, bool do_flush, int r, struct tpm_error *err) {
        if (do_flush) {
                r = flush(t, &op->sess, "TPM2_FlushContext(EK policy session)", r, err);
                r = flush(t, &op->key, "TPM2_FlushContext(new auth key)", r, err);
        }
        explicit_zero(op, sizeof(*op));
        free(op);
        return r;
}

void tpm_import_abort(struct tpm *t, struct tpm_import_op *op) {
        if (!op)
                return;
        (void)import_end(t, op, t && !t->lost, 0, NULL);
}

/* One TPM command of the import. */
static int import_stage_run(struct tpm *t, struct tpm_import_op *op, struct tpm_error *err) {
        TSS2L_SYS_AUTH_COMMAND auth;
        TSS2_RC rc;
        int r;

        switch (op->stage) {
        case IMPORT_START_SESSION: {
                /* The EK's adminWithPolicy needs PolicySecret(endorsement): an
                 * unsalted, unbound policy session. No parameter encryption:
                 * nothing secret crosses the bus here that is not already
                 * encrypted to the EK/SRK, and no HMAC: the policy has no
                 * PolicyAuthValue. The TPM wants a caller nonce of at least 16
                 * bytes to start a session. */
                TPM2B_NONCE nonce_caller = { .size = 16 }, nonce_tpm = { 0 };
                TPM2B_ENCRYPTED_SECRET no_salt = { 0 };
                TPMT_SYM_DEF sym = { .algorithm = TPM2_ALG_NULL };
                if (getrandom(nonce_caller.buffer, nonce_caller.size, 0) != nonce_caller.size)
                        return seterr(err, -errno ? -errno : -EIO, 0, "getrandom",
                                      "no random bytes for the session nonce");
                rc = SYS_CALL(Tss2_Sys_StartAuthSession(t->sys, TPM2_RH_NULL, TPM2_RH_NULL, NULL, &nonce_caller,
                                                        &no_salt, TPM2_SE_POLICY, &sym, TPM2_ALG_SHA256, &op->sess,
                                                        &nonce_tpm, NULL));
                if (rc != TSS2_RC_SUCCESS) {
                        op->sess = TPM_NO_HANDLE;
                        return tpm_error_from_rc(rc, "TPM2_StartAuthSession(EK policy)", err);
                }
                op->stage = IMPORT_POLICY;
                return 0;
        }
        case IMPORT_POLICY: {
                TPM2B_NONCE no_nonce = { 0 };
                TPM2B_DIGEST no_cphash = { 0 };
                TPM2B_NONCE no_ref = { 0 };
                TPM2B_TIMEOUT timeout = { 0 };
                TPMT_TK_AUTH ticket = { 0 };
                password_auth(&auth, &t->endorsement_auth);
                rc = SYS_CALL(Tss2_Sys_PolicySecret(t->sys, TPM2_RH_ENDORSEMENT, op->sess, &auth, &no_nonce,
                                                    &no_cphash, &no_ref, 0, &timeout, &ticket, NULL));
                explicit_zero(&auth, sizeof(auth));
                if (rc != TSS2_RC_SUCCESS)
                        return hierarchy_error(rc, "TPM2_PolicySecret(endorsement)", HIERARCHY_ENDORSEMENT, err);
                op->stage = IMPORT_ACTIVATE;
                return 0;
        }
        case IMPORT_ACTIVATE: {
                TPM2B_DIGEST cert_info = { 0 };
                /* SRK (empty password), then the EK under the policy session. */
                auth = empty_password;
                auth.count = 2;
                auth.auths[1] = (TPMS_AUTH_COMMAND){ .sessionHandle = op->sess,
                                                     .sessionAttributes = TPMA_SESSION_CONTINUESESSION };
                rc = SYS_CALL(Tss2_Sys_ActivateCredential(t->sys, TPM_SRK_HANDLE, TPM_EK_HANDLE, &auth, &op->cred,
                                                          &op->secret, &cert_info, NULL));
                if (rc != TSS2_RC_SUCCESS)
                        return import_error(t, rc, "TPM2_ActivateCredential", err);
                if (cert_info.size > sizeof(op->inner.buffer)) {
                        explicit_zero(&cert_info, sizeof(cert_info));
                        return seterr(err, -EBADMSG, 0, "TPM2_ActivateCredential",
                                      "the activated credential is %u bytes, too long for an inner wrapper key",
                                      (unsigned)cert_info.size);
                }
                op->inner.size = cert_info.size;
                memcpy(op->inner.buffer, cert_info.buffer, op->inner.size);
                explicit_zero(&cert_info, sizeof(cert_info));
                op->stage = IMPORT_FLUSH_SESSION;
                return 0;
        }
        case IMPORT_FLUSH_SESSION:
                r = flush(t, &op->sess, "TPM2_FlushContext(EK policy session)", 0, err);
                if (r < 0)
                        return r;
                op->stage = IMPORT_IMPORT;
                return 0;
        case IMPORT_IMPORT: {
                /* keyBits follows the key DPS chose (Node/Java/TSS.MSR do the
                 * same; 16 bytes -> AES-128 in practice). No key means no inner
                 * wrapper. */
                TPMT_SYM_DEF_OBJECT wrap = { .algorithm = TPM2_ALG_NULL };
                if (op->inner.size > 0) {
                        wrap.algorithm = TPM2_ALG_AES;
                        wrap.keyBits.aes = (TPMI_AES_KEY_BITS)(8 * op->inner.size);
                        wrap.mode.aes = TPM2_ALG_CFB;
                }
                rc = SYS_CALL(Tss2_Sys_Import(t->sys, TPM_SRK_HANDLE, &empty_password, &op->inner, &op->pub,
                                              &op->dup, &op->seed, &wrap, &op->priv, NULL));
                explicit_zero(&op->inner, sizeof(op->inner));
                if (rc != TSS2_RC_SUCCESS)
                        return import_error(t, rc, "TPM2_Import", err);
                op->stage = IMPORT_LOAD;
                return 0;
        }
        case IMPORT_LOAD: {
                TPM2B_NAME name = { 0 };
                rc = SYS_CALL(Tss2_Sys_Load(t->sys, TPM_SRK_HANDLE, &empty_password, &op->priv, &op->pub, &op->key,
                                            &name, NULL));
                explicit_zero(&op->priv, sizeof(op->priv));
                if (rc != TSS2_RC_SUCCESS) {
                        op->key = TPM_NO_HANDLE;
                        return import_error(t, rc, "TPM2_Load(auth key)", err);
                }
                if (op->transient) {
                        /* Kept loaded, not persisted: no NV write for a key
                         * that signs one registration. Its first signature
                         * (the SAS of the second PUT) is its check. */
                        t->challenge_key = op->key;
                        op->key = TPM_NO_HANDLE;
                        op->stage = IMPORT_DONE;
                        return 0;
                }
                /* Is there an old key to replace? Not asked when this
                 * connection saw the slot empty (the A/B staging slot always
                 * is). */
                struct key_seen *seen = key_seen(t, op->handle);
                op->replace = seen->present;
                op->stage = !seen->present && !seen->absent ? IMPORT_LOOKUP
                            : op->replace                  ? IMPORT_CHECK
                                                           : IMPORT_PERSIST;
                *seen = (struct key_seen){ 0 };
                return 0;
        }
        case IMPORT_LOOKUP: {
                struct tpm_public old;
                r = read_public(t, op->handle, "TPM2_ReadPublic(old auth key)", &old, err);
                if (r < 0 && r != -ENOENT)
                        return r;
                op->replace = r >= 0;
                op->stage = op->replace ? IMPORT_CHECK : IMPORT_PERSIST;
                return 0;
        }
        case IMPORT_CHECK: {
                /* An old key is destroyed next: prove the new one works first. */
                uint8_t md[32];
                r = hmac_once(t, op->key, (const uint8_t *)TPM_IMPORT_CHECK_MSG, strlen(TPM_IMPORT_CHECK_MSG), md,
                              "TPM2_HMAC(new auth key check)", err);
                explicit_zero(md, sizeof(md));
                if (r < 0)
                        return r;
                op->stage = IMPORT_EVICT_OLD;
                return 0;
        }
        case IMPORT_EVICT_OLD:
                /* Point of no return: the new key is loaded and works. Only
                 * now remove the old one, then persist the new one, in one
                 * step: nothing runs between the two, so no signature finds
                 * the slot empty. */
                rc = evict_control(t, op->handle, op->handle);
                if (rc != TSS2_RC_SUCCESS)
                        return hierarchy_error(rc, "TPM2_EvictControl(remove old auth key)", HIERARCHY_OWNER, err);
                op->stage = IMPORT_PERSIST;
                /* fall through */
        case IMPORT_PERSIST:
                rc = evict_control(t, op->key, op->handle);
                if (rc != TSS2_RC_SUCCESS)
                        return hierarchy_error(rc, "TPM2_EvictControl(persist auth key)", HIERARCHY_OWNER, err);
                *key_seen(t, op->handle) = (struct key_seen){ .present = true };
                op->stage = IMPORT_FLUSH_KEY;
                return 0;
        case IMPORT_FLUSH_KEY:
                r = flush(t, &op->key, "TPM2_FlushContext(new auth key)", 0, err);
                if (r < 0)
                        return r;
                op->stage = t->challenge_key != TPM_NO_HANDLE ? IMPORT_FLUSH_CHALLENGE : IMPORT_DONE;
                return 0;
        case IMPORT_FLUSH_CHALLENGE:
                /* The registration the challenge key signed for is over. */
                r = flush(t, &t->challenge_key, "TPM2_FlushContext(challenge key)", 0, err);
                if (r < 0)
                        return r;
                op->stage = IMPORT_DONE;
                return 0;
        case IMPORT_DONE:
                break;
        }
        return 0;
}

int tpm_import_step(struct tpm *t, struct tpm_import_op *op, struct tpm_error *err) {
        if (!t || !op)
                return -EINVAL;
        int r = import_stage_run(t, op, err);
        if (r < 0)
                return import_end(t, op, true, r, err);
        if (op->stage != IMPORT_DONE)
                return 1;
        return import_end(t, op, false, 0, err);
}

int tpm_import_auth_key_at(struct tpm *t, uint32_t index, const uint8_t *blob, size_t len, struct tpm_error *err) {
        struct tpm_import_op *op = NULL;
        int r = tpm_import_begin(t, index, blob, len, &op, err);
        while (r >= 0 && (r = tpm_import_step(t, op, err)) > 0)
                ;
        return r;
}

int tpm_persist_challenge_key_at(struct tpm *t, uint32_t index, struct tpm_error *err) {
        uint32_t handle = 0;
        struct tpm_public old;

        if (!t)
                return -EINVAL;
        int r = index_to_handle(index, &handle, err);
        if (r < 0)
                return r;
        if (t->challenge_key == TPM_NO_HANDLE)
                return seterr(err, -ENOKEY, 0, "TPM2_EvictControl(persist challenge key)",
                              "no DPS challenge key is loaded on this TPM connection (it was reopened): the "
                              "registration starts again");
        struct key_seen *seen = key_seen(t, handle);
        bool replace = seen->present;
        if (!seen->present && !seen->absent) {
                r = read_public(t, handle, "TPM2_ReadPublic(old auth key)", &old, err);
                if (r < 0 && r != -ENOENT)
                        return r;
                replace = r >= 0;
        }
        *seen = (struct key_seen){ 0 };
        TSS2_RC rc;
        if (replace) { /* the challenge key signed DPS's acceptance: it works */
                rc = evict_control(t, handle, handle);
                if (rc != TSS2_RC_SUCCESS)
                        return hierarchy_error(rc, "TPM2_EvictControl(remove old auth key)", HIERARCHY_OWNER, err);
        }
        rc = evict_control(t, t->challenge_key, handle);
        if (rc != TSS2_RC_SUCCESS)
                return hierarchy_error(rc, "TPM2_EvictControl(persist challenge key)", HIERARCHY_OWNER, err);
        r = flush(t, &t->challenge_key, "TPM2_FlushContext(challenge key)", 0, err);
        if (r < 0)
                return r;
        *seen = (struct key_seen){ .present = true };
        return 0;
}

bool tpm_idle(struct tpm *t) {
        if (!t || !t->tcti)
                return false;
        if (t->source)
                return t->source->release && t->source->release(t->source->userdata, t->tcti);
        return tcti_swtpm_is(t->tcti) && tcti_swtpm_release(t->tcti);
}

/* ---- status ------------------------------------------------------------ */

int tpm_da_info(struct tpm *t, struct tpm_da_info *out, struct tpm_error *err) {
        TPMS_CAPABILITY_DATA cd = { 0 };
        TPMI_YES_NO more = TPM2_NO;
        struct tpm_da_info d = { 0 };
        unsigned seen = 0;

        if (!t || !out)
                return -EINVAL;
        /* PT_PERMANENT .. PT_LOCKOUT_RECOVERY are contiguous variable properties. */
        TSS2_RC rc = SYS_CALL(Tss2_Sys_GetCapability(t->sys, NULL, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_PERMANENT,
                                                     TPM2_PT_LOCKOUT_RECOVERY - TPM2_PT_PERMANENT + 1, &more, &cd,
                                                     NULL));
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "TPM2_GetCapability(DA properties)", err);
        for (uint32_t i = 0; i < cd.data.tpmProperties.count && i < TPM2_MAX_TPM_PROPERTIES; i++) {
                const TPMS_TAGGED_PROPERTY *p = &cd.data.tpmProperties.tpmProperty[i];
                switch (p->property) {
                case TPM2_PT_PERMANENT:
                        d.in_lockout = p->value & TPMA_PERMANENT_INLOCKOUT;
                        seen |= 1;
                        break;
                case TPM2_PT_LOCKOUT_COUNTER:
                        d.lockout_counter = p->value;
                        seen |= 2;
                        break;
                case TPM2_PT_MAX_AUTH_FAIL:
                        d.max_auth_fail = p->value;
                        seen |= 4;
                        break;
                case TPM2_PT_LOCKOUT_INTERVAL:
                        d.lockout_interval = p->value;
                        seen |= 8;
                        break;
                case TPM2_PT_LOCKOUT_RECOVERY:
                        d.lockout_recovery = p->value;
                        seen |= 16;
                        break;
                default:
                        break;
                }
        }
        if (seen != 31)
                return seterr(err, -EIO, 0, "TPM2_GetCapability(DA properties)",
                              "the TPM did not report all dictionary-attack properties");
        *out = d;
        return 0;
}

int tpm_ping(struct tpm *t, struct tpm_error *err) {
        uint32_t v;
        if (!t)
                return -EINVAL;
        return get_fixed_property(t, TPM2_PT_MANUFACTURER, &v, "TPM2_GetCapability(ping)", err);
}
