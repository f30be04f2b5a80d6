/* Authorization: may this caller perform this API operation?
 *
 * Pure: no I/O, no NSS lookups, no logging. The socket server computes the
 * facts about the caller (its uid from SO_PEERCRED, and whether that uid is
 * in the group of the socket file, which needs NSS) once per connection and
 * asks here for each request. This is the only place the rule is written:
 *
 *   1. op must name at least one operation and only known ones
 *      (CONFIG_OP_* bits within CONFIG_OP_ALL); anything else is denied.
 *   2. A caller whose uid has a [[principal]] entry is allowed exactly the
 *      operations in that entry's allow set (its explicit `allow`, or its
 *      role's default, see config_role_default_allow()). This holds for
 *      uid 0 too: listing root narrows it. For an op with several bits the
 *      entry must allow every one of them (all bits, never any bit).
 *   3. A caller without an entry is allowed every operation when it is root
 *      (uid 0, aziot's LocalRoot) or a member of the socket file's group
 *      (whoever the file mode 0660 already lets connect: the admin granted
 *      access by putting the user into that group).
 *   4. Everyone else is denied.
 *
 * The identity socket adds aziot-identityd's rules (its SettingsAuthorizer),
 * which look at the entry's idtype and name (authz_op_allowed(),
 * authz_caller_identity()). "Daemon-like" below is an entry without idtype
 * (aziot's Daemon), or a caller without an entry that rule 3 lets in (aziot's
 * LocalRoot; tpmidd adds the socket's group):
 *   5. The device identity (POST /identities/device, the device's SAS token):
 *      an entry with idtype must include "device" (aziot's GetDevice), and
 *      the op's bit must be allowed (rule 2/3).
 *   6. Module list, create, update, delete: daemon-like callers only; an entry
 *      also needs "identity.modules" in its allow set. An entry with idtype
 *      never, whatever its allow list says (aziot's HostProcess).
 *   7. Module get: daemon-like as in 6; an entry with idtype "module" or
 *      "local" only for the module whose id equals its name, and only with
 *      "identity.get" allowed (its own identity).
 *   8. GET /identities/identity answers the caller's identity: the device's
 *      for daemon-like callers and idtype "device"; an entry with idtype
 *      "module"/"local" (without "device") gets the module named as the
 *      entry; "identity.get" must be allowed either way.
 *   9. GET /trust-bundle: everyone whom the socket lets in (aziot's Unknown
 *      may call it too; tpmidd's server answers a caller with no rights at
 *      all at accept, before any route). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "api.h"
#include "config.h"

/* principals/n_principals: the config's table (NULL/0 when there is no
 * config); uid: the caller's; in_socket_group: the server's finding for
 * that uid; op: CONFIG_OP_* bits. Returns true when rule 2 or 3 allows it. */
bool authz_allowed(const struct config_principal *principals, size_t n_principals, uid_t uid, bool in_socket_group,
                   uint32_t op);

/* The same for a whole config (NULL = no principals). */
bool authz_allowed_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group, uint32_t op);

/* Whether rule 2 or 3 allows this caller any operation at all: false for a
 * uid without an entry that is neither root nor in the socket's group, and
 * for an entry whose allow set is empty. The server asks this once, at
 * accept, so that a caller who can do nothing is answered and closed before
 * it holds a connection slot. */
bool authz_any_allowed(const struct config_principal *principals, size_t n_principals, uid_t uid,
                       bool in_socket_group);
bool authz_any_allowed_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group);

/* Rules 2-7 for one identity-socket or TPM-socket op. module_id: the module
 * the request names (API_OP_MODULES_GET/UPDATE/DELETE/CREATE), else NULL.
 * API_OP_IDENTITY_GET is allowed here when rule 8 gives the caller some
 * identity. API_OP_STATUS: root, the socket's group, or "identity.get". */
bool authz_op_allowed(const struct config_principal *principals, size_t n_principals, uid_t uid, bool in_socket_group,
                      enum api_op op, const char *module_id);
bool authz_op_allowed_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group, enum api_op op,
                                const char *module_id);

/* Rule 8. */
enum authz_identity {
        AUTHZ_IDENTITY_NONE,   /* 401: the caller has no identity to get */
        AUTHZ_IDENTITY_DEVICE, /* the device identity */
        AUTHZ_IDENTITY_MODULE, /* *ret_module_id: the entry's name (valid as long as the principals table) */
};
enum authz_identity authz_caller_identity(const struct config_principal *principals, size_t n_principals, uid_t uid,
                                          bool in_socket_group, const char **ret_module_id);
enum authz_identity authz_caller_identity_by_config(const struct tpmid_config *c, uid_t uid, bool in_socket_group,
                                                    const char **ret_module_id);

/* The CONFIG_OP_* bit that names op in `allow` lists ("identity.modules" for
 * every module op, "identity.get" for GET /identities/identity, POST
 * /identities/device, the report, status and the trust bundle). */
uint32_t authz_op_bit(enum api_op op);
