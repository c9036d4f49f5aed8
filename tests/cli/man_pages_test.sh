#!/usr/bin/env bash
# The man pages render without a groff warning, `man -l` shows them, and they keep up with the
# code: every configuration key of docs/CONFIG.md is in iopfd.toml(5), every iopfctl command of
# its usage text in iopfctl(8), every iopfd option in iopfd(8), every iopfd-metrics option in
# iopfd-metrics(8), every function of iopfd-client.h in libiopfd-client(3).
# usage: man_pages_test.sh SOURCE_DIR IOPFD IOPFCTL IOPFD_METRICS
set -euo pipefail
src=$1 iopfd=$2 iopfctl=$3 metrics=$4
export LANG=C LC_ALL=C MANWIDTH=100
fail=0
declare -A text
for page in iopfd.8 iopfctl.8 iopfd-metrics.8 iopfd.toml.5 libiopfd-client.3; do
  f="$src/man/$page"
  [ -f "$f" ] || { echo "missing $f" >&2; fail=1; continue; }
  warnings=$(groff -man -ww -z "$f" 2>&1 || true)
  if [ -n "$warnings" ]; then
    echo "$page: groff warnings:" >&2
    echo "$warnings" >&2
    fail=1
  fi
  # Rendered as a reader sees it (overstrikes removed).
  text[$page]=$(man -l "$f" 2>&1 | col -b) || { echo "$page: man -l failed" >&2; fail=1; }
  grep -q '^NAME' <<<"${text[$page]}" || { echo "$page: no NAME section rendered" >&2; fail=1; }
done
# Keys: the first column of CONFIG.md's key tables (| `daemon.log_level` | ...).
while read -r key; do
  leaf=${key##*.}
  grep -qF -- "$leaf" <<<"${text[iopfd.toml.5]}" || { echo "iopfd.toml.5: no key $key" >&2; fail=1; }
done < <(sed -n 's/^| `\([a-z_.]*\)` |.*/\1/p' "$src/docs/CONFIG.md" | sort -u)
# Commands: the two-space-indented words of iopfctl's usage text.
while read -r cmd; do
  grep -qF -- "$cmd" <<<"${text[iopfctl.8]}" || { echo "iopfctl.8: no command $cmd" >&2; fail=1; }
done < <("$iopfctl" --help | sed -n 's/^  \([a-z-]\+\).*/\1/p' | sort -u)
# Options: every --flag iopfd's usage names.
while read -r opt; do
  grep -qF -- "$opt" <<<"${text[iopfd.8]}" || { echo "iopfd.8: no option $opt" >&2; fail=1; }
done < <("$iopfd" --help | grep -o -- '--[a-z-]\+' | sort -u)
while read -r opt; do
  grep -qF -- "$opt" <<<"${text[iopfd-metrics.8]}" || { echo "iopfd-metrics.8: no option $opt" >&2; fail=1; }
done < <("$metrics" --help | grep -o -- '--[a-z-]\+' | sort -u)
# Functions: every one the client header declares is in libiopfd-client(3).
while read -r fn; do
  grep -qF -- "$fn" <<<"${text[libiopfd-client.3]}" || { echo "libiopfd-client.3: no $fn" >&2; fail=1; }
done < <(grep -o 'iopfd_client_[a-z_]*(' "$src/client/iopfd-client.h" | tr -d '(' | sort -u)
exit $fail
