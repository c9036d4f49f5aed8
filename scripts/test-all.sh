#!/usr/bin/env bash
# README command 2: installs what is missing, builds with warnings as errors, lints, and runs
# every test: in a plain build and in an ASan+UBSan build, each covering the unit, integration
# and real-kernel VM tiers (the VM tier builds or reuses the cached test kernel and boots it
# under qemu; with the sanitized build, iopfd runs sanitized inside the VM); the unit and
# integration tiers once more under ThreadSanitizer (the reset worker runs beside the loop);
# then every fuzz target for a bounded time (IOPFD_FUZZ_SECONDS, default 60 s each;
# scripts/fuzz.sh). Run as root on Debian 12 from the repository. Extra arguments go to the
# ctest runs (e.g. -L unit).
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

# ThreadSanitizer: the tiers that run iopfd's threads on the host (the VM tier's guest has no
# TSan runtime to spare, and the package is the plain build's).
cmake -S . -B "$build-tsan" -G Ninja -DIOPFD_WERROR=ON -DIOPFD_SANITIZE=thread
cmake --build "$build-tsan" -j"$(nproc)"
ctest --test-dir "$build-tsan" --output-on-failure -j2 -L 'unit|integration' "$@"

scripts/fuzz.sh "${IOPFD_FUZZ_SECONDS:-60}"
