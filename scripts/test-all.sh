#!/usr/bin/env bash
# README command 2: installs what is missing, builds with warnings as errors, lints, and runs
# every test twice: in a plain build and in an ASan+UBSan build. Each run covers the unit tier
# and the real-kernel VM tier (which builds or reuses the cached test kernel and boots it under
# qemu; with the sanitized build, iopfd runs sanitized inside the VM). Run as root on Debian 12
# from the repository. Extra arguments go to both ctest runs (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${IOPFD_BUILD_DIR:-build}

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON
cmake --build "$build" -j"$(nproc)"
scripts/lint.sh "$build"
# The VM tier runs serially (vm_boot is RUN_SERIAL); unit tests run two at a time.
ctest --test-dir "$build" --output-on-failure -j2 "$@"

cmake -S . -B "$build-asan" -G Ninja -DIOPFD_WERROR=ON -DIOPFD_SANITIZE=address
cmake --build "$build-asan" -j"$(nproc)"
ctest --test-dir "$build-asan" --output-on-failure -j2 "$@"
