// PageAllocator::__free_pages_trusted() (allocator/pcp_fast_path.h): free_unref_page() for
// callers whose books exclude double frees. It must free exactly as __free_pages() does (per-CPU
// lists, buddy merges, compound tails, highmem kmap refusal, counters), and in the builds tests
// run in (PHYSMEM_DCHECK on) a broken promise must abort rather than corrupt the lists.
#include <array>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

constexpr uint32_t kAlice = 7, kBob = 8;

class TrustedFreeTest : public ::testing::Test {
 protected:
  void Boot(PageAllocatorOptions o) {
    auto pa = PageAllocator::Create(std::move(o));
    ASSERT_TRUE(pa.ok()) << pa.status();
    pa_ = *std::move(pa);
  }
  PageCensus ExpectValid() {
    absl::StatusOr<PageCensus> c = pa_->Validate();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : PageCensus{};
  }
  // Free blocks per zone and order (buddy only): equal before and after means every block merged
  // back into the buddies it was split from.
  std::vector<std::vector<uint64_t>> BuddyFreeAreas() const {
    std::vector<std::vector<uint64_t>> out;
    for (const ZoneStats& z : pa_->Stats()) out.emplace_back(z.nr_free.begin(), z.nr_free.end());
    return out;
  }
  std::unique_ptr<PageAllocator> pa_;
};

TEST_F(TrustedFreeTest, FreesEveryPcpOrderAndValidateHolds) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  std::vector<std::pair<Page*, unsigned>> held;
  for (unsigned order = 0; order <= 5; ++order) {
    for (int i = 0; i < 20; ++i) {
      Page* p = pa_->alloc_pages(GFP_KERNEL, order, kAlice);
      ASSERT_NE(p, nullptr) << "order " << order;
      held.emplace_back(p, order);
    }
  }
  EXPECT_EQ(ExpectValid().allocated_blocks, held.size());
  const VmEventCounts before = pa_->VmEvents();
  for (auto [p, order] : held) ASSERT_TRUE(pa_->__free_pages_trusted(p, order, kAlice).ok());
  const PageCensus c = ExpectValid();
  EXPECT_EQ(c.allocated_pages, 0u);
  EXPECT_EQ(c.allocated_blocks, 0u);
  uint64_t freed = 0;
  const VmEventCounts after = pa_->VmEvents();
  for (int z = 0; z < MAX_NR_ZONES; ++z) freed += after.free_blocks(ZoneType(z)) - before.free_blocks(ZoneType(z));
  EXPECT_EQ(freed, held.size()) << "every trusted free is counted as a free (pgfree)";
  for (auto [p, order] : held) EXPECT_EQ(pa_->page_count(p), 0);
}

TEST_F(TrustedFreeTest, FreedBlocksMergeBackIntoTheBuddyOnceTheListsAreDrained) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  ASSERT_EQ(pa_->drain_all_pages(), 0u);
  const auto boot = BuddyFreeAreas();
  std::vector<std::pair<Page*, unsigned>> held;
  for (unsigned order : {0u, 0u, 1u, 3u, 4u, 7u}) {
    for (int i = 0; i < 9; ++i) {
      Page* p = pa_->alloc_pages(GFP_KERNEL, order, kAlice);
      ASSERT_NE(p, nullptr);
      held.emplace_back(p, order);
    }
  }
  ASSERT_NE(BuddyFreeAreas(), boot);
  for (auto [p, order] : held) ASSERT_TRUE(pa_->__free_pages_trusted(p, order, kAlice).ok());
  pa_->drain_all_pages();
  EXPECT_EQ(BuddyFreeAreas(), boot) << "free_pcppages_bulk() and __free_one_page() merged every buddy";
  EXPECT_EQ(ExpectValid().pcp_pages, 0u);
}

TEST_F(TrustedFreeTest, WorksWithThePerCpuListsOff) {
  Boot(testing::SmallOptions(testing::SmallX86(), /*pcp=*/false));
  const auto boot = BuddyFreeAreas();
  std::vector<Page*> held;
  for (int i = 0; i < 50; ++i) held.push_back(pa_->alloc_pages(GFP_KERNEL, 0, kBob));
  for (Page* p : held) ASSERT_NE(p, nullptr);
  for (Page* p : held) ASSERT_TRUE(pa_->__free_pages_trusted(p, 0, kBob).ok());
  EXPECT_EQ(BuddyFreeAreas(), boot);
  EXPECT_EQ(ExpectValid().allocated_pages, 0u);
}

TEST_F(TrustedFreeTest, ACompoundBlockLosesItsTails) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  Page* head = pa_->alloc_pages(GFP_KERNEL | __GFP_COMP, 2, kAlice);
  ASSERT_NE(head, nullptr);
  Page* tail = head + 3;
  ASSERT_EQ(pa_->page_count(tail), 1) << "a compound tail reports its head's count";
  ASSERT_TRUE(pa_->__free_pages_trusted(head, 2, kAlice).ok());
  EXPECT_EQ(tail->state.load(), 0u);
  EXPECT_EQ(ExpectValid().allocated_pages, 0u);
}

TEST_F(TrustedFreeTest, AKmappedHighmemPageIsStillRefusedAndStaysAllocated) {
  // No book can promise that nobody kmap()ed the page: that check stays, as in __free_pages().
  Boot(testing::SmallOptions(testing::SmallI386()));
  Page* p = pa_->alloc_pages(GFP_HIGHUSER, 0, kAlice);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(pa_->page_zonenum(p), ZONE_HIGHMEM);
  ASSERT_TRUE(pa_->kmap(p, kAlice).ok());
  const absl::Status refused = pa_->__free_pages_trusted(p, 0, kAlice);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(refused.message(), ::testing::HasSubstr("kmap"));
  EXPECT_EQ(ExpectValid().allocated_pages, 1u);
  ASSERT_TRUE(pa_->kunmap(p, kAlice).ok());
  EXPECT_TRUE(pa_->__free_pages_trusted(p, 0, kAlice).ok());
  EXPECT_EQ(ExpectValid().allocated_pages, 0u);
}

TEST_F(TrustedFreeTest, InitOnFreeZeroesTheBlock) {
  PageAllocatorOptions o = testing::SmallOptions(testing::SmallX86());
  o.init_on_free = true;
  Boot(std::move(o));
  Page* p = pa_->alloc_pages(GFP_KERNEL, 1, kAlice);
  ASSERT_NE(p, nullptr);
  std::byte* bytes = pa_->page_host_address(p);
  std::fill(bytes, bytes + 2 * 4096, std::byte{0x5a});
  ASSERT_TRUE(pa_->__free_pages_trusted(p, 1, kAlice).ok());
  for (int i = 0; i < 2 * 4096; ++i) ASSERT_EQ(bytes[i], std::byte{0}) << "byte " << i;
}

TEST_F(TrustedFreeTest, ThreadsFreeingTheirOwnBlocksKeepTheBooksExact) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  auto worker = [this](uint32_t owner) {
    std::vector<Page*> mine;
    for (int round = 0; round < 200; ++round) {
      for (int i = 0; i < 8; ++i) {
        if (Page* p = pa_->alloc_pages(GFP_KERNEL, round % 2, owner)) mine.push_back(p);
      }
      for (Page* p : mine) ASSERT_TRUE(pa_->__free_pages_trusted(p, round % 2, owner).ok());
      mine.clear();
    }
  };
  std::thread a(worker, kAlice), b(worker, kBob);
  a.join();
  b.join();
  EXPECT_EQ(ExpectValid().allocated_pages, 0u);
}

// The contract is checked where tests run: each broken promise aborts naming what the page was.
using TrustedFreeDeathTest = TrustedFreeTest;

TEST_F(TrustedFreeDeathTest, ADoubleTrustedFreeDies) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  Page* p = pa_->alloc_pages(GFP_KERNEL, 0, kAlice);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(pa_->__free_pages_trusted(p, 0, kAlice).ok());
  EXPECT_DEATH((void)pa_->__free_pages_trusted(p, 0, kAlice), "PHYSMEM_DCHECK.*not allocated \\(double free\\?\\)");
}

TEST_F(TrustedFreeDeathTest, AnotherOwnersBlockDies) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  Page* p = pa_->alloc_pages(GFP_KERNEL, 0, kAlice);
  ASSERT_NE(p, nullptr);
  EXPECT_DEATH((void)pa_->__free_pages_trusted(p, 0, kBob), "PHYSMEM_DCHECK.*another owner's block.*owner 7");
  EXPECT_TRUE(pa_->__free_pages(p, 0, kAlice).ok());
}

TEST_F(TrustedFreeDeathTest, AWrongOrderOrATailDies) {
  Boot(testing::SmallOptions(testing::SmallX86()));
  Page* p = pa_->alloc_pages(GFP_KERNEL | __GFP_COMP, 1, kAlice);
  ASSERT_NE(p, nullptr);
  EXPECT_DEATH((void)pa_->__free_pages_trusted(p, 0, kAlice), "PHYSMEM_DCHECK.*wrong order");
  EXPECT_DEATH((void)pa_->__free_pages_trusted(p + 1, 0, kAlice), "PHYSMEM_DCHECK.*a tail page");
  EXPECT_TRUE(pa_->__free_pages(p, 1, kAlice).ok());
}

}  // namespace
}  // namespace physmem
