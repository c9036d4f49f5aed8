#!/usr/bin/env bash
# iopfd's command line: --check-config accepts a valid configuration (exit 0), reports each error
# of an invalid one as file:line:col: message (exit 1), and bad arguments exit 2.
set -u
iopfd=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
check() {  # description, condition result
  if [ "$2" -eq 0 ]; then echo "ok - $1"; else echo "not ok - $1"; fail=1; fi
}

mkdir -p "$dir/good" "$dir/bad"
cat > "$dir/iopfd.toml" <<'TOML'
[daemon]
log_level = "debug"
TOML
cat > "$dir/good/dev0.toml" <<'TOML'
name = "dev0"
attach = "adopt"
[adopt]
iommufd_fd = "a"
fault_fd = "b"
device_id = 1
[[space]]
ioas_id = 2
  [[space.region]]
  iova = 0x100000
  size = "64KiB"
  backing = "anonymous"
  access = "rw"
TOML
out=$("$iopfd" --check-config --config "$dir/iopfd.toml" --devices-dir "$dir/good" 2>&1)
check "valid configuration exits 0" $?
[[ "$out" == "configuration OK: 1 device(s)" ]]
check "valid configuration says so ($out)" $?

sed -e 's/size = "64KiB"/size = "65KiB"/' -e 's/access = "rw"/access = "rq"/' \
  "$dir/good/dev0.toml" > "$dir/bad/dev0.toml"
echo 'bogus = 1' >> "$dir/bad/dev0.toml"
out=$("$iopfd" --check-config --config "$dir/iopfd.toml" --devices-dir "$dir/bad" 2>&1)
rc=$?
[ $rc -eq 1 ]
check "invalid configuration exits 1 (got $rc)" $?
echo "$out" | grep -qE "^$dir/bad/dev0.toml:11:10: .*size.*page size"
check "misaligned size reported as file:line:col" $?
echo "$out" | grep -qE "^$dir/bad/dev0.toml:13:12: .*access"
check "bad access letter reported as file:line:col" $?
echo "$out" | grep -qE "^$dir/bad/dev0.toml:14:1: .*bogus: unknown key"
check "unknown key reported as file:line:col" $?

"$iopfd" --no-such-flag >/dev/null 2>&1
rc=$?
[ $rc -eq 2 ]
check "unknown argument exits 2 (got $rc)" $?
"$iopfd" --check-config --config "$dir/missing.toml" --devices-dir "$dir/good" >/dev/null 2>&1
rc=$?
[ $rc -eq 1 ]
check "an explicit --config that does not exist is an error (got $rc)" $?
"$iopfd" --version | grep -qE '^iopfd [0-9]+\.[0-9]+\.[0-9]+$'
check "--version prints the version" $?
exit $fail
