/*
 * buf.h - a growable byte buffer owned by whoever embeds it.
 *
 * Used by every producer of bytes in the core (HTTP bodies, JSON output,
 * COPY text). Allocation failure is sticky: once a buffer fails to grow,
 * `failed` stays set and further appends are ignored, so a producer can
 * append freely and check once at the end.
 */
#ifndef PKSYNC_BUF_H
#define PKSYNC_BUF_H

#include <stddef.h>

typedef struct pk_buf {
    char  *data;
    size_t len;
    size_t cap;
    int    failed;   /* an allocation failed; contents are incomplete */
} pk_buf;

#define PK_BUF_INIT {NULL, 0, 0, 0}

void pk_buf_init(pk_buf *b);
void pk_buf_free(pk_buf *b);
void pk_buf_reset(pk_buf *b);                 /* len = 0, keeps memory */
int  pk_buf_reserve(pk_buf *b, size_t extra); /* 0 on failure */
void pk_buf_add(pk_buf *b, const void *p, size_t n);
void pk_buf_addc(pk_buf *b, char c);
void pk_buf_adds(pk_buf *b, const char *s);
void pk_buf_addf(pk_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pk_buf_consume(pk_buf *b, size_t n);     /* drop n bytes from the front */

#endif
