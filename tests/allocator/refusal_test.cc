// Each RefusalReason (allocator/refusal.h) produced by a real allocator situation, with the
// Status form of the same call checked to carry RefusalCode() and the same detail, and the
// allocator checked to be unchanged by every refusal.
#include "allocator/refusal.h"

#include <set>
#include <string>
#include <vector>

#include "allocator/page_allocator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;

constexpr uint32_t kAlice = 7, kBob = 8;

class RefusalTest : public ::testing::Test {
 protected:
  void Boot(PageAllocatorOptions o) {
    auto pa = PageAllocator::Create(std::move(o));
    ASSERT_TRUE(pa.ok()) << pa.status();
    pa_ = *std::move(pa);
  }
  void BootX86() { Boot(testing::SmallOptions(testing::SmallX86(), /*pcp=*/false)); }
  void BootI386() { Boot(testing::SmallOptions(testing::SmallI386(), /*pcp=*/false)); }
  uint64_t Alloc(gfp_t gfp, unsigned order, uint32_t owner = kAlice) {
    Page* p = pa_->alloc_pages(gfp, order, owner);
    EXPECT_NE(p, nullptr);
    return p ? pa_->page_to_pfn(p) : 0;
  }
  // The refusal has `reason` and a detail naming `words`, the allocator still validates and holds
  // the same number of allocated pages, and the Status form says the same.
  void ExpectRefusal(const std::optional<Refusal>& r, RefusalReason reason, const std::string& words) {
    ASSERT_TRUE(r.has_value()) << "expected " << RefusalReasonName(reason);
    EXPECT_EQ(r->reason, reason) << RefusalReasonName(r->reason) << ": " << r->detail;
    EXPECT_THAT(r->detail, HasSubstr(words));
    const absl::Status s = ToStatus(*r);
    if (reason != RefusalReason::kCommitFailed) {
      EXPECT_EQ(s.code(), RefusalCode(reason));
      EXPECT_EQ(s.message(), r->detail);
    }
    absl::StatusOr<PageCensus> c = pa_->Validate();
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->allocated_pages, allocated_pages_) << "a refusal changed the allocator";
  }
  template <typename T>
  void ExpectRefusal(const RefusalOr<T>& r, RefusalReason reason, const std::string& words) {
    ASSERT_FALSE(r.ok()) << "expected " << RefusalReasonName(reason);
    ExpectRefusal(std::optional<Refusal>(r.refusal()), reason, words);
  }
  void Count() { allocated_pages_ = pa_->Validate()->allocated_pages; }

  std::unique_ptr<PageAllocator> pa_;
  uint64_t allocated_pages_ = 0;
};

TEST_F(RefusalTest, AnOrderAboveMaxPageOrderIsRefusedOnAllocationAndFree) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 3);
  Count();
  ExpectRefusal(pa_->TryAllocPages(GFP_KERNEL, 11, kAlice), RefusalReason::kOrderTooHigh, "exceeds MAX_PAGE_ORDER 10");
  ExpectRefusal(pa_->TryFreePfn(pfn, 11, kAlice), RefusalReason::kOrderTooHigh, "order 11 exceeds");
  EXPECT_EQ(pa_->AllocPages(GFP_KERNEL, 11, kAlice).status(), ToStatus(pa_->AllocFailure(GFP_KERNEL, 11)));
}

TEST_F(RefusalTest, ABadZoneModifierCombinationIsAnInvalidGfp) {
  BootX86();
  ExpectRefusal(pa_->TryAllocPages(__GFP_DMA | __GFP_DMA32, 0, kAlice), RefusalReason::kInvalidGfp,
                "invalid GFP mask");
}

TEST_F(RefusalTest, AZonelistWithNoAllowedZoneIsNoZone) {
  BootX86();
  // GFP_DMA's zonelist is ZONE_DMA alone; a caller kept out of it (the server's per-identity
  // zone caps pass allowed_zones, as a cpuset removes nodes) has nowhere to look.
  ExpectRefusal(pa_->TryAllocPages(GFP_DMA, 0, kAlice, 1u << ZONE_NORMAL), RefusalReason::kNoZone,
                "no free order-0 block for GFP_DMA");
}

TEST_F(RefusalTest, NoBlockOfTheOrderInAnyZoneIsNoFreeBlock) {
  BootX86();
  // ZONE_DMA has 160 pages: no order-8 (256-page) block can exist there.
  ExpectRefusal(pa_->TryAllocPages(GFP_DMA, 8, kAlice), RefusalReason::kNoFreeBlock, "DMA (free 160");
}

TEST_F(RefusalTest, FreeBlocksBelowTheMinWatermarkAreBelowWatermark) {
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86(), /*pcp=*/false);
  o.min_free_kbytes = 8192;  // ZONE_DMA's share of MIN is then a good part of its 160 pages
  Boot(std::move(o));
  const gfp_t gfp = GFP_KERNEL | __GFP_DMA;
  int got = 0;
  while (pa_->alloc_pages(gfp, 0, kAlice) != nullptr) ASSERT_LT(++got, 160);
  Count();
  uint64_t dma_free = 0;
  for (const ZoneStats& z : pa_->Stats()) {
    if (z.type == ZONE_DMA) dma_free = z.free_pages;
  }
  ASSERT_GT(dma_free, 0u) << "the test needs free pages that the watermark keeps";
  ExpectRefusal(pa_->TryAllocPages(gfp, 0, kAlice), RefusalReason::kBelowWatermark, "zones tried: DMA");
}

TEST_F(RefusalTest, FreeingSomethingThatIsNoStructPageIsNotAPage) {
  BootX86();
  const absl::Status s = pa_->__free_pages(nullptr, 0, kAlice);
  EXPECT_EQ(s, ToStatus(Refusal{RefusalReason::kNotAPage, 0, "__free_pages: not a struct page of this allocator"}));
}

TEST_F(RefusalTest, APfnInAHoleOrBeyondRamIsOutOfRange) {
  BootX86();
  ExpectRefusal(pa_->TryFreePfn(200, 0, kAlice), RefusalReason::kPfnOutOfRange, "memory hole");
  ExpectRefusal(pa_->TryFreePfn(1u << 20, 0, kAlice), RefusalReason::kPfnOutOfRange, "beyond the last RAM page");
  ExpectRefusal(pa_->TryPfnToPage(200), RefusalReason::kPfnOutOfRange, "memory hole");
}

TEST_F(RefusalTest, APfnNotAMultipleOfTheOrderIsMisaligned) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 3);
  Count();
  ExpectRefusal(pa_->TryFreePfn(pfn + 1, 3, kAlice), RefusalReason::kMisaligned, "not aligned to order 3");
}

TEST_F(RefusalTest, ASecondFreeIsNotAllocated) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 0);
  ASSERT_FALSE(pa_->TryFreePfn(pfn, 0, kAlice).has_value());
  Count();
  ExpectRefusal(pa_->TryFreePfn(pfn, 0, kAlice), RefusalReason::kNotAllocated, "double free");
}

TEST_F(RefusalTest, ATailOfACompoundBlockIsATailPage) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL | __GFP_COMP, 2);
  Count();
  ExpectRefusal(pa_->TryFreePfn(pfn + 1, 0, kAlice), RefusalReason::kTailPage, "tail page of the compound block");
}

TEST_F(RefusalTest, APageInsideAPlainBlockIsInsideBlock) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 2);
  Count();
  ExpectRefusal(pa_->TryFreePfn(pfn + 2, 1, kAlice), RefusalReason::kInsideBlock, "inside the order-2 block");
}

TEST_F(RefusalTest, AnotherOwnersBlockIsWrongOwnerBeforeItsOrderIsChecked) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 2);
  Count();
  ExpectRefusal(pa_->TryFreePfn(pfn, 1, kBob), RefusalReason::kWrongOwner, "belongs to owner 7, not 8");
  EXPECT_EQ(pa_->TryFreePfn(pfn, 1, kBob)->pfn, pfn);
}

TEST_F(RefusalTest, TheOwnersFreeWithAnotherOrderIsWrongOrder) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 2);
  Count();
  ExpectRefusal(pa_->TryFreePfn(pfn, 1, kAlice), RefusalReason::kWrongOrder, "allocated with order 2, not 1");
}

TEST_F(RefusalTest, AKmappedHighmemBlockIsStillMapped) {
  BootI386();
  Page* page = pa_->alloc_pages(GFP_HIGHUSER, 0, kAlice);
  ASSERT_NE(page, nullptr);
  ASSERT_EQ(pa_->page_zonenum(page), ZONE_HIGHMEM);
  ASSERT_TRUE(pa_->kmap(page, kAlice).ok());
  Count();
  ExpectRefusal(pa_->TryFreePfn(pa_->page_to_pfn(page), 0, kAlice), RefusalReason::kStillMapped, "kmap()ed");
  ASSERT_TRUE(pa_->kunmap(page, kAlice).ok());
  EXPECT_FALSE(pa_->TryFreePfn(pa_->page_to_pfn(page), 0, kAlice).has_value());
}

TEST_F(RefusalTest, KmapAndKunmapOfAFreePageOrAnotherOwnersAreRefusedForLowmemAndHighmemAlike) {
  BootI386();
  Page* high = pa_->alloc_pages(GFP_HIGHUSER, 0, kAlice);
  Page* low = pa_->alloc_pages(GFP_KERNEL, 0, kAlice);
  Page* gone = pa_->alloc_pages(GFP_KERNEL, 0, kAlice);
  ASSERT_NE(high, nullptr);
  ASSERT_NE(low, nullptr);
  ASSERT_NE(gone, nullptr);
  ASSERT_EQ(pa_->page_zonenum(high), ZONE_HIGHMEM);
  ASSERT_NE(pa_->page_zonenum(low), ZONE_HIGHMEM);
  ASSERT_TRUE(pa_->__free_pages(gone, 0, kAlice).ok());
  Count();
  for (Page* p : {high, low}) {
    SCOPED_TRACE(pa_->page_zonenum(p) == ZONE_HIGHMEM ? "highmem" : "lowmem");
    ExpectRefusal(pa_->TryKmap(p, kBob), RefusalReason::kWrongOwner, "kmap: pfn");
    ExpectRefusal(pa_->TryKunmap(p, kBob), RefusalReason::kWrongOwner, "belongs to owner 7, not 8");
    EXPECT_EQ(pa_->page_mapcount(p), 0) << "a refused kmap() left a user behind";
  }
  ExpectRefusal(pa_->TryKmap(gone, kAlice), RefusalReason::kNotAllocated, "kmap: pfn");
  ExpectRefusal(pa_->TryKunmap(gone, kAlice), RefusalReason::kNotAllocated, "kunmap: pfn");
  // The Status forms say the same.
  EXPECT_EQ(pa_->kunmap(low, kBob).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(pa_->kmap(gone, kAlice).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RefusalTest, AHighmemPageWithoutAKmapUserIsNotKmapped) {
  BootI386();
  Page* page = pa_->alloc_pages(GFP_HIGHUSER, 0, kAlice);
  ASSERT_NE(page, nullptr);
  ASSERT_EQ(pa_->page_zonenum(page), ZONE_HIGHMEM);
  Count();
  ExpectRefusal(pa_->TryKunmap(page, kAlice), RefusalReason::kNotKmapped, "is not kmap()ed");
  ASSERT_TRUE(pa_->TryKmap(page, kAlice).ok());
  EXPECT_FALSE(pa_->TryKunmap(page, kAlice).has_value());
  // One kmap(), one kunmap(): a second is a kunmap_high() that the kernel would BUG() on.
  ExpectRefusal(pa_->TryKunmap(page, kAlice), RefusalReason::kNotKmapped, "is not kmap()ed");
  EXPECT_EQ(pa_->page_mapcount(page), 0);
}

TEST_F(RefusalTest, AKmapWindowWithEverySlotInUseIsKmapWindowFull) {
  BootI386();  // SmallI386: 16 pkmap slots
  std::vector<Page*> mapped;
  std::optional<Refusal> full;
  for (int i = 0; i < 64 && !full; ++i) {
    Page* page = pa_->alloc_pages(GFP_HIGHUSER, 0, kAlice);
    ASSERT_NE(page, nullptr);
    ASSERT_EQ(pa_->page_zonenum(page), ZONE_HIGHMEM);
    Count();
    RefusalOr<uint64_t> v = pa_->TryKmap(page, kAlice);
    if (v.ok()) {
      mapped.push_back(page);
      continue;
    }
    full = v.refusal();
    ExpectRefusal(v, RefusalReason::kKmapWindowFull, "kmap window full: all 16 pkmap slots");
    EXPECT_EQ(pa_->page_mapcount(page), 0) << "a refused kmap() left a user behind";
    // A kunmap() frees a slot (at the next flush), and the same page maps then.
    ASSERT_FALSE(pa_->TryKunmap(mapped.front(), kAlice).has_value());
    EXPECT_TRUE(pa_->TryKmap(page, kAlice).ok());
  }
  ASSERT_TRUE(full.has_value()) << "64 kmap()s fit in a 16-slot window";
  EXPECT_LE(mapped.size(), 16u);
}

TEST_F(RefusalTest, ACommitHookThatFailsIsCommitFailedWithItsCause) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 1);
  Count();
  const absl::Status journal_full = absl::UnavailableError("journal full");
  std::optional<Refusal> r = pa_->TryFreePfn(pfn, 1, kAlice, [&] { return journal_full; });
  ExpectRefusal(r, RefusalReason::kCommitFailed, "journal full");
  EXPECT_EQ(r->cause, journal_full);
  EXPECT_EQ(ToStatus(*r), journal_full);
  ASSERT_TRUE(pa_->AllocatedBlockAt(pfn).has_value());  // still allocated, still Alice's
  EXPECT_EQ(pa_->AllocatedBlockAt(pfn)->owner, kAlice);
}

TEST_F(RefusalTest, AddressesThatAreNoDirectMapPageAreRefusedByWhy) {
  BootI386();  // PAGE_OFFSET 0xC0000000, lowmem [0, 4 MiB), kmap window at 0xff800000
  const uint64_t page_offset = pa_->target().page_offset;
  ExpectRefusal(pa_->TryVirtToPage(page_offset + 1), RefusalReason::kAddrUnaligned, "not page aligned");
  ExpectRefusal(pa_->TryVirtToPage(pa_->target().pkmap_base), RefusalReason::kAddrKmapWindow, "kmap() window");
  ExpectRefusal(pa_->TryVirtToPage(page_offset - 4096), RefusalReason::kAddrBelowDirectMap, "below PAGE_OFFSET");
  ExpectRefusal(pa_->TryVirtToPage(page_offset + 4 * testing::MiB), RefusalReason::kAddrBeyondDirectMap,
                "beyond the direct map");
  EXPECT_EQ(pa_->free_pages(page_offset + 1, 0, kAlice), ToStatus(pa_->TryVirtToPage(page_offset + 1).refusal()));
}

TEST_F(RefusalTest, AskingForAnOwnedBlockSaysWhyItIsNotOne) {
  BootX86();
  const uint64_t pfn = Alloc(GFP_KERNEL, 2);
  Count();
  RefusalOr<Page*> mine = pa_->TryOwnedBlockContaining(pfn + 3, kAlice);
  ASSERT_TRUE(mine.ok());
  EXPECT_EQ(pa_->page_to_pfn(*mine), pfn);
  ExpectRefusal(pa_->TryOwnedBlockContaining(pfn + 3, kBob), RefusalReason::kWrongOwner, "has another owner");
  ExpectRefusal(pa_->TryOwnedBlockContaining(pfn + 4, kAlice), RefusalReason::kNotAllocated, "is not allocated");
  ExpectRefusal(pa_->TryOwnedBlockContaining(200, kAlice), RefusalReason::kPfnOutOfRange, "memory hole");
}

TEST(RefusalReason, EveryReasonHasItsOwnNameAndARefusingCode) {
  std::set<std::string_view> names;
  for (int i = 0; i < static_cast<int>(RefusalReason::kCount); ++i) {
    const auto r = static_cast<RefusalReason>(i);
    EXPECT_TRUE(names.insert(RefusalReasonName(r)).second) << RefusalReasonName(r);
    EXPECT_NE(RefusalCode(r), absl::StatusCode::kOk) << RefusalReasonName(r);
  }
}

TEST(RefusalOr, HoldsAValueOrARefusalAndConvertsToStatusOr) {
  RefusalOr<int> v = 3;
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 3);
  EXPECT_EQ(*v.ToStatusOr(), 3);
  RefusalOr<int> r = Refusal{RefusalReason::kMisaligned, 5, "pfn 0x5 is not aligned"};
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.refusal().pfn, 5u);
  EXPECT_EQ(r.ToStatusOr().status(), absl::InvalidArgumentError("pfn 0x5 is not aligned"));
}

}  // namespace
}  // namespace physmem
