/*
 * signals.c - SIGTERM/SIGINT as a stop request (signals.h).
 *
 * A signal handler may only set a volatile sig_atomic_t, and a signal
 * belongs to the whole process, so the flag is the one mutable static of
 * the core: it is process state by nature, not per-instance configuration.
 * Only the command-line tool installs the handlers; inside nginx nothing
 * calls stop_signals_watch and nginx keeps its own.
 */
#include "signals.h"

#include "compat.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop_signal = 0;

static void on_stop(int sig) {
    stop_signal = sig;
}

/* stop_signals_watch() -> true, or nil, msg: from now on SIGTERM and SIGINT
 * set the stop flag instead of ending the process. SA_RESTART lets a
 * blocking libpq or libcurl call carry on; the page in flight finishes. */
static int l_stop_signals_watch(lua_State *L) {
    static const int sigs[] = {SIGTERM, SIGINT};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        if (sigaction(sigs[i], &sa, NULL) != 0) {
            int e = errno;
            lua_pushnil(L);
            lua_pushstring(L, strerror(e));
            return 2;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* stop_requested() -> the signal's name ("SIGTERM"/"SIGINT") or false. */
static int l_stop_requested(lua_State *L) {
    int sig = stop_signal;
    if (sig == SIGTERM) lua_pushliteral(L, "SIGTERM");
    else if (sig == SIGINT) lua_pushliteral(L, "SIGINT");
    else lua_pushboolean(L, 0);
    return 1;
}

/* sleep_ms(ms) -> true when the time passed, false when a signal cut it
 * short (nanosleep returns on any handled signal, SA_RESTART or not). */
static int l_sleep_ms(lua_State *L) {
    lua_Number ms = luaL_checknumber(L, 1);
    luaL_argcheck(L, ms >= 0, 1, "must not be negative");
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - (lua_Number)ts.tv_sec * 1000) * 1e6);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    lua_pushboolean(L, nanosleep(&ts, NULL) == 0);
    return 1;
}

static const luaL_Reg signal_funcs[] = {
    {"stop_signals_watch", l_stop_signals_watch},
    {"stop_requested", l_stop_requested},
    {"sleep_ms", l_sleep_ms},
    {NULL, NULL},
};

void pk_open_signals(lua_State *L) {
    luaL_setfuncs(L, signal_funcs, 0);
}
