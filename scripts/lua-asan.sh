#!/bin/sh
# lua-asan.sh ARGS...: lua5.4 for the AddressSanitizer/UBSan build of the C
# core (scripts/check-asan.sh, build/asan54). The interpreter itself is not
# instrumented, so the sanitizer runtime has to be the first library loaded:
# LD_PRELOAD, on this one exec. The second preload (asan-unpreload.so) drops
# LD_PRELOAD from the environment again at start-up, so nothing the specs
# spawn inherits the runtime. check-asan.sh sets PKSYNC_ASAN_PRELOAD and the
# sanitizer options; the defaults here are its build layout.
repo=$(cd "$(dirname "$0")/.." && pwd)
preload=${PKSYNC_ASAN_PRELOAD:-"$(clang -print-file-name=libclang_rt.asan-x86_64.so) $repo/build/asan54/unpreload.so"}
LD_PRELOAD=$preload exec lua5.4 "$@"
