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
for svc in iopfd iopfd-metrics; do
  sed "s|@IOPFD_SBINDIR@|$bin|g" "$src/systemd/$svc.service.in" > "$dir/$svc.service"
  cp "$src/systemd/$svc.socket" "$dir/$svc.socket"
  if grep -n '@[A-Z_]*@' "$dir/$svc.service"; then
    echo "systemd_units_test: unsubstituted variables left in $svc.service" >&2
    exit 1
  fi
done
# verify prints problems on stderr and exits non-zero for errors; warnings count too.
out=$(cd "$dir" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
  "$dir/iopfd.socket" "$dir/iopfd.service" "$dir/iopfd-metrics.socket" \
  "$dir/iopfd-metrics.service" 2>&1) || { echo "$out" >&2; exit 1; }
# Messages about the host (not our units) are not ours to fix; anything naming them is.
if echo "$out" | grep -E 'iopfd(-metrics)?\.(service|socket)'; then
  echo "systemd_units_test: systemd-analyze verify complained about the units" >&2
  exit 1
fi
for svc in iopfd iopfd-metrics; do
  report=$(systemd-analyze security --offline=true --threshold=100 "$dir/$svc.service" 2>&1) || {
    echo "$report" >&2
    exit 1
  }
  score=$(echo "$report" | sed -n "s/.*Overall exposure level for $svc.service: \([0-9.]*\).*/\1/p")
  [ -n "$score" ] || { echo "$report" >&2; echo "no exposure score for $svc in the report" >&2; exit 1; }
  echo "systemd-analyze security: $svc.service exposure $score (threshold $threshold)"
  if awk -v s="$score" -v t="$threshold" 'BEGIN { exit !(s > t) }'; then
    echo "$report" >&2
    echo "systemd_units_test: $svc.service exposure $score is above $threshold" >&2
    exit 1
  fi
done
