#!/usr/bin/env bash
# Builds and runs the page-allocator benchmark of issue #2 and prints one markdown table.
#
# What it does, in one run:
#   1. builds tests/bench/page_alloc_bench.cc in Release in its own build dir (build-bench/);
#   2. runs it once per back end, each in its own process: physmem (per-CPU lists on), physmem
#      with pcp_enabled=false (the mutex-protected buddy), and aligned_alloc() of glibc, jemalloc,
#      tcmalloc-minimal and mimalloc (the last three by LD_PRELOAD), each asked for page-aligned
#      and for naturally aligned (size-aligned) blocks;
#   3. measures PageAllocator::Create() of a 64 GiB x86_64 target (wall time, RSS, residency);
#   4. writes raw JSON per process to build-bench/results/<timestamp>/ and prints the table of
#      median ns per alloc+free pair, ratios against the baselines of the same run, and the goals
#      of issue #2 met or missed. The table is also saved as table.md next to the JSON.
#
# Usage: scripts/bench.sh                 (about 7 minutes on a 2-core machine)
#        scripts/bench.sh --report DIR    (only print the table of an earlier run's results DIR)
# Knobs (environment): BENCH_REPETITIONS (default 11), BENCH_MIN_TIME seconds per repetition
# (default 0.1), BENCH_FILTER (a --benchmark_filter regex, default all), BENCH_PRIORITY (0: run
# at normal priority, see PRIO below), BUILD_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${BUILD_DIR:-$ROOT/build-bench}"
REPS="${BENCH_REPETITIONS:-11}"
MIN_TIME="${BENCH_MIN_TIME:-0.1}"
FILTER="${BENCH_FILTER:-.}"
STARTUP_GIB=64
STARTUP_RUNS=3
LIBDIR=/usr/lib/x86_64-linux-gnu
JEMALLOC="$LIBDIR/libjemalloc.so.2"
TCMALLOC="$LIBDIR/libtcmalloc_minimal.so.4"
MIMALLOC="$LIBDIR/libmimalloc.so.2"

# Other people's compilers share the two cores, and with autogroup scheduling (the default) nice
# alone only ranks processes within their own session. So, unless BENCH_PRIORITY=0, each
# benchmark process runs in a session of its own whose autogroup is set to nice -20, and at nice
# -20 itself: it then gets both cores when it asks for them (the control_spin benchmark shows
# whether it did: 2 threads ~2x 1 thread). Without this the control reached only ~1.0x here and
# the 2-thread numbers measured the other tenants, not the allocators. The price: other work on
# the machine crawls while this script runs.
PRIO=()
if [[ "${BENCH_PRIORITY:-1}" != 0 ]] && nice -n -20 true 2>/dev/null && [[ -w /proc/self/autogroup ]]; then
  PRIO=(setsid --wait sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' sh)
fi

# run_bench NAME MODE PRELOAD: one process, raw JSON to $RESULTS/NAME.json.
run_bench() {
  local name="$1" mode="$2" preload="$3"
  echo "== $name (--mode=$mode${preload:+, LD_PRELOAD=$preload})" >&2
  echo "loadavg_before_$name=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"
  env ${preload:+LD_PRELOAD="$preload"} "${PRIO[@]}" "$BIN" --mode="$mode" \
    --benchmark_filter="$FILTER" \
    --benchmark_repetitions="$REPS" --benchmark_report_aggregates_only=true \
    --benchmark_min_time="$MIN_TIME" \
    --benchmark_out="$RESULTS/$name.json" --benchmark_out_format=json \
    >"$RESULTS/$name.txt" 2>"$RESULTS/$name.err" || {
    echo "bench.sh: $name failed (a crash or refused call here is an allocator bug; see $RESULTS/$name.err):" >&2
    tail -5 "$RESULTS/$name.err" >&2
    exit 1
  }
}

# run_all: build, then every measurement, into a new $RESULTS directory.
run_all() {
  for lib in "$JEMALLOC" "$TCMALLOC" "$MIMALLOC"; do
    if [[ ! -e "$lib" ]]; then
      echo "bench.sh: $lib is missing; install libjemalloc2, libgoogle-perftools-dev, libmimalloc2.0" >&2
      exit 1
    fi
  done

  echo "== building page_alloc_bench (Release, $BUILD)" >&2
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C "$BUILD" -j2 page_alloc_bench >&2
  BIN="$BUILD/page_alloc_bench"

  RESULTS="$BUILD/results/$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$RESULTS"
  {
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel=$(uname -r)"
    echo "glibc=$(ldd --version | head -1 | awk '{print $NF}')"
    echo "repetitions=$REPS"
    echo "min_time=$MIN_TIME"
    echo "priority=${PRIO[*]:+own session, autogroup nice -20, nice -20}"
    echo "thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
    # The tree has no commit to name yet: a digest of the allocator's sources ties the run to them.
    echo "allocator_sources_sha256=$(cat "$ROOT"/allocator/*.h "$ROOT"/allocator/*.cc | sha256sum | cut -c1-16)"
  } >"$RESULTS/machine.txt"

  START=$SECONDS
  run_bench physmem physmem ""
  run_bench physmem_thread physmem_thread ""
  run_bench physmem_nopcp physmem_nopcp ""
  for alloc in glibc jemalloc tcmalloc mimalloc; do
    case "$alloc" in
      glibc) preload="" ;;
      jemalloc) preload="$JEMALLOC" ;;
      tcmalloc) preload="$TCMALLOC" ;;
      mimalloc) preload="$MIMALLOC" ;;
    esac
    run_bench "${alloc}_page" malloc_page "$preload"
    run_bench "${alloc}_natural" malloc_natural "$preload"
  done

  # Start-up: each run in a fresh process so its RSS is that process's alone.
  echo "== start-up of a $STARTUP_GIB GiB x86_64 target, $STARTUP_RUNS runs" >&2
  for i in $(seq 1 "$STARTUP_RUNS"); do
    "${PRIO[@]}" "$BIN" --mode=startup --startup_gib="$STARTUP_GIB" >"$RESULTS/startup-$i.json"
  done
  echo "== all runs took $((SECONDS - START)) s; raw results in $RESULTS" >&2
}

# --report DIR: only print the table of an earlier run.
if [[ "${1:-}" == "--report" ]]; then
  RESULTS="$2"
else
  run_all
fi

/usr/bin/python3 - "$RESULTS" <<'PY' | tee "$RESULTS/table.md"
import glob, json, os, re, statistics, sys

results = sys.argv[1]
ALLOCS = ["glibc", "jemalloc", "tcmalloc", "mimalloc"]
COLUMNS = ["physmem", "physmem_thread", "physmem_nopcp"] + [f"{a}_{k}" for a in ALLOCS for k in ("page", "natural")]
HEAD = {"physmem": "physmem (pcp)", "physmem_thread": "physmem (pcp + thread pages)", "physmem_nopcp": "physmem (no pcp)"}
for a in ALLOCS:
    HEAD[f"{a}_page"] = f"{a} page"
    HEAD[f"{a}_natural"] = f"{a} natural"
EXPECTED_MALLOC = {c: c.split("_")[0] for c in COLUMNS if not c.startswith("physmem")}
UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}

def key(run_name):
    # "order_pair/3/real_time" -> "order_pair/3"; "order0_pair/0/real_time/threads:2" ->
    # "order0_pair/0/threads:2" (Google Benchmark names the thread count only when it was set).
    return re.sub(r"/threads:1$", "", run_name.replace("/real_time", ""))

# runs[column][key] = {"ns": ns per pair seen by one thread, "tput": pairs/s over all threads, ...}
runs = {}
for col in COLUMNS:
    with open(os.path.join(results, f"{col}.json")) as f:
        doc = json.load(f)
    ctx = doc["context"]
    if col in EXPECTED_MALLOC and ctx.get("malloc") != EXPECTED_MALLOC[col]:
        sys.exit(f"{col}: the process ran with malloc '{ctx.get('malloc')}', not {EXPECTED_MALLOC[col]}")
    per = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") != "aggregate":
            continue
        threads = int(b.get("threads", 1))
        entry = per.setdefault(key(b["run_name"]), {"threads": threads})
        if b["aggregate_name"] == "median":
            entry["tput"] = b["items_per_second"]
            # Each of the n threads did its own pairs during the same wall time.
            entry["wall_ns"] = threads * 1e9 / b["items_per_second"]
            entry["minflt"] = b.get("minflt_per_pair", 0.0)
            if "pairs_per_iteration" in b:
                entry["cpu_ns"] = b["cpu_time"] * UNIT_NS[b["time_unit"]] / b["pairs_per_iteration"]
            # Single-threaded rows: CPU time of the thread, which the other tenants of this
            # machine cannot inflate by descheduling us. Several threads: wall time, the only
            # honest measure when threads may wait for each other (a sleeping mutex waiter
            # burns no CPU).
            entry["ns"] = entry.get("cpu_ns") if threads == 1 else entry["wall_ns"]
        elif b["aggregate_name"] == "cv":
            entry["cv"] = b["real_time"]  # Google Benchmark puts the CV of each field in that field
    runs[col] = per

def get(col, k, field="ns"):
    return runs.get(col, {}).get(k, {}).get(field)

ROWS = [("order-0 pair, 1 thread", "order0_pair/0"),
        ("order-0 pair, 2 threads (wall ns per pair per thread)", "order0_pair/0/threads:2"),
        ("order-0 pair, 4 threads on 2 cores (wall ns per pair per thread)", "order0_pair/0/threads:4")]
# The trusted free (__free_pages_trusted(), issue #15 part 4) exists in physmem only: its rows are
# compared with the baselines' plain order-0 pairs.
ROWS += [("order-0 pair, trusted free, 1 thread", "order0_pair_trusted/0"),
         ("order-0 pair, trusted free, 2 threads (wall ns per pair per thread)", "order0_pair_trusted/0/threads:2"),
         ("order-0 pair, trusted free, 4 threads on 2 cores (wall ns per pair per thread)",
          "order0_pair_trusted/0/threads:4")]
BASE_KEY = {k: k.replace("_trusted", "") for _, k in ROWS if "_trusted" in k}
ROWS += [(f"order {o} pair", f"order_pair/{o}") for o in range(1, 11)]
ROWS += [(f"batch: {n} x order 0, then free all", f"batch/{n}") for n in (32, 256, 4096)]
ROWS += [(f"batch {n} via alloc_pages_bulk", f"batch_bulk/{n}") for n in (32, 256, 4096)]
ROWS += [(f"steady state, random orders 0..3, pool {n}", f"steady_random/{n}") for n in (1024, 16384)]

def fmt(x, digits=1):
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.{digits}f}"

def times(x):
    return "n/a" if x is None else f"{x:.2f}x"

def ratio(base, ours):
    return "n/a" if base is None or ours is None else f"{base / ours:.2f}x"

def best_natural(k):
    k = BASE_KEY.get(k, k)
    vals = [(get(f"{a}_natural", k), a) for a in ALLOCS if get(f"{a}_natural", k) is not None]
    return min(vals) if vals else (None, None)

def row(cells):
    print("| " + " | ".join(cells) + " |")

def header(cells):
    row(cells)
    print("|" + "---|" * len(cells))

with open(os.path.join(results, "machine.txt")) as f:
    machine = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
with open(os.path.join(results, "physmem.json")) as f:
    ctx = json.load(f)["context"]

print(f"### page_alloc_bench: {machine['cpu']}, {machine['nproc']} CPUs, Linux {machine['kernel']}, "
      f"glibc {machine['glibc']}, allocator sources {machine.get('allocator_sources_sha256', '?')}")
print()
print(f"Median over {machine['repetitions']} repetitions (min_time {machine['min_time']} s each) of ns per "
      f"alloc+free pair; lower is better. Single-threaded rows: CPU time of the benchmark thread per pair; "
      f"multi-threaded rows: wall time per pair as one thread sees it (threads / total throughput). "
      f"Ratio columns: baseline ns / physmem (pcp) ns, so > 1 means physmem is faster. "
      f"Scheduling priority: {machine.get('priority') or 'normal'}. "
      f"physmem arena: {ctx.get('arena')}; "
      + "; ".join(f"{k[5:]}: {v}" for k, v in sorted(ctx.items()) if k.startswith("zone_")) + ".")
print()
header(["workload"] + [HEAD[c] for c in COLUMNS] + ["vs jemalloc page", "vs tcmalloc page", "vs best natural"])
for label, k in ROWS:
    if all(get(c, k) is None for c in COLUMNS):
        continue
    ours = get("physmem", k)
    bn, who = best_natural(k)
    row([label] + [fmt(get(c, k)) for c in COLUMNS] +
        [ratio(get("jemalloc_page", BASE_KEY.get(k, k)), ours), ratio(get("tcmalloc_page", BASE_KEY.get(k, k)), ours),
         "n/a" if bn is None else f"{ratio(bn, ours)} ({who})"])
print()

# Throughput and scaling of the order-0 pairs, next to the no-allocation control of each process.
header(["order-0 throughput, Mpairs/s (all threads)"] + [HEAD[c] for c in COLUMNS])
for n in (1, 2, 4):
    k = "order0_pair/0" + ("" if n == 1 else f"/threads:{n}")
    row([f"{n} thread{'s' if n > 1 else ''}"] +
        [fmt(None if get(c, k, "tput") is None else get(c, k, "tput") / 1e6, 2) for c in COLUMNS])

def scaling(col, base, n):
    a, b = get(col, f"{base}/threads:{n}", "tput"), get(col, base, "tput")
    return None if a is None or b is None else a / b

for n in (2, 4):
    row([f"scaling {n}T / 1T"] + [times(scaling(c, "order0_pair/0", n)) for c in COLUMNS])
for ctl_name, what in (("control_spin", "latency-bound"), ("control_alu", "throughput-bound")):
    for n in (2, 4):
        row([f"control, no allocation, {what}: {n}T / 1T"] + [times(scaling(c, ctl_name, n)) for c in COLUMNS])
print()

# Noise and leftover faults: the worst coefficient of variation and the most minor faults per
# pair of any workload, per column.
header(["noise"] + [HEAD[c] for c in COLUMNS])
cvs = [f"{100 * max(e['cv'] for e in runs[c].values() if 'cv' in e):.1f}%" for c in COLUMNS]
flts = [f"{max(e.get('minflt', 0) for e in runs[c].values()):.3g}" for c in COLUMNS]
row(["max CV of real time over repetitions"] + cvs)
row(["max minor faults per pair in a timed loop"] + flts)
row(["load average (1 min) at process start"] + [machine.get(f"loadavg_before_{c}", "?").split()[0] for c in COLUMNS])
print()

# Start-up of a large target.
starts = []
for p in sorted(glob.glob(os.path.join(results, "startup-*.json"))):
    with open(p) as f:
        starts.append(json.loads(f.read()))
secs = statistics.median(s["create_seconds"] for s in starts)
runs_ms = ", ".join(f"{s['create_seconds'] * 1e3:.1f}" for s in starts)
s0 = starts[0]
arena = s0["arena_bytes"]
rss_after = max(s["rss_after_bytes"] for s in starts)
rss_delta = max(s["rss_after_bytes"] - s["rss_before_bytes"] for s in starts)
resident = max(s["arena_resident_bytes"] for s in starts)
print(f"Start-up, BuiltinTarget(\"x86_64\", {s0['gib']} GiB), {len(starts)} fresh processes: PageAllocator::Create() "
      f"median {secs * 1e3:.1f} ms (runs: {runs_ms} ms); process RSS after Create() at most "
      f"{rss_after / 2**20:.1f} MiB = {100 * rss_after / arena:.3f}% of the {arena / 2**30:.0f} GiB arena (Create() "
      f"added {rss_delta / 2**20:.1f} MiB = {100 * rss_delta / arena:.3f}%); arena ResidentBytes() "
      f"{resident} bytes. Arena: {s0['arena']}.")
print()

# Goals of issue #2.
def verdict(ok):
    return "**met**" if ok else "**missed**"

ns1 = get("physmem", "order0_pair/0")
je, tc = get("jemalloc_page", "order0_pair/0"), get("tcmalloc_page", "order0_pair/0")
sc, ctl = scaling("physmem", "order0_pair/0", 2), scaling("physmem", "control_spin", 2)
ctl_alu = scaling("physmem", "control_alu", 2)
# Goals of issue #15 part 4, whenever the order-0 pairs were measured.
trusted1 = get("physmem", "order0_pair_trusted/0")
trusted_tp, checked_tp = get("physmem_thread", "order0_pair_trusted/0"), get("physmem_thread", "order0_pair/0")
cas = get("physmem", "control_cas")
if trusted1 is not None and ns1 is not None and tc is not None:
    print("Goals of issue #15 part 4:")
    print(f"- trusted free, order-0 pair, 1 thread, <= 5 ns: per-CPU lists {fmt(trusted1, 2)} ns CPU "
          f"-> {verdict(trusted1 <= 5)}; with thread pages {fmt(trusted_tp, 2)} ns -> "
          f"{verdict(trusted_tp is not None and trusted_tp <= 5)}")
    print(f"- checked free, order-0 pair at least at tcmalloc-minimal's speed (page-aligned 4 KiB, same run): "
          f"per-CPU lists {fmt(ns1, 2)} ns, with thread pages {fmt(checked_tp, 2)} ns, vs {fmt(tc, 2)} ns = "
          f"{tc / min(ns1, checked_tp or ns1):.2f}x -> {verdict(tc / min(ns1, checked_tp or ns1) >= 1)}; "
          f"the checked free's claim alone (one uncontended lock cmpxchg, control_cas) costs {fmt(cas, 2)} ns")
    print()
needed = ["order0_pair/0", "order0_pair/0/threads:2", "control_spin", "control_alu"] + [f"order_pair/{o}" for o in range(1, 11)]
if any(get("physmem", k, "tput") is None for k in needed) or get("jemalloc_page", "order0_pair/0") is None:
    print("Goals of issue #2: not evaluated (this run did not measure every workload they need).")
    sys.exit(0)
print("Goals of issue #2:")
wall1 = get("physmem", "order0_pair/0", "wall_ns")
print(f"- order-0 through the per-CPU lists, 1 thread, <= 5 ns/pair: {fmt(ns1, 2)} ns CPU ({fmt(wall1, 2)} ns wall) "
      f"-> {verdict(ns1 <= 5)}")
print(f"- order-0 >= 2x jemalloc (page-aligned 4 KiB): {je / ns1:.2f}x -> {verdict(je / ns1 >= 2)}")
print(f"- order-0 no slower than tcmalloc-minimal (page-aligned 4 KiB): {tc / ns1:.2f}x -> {verdict(tc / ns1 >= 1)}")
print(f"- 2 threads >= 1.8x single-thread throughput: {sc:.2f}x -> {verdict(sc >= 1.8)} "
      f"(the no-allocation controls reached {times(ctl)} and {times(ctl_alu)} in the same process)")
worst = None
lines = []
for o in range(1, 11):
    k = f"order_pair/{o}"
    bn, who = best_natural(k)
    r = bn / get("physmem", k)
    worst = min(worst or (r, o, who), (r, o, who))
    lines.append(f"order {o} {r:.2f}x ({who})")
print(f"- orders 1..10 >= 3x the best general-purpose allocator asked for natural alignment: worst "
      f"{worst[0]:.2f}x (order {worst[1]}, vs {worst[2]}) -> {verdict(worst[0] >= 3)}; " + ", ".join(lines))
print(f"- start-up of a {s0['gib']} GiB target < 1 s: {secs * 1e3:.1f} ms -> {verdict(secs < 1)}")
print(f"- start-up RSS < 2% of the arena: {100 * rss_after / arena:.3f}% -> {verdict(rss_after / arena < 0.02)}")
PY
