#!/usr/bin/env bash
# test-all.sh: what `make test` runs after deps and the build.
#   1. the busted suite on Lua 5.4 and on LuaJIT;
#   2. the hardening subset that fits CI (PKSYNC_HARDENING=0 skips it):
#      the Lua 5.4 suite against the AddressSanitizer/UBSan build, the C-heavy
#      specs under valgrind, and a short smoke run of every fuzz target;
# then one summary line "N passed, N failed[, N skipped]".
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(mktemp)
trap 'rm -f "$results"' EXIT
export PKSYNC_RESULTS=$results

scripts/testenv.sh scripts/run-specs.sh 54 jit
if [ "${PKSYNC_HARDENING:-1}" != 0 ] && [ -x scripts/check-asan.sh ]; then
  # Each stage adds its own lines to PKSYNC_RESULTS (a failure too); the
  # wall time of each is printed for the CI budget.
  timed() { local t0=$SECONDS; "$@"; echo "== ${1##*/}: $((SECONDS - t0)) s"; }
  timed scripts/check-asan.sh
  timed scripts/check-valgrind.sh spec/json_spec.lua spec/rows_spec.lua spec/token_spec.lua \
    spec/pg_spec.lua spec/export_spec.lua spec/import_spec.lua
  timed scripts/fuzz.sh "${FUZZ_SMOKE_SECONDS:-10}"
fi
echo
echo "== summary =="
scripts/summary.sh "$results"
