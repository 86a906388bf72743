#!/usr/bin/env bash
# Builds physmemd and runs the whole test suite — the command the README gives and .ci/run calls:
#   1. the normal build with warnings as errors, every test;
#   2. the allocator tests again with rseq disabled (GLIBC_TUNABLES=glibc.pthread.rseq=0), which
#      turns the per-CPU lists off: the locked fallback must be just as correct;
#   3. the allocator, server and client tests (ctest label `server` holds tests/server and
#      tests/clients; label `docs`, the documentation pasted as a user would, runs on the normal
#      build only) under AddressSanitizer + UndefinedBehaviorSanitizer (the daemon and CLI
#      processes the tests start are the sanitized build too);
#   4. each libFuzzer target (tests/fuzz/, clang-14, ASan+UBSan) for FUZZ_SECONDS (default 30) on
#      its seed corpus, one per core at a time: scripts/fuzz.sh, docs/fuzzing.md;
#   5. the allocator, server and client tests under ThreadSanitizer (not the one that times a
#      recovery, label server_slow_timing: single-threaded code, 98 s under TSan). The allocator tests stop at
#      the first report. The server and client tests run gRPC, which Debian does not build with
#      TSan: their reports are written to build-tsan/tsan-reports and judged afterwards by
#      tests/tsan/tsan_reports.py, which fails the run on any race between two accesses made by
#      our code and on every report that is not a data race (docs/sanitizers.md explains).
# Last, tests/leftover_files.py checks that no test left physmem* files in /dev/shm or /tmp.
# Each stage prints its time, and a table of all of them ends the run (also when a stage fails).
#
#   bash scripts/test.sh --quick   # daily work: the normal build and the tests not labelled slow,
#                                  # deploy, soak or docs (the docs' commands pasted, ~2 min alone)
#
# Tests never race the wall clock: real-time waits are scaled to the build (tests/time_scale.h;
# PHYSMEM_TEST_TIME_SCALE below for the Python tests), and leases expire when a test advances the
# daemon's lease clock (tests/daemon_process.h).
# Installs the Debian packages it needs first (scripts/install-deps.sh; root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    *) echo "usage: bash scripts/test.sh [--quick]" >&2; exit 2 ;;
  esac
done

STAGE_TIMES=()
RUN_START=$SECONDS
print_stage_times() {
  local rc=$?
  echo "== stage times"
  local line
  for line in "${STAGE_TIMES[@]}"; do echo "$line"; done
  printf '%6d s  total (%s)\n' $((SECONDS - RUN_START)) "$([ $rc -eq 0 ] && echo passed || echo "FAILED, exit $rc")"
}
trap print_stage_times EXIT
# stage NAME COMMAND...: runs one stage, prints and records its time.
stage() {
  local name=$1; shift
  echo "== $name"
  local t0=$SECONDS
  "$@"
  local dt=$((SECONDS - t0))
  STAGE_TIMES+=("$(printf '%6d s  %s' "$dt" "$name")")
  echo "== $name: ${dt} s"
}

JOBS=${JOBS:-$(nproc)}
# Tests run one more at a time than there are cores: most of a daemon test is waiting (for the
# daemon to start, for an event), and no test depends on how fast the machine is.
TEST_JOBS=${TEST_JOBS:-$(($(nproc) + 1))}
configure_and_build() {
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DPHYSMEM_WERROR=ON "$@" > "$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
  ninja -C "$dir" -j"$JOBS"
}

stage "install dependencies" bash scripts/install-deps.sh

stage "normal build (warnings are errors)" configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
# No test may leave files behind: physmem* entries of /dev/shm and /tmp now, checked at the end.
LEFTOVERS_BEFORE=$PWD/build/leftovers-before-tests.txt
/usr/bin/python3 tests/leftover_files.py snapshot "$LEFTOVERS_BEFORE"
if [ "$QUICK" = 1 ]; then
  stage "tests not labelled slow, deploy, soak or docs" ctest --test-dir build --output-on-failure -j"$TEST_JOBS" --timeout 900 -LE 'slow|deploy|soak|docs'
  stage "no files left behind in /dev/shm and /tmp" /usr/bin/python3 tests/leftover_files.py check "$LEFTOVERS_BEFORE"
  exit 0
fi
stage "normal tests" ctest --test-dir build --output-on-failure -j"$TEST_JOBS" --timeout 900

stage "allocator tests with rseq disabled (per-CPU lists fall back to the zone lock)" \
  env GLIBC_TUNABLES=glibc.pthread.rseq=0 ctest --test-dir build --output-on-failure -j2 -L allocator --timeout 900

stage "ASan + UBSan build" configure_and_build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPHYSMEM_SANITIZE=address -DPHYSMEM_BUILD_BENCH=OFF
stage "ASan + UBSan tests" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PHYSMEM_TEST_TIME_SCALE=5 \
  ctest --test-dir build-asan --output-on-failure -j"$TEST_JOBS" -L 'allocator|server|trace' --timeout 1800

stage "fuzzing (${FUZZ_SECONDS:-30} s per target)" env PHYSMEM_SKIP_DEPS=1 bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

stage "TSan build" configure_and_build build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHYSMEM_SANITIZE=thread \
  -DPHYSMEM_BUILD_BENCH=OFF
# TSan's shadow memory needs a fixed address-space layout: run without ASLR (setarch -R). Both
# setarch's personality and TSAN_OPTIONS are inherited by any process a test starts.
stage "TSan allocator tests" env TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  PHYSMEM_TEST_TIME_SCALE=20 \
  setarch "$(uname -m)" -R ctest --test-dir build-tsan --output-on-failure -j2 -L 'allocator|trace' --timeout 1800
tsan_reports=$PWD/build-tsan/tsan-reports
rm -rf "$tsan_reports" && mkdir -p "$tsan_reports"
stage "TSan server and client tests" env \
  TSAN_OPTIONS="halt_on_error=0 exitcode=0 second_deadlock_stack=1 history_size=6 suppress_equal_addresses=0 suppressions=$PWD/tests/tsan.supp log_path=$tsan_reports/tsan" \
  PHYSMEM_TEST_TIME_SCALE=20 \
  setarch "$(uname -m)" -R ctest --test-dir build-tsan --output-on-failure -j"$TEST_JOBS" -L server -LE timing --timeout 1800
stage "TSan reports judged" /usr/bin/python3 tests/tsan/tsan_reports.py "$tsan_reports"
stage "no files left behind in /dev/shm and /tmp" /usr/bin/python3 tests/leftover_files.py check "$LEFTOVERS_BEFORE"
