#!/usr/bin/env bash
# README command 1: installs what is missing, builds iopfd, boots the test kernel (built once and
# cached) with a mock PRI device, lets iopfd resolve a stream of page requests in adopt mode, and
# prints what it resolved. Run as root on Debian 12 from the repository.
#   scripts/run-demo.sh [N]      N page requests (default 20000)
# One line per stage; what apt, the builds and the VM print goes to $build/logs/run-demo.log
# (IOPFD_VERBOSE=1 shows it as it happens). A failed stage prints the log's last lines.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
build=${IOPFD_BUILD_DIR:-build}
# shellcheck source=scripts/progress.sh
. scripts/progress.sh
progress_init "$build/logs/run-demo.log"

step "installing the Debian packages iopfd needs" scripts/install-deps.sh
# iopfctl too: the guest drives drains with it, and run-vm.sh copies it in.
step "building iopfd" build_tree "$build" -DIOPFD_WERROR=ON -- iopfd iopfctl
progress_kernel
step "booting the test VM (qemu, TCG) and running the demo: $n page requests" \
  tests/vm/run-vm.sh --iopfd "$build/daemon/iopfd" --out "$build/vm-demo" --mode demo --args "$n"
echo
sed -n '/^=== iopfd demo/,/^IOPF-DEMO/p' "$build/vm-demo/console.log"
echo
echo "the guest's whole console: $build/vm-demo/console.log"
progress_end "demo done"
