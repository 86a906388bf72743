// Multi-threaded stress: more threads than CPUs (8 on 2 cores), each allocating and freeing
// random orders with its own owner id, while threads hop between CPUs (sched_setaffinity) and one
// thread keeps draining every CPU's lists. A shared ownership bitmap, claimed with fetch_or on
// every allocation, catches any page handed to two threads at once. Runs under TSan in CI.
// Ends with every page free and Validate() clean.
#include <sched.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

class OwnershipBitmap {
 public:
  explicit OwnershipBitmap(uint32_t pages) : words_((pages + 63) / 64) {}
  // Returns false if any page of the block was already owned.
  bool Claim(uint32_t first, uint32_t n) {
    bool ok = true;
    for (uint32_t i = first; i < first + n; ++i) {
      const uint64_t bit = uint64_t{1} << (i % 64);
      ok &= (words_[i / 64].fetch_or(bit, std::memory_order_acq_rel) & bit) == 0;
    }
    return ok;
  }
  bool Release(uint32_t first, uint32_t n) {
    bool ok = true;
    for (uint32_t i = first; i < first + n; ++i) {
      const uint64_t bit = uint64_t{1} << (i % 64);
      ok &= (words_[i / 64].fetch_and(~bit, std::memory_order_acq_rel) & bit) != 0;
    }
    return ok;
  }

 private:
  std::vector<std::atomic<uint64_t>> words_;
};

void HopCpu(std::mt19937_64& rng) {
  const int ncpu = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (rng() % 3 == 0) {
    for (int c = 0; c < ncpu; ++c) CPU_SET(c, &set);  // unpinned
  } else {
    CPU_SET(static_cast<int>(rng() % ncpu), &set);
  }
  sched_setaffinity(0, sizeof(set), &set);  // best effort: a failure only means less migration
}

struct StressParam {
  const char* name;
  bool pcp;
};

class Stress : public ::testing::TestWithParam<StressParam> {};

TEST_P(Stress, ConcurrentAllocFreeNeverDoubleHandsAPage) {
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallI386(), GetParam().pcp);
  o.pcp_batch = 7;
  o.pcp_high = 64;
  auto created = PageAllocator::Create(std::move(o));
  ASSERT_TRUE(created.ok()) << created.status();
  PageAllocator& pa = **created;
  OwnershipBitmap owned(pa.mem_map().nr_pages());
  constexpr int kThreads = 8;
  constexpr int kOpsPerThread = 40000;
  std::atomic<int> double_handed{0}, bad_frees{0}, running{kThreads};
  std::atomic<uint64_t> total_allocs{0};

  auto worker = [&](int t) {
    std::mt19937_64 rng(1000 + t);
    const uint32_t owner = 100 + t;
    const gfp_t masks[] = {GFP_KERNEL, GFP_ATOMIC, GFP_HIGHUSER, GFP_DMA, GFP_KERNEL | __GFP_ZERO};
    struct Held { Page* page; unsigned order; };
    std::vector<Held> held;
    for (int i = 0; i < kOpsPerThread; ++i) {
      if (i % 2000 == 0) HopCpu(rng);
      if (held.empty() || (rng() % 100 < 55 && held.size() < 200)) {
        const unsigned order = rng() % 8 == 0 ? 4 + rng() % 3 : rng() % 4;
        Page* p = pa.alloc_pages(masks[rng() % std::size(masks)], order, owner);
        if (p == nullptr) continue;
        total_allocs.fetch_add(1, std::memory_order_relaxed);
        if (!owned.Claim(pa.mem_map().index_of(p), 1u << order)) double_handed.fetch_add(1);
        // Touch the block's first bytes: a page handed out twice would also race here.
        *reinterpret_cast<volatile uint32_t*>(pa.page_host_address(p)) = owner;
        held.push_back({p, order});
      } else {
        const size_t k = rng() % held.size();
        const Held h = held[k];
        held[k] = held.back();
        held.pop_back();
        if (*reinterpret_cast<volatile uint32_t*>(pa.page_host_address(h.page)) != owner) double_handed.fetch_add(1);
        if (!owned.Release(pa.mem_map().index_of(h.page), 1u << h.order)) double_handed.fetch_add(1);
        if (!pa.__free_pages(h.page, h.order, owner).ok()) bad_frees.fetch_add(1);
        // A second free of the same block must be refused.
        if (rng() % 64 == 0 && pa.__free_pages(h.page, h.order, owner).ok()) double_handed.fetch_add(1);
      }
    }
    for (const Held& h : held) {
      owned.Release(pa.mem_map().index_of(h.page), 1u << h.order);
      if (!pa.__free_pages(h.page, h.order, owner).ok()) bad_frees.fetch_add(1);
    }
    running.fetch_sub(1);
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  // Remote drains race with the owners' fast paths.
  std::thread drainer([&] {
    while (running.load() > 0) {
      pa.drain_all_pages();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (auto& th : threads) th.join();
  drainer.join();

  EXPECT_EQ(double_handed.load(), 0);
  EXPECT_EQ(bad_frees.load(), 0);
  EXPECT_GT(total_allocs.load(), uint64_t{kThreads} * kOpsPerThread / 4);
  pa.drain_all_pages();
  auto c = pa.Validate();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->allocated_pages, 0u);
  EXPECT_EQ(c->buddy_free_pages, c->total_pages);
}

INSTANTIATE_TEST_SUITE_P(Modes, Stress, ::testing::Values(StressParam{"pcp", true}, StressParam{"buddy_only", false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace physmem
