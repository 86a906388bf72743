// Tests allocator/thread_pages.h through PageAllocator with thread_pages on: which blocks a
// thread's cache takes and gives, that its blocks stay per-CPU-list pages in every count
// (Validate(), Stats(), VmEvents()), that drains, thread exit, moving to another allocator and an
// allocator's death each hand them back or drop them safely, and that threads racing a drainer
// lose no block. Also the page tags (Pageblocks::AttachPageTags()) the free path reads.
#include "allocator/thread_pages.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "allocator/page_allocator.h"
#include "allocator/pageblock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

std::unique_ptr<PageAllocator> BootThreadPages(Target t = testing::SmallX86(), bool thread_pages = true) {
  PageAllocatorOptions o = testing::SmallOptions(std::move(t));
  o.thread_pages = thread_pages;
  auto pa = PageAllocator::Create(std::move(o));
  EXPECT_TRUE(pa.ok()) << pa.status();
  return *std::move(pa);
}

#define SKIP_UNLESS_THREAD_PAGES(pa)                                                                 \
  if (!(pa)->thread_pages_active())                                                                 \
  GTEST_SKIP() << "thread pages are off in this process (they need the per-CPU lists, hence rseq, " \
                  "and membarrier PRIVATE_EXPEDITED)"

ThreadPagesStats Cached(const PageAllocator& pa, ZoneType zt = ZONE_NORMAL) {
  for (const ZoneStats& z : pa.Stats()) {
    if (z.type == zt) return z.thread_pages;
  }
  return {};
}

uint64_t RingFrees(const PageAllocator& pa) {
  uint64_t n = 0;
  for (const ZoneStats& z : pa.Stats()) {
    for (const PcpCpuStats& c : z.pcp) n += c.frees;
  }
  return n;
}

// Runs `fn` on a new thread and waits for it (and for its thread-exit hooks).
template <class F>
void OnAnotherThread(F fn) {
  std::thread t(fn);
  t.join();
}

TEST(ThreadPages, AreOffByDefaultAndWhereTheyCannotKeepTheirPromises) {
  EXPECT_FALSE(BootThreadPages(testing::SmallX86(), /*thread_pages=*/false)->thread_pages_active());
  PageAllocatorOptions no_pcp = testing::SmallOptions(testing::SmallX86(), /*pcp=*/false);
  no_pcp.thread_pages = true;  // PagePcp blocks need the per-CPU lists
  EXPECT_FALSE((*PageAllocator::Create(std::move(no_pcp)))->thread_pages_active());
  PageAllocatorOptions zeroing = testing::SmallOptions(testing::SmallX86());
  zeroing.thread_pages = true;
  zeroing.init_on_free = true;  // the cache's free path does not zero
  EXPECT_FALSE((*PageAllocator::Create(std::move(zeroing)))->thread_pages_active());
}

TEST(ThreadPages, APairGoesThroughTheThreadsCacheAndTheCensusCountsItAsAListPage) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  Page* p = pa->alloc_pages(GFP_KERNEL, 0);
  ASSERT_NE(p, nullptr);
  const uint64_t ring_frees = RingFrees(*pa);
  ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
  EXPECT_EQ(Cached(*pa).count, 1u);
  EXPECT_EQ(Cached(*pa).frees, 1u);
  EXPECT_EQ(Cached(*pa).threads, 1u);
  EXPECT_EQ(RingFrees(*pa), ring_frees) << "the ring took a block the thread's cache should have";
  absl::StatusOr<PageCensus> c = pa->Validate();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GE(c->pcp_pages, 1u);
  EXPECT_EQ(c->allocated_pages, 0u);
  // LIFO: the next allocation of the same list gets the same block back, from the cache.
  EXPECT_EQ(pa->alloc_pages(GFP_KERNEL, 0), p);
  EXPECT_EQ(Cached(*pa).count, 0u);
  EXPECT_EQ(Cached(*pa).hits, 1u);
  ASSERT_TRUE(pa->__free_pages(p, 0).ok());  // the checked free takes the cache too
  EXPECT_EQ(Cached(*pa).count, 1u);
  EXPECT_EQ(pa->alloc_pages(GFP_KERNEL, 0), p);
  ASSERT_TRUE(pa->__free_pages(p, 0).ok());
  ASSERT_TRUE(pa->Validate().ok());
}

TEST(ThreadPages, AnAllocationTakesOnlyABlockOfItsOwnZoneAndList) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  Page* p = pa->alloc_pages(GFP_KERNEL, 0);
  ASSERT_NE(p, nullptr);
  const int type = pcp_list_type(pa->pageblock_migratetype(p));
  ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
  // Another migratetype, then another zone: neither may take p (the kernel's per-type and
  // per-zone lists); both leave it cached.
  const gfp_t other_type = type == MIGRATE_MOVABLE ? GFP_KERNEL : GFP_HIGHUSER_MOVABLE;
  Page* q = pa->alloc_pages(other_type, 0);
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, p);
  Page* d = pa->alloc_pages(GFP_KERNEL | __GFP_DMA32, 0);
  ASSERT_NE(d, nullptr);
  EXPECT_NE(d, p);
  EXPECT_EQ(pa->page_zonenum(d), ZONE_DMA32);
  EXPECT_EQ(Cached(*pa).hits, 0u);
  EXPECT_EQ(Cached(*pa).count, 1u);
  // p's own list gets it.
  const gfp_t own_type = type == MIGRATE_MOVABLE ? GFP_HIGHUSER_MOVABLE : GFP_KERNEL;
  ASSERT_EQ(type, pcp_list_type(static_cast<int>((own_type & (__GFP_RECLAIMABLE | __GFP_MOVABLE)) >> 3)));
  EXPECT_EQ(pa->alloc_pages(own_type, 0), p);
  for (Page* x : {p, q, d}) ASSERT_TRUE(pa->__free_pages(x, 0).ok());
  ASSERT_TRUE(pa->Validate().ok());
}

TEST(ThreadPages, AFullCacheSpillsToTheCpuListAndAKmappedPageStaysOut) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  std::vector<Page*> pages;
  for (uint32_t i = 0; i < ThreadPages::kMaxBlocks + 4; ++i) pages.push_back(pa->alloc_pages(GFP_KERNEL, 0));
  const uint64_t ring_frees = RingFrees(*pa);
  for (Page* p : pages) ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
  EXPECT_EQ(Cached(*pa).count, ThreadPages::kMaxBlocks);
  EXPECT_EQ(RingFrees(*pa) - ring_frees, 4u);
  ASSERT_TRUE(pa->Validate().ok());

  // A highmem page's trusted free takes the checked free, which pairs with kmap(): mapped, it is
  // refused and stays allocated; unmapped, it is cached like any other block of its zone.
  auto i386 = BootThreadPages(testing::SmallI386());
  Page* h = i386->alloc_pages(GFP_HIGHUSER, 0);
  ASSERT_NE(h, nullptr);
  ASSERT_EQ(i386->page_zonenum(h), ZONE_HIGHMEM);
  ASSERT_TRUE(i386->kmap(h, 0).ok());
  EXPECT_EQ(i386->__free_pages_trusted(h, 0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Cached(*i386, ZONE_HIGHMEM).count, 0u);
  ASSERT_TRUE(i386->kunmap(h, 0).ok());
  ASSERT_TRUE(i386->__free_pages_trusted(h, 0).ok());
  EXPECT_EQ(Cached(*i386, ZONE_HIGHMEM).count, 1u);
  EXPECT_EQ(i386->alloc_pages(GFP_HIGHUSER, 0), h);
  ASSERT_TRUE(i386->__free_pages(h, 0).ok());
  ASSERT_TRUE(i386->Validate().ok());
}

TEST(ThreadPages, DrainAllPagesTakesEveryThreadsBlocks) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  std::mutex mu;
  std::condition_variable cv;
  bool cached = false, drained = false;
  std::thread owner([&] {
    std::vector<Page*> pages;
    for (int i = 0; i < 5; ++i) pages.push_back(pa->alloc_pages(GFP_KERNEL, 0));
    for (Page* p : pages) ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
    std::unique_lock<std::mutex> l(mu);
    cached = true;
    cv.notify_all();
    cv.wait(l, [&] { return drained; });
    // The cache still serves its thread after a drain.
    Page* p = pa->alloc_pages(GFP_KERNEL, 0);
    ASSERT_NE(p, nullptr);
    ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
    ASSERT_TRUE(pa->alloc_pages(GFP_KERNEL, 0) == p);
    ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
  });
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return cached; });
  }
  EXPECT_EQ(Cached(*pa).count, 5u);
  EXPECT_GE(pa->drain_all_pages(), 5u);
  EXPECT_EQ(Cached(*pa).count, 0u);
  EXPECT_EQ(Cached(*pa).taken, 5u);
  ASSERT_TRUE(pa->Validate().ok());
  for (const ZoneStats& z : pa->Stats()) EXPECT_EQ(z.pcp_pages, 0u) << zone_name(z.type);
  {
    std::lock_guard<std::mutex> l(mu);
    drained = true;
  }
  cv.notify_all();
  owner.join();
  EXPECT_EQ(Cached(*pa).hits, 1u);
  ASSERT_TRUE(pa->Validate().ok());
}

TEST(ThreadPages, AThreadThatExitsGivesItsBlocksBackToTheBuddy) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  OnAnotherThread([&] {
    std::vector<Page*> pages;
    for (int i = 0; i < 6; ++i) pages.push_back(pa->alloc_pages(GFP_KERNEL, 0));
    for (Page* p : pages) ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
    Page* p = pa->alloc_pages(GFP_KERNEL, 0);  // one hit, counted after the thread is gone
    ASSERT_TRUE(pa->__free_pages(p, 0).ok());
    EXPECT_EQ(Cached(*pa).count, 6u);
  });
  const ThreadPagesStats s = Cached(*pa);
  EXPECT_EQ(s.threads, 0u);
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.taken, 6u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.frees, 7u);
  absl::StatusOr<PageCensus> c = pa->Validate();
  ASSERT_TRUE(c.ok()) << c.status();
  // The exiting thread's blocks went to the buddy, not to some list: only rings may hold pages.
  uint64_t ring_pages = 0;
  for (const ZoneStats& z : pa->Stats()) {
    for (const PcpCpuStats& cpu : z.pcp) ring_pages += cpu.count;
  }
  EXPECT_EQ(c->pcp_pages, ring_pages);
}

TEST(ThreadPages, FreeingIntoAnotherAllocatorHandsTheFirstOnesBlocksBack) {
  auto a = BootThreadPages();
  auto b = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(a);
  Page* pa = a->alloc_pages(GFP_KERNEL, 0);
  Page* pb = b->alloc_pages(GFP_KERNEL, 0);
  ASSERT_TRUE(a->__free_pages_trusted(pa, 0).ok());
  EXPECT_EQ(Cached(*a).count, 1u);
  ASSERT_TRUE(b->__free_pages_trusted(pb, 0).ok());  // the thread's cache moves to b
  EXPECT_EQ(Cached(*a).count, 0u);
  EXPECT_EQ(Cached(*a).taken, 1u);
  EXPECT_EQ(Cached(*a).threads, 0u);
  EXPECT_EQ(Cached(*b).count, 1u);
  ASSERT_TRUE(a->Validate().ok());
  ASSERT_TRUE(b->Validate().ok());
}

TEST(ThreadPages, ACacheOutlivesItsAllocatorWithoutTouchingIt) {
  auto a = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(a);
  Page* p = a->alloc_pages(GFP_KERNEL, 0);
  ASSERT_TRUE(a->__free_pages_trusted(p, 0).ok());
  a.reset();  // this thread's cache still names a's (now freed) page
  auto b = BootThreadPages();
  Page* q = b->alloc_pages(GFP_KERNEL, 0);
  ASSERT_NE(q, nullptr);
  ASSERT_TRUE(b->__free_pages_trusted(q, 0).ok());  // rebinds; a's block is dropped, not given to b
  EXPECT_EQ(Cached(*b).count, 1u);
  EXPECT_EQ(b->alloc_pages(GFP_KERNEL, 0), q);
  ASSERT_TRUE(b->__free_pages(q, 0).ok());
  ASSERT_TRUE(b->Validate().ok());
}

TEST(ThreadPages, VmEventsCountEveryAllocationAndFreeOnce) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  constexpr int kPairs = 1000;
  std::vector<Page*> held;
  for (int i = 0; i < kPairs; ++i) {
    if (i % 3 == 0 && !held.empty()) {  // a mix of held pages and immediate reuse
      ASSERT_TRUE(pa->__free_pages_trusted(held.back(), 0).ok());
      held.pop_back();
    }
    Page* p = pa->alloc_pages(i % 2 ? GFP_KERNEL : GFP_USER, 0);
    ASSERT_NE(p, nullptr);
    if (i % 5 == 0) {
      held.push_back(p);
    } else {
      ASSERT_TRUE((i % 2 ? pa->__free_pages(p, 0) : pa->__free_pages_trusted(p, 0)).ok());
    }
  }
  for (Page* p : held) ASSERT_TRUE(pa->__free_pages(p, 0).ok());
  EXPECT_GT(Cached(*pa).hits, 0u);
  const VmEventCounts c = pa->VmEvents();
  uint64_t allocs = 0, frees = 0, kernel = 0, user = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    const auto zt = static_cast<ZoneType>(z);
    frees += c.frees(zt, 0);
    for (int k = 0; k < kNrGfpClasses; ++k) allocs += c.allocs(zt, 0, k);
    kernel += c.allocs(zt, 0, gfp_class_index(GFP_KERNEL));
    user += c.allocs(zt, 0, gfp_class_index(GFP_USER));
  }
  EXPECT_EQ(allocs, uint64_t{kPairs});
  EXPECT_EQ(frees, uint64_t{kPairs});
  EXPECT_EQ(kernel, uint64_t{kPairs / 2});
  EXPECT_EQ(user, uint64_t{kPairs / 2});
  ASSERT_TRUE(pa->Validate().ok());
}

TEST(ThreadPages, ValidateFindsACachedBlockThatIsNotAFreeListPage) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  Page* p = pa->alloc_pages(GFP_KERNEL, 0);
  ASSERT_TRUE(pa->__free_pages_trusted(p, 0).ok());
  const uint64_t listed = p->state.load();
  p->state.store(PageState::Allocated(0, 7, false));  // as if someone wrote it behind the cache's back
  absl::StatusOr<PageCensus> c = pa->Validate();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(c.status().message().find("thread cache"), std::string_view::npos) << c.status();
  p->state.store(listed);
  ASSERT_TRUE(pa->Validate().ok());
}

// Threads pair and hold pages through their caches (both frees) while another drains them over
// and over: every block must end up exactly once somewhere (Validate()), nothing allocated.
TEST(ThreadPages, ThreadsRacingADrainerLoseNoBlock) {
  auto pa = BootThreadPages();
  SKIP_UNLESS_THREAD_PAGES(pa);
  constexpr int kThreads = 3, kOps = 200000;
  std::atomic<bool> done{false};
  std::atomic<uint64_t> drains{0};
  std::thread drainer([&] {
    while (!done.load()) {
      pa->drain_all_pages();
      drains.fetch_add(1);
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<Page*> held;
      for (int i = 0; i < kOps; ++i) {
        Page* p = pa->alloc_pages(t % 2 ? GFP_KERNEL : GFP_HIGHUSER_MOVABLE, 0);
        ASSERT_NE(p, nullptr);
        if (i % 7 == 0) {
          held.push_back(p);
        } else {
          ASSERT_TRUE((i % 2 ? pa->__free_pages(p, 0) : pa->__free_pages_trusted(p, 0)).ok());
        }
        if (held.size() > 16) {
          for (Page* h : held) ASSERT_TRUE(pa->__free_pages_trusted(h, 0).ok());
          held.clear();
        }
      }
      for (Page* h : held) ASSERT_TRUE(pa->__free_pages(h, 0).ok());
    });
  }
  for (std::thread& w : workers) w.join();
  done.store(true);
  drainer.join();
  EXPECT_GT(drains.load(), 0u);
  absl::StatusOr<PageCensus> c = pa->Validate();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->allocated_pages, 0u);
  const VmEventCounts v = pa->VmEvents();
  EXPECT_EQ(v.free_pages(ZONE_NORMAL) + v.free_pages(ZONE_DMA32) + v.free_pages(ZONE_DMA),
            v.alloc_pages(ZONE_NORMAL) + v.alloc_pages(ZONE_DMA32) + v.alloc_pages(ZONE_DMA));
}

// The page tags mirror the pageblock types through every Set(), holes and segment ends included.
TEST(PageTags, FollowEveryPageblockTypeChange) {
  // Pageblocks of 8 pages over pfns [0, 64); RAM in two segments with a hole [20, 36).
  Pageblocks pb(/*zone_start_pfn=*/0, /*zone_end_pfn=*/64, /*pageblock_order=*/3, /*group_by_mobility_disabled=*/false);
  const std::vector<Segment> segs = {{.start_pfn = 0, .end_pfn = 20, .first_index = 0},
                                     {.start_pfn = 36, .end_pfn = 64, .first_index = 20}};
  std::vector<std::atomic<uint8_t>> tags(48);
  for (auto& t : tags) t.store(0xff);
  pb.AttachPageTags(tags.data(), segs, ZONE_DMA32);
  for (auto& t : tags) EXPECT_EQ(t.load(), PageTag(ZONE_DMA32, MIGRATE_MOVABLE));  // boot: MOVABLE
  ASSERT_TRUE(pb.Set(16, MIGRATE_UNMOVABLE));  // block [16, 24): pfns 16..19 and nothing in the hole
  ASSERT_TRUE(pb.Set(40, MIGRATE_HIGHATOMIC));  // block [40, 48): HIGHATOMIC's pages go on MOVABLE's list
  ASSERT_TRUE(pb.Set(56, MIGRATE_RECLAIMABLE));
  for (uint64_t pfn = 0; pfn < 64; ++pfn) {
    if (pfn >= 20 && pfn < 36) continue;
    const uint32_t idx = pfn < 20 ? static_cast<uint32_t>(pfn) : static_cast<uint32_t>(pfn - 16);
    const int want = pfn >= 16 && pfn < 20 ? MIGRATE_UNMOVABLE : pfn >= 56 ? MIGRATE_RECLAIMABLE : MIGRATE_MOVABLE;
    EXPECT_EQ(tags[idx].load(), PageTag(ZONE_DMA32, want)) << "pfn " << pfn;
  }
}

}  // namespace
}  // namespace physmem
