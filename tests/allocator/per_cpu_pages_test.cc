// Per-CPU lists keep pages per migratetype (allocator/per_cpu_pages.h): order_to_pindex() and the
// list a freed page joins (free_unref_page() of 6.12 LTS: its pageblock's type, HIGHATOMIC onto
// MOVABLE's list).
#include "allocator/per_cpu_pages.h"

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

TEST(PerCpuPages, ListIndexIsOrderTimesThreePlusMigratetype) {
  // order_to_pindex(): NR_LOWORDER_PCP_LISTS = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1).
  EXPECT_EQ(NR_PCP_LISTS, 12);
  EXPECT_EQ(order_to_pindex(MIGRATE_UNMOVABLE, 0), 0);
  EXPECT_EQ(order_to_pindex(MIGRATE_RECLAIMABLE, 0), 2);
  EXPECT_EQ(order_to_pindex(MIGRATE_MOVABLE, 3), 10);
}

TEST(PerCpuPages, AFreedPageGoesBackOnlyToItsPageblocksTypesList) {
  auto pa = PageAllocator::Create(testing::SmallOptions(testing::SmallX86()));
  ASSERT_TRUE(pa.ok()) << pa.status();
  if (!(*pa)->pcp_active()) GTEST_SKIP() << "per-CPU lists are off in this process (rseq unavailable)";
  // A movable page from a MOVABLE pageblock, freed: it sits on this CPU's MOVABLE order-0 list.
  // (A migration between the calls would move us to another CPU's lists; the property holds
  // either way for the UNMOVABLE request below, which must never see that page.)
  Page* m = (*pa)->alloc_pages(GFP_HIGHUSER_MOVABLE, 0);
  ASSERT_NE(m, nullptr);
  ASSERT_EQ((*pa)->pageblock_migratetype(m), MIGRATE_MOVABLE);
  const uint64_t pfn = (*pa)->page_to_pfn(m);
  ASSERT_TRUE((*pa)->__free_pages(m, 0).ok());
  Page* u = (*pa)->alloc_pages(GFP_KERNEL, 0);
  ASSERT_NE(u, nullptr);
  EXPECT_NE((*pa)->page_to_pfn(u), pfn);
  EXPECT_EQ((*pa)->pageblock_migratetype(u), MIGRATE_UNMOVABLE);
  ASSERT_TRUE((*pa)->__free_pages(u, 0).ok());
  EXPECT_TRUE((*pa)->Validate().ok());
}

TEST(PerCpuPages, ValidateFindsEveryListedPageOnItsTypesList) {
  auto pa = PageAllocator::Create(testing::SmallOptions(testing::SmallX86()));
  ASSERT_TRUE(pa.ok()) << pa.status();
  std::vector<Page*> held;
  for (gfp_t gfp : {GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_RECLAIMABLE}) {
    for (unsigned order = 0; order <= PAGE_ALLOC_COSTLY_ORDER; ++order) {
      Page* p = (*pa)->alloc_pages(gfp, order);
      ASSERT_NE(p, nullptr);
      held.push_back(p);
      ASSERT_TRUE((*pa)->__free_pages(p, order).ok());
    }
  }
  absl::StatusOr<PageCensus> c = (*pa)->Validate();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->allocated_pages, 0u);
  // The refills left pages on the lists of all three types (when the lists are on).
  if ((*pa)->pcp_active()) {
    EXPECT_GT(c->pcp_pages, 0u);
  }
}

}  // namespace
}  // namespace physmem
