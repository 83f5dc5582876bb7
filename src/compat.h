/*
 * compat.h - every difference between Lua 5.1/LuaJIT 2.1 and Lua 5.4 that
 * the C core relies on. No other file tests LUA_VERSION_NUM.
 */
#ifndef PKSYNC_COMPAT_H
#define PKSYNC_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <stdint.h>

#if LUA_VERSION_NUM < 502
/* Lua 5.1 / LuaJIT */
#define PK_HAS_INTEGERS 0

#ifndef luaL_newlibtable
#define luaL_newlibtable(L, l) lua_createtable(L, 0, sizeof(l) / sizeof((l)[0]) - 1)
#endif
#ifndef luaL_newlib
#define luaL_newlib(L, l) (luaL_newlibtable(L, l), luaL_setfuncs(L, l, 0))
#endif
#define lua_rawlen(L, i) lua_objlen(L, (i))

/* The 5.1 API we build against is LuaJIT 2.1's, which already has
 * luaL_setfuncs, luaL_testudata and luaL_newlib; plain Lua 5.1 is not a target. */

#else
/* Lua 5.2+ */
#define PK_HAS_INTEGERS 1
#endif

/* Largest integer magnitude a lua_Number (double) holds exactly. */
#define PK_EXACT_DOUBLE_INT ((int64_t)1 << 53)

/*
 * Push an int64 exactly where the runtime can: as an integer on 5.4, as a
 * number on LuaJIT when |v| <= 2^53. Returns 0 when it could not (LuaJIT,
 * larger magnitude); the caller then pushes an exact decimal instead.
 */
static inline int pk_push_int64(lua_State *L, int64_t v) {
#if PK_HAS_INTEGERS
    lua_pushinteger(L, (lua_Integer)v);
    return 1;
#else
    if (v > PK_EXACT_DOUBLE_INT || v < -PK_EXACT_DOUBLE_INT) return 0;
    lua_pushnumber(L, (lua_Number)v);
    return 1;
#endif
}

/* True when the value at idx is a Lua integer (5.4) or an integral number
 * that a double holds exactly (LuaJIT); *out receives it. */
static inline int pk_to_int64(lua_State *L, int idx, int64_t *out) {
#if PK_HAS_INTEGERS
    if (lua_isinteger(L, idx)) {
        *out = (int64_t)lua_tointeger(L, idx);
        return 1;
    }
    return 0;
#else
    lua_Number n = lua_tonumber(L, idx);
    if (lua_type(L, idx) != LUA_TNUMBER) return 0;
    if (n != n || n > (lua_Number)PK_EXACT_DOUBLE_INT || n < -(lua_Number)PK_EXACT_DOUBLE_INT) return 0;
    if ((lua_Number)(int64_t)n != n) return 0;
    *out = (int64_t)n;
    return 1;
#endif
}

/* Userdata with a __close metamethod exists only on 5.4. */
#if LUA_VERSION_NUM >= 504
#define PK_HAS_CLOSE 1
#else
#define PK_HAS_CLOSE 0
#endif

/* Symbols the shared object exports; everything else is hidden. */
#define PK_EXPORT __attribute__((visibility("default")))

#endif
