#!/usr/bin/env bash
# fuzz.sh SECONDS [TARGET...]: build the libFuzzer targets of fuzz/ (all by
# default: json rows values router), run each for SECONDS from its seed
# corpus, then replay every saved crash in fuzz/regressions/<target>/.
# Prints per target: executions, coverage, new corpus items, crashes.
# Exits non-zero when any target crashed or a regression input fails again.
#
#   build/fuzz/<target>          the fuzzer binaries (clang, ASan + UBSan)
#   build/fuzz/work/<target>/    corpus items found in this run
#   build/fuzz/crashes/<target>/ crashing inputs of this run (crash-*, leak-*, timeout-*)
#   build/fuzz/<target>.log      libFuzzer's output
#
# See fuzz/README.md. FUZZ_CC picks another clang. When PKSYNC_RESULTS is
# set, one line per target: "fuzz <target> <passed> <failed> 0".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

seconds=${1:?usage: fuzz.sh SECONDS [TARGET...]}
shift
# libFuzzer reads -max_total_time=0 as "forever".
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] || { echo "fuzz: SECONDS must be >= 1" >&2; exit 2; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json rows values router)
cc=${FUZZ_CC:-clang}
out=build/fuzz

# A build failure still has to count as failed in the summary.
give_up() {
  echo "fuzz: $*" >&2
  [ -n "${PKSYNC_RESULTS:-}" ] && echo "fuzz build 0 1 0" >> "$PKSYNC_RESULTS"
  exit 2
}

# Inputs longer than this are never tried: far beyond what any bug needs,
# and short inputs keep the runs fast.
declare -A MAX_LEN=([json]=4096 [rows]=8192 [values]=1024 [router]=2048)
# The Lua targets keep one lua_State across inputs, so an input's mallocs
# and frees never balance (the GC frees later) and libFuzzer would run a
# full leak check after nearly every input (10x slower). For them leaks are
# checked once, at exit, where whatever the state does not reach is a leak.
declare -A EXTRA=([json]=-detect_leaks=0 [router]=-detect_leaks=0)

# The Makefile's flags and libraries (one source of truth), with -O1.
make_var() {
  printf 'print-%%:\n\t@echo $($*)\n' | make -s --no-print-directory -f Makefile -f - OPT="-O1 -g" "print-$1"
}
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cflags="$(make_var CFLAGS_ALL) -I$(make_var LUA_INCDIR) $san"
libs="$(make_var LIBS) -llua5.4 -lm -lpthread"

echo "== fuzz: building ${targets[*]} ($cc) =="
rm -rf "$out/obj"
mkdir -p "$out/obj"
# The core once, with coverage for the fuzzer but without its main; an
# archive lets each target link only the files it uses.
for src in src/*.c; do
  # shellcheck disable=SC2086 # flag lists are meant to split
  "$cc" $cflags -fsanitize=fuzzer-no-link -c "$src" -o "$out/obj/$(basename "$src" .c).o" ||
    give_up "compile failed: $src"
done
rm -f "$out/libpksync.a"
ar rcs "$out/libpksync.a" "$out"/obj/*.o || give_up "ar failed"
for t in "${targets[@]}"; do
  [ -f "fuzz/$t.c" ] || give_up "no target fuzz/$t.c"
  # shellcheck disable=SC2086
  "$cc" $cflags -fsanitize=fuzzer -DPKSYNC_REPO="\"$repo\"" "fuzz/$t.c" "$out/libpksync.a" $libs \
    -o "$out/$t" || give_up "build failed: $t"
done

# Sanitizer reports go to the log; any of them ends the run as a crash.
export ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

status=0
for t in "${targets[@]}"; do
  work="$out/work/$t" crashes="$out/crashes/$t" log="$out/$t.log"
  rm -rf "$work" "$crashes"
  mkdir -p "$work" "$crashes" "fuzz/corpus/$t"
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  "$out/$t" -max_total_time="$seconds" -max_len="${MAX_LEN[$t]:-4096}" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" ${EXTRA[$t]:-} "${dict[@]}" \
    "$work" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
  found=$(find "$work" -type f | wc -l)
  ncrash=$(find "$crashes" -type f | wc -l)

  # Every input that ever crashed stays in fuzz/regressions and must pass.
  regress=ok
  shopt -s nullglob
  saved=("fuzz/regressions/$t"/*)
  shopt -u nullglob
  if [ ${#saved[@]} -gt 0 ] && ! "$out/$t" "${saved[@]}" >"$out/$t.regressions.log" 2>&1; then
    regress=FAILED
  fi

  printf 'fuzz %-7s %10s execs  cov %6s  new corpus items %5s  crashes %s  regressions %s (%d)\n' \
    "$t" "${execs:-?}" "${cov:-?}" "$found" "$ncrash" "$regress" "${#saved[@]}"
  if [ "$rc" -ne 0 ] || [ "$ncrash" -gt 0 ] || [ "$regress" != ok ]; then
    status=1
    [ "$rc" -ne 0 ] || [ "$ncrash" -gt 0 ] && { echo "---- $log (tail)"; tail -n 60 "$log"; }
    [ "$regress" = ok ] || { echo "---- $out/$t.regressions.log (tail)"; tail -n 60 "$out/$t.regressions.log"; }
    [ "$ncrash" -gt 0 ] && echo "fuzz: $t: crashing input(s) in $crashes/; minimise with" \
      "'$out/$t -minimize_crash=1 -runs=10000 FILE', fix, and keep it in fuzz/regressions/$t/"
    [ -n "${PKSYNC_RESULTS:-}" ] && echo "fuzz $t 0 1 0" >> "$PKSYNC_RESULTS"
  else
    [ -n "${PKSYNC_RESULTS:-}" ] && echo "fuzz $t 1 0 0" >> "$PKSYNC_RESULTS"
  fi
done
exit "$status"
