#!/usr/bin/env bash
# Builds iopfd's libFuzzer targets (tests/fuzz: clang, ASan+UBSan, coverage over iopfd and the
# toml++ it compiles in) and runs each for a bounded time, one after the other.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s each, every target
#
# Each target starts from its seed corpus and regression inputs in the repository plus what
# earlier runs found (a working corpus cached under $IOPFD_CACHE/fuzz, so coverage accumulates
# from run to run on one machine). A crash, leak, timeout or broken invariant fails the run: the
# input is copied to tests/fuzz/regressions/TARGET/ (commit it: the unit tier replays it from
# then on) and the fuzzer's report is printed. Prints one line per target with its executions
# and coverage, then "fuzz: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
all=(varlink config uevent fault_records ledger map_record fd_store ctl_reply http_request)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
build=${IOPFD_FUZZ_BUILD_DIR:-build-fuzz}
cache=${IOPFD_CACHE:-/var/cache/iopfd}/fuzz
mkdir -p "$cache"

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DIOPFD_FUZZ=ON -DIOPFD_BUILD_TESTS=OFF \
  -DIOPFD_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

passed=0
failed=0
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: no target '$t' (one of: ${all[*]})" >&2; exit 2; }
  work="$cache/corpus/$t"
  artifacts="$cache/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  rm -f "$artifacts"/*
  log="$cache/$t.log"
  rc=0
  # -max_len bounds what mutation grows (the regression inputs can be larger; the unit tier
  # replays them whole). -timeout: one input taking 10 s is a hang. -rss_limit_mb: a leak or a
  # blow-up is a failure, not the machine's problem.
  "$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" "tests/fuzz/corpus/$t" \
    "tests/fuzz/regressions/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  corpus=$(find "$work" -type f | wc -l)
  found=$(find "$artifacts" -type f | head -1)
  if ((rc == 0)) && [ -z "$found" ]; then
    echo "fuzz: $t: ${execs:-?} executions in ${seconds} s, $cov, corpus $corpus: ok"
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "fuzz: $t: FAILED (exit $rc) after ${execs:-?} executions; the fuzzer's report:" >&2
    grep -vE '^#[0-9]+|^INFO:|^MERGE|^Loaded' "$log" | tail -60 >&2 || true
    if [ -n "$found" ]; then
      keep="tests/fuzz/regressions/$t/$(basename "$found")"
      cp "$found" "$keep"
      echo "fuzz: $t: the input is now $keep (commit it; fix the bug; the unit tier replays it)" >&2
    fi
  fi
done
echo "note: fuzz: $passed passed, $failed failed"
((failed == 0))
