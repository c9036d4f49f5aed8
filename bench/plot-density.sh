#!/usr/bin/env bash
# Turns a density CSV (bench/run-density.sh's density-vm.csv, or iopfd-density's CSV argument)
# into an SVG: page requests per 1000 accesses against budget/W, one panel per access pattern,
# one line per policy (FIFO, workingset, A0, MIN). Needs gnuplot (scripts/install-deps.sh).
#   bench/plot-density.sh CSV OUT.svg [WHERE]     (WHERE: what produced the numbers, for the title)
set -euo pipefail
csv=$1
svg=$2
where=${3:-}
command -v gnuplot >/dev/null || { echo "plot-density: no gnuplot (scripts/install-deps.sh)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One data file per (pattern, policy): budget_w faults_per_1000, sorted by budget.
awk -F, -v dir="$tmp" 'NR > 1 { print $2, $4 > (dir "/" $1 "-" $3 ".dat") }' "$csv"
for f in "$tmp"/*.dat; do sort -n -o "$f" "$f"; done
{
  echo "set terminal svg size 1100,800 dynamic font 'sans,11' background '#ffffff'"
  echo "set output '$svg'"
  echo "set multiplot layout 2,2 title \"Page requests per 1000 accesses against the budget (W = working set)${where:+\\n$where}\""
  echo "set xlabel 'budget / W'; set ylabel 'page requests per 1000 accesses'"
  echo "set xrange [0:1.3]; set yrange [0:1050]; set grid; set key top right"
  for p in uniform scan hotcold phase; do
    echo "set title '$p'"
    echo "plot '$tmp/$p-fifo.dat' using 1:2 with linespoints lw 2 title 'FIFO', \\"
    echo "     '$tmp/$p-workingset.dat' using 1:2 with linespoints lw 2 title 'workingset', \\"
    echo "     '$tmp/$p-a0.dat' using 1:2 with linespoints dt 2 title 'A0 (online bound)', \\"
    echo "     '$tmp/$p-min.dat' using 1:2 with linespoints dt 3 title 'MIN (sees the future)'"
  done
  echo "unset multiplot"
} > "$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
