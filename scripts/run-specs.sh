#!/usr/bin/env bash
# run-specs.sh [54|jit]... [-- SPEC...]: run the busted suite once per
# runtime (both by default) against the fresh build, then print
# "N passed, N failed[, N skipped]". Exit status is non-zero on any failure.
#
# Environment: PKSYNC_LUA54 / PKSYNC_LUAJIT replace the interpreter (e.g. a
# valgrind wrapper), PKSYNC_BUILD_54 / PKSYNC_BUILD_JIT the build directory
# (e.g. the sanitizer build), PKSYNC_RESULTS a file that collects
# "label passed failed skipped" lines for a final summary (scripts/summary.sh),
# PKSYNC_LABEL the label written there.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

runtimes=() specs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; specs=("$@"); break ;;
    *) runtimes+=("$1"); shift ;;
  esac
done
[ ${#runtimes[@]} -eq 0 ] && runtimes=(54 jit)
[ ${#specs[@]} -eq 0 ] && specs=(spec)

passed=0 failed=0 skipped=0 status=0
for rt in "${runtimes[@]}"; do
  case "$rt" in
    54)  lua=${PKSYNC_LUA54:-lua5.4}; build=${PKSYNC_BUILD_54:-$repo/build/54} ;;
    jit) lua=${PKSYNC_LUAJIT:-luajit}; build=${PKSYNC_BUILD_JIT:-$repo/build/jit} ;;
    *) echo "run-specs: unknown runtime $rt" >&2; exit 2 ;;
  esac
  label="${PKSYNC_LABEL:-busted} on $rt"
  echo "== $label ($lua) =="
  log="${PKSYNC_TEST_ROOT:-/tmp}/busted-$rt-$$.tap"
  PKSYNC_RUNTIME=$rt busted --lua="$lua" --cpath="$build/?.so" \
    -o TAP ${BUSTED_ARGS:-} "${specs[@]}" | tee "$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  p=$(grep -cE '^ok [0-9]+' "$log" | tr -d ' ')
  s=$(grep -cE '^ok [0-9]+.*# SKIP' "$log" | tr -d ' ')
  f=$(grep -cE '^not ok [0-9]+' "$log" | tr -d ' ')
  # busted exits non-zero on load errors that produce no "not ok" line.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  p=$((p - s))
  passed=$((passed + p)) skipped=$((skipped + s)) failed=$((failed + f))
  [ -n "${PKSYNC_RESULTS:-}" ] && echo "$label $p $f $s" >> "$PKSYNC_RESULTS"
done

line="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
