#!/bin/busybox sh
# /init of the test VM's initramfs: mount the basics, run the guest driver in the mode the
# kernel command line names (iopf_mode=test|demo|bench|density|soak,
# iopf_args=a,b,c), report, power off.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mkdir -p /dev/shm /tmp
/bin/busybox mount -t tmpfs tmpfs /dev/shm
/bin/busybox mount -t tmpfs tmpfs /tmp
# A few 2 MiB huge pages for the hugetlbfs-backed region case.
/bin/busybox mkdir -p /dev/hugepages
/bin/busybox mount -t hugetlbfs hugetlbfs /dev/hugepages
echo 8 > /proc/sys/vm/nr_hugepages
mode=$(/bin/busybox sed -n 's/.*iopf_mode=\([a-z]*\).*/\1/p' /proc/cmdline)
args=$(/bin/busybox sed -n 's/.*iopf_args=\([^ ]*\).*/\1/p' /proc/cmdline | /bin/busybox tr ',' ' ')
echo "IOPF-BOOTED $(/bin/busybox cut -d' ' -f1 /proc/uptime)s $(/bin/busybox uname -r) cpus=$(/bin/busybox nproc)"
# With kmemleak=on (run-vm.sh, test and soak modes) the kernel tracks every allocation: what boot
# left that looks unreferenced is cleared now, so that what is reported after the run was lost
# during it.
leaks=/sys/kernel/debug/kmemleak
if /bin/busybox grep -q 'kmemleak=on' /proc/cmdline; then
  /bin/busybox mkdir -p /sys/kernel/debug
  /bin/busybox mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  echo clear > "$leaks" || echo "IOPF-KMEMLEAK unavailable (no $leaks: the kernel lacks DEBUG_KMEMLEAK?)"
fi
# The sanitized iopfd (the ASan tier) keeps freed memory in a quarantine of 256 MiB by default:
# in a 1 GiB guest whose kernel also holds every queued page request (with kmemleak's record of
# each), that is room the OOM killer would otherwise find missing during the flood cases. The
# plain build ignores the variable.
export ASAN_OPTIONS=quarantine_size_mb=32
case "$mode" in
  bench) /bin/iopf-bench $args ;;
  density) /bin/iopf-density $args ;;
  *) /bin/iopf-guest ${mode:-test} $args ;;
esac
rc=$?
# What memory the guest had left, and whether the OOM killer chose anything (an exit of 137 is a
# SIGKILL): CI keeps only the console.
echo "IOPF-MEM $(/bin/busybox grep -E '^(MemTotal|MemAvailable):' /proc/meminfo | /bin/busybox tr -s ' \n' ' ')"
/bin/busybox dmesg | /bin/busybox grep -iE 'out of memory|oom-kill|killed process' | /bin/busybox sed 's/^/IOPF-OOM /'
if [ -w "$leaks" ]; then
  # An object is reported only once it is older than 5 s and a scan found no reference to it:
  # scan, let the last objects age, scan again, and print what is suspected (vm_results fails
  # kernel_log_clean for any "unreferenced object").
  echo scan > "$leaks"
  /bin/busybox sleep 6
  echo scan > "$leaks"
  /bin/busybox sed 's/^/IOPF-KMEMLEAK /' "$leaks"
  /bin/busybox dmesg | /bin/busybox grep -i kmemleak | /bin/busybox sed 's/^/IOPF-KMEMLEAK-LOG /'
  echo "IOPF-KMEMLEAK scanned"
fi
echo "IOPF-EXIT $rc"
/bin/busybox reboot -f
