#!/usr/bin/env bash
# README command 2: installs what is missing, builds with warnings as errors, lints, and runs
# every test: in a plain build and in an ASan+UBSan build, each covering the unit, integration
# and real-kernel VM tiers (the VM tier builds or reuses the cached test kernel and boots it
# under qemu; with the sanitized build, iopfd runs sanitized inside the VM); the unit and
# integration tiers once more under ThreadSanitizer (the reset worker runs beside the loop);
# then every fuzz target for a bounded time (IOPFD_FUZZ_SECONDS, default 60 s each;
# scripts/fuzz.sh). Run as root on Debian 12 from the repository. Extra arguments go to the
# ctest runs (e.g. -L unit).
# One line per stage; what the tools print goes to $build/logs/test-all.log (IOPFD_VERBOSE=1
# shows it as it happens). A failed stage prints the log's last 150 lines and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${IOPFD_BUILD_DIR:-build}
cache=${IOPFD_CACHE:-/var/cache/iopfd}
# shellcheck source=scripts/progress.sh
. scripts/progress.sh
progress_init "$build/logs/test-all.log"

step "installing the Debian packages iopfd needs" scripts/install-deps.sh
step "building (warnings are errors)" build_tree "$build" -DIOPFD_WERROR=ON
step "linting: clang-format, clang-tidy (about 15 min on 2 cores), function length" \
  scripts/lint.sh "$build"
progress_kernel
# The booted-systemd test's Debian 13 root: debootstrap once, keyed like build-root.sh keys it.
if [ -f "$cache/systemd-root/trixie-$(sha256sum tests/vm/systemd/build-root.sh | cut -c1-12)/root.cpio.gz" ]; then
  progress_say "Debian 13 root of the systemd test: reused from the cache ($cache/systemd-root)"
else
  step "building the Debian 13 root of the systemd test (debootstrap, a few minutes)" \
    tests/vm/systemd/build-root.sh
fi
# The VM tier runs serially (vm_boot is RUN_SERIAL); unit tests run two at a time.
step "running every test: unit, integration, package, VM (about 15 min)" \
  run_ctest "$build" -j2 "$@"

step "building with ASan+UBSan" build_tree "$build-asan" -DIOPFD_WERROR=ON -DIOPFD_SANITIZE=address
step "running every test under ASan+UBSan" run_ctest "$build-asan" -j2 "$@"

# ThreadSanitizer: the tiers that run iopfd's threads on the host (the VM tier's guest has no
# TSan runtime to spare, and the package is the plain build's).
step "building with TSan" build_tree "$build-tsan" -DIOPFD_WERROR=ON -DIOPFD_SANITIZE=thread
step "running the unit and integration tests under TSan" \
  run_ctest "$build-tsan" -j2 -L 'unit|integration' "$@"

step "fuzzing every target for ${IOPFD_FUZZ_SECONDS:-60} s" scripts/fuzz.sh "${IOPFD_FUZZ_SECONDS:-60}"
progress_end "every test passed"
