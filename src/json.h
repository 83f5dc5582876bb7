/*
 * json.h - JSON with exact numbers.
 *
 * Two layers. The lexer functions below know nothing about Lua: they work
 * on a byte range [p, end) that need not be NUL-terminated, keep no state
 * outside their arguments (safe in several threads at once) and report
 * errors through a static message. pk_open_json() adds the Lua functions
 * (json_decode, json_encode, decimal, is_decimal, null, array_mt).
 *
 * Error positions: every function that takes `endp` also sets *endp on
 * failure, to the byte where the input stopped making sense, so a caller
 * can report an offset.
 */
#ifndef PKSYNC_JSON_H
#define PKSYNC_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

#include "buf.h"

/* Default and hard upper bound for max_depth. The parser and encoder
 * recurse once per nesting level (about 200 bytes of C stack each), so the
 * bound keeps the worst case under 1 MB. On LuaJIT a C function may hold
 * only ~8000 Lua stack slots, so objects deeper than ~4000 levels fail
 * there with "nesting too deep for the Lua stack" before reaching it. */
#define PK_JSON_DEFAULT_DEPTH 512
#define PK_JSON_DEPTH_LIMIT   4096

/* Registry names of the metatables (see json.c). */
#define PK_JSON_DECIMAL_MT "pksync.decimal"
#define PK_JSON_ARRAY_MT   "pksync.array"

/* Skip JSON whitespace (space, tab, CR, LF); returns the first other byte
 * or end. */
const char *pk_json_ws(const char *p, const char *end);

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
 * Returns 1 when valid. */
int pk_utf8_valid(const char *s, size_t n);

/* p points at the opening quote. Appends the unescaped UTF-8 bytes to out
 * (out may be NULL to validate only). Handles every escape including
 * \uXXXX and surrogate pairs; lone surrogates, raw control characters,
 * invalid UTF-8, bad escapes and unterminated strings are errors. On
 * success sets *endp just past the closing quote and returns 1; on error
 * returns 0 with *err a static message. Allocation failure of out is
 * reported as an error too. */
int pk_json_string(const char *p, const char *end, pk_buf *out,
                   const char **endp, const char **err);

/* Scan one number with the strict RFC 8259 grammar (no leading zeros, no
 * '+', no '.5', no '1.', no NaN). Sets *endp past it and *is_int = 1 when it
 * has neither fraction nor exponent. Returns 0 if malformed. A digit right
 * after a leading zero ("01") is malformed, not a number followed by junk. */
int pk_json_number(const char *p, const char *end, const char **endp, int *is_int);

/* Validate and skip one whole value of any kind (leading whitespace
 * allowed), nesting at most max_depth levels (clamped to
 * PK_JSON_DEPTH_LIMIT). 1 ok / 0 error with *err. */
int pk_json_skip(const char *p, const char *end, int max_depth,
                 const char **endp, const char **err);

/* Find the member `name` of the JSON object at p (leading whitespace
 * allowed): returns 1 with *valp at its value (whitespace skipped) when
 * the object has it, 0 when it has not or the text breaks before it. Keys
 * with escapes are unescaped into scratch to be compared. A key given
 * twice: the first one is found. */
int pk_json_member(const char *p, const char *end, const char *name, size_t name_len,
                   pk_buf *scratch, const char **valp);

/* Append s as a quoted JSON string: escapes ", \, control characters
 * (\b \f \n \r \t, others \u00XX) and U+2028/U+2029 (which break
 * JavaScript). Returns 0, leaving out as it was, when s is not valid
 * UTF-8. */
int pk_json_quote(pk_buf *out, const char *s, size_t n);

/* Append the shortest of %.15g/%.16g/%.17g that reads back as exactly d,
 * with '.' as decimal point whatever the locale; a float that prints like
 * an integer gets ".0" so it decodes as a float again. Returns 0 (appending
 * nothing) for NaN and infinities. */
int pk_json_double(pk_buf *out, double d);

/* Parse integer text ("-"? digits, as accepted by pk_json_number with
 * is_int) into an int64. Returns 0 on overflow or malformed text. */
int pk_json_int64(const char *p, size_t n, int64_t *out);

/* Register json_decode, json_encode, decimal, is_decimal, null and
 * array_mt into the module table at the top of the stack. */
/* Push an exact decimal holding the number text s (which the caller has
 * already validated as a JSON number). */
void pk_json_push_decimal(lua_State *L, const char *s, size_t n);

/* The Lua functions json_decode(s [, opts]) and json_encode(v [, opts]),
 * for C code that needs them on a Lua stack (row hooks in import.c). */
int pk_json_lua_decode(lua_State *L);
int pk_json_lua_encode(lua_State *L);

void pk_open_json(lua_State *L);

#endif
