/*
 * import.h - the data path: pull-data pages from libcurl, through the
 * streaming row scanner, into PostgreSQL COPY, with the conflict strategy
 * applied per batch and bad rows isolated.
 *
 * Lua builds the plan (columns, statements; identifiers already validated
 * and quoted) with core.importer_new and calls imp:run_page(db, http, req)
 * once per page. No row becomes a Lua table.
 */
#ifndef PKSYNC_IMPORT_H
#define PKSYNC_IMPORT_H

#include <lua.h>

#define PK_IMPORTER_MT "pksync.importer"

void pk_open_import(lua_State *L);

#endif
