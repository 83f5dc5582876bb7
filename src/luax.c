/* luax.c - shared binding helpers (see luax.h). */
#include "luax.h"

#include "compat.h"

void pk_new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
    if (luaL_newmetatable(L, name)) {
        lua_pushstring(L, name);
        lua_setfield(L, -2, "__name");
        if (meta) luaL_setfuncs(L, meta, 0);
        if (methods) {
            /* luaL_newlib needs an array, not a pointer, to size the table */
            lua_newtable(L);
            luaL_setfuncs(L, methods, 0);
            lua_setfield(L, -2, "__index");
        }
    }
    lua_pop(L, 1);
}

static int l_luabuf_gc(lua_State *L) {
    pk_buf_free((pk_buf *)luaL_checkudata(L, 1, PK_LUABUF_MT));
    return 0;
}

pk_buf *pk_luabuf_push(lua_State *L) {
    pk_buf *b = (pk_buf *)lua_newuserdata(L, sizeof *b);
    pk_buf_init(b);
    luaL_setmetatable(L, PK_LUABUF_MT);
    return b;
}

static const luaL_Reg luabuf_meta[] = {
    {"__gc", l_luabuf_gc},
    {NULL, NULL},
};

void pk_open_luax(lua_State *L) {
    pk_new_type(L, PK_LUABUF_MT, luabuf_meta, NULL);
}
