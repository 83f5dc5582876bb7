/*
 * pg.h - libpq connection userdata.
 *
 * Lua sees `core.pg_connect(conninfo)` and a handle with query / exec /
 * copy_in / escape_identifier / close. Every value travels as a query
 * parameter; identifiers go through PQescapeIdentifier. Other C files
 * (import, export) borrow the PGconn of a handle through pk_pg_conn.
 */
#ifndef PKSYNC_PG_H
#define PKSYNC_PG_H

#include <lua.h>
#include <libpq-fe.h>

#define PK_PG_MT "pksync.pg"

/* The session settings under which PostgreSQL prints every value exactly
 * and the same way on every server, whatever its defaults: timestamps in
 * UTC and ISO form, intervals in the postgres style, floats as the shortest
 * text that reads back to the same value (any extra_float_digits > 0 does
 * that since PostgreSQL 12; 3 is also exact, with 17 digits, on older
 * servers), bytea as hex. `scope` is SESSION or LOCAL (this transaction).
 * The one definition: export.c sends it with its BEGIN, and Lua reads it as
 * core.pg_exact_output.session / .transaction (store connections, checksums). */
#define PK_PG_EXACT_OUTPUT(scope) \
    "SET " scope " TimeZone = 'UTC'; SET " scope " DateStyle = 'ISO, YMD'; " \
    "SET " scope " IntervalStyle = 'postgres'; SET " scope " extra_float_digits = 3; " \
    "SET " scope " bytea_output = 'hex'"

/* The open PGconn of the handle at idx; raises if it is not a handle or
 * is closed. */
PGconn *pk_pg_conn(lua_State *L, int idx);

/* Push nil, message, detail for a failed result (res may be NULL, then
 * the connection's error is used). Returns 3 (values pushed). Clears
 * nothing: the caller owns res. */
int pk_pg_push_error(lua_State *L, PGconn *conn, const PGresult *res);

/* The SQL text of the Lua value at idx as a query parameter, exactly as
 * db:query converts it: NULL for nil / null, "true"/"false" for booleans,
 * exact digits for numbers. When the text is a new Lua string it is pushed
 * onto the stack (the caller anchors it until the query has run). Raises
 * for values with no SQL text. */
const char *pk_pg_param_text(lua_State *L, int idx);

void pk_open_pg(lua_State *L);

#endif
