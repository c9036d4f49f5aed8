#!/usr/bin/env bash
# Fails when a C++ file is not formatted as .clang-format says (Google base, 100 columns).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cc' '*.h')
if ((${#files[@]})); then
  clang-format --dry-run -Werror "${files[@]}"
fi
echo "lint: ${#files[@]} files formatted"
