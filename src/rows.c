/*
 * rows.c - pulled rows: JSON row objects to COPY text, and the streaming
 * scanner that finds them in a pull-data / table-records body (rows.h).
 *
 * Design
 *  - Conversion goes by the local column's kind, never by the value's
 *    shape (docs/protocol.md, "Values on the wire"). One recursive-descent
 *    pass over the row converts each value of a plan column straight into
 *    COPY text in the plan's `vals` buffer and records where it went; keys
 *    come in any order, so the line is assembled afterwards in plan order
 *    (one memcpy per value, \N for absent columns). Values of other keys
 *    are validated and skipped, their names remembered for the caller's
 *    report.
 *  - Strings without escapes (nearly all) are used where they lie: their
 *    bytes can hold no backslash, quote or control character, so COPY
 *    needs no escaping for them and nothing is copied twice. Strings with
 *    escapes are unescaped into a scratch buffer first (json.c's lexer).
 *  - Array columns: the PostgreSQL array literal is written into the output
 *    as plain literal text (elements quoted with pk_pgarray_quote), then
 *    COPY-escaped in place, which doubles its backslashes once.
 *  - Key lookup: rows repeat the same key order, so the plan remembers the
 *    column matched at each key position and compares bytes with it first;
 *    a miss falls back to a small open-addressing hash of the names.
 *  - No allocation per value in steady state: all buffers belong to the
 *    plan (or the scanner) and only grow. The only other allocations are
 *    the copies of unknown key names, once per distinct name.
 *  - The scanner is a byte-level state machine over the top-level object
 *    (key, colon, value, comma) that hands each multi-byte item (a key, a
 *    value, an array element) to a resumable end finder that keeps depth,
 *    in-string and escape state across chunks, so every byte is looked at
 *    once however the body is split. An item that lies within one chunk is
 *    used in place; only an item cut by a chunk boundary is copied, into a
 *    pending buffer that is bounded by max_row_bytes. Envelope values are
 *    validated with pk_json_skip; array elements are left to the row
 *    converter, which parses them anyway (so the hot path parses once) and
 *    turns a malformed element into a failed row.
 *  - No mutable statics: plans and scanners may live in several threads.
 */
#include "rows.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "json.h"
#include "pgarray.h"

#define MAX_DEPTH PK_ROWSCAN_MAX_DEPTH

/* ---- COPY text escaping ----------------------------------------------- */

#define ESC_NUL 1   /* a NUL byte: PostgreSQL text cannot hold it */

/* The letter after the backslash for the bytes COPY text escapes. The tab
 * is the column delimiter, newline/CR end rows, backslash starts escapes;
 * every other byte is taken literally. */
static const unsigned char COPY_ESC[256] = {
    [0] = ESC_NUL, ['\t'] = 't', ['\n'] = 'n', ['\r'] = 'r', ['\\'] = '\\',
};

/* Append s to out, COPY-escaped. Returns 0 on a NUL byte (out then holds a
 * partial value; callers roll back). */
static int copy_escape(pk_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char e = COPY_ESC[u[i]];
        if (!e) continue;
        if (e == ESC_NUL) return 0;
        pk_buf_add(out, s + run, i - run);
        char pair[2] = {'\\', (char)e};
        pk_buf_add(out, pair, 2);
        run = i + 1;
    }
    pk_buf_add(out, s + run, n - run);
    return 1;
}

/* COPY-escape out[from..len) where it lies: count the escapes, grow once,
 * then move bytes from the back. Returns 0 on a NUL byte or OOM. */
static int copy_escape_in_place(pk_buf *out, size_t from) {
    size_t extra = 0;
    for (size_t i = from; i < out->len; i++) {
        unsigned char e = COPY_ESC[(unsigned char)out->data[i]];
        if (e == ESC_NUL) return 0;
        extra += e != 0;
    }
    if (extra == 0) return 1;
    if (!pk_buf_reserve(out, extra)) return 0;
    char *d = out->data;
    size_t r = out->len, w = out->len + extra;
    while (r > from) {
        unsigned char c = (unsigned char)d[--r];
        unsigned char e = COPY_ESC[c];
        if (e) {
            d[--w] = (char)e;
            d[--w] = '\\';
        } else {
            d[--w] = (char)c;
        }
    }
    out->len += extra;
    return 1;
}

/* ---- messages ----------------------------------------------------------- */

/* Conversions write either a whole COPY field (TOP) or one element of an
 * array literal (ELEM); the two differ in quoting and in their messages. */
enum { TOP, ELEM };

enum { JT_STRING, JT_NUMBER, JT_BOOL, JT_OBJECT, JT_ARRAY, JT_COUNT };

#define CANNOT(what, kind) what " cannot go into " kind " column"
#define CANNOT_ELEM(what, kind) what " cannot be an element of " kind " array"
#define KINDS_OF(M, what)                                                          \
    { M(what, "a text"), M(what, "a text"), M(what, "a boolean"),                  \
      M(what, "an integer"), M(what, "a float"), M(what, "a numeric"),             \
      M(what, "a json"), M(what, "a bytea"), M(what, "a uuid"), M(what, "an array") }
#define ALL_TYPES(M)                                                               \
    { KINDS_OF(M, "a string"), KINDS_OF(M, "a number"), KINDS_OF(M, "a boolean"), \
      KINDS_OF(M, "an object"), KINDS_OF(M, "an array") }

/* [mode][JSON type][column kind], indexed as the enums above. */
static const char *const MISMATCH[2][JT_COUNT][PK_KIND_COUNT] = {
    ALL_TYPES(CANNOT), ALL_TYPES(CANNOT_ELEM),
};

static const char *const MSG_NUL[2] = {
    "text contains a NUL byte", "array element contains a NUL byte"};
static const char *const MSG_UTF8[2] = {
    "text is not valid UTF-8", "array element is not valid UTF-8"};
static const char *const MSG_BASE64[2] = {
    "the binary wrapper is not valid base64",
    "array element: the binary wrapper is not valid base64"};
static const char *const MSG_UUID[2] = {
    "not a uuid (expected 36 or 32 hex characters, or 16 bytes)",
    "array element is not a uuid (expected 36 or 32 hex characters, or 16 bytes)"};
static const char *const MSG_UUID_BIN[2] = {
    "the binary wrapper of a uuid must hold 16 bytes",
    "array element: the binary wrapper of a uuid must hold 16 bytes"};
static const char MSG_NOMEM[] = "out of memory";

/* ---- one conversion ------------------------------------------------------ */

typedef struct conv {
    pk_buf *out;          /* COPY text goes here */
    pk_buf *scratch;      /* unescaped strings, decoded bytes */
    const char *end;      /* end of the JSON text */
    const char *err;      /* static message of the failure */
    const char *errpos;   /* where the JSON broke (syntax errors) */
    int syntax;           /* err is a JSON syntax error */
} conv;

static int fail(conv *c, const char *msg) {
    c->err = msg;
    return 0;
}

static int syntax_fail(conv *c, const char *at, const char *msg) {
    c->err = at >= c->end ? "unexpected end of input" : msg;
    c->errpos = at;
    c->syntax = 1;
    return 0;
}

static int mismatch(conv *c, int mode, int jtype, pk_kind kind) {
    return fail(c, MISMATCH[mode][jtype][kind]);
}

static int has_word(const char *p, const char *end, const char *w, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0;
}

/* A JSON string's content. Strings without escapes or control characters
 * are used where they lie (*raw = 1: [*s, *s + *n) is the text between the
 * quotes, free of backslashes, quotes and control characters, so it needs
 * no escaping). Otherwise json.c unescapes it into `into` (*raw = 0; the
 * pointer stays valid until `into` grows). *pp moves past the string. */
static int read_string(conv *c, pk_buf *into, const char **pp, const char **s, size_t *n,
                       int *raw) {
    const char *p = *pp, *q = p + 1, *end = c->end;
    unsigned high = 0;
    while (q < end) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"' || ch == '\\' || ch < 0x20) break;
        high |= ch;
        q++;
    }
    if (q < end && *q == '"' &&
        (high < 0x80 || pk_utf8_valid(p + 1, (size_t)(q - p - 1)))) {
        *s = p + 1;
        *n = (size_t)(q - p - 1);
        *raw = 1;
        *pp = q + 1;
        return 1;
    }
    size_t mark = into->len;
    const char *e, *err;
    if (!pk_json_string(p, end, into, &e, &err)) {
        if (into->failed) return fail(c, MSG_NOMEM);
        into->len = mark;
        return syntax_fail(c, e, err);
    }
    *s = into->data ? into->data + mark : "";
    *n = into->len - mark;
    *raw = 0;
    *pp = e;
    return 1;
}

/* The extent of one whole JSON value at *pp (a container opened at nesting
 * level `depth`), validated; *pp moves past it. */
static int json_span(conv *c, const char **pp, int depth, size_t *n) {
    const char *e, *err;
    if (!pk_json_skip(*pp, c->end, MAX_DEPTH - depth + 1, &e, &err))
        return syntax_fail(c, e, err);
    *n = (size_t)(e - *pp);
    *pp = e;
    return 1;
}

/* Text that may need escaping (unescaped strings, JSON text, decoded
 * bytes): COPY-escaped at TOP, quoted as an array element at ELEM. */
static int put_text(conv *c, int mode, const char *s, size_t n) {
    if (mode == TOP) {
        if (!copy_escape(c->out, s, n)) return fail(c, MSG_NUL[TOP]);
        return 1;
    }
    if (memchr(s, 0, n)) return fail(c, MSG_NUL[ELEM]);
    pk_pgarray_quote(c->out, s, n);
    return 1;
}

/* Text known to hold no backslash, quote, control character or NUL
 * (numbers, raw strings, hex): copied as is, or wrapped in quotes as an
 * element (what pk_pgarray_quote would write for it). */
static void put_plain(conv *c, int mode, const char *s, size_t n) {
    if (mode == ELEM) pk_buf_addc(c->out, '"');
    pk_buf_add(c->out, s, n);
    if (mode == ELEM) pk_buf_addc(c->out, '"');
}

static const char HEX[] = "0123456789abcdef";

/* bytea hex input `\x4142`: in COPY text `\\x4142`, as a quoted array
 * element `"\\x4142"` (the array literal is COPY-escaped later). */
static int put_hex(conv *c, int mode, const unsigned char *b, size_t n) {
    if (n > ((size_t)-1 - 8) / 2 || !pk_buf_reserve(c->out, 2 * n + 8)) return fail(c, MSG_NOMEM);
    char *w = c->out->data + c->out->len;
    if (mode == ELEM) *w++ = '"';
    *w++ = '\\';
    *w++ = '\\';
    *w++ = 'x';
    for (size_t i = 0; i < n; i++) {
        *w++ = HEX[b[i] >> 4];
        *w++ = HEX[b[i] & 15];
    }
    if (mode == ELEM) *w++ = '"';
    c->out->len = (size_t)(w - c->out->data);
    return 1;
}

/* 16 raw bytes as the canonical 8-4-4-4-12 text. */
static void put_uuid16(conv *c, int mode, const unsigned char *b) {
    char t[36];
    size_t w = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) t[w++] = '-';
        t[w++] = HEX[b[i] >> 4];
        t[w++] = HEX[b[i] & 15];
    }
    put_plain(c, mode, t, sizeof t);
}

static int is_hex(char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* A uuid from string content: 36-character canonical or 32 hex digits
 * pass as they are (PostgreSQL reads both); exactly 16 bytes are
 * PhoenixKit's raw-bytes form. */
static int put_uuid_text(conv *c, int mode, const char *s, size_t n) {
    if (n == 16) {
        put_uuid16(c, mode, (const unsigned char *)s);
        return 1;
    }
    if (n != 36 && n != 32) return fail(c, MSG_UUID[mode]);
    for (size_t i = 0; i < n; i++) {
        int dash = n == 36 && (i == 8 || i == 13 || i == 18 || i == 23);
        if (dash ? s[i] != '-' : !is_hex(s[i])) return fail(c, MSG_UUID[mode]);
    }
    put_plain(c, mode, s, n);
    return 1;
}

static const char WRAP_KEY[] = "__phoenix_kit_binary__";

/* Is the object at *pp exactly {"__phoenix_kit_binary__": "<string>"}? If
 * so (1), *pp moves past it and [*b64, *b64 + *n) is the string's content
 * (*raw as read_string says). Anything else, malformed JSON included,
 * answers 0 with nothing consumed: the caller then treats the object as
 * JSON, and the JSON validation reports any syntax error. -1: out of
 * memory (so that an OOM cannot turn a wrapper into its JSON text). */
static int read_wrapper(conv *c, const char **pp, const char **b64, size_t *n, int *raw) {
    const char *p = pk_json_ws(*pp + 1, c->end), *key;
    size_t klen, mark = c->scratch->len;
    int kraw;
    conv probe = *c;
    if (p >= c->end || *p != '"' || !read_string(&probe, c->scratch, &p, &key, &klen, &kraw) ||
        klen != sizeof WRAP_KEY - 1 || memcmp(key, WRAP_KEY, klen) != 0)
        goto no;
    p = pk_json_ws(p, c->end);
    if (p >= c->end || *p != ':') goto no;
    p = pk_json_ws(p + 1, c->end);
    if (p >= c->end || *p != '"' || !read_string(&probe, c->scratch, &p, b64, n, raw)) goto no;
    p = pk_json_ws(p, c->end);
    if (p >= c->end || *p != '}') goto no;
    *pp = p + 1;
    return 1;
no:
    if (c->scratch->failed) return -1;
    c->scratch->len = mark;
    return 0;
}

/* Decode the wrapper's base64 into scratch; [*bytes, *bytes + *len). */
static int decode_wrapper(conv *c, int mode, const char *b64, size_t n, int raw,
                          const unsigned char **bytes, size_t *len) {
    pk_buf *s = c->scratch;
    /* Unescaped base64 already lies in scratch; reserve first so that the
     * decoder's appends cannot move it while it is being read. */
    size_t off = raw ? 0 : (size_t)(b64 - s->data);
    if (!pk_buf_reserve(s, n / 4 * 3 + 3)) return fail(c, MSG_NOMEM);
    if (!raw) b64 = s->data + off;
    size_t mark = s->len;
    if (!pk_base64_decode(s, b64, n)) {
        if (s->failed) return fail(c, MSG_NOMEM);
        return fail(c, MSG_BASE64[mode]);
    }
    *bytes = (const unsigned char *)s->data + mark;
    *len = s->len - mark;
    return 1;
}

/* The kind elements of an array column are converted by. */
static pk_kind elem_kind(const pk_column *col) {
    return col->elem_kind == PK_KIND_ARRAY ? PK_KIND_GENERIC : col->elem_kind;
}

static int value(conv *c, const pk_column *col, int mode, const char **pp, int depth);

static int string_value(conv *c, pk_kind kind, int mode, const char **pp) {
    const char *start = *pp, *s, *e, *err;
    size_t n;
    int raw;
    if (kind == PK_KIND_JSON) {   /* the JSON text of the string, quotes and all */
        if (!pk_json_string(start, c->end, NULL, &e, &err)) return syntax_fail(c, e, err);
        *pp = e;
        return put_text(c, mode, start, (size_t)(e - start));
    }
    size_t mark = c->scratch->len;
    if (!read_string(c, c->scratch, pp, &s, &n, &raw)) return 0;
    int ok = 1;
    if (kind == PK_KIND_BYTEA) ok = put_hex(c, mode, (const unsigned char *)s, n);
    else if (kind == PK_KIND_UUID) ok = put_uuid_text(c, mode, s, n);
    else if (raw) put_plain(c, mode, s, n);
    else ok = put_text(c, mode, s, n);
    c->scratch->len = mark;
    return ok;
}

static int number_value(conv *c, pk_kind kind, int mode, const char **pp) {
    const char *p = *pp, *e;
    int is_int;
    if (!pk_json_number(p, c->end, &e, &is_int))
        return syntax_fail(c, e, *p == '-' || (*p >= '0' && *p <= '9') ? "invalid number"
                                                                     : "unexpected character");
    switch (kind) {
    case PK_KIND_BOOL: case PK_KIND_BYTEA: case PK_KIND_UUID: case PK_KIND_ARRAY:
        return mismatch(c, mode, JT_NUMBER, kind);
    default:   /* the exact digits as received: never through a double */
        put_plain(c, mode, p, (size_t)(e - p));
        *pp = e;
        return 1;
    }
}

static int bool_value(conv *c, pk_kind kind, int mode, const char **pp) {
    const char *p = *pp;
    int t = *p == 't';
    size_t n = t ? 4 : 5;
    if (!has_word(p, c->end, t ? "true" : "false", n)) return syntax_fail(c, p, "invalid literal");
    switch (kind) {
    case PK_KIND_BOOL:
        put_plain(c, mode, t ? "t" : "f", 1);
        break;
    case PK_KIND_TEXT: case PK_KIND_GENERIC: case PK_KIND_JSON:
        put_plain(c, mode, p, n);
        break;
    default:
        return mismatch(c, mode, JT_BOOL, kind);
    }
    *pp = p + n;
    return 1;
}

static int null_value(conv *c, int mode, const char **pp) {
    if (!has_word(*pp, c->end, "null", 4)) return syntax_fail(c, *pp, "invalid literal");
    if (mode == TOP) pk_buf_add(c->out, "\\N", 2);
    else pk_buf_add(c->out, "NULL", 4);
    *pp += 4;
    return 1;
}

/* The binary wrapper's bytes, by kind. */
static int binary_value(conv *c, pk_kind kind, int mode, const char *b64, size_t n, int raw) {
    const unsigned char *b;
    size_t len;
    switch (kind) {
    case PK_KIND_TEXT: case PK_KIND_GENERIC:
        if (!decode_wrapper(c, mode, b64, n, raw, &b, &len)) return 0;
        if (!pk_utf8_valid((const char *)b, len)) return fail(c, MSG_UTF8[mode]);
        return put_text(c, mode, (const char *)b, len);
    case PK_KIND_BYTEA:
        if (!decode_wrapper(c, mode, b64, n, raw, &b, &len)) return 0;
        return put_hex(c, mode, b, len);
    case PK_KIND_UUID:
        if (!decode_wrapper(c, mode, b64, n, raw, &b, &len)) return 0;
        if (len != 16) return fail(c, MSG_UUID_BIN[mode]);
        put_uuid16(c, mode, b);
        return 1;
    default:
        return mismatch(c, mode, JT_OBJECT, kind);
    }
}

/* An object or array taken as its JSON text (text, generic, json). */
static int json_text_value(conv *c, pk_kind kind, int mode, const char **pp, int depth,
                           int jtype) {
    const char *start = *pp;
    size_t n;
    if (kind != PK_KIND_TEXT && kind != PK_KIND_GENERIC && kind != PK_KIND_JSON)
        return mismatch(c, mode, jtype, kind);
    if (!json_span(c, pp, depth, &n)) return 0;
    return put_text(c, mode, start, n);
}

static int object_value(conv *c, pk_kind kind, int mode, const char **pp, int depth) {
    const char *b64;
    size_t n;
    int raw;
    if (kind == PK_KIND_JSON) return json_text_value(c, kind, mode, pp, depth, JT_OBJECT);
    size_t mark = c->scratch->len;
    int w = read_wrapper(c, pp, &b64, &n, &raw);
    if (w < 0) return fail(c, MSG_NOMEM);
    if (w) {
        int ok = binary_value(c, kind, mode, b64, n, raw);
        c->scratch->len = mark;
        return ok;
    }
    return json_text_value(c, kind, mode, pp, depth, JT_OBJECT);
}

/* [e1, e2, ...] at *pp as the literal {e1<delim>e2...}, not yet COPY-escaped.
 * Nested JSON arrays become nested braces, except for json elements,
 * where an array is a value. */
static int array_literal(conv *c, const pk_column *col, const char **pp, int depth) {
    const char *p = *pp;
    char delim = col->elem_delim ? col->elem_delim : ',';
    if (depth > MAX_DEPTH) return syntax_fail(c, p, "nesting too deep");
    pk_buf_addc(c->out, '{');
    p = pk_json_ws(p + 1, c->end);
    if (p < c->end && *p == ']') {
        pk_buf_addc(c->out, '}');
        *pp = p + 1;
        return 1;
    }
    for (;;) {
        if (!value(c, col, ELEM, &p, depth + 1)) return 0;
        p = pk_json_ws(p, c->end);
        if (p < c->end && *p == ',') {
            pk_buf_addc(c->out, delim);
            p = pk_json_ws(p + 1, c->end);
            continue;
        }
        if (p < c->end && *p == ']') break;
        return syntax_fail(c, p, "expected ',' or ']'");
    }
    pk_buf_addc(c->out, '}');
    *pp = p + 1;
    return 1;
}

static int array_value(conv *c, const pk_column *col, pk_kind kind, int mode, const char **pp,
                       int depth) {
    if (mode == ELEM && kind != PK_KIND_JSON) return array_literal(c, col, pp, depth);
    if (mode == ELEM || kind != PK_KIND_ARRAY)
        return json_text_value(c, kind, mode, pp, depth, JT_ARRAY);
    size_t mark = c->out->len;
    if (!array_literal(c, col, pp, depth)) return 0;
    if (c->out->failed) return fail(c, MSG_NOMEM);
    /* Elements were checked for NUL bytes, so only OOM can fail here. */
    if (!copy_escape_in_place(c->out, mark)) return fail(c, MSG_NOMEM);
    return 1;
}

/* One JSON value at *pp (no leading whitespace) for `col`: a whole field
 * at TOP, an element of its array at ELEM. `depth` is the nesting level a
 * container starting here would have. *pp moves past the value. */
static int value(conv *c, const pk_column *col, int mode, const char **pp, int depth) {
    pk_kind kind = mode == TOP ? col->kind : elem_kind(col);
    if (*pp >= c->end) return syntax_fail(c, *pp, "unexpected end of input");
    switch (**pp) {
    case '"': return string_value(c, kind, mode, pp);
    case '{': return object_value(c, kind, mode, pp, depth);
    case '[': return array_value(c, col, kind, mode, pp, depth);
    case 't': case 'f': return bool_value(c, kind, mode, pp);
    case 'n': return null_value(c, mode, pp);
    default: return number_value(c, kind, mode, pp);
    }
}

int pk_value_to_copy(const pk_column *col, const char *p, const char *end, pk_buf *out,
                     pk_buf *scratch, const char **err) {
    conv c = {out, scratch, end, NULL, NULL, 0};
    size_t mark = out->len, smark = scratch->len;
    p = pk_json_ws(p, end);
    int ok = value(&c, col, TOP, &p, 1);
    if (ok && pk_json_ws(p, end) != end) ok = syntax_fail(&c, p, "unexpected data after the value");
    if (ok && (out->failed || scratch->failed)) ok = fail(&c, MSG_NOMEM);
    scratch->len = smark;
    if (ok) return 1;
    out->len = mark;
    *err = c.err;
    return 0;
}

/* ---- row plans ---------------------------------------------------------- */

#define ABSENT ((size_t)-1)
#define NO_HINT UINT32_MAX

struct pk_rowplan {
    pk_column *cols;
    size_t ncols;
    char *names;            /* every name, NUL-terminated, one block */
    uint32_t *table;        /* hash of names: column index + 1, 0 = free */
    size_t mask;
    uint32_t *hint;         /* per key position: the column (or ncols + the
                             * unknown name's index) matched there last */
    size_t nhint;
    size_t *off, *len;      /* this row's values in vals (off ABSENT: none) */
    pk_buf vals;            /* converted values of the current row */
    pk_buf scratch;         /* unescaped strings, decoded bytes */
    pk_buf key;             /* an unescaped key */
    char *unknown[PK_ROWS_MAX_UNKNOWN];
    size_t unknown_len[PK_ROWS_MAX_UNKNOWN];
    size_t nunknown;
    char err[384];
};

static uint32_t hash_name(const char *s, size_t n) {
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

void pk_rowplan_free(pk_rowplan *p) {
    if (!p) return;
    for (size_t i = 0; i < p->nunknown; i++) free(p->unknown[i]);
    free(p->cols);
    free(p->names);
    free(p->table);
    free(p->hint);
    free(p->off);
    free(p->len);
    pk_buf_free(&p->vals);
    pk_buf_free(&p->scratch);
    pk_buf_free(&p->key);
    free(p);
}

static void index_names(pk_rowplan *p) {
    for (size_t i = 0; i < p->ncols; i++) {
        const pk_column *col = &p->cols[i];
        size_t h = hash_name(col->name, col->name_len) & p->mask;
        int dup = 0;
        while (p->table[h] && !dup) {
            const pk_column *o = &p->cols[p->table[h] - 1];
            dup = o->name_len == col->name_len && memcmp(o->name, col->name, o->name_len) == 0;
            h = (h + 1) & p->mask;
        }
        if (!dup) p->table[h] = (uint32_t)i + 1;
    }
}

pk_rowplan *pk_rowplan_new(const pk_column *cols, size_t ncols) {
    if (ncols >= UINT32_MAX / 4) return NULL;
    pk_rowplan *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    size_t total = 1, slots = 8;
    for (size_t i = 0; i < ncols; i++) total += cols[i].name_len + 1;
    while (slots < 2 * ncols) slots *= 2;
    p->ncols = ncols;
    p->mask = slots - 1;
    p->nhint = ncols + PK_ROWS_MAX_UNKNOWN;
    p->cols = malloc((ncols ? ncols : 1) * sizeof *p->cols);
    p->names = malloc(total);
    p->table = calloc(slots, sizeof *p->table);
    p->hint = malloc(p->nhint * sizeof *p->hint);
    p->off = malloc((ncols ? ncols : 1) * sizeof *p->off);
    p->len = malloc((ncols ? ncols : 1) * sizeof *p->len);
    if (!p->cols || !p->names || !p->table || !p->hint || !p->off || !p->len) {
        pk_rowplan_free(p);
        return NULL;
    }
    char *w = p->names;
    for (size_t i = 0; i < ncols; i++) {
        p->cols[i] = cols[i];
        p->cols[i].name = w;
        if (cols[i].name_len) memcpy(w, cols[i].name, cols[i].name_len);
        w += cols[i].name_len;
        *w++ = '\0';
    }
    for (size_t i = 0; i < p->nhint; i++) p->hint[i] = NO_HINT;
    index_names(p);
    return p;
}

size_t pk_rowplan_unknown(const pk_rowplan *p, const char ***names) {
    *names = (const char **)p->unknown;
    return p->nunknown;
}

static int entry_is(const pk_rowplan *p, uint32_t e, const char *k, size_t n) {
    if (e < p->ncols)
        return p->cols[e].name_len == n && memcmp(p->cols[e].name, k, n) == 0;
    e -= (uint32_t)p->ncols;
    return p->unknown_len[e] == n && memcmp(p->unknown[e], k, n) == 0;
}

/* A key that is no plan column: its index among the remembered unknown
 * names (ncols + i), remembering it when new; NO_HINT once the list is
 * full (or a copy cannot be made: the report is best effort). */
static uint32_t unknown_key(pk_rowplan *p, const char *k, size_t n) {
    for (size_t i = 0; i < p->nunknown; i++)
        if (p->unknown_len[i] == n && memcmp(p->unknown[i], k, n) == 0)
            return (uint32_t)(p->ncols + i);
    if (p->nunknown == PK_ROWS_MAX_UNKNOWN) return NO_HINT;
    char *copy = malloc(n + 1);
    if (!copy) return NO_HINT;
    memcpy(copy, k, n);
    copy[n] = '\0';
    p->unknown[p->nunknown] = copy;
    p->unknown_len[p->nunknown] = n;
    return (uint32_t)(p->ncols + p->nunknown++);
}

/* The column of key k at position pos of the row, or >= ncols when none. */
static uint32_t find_key(pk_rowplan *p, const char *k, size_t n, size_t pos) {
    if (pos < p->nhint && p->hint[pos] != NO_HINT && entry_is(p, p->hint[pos], k, n))
        return p->hint[pos];
    uint32_t found = NO_HINT;
    for (size_t h = hash_name(k, n) & p->mask; p->table[h]; h = (h + 1) & p->mask) {
        if (entry_is(p, p->table[h] - 1, k, n)) {
            found = p->table[h] - 1;
            break;
        }
    }
    if (found == NO_HINT) found = unknown_key(p, k, n);
    if (pos < p->nhint) p->hint[pos] = found;
    return found;
}

static int row_fail(pk_rowplan *p, const conv *c, const char *row, const pk_column *col,
                    const char **err) {
    int nlen = col ? (int)(col->name_len > 200 ? 200 : col->name_len) : 0;
    const char *name = col ? col->name : "";
    if (c->syntax && col)
        snprintf(p->err, sizeof p->err, "column \"%.*s\": invalid JSON at byte %zu: %s", nlen,
                 name, (size_t)(c->errpos - row), c->err);
    else if (c->syntax)
        snprintf(p->err, sizeof p->err, "invalid JSON at byte %zu: %s",
                 (size_t)(c->errpos - row), c->err);
    else if (col)
        snprintf(p->err, sizeof p->err, "column \"%.*s\": %s", nlen, name, c->err);
    else
        snprintf(p->err, sizeof p->err, "%s", c->err);
    *err = p->err;
    return 0;
}

/* Write the row's values in plan order. */
static int assemble(pk_rowplan *p, pk_buf *line) {
    if (!pk_buf_reserve(line, p->vals.len + 3 * p->ncols + 1)) return 0;
    char *w = line->data + line->len;
    for (size_t i = 0; i < p->ncols; i++) {
        if (i) *w++ = '\t';
        if (p->off[i] == ABSENT) {
            *w++ = '\\';
            *w++ = 'N';
        } else if (p->len[i]) {   /* vals.data is NULL while all values are empty */
            memcpy(w, p->vals.data + p->off[i], p->len[i]);
            w += p->len[i];
        }
    }
    *w++ = '\n';
    line->len = (size_t)(w - line->data);
    return 1;
}

/* One member "key": value of the row object at *pp. */
static int row_member(pk_rowplan *p, conv *c, const char **pp, size_t pos,
                      const pk_column **failed_col) {
    const char *q = *pp, *k;
    size_t klen;
    int raw;
    if (q >= c->end || *q != '"') return syntax_fail(c, q, "object key must be a string");
    pk_buf_reset(&p->key);
    if (!read_string(c, &p->key, &q, &k, &klen, &raw)) return 0;
    q = pk_json_ws(q, c->end);
    if (q >= c->end || *q != ':') return syntax_fail(c, q, "expected ':'");
    q = pk_json_ws(q + 1, c->end);
    uint32_t col = find_key(p, k, klen, pos);
    if (col < p->ncols) {
        size_t off = p->vals.len;
        pk_buf_reset(&p->scratch);
        if (!value(c, &p->cols[col], TOP, &q, 2)) {
            *failed_col = &p->cols[col];
            return 0;
        }
        p->off[col] = off;
        p->len[col] = p->vals.len - off;
    } else {
        size_t n;
        if (!json_span(c, &q, 2, &n)) return 0;
    }
    *pp = q;
    return 1;
}

int pk_row_to_copy(pk_rowplan *p, const char *row, size_t len, pk_buf *line, const char **err) {
    const char *end = row + len, *q = pk_json_ws(row, end);
    conv c = {&p->vals, &p->scratch, end, NULL, NULL, 0};
    const pk_column *failed_col = NULL;
    pk_buf_reset(&p->vals);
    for (size_t i = 0; i < p->ncols; i++) p->off[i] = ABSENT;
    if (q >= end || *q != '{') {
        c.err = "the row is not a JSON object";
        return row_fail(p, &c, row, NULL, err);
    }
    q = pk_json_ws(q + 1, end);
    if (q < end && *q == '}') {
        q++;
    } else {
        for (size_t pos = 0;; pos++) {
            if (!row_member(p, &c, &q, pos, &failed_col)) return row_fail(p, &c, row, failed_col, err);
            q = pk_json_ws(q, end);
            if (q < end && *q == ',') {
                q = pk_json_ws(q + 1, end);
                continue;
            }
            if (q < end && *q == '}') {
                q++;
                break;
            }
            syntax_fail(&c, q, "expected ',' or '}'");
            return row_fail(p, &c, row, NULL, err);
        }
    }
    if (pk_json_ws(q, end) != end) {
        syntax_fail(&c, q, "unexpected data after the row");
        return row_fail(p, &c, row, NULL, err);
    }
    size_t mark = line->len;
    if (p->vals.failed || p->scratch.failed || p->key.failed || !assemble(p, line)) {
        line->len = mark;
        c.err = MSG_NOMEM;
        return row_fail(p, &c, row, NULL, err);
    }
    return 1;
}

/* ---- the streaming scanner ---------------------------------------------- */

/* Where the top-level object is. */
enum {
    S_START, S_FIRST_KEY, S_KEY, S_COLON, S_VALUE, S_AFTER_VALUE,
    S_FIRST_ELEM, S_ELEM, S_AFTER_ELEM, S_DONE, S_FAILED
};

/* The multi-byte item in progress. */
enum { IT_NONE, IT_KEY, IT_VALUE, IT_ELEM };

/* What the current key names. */
enum { F_NONE = -1, F_SUCCESS, F_HAS_MORE, F_TRUNCATED, F_FILTERED,
       F_ERROR, F_ERROR_CODE, F_NEXT_AFTER, F_TABLE, F_ARRAY };
#define NBOOL 4
#define NSTR 4

static const char *const FIELD_NAMES[] = {
    "success", "has_more", "truncated", "filtered",
    "error", "error_code", "next_after", "table",
};

/* Resumable end finder of one item: a string, a container or a scalar. */
typedef struct item_scan {
    int depth;               /* open brackets */
    unsigned char in_str;    /* inside a string */
    unsigned char esc;       /* the previous byte was a backslash in a string */
    unsigned char scalar;    /* a number or literal: ends before a delimiter */
} item_scan;

struct pk_rowscan {
    char *array_key;
    size_t array_key_len;
    size_t max_row;
    pk_row_fn fn;
    void *ctx;
    int state;
    int item;                /* IT_* in progress across chunks */
    item_scan st;
    size_t item_start;       /* body offset of the item's first byte */
    pk_buf pending;          /* the item's bytes from earlier chunks */
    pk_buf key;              /* the current top-level key, unescaped */
    int field;               /* F_* of the current key */
    int array_key_seen;
    int saw_array;
    size_t offset;           /* body bytes before the current chunk */
    size_t rows;
    int flags[NBOOL];
    pk_buf strs[NSTR];
    int str_set[NSTR];
    char err[256];
    int has_err;
};

/* Bytes that can continue a number or a literal; anything else ends it
 * (and the JSON validation judges what was collected). */
static int scalar_byte(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           ch == '.' || ch == '+' || ch == '-';
}

static int is_ws(unsigned char ch) {
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
}

static int value_start(unsigned char ch) {
    return ch == '{' || ch == '[' || ch == '"' || ch == '-' || (ch >= '0' && ch <= '9') ||
           ch == 't' || ch == 'f' || ch == 'n';
}

static void item_begin(item_scan *st, unsigned char first) {
    st->depth = first == '{' || first == '[';
    st->in_str = first == '"';
    st->esc = 0;
    st->scalar = !st->depth && !st->in_str;
}

/* Advance over p[0..n): returns how many bytes belong to the item, with
 * *done = 1 when it ended there (a scalar's delimiter is not included).
 * *deep is set when the nesting exceeds MAX_DEPTH. */
static size_t item_run(item_scan *st, const char *p, size_t n, int *done, int *deep) {
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;
    *done = 0;
    if (st->scalar) {
        while (i < n && scalar_byte(u[i])) i++;
        *done = i < n;
        return i;
    }
    while (i < n) {
        if (st->in_str) {
            if (st->esc) {
                st->esc = 0;
                i++;
                continue;
            }
            while (i < n && u[i] != '"' && u[i] != '\\') i++;
            if (i == n) break;
            if (u[i++] == '\\') {
                st->esc = 1;
                continue;
            }
            st->in_str = 0;
            if (st->depth == 0) {
                *done = 1;
                return i;
            }
            continue;
        }
        unsigned char ch = u[i++];
        if (ch == '"') {
            st->in_str = 1;
        } else if (ch == '{' || ch == '[') {
            if (++st->depth > MAX_DEPTH) {
                *deep = 1;
                return i;
            }
        } else if (ch == '}' || ch == ']') {
            /* A mismatched bracket still ends the item; validation will
             * reject it. */
            if (--st->depth == 0) {
                *done = 1;
                return i;
            }
        }
    }
    return n;
}

static int scan_fail(pk_rowscan *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int scan_fail(pk_rowscan *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    s->has_err = 1;
    s->state = S_FAILED;
    return 0;
}

static int syntax_error(pk_rowscan *s, size_t at, const char *msg) {
    return scan_fail(s, "invalid JSON at byte %zu: %s", at, msg);
}

static const char *item_name(int item) {
    return item == IT_ELEM ? "a row" : item == IT_KEY ? "a key" : "a value";
}

static int set_key(pk_rowscan *s, const char *p, size_t n) {
    const char *e, *err;
    pk_buf_reset(&s->key);
    /* The item is exactly one string (its end finder stopped at the
     * closing quote); the lexer checks escapes and UTF-8. */
    if (!pk_json_string(p, p + n, &s->key, &e, &err)) {
        if (s->key.failed) return scan_fail(s, "%s", MSG_NOMEM);
        return syntax_error(s, s->item_start + (size_t)(e - p), err);
    }
    s->field = F_NONE;
    if (s->key.len == s->array_key_len && memcmp(s->key.data, s->array_key, s->key.len) == 0) {
        s->field = F_ARRAY;
        return 1;
    }
    for (int f = 0; f < NBOOL + NSTR; f++) {
        if (strlen(FIELD_NAMES[f]) == s->key.len && memcmp(FIELD_NAMES[f], s->key.data, s->key.len) == 0)
            s->field = f;
    }
    return 1;
}

/* Keep an envelope field's value (already validated JSON). */
static int set_field(pk_rowscan *s, const char *p, size_t n) {
    if (s->field < 0 || s->field == F_ARRAY) return 1;
    if (s->field < NBOOL) {
        s->flags[s->field] = n == 4 && memcmp(p, "true", 4) == 0    ? 1
                             : n == 5 && memcmp(p, "false", 5) == 0 ? 0
                                                                    : -1;
        return 1;
    }
    int k = s->field - NBOOL;
    const char *e, *err;
    s->str_set[k] = 0;
    if (*p != '"') return 1;
    pk_buf_reset(&s->strs[k]);
    pk_json_string(p, p + n, &s->strs[k], &e, &err);
    pk_buf_addc(&s->strs[k], '\0');
    if (s->strs[k].failed) return scan_fail(s, "%s", MSG_NOMEM);
    s->str_set[k] = 1;
    return 1;
}

/* A whole item [p, p + n): validate it and act on it. */
static int item_done(pk_rowscan *s, int item, const char *p, size_t n) {
    const char *e, *err;
    s->item = IT_NONE;
    if (item == IT_KEY) {
        if (!set_key(s, p, n)) return 0;
        s->state = S_COLON;
        return 1;
    }
    if (item == IT_VALUE) {
        if (!pk_json_skip(p, p + n, MAX_DEPTH, &e, &err))
            return syntax_error(s, s->item_start + (size_t)(e - p), err);
        if (e != p + n) return syntax_error(s, s->item_start + (size_t)(e - p), "unexpected character");
        s->state = S_AFTER_VALUE;
        return set_field(s, p, n);
    }
    /* An array element is not validated here: the row converter parses it
     * anyway and reports a malformed one as a failed row. */
    s->rows++;
    s->state = S_AFTER_ELEM;
    if (s->fn(s->ctx, p, n)) return scan_fail(s, "stopped by the row callback");
    return 1;
}

static int too_large(pk_rowscan *s, int item) {
    return scan_fail(s, "%s at byte %zu is larger than max_row_bytes (%zu)", item_name(item),
                     s->item_start, s->max_row);
}

/* Start an item at data[*i] (a valid first byte). */
static int start_item(pk_rowscan *s, int item, const char *data, size_t n, size_t *i) {
    size_t at = *i, avail = n - at - 1, k;
    int done, deep = 0;
    item_begin(&s->st, (unsigned char)data[at]);
    s->item_start = s->offset + at;
    /* Looking at max_row bytes after the first is enough to tell "too
     * large", so a huge chunk is never scanned further than that. */
    k = item_run(&s->st, data + at + 1, avail < s->max_row ? avail : s->max_row, &done, &deep);
    if (deep) return scan_fail(s, "nesting deeper than %d at byte %zu", MAX_DEPTH, s->offset + at + k);
    if (1 + k > s->max_row) return too_large(s, item);
    if (done) {
        *i = at + 1 + k;
        return item_done(s, item, data + at, 1 + k);
    }
    pk_buf_reset(&s->pending);
    pk_buf_add(&s->pending, data + at, n - at);
    if (s->pending.failed) return scan_fail(s, "%s", MSG_NOMEM);
    s->item = item;
    *i = n;
    return 1;
}

/* Continue the item cut by the previous chunk boundary. */
static int resume_item(pk_rowscan *s, const char *data, size_t n, size_t *i) {
    size_t room = s->max_row - s->pending.len, k;
    int done, deep = 0, item = s->item;
    k = item_run(&s->st, data, n < room + 1 ? n : room + 1, &done, &deep);
    if (deep) return scan_fail(s, "nesting deeper than %d at byte %zu", MAX_DEPTH, s->offset + k);
    if (k > room) return too_large(s, item);
    pk_buf_add(&s->pending, data, k);
    if (s->pending.failed) return scan_fail(s, "%s", MSG_NOMEM);
    *i = k;
    if (!done) return 1;
    int ok = item_done(s, item, s->pending.data, s->pending.len);
    s->pending.len = 0;
    return ok;
}

/* One structural byte (not whitespace) at data[*i], or the start of an
 * item, by the state. */
static int step(pk_rowscan *s, const char *data, size_t n, size_t *i) {
    unsigned char ch = (unsigned char)data[*i];
    size_t at = s->offset + *i;
    switch (s->state) {
    case S_START:
        if (ch != '{') return syntax_error(s, at, "the body is not a JSON object");
        s->state = S_FIRST_KEY;
        break;
    case S_FIRST_KEY:
        if (ch == '}') {
            s->state = S_DONE;
            break;
        }
        /* fall through */
    case S_KEY:
        if (ch != '"') return syntax_error(s, at, "object key must be a string");
        return start_item(s, IT_KEY, data, n, i);
    case S_COLON:
        if (ch != ':') return syntax_error(s, at, "expected ':'");
        s->state = S_VALUE;
        break;
    case S_VALUE:
        if (s->field == F_ARRAY) {
            if (s->array_key_seen) return scan_fail(s, "duplicate \"%s\" key at byte %zu", s->array_key, at);
            s->array_key_seen = 1;
            if (ch == '[') {
                s->saw_array = 1;
                s->state = S_FIRST_ELEM;
                break;
            }
        }
        if (!value_start(ch)) return syntax_error(s, at, "expected a value");
        return start_item(s, IT_VALUE, data, n, i);
    case S_AFTER_VALUE:
        if (ch == ',') s->state = S_KEY;
        else if (ch == '}') s->state = S_DONE;
        else return syntax_error(s, at, "expected ',' or '}'");
        break;
    case S_FIRST_ELEM:
        if (ch == ']') {
            s->state = S_AFTER_VALUE;
            break;
        }
        /* fall through */
    case S_ELEM:
        if (!value_start(ch)) return syntax_error(s, at, "expected a value");
        return start_item(s, IT_ELEM, data, n, i);
    case S_AFTER_ELEM:
        if (ch == ',') s->state = S_ELEM;
        else if (ch == ']') s->state = S_AFTER_VALUE;
        else return syntax_error(s, at, "expected ',' or ']'");
        break;
    default: /* S_DONE */
        return syntax_error(s, at, "unexpected data after the JSON document");
    }
    (*i)++;
    return 1;
}

int pk_rowscan_feed(pk_rowscan *s, const char *data, size_t n) {
    size_t i = 0;
    if (s->state == S_FAILED) return 0;
    if (s->item != IT_NONE && !resume_item(s, data, n, &i)) return 0;
    while (i < n) {
        if (is_ws((unsigned char)data[i])) {
            i++;
            continue;
        }
        if (!step(s, data, n, &i)) return 0;
    }
    s->offset += n;
    return 1;
}

int pk_rowscan_finish(pk_rowscan *s) {
    if (s->state == S_FAILED) return 0;
    if (s->state != S_DONE)
        return scan_fail(s, "truncated body: the JSON document ends at byte %zu before it is complete",
                         s->offset);
    return 1;
}

const char *pk_rowscan_error(const pk_rowscan *s) {
    return s->has_err ? s->err : NULL;
}

pk_rowscan *pk_rowscan_new(const char *array_key, size_t max_row_bytes, pk_row_fn fn,
                           void *ctx) {
    pk_rowscan *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->array_key_len = strlen(array_key);
    s->array_key = malloc(s->array_key_len + 1);
    if (!s->array_key) {
        free(s);
        return NULL;
    }
    memcpy(s->array_key, array_key, s->array_key_len + 1);
    s->max_row = max_row_bytes ? max_row_bytes : PK_ROWSCAN_DEFAULT_MAX_ROW;
    s->fn = fn;
    s->ctx = ctx;
    s->state = S_START;
    s->item = IT_NONE;
    s->field = F_NONE;
    for (int k = 0; k < NBOOL; k++) s->flags[k] = -1;
    return s;
}

void pk_rowscan_free(pk_rowscan *s) {
    if (!s) return;
    free(s->array_key);
    pk_buf_free(&s->pending);
    pk_buf_free(&s->key);
    for (int k = 0; k < NSTR; k++) pk_buf_free(&s->strs[k]);
    free(s);
}

void pk_rowscan_envelope(const pk_rowscan *s, pk_envelope *out) {
    out->success = s->flags[F_SUCCESS];
    out->has_more = s->flags[F_HAS_MORE];
    out->truncated = s->flags[F_TRUNCATED];
    out->filtered = s->flags[F_FILTERED];
    out->saw_array = s->saw_array;
    const char **strs[NSTR] = {&out->error, &out->error_code, &out->next_after, &out->table};
    for (int k = 0; k < NSTR; k++) *strs[k] = s->str_set[k] ? s->strs[k].data : NULL;
    out->rows = s->rows;
}
