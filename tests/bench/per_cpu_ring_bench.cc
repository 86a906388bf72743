// Microbenchmark: one push + one pop on the current CPU's list, with PerCpuRings (rseq) and the
// alternatives PERCPU.md weighs, all in the same run; prints ns per pair and ratios against the
// rseq ring. Single-threaded: it measures the fast path's own cost, not contention.
//
//   per_cpu_ring_bench --benchmark_repetitions=5 [--benchmark_min_time=0.5]
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "allocator/per_cpu_ring.h"
#include "allocator/rseq.h"
#include "benchmark/benchmark.h"

namespace physmem {
namespace {

constexpr uint32_t kCapacity = 256;

// --- PerCpuRings: one rseq section per op, exact counters committed with the op. ---
void BM_RseqRing(benchmark::State& state) {
  static PerCpuRings rings(NumPossibleCpus(), 1, kCapacity);
  if (!rings.enabled()) {
    state.SkipWithError("rseq fast path is off (GLIBC_TUNABLES? membarrier?)");
    return;
  }
  uint32_t item = 1;
  for (auto _ : state) {
    bool ok = rings.PushHot(0, item, kCapacity);
    ok &= rings.PopHot(0, &item);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(item);
  }
}
BENCHMARK(BM_RseqRing);

// --- Per-thread cache: the floor (no sharing at all, memory stranded per thread). ---
struct ThreadCache {
  uint32_t items[kCapacity];
  uint32_t count = 0;
};

void BM_ThreadLocalArray(benchmark::State& state) {
  static thread_local ThreadCache cache;
  uint32_t item = 1;
  for (auto _ : state) {
    bool ok = false;
    if (cache.count < kCapacity) {
      cache.items[cache.count++] = item;
      ok = true;
    }
    if (cache.count > 0) item = cache.items[--cache.count];
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(item);
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_ThreadLocalArray);

// --- sched_getcpu() + per-CPU std::mutex: correct under migration because the lock protects
// the list, not the CPU id. ---
struct alignas(128) LockedList {
  std::mutex mu;
  uint32_t items[kCapacity];
  uint32_t count = 0;
};

void BM_SchedGetcpuMutex(benchmark::State& state) {
  static std::vector<LockedList> lists(NumPossibleCpus());
  uint32_t item = 1;
  for (auto _ : state) {
    bool ok = false;
    {
      LockedList& l = lists[sched_getcpu()];
      std::lock_guard<std::mutex> lock(l.mu);
      if (l.count < kCapacity) {
        l.items[l.count++] = item;
        ok = true;
      }
    }
    {
      LockedList& l = lists[sched_getcpu()];
      std::lock_guard<std::mutex> lock(l.mu);
      if (l.count > 0) item = l.items[--l.count];
    }
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(item);
  }
}
BENCHMARK(BM_SchedGetcpuMutex);

// --- Per-CPU Treiber stack, 64-bit tagged CAS: head = index | tag << 32 (the tag defeats ABA). ---
constexpr uint32_t kNil = ~0u;

struct alignas(128) TreiberStack {
  std::atomic<uint64_t> head{kNil};
};

struct TreiberPool {
  explicit TreiberPool(int nr_cpus) : stacks(nr_cpus), next(kCapacity) {}
  std::vector<TreiberStack> stacks;
  std::vector<std::atomic<uint32_t>> next;  // next[index] = index below it on its stack
};

void TreiberPush(TreiberPool& pool, uint32_t index) {
  std::atomic<uint64_t>& head = pool.stacks[RseqCpuId()].head;
  uint64_t old = head.load(std::memory_order_relaxed);
  uint64_t desired;
  do {
    pool.next[index].store(static_cast<uint32_t>(old), std::memory_order_relaxed);
    desired = ((old >> 32) + 1) << 32 | index;
  } while (!head.compare_exchange_weak(old, desired, std::memory_order_release, std::memory_order_relaxed));
}

bool TreiberPop(TreiberPool& pool, uint32_t* index) {
  std::atomic<uint64_t>& head = pool.stacks[RseqCpuId()].head;
  uint64_t old = head.load(std::memory_order_acquire);
  uint64_t desired;
  do {
    if (static_cast<uint32_t>(old) == kNil) return false;
    const uint32_t below = pool.next[static_cast<uint32_t>(old)].load(std::memory_order_relaxed);
    desired = ((old >> 32) + 1) << 32 | below;
  } while (!head.compare_exchange_weak(old, desired, std::memory_order_acquire, std::memory_order_acquire));
  *index = static_cast<uint32_t>(old);
  return true;
}

void BM_TreiberTaggedCas(benchmark::State& state) {
  static TreiberPool pool(NumPossibleCpus());
  uint32_t item = 1;
  for (auto _ : state) {
    TreiberPush(pool, item);
    const bool ok = TreiberPop(pool, &item);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(item);
  }
}
BENCHMARK(BM_TreiberTaggedCas);

#if PHYSMEM_RSEQ_X86_64
// --- The alternative to committing the exact counters with the op: a second tiny section that
// adds 1 to a per-CPU counter (its commit is the add itself). Measured alone; the ring would pay
// it once per op, i.e. twice per pair. ---
struct alignas(128) PerCpuCounter {
  uint64_t value = 0;
};

bool RseqPerCpuIncrement(PerCpuCounter* counters, uint32_t nr_cpus) {
restart:
  // clang-format off
  asm goto(
      PHYSMEM_RSEQ_DESCRIPTOR
      "leaq 3b(%%rip), %%rax\n\t"
      "movq %%rax, %c[cs_off](%[rs])\n\t"
      "1:\n\t"
      "movl %c[cpu_off](%[rs]), %%eax\n\t"
      "cmpl %[ncpu], %%eax\n\t"
      "jae %l[fail]\n\t"
      "shlq $7, %%rax\n\t"  // sizeof(PerCpuCounter) == 128
      "addq $1, (%[counters], %%rax)\n\t"  // commit
      "2:\n\t"
      PHYSMEM_RSEQ_ABORT("restart")
      :
      : [rs] "r"(RseqArea()), [counters] "r"(counters), [ncpu] "rm"(nr_cpus),
        [cs_off] "i"(kRseqCsOffset), [cpu_off] "i"(kRseqCpuIdOffset)
      : "memory", "cc", "rax"
      : restart, fail);
  // clang-format on
  return true;
fail:
  return false;
}
static_assert(sizeof(PerCpuCounter) == 128);

void BM_RseqCounterSection(benchmark::State& state) {
  static std::vector<PerCpuCounter> counters(NumPossibleCpus());
  if (!RseqRegistered()) {
    state.SkipWithError("rseq not registered");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(RseqPerCpuIncrement(counters.data(), counters.size()));
  }
}
BENCHMARK(BM_RseqCounterSection);
#endif

// Console output as usual, plus a table of ns per pair and ratios to the rseq ring at the end.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  RatioReporter() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_Defaults : OO_Tabular) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred || run.run_type != Run::RT_Iteration || run.iterations == 0) continue;
      Sample& s = samples_[run.run_name.function_name];
      const double ns = run.real_accumulated_time * 1e9 / static_cast<double>(run.iterations);
      s.sum += ns;
      s.best = s.n == 0 ? ns : std::min(s.best, ns);
      s.n += 1;
    }
  }

  // Best of the repetitions as well as the mean: the development machines are shared, and the
  // best run is the one least disturbed by other processes.
  void PrintRatios() const {
    const auto base = samples_.find("BM_RseqRing");
    if (base == samples_.end()) return;
    std::printf("\n%-24s %10s %10s %14s\n", "push+pop pair", "best ns", "mean ns", "best/rseq");
    for (const auto& [name, sample] : samples_) {
      std::printf("%-24s %10.2f %10.2f %14.2f\n", name.c_str(), sample.best, sample.mean(),
                  sample.best / base->second.best);
    }
    std::printf("(BM_RseqCounterSection is one counter section alone, not a pair.)\n");
  }

 private:
  struct Sample {
    double sum = 0;
    double best = 0;
    int n = 0;
    double mean() const { return n ? sum / n : 0; }
  };
  std::map<std::string, Sample> samples_;
};

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  physmem::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  benchmark::Shutdown();
  return 0;
}
