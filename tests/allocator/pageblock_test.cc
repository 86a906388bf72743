// pageblock_order per target and the boot marking of pageblocks (allocator/pageblock.h), with
// mobility grouping on, off by option, and off because the zones are too small. Kernel 6.12 LTS:
// include/linux/pageblock-flags.h (pageblock_order), mm/mm_init.c memmap_init_range() (MOVABLE
// at boot), mm/page_alloc.c build_all_zonelists() (page_group_by_mobility_disabled).
#include "allocator/pageblock.h"

#include <memory>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using testing::GiB;
using testing::MiB;

Target WithPages(unsigned page_shift, unsigned max_page_order) {
  Target t = testing::SmallX86();
  t.page_shift = page_shift;
  t.page_size = uint64_t{1} << page_shift;
  t.max_page_order = max_page_order;
  return t;
}

TEST(PageblockOrder, IsNineOnX86_64AndArm64WithFourKibPages) {
  // HPAGE_PMD_ORDER = PMD_SHIFT 21 - PAGE_SHIFT 12 = 9 < MAX_PAGE_ORDER 10.
  EXPECT_EQ(PageblockOrder(*BuiltinTarget("x86_64")), 9u);
  EXPECT_EQ(PageblockOrder(*BuiltinTarget("arm64")), 9u);
  EXPECT_EQ(PageblockOrder(*BuiltinTarget("rpi4")), 9u);
}

TEST(PageblockOrder, FollowsArm64PmdShiftForLargerPages) {
  // arm64 PMD_SHIFT = (PAGE_SHIFT - 3) * 2 + 3: 25 with 16 KiB pages (order 11 with
  // ARCH_FORCE_MAX_ORDER 11), 29 with 64 KiB (order 13 with ARCH_FORCE_MAX_ORDER 13); 8 KiB: 10.
  EXPECT_EQ(PageblockOrder(WithPages(14, 11)), 11u);
  EXPECT_EQ(PageblockOrder(WithPages(16, 13)), 13u);
  EXPECT_EQ(PageblockOrder(WithPages(13, 10)), 10u);
}

TEST(PageblockOrder, IsCappedAtMaxPageOrder) {
  // min(HPAGE_PMD_ORDER, MAX_PAGE_ORDER): 64 KiB pages with only 11 orders give 10, not 13.
  EXPECT_EQ(PageblockOrder(WithPages(16, 10)), 10u);
  EXPECT_EQ(PageblockOrder(WithPages(12, 5)), 5u);
}

TEST(PageblockOrder, I386IsTenWithoutPaeAndNineWithIt) {
  // 2-level paging folds the PMD into PGDIR_SHIFT 22; PAE's PMD_SHIFT is 21.
  EXPECT_EQ(PageblockOrder(*BuiltinTarget("i386", 1 * GiB)), 10u);
  EXPECT_EQ(PageblockOrder(*BuiltinTarget("i386", 8 * GiB)), 9u);
}

TEST(PageblockOrder, TargetFileOverrideWins) {
  absl::StatusOr<Target> t = ParseTargetText(
      "zone { zone: ZONE_NORMAL }\nram { start: 0x0 size: 0x1000000 }\npageblock_order: 6\n", "small.textproto");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->pageblock_order_override, 6);
  EXPECT_EQ(PageblockOrder(*t), 6u);
  // And it survives the proto round trip GetTarget uses.
  EXPECT_EQ(FromProto(ToProto(*t)).pageblock_order_override, 6);
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(testing::SmallOptions(*t));
  ASSERT_TRUE(pa.ok()) << pa.status();
  EXPECT_EQ((*pa)->pageblock_order(), 6u);
  EXPECT_EQ((*pa)->Stats().back().nr_pageblocks_by_type[MIGRATE_MOVABLE], 4096u / 64);
}

TEST(PageblockOrder, ZeroOverrideIsRefusedNamingTheField) {
  absl::StatusOr<Target> t = ParseTargetText(
      "zone { zone: ZONE_NORMAL }\nram { start: 0x0 size: 0x1000000 }\npageblock_order: 0\n", "b.textproto");
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.status().message(),
            "b.textproto:3: pageblock_order 0 is impossible: expected 1..max_page_order (10); a pageblock holds "
            "at least 2 pages");
}

TEST(PageblockOrder, ValidateTargetRefusesABadOverrideInCode) {
  Target t = testing::SmallX86();
  t.pageblock_order_override = 12;
  EXPECT_EQ(ValidateTarget(t).code(), absl::StatusCode::kInvalidArgument);
  t.pageblock_order_override = -3;
  EXPECT_EQ(ValidateTarget(t).code(), absl::StatusCode::kInvalidArgument);
}

TEST(BootMarking, EveryPageblockStartsMovable) {
  // memmap_init_range() marks every pageblock MOVABLE; nothing is UNMOVABLE until a fallback
  // claims it. SmallX86: DMA 160 pages (1 block), DMA32 [256, 896) (2 blocks starting in RAM
  // at 256 and 768), Normal [1024, 3072) (4 blocks).
  auto pa = PageAllocator::Create(testing::SmallOptions(testing::SmallX86()));
  ASSERT_TRUE(pa.ok()) << pa.status();
  EXPECT_FALSE((*pa)->group_by_mobility_disabled());
  const std::vector<ZoneStats> zs = (*pa)->Stats();
  const uint64_t want[] = {1, 2, 4};
  for (int z = 0; z < 3; ++z) {
    EXPECT_EQ(zs[z].nr_pageblocks_by_type[MIGRATE_MOVABLE], want[z]) << zone_name(zs[z].type);
    for (int t : {MIGRATE_UNMOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_HIGHATOMIC, MIGRATE_ISOLATE}) {
      EXPECT_EQ(zs[z].nr_pageblocks_by_type[t], 0u);
    }
  }
  ASSERT_TRUE((*pa)->Validate().ok());
}

TEST(BootMarking, FirstUnmovableAllocationClaimsAWholeNormalPageblock) {
  // GFP_KERNEL on x86: preferred zone Normal with ZONE_DMA32 configured, so ALLOC_NOFRAGMENT:
  // __rmqueue_claim() takes a free block of order >= pageblock_order (the order-10 block at
  // 1024) and its two pageblocks become UNMOVABLE.
  auto pa = PageAllocator::Create(testing::SmallOptions(testing::SmallX86(), /*pcp=*/false));
  ASSERT_TRUE(pa.ok()) << pa.status();
  Page* p = (*pa)->alloc_pages(GFP_KERNEL, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ((*pa)->page_to_pfn(p), 1024u);
  EXPECT_EQ((*pa)->pageblock_migratetype(p), MIGRATE_UNMOVABLE);
  const ZoneStats normal = (*pa)->Stats()[2];
  EXPECT_EQ(normal.nr_pageblocks_by_type[MIGRATE_UNMOVABLE], 2u);
  EXPECT_EQ(normal.migrate.claims[MIGRATE_UNMOVABLE][MIGRATE_MOVABLE][10], 1u);
  // A MOVABLE request keeps to MOVABLE blocks.
  Page* m = (*pa)->alloc_pages(GFP_HIGHUSER_MOVABLE, 0);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ((*pa)->pageblock_migratetype(m), MIGRATE_MOVABLE);
  EXPECT_TRUE((*pa)->Validate().ok());
}

TEST(MobilityGrouping, OptionOffMarksEveryBlockUnmovableAndServesEveryType) {
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86());
  o.page_group_by_mobility = false;
  auto pa = PageAllocator::Create(o);
  ASSERT_TRUE(pa.ok()) << pa.status();
  EXPECT_TRUE((*pa)->group_by_mobility_disabled());
  for (const ZoneStats& z : (*pa)->Stats()) {
    EXPECT_TRUE(z.group_by_mobility_disabled);
    EXPECT_EQ(z.nr_pageblocks_by_type[MIGRATE_MOVABLE], 0u) << zone_name(z.type);
  }
  // gfp_migratetype() is UNMOVABLE for everyone: a movable request never claims or steals.
  for (gfp_t gfp : {GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_RECLAIMABLE}) {
    Page* p = (*pa)->alloc_pages(gfp, 0);
    ASSERT_NE(p, nullptr) << FormatGfp(gfp);
    EXPECT_EQ((*pa)->pageblock_migratetype(p), MIGRATE_UNMOVABLE);
  }
  for (const ZoneStats& z : (*pa)->Stats()) {
    for (const auto& by_fallback : z.migrate.steals)
      for (const auto& by_order : by_fallback)
        for (uint64_t n : by_order) EXPECT_EQ(n, 0u);
  }
  EXPECT_TRUE((*pa)->Validate().ok());
}

TEST(MobilityGrouping, ZonesTooSmallToGroupTurnItOff) {
  // build_all_zonelists(): off when Σ (managed - high) over GFP_HIGHUSER_MOVABLE's zonelist <
  // pageblock_nr_pages * MIGRATE_TYPES. SmallI386 (no PAE: pageblock_order 10) has 2048 pages,
  // fewer than 1024 * 5.
  auto pa = PageAllocator::Create(testing::SmallOptions(testing::SmallI386()));
  ASSERT_TRUE(pa.ok()) << pa.status();
  EXPECT_EQ((*pa)->pageblock_order(), 10u);
  EXPECT_TRUE((*pa)->group_by_mobility_disabled());
  // The 512 MiB x86_64 default is far above its 2560-page threshold.
  PageAllocatorOptions big = testing::SmallOptions(*BuiltinTarget("x86_64"));
  auto pb = PageAllocator::Create(big);
  ASSERT_TRUE(pb.ok()) << pb.status();
  EXPECT_FALSE((*pb)->group_by_mobility_disabled());
}

}  // namespace
}  // namespace physmem
