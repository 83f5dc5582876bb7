/* pgarray.c - PostgreSQL array literal parser and element quoting. */
#include "pgarray.h"

#include <string.h>
#include <strings.h>

typedef struct parser {
    const char *p, *end;
    char delim;
    pk_buf *scratch;
    const pk_pgarray_cb *cb;
    void *ctx;
} parser;

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && is_space(*ps->p)) ps->p++;
}

/* A quoted element: backslash escapes any character. */
static int quoted_element(parser *ps) {
    pk_buf_reset(ps->scratch);
    ps->p++; /* opening quote */
    while (ps->p < ps->end && *ps->p != '"') {
        if (*ps->p == '\\') {
            if (++ps->p >= ps->end) return 0;
        }
        pk_buf_addc(ps->scratch, *ps->p++);
    }
    if (ps->p >= ps->end) return 0;
    ps->p++; /* closing quote */
    pk_buf_addc(ps->scratch, '\0');
    if (ps->scratch->failed) return 0;
    return ps->cb->element(ps->ctx, ps->scratch->data, ps->scratch->len - 1) == 0;
}

/* An unquoted element runs to the delimiter or '}'; surrounding white
 * space is not part of it, and a bare NULL is SQL NULL. */
static int bare_element(parser *ps) {
    pk_buf_reset(ps->scratch);
    while (ps->p < ps->end && *ps->p != ps->delim && *ps->p != '}') {
        if (*ps->p == '{' || *ps->p == '"') return 0;
        if (*ps->p == '\\') {
            if (++ps->p >= ps->end) return 0;
        }
        pk_buf_addc(ps->scratch, *ps->p++);
    }
    while (ps->scratch->len > 0 && is_space(ps->scratch->data[ps->scratch->len - 1]))
        ps->scratch->len--;
    if (ps->scratch->len == 0) return 0;
    pk_buf_addc(ps->scratch, '\0');
    if (ps->scratch->failed) return 0;
    if (ps->scratch->len == 5 && strncasecmp(ps->scratch->data, "NULL", 4) == 0)
        return ps->cb->element(ps->ctx, NULL, 0) == 0;
    return ps->cb->element(ps->ctx, ps->scratch->data, ps->scratch->len - 1) == 0;
}

static int array(parser *ps, int depth);

static int item(parser *ps, int depth) {
    skip_space(ps);
    if (ps->p >= ps->end) return 0;
    if (*ps->p == '{') return array(ps, depth + 1);
    if (*ps->p == '"') return quoted_element(ps);
    return bare_element(ps);
}

static int array(parser *ps, int depth) {
    if (depth > 64 || ps->p >= ps->end || *ps->p != '{') return 0;
    ps->p++;
    if (ps->cb->open(ps->ctx)) return 0;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return ps->cb->close(ps->ctx) == 0;
    }
    for (;;) {
        if (!item(ps, depth)) return 0;
        skip_space(ps);
        if (ps->p >= ps->end) return 0;
        if (*ps->p == '}') break;
        if (*ps->p != ps->delim) return 0;
        ps->p++;
    }
    ps->p++;
    return ps->cb->close(ps->ctx) == 0;
}

int pk_pgarray_parse(const char *s, size_t n, char delim, pk_buf *scratch,
                     const pk_pgarray_cb *cb, void *ctx) {
    parser ps = {s, s + n, delim, scratch, cb, ctx};
    /* Arrays with non-default bounds start with a dimension decoration,
     * e.g. "[0:1]={a,b}"; the bounds carry no data we keep. */
    if (ps.p < ps.end && *ps.p == '[') {
        const char *eq = memchr(ps.p, '=', n);
        if (!eq) return 0;
        ps.p = eq + 1;
    }
    if (!array(&ps, 0)) return 0;
    skip_space(&ps);
    return ps.p == ps.end;
}

void pk_pgarray_quote(pk_buf *out, const char *text, size_t len) {
    pk_buf_addc(out, '"');
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '"' || text[i] == '\\') pk_buf_addc(out, '\\');
        pk_buf_addc(out, text[i]);
    }
    pk_buf_addc(out, '"');
}
