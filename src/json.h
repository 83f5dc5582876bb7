#ifndef PKSYNC_JSON_H
#define PKSYNC_JSON_H
#include <lua.h>
void pk_open_json(lua_State *L);
#endif
