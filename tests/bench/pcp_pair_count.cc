// pcp_pair_count: runs a fixed number of order-0 alloc+free pairs through the per-CPU lists, for
// counting the instructions of one pair with callgrind (a measuring tool, not a test: it asserts
// nothing beyond "every call succeeded" and "every pair went through the per-CPU lists").
//
// Why a driver of its own: this VM has no hardware counters (perf stat cannot count
// instructions), and under valgrind glibc cannot register rseq, so the per-CPU lists stay off and
// callgrind would count the zone-lock path instead. Valgrind runs one thread at a time and never
// preempts inside our sections, so for a single thread the sections may run as if rseq were
// registered: the link wraps RseqRegistered() and MembarrierRseqReady() to say yes and main() sets
// cpu_id to 0 in glibc's (unregistered) area. Nothing else changes: the allocator's code is the
// Release library's, instruction for instruction. Never run this outside valgrind with threads.
//
// CMakeLists.txt builds it with the benchmarks (so it keeps compiling), linked with
// --wrap=RseqRegistered/MembarrierRseqReady (their mangled names) to the wrappers below. Count:
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build-bench pcp_pair_count
//   for n in 10000 20000; do
//     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n build-bench/pcp_pair_count checked $n
//     callgrind_annotate --inclusive=yes /tmp/cg.$n | grep RunPairs
//   done
// Instructions per pair = (Ir(20000) - Ir(10000)) / 10000: the difference drops the warm-up and
// its one refill from the buddy (the loop's own ~5 instructions and the Status check stay in).
// Configured with -DCMAKE_CXX_FLAGS=-g too, `callgrind_annotate --auto=yes` shows them by source line.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "allocator/gfp.h"
#include "allocator/page_allocator.h"
#include "allocator/rseq.h"
#include "allocator/target.h"

extern "C" bool __wrap__ZN7physmem14RseqRegisteredEv() { return true; }
extern "C" bool __wrap__ZN7physmem19MembarrierRseqReadyEv() { return true; }
extern "C" bool __wrap__ZN7physmem24MembarrierExpeditedReadyEv() { return true; }

namespace physmem {
namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "pcp_pair_count: %s\n", what);
  std::exit(1);
}

template <bool kTrusted>
[[gnu::noinline]] void RunPairs(PageAllocator& pa, long pairs) {
  for (long i = 0; i < pairs; ++i) {
    Page* p = pa.alloc_pages(GFP_KERNEL, 0);
    if (p == nullptr) [[unlikely]] Die("alloc_pages failed");
    asm volatile("" : : "r"(p) : "memory");
    const absl::Status s = kTrusted ? pa.__free_pages_trusted(p, 0) : pa.__free_pages(p, 0);
    if (!s.ok()) [[unlikely]] Die("free refused");
  }
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) {
  using namespace physmem;
  if ((argc != 3 && argc != 4) || (std::strcmp(argv[1], "checked") != 0 && std::strcmp(argv[1], "trusted") != 0) ||
      (argc == 4 && std::strcmp(argv[3], "thread_pages") != 0)) {
    Die("usage: pcp_pair_count checked|trusted PAIRS [thread_pages]");
  }
  const bool thread_pages = argc == 4;
  const bool trusted = std::strcmp(argv[1], "trusted") == 0;
  const long pairs = std::atol(argv[2]);
#if PHYSMEM_RSEQ_X86_64
  // glibc leaves -2 here when the kernel (or valgrind) refused its registration.
  if (static_cast<int32_t>(RseqArea()->cpu_id) < 0) RseqArea()->cpu_id = 0;
#endif
  absl::StatusOr<Target> target = BuiltinTarget("x86_64", uint64_t{2} << 30);
  if (!target.ok()) Die("BuiltinTarget");
  PageAllocatorOptions o;
  o.target = *std::move(target);
  o.thread_pages = thread_pages;
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(std::move(o));
  if (!pa.ok()) Die("Create");
  // Warm-up: the first pair refills the list from the buddy.
  if (trusted) {
    RunPairs<true>(**pa, 100);
    RunPairs<true>(**pa, pairs);
  } else {
    RunPairs<false>(**pa, 100);
    RunPairs<false>(**pa, pairs);
  }
  // Every pair must have gone through the per-CPU lists, or the count measured another path.
  uint64_t hits = 0;
  for (const ZoneStats& z : (*pa)->Stats()) {
    for (const PcpCpuStats& c : z.pcp) hits += c.hits;
    hits += z.thread_pages.hits;
    if (z.thread_pages.hits) std::printf("zone %s: thread-cache hits %lu\n", std::string(zone_name(z.type)).c_str(), static_cast<unsigned long>(z.thread_pages.hits));
  }
  std::printf("%s pairs %ld: pcp hits %lu\n", argv[1], pairs, static_cast<unsigned long>(hits));
  return hits >= static_cast<uint64_t>(pairs) ? 0 : 1;
}
