#!/usr/bin/env bash
# Lint: clang-format (Google base, 100 columns) over every C and C++ file, then clang-tidy (the
# repository's .clang-tidy, warnings are errors) over the daemon and library sources, using the
# compile commands of a configured build directory (argument 1, default "build"); then the
# function length rule (scripts/function-length.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mapfile -t files < <(git ls-files '*.cc' '*.h' '*.c')
clang-format --dry-run -Werror "${files[@]}"
echo "lint: clang-format clean (${#files[@]} files)"
if [ ! -f "$build/compile_commands.json" ]; then
  echo "lint: no $build/compile_commands.json: configure the build first" >&2
  exit 1
fi
# The guest and benchmark programs compile against the VM kernel's headers at test time and have
# no compile commands here; everything else is checked.
mapfile -t sources < <(git ls-files '*.cc' '*.c' | grep -vE '^(tests/vm|bench)/')
printf '%s\n' "${sources[@]}" | xargs -P"$(nproc)" -n1 clang-tidy -p "$build" --quiet 2>/dev/null
echo "lint: clang-tidy clean (${#sources[@]} files)"
# No function in lib/ or daemon/ over 60 lines without a reason beside it (docs/ARCHITECTURE.md).
scripts/function-length.sh
