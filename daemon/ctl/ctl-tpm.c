/* tpmidctl tpm info|import|sign: the TPM verbs of the CLI.
 *
 * `tpm info` prints exactly what the enrolment script of the IoT Edge docs
 * prints (registration id = sha256sum of ek.pub, endorsement key = base64 of
 * ek.pub), creating EK and SRK first if the TPM is blank, so a user can paste
 * the values into a DPS individual enrollment. Without --tcti, info asks the
 * running daemon (it owns the TPM) and only opens TPM_DEFAULT_TCTI itself
 * when no daemon answers. import/sign exist for operators
 * and tests: they talk to the TPM directly and need --tcti (or a
 * configuration file naming the TPM), because the daemon owns the TPM while
 * it runs.
 *
 * When tpmidctl opens the TPM itself it takes the hierarchy passwords of an
 * owned TPM from the configuration file ([tpm.hierarchy_authorization]) or
 * from --owner-auth-file/--endorsement-auth-file, never from the command
 * line, which other users see in ps and which lands in shell history. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "ctl-client.h"
#include "config.h"
#include "ctl.h"
#include "provision.h"
#include "state.h"
#include "tpm.h"
#include "util.h"

#define CTL_TPM_BLOB_MAX (64 * 1024)    /* bytes: largest authenticationKey file we read (base64 of ~4 KiB) */
#define CTL_TPM_SIGN_MAX (1024 * 1024)  /* bytes: largest stdin we HMAC in the TPM */
#define CTL_TPM_AUTH_FILE_MAX 1024      /* bytes: largest hierarchy password file (a TPM takes <= 64) */

enum regid_format { REGID_HEX, REGID_BASE32 };

struct tpm_args {
        const char *tcti;
        uint32_t index;
        bool index_given;
        bool json;
        enum regid_format regid;
        const char *file;
        const char *config;           /* -c FILE; NULL = $TPMIDD_CONFIG or CONFIG_DEFAULT_PATH, if it exists */
        const char *owner_auth_file;  /* override [tpm.hierarchy_authorization] owner */
        const char *endorsement_auth_file;
};

/* What tpmidctl opens the TPM with once the command line, the configuration
 * file and the password files are combined. Passwords are heap copies,
 * wiped by tpm_target_done(). */
struct tpm_target {
        char *tcti;             /* NULL = no --tcti and no configuration file */
        uint32_t index;
        char *owner_auth, *endorsement_auth;
        const char *unread_config; /* the default configuration file exists but we may not read it */
};

#define AUTH_OPTIONS_HELP                                                                                  \
        "  -c, --config FILE      configuration file for [tpm] tcti, auth_key_index and\n"                 \
        "                         [tpm.hierarchy_authorization] (default: $TPMIDD_CONFIG,\n"               \
        "                         else " CONFIG_DEFAULT_PATH " if it exists)\n"                            \
        "  --owner-auth-file F    the owner hierarchy password is in file F\n"                             \
        "  --endorsement-auth-file F\n"                                                                   \
        "                         the endorsement hierarchy password is in file F\n"                       \
        "                         (one trailing newline is ignored; these override the configuration)\n"

static void help_info(FILE *f) {
        fputs("Usage: tpmidctl tpm info [--tcti CONF] [-c FILE] [--owner-auth-file F]\n"
              "                        [--endorsement-auth-file F] [--json] [--regid-format hex|base32]\n"
              "\n"
              "Print the registration id and endorsement key to enter in a DPS individual enrollment.\n"
              "Creates the endorsement key (0x81010001) and storage root key (0x81000001) if the TPM\n"
              "has none yet, like the enrolment script of the Azure IoT Edge documentation.\n"
              "\n"
              "  --tcti CONF            TPM to use directly; without it, ask the running tpmidd,\n"
              "                         else use [tpm] tcti of the configuration or " TPM_DEFAULT_TCTI "\n"
              AUTH_OPTIONS_HELP
              "  --json                 JSON with registration_id, endorsement_key, storage_root_key\n"
              "                         and ek_certificate (PEM, if the TPM maker stored one)\n"
              "  --regid-format FORMAT  hex (sha256sum of ek.pub, default) or base32 (old Azure C SDK)\n",
              f);
}

static void help_import(FILE *f) {
        fputs("Usage: tpmidctl tpm import [--tcti CONF] [-c FILE] [--owner-auth-file F]\n"
              "                          [--endorsement-auth-file F] [--auth-key-index N] FILE\n"
              "\n"
              "Import a DPS authenticationKey blob (raw bytes or base64; FILE may be -) as the device's\n"
              "HMAC key at 0x81000000+N (default: the slot tpmidd's state file names, [tpm]\n"
              "auth_key_index or the one after it; else 0x100). The old key stays unless the new one\n"
              "works. Stop tpmidd first: it owns the TPM while it runs.\n"
              "\n"
              "  --tcti CONF            the TPM (default: [tpm] tcti of the configuration file)\n"
              AUTH_OPTIONS_HELP,
              f);
}

static void help_sign(FILE *f) {
        fputs("Usage: tpmidctl tpm sign [--tcti CONF] [-c FILE] [--auth-key-index N] < DATA\n"
              "\n"
              "Print the base64 HMAC-SHA256 of stdin computed by the TPM with the imported key.\n"
              "\n"
              "  --tcti CONF            the TPM (default: [tpm] tcti of the configuration file)\n"
              AUTH_OPTIONS_HELP,
              f);
}

static void help_tpm(FILE *f) {
        fputs("Usage: tpmidctl tpm COMMAND [OPTIONS]\n"
              "\n"
              "  info     registration id and endorsement key (creates EK/SRK if missing)\n"
              "  import   import a DPS authenticationKey blob\n"
              "  sign     HMAC stdin with the imported key\n"
              "\n"
              "'tpmidctl tpm COMMAND --help' describes each command.\n",
              f);
}

static int fail_tpm(const struct tpm_error *e, int code) {
        fprintf(stderr, "tpmidctl: %s\n", e->msg[0] ? e->msg : "TPM operation failed");
        return code;
}

/* fail_tpm() for a command that may have needed a hierarchy password: when
 * the TPM refused one and tpmidctl could not read the configuration that
 * holds them, say so in the same line. */
static int fail_tpm_auth(const struct tpm_target *tg, int r, const struct tpm_error *e, int code) {
        if (r == -EACCES && tg->unread_config && e->rc != 0) {
                fprintf(stderr, "tpmidctl: %s (tpmidctl could not read %s: run it as root, or give the passwords "
                        "with --owner-auth-file/--endorsement-auth-file)\n",
                        e->msg, tg->unread_config);
                return code;
        }
        return fail_tpm(e, code);
}

static int parse_args(int argc, char **argv, struct tpm_args *a, void (*help)(FILE *), bool want_file) {
        enum { OPT_TCTI = 0x100, OPT_JSON, OPT_REGID, OPT_INDEX, OPT_OWNER_FILE, OPT_ENDORSEMENT_FILE };
        static const struct option opts[] = {
                { "help", no_argument, NULL, 'h' },
                { "config", required_argument, NULL, 'c' },
                { "owner-auth-file", required_argument, NULL, OPT_OWNER_FILE },
                { "endorsement-auth-file", required_argument, NULL, OPT_ENDORSEMENT_FILE },
                { "tcti", required_argument, NULL, OPT_TCTI },
                { "json", no_argument, NULL, OPT_JSON },
                { "regid-format", required_argument, NULL, OPT_REGID },
                { "auth-key-index", required_argument, NULL, OPT_INDEX },
                { NULL, 0, NULL, 0 },
        };
        int c;

        *a = (struct tpm_args){ .index = TPM_AUTH_KEY_INDEX_DEFAULT, .regid = REGID_HEX };
        optind = 0; /* full re-initialisation of GNU getopt */
        while ((c = getopt_long(argc, argv, "+hc:", opts, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help(stdout);
                        return 1;
                case 'c':
                        a->config = optarg;
                        break;
                case OPT_OWNER_FILE:
                        a->owner_auth_file = optarg;
                        break;
                case OPT_ENDORSEMENT_FILE:
                        a->endorsement_auth_file = optarg;
                        break;
                case OPT_TCTI:
                        a->tcti = optarg;
                        break;
                case OPT_JSON:
                        a->json = true;
                        break;
                case OPT_REGID:
                        if (streq(optarg, "hex"))
                                a->regid = REGID_HEX;
                        else if (streq(optarg, "base32"))
                                a->regid = REGID_BASE32;
                        else {
                                fprintf(stderr, "tpmidctl: --regid-format must be hex or base32, not '%s'.\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_INDEX: {
                        char *end;
                        errno = 0;
                        unsigned long v = strtoul(optarg, &end, 0);
                        if (errno || end == optarg || *end || v > TPM_AUTH_KEY_INDEX_MAX) {
                                fprintf(stderr, "tpmidctl: --auth-key-index must be a number from 0 to 0x%x.\n",
                                        TPM_AUTH_KEY_INDEX_MAX);
                                return -EINVAL;
                        }
                        a->index = (uint32_t)v;
                        a->index_given = true;
                        break;
                }
                default:
                        help(stderr);
                        return -EINVAL;
                }
        }
        if (want_file) {
                if (optind + 1 != argc) {
                        help(stderr);
                        return -EINVAL;
                }
                a->file = argv[optind];
        } else if (optind != argc) {
                fprintf(stderr, "tpmidctl: unexpected argument '%s'.\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
}

static char *wipe_free(char *s) {
        if (s) {
                explicit_zero(s, strlen(s));
                free(s);
        }
        return NULL;
}

static void tpm_target_done(struct tpm_target *tg) {
        free(tg->tcti);
        tg->owner_auth = wipe_free(tg->owner_auth);
        tg->endorsement_auth = wipe_free(tg->endorsement_auth);
        *tg = (struct tpm_target){ 0 };
}

/* A hierarchy password from a file: the whole file, less one trailing
 * newline (what `echo PASSWORD > FILE` leaves). Returns 0 with *ret (heap;
 * the caller wipes it), or CTL_EXIT_FAILURE after printing why. */
static int read_auth_file(const char *path, const char *hierarchy, char **ret) {
        char *buf = NULL;
        size_t len = 0;
        int r = read_full_file(path, CTL_TPM_AUTH_FILE_MAX, &buf, &len);
        if (r < 0) {
                fprintf(stderr, "tpmidctl: cannot read the %s hierarchy password file %s: %s.\n", hierarchy, path,
                        r == -EFBIG ? "it is larger than a password can be" : strerror(-r));
                return CTL_EXIT_FAILURE;
        }
        if (len > 0 && buf[len - 1] == '\n')
                buf[--len] = 0;
        if (memchr(buf, 0, len)) {
                fprintf(stderr, "tpmidctl: the %s hierarchy password file %s contains a NUL byte; write the "
                        "password as text.\n", hierarchy, path);
                explicit_zero(buf, len);
                free(buf);
                return CTL_EXIT_FAILURE;
        }
        *ret = buf;
        return 0;
}

static int print_config_errors(const char *path, int r, const struct config_diags *diags) {
        size_t shown = 0;
        for (size_t i = 0; i < diags->n; i++) {
                if (diags->items[i].severity != CONFIG_SEVERITY_ERROR)
                        continue;
                _cleanup_free_ char *line = config_format_diag(&diags->items[i]);
                fprintf(stderr, "%s\n", line ? line : "out of memory");
                shown++;
        }
        if (!shown)
                fprintf(stderr, "tpmidctl: cannot read the configuration %s: %s.\n", path, strerror(-r));
        else if (r == -EINVAL) /* the file was read and is wrong (else the diagnostic said why not) */
                fprintf(stderr, "tpmidctl: fix %s ('tpmidctl config check -c %s') or name another file with -c.\n",
                        path, path);
        return CTL_EXIT_CONFIG;
}

uint32_t ctl_serving_key_index(const struct tpmid_config *cfg) {
        _cleanup_free_ char *state_path = NULL;
        struct tpmid_state st;
        if (asprintf(&state_path, "%s/%s", cfg->state_dir, STATE_FILE_NAME) < 0 || state_load(state_path, &st) < 0)
                return cfg->tpm.auth_key_index;
        return prov_slot_key_index(cfg->tpm.auth_key_index, prov_slot_of_state(st.key_slot));
}

/* Combine --tcti, -c and the password files into *tg. The configuration
 * file is optional unless named with -c: the default one may be missing (an
 * unowned TPM needs no passwords) or unreadable to a non-root user (then the
 * TPM's refusal says so). Returns 0, or an exit code after printing why. */
static int tpm_target_resolve(const struct tpm_args *a, struct tpm_target *tg) {
        struct tpmid_config *cfg = NULL;
        struct config_diags diags = { 0 };
        const char *path = a->config ? a->config : config_path_from_env(CONFIG_DEFAULT_PATH);
        bool must_exist = a->config || getenv(CONFIG_ENV_PATH);
        int r, ret = 0;

        *tg = (struct tpm_target){ .index = a->index };
        r = config_load(path, &cfg, &diags);
        /* Without -c or $TPMIDD_CONFIG the default file is optional; an
         * unreadable one is mentioned if a TPM password error follows. */
        if (r == -EACCES && !must_exist)
                tg->unread_config = CONFIG_DEFAULT_PATH;
        else if (r < 0 && !(r == -ENOENT && !must_exist)) {
                ret = print_config_errors(path, r, &diags);
                goto out;
        }
        if (a->tcti || cfg) {
                tg->tcti = strdup(a->tcti ? a->tcti : cfg->tpm.tcti);
                if (!tg->tcti)
                        goto oom;
        }
        if (!a->index_given && cfg)
                tg->index = ctl_serving_key_index(cfg);
        if (a->owner_auth_file) {
                ret = read_auth_file(a->owner_auth_file, "owner", &tg->owner_auth);
                if (ret)
                        goto out;
        } else if (cfg && !(tg->owner_auth = strdup(cfg->tpm.owner_auth)))
                goto oom;
        if (a->endorsement_auth_file) {
                ret = read_auth_file(a->endorsement_auth_file, "endorsement", &tg->endorsement_auth);
                if (ret)
                        goto out;
        } else if (cfg && !(tg->endorsement_auth = strdup(cfg->tpm.endorsement_auth)))
                goto oom;
        goto out;
oom:
        fprintf(stderr, "tpmidctl: out of memory.\n");
        ret = CTL_EXIT_FAILURE;
out:
        config_free(cfg);
        config_diags_free(&diags);
        if (ret)
                tpm_target_done(tg);
        return ret;
}

static int open_tpm(const struct tpm_target *tg, struct tpm **ret) {
        struct tpm_options o = {
                .tcti = tg->tcti ? tg->tcti : TPM_DEFAULT_TCTI,
                .auth_key_index = tg->index,
                .owner_auth = tg->owner_auth,
                .endorsement_auth = tg->endorsement_auth,
        };
        struct tpm_error e = { 0 };
        int r = tpm_open(&o, ret, &e);
        if (r < 0)
                return fail_tpm(&e, CTL_EXIT_NOTPM);
        return 0;
}

/* DER as stored in NV -> PEM. NV areas may be padded after the certificate,
 * so the DER length comes from parsing it. NULL if it is not a certificate. */
static char *der_to_pem(const uint8_t *der, size_t len) {
        const unsigned char *p = der;
        X509 *x = d2i_X509(NULL, &p, (long)len);
        if (!x)
                return NULL;
        X509_free(x);
        BIO *bio = BIO_new(BIO_s_mem());
        if (!bio)
                return NULL;
        char *pem = NULL;
        if (PEM_write_bio(bio, "CERTIFICATE", "", der, (long)(p - der)) > 0) {
                char *data;
                long n = BIO_get_mem_data(bio, &data);
                if (n > 0)
                        pem = strndup(data, (size_t)n);
        }
        BIO_free(bio);
        return pem;
}

/* Ask the running tpmidd for the keys (GET /get_tpm_keys). Returns 0 with
 * ek/srk filled, -ENOENT/-ECONNREFUSED when no daemon listens (the caller
 * then opens the TPM directly), or another -errno after printing one
 * sentence. */
static int tpm_info_via_daemon(struct tpm_public *ek, struct tpm_public *srk) {
        char errbuf[512] = "";
        _cleanup_free_ char *sock = ctl_client_tpmd_socket();
        if (!sock) {
                fprintf(stderr, "tpmidctl: out of memory.\n");
                return -ENOMEM;
        }
        int r = ctl_client_get_tpm_keys(sock, ek, srk, errbuf, sizeof(errbuf));
        if (r == -ENOENT || r == -ECONNREFUSED)
                return r;
        if (r < 0)
                fprintf(stderr, "tpmidctl: %s\n", errbuf[0] ? errbuf : strerror(-r));
        return r;
}

static int verb_info(int argc, char **argv) {
        struct tpm_args a;
        struct tpm_target tg = { 0 };
        struct tpm *t = NULL;
        struct tpm_error e = { 0 };
        struct tpm_public ek, srk;
        _cleanup_free_ char *regid = NULL, *ek64 = NULL, *srk64 = NULL, *pem = NULL;
        _cleanup_free_ uint8_t *cert = NULL;
        size_t cert_len = 0;
        int r, ret;

        r = parse_args(argc, argv, &a, help_info, false);
        if (r != 0)
                return r > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
        r = a.tcti ? -ENOENT : tpm_info_via_daemon(&ek, &srk);
        if (r < 0 && r != -ENOENT && r != -ECONNREFUSED)
                return ctl_exit_from_errno(r);
        if (r < 0) {
                /* No daemon (or --tcti): the TPM is ours; create EK/SRK like the script. */
                ret = tpm_target_resolve(&a, &tg);
                if (ret)
                        return ret;
                ret = open_tpm(&tg, &t);
                if (ret)
                        goto out;
                r = tpm_ensure_primary_keys(t, NULL, NULL, &e);
                if (r >= 0)
                        r = tpm_get_keys(t, &ek, &srk, &e);
                if (r < 0) {
                        ret = fail_tpm_auth(&tg, r, &e, CTL_EXIT_NOTPM);
                        goto out;
                }
        }

        regid = a.regid == REGID_BASE32 ? tpm_registration_id_base32(ek.buf, ek.len)
                                        : tpm_registration_id(ek.buf, ek.len);
        ek64 = b64_encode(ek.buf, ek.len);
        srk64 = b64_encode(srk.buf, srk.len);
        if (!regid || !ek64 || !srk64) {
                fprintf(stderr, "tpmidctl: out of memory.\n");
                ret = CTL_EXIT_FAILURE;
                goto out;
        }
        if (!a.json) {
                printf("Gathering the registration information...\n\nRegistration Id:\n%s\n\nEndorsement Key:\n%s\n",
                       regid, ek64);
                ret = CTL_EXIT_OK;
                goto out;
        }

        /* The daemon API has no EK certificate route. The certificate is
         * public and NV reads do not disturb the daemon's objects, so read it
         * through the kernel resource manager; leave it out if that fails. */
        if (!t && tpm_open(&(struct tpm_options){ .tcti = TPM_DEFAULT_TCTI }, &t, &e) < 0)
                t = NULL;
        r = t ? tpm_read_ek_cert(t, &cert, &cert_len, &e) : -ENOENT;
        if (r < 0 && r != -ENOENT) {
                ret = fail_tpm(&e, CTL_EXIT_NOTPM);
                goto out;
        }
        if (r >= 0) {
                pem = der_to_pem(cert, cert_len);
                if (!pem) {
                        fprintf(stderr, "tpmidctl: NV index 0x%08x does not hold an X.509 certificate.\n",
                                TPM_EK_CERT_NV_RSA);
                        ret = CTL_EXIT_FAILURE;
                        goto out;
                }
        }
        json_t *o = json_pack("{s:s, s:s, s:s}", "registration_id", regid, "endorsement_key", ek64,
                              "storage_root_key", srk64);
        if (o && pem && json_object_set_new(o, "ek_certificate", json_string(pem)) < 0) {
                json_decref(o);
                o = NULL;
        }
        char *s = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        if (!s) {
                fprintf(stderr, "tpmidctl: out of memory.\n");
                ret = CTL_EXIT_FAILURE;
                goto out;
        }
        printf("%s\n", s);
        free(s);
        ret = CTL_EXIT_OK;
out:
        tpm_close(t);
        tpm_target_done(&tg);
        return ret;
}

static int read_input(const char *path, size_t max, char **ret, size_t *ret_len) {
        if (!streq(path, "-"))
                return read_full_file(path, max, ret, ret_len);
        size_t n = 0, cap = 4096;
        char *buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (n == cap) {
                        if (cap >= max) {
                                free(buf);
                                return -EFBIG;
                        }
                        cap = cap * 2 > max ? max : cap * 2;
                        char *nb = realloc(buf, cap + 1);
                        if (!nb) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = nb;
                }
                size_t k = fread(buf + n, 1, cap - n, stdin);
                n += k;
                if (k == 0) {
                        if (ferror(stdin)) {
                                free(buf);
                                return -EIO;
                        }
                        break;
                }
        }
        buf[n] = 0;
        *ret = buf;
        *ret_len = n;
        return 0;
}

/* A blob file holds either the raw bytes or the base64 text from the DPS
 * response (possibly with a trailing newline). Raw blobs start with a zero
 * byte (the ID_OBJECT size is < 256), which is never base64. */
static int decode_blob(char *text, size_t len, uint8_t **ret, size_t *ret_len) {
        size_t n = 0;
        bool b64 = len > 0;
        for (size_t i = 0; i < len; i++) {
                unsigned char ch = (unsigned char)text[i];
                if (ch == '\n' || ch == '\r' || ch == ' ' || ch == '\t')
                        continue;
                if (!(ch == '+' || ch == '/' || ch == '=' || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                      (ch >= 'A' && ch <= 'Z'))) {
                        b64 = false;
                        break;
                }
        }
        if (!b64) {
                uint8_t *raw = malloc(len ? len : 1);
                if (!raw)
                        return -ENOMEM;
                memcpy(raw, text, len);
                *ret = raw;
                *ret_len = len;
                return 0;
        }
        for (size_t i = 0; i < len; i++)
                if (!strchr("\n\r \t", text[i]))
                        text[n++] = text[i];
        return b64_decode(text, n, ret, ret_len);
}

#define OFFLINE_TARGET_READY (-1) /* offline_target(): go on (every exit code is >= 0) */

/* The start of the offline verbs (import, sign): their arguments and the
 * TPM they act on, which must be named (--tcti or [tpm] tcti): the daemon's
 * socket offers neither verb. Returns OFFLINE_TARGET_READY with *tg to
 * release with tpm_target_done(), or the verb's exit code (0 for --help)
 * with nothing to release. */
static int offline_target(int argc, char **argv, const char *verb, void (*help)(FILE *), bool want_file,
                          struct tpm_args *a, struct tpm_target *tg) {
        int r = parse_args(argc, argv, a, help, want_file);
        if (r != 0)
                return r > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
        int ret = tpm_target_resolve(a, tg);
        if (ret)
                return ret;
        if (!tg->tcti) {
                fprintf(stderr, "tpmidctl: tpm %s needs --tcti or a configuration file with [tpm] tcti (-c "
                        "FILE): tpmidd owns the TPM while it runs.\n", verb);
                tpm_target_done(tg);
                return CTL_EXIT_USAGE;
        }
        return OFFLINE_TARGET_READY;
}

static int verb_import(int argc, char **argv) {
        struct tpm_args a;
        struct tpm_target tg = { 0 };
        struct tpm *t = NULL;
        struct tpm_error e = { 0 };
        _cleanup_free_ char *text = NULL;
        _cleanup_free_ uint8_t *blob = NULL;
        size_t len = 0, blen = 0;
        int r, ret;

        ret = offline_target(argc, argv, "import", help_import, true, &a, &tg);
        if (ret != OFFLINE_TARGET_READY)
                return ret;
        r = read_input(a.file, CTL_TPM_BLOB_MAX, &text, &len);
        if (r < 0) {
                fprintf(stderr, "tpmidctl: cannot read %s: %s.\n", a.file, strerror(-r));
                ret = CTL_EXIT_FAILURE;
                goto out;
        }
        r = decode_blob(text, len, &blob, &blen);
        if (r < 0) {
                fprintf(stderr, "tpmidctl: %s is neither a raw authenticationKey blob nor valid base64.\n", a.file);
                ret = CTL_EXIT_FAILURE;
                goto out;
        }
        ret = open_tpm(&tg, &t);
        if (ret)
                goto out;
        r = tpm_import_auth_key(t, blob, blen, &e);
        if (r < 0) {
                /* A refused hierarchy password is the TPM's answer (exit 4); a
                 * blob not made for this TPM is the input's fault (exit 1). */
                bool hierarchy = r == -EACCES && tpm_rc_base(e.rc) != 0 &&
                                 (strstr(e.step, "PolicySecret") || strstr(e.step, "EvictControl"));
                ret = fail_tpm_auth(&tg, r, &e,
                                    !hierarchy && (r == -EBADMSG || r == -EACCES || r == -ENOENT) ? CTL_EXIT_FAILURE
                                                                                                  : CTL_EXIT_NOTPM);
        } else {
                printf("Imported the auth key at 0x%08x.\n", TPM_AUTH_KEY_BASE + tg.index);
                ret = CTL_EXIT_OK;
        }
out:
        if (blob)
                explicit_zero(blob, blen);
        tpm_close(t);
        tpm_target_done(&tg);
        return ret;
}

static int verb_sign(int argc, char **argv) {
        struct tpm_args a;
        struct tpm_target tg = { 0 };
        struct tpm *t = NULL;
        struct tpm_error e = { 0 };
        _cleanup_free_ char *data = NULL;
        uint8_t md[32];
        size_t len = 0;
        int r, ret;

        ret = offline_target(argc, argv, "sign", help_sign, false, &a, &tg);
        if (ret != OFFLINE_TARGET_READY)
                return ret;
        r = read_input("-", CTL_TPM_SIGN_MAX, &data, &len);
        if (r < 0) {
                fprintf(stderr, "tpmidctl: cannot read stdin: %s.\n", strerror(-r));
                ret = CTL_EXIT_FAILURE;
                goto out;
        }
        ret = open_tpm(&tg, &t);
        if (ret)
                goto out;
        r = tpm_sign(t, (const uint8_t *)data, len, md, &e);
        if (r < 0)
                ret = fail_tpm(&e, r == -ENOKEY ? CTL_EXIT_FAILURE : CTL_EXIT_NOTPM);
        else {
                _cleanup_free_ char *s = b64_encode(md, sizeof(md));
                if (!s) {
                        fprintf(stderr, "tpmidctl: out of memory.\n");
                        ret = CTL_EXIT_FAILURE;
                } else {
                        printf("%s\n", s);
                        ret = CTL_EXIT_OK;
                }
        }
out:
        tpm_close(t);
        tpm_target_done(&tg);
        return ret;
}

int ctl_tpm_main(int argc, char **argv) {
        /* The TSS logs its own ERROR lines to stderr; the user gets our one
         * sentence instead. TSS2_LOG set by the user still wins. */
        setenv("TSS2_LOG", "all+NONE", 0);

        if (argc < 2) {
                help_tpm(stderr);
                return CTL_EXIT_USAGE;
        }
        const char *verb = argv[1];
        if (streq(verb, "--help") || streq(verb, "-h") || streq(verb, "help")) {
                help_tpm(stdout);
                return CTL_EXIT_OK;
        }
        if (streq(verb, "info"))
                return verb_info(argc - 1, argv + 1);
        if (streq(verb, "import"))
                return verb_import(argc - 1, argv + 1);
        if (streq(verb, "sign"))
                return verb_sign(argc - 1, argv + 1);
        fprintf(stderr, "tpmidctl: unknown tpm command '%s'. Try 'tpmidctl tpm --help'.\n", verb);
        return CTL_EXIT_USAGE;
}
