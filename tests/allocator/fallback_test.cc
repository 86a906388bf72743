// The fallback rules between migratetypes (allocator/fallback.cc), checked on one Buddy over
// 2048 pages = 4 pageblocks of 512 (pageblock_order 9, as x86_64), all MOVABLE at boot. Each
// test builds the free/allocated layout it needs by hand: it takes every page, marks which are
// allocated (and whether movable), and frees the rest. Kernel: mm/page_alloc.c of 6.12 LTS
// (6.12.118: __rmqueue, __rmqueue_claim, try_to_steal_block, can_steal_fallback,
// __rmqueue_steal, __free_one_page).
#include <memory>

#include "allocator/buddy.h"
#include "allocator/gfp.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using testing::MiB;

class FallbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Target t = testing::SmallX86();
    t.zone_configured = {false, false, true, false};
    t.zone_end = {0, 0, UINT64_MAX, 0};
    t.ram = {{0, 8 * MiB}};
    auto mm = MemMap::Create(t);
    ASSERT_TRUE(mm.ok()) << mm.status();
    mem_map_ = *std::move(mm);
    pageblocks_ = std::make_unique<Pageblocks>(0, 2048, 9, false);
    buddy_ = std::make_unique<Buddy>(*mem_map_, mem_map_->segments(), 11, *pageblocks_, 0, 2048);
    buddy_->FreeAllRam();
  }

  uint64_t pfn(uint32_t idx) const { return mem_map_->index_to_pfn(idx); }
  uint32_t idx(uint64_t pfn) const { return *mem_map_->pfn_to_index(pfn); }
  // Takes all memory; the caller then frees what should be free.
  void TakeEverything() {
    ASSERT_EQ(pfn(*buddy_->RmqueueSmallest(10, MIGRATE_MOVABLE)), 0u);
    ASSERT_EQ(pfn(*buddy_->RmqueueSmallest(10, MIGRATE_MOVABLE)), 1024u);
    ASSERT_EQ(buddy_->free_pages(), 0u);
  }
  void MarkAllocated(uint64_t p, unsigned order, bool movable) {
    mem_map_->page(idx(p)).state.store(PageState::Allocated(order, 1, false, movable));
  }
  void Free(uint64_t p, unsigned order) { buddy_->FreeOne(idx(p), order); }
  std::optional<uint64_t> Rmqueue(unsigned order, int mt, unsigned flags) {
    RmqueueMode mode = RmqueueMode::kNormal;
    std::optional<uint32_t> i = buddy_->Rmqueue(order, mt, flags, &mode);
    if (!i) return std::nullopt;
    return pfn(*i);
  }

  std::unique_ptr<MemMap> mem_map_;
  std::unique_ptr<Pageblocks> pageblocks_;
  std::unique_ptr<Buddy> buddy_;
};

TEST_F(FallbackTest, FallbackOrderIsTheKernelsTable) {
  // fallbacks[][] of 6.12: UNMOVABLE -> RECLAIMABLE, MOVABLE; MOVABLE -> RECLAIMABLE, UNMOVABLE;
  // RECLAIMABLE -> UNMOVABLE, MOVABLE.
  EXPECT_EQ(kFallbacks[MIGRATE_UNMOVABLE][0], MIGRATE_RECLAIMABLE);
  EXPECT_EQ(kFallbacks[MIGRATE_UNMOVABLE][1], MIGRATE_MOVABLE);
  EXPECT_EQ(kFallbacks[MIGRATE_MOVABLE][0], MIGRATE_RECLAIMABLE);
  EXPECT_EQ(kFallbacks[MIGRATE_MOVABLE][1], MIGRATE_UNMOVABLE);
  EXPECT_EQ(kFallbacks[MIGRATE_RECLAIMABLE][0], MIGRATE_UNMOVABLE);
  EXPECT_EQ(kFallbacks[MIGRATE_RECLAIMABLE][1], MIGRATE_MOVABLE);
  // A RECLAIMABLE block is preferred over a MOVABLE one by an UNMOVABLE request.
  TakeEverything();
  pageblocks_->Set(0, MIGRATE_RECLAIMABLE);
  Free(0, 9);     // RECLAIMABLE block 0
  Free(1024, 9);  // MOVABLE block 2
  EXPECT_EQ(Rmqueue(0, MIGRATE_UNMOVABLE, 0), 0u);
  EXPECT_EQ(buddy_->counters().claims[MIGRATE_UNMOVABLE][MIGRATE_RECLAIMABLE][9], 1u);
}

TEST_F(FallbackTest, UnmovableRequestClaimsTheLargestFreeBlockAndItsPageblocks) {
  // __rmqueue_claim() walks from MAX_PAGE_ORDER down; at order >= pageblock_order
  // try_to_steal_block() changes every pageblock the block covers (change_pageblock_range()).
  EXPECT_EQ(Rmqueue(0, MIGRATE_UNMOVABLE, ALLOC_NOFRAGMENT), 0u);
  EXPECT_EQ(pageblocks_->Get(0), MIGRATE_UNMOVABLE);
  EXPECT_EQ(pageblocks_->Get(512), MIGRATE_UNMOVABLE);
  EXPECT_EQ(pageblocks_->Get(1024), MIGRATE_MOVABLE);
  EXPECT_EQ(buddy_->counters().claims[MIGRATE_UNMOVABLE][MIGRATE_MOVABLE][10], 1u);
  EXPECT_EQ(buddy_->counters().pageblock_changes[MIGRATE_MOVABLE][MIGRATE_UNMOVABLE], 2u);
  // expand() put the other 1023 pages on UNMOVABLE lists: the next request is served there.
  EXPECT_EQ(buddy_->nr_free(9, MIGRATE_UNMOVABLE), 1u);
  EXPECT_EQ(Rmqueue(0, MIGRATE_UNMOVABLE, ALLOC_NOFRAGMENT), 1u);
}

TEST_F(FallbackTest, ClaimsASubPageblockBlockWhenHalfTheBlockIsFreeOrAlike) {
  // Block 1 (pfns 512..1023): 128 free (order 7 at 512), the other 384 pages allocated but not
  // movable. For an UNMOVABLE request falling back into a MOVABLE block, alike_pages =
  // pageblock_nr_pages - free - movable = 384, and 128 + 384 >= 256: the block is claimed,
  // its free pages move, and __rmqueue_smallest() serves from the new UNMOVABLE list.
  TakeEverything();
  MarkAllocated(0, 9, true);
  MarkAllocated(640, 7, false);
  MarkAllocated(768, 8, false);
  Free(512, 7);
  EXPECT_EQ(Rmqueue(0, MIGRATE_UNMOVABLE, 0), 512u);
  EXPECT_EQ(pageblocks_->Get(512), MIGRATE_UNMOVABLE);
  EXPECT_EQ(buddy_->counters().claims[MIGRATE_UNMOVABLE][MIGRATE_MOVABLE][7], 1u);
  EXPECT_EQ(buddy_->nr_free(0, MIGRATE_UNMOVABLE), 1u);  // pfn 513, the first upper half
  EXPECT_EQ(buddy_->nr_free(6, MIGRATE_UNMOVABLE), 1u);
}

TEST_F(FallbackTest, StealsOnlyTheBlockWhenThePageblockIsMostlyMovable) {
  // The same layout with the 384 allocated pages movable: alike_pages = 0, 128 < 256, so
  // try_to_steal_block() refuses; __rmqueue_steal() takes the block and the pageblock stays
  // MOVABLE, the split halves back on MOVABLE lists.
  TakeEverything();
  MarkAllocated(0, 9, true);
  MarkAllocated(640, 7, true);
  MarkAllocated(768, 8, true);
  Free(512, 7);
  EXPECT_EQ(Rmqueue(0, MIGRATE_UNMOVABLE, 0), 512u);
  EXPECT_EQ(pageblocks_->Get(512), MIGRATE_MOVABLE);
  EXPECT_EQ(buddy_->counters().steals[MIGRATE_UNMOVABLE][MIGRATE_MOVABLE][7], 1u);
  EXPECT_EQ(buddy_->counters().claims[MIGRATE_UNMOVABLE][MIGRATE_MOVABLE][7], 0u);
  EXPECT_EQ(buddy_->nr_free(6, MIGRATE_MOVABLE), 1u);
  EXPECT_EQ(buddy_->nr_free(0, MIGRATE_UNMOVABLE), 0u);
}

TEST_F(FallbackTest, NofragmentRefusesToFragmentAPageblock) {
  // ALLOC_NOFRAGMENT: claims only at orders >= pageblock_order and no steal at all, so a
  // request that would split another type's pageblock fails (the zonelist walk goes on).
  TakeEverything();
  MarkAllocated(0, 9, true);
  MarkAllocated(640, 7, true);
  MarkAllocated(768, 8, true);
  Free(512, 7);
  EXPECT_FALSE(Rmqueue(0, MIGRATE_UNMOVABLE, ALLOC_NOFRAGMENT).has_value());
  EXPECT_EQ(buddy_->free_pages(), 128u);
}

TEST_F(FallbackTest, SmallMovableRequestsStealButNeverClaim) {
  // can_steal_fallback(): a MOVABLE request may claim only from a free block of order >=
  // pageblock_order / 2 (4). An UNMOVABLE pageblock with a free order-3 block loses just that
  // block, smallest first, and stays UNMOVABLE even though it is almost all free.
  TakeEverything();
  pageblocks_->Set(0, MIGRATE_UNMOVABLE);
  Free(0, 3);
  EXPECT_EQ(Rmqueue(0, MIGRATE_MOVABLE, 0), 0u);
  EXPECT_EQ(pageblocks_->Get(0), MIGRATE_UNMOVABLE);
  EXPECT_EQ(buddy_->counters().steals[MIGRATE_MOVABLE][MIGRATE_UNMOVABLE][3], 1u);
  EXPECT_EQ(buddy_->nr_free(2, MIGRATE_UNMOVABLE), 1u);  // halves stay on the block's type
}

TEST_F(FallbackTest, MovableRequestClaimsFromAnOrderFourBlock) {
  // Free order-4 block (16 pages) in an UNMOVABLE pageblock whose other pages are allocated
  // movable: alike = movable = 496, 16 + 496 >= 256, so the MOVABLE request claims the block.
  TakeEverything();
  pageblocks_->Set(0, MIGRATE_UNMOVABLE);
  MarkAllocated(16, 4, true);
  MarkAllocated(32, 5, true);
  MarkAllocated(64, 6, true);
  MarkAllocated(128, 7, true);
  MarkAllocated(256, 8, true);
  Free(0, 4);
  EXPECT_EQ(Rmqueue(0, MIGRATE_MOVABLE, 0), 0u);
  EXPECT_EQ(pageblocks_->Get(0), MIGRATE_MOVABLE);
  EXPECT_EQ(buddy_->counters().claims[MIGRATE_MOVABLE][MIGRATE_UNMOVABLE][4], 1u);
}

TEST_F(FallbackTest, HighatomicPageblocksDoNotMergeWithOtherTypes) {
  // __free_one_page(): at order >= pageblock_order a buddy merges with another type only if
  // both are mergeable (UNMOVABLE/MOVABLE/RECLAIMABLE).
  TakeEverything();
  pageblocks_->Set(0, MIGRATE_HIGHATOMIC);
  Free(512, 9);
  Free(0, 9);
  EXPECT_EQ(buddy_->nr_free(9), 2u);
  EXPECT_EQ(buddy_->nr_free(9, MIGRATE_HIGHATOMIC), 1u);
  EXPECT_EQ(buddy_->nr_free(10), 0u);
  EXPECT_EQ(buddy_->nr_free_highatomic(), 512u);
}

TEST_F(FallbackTest, MergedBuddyTakesTheFreedBlocksType) {
  // "Match buddy type": an UNMOVABLE block freed next to a free MOVABLE buddy merges, and the
  // buddy's pageblock becomes UNMOVABLE so that expand() later puts halves on the right list.
  TakeEverything();
  pageblocks_->Set(0, MIGRATE_UNMOVABLE);
  Free(512, 9);
  Free(0, 9);
  EXPECT_EQ(buddy_->nr_free(10, MIGRATE_UNMOVABLE), 1u);
  EXPECT_EQ(pageblocks_->Get(512), MIGRATE_UNMOVABLE);
}

TEST_F(FallbackTest, GroupingDisabledStoresEveryTypeAsUnmovableAndAlwaysClaims) {
  // set_pageblock_migratetype() with page_group_by_mobility_disabled stores UNMOVABLE for every
  // PCP type; boot marking therefore makes every block UNMOVABLE.
  Pageblocks off(0, 2048, 9, /*group_by_mobility_disabled=*/true);
  EXPECT_EQ(off.Get(0), MIGRATE_UNMOVABLE);
  off.Set(0, MIGRATE_MOVABLE);
  EXPECT_EQ(off.Get(0), MIGRATE_UNMOVABLE);
  off.Set(0, MIGRATE_HIGHATOMIC);
  EXPECT_EQ(off.Get(0), MIGRATE_HIGHATOMIC);
}

}  // namespace
}  // namespace physmem
