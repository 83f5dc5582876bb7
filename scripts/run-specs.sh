#!/usr/bin/env bash
# run-specs.sh [54|jit]...: run the busted suite once per runtime (both by
# default) against the fresh build, then print "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
runtimes=("$@")
[ ${#runtimes[@]} -eq 0 ] && runtimes=(54 jit)

passed=0 failed=0 skipped=0 status=0
for rt in "${runtimes[@]}"; do
  case "$rt" in
    54)  lua=lua5.4 ;;
    jit) lua=luajit ;;
    *) echo "run-specs: unknown runtime $rt" >&2; exit 2 ;;
  esac
  echo "== busted on $lua =="
  log="${PKSYNC_TEST_ROOT:-/tmp}/busted-$rt.tap"
  PKSYNC_RUNTIME=$rt busted --lua="$lua" --cpath="$repo/build/$rt/?.so" \
    -o TAP ${BUSTED_ARGS:-} spec | tee "$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  p=$(grep -cE '^ok [0-9]+' "$log" | tr -d ' ')
  s=$(grep -cE '^ok [0-9]+.*# SKIP' "$log" | tr -d ' ')
  f=$(grep -cE '^not ok [0-9]+' "$log" | tr -d ' ')
  # busted exits non-zero on load errors that produce no "not ok" line.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p - s)) skipped=$((skipped + s)) failed=$((failed + f))
done

line="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
