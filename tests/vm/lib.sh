# Shared by the VM tier's runners (run-vm.sh, systemd/run-systemd-vm.sh); sourced, not run.

# vm_results OUT PER_CASE [LEAKS]: after a guest ran, writes OUT/results.txt (its IOPF-RESULT
# lines from OUT/console.log plus a kernel_log_clean verdict) and returns non-zero when the guest
# did not run to the end or reported a failure. With PER_CASE=1 (CTest's fixture) a case's FAIL
# verdict alone does not fail the run: CTest's per-case tests (check-result.sh) fail for it by
# name. With LEAKS=1 the guest ran with kmemleak=on and must have scanned (init.sh): a missing
# scan or any suspected leak fails kernel_log_clean.
# vm_leaks_of_iopfd CONSOLE: prints the kmemleak reports (first line of each) of objects the
# kernel allocated for iopfd: its threads (comm "iopfd") and its io_uring workers ("iou-wrk-*",
# "iou-sqp-*"). Others are counted on stderr, not failed: objects the harness allocated through
# the self-test ioctls (the mock devices) are reported after the cases that replace attachments
# through the switch module, with or without injection (docs/RELIABILITY.md, "Kernel fault
# injection").
vm_leaks_of_iopfd() {
  awk '
    /^IOPF-KMEMLEAK unreferenced object/ { head = $0; want = 1; next }
    want && /^IOPF-KMEMLEAK +comm / {
      want = 0
      if ($0 ~ /comm "(iopfd|iou-wrk-[0-9]+|iou-sqp-[0-9]+)"/) { print head " " $3 " " $4; ours++ }
      else others++
    }
    END { if (others) printf "vm: kmemleak: %d suspected leak(s) allocated by other processes (see the console)\n", others > "/dev/stderr" }
  ' "$1" | head -5
}

vm_results() {
  local out=$1 per_case=$2 leaks=${3:-0} bad exit_line
  grep '^IOPF-RESULT ' "$out/console.log" > "$out/results.txt" || true
  # The kernel must not have warned: a WARN/BUG/oops, or the IOPF core aborting a request
  # (which it does when a handler fails), fails the run; nor leaked, when kmemleak watched.
  bad=$(grep -nE 'WARNING:|BUG:|Oops|Call Trace|general protection|iopf with pasid .* aborted|IOPF-KMEMLEAK unavailable' \
    "$out/console.log" | head -5 || true)
  if [ -z "$bad" ] && [ "$leaks" = 1 ]; then
    if ! grep -q '^IOPF-KMEMLEAK scanned' "$out/console.log"; then
      bad="kmemleak did not scan (the guest did not reach its end, or debugfs is missing)"
    else
      bad=$(vm_leaks_of_iopfd "$out/console.log")
    fi
  fi
  if [ -z "$bad" ]; then
    echo "IOPF-RESULT kernel_log_clean PASS" >> "$out/results.txt"
  else
    echo "IOPF-RESULT kernel_log_clean FAIL $(echo "$bad" | tr '\n' ' ')" >> "$out/results.txt"
  fi
  if grep -q ' FAIL' "$out/results.txt"; then
    grep ' FAIL' "$out/results.txt" >&2
  fi
  exit_line=$(grep -m1 '^IOPF-EXIT ' "$out/console.log" || true)
  if [ -z "$exit_line" ]; then
    echo "vm: the guest did not run to the end (timeout, panic or a crash; see $out/console.log)" >&2
    tail -n 20 "$out/console.log" >&2
    return 1
  fi
  if [ "$exit_line" != "IOPF-EXIT 0" ]; then
    # A non-zero exit without any FAIL verdict is the driver itself failing, which no case
    # test would catch.
    if [ "$per_case" = 1 ] && grep -q ' FAIL' "$out/results.txt"; then
      echo "vm: the guest ran to the end; failing cases are reported by their own tests" >&2
      return 0
    fi
    echo "vm: the guest finished with ${exit_line#IOPF-EXIT } (see $out/console.log)" >&2
    grep -E 'iopf-(guest|systemd-check):' "$out/console.log" >&2 || true
    # CI keeps only this output, not the console: name the last case that reported and show
    # what the kernel and the driver printed last (an exit of 137 is a SIGKILL, most often the
    # OOM killer, whose report is among these lines).
    echo "vm: $(grep -c '^IOPF-RESULT ' "$out/console.log" || true) case(s) reported; the last: $(grep '^IOPF-RESULT ' "$out/console.log" | tail -n 1 || true)" >&2
    grep -vE '^(IOPF-(KMEMLEAK|RESULT)|  iopfd\| )' "$out/console.log" | tail -n 40 >&2 || true
    return 1
  fi
  if grep -q ' FAIL' "$out/results.txt"; then
    [ "$per_case" = 1 ] && return 0
    return 1
  fi
  return 0
}
