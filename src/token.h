/*
 * token.h - connection credentials: random tokens, SHA-256 hex digests and
 * constant-time comparison, all through OpenSSL's libcrypto.
 */
#ifndef PKSYNC_TOKEN_H
#define PKSYNC_TOKEN_H

#include <stddef.h>
#include <lua.h>

#define PK_TOKEN_BYTES 32
#define PK_SHA256_HEX_LEN 64

/* Write the lowercase hex SHA-256 of data into hex (65 bytes, NUL-ended).
 * Returns 0 if libcrypto fails. */
int pk_sha256_hex(const void *data, size_t n, char hex[PK_SHA256_HEX_LEN + 1]);

/* Constant-time equality of two byte strings: the time depends only on the
 * lengths, never on where they differ. */
int pk_secure_equals(const void *a, size_t na, const void *b, size_t nb);

/* Register token_generate, token_hash, sha256_hex, secure_equals,
 * random_bytes into the module table at the top of the stack. */
void pk_open_token(lua_State *L);

#endif
