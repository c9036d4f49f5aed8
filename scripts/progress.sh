# One line per stage for the README's commands (scripts/run-demo.sh, scripts/test-all.sh);
# sourced, not run. What the tools of a stage print (apt, cmake, make, the kernel build, qemu,
# ctest) goes to one log file; the terminal gets the stage, how long it took, and what it reused.
# On a failure: the stage, the log's path and the log's last lines. IOPFD_VERBOSE=1 shows
# everything as it happens instead (the log is written all the same).

# progress_init LOG: starts LOG afresh (its directory made), with the date and the command.
progress_init() {
  PROGRESS_LOG=$1
  PROGRESS_START=$SECONDS
  mkdir -p "$(dirname "$PROGRESS_LOG")"
  echo "== $(date -u '+%F %T') UTC: $0" >"$PROGRESS_LOG"
  PROGRESS_TTY=0
  if [ -t 1 ]; then PROGRESS_TTY=1; fi
}

# progress_say TEXT: a line of its own (a stage that ran nothing, or what was reused).
progress_say() {
  echo "$*"
  echo "== $*" >>"$PROGRESS_LOG"
}

# progress_time SECONDS: "42 s", "3 min 5 s".
progress_time() {
  local s=$1
  if ((s < 60)); then echo "$s s"; else echo "$((s / 60)) min $((s % 60)) s"; fi
}

# step TEXT COMMAND...: prints "TEXT ...", runs COMMAND with its output appended to the log,
# then ends the line with "done (time)" and, when COMMAND's last output line starts with
# "reused:" or "note:", that line. On a terminal the elapsed time ticks while it runs. On
# failure prints the log's path and its last lines, and exits with COMMAND's status.
step() {
  local text=$1
  shift
  local t0=$SECONDS rc=0 ticker=""
  echo "== $text: $*" >>"$PROGRESS_LOG"
  if [ "${IOPFD_VERBOSE:-0}" = 1 ]; then
    echo "$text ..."
    "$@" 2>&1 | tee -a "$PROGRESS_LOG" || rc=${PIPESTATUS[0]}
  else
    if ((PROGRESS_TTY)); then
      printf '%s ...' "$text"
      # The elapsed time, rewritten in place every 5 s: a long stage shows it is alive.
      (while sleep 5; do printf '\r%s ... %s' "$text" "$(progress_time $((SECONDS - t0)))"; done) &
      ticker=$!
    else
      printf '%s ...' "$text"
    fi
    "$@" >>"$PROGRESS_LOG" 2>&1 </dev/null || rc=$?
    if [ -n "$ticker" ]; then
      kill "$ticker" 2>/dev/null
      wait "$ticker" 2>/dev/null || true
      printf '\r%s ...' "$text"
    fi
  fi
  local took
  took=$(progress_time $((SECONDS - t0)))
  if ((rc != 0)); then
    echo " FAILED after $took (exit $rc)"
    echo "---- the last 150 lines of $PROGRESS_LOG:"
    tail -n 150 "$PROGRESS_LOG"
    echo "---- the whole log: $PROGRESS_LOG"
    exit "$rc"
  fi
  # What the stage's own last line says about reusing or skipping (e.g. "reused: ...").
  local last
  last=$(tail -n 1 "$PROGRESS_LOG")
  case "$last" in
    reused:* | note:*) echo " done ($took; ${last})" ;;
    *) echo " done ($took)" ;;
  esac
}

# progress_end TEXT: the total time and where the log is.
progress_end() {
  echo "$1 in $(progress_time $((SECONDS - PROGRESS_START))); the full log: $PROGRESS_LOG"
}

# build_tree DIR [CMAKE_ARG...] [-- TARGET...]: configures DIR (Ninja) and builds the targets
# (all without any); ends with "reused: ..." when there was nothing to build.
build_tree() {
  local dir=$1
  shift
  local -a conf=() targets=()
  while (($#)) && [ "$1" != -- ]; do
    conf+=("$1")
    shift
  done
  if (($#)); then shift; fi
  targets=("$@")
  # Called under step's `||`, where errexit does not apply: every failure returns by hand.
  cmake -S . -B "$dir" -G Ninja "${conf[@]}" || return
  local -a args=(--build "$dir" -j"$(nproc)")
  if ((${#targets[@]})); then args+=(--target "${targets[@]}"); fi
  local out rc=0
  out=$(cmake "${args[@]}" 2>&1) || rc=$?
  printf '%s\n' "$out"
  ((rc == 0)) || return "$rc"
  if grep -q "ninja: no work to do" <<<"$out"; then echo "reused: $dir was up to date"; fi
}

# progress_kernel: the test kernel, fetched and built once (about 10 minutes on 2 cores), then
# taken from the cache (tests/vm/build-kernel.sh).
progress_kernel() {
  if tests/vm/build-kernel.sh --check; then
    progress_say "test kernel: reused from the cache (${IOPFD_CACHE:-/var/cache/iopfd}/kernel)"
    return
  fi
  step "fetching the kernel source (Debian's linux-source-7.3, 170 MB)" \
    tests/vm/build-kernel.sh --fetch-only --report
  local cores est
  cores=$(nproc)
  # Measured: about 10 minutes on 2 cores (the build scales with cores).
  est=$(((20 + cores - 1) / cores))
  if ((est < 3)); then est=3; fi
  step "building the test kernel (about $est min on $cores cores; once, then cached)" \
    tests/vm/build-kernel.sh --report
}

# run_ctest LABEL_TEXT DIR [CTEST_ARG...]: runs ctest with output on failure into the log; the
# stage line ends with ctest's summary ("100% tests passed, 0 tests failed out of 552").
run_ctest() {
  local dir=$1
  shift
  local out rc=0
  out=$(ctest --test-dir "$dir" --output-on-failure "$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  ((rc == 0)) || return "$rc"
  echo "note: $(grep -E 'tests passed' <<<"$out" | tail -1)"
}
