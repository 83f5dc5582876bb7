/*
 * luax.h - small pieces the Lua bindings of the core share: registering a
 * userdata type, a byte buffer owned by a userdata (so a Lua error raised
 * while C code fills it cannot leak it), the fields of result tables, JSON
 * arrays, and reading the column specs and envelopes of the row converter.
 */
#ifndef PKSYNC_LUAX_H
#define PKSYNC_LUAX_H

#include <lauxlib.h>
#include <stdint.h>

#include "buf.h"
#include "rows.h"

#define PK_LUABUF_MT "pksync.buffer"

/* Create the registry metatable `name` once: __name (LuaJIT's
 * luaL_newmetatable does not set it), the metamethods in `meta`, and an
 * __index table of `methods` when it is not NULL. Leaves the stack as it
 * was. */
void pk_new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods);

/* Push a new userdata holding an empty pk_buf and return the buffer; its
 * __gc frees the buffer's memory. */
pk_buf *pk_luabuf_push(lua_State *L);

/* Fields of the table at the stack top: a string (left out when NULL or
 * empty), a flag (left out when negative, i.e. unknown) and an integer. */
void pk_set_str(lua_State *L, const char *key, const char *value);
void pk_set_flag(lua_State *L, const char *key, int value);
void pk_set_int(lua_State *L, const char *key, int64_t value);

/* Push a new table marked as a JSON array (metatable "pksync.array", so an
 * empty one encodes as [] and not {}). */
void pk_new_array(lua_State *L, int narr);

/* Push an array (pk_new_array) of the n strings. */
void pk_push_strings(lua_State *L, const char **strings, size_t n);

/* Read the column spec {name, kind, elem_kind, elem_delim} at the positive
 * stack index tbl into col (kinds by name: "text", "generic", "bool", "int", "float",
 * "numeric", "json", "bytea", "uuid", "array"; "text" when absent). Returns
 * the name, which the spec table anchors, and sets col->name_len; the caller
 * decides whether col->name keeps or copies it. Raises on a bad spec. */
const char *pk_check_column(lua_State *L, int tbl, pk_column *col);

/* Set the envelope's fields (success, has_more, truncated, filtered,
 * saw_array, error, error_code, next_after, table) on the table at the top. */
void pk_set_envelope(lua_State *L, const pk_envelope *env);

/* Register the buffer type (call before the others). */
void pk_open_luax(lua_State *L);

#endif
