/*
 * core.h - the pksync.core module: its one exported entry point and the
 * version it reports (core.version; the default user agent carries it).
 */
#ifndef PKSYNC_CORE_H
#define PKSYNC_CORE_H

#include <lua.h>

#include "compat.h"

#define PK_VERSION "0.1.0"

PK_EXPORT int luaopen_pksync_core(lua_State *L);

#endif
