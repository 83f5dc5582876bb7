#ifndef PKSYNC_HTTP_H
#define PKSYNC_HTTP_H
#include <lua.h>
void pk_open_http(lua_State *L);
#endif
