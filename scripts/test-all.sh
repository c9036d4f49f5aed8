#!/usr/bin/env bash
# README command 2: installs what is missing, builds with warnings as errors, checks formatting,
# and runs every test: the unit tier and the real-kernel VM tier (which builds or reuses the
# cached test kernel and boots it under qemu). Run as root on Debian 12 from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${IOPFD_BUILD_DIR:-build}

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON
cmake --build "$build" -j"$(nproc)"
scripts/lint.sh "$build"
# The VM tier runs serially (vm_boot is RUN_SERIAL); unit tests run two at a time.
ctest --test-dir "$build" --output-on-failure -j2 "$@"
