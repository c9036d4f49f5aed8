#!/usr/bin/env bash
# The README commands' stage lines (scripts/progress.sh): a stage's tool output goes to the log,
# not the terminal; a stage that reused something says so; a failed stage shows the log's tail
# and path and exits with the stage's status; IOPFD_VERBOSE=1 streams the output. And the
# kernel's cache check: an empty cache has nothing to reuse.
# usage: progress_test.sh SOURCE_DIR
set -uo pipefail
src=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
expect() {  # what, then a command that must succeed
  local what=$1
  shift
  if "$@"; then echo "ok - $what"; else echo "not ok - $what"; fail=1; fi
}
run() {  # runs a script of stages in a fresh shell; stdout in $dir/out, status in $dir/rc
  (cd "$src" && bash -c ". scripts/progress.sh; progress_init '$dir/log'; $1") >"$dir/out" 2>&1
  echo $? >"$dir/rc"
}

run 'step "quiet stage" sh -c "echo tool-noise; echo tool-error >&2"'
expect "a stage's line ends done" grep -q '^quiet stage \.\.\. done (0 s)$' "$dir/out"
expect "its tool output is not on the terminal" sh -c "! grep -q tool- '$dir/out'"
expect "its tool output is in the log" grep -q '^tool-error$' "$dir/log"

run 'step "cached stage" sh -c "echo reused: the thing, from before"'
expect "a stage says what it reused" grep -q '^cached stage \.\.\. done (0 s; reused: the thing, from before)$' "$dir/out"

run 'step "first" true; step "broken stage" sh -c "echo the-cause; exit 7"; step "never" true'
expect "a failed stage exits with its status" grep -qx 7 "$dir/rc"
expect "it says FAILED" grep -q '^broken stage \.\.\. FAILED after 0 s (exit 7)$' "$dir/out"
expect "it shows the log's tail" grep -q '^the-cause$' "$dir/out"
expect "it names the log" grep -q "the whole log: $dir/log" "$dir/out"
expect "later stages do not run" sh -c "! grep -q '^never' '$dir/out'"

(cd "$src" && IOPFD_VERBOSE=1 bash -c ". scripts/progress.sh; progress_init '$dir/log'; step 'loud' echo streamed") >"$dir/out" 2>&1
expect "IOPFD_VERBOSE=1 streams the output" grep -qx streamed "$dir/out"
expect "and logs it too" grep -qx streamed "$dir/log"

expect "an empty cache holds no test kernel" sh -c "! IOPFD_CACHE='$dir/cache' '$src/tests/vm/build-kernel.sh' --check"
exit $fail
