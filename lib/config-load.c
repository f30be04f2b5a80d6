/* Config files on disk: the main file, its drop-ins (<dir>/config.d/NAME.toml,
 * merged in name order), $TPMIDD_CONFIG, and the checks of the files a
 * config names (DPS payload, CA bundle). The only config module that does
 * I/O. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "config-internal.h"

/* ---- the main file and its drop-ins ---- */

static int dropin_filter(const struct dirent *de) {
        size_t n = strlen(de->d_name);
        return de->d_name[0] != '.' && n > 5 && streq(de->d_name + n - 5, ".toml");
}

static int dropin_sort(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

/* Read one file into the context and parse it; a read failure is an error
 * diagnostic. Returns 0 (possibly *ret NULL), -errno of the read, -ENOMEM. */
static int load_one(struct config_ctx *x, const char *path, struct toml_value **ret) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        *ret = NULL;
        int r = read_full_file(path, CONFIG_MAX_FILE_BYTES, &text, &len);
        if (r == -ENOMEM)
                return r;
        if (r == -EFBIG) {
                config_diag_at(x, CONFIG_SEVERITY_ERROR, path, 0, 0, NULL, "the file is larger than %u bytes",
                        (unsigned)CONFIG_MAX_FILE_BYTES);
                return r;
        }
        if (r < 0) {
                config_diag_at(x, CONFIG_SEVERITY_ERROR, path, 0, 0, NULL, "cannot read the file: %s%s", strerror(-r),
                        r == -EACCES ? " (run as root, or pass -c FILE)" : "");
                return r;
        }
        r = config_parse_text(x, text, len, path, ret);
        return r == -ENOMEM ? r : 0;
}

int config_load(const char *path, struct tpmid_config **ret, struct config_diags *diags) {
        struct config_ctx x;
        size_t from = diags->n, errors = diags->n_errors;
        if (config_ctx_init(&x, diags, path) < 0) {
                config_ctx_done(&x);
                return -ENOMEM;
        }
        struct toml_value *root = NULL;
        int r = load_one(&x, path, &root);
        if (r == -ENOMEM || (r < 0 && !root)) {
                if (r != -ENOMEM)
                        config_diags_sort(&x, from);
                config_ctx_done(&x);
                return r;
        }

        /* drop-ins: <dir>/config.d/<name>.toml in name order */
        _cleanup_free_ char *pcopy = strdup(path);
        _cleanup_free_ char *ddir = NULL;
        if (!pcopy) {
                toml_free(root);
                config_ctx_done(&x);
                return -ENOMEM;
        }
        char *slash = strrchr(pcopy, '/');
        if (slash)
                *slash = 0;
        if (asprintf(&ddir, "%s/%s", slash ? (*pcopy ? pcopy : "/") : ".", CONFIG_DROPIN_DIR) < 0) {
                toml_free(root);
                config_ctx_done(&x);
                return -ENOMEM;
        }
        struct dirent **names = NULL;
        int n = scandir(ddir, &names, dropin_filter, dropin_sort);
        if (n < 0 && errno != ENOENT && errno != ENOTDIR)
                config_diag_at(&x, CONFIG_SEVERITY_ERROR, ddir, 0, 0, NULL, "cannot read the drop-in directory: %s",
                        strerror(errno));
        for (int i = 0; i < n; i++) {
                if (i >= CONFIG_MAX_DROPINS) {
                        if (i == CONFIG_MAX_DROPINS)
                                config_diag_at(&x, CONFIG_SEVERITY_ERROR, ddir, 0, 0, NULL,
                                        "more than %u drop-in files; the rest are not read",
                                        (unsigned)CONFIG_MAX_DROPINS);
                        free(names[i]);
                        continue;
                }
                _cleanup_free_ char *dpath = NULL;
                if (asprintf(&dpath, "%s/%s", ddir, names[i]->d_name) < 0)
                        x.oom = true;
                free(names[i]);
                if (x.oom)
                        continue;
                struct toml_value *d = NULL;
                if (load_one(&x, dpath, &d) == -ENOMEM)
                        x.oom = true;
                if (d && root) {
                        if (toml_merge(root, d) < 0)
                                x.oom = true;
                } else
                        toml_free(d);
        }
        free(names);
        if (x.oom) {
                toml_free(root);
                config_ctx_done(&x);
                return -ENOMEM;
        }
        r = config_finish(&x, root, from, errors, ret);
        toml_free(root);
        config_ctx_done(&x);
        return r;
}

const char *config_path_from_env(const char *def) {
        const char *e = getenv(CONFIG_ENV_PATH);
        return e && *e ? e : def;
}

/* ---- checks of the files a config names ---- */

int config_check_files(const struct tpmid_config *c, struct config_diags *diags) {
        struct config_ctx x = {.diags = diags, .origin = c->origin};
        size_t errors = diags->n_errors;
        if (c->provisioning.source == CONFIG_SOURCE_DPS && c->provisioning.payload_path) {
                const struct config_pos *pos = &c->payload_pos;
                _cleanup_free_ char *text = NULL;
                size_t len = 0;
                int r = read_full_file(c->provisioning.payload_path, CONFIG_MAX_PAYLOAD_BYTES, &text, &len);
                if (r == -ENOMEM)
                        return r;
                if (r == -EFBIG)
                        config_diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col, "provisioning.payload.uri",
                                "the DPS payload file %s is larger than %u bytes", c->provisioning.payload_path,
                                (unsigned)CONFIG_MAX_PAYLOAD_BYTES);
                else if (r < 0)
                        config_diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col, "provisioning.payload.uri",
                                "cannot read the DPS payload file %s: %s", c->provisioning.payload_path,
                                strerror(-r));
                else {
                        json_error_t je;
                        json_t *j = json_loadb(text, len, JSON_DECODE_ANY, &je);
                        if (!j)
                                config_diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col,
                                        "provisioning.payload.uri",
                                        "the DPS payload file %s is not JSON: line %d column %d: %s; for "
                                        "example: {\"modelId\": \"dtmi:com:example:Thermostat;1\"}",
                                        c->provisioning.payload_path, je.line, je.column, je.text);
                        json_decref(j);
                }
        }
        if (c->cloud_ca_bundle && access(c->cloud_ca_bundle, R_OK) < 0) {
                const struct config_pos *pos = &c->cloud_ca_bundle_pos;
                config_diag_at(&x, CONFIG_SEVERITY_ERROR, pos->file, pos->line, pos->col, "cloud_ca_bundle",
                        "cannot read cloud_ca_bundle %s: %s; remove the key to use the system trust store",
                        c->cloud_ca_bundle, strerror(errno));
        }
        if (x.oom)
                return -ENOMEM;
        return diags->n_errors > errors ? -EINVAL : 0;
}

