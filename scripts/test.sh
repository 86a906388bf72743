#!/usr/bin/env bash
# Builds physmemd and runs the whole test suite — the command the README gives and .ci/run calls:
#   1. the normal build with warnings as errors, every test;
#   2. the allocator tests again with rseq disabled (GLIBC_TUNABLES=glibc.pthread.rseq=0), which
#      turns the per-CPU lists off: the locked fallback must be just as correct;
#   3. the allocator and server tests under AddressSanitizer + UndefinedBehaviorSanitizer (the
#      daemon processes the server tests start are the sanitized build too);
#   4. the allocator tests under ThreadSanitizer (Debian's gRPC and Abseil are not built with TSan,
#      so server tests would report gRPC's own internals; see tests/tsan.supp).
# Installs the Debian packages it needs first (scripts/install-deps.sh; root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

JOBS=${JOBS:-$(nproc)}
configure_and_build() {
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DPHYSMEM_WERROR=ON "$@" > "$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
  ninja -C "$dir" -j"$JOBS"
}

echo "== normal build (warnings are errors)"
configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
ctest --test-dir build --output-on-failure -j2 --timeout 900

echo "== allocator tests with rseq disabled (per-CPU lists fall back to the zone lock)"
GLIBC_TUNABLES=glibc.pthread.rseq=0 ctest --test-dir build --output-on-failure -j2 -L allocator --timeout 900

echo "== ASan + UBSan"
configure_and_build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHYSMEM_SANITIZE=address -DPHYSMEM_BUILD_BENCH=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j2 -L 'allocator|server' --timeout 1800

echo "== TSan"
configure_and_build build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHYSMEM_SANITIZE=thread -DPHYSMEM_BUILD_BENCH=OFF
# TSan's shadow memory needs a fixed address-space layout: run without ASLR (setarch -R).
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  setarch "$(uname -m)" -R ctest --test-dir build-tsan --output-on-failure -j2 -L allocator --timeout 1800
