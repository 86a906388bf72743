#include "allocator/rseq.h"

#include <sched.h>
#include <sys/sysinfo.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace physmem {
namespace {

// True when glibc was told not to register rseq (the per_cpu_ring test re-runs binaries so).
bool RseqDisabledByEnvironment() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables != nullptr && std::strstr(tunables, "glibc.pthread.rseq=0") != nullptr;
}

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

bool PinSelfTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

class ScopedAffinity {
 public:
  ScopedAffinity() : saved_(AllowedCpus()) {}
  ~ScopedAffinity() {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu : saved_) CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
  }

 private:
  std::vector<int> saved_;
};

// Whether glibc is expected to have registered an area for our threads.
bool RseqExpected() { return PHYSMEM_RSEQ_X86_64 && !RseqDisabledByEnvironment(); }

TEST(Rseq, GlibcRegistersAnAreaUnlessToldNotTo) { EXPECT_EQ(RseqRegistered(), RseqExpected()); }

TEST(Rseq, NewThreadsGetAnAreaToo) {
  bool registered = !RseqRegistered();
  std::thread([&] { registered = RseqRegistered(); }).join();
  EXPECT_EQ(registered, RseqRegistered());
}

TEST(Rseq, UsableSizeCoversTheFieldsWeUse) {
  if (RseqExpected()) {
    EXPECT_GE(RseqUsableSize(), kRseqRequiredSize);
  } else {
    EXPECT_EQ(RseqUsableSize(), 0u);
  }
}

TEST(Rseq, CpuIdFollowsPinning) {
  ScopedAffinity restore;
  for (int cpu : AllowedCpus()) {
    ASSERT_TRUE(PinSelfTo(cpu));
    EXPECT_EQ(RseqCpuId(), cpu);
    EXPECT_EQ(sched_getcpu(), cpu);
  }
}

TEST(Rseq, NumPossibleCpusCoversEveryCpuWeMayRunOn) {
  const int possible = NumPossibleCpus();
  EXPECT_GE(possible, get_nprocs_conf());
  for (int cpu : AllowedCpus()) EXPECT_LT(cpu, possible);
}

TEST(Rseq, FenceCpuSucceedsOnEveryPossibleCpu) {
  ASSERT_TRUE(MembarrierRseqReady());
  for (int cpu = 0; cpu < NumPossibleCpus(); ++cpu) EXPECT_EQ(FenceCpu(cpu), 0) << "cpu " << cpu;
}

#if PHYSMEM_RSEQ_X86_64
// One critical section that publishes which attempt it is in, spins until *stop is set, then
// commits that attempt number to *done. An abort restarts it as the next attempt.
void SpinInCriticalSection(uint32_t* inside, const uint32_t* stop, uint32_t* done) {
  struct rseq* const rs = RseqArea();
  uint32_t attempt = 0;
restart:
  ++attempt;
  // clang-format off
  asm goto(
      PHYSMEM_RSEQ_DESCRIPTOR
      "leaq 3b(%%rip), %%rax\n\t"
      "movq %%rax, %c[cs_off](%[rs])\n\t"
      "1:\n\t"
      "movl %[attempt], (%[inside])\n\t"
      "5:\n\t"
      "pause\n\t"
      "cmpl $0, (%[stop])\n\t"
      "je 5b\n\t"
      "movl %[attempt], (%[done])\n\t"  // commit
      "2:\n\t"
      PHYSMEM_RSEQ_ABORT("restart")
      :
      : [rs] "r"(rs), [inside] "r"(inside), [stop] "r"(stop), [done] "r"(done),
        [attempt] "r"(attempt), [cs_off] "i"(kRseqCsOffset)
      : "memory", "cc", "rax"
      : restart);
  // clang-format on
}

// The guarantee DrainRemote relies on: once FenceCpu(cpu) returns, a section that was running on
// `cpu` cannot commit any more; it restarts. Without the fence the spinner would finish the
// attempt it was in when the main thread looked (unless a preemption happened to hit it).
TEST(Rseq, FenceCpuRestartsTheSectionRunningOnThatCpu) {
  if (RseqDisabledByEnvironment()) GTEST_SKIP() << "rseq disabled by GLIBC_TUNABLES";
  ASSERT_TRUE(RseqRegistered());
  ASSERT_TRUE(MembarrierRseqReady());
  const std::vector<int> cpus = AllowedCpus();
  if (cpus.size() < 2) GTEST_SKIP() << "needs two CPUs";
  ScopedAffinity restore;
  ASSERT_TRUE(PinSelfTo(cpus[0]));
  for (int round = 0; round < 20; ++round) {
    uint32_t inside = 0, stop = 0, done = 0;
    bool pinned = true;
    std::thread spinner([&] {
      if (PinSelfTo(cpus[1])) {
        SpinInCriticalSection(&inside, &stop, &done);
      } else {
        pinned = false;
        __atomic_store_n(&inside, ~0u, __ATOMIC_RELEASE);
      }
    });
    while (__atomic_load_n(&inside, __ATOMIC_ACQUIRE) == 0) std::this_thread::yield();
    const uint32_t attempt_seen = __atomic_load_n(&inside, __ATOMIC_ACQUIRE);
    if (attempt_seen == ~0u) {
      spinner.join();
      ASSERT_TRUE(pinned) << "cannot pin to cpu " << cpus[1];
    }
    ASSERT_EQ(FenceCpu(cpus[1]), 0);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    spinner.join();
    EXPECT_GT(done, attempt_seen) << "round " << round;
  }
}
#endif

}  // namespace
}  // namespace physmem
