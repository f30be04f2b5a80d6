/* The TPM adapter: the only file that includes tss2_esys.h.
 *
 * Every TSS2_RC is converted exactly once, by tpm_error_from_rc() (or a
 * step-specific refinement right next to the call), into a negative errno
 * and a one-sentence struct tpm_error. Transient objects and sessions are
 * flushed on every path and every flush's rc is checked: a direct swtpm
 * connection has only 3 object slots and no resource manager to clean up
 * after us.
 *
 * Hot path: tpm_sign() is one TPM2_HMAC with a password session (no HMAC or
 * salted session: those cost ~2 ms of CPU each) on a cached ESYS_TR. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_sys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "authblob.h"
#include "b64.h"
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

struct tpm {
        TSS2_TCTI_CONTEXT *tcti;
        ESYS_CONTEXT *esys;
        char tcti_conf[256];
        uint32_t auth_key_handle;
        ESYS_TR ek, srk, key; /* cached persistent-object handles, ESYS_TR_NONE until resolved */
        /* A second auth key slot (e.g. the DPS challenge key that is staged
         * while the serving key keeps working), resolved on demand. */
        uint32_t alt_handle;
        ESYS_TR alt_key;
        bool keys_cached;
        struct tpm_public ek_pub, srk_pub;
        uint16_t nv_buffer_max;
        unsigned leftovers_flushed;
        bool can_async;         /* the TCTI has poll handles and honours receive timeouts */
        uint32_t async_handle;  /* the key of the HMAC in flight (tpm_sign_async_start), else 0 */
};

/* ---- errors ------------------------------------------------------------ */

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
        if (layer == TSS2_ESAPI_RC_LAYER && (rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_MEMORY)
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
static int set_hierarchy_auth(ESYS_CONTEXT *esys, ESYS_TR h, const char *pw, const char *what,
                              struct tpm_error *err) {
        TPM2B_AUTH a = { 0 };
        size_t n = pw ? strlen(pw) : 0;

        if (n > TPM_PASSWORD_MAX)
                return seterr(err, -EINVAL, 0, "Esys_TR_SetAuth",
                              "the %s hierarchy password is longer than %d bytes, more than a TPM accepts; check %s "
                              "in [tpm.hierarchy_authorization]",
                              what, TPM_PASSWORD_MAX, what);
        a.size = (UINT16)n;
        memcpy(a.buffer, pw ? pw : "", n);
        TSS2_RC rc = Esys_TR_SetAuth(esys, h, &a);
        explicit_zero(&a, sizeof(a));
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "Esys_TR_SetAuth", err);
        return 0;
}

/* One fixed property; used for the liveness probe and NV_BUFFER_MAX. */
static int get_fixed_property(struct tpm *t, TPM2_PT prop, uint32_t *ret, const char *step, struct tpm_error *err) {
        TPMS_CAPABILITY_DATA *cd = NULL;
        TSS2_RC rc = Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                                        prop, 1, NULL, &cd);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        int r = -ENOENT;
        if (cd->data.tpmProperties.count >= 1 && cd->data.tpmProperties.tpmProperty[0].property == prop) {
                *ret = cd->data.tpmProperties.tpmProperty[0].value;
                r = 0;
        }
        Esys_Free(cd);
        if (r < 0)
                return seterr(err, r, 0, step, "the TPM does not report property 0x%x", prop);
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
 * session and objects, and a few such crashes exhaust its slots. ESAPI has
 * no handle for these objects, so the flush goes through SAPI. */
static void flush_leftovers(struct tpm *t) {
        /* The handle-range starts (TPM2_TRANSIENT_FIRST, ...) written out:
         * tss2's macros shift a signed 0x80 into the sign bit (UB). */
        static const TPM2_HANDLE ranges[] = { 0x80000000u, 0x02000000u, 0x03000000u };
        TSS2_SYS_CONTEXT *sys = NULL;
        if (Esys_GetSysContext(t->esys, &sys) != TSS2_RC_SUCCESS || !sys)
                return;
        for (size_t i = 0; i < ELEMENTSOF(ranges); i++) {
                TPMS_CAPABILITY_DATA *cd = NULL;
                TPMI_YES_NO more = TPM2_NO;
                if (Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, ranges[i],
                                       TPM_LEFTOVER_SCAN_MAX, &more, &cd) != TSS2_RC_SUCCESS)
                        continue; /* best effort: a TPM that cannot list handles has nothing we could flush */
                for (UINT32 k = 0; k < cd->data.handles.count; k++) {
                        TPM2_HANDLE h = cd->data.handles.handle[k];
                        if ((h >> 24) != (ranges[i] >> 24)) /* the handle type byte */
                                continue;
                        if (Tss2_Sys_FlushContext(sys, h) == TSS2_RC_SUCCESS)
                                t->leftovers_flushed++;
                }
                Esys_Free(cd);
        }
}

unsigned tpm_leftovers_flushed(const struct tpm *t) {
        return t ? t->leftovers_flushed : 0;
}

int tpm_open(const struct tpm_options *opts, struct tpm **ret, struct tpm_error *err) {
        const char *conf = opts && opts->tcti && *opts->tcti ? opts->tcti : TPM_DEFAULT_TCTI;
        uint32_t index = opts ? opts->auth_key_index : TPM_AUTH_KEY_INDEX_DEFAULT;
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
        t->ek = t->srk = t->key = t->alt_key = ESYS_TR_NONE;

        /* Never pass NULL here: the loader would then try its default list,
         * including a simulator on localhost, and could silently talk to a
         * TPM that is not the device's. */
        if (startswith(t->tcti_conf, "swtpm:") || streq(t->tcti_conf, "swtpm")) {
                /* Ours, not libtss2-tcti-swtpm: it can wait for a response
                 * without blocking (tcti-swtpm.h says why). */
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
        rc = Esys_Initialize(&t->esys, t->tcti, NULL);
        if (rc != TSS2_RC_SUCCESS) {
                t->esys = NULL;
                r = tpm_error_from_rc(rc, "Esys_Initialize", err);
                goto fail;
        }
        r = set_hierarchy_auth(t->esys, ESYS_TR_RH_ENDORSEMENT, opts ? opts->endorsement_auth : NULL, "endorsement",
                               err);
        if (r < 0)
                goto fail;
        r = set_hierarchy_auth(t->esys, ESYS_TR_RH_OWNER, opts ? opts->owner_auth : NULL, "owner", err);
        if (r < 0)
                goto fail;

        /* The swtpm TCTI connects per command, so "not running" shows up only
         * at the first command: probe now so tpm_open() reports it. */
        uint32_t v = 0;
        r = get_fixed_property(t, TPM2_PT_NV_BUFFER_MAX, &v, "Esys_GetCapability(NV_BUFFER_MAX)", err);
        if (r < 0) {
                if (err && (err->rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER)
                        r = explain_tcti_failure(t->tcti_conf, err->rc, err);
                goto fail;
        }
        t->nv_buffer_max = (uint16_t)(v == 0 || v > TPM2_MAX_NV_BUFFER_SIZE ? 512 : v);
        /* Ours for swtpm; the device TCTI when tss2 was built with async
         * support (Debian's is); not tabrmd or mssim. */
        {
                TSS2_TCTI_POLL_HANDLE h[1];
                size_t n = 1;
                t->can_async = Tss2_Tcti_GetPollHandles(t->tcti, h, &n) == TSS2_RC_SUCCESS;
        }
        if (opts && opts->flush_leftovers && !tcti_has_resource_manager(t->tcti_conf))
                flush_leftovers(t);
        *ret = t;
        return 0;
fail:
        tpm_close(t);
        return r;
}

struct tpm *tpm_close(struct tpm *t) {
        if (!t)
                return NULL;
        if (t->esys) {
                /* Esys_TR_Close only drops ESYS metadata; persistent objects stay. */
                ESYS_TR *trs[] = { &t->ek, &t->srk, &t->key, &t->alt_key };
                for (size_t i = 0; i < ELEMENTSOF(trs); i++)
                        if (*trs[i] != ESYS_TR_NONE)
                                (void)Esys_TR_Close(t->esys, trs[i]);
                Esys_Finalize(&t->esys);
        }
        if (tcti_swtpm_is(t->tcti))
                t->tcti = tcti_swtpm_free(t->tcti);
        else if (t->tcti)
                Tss2_TctiLdr_Finalize(&t->tcti);
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
        uint8_t md[32];
        unsigned mdlen = 0;
        if (!ek_pub || EVP_Digest(ek_pub, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != sizeof(md))
                return NULL;
        return hex_encode(md, sizeof(md));
}

char *tpm_registration_id_base32(const uint8_t *ek_pub, size_t len) {
        uint8_t md[32];
        unsigned mdlen = 0;
        if (!ek_pub || EVP_Digest(ek_pub, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != sizeof(md))
                return NULL;
        return b32_encode_lower_nopad(md, sizeof(md));
}

/* ---- flushing ---------------------------------------------------------- */

/* Flush a transient object, sequence or session; *h becomes ESYS_TR_NONE.
 * On a path that already failed, a flush failure must not hide the first
 * error: r < 0 is returned unchanged then. */
static int flush(struct tpm *t, ESYS_TR *h, const char *step, int r, struct tpm_error *err) {
        if (*h == ESYS_TR_NONE)
                return r;
        TSS2_RC rc = Esys_FlushContext(t->esys, *h);
        if (rc != TSS2_RC_SUCCESS) {
                /* ESYS keeps its node on failure; drop it so we do not reuse it. */
                (void)Esys_TR_Close(t->esys, h);
                *h = ESYS_TR_NONE;
                if (r >= 0)
                        return tpm_error_from_rc(rc, step, err);
                return r;
        }
        *h = ESYS_TR_NONE;
        return r;
}

static void tr_close(struct tpm *t, ESYS_TR *h) {
        if (*h != ESYS_TR_NONE)
                (void)Esys_TR_Close(t->esys, h);
        *h = ESYS_TR_NONE;
}

/* ---- EK / SRK ---------------------------------------------------------- */

/* Resolve a persistent handle. -ENOENT (err filled) if nothing is there. */
static int resolve_persistent(struct tpm *t, TPM2_HANDLE h, const char *step, ESYS_TR *ret, struct tpm_error *err) {
        ESYS_TR tr = ESYS_TR_NONE;
        TSS2_RC rc = Esys_TR_FromTPMPublic(t->esys, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr);
        if (rc_is(rc, TPM2_RC_HANDLE))
                return seterr(err, -ENOENT, rc, step, "there is no object at 0x%08x", h);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        *ret = tr;
        return 0;
}

struct primary_spec {
        const char *name;     /* "EK" */
        const char *longname; /* "endorsement key" */
        TPM2_HANDLE handle;
        ESYS_TR hierarchy;
        enum hierarchy hierarchy_name;
        void (*tmpl)(TPM2B_PUBLIC *);
        bool user_auth;       /* we use it with a password (SRK) or a policy (EK) */
};

static const struct primary_spec ek_spec = {
        "EK", "endorsement key", TPM_EK_HANDLE, ESYS_TR_RH_ENDORSEMENT, HIERARCHY_ENDORSEMENT, ek_template, false,
};
static const struct primary_spec srk_spec = {
        "SRK", "storage root key", TPM_SRK_HANDLE, ESYS_TR_RH_OWNER, HIERARCHY_OWNER, srk_template, true,
};

static int create_primary(struct tpm *t, const struct primary_spec *s, ESYS_TR *ret, struct tpm_public *pub,
                          struct tpm_error *err) {
        TPM2B_PUBLIC in;
        TPM2B_SENSITIVE_CREATE sens = { 0 };
        TPM2B_DATA outside = { 0 };
        TPML_PCR_SELECTION pcrs = { 0 };
        TPM2B_PUBLIC *out_pub = NULL;
        TPM2B_CREATION_DATA *cdata = NULL;
        TPM2B_DIGEST *chash = NULL;
        TPMT_TK_CREATION *ticket = NULL;
        ESYS_TR obj = ESYS_TR_NONE, persisted = ESYS_TR_NONE;
        char step[64];
        TSS2_RC rc;
        int r;

        s->tmpl(&in);
        snprintf(step, sizeof(step), "Esys_CreatePrimary(%s)", s->name);
        rc = Esys_CreatePrimary(t->esys, s->hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sens, &in,
                                &outside, &pcrs, &obj, &out_pub, &cdata, &chash, &ticket);
        Esys_Free(cdata);
        Esys_Free(chash);
        Esys_Free(ticket);
        if (rc != TSS2_RC_SUCCESS) {
                Esys_Free(out_pub);
                return hierarchy_error(rc, step, s->hierarchy_name, err);
        }
        r = marshal_public(out_pub, pub);
        Esys_Free(out_pub);
        if (r < 0) {
                r = seterr(err, r, 0, step, "the new %s's public area does not fit %d bytes", s->name,
                           TPM_PUBLIC_MAX);
                goto out;
        }
        snprintf(step, sizeof(step), "Esys_EvictControl(%s)", s->name);
        rc = Esys_EvictControl(t->esys, ESYS_TR_RH_OWNER, obj, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                               s->handle, &persisted);
        if (rc != TSS2_RC_SUCCESS) {
                r = hierarchy_error(rc, step, HIERARCHY_OWNER, err);
                goto out;
        }
        r = 0;
out:
        snprintf(step, sizeof(step), "Esys_FlushContext(%s)", s->name);
        r = flush(t, &obj, step, r, err);
        if (r < 0) {
                tr_close(t, &persisted);
                return r;
        }
        *ret = persisted;
        return 0;
}

static int read_public(struct tpm *t, ESYS_TR tr, const char *step, struct tpm_public *out, struct tpm_error *err) {
        TPM2B_PUBLIC *p = NULL;
        TSS2_RC rc = Esys_ReadPublic(t->esys, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &p, NULL, NULL);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        int r = marshal_public(p, out);
        Esys_Free(p);
        if (r < 0)
                return seterr(err, r, 0, step, "the public area does not fit %d bytes", TPM_PUBLIC_MAX);
        return 0;
}

static int load_primary(struct tpm *t, const struct primary_spec *s, bool create, ESYS_TR *ret_tr,
                        struct tpm_public *ret_pub, bool *created, struct tpm_error *err) {
        ESYS_TR tr = ESYS_TR_NONE;
        struct tpm_public pub;
        char step[64], why[160];
        int r;

        snprintf(step, sizeof(step), "Esys_TR_FromTPMPublic(%s)", s->name);
        r = resolve_persistent(t, s->handle, step, &tr, err);
        if (r == -ENOENT) {
                if (!create)
                        return seterr(err, -ENOENT, err ? err->rc : 0, step,
                                      "there is no %s at 0x%08x yet: run 'tpmidctl tpm info' (or start tpmidd) to "
                                      "create it",
                                      s->longname, s->handle);
                r = create_primary(t, s, &tr, &pub, err);
                if (r < 0)
                        return r;
                *created = true;
        } else if (r < 0)
                return r;
        else {
                snprintf(step, sizeof(step), "Esys_ReadPublic(%s)", s->name);
                r = read_public(t, tr, step, &pub, err);
                if (r < 0)
                        goto fail;
        }
        /* The analyzer does not inline the variadic seterr() behind tpm_error_from_rc() and
         * assumes read_public() can fail with r >= 0 and pub unset; it cannot. */
        // NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage)
        r = tpm_public_check_storage_key(pub.buf, pub.len, s->user_auth, why, sizeof(why));
        if (r < 0) {
                r = seterr(err, -EBADMSG, 0, step,
                           "the object at 0x%08x is %s, not the RSA-2048 %s tpmidd needs; systemd or another TPM "
                           "stack may own it: move it elsewhere or remove it with 'tpm2_evictcontrol -c 0x%08x' if "
                           "nothing uses it",
                           s->handle, why, s->longname, s->handle);
                goto fail;
        }
        *ret_tr = tr;
        *ret_pub = pub;
        return 0;
fail:
        tr_close(t, &tr);
        return r;
}

static int load_keys(struct tpm *t, bool create, bool *created_ek, bool *created_srk, struct tpm_error *err) {
        ESYS_TR ek = ESYS_TR_NONE, srk = ESYS_TR_NONE;
        struct tpm_public ek_pub, srk_pub;
        bool c_ek = false, c_srk = false;
        int r;

        if (t->keys_cached)
                goto done;
        r = load_primary(t, &ek_spec, create, &ek, &ek_pub, &c_ek, err);
        if (r < 0)
                return r;
        r = load_primary(t, &srk_spec, create, &srk, &srk_pub, &c_srk, err);
        if (r < 0) {
                tr_close(t, &ek);
                return r;
        }
        tr_close(t, &t->ek);
        tr_close(t, &t->srk);
        t->ek = ek;
        t->srk = srk;
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
        ESYS_TR nv = ESYS_TR_NONE;
        TPM2B_NV_PUBLIC *nvpub = NULL;
        uint8_t *buf = NULL;
        TSS2_RC rc;
        int r;

        if (!t || !ret || !ret_len)
                return -EINVAL;
        r = resolve_persistent(t, TPM_EK_CERT_NV_RSA, "Esys_TR_FromTPMPublic(EK certificate)", &nv, err);
        if (r == -ENOENT)
                return seterr(err, -ENOENT, 0, "Esys_TR_FromTPMPublic(EK certificate)",
                              "the TPM has no RSA EK certificate in NV index 0x%08x", TPM_EK_CERT_NV_RSA);
        if (r < 0)
                return r;
        rc = Esys_NV_ReadPublic(t->esys, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nvpub, NULL);
        if (rc != TSS2_RC_SUCCESS) {
                r = tpm_error_from_rc(rc, "Esys_NV_ReadPublic(EK certificate)", err);
                goto out;
        }
        uint16_t size = nvpub->nvPublic.dataSize;
        TPMA_NV attrs = nvpub->nvPublic.attributes;
        if (size == 0 || !(attrs & TPMA_NV_WRITTEN)) {
                r = seterr(err, -ENOENT, 0, "Esys_NV_ReadPublic(EK certificate)",
                           "NV index 0x%08x exists but holds no EK certificate", TPM_EK_CERT_NV_RSA);
                goto out;
        }
        /* Makers set AUTHREAD (empty index password) and/or OWNERREAD. */
        ESYS_TR auth = (attrs & TPMA_NV_AUTHREAD) ? nv : ESYS_TR_RH_OWNER;
        buf = malloc(size);
        if (!buf) {
                r = seterr(err, -ENOMEM, 0, "tpm_read_ek_cert", "out of memory");
                goto out;
        }
        for (uint16_t off = 0; off < size;) {
                uint16_t n = (uint16_t)(size - off < t->nv_buffer_max ? size - off : t->nv_buffer_max);
                TPM2B_MAX_NV_BUFFER *data = NULL;
                rc = Esys_NV_Read(t->esys, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, n, off, &data);
                if (rc != TSS2_RC_SUCCESS) {
                        r = tpm_error_from_rc(rc, "Esys_NV_Read(EK certificate)", err);
                        goto out;
                }
                if (data->size != n) {
                        Esys_Free(data);
                        r = seterr(err, -EIO, 0, "Esys_NV_Read(EK certificate)",
                                   "the TPM returned %u bytes of the EK certificate where %u were asked for",
                                   (unsigned)data->size, (unsigned)n);
                        goto out;
                }
                memcpy(buf + off, data->buffer, n);
                Esys_Free(data);
                off = (uint16_t)(off + n);
        }
        *ret = TAKE_PTR(buf);
        *ret_len = size;
        r = 0;
out:
        free(buf);
        Esys_Free(nvpub);
        tr_close(t, &nv);
        return r;
}

/* ---- auth key ---------------------------------------------------------- */

/* The cache entry for the persistent auth key at handle: the configured
 * slot, or the one alternative slot (re-pointed when another is asked for). */
static ESYS_TR *key_cache(struct tpm *t, uint32_t handle) {
        if (handle == t->auth_key_handle)
                return &t->key;
        if (t->alt_handle != handle) {
                tr_close(t, &t->alt_key);
                t->alt_handle = handle;
        }
        return &t->alt_key;
}

static int resolve_auth_key(struct tpm *t, uint32_t handle, struct tpm_error *err) {
        ESYS_TR *slot = key_cache(t, handle);
        if (*slot != ESYS_TR_NONE)
                return 0;
        int r = resolve_persistent(t, handle, "Esys_TR_FromTPMPublic(auth key)", slot, err);
        if (r == -ENOENT)
                return seterr(err, -ENOKEY, 0, "Esys_TR_FromTPMPublic(auth key)",
                              "there is no auth key at 0x%08x: the device is not provisioned yet", handle);
        return r;
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
        tr_close(t, key_cache(t, handle));
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

/* Take the 32-byte HMAC out of d (and free it). */
static int hmac_digest(TPM2B_DIGEST *d, uint8_t out[32], const char *step, struct tpm_error *err) {
        int r = 0;
        if (d->size != 32)
                r = seterr(err, -EIO, 0, step, "the TPM returned a %u-byte HMAC instead of 32", (unsigned)d->size);
        else
                memcpy(out, d->buffer, 32);
        explicit_zero(d, sizeof(*d));
        Esys_Free(d);
        return r;
}

static int hmac_once(struct tpm *t, ESYS_TR key, const uint8_t *data, size_t len, uint8_t out[32], const char *step,
                     struct tpm_error *err) {
        TPM2B_MAX_BUFFER buf;
        TPM2B_DIGEST *d = NULL;
        buf.size = (UINT16)len;
        memcpy(buf.buffer, data, len);
        TSS2_RC rc = Esys_HMAC(t->esys, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf, TPM2_ALG_SHA256, &d);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        return hmac_digest(d, out, step, err);
}

static int hmac_sequence(struct tpm *t, ESYS_TR key, const uint8_t *data, size_t len, uint8_t out[32],
                         struct tpm_error *err) {
        TPM2B_AUTH seq_auth = { 0 };
        TPM2B_MAX_BUFFER buf;
        TPM2B_DIGEST *d = NULL;
        TPMT_TK_HASHCHECK *ticket = NULL;
        ESYS_TR seq = ESYS_TR_NONE;
        TSS2_RC rc;
        int r;

        rc = Esys_HMAC_Start(t->esys, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &seq_auth, TPM2_ALG_SHA256,
                             &seq);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "Esys_HMAC_Start", err);
        /* Keep the last (possibly full) chunk for SequenceComplete. */
        while (len > TPM_HMAC_CHUNK) {
                buf.size = TPM_HMAC_CHUNK;
                memcpy(buf.buffer, data, TPM_HMAC_CHUNK);
                rc = Esys_SequenceUpdate(t->esys, seq, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf);
                if (rc != TSS2_RC_SUCCESS) {
                        r = tpm_error_from_rc(rc, "Esys_SequenceUpdate", err);
                        return flush(t, &seq, "Esys_FlushContext(HMAC sequence)", r, err);
                }
                data += TPM_HMAC_CHUNK;
                len -= TPM_HMAC_CHUNK;
        }
        buf.size = (UINT16)len;
        memcpy(buf.buffer, data, len);
        rc = Esys_SequenceComplete(t->esys, seq, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf, ESYS_TR_RH_NULL,
                                   &d, &ticket);
        if (rc != TSS2_RC_SUCCESS) {
                r = tpm_error_from_rc(rc, "Esys_SequenceComplete", err);
                return flush(t, &seq, "Esys_FlushContext(HMAC sequence)", r, err);
        }
        /* SequenceComplete flushed the sequence object in the TPM; ESYS drops its node. */
        seq = ESYS_TR_NONE;
        Esys_Free(ticket);
        return hmac_digest(d, out, "Esys_SequenceComplete", err);
}

static int hmac_any(struct tpm *t, ESYS_TR key, const uint8_t *data, size_t len, uint8_t out[32],
                    struct tpm_error *err) {
        if (len <= TPM_HMAC_CHUNK)
                return hmac_once(t, key, data, len, out, "Esys_HMAC", err);
        return hmac_sequence(t, key, data, len, out, err);
}

/* What the caller of a signature gets: out on success; a key evicted
 * behind our back becomes -ENOKEY and its handle is forgotten. */
static int sign_result(struct tpm *t, uint32_t handle, int r, const struct tpm_error *e, uint8_t md[32],
                       uint8_t out[32], struct tpm_error *err) {
        if (r < 0 && rc_is(e->rc, TPM2_RC_HANDLE)) {
                tr_close(t, key_cache(t, handle));
                return seterr(err, -ENOKEY, e->rc, "Esys_HMAC",
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
        r = index_to_handle(index, &handle, err);
        if (r < 0)
                return r;
        r = resolve_auth_key(t, handle, err);
        if (r < 0)
                return r;
        struct tpm_error e;
        r = hmac_any(t, *key_cache(t, handle), data ? data : (const uint8_t *)"", len, md, &e);
        return sign_result(t, handle, r, &e, md, out, err);
}

/* ---- asynchronous HMAC ------------------------------------------------------ */

bool tpm_can_async(const struct tpm *t) {
        return t && t->can_async;
}

/* The descriptor the response of the command in flight arrives on. */
static int poll_fd(struct tpm *t, int *ret_fd, const char *step, struct tpm_error *err) {
        TSS2_TCTI_POLL_HANDLE h[1];
        size_t n = 1;
        TSS2_RC rc = Tss2_Tcti_GetPollHandles(t->tcti, h, &n);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, step, err);
        if (n != 1 || h[0].fd < 0)
                return seterr(err, -EIO, 0, step, "the TCTI has no descriptor to wait on for the TPM's response");
        *ret_fd = h[0].fd;
        return 0;
}

int tpm_sign_async_start(struct tpm *t, const uint32_t *index, const uint8_t *data, size_t len, int *ret_fd,
                         struct tpm_error *err) {
        uint32_t handle = 0;
        if (!t || (!data && len > 0) || !ret_fd || len > TPM_HMAC_CHUNK || t->async_handle)
                return -EINVAL;
        if (!t->can_async)
                return -EWOULDBLOCK;
        int r = index_to_handle(index ? *index : t->auth_key_handle - TPM_AUTH_KEY_BASE, &handle, err);
        if (r < 0)
                return r;
        ESYS_TR *slot = key_cache(t, handle);
        if (*slot == ESYS_TR_NONE)
                return -EWOULDBLOCK; /* resolving the handle is a TPM round trip of its own */

        TPM2B_MAX_BUFFER buf;
        buf.size = (UINT16)len;
        if (len)
                memcpy(buf.buffer, data, len);
        TSS2_RC rc = Esys_HMAC_Async(t->esys, *slot, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf,
                                     TPM2_ALG_SHA256);
        explicit_zero(&buf, sizeof(buf));
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "Esys_HMAC_Async", err);
        r = poll_fd(t, ret_fd, "Esys_HMAC_Async", err);
        if (r < 0) {
                /* Collect the response the blocking way so ESYS is ready for the next command. */
                TPM2B_DIGEST *d = NULL;
                if (Esys_HMAC_Finish(t->esys, &d) == TSS2_RC_SUCCESS)
                        Esys_Free(d);
                return r;
        }
        t->async_handle = handle;
        return 0;
}

int tpm_sign_async_finish(struct tpm *t, uint8_t out[32], int *ret_fd, struct tpm_error *err) {
        if (!t || !out || !ret_fd || !t->async_handle)
                return -EINVAL;
        TPM2B_DIGEST *d = NULL;
        uint8_t md[32];
        struct tpm_error e = { 0 };

        /* Timeout 0 only here: every other call keeps the blocking default. */
        TSS2_RC rc = Esys_SetTimeout(t->esys, TSS2_TCTI_TIMEOUT_NONE);
        if (rc == TSS2_RC_SUCCESS) {
                rc = Esys_HMAC_Finish(t->esys, &d);
                (void)Esys_SetTimeout(t->esys, TSS2_TCTI_TIMEOUT_BLOCK);
        }
        if ((rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_TRY_AGAIN) {
                /* Not all there yet, or ESYS resubmitted the command after
                 * TPM_RC_RETRY/YIELDED (on a new connection with swtpm). */
                int r = poll_fd(t, ret_fd, "Esys_HMAC_Finish", err);
                return r < 0 ? r : -EINPROGRESS;
        }
        uint32_t handle = t->async_handle;
        t->async_handle = 0;
        int r = rc == TSS2_RC_SUCCESS ? hmac_digest(d, md, "Esys_HMAC", &e) : tpm_error_from_rc(rc, "Esys_HMAC", &e);
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

int tpm_import_auth_key_at(struct tpm *t, uint32_t index, const uint8_t *blob, size_t len, struct tpm_error *err) {
        uint32_t handle = 0;
        struct authblob ab;
        struct authblob_error abe;
        TPM2B_ID_OBJECT cred = { 0 };
        TPM2B_ENCRYPTED_SECRET secret = { 0 }, seed = { 0 };
        TPM2B_PRIVATE dup = { 0 };
        TPM2B_PUBLIC pub = { 0 };
        TPM2B_DATA inner = { 0 };
        TPM2B_DIGEST *cert_info = NULL;
        TPM2B_PRIVATE *priv = NULL;
        TPM2B_TIMEOUT *timeout = NULL;
        TPMT_TK_AUTH *ticket = NULL;
        ESYS_TR sess = ESYS_TR_NONE, key = ESYS_TR_NONE, old = ESYS_TR_NONE, persisted = ESYS_TR_NONE;
        uint8_t md[32];
        size_t off = 0;
        TSS2_RC rc;
        int r;

        if (!t || (!blob && len > 0))
                return -EINVAL;
        r = index_to_handle(index, &handle, err);
        if (r < 0)
                return r;
        ESYS_TR *slot = key_cache(t, handle);
        r = authblob_parse(blob, len, &ab, &abe);
        if (r < 0) {
                char msg[sizeof(err->msg)];
                authblob_error_format(&abe, msg, sizeof(msg));
                return seterr(err, -EBADMSG, 0, "authblob_parse", "%s", msg);
        }
        const struct authblob_span *el = ab.el;
        cred.size = (UINT16)el[AUTHBLOB_CRED_BLOB].body_len;
        memcpy(cred.credential, el[AUTHBLOB_CRED_BLOB].body, cred.size);
        secret.size = (UINT16)el[AUTHBLOB_ENC_SECRET].body_len;
        memcpy(secret.secret, el[AUTHBLOB_ENC_SECRET].body, secret.size);
        dup.size = (UINT16)el[AUTHBLOB_DUPLICATE].body_len;
        memcpy(dup.buffer, el[AUTHBLOB_DUPLICATE].body, dup.size);
        seed.size = (UINT16)el[AUTHBLOB_IN_SYM_SEED].body_len;
        memcpy(seed.secret, el[AUTHBLOB_IN_SYM_SEED].body, seed.size);
        if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(el[AUTHBLOB_ID_KEY_PUB].raw, el[AUTHBLOB_ID_KEY_PUB].raw_len, &off, &pub) !=
                    TSS2_RC_SUCCESS ||
            off != el[AUTHBLOB_ID_KEY_PUB].raw_len)
                return seterr(err, -EBADMSG, 0, "Tss2_MU_TPM2B_PUBLIC_Unmarshal",
                              "the authenticationKey blob is malformed: the %s is not a valid TPM2B_PUBLIC",
                              authblob_element_name(AUTHBLOB_ID_KEY_PUB));
        if (pub.publicArea.type != TPM2_ALG_KEYEDHASH || !(pub.publicArea.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) ||
            (pub.publicArea.parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_HMAC &&
             pub.publicArea.parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_NULL))
                return seterr(err, -EBADMSG, 0, "Tss2_MU_TPM2B_PUBLIC_Unmarshal",
                              "the authenticationKey blob does not carry an HMAC signing key (it is %s)",
                              alg_article_name(pub.publicArea.type));

        r = load_keys(t, false, NULL, NULL, err);
        if (r < 0)
                return r;

        /* The EK's adminWithPolicy needs PolicySecret(endorsement). No
         * parameter encryption: nothing secret crosses the bus here that
         * is not already encrypted to the EK/SRK. */
        TPMT_SYM_DEF sym = { .algorithm = TPM2_ALG_NULL };
        rc = Esys_StartAuthSession(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                   NULL, TPM2_SE_POLICY, &sym, TPM2_ALG_SHA256, &sess);
        if (rc != TSS2_RC_SUCCESS) {
                sess = ESYS_TR_NONE;
                r = tpm_error_from_rc(rc, "Esys_StartAuthSession(EK policy)", err);
                goto out;
        }
        rc = Esys_PolicySecret(t->esys, ESYS_TR_RH_ENDORSEMENT, sess, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                               NULL, NULL, NULL, 0, &timeout, &ticket);
        if (rc != TSS2_RC_SUCCESS) {
                r = hierarchy_error(rc, "Esys_PolicySecret(endorsement)", HIERARCHY_ENDORSEMENT, err);
                goto out;
        }
        rc = Esys_ActivateCredential(t->esys, t->srk, t->ek, ESYS_TR_PASSWORD, sess, ESYS_TR_NONE, &cred, &secret,
                                     &cert_info);
        if (rc != TSS2_RC_SUCCESS) {
                r = import_error(t, rc, "Esys_ActivateCredential", err);
                goto out;
        }
        r = flush(t, &sess, "Esys_FlushContext(EK policy session)", 0, err);
        if (r < 0)
                goto out;
        if (cert_info->size > sizeof(inner.buffer)) {
                r = seterr(err, -EBADMSG, 0, "Esys_ActivateCredential", "the activated credential is %u bytes, too "
                           "long for an inner wrapper key", (unsigned)cert_info->size);
                goto out;
        }
        inner.size = cert_info->size;
        memcpy(inner.buffer, cert_info->buffer, inner.size);

        /* keyBits follows the key DPS chose (Node/Java/TSS.MSR do the same;
         * 16 bytes -> AES-128 in practice). No key means no inner wrapper. */
        TPMT_SYM_DEF_OBJECT wrap = { .algorithm = TPM2_ALG_NULL };
        if (inner.size > 0) {
                wrap.algorithm = TPM2_ALG_AES;
                wrap.keyBits.aes = (TPMI_AES_KEY_BITS)(8 * inner.size);
                wrap.mode.aes = TPM2_ALG_CFB;
        }
        rc = Esys_Import(t->esys, t->srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &inner, &pub, &dup, &seed,
                         &wrap, &priv);
        if (rc != TSS2_RC_SUCCESS) {
                r = import_error(t, rc, "Esys_Import", err);
                goto out;
        }
        rc = Esys_Load(t->esys, t->srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, priv, &pub, &key);
        if (rc != TSS2_RC_SUCCESS) {
                key = ESYS_TR_NONE;
                r = import_error(t, rc, "Esys_Load(auth key)", err);
                goto out;
        }
        r = hmac_once(t, key, (const uint8_t *)TPM_IMPORT_CHECK_MSG, strlen(TPM_IMPORT_CHECK_MSG), md,
                      "Esys_HMAC(new auth key check)", err);
        explicit_zero(md, sizeof(md));
        if (r < 0)
                goto out;

        /* Point of no return: the new key is loaded and works. Only now
         * remove the old one, then persist the new one at its handle. */
        tr_close(t, slot);
        r = resolve_persistent(t, handle, "Esys_TR_FromTPMPublic(old auth key)", &old, err);
        if (r < 0 && r != -ENOENT)
                goto out;
        if (r >= 0) { /* -ENOENT: no old key to remove */
                ESYS_TR none = ESYS_TR_NONE;
                rc = Esys_EvictControl(t->esys, ESYS_TR_RH_OWNER, old, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                       handle, &none);
                if (rc != TSS2_RC_SUCCESS) {
                        r = hierarchy_error(rc, "Esys_EvictControl(remove old auth key)", HIERARCHY_OWNER, err);
                        goto out;
                }
                tr_close(t, &none);
        }
        rc = Esys_EvictControl(t->esys, ESYS_TR_RH_OWNER, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                               handle, &persisted);
        if (rc != TSS2_RC_SUCCESS) {
                persisted = ESYS_TR_NONE;
                r = hierarchy_error(rc, "Esys_EvictControl(persist auth key)", HIERARCHY_OWNER, err);
                goto out;
        }
        r = 0;
out:
        explicit_zero(&inner, sizeof(inner));
        if (cert_info)
                explicit_zero(cert_info, sizeof(*cert_info));
        Esys_Free(cert_info);
        Esys_Free(priv);
        Esys_Free(timeout);
        Esys_Free(ticket);
        tr_close(t, &old);
        r = flush(t, &sess, "Esys_FlushContext(EK policy session)", r, err);
        r = flush(t, &key, "Esys_FlushContext(new auth key)", r, err);
        if (r < 0) {
                tr_close(t, &persisted);
                return r;
        }
        *slot = persisted;
        return 0;
}

/* ---- status ------------------------------------------------------------ */

int tpm_da_info(struct tpm *t, struct tpm_da_info *out, struct tpm_error *err) {
        TPMS_CAPABILITY_DATA *cd = NULL;
        struct tpm_da_info d = { 0 };
        unsigned seen = 0;

        if (!t || !out)
                return -EINVAL;
        /* PT_PERMANENT .. PT_LOCKOUT_RECOVERY are contiguous variable properties. */
        TSS2_RC rc = Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                                        TPM2_PT_PERMANENT,
                                        TPM2_PT_LOCKOUT_RECOVERY - TPM2_PT_PERMANENT + 1, NULL, &cd);
        if (rc != TSS2_RC_SUCCESS)
                return tpm_error_from_rc(rc, "Esys_GetCapability(DA properties)", err);
        for (uint32_t i = 0; i < cd->data.tpmProperties.count && i < TPM2_MAX_TPM_PROPERTIES; i++) {
                const TPMS_TAGGED_PROPERTY *p = &cd->data.tpmProperties.tpmProperty[i];
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
        Esys_Free(cd);
        if (seen != 31)
                return seterr(err, -EIO, 0, "Esys_GetCapability(DA properties)",
                              "the TPM did not report all dictionary-attack properties");
        *out = d;
        return 0;
}

int tpm_ping(struct tpm *t, struct tpm_error *err) {
        uint32_t v;
        if (!t)
                return -EINVAL;
        return get_fixed_property(t, TPM2_PT_MANUFACTURER, &v, "Esys_GetCapability(ping)", err);
}
