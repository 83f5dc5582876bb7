#!/usr/bin/env bash
# check-asan.sh [SPEC...]: the busted suite on Lua 5.4 (all of spec/ by
# default) against the C core built with AddressSanitizer + UBSan, leaks
# included. Any sanitizer report fails the run and is printed.
#
#   build/asan54/pksync/core.so   the instrumented core (clang), testing.so beside it
#   build/asan54/reports/         one file per report (log_path)
#
# clang rather than gcc: gcc -O1 raises -Wformat-truncation false alarms
# under -Werror, and clang's one shared runtime carries both sanitizers, so
# the uninstrumented lua5.4 needs a single preload (scripts/lua-asan.sh).
# ASAN_CC picks another clang. Runs inside scripts/testenv.sh unless one is
# already up (PKSYNC_TEST_ROOT set).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# A stage that cannot even start still has to count as failed in the summary.
give_up() {
  echo "check-asan: $*" >&2
  [ -n "${PKSYNC_RESULTS:-}" ] && echo "asan build 0 1 0" >> "$PKSYNC_RESULTS"
  exit 2
}

cc=${ASAN_CC:-clang}
out=build/asan54
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
runtime=$("$cc" -print-file-name=libclang_rt.asan-x86_64.so)
[ -f "$runtime" ] || give_up "no ASan runtime for $cc (libclang-rt-14-dev)"

# The Makefile's own flags and libraries (one source of truth), with -O1.
make_var() {
  printf 'print-%%:\n\t@echo $($*)\n' | make -s --no-print-directory -f Makefile -f - OPT="-O1 -g" "print-$1"
}
cflags="$(make_var CFLAGS_ALL) -I$(make_var LUA_INCDIR) $san"
libs=$(make_var LIBS)

echo "== asan: building $out/pksync/core.so ($cc) =="
rm -rf "$out"
mkdir -p "$out/obj" "$out/pksync" "$out/reports"
for src in src/*.c; do
  obj="$out/obj/$(basename "$src" .c).o"
  # shellcheck disable=SC2086 # flag lists are meant to split
  "$cc" $cflags -c "$src" -o "$obj" || give_up "compile failed: $src"
done
# shellcheck disable=SC2086
"$cc" -shared $san -shared-libsan -Wl,-rpath,"$(dirname "$runtime")" -o "$out/pksync/core.so" \
  "$out"/obj/*.o $libs || give_up "link failed"
mkdir -p "$out/obj/testing"
for src in src/testing/*.c; do
  # shellcheck disable=SC2086
  "$cc" $cflags -c "$src" -o "$out/obj/testing/$(basename "$src" .c).o" || give_up "compile failed: $src"
done
# shellcheck disable=SC2086
"$cc" -shared $san -shared-libsan -Wl,-rpath,"$(dirname "$runtime")" -o "$out/pksync/testing.so" \
  "$out"/obj/testing/*.o "$out"/obj/*.o $libs || give_up "link failed: testing.so"
"$cc" -shared -fPIC -O2 -o "$out/unpreload.so" scripts/asan-unpreload.c || give_up "unpreload.so failed"

reports="$repo/$out/reports"
export PKSYNC_ASAN_PRELOAD="$runtime $repo/$out/unpreload.so"
# Errors stop the process with a distinct status and go to files that are
# checked below (stderr of a spec run is easy to miss). LeakSanitizer runs
# at exit; busted exits through os.exit(code, true), so lua_close has run
# every __gc by then and whatever is still allocated is a leak.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=86:log_path=$reports/asan:strict_string_checks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$repo/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$reports/ubsan"

run=(scripts/run-specs.sh 54 -- "$@")
[ -n "${PKSYNC_TEST_ROOT:-}" ] || run=(scripts/testenv.sh "${run[@]}")
PKSYNC_BUILD_54="$repo/$out" PKSYNC_LUA54="$repo/scripts/lua-asan.sh" PKSYNC_LABEL=asan "${run[@]}"
rc=$?

shopt -s nullglob
found=("$reports"/*)
if [ ${#found[@]} -gt 0 ]; then
  for f in "${found[@]}"; do echo "---- $f"; cat "$f"; done
  echo "check-asan: FAILED: ${#found[@]} sanitizer report(s) above (kept in $out/reports)"
  [ -n "${PKSYNC_RESULTS:-}" ] && echo "asan sanitizer reports 0 ${#found[@]} 0" >> "$PKSYNC_RESULTS"
  exit 1
fi
[ "$rc" -eq 0 ] && echo "check-asan: no sanitizer reports"
exit "$rc"
