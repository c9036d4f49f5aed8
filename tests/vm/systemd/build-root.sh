#!/usr/bin/env bash
# Builds, once, the Debian root file system the booted-systemd VM test runs in, and prints the
# path of its gzip'd cpio archive (the guest boots it as its initramfs, with systemd as PID 1).
#
# Debian 13 (trixie): its systemd (257) ships varlinkctl, which the test uses as an independent
# Varlink client; bookworm's (252) and bookworm-backports' (254) do not. debootstrap takes the
# archive URI from the machine's apt configuration (scripts/debian-fetch.sh --archive-uri) and
# checks it with debian-archive-keyring. The archive is cached under $IOPFD_CACHE (default
# /var/cache/iopfd) keyed by this script's contents, so editing it rebuilds the root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
cache=${IOPFD_CACHE:-/var/cache/iopfd}
log() { echo "build-root: $*" >&2; }

key=$(sha256sum "$0" | cut -c1-12)
dir="$cache/systemd-root/trixie-$key"
archive="$dir/root.cpio.gz"
if [ -f "$archive" ]; then
  echo "$archive"
  exit 0
fi
for tool in debootstrap cpio gzip; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/install-deps.sh"; exit 1; }
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { log "$keyring missing: run scripts/install-deps.sh"; exit 1; }
uri=$("$top/scripts/debian-fetch.sh" --archive-uri)

mkdir -p "$dir"
root="$dir/root.tmp"
rm -rf "$root"
# What the test needs besides systemd itself: the libraries iopfd's package depends on that
# trixie carries under the same names (libabsl20220623 is bookworm's and travels with the
# package, see run-systemd-vm.sh), and procps for the test's own checks.
include=systemd,systemd-sysv,init-system-helpers,liburing2,libnl-3-200,procps
log "debootstrap trixie (minbase + $include) from $uri; this takes a few minutes"
debootstrap --variant=minbase --include="$include" --keyring="$keyring" trixie "$root" "$uri" \
  > "$dir/debootstrap.log" 2>&1 || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }

# Trim what a test VM never reads: documentation, locales, apt's lists and cache.
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian}/* "$root"/var/cache/apt/* \
  "$root"/var/lib/apt/lists/* "$root"/var/log/*.log

# A fixed machine id: the first-boot logic (and its console prompts) stays off.
chroot "$root" systemd-machine-id-setup >/dev/null
echo iopf-vm > "$root/etc/hostname"
: > "$root/etc/fstab"
ln -sf /usr/lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
# Nothing may prompt on or log into the serial console the test reports on, and nothing
# periodic may start in the middle of it; the test kernel has no loadable modules
# (CONFIG_MODULES is off), so loading them can only fail.
for u in serial-getty@ttyS0.service getty@tty1.service systemd-firstboot.service \
         apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
         fstrim.timer systemd-tmpfiles-clean.timer \
         systemd-modules-load.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$archive.tmp"
mv "$archive.tmp" "$archive"
log "root: $(du -sh "$root" | cut -f1) unpacked, $(du -h "$archive" | cut -f1) packed"
rm -rf "$root"
# Roots an earlier version of this script built are of no further use.
find "$cache/systemd-root" -mindepth 1 -maxdepth 1 -name 'trixie-*' ! -name "trixie-$key" \
  -exec rm -rf {} +
echo "$archive"
