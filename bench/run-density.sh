#!/usr/bin/env bash
# The density benchmark on the real kernel: in one boot of the test VM, the traces of
# bench/density_model.h played against the mock device while iopfd serves its page requests
# under budgets from 1.25 W to 0.1 W, with FIFO and workingset, beside A0 and MIN; then the map
# unit measurements (map call cost against size; streaming and sparse access against unit size).
# Not a test: no thresholds. Prints the tables, writes build/density/density-vm.csv and, with
# --plot, docs/density-vm.csv and docs/density.svg (bench/plot-density.sh). Results and their
# meaning: docs/PAGING.md.
#   bench/run-density.sh [ACCESSES] [--plot]      (default: 20000 accesses per point)
set -euo pipefail
cd "$(dirname "$0")/.."
n=20000
plot=0
for a in "$@"; do
  case "$a" in
    --plot) plot=1 ;;
    *) n=$a ;;
  esac
done
build=${IOPFD_BUILD_DIR:-build}
out="$build/density"
scripts/install-deps.sh >/dev/null
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON >/dev/null
cmake --build "$build" --target iopfd iopfctl >/dev/null
mkdir -p "$out"
tests/vm/run-vm.sh --iopfd "$build/daemon/iopfd" --out "$out/vm" --mode density --args "$n" \
  >/dev/null 2>"$out/vm.log" || { cat "$out/vm.log" >&2; exit 1; }
lines=$(grep '^IOPF-DENSITY ' "$out/vm/console.log" | sed 's/^IOPF-DENSITY //')
if grep -q '^FAILED' <<<"$lines" || ! grep -q '^done' <<<"$lines"; then
  grep '^FAILED' <<<"$lines" >&2 || echo "run-density: the guest did not finish" >&2
  exit 1
fi
sed -n 's/^csv //p' <<<"$lines" > "$out/density-vm.csv"
grep -m1 '^W = ' <<<"$lines"
echo
echo "Map call cost on the mock domain (TCG):"
sed -n 's/^map-cost //p' <<<"$lines" | awk -F, '{ for (i = 1; i <= NF; i++) printf "%22s", $i; print "" }'
echo
echo "Unit size: a device streaming through 16 MiB, and one touching 256 random pages:"
sed -n 's/^unit-choice //p' <<<"$lines" | awk -F, '{ for (i = 1; i <= NF; i++) printf "%22s", $i; print "" }'
echo
echo "Page requests per 1000 accesses (the mock device; A0 and MIN computed on the same traces):"
python3 - "$out/density-vm.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
points = {}
for r in rows:
    points.setdefault((r["pattern"], r["budget_w"]), {})[r["policy"]] = r
print(f'{"pattern":8} {"budget":>6} {"fifo":>8} {"workingset":>10} {"A0":>8} {"MIN":>8} '
      f'{"ws/A0":>7} {"ws/MIN":>7} {"ws evicts":>9} {"ws unmap":>8} {"ws faults/s":>11} {"thrash":>6}')
for (pattern, budget), p in points.items():
    f = lambda k: float(p[k]["faults_per_1000"])
    ratio = lambda a, b: a / b if b else 1.0
    ws = p["workingset"]
    print(f'{pattern:8} {budget:>5}W {f("fifo"):8.1f} {f("workingset"):10.1f} {f("a0"):8.1f} '
          f'{f("min"):8.1f} {ratio(f("workingset"), f("a0")):6.2f}x '
          f'{ratio(f("workingset"), f("min")):6.2f}x {ws["evictions"]:>9} {ws["unmap_calls"]:>8} '
          f'{ws["faults_per_s"]:>11} {ws["thrash"]:>6}')
PY
grep -m1 '^done' <<<"$lines"
if [ "$plot" = 1 ]; then
  cp "$out/density-vm.csv" docs/density-vm.csv
  bench/plot-density.sh docs/density-vm.csv docs/density.svg \
    "iopfd serving the mock device in the test VM, $n accesses per point (bench/run-density.sh)"
  echo "wrote docs/density-vm.csv and docs/density.svg"
fi
