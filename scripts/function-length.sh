#!/bin/bash
# Fails on a function in lib/ or daemon/ (tests excepted) longer than 60 lines that does not say
# why just above it ("Longer than 60 lines: <reason>"), the rule of docs/ARCHITECTURE.md.
# Lines are counted from the signature to the closing brace, comments and blank lines included.
# Usage: scripts/function-length.sh [LIMIT]   (from anywhere in the repository)
set -euo pipefail
limit=${1:-60}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# Universal Ctags (Debian's universal-ctags; "ctags" may be another implementation).
ctags=$(command -v ctags-universal || command -v ctags || true)
[ -n "$ctags" ] || { echo "function-length: universal-ctags is needed (scripts/install-deps.sh)" >&2; exit 1; }
mapfile -t files < <(git ls-files 'lib/*.cc' 'daemon/*.cc' | grep -v '_test\.cc$' | grep -v '/testing/')
[ ${#files[@]} -gt 0 ] || { echo "function-length: no sources found" >&2; exit 1; }
bad=0
checked=0
while IFS=$'\t' read -r name file _ kind rest; do
  [ "$kind" = f ] || continue
  start=$(grep -o 'line:[0-9]*' <<<"$rest" | cut -d: -f2)
  end=$(grep -o 'end:[0-9]*' <<<"$rest" | cut -d: -f2 || true)
  [ -n "$start" ] && [ -n "$end" ] || continue
  checked=$((checked + 1))
  len=$((end - start + 1))
  [ "$len" -gt "$limit" ] || continue
  # The reason sits in the comment block right above the signature.
  from=$((start > 8 ? start - 8 : 1))
  if sed -n "${from},$((start - 1))p" "$file" | grep -q "Longer than $limit lines:"; then
    continue
  fi
  echo "$file:$start: $name is $len lines (over $limit): divide it, or say why above it" \
       "(\"// Longer than $limit lines: ...\")"
  bad=$((bad + 1))
done < <("$ctags" --c++-kinds=f --fields=+ne -f - "${files[@]}")
[ "$checked" -gt 0 ] || { echo "function-length: ctags listed no functions" >&2; exit 1; }
echo "function-length: $checked functions checked, $bad over $limit lines without a reason"
[ "$bad" -eq 0 ]
