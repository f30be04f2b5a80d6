/* The daemon's status document for tpmidctl. See ctl-status.h. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "config.h"
#include "ctl-client.h"
#include "ctl-status.h"
#include "util.h"

char *ctl_status_identity_socket(void) {
        const char *candidates[] = { config_path_from_env(CONFIG_APPLIED_PATH), CONFIG_DEFAULT_PATH };
        for (size_t i = 0; i < ELEMENTSOF(candidates); i++) {
                struct tpmid_config *c = NULL;
                struct config_diags d = { 0 };
                int r = config_load(candidates[i], &c, &d);
                config_diags_free(&d);
                if (r == 0) {
                        char *s = strdup(c->endpoints.identityd_socket);
                        config_free(c);
                        return s;
                }
                if (r == -ENOMEM)
                        return NULL;
                const char *explicit_path = getenv(CONFIG_ENV_PATH);
                if (explicit_path && *explicit_path)
                        break; /* an explicit file that does not load: no guessing */
        }
        return strdup(CONFIG_DEFAULT_IDENTITYD_SOCKET);
}

int ctl_status_fetch(const char *sock, json_t **ret, char *err, size_t errlen) {
        struct ctl_response resp = { 0 };
        int r = ctl_client_request(sock, "GET", "/status?api-version=" API_VERSION_2020_09_01, NULL, 0, &resp);
        if (r < 0) {
                snprintf(err, errlen, "%s: %s", sock,
                         r == -ENOENT || r == -ECONNREFUSED ? "tpmidd is not running (nothing listens on the socket)"
                         : r == -EACCES ? "permission denied on the socket: run as root (sudo) or as a member of "
                                          "group aziottpm"
                         : r == -ETIMEDOUT ? "tpmidd did not answer in time"
                         : r == -EBADMSG   ? "the answer was not HTTP"
                                           : strerror(-r));
                return r;
        }
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        if (resp.status != 200) {
                const char *m = json_string_value(json_object_get(j, "message"));
                snprintf(err, errlen, "%s: tpmidd answered %d: %s", sock, resp.status, m ? m : resp.body);
                r = resp.status == 401 || resp.status == 403 ? -EACCES : resp.status == 503 ? -EAGAIN : -EIO;
        } else if (!json_is_object(j)) {
                snprintf(err, errlen, "%s: the daemon's status is not a JSON object", sock);
                r = -EBADMSG;
        }
        ctl_response_done(&resp);
        if (r < 0) {
                json_decref(j);
                return r;
        }
        *ret = j;
        return 0;
}

const char *ctl_status_str(json_t *st, const char *obj, const char *key) {
        return json_string_value(json_object_get(json_object_get(st, obj), key));
}

bool ctl_status_provisioning_failed(json_t *st) {
        const char *s = ctl_status_str(st, "provisioning", "state");
        return s && (streq(s, "failed") || streq(s, "failed-permanent"));
}

bool ctl_status_tpm_unavailable(json_t *st) {
        const char *s = ctl_status_str(st, "tpm", "state");
        return s && !streq(s, "ready");
}

void ctl_url_host_port(const char *url, char *buf, size_t len) {
        const char *p = strstr(url, "://");
        p = p ? p + 3 : url;
        size_t n = strcspn(p, "/?#");
        const char *at = memchr(p, '@', n);
        if (at) {
                n -= (size_t)(at + 1 - p);
                p = at + 1;
        }
        /* a port follows the last ':' outside an IPv6 literal's brackets */
        const char *close = memchr(p, ']', n);
        const char *from = close ? close : p;
        const char *colon = memchr(from, ':', n - (size_t)(from - p));
        if (colon)
                snprintf(buf, len, "%.*s", (int)n, p);
        else
                snprintf(buf, len, "%.*s:443", (int)n, p);
}

static bool contains_ci(const char *hay, const char *needle) {
        return hay && strcasestr(hay, needle) != NULL;
}

bool ctl_status_explain(json_t *last, const char *endpoint, char *buf, size_t len, const char **what,
                        const char **fix) {
        if (!json_is_object(last))
                return false;
        const char *status = json_string_value(json_object_get(last, "status"));
        const char *msg = json_string_value(json_object_get(last, "message"));
        json_t *jc = json_object_get(last, "errorCode");
        long long code = json_is_integer(jc) ? (long long)json_integer_value(jc) : 0;
        if (!status || streq(status, "assigned"))
                return false;
        char hp[256] = "the DPS endpoint";
        if (endpoint)
                ctl_url_host_port(endpoint, hp, sizeof hp);

        const char *w, *f;
        if (streq(status, "disabled") || contains_ci(msg, "disabled")) {
                w = "the enrollment is disabled in DPS";
                f = "enable the enrollment (DPS > Manage enrollments > the enrollment > Enable entry: Enable), then "
                    "run 'sudo tpmidctl system reprovision'";
        } else if (code == 429001 || contains_ci(msg, "throttl")) {
                w = "DPS throttles this device (too many requests)";
                f = "nothing: tpmidd retries when DPS allows it (see the next attempt)";
        } else if (contains_ci(msg, "endorsement key")) {
                w = "the enrollment's endorsement key is not this TPM's";
                f = "enrol this TPM: 'sudo tpmidctl tpm info' prints the registration id and endorsement key for "
                    "the individual enrollment; then 'sudo tpmidctl system reprovision'";
        } else if (contains_ci(msg, "enrollment not found") || (code == 404201 && contains_ci(msg, "enrollment"))) {
                w = "DPS has no enrollment for this registration id (or the ID scope is another DPS's)";
                f = "create an individual enrollment with the values of 'sudo tpmidctl tpm info', and check "
                    "[provisioning] id_scope and registration_id; then 'sudo tpmidctl system reprovision'";
        } else if (code == 404201 && (contains_ci(msg, "scope") || contains_ci(msg, "service"))) {
                w = "DPS does not know this ID scope";
                f = "set [provisioning] id_scope to the ID scope on the DPS overview page, then 'sudo tpmidctl config "
                    "apply'";
        } else if (code == 404201 || contains_ci(msg, "not found")) {
                w = "DPS has no enrollment for this registration id (or the ID scope is wrong)";
                f = "create an individual enrollment with the values of 'sudo tpmidctl tpm info', and check "
                    "[provisioning] id_scope and registration_id; then 'sudo tpmidctl system reprovision'";
        } else if (code == 400208) {
                w = "DPS found no IoT Hub to assign the device to";
                f = "link an IoT Hub to the DPS instance and to the enrollment, then 'sudo tpmidctl system "
                    "reprovision'";
        } else if (streq(status, "error")) {
                int n = snprintf(buf, len, "allow outbound HTTPS to %s (DNS, proxy, firewall; cloud_ca_bundle if set)",
                                 hp);
                w = "DPS could not be reached or answered with an error";
                if (n < 0 || (size_t)n >= len)
                        f = "check the network path to DPS";
                else
                        f = buf;
        } else {
                w = "DPS refused the registration";
                f = "fix the enrollment or [provisioning] in the configuration, then run 'sudo tpmidctl system "
                    "reprovision'";
        }
        *what = w;
        *fix = f;
        return true;
}
