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
echo "$line" | grep -q " PASS" || exit 1
