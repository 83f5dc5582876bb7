/*
 * rows.h - pulled rows, from the peer's JSON body to PostgreSQL COPY text.
 *
 * Two Lua-free pieces that the importer (import.c) chains together:
 *
 *   HTTP body chunks --> pk_rowscan (finds each element of the "data" or
 *   "records" array, remembers the envelope fields) --> one row's JSON text
 *   --> pk_row_to_copy (by the plan of local columns) --> one COPY line.
 *
 * Values are converted by the LOCAL column's kind, never by the shape of
 * the JSON value (docs/protocol.md, "Values on the wire"). Nothing here
 * calls Lua (the test binding is src/testing/rows_binding.c); nothing keeps
 * mutable statics, so several threads may each use their own plans and
 * scanners.
 * See rows.c for the design.
 */
#ifndef PKSYNC_ROWS_H
#define PKSYNC_ROWS_H

#include <stddef.h>

#include "buf.h"

/* How a local column takes a JSON value. TEXT: text, varchar, char, enums,
 * citext. GENERIC: everything PostgreSQL parses from text that has no rule
 * of its own (timestamps, dates, intervals, inet, money, ranges, ...). */
typedef enum {
    PK_KIND_TEXT, PK_KIND_GENERIC, PK_KIND_BOOL, PK_KIND_INT, PK_KIND_FLOAT,
    PK_KIND_NUMERIC, PK_KIND_JSON, PK_KIND_BYTEA, PK_KIND_UUID, PK_KIND_ARRAY
} pk_kind;

#define PK_KIND_COUNT 10

/* One local column. For ARRAY, elem_kind is the element's kind (ARRAY there
 * counts as GENERIC) and elem_delim its delimiter (',' for every type but
 * box, which uses ';'; 0 means ','). */
typedef struct pk_column {
    char *name;
    size_t name_len;
    pk_kind kind;
    pk_kind elem_kind;
    char elem_delim;
} pk_column;

/* ---- rows ----------------------------------------------------------------- */

/* A row plan: the local columns rows are converted into, in COPY column
 * order, plus the reusable buffers and the key-position memory that make
 * the per-row path allocation-free. One plan serves one thread at a time. */
typedef struct pk_rowplan pk_rowplan;

/* Copies the columns and their names; NULL on OOM. If two columns share a
 * name the first one gets the values (the second always gets \N). */
pk_rowplan *pk_rowplan_new(const pk_column *cols, size_t ncols);
void pk_rowplan_free(pk_rowplan *p);

/* Convert one row object (complete JSON text) into one COPY text line
 * appended to `line`: columns in plan order, tab-separated, "\n"-terminated;
 * a plan column absent from the row gives \N, a key given twice keeps its
 * last value. Keys that are not plan columns are ignored but remembered
 * (see pk_rowplan_unknown). Returns 1, or 0 with *err (a message naming the
 * column and the problem, in the plan's error buffer, valid until the next
 * call) when the row cannot be stored: not an object, invalid JSON, a value
 * the column kind cannot take, or out of memory. On 0 nothing is appended
 * to `line` (its length is restored; an allocation failure of `line` itself
 * stays recorded in line->failed). */
int pk_row_to_copy(pk_rowplan *p, const char *row, size_t len, pk_buf *line,
                   const char **err);

/* The distinct keys seen so far that are not plan columns (at most
 * PK_ROWS_MAX_UNKNOWN, in order of first appearance), NUL-terminated and
 * owned by the plan. Returns how many. */
#define PK_ROWS_MAX_UNKNOWN 64
size_t pk_rowplan_unknown(const pk_rowplan *p, const char ***names);

/* Convert one complete JSON value [p, end) (surrounding whitespace allowed)
 * for a column `col` into COPY text (escaped, or \N) appended to out.
 * scratch is working memory (a different buffer than out). Returns 1, or 0 with *err a static message
 * (without the column name) and out restored to its length. */
int pk_value_to_copy(const pk_column *col, const char *p, const char *end, pk_buf *out,
                     pk_buf *scratch, const char **err);

/* ---- the streaming envelope scanner -------------------------------------- */

typedef struct pk_rowscan pk_rowscan;

/* Called once per element of the array, with its exact JSON text (valid
 * JSON, at most max_row_bytes; the pointer is valid during the call only).
 * Return non-zero to stop the scan. */
typedef int (*pk_row_fn)(void *ctx, const char *row, size_t len);

/* Elements and other top-level values nest at most this deep. */
#define PK_ROWSCAN_MAX_DEPTH 512
/* max_row_bytes used when 0 is passed. */
#define PK_ROWSCAN_DEFAULT_MAX_ROW ((size_t)64 << 20)

/* array_key: "data" (pull-data) or "records" (table-records). max_row_bytes
 * bounds every element, key and other top-level value. NULL on OOM. */
pk_rowscan *pk_rowscan_new(const char *array_key, size_t max_row_bytes, pk_row_fn fn,
                           void *ctx);
void pk_rowscan_free(pk_rowscan *s);

/* Feed the next chunk (split anywhere). Calls fn once per complete element
 * of the array (any JSON value: the importer decides what a non-object
 * means). Returns 1 ok, 0 on malformed input, a row larger than
 * max_row_bytes, or the callback stopping (pk_rowscan_error tells which);
 * after a 0 every further feed returns 0. */
int pk_rowscan_feed(pk_rowscan *s, const char *data, size_t n);

/* End of body: 1 if the document was complete and valid (one top-level
 * object, nothing but whitespace after it), else 0. */
int pk_rowscan_finish(pk_rowscan *s);

/* The reason of the last failure, or NULL. Owned by the scanner. */
const char *pk_rowscan_error(const pk_rowscan *s);

/* The envelope's other top-level fields, as seen so far (final after
 * finish); a key given twice keeps its last value. success / has_more /
 * truncated / filtered: -1 absent or not a boolean, 0 false, 1 true.
 * error, error_code, next_after, table: unescaped strings (NUL-terminated,
 * owned by the scanner, valid until it is freed or fed again), NULL when
 * absent or not a string. saw_array: 1 when the array key was present as
 * an array. rows: elements delivered. */
typedef struct pk_envelope {
    int success, has_more, truncated, filtered, saw_array;
    const char *error, *error_code, *next_after, *table;
    size_t rows;
} pk_envelope;

void pk_rowscan_envelope(const pk_rowscan *s, pk_envelope *out);

#endif
