/*
 * export.h - rows out of PostgreSQL as protocol JSON (the serving side).
 *
 * Lua sees one function:
 *
 *   json, count, has_more, last_key = core.export_rows(db, sql, params, opts)
 *   -- or nil, err, detail when the SQL fails
 *
 * It runs one SELECT on a pg handle (see pg.h) with fixed session settings
 * and writes the rows as the JSON array PhoenixKit's pull-data and
 * table-records endpoints answer with, value by value as the "Values on
 * the wire" table of docs/protocol.md says. See export.c for the design.
 */
#ifndef PKSYNC_EXPORT_H
#define PKSYNC_EXPORT_H

#include <lua.h>

/* Register export_rows into the module table at the top of the stack. */
void pk_open_export(lua_State *L);

#endif
