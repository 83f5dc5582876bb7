/*
 * fuzz.h - shared by the libFuzzer targets in this directory.
 *
 * A broken invariant aborts with a message; libFuzzer reports that as a
 * crash and saves the input, exactly as it does for a sanitizer report.
 */
#ifndef PKSYNC_FUZZ_H
#define PKSYNC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_REQUIRE(cond, ...)                                              \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "\nfuzz invariant failed (%s:%d): %s\n  ",       \
                    __FILE__, __LINE__, #cond);                              \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            abort();                                                         \
        }                                                                    \
    } while (0)

/*
 * What a COPY text field or line produced by rows.c must look like, or NULL
 * when it does: fields separated by raw tabs (nfields - 1 of them), a final
 * '\n' when `line`, no other raw newline, CR or NUL, and every backslash
 * starting one of the escapes rows.c writes (\\ \t \n \r), or \N standing
 * alone as a whole field.
 */
static inline const char *copy_text_error(const char *s, size_t n, size_t nfields, int line) {
    size_t tabs = 0, field = 0;
    if (line) {
        if (n == 0 || s[n - 1] != '\n') return "the line does not end in a newline";
        n--;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\t') {
            tabs++;
            field = i + 1;
            continue;
        }
        if (c == '\n' || c == '\r') return "a raw newline or CR inside the line";
        if (c == '\0') return "a NUL byte";
        if (c != '\\') continue;
        if (++i == n) return "a backslash at the end of the line";
        c = s[i];
        if (c == 'N') {
            if (i - 1 != field || (i + 1 < n && s[i + 1] != '\t')) return "\\N inside a field";
        } else if (c != '\\' && c != 't' && c != 'n' && c != 'r') {
            return "an escape rows.c never writes";
        }
    }
    if (tabs + 1 != nfields) return "the wrong number of fields";
    return NULL;
}

#endif
