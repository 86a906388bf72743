#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang-14, ASan+UBSan) in build-fuzz and runs each
# for a fixed time on a copy of its seed corpus (tests/fuzz/corpus/<target>/). docs/fuzzing.md.
#
#   bash scripts/fuzz.sh                 # 30 s per target (what scripts/test.sh runs in CI), one
#                                        # target per core at a time (FUZZ_JOBS)
#   bash scripts/fuzz.sh 3600            # an hour per target
#   bash scripts/fuzz.sh 600 service_fuzz gfp_parse_fuzz   # only these targets
#   bash scripts/fuzz.sh --merge 3600    # and merge the inputs that add coverage into the repo corpus
#
# The corpus is copied to a temporary directory, so a run does not grow the repository unless
# --merge is given. A crash stops that target, saves the input as build-fuzz/artifacts/<target>/
# crash-<sha1> and makes the script exit 1 after the other targets ran; reproduce it with
#   build-fuzz/tests/fuzz/<target> build-fuzz/artifacts/<target>/crash-<sha1>
# Prints executions, exec/s and coverage per target, and the total executions.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=30
MERGE=0
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    --merge) MERGE=1 ;;
    ''|*[!0-9]*) TARGETS+=("$arg") ;;
    *) SECONDS_PER_TARGET=$arg ;;
  esac
done
ALL_TARGETS=(gfp_parse_fuzz target_profile_fuzz page_allocator_fuzz service_fuzz trace_reader_fuzz)
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")

if [ -z "${PHYSMEM_SKIP_DEPS:-}" ]; then bash scripts/install-deps.sh; fi

BUILD=build-fuzz
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
echo "== fuzz: building $BUILD (clang-14, libFuzzer + ASan + UBSan)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHYSMEM_WERROR=ON -DPHYSMEM_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 "${launcher[@]}" > "$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log"; exit 1; }
ninja -C "$BUILD" -j"${JOBS:-$(nproc)}" "${TARGETS[@]}"

# Seeds in text form (service_fuzz's *.textproto) are encoded to the binary form the target reads;
# other files are used as they are. Extra read-only seed directories per target follow the corpus.
seed_dirs() {
  case "$1" in
    target_profile_fuzz) echo tests/allocator/testdata deploy/targets ;;
  esac
}
copy_corpus() {
  local target=$1 dest=$2 f
  for f in tests/fuzz/corpus/"$target"/*; do
    [ -e "$f" ] || continue
    if [ "$target" = service_fuzz ] && [[ "$f" == *.textproto ]]; then
      protoc --encode=physmem.fuzz.FuzzProgram -I tests/fuzz -I proto tests/fuzz/service_fuzz.proto \
        < "$f" > "$dest/$(basename "$f" .textproto).seed"
    else
      cp "$f" "$dest/"
    fi
  done
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One target per core at a time (FUZZ_JOBS, default nproc): each still gets its full
# SECONDS_PER_TARGET, and the stage takes a fraction of the time.
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc)}
results=$(mktemp -d /tmp/physmem-fuzz-results.XXXXXX)
# run_target TARGET: fuzzes it; writes its summary line to $results/TARGET.line and, on failure,
# TARGET.failed; its own messages go to $results/TARGET.out (printed in order afterwards).
run_target() {
  local target=$1
  local work
  work=$(mktemp -d "/tmp/physmem-fuzz-$target.XXXXXX")
  mkdir -p "$work/corpus" "$BUILD/artifacts/$target"
  copy_corpus "$target" "$work/corpus"
  local extra=() d
  for d in $(seed_dirs "$target"); do [ -d "$d" ] && extra+=("$d"); done
  local flags=(-max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1
               -artifact_prefix="$BUILD/artifacts/$target/")
  # The in-process server logs every refused call; libFuzzer keeps its own and the sanitizers'
  # reports on a duplicate of stderr.
  [ "$target" = service_fuzz ] && flags+=(-close_fd_mask=2)
  echo "== fuzz: $target for ${SECONDS_PER_TARGET}s ($(ls "$work/corpus" | wc -l) seeds)"
  local log="$BUILD/artifacts/$target/last-run.log"
  local rc=0
  "$BUILD/tests/fuzz/$target" "${flags[@]}" "$work/corpus" "${extra[@]}" > "$log" 2>&1 || rc=$?
  local execs rate cov
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  echo "${execs:-0}" > "$results/$target.execs"
  if [ "$rc" -ne 0 ]; then
    touch "$results/$target.failed"
    echo "!! $target failed (exit $rc); last lines of $log:"
    grep -v '^#\|^INFO\|^ts=' "$log" | tail -40
    ls "$BUILD/artifacts/$target"/crash-* "$BUILD/artifacts/$target"/leak-* "$BUILD/artifacts/$target"/timeout-* 2>/dev/null || true
  fi
  printf '%-22s %10s execs %8s exec/s  cov %6s  corpus %5s  %s\n' "$target" "${execs:-0}" "${rate:-?}" \
    "${cov:-?}" "$(ls "$work/corpus" | wc -l)" "$([ "$rc" -eq 0 ] && echo ok || echo FAILED)" > "$results/$target.line"
  if [ "$MERGE" -eq 1 ] && [ "$rc" -eq 0 ]; then
    # Keep only inputs that add coverage to what the repository corpus already has.
    "$BUILD/tests/fuzz/$target" -merge=1 -close_fd_mask=2 "tests/fuzz/corpus/$target" "$work/corpus" \
      > "$BUILD/artifacts/$target/merge.log" 2>&1
    echo "   merged: tests/fuzz/corpus/$target now has $(ls "tests/fuzz/corpus/$target" | wc -l) files"
  fi
  rm -rf "$work"
}

running=0
for target in "${TARGETS[@]}"; do
  if [ "$running" -ge "$FUZZ_JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_target "$target" > "$results/$target.out" 2>&1 &
  running=$((running + 1))
done
wait || true
failed=()
total_execs=0
summary=()
for target in "${TARGETS[@]}"; do
  cat "$results/$target.out"
  [ -e "$results/$target.failed" ] && failed+=("$target")
  total_execs=$((total_execs + $(cat "$results/$target.execs" 2>/dev/null || echo 0)))
  summary+=("$(cat "$results/$target.line" 2>/dev/null || echo "$target: no result")")
  [ -e "$results/$target.line" ] || failed+=("$target")
done
rm -rf "$results"

echo "== fuzz summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
echo "total executions: $total_execs"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $BUILD/artifacts/<target>/; see docs/fuzzing.md)"
  exit 1
fi
