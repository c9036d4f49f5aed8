#!/usr/bin/env bash
# Provides systemd's varlinkctl (an independent Varlink client) on a Debian 12 host, whose own
# systemd (252) predates it. It extracts trixie's systemd, libsystemd-shared, libc6 and
# libssl3t64 packages (fetched through scripts/debian-fetch.sh's private apt configuration)
# into the cache and writes a wrapper that starts varlinkctl through trixie's dynamic loader
# with trixie's libraries first; the rest of its libraries come from the host. Nothing is
# installed into the system. Prints the wrapper's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${IOPFD_CACHE:-/var/cache/iopfd}
debs="$cache/varlinkctl-debs"
root="$cache/varlinkctl-root"
wrapper="$root/varlinkctl"
if [ ! -x "$wrapper" ]; then
  mkdir -p "$debs"
  for p in systemd libsystemd-shared libc6 libssl3t64; do
    ls "$debs/${p}"_*.deb >/dev/null 2>&1 || "$here/debian-fetch.sh" "$debs" "$p/trixie" >/dev/null
  done
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$root.tmp"; done
  lib="$root/usr/lib/x86_64-linux-gnu"
  cat > "$root.tmp/varlinkctl" <<WRAP
#!/bin/sh
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib:$lib/systemd" "$root/usr/bin/varlinkctl" "\$@"
WRAP
  chmod +x "$root.tmp/varlinkctl"
  rm -rf "$root" && mv "$root.tmp" "$root"
fi
"$wrapper" --version >/dev/null
echo "$wrapper"
