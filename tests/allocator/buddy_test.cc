#include "allocator/buddy.h"

#include <memory>
#include <set>

#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using testing::KiB;
using testing::MiB;

class BuddyTest : public ::testing::Test {
 protected:
  // One zone over RAM [0,640K) and [1M,3.5M): 160 + 640 pages, a hole between.
  void SetUp() override {
    Target t = testing::SmallX86();
    t.zone_configured = {false, false, true, false};
    t.zone_end = {0, 0, UINT64_MAX, 0};
    t.ram = {{0, 640 * KiB}, {1 * MiB, 2560 * KiB}};
    auto mm = MemMap::Create(t);
    ASSERT_TRUE(mm.ok()) << mm.status();
    mem_map_ = *std::move(mm);
    // pageblock_order 9, as x86_64; every block MOVABLE from boot (memmap_init_range()).
    pageblocks_ = std::make_unique<Pageblocks>(0, 896, 9, false);
    buddy_ = std::make_unique<Buddy>(*mem_map_, mem_map_->segments(), 11, *pageblocks_, 0, 896);
    buddy_->FreeAllRam();
  }

  uint64_t pfn(uint32_t idx) const { return mem_map_->index_to_pfn(idx); }
  uint32_t idx(uint64_t pfn) const { return *mem_map_->pfn_to_index(pfn); }
  std::vector<uint64_t> NrFree() const {
    std::vector<uint64_t> v;
    for (unsigned o = 0; o < 11; ++o) v.push_back(buddy_->nr_free(o));
    return v;
  }

  std::unique_ptr<MemMap> mem_map_;
  std::unique_ptr<Pageblocks> pageblocks_;
  std::unique_ptr<Buddy> buddy_;
};

TEST_F(BuddyTest, CarvesRamIntoMaximalAlignedBlocksAroundHoles) {
  // [0,160): 128 + 32 pages. [256,896): 256 at 256, 512 at 512, 128 at 768? 768+128 = 896 -> yes.
  EXPECT_EQ(buddy_->free_pages(), 800u);
  std::set<std::pair<uint64_t, unsigned>> blocks;
  buddy_->ForEachFreeBlock([&](uint32_t i, unsigned o, int) { blocks.insert({pfn(i), o}); });
  const std::set<std::pair<uint64_t, unsigned>> want = {{0, 7}, {128, 5}, {256, 8}, {512, 8}, {768, 7}};
  EXPECT_EQ(blocks, want);
}

TEST_F(BuddyTest, BuddyOfBlockIsPfnXorOrderBit) {
  // The kernel's own example: block 8's order-1 buddy is 10; merged, they are block 8 at order 2.
  EXPECT_EQ(8u ^ (1u << 1), 10u);
  EXPECT_EQ(10u & ~(1u << 1), 8u);
  // Order-0 requests split the smallest free block, the order-5 one at 128: pages 128..131 come
  // out one by one. Freeing 130 and 131 merges them into one order-1 block at 130.
  std::vector<uint32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(*buddy_->RmqueueSmallest(0, MIGRATE_MOVABLE));
  EXPECT_EQ(pfn(got[0]), 128u);
  EXPECT_EQ(pfn(got[3]), 131u);
  const uint64_t order1_before = buddy_->nr_free(1);
  buddy_->FreeOne(got[2], 0);
  buddy_->FreeOne(got[3], 0);
  EXPECT_EQ(buddy_->nr_free(1), order1_before + 1);
  EXPECT_EQ(mem_map_->page(got[2]).state.load(), PageState::Buddy(1));
  EXPECT_EQ(mem_map_->page(got[3]).state.load(), 0u);
}

TEST_F(BuddyTest, TakesTheSmallestBlockThatFits) {
  // Free blocks: order 7 at 0, order 5 at 128, ... An order-5 request takes the order-5 block,
  // an order-6 request splits an order-7 block rather than the larger order-8 ones.
  EXPECT_EQ(pfn(*buddy_->RmqueueSmallest(5, MIGRATE_MOVABLE)), 128u);
  EXPECT_EQ(pfn(*buddy_->RmqueueSmallest(6, MIGRATE_MOVABLE)), 0u);
}

TEST_F(BuddyTest, SplitKeepsLowerHalfAndFreesUpperHalves) {
  // Order 0 from the order-7 block at pfn 0 (after taking the order-5 one) leaves one free block
  // at each order 0..6: the upper halves 1, 2, 4, ..., 64.
  ASSERT_EQ(pfn(*buddy_->RmqueueSmallest(5, MIGRATE_MOVABLE)), 128u);
  auto i = buddy_->RmqueueSmallest(0, MIGRATE_MOVABLE);
  ASSERT_TRUE(i);
  EXPECT_EQ(pfn(*i), 0u);
  for (unsigned o = 0; o < 7; ++o) {
    bool found = false;
    buddy_->ForEachFreeBlock([&](uint32_t b, unsigned bo, int) { found |= bo == o && pfn(b) == (1u << o); });
    EXPECT_TRUE(found) << "upper half at pfn " << (1u << o) << " order " << o;
  }
  EXPECT_EQ(buddy_->free_pages(), 800u - 32u - 1u);
}

TEST_F(BuddyTest, ConsecutiveAllocationsComeOutInPhysicalOrder) {
  // expand() returns upper halves, so one block is handed out from its bottom up: 128..159.
  for (uint64_t want = 128; want < 160; ++want) EXPECT_EQ(pfn(*buddy_->RmqueueSmallest(0, MIGRATE_MOVABLE)), want);
}

TEST_F(BuddyTest, FreeingEverythingRestoresTheBootLayout) {
  const auto before = NrFree();
  std::vector<std::pair<uint32_t, unsigned>> held;
  for (unsigned o : {0u, 3u, 1u, 5u, 0u, 2u, 7u, 4u}) {
    auto i = buddy_->RmqueueSmallest(o, MIGRATE_MOVABLE);
    ASSERT_TRUE(i);
    held.push_back({*i, o});
  }
  for (auto it = held.rbegin(); it != held.rend(); ++it) buddy_->FreeOne(it->first, it->second);
  EXPECT_EQ(NrFree(), before);
  EXPECT_EQ(buddy_->free_pages(), 800u);
}

TEST_F(BuddyTest, NeverMergesAcrossAHole) {
  // Pages 128..159 (order 5 at 128) and 256.. are separated by the hole [160,256): the order-5
  // block at 128 has its order-5 buddy at 160, which is in the hole, so it stays order 5.
  auto blocks_at = [&](uint64_t p) {
    unsigned order = 99;
    buddy_->ForEachFreeBlock([&](uint32_t b, unsigned o, int) { if (pfn(b) == p) order = o; });
    return order;
  };
  EXPECT_EQ(blocks_at(128), 5u);
  auto i = buddy_->RmqueueSmallest(5, MIGRATE_MOVABLE);  // smallest order-5 block: the one at 128
  ASSERT_TRUE(i);
  EXPECT_EQ(pfn(*i), 128u);
  buddy_->FreeOne(*i, 5);
  EXPECT_EQ(blocks_at(128), 5u);
}

TEST_F(BuddyTest, ReturnsNothingWhenNoBlockIsLargeEnough) {
  EXPECT_FALSE(buddy_->RmqueueSmallest(9, MIGRATE_MOVABLE).has_value());  // largest block is order 8
  EXPECT_TRUE(buddy_->RmqueueSmallest(8, MIGRATE_MOVABLE).has_value());
}

TEST(BuddyZones, NeverMergesAcrossAZoneBoundary) {
  // Zones split RAM [0,8M) at 1M: the order-8 blocks on either side of pfn 256 are buddies by
  // pfn arithmetic (0 ^ 256 = 256) but live in different zones, so they never merge.
  Target t = testing::SmallI386();
  auto mm = MemMap::Create(t);
  ASSERT_TRUE(mm.ok());
  std::vector<Segment> dma, normal;
  for (const Segment& s : (*mm)->segments()) (s.zone == ZONE_DMA ? dma : normal).push_back(s);
  Pageblocks pb(dma.front().start_pfn, dma.back().end_pfn, 9, false);
  Buddy b(**mm, dma, 11, pb, dma.front().start_pfn, dma.back().end_pfn);
  b.FreeAllRam();
  EXPECT_EQ(b.nr_free(8), 1u);
  EXPECT_EQ(b.nr_free(9), 0u);
  auto i = b.RmqueueSmallest(8, MIGRATE_MOVABLE);
  ASSERT_TRUE(i);
  b.FreeOne(*i, 8);
  EXPECT_EQ(b.nr_free(8), 1u);
  EXPECT_EQ(b.nr_free(9), 0u);
}

}  // namespace
}  // namespace physmem
