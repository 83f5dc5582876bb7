/*
 * pgarray.h - parser for PostgreSQL's array text form: `{a,"b c",NULL,{1,2}}`.
 *
 * Used when reading array columns as Lua tables (pg.c) and when serving
 * them as JSON arrays (export.c). The parser reports events to callbacks so
 * each caller builds its own representation without an intermediate tree.
 */
#ifndef PKSYNC_PGARRAY_H
#define PKSYNC_PGARRAY_H

#include <stddef.h>
#include "buf.h"

typedef struct pk_pgarray_cb {
    /* Each returns 0 to continue, non-zero to stop the parse. */
    int (*open)(void *ctx);                    /* '{' */
    int (*close)(void *ctx);                   /* '}' */
    /* An element: its unescaped text (NUL-terminated), or NULL for SQL NULL. */
    int (*element)(void *ctx, const char *text, size_t len);
} pk_pgarray_cb;

/* Parse s (n bytes). delim is the element type's delimiter (',' for all
 * types but box). scratch holds unescaped element text. Returns 1 on
 * success, 0 on malformed input or when a callback stopped the parse. */
int pk_pgarray_parse(const char *s, size_t n, char delim, pk_buf *scratch,
                     const pk_pgarray_cb *cb, void *ctx);

/* Append text as one element of an array literal: quoted and escaped
 * (always quoted, so empty strings, "NULL" and spaces survive). */
void pk_pgarray_quote(pk_buf *out, const char *text, size_t len);

#endif
