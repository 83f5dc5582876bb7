/* token.c - tokens, hashes, constant-time comparison (see token.h). */
#include "token.h"

#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

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

/*
 * Stored passwords (the incoming password, download passwords) are hashed
 * with PBKDF2-HMAC-SHA256 and a random salt, so a leaked store does not
 * give them away cheaply. Format: "pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>".
 */
#define PW_ITERATIONS 100000
#define PW_SALT_BYTES 16
#define PW_HASH_BYTES 32

static int pbkdf2(const char *pw, size_t n, const unsigned char *salt, size_t saltlen,
                  int iterations, unsigned char out[PW_HASH_BYTES]) {
    return PKCS5_PBKDF2_HMAC(pw, (int)n, salt, (int)saltlen, iterations, EVP_sha256(),
                             PW_HASH_BYTES, out) == 1;
}

/* password_hash(pw) -> "pbkdf2-sha256$..." */
static int l_password_hash(lua_State *L) {
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n <= 1024, 1, "password longer than 1024 bytes");
    unsigned char salt[PW_SALT_BYTES], hash[PW_HASH_BYTES];
    if (RAND_bytes(salt, sizeof salt) != 1 || !pbkdf2(pw, n, salt, sizeof salt, PW_ITERATIONS, hash))
        return luaL_error(L, "pksync: libcrypto failed to hash a password");
    pk_buf out = PK_BUF_INIT;
    pk_buf_addf(&out, "pbkdf2-sha256$%d$", PW_ITERATIONS);
    pk_base64_encode(&out, salt, sizeof salt);
    pk_buf_addc(&out, '$');
    pk_base64_encode(&out, hash, sizeof hash);
    OPENSSL_cleanse(hash, sizeof hash);
    if (out.failed) {
        pk_buf_free(&out);
        return luaL_error(L, "pksync: out of memory");
    }
    lua_pushlstring(L, out.data, out.len);
    pk_buf_free(&out);
    return 1;
}

/* Split "pbkdf2-sha256$iter$salt$hash" and decode; 0 when malformed. */
static int parse_stored(const char *s, int *iterations, pk_buf *salt, pk_buf *hash) {
    const char *prefix = "pbkdf2-sha256$";
    size_t plen = strlen(prefix);
    if (strncmp(s, prefix, plen) != 0) return 0;
    char *end;
    long it = strtol(s + plen, &end, 10);
    if (*end != '$' || it < 1000 || it > 10000000) return 0;
    const char *salt_b64 = end + 1, *sep = strchr(salt_b64, '$');
    if (!sep) return 0;
    *iterations = (int)it;
    return pk_base64_decode(salt, salt_b64, (size_t)(sep - salt_b64)) &&
           pk_base64_decode(hash, sep + 1, strlen(sep + 1)) && hash->len == PW_HASH_BYTES;
}

/* password_verify(pw, stored) -> boolean (false for a malformed stored value). */
static int l_password_verify(lua_State *L) {
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    const char *stored = luaL_checkstring(L, 2);
    pk_buf salt = PK_BUF_INIT, hash = PK_BUF_INIT;
    int iterations = 0, ok = 0;
    unsigned char got[PW_HASH_BYTES];
    if (n <= 1024 && parse_stored(stored, &iterations, &salt, &hash) &&
        pbkdf2(pw, n, (unsigned char *)salt.data, salt.len, iterations, got))
        ok = CRYPTO_memcmp(got, hash.data, PW_HASH_BYTES) == 0;
    OPENSSL_cleanse(got, sizeof got);
    pk_buf_free(&salt);
    pk_buf_free(&hash);
    lua_pushboolean(L, ok);
    return 1;
}

static const luaL_Reg token_funcs[] = {
    {"password_hash", l_password_hash},
    {"password_verify", l_password_verify},
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
