#!/usr/bin/env bash
# README command 1: installs what is missing, builds iopfd, boots the test kernel (built once and
# cached) with a mock PRI device, lets iopfd resolve a stream of page requests in adopt mode, and
# prints what it resolved. Run as root on Debian 12 from the repository.
#   scripts/run-demo.sh [N]      N page requests (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
build=${IOPFD_BUILD_DIR:-build}

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DIOPFD_WERROR=ON >/dev/null
# iopfctl too: the guest drives drains with it, and run-vm.sh copies it in.
cmake --build "$build" -j"$(nproc)" --target iopfd iopfctl
tests/vm/run-vm.sh --iopfd "$build/daemon/iopfd" --out "$build/vm-demo" --mode demo --args "$n"
