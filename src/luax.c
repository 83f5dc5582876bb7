/* luax.c - shared binding helpers (see luax.h). */
#include "luax.h"

#include "compat.h"
#include "json.h"

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

void pk_set_str(lua_State *L, const char *key, const char *value) {
    if (!value || !value[0]) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

void pk_set_flag(lua_State *L, const char *key, int value) {
    if (value < 0) return;
    lua_pushboolean(L, value);
    lua_setfield(L, -2, key);
}

void pk_set_int(lua_State *L, const char *key, int64_t value) {
    if (!pk_push_int64(L, value)) lua_pushnumber(L, (lua_Number)value);
    lua_setfield(L, -2, key);
}

void pk_new_array(lua_State *L, int narr) {
    lua_createtable(L, narr, 0);
    luaL_getmetatable(L, PK_JSON_ARRAY_MT);
    if (lua_istable(L, -1)) lua_setmetatable(L, -2);
    else lua_pop(L, 1);
}

void pk_push_strings(lua_State *L, const char **strings, size_t n) {
    pk_new_array(L, (int)n);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, strings[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
}

/* In the order of pk_kind. */
static const char *const KIND_NAMES[PK_KIND_COUNT + 1] = {
    "text", "generic", "bool", "int", "float", "numeric", "json", "bytea", "uuid", "array", NULL,
};

static pk_kind kind_field(lua_State *L, int tbl, const char *field) {
    lua_getfield(L, tbl, field);
    int i = luaL_checkoption(L, -1, "text", KIND_NAMES);
    lua_pop(L, 1);
    return (pk_kind)i;
}

const char *pk_check_column(lua_State *L, int tbl, pk_column *col) {
    luaL_checktype(L, tbl, LUA_TTABLE);
    lua_getfield(L, tbl, "name");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "pksync: a column spec needs a name string");
    const char *name = lua_tolstring(L, -1, &col->name_len);
    lua_pop(L, 1);   /* the spec table anchors the string */
    col->kind = kind_field(L, tbl, "kind");
    col->elem_kind = kind_field(L, tbl, "elem_kind");
    lua_getfield(L, tbl, "elem_delim");
    const char *d = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    col->elem_delim = d && d[0] ? d[0] : ',';
    lua_pop(L, 1);
    return name;
}

void pk_set_envelope(lua_State *L, const pk_envelope *env) {
    pk_set_flag(L, "success", env->success);
    pk_set_flag(L, "has_more", env->has_more);
    pk_set_flag(L, "truncated", env->truncated);
    pk_set_flag(L, "filtered", env->filtered);
    pk_set_flag(L, "saw_array", env->saw_array);
    pk_set_str(L, "error", env->error);
    pk_set_str(L, "error_code", env->error_code);
    pk_set_str(L, "next_after", env->next_after);
    pk_set_str(L, "table", env->table);
}

static const luaL_Reg luabuf_meta[] = {
    {"__gc", l_luabuf_gc},
    {NULL, NULL},
};

void pk_open_luax(lua_State *L) {
    pk_new_type(L, PK_LUABUF_MT, luabuf_meta, NULL);
}
