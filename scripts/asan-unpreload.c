/*
 * asan-unpreload.c - preloaded after the ASan runtime by scripts/lua-asan.sh.
 *
 * The dynamic loader has read LD_PRELOAD by the time this constructor runs,
 * so removing it from the environment changes nothing for this process but
 * keeps it from every child (nginx, psql, curl, the pksync CLI, sh itself):
 * they are not instrumented and must not get the sanitizer runtime or its
 * leak report at exit.
 */
#include <stdlib.h>

__attribute__((constructor)) static void unpreload(void) {
    unsetenv("LD_PRELOAD");
}
