/*
 * base64.h - RFC 4648 base64, standard alphabet with padding (bytea
 * wrappers on the wire) and URL-safe without padding (tokens).
 */
#ifndef PKSYNC_BASE64_H
#define PKSYNC_BASE64_H

#include <stddef.h>
#include "buf.h"

/* Append the encoding of src to out. */
void pk_base64_encode(pk_buf *out, const unsigned char *src, size_t n);
void pk_base64url_encode(pk_buf *out, const unsigned char *src, size_t n);

/* Append the decoding of standard, padded base64 to out. Returns 0 on any
 * malformed input (bad character, bad length, bad padding). */
int pk_base64_decode(pk_buf *out, const char *src, size_t n);

#include <lua.h>
/* Register base64_encode / base64_decode into the module table on top. */
void pk_open_base64(lua_State *L);

#endif
