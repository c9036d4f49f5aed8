#!/usr/bin/env bash
# The Debian package: scripts/build-deb.sh builds it (its own tree, prefix /usr, Debian's
# hardening flags) and fails on any lintian error; then what a user gets is checked: the
# binaries, the unit starting /usr/sbin/iopfd, the /etc files marked as conffiles, the
# maintainer scripts, and library dependencies from dpkg-shlibdeps.
# usage: deb_package_test.sh SOURCE_DIR OUT_DIR
set -euo pipefail
src=$1 out=$2
deb=$("$src/scripts/build-deb.sh" "$out" | tail -1)
[ -f "$deb" ] || { echo "deb: no package built" >&2; exit 1; }
fail=0
files=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/sbin/iopfd ./usr/sbin/iopfctl ./usr/sbin/iopfd-metrics \
         ./lib/systemd/system/iopfd-metrics.service ./lib/systemd/system/iopfd-metrics.socket \
         ./usr/share/man/man8/iopfd-metrics.8.gz ./lib/systemd/system/iopfd.service \
         ./lib/systemd/system/iopfd.socket ./etc/iopfd/iopfd.toml ./usr/share/man/man8/iopfd.8.gz \
         ./usr/share/doc/iopfd/copyright ./usr/share/doc/iopfd/changelog.gz \
         ./usr/share/varlink/io.iopfd.varlink; do
  grep -qx -- "$f" <<<"$files" || { echo "deb: $f missing" >&2; fail=1; }
done
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
