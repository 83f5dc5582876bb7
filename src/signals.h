/*
 * signals.h - stop requests for long-running commands (`pksync sync
 * --watch`): SIGTERM and SIGINT set a flag that Lua checks between pages,
 * and a sleep that such a signal cuts short.
 */
#ifndef PKSYNC_SIGNALS_H
#define PKSYNC_SIGNALS_H

#include <lua.h>

/* Register stop_signals_watch, stop_requested and sleep_ms into the module
 * table at the top of the stack. */
void pk_open_signals(lua_State *L);

#endif
