#!/usr/bin/env bash
# The Debian package: scripts/build-deb.sh builds it (its own tree, prefix /usr, Debian's
# hardening flags) and fails on any lintian error; then what a user gets is checked: the
# binaries, the unit starting /usr/sbin/iopfd, the /etc files marked as conffiles, the
# maintainer scripts, and library dependencies from dpkg-shlibdeps.
# usage: deb_package_test.sh SOURCE_DIR OUT_DIR
set -euo pipefail
src=$1 out=$2
built=$("$src/scripts/build-deb.sh" "$out")
deb=$(tail -1 <<<"$built")
lib=$(grep '/libiopfd-client0_' <<<"$built" || true)
dev=$(grep '/libiopfd-client-dev_' <<<"$built" || true)
[ -f "$deb" ] && [ -f "$lib" ] && [ -f "$dev" ] || { echo "deb: packages missing: $built" >&2; exit 1; }
fail=0
files=$(dpkg-deb -c "$deb" | awk '{print $6}')
libfiles=$(dpkg-deb -c "$lib" | awk '{print $6}')
devfiles=$(dpkg-deb -c "$dev" | awk '{print $6}')
for f in ./usr/sbin/iopfd ./usr/sbin/iopfctl ./usr/sbin/iopfd-metrics \
         ./lib/systemd/system/iopfd-metrics.service ./lib/systemd/system/iopfd-metrics.socket \
         ./usr/share/man/man8/iopfd-metrics.8.gz ./lib/systemd/system/iopfd.service \
         ./usr/share/doc/iopfd/VMM.md \
         ./lib/systemd/system/iopfd.socket ./etc/iopfd/iopfd.toml ./usr/share/man/man8/iopfd.8.gz \
         ./usr/share/doc/iopfd/copyright ./usr/share/doc/iopfd/changelog.gz \
         ./usr/share/varlink/io.iopfd.varlink; do
  grep -qx -- "$f" <<<"$files" || { echo "deb: $f missing" >&2; fail=1; }
done
# The library under Debian's multiarch directory, with its soname link, in its own package;
# what a VMM builds against in the -dev package; none of it in the daemon's.
ma=./usr/lib/x86_64-linux-gnu
for f in $ma/libiopfd-client.so.0 $ma/libiopfd-client.so.0.1.0 \
         ./usr/share/doc/libiopfd-client0/copyright; do
  grep -qx -- "$f" <<<"$libfiles" || { echo "deb: libiopfd-client0 lacks $f" >&2; fail=1; }
done
for f in $ma/libiopfd-client.so $ma/pkgconfig/iopfd-client.pc ./usr/include/iopfd-client.h \
         ./usr/share/man/man3/libiopfd-client.3.gz \
         ./usr/share/doc/libiopfd-client-dev/examples/vmm-handover.c \
         ./usr/share/doc/libiopfd-client-dev/copyright; do
  grep -qx -- "$f" <<<"$devfiles" || { echo "deb: libiopfd-client-dev lacks $f" >&2; fail=1; }
done
if grep -q 'iopfd-client' <<<"$files"; then
  echo "deb: the daemon's package carries client files" >&2
  fail=1
fi
libctl=$(mktemp -d)
dpkg-deb -e "$lib" "$libctl"
grep -qx 'libiopfd-client 0 libiopfd-client0 (>= 0.1.0)' "$libctl/shlibs" ||
  { echo "deb: libiopfd-client0's shlibs is wrong" >&2; fail=1; }
grep -qx 'activate-noawait ldconfig' "$libctl/triggers" ||
  { echo "deb: libiopfd-client0 does not trigger ldconfig" >&2; fail=1; }
rm -rf "$libctl"
dpkg-deb -f "$dev" Depends | grep -qx 'libiopfd-client0 (= 0.1.0)' ||
  { echo "deb: libiopfd-client-dev does not depend on its library" >&2; fail=1; }
ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
dpkg-deb -e "$deb" "$ctl"
for s in postinst prerm postrm; do
  [ -x "$ctl/$s" ] || { echo "deb: no executable $s" >&2; fail=1; }
done
grep -qx /etc/iopfd/iopfd.toml "$ctl/conffiles" || { echo "deb: iopfd.toml not a conffile" >&2; fail=1; }
grep -q "daemon-reload" "$ctl/postinst" || { echo "deb: postinst does not reload systemd" >&2; fail=1; }
depends=$(dpkg-deb -f "$deb" Depends)
for lib in liburing2 libsystemd0 libnl-3-200 libabsl; do
  grep -q "$lib" <<<"$depends" || { echo "deb: Depends lacks $lib: $depends" >&2; fail=1; }
done
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./lib/systemd/system/iopfd.service |
  grep -qx "ExecStart=/usr/sbin/iopfd" || { echo "deb: the unit does not start /usr/sbin/iopfd" >&2; fail=1; }
exit $fail
