#include "allocator/page_allocator.h"

#include <cstring>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using testing::MiB;

// Owners used by the tests (0 is kNoOwner).
constexpr uint32_t kAlice = 7, kBob = 8;

class PageAllocatorTest : public ::testing::Test {
 protected:
  void Boot(PageAllocatorOptions o) {
    auto pa = PageAllocator::Create(std::move(o));
    ASSERT_TRUE(pa.ok()) << pa.status();
    pa_ = *std::move(pa);
    ExpectValid();
  }
  void BootX86(bool pcp = true) { Boot(testing::SmallOptions(testing::SmallX86(), pcp)); }
  void BootI386(bool pcp = true) { Boot(testing::SmallOptions(testing::SmallI386(), pcp)); }

  PageCensus ExpectValid() {
    absl::StatusOr<PageCensus> c = pa_->Validate();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : PageCensus{};
  }
  ZoneStats ZoneOf(ZoneType z) {
    for (const ZoneStats& s : pa_->Stats()) {
      if (s.type == z) return s;
    }
    ADD_FAILURE() << "no zone " << zone_name(z);
    return {};
  }
  // Allocates until failure; returns the pages.
  std::vector<Page*> Exhaust(gfp_t gfp, unsigned order, uint32_t owner = kNoOwner) {
    std::vector<Page*> got;
    while (Page* p = pa_->alloc_pages(gfp, order, owner)) got.push_back(p);
    return got;
  }
  void FreeAll(std::vector<Page*>& pages, unsigned order, uint32_t owner = kNoOwner) {
    for (Page* p : pages) ASSERT_TRUE(pa_->__free_pages(p, order, owner).ok());
    pages.clear();
  }
  // Bad calls must change nothing: same census, same free counts per zone.
  struct Snapshot {
    PageCensus census;
    std::vector<uint64_t> free;
    bool operator==(const Snapshot& o) const {
      return census.allocated_pages == o.census.allocated_pages && census.allocated_blocks == o.census.allocated_blocks &&
             free == o.free;
    }
  };
  Snapshot Take() {
    Snapshot s{ExpectValid(), {}};
    for (const ZoneStats& z : pa_->Stats()) s.free.push_back(z.free_pages);
    return s;
  }

  std::unique_ptr<PageAllocator> pa_;
};

TEST_F(PageAllocatorTest, BootsWithEveryPageFreeAndCountsAddingUp) {
  BootX86();
  const PageCensus c = ExpectValid();
  EXPECT_EQ(c.total_pages, 160u + 640u + 2048u);
  EXPECT_EQ(c.allocated_pages, 0u);
  EXPECT_EQ(ZoneOf(ZONE_DMA).present_pages, 160u);
  EXPECT_EQ(ZoneOf(ZONE_DMA32).present_pages, 640u);
  EXPECT_EQ(ZoneOf(ZONE_NORMAL).present_pages, 2048u);
  // spanned counts the hole between [0,640K) ... no: DMA spans [0,160); DMA32 [256,896).
  EXPECT_EQ(ZoneOf(ZONE_DMA32).start_pfn, 256u);
  EXPECT_EQ(ZoneOf(ZONE_DMA32).spanned_pages, 640u);
}

TEST_F(PageAllocatorTest, GfpKernelPrefersNormalThenFallsBackDownward) {
  BootX86(/*pcp=*/false);
  // The first pass takes a zone only above its LOW watermark + lowmem_reserve: GFP_KERNEL stays
  // in NORMAL until NORMAL fails that check, and only then falls back to DMA32 (then DMA).
  const Watermarks normal = ZoneOf(ZONE_NORMAL).watermarks;
  std::vector<Page*> all;
  bool fell_back = false;
  while (Page* p = pa_->alloc_pages(GFP_KERNEL, 0)) {
    all.push_back(p);
    if (pa_->page_zonenum(p) != ZONE_NORMAL && !fell_back) {
      fell_back = true;
      EXPECT_EQ(pa_->page_zonenum(p), ZONE_DMA32) << "DMA32 comes before DMA";
      // NORMAL had fallen to its LOW watermark: free <= low fails __zone_watermark_ok().
      EXPECT_LE(ZoneOf(ZONE_NORMAL).free_pages, normal.low);
      EXPECT_GE(ZoneOf(ZONE_NORMAL).free_pages, normal.low - 1);
    }
  }
  EXPECT_TRUE(fell_back);
  std::set<ZoneType> zones;
  for (Page* q : all) zones.insert(pa_->page_zonenum(q));
  EXPECT_EQ(zones, (std::set<ZoneType>{ZONE_DMA, ZONE_DMA32, ZONE_NORMAL}));
  FreeAll(all, 0);
  ExpectValid();
}

class AllowedZones : public PageAllocatorTest, public ::testing::WithParamInterface<bool> {};
INSTANTIATE_TEST_SUITE_P(PerCpuListsOnAndOff, AllowedZones, ::testing::Bool());

// allowed_zones drops zones from the zonelist (as a cpuset does), for the fast path, the slow
// path and bulk alike; the remaining zones keep their order.
TEST_P(AllowedZones, AllocationsStayInTheAllowedZones) {
  const bool pcp = GetParam();
  BootX86(pcp);
  const uint32_t no_normal = PageAllocator::kAllZones & ~(1u << ZONE_NORMAL);
  Page* p = pa_->alloc_pages(GFP_KERNEL, 0, kAlice, no_normal);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(pa_->page_zonenum(p), ZONE_DMA32) << "NORMAL skipped, DMA32 next";
  ASSERT_TRUE(pa_->__free_pages(p, 0, kAlice).ok());
  std::vector<Page*> got;
  while (Page* q = pa_->alloc_pages(GFP_KERNEL, 0, kAlice, 1u << ZONE_DMA)) got.push_back(q);
  ASSERT_FALSE(got.empty());
  for (Page* q : got) EXPECT_EQ(pa_->page_zonenum(q), ZONE_DMA);
  FreeAll(got, 0, kAlice);
  std::vector<Page*> bulk(64, nullptr);
  ASSERT_EQ(pa_->alloc_pages_bulk(GFP_KERNEL, 64, bulk.data(), kAlice, 1u << ZONE_DMA32), 64u);
  for (Page* q : bulk) EXPECT_EQ(pa_->page_zonenum(q), ZONE_DMA32);
  FreeAll(bulk, 0, kAlice);
  EXPECT_EQ(pa_->alloc_pages(GFP_DMA, 0, kAlice, no_normal & ~(1u << ZONE_DMA)), nullptr)
      << "GFP_DMA's only zone is not allowed";
  ExpectValid();
}

TEST_F(PageAllocatorTest, GfpDmaUsesOnlyZoneDmaAndGfpDma32NeverNormal) {
  BootX86();
  std::vector<Page*> dma = Exhaust(GFP_KERNEL | __GFP_DMA, 0);
  ASSERT_FALSE(dma.empty());
  for (Page* p : dma) EXPECT_EQ(pa_->page_zonenum(p), ZONE_DMA);
  std::vector<Page*> dma32 = Exhaust(GFP_KERNEL | __GFP_DMA32, 0);
  for (Page* p : dma32) EXPECT_NE(pa_->page_zonenum(p), ZONE_NORMAL);
  EXPECT_EQ(ZoneOf(ZONE_NORMAL).free_pages, 2048u);
  FreeAll(dma, 0);
  FreeAll(dma32, 0);
  ExpectValid();
}

TEST_F(PageAllocatorTest, LowmemReserveKeepsLowerZonesFromFallbackAllocations) {
  // A reserve ratio of 1 makes DMA keep all of DMA32+NORMAL's size back from NORMAL allocations:
  // more than DMA has, so GFP_KERNEL can never fall back into DMA, while GFP_DMA still can.
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86(), false);
  o.lowmem_reserve_ratio = {1, 256, 32, 0};
  Boot(std::move(o));
  EXPECT_EQ(ZoneOf(ZONE_DMA).lowmem_reserve[ZONE_NORMAL], 640u + 2048u);
  std::vector<Page*> kernel = Exhaust(GFP_KERNEL, 0);
  for (Page* p : kernel) EXPECT_NE(pa_->page_zonenum(p), ZONE_DMA);
  Page* dma = pa_->alloc_pages(GFP_DMA, 0);
  ASSERT_NE(dma, nullptr);
  EXPECT_EQ(pa_->page_zonenum(dma), ZONE_DMA);
  kernel.push_back(dma);
  FreeAll(kernel, 0);
  ExpectValid();
}

TEST_F(PageAllocatorTest, DefaultLowmemReserveMatchesTheKernelFormula) {
  BootX86();
  EXPECT_EQ(ZoneOf(ZONE_DMA).lowmem_reserve[ZONE_DMA32], 640u / 256);
  EXPECT_EQ(ZoneOf(ZONE_DMA).lowmem_reserve[ZONE_NORMAL], (640u + 2048u) / 256);
  EXPECT_EQ(ZoneOf(ZONE_DMA32).lowmem_reserve[ZONE_NORMAL], 2048u / 256);
}

TEST_F(PageAllocatorTest, AtomicDipsIntoTheMinReserveWhereKernelMayNot) {
  // One zone, a large min watermark so the reserve is easy to see.
  Target t = testing::SmallX86();
  t.zone_configured = {false, false, true, false};
  t.zone_end = {0, 0, UINT64_MAX, 0};
  PageAllocatorOptions o = testing::SmallOptions(t, false);
  o.min_free_kbytes = 1024;  // 256 pages
  Boot(std::move(o));
  const Watermarks w = ZoneOf(ZONE_NORMAL).watermarks;
  ASSERT_EQ(w.min, 256u);
  std::vector<Page*> kernel = Exhaust(GFP_KERNEL, 0);
  // GFP_KERNEL stops at the min watermark: free == min.
  EXPECT_EQ(ZoneOf(ZONE_NORMAL).free_pages, w.min);
  std::vector<Page*> atomic = Exhaust(GFP_ATOMIC, 0);
  // GFP_ATOMIC goes down to 37.5% of min: 256 -> 128 -> 96.
  EXPECT_EQ(ZoneOf(ZONE_NORMAL).free_pages, 96u);
  EXPECT_EQ(atomic.size(), 256u - 96u);
  // GFP_NOWAIT gets no reserve at all.
  EXPECT_EQ(pa_->alloc_pages(GFP_NOWAIT, 0), nullptr);
  FreeAll(kernel, 0);
  FreeAll(atomic, 0);
  ExpectValid();
}

TEST_F(PageAllocatorTest, GfpZeroReallyZeroes) {
  BootX86(/*pcp=*/false);  // the buddy hands the same block back: deterministic
  Page* p = pa_->alloc_pages(GFP_KERNEL, 2);
  ASSERT_NE(p, nullptr);
  std::memset(pa_->page_host_address(p), 0xa5, 4 * 4096);
  ASSERT_TRUE(pa_->__free_pages(p, 2).ok());
  // The buddy merges it back and splits the same block again: it must be zero now.
  Page* q = pa_->alloc_pages(GFP_KERNEL | __GFP_ZERO, 2);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q, p);
  std::vector<std::byte> zero(4 * 4096);
  EXPECT_EQ(std::memcmp(pa_->page_host_address(q), zero.data(), zero.size()), 0);
  ASSERT_TRUE(pa_->__free_pages(q, 2).ok());
}

TEST_F(PageAllocatorTest, GetZeroedPageReturnsAZeroedDirectMapAddress) {
  BootX86();
  const uint64_t addr = pa_->get_zeroed_page(GFP_KERNEL);
  ASSERT_NE(addr, 0u);
  auto page = pa_->VirtToPage(addr);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(addr, pa_->target().page_offset + pa_->page_to_phys(*page));
  EXPECT_EQ(pa_->page_count(*page), 1);
  EXPECT_TRUE(pa_->free_page(addr).ok());
  EXPECT_EQ(pa_->page_count(*page), 0);
}

TEST_F(PageAllocatorTest, FreePagesOfZeroDoesNothing) {
  BootX86();
  EXPECT_TRUE(pa_->free_pages(0, 3).ok());
}

TEST_F(PageAllocatorTest, HighmemPageHasNoAddressUntilKmapped) {
  BootI386();
  Page* p = pa_->alloc_pages(GFP_HIGHUSER, 0, kAlice);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(pa_->page_zonenum(p), ZONE_HIGHMEM);
  EXPECT_EQ(pa_->page_address(p), 0u);
  auto v = pa_->kmap(p, kAlice);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_GE(*v, 0xff800000u);
  EXPECT_EQ(pa_->page_address(p), *v);
  // A second kmap of the same page returns the same address.
  EXPECT_EQ(*pa_->kmap(p, kAlice), *v);
  // Freeing while mapped is refused and changes nothing.
  const Snapshot before = Take();
  EXPECT_EQ(pa_->__free_pages(p, 0, kAlice).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Take(), before);
  ASSERT_TRUE(pa_->kunmap(p, kAlice).ok());
  EXPECT_EQ(pa_->page_address(p), *v);  // one user left
  ASSERT_TRUE(pa_->kunmap(p, kAlice).ok());
  // kunmap_high() (mm/highmem.c) leaves pkmap_count at 1: the mapping stays until the window
  // wraps, so page_address() still returns it; there is no user left to kunmap.
  EXPECT_EQ(pa_->page_address(p), *v);
  EXPECT_EQ(pa_->kunmap(p, kAlice).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(pa_->__free_pages(p, 0, kAlice).ok());
}

// map_new_virtual() (mm/highmem.c, 6.12) advances last_pkmap_nr before looking, from 0: the first
// kmap() gets slot 1 (PKMAP_ADDR(1)), the next slot 2, and slot 0 only after the wrap.
TEST_F(PageAllocatorTest, KmapHandsOutSlotsFromOneUpwardThenSlotZero) {
  BootI386();
  std::vector<Page*> pages;
  for (int i = 0; i < 16; ++i) pages.push_back(pa_->alloc_pages(GFP_HIGHUSER, 0));
  for (int i = 0; i < 16; ++i) {
    absl::StatusOr<uint64_t> v = pa_->kmap(pages[i]);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, 0xff800000u + uint64_t((i + 1) % 16) * 4096) << "kmap #" << i;
  }
  for (Page* p : pages) ASSERT_TRUE(pa_->kunmap(p).ok());
  FreeAll(pages, 0);
  ExpectValid();
}

// kunmap_high() only drops pkmap_count to 1; the slot is unmapped (set_page_address(page, NULL))
// by flush_all_zero_pkmaps() when map_new_virtual() wraps to slot 0. Until then page_address()
// returns the old address, and a new kmap() of the page reuses the slot.
TEST_F(PageAllocatorTest, KunmappedPageKeepsItsAddressUntilTheWindowWrapsAndFlushes) {
  BootI386();
  std::vector<Page*> pages;
  for (int i = 0; i < 17; ++i) pages.push_back(pa_->alloc_pages(GFP_HIGHUSER, 0));
  const uint64_t first = *pa_->kmap(pages[0]);  // slot 1
  ASSERT_TRUE(pa_->kunmap(pages[0]).ok());
  EXPECT_EQ(pa_->page_address(pages[0]), first) << "kunmap must not unmap before a flush";
  EXPECT_EQ(*pa_->kmap(pages[0]), first) << "a lazily kept mapping is reused";
  ASSERT_TRUE(pa_->kunmap(pages[0]).ok());
  // Slots 2..15 for pages 1..14; page 15 takes slot 0 after the wrap, whose flush unmaps page 0.
  for (int i = 1; i < 15; ++i) ASSERT_TRUE(pa_->kmap(pages[i]).ok());
  EXPECT_EQ(pa_->page_address(pages[0]), first);
  EXPECT_EQ(*pa_->kmap(pages[15]), 0xff800000u);
  EXPECT_EQ(pa_->page_address(pages[0]), 0u) << "the wrap's flush_all_zero_pkmaps() unmaps count-1 slots";
  // Slot 1 is free again: the next new mapping takes it.
  EXPECT_EQ(*pa_->kmap(pages[16]), first);
  for (int i = 1; i < 17; ++i) ASSERT_TRUE(pa_->kunmap(pages[i]).ok());
  FreeAll(pages, 0);
  ExpectValid();
}

TEST_F(PageAllocatorTest, LowmemPageAddressIsPageOffsetPlusPhys) {
  BootI386();
  Page* p = pa_->alloc_pages(GFP_KERNEL, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(pa_->page_zonenum(p), ZONE_NORMAL);
  EXPECT_EQ(pa_->page_address(p), 0xC0000000u + pa_->page_to_phys(p));
  EXPECT_EQ(*pa_->kmap(p), pa_->page_address(p));
  EXPECT_TRUE(pa_->__free_pages(p, 0).ok());
}

TEST_F(PageAllocatorTest, KmapWindowExhaustionIsAnErrorNotACrash) {
  BootI386();
  std::vector<Page*> pages;
  for (int i = 0; i < 17; ++i) pages.push_back(pa_->alloc_pages(GFP_HIGHUSER, 0));
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(pa_->kmap(pages[i]).ok());
  auto full = pa_->kmap(pages[16]);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(), HasSubstr("16 pkmap slots"));
  ASSERT_TRUE(pa_->kunmap(pages[3]).ok());
  EXPECT_TRUE(pa_->kmap(pages[16]).ok());
  for (int i = 0; i < 17; ++i) {
    if (i != 3) {
      ASSERT_TRUE(pa_->kunmap(pages[i]).ok());
    }
  }
  FreeAll(pages, 0);
  ExpectValid();
}

TEST_F(PageAllocatorTest, GetFreePagesStripsHighmem) {
  BootI386();
  std::vector<uint64_t> addrs;
  for (int i = 0; i < 50; ++i) {
    const uint64_t a = pa_->__get_free_pages(GFP_HIGHUSER, 0);
    ASSERT_NE(a, 0u);
    auto page = pa_->VirtToPage(a);
    ASSERT_TRUE(page.ok());
    EXPECT_NE(pa_->page_zonenum(*page), ZONE_HIGHMEM);
    addrs.push_back(a);
  }
  for (uint64_t a : addrs) ASSERT_TRUE(pa_->free_page(a).ok());
}

// What callers ask instead of reading page state words (the lessor's ownership checks and its
// invariant): the block containing a pfn, its order, owner and PageHead(), and whether an owner
// holds it.
TEST_F(PageAllocatorTest, AllocatedBlockAtAndOwnedBlockContainingAnswerForAnyPageOfTheBlock) {
  BootX86();
  Page* p = pa_->alloc_pages(GFP_KERNEL | __GFP_COMP, 2, /*owner=*/7);
  ASSERT_NE(p, nullptr);
  const uint64_t pfn = pa_->page_to_pfn(p);
  const std::optional<PageAllocator::BlockInfo> b = pa_->AllocatedBlockAt(pfn + 3);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->head, p);
  EXPECT_EQ(b->order, 2u);
  EXPECT_EQ(b->owner, 7u);
  EXPECT_TRUE(b->compound);
  absl::StatusOr<Page*> mine = pa_->OwnedBlockContaining(pfn + 1, 7);
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(*mine, p);
  EXPECT_EQ(pa_->OwnedBlockContaining(pfn + 1, 8).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(pa_->OwnedBlockContaining(uint64_t{1} << 52, 7).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(pa_->page_mapcount(p), 0);
  ASSERT_TRUE(pa_->__free_pages(p, 2, 7).ok());
  EXPECT_FALSE(pa_->AllocatedBlockAt(pfn).has_value());
  const absl::Status freed = pa_->OwnedBlockContaining(pfn, 7).status();
  EXPECT_EQ(freed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(freed.message(), HasSubstr("is not allocated"));
}

TEST_F(PageAllocatorTest, CompoundPagesMarkTheirTails) {
  BootX86();
  Page* p = pa_->alloc_pages(GFP_KERNEL | __GFP_COMP, 3);
  ASSERT_NE(p, nullptr);
  Page* tail = p + 5;
  EXPECT_EQ(pa_->page_count(tail), 1);  // a tail's count is its head's
  ExpectValid();
  auto st = pa_->__free_pages(tail, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("tail page"));
  ASSERT_TRUE(pa_->__free_pages(p, 3).ok());
  EXPECT_EQ(pa_->page_count(tail), 0);
  ExpectValid();
}

// page_count() is folio_ref_count(page_folio(page)) (include/linux/mm.h, 6.12): the allocation's
// one reference on the head page (post_alloc_hook() -> set_page_refcounted()); a tail of a
// non-compound order-N block is not refcounted (0); a compound tail resolves to its head (1).
TEST_F(PageAllocatorTest, PageCountIsTheHeadsReferenceCount) {
  BootX86();
  Page* plain = pa_->alloc_pages(GFP_KERNEL, 2);
  Page* comp = pa_->alloc_pages(GFP_KERNEL | __GFP_COMP, 2);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(comp, nullptr);
  EXPECT_EQ(pa_->page_count(plain), 1);
  EXPECT_EQ(pa_->page_count(plain + 1), 0) << "a non-compound tail carries no reference";
  EXPECT_EQ(pa_->page_count(comp), 1);
  EXPECT_EQ(pa_->page_count(comp + 3), 1) << "a compound tail reports its head's count";
  ASSERT_TRUE(pa_->__free_pages(plain, 2).ok());
  ASSERT_TRUE(pa_->__free_pages(comp, 2).ok());
  EXPECT_EQ(pa_->page_count(plain), 0);
  EXPECT_EQ(pa_->page_count(comp + 3), 0);
  ExpectValid();
}

// The built-in i386 with 1 GiB: lowmem ends at MAXMEM 0x377fe000 (mid-pageblock), so HighMem
// holds 0x40061000 - 0x377fe000 = 34915 pages and lowmem 3840 managed in DMA (3998 present less
// the 158 below 1 MiB that reserve_real_mode() reserves) + 223230 (Normal) = 227070 managed.
// __setup_per_zone_wmarks(): min_free_kbytes = int_sqrt(908280 * 16) = 3812, pages_min 953;
// HighMem MIN = clamp(34915 / 1024, 32, 128) = 34, its uncapped share 953 * 34915 / 227070 = 146,
// gap max(146 >> 2, 34915 * 10 / 10000) = 36: 34/70/106.
TEST_F(PageAllocatorTest, I386WithOneGiBBootsAtMaxmemWithTheKernelsHighmemWatermarks) {
  absl::StatusOr<Target> t = BuiltinTarget("i386", 1024 * MiB);
  ASSERT_TRUE(t.ok()) << t.status();
  Boot(testing::SmallOptions(*t));
  EXPECT_EQ(ZoneOf(ZONE_NORMAL).present_pages, 223230u);
  EXPECT_EQ(ZoneOf(ZONE_DMA).managed_pages, 3840u);
  const ZoneStats high = ZoneOf(ZONE_HIGHMEM);
  EXPECT_EQ(high.start_pfn, 0x377feu);
  EXPECT_EQ(high.present_pages, 34915u);
  EXPECT_EQ(high.watermarks.min, 34u);
  EXPECT_EQ(high.watermarks.low, 70u);
  EXPECT_EQ(high.watermarks.high, 106u);
  // The pages on both sides of the zone boundary inside one pageblock allocate from their zones.
  Page* h = pa_->alloc_pages(GFP_HIGHUSER, 0);
  ASSERT_NE(h, nullptr);
  EXPECT_GE(pa_->page_to_pfn(h), 0x377feu);
  ASSERT_TRUE(pa_->__free_pages(h, 0).ok());
  ExpectValid();
}

// x86 low memory as 6.12 boots it: trim_bios_range() leaves page 0 out of memblock.memory, so
// ZONE_DMA starts at pfn 1 and spans 4095 pages; reserve_real_mode() memblock-reserves the first
// 1 MiB, whose 158 RAM pages (pfns 1..0x9e) stay present but never reach the buddy
// (memblock_free_all() skips them). This machine's /proc/zoneinfo: "spanned 4095", "present
// 3998", "managed 3840", "start_pfn: 1". The buddy starts at pfn 0x100 with 256 (order 8),
// 512 (order 9) and three order-10 blocks.
TEST_F(PageAllocatorTest, X86DmaZoneLeavesPageZeroOutAndTheFirstMegabyteToTheKernel) {
  for (const char* name : {"x86_64", "i386"}) {
    absl::StatusOr<Target> t = BuiltinTarget(name);
    ASSERT_TRUE(t.ok()) << t.status();
    Boot(testing::SmallOptions(*t, /*pcp=*/false));
    const ZoneStats dma = ZoneOf(ZONE_DMA);
    EXPECT_EQ(dma.start_pfn, 1u) << name;
    EXPECT_EQ(dma.spanned_pages, 4095u) << name;
    EXPECT_EQ(dma.present_pages, 3998u) << name;
    EXPECT_EQ(dma.managed_pages, 3840u) << name;
    EXPECT_EQ(dma.buddy_free_pages, 3840u) << name;
    // pagetypeinfo_showblockcount_print() steps from pfn 1 and counts every pfn with a struct page,
    // reserved ones included: 16 MiB of pageblocks, 8 of 512 pages on x86_64 as this machine's DMA
    // zone (1 Unmovable, 7 Movable), 4 of 1024 on i386 without PAE (pageblock_order 10).
    EXPECT_EQ(dma.nr_pageblocks_by_type[MIGRATE_MOVABLE], std::string(name) == "x86_64" ? 8u : 4u) << name;
    EXPECT_EQ(dma.pageblock_order, std::string(name) == "x86_64" ? 9u : 10u) << name;
    EXPECT_EQ(pa_->Buddyinfo().substr(0, pa_->Buddyinfo().find('\n')),
              "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 ")
        << name;
    // The census counts managed pages only: nothing reserved is free, allocated or lost.
    EXPECT_EQ(ExpectValid().total_pages, t->managed_pages()) << name;
    EXPECT_EQ(pa_->PfnToPage(0x9e).status(),
              absl::OutOfRangeError("pfn 0x9e is reserved RAM (memblock_reserve(): the buddy never manages it)"))
        << name;
    EXPECT_EQ(pa_->PfnToPage(0).status(), absl::OutOfRangeError("pfn 0 is in a memory hole (not RAM)")) << name;
    // Every DMA page the allocator can hand out lies above 1 MiB.
    std::vector<Page*> taken;
    while (Page* p = pa_->alloc_pages(GFP_DMA | __GFP_HIGH, 0)) {
      EXPECT_GE(pa_->page_to_pfn(p), 0x100u) << name;
      taken.push_back(p);
    }
    EXPECT_GT(taken.size(), 3000u) << name;
    EXPECT_LE(taken.size(), 3840u) << name;
    ExpectValid();
    for (Page* p : taken) ASSERT_TRUE(pa_->__free_pages(p, 0).ok());
    EXPECT_EQ(ZoneOf(ZONE_DMA).buddy_free_pages, 3840u) << name;
    ExpectValid();
  }
}

TEST_F(PageAllocatorTest, BulkFillsOnlyEmptySlotsAndCountsThemAll) {
  BootX86();
  std::vector<Page*> arr(64, nullptr);
  arr[5] = pa_->alloc_page(GFP_KERNEL);
  Page* const kept = arr[5];
  EXPECT_EQ(pa_->alloc_pages_bulk(GFP_KERNEL, 64, arr.data()), 64u);
  EXPECT_EQ(arr[5], kept);
  std::set<Page*> distinct(arr.begin(), arr.end());
  EXPECT_EQ(distinct.size(), 64u);
  EXPECT_EQ(ExpectValid().allocated_pages, 64u);
  FreeAll(arr, 0);
}

// alloc_pages_bulk_noprof() (mm/page_alloc.c, 6.12): a zone qualifies only if it passes
// "wmark_pages(zone, ALLOC_WMARK_LOW) + nr_pages"; when none does, "try to allocate a single page
// and reclaim if necessary" (the failed: label: one __alloc_pages() call) and return.
TEST_F(PageAllocatorTest, BulkTakesOnePageThroughTheFullAllocatorWhenNoZonePassesLowPlusNr) {
  BootX86();
  std::vector<Page*> arr(4000, nullptr);  // more than the machine's 2848 pages
  EXPECT_EQ(pa_->alloc_pages_bulk(GFP_KERNEL, 4000, arr.data()), 1u);
  EXPECT_NE(arr[0], nullptr);
  for (unsigned i = 1; i < 4000; ++i) ASSERT_EQ(arr[i], nullptr) << i;
  EXPECT_EQ(ExpectValid().allocated_pages, 1u);
  arr.resize(1);
  FreeAll(arr, 0);
  ExpectValid();
}

// The service's loop (AllocPagesBulkFill): calls again while a call adds pages, so it stops
// only where the full allocator fails too, i.e. at the MIN watermark of every zone.
TEST_F(PageAllocatorTest, BulkFillLoopsUntilTheFullAllocatorFails) {
  BootX86();
  std::vector<Page*> arr(4000, nullptr);
  const unsigned got = pa_->AllocPagesBulkFill(GFP_KERNEL, 4000, arr.data());
  EXPECT_GT(got, 2000u);
  EXPECT_LT(got, 2848u);  // watermarks keep some back
  for (unsigned i = 0; i < 4000; ++i) ASSERT_EQ(arr[i] != nullptr, i < got) << i;
  EXPECT_EQ(pa_->alloc_page(GFP_KERNEL), nullptr) << "the loop stopped before the allocator did";
  arr.resize(got);
  FreeAll(arr, 0);
  ExpectValid();
}

// The return value is the kernel's nr_populated, an index: the fallback fills the first null slot
// and returns the index after it, not counting a populated slot further on.
TEST_F(PageAllocatorTest, BulkReturnsTheKernelsNrPopulatedIndex) {
  BootX86();
  std::vector<Page*> held = Exhaust(GFP_KERNEL, 0);
  ASSERT_GE(held.size(), 8u);
  std::vector<Page*> back(held.end() - 8, held.end());
  held.resize(held.size() - 8);
  FreeAll(back, 0);  // 8 pages above MIN, far below LOW + 3: no zone qualifies
  Page* const kept = held.back();
  held.pop_back();
  std::vector<Page*> arr = {nullptr, kept, nullptr};
  EXPECT_EQ(pa_->alloc_pages_bulk(GFP_KERNEL, 3, arr.data()), 1u);
  EXPECT_NE(arr[0], nullptr);
  EXPECT_EQ(arr[1], kept);
  EXPECT_EQ(arr[2], nullptr);
  held.push_back(arr[0]);
  held.push_back(kept);
  FreeAll(held, 0);
  ExpectValid();
}

TEST_F(PageAllocatorTest, OrderAboveMaxFailsAsAValue) {
  BootX86();
  EXPECT_EQ(pa_->alloc_pages(GFP_KERNEL, 11), nullptr);
  EXPECT_EQ(pa_->AllocPages(GFP_KERNEL, 11, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pa_->alloc_pages(__GFP_DMA | __GFP_DMA32, 0), nullptr);
  EXPECT_EQ(pa_->AllocPages(__GFP_DMA | __GFP_DMA32, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto none = pa_->AllocPages(GFP_DMA, 10, 0);  // ZONE_DMA has 160 pages: no 4 MiB block
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("DMA (free 160"));
}

// ---- Every refused free, each checked to change nothing. ----

struct BadFree {
  const char* name;
  absl::StatusCode code;
  const char* message;
};

class RefusedFree : public PageAllocatorTest, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    BootX86(/*pcp=*/GetParam());
    a0_ = pa_->alloc_pages(GFP_KERNEL, 0, kAlice);
    a3_ = pa_->alloc_pages(GFP_KERNEL, 3, kAlice);
    ASSERT_NE(a0_, nullptr);
    ASSERT_NE(a3_, nullptr);
  }
  void ExpectRefused(absl::Status st, absl::StatusCode code, const char* message) {
    const Snapshot before = Take();
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_THAT(st.message(), HasSubstr(message));
    EXPECT_EQ(Take(), before);
  }
  Page* a0_ = nullptr;
  Page* a3_ = nullptr;
};

TEST_P(RefusedFree, WrongOrder) {
  ExpectRefused(pa_->__free_pages(a3_, 2, kAlice), absl::StatusCode::kInvalidArgument, "allocated with order 3");
}
TEST_P(RefusedFree, OrderAboveMax) {
  ExpectRefused(pa_->FreePfn(pa_->page_to_pfn(a3_), 11, kAlice), absl::StatusCode::kInvalidArgument,
                "exceeds MAX_PAGE_ORDER");
}
TEST_P(RefusedFree, MisalignedPfn) {
  ExpectRefused(pa_->FreePfn(pa_->page_to_pfn(a3_) + 1, 3, kAlice), absl::StatusCode::kInvalidArgument,
                "not aligned to order 3");
}
TEST_P(RefusedFree, PfnInsideAnotherBlock) {
  ExpectRefused(pa_->FreePfn(pa_->page_to_pfn(a3_) + 4, 2, kAlice), absl::StatusCode::kFailedPrecondition,
                "inside the order-3 block");
}
TEST_P(RefusedFree, PfnInAHole) {
  ExpectRefused(pa_->FreePfn(200, 0, kAlice), absl::StatusCode::kOutOfRange, "hole");
}
TEST_P(RefusedFree, PfnBeyondRam) {
  ExpectRefused(pa_->FreePfn(1u << 20, 0, kAlice), absl::StatusCode::kOutOfRange, "beyond the last RAM page");
}
TEST_P(RefusedFree, DoubleFree) {
  ASSERT_TRUE(pa_->__free_pages(a0_, 0, kAlice).ok());
  ExpectRefused(pa_->__free_pages(a0_, 0, kAlice), absl::StatusCode::kFailedPrecondition, "not allocated");
}
TEST_P(RefusedFree, NeverAllocated) {
  Page* free_page = pa_->alloc_pages(GFP_KERNEL, 0, kAlice);
  ASSERT_TRUE(pa_->__free_pages(free_page, 0, kAlice).ok());
  ExpectRefused(pa_->FreePfn(pa_->page_to_pfn(free_page), 0, kAlice), absl::StatusCode::kFailedPrecondition,
                "not allocated");
}
TEST_P(RefusedFree, AnotherOwnersBlock) {
  ExpectRefused(pa_->__free_pages(a3_, 3, kBob), absl::StatusCode::kPermissionDenied, "belongs to owner 7");
  // Ownership is checked before the order, so a foreign caller learns nothing of the block.
  ExpectRefused(pa_->__free_pages(a3_, 1, kBob), absl::StatusCode::kPermissionDenied, "belongs to owner 7");
}
TEST_P(RefusedFree, AddressNotPageAligned) {
  ExpectRefused(pa_->free_pages(pa_->page_address(a0_) + 8, 0, kAlice), absl::StatusCode::kInvalidArgument,
                "not page aligned");
}
TEST_P(RefusedFree, AddressBelowPageOffset) {
  ExpectRefused(pa_->free_pages(0x1000, 0, kAlice), absl::StatusCode::kInvalidArgument, "below PAGE_OFFSET");
}
TEST_P(RefusedFree, AddressInAHole) {
  ExpectRefused(pa_->free_pages(pa_->target().page_offset + 200 * 4096, 0, kAlice), absl::StatusCode::kOutOfRange,
                "hole");
}
TEST_P(RefusedFree, ForeignStructPage) {
  Page stray;
  ExpectRefused(pa_->__free_pages(&stray, 0, kAlice), absl::StatusCode::kInvalidArgument, "not a struct page");
}
INSTANTIATE_TEST_SUITE_P(WithAndWithoutPcp, RefusedFree, ::testing::Bool());

// ---- Per-CPU lists ----

TEST_F(PageAllocatorTest, PerCpuListRefillsABatchAndServesHitsFromIt) {
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86());
  o.pcp_batch = 16;
  Boot(std::move(o));
  if (!pa_->pcp_active()) GTEST_SKIP() << "rseq unavailable: per-CPU lists are off in this process";
  const ZoneStats before = ZoneOf(ZONE_NORMAL);
  Page* p = pa_->alloc_page(GFP_KERNEL);
  ASSERT_NE(p, nullptr);
  ZoneStats after = ZoneOf(ZONE_NORMAL);
  uint64_t refills = 0, listed = 0;
  for (const PcpCpuStats& c : after.pcp) refills += c.refills, listed += c.count;
  EXPECT_EQ(refills, 1u);
  // One batch left the buddy: one page to us, batch - 1 on a list.
  EXPECT_EQ(after.buddy_free_pages, before.buddy_free_pages - after.pcp_batch);
  EXPECT_EQ(listed, after.pcp_batch - 1u);
  EXPECT_EQ(after.free_pages, before.free_pages - 1);
  // The next allocations are hits: no second refill until the batch is used up.
  std::vector<Page*> more;
  for (int i = 0; i < 10; ++i) more.push_back(pa_->alloc_page(GFP_KERNEL));
  uint64_t hits = 0;
  refills = 0;
  for (const PcpCpuStats& c : ZoneOf(ZONE_NORMAL).pcp) hits += c.hits, refills += c.refills;
  EXPECT_GE(hits, 10u);
  EXPECT_LE(refills, 2u);  // 2 only if the thread migrated to the other CPU meanwhile
  FreeAll(more, 0);
  ASSERT_TRUE(pa_->__free_page(p).ok());
  ExpectValid();
}

TEST_F(PageAllocatorTest, PerCpuListDrainsABatchWhenItReachesHigh) {
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86());
  o.pcp_batch = 8;
  o.pcp_high = 32;
  Boot(std::move(o));
  if (!pa_->pcp_active()) GTEST_SKIP() << "rseq unavailable";
  std::vector<Page*> pages;
  for (int i = 0; i < 100; ++i) pages.push_back(pa_->alloc_page(GFP_KERNEL));
  FreeAll(pages, 0);
  const ZoneStats z = ZoneOf(ZONE_NORMAL);
  uint64_t drains = 0;
  for (const PcpCpuStats& c : z.pcp) {
    drains += c.drains;
    EXPECT_LE(c.count, 32u);  // never above high
  }
  EXPECT_GT(drains, 0u);
  ExpectValid();
}

TEST_F(PageAllocatorTest, DrainsEveryCpuBeforeDeclaringFailure) {
  Target t = testing::SmallX86();
  t.zone_configured = {false, false, true, false};
  t.zone_end = {0, 0, UINT64_MAX, 0};
  PageAllocatorOptions o = testing::SmallOptions(t);
  o.pcp_batch = 31;
  o.pcp_high = 4096;  // every freed page stays listed: only a drain can rebuild large blocks
  Boot(std::move(o));
  if (!pa_->pcp_active()) GTEST_SKIP() << "rseq unavailable";
  // Park many free pages on per-CPU lists, then ask for a block only the merged buddy can give.
  std::vector<Page*> pages = Exhaust(GFP_KERNEL, 0);
  FreeAll(pages, 0);
  uint64_t listed = 0;
  for (const PcpCpuStats& c : ZoneOf(ZONE_NORMAL).pcp) listed += c.count;
  ASSERT_GT(listed, 512u);
  Page* big = pa_->alloc_pages(GFP_KERNEL, 9);
  ASSERT_NE(big, nullptr) << "the order-9 request should succeed after drain_all_pages()";
  listed = 0;
  for (const PcpCpuStats& c : ZoneOf(ZONE_NORMAL).pcp) listed += c.count;
  EXPECT_EQ(listed, 0u);
  ASSERT_TRUE(pa_->__free_pages(big, 9).ok());
  ExpectValid();
}

// __alloc_pages_slowpath() (6.12) reaches __alloc_pages_direct_reclaim(), whose "If an
// allocation failed after direct reclaim ... drain_all_pages(NULL)" is the only drain before
// failure, only with __GFP_DIRECT_RECLAIM: GFP_ATOMIC and GFP_NOWAIT fail with the pages still on
// the lists; GFP_KERNEL drains and succeeds.
TEST_F(PageAllocatorTest, OnlyCallersThatMayBlockDrainTheListsBeforeFailing) {
  Target t = testing::SmallX86();
  t.zone_configured = {false, false, true, false};
  t.zone_end = {0, 0, UINT64_MAX, 0};
  PageAllocatorOptions o = testing::SmallOptions(t);
  o.pcp_batch = 31;
  o.pcp_high = 4096;
  Boot(std::move(o));
  if (!pa_->pcp_active()) GTEST_SKIP() << "rseq unavailable: no per-CPU lists to drain";
  std::vector<Page*> pages = Exhaust(GFP_KERNEL, 0);
  FreeAll(pages, 0);
  auto listed = [&] {
    uint64_t n = 0;
    for (const PcpCpuStats& c : ZoneOf(ZONE_NORMAL).pcp) n += c.count;
    return n;
  };
  const uint64_t before = listed();
  ASSERT_GT(before, 512u);
  EXPECT_EQ(pa_->alloc_pages(GFP_ATOMIC, 9), nullptr);
  EXPECT_EQ(pa_->alloc_pages(GFP_NOWAIT, 9), nullptr);
  EXPECT_EQ(listed(), before) << "a non-blocking failure drained the per-CPU lists";
  Page* big = pa_->alloc_pages(GFP_KERNEL, 9);
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(listed(), 0u);
  ASSERT_TRUE(pa_->__free_pages(big, 9).ok());
  ExpectValid();
}

TEST_F(PageAllocatorTest, BuddyinfoPrintsTheProcFormat) {
  BootX86();
  const std::string text = pa_->Buddyinfo();
  EXPECT_THAT(text, HasSubstr("Node 0, zone      DMA "));
  EXPECT_THAT(text, HasSubstr("Node 0, zone    DMA32 "));
  EXPECT_THAT(text, HasSubstr("Node 0, zone   Normal "));
  // NORMAL [4M,12M): 2048 pages as two order-10 blocks.
  EXPECT_THAT(text, HasSubstr("Node 0, zone   Normal      0      0      0      0      0      0      0      0      0"
                              "      0      2 \n"));
}

TEST_F(PageAllocatorTest, FragmentationIndexFollowsTheKernelFormula) {
  BootX86(false);
  // Fragment NORMAL: take every page, give back every other one.
  std::vector<Page*> all = Exhaust(GFP_KERNEL | __GFP_MEMALLOC, 0);
  std::vector<Page*> keep;
  for (size_t i = 0; i < all.size(); ++i) {
    if (pa_->page_zonenum(all[i]) == ZONE_NORMAL && i % 2 == 0) {
      ASSERT_TRUE(pa_->__free_pages(all[i], 0).ok());
    } else {
      keep.push_back(all[i]);
    }
  }
  const ZoneStats z = ZoneOf(ZONE_NORMAL);
  EXPECT_EQ(z.nr_free[0], 1024u);
  EXPECT_EQ(FragmentationIndex(z.nr_free, 0), -1000);  // order 0 can be served
  // 1024 free pages in 1024 blocks, none of order 1: 1000 - (1000 + 1024*1000/2) / 1024 = 500.
  EXPECT_EQ(FragmentationIndex(z.nr_free, 1), 500);
  EXPECT_EQ(UnusableFreeIndex(z.nr_free, 1), 1000);
  EXPECT_EQ(UnusableFreeIndex(z.nr_free, 0), 0);
  FreeAll(keep, 0);
  ExpectValid();
}

}  // namespace
}  // namespace physmem
