#!/usr/bin/env bash
# summary.sh RESULTS: add up "label passed failed skipped" lines and print
# the per-stage counts, then one plain line "N passed, N failed[, N skipped]".
# Exits non-zero when anything failed or the file is missing.
set -uo pipefail
results=${1:?usage: summary.sh RESULTS}
[ -s "$results" ] || { echo "0 passed, 1 failed"; exit 1; }
awk '
  { n = NF; label = $1; for (i = 2; i <= n - 3; i++) label = label " " $i
    p += $(n-2); f += $(n-1); s += $n
    printf "  %-40s %6d passed %4d failed %4d skipped\n", label, $(n-2), $(n-1), $n }
  END { line = p " passed, " f " failed"; if (s > 0) line = line ", " s " skipped"; print line; exit (f > 0) }
' "$results"
