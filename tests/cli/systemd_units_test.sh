#!/usr/bin/env bash
# The units as systemd reads them: `systemd-analyze verify` (syntax, directives this systemd
# knows, the executables exist) on copies pointing at the built binaries, and the exposure score
# of `systemd-analyze security` kept at or below the documented threshold (docs/SERVICE.md).
# usage: systemd_units_test.sh SOURCE_DIR BUILD_DAEMON_DIR
set -euo pipefail
src=$1 bin=$2
threshold=${IOPFD_SECURITY_THRESHOLD:-2.5}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|@IOPFD_SBINDIR@|$bin|g" "$src/systemd/iopfd.service.in" > "$dir/iopfd.service"
cp "$src/systemd/iopfd.socket" "$dir/iopfd.socket"
if grep -n '@[A-Z_]*@' "$dir/iopfd.service"; then
  echo "systemd_units_test: unsubstituted variables left in iopfd.service" >&2
  exit 1
fi
# verify prints problems on stderr and exits non-zero for errors; warnings count too.
out=$(cd "$dir" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
  "$dir/iopfd.socket" "$dir/iopfd.service" 2>&1) || { echo "$out" >&2; exit 1; }
# Messages about the host (not our units) are not ours to fix; anything naming them is.
if echo "$out" | grep -E 'iopfd\.(service|socket)'; then
  echo "systemd_units_test: systemd-analyze verify complained about the units" >&2
  exit 1
fi
report=$(systemd-analyze security --offline=true --threshold=100 "$dir/iopfd.service" 2>&1) || {
  echo "$report" >&2
  exit 1
}
score=$(echo "$report" | sed -n 's/.*Overall exposure level for iopfd.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "$report" >&2; echo "no exposure score in the report" >&2; exit 1; }
echo "systemd-analyze security: exposure $score (threshold $threshold)"
if awk -v s="$score" -v t="$threshold" 'BEGIN { exit !(s > t) }'; then
  echo "$report" >&2
  echo "systemd_units_test: exposure $score is above $threshold" >&2
  exit 1
fi
