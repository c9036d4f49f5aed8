#!/usr/bin/env bash
# Installs the Debian 12 packages iopfd needs to build, test and run its VM tier.
# Idempotent: packages already present are left alone, and apt is only touched when
# something is missing. Run as root.
set -euo pipefail

pkgs=(
  # build
  build-essential cmake pkg-config ninja-build git
  # libraries (found by CMake through pkg-config / CMake config files)
  liburing-dev libabsl-dev libnl-3-dev libnl-genl-3-dev libsystemd-dev libtomlplusplus-dev
  nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # lint
  clang-format clang-tidy universal-ctags
  # fuzzing (scripts/fuzz.sh): clang and its libFuzzer runtime
  clang libclang-rt-14-dev
  # the service's units (systemd-analyze verify/security, systemd.pc) and man pages (groff, man)
  systemd groff-base man-db
  # the Debian package (scripts/build-deb.sh): dpkg-dev for dpkg-shlibdeps/buildflags, lintian
  dpkg-dev lintian fakeroot
  # VM tier: kernel build and guest boot
  flex bison bc libelf-dev libssl-dev cpio xz-utils qemu-system-x86 busybox-static
  debian-archive-keyring
  # the booted-systemd VM test's Debian root (tests/vm/systemd/build-root.sh)
  debootstrap
  # the density benchmark's plot (bench/plot-density.sh)
  gnuplot-nox
  # iopfctl top's terminal test drives it in tmux (tests/integration/top_tmux_test.cc)
  tmux
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "note: installed ${#missing[@]} of ${#pkgs[@]} packages"
else
  echo "reused: all ${#pkgs[@]} packages already installed"
fi
