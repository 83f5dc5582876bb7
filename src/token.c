/* token.c - tokens, hashes, constant-time comparison (see token.h). */
#include "token.h"

#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "base64.h"
#include "compat.h"

int pk_sha256_hex(const void *data, size_t n, char hex[PK_SHA256_HEX_LEN + 1]) {
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return 0;
    for (unsigned i = 0; i < mdlen; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[PK_SHA256_HEX_LEN] = '\0';
    return 1;
}

int pk_secure_equals(const void *a, size_t na, const void *b, size_t nb) {
    /* Length is not secret (hashes are fixed-size); contents are. */
    if (na != nb) return 0;
    return na == 0 || CRYPTO_memcmp(a, b, na) == 0;
}

/* token_generate() -> 43-character base64url token (32 random bytes). */
static int l_token_generate(lua_State *L) {
    unsigned char raw[PK_TOKEN_BYTES];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return luaL_error(L, "pksync: the system random source failed");
    pk_buf out = PK_BUF_INIT;
    pk_base64url_encode(&out, raw, sizeof raw);
    OPENSSL_cleanse(raw, sizeof raw);
    if (out.failed) {
        pk_buf_free(&out);
        return luaL_error(L, "pksync: out of memory");
    }
    lua_pushlstring(L, out.data, out.len);
    OPENSSL_cleanse(out.data, out.len);
    pk_buf_free(&out);
    return 1;
}

/* sha256_hex(s) -> 64 lowercase hex characters. token_hash is the same
 * function under the protocol's name. */
static int l_sha256_hex(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[PK_SHA256_HEX_LEN + 1];
    if (!pk_sha256_hex(s, n, hex))
        return luaL_error(L, "pksync: SHA-256 failed in libcrypto");
    lua_pushlstring(L, hex, PK_SHA256_HEX_LEN);
    return 1;
}

/* secure_equals(a, b) -> boolean, in time independent of the contents. */
static int l_secure_equals(lua_State *L) {
    size_t na, nb;
    const char *a = luaL_checklstring(L, 1, &na);
    const char *b = luaL_checklstring(L, 2, &nb);
    lua_pushboolean(L, pk_secure_equals(a, na, b, nb));
    return 1;
}

/* random_bytes(n) -> n bytes from the CSPRNG (1 <= n <= 4096). */
static int l_random_bytes(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 4096, 1, "expected 1..4096");
    unsigned char raw[4096];
    if (RAND_bytes(raw, (int)n) != 1)
        return luaL_error(L, "pksync: the system random source failed");
    lua_pushlstring(L, (const char *)raw, (size_t)n);
    OPENSSL_cleanse(raw, (size_t)n);
    return 1;
}

static const luaL_Reg token_funcs[] = {
    {"token_generate", l_token_generate},
    {"token_hash", l_sha256_hex},
    {"sha256_hex", l_sha256_hex},
    {"secure_equals", l_secure_equals},
    {"random_bytes", l_random_bytes},
    {NULL, NULL},
};

void pk_open_token(lua_State *L) {
    luaL_setfuncs(L, token_funcs, 0);
}
