/* placeholder: replaced by the libcurl client */
#include "http.h"
void pk_open_http(lua_State *L) { (void)L; }
