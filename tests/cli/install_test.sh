#!/usr/bin/env bash
# `cmake --install` into a staging directory (DESTDIR) puts every file where a system expects
# it: binaries, units (with this prefix's paths), man pages, configuration, the Varlink
# interface, bash completion, docs.
# usage: install_test.sh BUILD_DIR
set -euo pipefail
build=$1
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage" cmake --install "$build" > "$stage.log" 2>&1 || { cat "$stage.log" >&2; exit 1; }
rm -f "$stage.log"
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
fail=0
want() {
  local n
  n=$(find "$stage" -path "$stage$1" | wc -l)
  [ "$n" -ge 1 ] || { echo "install: nothing at $1" >&2; fail=1; }
}
want "$prefix/sbin/iopfd"
want "$prefix/sbin/iopfctl"
want "$prefix/sbin/iopfd-metrics"
want "*/systemd/system/iopfd-metrics.service"
want "*/systemd/system/iopfd-metrics.socket"
want "$prefix/share/man/man8/iopfd-metrics.8.gz"
want "$prefix/share/man/man3/libiopfd-client.3.gz"
want "$prefix/lib*/libiopfd-client.so.0"
want "$prefix/lib*/libiopfd-client.so.0.1.0"
want "$prefix/include/iopfd-client.h"
want "$prefix/lib*/pkgconfig/iopfd-client.pc"
want "$prefix/share/doc/libiopfd-client-dev/examples/vmm-handover.c"
want "*/systemd/system/iopfd.service"
want "*/systemd/system/iopfd.socket"
want "$prefix/share/man/man8/iopfd.8.gz"
want "$prefix/share/man/man8/iopfctl.8.gz"
want "$prefix/share/man/man5/iopfd.toml.5.gz"
want "$prefix/share/varlink/io.iopfd.varlink"
want "$prefix/share/bash-completion/completions/iopfctl"
want "$prefix/share/doc/iopfd/examples/iopfd.toml"
want "$prefix/share/doc/iopfd/examples/dsa0.toml.example"
want "*/etc/iopfd/devices.d"
want "*/etc/iopfd/iopfd.toml"
want "$prefix/share/doc/iopfd/copyright"
want "$prefix/share/doc/iopfd/changelog.gz"
unit=$(find "$stage" -name iopfd.service | head -1)
grep -q "^ExecStart=$prefix/sbin/iopfd\$" "$unit" || {
  echo "install: $unit does not start $prefix/sbin/iopfd" >&2
  grep ExecStart "$unit" >&2
  fail=1
}
# A VMM's build against the staged library: pkg-config's flags, the installed header and the
# example's installed source, compiled as C11 and run (its usage: exit status 2).
pc=$(dirname "$(find "$stage" -name iopfd-client.pc | head -1)")
flags=$(PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$stage pkg-config --cflags --libs iopfd-client) ||
  { echo "install: pkg-config cannot read iopfd-client.pc" >&2; fail=1; }
example=$(find "$stage" -name vmm-handover.c | head -1)
# A sanitized build's library needs its runtime loaded first: the example links it too.
san=""
case "$(sed -n 's/^IOPFD_SANITIZE:STRING=//p' "$build/CMakeCache.txt")" in
  address) san="-fsanitize=address,undefined" ;;
  thread) san="-fsanitize=thread" ;;
esac
if cc -std=c11 -Wall -Wextra -Werror $san -o "$stage/vmm" "$example" $flags; then
  rc=0
  LD_LIBRARY_PATH=$(dirname "$(find "$stage" -name 'libiopfd-client.so.0' | head -1)") \
    "$stage/vmm" --help >/dev/null 2>&1 || rc=$?
  [ "$rc" = 2 ] || { echo "install: the example built from the install exits $rc" >&2; fail=1; }
else
  echo "install: the example does not build against the installed header and library" >&2
  fail=1
fi
unit=$(find "$stage" -name iopfd-metrics.service | head -1)
grep -q "^ExecStart=$prefix/sbin/iopfd-metrics\$" "$unit" || {
  echo "install: $unit does not start $prefix/sbin/iopfd-metrics" >&2
  fail=1
}
exit $fail
