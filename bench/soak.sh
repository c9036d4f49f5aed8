#!/usr/bin/env bash
# The soak: one boot of the test VM in which iopfd serves four mock devices for SECONDS of guest
# time (default 1800) while drains, resets, holds, reloads that remove and add a device, run-time
# Adopt/Detach, control clients and SIGKILL restarts through the fd store happen at random, and
# page requests flood every device (tests/vm/guest/soak.h). Prints a line every 10 s (iopfd's
# resident memory, open descriptors, CPU time) and the end: lost answers (checked against the
# kernel from the owner's side of each fault queue: must be 0), what is still queued, and
# whether memory and descriptors stayed flat. On demand, not in CI's timed path:
#   bench/soak.sh [SECONDS]
# Report a run in docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
build=${IOPFD_BUILD_DIR:-build}
scripts/install-deps.sh >/dev/null
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON >/dev/null
cmake --build "$build" --target iopfd iopfctl >/dev/null
out="$build/vm-soak"
rc=0
# Guest time runs slower than the host's clock under TCG: allow the boot, the soak and the stop.
IOPFD_VM_TIMEOUT=$((seconds * 2 + 900)) tests/vm/run-vm.sh --iopfd "$build/daemon/iopfd" \
  --out "$out" --mode soak --args "$seconds" >"$build/vm-soak.log" 2>&1 || rc=$?
grep -E "^IOPF-SOAK" "$out/console.log" || true
cat "$out/results.txt" 2>/dev/null || true
if ((rc != 0)); then
  echo "soak: failed (exit $rc); the console is $out/console.log, the runner's log $build/vm-soak.log" >&2
fi
exit "$rc"
