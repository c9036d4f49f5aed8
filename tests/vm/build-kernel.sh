#!/usr/bin/env bash
# Builds (or finds in the cache) the test kernel the VM tier boots.
#
# The source is Debian's linux-source-7.x package, fetched through scripts/debian-fetch.sh's
# private apt configuration. The image is cached outside the repository under
# $IOPFD_CACHE/kernel/<package version>-<config hash>/, so a second run costs nothing.
# Prints two lines on stdout: KERNEL_IMAGE=<bzImage> and KERNEL_SRC=<source tree>.
#
# For the README commands' stage lines (scripts/progress.sh):
#   --check       exits 0 when the image is cached (nothing to fetch or build), 1 otherwise
#   --fetch-only  fetches and extracts the source, nothing more
#   --report      prints, instead of the two lines, one line saying what was reused or done
set -euo pipefail
mode=build report=0
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    --fetch-only) mode=fetch ;;
    --report) report=1 ;;
    *) echo "build-kernel: unknown argument $arg" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${IOPFD_CACHE:-/var/cache/iopfd}
pkg=${IOPFD_KERNEL_PKG:-linux-source-7.3}
fragment="$here/kernel.config"
log() { echo "build-kernel: $*" >&2; }

debs="$cache/debs"
deb=$(ls -t "$debs/${pkg}"_*.deb 2>/dev/null | head -1 || true)
# The image's key: the config fragment and the build recipe below. Bump the recipe's version
# when a change to the steps changes what they build (not for changes to messages or options).
recipe="tinyconfig, merge_config.sh -m with the fragment, olddefconfig, bzImage: v1"
hash=$( (cat "$fragment"; echo "$recipe") | sha256sum | cut -c1-12)
if [ "$mode" = check ]; then
  [ -n "$deb" ] || exit 1
  ver=$(dpkg-deb -f "$deb" Version)
  [ -f "$cache/kernel/$ver-$hash/bzImage" ] && [ -f "$cache/kernel/src-$ver/.extracted" ]
  exit
fi
did=""
if [ -z "$deb" ]; then
  did="fetched $pkg, "
  log "fetching $pkg"
  deb=$("$top/scripts/debian-fetch.sh" "$debs" "$pkg" | tail -1)
fi
ver=$(dpkg-deb -f "$deb" Version)
src="$cache/kernel/src-$ver"
if [ ! -f "$src/.extracted" ]; then
  did="${did}extracted $ver, "
  log "extracting $pkg $ver"
  rm -rf "$src" && mkdir -p "$src"
  tmp=$(mktemp -d)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/*.tar.xz'
  tar -xJf "$tmp"/usr/src/*.tar.xz -C "$src" --strip-components=1
  rm -rf "$tmp"
  touch "$src/.extracted"
fi

if [ "$mode" = fetch ]; then
  if ((report)); then
    if [ -z "$did" ]; then echo "reused: $pkg $ver, extracted in $src"; else echo "note: ${did%, }"; fi
  fi
  exit 0
fi
out="$cache/kernel/$ver-$hash"
if [ ! -f "$out/bzImage" ]; then
  did="${did}built $ver with config $hash, "
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
  # Images of other configurations or recipes are of no further use (a few hundred MB each).
  find "$cache/kernel" -mindepth 1 -maxdepth 1 -name "$ver-*" ! -name "$ver-$hash" \
    -exec rm -rf {} +
fi
if ((report)); then
  if [ -z "$did" ]; then echo "reused: $out/bzImage"; else echo "note: ${did%, }"; fi
  exit 0
fi
echo "KERNEL_IMAGE=$out/bzImage"
echo "KERNEL_SRC=$src"
