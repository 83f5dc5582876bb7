/*
 * http.h - the libcurl HTTP client (see http.c for the design).
 *
 * A pk_http wraps one CURL easy handle, so keep-alive connections survive
 * between requests made through the same object. It lives in a Lua
 * userdata (metatable "pksync.http"), but pk_http_perform itself never
 * touches Lua: C code may stream a body through it from any thread that
 * owns the handle at the time.
 */
#ifndef PKSYNC_HTTP_H
#define PKSYNC_HTTP_H

#include <curl/curl.h>
#include <lua.h>
#include <stddef.h>

typedef struct pk_http pk_http;

/*
 * Body sink: called with the HTTP status (known when the first body byte
 * arrives) and each decoded chunk of the body. Return 0 to continue,
 * non-zero to abort the transfer: pk_http_perform then fails with
 * err "aborted" / reason "aborted", and whatever went wrong in the sink is
 * the caller's to report. Never called for an empty body.
 */
typedef int (*pk_http_sink)(void *ctx, long status, const char *data, size_t n);

typedef struct pk_http_request {
    const char *method;              /* "GET" (also when NULL) or "POST" */
    const char *url;                 /* http:// or https:// only */
    const char *body;                /* POST body, may be NULL */
    size_t      body_len;
    const char *const *headers;      /* "Name: value" strings, NULL-terminated,
                                        may be NULL; CR/LF is rejected */
    long        timeout_ms;          /* 0 = handle default */
    long        connect_timeout_ms;  /* 0 = handle default */
    size_t      max_body;            /* decoded bytes; 0 = handle default */
    pk_http_sink sink;               /* NULL discards the body */
    void       *sink_ctx;
} pk_http_request;

typedef struct pk_http_result {
    long        status;           /* HTTP status, 0 if none was received */
    int         curl_code;        /* CURLcode of the transfer */
    const char *err;              /* NULL on success; "offline",
                                     "response_too_large", "aborted" or
                                     points at message (curl's text) */
    const char *reason;           /* NULL on success; "refused", "timeout",
                                     "resolve", "too_large", "tls",
                                     "aborted" or "transport" */
    char        message[CURL_ERROR_SIZE]; /* human-readable error text */
    long        new_connections;  /* connections opened by this transfer */
} pk_http_result;

/* luaL_checkudata + closed check; raises on a closed handle. */
pk_http *pk_http_check(lua_State *L, int idx);

/* Run one request. Returns 1 when an HTTP response arrived (any status),
 * 0 on a transport failure (res->err says which). Never calls Lua. */
int pk_http_perform(pk_http *h, const pk_http_request *req, pk_http_result *res);

/* Lend the handle to a thread of another part of the core: until the lender
 * calls pk_http_lend(h, NULL, NULL) again (after joining its thread),
 * closing the handle (close, __gc, __close) first calls reclaim(ctx), which
 * must wait for that thread. Both run in the Lua thread. Without this, a
 * handle finalized before its borrower (lua_close finalizes the newest
 * objects first) is cleaned up under a running transfer. */
void pk_http_lend(pk_http *h, void (*reclaim)(void *ctx), void *ctx);

/* Value of a header of the last response (name in lowercase), or NULL.
 * Valid until the next pk_http_perform on the handle. Never calls Lua. */
const char *pk_http_response_header(const pk_http *h, const char *lname);

void pk_open_http(lua_State *L);

#endif
