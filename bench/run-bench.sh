#!/usr/bin/env bash
# Benchmark: in one boot of the test VM, page requests answered by iopfd, by a naive
# one-at-a-time loop and by the floor (the least a batched handler can do), side by side; then
# iopfd under control-plane load and beside a device drained over and over. Prints rates and
# latencies; not a test: no thresholds. Results and their meaning: docs/PERFORMANCE.md.
#   bench/run-bench.sh [N [K...]]     (default: 10000 requests, K = 1 8 64)
#   IOPFD_BENCH_PARTS=floor+control+drain   the parts to run (default all; bench/iopf_bench.cc)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
shift || true
ks=${*:-1 8 64}
parts=${IOPFD_BENCH_PARTS:+parts:$IOPFD_BENCH_PARTS,}
build=${IOPFD_BUILD_DIR:-build}
scripts/install-deps.sh >/dev/null
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON >/dev/null
cmake --build "$build" --target iopfd iopfctl >/dev/null
tests/vm/run-vm.sh --iopfd "$build/daemon/iopfd" --out "$build/vm-bench" --mode bench \
  --args "$parts$n,${ks// /,}" >/dev/null 2>"$build/vm-bench.log" || {
  cat "$build/vm-bench.log" >&2
  grep '^IOPF-BENCH' "$build/vm-bench/console.log" >&2 || true
  exit 1
}
grep '^IOPF-BENCH' "$build/vm-bench/console.log" | sed 's/^IOPF-BENCH //'
