/*
 * json.c - libFuzzer target: the exact JSON codec (src/json.c) as Lua sees it.
 *
 * The input is a document. json_decode must never raise (a bad document is
 * nil, err); what it decodes must encode, that text must decode again, and
 * encoding that second value must give the same text (keys sorted, so the
 * order of a Lua table's keys cannot differ). The validating lexer
 * (pk_json_skip) must call the same documents valid. One lua_State lives across
 * runs; every call goes through lua_pcall, so a raise is caught and
 * reported rather than unwinding through libFuzzer.
 */
#include <lauxlib.h>
#include <lua.h>

#include "../src/json.h"
#include "fuzz.h"

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    L = luaL_newstate();
    lua_newtable(L);   /* pk_open_json fills a module table and the registry */
    pk_open_json(L);
    lua_pop(L, 1);
    return 0;
}

/* fn(value at idx [, {sort_keys = true}]) under pcall: the results stay on
 * the stack (2 of them); a raise aborts. */
static void call(lua_CFunction fn, int idx, int sorted) {
    lua_pushcfunction(L, fn);
    lua_pushvalue(L, idx);
    if (sorted) {
        lua_createtable(L, 0, 1);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "sort_keys");
    }
    int rc = lua_pcall(L, sorted ? 2 : 1, 2, 0);
    FUZZ_REQUIRE(rc == LUA_OK, "raised: %s", lua_tostring(L, -1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int top = lua_gettop(L);
    lua_pushlstring(L, (const char *)data, size);
    call(pk_json_lua_decode, top + 1, 0);            /* top+2 value, top+3 err */
    /* The validating lexer (rows.c's scanner uses it) must agree. */
    const char *p = (const char *)data, *end = p + size, *stop, *why;
    int valid = pk_json_skip(p, end, PK_JSON_DEFAULT_DEPTH, &stop, &why) && pk_json_ws(stop, end) == end;
    FUZZ_REQUIRE(valid == !lua_isnil(L, top + 2), "json_decode and pk_json_skip disagree (%s)",
                 valid ? lua_tostring(L, top + 3) : why);
    if (lua_isnil(L, top + 2)) {
        FUZZ_REQUIRE(lua_type(L, top + 3) == LUA_TSTRING, "decode failed without a message");
        lua_settop(L, top);
        return 0;
    }
    call(pk_json_lua_encode, top + 2, 1);            /* top+4 text */
    FUZZ_REQUIRE(lua_type(L, top + 4) == LUA_TSTRING, "a decoded value did not encode: %s",
                 lua_tostring(L, top + 5));
    call(pk_json_lua_decode, top + 4, 0);            /* top+6 value */
    FUZZ_REQUIRE(!lua_isnil(L, top + 6), "encoded text did not decode: %s\n  text: %s",
                 lua_tostring(L, top + 7), lua_tostring(L, top + 4));
    call(pk_json_lua_encode, top + 6, 1);            /* top+8 text */
    size_t n1, n2;
    const char *t1 = lua_tolstring(L, top + 4, &n1), *t2 = lua_tolstring(L, top + 8, &n2);
    FUZZ_REQUIRE(t2 && n1 == n2 && memcmp(t1, t2, n1) == 0,
                 "the round trip changed the text:\n  %s\n  %s", t1, t2 ? t2 : "(nil)");
    lua_settop(L, top);
    return 0;
}
