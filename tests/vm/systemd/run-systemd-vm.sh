#!/usr/bin/env bash
# The booted-systemd VM test: boots the test kernel with a Debian 13 root (build-root.sh) as its
# initramfs and systemd as PID 1; a service of that system (iopf-check.service) installs
# iopfd's .deb and runs iopf-systemd-check (systemd_check.cc) against the installed service,
# printing IOPF-RESULT lines on the serial console, then reboots (qemu exits).
#
# usage: run-systemd-vm.sh --deb-dir DIR --out OUT [--per-case]
# DIR holds the package (scripts/build-deb.sh's iopfd_*.deb). Two boots: `check` (the checks
# above) and `ready` (the package in place and enabled before boot: boot-to-ready time). Writes
# OUT/{check,ready}/console.log and OUT/results.txt (both boots' verdicts); exits as run-vm.sh
# does (tests/vm/lib.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vm=$(cd "$here/.." && pwd)
top=$(cd "$vm/../.." && pwd)
deb_dir="" out="" per_case=0
while (($#)); do
  case "$1" in
    --deb-dir) deb_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --per-case) per_case=1; shift ;;
    *) echo "run-systemd-vm: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "run-systemd-vm: --out DIR is required" >&2; exit 2; }
deb=$(ls -t "$deb_dir"/iopfd_*.deb 2>/dev/null | head -1 || true)
[ -f "$deb" ] || { echo "run-systemd-vm: no iopfd_*.deb in '$deb_dir' (scripts/build-deb.sh)" >&2; exit 2; }
log() { echo "run-systemd-vm: $*" >&2; }
# shellcheck source=tests/vm/lib.sh
. "$vm/lib.sh"
for tool in qemu-system-x86_64 cpio gzip; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/install-deps.sh"; exit 1; }
done
rm -rf "$out" && mkdir -p "$out"

eval "$("$vm/build-kernel.sh")"   # KERNEL_IMAGE, KERNEL_SRC
uapi=$("$top/scripts/kernel-headers.sh")
test_header="$KERNEL_SRC/drivers/iommu/iommufd/iommufd_test.h"
[ -f "$test_header" ] || { log "no $test_header in the kernel source"; exit 1; }
root_archive=$("$here/build-root.sh")

# The driver, static (the guest's libc is trixie's), against the booted kernel's headers.
log "compiling the driver against $test_header"
g++ -std=c++20 -O2 -Wall -Wextra -Werror -static -pthread -isystem "$uapi" \
  -isystem "$uapi/x86_64-linux-gnu" -isystem "$KERNEL_SRC/drivers/iommu/iommufd" -I"$vm/guest" \
  "$here/systemd_check.cc" -o "$out/iopf-systemd-check"

# The package is built on Debian 12: one of its libraries has another name in 13
# (libabsl20240722), so bookworm's travels with it, as it would for anyone installing a
# bookworm package on trixie. Fetched through the private apt configuration. (toml++ is compiled
# into iopfd from its headers: no library.)
debs="${IOPFD_CACHE:-/var/cache/iopfd}/bookworm-debs"
for p in libabsl20220623; do
  ls "$debs/${p}"_*.deb >/dev/null 2>&1 ||
    IOPFD_APT_STATE="${IOPFD_CACHE:-/var/cache/iopfd}/apt-bookworm" IOPFD_APT_SUITES=bookworm \
      "$top/scripts/debian-fetch.sh" "$debs" "$p" >/dev/null
done

# boot NAME OVERLAY: boots the cached root with OVERLAY (a directory) unpacked over it; the
# console goes to $out/NAME/console.log. A second cpio appended to the first: the kernel
# unpacks both into the same root.
boot() {
  local name=$1 overlay=$2 start end qemu_rc
  mkdir -p "$out/$name"
  (cd "$overlay" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/$name/overlay.cpio.gz"
  cat "$root_archive" "$out/$name/overlay.cpio.gz" > "$out/$name/initrd.gz"
  log "$name: booting $KERNEL_IMAGE with systemd as PID 1 (TCG, 2 vCPUs)"
  start=$(date +%s.%N)
  set +e
  timeout "${IOPFD_VM_TIMEOUT:-1500}" qemu-system-x86_64 -accel tcg -smp 2 -m 2048 -nographic \
    -no-reboot -kernel "$KERNEL_IMAGE" -initrd "$out/$name/initrd.gz" -append "$append" \
    </dev/null 2>&1 | sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?!]*[A-Za-z]//g' -e 's/\x1bc//g' \
    > "$out/$name/console.log"
  qemu_rc=${PIPESTATUS[0]}
  set -e
  end=$(date +%s.%N)
  log "$name: guest ran $(echo "$end - $start" | bc) s (qemu exit $qemu_rc)"
  grep '^IOPF-INFO' "$out/$name/console.log" >&2 || true
  rm -f "$out/$name/initrd.gz"
}
append="console=ttyS0 panic=-1 loglevel=4 rdinit=/usr/lib/systemd/systemd systemd.show_status=0"
append="$append systemd.firstboot=off"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Boot 1, the checks: the package, those libraries, the driver and the unit that starts it
# once the system is up; the driver installs the package itself.
check="$tmp/check"
mkdir -p "$check/iopf/debs" "$check/etc/systemd/system/multi-user.target.wants"
cp "$deb" "$debs"/libabsl20220623_*.deb "$check/iopf/debs/"
cp "$out/iopf-systemd-check" "$check/iopf/"
cp "$here/iopf-check.service" "$check/etc/systemd/system/"
ln -s ../iopf-check.service "$check/etc/systemd/system/multi-user.target.wants/"
boot check "$check"

# Boot 2, boot to ready: the package's files already in place and the service enabled as
# `systemctl enable iopfd` would (the unit's [Install]: multi-user.target, and iopfd.socket in
# sockets.target), with a device file, so the boot itself starts iopfd. Unpacked, not
# installed: what is timed is the boot, and boot 1 checked the installation.
ready="$tmp/ready"
mkdir -p "$ready/iopf"
for d in "$deb" "$debs"/libabsl20220623_*.deb; do
  dpkg-deb -x "$d" "$ready"
done
# The root is merged-/usr: /lib is a symlink there, which a directory in the cpio must not
# replace.
if [ -d "$ready/lib" ]; then
  mkdir -p "$ready/usr/lib" && cp -a "$ready/lib/." "$ready/usr/lib/" && rm -rf "$ready/lib"
fi
mkdir -p "$ready/etc/systemd/system/multi-user.target.wants" \
  "$ready/etc/systemd/system/sockets.target.wants" "$ready/etc/iopfd/devices.d"
ln -s /usr/lib/systemd/system/iopfd.service "$ready/etc/systemd/system/multi-user.target.wants/"
ln -s /usr/lib/systemd/system/iopfd.socket "$ready/etc/systemd/system/sockets.target.wants/"
printf '%s\n' 'name = "nic0"' 'attach = "vfio"' '[vfio]' 'cdev = "/dev/vfio/devices/vfio7"' \
  '[[space]]' '  [[space.region]]' '  iova = 0x1000000' '  size = "1MiB"' \
  '  backing = "anonymous"' '  access = "rw"' > "$ready/etc/iopfd/devices.d/nic0.toml"
cp "$out/iopf-systemd-check" "$ready/iopf/"
sed -e 's|^Description=.*|Description=iopfd booted-systemd test: boot to ready|' \
  -e 's|/iopf/iopf-systemd-check;|/iopf/iopf-systemd-check boot;|' \
  -e 's|^After=.*|After=multi-user.target iopfd.service|' "$here/iopf-check.service" \
  > "$ready/etc/systemd/system/iopf-check.service"
ln -s ../iopf-check.service "$ready/etc/systemd/system/multi-user.target.wants/"
boot ready "$ready"

# One results file for CTest: boot 2's kernel-log verdict under its own name.
rc=0
vm_results "$out/check" "$per_case" || rc=1
vm_results "$out/ready" "$per_case" || rc=1
{
  cat "$out/check/results.txt"
  sed 's/^IOPF-RESULT kernel_log_clean /IOPF-RESULT boot_kernel_log_clean /' "$out/ready/results.txt"
} > "$out/results.txt"
exit $rc
