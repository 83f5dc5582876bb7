/*
 * json.c - JSON that never loses a number (see json.h).
 *
 * Design
 *  - Lexer layer (pk_json_*): pure C over [p, end), no Lua, no allocation
 *    except into a caller's pk_buf, no mutable statics; shared by the Lua
 *    decoder below and by the streaming row scanner elsewhere.
 *  - Number policy of json_decode: integer syntax that fits int64 becomes a
 *    Lua integer (on LuaJIT a number while |v| <= 2^53). Fraction/exponent
 *    syntax becomes a float only when that is exact in both directions: the
 *    double's shortest text (the one json_encode would write) must have the
 *    same decimal value as the source. Everything else (huge integers, 30
 *    digits of pi, 1e400) becomes a *decimal*: a userdata holding the exact
 *    source text, which json_encode writes back verbatim.
 *  - Arrays get the registry metatable "pksync.array", so an empty array
 *    stays an array through decode/encode; json_encode also treats any
 *    table whose keys are exactly 1..n as an array.
 *  - Locale: printf/strtod use LC_NUMERIC's radix character. Parsing hands
 *    strtod only "digits e exponent" (no radix at all) and formatting
 *    rewrites whatever radix printf used into '.'.
 *  - Memory: every malloc'd buffer that is live while Lua may raise sits in
 *    a userdata with __gc ("pksync.jsonbuf"), so an error cannot leak it.
 */
#include "json.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "luax.h"


/* ---- UTF-8 ------------------------------------------------------------ */

/* Length (1-4) of the valid UTF-8 sequence at s, or 0 if there is none.
 * Narrowing the second byte's range is what rules out overlong forms
 * (E0 80.., F0 80..), surrogates (ED A0..) and code points past U+10FFFF
 * (F4 90..). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    unsigned lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

int pk_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t len = u[i] < 0x80 ? 1 : utf8_seq(u + i, n - i);
        if (!len) return 0;
        i += len;
    }
    return 1;
}

static void utf8_put(pk_buf *out, uint32_t cp) {
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | cp >> 6);
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | cp >> 12);
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | cp >> 18);
        n = 4;
    }
    for (size_t i = 1; i < n; i++)
        b[i] = (unsigned char)(0x80 | ((cp >> (6 * (n - 1 - i))) & 0x3F));
    pk_buf_add(out, b, n);
}

/* ---- strings ---------------------------------------------------------- */

const char *pk_json_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* Advance over bytes copied verbatim: printable ASCII except '"' and '\\',
 * and whole valid UTF-8 sequences. Stops at anything needing a decision. */
static const char *verbatim_run(const char *q, const char *end) {
    while (q < end) {
        unsigned char c = (unsigned char)*q;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            q++;
            continue;
        }
        size_t len = c < 0x80 ? 0 : utf8_seq((const unsigned char *)q, (size_t)(end - q));
        if (!len) break;
        q += len;
    }
    return q;
}

static int hex4(const char *p, const char *end, uint32_t *v) {
    uint32_t x = 0;
    if (end - p < 4) return 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        uint32_t d;
        if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
        else return 0;
        x = x << 4 | d;
    }
    *v = x;
    return 1;
}

/* q points at "\u". A high surrogate must be followed by an escaped low
 * one; either half alone would produce invalid UTF-8. Returns the position
 * after the escape(s), or NULL with *err. */
static const char *unicode_escape(const char *q, const char *end, uint32_t *cp,
                                  const char **err) {
    uint32_t hi, lo;
    if (!hex4(q + 2, end, &hi)) {
        *err = "invalid \\u escape";
        return NULL;
    }
    q += 6;
    if (hi < 0xD800 || hi > 0xDFFF) {
        *cp = hi;
        return q;
    }
    if (hi > 0xDBFF || end - q < 6 || q[0] != '\\' || q[1] != 'u' ||
        !hex4(q + 2, end, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
        *err = "lone surrogate in \\u escape";
        return NULL;
    }
    *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    return q + 6;
}

/* q points at a backslash; appends the escaped character to out (if any). */
static const char *escape(const char *q, const char *end, pk_buf *out, const char **err) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (end - q < 2) {
        *err = "unterminated string";
        return NULL;
    }
    const char *simple = q[1] ? strchr(from, q[1]) : NULL;
    if (simple) {
        if (out) pk_buf_addc(out, to[simple - from]);
        return q + 2;
    }
    if (q[1] != 'u') {
        *err = "invalid escape in string";
        return NULL;
    }
    uint32_t cp;
    const char *r = unicode_escape(q, end, &cp, err);
    if (r && out) utf8_put(out, cp);
    return r;
}

/* The string scanner behind pk_json_string, json_decode and pk_json_skip.
 * out may be NULL (validate only). Returns 0 on error (*endp at the
 * offending byte), 1 for a string without escapes (its bytes between the
 * quotes can be used as they are), 2 for one with escapes. */
static int scan_string(const char *p, const char *end, pk_buf *out,
                       const char **endp, const char **err) {
    const char *q = p + 1;
    int escaped = 0;
    if (p >= end || *p != '"') {
        *endp = p;
        *err = "expected a string";
        return 0;
    }
    for (;;) {
        const char *run = q;
        q = verbatim_run(q, end);
        if (out) pk_buf_add(out, run, (size_t)(q - run));
        *endp = q;
        if (q >= end) {
            *err = "unterminated string";
            return 0;
        }
        unsigned char c = (unsigned char)*q;
        if (c == '"') break;
        if (c != '\\') {
            *err = c < 0x20 ? "control character in string" : "invalid UTF-8 in string";
            return 0;
        }
        q = escape(q, end, out, err);
        if (!q) return 0;
        escaped = 1;
    }
    *endp = q + 1;
    return escaped ? 2 : 1;
}

int pk_json_string(const char *p, const char *end, pk_buf *out,
                   const char **endp, const char **err) {
    if (!scan_string(p, end, out, endp, err)) return 0;
    if (out && out->failed) {
        *err = "out of memory";
        return 0;
    }
    return 1;
}

/* ---- numbers ---------------------------------------------------------- */

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static const char *skip_digits(const char *p, const char *end) {
    while (p < end && is_digit(*p)) p++;
    return p;
}

static int bad_number(const char **endp, const char *q) {
    *endp = q;
    return 0;
}

int pk_json_number(const char *p, const char *end, const char **endp, int *is_int) {
    const char *q = p, *d;
    *is_int = 1;
    if (q < end && *q == '-') q++;
    if (q >= end || !is_digit(*q)) return bad_number(endp, q);
    /* "01" is rejected here rather than read as 0 followed by junk. */
    if (*q == '0' && q + 1 < end && is_digit(q[1])) return bad_number(endp, q + 1);
    q = *q == '0' ? q + 1 : skip_digits(q, end);
    if (q < end && *q == '.') {
        d = skip_digits(q + 1, end);
        if (d == q + 1) return bad_number(endp, d);
        q = d;
        *is_int = 0;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < end && (*q == '+' || *q == '-')) q++;
        d = skip_digits(q, end);
        if (d == q) return bad_number(endp, d);
        q = d;
        *is_int = 0;
    }
    *endp = q;
    return 1;
}

int pk_json_int64(const char *p, size_t n, int64_t *out) {
    int neg = n > 0 && p[0] == '-';
    size_t i = (size_t)neg;
    int64_t v = 0;
    if (i == n) return 0;
    /* Accumulate negatively: the negative range also holds INT64_MIN.
     * C division truncates toward zero, so the bound is a ceiling. */
    for (; i < n; i++) {
        if (!is_digit(p[i])) return 0;
        int dig = p[i] - '0';
        if (v < (INT64_MIN + dig) / 10) return 0;
        v = v * 10 - dig;
    }
    if (!neg) {
        if (v == INT64_MIN) return 0;
        v = -v;
    }
    *out = v;
    return 1;
}

/* A decimal value in normal form: sign, significant digits without
 * leading or trailing zeros (none for zero), and a power of ten.
 * Two texts with the same normal form denote the same number. */
#define SIG_DIGITS 17   /* a double never needs more for a round trip */

typedef struct {
    int neg;
    int ndig;
    char dig[SIG_DIGITS];
    long long scale;    /* value = dig * 10^scale */
} dec_norm;

/* Exponent digits after 'e', saturated: anything beyond 10^6 is far past
 * the range of a double, and saturating keeps the arithmetic safe. */
static long long read_exponent(const char *p, const char *end, int *huge) {
    int neg = 0;
    long long e = 0;
    if (p < end && (*p == '+' || *p == '-')) neg = *p++ == '-';
    for (; p < end && is_digit(*p); p++) {
        e = e * 10 + (*p - '0');
        if (e > 1000000) {
            *huge = 1;
            e = 1000000;
        }
    }
    return neg ? -e : e;
}

/* Normalise validated number text, or return 0 when it has more than
 * SIG_DIGITS significant digits or an absurd exponent (no double then has
 * the same value, so the caller keeps the text as a decimal). */
static int dec_normalise(const char *p, const char *end, dec_norm *v) {
    long long pending = 0, nfrac = 0;
    int in_frac = 0, huge = 0;
    v->neg = p < end && *p == '-';
    v->ndig = 0;
    for (p += v->neg; p < end && *p != 'e' && *p != 'E'; p++) {
        if (*p == '.') {
            in_frac = 1;
            continue;
        }
        nfrac += in_frac;
        if (*p == '0') {
            pending += v->ndig > 0;   /* leading zeros never count */
            continue;
        }
        if (v->ndig + pending >= SIG_DIGITS) return 0;
        for (; pending > 0; pending--) v->dig[v->ndig++] = '0';
        v->dig[v->ndig++] = *p;
    }
    long long e = p < end ? read_exponent(p + 1, end, &huge) : 0;
    if (v->ndig == 0) {   /* zero: the exponent is irrelevant */
        v->scale = 0;
        return 1;
    }
    v->scale = e - nfrac + pending;
    return !huge;
}

static int dec_equal(const dec_norm *a, const dec_norm *b) {
    return a->neg == b->neg && a->ndig == b->ndig && a->scale == b->scale &&
           memcmp(a->dig, b->dig, (size_t)a->ndig) == 0;
}

/* printf writes LC_NUMERIC's radix character (',' in many locales, a
 * multibyte string in a few). In %g output everything but digits, signs
 * and 'e' is that radix, so it is replaced by '.' without consulting
 * localeconv(), which POSIX does not require to be thread-safe. */
static size_t fix_radix(char *s) {
    size_t o = 0;
    int in_radix = 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (is_digit(c) || c == '-' || c == '+' || c == 'e') {
            s[o++] = c;
            in_radix = 0;
        } else if (!in_radix) {
            s[o++] = '.';
            in_radix = 1;
        }
    }
    s[o] = '\0';
    return o;
}

/* The text json_encode writes for finite d, into buf; returns its length.
 * strtod reads back printf's own locale, so the round-trip test is done
 * before the radix is rewritten. */
#define DOUBLE_TEXT_MAX 48

static size_t double_text(double d, char buf[DOUBLE_TEXT_MAX]) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, DOUBLE_TEXT_MAX, "%.*g", prec, d);
        if (prec == 17 || strtod(buf, NULL) == d) break;
    }
    size_t n = fix_radix(buf);
    if (strspn(buf, "-0123456789") == n) {   /* looks like an integer */
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return n;
}

int pk_json_double(pk_buf *out, double d) {
    char buf[DOUBLE_TEXT_MAX];
    if (!isfinite(d)) return 0;
    pk_buf_add(out, buf, double_text(d, buf));
    return 1;
}

/* Whether the fraction/exponent number text [p, end) is exactly a double
 * that json_encode would write back with the same value; *d receives it.
 * strtod gets "digits e scale" with no radix character, so the locale
 * cannot change what it reads. */
static int exact_double(const char *p, const char *end, double *d) {
    dec_norm src, back;
    char buf[DOUBLE_TEXT_MAX];
    if (!dec_normalise(p, end, &src)) return 0;
    if (src.ndig == 0)
        snprintf(buf, sizeof buf, "%s0", src.neg ? "-" : "");
    else
        snprintf(buf, sizeof buf, "%s%.*se%lld", src.neg ? "-" : "", src.ndig,
                 src.dig, src.scale);
    *d = strtod(buf, NULL);
    if (!isfinite(*d)) return 0;
    size_t n = double_text(*d, buf);
    return dec_normalise(buf, buf + n, &back) && dec_equal(&src, &back);
}

/* ---- validation without building (pk_json_skip) ------------------------ */

typedef struct {
    const char *end;
    int max_depth;
    const char *err;   /* static message of the failure */
} lexer;

/* Record a failure at p; reaching the end of input gets its own message
 * because "truncated" is the most useful thing to tell. */
static int lex_fail(lexer *x, const char **pp, const char *p, const char *msg) {
    *pp = p;
    x->err = p >= x->end ? "unexpected end of input" : msg;
    return 0;
}

static int has_literal(const char *p, const char *end, const char *word) {
    size_t n = strlen(word);
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

/* After a container item: ',' (*more = 1) or the closing bracket. */
static int after_item(lexer *x, const char **pp, char close, int *more) {
    const char *p = pk_json_ws(*pp, x->end);
    if (p < x->end && (*p == ',' || *p == close)) {
        *more = *p == ',';
        *pp = p + 1;
        return 1;
    }
    return lex_fail(x, pp, p, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
}

/* An object key and its colon; leaves *pp at the value. */
static int skip_key(lexer *x, const char **pp) {
    const char *p = pk_json_ws(*pp, x->end);
    if (p >= x->end || *p != '"') return lex_fail(x, pp, p, "object key must be a string");
    if (!scan_string(p, x->end, NULL, pp, &x->err)) return 0;
    p = pk_json_ws(*pp, x->end);
    if (p >= x->end || *p != ':') return lex_fail(x, pp, p, "expected ':'");
    *pp = p + 1;
    return 1;
}

static int skip_value(lexer *x, const char **pp, int depth);

static int skip_container(lexer *x, const char **pp, int depth) {
    char close = **pp == '{' ? '}' : ']';
    const char *p = pk_json_ws(*pp + 1, x->end);
    int more = 1;
    if (depth > x->max_depth) return lex_fail(x, pp, *pp, "nesting too deep");
    if (p < x->end && *p == close) {
        *pp = p + 1;
        return 1;
    }
    *pp = p;
    while (more) {
        if (close == '}' && !skip_key(x, pp)) return 0;
        if (!skip_value(x, pp, depth) || !after_item(x, pp, close, &more)) return 0;
    }
    return 1;
}

static int skip_value(lexer *x, const char **pp, int depth) {
    const char *p = pk_json_ws(*pp, x->end), *q;
    int is_int;
    *pp = p;
    if (p >= x->end) return lex_fail(x, pp, p, "unexpected end of input");
    switch (*p) {
    case '{': case '[':
        return skip_container(x, pp, depth + 1);
    case '"':
        return scan_string(p, x->end, NULL, pp, &x->err) != 0;
    case 't': case 'f': case 'n': {
        const char *word = *p == 't' ? "true" : *p == 'f' ? "false" : "null";
        if (!has_literal(p, x->end, word)) return lex_fail(x, pp, p, "invalid literal");
        *pp = p + strlen(word);
        return 1;
    }
    default:
        if (!pk_json_number(p, x->end, &q, &is_int))
            return lex_fail(x, pp, p, *p == '-' || is_digit(*p) ? "invalid number"
                                                               : "unexpected character");
        *pp = q;
        return 1;
    }
}

int pk_json_skip(const char *p, const char *end, int max_depth,
                 const char **endp, const char **err) {
    lexer x = {end, max_depth > PK_JSON_DEPTH_LIMIT ? PK_JSON_DEPTH_LIMIT : max_depth, NULL};
    *endp = p;
    if (skip_value(&x, endp, 0)) return 1;
    *err = x.err;
    return 0;
}

/* Whether the key string at *pp is `name`; *pp moves past it. */
static int key_is(const char **pp, const char *end, const char *name, size_t name_len,
                  pk_buf *scratch, int *match) {
    const char *p = *pp, *q = p + 1, *err;
    while (q < end && *q != '"' && *q != '\\') q++;
    if (q < end && *q == '"') {   /* no escapes: compare in place */
        *match = (size_t)(q - p - 1) == name_len && memcmp(p + 1, name, name_len) == 0;
        *pp = q + 1;
        return 1;
    }
    pk_buf_reset(scratch);
    if (!pk_json_string(p, end, scratch, pp, &err)) return 0;
    *match = scratch->len == name_len && (name_len == 0 || memcmp(scratch->data, name, name_len) == 0);
    return 1;
}

int pk_json_member(const char *p, const char *end, const char *name, size_t name_len,
                   pk_buf *scratch, const char **valp) {
    const char *err;
    p = pk_json_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = pk_json_ws(p + 1, end);
    while (p < end && *p == '"') {
        int match;
        if (!key_is(&p, end, name, name_len, scratch, &match)) return 0;
        p = pk_json_ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = pk_json_ws(p + 1, end);
        if (match) {
            *valp = p;
            return 1;
        }
        if (!pk_json_skip(p, end, PK_JSON_DEFAULT_DEPTH, &p, &err)) return 0;
        p = pk_json_ws(p, end);
        if (p >= end || *p != ',') return 0;
        p = pk_json_ws(p + 1, end);
    }
    return 0;
}

/* ---- quoting ---------------------------------------------------------- */

static void add_escape(pk_buf *out, const unsigned char *c, size_t len) {
    static const char hex[] = "0123456789abcdef";
    if (len == 3) {   /* U+2028 / U+2029: valid JSON, but not valid JavaScript */
        pk_buf_add(out, c[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
        return;
    }
    switch (*c) {
    case '"': pk_buf_add(out, "\\\"", 2); return;
    case '\\': pk_buf_add(out, "\\\\", 2); return;
    case '\b': pk_buf_add(out, "\\b", 2); return;
    case '\f': pk_buf_add(out, "\\f", 2); return;
    case '\n': pk_buf_add(out, "\\n", 2); return;
    case '\r': pk_buf_add(out, "\\r", 2); return;
    case '\t': pk_buf_add(out, "\\t", 2); return;
    default: {
        char u[6] = {'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 15]};
        pk_buf_add(out, u, sizeof u);
    }
    }
}

static int is_line_separator(const unsigned char *u, size_t len) {
    return len == 3 && u[0] == 0xE2 && u[1] == 0x80 && (u[2] == 0xA8 || u[2] == 0xA9);
}

int pk_json_quote(pk_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t mark = out->len, i = 0, run = 0;
    pk_buf_reserve(out, n + 2);
    pk_buf_addc(out, '"');
    while (i < n) {
        size_t len = 1;
        if (u[i] >= 0x80) {
            len = utf8_seq(u + i, n - i);
            if (!len) {
                out->len = mark;   /* drop the partial literal */
                return 0;
            }
            if (!is_line_separator(u + i, len)) {
                i += len;
                continue;
            }
        } else if (u[i] >= 0x20 && u[i] != '"' && u[i] != '\\') {
            i++;
            continue;
        }
        pk_buf_add(out, s + run, i - run);
        add_escape(out, u + i, len);
        i += len;
        run = i;
    }
    pk_buf_add(out, s + run, n - run);
    pk_buf_addc(out, '"');
    return 1;
}

/* ---- Lua: buffers and decimals ----------------------------------------- */

/* A pk_buf owned by a userdata, so a Lua error raised while it is live
 * cannot leak it; callers still free it as soon as they are done. */

typedef struct {
    size_t len;
    char text[];   /* the exact JSON number text, NUL-terminated */
} pk_decimal;

void pk_json_push_decimal(lua_State *L, const char *s, size_t n) {
    pk_decimal *d = lua_newuserdata(L, sizeof *d + n + 1);
    d->len = n;
    memcpy(d->text, s, n);
    d->text[n] = '\0';
    luaL_setmetatable(L, PK_JSON_DECIMAL_MT);
}

static pk_decimal *to_decimal(lua_State *L, int idx) {
    return luaL_testudata(L, idx, PK_JSON_DECIMAL_MT);
}

/* decimal(text) -> decimal; text must be one JSON number, nothing else.
 * Only strings: a Lua number would already have lost the digits. */
static int l_decimal(lua_State *L) {
    size_t n;
    const char *q;
    int is_int;
    luaL_checktype(L, 1, LUA_TSTRING);
    const char *s = lua_tolstring(L, 1, &n);
    if (!pk_json_number(s, s + n, &q, &is_int) || q != s + n)
        return luaL_argerror(L, 1, "not a JSON number");
    pk_json_push_decimal(L, s, n);
    return 1;
}

static int l_is_decimal(lua_State *L) {
    lua_pushboolean(L, to_decimal(L, 1) != NULL);
    return 1;
}

static int l_decimal_tostring(lua_State *L) {
    pk_decimal *d = luaL_checkudata(L, 1, PK_JSON_DECIMAL_MT);
    lua_pushlstring(L, d->text, d->len);
    return 1;
}

/* Same text, not same value: "1.50" and "1.5" differ, as they do in the
 * documents being synchronised. */
static int l_decimal_eq(lua_State *L) {
    pk_decimal *a = to_decimal(L, 1), *b = to_decimal(L, 2);
    lua_pushboolean(L, a && b && a->len == b->len && memcmp(a->text, b->text, a->len) == 0);
    return 1;
}

static void push_concat_operand(lua_State *L, int idx) {
    pk_decimal *d = to_decimal(L, idx);
    int t = lua_type(L, idx);
    if (d) {
        lua_pushlstring(L, d->text, d->len);
    } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        lua_pushvalue(L, idx);
        lua_tolstring(L, -1, NULL);
    } else {
        luaL_error(L, "attempt to concatenate a decimal with a %s value", luaL_typename(L, idx));
    }
}

static int l_decimal_concat(lua_State *L) {
    push_concat_operand(L, 1);
    push_concat_operand(L, 2);
    lua_concat(L, 2);
    return 1;
}

/* ---- Lua: options ------------------------------------------------------ */

static int opt_depth(lua_State *L) {
    int64_t v = 0;
    if (!pk_to_int64(L, -1, &v) || v < 1 || v > PK_JSON_DEPTH_LIMIT)
        luaL_error(L, "pksync: max_depth must be an integer from 1 to %d", PK_JSON_DEPTH_LIMIT);
    return (int)v;
}

/* opts at idx: nil or a table with known keys only (a misspelt option
 * silently ignored would be worse). sort_keys is NULL for json_decode. */
static void read_opts(lua_State *L, int idx, int *max_depth, int *sort_keys) {
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        if (strcmp(k, "max_depth") == 0) {
            *max_depth = opt_depth(L);
        } else if (sort_keys && strcmp(k, "sort_keys") == 0) {
            luaL_argcheck(L, lua_isboolean(L, -1), idx, "sort_keys must be a boolean");
            *sort_keys = lua_toboolean(L, -1);
        } else {
            luaL_argerror(L, idx, "unknown option");
        }
        lua_pop(L, 1);
    }
}

/* ---- Lua: json_decode -------------------------------------------------- */

typedef struct {
    lexer x;
    lua_State *L;
    int array_mt;      /* stack index of the pksync.array metatable */
    pk_buf *scratch;   /* unescaping buffer, inside a userdata */
} decoder;

static const char DEPTH_MSG[] = "nesting deeper than max_depth";

static int decode_value(decoder *d, const char **pp, int depth);

/* Every container level: depth limit, and room on the Lua stack for the
 * table, a key and a value. */
static int enter(decoder *d, const char **pp, int depth) {
    if (depth > d->x.max_depth) return lex_fail(&d->x, pp, *pp, DEPTH_MSG);
    if (!lua_checkstack(d->L, 4))
        return lex_fail(&d->x, pp, *pp, "nesting too deep for the Lua stack");
    return 1;
}

static int decode_string(decoder *d, const char **pp) {
    const char *start = *pp;
    int r = scan_string(start, d->x.end, NULL, pp, &d->x.err);
    if (r == 1) {   /* no escapes: the bytes are the string */
        lua_pushlstring(d->L, start + 1, (size_t)(*pp - start - 2));
    } else if (r == 2) {
        pk_buf_reset(d->scratch);
        scan_string(start, d->x.end, d->scratch, pp, &d->x.err);
        if (d->scratch->failed) return luaL_error(d->L, "pksync: out of memory");
        lua_pushlstring(d->L, d->scratch->data, d->scratch->len);
    }
    return r != 0;
}

/* Integers exactly, floats when exact (see exact_double), else a decimal. */
static int decode_number(decoder *d, const char **pp) {
    const char *p = *pp, *q;
    int is_int;
    int64_t i;
    double f;
    if (!pk_json_number(p, d->x.end, &q, &is_int))
        return lex_fail(&d->x, pp, q >= d->x.end ? q : p, "invalid number");
    *pp = q;
    if (is_int) {
        if (pk_json_int64(p, (size_t)(q - p), &i) && pk_push_int64(d->L, i)) return 1;
    } else if (exact_double(p, q, &f)) {
        lua_pushnumber(d->L, (lua_Number)f);
        return 1;
    }
    pk_json_push_decimal(d->L, p, (size_t)(q - p));
    return 1;
}

static int decode_array(decoder *d, const char **pp, int depth) {
    lua_State *L = d->L;
    const char *p;
    int more = 1;
    if (!enter(d, pp, depth)) return 0;
    lua_newtable(L);
    lua_pushvalue(L, d->array_mt);
    lua_setmetatable(L, -2);
    p = pk_json_ws(*pp + 1, d->x.end);
    if (p < d->x.end && *p == ']') {
        *pp = p + 1;
        return 1;
    }
    *pp = p;
    for (int n = 1; more; n++) {
        if (!decode_value(d, pp, depth)) return 0;
        lua_rawseti(L, -2, n);
        if (!after_item(&d->x, pp, ']', &more)) return 0;
    }
    return 1;
}

static int decode_key(decoder *d, const char **pp) {
    const char *p = pk_json_ws(*pp, d->x.end);
    if (p >= d->x.end || *p != '"')
        return lex_fail(&d->x, pp, p, "object key must be a string");
    *pp = p;
    if (!decode_string(d, pp)) return 0;
    p = pk_json_ws(*pp, d->x.end);
    if (p >= d->x.end || *p != ':') return lex_fail(&d->x, pp, p, "expected ':'");
    *pp = p + 1;
    return 1;
}

static int decode_object(decoder *d, const char **pp, int depth) {
    const char *p;
    int more = 1;
    if (!enter(d, pp, depth)) return 0;
    lua_newtable(d->L);
    p = pk_json_ws(*pp + 1, d->x.end);
    if (p < d->x.end && *p == '}') {
        *pp = p + 1;
        return 1;
    }
    *pp = p;
    while (more) {
        if (!decode_key(d, pp) || !decode_value(d, pp, depth)) return 0;
        lua_rawset(d->L, -3);   /* duplicate keys: the last one wins */
        if (!after_item(&d->x, pp, '}', &more)) return 0;
    }
    return 1;
}

static int decode_literal(decoder *d, const char **pp) {
    const char *p = *pp;
    const char *word = *p == 't' ? "true" : *p == 'f' ? "false" : "null";
    if (!has_literal(p, d->x.end, word)) return lex_fail(&d->x, pp, p, "invalid literal");
    *pp = p + strlen(word);
    if (*p == 'n')
        lua_pushlightuserdata(d->L, NULL);   /* the null of cjson and ngx */
    else
        lua_pushboolean(d->L, *p == 't');
    return 1;
}

static int decode_value(decoder *d, const char **pp, int depth) {
    const char *p = pk_json_ws(*pp, d->x.end);
    *pp = p;
    if (p >= d->x.end) return lex_fail(&d->x, pp, p, "unexpected end of input");
    switch (*p) {
    case '{': return decode_object(d, pp, depth + 1);
    case '[': return decode_array(d, pp, depth + 1);
    case '"': return decode_string(d, pp);
    case 't': case 'f': case 'n': return decode_literal(d, pp);
    default:
        if (*p == '-' || is_digit(*p)) return decode_number(d, pp);
        return lex_fail(&d->x, pp, p, "unexpected character");
    }
}

static void push_decode_error(lua_State *L, const decoder *d, size_t offset) {
    char msg[160];
    if (d->x.err == DEPTH_MSG)
        snprintf(msg, sizeof msg, "invalid JSON at byte %zu: nesting deeper than %d",
                 offset, d->x.max_depth);
    else
        snprintf(msg, sizeof msg, "invalid JSON at byte %zu: %s", offset, d->x.err);
    lua_pushnil(L);
    lua_pushstring(L, msg);
}

/* json_decode(s [, opts]) -> value | nil, "invalid JSON at byte N: why" */
int pk_json_lua_decode(lua_State *L) {
    size_t n;
    luaL_checktype(L, 1, LUA_TSTRING);
    const char *s = lua_tolstring(L, 1, &n), *p = s;
    decoder d = {{s + n, PK_JSON_DEFAULT_DEPTH, NULL}, L, 0, NULL};
    read_opts(L, 2, &d.x.max_depth, NULL);
    lua_settop(L, 2);
    luaL_getmetatable(L, PK_JSON_ARRAY_MT);
    d.array_mt = lua_gettop(L);
    d.scratch = pk_luabuf_push(L);
    int ok = decode_value(&d, &p, 0);
    if (ok && (p = pk_json_ws(p, d.x.end)) < d.x.end)
        ok = lex_fail(&d.x, &p, p, "unexpected character after the JSON value");
    pk_buf_free(d.scratch);   /* now rather than at the next GC cycle */
    if (ok) return 1;
    lua_settop(L, 2);
    push_decode_error(L, &d, (size_t)(p - s) + 1);
    return 2;
}

/* ---- Lua: json_encode -------------------------------------------------- */

typedef struct {
    lua_State *L;
    pk_buf *out;       /* inside a userdata */
    int max_depth;
    int sort_keys;
    int array_mt;      /* stack index of the pksync.array metatable */
    const char *err;   /* lua_pushfstring format; %s is `what` */
    const char *what;
} encoder;

static const char ENC_DEPTH_MSG[] = "cannot encode: nesting deeper than %d (cyclic table?)";

enum { SHAPE_EMPTY, SHAPE_ARRAY, SHAPE_OBJECT, SHAPE_MIXED };

static int encode_value(encoder *e, int idx, int depth);

static int enc_fail(encoder *e, const char *msg) {
    e->err = msg;
    return 0;
}

/* Integer text for 5.4 integers, and on LuaJIT for integral numbers with
 * |n| <= 2^53 (the same bound the decoder uses for integer text, so such
 * documents round-trip unchanged) except -0.0, which goes out as "-0.0" so
 * that its sign survives. */
static int integer_text(lua_State *L, int idx, int64_t *i) {
    if (!pk_to_int64(L, idx, i)) return 0;
    lua_Number n = lua_tonumber(L, idx);
    return !(n == 0 && signbit(n));
}

static int encode_number(encoder *e, int idx) {
    int64_t i;
    if (integer_text(e->L, idx, &i)) {
        char buf[24];
        int n = snprintf(buf, sizeof buf, "%lld", (long long)i);
        pk_buf_add(e->out, buf, (size_t)n);
        return 1;
    }
    if (!pk_json_double(e->out, (double)lua_tonumber(e->L, idx)))
        return enc_fail(e, "cannot encode NaN or infinity");
    return 1;
}

static int encode_string(encoder *e, int idx) {
    size_t n;
    const char *s = lua_tolstring(e->L, idx, &n);
    if (!pk_json_quote(e->out, s, n)) return enc_fail(e, "cannot encode invalid UTF-8 string");
    return 1;
}

static int has_array_mt(encoder *e, int idx) {
    if (!lua_getmetatable(e->L, idx)) return 0;
    int r = lua_rawequal(e->L, -1, e->array_mt);
    lua_pop(e->L, 1);
    return r;
}

/* Decide how the table at idx is written. Arrays need keys exactly 1..n
 * (n distinct positive integers whose maximum is n); objects need string
 * keys only. *n gets the number of keys. */
static int classify(encoder *e, int idx, size_t *n) {
    lua_State *L = e->L;
    size_t nint = 0, nstr = 0;
    int64_t k, max = 0;
    int marked = has_array_mt(e, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            nstr++;
        } else if (pk_to_int64(L, -1, &k) && k >= 1) {
            nint++;
            if (k > max) max = k;
        } else {
            lua_pop(L, 1);
            return SHAPE_MIXED;
        }
    }
    if (nstr) {
        *n = nstr;
        return nint || marked ? SHAPE_MIXED : SHAPE_OBJECT;
    }
    *n = nint;
    if ((uint64_t)max != nint) return SHAPE_MIXED;
    return nint || marked ? SHAPE_ARRAY : SHAPE_EMPTY;
}

static int encode_array(encoder *e, int idx, size_t n, int depth) {
    pk_buf_addc(e->out, '[');
    for (size_t i = 1; i <= n; i++) {
        if (i > 1) pk_buf_addc(e->out, ',');
        lua_rawgeti(e->L, idx, (int)i);
        if (!encode_value(e, lua_gettop(e->L), depth)) return 0;
        lua_pop(e->L, 1);
    }
    pk_buf_addc(e->out, ']');
    return 1;
}

/* "key":value with the key at top-1 and the value at top. */
static int encode_member(encoder *e, int depth) {
    int top = lua_gettop(e->L);
    if (!encode_string(e, top - 1)) return 0;
    pk_buf_addc(e->out, ':');
    return encode_value(e, top, depth);
}

static int encode_object(encoder *e, int idx, int depth) {
    int first = 1;
    pk_buf_addc(e->out, '{');
    lua_pushnil(e->L);
    while (lua_next(e->L, idx)) {
        if (!first) pk_buf_addc(e->out, ',');
        first = 0;
        if (!encode_member(e, depth)) return 0;
        lua_pop(e->L, 1);
    }
    pk_buf_addc(e->out, '}');
    return 1;
}

typedef struct {
    const char *s;
    size_t n;
} key_ref;

static int key_cmp(const void *a, const void *b) {
    const key_ref *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* Bytewise-sorted object. The key pointers live in a userdata (collected
 * on error) and the key strings are anchored in a table next to it, so
 * the pointers stay valid whatever else runs meanwhile. */
static int encode_sorted(encoder *e, int idx, size_t n, int depth) {
    lua_State *L = e->L;
    key_ref *keys = lua_newuserdata(L, n * sizeof *keys);
    size_t i = 0;
    lua_createtable(L, (int)n, 0);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        keys[i].s = lua_tolstring(L, -1, &keys[i].n);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, (int)++i);
    }
    qsort(keys, n, sizeof *keys, key_cmp);
    pk_buf_addc(e->out, '{');
    for (i = 0; i < n; i++) {
        if (i) pk_buf_addc(e->out, ',');
        lua_pushlstring(L, keys[i].s, keys[i].n);
        lua_pushvalue(L, -1);
        lua_rawget(L, idx);
        if (!encode_member(e, depth)) return 0;
        lua_pop(L, 2);
    }
    pk_buf_addc(e->out, '}');
    lua_pop(L, 2);
    return 1;
}

static int encode_table(encoder *e, int idx, int depth) {
    size_t n = 0;
    if (depth > e->max_depth) return enc_fail(e, ENC_DEPTH_MSG);
    if (!lua_checkstack(e->L, 8))
        return enc_fail(e, "cannot encode: nesting too deep for the Lua stack");
    switch (classify(e, idx, &n)) {
    case SHAPE_EMPTY:
        pk_buf_add(e->out, "{}", 2);
        return 1;
    case SHAPE_ARRAY:
        return encode_array(e, idx, n, depth);
    case SHAPE_OBJECT:
        return e->sort_keys ? encode_sorted(e, idx, n, depth) : encode_object(e, idx, depth);
    default:
        return enc_fail(e, "cannot encode table with mixed or sparse keys");
    }
}

static int encode_value(encoder *e, int idx, int depth) {
    lua_State *L = e->L;
    pk_decimal *dec;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        pk_buf_add(e->out, "null", 4);
        return 1;
    case LUA_TBOOLEAN:
        pk_buf_adds(e->out, lua_toboolean(L, idx) ? "true" : "false");
        return 1;
    case LUA_TNUMBER: return encode_number(e, idx);
    case LUA_TSTRING: return encode_string(e, idx);
    case LUA_TTABLE: return encode_table(e, idx, depth + 1);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != NULL) break;
        pk_buf_add(e->out, "null", 4);
        return 1;
    case LUA_TUSERDATA:
        if (!(dec = to_decimal(L, idx))) break;
        pk_buf_add(e->out, dec->text, dec->len);
        return 1;
    }
    e->what = luaL_typename(L, idx);
    return enc_fail(e, "cannot encode a value of type %s");
}

/* json_encode(v [, opts]) -> text | nil, why */
int pk_json_lua_encode(lua_State *L) {
    encoder e = {L, NULL, PK_JSON_DEFAULT_DEPTH, 0, 0, NULL, ""};
    luaL_checkany(L, 1);
    read_opts(L, 2, &e.max_depth, &e.sort_keys);
    lua_settop(L, 2);
    luaL_getmetatable(L, PK_JSON_ARRAY_MT);
    e.array_mt = lua_gettop(L);
    e.out = pk_luabuf_push(L);
    if (!encode_value(&e, 1, 0)) {
        pk_buf_free(e.out);
        lua_pushnil(L);
        if (e.err == ENC_DEPTH_MSG)
            lua_pushfstring(L, e.err, e.max_depth);
        else
            lua_pushfstring(L, e.err, e.what);
        return 2;
    }
    if (e.out->failed) {
        pk_buf_free(e.out);
        return luaL_error(L, "pksync: out of memory");
    }
    lua_pushlstring(L, e.out->data, e.out->len);
    pk_buf_free(e.out);
    return 1;
}

/* ---- registration ------------------------------------------------------ */

static const luaL_Reg json_funcs[] = {
    {"json_decode", pk_json_lua_decode},
    {"json_encode", pk_json_lua_encode},
    {"decimal", l_decimal},
    {"is_decimal", l_is_decimal},
    {NULL, NULL},
};

static const luaL_Reg decimal_meta[] = {
    {"__tostring", l_decimal_tostring},
    {"__eq", l_decimal_eq},
    {"__concat", l_decimal_concat},
    {NULL, NULL},
};

void pk_open_json(lua_State *L) {
    luaL_setfuncs(L, json_funcs, 0);
    pk_new_type(L, PK_JSON_DECIMAL_MT, decimal_meta, NULL);
    pk_new_type(L, PK_JSON_ARRAY_MT, NULL, NULL);
    luaL_getmetatable(L, PK_JSON_ARRAY_MT);
    lua_setfield(L, -2, "array_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
}
