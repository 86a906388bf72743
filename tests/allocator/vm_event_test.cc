// Tests allocator/vm_event.h through PageAllocator::VmEvents(): exact sums across threads, counts
// that survive thread exit, fallbacks, failures by preferred zone, zeroed pages, and many
// allocators on one thread.
#include "allocator/vm_event.h"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

constexpr int kKernel = gfp_class_index(GFP_KERNEL);

std::unique_ptr<PageAllocator> Boot(Target t, bool pcp = true) {
  auto pa = PageAllocator::Create(testing::SmallOptions(std::move(t), pcp));
  EXPECT_TRUE(pa.ok()) << pa.status();
  return *std::move(pa);
}

uint64_t TotalAllocs(const VmEventCounts& c) {
  uint64_t n = 0;
  for (uint64_t v : c.alloc) n += v;
  return n;
}

TEST(GfpClassIndex, AgreesWithGfpClassNames) {
  for (gfp_t g : {GFP_ATOMIC, GFP_NOWAIT, GFP_KERNEL, GFP_USER, GFP_HIGHUSER, GFP_DMA, GFP_DMA32,
                  GFP_KERNEL_ACCOUNT | __GFP_ZERO, GFP_HIGHUSER_MOVABLE, GFP_NOFS, GFP_KERNEL | __GFP_DMA32}) {
    EXPECT_EQ(kGfpClassNames[gfp_class_index(g)], gfp_class(g)) << FormatGfp(g);
  }
  EXPECT_EQ(gfp_class(GFP_NOFS), "other");
  EXPECT_EQ(gfp_class(GFP_HIGHUSER_MOVABLE), "GFP_HIGHUSER");
}

TEST(VmEvents, CountsAllocationsAndFreesByZoneOrderAndClass) {
  auto pa = Boot(testing::SmallX86());
  std::vector<std::pair<Page*, unsigned>> got;
  for (unsigned order : {0u, 0u, 1u, 3u, 5u}) got.push_back({pa->alloc_pages(GFP_KERNEL, order), order});
  const VmEventCounts after_alloc = pa->VmEvents();
  EXPECT_EQ(after_alloc.allocs(ZONE_NORMAL, 0, kKernel), 2u);
  EXPECT_EQ(after_alloc.allocs(ZONE_NORMAL, 1, kKernel), 1u);
  EXPECT_EQ(after_alloc.allocs(ZONE_NORMAL, 3, kKernel), 1u);
  EXPECT_EQ(after_alloc.allocs(ZONE_NORMAL, 5, kKernel), 1u);
  EXPECT_EQ(TotalAllocs(after_alloc), 5u);
  EXPECT_EQ(after_alloc.alloc_pages(ZONE_NORMAL), 1u + 1 + 2 + 8 + 32);
  EXPECT_EQ(after_alloc.free_pages(ZONE_NORMAL), 0u);
  for (auto [p, order] : got) ASSERT_TRUE(pa->__free_pages(p, order).ok());
  const VmEventCounts c = pa->VmEvents();
  EXPECT_EQ(c.free_blocks(ZONE_NORMAL), 5u);
  EXPECT_EQ(c.free_pages(ZONE_NORMAL), c.alloc_pages(ZONE_NORMAL));
  EXPECT_EQ(c.frees(ZONE_NORMAL, 5), 1u);
}

// Frees onto a per-CPU list are counted by the ring's push count, the others (orders above 3,
// lists off) by the free path: every free is counted once, whichever way it went, also when a
// list at high drains a batch to the buddy first.
TEST(VmEvents, FreesOntoPerCpuListsAndPastThemAreEachCountedOnce) {
  for (bool pcp : {true, false}) {
    auto pa = Boot(testing::SmallX86(), pcp);
    constexpr int kPages = 1000, kBig = 4;  // far beyond high: lists reach it and drain
    std::vector<std::pair<Page*, unsigned>> blocks;
    for (int i = 0; i < kPages + kBig; ++i) {
      const unsigned order = i < kPages ? 0 : 4;  // order 4: never onto a per-CPU list
      blocks.push_back({pa->alloc_pages(GFP_KERNEL, order), order});
      ASSERT_NE(blocks.back().first, nullptr);
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      auto [p, order] = blocks[i];
      const absl::Status s = i % 2 ? pa->__free_pages(p, order) : pa->__free_pages_trusted(p, order);
      ASSERT_TRUE(s.ok()) << s;
    }
    const VmEventCounts c = pa->VmEvents();
    uint64_t freed0 = 0, freed4 = 0;  // over every zone: some allocations may have fallen back
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      const auto zt = static_cast<ZoneType>(z);
      freed0 += c.frees(zt, 0);
      freed4 += c.frees(zt, 4);
      EXPECT_EQ(c.free_pages(zt), c.alloc_pages(zt)) << zone_name(zt) << ", pcp " << pcp;
    }
    EXPECT_EQ(freed0, uint64_t{kPages}) << "pcp " << pcp;
    EXPECT_EQ(freed4, uint64_t{kBig}) << "pcp " << pcp;
    uint64_t listed = 0;  // what the rings counted
    for (const ZoneStats& z : pa->Stats()) {
      for (const PcpCpuStats& cpu : z.pcp) listed += cpu.frees;
    }
    EXPECT_EQ(listed, pcp && pa->pcp_active() ? uint64_t{kPages} : 0u) << "pcp " << pcp;
    ASSERT_TRUE(pa->Validate().ok());
  }
}

// With ZONE_NORMAL configured but empty, GFP_KERNEL's zonelist starts at DMA32: every such
// allocation is a fallback, whether the per-CPU fast path (which counts by preferred zone only)
// or the buddy served it. Both paths book the same events.
TEST(VmEvents, FastPathAllocationsFromAFirstZoneBelowThePreferredCountAsFallbacks) {
  Target t = testing::SmallX86();
  t.ram.pop_back();  // no RAM above 4 MiB: NORMAL is configured but empty
  for (bool pcp : {true, false}) {
    auto pa = Boot(t, pcp);
    constexpr int kPages = 40;
    std::vector<Page*> pages;
    for (int i = 0; i < kPages; ++i) {
      pages.push_back(pa->alloc_pages(GFP_KERNEL, 0));
      ASSERT_NE(pages.back(), nullptr);
    }
    const VmEventCounts c = pa->VmEvents();
    EXPECT_EQ(c.allocs(ZONE_DMA32, 0, kKernel), uint64_t{kPages}) << "pcp " << pcp;
    EXPECT_EQ(c.allocs(ZONE_NORMAL, 0, kKernel), 0u) << "pcp " << pcp;
    EXPECT_EQ(c.fallback[ZONE_DMA32][ZONE_NORMAL], uint64_t{kPages}) << "pcp " << pcp;
    EXPECT_EQ(TotalAllocs(c), uint64_t{kPages}) << "pcp " << pcp;
    for (Page* p : pages) ASSERT_TRUE(pa->__free_pages(p, 0).ok());
    EXPECT_EQ(pa->VmEvents().free_pages(ZONE_DMA32), uint64_t{kPages}) << "pcp " << pcp;
  }
}

TEST(VmEvents, RefusedFreesAreNotCounted) {
  auto pa = Boot(testing::SmallX86());
  Page* p = pa->alloc_pages(GFP_KERNEL, 1);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(pa->__free_pages(p, 0).ok());  // wrong order
  ASSERT_TRUE(pa->__free_pages(p, 1).ok());
  EXPECT_FALSE(pa->__free_pages(p, 1).ok());  // double free
  EXPECT_EQ(pa->VmEvents().free_blocks(ZONE_NORMAL), 1u);
}

TEST(VmEvents, SumsAreExactAcrossThreadsAndSurviveThreadExit) {
  auto pa = Boot(testing::SmallX86());
  constexpr int kThreads = 4, kRounds = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&pa, t] {
      const gfp_t gfp = t % 2 ? GFP_KERNEL : GFP_ATOMIC;
      for (int i = 0; i < kRounds; ++i) {
        Page* p = pa->alloc_pages(gfp, 0);
        ASSERT_NE(p, nullptr);
        ASSERT_TRUE(pa->__free_pages(p, 0).ok());
      }
    });
  }
  // A snapshot while threads run is a valid (partial) sum: never above the final total.
  EXPECT_LE(TotalAllocs(pa->VmEvents()), uint64_t{kThreads} * kRounds);
  for (std::thread& t : threads) t.join();
  // Every thread has exited: their blocks are folded into the allocator's accumulator.
  const VmEventCounts c = pa->VmEvents();
  EXPECT_EQ(c.allocs(ZONE_NORMAL, 0, kKernel), uint64_t{kThreads / 2} * kRounds);
  EXPECT_EQ(c.allocs(ZONE_NORMAL, 0, gfp_class_index(GFP_ATOMIC)), uint64_t{kThreads / 2} * kRounds);
  EXPECT_EQ(c.free_blocks(ZONE_NORMAL), uint64_t{kThreads} * kRounds);
  // And the counts do not move once nothing happens.
  EXPECT_EQ(pa->VmEvents().alloc, c.alloc);
}

TEST(VmEvents, FallbacksAreCountedWhenTheFirstZoneIsExhausted) {
  auto pa = Boot(testing::SmallX86());
  // Drain NORMAL (2048 pages) with GFP_KERNEL order-0 until the allocator serves from DMA32.
  std::vector<Page*> pages;
  while (true) {
    Page* p = pa->alloc_pages(GFP_KERNEL, 0);
    ASSERT_NE(p, nullptr);
    pages.push_back(p);
    if (pa->page_zonenum(p) != ZONE_NORMAL) break;
  }
  const VmEventCounts c = pa->VmEvents();
  EXPECT_EQ(c.fallback[ZONE_DMA32][ZONE_NORMAL], 1u);
  EXPECT_EQ(c.allocs(ZONE_DMA32, 0, kKernel), 1u);
  EXPECT_EQ(c.allocs(ZONE_NORMAL, 0, kKernel), pages.size() - 1);
  EXPECT_EQ(c.fallback[ZONE_NORMAL][ZONE_NORMAL], 0u);  // serving the preferred zone is no fallback
  for (Page* p : pages) ASSERT_TRUE(pa->__free_pages(p, 0).ok());
}

TEST(VmEvents, FailuresAreCountedByPreferredZone) {
  auto pa = Boot(testing::SmallX86());
  // ZONE_DMA has 160 pages: no order-8 (256-page) block can exist there.
  EXPECT_EQ(pa->alloc_pages(GFP_DMA, 8), nullptr);
  EXPECT_EQ(pa->alloc_pages(GFP_DMA, 8), nullptr);
  // Only NORMAL (2048 pages) has order-10 blocks; after one is taken, the rest of the zone is
  // too close to its watermark for another, and no lower zone has one.
  Page* a = pa->alloc_pages(GFP_ATOMIC, 10);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(pa->alloc_pages(GFP_ATOMIC, 10), nullptr);
  EXPECT_EQ(pa->alloc_pages(GFP_ATOMIC, 10), nullptr);
  const VmEventCounts c = pa->VmEvents();
  EXPECT_EQ(c.failures(ZONE_DMA, 8, gfp_class_index(GFP_DMA)), 2u);
  EXPECT_EQ(c.failures(ZONE_NORMAL, 10, gfp_class_index(GFP_ATOMIC)), 2u);
  EXPECT_EQ(c.allocs(ZONE_NORMAL, 10, gfp_class_index(GFP_ATOMIC)), 1u);
  uint64_t failures = 0;
  for (uint64_t v : c.alloc_fail) failures += v;
  EXPECT_EQ(failures, 4u);
  // Invalid requests are refusals, not failures.
  EXPECT_EQ(pa->alloc_pages(GFP_KERNEL, 11), nullptr);
  EXPECT_EQ(pa->VmEvents().alloc_fail, c.alloc_fail);
  ASSERT_TRUE(pa->__free_pages(a, 10).ok());
}

TEST(VmEvents, ZeroedPagesAreCounted) {
  auto pa = Boot(testing::SmallX86());
  Page* p = pa->alloc_pages(GFP_KERNEL | __GFP_ZERO, 2);
  ASSERT_NE(p, nullptr);
  const uint64_t addr = pa->get_zeroed_page(GFP_KERNEL);
  ASSERT_NE(addr, 0u);
  Page* plain = pa->alloc_pages(GFP_KERNEL, 0);
  const VmEventCounts c = pa->VmEvents();
  EXPECT_EQ(c.pages_zeroed, 4u + 1u);
  EXPECT_EQ(c.allocs(ZONE_NORMAL, 2, kKernel) + c.allocs(ZONE_DMA32, 2, kKernel), 1u);
  ASSERT_TRUE(pa->__free_pages(p, 2).ok());
  ASSERT_TRUE(pa->free_page(addr).ok());
  ASSERT_TRUE(pa->__free_page(plain).ok());
}

TEST(VmEvents, BulkAllocationsAreCounted) {
  auto pa = Boot(testing::SmallX86());
  std::vector<Page*> pages(100, nullptr);
  ASSERT_EQ(pa->alloc_pages_bulk(GFP_KERNEL, 100, pages.data()), 100u);
  const VmEventCounts c = pa->VmEvents();
  EXPECT_EQ(c.alloc_pages(ZONE_NORMAL) + c.alloc_pages(ZONE_DMA32) + c.alloc_pages(ZONE_DMA), 100u);
  for (Page* p : pages) ASSERT_TRUE(pa->__free_page(p).ok());
  EXPECT_EQ(pa->VmEvents().free_pages(ZONE_NORMAL), c.alloc_pages(ZONE_NORMAL));
}

TEST(VmEvents, HighmemAllocationsCountInHighmem) {
  auto pa = Boot(testing::SmallI386());
  Page* p = pa->alloc_pages(GFP_HIGHUSER, 0);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(pa->page_zonenum(p), ZONE_HIGHMEM);
  EXPECT_EQ(pa->VmEvents().allocs(ZONE_HIGHMEM, 0, gfp_class_index(GFP_HIGHUSER)), 1u);
  ASSERT_TRUE(pa->__free_page(p).ok());
}

// Many allocators, created and destroyed on one thread and on others: each counts only its own
// events, and a destroyed allocator's blocks never receive another's counts.
TEST(VmEvents, ManyAllocatorsOnOneThreadKeepSeparateCounts) {
  for (int round = 0; round < 20; ++round) {
    auto a = Boot(testing::SmallX86());
    auto b = Boot(testing::SmallX86(), /*pcp=*/round % 2 == 0);
    for (int i = 0; i <= round; ++i) ASSERT_TRUE(a->__free_page(a->alloc_page(GFP_KERNEL)).ok());
    ASSERT_TRUE(b->__free_page(b->alloc_page(GFP_KERNEL)).ok());
    std::thread([&] { ASSERT_TRUE(a->__free_page(a->alloc_page(GFP_KERNEL)).ok()); }).join();
    EXPECT_EQ(a->VmEvents().allocs(ZONE_NORMAL, 0, kKernel), uint64_t(round) + 2);
    EXPECT_EQ(b->VmEvents().allocs(ZONE_NORMAL, 0, kKernel), 1u);
  }
}

TEST(VmEvents, AThreadOutlivingItsAllocatorIsSafe) {
  std::unique_ptr<PageAllocator> pa = Boot(testing::SmallX86());
  std::mutex mu;
  std::condition_variable cv;
  int phase = 0;
  std::thread worker([&] {
    ASSERT_TRUE(pa->__free_page(pa->alloc_page(GFP_KERNEL)).ok());
    std::unique_lock<std::mutex> l(mu);
    phase = 1;
    cv.notify_all();
    cv.wait(l, [&] { return phase == 2; });
    // The allocator this thread counted for is gone; a new one must get fresh counters.
    auto fresh = Boot(testing::SmallX86());
    ASSERT_TRUE(fresh->__free_page(fresh->alloc_page(GFP_KERNEL)).ok());
    EXPECT_EQ(fresh->VmEvents().allocs(ZONE_NORMAL, 0, kKernel), 1u);
  });
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return phase == 1; });
    EXPECT_EQ(pa->VmEvents().allocs(ZONE_NORMAL, 0, kKernel), 1u);
    pa.reset();
    phase = 2;
    cv.notify_all();
  }
  worker.join();
}

}  // namespace
}  // namespace physmem
