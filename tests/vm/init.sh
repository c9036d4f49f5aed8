#!/bin/busybox sh
# /init of the test VM's initramfs: mount the basics, run the guest driver in the mode the
# kernel command line names (iopf_mode=test|demo|bench, iopf_args=a,b,c), report, power off.
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
case "$mode" in
  bench) /bin/iopf-bench $args ;;
  *) /bin/iopf-guest ${mode:-test} $args ;;
esac
echo "IOPF-EXIT $?"
/bin/busybox reboot -f
