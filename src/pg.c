/*
 * pg.c - libpq connection userdata (see pg.h).
 *
 * Results come back as an array of rows, each a table column -> value.
 * Values are converted by column type where Lua has an exact equivalent:
 * bool -> boolean, int2/4/8 and oid -> integer (on LuaJIT an int8 beyond
 * 2^53 becomes an exact decimal), float4/8 -> number, text-like
 * arrays -> Lua arrays; SQL NULL -> the null sentinel; everything else
 * (numeric, json, timestamps, ...) as PostgreSQL's text, which is exact.
 *
 * PGresult memory belongs to libpq, not Lua, so it is parked in a small
 * userdata box with __gc before any Lua call that could raise.
 */
#include "pg.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "compat.h"
#include "json.h"
#include "luax.h"
#include "pgarray.h"

typedef struct pk_pg {
    PGconn *conn;
} pk_pg;

#define PK_PGRES_MT "pksync.pgresult"

/* Type OIDs from pg_type.dat; stable across PostgreSQL versions. */
enum {
    OID_BOOL = 16, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26,
    OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_CHAR_ARR = 1002, OID_NAME_ARR = 1003,
    OID_TEXT_ARR = 1009, OID_BPCHAR_ARR = 1014, OID_VARCHAR_ARR = 1015,
};

/* ---- handle lifecycle ------------------------------------------------ */

static pk_pg *check_handle(lua_State *L, int idx) {
    pk_pg *h = (pk_pg *)luaL_checkudata(L, idx, PK_PG_MT);
    if (!h->conn) luaL_error(L, "attempt to use a closed database handle");
    return h;
}

PGconn *pk_pg_conn(lua_State *L, int idx) {
    return check_handle(L, idx)->conn;
}

static int l_close(lua_State *L) {
    pk_pg *h = (pk_pg *)luaL_checkudata(L, 1, PK_PG_MT);
    PGconn *conn = h->conn;
    h->conn = NULL;
    if (conn) PQfinish(conn);
    return 0;
}

static void ignore_notice(void *arg, const char *message) {
    (void)arg;
    (void)message; /* NOTICEs such as "already exists, skipping" are not errors */
}

/* pg_connect(conninfo) -> handle | nil, err */
static int l_connect(lua_State *L) {
    const char *conninfo = luaL_checkstring(L, 1);
    pk_pg *h = (pk_pg *)lua_newuserdata(L, sizeof *h);
    h->conn = NULL;
    luaL_setmetatable(L, PK_PG_MT);
    /* conninfo may be a URI or key=value string: expand_dbname parses it;
     * later keywords override, so the encoding is always UTF-8. */
    const char *keys[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
    const char *vals[] = {conninfo, "pksync", "UTF8", NULL};
    h->conn = PQconnectdbParams(keys, vals, 1);
    if (!h->conn) return luaL_error(L, "pksync: out of memory in libpq");
    if (PQstatus(h->conn) != CONNECTION_OK) {
        PGconn *failed = h->conn;
        h->conn = NULL;
        lua_pushnil(L);
        lua_pushstring(L, PQerrorMessage(failed)); /* copies before PQfinish */
        PQfinish(failed);
        return 2;
    }
    PQsetNoticeProcessor(h->conn, ignore_notice, NULL);
    return 1;
}

/* ---- errors ------------------------------------------------------------ */

static void set_field(lua_State *L, const char *key, const char *value) {
    if (!value) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

int pk_pg_push_error(lua_State *L, PGconn *conn, const PGresult *res) {
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    lua_pushnil(L);
    if (primary) {
        lua_pushstring(L, primary);
    } else {
        /* libpq messages end with a newline; keep the first line */
        const char *msg = PQerrorMessage(conn);
        size_t n = strcspn(msg, "\n");
        lua_pushlstring(L, msg, n ? n : strlen(msg));
    }
    lua_newtable(L);
    if (res) {
        set_field(L, "sqlstate", PQresultErrorField(res, PG_DIAG_SQLSTATE));
        set_field(L, "severity", PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
        set_field(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
        set_field(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
        set_field(L, "column", PQresultErrorField(res, PG_DIAG_COLUMN_NAME));
        set_field(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "connection_lost");
    }
    return 3;
}

/* ---- result boxes: PGresult owned by a userdata until cleared ----------- */

static PGresult **box_result(lua_State *L, PGresult *res) {
    PGresult **box = (PGresult **)lua_newuserdata(L, sizeof *box);
    *box = res;
    luaL_setmetatable(L, PK_PGRES_MT);
    return box;
}

static int l_result_gc(lua_State *L) {
    PGresult **box = (PGresult **)luaL_checkudata(L, 1, PK_PGRES_MT);
    PGresult *res = *box;
    *box = NULL;
    if (res) PQclear(res);
    return 0;
}

/* ---- values ------------------------------------------------------------- */

typedef struct array_ctx {
    lua_State *L;
    int depth;
} array_ctx;

/* Building nested Lua arrays: each open pushes a table, each element or
 * closed sub-array is appended to the table below it. */
static void append_to_parent(lua_State *L) {
    lua_rawseti(L, -2, (int)lua_rawlen(L, -2) + 1);
}

static int array_open(void *ctx) {
    array_ctx *a = (array_ctx *)ctx;
    if (!lua_checkstack(a->L, 4)) return 1;
    pk_new_array(a->L, 0);
    a->depth++;
    return 0;
}

static int array_close(void *ctx) {
    array_ctx *a = (array_ctx *)ctx;
    if (--a->depth > 0) append_to_parent(a->L);
    return 0;
}

static int array_element(void *ctx, const char *text, size_t len) {
    array_ctx *a = (array_ctx *)ctx;
    if (text) lua_pushlstring(a->L, text, len);
    else lua_pushlightuserdata(a->L, NULL);
    append_to_parent(a->L);
    return 0;
}

static const pk_pgarray_cb array_to_lua = {array_open, array_close, array_element};

/* Push a text array as a Lua array; its text if it does not parse. The
 * scratch buffer is owned by a userdata (with __gc), so a raise while the
 * array is built cannot leak it. */
static void push_text_array(lua_State *L, const char *s, size_t n) {
    pk_buf *scratch = pk_luabuf_push(L);
    int top = lua_gettop(L);
    array_ctx a = {L, 0};
    int ok = pk_pgarray_parse(s, n, ',', scratch, &array_to_lua, &a);
    pk_buf_free(scratch);
    if (ok) {
        lua_remove(L, top); /* the scratch box, leaving the array */
    } else {
        lua_settop(L, top - 1);
        lua_pushlstring(L, s, n);
    }
}

static void push_value(lua_State *L, const PGresult *res, int row, int col) {
    if (PQgetisnull(res, row, col)) {
        lua_pushlightuserdata(L, NULL);
        return;
    }
    const char *s = PQgetvalue(res, row, col);
    size_t n = (size_t)PQgetlength(res, row, col);
    switch (PQftype(res, col)) {
    case OID_BOOL:
        lua_pushboolean(L, s[0] == 't');
        return;
    case OID_INT2: case OID_INT4: case OID_INT8: case OID_OID: {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (*end != '\0') lua_pushlstring(L, s, n);
        else if (!pk_push_int64(L, (int64_t)v)) pk_json_push_decimal(L, s, n);
        return;
    }
    case OID_FLOAT4: case OID_FLOAT8:
        lua_pushnumber(L, (lua_Number)strtod(s, NULL)); /* also NaN, Infinity */
        return;
    case OID_TEXT_ARR: case OID_VARCHAR_ARR: case OID_BPCHAR_ARR:
    case OID_NAME_ARR: case OID_CHAR_ARR:
        push_text_array(L, s, n);
        return;
    default:
        lua_pushlstring(L, s, n);
    }
}

/* Convert a tuples result into an array of row tables (at the stack top). */
static void push_rows(lua_State *L, const PGresult *res) {
    int nrows = PQntuples(res), ncols = PQnfields(res);
    lua_createtable(L, nrows, 1);
    for (int r = 0; r < nrows; r++) {
        lua_createtable(L, 0, ncols);
        for (int c = 0; c < ncols; c++) {
            push_value(L, res, r, c);
            lua_setfield(L, -2, PQfname(res, c));
        }
        lua_rawseti(L, -2, r + 1);
    }
}

static void set_affected(lua_State *L, const PGresult *res) {
    const char *n = PQcmdTuples((PGresult *)res);
    lua_pushinteger(L, n && *n ? (lua_Integer)strtoll(n, NULL, 10) : 0);
    lua_setfield(L, -2, "affected");
}

/* ---- parameters ------------------------------------------------------------ */

/* Convert the Lua value at idx to parameter text, pushed on the stack (so
 * Lua owns it). NULL for nil / null. Raises for types with no SQL text. */
static const char *param_text(lua_State *L, int idx) {
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return NULL;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) return NULL;
        break;
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? "true" : "false";
    case LUA_TNUMBER: {
        int64_t i;
        if (pk_to_int64(L, idx, &i)) {
            char tmp[32];
            snprintf(tmp, sizeof tmp, "%lld", (long long)i);
            lua_pushstring(L, tmp);
        } else {
            char tmp[40];
            snprintf(tmp, sizeof tmp, "%.17g", (double)lua_tonumber(L, idx));
            lua_pushstring(L, tmp);
        }
        return lua_tostring(L, -1);
    }
    case LUA_TSTRING:
        lua_pushvalue(L, idx);
        return lua_tostring(L, -1);
    case LUA_TUSERDATA:
        if (luaL_callmeta(L, idx, "__tostring") && lua_isstring(L, -1))
            return lua_tostring(L, -1);
        break;
    default:
        break;
    }
    luaL_argerror(L, idx, lua_pushfstring(L, "cannot pass a %s as a query parameter",
                                          luaL_typename(L, idx)));
    return NULL;
}

const char *pk_pg_param_text(lua_State *L, int idx) {
    return param_text(L, idx);
}

/* Collect parameters first..top into a values array held in a userdata. */
static const char **collect_params(lua_State *L, int first, int nparams) {
    luaL_argcheck(L, nparams <= 65535, first, "too many parameters");
    const char **values = (const char **)lua_newuserdata(L, sizeof(char *) * (size_t)(nparams + 1));
    for (int i = 0; i < nparams; i++) values[i] = param_text(L, first + i);
    return values;
}

/* ---- methods -------------------------------------------------------------- */

/* Turn a finished result into Lua returns: rows (with .affected) for
 * commands and queries, nil, err, detail for failures. The result box at
 * box_idx is cleared before returning. */
static int push_result(lua_State *L, PGconn *conn, PGresult **box) {
    PGresult *res = *box;
    int n;
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
        push_rows(L, res);
        set_affected(L, res);
        n = 1;
        break;
    default:
        n = pk_pg_push_error(L, conn, res);
    }
    *box = NULL;
    PQclear(res);
    return n;
}

/* db:query(sql, ...) -> rows | nil, err, detail. One statement; every
 * extra argument is a parameter ($1, $2, ...). */
static int l_query(lua_State *L) {
    PGconn *conn = check_handle(L, 1)->conn;
    const char *sql = luaL_checkstring(L, 2);
    int nparams = lua_gettop(L) - 2;
    const char **values = collect_params(L, 3, nparams);
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    if (!res) return pk_pg_push_error(L, conn, NULL);
    PGresult **box = box_result(L, res);
    return push_result(L, conn, box);
}

/* db:exec(sql) -> rows of the last statement | nil, err, detail. Simple
 * query protocol: several statements, no parameters (DDL, scripts). */
static int l_exec(lua_State *L) {
    PGconn *conn = check_handle(L, 1)->conn;
    const char *sql = luaL_checkstring(L, 2);
    PGresult *res = PQexec(conn, sql);
    if (!res) return pk_pg_push_error(L, conn, NULL);
    PGresult **box = box_result(L, res);
    return push_result(L, conn, box);
}

/* Drain results after COPY so the connection is ready again; keep the
 * first failure. Returns the final result (caller clears) or NULL. */
static PGresult *finish_copy(PGconn *conn) {
    PGresult *keep = NULL, *res;
    while ((res = PQgetResult(conn)) != NULL) {
        if (!keep || (PQresultStatus(keep) == PGRES_COMMAND_OK &&
                      PQresultStatus(res) != PGRES_COMMAND_OK)) {
            if (keep) PQclear(keep);
            keep = res;
        } else {
            PQclear(res);
        }
    }
    return keep;
}

/* db:copy_in(sql, data) -> rows (.affected = rows copied) | nil, err,
 * detail. sql is a COPY ... FROM STDIN statement; data is its input. */
static int l_copy_in(lua_State *L) {
    PGconn *conn = check_handle(L, 1)->conn;
    const char *sql = luaL_checkstring(L, 2);
    size_t n;
    const char *data = luaL_checklstring(L, 3, &n);
    PGresult *res = PQexec(conn, sql);
    if (!res) return pk_pg_push_error(L, conn, NULL);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        PGresult **box = box_result(L, res);
        return push_result(L, conn, box);
    }
    PQclear(res);
    const char *abort_msg = NULL;
    for (size_t off = 0; off < n && !abort_msg;) {
        int chunk = (int)(n - off > (1 << 20) ? (1 << 20) : n - off);
        if (PQputCopyData(conn, data + off, chunk) != 1) abort_msg = "send failed";
        off += (size_t)chunk;
    }
    PQputCopyEnd(conn, abort_msg);
    res = finish_copy(conn);
    if (!res) return pk_pg_push_error(L, conn, NULL);
    PGresult **box = box_result(L, res);
    return push_result(L, conn, box);
}

/* db:escape_identifier(name) -> "quoted" name. */
static int l_escape_identifier(lua_State *L) {
    PGconn *conn = check_handle(L, 1)->conn;
    size_t n;
    const char *name = luaL_checklstring(L, 2, &n);
    char *quoted = PQescapeIdentifier(conn, name, n);
    if (!quoted) return luaL_error(L, "escape_identifier: %s", PQerrorMessage(conn));
    lua_pushstring(L, quoted);
    PQfreemem(quoted);
    return 1;
}

/* db:is_open() -> true while the handle is open and the session alive. */
static int l_is_open(lua_State *L) {
    pk_pg *h = (pk_pg *)luaL_checkudata(L, 1, PK_PG_MT);
    lua_pushboolean(L, h->conn && PQstatus(h->conn) == CONNECTION_OK);
    return 1;
}

/* db:reset() -> true | nil, err: reconnect with the same parameters. */
static int l_reset(lua_State *L) {
    PGconn *conn = check_handle(L, 1)->conn;
    PQreset(conn);
    if (PQstatus(conn) == CONNECTION_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, PQerrorMessage(conn));
    return 2;
}

/* db:in_transaction() -> true inside a transaction block (also a failed one). */
static int l_in_transaction(lua_State *L) {
    PGTransactionStatusType st = PQtransactionStatus(check_handle(L, 1)->conn);
    lua_pushboolean(L, st == PQTRANS_INTRANS || st == PQTRANS_INERROR || st == PQTRANS_ACTIVE);
    return 1;
}

/* db:transaction_status() -> "idle" | "active" | "in_transaction" |
 * "failed" (inside a transaction that an error aborted: COMMIT would only
 * roll it back) | "unknown" (the connection is bad). */
static int l_transaction_status(lua_State *L) {
    static const char *const names[] = {
        [PQTRANS_IDLE] = "idle", [PQTRANS_ACTIVE] = "active", [PQTRANS_INTRANS] = "in_transaction",
        [PQTRANS_INERROR] = "failed", [PQTRANS_UNKNOWN] = "unknown",
    };
    PGTransactionStatusType st = PQtransactionStatus(check_handle(L, 1)->conn);
    lua_pushstring(L, (unsigned)st < sizeof names / sizeof names[0] && names[st] ? names[st] : "unknown");
    return 1;
}

/* db:backend_pid() -> pid of the server process (for tests and logs). */
static int l_backend_pid(lua_State *L) {
    lua_pushinteger(L, PQbackendPID(check_handle(L, 1)->conn));
    return 1;
}

static int l_tostring(lua_State *L) {
    pk_pg *h = (pk_pg *)luaL_checkudata(L, 1, PK_PG_MT);
    if (h->conn) lua_pushfstring(L, "pksync.pg (%p)", (void *)h);
    else lua_pushliteral(L, "pksync.pg (closed)");
    return 1;
}

static const luaL_Reg pg_methods[] = {
    {"query", l_query},
    {"exec", l_exec},
    {"transaction_status", l_transaction_status},
    {"copy_in", l_copy_in},
    {"escape_identifier", l_escape_identifier},
    {"is_open", l_is_open},
    {"in_transaction", l_in_transaction},
    {"reset", l_reset},
    {"backend_pid", l_backend_pid},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg pg_meta[] = {
    {"__gc", l_close},
#if PK_HAS_CLOSE
    {"__close", l_close},
#endif
    {"__tostring", l_tostring},
    {NULL, NULL},
};

static const luaL_Reg result_meta[] = {
    {"__gc", l_result_gc},
    {NULL, NULL},
};

static const luaL_Reg pg_funcs[] = {
    {"pg_connect", l_connect},
    {NULL, NULL},
};

void pk_open_pg(lua_State *L) {
    pk_new_type(L, PK_PG_MT, pg_meta, pg_methods);
    pk_new_type(L, PK_PGRES_MT, result_meta, NULL);
    luaL_setfuncs(L, pg_funcs, 0);
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, PK_PG_EXACT_OUTPUT("SESSION"));
    lua_setfield(L, -2, "session");
    lua_pushliteral(L, PK_PG_EXACT_OUTPUT("LOCAL"));
    lua_setfield(L, -2, "transaction");
    lua_setfield(L, -2, "pg_exact_output");
}
