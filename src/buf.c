/* buf.c - growable byte buffer (see buf.h). */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pk_buf_init(pk_buf *b) {
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

void pk_buf_free(pk_buf *b) {
    free(b->data);
    pk_buf_init(b);
}

void pk_buf_reset(pk_buf *b) {
    b->len = 0;
    b->failed = 0;
}

int pk_buf_reserve(pk_buf *b, size_t extra) {
    if (b->failed) return 0;
    if (extra <= b->cap - b->len) return 1;
    if (extra > ((size_t)-1) / 2 - b->len) {
        b->failed = 1;
        return 0;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void pk_buf_add(pk_buf *b, const void *p, size_t n) {
    if (n == 0 || !pk_buf_reserve(b, n)) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void pk_buf_addc(pk_buf *b, char c) {
    if (b->len < b->cap && !b->failed) {
        b->data[b->len++] = c;
        return;
    }
    pk_buf_add(b, &c, 1);
}

void pk_buf_adds(pk_buf *b, const char *s) {
    pk_buf_add(b, s, strlen(s));
}

void pk_buf_addf(pk_buf *b, const char *fmt, ...) {
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        pk_buf_add(b, small, (size_t)n);
        return;
    }
    if (!pk_buf_reserve(b, (size_t)n + 1)) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void pk_buf_consume(pk_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}
