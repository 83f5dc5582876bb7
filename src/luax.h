/*
 * luax.h - small pieces every Lua binding of the core shares: registering
 * a userdata type, and a byte buffer owned by a userdata (so a Lua error
 * raised while C code fills it cannot leak it).
 */
#ifndef PKSYNC_LUAX_H
#define PKSYNC_LUAX_H

#include <lauxlib.h>
#include "buf.h"

#define PK_LUABUF_MT "pksync.buffer"

/* Create the registry metatable `name` once: __name (LuaJIT's
 * luaL_newmetatable does not set it), the metamethods in `meta`, and an
 * __index table of `methods` when it is not NULL. Leaves the stack as it
 * was. */
void pk_new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods);

/* Push a new userdata holding an empty pk_buf and return the buffer; its
 * __gc frees the buffer's memory. */
pk_buf *pk_luabuf_push(lua_State *L);

/* Register the buffer type (call before the others). */
void pk_open_luax(lua_State *L);

#endif
