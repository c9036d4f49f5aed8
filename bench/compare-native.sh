#!/usr/bin/env bash
# Native fault-path cost, this tree against a base revision, side by side in one run. Not a test:
# it prints numbers. On a shared 2-core machine the same binary's ns/request moves by up to 1.7x
# from run to run, so single runs of two builds cannot show a change of 10-20%. This builds
# bench/iopfd-fault-path at BASE (a git worktree under the build directory, kept for the next
# run) and in this tree, then runs the two binaries in rounds, alternating which goes first, and
# prints for each benchmark the median time/fault of each and the median of the rounds' ratios
# (this tree over BASE) with their range.
#   bench/compare-native.sh [BASE [FILTER [ROUNDS]]]
#     BASE    a git revision (default HEAD: what the working tree changes)
#     FILTER  --benchmark_filter regex (default: batch 64 and 256 rows without a budget)
#     ROUNDS  default 7
# Example: bench/compare-native.sh HEAD~3 'batch:256/random' 9
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-HEAD}
filter=${2:-'batch:(64|256)/(seq|random)/mapped:0(/first_touch:page)?$'}
rounds=${3:-7}
build=${IOPFD_BUILD_DIR:-build}
rev=$(git rev-parse --verify "$base^{commit}")
tree="$build/compare-base/$rev"

if [ ! -d "$tree" ]; then
  mkdir -p "$build/compare-base"
  git worktree prune  # a base tree removed with an earlier build directory
  git worktree add --detach "$tree" "$rev" >/dev/null
fi
# The same build type as this tree's (the project's default when none is given).
cmake -S "$tree" -B "$tree/build" -G Ninja >/dev/null
cmake --build "$tree/build" --target iopfd-fault-path >/dev/null
cmake -S . -B "$build" -G Ninja >/dev/null
cmake --build "$build" --target iopfd-fault-path >/dev/null

# One run of a binary: "name ns" per benchmark (the time/fault counter, in ns).
run() {
  "$1" --benchmark_filter="$filter" 2>/dev/null |
    awk '{ for (i = 1; i <= NF; ++i) if ($i ~ /^time\/fault=/) {
             v = $i; sub(/^time\/fault=/, "", v); unit = v; sub(/[0-9.]+/, "", unit);
             sub(/[a-z]+$/, "", v); if (unit == "us") v *= 1000; print $1, v } }'
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((r = 0; r < rounds; ++r)); do
  if ((r % 2 == 0)); then order="base this"; else order="this base"; fi
  for who in $order; do
    if [ "$who" = base ]; then bin="$tree/build/bench/iopfd-fault-path"; else bin="$build/bench/iopfd-fault-path"; fi
    run "$bin" | sed "s/^/$r $who /" >>"$out"
  done
done

echo "native fault path: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes') against $(git rev-parse --short "$rev"), $rounds rounds (ns per request: medians; this/base: median [min-max] of the rounds' ratios)"
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; ++i) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; --j) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { v[$3, $1, $2] = $4; if (!($3 in seen)) { seen[$3] = 1; names[++k] = $3 } rounds[$1] = 1 }
  END {
    for (i = 1; i <= k; ++i) {
      name = names[i]; nb = nt = nr = 0; lo = 1e18; hi = 0
      for (r in rounds) {
        b = v[name, r, "base"]; t = v[name, r, "this"]
        if (b != "") bs[++nb] = b
        if (t != "") ts[++nt] = t
        if (b != "" && t != "" && b > 0) { x = t / b; rs[++nr] = x; if (x < lo) lo = x; if (x > hi) hi = x }
      }
      if (nr == 0) { printf "%-60s no pairs\n", name; continue }
      printf "%-60s base %7.1f   this %7.1f   this/base %.2fx [%.2f-%.2f]\n", name,
             median(bs, nb), median(ts, nt), median(rs, nr), lo, hi
    }
  }' "$out"
