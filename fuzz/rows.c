/*
 * rows.c - libFuzzer target: the streaming row scanner and the row
 * converter (src/rows.c), chained as the importer chains them.
 *
 * Input: a 5-byte header, then the body.
 *   bytes 0-3  chunk lengths, used in turn (0: the rest of the body)
 *   byte 4     bit 0: array key "records" instead of "data";
 *              bits 1-3: max_row_bytes (see MAX_ROW);
 *              bits 4-7: the row callback stops the scan after that many
 *              rows (0: never)
 * Every delivered row is converted against a plan with one column of every
 * kind and arrays of several element kinds. Checked: a converted line is
 * well-formed COPY text with one field per column and valid UTF-8; a
 * failed row leaves the line empty and says why; the scanner's verdicts
 * and envelope are consistent, and it accepts every valid document the JSON
 * lexer accepts (unless a limit of its own applies).
 */
#include "../src/json.h"
#include "../src/rows.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define COL(name, kind, elem, delim) {(char *)name, sizeof name - 1, kind, elem, delim}

static const pk_column COLUMNS[] = {
    COL("text", PK_KIND_TEXT, PK_KIND_TEXT, 0),
    COL("generic", PK_KIND_GENERIC, PK_KIND_TEXT, 0),
    COL("bool", PK_KIND_BOOL, PK_KIND_TEXT, 0),
    COL("int", PK_KIND_INT, PK_KIND_TEXT, 0),
    COL("float", PK_KIND_FLOAT, PK_KIND_TEXT, 0),
    COL("numeric", PK_KIND_NUMERIC, PK_KIND_TEXT, 0),
    COL("json", PK_KIND_JSON, PK_KIND_TEXT, 0),
    COL("bytea", PK_KIND_BYTEA, PK_KIND_TEXT, 0),
    COL("uuid", PK_KIND_UUID, PK_KIND_TEXT, 0),
    COL("texts", PK_KIND_ARRAY, PK_KIND_TEXT, 0),
    COL("uuids", PK_KIND_ARRAY, PK_KIND_UUID, 0),
    COL("byteas", PK_KIND_ARRAY, PK_KIND_BYTEA, 0),
    COL("ints", PK_KIND_ARRAY, PK_KIND_INT, 0),
    COL("jsons", PK_KIND_ARRAY, PK_KIND_JSON, 0),
    COL("boxes", PK_KIND_ARRAY, PK_KIND_GENERIC, ';'),
    COL("nested", PK_KIND_ARRAY, PK_KIND_ARRAY, 0),
    COL("text", PK_KIND_INT, PK_KIND_TEXT, 0),   /* a duplicate name: always \N */
};
#define NCOLS (sizeof COLUMNS / sizeof COLUMNS[0])

static const size_t MAX_ROW[8] = {0, 1, 8, 64, 256, 1024, 4096, 65536};

typedef struct run {
    pk_rowplan *plan;
    pk_buf line;
    size_t rows, stop_after;
} run;

static int on_row(void *ctx, const char *row, size_t len) {
    run *r = ctx;
    const char *err = NULL;
    pk_buf_reset(&r->line);
    if (pk_row_to_copy(r->plan, row, len, &r->line, &err)) {
        const char *bad = copy_text_error(r->line.data, r->line.len, NCOLS, 1);
        FUZZ_REQUIRE(!bad, "%s: %.*s", bad, (int)r->line.len, r->line.data);
        FUZZ_REQUIRE(pk_utf8_valid(r->line.data, r->line.len), "invalid UTF-8 in %.*s",
                     (int)r->line.len, r->line.data);
    } else {
        FUZZ_REQUIRE(err && *err, "a failed row without a reason");
        FUZZ_REQUIRE(r->line.len == 0, "a failed row left %zu bytes", r->line.len);
    }
    return ++r->rows == r->stop_after;
}

static void check_string(const char *s) {
    if (s) FUZZ_REQUIRE(pk_utf8_valid(s, strlen(s)), "an envelope string is not UTF-8");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 5) return 0;
    const char *body = (const char *)data + 5;
    size_t n = size - 5, off = 0;
    run r = {pk_rowplan_new(COLUMNS, NCOLS), PK_BUF_INIT, 0, data[4] >> 4};
    pk_rowscan *scan = pk_rowscan_new(data[4] & 1 ? "records" : "data", MAX_ROW[(data[4] >> 1) & 7],
                                      on_row, &r);
    FUZZ_REQUIRE(r.plan && scan, "out of memory");
    int ok = 1;
    for (int i = 0; ok && off < n; i = (i + 1) & 3) {
        size_t len = data[i] ? data[i] : n - off;
        if (len > n - off) len = n - off;
        ok = pk_rowscan_feed(scan, body + off, len);
        off += len;
    }
    if (ok) ok = pk_rowscan_finish(scan);
    FUZZ_REQUIRE(ok == (pk_rowscan_error(scan) == NULL), "verdict and error disagree");
    /* Whatever the JSON lexer calls one valid object (not too deep) the
     * scanner must take too, when no limit of its own applies; the only
     * other refusal is a second array key. */
    const char *end, *why;
    const char *first = pk_json_ws(body, body + n);
    if (!ok && data[4] >> 1 == 0 && first < body + n && *first == '{' &&
        pk_json_skip(body, body + n, 500, &end, &why) && pk_json_ws(end, body + n) == body + n)
        FUZZ_REQUIRE(strstr(pk_rowscan_error(scan), "duplicate"), "a valid body refused: %s",
                     pk_rowscan_error(scan));
    /* once failed, the scanner stays failed */
    if (!ok) FUZZ_REQUIRE(!pk_rowscan_feed(scan, "{}", 2), "a failed scanner took more input");

    pk_envelope env;
    pk_rowscan_envelope(scan, &env);
    FUZZ_REQUIRE(env.rows == r.rows, "envelope rows %zu, delivered %zu", env.rows, r.rows);
    check_string(env.error);
    check_string(env.error_code);
    check_string(env.next_after);
    check_string(env.table);

    pk_rowscan_free(scan);
    pk_rowplan_free(r.plan);
    pk_buf_free(&r.line);
    return 0;
}
