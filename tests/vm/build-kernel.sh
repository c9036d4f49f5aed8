#!/usr/bin/env bash
# Builds (or finds in the cache) the test kernel the VM tier boots.
#
# The source is Debian's linux-source-7.x package, fetched through scripts/debian-fetch.sh's
# private apt configuration. The image is cached outside the repository under
# $IOPFD_CACHE/kernel/<package version>-<config hash>/, so a second run costs nothing.
# Prints two lines on stdout: KERNEL_IMAGE=<bzImage> and KERNEL_SRC=<source tree>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${IOPFD_CACHE:-/var/cache/iopfd}
pkg=${IOPFD_KERNEL_PKG:-linux-source-7.3}
fragment="$here/kernel.config"
log() { echo "build-kernel: $*" >&2; }

debs="$cache/debs"
deb=$(ls -t "$debs/${pkg}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
  log "fetching $pkg"
  deb=$("$top/scripts/debian-fetch.sh" "$debs" "$pkg" | tail -1)
fi
ver=$(dpkg-deb -f "$deb" Version)
src="$cache/kernel/src-$ver"
if [ ! -f "$src/.extracted" ]; then
  log "extracting $pkg $ver"
  rm -rf "$src" && mkdir -p "$src"
  tmp=$(mktemp -d)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/*.tar.xz'
  tar -xJf "$tmp"/usr/src/*.tar.xz -C "$src" --strip-components=1
  rm -rf "$tmp"
  touch "$src/.extracted"
fi

hash=$(cat "$fragment" "$0" | sha256sum | cut -c1-12)
out="$cache/kernel/$ver-$hash"
if [ ! -f "$out/bzImage" ]; then
  log "building $ver with config $hash (about 10 minutes on 2 cores)"
  mkdir -p "$out/build"
  make -s -C "$src" O="$out/build" tinyconfig >&2
  "$src/scripts/kconfig/merge_config.sh" -m -O "$out/build" "$out/build/.config" "$fragment" >&2
  make -s -C "$src" O="$out/build" olddefconfig >&2
  # merge_config silently drops options whose dependencies are unmet: insist on every one.
  missing=0
  while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    if ! grep -qx "$line" "$out/build/.config"; then
      log "option not set in the final config: $line"
      missing=1
    fi
  done < "$fragment"
  ((missing == 0)) || { log "config incomplete; see $out/build/.config"; exit 1; }
  make -s -C "$src" O="$out/build" -j"$(nproc)" bzImage >&2
  cp "$out/build/arch/x86/boot/bzImage" "$out/bzImage.tmp" && mv "$out/bzImage.tmp" "$out/bzImage"
  log "built $out/bzImage"
fi
echo "KERNEL_IMAGE=$out/bzImage"
echo "KERNEL_SRC=$src"
