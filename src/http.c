/*
 * http.c - the libcurl HTTP client (core.http_new).
 *
 * Design
 *
 *  - One pk_http wraps one CURL easy handle inside a Lua userdata. An easy
 *    handle owns a connection cache, so sequential requests through the
 *    same object reuse keep-alive connections (and TLS sessions).
 *
 *  - Before every transfer the easy handle is curl_easy_reset() and the
 *    handle-wide options are applied again. Reset forgets every option, so
 *    nothing of a POST (body, method, header list) can leak into the GET
 *    that follows, but it keeps live connections, the DNS cache and TLS
 *    sessions.
 *
 *  - pk_http_perform is plain C and never calls Lua: another part of the
 *    core streams large bodies through it with its own sink. The Lua
 *    `request` method is a thin layer: it validates its arguments first
 *    (raising before anything is allocated), performs with a buffer sink,
 *    then builds the result. The body and header buffers belong to the
 *    handle, so when building the result raises (out of memory) they are
 *    still reachable and freed by the next request or the finaliser.
 *
 *  - Any HTTP status is a result. Transport failures are classified:
 *    an unreachable peer, or one that hangs up before answering, is
 *    "offline" (the caller retries later), an
 *    oversized body is "response_too_large", everything else carries
 *    libcurl's own text.
 *
 *  - nginx runs the library in several threads, so there is no mutable
 *    C state outside the handle, except the pthread_once guard around
 *    curl_global_init. Signals are off (CURLOPT_NOSIGNAL): libcurl must
 *    not use SIGALRM for DNS timeouts in a threaded host.
 *
 *  - Proxies: no proxy option is set, so libcurl's default applies, which
 *    honours http_proxy, https_proxy and no_proxy from the environment.
 */
#include "http.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "compat.h"
#include "core.h"
#include "luax.h"

#define PK_HTTP_MT "pksync.http"
/* the same as transport.USER_AGENT on the Lua side */
#define PK_HTTP_DEFAULT_UA "PhoenixKit-Sync/1.0 pksync/" PK_VERSION
#define PK_HTTP_DEFAULT_TIMEOUT_MS 30000L
#define PK_HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define PK_HTTP_DEFAULT_MAX_BODY ((size_t)64 * 1024 * 1024)
/* Response headers are kept in memory whole; a server must not be able to
 * make us buffer without bound before the first body byte. */
#define PK_HTTP_MAX_HEADER_BYTES ((size_t)256 * 1024)
/* Timeouts travel through `long` and Lua numbers; 2^31-1 ms (24 days) is
 * plenty and fits everywhere. */
#define PK_HTTP_MAX_MS 2147483647.0

struct pk_http {
    CURL  *curl;               /* NULL when closed */
    char  *ca_file;            /* owned; NULL = the system trust store */
    char  *user_agent;         /* owned */
    long   timeout_ms;         /* 0 = none (libcurl's meaning) */
    long   connect_timeout_ms; /* 0 = libcurl's default */
    size_t max_body;           /* decoded body bytes, > 0 */
    int    insecure;           /* TLS verification off */
    int    busy;               /* inside pk_http_perform (re-entry guard) */
    void (*reclaim)(void *);   /* lent to a thread: waits for it (pk_http_lend) */
    void  *reclaim_ctx;
    pk_buf headers;            /* last response: "name\0value\0" pairs */
    pk_buf body;               /* the Lua request method's body sink */
    char   errbuf[CURL_ERROR_SIZE];
};

enum { TOO_LARGE_BODY = 1, TOO_LARGE_HEADERS = 2 };

/* State of one transfer, shared by the libcurl callbacks. */
typedef struct transfer {
    pk_http *h;
    const pk_http_request *req;
    size_t max_body;
    size_t received;     /* decoded body bytes so far */
    long   status;       /* HTTP status once the first body byte arrived */
    int    too_large;    /* TOO_LARGE_BODY or TOO_LARGE_HEADERS */
    int    aborted;      /* the sink asked to stop */
    int    oom;          /* the header buffer could not grow */
    int    answered;     /* a status line arrived */
} transfer;

/* ---- process-wide initialisation --------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
/* Written only inside pthread_once, which orders it before every reader. */
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void) {
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static CURLcode ensure_global_init(void) {
    if (pthread_once(&global_once, global_init) != 0) return CURLE_FAILED_INIT;
    return global_rc;
}

/* ---- results ----------------------------------------------------------- */

static void set_message(pk_http_result *res, const char *text) {
    snprintf(res->message, sizeof res->message, "%s", text);
    size_t n = strlen(res->message);
    while (n > 0 && (res->message[n - 1] == '\n' || res->message[n - 1] == '\r'))
        res->message[--n] = '\0';
}

/* A failure detected before or around libcurl (bad request, busy handle). */
static int fail(pk_http_result *res, CURLcode code, const char *text) {
    res->curl_code = (int)code;
    set_message(res, text);
    res->err = res->message;
    res->reason = "transport";
    return 0;
}

static int is_tls_error(CURLcode rc) {
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
        return 1;
    default:
        return 0;
    }
}

/* Map a failed transfer to err/reason. res->message already holds curl's
 * text; our own conditions replace it, because curl only knows that a
 * callback refused data ("Failure writing output to destination"). */
static void classify(const transfer *t, CURLcode rc, pk_http_result *res) {
    res->err = res->message;
    res->reason = "transport";
    if (t->aborted) {
        res->err = res->reason = "aborted";
        set_message(res, "the body sink aborted the transfer");
    } else if (t->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        res->err = "response_too_large";
        res->reason = "too_large";
        if (t->too_large == TOO_LARGE_HEADERS)
            snprintf(res->message, sizeof res->message,
                     "response headers larger than %zu bytes", PK_HTTP_MAX_HEADER_BYTES);
        else
            snprintf(res->message, sizeof res->message,
                     "response body larger than max_body (%zu bytes)", t->max_body);
    } else if (t->oom) {
        set_message(res, "out of memory while reading the response headers");
    } else if (rc == CURLE_COULDNT_CONNECT) {
        res->err = "offline";
        res->reason = "refused";
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        res->err = "offline";
        res->reason = "timeout";
    } else if (rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY) {
        res->err = "offline";
        res->reason = "resolve";
    } else if (!t->answered && (rc == CURLE_GOT_NOTHING || rc == CURLE_RECV_ERROR ||
                                rc == CURLE_SEND_ERROR)) {
        /* The peer went away before answering (it stopped, or reset the
         * connection): as unreachable as a refused connection. */
        res->err = "offline";
        res->reason = "hangup";
    } else if (is_tls_error(rc)) {
        res->reason = "tls";
    }
}

/* ---- libcurl callbacks (no Lua in here) -------------------------------- */

static char ascii_lower(char c) {
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int is_blank(char c) {
    return c == ' ' || c == '\t';
}

/* Trim spaces and tabs from both ends of [*p, *p + *n). */
static void trim_blanks(const char **p, size_t *n) {
    while (*n > 0 && is_blank(**p)) (*p)++, (*n)--;
    while (*n > 0 && is_blank((*p)[*n - 1])) (*n)--;
}

/* An obsolete folded line continues the previous header's value. */
static void fold_header(pk_buf *b, const char *p, size_t n) {
    if (b->len == 0) return; /* nothing to continue: ignore */
    trim_blanks(&p, &n);
    b->len--; /* reopen the previous value: drop its terminating NUL */
    pk_buf_addc(b, ' ');
    pk_buf_add(b, p, n);
    pk_buf_addc(b, '\0');
}

static void store_header(pk_buf *b, const char *p, size_t n) {
    const char *colon = memchr(p, ':', n);
    if (!colon || colon == p) return; /* not "name: value": ignore */
    size_t name_len = (size_t)(colon - p);
    const char *value = colon + 1;
    size_t value_len = n - name_len - 1;
    trim_blanks(&value, &value_len);
    for (size_t i = 0; i < name_len; i++) pk_buf_addc(b, ascii_lower(p[i]));
    pk_buf_addc(b, '\0');
    pk_buf_add(b, value, value_len);
    pk_buf_addc(b, '\0');
}

/* Called once per header line, status lines included. Only the final
 * response's headers are kept: a status line (of a 1xx interim response,
 * a proxy CONNECT, the final response) starts the block afresh. */
static size_t on_header(char *p, size_t size, size_t nitems, void *ud) {
    transfer *t = ud;
    pk_buf *b = &t->h->headers;
    size_t total = size * nitems, n = total;
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n')) n--;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        t->answered = 1;
        pk_buf_reset(b);
        return total;
    }
    if (n == 0) return total;
    if (n + 2 > PK_HTTP_MAX_HEADER_BYTES - b->len) {
        t->too_large = TOO_LARGE_HEADERS;
        return 0;
    }
    if (is_blank(p[0]))
        fold_header(b, p, n);
    else
        store_header(b, p, n);
    if (b->failed) {
        t->oom = 1;
        return 0;
    }
    return total;
}

/* Called with decoded body bytes (after gzip etc.), so max_body bounds
 * what the sink receives, not what crossed the wire. Returning anything
 * but `total` makes libcurl fail the transfer with CURLE_WRITE_ERROR. */
static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
    transfer *t = ud;
    size_t total = size * nmemb;
    if (total == 0) return 0;
    if (t->status == 0)
        curl_easy_getinfo(t->h->curl, CURLINFO_RESPONSE_CODE, &t->status);
    if (total > t->max_body - t->received) {
        t->too_large = TOO_LARGE_BODY;
        return 0;
    }
    t->received += total;
    if (t->req->sink && t->req->sink(t->req->sink_ctx, t->status, p, total) != 0) {
        t->aborted = 1;
        return 0;
    }
    return total;
}

/* ---- request setup ----------------------------------------------------- */

/* Case-insensitive: does "Name: value" carry the header `lname`? */
static int header_is(const char *line, const char *lname) {
    size_t i = 0;
    for (; lname[i]; i++)
        if (ascii_lower(line[i]) != lname[i]) return 0;
    return line[i] == ':';
}

static int header_line_ok(const char *line) {
    return strchr(line, ':') != NULL && strpbrk(line, "\r\n") == NULL;
}

/*
 * The request's header list, plus two suppressions unless the caller set
 * the header: "Expect:" (libcurl would wait up to a second for a
 * 100-continue on large POSTs) and, for POST, "Content-Type:" (libcurl
 * would otherwise claim application/x-www-form-urlencoded).
 * Returns CURLE_OK, CURLE_BAD_FUNCTION_ARGUMENT or CURLE_OUT_OF_MEMORY.
 */
static CURLcode build_header_list(const pk_http_request *req, int post,
                                  struct curl_slist **out) {
    struct curl_slist *list = NULL, *next;
    int has_expect = 0, has_type = 0;
    *out = NULL;
    for (const char *const *hp = req->headers; hp && *hp; hp++) {
        if (!header_line_ok(*hp)) {
            curl_slist_free_all(list);
            return CURLE_BAD_FUNCTION_ARGUMENT;
        }
        has_expect |= header_is(*hp, "expect");
        has_type |= header_is(*hp, "content-type");
        if (!(next = curl_slist_append(list, *hp))) goto oom;
        list = next;
    }
    if (!has_expect) {
        if (!(next = curl_slist_append(list, "Expect:"))) goto oom;
        list = next;
    }
    if (post && !has_type) {
        if (!(next = curl_slist_append(list, "Content-Type:"))) goto oom;
        list = next;
    }
    *out = list;
    return CURLE_OK;
oom:
    curl_slist_free_all(list);
    return CURLE_OUT_OF_MEMORY;
}

/* Record the first failing setopt; later ones are skipped. */
#define PK_SETOPT(rc, c, opt, val) \
    do { if ((rc) == CURLE_OK) (rc) = curl_easy_setopt((c), (opt), (val)); } while (0)

/* Options that hold for every request of the handle. */
static CURLcode apply_handle_options(pk_http *h, transfer *t) {
    CURL *c = h->curl;
    CURLcode rc = CURLE_OK;
    PK_SETOPT(rc, c, CURLOPT_NOSIGNAL, 1L);
    PK_SETOPT(rc, c, CURLOPT_ERRORBUFFER, h->errbuf);
    /* Only the web: no file://, no scp:// and so on from a hostile URL. */
    PK_SETOPT(rc, c, CURLOPT_PROTOCOLS_STR, "http,https");
    /* Redirects are results the caller sees, never followed. */
    PK_SETOPT(rc, c, CURLOPT_FOLLOWLOCATION, 0L);
    /* "" = every encoding this libcurl can decode; bodies arrive decoded. */
    PK_SETOPT(rc, c, CURLOPT_ACCEPT_ENCODING, "");
    PK_SETOPT(rc, c, CURLOPT_USERAGENT, h->user_agent);
    PK_SETOPT(rc, c, CURLOPT_SSL_VERIFYPEER, h->insecure ? 0L : 1L);
    PK_SETOPT(rc, c, CURLOPT_SSL_VERIFYHOST, h->insecure ? 0L : 2L);
    if (h->ca_file) PK_SETOPT(rc, c, CURLOPT_CAINFO, h->ca_file);
    PK_SETOPT(rc, c, CURLOPT_WRITEFUNCTION, on_body);
    PK_SETOPT(rc, c, CURLOPT_WRITEDATA, (void *)t);
    PK_SETOPT(rc, c, CURLOPT_HEADERFUNCTION, on_header);
    PK_SETOPT(rc, c, CURLOPT_HEADERDATA, (void *)t);
    return rc;
}

/* Options of this one request. */
static CURLcode apply_request_options(pk_http *h, const pk_http_request *req,
                                      int post, size_t max_body,
                                      struct curl_slist *headers) {
    CURL *c = h->curl;
    CURLcode rc = CURLE_OK;
    long timeout = req->timeout_ms > 0 ? req->timeout_ms : h->timeout_ms;
    long connect = req->connect_timeout_ms > 0 ? req->connect_timeout_ms
                                               : h->connect_timeout_ms;
    PK_SETOPT(rc, c, CURLOPT_URL, req->url);
    PK_SETOPT(rc, c, CURLOPT_TIMEOUT_MS, timeout);
    PK_SETOPT(rc, c, CURLOPT_CONNECTTIMEOUT_MS, connect);
    /* Rejects a declared Content-Length over the limit before reading it;
     * on_body enforces the limit on decoded bytes. */
    if ((uintmax_t)max_body <= (uintmax_t)INT64_MAX)
        PK_SETOPT(rc, c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_body);
    PK_SETOPT(rc, c, CURLOPT_HTTPHEADER, headers);
    if (post) {
        /* Always hand libcurl the fields: without them a POST would read
         * its body from stdin. */
        PK_SETOPT(rc, c, CURLOPT_POST, 1L);
        PK_SETOPT(rc, c, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        PK_SETOPT(rc, c, CURLOPT_POSTFIELDSIZE_LARGE,
                  (curl_off_t)(req->body ? req->body_len : 0));
    } else {
        PK_SETOPT(rc, c, CURLOPT_HTTPGET, 1L);
    }
    return rc;
}

/* 1 = GET, 2 = POST, 0 = unsupported. */
static int parse_method(const char *method) {
    if (!method || strcmp(method, "GET") == 0) return 1;
    if (strcmp(method, "POST") == 0) return 2;
    return 0;
}

/* ---- the C API --------------------------------------------------------- */

static int run_transfer(pk_http *h, const pk_http_request *req, int post,
                        struct curl_slist *headers, pk_http_result *res) {
    transfer t = {.h = h, .req = req, .max_body = req->max_body ? req->max_body : h->max_body};
    curl_easy_reset(h->curl);
    pk_buf_reset(&h->headers);
    CURLcode rc = apply_handle_options(h, &t);
    if (rc == CURLE_OK) rc = apply_request_options(h, req, post, t.max_body, headers);
    if (rc != CURLE_OK) return fail(res, rc, curl_easy_strerror(rc));

    h->errbuf[0] = '\0';
    rc = curl_easy_perform(h->curl);
    /* Keep libcurl's verdict before anything else can overwrite it. */
    res->curl_code = (int)rc;
    if (rc != CURLE_OK)
        set_message(res, h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc));

    long status = 0, connects = 0;
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h->curl, CURLINFO_NUM_CONNECTS, &connects);
    res->status = status;
    res->new_connections = connects;
    if (rc == CURLE_OK) return 1;
    classify(&t, rc, res);
    return 0;
}

int pk_http_perform(pk_http *h, const pk_http_request *req, pk_http_result *res) {
    memset(res, 0, sizeof *res);
    if (!h->curl) return fail(res, CURLE_BAD_FUNCTION_ARGUMENT, "the handle is closed");
    if (h->busy) return fail(res, CURLE_BAD_FUNCTION_ARGUMENT, "the handle is busy");
    int method = parse_method(req->method);
    if (!method) return fail(res, CURLE_BAD_FUNCTION_ARGUMENT, "unsupported method");
    if (!req->url) return fail(res, CURLE_BAD_FUNCTION_ARGUMENT, "no url");

    struct curl_slist *headers;
    CURLcode rc = build_header_list(req, method == 2, &headers);
    if (rc == CURLE_BAD_FUNCTION_ARGUMENT)
        return fail(res, rc, "a request header is not \"Name: value\" or contains CR/LF");
    if (rc != CURLE_OK) return fail(res, rc, curl_easy_strerror(rc));

    h->busy = 1;
    int ok = run_transfer(h, req, method == 2, headers, res);
    h->busy = 0;
    /* libcurl keeps the pointer until the next reset; it is never read
     * outside curl_easy_perform, and every perform resets first. */
    curl_slist_free_all(headers);
    return ok;
}

const char *pk_http_response_header(const pk_http *h, const char *lname) {
    const char *found = NULL;
    const char *p = h->headers.data, *end = p + h->headers.len;
    while (p && p < end) {
        const char *value = p + strlen(p) + 1;
        if (strcmp(p, lname) == 0) found = value; /* last one wins */
        p = value + strlen(value) + 1;
    }
    return found;
}

/* ---- handle lifetime --------------------------------------------------- */

/* Idempotent: the closed state is curl == NULL, and every pointer is
 * nulled before it is freed. Safe on a half-constructed handle. */
static void http_release(pk_http *h) {
    if (h->reclaim) {   /* a borrowing thread may be inside curl_easy_perform */
        void (*reclaim)(void *) = h->reclaim;
        h->reclaim = NULL;
        reclaim(h->reclaim_ctx);
    }
    CURL *c = h->curl;
    h->curl = NULL;
    if (c) curl_easy_cleanup(c);
    char *s = h->ca_file;
    h->ca_file = NULL;
    free(s);
    s = h->user_agent;
    h->user_agent = NULL;
    free(s);
    pk_buf_free(&h->headers);
    pk_buf_free(&h->body);
}

void pk_http_lend(pk_http *h, void (*reclaim)(void *ctx), void *ctx) {
    h->reclaim = reclaim;
    h->reclaim_ctx = ctx;
}

pk_http *pk_http_check(lua_State *L, int idx) {
    pk_http *h = luaL_checkudata(L, idx, PK_HTTP_MT);
    if (!h->curl) luaL_error(L, "pksync.http: attempt to use a closed handle");
    return h;
}

/* ---- Lua argument helpers (these raise) -------------------------------- */

/* Number field of the table at `tbl`, nil -> dflt, else 0 <= v <= max. */
static lua_Number opt_number(lua_State *L, int arg, int tbl, const char *field,
                             lua_Number dflt, lua_Number max) {
    lua_getfield(L, tbl, field);
    int type = lua_type(L, -1);
    lua_Number v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (type == LUA_TNIL) return dflt;
    if (type != LUA_TNUMBER)
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be a number", field));
    if (!(v >= 0))
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must not be negative", field));
    if (v > max)
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' is too large", field));
    return v;
}

/* String field without embedded NULs (it goes to libcurl as a C string);
 * nil -> dflt. The string stays anchored by the table. */
static const char *opt_string(lua_State *L, int arg, int tbl, const char *field,
                              const char *dflt) {
    lua_getfield(L, tbl, field);
    int type = lua_type(L, -1);
    size_t n = 0;
    const char *s = type == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    lua_pop(L, 1);
    if (type == LUA_TNIL) return dflt;
    if (type != LUA_TSTRING)
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be a string", field));
    if (strlen(s) != n)
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' contains a NUL byte", field));
    return s;
}

/* Only a real `true` counts: a stray truthy value must not switch off
 * TLS verification. */
static int opt_boolean(lua_State *L, int arg, int tbl, const char *field) {
    lua_getfield(L, tbl, field);
    int type = lua_type(L, -1), v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (type == LUA_TNIL) return 0;
    if (type != LUA_TBOOLEAN)
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be a boolean", field));
    return v;
}

/* RFC 9110 token characters: a header name can carry neither CR/LF nor
 * ':' nor spaces, so it cannot smuggle another header. */
static int is_token(const char *s, size_t n) {
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && !(c && strchr(extra, c))) return 0;
    }
    return 1;
}

static int is_field_value(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
    return 1;
}

/*
 * headers = { name = value } -> a NULL-terminated array of "Name: value"
 * strings. The strings are anchored in a Lua table and the array is a
 * userdata, both left on the stack: nothing here needs freeing by hand if
 * a later step raises. Returns NULL when the field is nil.
 */
static const char *const *check_headers(lua_State *L, int arg, int tbl) {
    lua_getfield(L, tbl, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (!lua_istable(L, -1)) luaL_argerror(L, arg, "'headers' must be a table");
    int src = lua_gettop(L);
    lua_newtable(L);
    int lines = src + 1, n = 0;
    for (lua_pushnil(L); lua_next(L, src); lua_pop(L, 1)) {
        size_t nlen, vlen;
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_argerror(L, arg, "header names must be strings");
        int vt = lua_type(L, -1);
        if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
            luaL_argerror(L, arg, "header values must be strings");
        const char *name = lua_tolstring(L, -2, &nlen);
        const char *value = lua_tolstring(L, -1, &vlen); /* the stack copy only */
        if (!is_token(name, nlen))
            luaL_argerror(L, arg, "invalid header name (CR/LF, ':', spaces or other non-token bytes)");
        if (!is_field_value(value, vlen))
            luaL_argerror(L, arg, lua_pushfstring(L, "header '%s' has CR, LF or NUL in its value", name));
        lua_pushfstring(L, "%s: %s", name, value);
        lua_rawseti(L, lines, ++n);
    }
    const char **array = lua_newuserdata(L, ((size_t)n + 1) * sizeof *array);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, lines, i);
        array[i - 1] = lua_tostring(L, -1); /* still anchored by `lines` */
        lua_pop(L, 1);
    }
    array[n] = NULL;
    return array;
}

static const char *check_method(lua_State *L, int arg, int tbl) {
    const char *method = opt_string(L, arg, tbl, "method", "GET");
    if (!parse_method(method))
        luaL_argerror(L, arg, lua_pushfstring(L, "invalid method '%s' (expected GET or POST)", method));
    return method;
}

/* Fill req from the argument table; raises on bad arguments. */
static void check_request(lua_State *L, int arg, pk_http_request *req) {
    luaL_checktype(L, arg, LUA_TTABLE);
    req->method = check_method(L, arg, arg);
    req->url = opt_string(L, arg, arg, "url", NULL);
    if (!req->url) luaL_argerror(L, arg, "'url' is required");
    lua_getfield(L, arg, "body");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, arg, "'body' must be a string");
        if (parse_method(req->method) != 2) luaL_argerror(L, arg, "'body' needs method POST");
        req->body = lua_tolstring(L, -1, &req->body_len);
    }
    lua_pop(L, 1); /* the string stays anchored by the argument table */
    req->timeout_ms = (long)opt_number(L, arg, arg, "timeout", 0, PK_HTTP_MAX_MS);
    req->connect_timeout_ms = (long)opt_number(L, arg, arg, "connect_timeout", 0, PK_HTTP_MAX_MS);
    req->max_body = (size_t)opt_number(L, arg, arg, "max_body", 0, (lua_Number)PK_EXACT_DOUBLE_INT);
    req->headers = check_headers(L, arg, arg);
}

/* ---- Lua functions ----------------------------------------------------- */

typedef struct http_config {
    long timeout_ms, connect_timeout_ms;
    size_t max_body;
    int insecure;
    const char *ca_file, *user_agent;
} http_config;

static void check_config(lua_State *L, int arg, http_config *cfg) {
    int has = !lua_isnoneornil(L, arg);
    if (has) luaL_checktype(L, arg, LUA_TTABLE);
    cfg->timeout_ms = PK_HTTP_DEFAULT_TIMEOUT_MS;
    cfg->connect_timeout_ms = PK_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->max_body = PK_HTTP_DEFAULT_MAX_BODY;
    cfg->insecure = 0;
    cfg->ca_file = NULL;
    cfg->user_agent = PK_HTTP_DEFAULT_UA;
    if (!has) return;
    cfg->timeout_ms = (long)opt_number(L, arg, arg, "timeout", (lua_Number)cfg->timeout_ms, PK_HTTP_MAX_MS);
    cfg->connect_timeout_ms = (long)opt_number(L, arg, arg, "connect_timeout",
                                               (lua_Number)cfg->connect_timeout_ms, PK_HTTP_MAX_MS);
    cfg->max_body = (size_t)opt_number(L, arg, arg, "max_body", (lua_Number)cfg->max_body,
                                       (lua_Number)PK_EXACT_DOUBLE_INT);
    luaL_argcheck(L, cfg->max_body > 0, arg, "'max_body' must be positive");
    cfg->insecure = opt_boolean(L, arg, arg, "insecure");
    cfg->ca_file = opt_string(L, arg, arg, "ca_file", NULL);
    cfg->user_agent = opt_string(L, arg, arg, "user_agent", cfg->user_agent);
}

/* http_new([options]) -> handle */
static int l_http_new(lua_State *L) {
    http_config cfg;
    check_config(L, 1, &cfg);
    CURLcode grc = ensure_global_init();
    if (grc != CURLE_OK)
        return luaL_error(L, "pksync.http: curl_global_init failed: %s", curl_easy_strerror(grc));

    /* Closed state first, metatable attached: if anything below raises,
     * the finaliser frees what was acquired so far. */
    pk_http *h = lua_newuserdata(L, sizeof *h);
    memset(h, 0, sizeof *h);
    pk_buf_init(&h->headers);
    pk_buf_init(&h->body);
    luaL_setmetatable(L, PK_HTTP_MT);

    h->timeout_ms = cfg.timeout_ms;
    h->connect_timeout_ms = cfg.connect_timeout_ms;
    h->max_body = cfg.max_body;
    h->insecure = cfg.insecure;
    if (!(h->user_agent = strdup(cfg.user_agent)))
        return luaL_error(L, "pksync.http: out of memory");
    if (cfg.ca_file && !(h->ca_file = strdup(cfg.ca_file)))
        return luaL_error(L, "pksync.http: out of memory");
    if (!(h->curl = curl_easy_init()))
        return luaL_error(L, "pksync.http: curl_easy_init failed");
    return 1;
}

static int buf_sink(void *ctx, long status, const char *data, size_t n) {
    (void)status;
    pk_buf *b = ctx;
    pk_buf_add(b, data, n);
    return b->failed;
}

/* Push the last response's headers as { lowercased name = value }. */
static void push_headers(lua_State *L, const pk_http *h) {
    lua_newtable(L);
    const char *p = h->headers.data, *end = p + h->headers.len;
    while (p && p < end) {
        const char *value = p + strlen(p) + 1;
        lua_pushstring(L, value);
        lua_setfield(L, -2, p); /* a repeated header: the last one wins */
        p = value + strlen(value) + 1;
    }
}

static int push_response(lua_State *L, pk_http *h, const pk_http_result *res) {
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)res->status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, h->body.data ? h->body.data : "", h->body.len);
    lua_setfield(L, -2, "body");
    push_headers(L, h);
    lua_setfield(L, -2, "headers");
    lua_pushinteger(L, (lua_Integer)res->new_connections);
    lua_setfield(L, -2, "new_connections");
    return 1;
}

/* nil, err, { reason, code, message } */
static int push_failure(lua_State *L, const pk_http_result *res) {
    lua_pushnil(L);
    lua_pushstring(L, res->err);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, res->reason);
    lua_setfield(L, -2, "reason");
    lua_pushinteger(L, (lua_Integer)res->curl_code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, res->message);
    lua_setfield(L, -2, "message");
    return 3;
}

/* h:request{ method, url, headers, body, timeout, connect_timeout, max_body } */
static int l_request(lua_State *L) {
    pk_http *h = pk_http_check(L, 1);
    pk_http_request req;
    memset(&req, 0, sizeof req);
    check_request(L, 2, &req);
    req.sink = buf_sink;
    req.sink_ctx = &h->body;

    pk_http_result res;
    pk_buf_reset(&h->body);
    int ok = pk_http_perform(h, &req, &res);
    if (h->body.failed) {
        pk_buf_free(&h->body);
        return luaL_error(L, "pksync.http: out of memory reading the response");
    }
    int nret = ok ? push_response(L, h, &res) : push_failure(L, &res);
    /* Do not hold a large body in C memory until the next request. */
    pk_buf_free(&h->body);
    return nret;
}

/* h:close() - idempotent, so an explicit close next to <close> or __gc
 * is harmless. */
static int l_close(lua_State *L) {
    http_release(luaL_checkudata(L, 1, PK_HTTP_MT));
    return 0;
}

static int l_tostring(lua_State *L) {
    pk_http *h = luaL_checkudata(L, 1, PK_HTTP_MT);
    if (h->curl)
        lua_pushfstring(L, "pksync.http (%p)", (void *)h);
    else
        lua_pushliteral(L, "pksync.http (closed)");
    return 1;
}

static const luaL_Reg http_funcs[] = {
    {"http_new", l_http_new},
    {NULL, NULL},
};

static const luaL_Reg http_methods[] = {
    {"request", l_request},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg http_meta[] = {
    {"__gc", l_close},
#if PK_HAS_CLOSE
    {"__close", l_close},
#endif
    {"__tostring", l_tostring},
    {NULL, NULL},
};

void pk_open_http(lua_State *L) {
    pk_new_type(L, PK_HTTP_MT, http_meta, http_methods);
    luaL_setfuncs(L, http_funcs, 0);
}
