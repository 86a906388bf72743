#include "allocator/watermark.h"

#include <vector>

#include "allocator/gfp.h"
#include "gtest/gtest.h"

namespace physmem {
namespace {

struct MinFreeCase {
  uint64_t lowmem_mib;
  uint64_t want_kbytes;
};

class DefaultMinFree : public ::testing::TestWithParam<MinFreeCase> {};

// The table in the comment above calculate_min_free_kbytes() in mm/page_alloc.c.
TEST_P(DefaultMinFree, MatchesTheKernelTable) {
  EXPECT_EQ(DefaultMinFreeKbytes(GetParam().lowmem_mib * 1024), GetParam().want_kbytes);
}
INSTANTIATE_TEST_SUITE_P(KernelComment, DefaultMinFree,
                         ::testing::Values(MinFreeCase{16, 512}, MinFreeCase{64, 1024}, MinFreeCase{1024, 4096},
                                           MinFreeCase{4096, 8192}, MinFreeCase{16384, 16384}));

TEST(DefaultMinFree, IsClampedTo128KiBAnd256MiB) {
  EXPECT_EQ(DefaultMinFreeKbytes(64), 128u);
  EXPECT_EQ(DefaultMinFreeKbytes(uint64_t{1} << 40), 262144u);
}

TEST(SetupZoneWatermarks, SplitsMinAmongLowmemZonesByTheirSize) {
  // 4 KiB pages, min_free_kbytes 4096 -> pages_min 1024, DMA gets 1/8 of it, NORMAL 7/8.
  const std::array<uint64_t, MAX_NR_ZONES> managed = {32768, 0, 229376, 0};
  const auto w = SetupZoneWatermarks(managed, 4096, 12, 10);
  EXPECT_EQ(w[ZONE_DMA].min, 128u);
  EXPECT_EQ(w[ZONE_NORMAL].min, 896u);
  // gap = max(min/4, managed * 10 / 10000): NORMAL max(224, 229) = 229.
  EXPECT_EQ(w[ZONE_NORMAL].low, 896u + 229u);
  EXPECT_EQ(w[ZONE_NORMAL].high, 896u + 2 * 229u);
  // DMA: max(32, 32) = 32.
  EXPECT_EQ(w[ZONE_DMA].low, 160u);
  EXPECT_EQ(w[ZONE_DMA32].min, 0u);
}

TEST(SetupZoneWatermarks, HighmemMinIsClampedBetween32And128Pages) {
  const std::array<uint64_t, MAX_NR_ZONES> small = {4096, 0, 65536, 8192};
  EXPECT_EQ(SetupZoneWatermarks(small, 1024, 12, 10)[ZONE_HIGHMEM].min, 32u);   // 8192/1024 = 8 -> 32
  const std::array<uint64_t, MAX_NR_ZONES> big = {4096, 0, 65536, 1u << 20};
  EXPECT_EQ(SetupZoneWatermarks(big, 1024, 12, 10)[ZONE_HIGHMEM].min, 128u);   // 1024 -> 128
}

// __setup_per_zone_wmarks() (mm/page_alloc.c, 6.12) caps only WMARK_MIN of a HIGHMEM zone:
// "The WMARK_HIGH-WMARK_LOW and (WMARK_LOW-WMARK_MIN) deltas control async page reclaim, and so
// should not be capped for highmem and movable zones." The gap is
// max(tmp >> 2, mult_frac(managed, watermark_scale_factor, 10000)) with tmp the zone's uncapped
// share of pages_min. i386 with 1 GiB (4 KiB pages): DMA 4096, Normal 225280, HighMem 32768
// managed pages; min_free_kbytes = int_sqrt(917504 * 16) = 3831, pages_min 957; HighMem's share
// 957 * 32768 / 229376 = 136, gap max(34, 32) = 34: 32/66/100 (a capped share gave 32/64/96).
TEST(SetupZoneWatermarks, HighmemGapComesFromTheUncappedShareOfPagesMin) {
  const std::array<uint64_t, MAX_NR_ZONES> managed = {4096, 0, 225280, 32768};
  const uint64_t min_free_kbytes = DefaultMinFreeKbytes((4096 + 225280) * 4);
  ASSERT_EQ(min_free_kbytes, 3831u);
  const auto w = SetupZoneWatermarks(managed, min_free_kbytes, 12, 10);
  EXPECT_EQ(w[ZONE_HIGHMEM].min, 32u);
  EXPECT_EQ(w[ZONE_HIGHMEM].low, 66u);
  EXPECT_EQ(w[ZONE_HIGHMEM].high, 100u);
  // Lowmem zones are unchanged by the rule: MIN is the share itself (957 * 225280 / 229376 = 939).
  EXPECT_EQ(w[ZONE_NORMAL].min, 939u);
  EXPECT_EQ(w[ZONE_NORMAL].low, 939u + 234u);  // max(939 / 4, 225280 * 10 / 10000 = 225)
}

TEST(SetupLowmemReserve, MatchesTheKernelsI386Example) {
  // mm/page_alloc.c's comment: 1 GiB i386 with 16M DMA, 784M NORMAL, 224M HIGHMEM (4 KiB pages).
  const uint64_t mib = 256;  // pages per MiB
  const std::array<uint64_t, MAX_NR_ZONES> managed = {16 * mib, 0, 784 * mib, 224 * mib};
  const auto r = SetupLowmemReserve(managed, kDefaultLowmemReserveRatio);
  EXPECT_EQ(r[ZONE_DMA][ZONE_NORMAL], 784 * mib / 256);           // NORMAL allocation leaves 784M/256 in DMA
  EXPECT_EQ(r[ZONE_NORMAL][ZONE_HIGHMEM], 224 * mib / 32);        // HIGHMEM allocation: 224M/32 in NORMAL
  EXPECT_EQ(r[ZONE_DMA][ZONE_HIGHMEM], (224 + 784) * mib / 256);  // and (224M+784M)/256 in DMA
  EXPECT_EQ(r[ZONE_HIGHMEM][ZONE_HIGHMEM], 0u);
  EXPECT_EQ(r[ZONE_NORMAL][ZONE_NORMAL], 0u);
}

TEST(SetupLowmemReserve, IsZeroForAnEmptyZoneOrAZeroRatio) {
  const std::array<uint64_t, MAX_NR_ZONES> managed = {0, 1000, 100000, 0};
  auto r = SetupLowmemReserve(managed, kDefaultLowmemReserveRatio);
  EXPECT_EQ(r[ZONE_DMA][ZONE_NORMAL], 0u);
  EXPECT_EQ(r[ZONE_DMA32][ZONE_NORMAL], 100000u / 256);
  r = SetupLowmemReserve(managed, {256, 0, 32, 0});
  EXPECT_EQ(r[ZONE_DMA32][ZONE_NORMAL], 0u);
}

TEST(ZoneWatermarkOk, FailsAtOrBelowTheMarkPlusReserve) {
  const std::vector<uint64_t> nr_free(11, 0);
  EXPECT_TRUE(ZoneWatermarkOk(101, nr_free, 0, 100, 0, ALLOC_WMARK_MIN));
  EXPECT_FALSE(ZoneWatermarkOk(100, nr_free, 0, 100, 0, ALLOC_WMARK_MIN));
  EXPECT_FALSE(ZoneWatermarkOk(150, nr_free, 0, 100, 50, ALLOC_WMARK_MIN));
  EXPECT_TRUE(ZoneWatermarkOk(151, nr_free, 0, 100, 50, ALLOC_WMARK_MIN));
}

TEST(ZoneWatermarkOk, AtomicMayUseFiveEighthsOfTheMinReserve) {
  const std::vector<uint64_t> nr_free(11, 0);
  // mark 1000: __GFP_HIGH -> 500; plus non-blocking -> 375 (37.5%).
  EXPECT_FALSE(ZoneWatermarkOk(500, nr_free, 0, 1000, 0, gfp_to_alloc_flags(__GFP_HIGH | __GFP_DIRECT_RECLAIM, 0)));
  EXPECT_TRUE(ZoneWatermarkOk(501, nr_free, 0, 1000, 0, gfp_to_alloc_flags(__GFP_HIGH | __GFP_DIRECT_RECLAIM, 0)));
  EXPECT_FALSE(ZoneWatermarkOk(375, nr_free, 0, 1000, 0, gfp_to_alloc_flags(GFP_ATOMIC, 0)));
  EXPECT_TRUE(ZoneWatermarkOk(376, nr_free, 0, 1000, 0, gfp_to_alloc_flags(GFP_ATOMIC, 0)));
  // GFP_NOWAIT can't block but has no __GFP_HIGH: no discount (since 6.3).
  EXPECT_FALSE(ZoneWatermarkOk(999, nr_free, 0, 1000, 0, gfp_to_alloc_flags(GFP_NOWAIT, 0)));
  EXPECT_FALSE(ZoneWatermarkOk(999, nr_free, 0, 1000, 0, gfp_to_alloc_flags(GFP_KERNEL, 0)));
}

TEST(ZoneWatermarkOk, HighOrderNeedsABlockOfThatOrder) {
  std::vector<uint64_t> nr_free(11, 0);
  nr_free[0] = 5000;
  EXPECT_FALSE(ZoneWatermarkOk(5000, nr_free, 3, 100, 0, ALLOC_WMARK_MIN));
  nr_free[4] = 1;
  EXPECT_TRUE(ZoneWatermarkOk(5016, nr_free, 3, 100, 0, ALLOC_WMARK_MIN));
}

TEST(ZoneWatermarkOk, MemallocIgnoresWatermarks) {
  const std::vector<uint64_t> nr_free(11, 0);
  EXPECT_TRUE(ZoneWatermarkOk(1, nr_free, 0, 1000, 0, gfp_to_alloc_flags(GFP_KERNEL | __GFP_MEMALLOC, 0)));
  EXPECT_FALSE(ZoneWatermarkOk(1, nr_free, 0, 1000, 0,
                               gfp_to_alloc_flags(GFP_KERNEL | __GFP_MEMALLOC | __GFP_NOMEMALLOC, 0)));
}

}  // namespace
}  // namespace physmem
