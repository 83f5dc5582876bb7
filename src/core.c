/*
 * core.c - luaopen_pksync_core (core.h): the only exported symbol. Each concern
 * registers its functions into one module table.
 */
#include "core.h"

#include "base64.h"
#include "compat.h"
#include "export.h"
#include "http.h"
#include "import.h"
#include "json.h"
#include "luax.h"
#include "pg.h"
#include "signals.h"
#include "token.h"

#include <time.h>

static double clock_ms(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* now_ms() -> wall-clock milliseconds since the epoch (with fraction). */
static int l_now_ms(lua_State *L) {
    lua_pushnumber(L, clock_ms(CLOCK_REALTIME));
    return 1;
}

/* monotonic_ms() -> milliseconds on a clock that never jumps (durations). */
static int l_monotonic_ms(lua_State *L) {
    lua_pushnumber(L, clock_ms(CLOCK_MONOTONIC));
    return 1;
}

static const luaL_Reg clock_funcs[] = {
    {"now_ms", l_now_ms},
    {"monotonic_ms", l_monotonic_ms},
    {NULL, NULL},
};

int luaopen_pksync_core(lua_State *L) {
    lua_newtable(L);
    luaL_setfuncs(L, clock_funcs, 0);
    pk_open_luax(L);
    pk_open_token(L);
    pk_open_base64(L);
    pk_open_json(L);
    pk_open_http(L);
    pk_open_pg(L);
    pk_open_import(L);
    pk_open_export(L);
    pk_open_signals(L);
    lua_pushliteral(L, PK_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
