#!/usr/bin/env bash
# Fetches Debian's linux-libc-dev of the newer kernel (trixie-backports) and extracts it into the
# cache, for the UAPI ABI test and the VM guest program. Bookworm's own headers (6.1) predate the
# iommufd fault queue. Prints the include directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${IOPFD_CACHE:-/var/cache/iopfd}
pkg=${IOPFD_HEADERS_PKG:-linux-libc-dev/trixie-backports}
debs="$cache/debs"
deb=$(ls -t "$debs"/linux-libc-dev_*.deb 2>/dev/null | head -1 || true)
[ -n "$deb" ] || deb=$("$here/debian-fetch.sh" "$debs" "$pkg" | tail -1)
ver=$(dpkg-deb -f "$deb" Version)
out="$cache/uapi-$ver"
if [ ! -f "$out/.extracted" ]; then
  rm -rf "$out" && mkdir -p "$out"
  dpkg-deb -x "$deb" "$out"
  touch "$out/.extracted"
fi
echo "$out/usr/include"
