#!/usr/bin/env bash
# Checks vm_results' verdicts (tests/vm/lib.sh) on made-up guest consoles, without a VM: a kmemleak
# report of an object allocated for iopfd fails kernel_log_clean, one of the harness's does not, a
# run that should have scanned and did not fails, and a kernel warning fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0

# expect NAME LEAKS VERDICT: writes nothing; runs vm_results on $work/NAME/console.log.
expect() {
  local name=$1 leaks=$2 want=$3 got
  vm_results "$work/$name" 1 "$leaks" >/dev/null 2>&1 || true
  got=$(awk '$2 == "kernel_log_clean" {print $3}' "$work/$name/results.txt")
  if [ "$got" = "$want" ]; then
    echo "lib_test: $name: kernel_log_clean $got, as expected"
  else
    echo "lib_test: $name: kernel_log_clean is '$got', expected $want" >&2
    fails=$((fails + 1))
  fi
}
console() {
  mkdir -p "$work/$1"
  { echo "IOPF-RESULT some_case PASS"; cat; echo "IOPF-EXIT 0"; } > "$work/$1/console.log"
}
leak() {
  printf 'IOPF-KMEMLEAK unreferenced object 0xffff888000100000 (size 64):\n'
  printf 'IOPF-KMEMLEAK   comm "%s", pid 77, jiffies 4294893037\n' "$1"
  printf 'IOPF-KMEMLEAK   backtrace (crc 1):\nIOPF-KMEMLEAK     __kmalloc_noprof+0x1/0x2\n'
}

console clean <<< "IOPF-KMEMLEAK scanned"
expect clean 1 PASS
{ leak iopfd; echo "IOPF-KMEMLEAK scanned"; } | console iopfd_leak
expect iopfd_leak 1 FAIL
{ leak iou-wrk-81; echo "IOPF-KMEMLEAK scanned"; } | console io_uring_worker_leak
expect io_uring_worker_leak 1 FAIL
{ leak iopf-guest; echo "IOPF-KMEMLEAK scanned"; } | console harness_leak
expect harness_leak 1 PASS
console no_scan <<< ""
expect no_scan 1 FAIL
expect no_scan 0 PASS
console unavailable <<< "IOPF-KMEMLEAK unavailable (no /sys/kernel/debug/kmemleak)"
expect unavailable 1 FAIL
console warned <<< "WARNING: CPU: 0 PID: 1 at drivers/iommu/iommufd/main.c:399"
expect warned 0 FAIL
((fails == 0)) || { echo "lib_test: $fails verdict(s) wrong" >&2; exit 1; }
