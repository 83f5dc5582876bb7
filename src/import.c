/*
 * import.c - the data path (see import.h).
 *
 * One run_page call does one HTTP request. libcurl's write callback feeds
 * the body to the streaming row scanner (rows.c); each row is converted by
 * the local column types into a COPY text line and streamed to PostgreSQL
 * while the body is still arriving. Every `batch_rows` rows the COPY ends
 * and, unless rows go straight into the target (direct mode, for a first
 * pull into an empty table), the plan's statements move the batch from the
 * staging table into the target with the conflict strategy.
 *
 * Consistency: a page is one transaction (or, when the caller already has
 * one open, e.g. atomic pulls, one savepoint). It commits only when the
 * body arrived complete and valid, so an interrupted page leaves nothing
 * behind and a retry starts from the last committed cursor.
 *
 * Pipelining: a pksync sender puts next_after before the rows, so while
 * this page streams into COPY a second thread already fetches the next one
 * (on its own libcurl handle, into memory); the next run_page call then
 * reads that buffered answer instead of waiting for the network.
 *
 * Bad rows never cost the good ones: a row the scanner cannot convert is
 * counted failed on the spot; a row PostgreSQL rejects during COPY is found
 * from the error's "line N" context, dropped, and the batch re-sent; a
 * batch whose apply statement fails is split in halves (savepoints) until
 * the failing rows stand alone.
 *
 * Keyset paging of plain senders: with `key_column` (a single integer
 * key), each row's key is read from the sender's JSON before any hook, so
 * the caller learns where the page ended (next_key) and whether its rows
 * came in strictly ascending key order from the bound it asked for
 * (keys_ordered), which is what makes "everything above the last key"
 * the rest of the table.
 */
#include "import.h"

#include <inttypes.h>
#include <lauxlib.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "compat.h"
#include "luax.h"
#include "http.h"
#include "json.h"
#include "pg.h"
#include "rows.h"

static const char *const REQUEST_HEADERS[] = {
    "Content-Type: application/json", "Accept: application/json", NULL,
};

#define COPY_FLUSH_BYTES (256 * 1024)
#define ERRBODY_MAX (64 * 1024)
#define MSG_MAX 512

/* State of the page being imported; lives in the importer so that a Lua
 * error after a page cannot leak its buffers. */
typedef struct page {
    PGconn *conn;
    pk_rowscan *scan;
    pk_buf batch;              /* COPY text of the current batch */
    size_t *line_end;          /* end offset of each batch line */
    size_t nlines, cap_lines;
    size_t sent;               /* bytes of batch already sent to COPY */
    int copy_open;
    int64_t batch_first;       /* staging row number of line 0 */
    int64_t rows, imported, updated, skipped, unchanged, failed, filtered;
    int64_t bytes;
    long status;
    pk_buf errbody;
    int scan_failed;
    char scan_error[MSG_MAX];
    int fatal;
    int hook_failed;           /* the fatal error came from a Lua hook */
    char fatal_msg[MSG_MAX];
    char fatal_state[8];
    char sample[MSG_MAX];      /* first row error */
    int key_seen;              /* a key was read; key_last is valid */
    int keys_ordered;          /* every key so far: an integer, above the last and the floor */
    int64_t key_last;
} page;

/* A statement run per batch with $1 = first row, $2 = last row, then its
 * own extra parameters ($3...). */
struct stmt {
    char *sql;
    char **params;
    size_t nparams;
};

/* The next page, fetched by a thread while the current one is imported. */
typedef struct prefetch {
    int active;                /* thread started, not yet joined */
    pthread_t thread;
    pk_http *http;             /* the thread's own handle (kept alive by http_ref) */
    int http_ref;
    char *url, *after;         /* what was asked for */
    pk_buf body, response;
    long status, timeout_ms, connect_timeout_ms;
    size_t max_body;
    int ok;
    pk_http_result res;
} prefetch;

/* How to ask for the next page: body = prefix + JSON string of the cursor + suffix. */
typedef struct next_page {
    const char *url, *prefix, *suffix;
    pk_http *http;
    int http_idx;              /* stack index of the handle during run_page */
    long timeout_ms, connect_timeout_ms;
    size_t max_body;
} next_page;

typedef struct importer {
    pk_rowplan *plan;
    pk_column *cols;
    size_t ncols;
    char *copy_sql, *clear_sql;
    struct stmt *pre;          /* remap statements run before the apply */
    size_t npre;
    struct stmt apply;         /* sql NULL in direct mode */
    char *array_key;
    char *key_column;          /* keyset paging: the single integer key, or NULL */
    int has_key_floor;         /* this page's rows must have keys >= key_floor */
    int64_t key_floor;
    pk_buf key_scratch;        /* an escaped key name, unescaped */
    size_t batch_rows, max_row_bytes;
    int64_t next_row;          /* staging row numbers, increasing across pages */
    char lock_timeout[24];     /* "<ms>ms" for the page's transaction, "" for the session's */
    page pg;
    prefetch pf;
    next_page next;            /* valid during run_page only */
    lua_State *L;              /* valid during run_page only: row hooks run in it */
    int transform_ref;         /* Lua function(row) -> row | nil, or LUA_NOREF */
    int after_batch_ref;       /* Lua function(first, last) -> rows updated, or LUA_NOREF */
    pk_buf hooked;             /* a row as the transform hook returned it */
} importer;

/* ---- small helpers ------------------------------------------------------- */

static void set_msg(char *dst, const char *src) {
    snprintf(dst, MSG_MAX, "%s", src ? src : "");
}

/* The first line of a libpq message (they end with newlines). */
static void first_line(char *dst, const char *src) {
    size_t n = src ? strcspn(src, "\n") : 0;
    if (n >= MSG_MAX) n = MSG_MAX - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

static void fatal_from(page *pg, const PGresult *res, const char *what) {
    if (pg->fatal) return;
    pg->fatal = 1;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[MSG_MAX];
    first_line(line, msg ? msg : PQerrorMessage(pg->conn));
    snprintf(pg->fatal_msg, MSG_MAX, "%s: %s", what, line);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(pg->fatal_state, sizeof pg->fatal_state, "%s", state ? state : "");
}

/* Run a statement that returns no rows; 0 (and fatal) on failure. */
static int exec_ok(page *pg, const char *sql) {
    PGresult *res = PQexec(pg->conn, sql);
    int ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) fatal_from(pg, res, sql);
    PQclear(res);
    return ok;
}

/* SQLSTATEs that say nothing about a row: a lock not granted in time, a
 * cancelled statement, a lost connection, resources, deadlocks. Such an
 * error stops the page instead of being pinned on rows by splitting. */
static int not_a_row_error(const PGresult *res) {
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!st) return 1;
    static const char *const classes[] = {"08", "40", "53", "54", "55", "57", "58", "XX", NULL};
    for (int i = 0; classes[i]; i++)
        if (strncmp(st, classes[i], 2) == 0) return 1;
    return 0;
}

static void note_row_error(page *pg, const char *msg) {
    pg->failed++;
    if (!pg->sample[0]) set_msg(pg->sample, msg);
}

/* ---- COPY ------------------------------------------------------------------ */

static int copy_open(importer *imp) {
    page *pg = &imp->pg;
    if (pg->copy_open) return 1;
    if (!exec_ok(pg, "SAVEPOINT pksync_copy")) return 0;
    PGresult *res = PQexec(pg->conn, imp->copy_sql);
    int ok = res && PQresultStatus(res) == PGRES_COPY_IN;
    if (!ok) fatal_from(pg, res, "COPY");
    PQclear(res);
    pg->copy_open = ok;
    pg->sent = 0;
    return ok;
}

/* Send the batch bytes not sent yet. */
static int copy_flush(importer *imp) {
    page *pg = &imp->pg;
    if (!copy_open(imp)) return 0;
    size_t n = pg->batch.len - pg->sent;
    if (n == 0) return 1;
    if (PQputCopyData(pg->conn, pg->batch.data + pg->sent, (int)n) != 1) {
        fatal_from(pg, NULL, "COPY data");
        return 0;
    }
    pg->sent = pg->batch.len;
    return 1;
}

/* End the COPY. Returns 1 when it succeeded, 0 when PostgreSQL rejected a
 * row (*bad_line = its 1-based line, or 0 if unknown; *err its message),
 * -1 on a fatal error. The result's messages are copied to err. */
static int copy_end(importer *imp, long *bad_line, char err[MSG_MAX]) {
    page *pg = &imp->pg;
    if (!copy_flush(imp)) return -1;
    pg->copy_open = 0;
    if (PQputCopyEnd(pg->conn, NULL) != 1) {
        fatal_from(pg, NULL, "COPY end");
        return -1;
    }
    int outcome = 1;
    PGresult *res;
    while ((res = PQgetResult(pg->conn)) != NULL) {
        if (outcome == 1 && PQresultStatus(res) != PGRES_COMMAND_OK) {
            const char *ctx = PQresultErrorField(res, PG_DIAG_CONTEXT);
            const char *at = ctx ? strstr(ctx, ", line ") : NULL;
            *bad_line = at ? strtol(at + 7, NULL, 10) : 0;
            const char *col = ctx ? strstr(ctx, ", column ") : NULL;
            char line[MSG_MAX];
            first_line(line, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
            if (col) {
                char colbuf[128];
                first_line(colbuf, col + 9);
                char *colon = strchr(colbuf, ':');
                if (colon) *colon = '\0';
                snprintf(err, MSG_MAX, "column %s: %s", colbuf, line);
            } else {
                snprintf(err, MSG_MAX, "%s", line);
            }
            outcome = PQstatus(pg->conn) == CONNECTION_OK && !not_a_row_error(res) ? 0 : -1;
            if (outcome < 0) fatal_from(pg, res, "COPY");
        }
        PQclear(res);
    }
    return outcome;
}

/* Drop line i (0-based) from the batch. */
static void remove_line(page *pg, size_t i) {
    size_t start = i ? pg->line_end[i - 1] : 0, end = pg->line_end[i];
    size_t gap = end - start;
    memmove(pg->batch.data + start, pg->batch.data + end, pg->batch.len - end);
    pg->batch.len -= gap;
    for (size_t j = i + 1; j < pg->nlines; j++) pg->line_end[j - 1] = pg->line_end[j] - gap;
    pg->nlines--;
}

/* Abort an open COPY and drain its results (after a failure elsewhere). */
static void copy_abort(page *pg) {
    if (!pg->copy_open) return;
    pg->copy_open = 0;
    PQputCopyEnd(pg->conn, "pksync: page aborted");
    PGresult *res;
    while ((res = PQgetResult(pg->conn)) != NULL) PQclear(res);
}

/* Finish the COPY of the batch, dropping rows PostgreSQL rejects until the
 * rest goes in. Returns 0 on a fatal error. */
static int copy_batch(importer *imp) {
    page *pg = &imp->pg;
    for (;;) {
        long bad = 0;
        char err[MSG_MAX];
        int r = copy_end(imp, &bad, err);
        if (r < 0) return 0;
        if (r == 1) return exec_ok(pg, "RELEASE SAVEPOINT pksync_copy");
        if (!exec_ok(pg, "ROLLBACK TO SAVEPOINT pksync_copy") ||
            !exec_ok(pg, "RELEASE SAVEPOINT pksync_copy"))
            return 0;
        if (bad < 1 || (size_t)bad > pg->nlines) {
            /* no line to blame: not a row problem */
            pg->fatal = 1;
            snprintf(pg->fatal_msg, MSG_MAX, "COPY failed: %.400s", err);
            return 0;
        }
        note_row_error(pg, err);
        remove_line(pg, (size_t)bad - 1);
        if (pg->nlines == 0) return 1;
        pg->sent = 0;
    }
}

/* ---- Lua hooks -------------------------------------------------------------------- *
 * Rows normally never touch Lua. A policy's transform hook, and the resolve
 * step of the "custom" strategy, do: they run through lua_pcall around a C
 * trampoline, so nothing a hook (or a memory error) raises can unwind
 * through libcurl or libpq. */

static void hook_failure(page *pg, const char *hook, lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    pg->fatal = 1;
    pg->hook_failed = 1;
    snprintf(pg->fatal_msg, MSG_MAX, "%s: %.400s", hook, msg ? msg : "(error object is not a string)");
    pg->fatal_state[0] = '\0';
}

/* Protected: (hook, row pointer, row length) -> encoded row | false
 * (filtered) | nil, reason (the row cannot be used). */
static int transform_trampoline(lua_State *L) {
    const char *row = (const char *)lua_touserdata(L, 2);
    size_t len = (size_t)lua_tonumber(L, 3);
    lua_settop(L, 1);
    lua_pushcfunction(L, pk_json_lua_decode);
    lua_pushlstring(L, row, len);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) return 2;          /* nil, "invalid JSON ..." */
    lua_pop(L, 1);
    lua_call(L, 1, 1);                       /* hook(row) */
    if (!lua_toboolean(L, -1)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushcfunction(L, pk_json_lua_encode);
    lua_insert(L, -2);
    lua_call(L, 1, 2);
    return 2;
}

/* Run the transform hook on one row. Returns the row text to import (in
 * imp->hooked), NULL with *filtered set, NULL with *err for an unusable row,
 * or NULL with a hook failure recorded in the page. */
static const char *transform_row(importer *imp, const char *row, size_t len, size_t *out_len,
                                 int *filtered, char err[MSG_MAX]) {
    lua_State *L = imp->L;
    int top = lua_gettop(L);
    *filtered = 0;
    err[0] = '\0';
    lua_pushcfunction(L, transform_trampoline);
    lua_rawgeti(L, LUA_REGISTRYINDEX, imp->transform_ref);
    lua_pushlightuserdata(L, (void *)row);
    lua_pushnumber(L, (lua_Number)len);
    if (lua_pcall(L, 3, 2, 0) != 0) {
        hook_failure(&imp->pg, "transform", L);
        lua_settop(L, top);
        return NULL;
    }
    const char *text = NULL;
    if (lua_type(L, -2) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -2, &n);
        pk_buf_reset(&imp->hooked);
        pk_buf_add(&imp->hooked, s, n);
        if (!imp->hooked.failed) {
            text = imp->hooked.data;
            *out_len = n;
        }
    } else if (lua_type(L, -2) == LUA_TBOOLEAN) {
        *filtered = 1;
    } else {
        snprintf(err, MSG_MAX, "transform: %.400s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "unusable row");
    }
    lua_settop(L, top);
    return text;
}

/* Protected: (fn, first, last) -> fn(first, last). */
static int after_batch_trampoline(lua_State *L) {
    lua_call(L, 2, 1);
    return 1;
}

/* The resolve step of the custom strategy, on rows first..last of the
 * staging table; it reports how many local rows it changed. */
static int run_after_batch(importer *imp, int64_t first, int64_t last) {
    if (imp->after_batch_ref == LUA_NOREF) return 1;
    lua_State *L = imp->L;
    int top = lua_gettop(L);
    lua_pushcfunction(L, after_batch_trampoline);
    lua_rawgeti(L, LUA_REGISTRYINDEX, imp->after_batch_ref);
    lua_pushnumber(L, (lua_Number)first);
    lua_pushnumber(L, (lua_Number)last);
    if (lua_pcall(L, 3, 1, 0) != 0) {
        hook_failure(&imp->pg, "resolve", L);
        lua_settop(L, top);
        return 0;
    }
    int64_t changed = (int64_t)lua_tonumber(L, -1);
    lua_settop(L, top);
    imp->pg.updated += changed;
    imp->pg.skipped -= changed;
    return 1;
}

/* ---- applying a batch -------------------------------------------------------- */

#define MAX_STMT_PARAMS 16

/* Execute a statement with $1 = lo, $2 = hi and its extra parameters. */
static PGresult *exec_range(importer *imp, const struct stmt *st, int64_t lo, int64_t hi) {
    char los[24], his[24];
    snprintf(los, sizeof los, "%" PRId64, lo);
    snprintf(his, sizeof his, "%" PRId64, hi);
    const char *values[2 + MAX_STMT_PARAMS];
    values[0] = los;
    values[1] = his;
    for (size_t i = 0; i < st->nparams; i++) values[2 + i] = st->params[i];
    return PQexecParams(imp->pg.conn, st->sql, (int)(2 + st->nparams), NULL, values, NULL, NULL, 0);
}

static int64_t field_int(const PGresult *res, int col) {
    return PQgetisnull(res, 0, col) ? 0 : strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

/* Apply rows lo..hi; on failure split until the bad rows stand alone.
 * The apply statement answers (staged, created, total[, unchanged]):
 * staged rows neither created nor updated were skipped, or, when it says
 * so, left alone because they equalled the local row. */
static int apply_range(importer *imp, int64_t lo, int64_t hi) {
    page *pg = &imp->pg;
    if (!exec_ok(pg, "SAVEPOINT pksync_apply")) return 0;
    PGresult *res = exec_range(imp, &imp->apply, lo, hi);
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        int64_t staged = field_int(res, 0), created = field_int(res, 1), total = field_int(res, 2);
        int64_t unchanged = PQnfields(res) > 3 ? field_int(res, 3) : 0;
        pg->imported += created;
        pg->updated += total - created;
        pg->unchanged += unchanged;
        pg->skipped += staged - total - unchanged;
        PQclear(res);
        return exec_ok(pg, "RELEASE SAVEPOINT pksync_apply");
    }
    char err[MSG_MAX];
    first_line(err, res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL);
    const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    if (detail) {
        char d[MSG_MAX];
        first_line(d, detail);
        size_t used = strlen(err);
        snprintf(err + used, MSG_MAX - used, " (%.200s)", d);
    }
    int lost = PQstatus(pg->conn) != CONNECTION_OK || not_a_row_error(res);
    if (lost) fatal_from(pg, res, "apply");
    PQclear(res);
    if (lost || !exec_ok(pg, "ROLLBACK TO SAVEPOINT pksync_apply") ||
        !exec_ok(pg, "RELEASE SAVEPOINT pksync_apply"))
        return 0;
    if (lo == hi) {
        note_row_error(pg, err);
        return 1;
    }
    int64_t mid = lo + (hi - lo) / 2;
    return apply_range(imp, lo, mid) && apply_range(imp, mid + 1, hi);
}

static int run_pre(importer *imp, int64_t lo, int64_t hi) {
    for (size_t i = 0; i < imp->npre; i++) {
        PGresult *res = exec_range(imp, &imp->pre[i], lo, hi);
        ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        if (!ok) fatal_from(&imp->pg, res, "remap");
        PQclear(res);
        if (!ok) return 0;
    }
    return 1;
}

static void reset_batch(importer *imp) {
    page *pg = &imp->pg;
    pk_buf_reset(&pg->batch);
    pg->nlines = 0;
    pg->sent = 0;
    pg->batch_first = imp->next_row;
}

/* End of a batch: COPY it, then (staging mode) remap and apply. */
static int end_batch(importer *imp) {
    page *pg = &imp->pg;
    if (pg->nlines == 0 && !pg->copy_open) {
        reset_batch(imp);
        return 1;
    }
    int64_t first = pg->batch_first, last = imp->next_row - 1;
    if (!copy_batch(imp)) return 0;
    if (!imp->apply.sql) {
        pg->imported += (int64_t)pg->nlines;
    } else if (pg->nlines > 0) {
        if (!run_pre(imp, first, last) || !apply_range(imp, first, last) ||
            !run_after_batch(imp, first, last))
            return 0;
        if (imp->clear_sql && !exec_ok(pg, imp->clear_sql)) return 0;
    }
    reset_batch(imp);
    return 1;
}

/* ---- rows from the scanner ----------------------------------------------------- */

static int remember_line(page *pg) {
    if (pg->nlines == pg->cap_lines) {
        size_t cap = pg->cap_lines ? pg->cap_lines * 2 : 1024;
        size_t *p = realloc(pg->line_end, cap * sizeof *p);
        if (!p) return 0;
        pg->line_end = p;
        pg->cap_lines = cap;
    }
    pg->line_end[pg->nlines++] = pg->batch.len;
    return 1;
}

/* Staging lines carry the row number as their last column. */
static void append_row_number(importer *imp) {
    pk_buf *b = &imp->pg.batch;
    if (b->len > 0 && b->data[b->len - 1] == '\n') b->len--;
    pk_buf_addf(b, "\t%" PRId64 "\n", imp->next_row);
}

/* ---- the keys of a page (keyset paging) ------------------------------------ */

/* The row's key as the sender sent it: a JSON integer, or a string holding
 * one. Returns 0 when the row lacks it or it is no int64. */
static int row_key(importer *imp, const char *row, size_t len, int64_t *key) {
    const char *end = row + len, *v, *e;
    int is_int;
    if (!pk_json_member(row, end, imp->key_column, strlen(imp->key_column), &imp->key_scratch, &v))
        return 0;
    if (v < end && *v == '"') {
        const char *q = v + 1;
        while (q < end && *q != '"') q++;
        return q < end && pk_json_int64(v + 1, (size_t)(q - v - 1), key);
    }
    return pk_json_number(v, end, &e, &is_int) && is_int && pk_json_int64(v, (size_t)(e - v), key);
}

static void track_key(importer *imp, const char *row, size_t len) {
    page *pg = &imp->pg;
    int64_t key;
    if (!row_key(imp, row, len, &key)) {
        pg->keys_ordered = 0;
        return;
    }
    if (pg->key_seen ? key <= pg->key_last : imp->has_key_floor && key < imp->key_floor)
        pg->keys_ordered = 0;
    if (!pg->key_seen || key > pg->key_last) pg->key_last = key;
    pg->key_seen = 1;
}

static int on_row(void *ctx, const char *row, size_t len) {
    importer *imp = (importer *)ctx;
    page *pg = &imp->pg;
    const char *err;
    pg->rows++;
    if (imp->key_column) track_key(imp, row, len);
    if (imp->transform_ref != LUA_NOREF) {
        int filtered;
        char why[MSG_MAX];
        row = transform_row(imp, row, len, &len, &filtered, why);
        if (pg->fatal) return 1;
        if (filtered) {
            pg->filtered++;
            return 0;
        }
        if (!row) {
            note_row_error(pg, why);
            return 0;
        }
    }
    if (!pk_row_to_copy(imp->plan, row, len, &pg->batch, &err)) {
        note_row_error(pg, err);
        return 0;
    }
    if (imp->apply.sql) append_row_number(imp);
    imp->next_row++;
    if (pg->batch.failed || !remember_line(pg)) {
        pg->fatal = 1;
        set_msg(pg->fatal_msg, "out of memory");
        return 1;
    }
    if (pg->batch.len - pg->sent >= COPY_FLUSH_BYTES && !copy_flush(imp)) return 1;
    if (pg->nlines >= imp->batch_rows && !end_batch(imp)) return 1;
    return 0;
}

/* ---- prefetching the next page ---------------------------------------------- */

static int prefetch_sink(void *ctx, long status, const char *data, size_t n) {
    prefetch *pf = (prefetch *)ctx;
    pf->status = status;
    pk_buf_add(&pf->response, data, n);
    return pf->response.failed;
}

/* Thread body: no Lua, only libcurl on the prefetch's own handle. */
static void *prefetch_run(void *arg) {
    prefetch *pf = (prefetch *)arg;
    pk_http_request req = {"POST", pf->url, pf->body.data, pf->body.len, REQUEST_HEADERS,
                           pf->timeout_ms, pf->connect_timeout_ms, pf->max_body, prefetch_sink, pf};
    pf->ok = pk_http_perform(pf->http, &req, &pf->res);
    return NULL;
}

static void prefetch_wait(void *ctx);

/* Start fetching the page after this one as soon as its cursor is known. */
static void maybe_prefetch(importer *imp) {
    prefetch *pf = &imp->pf;
    if (pf->active || !imp->next.url) return;
    pk_envelope env;
    pk_rowscan_envelope(imp->pg.scan, &env);
    if (env.has_more != 1 || !env.next_after) return;
    pk_buf_reset(&pf->body);
    pk_buf_reset(&pf->response);
    pk_buf_adds(&pf->body, imp->next.prefix);
    if (!pk_json_quote(&pf->body, env.next_after, strlen(env.next_after))) return;
    pk_buf_adds(&pf->body, imp->next.suffix);
    free(pf->url);
    free(pf->after);
    pf->url = strdup(imp->next.url);
    pf->after = strdup(env.next_after);
    if (!pf->url || !pf->after || pf->body.failed) return;
    pf->http = imp->next.http;
    pf->timeout_ms = imp->next.timeout_ms;
    pf->connect_timeout_ms = imp->next.connect_timeout_ms;
    pf->max_body = imp->next.max_body;
    pf->status = 0;
    pf->ok = 0;
    if (pthread_create(&pf->thread, NULL, prefetch_run, pf) == 0) {
        pf->active = 1;
        pk_http_lend(pf->http, prefetch_wait, pf);
    }
}

/* Wait for a running prefetch thread. Also the handle's reclaim callback
 * (see pk_http_lend): closing the handle waits here, in the Lua thread. */
static void prefetch_wait(void *ctx) {
    prefetch *pf = (prefetch *)ctx;
    if (!pf->active) return;
    pthread_join(pf->thread, NULL);
    pf->active = 0;
    pk_http_lend(pf->http, NULL, NULL);
}

/* Wait for a running prefetch and release its handle reference.
 * Returns 1 when one was joined here. */
static int prefetch_join(importer *imp, lua_State *L) {
    prefetch *pf = &imp->pf;
    int joined = pf->active;
    prefetch_wait(pf);
    luaL_unref(L, LUA_REGISTRYINDEX, pf->http_ref);
    pf->http_ref = LUA_NOREF;
    return joined;
}

static void prefetch_free(prefetch *pf) {
    pk_buf_free(&pf->body);
    pk_buf_free(&pf->response);
    free(pf->url);
    free(pf->after);
    pf->url = pf->after = NULL;
}

/* libcurl body sink. */
static int on_body(void *ctx, long status, const char *data, size_t n) {
    importer *imp = (importer *)ctx;
    page *pg = &imp->pg;
    pg->status = status;
    pg->bytes += (int64_t)n;
    if (status != 200) {
        size_t room = ERRBODY_MAX - pg->errbody.len;
        pk_buf_add(&pg->errbody, data, n < room ? n : room);
        return 0;
    }
    if (pk_rowscan_feed(pg->scan, data, n)) {
        maybe_prefetch(imp);
        return 0;
    }
    if (!pg->fatal) {
        pg->scan_failed = 1;
        set_msg(pg->scan_error, pk_rowscan_error(pg->scan));
    }
    return 1;
}

/* ---- page lifecycle --------------------------------------------------------------- */

static void page_clear(page *pg) {
    if (pg->scan) pk_rowscan_free(pg->scan);
    pg->scan = NULL;
    pk_buf_reset(&pg->batch);
    pk_buf_reset(&pg->errbody);
    pg->nlines = pg->sent = 0;
    pg->copy_open = 0;
    pg->rows = pg->imported = pg->updated = pg->skipped = pg->unchanged = pg->failed = pg->filtered = pg->bytes = 0;
    pg->status = 0;
    pg->scan_failed = pg->fatal = pg->hook_failed = 0;
    pg->scan_error[0] = pg->fatal_msg[0] = pg->fatal_state[0] = pg->sample[0] = '\0';
    pg->key_seen = 0;
    pg->keys_ordered = 1;
    pg->key_last = 0;
}

static void page_free(page *pg) {
    if (pg->scan) pk_rowscan_free(pg->scan);
    pg->scan = NULL;
    pk_buf_free(&pg->batch);
    pk_buf_free(&pg->errbody);
    free(pg->line_end);
    pg->line_end = NULL;
    pg->cap_lines = 0;
}

/* lock_timeout for the rest of the current transaction only (the
 * connection may be shared: the session's own setting is left alone). */
static int set_local_lock_timeout(page *pg, const char *value) {
    const char *params[1] = {value};
    PGresult *res = PQexecParams(pg->conn, "SELECT set_config('lock_timeout', $1, true)", 1, NULL, params,
                                 NULL, NULL, 0);
    int ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok) fatal_from(pg, res, "setting lock_timeout");
    PQclear(res);
    return ok;
}

/* Open the page's transaction (or savepoint inside the caller's). */
static int page_begin(importer *imp, int *own_tx) {
    page *pg = &imp->pg;
    *own_tx = PQtransactionStatus(pg->conn) == PQTRANS_IDLE;
    if (!exec_ok(pg, *own_tx ? "BEGIN" : "SAVEPOINT pksync_page")) return 0;
    if (imp->lock_timeout[0] && !set_local_lock_timeout(pg, imp->lock_timeout)) return 0;
    if (imp->clear_sql && !exec_ok(pg, imp->clear_sql)) return 0;
    reset_batch(imp);
    return 1;
}

static int page_commit(page *pg, int own_tx) {
    return exec_ok(pg, own_tx ? "COMMIT" : "RELEASE SAVEPOINT pksync_page");
}

static void page_rollback(page *pg, int own_tx) {
    copy_abort(pg);
    if (PQstatus(pg->conn) != CONNECTION_OK) return;
    if (own_tx) {
        PGresult *res = PQexec(pg->conn, "ROLLBACK");
        PQclear(res);
        return;
    }
    PGresult *res = PQexec(pg->conn, "ROLLBACK TO SAVEPOINT pksync_page");
    PQclear(res);
    res = PQexec(pg->conn, "RELEASE SAVEPOINT pksync_page");
    PQclear(res);
}

/* ---- Lua binding ---------------------------------------------------------------- */

static importer *check_importer(lua_State *L, int idx) {
    importer *imp = (importer *)luaL_checkudata(L, idx, PK_IMPORTER_MT);
    if (!imp->plan) luaL_error(L, "attempt to use a closed importer");
    return imp;
}

static void free_stmt(struct stmt *st) {
    free(st->sql);
    for (size_t i = 0; i < st->nparams; i++) free(st->params[i]);
    free(st->params);
    st->sql = NULL;
    st->params = NULL;
    st->nparams = 0;
}

static void importer_release(importer *imp) {
    page_free(&imp->pg);
    if (imp->plan) pk_rowplan_free(imp->plan);
    imp->plan = NULL;
    for (size_t i = 0; i < imp->ncols; i++) free(imp->cols[i].name);
    free(imp->cols);
    imp->cols = NULL;
    imp->ncols = 0;
    free(imp->copy_sql);
    free(imp->clear_sql);
    free(imp->array_key);
    free(imp->key_column);
    pk_buf_free(&imp->key_scratch);
    imp->copy_sql = imp->clear_sql = imp->array_key = imp->key_column = NULL;
    for (size_t i = 0; i < imp->npre; i++) free_stmt(&imp->pre[i]);
    free(imp->pre);
    imp->pre = NULL;
    imp->npre = 0;
    free_stmt(&imp->apply);
}

static int l_importer_gc(lua_State *L) {
    importer *imp = (importer *)luaL_checkudata(L, 1, PK_IMPORTER_MT);
    prefetch_join(imp, L);
    prefetch_free(&imp->pf);
    luaL_unref(L, LUA_REGISTRYINDEX, imp->transform_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, imp->after_batch_ref);
    imp->transform_ref = imp->after_batch_ref = LUA_NOREF;
    pk_buf_free(&imp->hooked);
    importer_release(imp);
    return 0;
}

/* An optional string field copied with malloc (NULL when absent). Raises
 * only before anything of the importer is allocated, or with the userdata
 * already owning what was allocated (its __gc frees it). */
static char *string_field(lua_State *L, int tbl, const char *field, int required) {
    lua_getfield(L, tbl, field);
    char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        s = strdup(lua_tostring(L, -1));
        if (!s) luaL_error(L, "pksync: out of memory");
    } else if (required || !lua_isnil(L, -1)) {
        luaL_error(L, "importer_new: %s must be a string", field);
    }
    lua_pop(L, 1);
    return s;
}

static size_t size_field(lua_State *L, int tbl, const char *field, size_t def, size_t max) {
    lua_getfield(L, tbl, field);
    lua_Number n = lua_isnil(L, -1) ? (lua_Number)def : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    if (n < 1 || n > (lua_Number)max) luaL_error(L, "importer_new: %s out of range", field);
    return (size_t)n;
}

/* The optional lock_timeout field (ms) as set_config's text into out. */
static void lock_timeout_field(lua_State *L, int tbl, char *out, size_t size) {
    lua_getfield(L, tbl, "lock_timeout");
    out[0] = '\0';
    if (!lua_isnil(L, -1)) {
        lua_Number ms = luaL_checknumber(L, -1);
        if (!(ms >= 1 && ms <= 2147483647)) luaL_error(L, "importer_new: lock_timeout out of range");
        snprintf(out, size, "%ldms", (long)ms);
    }
    lua_pop(L, 1);
}

/* A statement table {sql=, params={...}} at the stack top into *st (the
 * importer already owns st, so a raise here leaks nothing). */
static void read_stmt(lua_State *L, struct stmt *st) {
    int t = lua_gettop(L);
    luaL_checktype(L, t, LUA_TTABLE);
    st->sql = string_field(L, t, "sql", 1);
    lua_getfield(L, t, "params");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        size_t n = (size_t)lua_rawlen(L, -1);
        if (n > MAX_STMT_PARAMS) luaL_error(L, "importer_new: at most %d parameters", MAX_STMT_PARAMS);
        st->params = calloc(n ? n : 1, sizeof(char *));
        if (!st->params) luaL_error(L, "pksync: out of memory");
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "importer_new: parameters must be strings");
            st->params[i] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (!st->params[i]) luaL_error(L, "pksync: out of memory");
            st->nparams = i + 1;
        }
    }
    lua_pop(L, 1);
}

static void read_statements(lua_State *L, int tbl, importer *imp) {
    lua_getfield(L, tbl, "apply");
    if (!lua_isnil(L, -1)) read_stmt(L, &imp->apply);
    lua_pop(L, 1);
    lua_getfield(L, tbl, "pre");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        size_t n = (size_t)lua_rawlen(L, -1);
        if (n > 64) luaL_error(L, "importer_new: too many pre statements");
        imp->pre = calloc(n ? n : 1, sizeof *imp->pre);
        if (!imp->pre) luaL_error(L, "pksync: out of memory");
        imp->npre = n;
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            read_stmt(L, &imp->pre[i]);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static void read_columns(lua_State *L, int tbl, importer *imp) {
    lua_getfield(L, tbl, "columns");
    luaL_checktype(L, -1, LUA_TTABLE);
    size_t n = (size_t)lua_rawlen(L, -1);
    if (n < 1 || n > 1600) luaL_error(L, "importer_new: 1..1600 columns expected");
    imp->cols = calloc(n, sizeof *imp->cols);
    if (!imp->cols) luaL_error(L, "pksync: out of memory");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        pk_column *col = &imp->cols[i];
        const char *name = pk_check_column(L, lua_gettop(L), col);
        if (!(col->name = strdup(name))) luaL_error(L, "pksync: out of memory");
        imp->ncols = i + 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* A registry reference to an optional function field, or LUA_NOREF. */
static int function_ref(lua_State *L, int tbl, const char *field) {
    lua_getfield(L, tbl, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    luaL_checktype(L, -1, LUA_TFUNCTION);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* importer_new(spec) -> importer. spec: columns ({name, kind, elem_kind,
 * elem_delim}...), copy, clear, apply ({sql, params}), pre ({sql, params}...),
 * batch_rows, array_key, max_row_bytes, first_row, lock_timeout (ms, for
 * each page's transaction only), transform (function(row) -> row | nil),
 * after_batch (function(first, last) -> rows changed), key_column (the
 * single integer key whose values run_page reports). Without apply, rows
 * are COPYed straight into the copy statement's table. */
static int l_importer_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    importer *imp = (importer *)lua_newuserdata(L, sizeof *imp);
    memset(imp, 0, sizeof *imp);
    imp->pf.http_ref = imp->transform_ref = imp->after_batch_ref = LUA_NOREF;
    luaL_setmetatable(L, PK_IMPORTER_MT);
    read_columns(L, 1, imp);
    imp->copy_sql = string_field(L, 1, "copy", 1);
    imp->clear_sql = string_field(L, 1, "clear", 0);
    read_statements(L, 1, imp);
    imp->array_key = string_field(L, 1, "array_key", 0);
    if (!imp->array_key && !(imp->array_key = strdup("data"))) return luaL_error(L, "pksync: out of memory");
    imp->key_column = string_field(L, 1, "key_column", 0);
    imp->batch_rows = size_field(L, 1, "batch_rows", 10000, 10000000);
    imp->max_row_bytes = size_field(L, 1, "max_row_bytes", 64u << 20, (size_t)1 << 31);
    imp->next_row = (int64_t)size_field(L, 1, "first_row", 1, (size_t)1 << 52);
    lock_timeout_field(L, 1, imp->lock_timeout, sizeof imp->lock_timeout);
    imp->plan = pk_rowplan_new(imp->cols, imp->ncols);
    if (!imp->plan) return luaL_error(L, "pksync: out of memory");
    imp->transform_ref = function_ref(L, 1, "transform");
    imp->after_batch_ref = function_ref(L, 1, "after_batch");
    lua_settop(L, 2);
    return 1;
}

/* ---- run_page results ---- */

/* keys_ordered, and next_key (the last key + 1, as decimal text: int64
 * keys do not fit LuaJIT's numbers) unless the page had no key or ended at
 * the largest one. */
static void push_keys(lua_State *L, const page *pg) {
    pk_set_flag(L, "keys_ordered", pg->keys_ordered && pg->key_seen);
    if (pg->key_seen && pg->key_last < INT64_MAX) {
        char next[24];
        snprintf(next, sizeof next, "%" PRId64, pg->key_last + 1);
        pk_set_str(L, "next_key", next);
    }
}

static int push_result(lua_State *L, importer *imp, int valid, int committed) {
    page *pg = &imp->pg;
    pk_envelope env;
    memset(&env, 0, sizeof env);
    env.success = env.has_more = env.truncated = env.filtered = env.saw_array = -1;
    if (pg->status == 200 && pg->scan) pk_rowscan_envelope(pg->scan, &env);
    lua_newtable(L);
    pk_set_int(L, "status", pg->status);
    pk_set_flag(L, "valid", valid);
    pk_set_flag(L, "committed", committed);
    pk_set_int(L, "rows", pg->rows);
    pk_set_int(L, "bytes", pg->bytes);
    pk_set_int(L, "imported", committed ? pg->imported : 0);
    pk_set_int(L, "updated", committed ? pg->updated : 0);
    pk_set_int(L, "skipped", committed ? pg->skipped : 0);
    pk_set_int(L, "unchanged", committed ? pg->unchanged : 0);
    pk_set_int(L, "failed", committed ? pg->failed : 0);
    pk_set_int(L, "filtered_rows", committed ? pg->filtered : 0);   /* "filtered" is the envelope flag */
    pk_set_str(L, "error_sample", pg->sample);
    pk_set_str(L, "invalid_reason", valid ? NULL : pg->scan_error);
    if (pg->status != 200 && pg->errbody.len > 0) {
        lua_pushlstring(L, pg->errbody.data, pg->errbody.len);
        lua_setfield(L, -2, "body");
    }
    pk_set_envelope(L, &env);
    if (imp->key_column) push_keys(L, pg);
    const char **unknown;
    size_t nunknown = pk_rowplan_unknown(imp->plan, &unknown);
    pk_push_strings(L, unknown, nunknown);
    lua_setfield(L, -2, "unknown_columns");
    return 1;
}

static int push_db_failure(lua_State *L, const page *pg) {
    lua_pushnil(L);
    if (pg->hook_failed) lua_pushliteral(L, "hook_failed");
    else lua_pushliteral(L, "database_error");
    lua_newtable(L);
    pk_set_str(L, "message", pg->fatal_msg);
    pk_set_str(L, "sqlstate", pg->fatal_state);
    pk_set_int(L, "rows", pg->rows);
    return 3;
}

static int push_transport_failure(lua_State *L, const pk_http_result *res, const page *pg) {
    lua_pushnil(L);
    lua_pushstring(L, res->err ? res->err : "transport error");
    lua_newtable(L);
    pk_set_str(L, "reason", res->reason);
    pk_set_str(L, "message", res->message);
    pk_set_int(L, "code", res->curl_code);
    pk_set_int(L, "rows", pg->rows);
    pk_set_int(L, "http_status", pg->status);
    return 3;
}

static long opt_ms(lua_State *L, int tbl, const char *field) {
    lua_getfield(L, tbl, field);
    lua_Number n = lua_isnil(L, -1) ? 0 : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return n > 0 && n < 2147483647.0 ? (long)n : 0;
}

/* Optional pipelining fields of a page request: next_prefix, next_suffix
 * and next_http (a second handle for the prefetch thread). The handle is
 * referenced in the registry so it outlives a prefetch still running. */
static void read_next(lua_State *L, int req, importer *imp, const char *url) {
    memset(&imp->next, 0, sizeof imp->next);
    lua_getfield(L, req, "next_http");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    imp->next.http = pk_http_check(L, -1);
    imp->next.http_idx = lua_gettop(L);
    lua_getfield(L, req, "next_prefix");
    lua_getfield(L, req, "next_suffix");
    imp->next.prefix = luaL_checkstring(L, -2);
    imp->next.suffix = luaL_checkstring(L, -1);
    imp->next.url = url;
}

/* key_floor: decimal text of the lowest key the page may hold. */
static void read_key_floor(lua_State *L, int req, importer *imp) {
    lua_getfield(L, req, "key_floor");
    size_t n;
    const char *s = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &n);
    imp->has_key_floor = s != NULL;
    if (s && !pk_json_int64(s, n, &imp->key_floor)) luaL_error(L, "run_page: key_floor must be an integer");
    lua_pop(L, 1);
}

/* Feed a prefetched answer through the sink, as if it arrived now. */
static int replay(importer *imp, pk_http_result *res) {
    prefetch *pf = &imp->pf;
    if (!pf->ok) {
        *res = pf->res;
        if (res->err == pf->res.message) res->err = res->message;
        return 0;
    }
    /* Replaying may start the next prefetch, which reuses pf: take what
     * this page needs out of it first. */
    pk_buf body = pf->response;
    long status = pf->status;
    pk_buf_init(&pf->response);
    memset(res, 0, sizeof *res);
    int ok = 1;
    for (size_t off = 0; off < body.len && ok;) {
        size_t n = body.len - off < 65536 ? body.len - off : 65536;
        if (on_body(imp, status, body.data + off, n)) {
            ok = 0;
            res->err = "aborted";
            res->reason = "aborted";
        }
        off += n;
    }
    if (body.len == 0) imp->pg.status = status;
    pk_buf_free(&body);
    return ok;
}

/* imp:run_page(db, http, {url=, body=, after=, timeout=, connect_timeout=,
 *   max_body=, next_http=, next_prefix=, next_suffix=, key_floor=})
 *   -> result table | nil, err, detail (transport or database failure) */
static int l_run_page(lua_State *L) {
    importer *imp = check_importer(L, 1);
    PGconn *conn = pk_pg_conn(L, 2);
    pk_http *http = pk_http_check(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_getfield(L, 4, "url");   /* these stay on the stack while in use */
    lua_getfield(L, 4, "body");
    lua_getfield(L, 4, "after");
    const char *url = luaL_checkstring(L, -3);
    size_t body_len;
    const char *body = luaL_checklstring(L, -2, &body_len);
    const char *after = lua_tostring(L, -1);
    read_key_floor(L, 4, imp);
    pk_http_request req = {"POST", url, body, body_len, REQUEST_HEADERS,
                           opt_ms(L, 4, "timeout"), opt_ms(L, 4, "connect_timeout"),
                           (size_t)opt_ms(L, 4, "max_body"), on_body, imp};
    imp->L = L;
    prefetch *pf = &imp->pf;
    int have = prefetch_join(imp, L) && after && pf->url && pf->after &&
               strcmp(pf->url, url) == 0 && strcmp(pf->after, after) == 0;
    read_next(L, 4, imp, url);
    if (imp->next.http) {
        imp->next.timeout_ms = req.timeout_ms;
        imp->next.connect_timeout_ms = req.connect_timeout_ms;
        imp->next.max_body = req.max_body;
        lua_pushvalue(L, imp->next.http_idx);
        pf->http_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    page *pg = &imp->pg;
    page_clear(pg);
    pg->conn = conn;
    pg->scan = pk_rowscan_new(imp->array_key, imp->max_row_bytes, on_row, imp);
    int own_tx = 0;
    pk_http_result res;
    int ok = 0, valid = 0, committed = 0;
    if (pg->scan && page_begin(imp, &own_tx)) {
        ok = have ? replay(imp, &res) : pk_http_perform(http, &req, &res);
        /* An empty body never reaches on_body: take the status from libcurl. */
        if (ok && pg->status == 0 && res.status) pg->status = res.status;
        valid = ok && pg->status == 200 && !pg->fatal && !pg->scan_failed;
        if (valid && !(valid = pk_rowscan_finish(pg->scan)))
            set_msg(pg->scan_error, pk_rowscan_error(pg->scan));
        pk_envelope env;
        pk_rowscan_envelope(pg->scan, &env);
        committed = valid && env.success == 1 && end_batch(imp) && page_commit(pg, own_tx);
    }
    if (!committed && pg->scan) page_rollback(pg, own_tx);
    memset(&imp->next, 0, sizeof imp->next);
    imp->L = NULL;
    if (!pf->active && pf->http_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, pf->http_ref);
        pf->http_ref = LUA_NOREF;
    }
    if (!pg->scan) return luaL_error(L, "pksync: out of memory");
    if (pg->fatal) return push_db_failure(L, pg);
    if (!ok && !pg->scan_failed) return push_transport_failure(L, &res, pg);
    return push_result(L, imp, valid, committed);
}

static int l_importer_close(lua_State *L) {
    return l_importer_gc(L);
}

static const luaL_Reg importer_methods[] = {
    {"run_page", l_run_page},
    {"close", l_importer_close},
    {NULL, NULL},
};

static const luaL_Reg importer_meta[] = {
    {"__gc", l_importer_gc},
#if PK_HAS_CLOSE
    {"__close", l_importer_gc},
#endif
    {NULL, NULL},
};

static const luaL_Reg import_funcs[] = {
    {"importer_new", l_importer_new},
    {NULL, NULL},
};

void pk_open_import(lua_State *L) {
    pk_new_type(L, PK_IMPORTER_MT, importer_meta, importer_methods);
    luaL_setfuncs(L, import_funcs, 0);
}
