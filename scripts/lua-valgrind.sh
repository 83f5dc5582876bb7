#!/bin/sh
# lua-valgrind.sh ARGS...: lua5.4 under valgrind memcheck, for
# scripts/check-valgrind.sh. Children (nginx, psql, the pksync CLI) run
# natively: valgrind does not follow exec without --trace-children.
#
# Errors and definite leaks make the process exit 99; the full report goes
# to PKSYNC_VALGRIND_LOGS/vg.<pid> (check-valgrind.sh prints the failing ones).
repo=$(cd "$(dirname "$0")/.." && pwd)
logs=${PKSYNC_VALGRIND_LOGS:-/tmp}
exec valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite --error-exitcode=99 --track-origins=yes --num-callers=30 --child-silent-after-fork=yes \
  --suppressions="$repo/scripts/valgrind.supp" --log-file="$logs/vg.%p" \
  lua5.4 "$@"
