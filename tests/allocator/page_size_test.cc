// The allocator on targets whose pages are not 4 KiB: alpha-like 8 KiB pages and arm64 with
// 64 KiB pages (the profiles deploy/targets/alpha-8k.textproto and arm64-64k.textproto, loaded
// as a user would). Every kernel formula that depends on PAGE_SHIFT is checked with the numbers
// worked out by hand in the comments: page_address() (lowmem_page_address(): __va(PFN_PHYS(pfn))),
// the watermarks (__setup_per_zone_wmarks(): pages_min = min_free_kbytes >> (PAGE_SHIFT - 10)),
// the per-CPU batch (zone_batchsize(): min(managed >> 10, SZ_1M / PAGE_SIZE)), pageblock_order
// (pageblock-flags.h: min(PMD_SHIFT - PAGE_SHIFT, MAX_PAGE_ORDER)), plus allocate, free and
// Validate() after every step.
#include <string>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

struct PageSizeCase {
  const char* file;  // under deploy/targets/
  uint32_t page_size;
  uint64_t total_pages;
  unsigned max_page_order;
  unsigned pageblock_order;
  // Per populated zone, lowest first: managed pages, min/low/high, pcp batch.
  struct ZoneWant {
    ZoneType zone;
    uint64_t managed;
    uint64_t min, low, high;
    uint32_t batch;
  };
  std::vector<ZoneWant> zones;
};

void PrintTo(const PageSizeCase& c, std::ostream* os) { *os << c.file; }

class PageSize : public ::testing::TestWithParam<PageSizeCase> {
 protected:
  void SetUp() override {
    absl::StatusOr<Target> t =
        LoadTargetFile(std::string(PHYSMEM_SOURCE_DIR) + "/deploy/targets/" + GetParam().file);
    ASSERT_TRUE(t.ok()) << t.status();
    auto pa = PageAllocator::Create(testing::SmallOptions(*t));
    ASSERT_TRUE(pa.ok()) << pa.status();
    pa_ = *std::move(pa);
    ExpectValid();
  }
  PageCensus ExpectValid() {
    absl::StatusOr<PageCensus> c = pa_->Validate();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : PageCensus{};
  }
  const ZoneStats* Zone(ZoneType z) {
    stats_ = pa_->Stats();
    for (const ZoneStats& s : stats_) {
      if (s.type == z) return &s;
    }
    return nullptr;
  }
  std::unique_ptr<PageAllocator> pa_;
  std::vector<ZoneStats> stats_;
};

TEST_P(PageSize, BootsWithEveryPageFreeInThisPageSize) {
  const PageSizeCase& c = GetParam();
  EXPECT_EQ(pa_->target().page_size, c.page_size);
  EXPECT_EQ(uint64_t{1} << pa_->target().page_shift, c.page_size);
  EXPECT_EQ(pa_->target().max_page_order, c.max_page_order);
  EXPECT_EQ(pa_->pageblock_order(), c.pageblock_order);
  const PageCensus census = ExpectValid();
  EXPECT_EQ(census.total_pages, c.total_pages);
  EXPECT_EQ(census.buddy_free_pages + census.pcp_pages, c.total_pages);
}

TEST_P(PageSize, WatermarksUseThisPageShift) {
  for (const PageSizeCase::ZoneWant& want : GetParam().zones) {
    const ZoneStats* z = Zone(want.zone);
    ASSERT_NE(z, nullptr) << zone_name(want.zone);
    EXPECT_EQ(z->managed_pages, want.managed) << zone_name(want.zone);
    EXPECT_EQ(z->watermarks.min, want.min) << zone_name(want.zone);
    EXPECT_EQ(z->watermarks.low, want.low) << zone_name(want.zone);
    EXPECT_EQ(z->watermarks.high, want.high) << zone_name(want.zone);
  }
}

TEST_P(PageSize, PerCpuBatchIsZoneBatchsizeForThisPageSize) {
  for (const PageSizeCase::ZoneWant& want : GetParam().zones) {
    const ZoneStats* z = Zone(want.zone);
    ASSERT_NE(z, nullptr) << zone_name(want.zone);
    EXPECT_EQ(z->pcp_batch, want.batch) << zone_name(want.zone);
  }
}

// Every order from 0 to MAX_PAGE_ORDER: the block is naturally aligned, its physical address is
// pfn << PAGE_SHIFT, its kernel address PAGE_OFFSET + phys - PHYS_OFFSET, and its whole extent
// (2^order pages of page_size bytes) is writable host memory in the arena.
TEST_P(PageSize, AllocatesAndFreesEveryOrderWithPageSizedArithmetic) {
  const Target& t = pa_->target();
  for (unsigned order = 0; order <= t.max_page_order; ++order) {
    Page* p = pa_->alloc_pages(GFP_KERNEL, order);
    ASSERT_NE(p, nullptr) << "order " << order;
    const uint64_t pfn = pa_->page_to_pfn(p);
    EXPECT_EQ(pfn % (uint64_t{1} << order), 0u) << "order " << order;
    EXPECT_EQ(pa_->page_to_phys(p), pfn * t.page_size);
    EXPECT_EQ(pa_->page_address(p), t.page_offset + pfn * t.page_size - t.phys_offset);
    EXPECT_EQ(*pa_->VirtToPage(pa_->page_address(p)), p);
    std::byte* host = pa_->page_host_address(p);
    const uint64_t bytes = uint64_t{t.page_size} << order;
    host[0] = std::byte{0x5a};
    host[bytes - 1] = std::byte{0xa5};
    EXPECT_EQ(ExpectValid().allocated_pages, uint64_t{1} << order);
    ASSERT_TRUE(pa_->__free_pages(p, order).ok()) << "order " << order;
    ExpectValid();
  }
}

// Exhausting order-0 pages stops at the MIN watermarks, and everything comes back.
TEST_P(PageSize, ExhaustingAndFreeingKeepsTheBooks) {
  std::vector<Page*> got;
  while (Page* p = pa_->alloc_pages(GFP_KERNEL, 0)) got.push_back(p);
  uint64_t kept_back = 0;
  for (const PageSizeCase::ZoneWant& want : GetParam().zones) kept_back += want.min;
  EXPECT_LE(got.size(), GetParam().total_pages - kept_back / 2);
  EXPECT_GE(got.size(), GetParam().total_pages - 2 * GetParam().zones.back().high - 2 * kept_back);
  EXPECT_EQ(ExpectValid().allocated_pages, got.size());
  for (Page* p : got) ASSERT_TRUE(pa_->__free_pages(p, 0).ok());
  pa_->drain_all_pages();
  const PageCensus c = ExpectValid();
  EXPECT_EQ(c.allocated_pages, 0u);
  EXPECT_EQ(c.buddy_free_pages, GetParam().total_pages);
}

INSTANTIATE_TEST_SUITE_P(
    Targets, PageSize,
    ::testing::Values(
        // alpha-8k: 128 MiB = 16384 pages; DMA [0, 16 MiB) = 2048, Normal 14336.
        // min_free_kbytes = int_sqrt(131072 * 16) = 1448; pages_min = 1448 >> (13 - 10) = 181.
        // DMA: 181 * 2048 / 16384 = 22, gap max(22 >> 2, 2048 * 10 / 10000) = 5: 22/27/32.
        // Normal: 181 * 14336 / 16384 = 158, gap max(39, 14) = 39: 158/197/236.
        // batch: min(managed >> 10, SZ_1M >> 13 = 128) / 4, then rounddown_pow_of_two(b + b/2) - 1,
        // at least 1: DMA min(2, 128) / 4 = 0 -> 1 -> 0 -> 1; Normal 14 / 4 = 3 -> 4 - 1 = 3.
        PageSizeCase{"alpha-8k.textproto", 8192, 16384, 10, 10,
                     {{ZONE_DMA, 2048, 22, 27, 32, 1}, {ZONE_NORMAL, 14336, 158, 197, 236, 3}}},
        // arm64-64k: DMA 1 GiB = 16384 pages, Normal 256 MiB = 4096 pages (20480 in all).
        // min_free_kbytes = int_sqrt(1310720 * 16) = 4579; pages_min = 4579 >> (16 - 10) = 71.
        // DMA: 71 * 16384 / 20480 = 56, gap max(14, 16) = 16: 56/72/88.
        // Normal: 71 * 4096 / 20480 = 14, gap max(3, 4) = 4: 14/18/22.
        // batch: DMA min(16, SZ_1M >> 16 = 16) / 4 = 4 -> rounddown_pow_of_two(6) - 1 = 3;
        // Normal min(4, 16) / 4 = 1 -> 0 -> 1. pageblock_order: PMD_SHIFT 29 - 16 = 13.
        PageSizeCase{"arm64-64k.textproto", 65536, 20480, 13, 13,
                     {{ZONE_DMA, 16384, 56, 72, 88, 3}, {ZONE_NORMAL, 4096, 14, 18, 22, 1}}}),
    [](const ::testing::TestParamInfo<PageSizeCase>& info) {
      return std::string(info.param.page_size == 8192 ? "Alpha8K" : "Arm64_64K");
    });

}  // namespace
}  // namespace physmem
