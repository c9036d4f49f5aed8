#!/usr/bin/env bash
# Benchmark: in one boot of the test VM, N page requests at fixed concurrencies K, answered by
# iopfd and by a naive one-at-a-time loop; prints faults/s and latency side by side. Not a test:
# no thresholds. Results and their meaning: docs/PERFORMANCE.md.
#   bench/run-bench.sh [N [K...]]     (default: 10000 requests, K = 1 8 64)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
shift || true
ks=${*:-1 8 64}
build=${IOPFD_BUILD_DIR:-build}
scripts/install-deps.sh >/dev/null
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON >/dev/null
cmake --build "$build" --target iopfd iopfctl >/dev/null
tests/vm/run-vm.sh --iopfd "$build/daemon/iopfd" --out "$build/vm-bench" --mode bench \
  --args "$n,${ks// /,}" >/dev/null 2>"$build/vm-bench.log" || { cat "$build/vm-bench.log" >&2; exit 1; }
grep '^IOPF-BENCH' "$build/vm-bench/console.log" | sed 's/^IOPF-BENCH //'
