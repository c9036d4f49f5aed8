#!/usr/bin/env bash
# One CTest test per guest case: passes only if the VM run reported PASS for it. A missing
# result (the VM did not boot, the case did not run) is a failure, never a skip.
set -euo pipefail
results=$1 case=$2
if [ ! -f "$results" ]; then
  echo "no VM results at $results: the vm_boot test did not run or failed" >&2
  exit 1
fi
line=$(grep -E "^IOPF-RESULT $case " "$results" || true)
[ -n "$line" ] || { echo "case $case: no result reported by the guest" >&2; exit 1; }
echo "$line"
if ! echo "$line" | grep -q " PASS"; then
  # The console around a failing case: its measurements and what iopfd and the kernel printed.
  # (The systemd tier boots twice: its consoles are in subdirectories.)
  for console in "$(dirname "$results")"/console.log "$(dirname "$results")"/*/console.log; do
    [ -f "$console" ] && grep -qE "^IOPF-RESULT $case " "$console" || continue
    echo "--- $console: IOPF-INFO lines and the last lines before this verdict ---" >&2
    grep '^IOPF-INFO' "$console" >&2 || true
    grep -n -B 30 -E "^IOPF-RESULT $case " "$console" | grep -vE '^[0-9]+-IOPF-RESULT' >&2 || true
  done
  exit 1
fi
