#!/usr/bin/env bash
# Boots the test kernel under qemu (TCG) with an initramfs holding iopfd, the guest driver and
# busybox, and collects what the guest reports.
#
# usage: run-vm.sh --iopfd PATH --out DIR [--mode test|demo|bench|density|soak] [--args a,b,c]
#        [--per-case]
# Writes DIR/console.log (everything the guest printed) and DIR/results.txt (IOPF-RESULT lines
# plus a kernel_log_clean verdict). Exits non-zero when the guest did not run to the end or
# reported a failure; with --per-case (CTest's vm_boot) a case's FAIL verdict alone does not fail
# the run, since CTest's per-case tests (check-result.sh) fail for it by name.
# Environment: IOPFD_VM_TIMEOUT (seconds, default 1500), IOPFD_VM_MEM (guest MiB, default 1024;
# a smaller guest shows where memory runs short first).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
iopfd="" out="" mode=test args="" per_case=0
while (($#)); do
  case "$1" in
    --iopfd) iopfd=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --args) args=$2; shift 2 ;;
    --per-case) per_case=1; shift ;;
    *) echo "run-vm: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$iopfd" ] || { echo "run-vm: --iopfd must name the built iopfd binary" >&2; exit 2; }
# iopfctl is built next to iopfd; the drain cases drive iopfd with it.
iopfctl="$(dirname "$iopfd")/iopfctl"
[ -x "$iopfctl" ] || { echo "run-vm: no iopfctl next to $iopfd" >&2; exit 2; }
[ -n "$out" ] || { echo "run-vm: --out DIR is required" >&2; exit 2; }
mkdir -p "$out"
log() { echo "run-vm: $*" >&2; }
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"

for tool in qemu-system-x86_64 cpio gzip; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/install-deps.sh"; exit 1; }
done
# busybox-static installs a static /bin/busybox: the initramfs has no libc for a dynamic one.
busybox=/bin/busybox
[ -x "$busybox" ] || { log "busybox-static is missing: run scripts/install-deps.sh"; exit 1; }

eval "$("$here/build-kernel.sh")"   # KERNEL_IMAGE, KERNEL_SRC
uapi=$("$top/scripts/kernel-headers.sh")
test_header="$KERNEL_SRC/drivers/iommu/iommufd/iommufd_test.h"
[ -f "$test_header" ] || { log "no $test_header in the kernel source"; exit 1; }

# The guest driver and the benchmark, built against the booted kernel's own UAPI and
# test-command header (kernel headers first, as system headers, ahead of bookworm's 6.1 ones).
guest="$out/iopf-guest"
log "compiling the guest programs against $test_header"
cflags=(-std=c++20 -O2 -Wall -Wextra -Werror -static -pthread -isystem "$uapi"
        -isystem "$uapi/x86_64-linux-gnu" -isystem "$KERNEL_SRC/drivers/iommu/iommufd"
        -I"$here/guest")
# The guest driver plays a VMM with libiopfd-client too: its source is compiled in (it needs
# only libc and the header-only nlohmann-json, so it links statically like the rest).
g++ "${cflags[@]}" -I"$top/client" "$here/guest/iopf_guest.cc" "$top/client/client.cc" -o "$guest"
g++ "${cflags[@]}" "$top/bench/iopf_bench.cc" -o "$out/iopf-bench"
g++ "${cflags[@]}" -I"$top/bench" "$top/bench/density_guest.cc" -o "$out/iopf-density"
# The attachment switch module iopfd loads for the mock device (adopt.switch_module): a shared
# object against the same headers and iopfd's include/iopfd/switch_module.h.
g++ -std=c++20 -O2 -Wall -Wextra -Werror -shared -fPIC -isystem "$uapi" \
  -isystem "$uapi/x86_64-linux-gnu" -isystem "$KERNEL_SRC/drivers/iommu/iommufd" -I"$top/include" \
  "$here/guest/mock_switch.cc" -o "$out/mock-switch.so"

# The initramfs: busybox, iopfd with the shared libraries it links, the guest driver, /init.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib,lib64,etc}
cp "$busybox" "$root/bin/busybox"
cp "$iopfd" "$root/bin/iopfd"
cp "$iopfctl" "$root/bin/iopfctl"
mkdir -p "$root/lib/iopfd"
cp "$out/mock-switch.so" "$root/lib/iopfd/mock-switch.so"
cp "$guest" "$root/bin/iopf-guest"
cp "$out/iopf-bench" "$root/bin/iopf-bench"
cp "$out/iopf-density" "$root/bin/iopf-density"
cp "$here/init.sh" "$root/init"
chmod +x "$root/init"
# Every absolute path ldd names: the libraries (after "=>") and the dynamic loader itself.
ldd "$iopfd" "$iopfctl" "$out/mock-switch.so" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\// && $i !~ /:$/) print $i}' |
  sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.gz"

log "booting $KERNEL_IMAGE (TCG, 2 vCPUs) in mode $mode"
# slab_nomerge: every slab cache stands alone, so the fault-injection case can pick the caches
# whose allocations it fails (tests/vm/guest/iopf_guest.cc, SetUpFailslab).
append="console=ttyS0 panic=-1 loglevel=4 slab_nomerge iopf_mode=$mode"
[ -n "$args" ] && append="$append iopf_args=$args"
# kmemleak=on (the test kernel builds DEBUG_KMEMLEAK off by default): in test and soak modes the
# guest scans for leaks after its run and kernel_log_clean fails on any (init.sh, lib.sh). Not
# for bench and demo, whose numbers it would slow.
leaks=0
case "$mode" in test|soak) append="$append kmemleak=on"; leaks=1 ;; esac
start=$(date +%s.%N)
set +e
timeout "${IOPFD_VM_TIMEOUT:-1500}" qemu-system-x86_64 -accel tcg -smp 2 -m "${IOPFD_VM_MEM:-1024}" -nographic \
  -no-reboot -kernel "$KERNEL_IMAGE" -initrd "$out/initramfs.gz" -append "$append" \
  </dev/null 2>&1 | sed -u 's/\r$//' | tee "$out/console.log" | \
  { if [ "$mode" = demo ]; then grep --line-buffered -vE '^IOPF-(RESULT|SUMMARY)'; else cat >/dev/null; fi; }
qemu_rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
log "guest ran $(echo "$end - $start" | bc) s (qemu exit $qemu_rc)"

vm_results "$out" "$per_case" "$leaks"
