// page_alloc_bench: the page-allocator benchmark of issue #2 (a benchmark, not a test).
//
// What it measures: the cost of one alloc+free pair of page blocks, for the same workloads, on
// one back end per process, selected by --mode:
//   physmem         PageAllocator on BuiltinTarget("x86_64", 2 GiB), per-CPU lists on; besides the
//                   workloads below, order0_pair_trusted frees with __free_pages_trusted()
//   physmem_thread  the same with thread_pages = true: per-thread order-0 caches in front of the
//                   per-CPU lists (allocator/thread_pages.h)
//   physmem_nopcp   the same with pcp_enabled = false: every call takes the zone lock (the
//                   mutex-protected buddy baseline)
//   malloc_page     aligned_alloc(4096, size): a general-purpose allocator asked for page-aligned
//                   blocks. Which allocator is whatever the process runs with: glibc, or jemalloc /
//                   tcmalloc / mimalloc through LD_PRELOAD (scripts/bench.sh runs each)
//   malloc_natural  aligned_alloc(size, size): blocks aligned to their own size, as a buddy gives
//   startup         not a benchmark: times PageAllocator::Create of a large target (--startup_gib)
//                   and prints one JSON object with wall time, process RSS and arena residency
// Sizes are those of page orders: 4096 << order bytes. Nothing inside a block is touched: we time
// the allocator's bookkeeping, not page faults. To keep first-touch faults of the malloc heaps out
// of the timings, every benchmark runs its workload once, untimed, before its timed loop, and
// records the minor faults per pair that remain (minflt_per_pair). Two control workloads without any
// allocation (control_spin, control_alu) run at 1, 2 and 4 threads in every process, to show how
// much parallelism the machine granted at the time.
//
// Who runs it: scripts/bench.sh, one process per (mode, LD_PRELOAD), which turns the JSON into the
// table in docs/benchmarks.md. Thread-safety: the order-0 and control benchmarks run on several
// threads that share the one PageAllocator (whose methods are all thread-safe); everything else is
// one thread.
#include <dlfcn.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "allocator/gfp.h"
#include "allocator/page_allocator.h"
#include "allocator/target.h"
#include "benchmark/benchmark.h"

namespace physmem {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr unsigned kPageShift = 12;
constexpr unsigned kMaxOrder = 10;
constexpr unsigned kSteadyMaxOrder = 3;  // the steady-state pool uses orders 0..3 (pcp orders)
constexpr int kBatchSizes[] = {32, 256, 4096};
constexpr int kSteadyPoolSizes[] = {1024, 16384};

// Stops the process: a failed allocation or a refused free in these workloads is an allocator
// bug (or a broken baseline), never something to measure around.
[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "page_alloc_bench: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// ---------------------------------------------------------------------------------------------
// Back ends. Each is a type with static Alloc/Free so the timed loops are compiled per back end
// and no per-call dispatch is timed.

PageAllocator* g_pa = nullptr;  // physmem modes: created in main() before any benchmark runs

// A refused free in a timed loop, kept out of line so that the loops inline the free itself.
[[noreturn, gnu::cold, gnu::noinline]] void DieFreeRefused(const char* call, unsigned order, const absl::Status& s) {
  Die(absl::StrCat(call, "(order ", order, "): ", s.ToString()));
}

struct PhysmemBackend {
  static void* Alloc(unsigned order) {
    Page* p = g_pa->alloc_pages(GFP_KERNEL, order);
    if (p == nullptr) [[unlikely]] Die(absl::StrCat("alloc_pages(GFP_KERNEL, ", order, ") returned nullptr"));
    return p;
  }
  static void Free(void* p, unsigned order) {
    absl::Status s = g_pa->__free_pages(static_cast<Page*>(p), order);
    if (!s.ok()) [[unlikely]] DieFreeRefused("__free_pages", order, s);
  }
  // alloc_pages_bulk() of order-0 pages into pages[0..n), which must be null.
  static void AllocBulk(void** pages, unsigned n) {
    const unsigned got = g_pa->alloc_pages_bulk(GFP_KERNEL, n, reinterpret_cast<Page**>(pages));
    if (got != n) [[unlikely]] Die(absl::StrCat("alloc_pages_bulk(", n, ") populated only ", got));
  }
};

// The same allocations, freed with the trusted free (__free_pages_trusted(): the caller's books
// exclude double frees, as this loop's do): the order-0 pair without the free's CAS.
struct PhysmemTrustedBackend : PhysmemBackend {
  static void Free(void* p, unsigned order) {
    absl::Status s = g_pa->__free_pages_trusted(static_cast<Page*>(p), order);
    if (!s.ok()) [[unlikely]] DieFreeRefused("__free_pages_trusted", order, s);
  }
};

template <bool kNatural>
struct MallocBackend {
  static void* Alloc(unsigned order) {
    const size_t size = size_t{1} << (order + kPageShift);
    void* p = std::aligned_alloc(kNatural ? size : size_t{1} << kPageShift, size);
    if (p == nullptr) [[unlikely]] Die(absl::StrCat("aligned_alloc of ", size, " bytes failed"));
    return p;
  }
  static void Free(void* p, unsigned /*order*/) { std::free(p); }
};

// ---------------------------------------------------------------------------------------------
// Per-thread bookkeeping shared by all workloads.

long ThreadMinorFaults() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_minflt;
}

// Reports the pairs this thread did: items_per_second (summed over threads, per second of wall
// time because every benchmark uses real time), pairs_per_iteration (to turn the per-iteration
// CPU time into CPU time per pair) and the minor faults per pair that the warm-up did not prevent.
void ReportPairs(benchmark::State& state, int64_t pairs_per_iteration, long faults) {
  const int64_t pairs = state.iterations() * pairs_per_iteration;
  state.SetItemsProcessed(pairs);
  state.counters["pairs_per_iteration"] =
      benchmark::Counter(static_cast<double>(pairs_per_iteration), benchmark::Counter::kAvgThreads);
  state.counters["minflt_per_pair"] =
      benchmark::Counter(pairs > 0 ? static_cast<double>(faults) / static_cast<double>(pairs) : 0.0,
                         benchmark::Counter::kAvgThreads);
}

// In a multi-threaded run, pins thread i to the i-th allowed CPU (modulo their number) for its
// lifetime, then restores the thread's CPU mask (thread 0 is the main thread, which runs the next
// benchmark too). Why: left alone, the scheduler often kept two benchmark threads on one CPU for
// most of a repetition (sched_getcpu() samples: 8 of 12 repetitions of the no-allocation control,
// 1 of 12 of physmem), and the 2-thread numbers then measured that placement, not the allocators.
// With 4 threads, two share each CPU by construction.
class ScopedPinThread {
 public:
  explicit ScopedPinThread(const benchmark::State& state) {
    if (state.threads() <= 1 || sched_getaffinity(0, sizeof(old_), &old_) != 0) return;
    const int n = CPU_COUNT(&old_);
    if (n <= 0) return;
    int want = state.thread_index() % n;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &old_) || want-- != 0) continue;
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pinned_ = sched_setaffinity(0, sizeof(one), &one) == 0;  // 0: the calling thread
      break;
    }
  }
  ~ScopedPinThread() {
    if (pinned_) sched_setaffinity(0, sizeof(old_), &old_);
  }
  ScopedPinThread(const ScopedPinThread&) = delete;
  ScopedPinThread& operator=(const ScopedPinThread&) = delete;

 private:
  cpu_set_t old_{};
  bool pinned_ = false;
};

// ---------------------------------------------------------------------------------------------
// Workloads.

// One alloc+free pair of `order` per iteration; on several threads, each does its own pairs, each
// thread pinned to a CPU (ScopedPinThread).
template <class B>
void BM_Pair(benchmark::State& state) {
  const unsigned order = static_cast<unsigned>(state.range(0));
  ScopedPinThread pin(state);
  B::Free(B::Alloc(order), order);  // warm-up, untimed
  const long faults0 = ThreadMinorFaults();
  for (auto _ : state) {
    void* p = B::Alloc(order);
    benchmark::DoNotOptimize(p);
    B::Free(p, order);
  }
  ReportPairs(state, 1, ThreadMinorFaults() - faults0);
}

// Allocate n order-0 pages, then free them all in allocation order. Time per pair = time / n.
template <class B>
void BM_Batch(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::vector<void*> blocks(n);
  auto pass = [&] {
    for (int i = 0; i < n; ++i) blocks[i] = B::Alloc(0);
    benchmark::DoNotOptimize(blocks.data());
    benchmark::ClobberMemory();
    for (int i = 0; i < n; ++i) B::Free(blocks[i], 0);
  };
  pass();  // warm-up, untimed: brings the largest working set of this benchmark in
  const long faults0 = ThreadMinorFaults();
  for (auto _ : state) pass();
  ReportPairs(state, n, ThreadMinorFaults() - faults0);
}

// The same with alloc_pages_bulk() for the allocation half (physmem only: malloc has no bulk call).
void BM_BatchBulk(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::vector<void*> blocks(n);
  auto pass = [&] {
    std::fill(blocks.begin(), blocks.end(), nullptr);
    PhysmemBackend::AllocBulk(blocks.data(), n);
    benchmark::ClobberMemory();
    for (int i = 0; i < n; ++i) PhysmemBackend::Free(blocks[i], 0);
  };
  pass();
  const long faults0 = ThreadMinorFaults();
  for (auto _ : state) pass();
  ReportPairs(state, n, ThreadMinorFaults() - faults0);
}

// Steady state: a pool of n live blocks of random orders 0..3; each step frees a random live
// block and allocates a new one of a random order in its slot. The random choices come from a
// precomputed table (fixed seed), so the generator is not timed and every back end sees the same
// sequence.
template <class B>
void BM_Steady(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  constexpr uint32_t kSteps = 1u << 16;
  struct Step {
    uint32_t slot;
    uint32_t order;
  };
  std::vector<Step> steps(kSteps);
  std::mt19937 rng(20240602);
  std::uniform_int_distribution<uint32_t> slot_dist(0, n - 1), order_dist(0, kSteadyMaxOrder);
  for (Step& s : steps) s = Step{slot_dist(rng), order_dist(rng)};
  struct Live {
    void* p;
    unsigned order;
  };
  // Warm-up, untimed: the largest working set this pool can reach (every block order 3) once.
  {
    std::vector<void*> big(n);
    for (uint32_t i = 0; i < n; ++i) big[i] = B::Alloc(kSteadyMaxOrder);
    benchmark::ClobberMemory();
    for (uint32_t i = 0; i < n; ++i) B::Free(big[i], kSteadyMaxOrder);
  }
  std::vector<Live> pool(n);
  for (Live& l : pool) {
    l.order = order_dist(rng);
    l.p = B::Alloc(l.order);
  }
  const long faults0 = ThreadMinorFaults();
  uint32_t i = 0;
  for (auto _ : state) {
    const Step s = steps[i++ & (kSteps - 1)];
    Live& l = pool[s.slot];
    B::Free(l.p, l.order);
    // DoNotOptimize on a local, not on the pool's slot: with DoNotOptimize(l.p) (Debian's
    // benchmark 1.7.1: `asm("" : "+m,r"(value))` for a non-const lvalue under GCC), g++ 12 -O3
    // (the Release build) lost the slot's new pointer: the slot kept the block just freed, the
    // new one leaked, and the final free was refused as "not allocated" (the allocator had
    // returned a fresh block, printed at the call). -O2 kept it; so does this form at -O3.
    void* fresh = B::Alloc(s.order);
    benchmark::DoNotOptimize(fresh);
    l.p = fresh;
    l.order = s.order;
  }
  const long faults = ThreadMinorFaults() - faults0;
  for (Live& l : pool) B::Free(l.p, l.order);
  ReportPairs(state, 1, faults);
}

// Control: no allocation, only a chain of dependent multiply-adds per iteration (~50 ns). On two
// idle cores its 2-thread throughput is 2x its 1-thread throughput; whatever it gets is the
// scaling the machine itself allowed while the allocators were measured (other processes share
// the cores).
void BM_ControlSpin(benchmark::State& state) {
  ScopedPinThread pin(state);
  uint64_t x = static_cast<uint64_t>(state.thread_index()) + 1;
  for (auto _ : state) {
    for (int i = 0; i < 32; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
    benchmark::DoNotOptimize(x);
  }
  state.SetItemsProcessed(state.iterations());
}

// Second control, bound by instruction throughput instead of latency: eight independent chains
// of adds and xors plus an L1 load and store per step. Two threads on two CPUs that share one
// physical core (SMT siblings on the host) compete for its execution units here, while the
// latency-bound control_spin hardly notices; the pair of controls tells the two cases apart.
void BM_ControlAlu(benchmark::State& state) {
  ScopedPinThread pin(state);
  alignas(64) uint64_t buf[512] = {};
  uint64_t a = 1, b = 2, c = 3, d = 4, e = 5, f = 6, g = 7, h = 8, i = 0;
  for (auto _ : state) {
    for (int k = 0; k < 32; ++k, ++i) {
      a += buf[i & 511];
      b ^= a;
      c += b;
      d ^= c;
      e += i;
      f ^= e;
      g += f;
      h ^= g;
      buf[(i * 7) & 511] = h;
      asm volatile("" : "+r"(a), "+r"(b), "+r"(c), "+r"(d), "+r"(e), "+r"(f), "+r"(g), "+r"(h));
    }
  }
  benchmark::DoNotOptimize(buf);
  state.SetItemsProcessed(state.iterations());
}

// Third control: the checked free's claim alone, one uncontended compare-and-swap (lock cmpxchg)
// of a word in L1 per iteration, as __free_pages() and the kernel's put_page_testzero() each do
// once per free. The floor under any checked pair that must refuse a racing double free.
void BM_ControlCas(benchmark::State& state) {
  ScopedPinThread pin(state);
  alignas(64) std::atomic<uint64_t> word{0};
  uint64_t expected = 0;
  for (auto _ : state) {
    word.compare_exchange_strong(expected, expected + 1, std::memory_order_seq_cst);
    ++expected;
  }
  benchmark::DoNotOptimize(expected);
  state.SetItemsProcessed(state.iterations());
  state.counters["pairs_per_iteration"] = 1;  // one CAS; scripts/bench.sh then reports CPU ns per CAS
}

template <class B>
void RegisterAll(bool physmem) {
  benchmark::RegisterBenchmark("control_spin", BM_ControlSpin)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();
  benchmark::RegisterBenchmark("control_alu", BM_ControlAlu)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();
  benchmark::RegisterBenchmark("control_cas", BM_ControlCas)->Threads(1)->UseRealTime();
  benchmark::RegisterBenchmark("order0_pair", BM_Pair<B>)->Arg(0)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();
  benchmark::RegisterBenchmark("order_pair", BM_Pair<B>)->DenseRange(1, kMaxOrder)->UseRealTime();
  for (int n : kBatchSizes) benchmark::RegisterBenchmark("batch", BM_Batch<B>)->Arg(n)->UseRealTime();
  if (physmem) {
    benchmark::RegisterBenchmark("order0_pair_trusted", BM_Pair<PhysmemTrustedBackend>)
        ->Arg(0)
        ->Threads(1)
        ->Threads(2)
        ->Threads(4)
        ->UseRealTime();
    for (int n : kBatchSizes) benchmark::RegisterBenchmark("batch_bulk", BM_BatchBulk)->Arg(n)->UseRealTime();
  }
  for (int n : kSteadyPoolSizes) benchmark::RegisterBenchmark("steady_random", BM_Steady<B>)->Arg(n)->UseRealTime();
}

// ---------------------------------------------------------------------------------------------
// Set-up and the start-up measurement.

uint64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

PageAllocatorOptions Options(uint64_t mem_bytes, bool pcp, bool thread_pages = false) {
  absl::StatusOr<Target> target = BuiltinTarget("x86_64", mem_bytes);
  if (!target.ok()) Die(absl::StrCat("BuiltinTarget: ", target.status().ToString()));
  PageAllocatorOptions o;
  o.target = *std::move(target);
  o.arena_backing = ArenaOptions::Backing::kBest;
  o.pcp_enabled = pcp;  // pcp_batch / pcp_high stay 0: the kernel's defaults
  o.thread_pages = thread_pages;
  return o;
}

// Which malloc the process actually runs with, told by a symbol only that allocator exports, so
// the script can check that LD_PRELOAD took effect.
std::string MallocImplementation() {
  if (dlsym(RTLD_DEFAULT, "mallctl") != nullptr) return "jemalloc";
  if (dlsym(RTLD_DEFAULT, "tc_malloc") != nullptr) return "tcmalloc";
  if (dlsym(RTLD_DEFAULT, "mi_malloc") != nullptr) return "mimalloc";
  return "glibc";
}

// Create() of a large target, never touching its arena: wall time, RSS before/after, residency.
int RunStartup(uint64_t gib) {
  PageAllocatorOptions o = Options(gib * kGiB, /*pcp=*/true);
  const uint64_t rss_before = RssBytes();
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(std::move(o));
  const auto t1 = std::chrono::steady_clock::now();
  if (!pa.ok()) Die(absl::StrCat("PageAllocator::Create(", gib, " GiB): ", pa.status().ToString()));
  const uint64_t rss_after = RssBytes();
  absl::StatusOr<uint64_t> resident = (*pa)->arena().ResidentBytes();
  if (!resident.ok()) Die(absl::StrCat("ResidentBytes: ", resident.status().ToString()));
  std::string describe = (*pa)->arena().Describe();
  for (char& c : describe) {
    if (c == '"' || c == '\\') c = '\'';  // keep the JSON string valid
  }
  std::printf(
      "{\"gib\": %llu, \"create_seconds\": %.6f, \"rss_before_bytes\": %llu, \"rss_after_bytes\": %llu, "
      "\"arena_bytes\": %llu, \"total_ram_bytes\": %llu, \"arena_resident_bytes\": %llu, \"arena\": \"%s\"}\n",
      static_cast<unsigned long long>(gib), std::chrono::duration<double>(t1 - t0).count(),
      static_cast<unsigned long long>(rss_before), static_cast<unsigned long long>(rss_after),
      static_cast<unsigned long long>((*pa)->arena().size()),
      static_cast<unsigned long long>((*pa)->target().total_ram_bytes()),
      static_cast<unsigned long long>(*resident), describe.c_str());
  return 0;
}

// After the physmem benchmarks: the books must balance and nothing may be left allocated.
void CheckAllocatorClean() {
  absl::StatusOr<PageCensus> c = g_pa->Validate();
  if (!c.ok()) Die(absl::StrCat("Validate() after the benchmarks: ", c.status().ToString()));
  if (c->allocated_pages != 0) {
    Die(absl::StrCat("Validate() after the benchmarks: ", c->allocated_pages, " pages still allocated"));
  }
}

int Main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  std::string mode;
  uint64_t startup_gib = 64;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--mode=")) {
      mode = a.substr(7);
    } else if (a.starts_with("--startup_gib=")) {
      startup_gib = std::strtoull(argv[i] + 14, nullptr, 10);
    } else {
      Die(absl::StrCat("unknown argument '", std::string(a),
                       "'; expected --mode=physmem|physmem_thread|physmem_nopcp|malloc_page|malloc_natural|startup "
                       "[--startup_gib=N] and --benchmark_* flags"));
    }
  }
  if (mode == "startup") return RunStartup(startup_gib);

  std::unique_ptr<PageAllocator> pa;
  if (mode == "physmem" || mode == "physmem_thread" || mode == "physmem_nopcp") {
    const bool pcp = mode != "physmem_nopcp";
    absl::StatusOr<std::unique_ptr<PageAllocator>> created =
        PageAllocator::Create(Options(2 * kGiB, pcp, /*thread_pages=*/mode == "physmem_thread"));
    if (!created.ok()) Die(absl::StrCat("PageAllocator::Create: ", created.status().ToString()));
    pa = *std::move(created);
    g_pa = pa.get();
    g_pa->arena().Prefault();  // no page fault of the arena is ever timed
    if (pcp && !g_pa->pcp_active()) Die("pcp requested but not active (rseq unusable in this process?)");
    benchmark::AddCustomContext("arena", g_pa->arena().Describe());
    benchmark::AddCustomContext("pcp_active", g_pa->pcp_active() ? "true" : "false");
    for (const ZoneStats& z : g_pa->Stats()) {
      if (!z.populated) continue;
      benchmark::AddCustomContext(absl::StrCat("zone_", std::string(zone_name(z.type))),
                                  absl::StrCat("managed ", z.managed_pages, " pcp batch ", z.pcp_batch, " high ",
                                               z.pcp_high));
    }
    RegisterAll<PhysmemBackend>(/*physmem=*/true);
  } else if (mode == "malloc_page") {
    RegisterAll<MallocBackend<false>>(/*physmem=*/false);
  } else if (mode == "malloc_natural") {
    RegisterAll<MallocBackend<true>>(/*physmem=*/false);
  } else {
    Die(absl::StrCat("--mode='", mode, "'; expected physmem, physmem_thread, physmem_nopcp, malloc_page, malloc_natural or startup"));
  }
  benchmark::AddCustomContext("mode", mode);
  benchmark::AddCustomContext("malloc", MallocImplementation());
  const char* preload = std::getenv("LD_PRELOAD");
  benchmark::AddCustomContext("ld_preload", preload ? preload : "");

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (g_pa != nullptr) CheckAllocatorClean();
  return 0;
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) { return physmem::Main(argc, argv); }
