/* The authorization rule; see authz.h, which states it. */
#include "authz.h"

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
