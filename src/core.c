/*
 * core.c - luaopen_pksync_core: the only exported symbol. Each concern
 * registers its functions into one module table.
 */
#include "compat.h"
#include "http.h"
#include "json.h"
#include "token.h"

PK_EXPORT int luaopen_pksync_core(lua_State *L);

int luaopen_pksync_core(lua_State *L) {
    lua_newtable(L);
    pk_open_token(L);
    pk_open_json(L);
    pk_open_http(L);
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "version");
    return 1;
}
