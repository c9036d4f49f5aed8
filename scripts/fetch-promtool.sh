#!/usr/bin/env bash
# Provides Prometheus's promtool (`promtool check metrics` lints the text iopfd-metrics serves)
# without installing Debian's prometheus package, whose server would start on a machine with
# systemd. It downloads that package from the machine's own apt sources into the cache and
# extracts it there (promtool is one static binary). Prints promtool's path.
set -euo pipefail
cache=${IOPFD_CACHE:-/var/cache/iopfd}
root="$cache/promtool-root"
tool="$root/usr/bin/promtool"
if [ ! -x "$tool" ]; then
  debs="$cache/promtool-debs"
  mkdir -p "$debs"
  if ! ls "$debs"/prometheus_*.deb >/dev/null 2>&1; then
    # apt-get download needs the package lists; a machine whose lists were never fetched (or
    # were cleaned) gets them first.
    (cd "$debs" && apt-get download -qq prometheus >/dev/null 2>&1) ||
      { apt-get update -qq && (cd "$debs" && apt-get download -qq prometheus >/dev/null); }
  fi
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  dpkg-deb -x "$(ls "$debs"/prometheus_*.deb | head -n1)" "$root.tmp"
  # Only promtool is kept (the server and its web assets are most of the package).
  rm -rf "$root" && mkdir -p "$root/usr/bin"
  mv "$root.tmp/usr/bin/promtool" "$tool"
  rm -rf "$root.tmp"
fi
"$tool" --version >/dev/null 2>&1
echo "$tool"
