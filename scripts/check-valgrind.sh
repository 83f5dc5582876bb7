#!/usr/bin/env bash
# check-valgrind.sh [SPEC...]: the given specs (all of spec/ by default) on
# Lua 5.4 under valgrind memcheck (scripts/lua-valgrind.sh) against the
# normal build (build/54, `make`). Any memcheck error or definite leak
# fails the run, and its report is printed. Runs inside scripts/testenv.sh
# unless one is already up (PKSYNC_TEST_ROOT set).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [ ! -f build/54/pksync/core.so ]; then
  echo "check-valgrind: build/54 missing; run make" >&2
  [ -n "${PKSYNC_RESULTS:-}" ] && echo "valgrind build 0 1 0" >> "$PKSYNC_RESULTS"
  exit 2
fi

logs="$repo/build/valgrind"
rm -rf "$logs"
mkdir -p "$logs"
export PKSYNC_VALGRIND_LOGS=$logs

run=(scripts/run-specs.sh 54 -- "$@")
[ -n "${PKSYNC_TEST_ROOT:-}" ] || run=(scripts/testenv.sh "${run[@]}")
PKSYNC_LUA54="$repo/scripts/lua-valgrind.sh" PKSYNC_LABEL=valgrind "${run[@]}"
rc=$?

# A log with errors says "ERROR SUMMARY: N errors" with N > 0.
bad=$(grep -lE 'ERROR SUMMARY: [1-9]' "$logs"/vg.* 2>/dev/null)
if [ -n "$bad" ]; then
  for f in $bad; do echo "---- $f"; cat "$f"; done
  n=$(echo "$bad" | wc -l)
  echo "check-valgrind: FAILED: memcheck errors in $n process(es) above (logs in build/valgrind)"
  [ -n "${PKSYNC_RESULTS:-}" ] && echo "valgrind memcheck reports 0 $n 0" >> "$PKSYNC_RESULTS"
  exit 1
fi
[ "$rc" -eq 0 ] && echo "check-valgrind: no memcheck errors"
exit "$rc"
