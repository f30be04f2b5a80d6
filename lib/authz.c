/* The authorization rule; see authz.h, which states it. */
#include "authz.h"

#include "util.h"

bool authz_allowed(const struct config_principal *principals, size_t n_principals, uid_t uid, bool in_socket_group,
                   uint32_t op) {
        if (op == 0 || (op & ~(uint32_t)CONFIG_OP_ALL) != 0)
                return false; /* a caller bug must fail closed, and "no bits" would be a subset of anything */
        for (size_t i = 0; i < n_principals; i++)
                if (principals[i].uid == uid)
                        return (principals[i].allow & op) == op;
        return uid == 0 || in_socket_group;
}

bool authz_allowed_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group, uint32_t op) {
        return authz_allowed(c ? c->principals : NULL, c ? c->n_principals : 0, uid, in_socket_group, op);
}

bool authz_any_allowed(const struct config_principal *principals, size_t n_principals, uid_t uid,
                       bool in_socket_group) {
        for (size_t i = 0; i < n_principals; i++)
                if (principals[i].uid == uid)
                        return (principals[i].allow & (uint32_t)CONFIG_OP_ALL) != 0;
        return uid == 0 || in_socket_group;
}

bool authz_any_allowed_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group) {
        return authz_any_allowed(c ? c->principals : NULL, c ? c->n_principals : 0, uid, in_socket_group);
}

static const struct config_principal *find(const struct config_principal *principals, size_t n, uid_t uid) {
        for (size_t i = 0; i < n; i++)
                if (principals[i].uid == uid)
                        return &principals[i];
        return NULL;
}

uint32_t authz_op_bit(enum api_op op) {
        switch (op) {
        case API_OP_TPM_GET_KEYS:
                return CONFIG_OP_TPM_KEYS;
        case API_OP_TPM_IMPORT:
                return CONFIG_OP_TPM_IMPORT;
        case API_OP_TPM_SIGN:
                return CONFIG_OP_TPM_SIGN;
        case API_OP_IDENTITY_PROVISIONING:
                return CONFIG_OP_IDENTITY_PROVISIONING;
        case API_OP_IDENTITY_REPROVISION:
                return CONFIG_OP_REPROVISION;
        case API_OP_IDENTITY_TOKEN:
                return CONFIG_OP_IDENTITY_TOKEN;
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_GET:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
                return CONFIG_OP_IDENTITY_MODULES;
        case API_OP_IDENTITY_GET:
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_REPORT:
        case API_OP_STATUS:
        case API_OP_TRUST_BUNDLE:
                return CONFIG_OP_IDENTITY_GET;
        case _API_OP_MAX:
                break;
        }
        return 0; /* authz_allowed() denies 0 */
}

enum authz_identity authz_caller_identity(const struct config_principal *principals, size_t n_principals, uid_t uid,
                                          bool in_socket_group, const char **ret_module_id) {
        const struct config_principal *p = find(principals, n_principals, uid);
        if (!p)
                return uid == 0 || in_socket_group ? AUTHZ_IDENTITY_DEVICE : AUTHZ_IDENTITY_NONE;
        if (!(p->allow & CONFIG_OP_IDENTITY_GET))
                return AUTHZ_IDENTITY_NONE;
        if (p->idtype == 0 || (p->idtype & CONFIG_IDTYPE_DEVICE))
                return AUTHZ_IDENTITY_DEVICE;
        if ((p->idtype & (CONFIG_IDTYPE_MODULE | CONFIG_IDTYPE_LOCAL)) && p->name && p->name[0]) {
                if (ret_module_id)
                        *ret_module_id = p->name;
                return AUTHZ_IDENTITY_MODULE;
        }
        return AUTHZ_IDENTITY_NONE;
}

enum authz_identity authz_caller_identity_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group,
                                                    const char **ret_module_id) {
        return authz_caller_identity(c ? c->principals : NULL, c ? c->n_principals : 0, uid, in_socket_group,
                                     ret_module_id);
}

bool authz_op_allowed(const struct config_principal *principals, size_t n_principals, uid_t uid, bool in_socket_group,
                      enum api_op op, const char *module_id) {
        const struct config_principal *p = find(principals, n_principals, uid);
        uint32_t bit = authz_op_bit(op);
        switch (op) {
        case API_OP_IDENTITY_GET:
                return authz_caller_identity(principals, n_principals, uid, in_socket_group, NULL) !=
                       AUTHZ_IDENTITY_NONE;
        case API_OP_IDENTITY_DEVICE:
        case API_OP_IDENTITY_TOKEN:
                if (p && p->idtype != 0 && !(p->idtype & CONFIG_IDTYPE_DEVICE))
                        return false;
                break;
        case API_OP_MODULES_GET:
                if (p && p->idtype != 0)
                        return (p->idtype & (CONFIG_IDTYPE_MODULE | CONFIG_IDTYPE_LOCAL)) && p->name && module_id &&
                               streq(p->name, module_id) && (p->allow & CONFIG_OP_IDENTITY_GET);
                break;
        case API_OP_MODULES_LIST:
        case API_OP_MODULES_CREATE:
        case API_OP_MODULES_UPDATE:
        case API_OP_MODULES_DELETE:
                if (p && p->idtype != 0)
                        return false;
                break;
        case API_OP_STATUS:
                if (uid == 0 || in_socket_group)
                        return true; /* whoever the socket's mode lets in, listed or not */
                break;
        case API_OP_TRUST_BUNDLE:
                return true;
        case API_OP_TPM_GET_KEYS:
        case API_OP_TPM_IMPORT:
        case API_OP_TPM_SIGN:
        case API_OP_IDENTITY_PROVISIONING:
        case API_OP_IDENTITY_REPROVISION:
        case API_OP_IDENTITY_REPORT:
                break;
        case _API_OP_MAX:
                return false;
        }
        return authz_allowed(principals, n_principals, uid, in_socket_group, bit);
}

bool authz_op_allowed_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group, enum api_op op,
                                const char *module_id) {
        return authz_op_allowed(c ? c->principals : NULL, c ? c->n_principals : 0, uid, in_socket_group, op,
                                module_id);
}
