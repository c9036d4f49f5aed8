#!/usr/bin/env bash
# Builds iopfd's Debian package and checks it with lintian (no errors allowed).
#
# A tree of its own configured for prefix /usr (configuration in /etc, units in systemd's
# directory, ExecStart=/usr/sbin/iopfd) with Debian's build flags (dpkg-buildflags, all
# hardening), built with warnings as errors, packed by cpack (packaging/CMakeLists.txt).
# SOURCE_DATE_EPOCH is the last commit's date, so the changelog and the archive are
# reproducible. usage: build-deb.sh [BUILD_DIR]   Prints the paths of the three packages, one per
# line, the daemon's (iopfd_*.deb) last: iopfd, libiopfd-client0 and libiopfd-client-dev.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build-deb}
log() { echo "build-deb: $*" >&2; }
for tool in dpkg-buildflags dpkg-shlibdeps lintian cpack; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/install-deps.sh"; exit 1; }
done
SOURCE_DATE_EPOCH=$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
# CMake takes CXXFLAGS and LDFLAGS from the environment at the first configure; CPPFLAGS
# (_FORTIFY_SOURCE) it does not read, so it joins CXXFLAGS.
CXXFLAGS="$(dpkg-buildflags --get CXXFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
LDFLAGS=$(dpkg-buildflags --get LDFLAGS)
export CXXFLAGS LDFLAGS
cmake -S "$top" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
  -DIOPFD_BUILD_TESTS=OFF -DIOPFD_WERROR=ON >&2
cmake --build "$out" -j"$(nproc)" >&2
rm -f "$out"/*.deb
(cd "$out" && cpack -G DEB >&2)
debs=("$out"/libiopfd-client0_*.deb "$out"/libiopfd-client-dev_*.deb "$out"/iopfd_*.deb)
for deb in "${debs[@]}"; do
  [ -f "$deb" ] || { log "cpack made no $deb"; exit 1; }
  log "lintian $deb"
  lintian --fail-on error --display-info "$deb" >&2 || { log "lintian found errors in $deb"; exit 1; }
done
printf '%s\n' "${debs[@]}"
