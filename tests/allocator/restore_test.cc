// Tests allocator/restore.cc: PageAllocator::RestoreAllocated rebuilds, in one pass, exactly the
// buddy state that the allocator itself reaches by allocating and freeing (replay equivalence),
// keeps owners, and refuses bad input without changing anything.
#include <map>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using testing::SmallI386;
using testing::SmallOptions;
using testing::SmallX86;

std::map<std::pair<int, unsigned>, uint64_t> FreeCounts(const PageAllocator& pa) {
  std::map<std::pair<int, unsigned>, uint64_t> out;
  for (const ZoneStats& z : pa.Stats()) {
    for (unsigned o = 0; o < z.nr_free.size(); ++o) out[{z.type, o}] = z.nr_free[o];
  }
  return out;
}

class RestoreTest : public ::testing::TestWithParam<Target> {};

TEST_P(RestoreTest, RebuildsTheSameBuddyStateAsAllocatingAndFreeing) {
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    std::mt19937 rng(seed);
    auto live = *PageAllocator::Create(SmallOptions(GetParam()));
    std::vector<RestoredBlock> held;
    for (int i = 0; i < 3000; ++i) {
      const unsigned order = rng() % 4 == 0 ? rng() % 11 : rng() % 4;
      const uint32_t owner = 1 + rng() % 7;
      const bool comp = order > 0 && rng() % 3 == 0;
      Page* p = live->alloc_pages(GFP_ATOMIC | __GFP_HIGHMEM | (comp ? __GFP_COMP : 0), order, owner);
      if (p != nullptr) held.push_back({live->page_to_pfn(p), order, owner, comp});
      if (!held.empty() && rng() % 3 == 0) {
        const size_t k = rng() % held.size();
        ASSERT_TRUE(live->FreePfn(held[k].pfn, held[k].order, held[k].owner).ok());
        held[k] = held.back();
        held.pop_back();
      }
    }
    live->drain_all_pages();  // the per-CPU lists hold pages the buddy has not merged yet
    ASSERT_TRUE(live->Validate().ok());

    auto restored = *PageAllocator::Create(SmallOptions(GetParam()));
    std::vector<RestoredBlock> blocks = held;
    ASSERT_TRUE(restored->RestoreAllocated(blocks).ok());
    absl::StatusOr<PageCensus> c = restored->Validate();
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->allocated_blocks, held.size());
    EXPECT_EQ(FreeCounts(*restored), FreeCounts(*live)) << "seed " << seed;

    // Owners survive: another owner is refused, the right one frees; then all RAM is one state again.
    for (const RestoredBlock& b : held) {
      EXPECT_EQ(restored->FreePfn(b.pfn, b.order, b.owner + 100).code(), absl::StatusCode::kPermissionDenied);
      Page* head = *restored->PfnToPage(b.pfn);
      EXPECT_EQ(head->Load().flags & PG_head, b.compound ? PG_head : 0);
      ASSERT_TRUE(restored->FreePfn(b.pfn, b.order, b.owner).ok());
    }
    restored->drain_all_pages();
    ASSERT_TRUE(restored->Validate().ok());
    auto fresh = *PageAllocator::Create(SmallOptions(GetParam()));
    EXPECT_EQ(FreeCounts(*restored), FreeCounts(*fresh));
  }
}

TEST_P(RestoreTest, RefusesOverlapsHolesAndBadOwnersWithoutChangingAnything) {
  auto pa = *PageAllocator::Create(SmallOptions(GetParam()));
  const auto before = FreeCounts(*pa);
  const uint64_t pfn = pa->mem_map().segments().back().start_pfn;
  std::vector<std::vector<RestoredBlock>> bad = {
      {{pfn, 2, 1, false}, {pfn + 2, 0, 2, false}},  // overlap
      {{pfn + 1, 1, 1, false}},                      // misaligned
      {{pfn, 0, kNoOwner, false}},                   // ownerless
      {{pfn, 11, 1, false}},                         // order beyond MAX_PAGE_ORDER
      {{~uint64_t{0} >> 20, 0, 1, false}},           // beyond RAM
  };
  for (auto& blocks : bad) {
    EXPECT_EQ(pa->RestoreAllocated(blocks).code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(FreeCounts(*pa), before);
    EXPECT_TRUE(pa->Validate().ok());
  }
}

TEST_P(RestoreTest, RefusesAnAllocatorThatAlreadyHandedPagesOut) {
  auto pa = *PageAllocator::Create(SmallOptions(GetParam()));
  ASSERT_NE(pa->alloc_pages(GFP_KERNEL, 0, 1), nullptr);
  std::vector<RestoredBlock> none;
  EXPECT_EQ(pa->RestoreAllocated(none).code(), absl::StatusCode::kFailedPrecondition);
}

// The journal's hook in FreePfn: it runs once the free is certain, not for a refused free; and
// if it fails, the block stays allocated to its owner.
TEST_P(RestoreTest, FreeCommitHookRunsOnlyForCertainFreesAndCanUndoThem) {
  auto pa = *PageAllocator::Create(SmallOptions(GetParam()));
  Page* p = pa->alloc_pages(GFP_KERNEL, 2, 5);
  ASSERT_NE(p, nullptr);
  const uint64_t pfn = pa->page_to_pfn(p);
  int calls = 0;
  auto ok = [&] {
    ++calls;
    return absl::OkStatus();
  };
  EXPECT_EQ(pa->FreePfn(pfn, 2, 6, ok).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(pa->FreePfn(pfn, 1, 5, ok).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(pa->FreePfn(pfn, 2, 5, [&] { return absl::UnavailableError("journal down"); }).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(pa->page_count(p), 1);
  EXPECT_EQ(p->Load().owner, 5u);
  EXPECT_TRUE(pa->Validate().ok());
  EXPECT_TRUE(pa->FreePfn(pfn, 2, 5, ok).ok());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(pa->FreePfn(pfn, 2, 5, ok).code(), absl::StatusCode::kFailedPrecondition);  // double free
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(pa->Validate().ok());
}

INSTANTIATE_TEST_SUITE_P(Targets, RestoreTest, ::testing::Values(SmallX86(), SmallI386()),
                         [](const auto& info) { return info.index == 0 ? "x86" : "i386"; });

}  // namespace
}  // namespace physmem
