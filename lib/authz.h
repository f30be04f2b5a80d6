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
 *   4. Everyone else is denied. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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
