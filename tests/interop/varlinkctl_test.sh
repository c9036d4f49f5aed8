#!/usr/bin/env bash
# Interop: systemd's varlinkctl (257, from trixie; see scripts/fetch-varlinkctl.sh), a Varlink
# implementation nobody here wrote, against a running iopfd. It must accept the interface
# description, list and introspect the interfaces, and call methods with the expected replies
# and errors.
set -u
iopfd=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
vctl=$("$top/scripts/fetch-varlinkctl.sh") || { echo "not ok - could not provide varlinkctl"; exit 1; }
dir=$(mktemp -d)
sock="$dir/io.iopfd"
mkdir -p "$dir/devices.d"
: > "$dir/iopfd.toml"
"$iopfd" --config "$dir/iopfd.toml" --devices-dir "$dir/devices.d" --control-socket "$sock" \
  2>"$dir/iopfd.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

fail=0
check() {  # description, then the command; passes when the command succeeds
  local what=$1
  shift
  if "$@" >"$dir/out" 2>&1; then echo "ok - $what"; else
    echo "not ok - $what"; sed 's/^/    /' "$dir/out"; fail=1
  fi
}
contains() { grep -q -- "$1" "$dir/out"; }

check "systemd's parser accepts io.iopfd.varlink" "$vctl" validate-idl "$top/lib/control/io.iopfd.varlink"
check "info" "$vctl" info "$sock"
check "info names the product and both interfaces" \
  sh -c "'$vctl' info '$sock' | grep -q 'Product: iopfd' && '$vctl' info '$sock' | grep -q org.varlink.service"
check "list-interfaces" sh -c "'$vctl' list-interfaces '$sock' | grep -qx io.iopfd"
check "introspect io.iopfd" sh -c "'$vctl' introspect '$sock' io.iopfd | grep -q 'method GetStats'"
check "list-methods" sh -c "'$vctl' list-methods '$sock' io.iopfd | grep -q 'io.iopfd.SetLogLevel'"
check "call GetStatus" sh -c "'$vctl' call '$sock' io.iopfd.GetStatus '{}' | grep -q '\"health\" *: *\"ok\"'"
check "call GetStats with the Prometheus format" \
  sh -c "'$vctl' call '$sock' io.iopfd.GetStats '{\"format\":\"prometheus\"}' | grep -q iopfd_page_requests_total"
check "call SetLogLevel as root" "$vctl" call "$sock" io.iopfd.SetLogLevel '{"level":"debug"}'
# Errors come back as Varlink errors: varlinkctl exits non-zero and names them.
errors_as() {  # method, params, expected error: varlinkctl must fail and name the error
  local out
  out=$("$vctl" call "$sock" "$1" "$2" 2>&1) && return 1
  grep -q -- "$3" <<<"$out"
}
check "an unknown device is io.iopfd.NoSuchDevice" \
  errors_as io.iopfd.GetStats '{"device":"nope"}' io.iopfd.NoSuchDevice
check "an unknown method is MethodNotFound" \
  errors_as io.iopfd.Nope '{}' org.varlink.service.MethodNotFound
check "Monitor without --more is ExpectedMore" \
  errors_as io.iopfd.Monitor '{}' org.varlink.service.ExpectedMore
check "Drain of an unknown device is NoSuchDevice" \
  errors_as io.iopfd.Drain '{"device":"nope"}' io.iopfd.NoSuchDevice
check "call Reload with nothing configured" \
  sh -c "'$vctl' call '$sock' io.iopfd.Reload '{}' | grep -q '\"restart_required\"'"
printf 'name = "bad"\nattach = "sideways"\n' > "$dir/devices.d/bad.toml"
check "Reload of an invalid file is io.iopfd.InvalidConfig naming file and line" \
  errors_as io.iopfd.Reload '{}' "bad.toml:2:"
rm "$dir/devices.d/bad.toml"
check "Detach of an unknown device is NoSuchDevice" \
  errors_as io.iopfd.Detach '{"device":"nope"}' io.iopfd.NoSuchDevice
check "iopfd is still running" kill -0 $pid
kill -TERM $pid
wait $pid
rc=$?
[ $rc -eq 0 ] && echo "ok - iopfd exits 0 on SIGTERM" || { echo "not ok - iopfd exit $rc"; fail=1; }
exit $fail
