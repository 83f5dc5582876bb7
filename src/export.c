/*
 * export.c - core.export_rows: one SELECT's rows as protocol JSON.
 *
 *   json, count, has_more, last_key = core.export_rows(db, sql, params, opts)
 *
 * Design
 *  - Three phases. (1) Everything that touches Lua and may raise comes
 *    first: arguments, options and parameter texts are checked and anchored
 *    on the Lua stack. (2) The database work and the JSON writing are plain
 *    C without a single Lua call, so no error can jump out of an open
 *    transaction. (3) Only after the transaction has ended are the results
 *    pushed.
 *  - PostgreSQL's text output depends on session settings (time zone, date
 *    style, float digits, bytea form), so the query runs in a scope that
 *    fixes them with SET LOCAL: its own READ ONLY transaction when the
 *    session is idle, else a savepoint in the caller's transaction that is
 *    rolled back afterwards. Rolling back to the savepoint undoes the SET
 *    LOCALs (the caller sees its own settings again) and, after an SQL
 *    error, leaves the caller's transaction usable.
 *  - Values are written by column type (PQftype / PQfmod), never by shape,
 *    as the "Values on the wire" table of docs/protocol.md says. Built-in types
 *    come from a static const table. Any other OID costs one catalog query
 *    per call, which tells array types (element type seen through domains,
 *    and delimiter) from the rest. Every other type outside the table
 *    (enums, citext, composites, user ranges...) is written as its text,
 *    which is exactly the enum rule, so enums need no lookup of their own.
 *  - Memory: the PGresult and every buffer belong to a per-call userdata
 *    with __gc, so a raise while pushing the results leaks nothing; they
 *    are freed eagerly on the normal path. The per-value path reuses those
 *    buffers: no allocation and no Lua call per value.
 *  - No mutable statics: nginx may run this in several threads at once.
 */
#include "export.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "buf.h"
#include "compat.h"
#include "luax.h"
#include "json.h"
#include "pg.h"
#include "pgarray.h"

#define STATE_MT "pksync.export"

/* ---- types ------------------------------------------------------------ */

typedef enum value_kind {
    K_TEXT,         /* JSON string, binary wrapper if not UTF-8; the fallback */
    K_INT,          /* JSON number, PostgreSQL's digits */
    K_FLOAT4,       /* widened to double, as PhoenixKit's driver does */
    K_FLOAT8,
    K_NUMERIC,      /* string; Decimal.to_string form at top level */
    K_BOOL,
    K_TIMESTAMPTZ,
    K_TIMESTAMP,
    K_TIME,
    K_JSON,         /* the JSON value itself */
    K_BYTEA,
    K_UUID,
    K_ARRAY,
    K_UNRESOLVED    /* not a built-in type: the catalog decides */
} value_kind;

typedef struct builtin_type {
    Oid oid;
    unsigned char kind;
    Oid elem;       /* element type of an array type, else 0 */
} builtin_type;

#define BOX_OID 603 /* the one built-in type whose array delimiter is ';' */

/* OIDs from pg_type.dat, fixed across PostgreSQL versions. Listing the
 * common text-like types too spares the catalog query for them. */
static const builtin_type BUILTIN[] = {
    {16, K_BOOL, 0}, {17, K_BYTEA, 0}, {18, K_TEXT, 0}, {19, K_TEXT, 0},
    {20, K_INT, 0}, {21, K_INT, 0}, {23, K_INT, 0}, {26, K_INT, 0},
    {22, K_TEXT, 0},    /* int2vector: "1 2", not an array literal */
    {30, K_TEXT, 0},    /* oidvector, likewise */
    {25, K_TEXT, 0}, {1042, K_TEXT, 0}, {1043, K_TEXT, 0}, {705, K_TEXT, 0},
    {700, K_FLOAT4, 0}, {701, K_FLOAT8, 0}, {1700, K_NUMERIC, 0},
    {1184, K_TIMESTAMPTZ, 0}, {1114, K_TIMESTAMP, 0}, {1083, K_TIME, 0},
    {1082, K_TEXT, 0}, {1266, K_TEXT, 0}, {1186, K_TEXT, 0},
    {114, K_JSON, 0}, {3802, K_JSON, 0}, {2950, K_UUID, 0},
    {142, K_TEXT, 0}, {650, K_TEXT, 0}, {869, K_TEXT, 0}, {829, K_TEXT, 0},
    {774, K_TEXT, 0}, {790, K_TEXT, 0}, {1560, K_TEXT, 0}, {1562, K_TEXT, 0},
    {600, K_TEXT, 0}, {601, K_TEXT, 0}, {602, K_TEXT, 0}, {603, K_TEXT, 0},
    {604, K_TEXT, 0}, {628, K_TEXT, 0}, {718, K_TEXT, 0}, {2249, K_TEXT, 0},
    {3614, K_TEXT, 0}, {3615, K_TEXT, 0}, {4072, K_TEXT, 0}, {3220, K_TEXT, 0},
    {3904, K_TEXT, 0}, {3906, K_TEXT, 0}, {3908, K_TEXT, 0}, {3910, K_TEXT, 0},
    {3912, K_TEXT, 0}, {3926, K_TEXT, 0},
    /* arrays */
    {1000, K_ARRAY, 16}, {1001, K_ARRAY, 17}, {1002, K_ARRAY, 18},
    {1003, K_ARRAY, 19}, {1016, K_ARRAY, 20}, {1005, K_ARRAY, 21},
    {1007, K_ARRAY, 23}, {1028, K_ARRAY, 26}, {1006, K_ARRAY, 22},
    {1013, K_ARRAY, 30}, {1009, K_ARRAY, 25}, {1014, K_ARRAY, 1042},
    {1015, K_ARRAY, 1043}, {1021, K_ARRAY, 700}, {1022, K_ARRAY, 701},
    {1231, K_ARRAY, 1700}, {1185, K_ARRAY, 1184}, {1115, K_ARRAY, 1114},
    {1183, K_ARRAY, 1083}, {1182, K_ARRAY, 1082}, {1270, K_ARRAY, 1266},
    {1187, K_ARRAY, 1186}, {199, K_ARRAY, 114}, {3807, K_ARRAY, 3802},
    {2951, K_ARRAY, 2950}, {143, K_ARRAY, 142}, {651, K_ARRAY, 650},
    {1041, K_ARRAY, 869}, {1040, K_ARRAY, 829}, {775, K_ARRAY, 774},
    {791, K_ARRAY, 790}, {1561, K_ARRAY, 1560}, {1563, K_ARRAY, 1562},
    {1017, K_ARRAY, 600}, {1018, K_ARRAY, 601}, {1019, K_ARRAY, 602},
    {1020, K_ARRAY, 603}, {1027, K_ARRAY, 604}, {629, K_ARRAY, 628},
    {719, K_ARRAY, 718}, {2287, K_ARRAY, 2249}, {3643, K_ARRAY, 3614},
    {3645, K_ARRAY, 3615}, {4073, K_ARRAY, 4072}, {3221, K_ARRAY, 3220},
    {3905, K_ARRAY, 3904}, {3907, K_ARRAY, 3906}, {3909, K_ARRAY, 3908},
    {3911, K_ARRAY, 3910}, {3913, K_ARRAY, 3912}, {3927, K_ARRAY, 3926},
};

/* A linear scan: it runs once per column and call, never per value. */
static const builtin_type *builtin(Oid oid) {
    for (size_t i = 0; i < sizeof BUILTIN / sizeof BUILTIN[0]; i++)
        if (BUILTIN[i].oid == oid) return &BUILTIN[i];
    return NULL;
}

/* Arrays of array-like element types (a domain over an array) print their
 * elements as quoted literals; those stay text. */
static unsigned char element_kind(Oid elem) {
    const builtin_type *e = builtin(elem);
    return (!e || e->kind == K_ARRAY) ? K_TEXT : e->kind;
}

/* Array types whose OID the table lacks, with the element type followed
 * through domains (a column never is a domain: PostgreSQL reports the base
 * type, but an array's element may be one) and the element's delimiter,
 * which is what array_out separates elements with. */
static const char TYPE_SQL[] =
    "WITH RECURSIVE elem(req, cur, delim, hops) AS ("
    " SELECT a.oid, a.typelem, e.typdelim, 0 FROM pg_catalog.pg_type a"
    " JOIN pg_catalog.pg_type e ON e.oid = a.typelem"
    " WHERE a.oid = ANY ($1::pg_catalog.oid[]) AND a.typlen = -1 AND a.typelem <> 0"
    " UNION ALL"
    " SELECT elem.req, d.typbasetype, elem.delim, elem.hops + 1 FROM elem"
    " JOIN pg_catalog.pg_type d ON d.oid = elem.cur"
    " WHERE d.typtype = 'd' AND elem.hops < 32)"
    " SELECT elem.req, elem.cur, elem.delim FROM elem"
    " JOIN pg_catalog.pg_type b ON b.oid = elem.cur WHERE b.typtype <> 'd'";

/* ---- per-call state ----------------------------------------------------- */

typedef struct col_plan {
    unsigned char kind, elem_kind;
    char delim;             /* array element delimiter */
    char emit;              /* 0 when opts.omit names the column */
    int typmod;             /* fraction digits of time types, -1 = none */
    size_t name_off, name_len;  /* `,"name":` in names */
} col_plan;

enum { SCOPE_NONE, SCOPE_TXN, SCOPE_SAVEPOINT };

typedef struct export_state {
    PGresult *res;          /* the rows */
    PGresult *err;          /* the first failed result, for the report */
    const char *msg;        /* or a failure of our own (static text) */
    int failed;             /* a failure is recorded (err NULL, msg NULL:
                             * the connection's message tells) */
    int nomem;              /* a buffer could not grow */
    const char *missing_key;/* a key column the result lacks (Lua string) */
    int scope;
    int uuid_text;
    int count, has_more;
    col_plan *cols;
    pk_buf out;             /* the JSON text */
    pk_buf names;           /* pre-quoted keys of the emitted columns */
    pk_buf scratch;         /* array element text (pk_pgarray_parse) */
    pk_buf tmp;             /* decoded bytea, type id list, names */
} export_state;

typedef struct export_opts {
    int64_t limit;          /* -1: no limit */
    int uuid_text;
    const char **omit;
    int nomit;
    const char **keys;      /* key column names (anchored Lua strings) */
    int *key_col;           /* their result columns */
    int nkeys;
} export_opts;

typedef struct export_params {
    const char **values;
    int n;
} export_params;

static void free_state(export_state *st) {
    PQclear(st->res);   /* PQclear(NULL) is a no-op */
    PQclear(st->err);
    st->res = st->err = NULL;
    free(st->cols);
    st->cols = NULL;
    pk_buf_free(&st->out);
    pk_buf_free(&st->names);
    pk_buf_free(&st->scratch);
    pk_buf_free(&st->tmp);
}

static int l_state_gc(lua_State *L) {
    free_state((export_state *)luaL_checkudata(L, 1, STATE_MT));
    return 0;
}

static export_state *new_state(lua_State *L) {
    export_state *st = (export_state *)lua_newuserdata(L, sizeof *st);
    memset(st, 0, sizeof *st);
    pk_buf_init(&st->out);
    pk_buf_init(&st->names);
    pk_buf_init(&st->scratch);
    pk_buf_init(&st->tmp);
    luaL_setmetatable(L, STATE_MT);
    return st;
}

/* Record a failure; only the first one is reported. Takes ownership of r. */
static int fail_result(export_state *st, PGresult *r) {
    if (st->failed) {
        PQclear(r);
        return 0;
    }
    st->failed = 1;
    st->err = r;
    return 0;
}

static int fail_msg(export_state *st, const char *msg) {
    if (!st->failed) {
        st->failed = 1;
        st->msg = msg;
    }
    return 0;
}

static int fail_nomem(export_state *st) {
    st->nomem = 1;
    return 0;
}

static int succeeded(const export_state *st) {
    return !st->failed && !st->nomem && !st->missing_key;
}

/* ---- scalar writers ----------------------------------------------------- */

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static void put_binary(pk_buf *out, const char *s, size_t n) {
    static const char open[] = "{\"__phoenix_kit_binary__\":\"";
    pk_buf_add(out, open, sizeof open - 1);
    pk_base64_encode(out, (const unsigned char *)s, n);
    pk_buf_add(out, "\"}", 2);
}

/* Text, and bytes by PhoenixKit's rule: a string when valid UTF-8, else
 * the binary wrapper (text of an SQL_ASCII database may be anything). */
static void put_text(pk_buf *out, const char *s, size_t n) {
    if (!pk_json_quote(out, s, n)) put_binary(out, s, n);
}

static void put_integer(pk_buf *out, const char *s, size_t n) {
    const char *end;
    int is_int;
    if (pk_json_number(s, s + n, &end, &is_int) && end == s + n && is_int)
        pk_buf_add(out, s, n);   /* digits as printed: exact at any size */
    else
        put_text(out, s, n);
}

/* NaN and the infinities travel as the strings Jason writes for them. */
static int put_float_special(pk_buf *out, const char *s, size_t n) {
    const char *word = NULL;
    if (n == 3 && memcmp(s, "NaN", 3) == 0) word = "\"NaN\"";
    else if (n == 8 && memcmp(s, "Infinity", 8) == 0) word = "\"inf\"";
    else if (n == 9 && memcmp(s, "-Infinity", 9) == 0) word = "\"-inf\"";
    if (word) pk_buf_adds(out, word);
    return word != NULL;
}

/* extra_float_digits > 0 makes PostgreSQL print the shortest text that
 * reads back exactly. An integral value ("1", "-0") gets ".0" so that it
 * stays a float on the wire, as PhoenixKit writes 1.0 and -0.0. */
static void put_float8(pk_buf *out, const char *s, size_t n) {
    const char *end;
    int is_int;
    if (put_float_special(out, s, n)) return;
    if (!pk_json_number(s, s + n, &end, &is_int) || end != s + n) {
        put_text(out, s, n);
        return;
    }
    pk_buf_add(out, s, n);
    if (is_int) pk_buf_add(out, ".0", 2);
}

/* Read PostgreSQL's float text into a float without the locale's radix
 * character: "1.5e-05" is handed to strtof as "15e-6". */
static int read_float4(const char *s, size_t n, float *f) {
    char buf[64];
    const char *end;
    size_t o = 0;
    long scale = 0;
    int is_int, in_frac = 0;
    if (n > 40 || !pk_json_number(s, s + n, &end, &is_int) || end != s + n) return 0;
    const char *p = s;
    for (; p < end && *p != 'e' && *p != 'E'; p++) {
        if (*p == '.') {
            in_frac = 1;
            continue;
        }
        buf[o++] = *p;
        scale -= in_frac;
    }
    if (p < end) scale += strtol(p + 1, NULL, 10);
    snprintf(buf + o, sizeof buf - o, "e%ld", scale);
    *f = strtof(buf, NULL);
    return 1;
}

/* PhoenixKit's driver widens a real to double, so 0.1 goes out as
 * 0.10000000149011612: the float's exact value, shortest as a double. */
static void put_float4(pk_buf *out, const char *s, size_t n) {
    float f;
    if (put_float_special(out, s, n)) return;
    if (!read_float4(s, n, &f) || !pk_json_double(out, (double)f)) put_float8(out, s, n);
}

static int plain_decimal(const char *s, size_t n) {
    int dots = 0;
    if (n == 0 || !is_digit(s[0])) return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') dots++;
        else if (!is_digit(s[i])) return 0;
    }
    return dots == 1;
}

/* PhoenixKit writes a top-level numeric with Decimal.to_string/1 (the
 * driver keeps the scale as exponent). That differs from PostgreSQL's
 * text only when the adjusted exponent is below -6: 0.0000001 -> "1E-7",
 * 0.00000012300 -> "1.2300E-7", 0.0000000 -> "0E-7". Both parse back to
 * the same numeric with the same scale. */
static void put_numeric(pk_buf *out, const char *s, size_t n) {
    size_t neg = n > 0 && s[0] == '-';
    const char *end = s + n, *dot = memchr(s, '.', n), *first = s + neg;
    if (!dot || !plain_decimal(s + neg, n - neg)) {
        put_text(out, s, n);   /* integers, NaN, Infinity: as printed */
        return;
    }
    while (first < end && (*first == '0' || *first == '.')) first++;
    size_t ncoef = first == end ? 1 : (size_t)(end - first) - (first < dot);
    long adjusted = (long)ncoef - 1 - (long)(end - dot - 1);
    if (adjusted >= -6) {
        put_text(out, s, n);
        return;
    }
    pk_buf_addc(out, '"');   /* here first is past the dot, or at end (zero) */
    if (neg) pk_buf_addc(out, '-');
    pk_buf_addc(out, first == end ? '0' : *first);
    if (ncoef > 1) {
        pk_buf_addc(out, '.');
        pk_buf_add(out, first + 1, ncoef - 1);
    }
    pk_buf_addf(out, "E%ld\"", adjusted);
}

/* "HH:MM:SS[.f...]" at p: returns its end and the fraction digits, or
 * NULL when p does not start with a clock. */
static const char *scan_clock(const char *p, const char *end,
                              const char **frac, size_t *nfrac) {
    static const int digits[] = {0, 1, 3, 4, 6, 7};
    if (end - p < 8 || p[2] != ':' || p[5] != ':') return NULL;
    for (int i = 0; i < 6; i++)
        if (!is_digit(p[digits[i]])) return NULL;
    const char *q = p + 8;
    *frac = q;
    *nfrac = 0;
    if (q < end && *q == '.') {
        *frac = ++q;
        while (q < end && is_digit(*q)) q++;
        *nfrac = (size_t)(q - *frac);
        if (*nfrac == 0) return NULL;
    }
    return q;
}

/* PostgreSQL trims trailing zeros of the fraction; the wire shows as many
 * digits as the column declares (typmod; -1 = none declared = 6), and no
 * fraction at all for (0). Digits PostgreSQL printed are never dropped. */
static void put_clock(pk_buf *out, const char *p, const char *frac, size_t nfrac,
                      int typmod) {
    size_t want = (typmod < 0 || typmod > 6) ? 6 : (size_t)typmod;
    if (nfrac > want) want = nfrac;
    pk_buf_add(out, p, 8);
    if (want == 0) return;
    pk_buf_addc(out, '.');
    pk_buf_add(out, frac, nfrac);
    for (size_t i = nfrac; i < want; i++) pk_buf_addc(out, '0');
}

/* "2025-12-15 18:56:59.387453+00" -> "2025-12-15T18:56:59.387453Z" (the
 * session zone is UTC); without zone for timestamp. infinity and BC dates
 * ("... BC") do not fit ISO 8601 and go out as PostgreSQL printed them. */
static void put_timestamp(pk_buf *out, const char *s, size_t n, int typmod, int utc) {
    const char *end = s + n, *sp = memchr(s, ' ', n), *frac;
    size_t nfrac, zone_len = utc ? 3 : 0;
    const char *q = (sp && is_digit(s[0])) ? scan_clock(sp + 1, end, &frac, &nfrac) : NULL;
    if (!q || (size_t)(end - q) != zone_len || (utc && memcmp(q, "+00", 3) != 0)) {
        put_text(out, s, n);
        return;
    }
    pk_buf_addc(out, '"');
    pk_buf_add(out, s, (size_t)(sp - s));
    pk_buf_addc(out, 'T');
    put_clock(out, sp + 1, frac, nfrac, typmod);
    pk_buf_add(out, utc ? "Z\"" : "\"", utc ? 2 : 1);
}

static void put_time(pk_buf *out, const char *s, size_t n, int typmod) {
    const char *frac;
    size_t nfrac;
    if (scan_clock(s, s + n, &frac, &nfrac) != s + n) {
        put_text(out, s, n);
        return;
    }
    pk_buf_addc(out, '"');
    put_clock(out, s, frac, nfrac, typmod);
    pk_buf_addc(out, '"');
}

/* PostgreSQL's json output is valid JSON (jsonb's always, json's as
 * stored); the check is cheap insurance against writing a broken
 * document, e.g. json text deeper than the lexer's nesting limit. */
static void put_json(pk_buf *out, const char *s, size_t n) {
    const char *end, *err;
    if (pk_json_skip(s, s + n, PK_JSON_DEPTH_LIMIT, &end, &err) && pk_json_ws(end, s + n) == s + n)
        pk_buf_add(out, s, n);
    else
        put_text(out, s, n);
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* bytea_output = hex: "\x0102..." into st->tmp. 0 if malformed. */
static int decode_bytea(export_state *st, const char *s, size_t n) {
    pk_buf *b = &st->tmp;
    pk_buf_reset(b);
    if (n < 2 || s[0] != '\\' || s[1] != 'x' || n % 2 != 0) return 0;
    if (!pk_buf_reserve(b, n / 2)) return fail_nomem(st);   /* >= 1: data set */
    for (size_t i = 2; i < n; i += 2) {
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0) return 0;
        b->data[b->len++] = (char)(hi << 4 | lo);
    }
    return 1;
}

static void put_bytea(export_state *st, const char *s, size_t n) {
    if (decode_bytea(st, s, n)) put_text(&st->out, st->tmp.data, st->tmp.len);
    else put_text(&st->out, s, n);
}

/* The 16 bytes of a canonical uuid text. */
static int uuid_bytes(const char *s, size_t n, char raw[16]) {
    size_t o = 0;
    if (n != 36) return 0;
    for (size_t i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i++] != '-') return 0;
            continue;
        }
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0) return 0;
        raw[o++] = (char)(hi << 4 | lo);
        i += 2;
    }
    return o == 16;
}

/* PhoenixKit sends a uuid as its 16 raw bytes through the bytea rule;
 * uuid = "text" sends the canonical text instead. */
static void put_uuid(export_state *st, const char *s, size_t n) {
    char raw[16];
    if (!st->uuid_text && uuid_bytes(s, n, raw)) put_text(&st->out, raw, sizeof raw);
    else put_text(&st->out, s, n);
}

/* ---- arrays ----------------------------------------------------------- */

static void put_value(export_state *st, const col_plan *cp, int kind,
                      const char *s, size_t n);

typedef struct array_ctx {
    export_state *st;
    const col_plan *cp;
    int depth;
} array_ctx;

/* Every value written inside an array ends in something other than '[',
 * so the last byte tells whether a separator is due. */
static void array_sep(pk_buf *out) {
    if (out->len > 0 && out->data[out->len - 1] != '[') pk_buf_addc(out, ',');
}

static int array_open(void *ctx) {
    array_ctx *a = (array_ctx *)ctx;
    if (a->depth++ > 0) array_sep(&a->st->out);
    pk_buf_addc(&a->st->out, '[');
    return 0;
}

static int array_close(void *ctx) {
    array_ctx *a = (array_ctx *)ctx;
    a->depth--;
    pk_buf_addc(&a->st->out, ']');
    return 0;
}

static int array_element(void *ctx, const char *text, size_t len) {
    array_ctx *a = (array_ctx *)ctx;
    array_sep(&a->st->out);
    if (text) put_value(a->st, a->cp, a->cp->elem_kind, text, len);
    else pk_buf_add(&a->st->out, "null", 4);
    return 0;
}

static const pk_pgarray_cb ARRAY_TO_JSON = {array_open, array_close, array_element};

/* Elements follow the element type's rules (numerics in the plain form,
 * as PhoenixKit's encoder writes them inside lists); text that does not
 * parse as an array literal goes out as a string rather than failing. */
static void put_array(export_state *st, const col_plan *cp, const char *s, size_t n) {
    size_t mark = st->out.len;
    array_ctx a = {st, cp, 0};
    if (pk_pgarray_parse(s, n, cp->delim, &st->scratch, &ARRAY_TO_JSON, &a)) return;
    if (st->scratch.failed) fail_nomem(st);
    st->out.len = mark;
    put_text(&st->out, s, n);
}

/* ---- rows ------------------------------------------------------------- */

static void put_value(export_state *st, const col_plan *cp, int kind,
                      const char *s, size_t n) {
    pk_buf *out = &st->out;
    switch (kind) {
    case K_INT: put_integer(out, s, n); break;
    case K_FLOAT4: put_float4(out, s, n); break;
    case K_FLOAT8: put_float8(out, s, n); break;
    case K_NUMERIC:   /* inside an array: the plain form, as printed */
        if (cp->kind == K_ARRAY) put_text(out, s, n);
        else put_numeric(out, s, n);
        break;
    case K_BOOL: pk_buf_adds(out, s[0] == 't' ? "true" : "false"); break;
    case K_TIMESTAMPTZ: put_timestamp(out, s, n, cp->typmod, 1); break;
    case K_TIMESTAMP: put_timestamp(out, s, n, cp->typmod, 0); break;
    case K_TIME: put_time(out, s, n, cp->typmod); break;
    case K_JSON: put_json(out, s, n); break;
    case K_BYTEA: put_bytea(st, s, n); break;
    case K_UUID: put_uuid(st, s, n); break;
    case K_ARRAY: put_array(st, cp, s, n); break;
    default: put_text(out, s, n); break;
    }
}

static void put_row(export_state *st, int row) {
    pk_buf *out = &st->out;
    int ncols = PQnfields(st->res);
    pk_buf_addc(out, '{');
    for (int c = 0; c < ncols; c++) {
        const col_plan *cp = &st->cols[c];
        if (!cp->emit) continue;
        pk_buf_add(out, st->names.data + cp->name_off, cp->name_len);
        if (PQgetisnull(st->res, row, c)) {
            pk_buf_add(out, "null", 4);
            continue;
        }
        put_value(st, cp, cp->kind, PQgetvalue(st->res, row, c),
                  (size_t)PQgetlength(st->res, row, c));
    }
    pk_buf_addc(out, '}');
}

static void put_rows(export_state *st, const export_opts *o) {
    int n = PQntuples(st->res);
    st->count = (o->limit >= 0 && o->limit < n) ? (int)o->limit : n;
    st->has_more = n > st->count;
    pk_buf_addc(&st->out, '[');
    for (int r = 0; r < st->count && !st->out.failed; r++) {
        if (r > 0) pk_buf_addc(&st->out, ',');
        put_row(st, r);
    }
    pk_buf_addc(&st->out, ']');
    if (st->out.failed) fail_nomem(st);
}

/* ---- column plan -------------------------------------------------------- */

static int listed(const char *const *names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0) return 1;
    return 0;
}

static void set_array(col_plan *cp, unsigned char elem_kind, char delim) {
    cp->kind = K_ARRAY;
    cp->elem_kind = elem_kind;
    cp->delim = delim;
}

/* Returns 1 when the column's type is not in the table. */
static int plan_column(export_state *st, const export_opts *o, int c) {
    col_plan *cp = &st->cols[c];
    const builtin_type *t = builtin(PQftype(st->res, c));
    cp->typmod = PQfmod(st->res, c);
    cp->emit = !listed(o->omit, o->nomit, PQfname(st->res, c));
    cp->delim = ',';
    if (!t) {
        cp->kind = K_UNRESOLVED;
        return 1;
    }
    cp->kind = t->kind;
    if (t->kind == K_ARRAY)
        set_array(cp, element_kind(t->elem), t->elem == BOX_OID ? ';' : ',');
    return 0;
}

/* One catalog query for all the result's unknown type OIDs. */
static int resolve_types(PGconn *conn, export_state *st) {
    pk_buf *ids = &st->tmp;
    int ncols = PQnfields(st->res);
    pk_buf_reset(ids);
    pk_buf_addc(ids, '{');
    for (int c = 0; c < ncols; c++)
        if (st->cols[c].kind == K_UNRESOLVED)
            pk_buf_addf(ids, "%s%u", ids->len > 1 ? "," : "", (unsigned)PQftype(st->res, c));
    pk_buf_add(ids, "}", 2);   /* with the NUL */
    if (ids->failed) return fail_nomem(st);
    const char *param = ids->data;
    PGresult *r = PQexecParams(conn, TYPE_SQL, 1, NULL, &param, NULL, NULL, 0);
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) return fail_result(st, r);
    for (int row = 0; row < PQntuples(r); row++) {
        Oid req = (Oid)strtoul(PQgetvalue(r, row, 0), NULL, 10);
        Oid elem = (Oid)strtoul(PQgetvalue(r, row, 1), NULL, 10);
        char delim = PQgetvalue(r, row, 2)[0];
        for (int c = 0; c < ncols; c++)
            if (st->cols[c].kind == K_UNRESOLVED && PQftype(st->res, c) == req)
                set_array(&st->cols[c], element_kind(elem), delim ? delim : ',');
    }
    PQclear(r);
    for (int c = 0; c < ncols; c++)
        if (st->cols[c].kind == K_UNRESOLVED) st->cols[c].kind = K_TEXT;
    return 1;
}

/* Column names are UTF-8 except in SQL_ASCII databases; a JSON key must be
 * text, so there each byte outside a valid sequence becomes U+FFFD. */
static void put_name(export_state *st, const char *s) {
    size_t n = strlen(s);
    if (pk_json_quote(&st->names, s, n)) return;
    pk_buf *tmp = &st->tmp;
    pk_buf_reset(tmp);
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        while (k < 4 && i + k < n && !pk_utf8_valid(s + i, k)) k++;
        if (pk_utf8_valid(s + i, k)) {
            pk_buf_add(tmp, s + i, k);
            i += k;
        } else {
            pk_buf_add(tmp, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    if (!tmp->failed) pk_json_quote(&st->names, tmp->data, tmp->len);
}

/* `"name":` for each emitted column, with the separating comma, once per
 * call instead of once per row. */
static int write_names(export_state *st) {
    int first = 1;
    for (int c = 0; c < PQnfields(st->res); c++) {
        col_plan *cp = &st->cols[c];
        if (!cp->emit) continue;
        cp->name_off = st->names.len;
        if (!first) pk_buf_addc(&st->names, ',');
        put_name(st, PQfname(st->res, c));
        pk_buf_addc(&st->names, ':');
        cp->name_len = st->names.len - cp->name_off;
        first = 0;
    }
    return st->names.failed || st->tmp.failed ? fail_nomem(st) : 1;
}

static int find_keys(export_state *st, const export_opts *o) {
    for (int k = 0; k < o->nkeys; k++) {
        o->key_col[k] = -1;   /* by exact name: PQfnumber would fold case */
        for (int c = 0; c < PQnfields(st->res) && o->key_col[k] < 0; c++)
            if (strcmp(PQfname(st->res, c), o->keys[k]) == 0) o->key_col[k] = c;
        if (o->key_col[k] < 0) {
            st->missing_key = o->keys[k];
            return 0;
        }
    }
    return 1;
}

static int plan_columns(PGconn *conn, export_state *st, const export_opts *o) {
    int ncols = PQnfields(st->res), unresolved = 0;
    st->cols = (col_plan *)calloc((size_t)ncols + 1, sizeof *st->cols);
    if (!st->cols) return fail_nomem(st);
    for (int c = 0; c < ncols; c++) unresolved += plan_column(st, o, c);
    if (unresolved && !resolve_types(conn, st)) return 0;
    return find_keys(st, o) && write_names(st);
}

/* ---- the database side ------------------------------------------------ */

/* Exact text output (pg.h), sent together with the BEGIN or SAVEPOINT to
 * save a round trip. */
#define SETTINGS " " PK_PG_EXACT_OUTPUT("LOCAL")

static const char BEGIN_SQL[] = "BEGIN READ ONLY;" SETTINGS;
static const char SAVEPOINT_SQL[] =
    "SAVEPOINT pksync_export; SET LOCAL transaction_read_only = on;" SETTINGS;

static int command(PGconn *conn, const char *sql, export_state *st) {
    PGresult *r = PQexec(conn, sql);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
        PQclear(r);
        return 1;
    }
    return fail_result(st, r);
}

/* The scope is marked open before its command runs: when BEGIN itself
 * fails, the ROLLBACK is a harmless warning; when SAVEPOINT itself fails,
 * the transaction is aborted anyway and the first error is reported. */
static int open_scope(PGconn *conn, export_state *st) {
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_IDLE:
        st->scope = SCOPE_TXN;
        return command(conn, BEGIN_SQL, st);
    case PQTRANS_INTRANS:
        st->scope = SCOPE_SAVEPOINT;
        return command(conn, SAVEPOINT_SQL, st);
    case PQTRANS_INERROR:   /* let the server give its own reason (25P02) */
        if (command(conn, "SAVEPOINT pksync_export", st)) st->scope = SCOPE_SAVEPOINT;
        return fail_msg(st, "export_rows: the transaction is aborted");
    case PQTRANS_ACTIVE:
        return fail_msg(st, "export_rows: the connection is busy with another query");
    default:
        return fail_result(st, NULL);   /* the connection's message says why */
    }
}

/* Rolling back to the savepoint is what restores the caller's settings;
 * the query only read, so nothing else is lost. */
static void close_scope(PGconn *conn, export_state *st) {
    if (st->scope == SCOPE_TXN)
        command(conn, succeeded(st) ? "COMMIT" : "ROLLBACK", st);
    else if (st->scope == SCOPE_SAVEPOINT)
        command(conn, "ROLLBACK TO SAVEPOINT pksync_export; RELEASE SAVEPOINT pksync_export", st);
    st->scope = SCOPE_NONE;
}

/* A COPY statement passed as sql: end it so the connection stays usable. */
static void leave_copy(PGconn *conn, ExecStatusType status) {
    PGresult *r;
    char *row;
    if (status == PGRES_COPY_IN || status == PGRES_COPY_BOTH)
        PQputCopyEnd(conn, "export_rows runs queries, not COPY");
    if (status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH)
        while (PQgetCopyData(conn, &row, 0) > 0) PQfreemem(row);
    while ((r = PQgetResult(conn)) != NULL) PQclear(r);
}

static int run_query(PGconn *conn, const char *sql, const export_params *p,
                     export_state *st) {
    PGresult *r = PQexecParams(conn, sql, p->n, NULL, p->values, NULL, NULL, 0);
    ExecStatusType status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (status == PGRES_TUPLES_OK) {
        st->res = r;
        return 1;
    }
    if (status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR ||
        status == PGRES_BAD_RESPONSE)
        return fail_result(st, r);
    PQclear(r);
    if (status == PGRES_COPY_OUT || status == PGRES_COPY_IN || status == PGRES_COPY_BOTH)
        leave_copy(conn, status);
    return fail_msg(st, "export_rows: the statement returned no rows");
}

static void run(PGconn *conn, const char *sql, const export_params *p,
                const export_opts *o, export_state *st) {
    if (open_scope(conn, st) && run_query(conn, sql, p, st) && plan_columns(conn, st, o))
        put_rows(st, o);
    close_scope(conn, st);
}

/* ---- Lua side: arguments ---------------------------------------------- */

static int64_t opt_count(lua_State *L, int opts, const char *msg) {
    int64_t v;
    if (lua_type(L, -1) == LUA_TNUMBER) {
        if (pk_to_int64(L, -1, &v) && v >= 0) return v;
        lua_Number d = lua_tonumber(L, -1);   /* 10.0 on Lua 5.4 */
        if (d >= 0 && d <= 9007199254740992.0 && d == (lua_Number)(int64_t)d) return (int64_t)d;
    }
    luaL_argerror(L, opts, msg);
    return 0;
}

static void read_limit(lua_State *L, int opts, export_opts *o) {
    lua_getfield(L, opts, "limit");
    if (!lua_isnil(L, -1)) {
        o->limit = opt_count(L, opts, "opts.limit must be an integer >= 0");
        if (o->limit > 2147483647) o->limit = 2147483647;   /* PQntuples is an int */
    }
    lua_pop(L, 1);
}

static void read_uuid(lua_State *L, int opts, export_opts *o) {
    size_t n = 0;
    lua_getfield(L, opts, "uuid");
    if (!lua_isnil(L, -1)) {
        const char *u = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : "";
        if (n == 4 && memcmp(u, "text", 4) == 0) o->uuid_text = 1;
        else if (!(n == 6 && memcmp(u, "binary", 6) == 0))
            luaL_argerror(L, opts, "opts.uuid must be \"text\" or \"binary\"");
    }
    lua_pop(L, 1);
}

/* omit as a set ({password_hash = true}) or a list ({"password_hash"}). */
static const char *omit_entry(lua_State *L) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_toboolean(L, -1)) return lua_tostring(L, -2);
    if (lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TSTRING)
        return lua_tostring(L, -1);
    return NULL;
}

/* The omit table stays on the stack: it anchors the name strings. */
static void read_omit(lua_State *L, int opts, export_opts *o) {
    int t, n = 0;
    lua_getfield(L, opts, "omit");
    if (lua_isnil(L, -1)) return;
    luaL_argcheck(L, lua_istable(L, -1), opts, "opts.omit must be a table");
    t = lua_gettop(L);
    for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1)) n++;
    o->omit = (const char **)lua_newuserdata(L, sizeof(char *) * ((size_t)n + 1));
    for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1)) {
        const char *name = omit_entry(L);
        if (name) o->omit[o->nomit++] = name;
    }
}

/* key_columns stays on the stack too, anchoring its strings. */
static void read_keys(lua_State *L, int opts, export_opts *o) {
    lua_getfield(L, opts, "key_columns");
    if (lua_isnil(L, -1)) return;
    luaL_argcheck(L, lua_istable(L, -1), opts, "opts.key_columns must be an array of column names");
    int t = lua_gettop(L), n = (int)lua_rawlen(L, t);
    luaL_argcheck(L, n <= 1664, opts, "opts.key_columns: too many columns");
    /* pointers first, then ints: the ints stay aligned */
    o->keys = (const char **)lua_newuserdata(L, ((size_t)n + 1) * (sizeof(char *) + sizeof(int)));
    o->key_col = (int *)(o->keys + n + 1);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, t, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, opts, "opts.key_columns must be an array of column names");
        o->keys[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    o->nkeys = n;
}

static void read_opts(lua_State *L, int opts, export_opts *o) {
    memset(o, 0, sizeof *o);
    o->limit = -1;
    if (lua_isnil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    read_limit(L, opts, o);
    read_uuid(L, opts, o);
    read_omit(L, opts, o);
    read_keys(L, opts, o);
}

/* Only values db:query accepts; said here with the parameter's position
 * rather than by pg.c, which would name a stack slot. */
static void check_param(lua_State *L, int i) {
    int t = lua_type(L, -1);
    if (t == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL) return;
    if (t == LUA_TUSERDATA && luaL_getmetafield(L, -1, "__tostring")) {
        lua_pop(L, 1);
        return;
    }
    if (t == LUA_TNIL || t == LUA_TBOOLEAN || t == LUA_TNUMBER || t == LUA_TSTRING) return;
    luaL_error(L, "export_rows: params[%d] is a %s, which has no SQL text", i,
               luaL_typename(L, -1));
}

/* params: an array (params.n counts trailing nils) of parameter values,
 * converted as db:query converts them; the texts are anchored in a table. */
static void read_params(lua_State *L, int idx, export_params *p) {
    int64_t n;
    p->values = NULL;
    p->n = 0;
    if (lua_isnil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushliteral(L, "n");
    lua_rawget(L, idx);
    if (!pk_to_int64(L, -1, &n)) n = (int64_t)lua_rawlen(L, idx);
    lua_pop(L, 1);
    luaL_argcheck(L, n >= 0 && n <= 65535, idx, "too many parameters");
    p->values = (const char **)lua_newuserdata(L, sizeof(char *) * ((size_t)n + 1));
    lua_createtable(L, (int)n, 0);
    int anchor = lua_gettop(L);
    for (int i = 1; i <= (int)n; i++) {
        lua_rawgeti(L, idx, i);
        check_param(L, i);
        int top = lua_gettop(L);
        p->values[i - 1] = pk_pg_param_text(L, top);
        if (lua_gettop(L) > top) lua_rawseti(L, anchor, i);
        lua_pop(L, 1);
    }
    p->n = (int)n;
}

/* ---- Lua side: results ------------------------------------------------ */

static void push_last_key(lua_State *L, const export_state *st, const export_opts *o) {
    int row = st->count - 1;
    if (o->nkeys == 0 || st->count == 0) {
        lua_pushnil(L);
        return;
    }
    lua_createtable(L, o->nkeys, 0);
    for (int k = 0; k < o->nkeys; k++) {
        int c = o->key_col[k];
        if (PQgetisnull(st->res, row, c))
            lua_pushlightuserdata(L, NULL);   /* pksync.null */
        else
            lua_pushlstring(L, PQgetvalue(st->res, row, c), (size_t)PQgetlength(st->res, row, c));
        lua_rawseti(L, -2, k + 1);
    }
}

/* With neither a result nor a message of ours, libpq returned no result
 * at all (no memory, or the connection is gone); its error message is the
 * best report left, even if the closing ROLLBACK has rewritten it. */
static int push_failure(lua_State *L, PGconn *conn, export_state *st) {
    int n;
    if (st->msg) {
        lua_pushnil(L);
        lua_pushstring(L, st->msg);
        lua_newtable(L);
        n = 3;
    } else {
        n = pk_pg_push_error(L, conn, st->err);
    }
    free_state(st);
    return n;
}

static int push_outcome(lua_State *L, PGconn *conn, export_state *st, const export_opts *o) {
    if (st->nomem) {
        free_state(st);
        return luaL_error(L, "pksync: out of memory in export_rows");
    }
    if (st->failed) return push_failure(L, conn, st);
    if (st->missing_key)
        return luaL_error(L, "export_rows: key column '%s' is not in the result", st->missing_key);
    lua_pushlstring(L, st->out.data ? st->out.data : "", st->out.len);
    pk_buf_free(&st->out);
    lua_pushinteger(L, st->count);
    lua_pushboolean(L, st->has_more);
    push_last_key(L, st, o);
    free_state(st);
    return 4;
}

/* export_rows(db, sql, params, opts) -> json, count, has_more, last_key
 * | nil, err, detail */
static int l_export_rows(lua_State *L) {
    PGconn *conn = pk_pg_conn(L, 1);
    export_params p;
    export_opts o;
    luaL_checktype(L, 2, LUA_TSTRING);
    lua_settop(L, 4);
    read_params(L, 3, &p);
    read_opts(L, 4, &o);
    export_state *st = new_state(L);
    st->uuid_text = o.uuid_text;
    run(conn, lua_tostring(L, 2), &p, &o, st);
    return push_outcome(L, conn, st, &o);
}

static const luaL_Reg export_funcs[] = {
    {"export_rows", l_export_rows},
    {NULL, NULL},
};

static const luaL_Reg state_meta[] = {
    {"__gc", l_state_gc},
    {NULL, NULL},
};

void pk_open_export(lua_State *L) {
    pk_new_type(L, STATE_MT, state_meta, NULL);
    luaL_setfuncs(L, export_funcs, 0);
}
