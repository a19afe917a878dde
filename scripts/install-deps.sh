#!/usr/bin/env bash
# Install what blockd needs to build and test on Debian 12.
# Quiet when everything is present: only dpkg-query is run then.
set -euo pipefail

pkgs=(
  # build
  meson ninja-build pkg-config gcc clang
  libglib2.0-dev libjson-glib-dev liburing-dev zlib1g-dev libcmocka-dev
  python3
  # libFuzzer's runtime: clang only recommends it, -fsanitize=fuzzer needs it
  libclang-rt-14-dev
  # tests: the reference tools used as oracles and as the reference daemon
  qemu-utils qemu-system-common libnbd-bin fio socat
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
else
  sudo=
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
