/* base64.c - RFC 4648 encode/decode (see base64.h). */
#include "base64.h"

#include <lauxlib.h>

#include "compat.h"

static const char STD[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char URL[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void encode(pk_buf *out, const unsigned char *s, size_t n,
                   const char *alphabet, int pad) {
    if (!pk_buf_reserve(out, (n + 2) / 3 * 4)) return;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        pk_buf_addc(out, alphabet[v >> 18 & 63]);
        pk_buf_addc(out, alphabet[v >> 12 & 63]);
        pk_buf_addc(out, alphabet[v >> 6 & 63]);
        pk_buf_addc(out, alphabet[v & 63]);
    }
    if (i == n) return;
    unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0);
    pk_buf_addc(out, alphabet[v >> 18 & 63]);
    pk_buf_addc(out, alphabet[v >> 12 & 63]);
    if (i + 1 < n) pk_buf_addc(out, alphabet[v >> 6 & 63]);
    else if (pad) pk_buf_addc(out, '=');
    if (pad) pk_buf_addc(out, '=');
}

void pk_base64_encode(pk_buf *out, const unsigned char *src, size_t n) {
    encode(out, src, n, STD, 1);
}

void pk_base64url_encode(pk_buf *out, const unsigned char *src, size_t n) {
    encode(out, src, n, URL, 0);
}

static int sextet(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int pk_base64_decode(pk_buf *out, const char *src, size_t n) {
    if (n % 4 != 0) return 0;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        int a = sextet(src[i]), b = sextet(src[i + 1]);
        int c = sextet(src[i + 2]), d = sextet(src[i + 3]);
        if (a < 0 || b < 0) return 0;
        if (last && src[i + 2] == '=' && src[i + 3] == '=') {
            if (b & 15) return 0;     /* non-canonical trailing bits */
            pk_buf_addc(out, (char)(a << 2 | b >> 4));
            break;
        }
        if (c < 0) return 0;
        if (last && src[i + 3] == '=') {
            if (c & 3) return 0;
            pk_buf_addc(out, (char)(a << 2 | b >> 4));
            pk_buf_addc(out, (char)((b & 15) << 4 | c >> 2));
            break;
        }
        if (d < 0) return 0;
        pk_buf_addc(out, (char)(a << 2 | b >> 4));
        pk_buf_addc(out, (char)((b & 15) << 4 | c >> 2));
        pk_buf_addc(out, (char)((c & 3) << 6 | d));
    }
    return !out->failed;
}

/* ---- Lua bindings ------------------------------------------------------- */

/* base64_encode(s) -> standard base64 with padding. */
static int l_base64_encode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    pk_buf out = PK_BUF_INIT;
    pk_base64_encode(&out, (const unsigned char *)s, n);
    if (out.failed) {
        pk_buf_free(&out);
        return luaL_error(L, "pksync: out of memory");
    }
    luaL_addlstring(&b, out.data, out.len); /* may raise: copy first, then free */
    pk_buf_free(&out);
    luaL_pushresult(&b);
    return 1;
}

/* base64_decode(s) -> bytes, or nil, err for malformed input. */
static int l_base64_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    pk_buf out = PK_BUF_INIT;
    if (!pk_base64_decode(&out, s, n)) {
        pk_buf_free(&out);
        lua_pushnil(L);
        lua_pushliteral(L, "invalid base64");
        return 2;
    }
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    pk_buf_free(&out);
    return 1;
}

static const luaL_Reg base64_funcs[] = {
    {"base64_encode", l_base64_encode},
    {"base64_decode", l_base64_decode},
    {NULL, NULL},
};

void pk_open_base64(lua_State *L) {
    luaL_setfuncs(L, base64_funcs, 0);
}
