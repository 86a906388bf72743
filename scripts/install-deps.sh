#!/usr/bin/env bash
# Installs every Debian 12 package physmemd needs to build, test and benchmark.
# Idempotent: packages already present are skipped by apt; safe to run repeatedly.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  g++-12 clang-14 libclang-rt-14-dev
  libabsl-dev
  libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc
  prometheus-cpp-dev
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev
  libjemalloc-dev libgoogle-perftools-dev libmimalloc-dev
  prometheus
  python3-grpcio python3-protobuf python3-yaml jq systemd
  valgrind util-linux openssl
  linux-perf zlib1g-dev
  libpng-dev chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
