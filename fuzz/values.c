/*
 * values.c - libFuzzer target: one wire value into COPY text by column kind
 * (pk_value_to_copy, src/rows.c): uuid and bytea forms, the binary
 * wrapper, arrays of every element kind, generic text such as timestamps.
 *
 * Input: byte 0 picks the column, the rest is the JSON value.
 *   byte 0 % 10         the column kind (pk_kind order: text, generic, bool,
 *                       int, float, numeric, json, bytea, uuid, array)
 *   byte 0 / 10 % 10    an array's element kind (array again: nested)
 *   byte 0 >= 200       elements delimited by ';' (box) instead of ','
 * The value is converted twice, into an empty buffer and after existing
 * text: the results must agree, the existing text must survive, a success
 * must be one well-formed COPY field of valid UTF-8 (for a JSON array in
 * an array column: an array literal), and a failure must leave the buffer
 * as it was and say why.
 */
#include "../src/json.h"
#include "../src/pgarray.h"
#include "../src/rows.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char PREFIX[] = "kept\t";

static int ignore(void *ctx) {
    (void)ctx;
    return 0;
}

static int ignore_element(void *ctx, const char *text, size_t len) {
    (void)ctx;
    (void)text;
    (void)len;
    return 0;
}

/* How deep the braces of an array literal nest (quoted elements skipped). */
static int literal_depth(const char *s, size_t n) {
    int depth = 0, deepest = 0, quoted = 0;
    for (size_t i = 0; i < n; i++) {
        if (quoted) {
            if (s[i] == '\\') i++;   /* the literal's escape: the next byte is data */
            else if (s[i] == '"') quoted = 0;
        } else if (s[i] == '"') {
            quoted = 1;
        } else if (s[i] == '{' && ++depth > deepest) {
            deepest = depth;
        } else if (s[i] == '}') {
            depth--;
        }
    }
    return deepest;
}

/* A JSON array for an array column becomes an array literal: once COPY's
 * escapes are undone it must parse as one (the parser export.c uses), with
 * the column's delimiter, unless it nests deeper than that parser goes (64;
 * PostgreSQL itself stops at 6 dimensions and refuses the row). */
static void check_array_literal(const pk_column *col, const char *s, size_t n) {
    static const pk_pgarray_cb cb = {ignore, ignore, ignore_element};
    pk_buf text = PK_BUF_INIT, scratch = PK_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            c = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        }
        pk_buf_addc(&text, c);
    }
    FUZZ_REQUIRE(literal_depth(text.data, text.len) > 64 ||
                     pk_pgarray_parse(text.data, text.len, col->elem_delim, &scratch, &cb, NULL),
                 "not an array literal: %.*s", (int)text.len, text.data);
    pk_buf_free(&text);
    pk_buf_free(&scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    pk_column col = {(char *)"v", 1, (pk_kind)(data[0] % 10), (pk_kind)(data[0] / 10 % 10),
                     data[0] >= 200 ? ';' : ','};
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    pk_buf out = PK_BUF_INIT, again = PK_BUF_INIT, scratch = PK_BUF_INIT;
    const char *err = NULL, *err2 = NULL;

    int ok = pk_value_to_copy(&col, p, end, &out, &scratch, &err);
    pk_buf_add(&again, PREFIX, sizeof PREFIX - 1);
    int ok2 = pk_value_to_copy(&col, p, end, &again, &scratch, &err2);

    FUZZ_REQUIRE(ok == ok2, "the same value converted differently");
    FUZZ_REQUIRE(again.len >= sizeof PREFIX - 1 && memcmp(again.data, PREFIX, sizeof PREFIX - 1) == 0,
                 "the text before the value was changed");
    if (ok) {
        const char *bad = copy_text_error(out.data, out.len, 1, 0);
        FUZZ_REQUIRE(!bad, "%s: %.*s", bad, (int)out.len, out.data);
        FUZZ_REQUIRE(pk_utf8_valid(out.data, out.len), "invalid UTF-8: %.*s", (int)out.len, out.data);
        const char *v = pk_json_ws(p, end);
        if (col.kind == PK_KIND_ARRAY && v < end && *v == '[') check_array_literal(&col, out.data, out.len);
        FUZZ_REQUIRE(again.len == sizeof PREFIX - 1 + out.len &&
                         (out.len == 0 || memcmp(again.data + sizeof PREFIX - 1, out.data, out.len) == 0),
                     "the value converted differently after other text");
    } else {
        FUZZ_REQUIRE(err && *err && err2 && strcmp(err, err2) == 0, "a failure without the same reason");
        FUZZ_REQUIRE(out.len == 0 && again.len == sizeof PREFIX - 1, "a failure left output behind");
    }
    pk_buf_free(&out);
    pk_buf_free(&again);
    pk_buf_free(&scratch);
    return 0;
}
