/*
 * testing/rows_binding.c - pksync.testing: the row converter and the
 * streaming scanner of rows.c exposed to Lua for the specs (spec/rows_spec.lua
 * drives them with hand-made rows and bodies cut at every byte). Built as
 * its own module, build/<runtime>/pksync/testing.so, never installed: users
 * get rows only through the importer.
 */
#include <string.h>

#include <lauxlib.h>

#include "../compat.h"
#include "../luax.h"
#include "../rows.h"

PK_EXPORT int luaopen_pksync_testing(lua_State *L);

#define ROWS_MT "pksync.rows"

/* What a binding call allocated; __gc frees it if a Lua error unwinds. */
typedef struct rows_state {
    pk_rowplan *plan;
    pk_rowscan *scan;
    pk_buf line;
} rows_state;

static void rows_release(rows_state *st) {
    pk_rowplan_free(st->plan);
    pk_rowscan_free(st->scan);
    pk_buf_free(&st->line);
    st->plan = NULL;
    st->scan = NULL;
}

static int l_rows_gc(lua_State *L) {
    rows_release((rows_state *)luaL_checkudata(L, 1, ROWS_MT));
    return 0;
}

static rows_state *new_state(lua_State *L) {
    rows_state *st = (rows_state *)lua_newuserdata(L, sizeof *st);
    memset(st, 0, sizeof *st);
    luaL_setmetatable(L, ROWS_MT);
    return st;
}

/* columns table at idx -> pk_column array in a userdata pushed on the
 * stack; names point into the Lua strings, which the table anchors. */
static pk_column *check_columns(lua_State *L, int idx, size_t *n) {
    luaL_checktype(L, idx, LUA_TTABLE);
    *n = (size_t)lua_rawlen(L, idx);
    pk_column *cols = (pk_column *)lua_newuserdata(L, (*n ? *n : 1) * sizeof *cols);
    for (size_t i = 0; i < *n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        cols[i].name = (char *)pk_check_column(L, lua_gettop(L), &cols[i]);
        lua_pop(L, 1);
    }
    return cols;
}

static void push_unknown(lua_State *L, const pk_rowplan *plan) {
    const char **names;
    size_t n = pk_rowplan_unknown(plan, &names);
    pk_push_strings(L, names, n);
}

/* rows_convert(columns, row_json) -> copy_line, unknown_keys | nil, err
 * rows_convert(columns, {row_json, ...}) -> {copy_line | false, ...},
 *   unknown_keys, {[i] = err}: several rows through one plan, as the
 *   importer does (exercises the key-position memory). */
static int l_rows_convert(lua_State *L) {
    size_t ncols, len;
    pk_column *cols = check_columns(L, 1, &ncols);
    int many = lua_type(L, 2) == LUA_TTABLE;
    const char *row = many ? NULL : luaL_checklstring(L, 2, &len);
    rows_state *st = new_state(L);
    st->plan = pk_rowplan_new(cols, ncols);
    if (!st->plan) return luaL_error(L, "pksync: out of memory");
    const char *err;
    if (!many) {
        if (!pk_row_to_copy(st->plan, row, len, &st->line, &err)) {
            lua_pushnil(L);
            lua_pushstring(L, err);
            rows_release(st);
            return 2;
        }
        lua_pushlstring(L, st->line.data, st->line.len);
        push_unknown(L, st->plan);
        rows_release(st);
        return 2;
    }
    int n = (int)lua_rawlen(L, 2);
    lua_createtable(L, n, 0);
    int lines = lua_gettop(L);
    lua_newtable(L);
    int errs = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "rows_convert: row %d is not a string", i);
        row = lua_tolstring(L, -1, &len);
        pk_buf_reset(&st->line);
        if (pk_row_to_copy(st->plan, row, len, &st->line, &err)) {
            lua_pushlstring(L, st->line.data, st->line.len);
        } else {
            lua_pushstring(L, err);
            lua_rawseti(L, errs, i);
            lua_pushboolean(L, 0);
        }
        lua_rawseti(L, lines, i);
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lines);
    push_unknown(L, st->plan);
    lua_pushvalue(L, errs);
    rows_release(st);
    return 3;
}

/* rows_value(column, json) -> copy_text | nil, err (pk_value_to_copy). */
static int l_rows_value(lua_State *L) {
    size_t ncols, len;
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    pk_column *col = check_columns(L, lua_gettop(L), &ncols);
    const char *json = luaL_checklstring(L, 2, &len);
    rows_state *st = new_state(L);
    pk_buf scratch = PK_BUF_INIT;
    const char *err;
    /* No Lua call until scratch is freed. */
    int ok = pk_value_to_copy(col, json, json + len, &st->line, &scratch, &err);
    pk_buf_free(&scratch);
    if (!ok) {
        lua_pushnil(L);
        lua_pushstring(L, err);
    } else {
        lua_pushlstring(L, st->line.data ? st->line.data : "", st->line.len);
    }
    rows_release(st);
    return ok ? 1 : 2;
}

typedef struct scan_ctx {
    lua_State *L;
    int rows;     /* stack index of the rows table */
    int n;
} scan_ctx;

static int collect_row(void *ctx, const char *row, size_t len) {
    scan_ctx *sc = (scan_ctx *)ctx;
    lua_pushlstring(sc->L, row, len);
    lua_rawseti(sc->L, sc->rows, ++sc->n);
    return 0;
}

/* rows_scan(chunks, array_key [, max_row_bytes])
 *   -> {rows = {...}, envelope = {...}} | nil, err, rows_so_far */
static int l_rows_scan(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *key = luaL_checkstring(L, 2);
    lua_Number max = luaL_optnumber(L, 3, 0);
    if (max < 0 || max > (lua_Number)((size_t)1 << 40)) return luaL_argerror(L, 3, "out of range");
    lua_settop(L, 3);
    lua_newtable(L); /* 4: rows */
    rows_state *st = new_state(L);
    scan_ctx sc = {L, 4, 0};
    st->scan = pk_rowscan_new(key, (size_t)max, collect_row, &sc);
    if (!st->scan) return luaL_error(L, "pksync: out of memory");
    int ok = 1, nchunks = (int)lua_rawlen(L, 1);
    for (int i = 1; ok && i <= nchunks; i++) {
        lua_rawgeti(L, 1, i);
        size_t n;
        if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "rows_scan: chunk %d is not a string", i);
        const char *chunk = lua_tolstring(L, -1, &n);
        ok = pk_rowscan_feed(st->scan, chunk, n);
        lua_pop(L, 1);
    }
    if (ok) ok = pk_rowscan_finish(st->scan);
    if (!ok) {
        lua_pushnil(L);
        lua_pushstring(L, pk_rowscan_error(st->scan));
        lua_pushvalue(L, 4);
        rows_release(st);
        return 3;
    }
    pk_envelope env;
    pk_rowscan_envelope(st->scan, &env);
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, 4);
    lua_setfield(L, -2, "rows");
    lua_createtable(L, 0, 10);
    pk_set_envelope(L, &env);
    lua_pushinteger(L, (lua_Integer)env.rows);
    lua_setfield(L, -2, "rows");
    lua_setfield(L, -2, "envelope");
    rows_release(st);
    return 1;
}

static const luaL_Reg rows_funcs[] = {
    {"rows_convert", l_rows_convert},
    {"rows_scan", l_rows_scan},
    {"rows_value", l_rows_value},
    {NULL, NULL},
};

static const luaL_Reg rows_meta[] = {
    {"__gc", l_rows_gc},
    {NULL, NULL},
};

int luaopen_pksync_testing(lua_State *L) {
    lua_newtable(L);
    pk_open_luax(L);
    pk_new_type(L, ROWS_MT, rows_meta, NULL);
    luaL_setfuncs(L, rows_funcs, 0);
    return 1;
}
