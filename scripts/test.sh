#!/usr/bin/env bash
# Builds physmemd and runs the whole test suite — the command the README gives and .ci/run calls:
#   1. the normal build with warnings as errors, every test;
#   2. the allocator tests again with rseq disabled (GLIBC_TUNABLES=glibc.pthread.rseq=0), which
#      turns the per-CPU lists off: the locked fallback must be just as correct;
#   3. the allocator, server and client tests (ctest label `server` holds tests/server and
#      tests/clients) under AddressSanitizer + UndefinedBehaviorSanitizer (the daemon and CLI
#      processes the tests start are the sanitized build too);
#   4. each libFuzzer target (tests/fuzz/, clang-14, ASan+UBSan) for FUZZ_SECONDS (default 30) on
#      its seed corpus: scripts/fuzz.sh, docs/fuzzing.md;
#   5. the allocator, server and client tests under ThreadSanitizer. The allocator tests stop at
#      the first report. The server and client tests run gRPC, which Debian does not build with
#      TSan: their reports are written to build-tsan/tsan-reports and judged afterwards by
#      tests/tsan/tsan_reports.py, which fails the run on any race between two accesses made by
#      our code and on every report that is not a data race (docs/sanitizers.md explains).
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

echo "== fuzzing (${FUZZ_SECONDS:-30} s per target)"
PHYSMEM_SKIP_DEPS=1 bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

echo "== TSan"
configure_and_build build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHYSMEM_SANITIZE=thread -DPHYSMEM_BUILD_BENCH=OFF
# TSan's shadow memory needs a fixed address-space layout: run without ASLR (setarch -R). Both
# setarch's personality and TSAN_OPTIONS are inherited by any process a test starts.
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  setarch "$(uname -m)" -R ctest --test-dir build-tsan --output-on-failure -j2 -L allocator --timeout 1800
tsan_reports=$PWD/build-tsan/tsan-reports
rm -rf "$tsan_reports" && mkdir -p "$tsan_reports"
TSAN_OPTIONS="halt_on_error=0 exitcode=0 second_deadlock_stack=1 history_size=4 suppress_equal_addresses=0 suppressions=$PWD/tests/tsan.supp log_path=$tsan_reports/tsan" \
  setarch "$(uname -m)" -R ctest --test-dir build-tsan --output-on-failure -j2 -L server --timeout 1800
/usr/bin/python3 tests/tsan/tsan_reports.py "$tsan_reports"
