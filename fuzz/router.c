/*
 * router.c - libFuzzer target: client:handle, the serving side's router and
 * request checks (lua/pksync/server.lua and what it calls), with the C
 * core linked in statically and preloaded as pksync.core.
 *
 * Input: byte 0 picks the method (METHODS, modulo), then the path up to a
 * NUL byte, then the body. Each request goes to two clients without a
 * database: a plain one (every routed request ends at "Store unavailable")
 * and one whose settings lookup answers "enabled", so that the endpoints'
 * own field checks run too. handle must not raise, must answer a table
 * with a status from 400 to 599 (nothing can succeed without a database but
 * GET status of the second client) and a JSON body, and must not log an
 * internal error ("handler ... failed": a Lua error inside a handler,
 * turned into a 500). One Lua state serves every run (created in
 * LLVMFuzzerInitialize); the repository's lua/ comes from PKSYNC_REPO
 * (compile-time, see scripts/fuzz.sh).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int luaopen_pksync_core(lua_State *L);

#ifndef PKSYNC_REPO
#error "build with -DPKSYNC_REPO=\"/path/to/repo\""
#endif

static const char *const METHODS[] = {"POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "post", ""};

/* Returns the per-request function; raises (in Lua) on a broken invariant. */
static const char SETUP[] =
    "local repo = ...\n"
    "package.path = repo .. '/lua/?.lua;' .. repo .. '/lua/?/init.lua'\n"
    "package.cpath = ''\n"
    "local pksync = require 'pksync'\n"
    "local internal\n"
    "local function logger(level, msg)\n"
    "  if level == 'error' and msg:find('failed: ', 1, true) then internal = msg end\n"
    "end\n"
    "local plain = pksync.new { logger = logger }\n"
    "local enabled = pksync.new { logger = logger }\n"
    "function enabled:get_settings()\n"
    "  return { enabled = true, incoming_mode = 'auto_accept', password_set = false }\n"
    "end\n"
    "local headers = { ['content-type'] = 'application/json', ['user-agent'] = 'fuzz' }\n"
    "return function(method, path, body)\n"
    "  for _, client in ipairs { plain, enabled } do\n"
    "    internal = nil\n"
    "    local res = client:handle { method = method, path = path, body = body,\n"
    "                                headers = headers, remote_addr = '203.0.113.9' }\n"
    "    assert(not internal, 'internal error: ' .. tostring(internal))\n"
    "    assert(type(res) == 'table', 'the answer is not a table')\n"
    "    local ok = math.type(res.status) == 'integer' and res.status >= 400 and res.status <= 599\n"
    "    -- the one success without a database: GET status of the stubbed client\n"
    "    ok = ok or (res.status == 200 and client == enabled and path:find('/sync/api/status', 1, true))\n"
    "    assert(ok, 'unexpected status ' .. tostring(res.status))\n"
    "    assert(type(res.headers) == 'table', 'no headers')\n"
    "    assert(type(res.body) == 'string' and pksync.json.decode(res.body), 'the body is not JSON')\n"
    "  end\n"
    "end\n";

static lua_State *L;
static int handler_ref;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_pksync_core);
    lua_setfield(L, -2, "pksync.core");
    lua_pop(L, 1);
    int rc = luaL_loadbuffer(L, SETUP, sizeof SETUP - 1, "=router-setup");
    if (rc == LUA_OK) {
        lua_pushstring(L, PKSYNC_REPO);
        rc = lua_pcall(L, 1, 1, 0);
    }
    FUZZ_REQUIRE(rc == LUA_OK, "setup failed: %s", lua_tostring(L, -1));
    handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    const char *nul = memchr(rest, '\0', n);
    size_t path_len = nul ? (size_t)(nul - rest) : n;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, handler_ref);
    lua_pushstring(L, METHODS[data[0] % (sizeof METHODS / sizeof METHODS[0])]);
    lua_pushlstring(L, rest, path_len);
    if (nul) lua_pushlstring(L, nul + 1, n - path_len - 1);
    else lua_pushnil(L);
    int rc = lua_pcall(L, 3, 0, 0);
    FUZZ_REQUIRE(rc == LUA_OK, "%s", lua_tostring(L, -1));
    lua_settop(L, top);
    return 0;
}
