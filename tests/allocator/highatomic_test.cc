// The highatomic reserve (allocator/highatomic.cc), driven through PageAllocator. Kernel 6.12
// LTS, mm/page_alloc.c: gfp_to_alloc_flags() (ALLOC_HIGHATOMIC for high-order non-blocking
// __GFP_HIGH), get_page_from_freelist() (reserve after success), reserve_highatomic_pageblock()
// (1% of the zone, ALIGNed to pageblocks), rmqueue_buddy() (HIGHATOMIC lists first),
// unreserve_highatomic_pageblock() (before a blocking allocation fails).
//
// ALLOC_HIGHATOMIC exists only in the slow path, which runs once a zone is below its LOW
// watermark. The tests boot x86_64 with 512 MiB (Normal: 65633 managed pages, so the reserve may
// hold ALIGN(656, 512) = 1024 pages, two pageblocks), watermark_scale_factor 1000 (LOW is ~10%
// of the zone above MIN, HIGH 20%: mobility grouping stays on), no per-CPU lists, and fill
// Normal with movable pages until it is one page below LOW. Every request names Normal only
// (allowed_zones), so the zonelist does not move on to DMA32.
#include <memory>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

constexpr uint32_t kNormalOnly = 1u << ZONE_NORMAL;

ZoneStats Normal(const PageAllocator& pa) {
  for (const ZoneStats& z : pa.Stats()) {
    if (z.type == ZONE_NORMAL) return z;
  }
  return {};
}

std::unique_ptr<PageAllocator> BootWithNormalBelowLow(std::vector<Page*>* filler) {
  PageAllocatorOptions o = testing::SmallOptions(*BuiltinTarget("x86_64"), /*pcp=*/false);
  o.watermark_scale_factor = 1000;
  auto pa = PageAllocator::Create(o);
  EXPECT_TRUE(pa.ok()) << pa.status();
  if (!pa.ok()) return nullptr;
  EXPECT_FALSE((*pa)->group_by_mobility_disabled());
  const ZoneStats z = Normal(**pa);
  for (uint64_t i = 0; i + z.watermarks.low <= z.free_pages; ++i) {
    Page* p = (*pa)->alloc_pages(GFP_HIGHUSER_MOVABLE, 0, kNoOwner, kNormalOnly);
    EXPECT_NE(p, nullptr);
    if (p == nullptr) return nullptr;
    filler->push_back(p);
  }
  EXPECT_EQ(Normal(**pa).free_pages, z.watermarks.low - 1);
  EXPECT_EQ(Normal(**pa).highatomic_max, 1024u);
  return *std::move(pa);
}

TEST(Highatomic, HighOrderAtomicAllocationReservesItsPageblock) {
  std::vector<Page*> filler;
  auto pa = BootWithNormalBelowLow(&filler);
  ASSERT_NE(pa, nullptr);
  Page* p = pa->alloc_pages(GFP_ATOMIC, 2, kNoOwner, kNormalOnly);
  ASSERT_NE(p, nullptr);
  // The block first came from a claim of a free MOVABLE block (no ALLOC_NOFRAGMENT in the slow
  // path), then reserve_highatomic_pageblock() moved its pageblock, free pages included, to
  // HIGHATOMIC.
  EXPECT_EQ(pa->pageblock_migratetype(p), MIGRATE_HIGHATOMIC);
  const ZoneStats z = Normal(*pa);
  EXPECT_EQ(z.nr_reserved_highatomic, 512u);
  EXPECT_EQ(z.nr_pageblocks_by_type[MIGRATE_HIGHATOMIC], 1u);
  EXPECT_EQ(z.nr_free_highatomic, 512u - 4u);  // a whole free pageblock was claimed
  EXPECT_EQ(z.migrate.highatomic_reserves, 1u);
  EXPECT_EQ(z.migrate.pageblock_changes[MIGRATE_UNMOVABLE][MIGRATE_HIGHATOMIC], 1u);
  EXPECT_TRUE(pa->Validate().ok()) << pa->Validate().status();
  // The next high-order atomic request is served from the reserve (rmqueue_buddy() tries the
  // HIGHATOMIC lists first) and reserves nothing more: its block is already HIGHATOMIC.
  Page* q = pa->alloc_pages(GFP_ATOMIC, 2, kNoOwner, kNormalOnly);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(pa->pageblock_migratetype(q), MIGRATE_HIGHATOMIC);
  EXPECT_EQ(Normal(*pa).nr_reserved_highatomic, 512u);
  EXPECT_EQ(Normal(*pa).nr_free_highatomic, 512u - 8u);
}

TEST(Highatomic, ReserveStopsAtOnePercentOfTheZoneInWholePageblocks) {
  std::vector<Page*> filler;
  auto pa = BootWithNormalBelowLow(&filler);
  ASSERT_NE(pa, nullptr);
  for (int i = 0; i < 6; ++i) {
    Page* p = pa->alloc_pages(GFP_ATOMIC, 9, kNoOwner, kNormalOnly);
    ASSERT_NE(p, nullptr) << i;
    EXPECT_LE(Normal(*pa).nr_reserved_highatomic, 1024u) << i;
    ASSERT_TRUE(pa->Validate().ok()) << pa->Validate().status();
  }
  const ZoneStats z = Normal(*pa);
  EXPECT_EQ(z.nr_reserved_highatomic, 1024u);
  EXPECT_EQ(z.nr_pageblocks_by_type[MIGRATE_HIGHATOMIC], 2u);
  EXPECT_EQ(z.migrate.highatomic_reserves, 2u);
}

TEST(Highatomic, BlockingCallersReleaseTheReserveBeforeFailing) {
  std::vector<Page*> held;
  auto pa = BootWithNormalBelowLow(&held);
  ASSERT_NE(pa, nullptr);
  ASSERT_NE(pa->alloc_pages(GFP_ATOMIC, 2, kNoOwner, kNormalOnly), nullptr);
  ASSERT_EQ(Normal(*pa).nr_reserved_highatomic, 512u);
  // GFP_KERNEL cannot use the reserve's 508 free pages (no ALLOC_RESERVES: the watermark check
  // does not count them, and __rmqueue() never looks at HIGHATOMIC lists). Before its last
  // attempt fails, should_reclaim_retry() unreserves with force, and the pages become usable.
  while (Page* p = pa->alloc_pages(GFP_KERNEL, 0, kNoOwner, kNormalOnly)) held.push_back(p);
  const ZoneStats z = Normal(*pa);
  EXPECT_EQ(z.nr_reserved_highatomic, 0u);
  EXPECT_EQ(z.nr_free_highatomic, 0u);
  EXPECT_EQ(z.nr_pageblocks_by_type[MIGRATE_HIGHATOMIC], 0u);
  EXPECT_EQ(z.migrate.highatomic_unreserves, 1u);
  EXPECT_EQ(z.migrate.pageblock_changes[MIGRATE_HIGHATOMIC][MIGRATE_UNMOVABLE], 1u);
  EXPECT_TRUE(pa->Validate().ok()) << pa->Validate().status();
}

TEST(Highatomic, NonBlockingCallersKeepTheReserve) {
  // GFP_NOWAIT never reaches direct reclaim or should_reclaim_retry(): it fails without
  // unreserving (it may take from the reserve itself: ALLOC_NON_BLOCK, after __rmqueue() fails).
  std::vector<Page*> held;
  auto pa = BootWithNormalBelowLow(&held);
  ASSERT_NE(pa, nullptr);
  ASSERT_NE(pa->alloc_pages(GFP_ATOMIC, 2, kNoOwner, kNormalOnly), nullptr);
  while (Page* p = pa->alloc_pages(GFP_NOWAIT, 0, kNoOwner, kNormalOnly)) held.push_back(p);
  EXPECT_EQ(Normal(*pa).nr_reserved_highatomic, 512u);
  EXPECT_EQ(Normal(*pa).migrate.highatomic_unreserves, 0u);
  EXPECT_TRUE(pa->Validate().ok()) << pa->Validate().status();
}

TEST(Highatomic, ZonesWhereOnePercentIsUnderAPageblockNeverReserve) {
  // "if 1% of a zone falls below a pageblock size, then don't reserve any pageblocks."
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86(), /*pcp=*/false);
  auto pa = PageAllocator::Create(o);
  ASSERT_TRUE(pa.ok()) << pa.status();
  for (const ZoneStats& z : (*pa)->Stats()) EXPECT_EQ(z.highatomic_max, 0u) << zone_name(z.type);
  std::vector<Page*> held;
  while (Page* p = (*pa)->alloc_pages(GFP_ATOMIC, 2)) held.push_back(p);  // through the slow path
  ASSERT_FALSE(held.empty());
  for (const ZoneStats& z : (*pa)->Stats()) EXPECT_EQ(z.nr_reserved_highatomic, 0u);
  EXPECT_TRUE((*pa)->Validate().ok());
}

}  // namespace
}  // namespace physmem
