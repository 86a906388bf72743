// Randomized differential test: the allocator against a deliberately simple reference model
// (tests/allocator/reference_model.h: a bitmap of allocated pages and a map of blocks), for well
// over a million operations across orders, zones, GFP masks and owners, including bad frees.
//
// The model does not predict which block the allocator picks (that is policy); it predicts
// everything a correct allocator must satisfy:
//   - a returned block is naturally aligned, all RAM, inside one zone the gfp mask allows, and
//     disjoint from every block the model holds;
//   - a failure is justified: after drain_all_pages(), for every zone on the zonelist, either the
//     watermark check fails (computed from the model's own free count) or the model has no
//     naturally aligned free run of that order in the zone;
//   - every free succeeds or fails exactly as the model says, with the model's status code, and a
//     refused free changes nothing;
//   - free pages per zone always equal the model's, and Validate() passes (checked periodically
//     and at the end).
#include <random>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/reference_model.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using Model = testing::ReferenceModel;

struct DiffParam {
  const char* name;
  Target (*target)();
  bool pcp;
  int ops;
};

class Differential : public ::testing::TestWithParam<DiffParam> {};

TEST_P(Differential, AgreesWithTheReferenceModel) {
  PageAllocatorOptions o = testing::SmallOptions(GetParam().target(), GetParam().pcp);
  o.pcp_batch = 7;
  o.pcp_high = 48;
  auto created = PageAllocator::Create(std::move(o));
  ASSERT_TRUE(created.ok()) << created.status();
  PageAllocator& pa = **created;
  Model model(pa);
  std::mt19937_64 rng(0x5eed + GetParam().pcp);
  const gfp_t masks[] = {GFP_KERNEL, GFP_ATOMIC, GFP_NOWAIT, GFP_USER, GFP_HIGHUSER, GFP_DMA, GFP_DMA32,
                         GFP_KERNEL | __GFP_ZERO, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_HIGH,
                         GFP_KERNEL | __GFP_DMA32 | __GFP_NORETRY, GFP_ATOMIC | __GFP_DMA};
  const uint32_t owners[] = {1, 2, 3};
  const uint64_t last_pfn = (pa.target().ram.back().end() >> pa.target().page_shift);
  int allocs = 0, fails = 0, frees = 0, refused = 0;

  for (int step = 0; step < GetParam().ops; ++step) {
    const unsigned r = rng() % 100;
    if (r < 45 || model.blocks().empty()) {
      // Allocate: small orders mostly, sometimes large.
      const unsigned order = rng() % 4 == 0 ? rng() % 11 : rng() % 4;
      const gfp_t gfp = masks[rng() % std::size(masks)];
      const uint32_t owner = owners[rng() % 3];
      Page* p = pa.alloc_pages(gfp, order, owner);
      if (p != nullptr) {
        ++allocs;
        ASSERT_TRUE(model.Allocated(pa.page_to_pfn(p), order, owner, gfp)) << "step " << step;
      } else {
        ++fails;
        // The allocator drained before failing; the model judges against the drained state.
        pa.drain_all_pages();
        ASSERT_TRUE(model.FailureJustified(gfp, order, pa.Stats())) << "step " << step;
      }
    } else if (r < 90) {
      // Free a held block, by its owner, with the right order.
      auto it = model.blocks().begin();
      std::advance(it, rng() % model.blocks().size());
      const uint64_t pfn = it->first;
      const auto b = it->second;
      ASSERT_TRUE(pa.FreePfn(pfn, b.order, b.owner).ok()) << "step " << step;
      model.Freed(pfn);
      ++frees;
    } else {
      // A free the model may refuse: random pfn near a held block, random order and owner.
      uint64_t pfn;
      if (rng() % 2 && !model.blocks().empty()) {
        auto it = model.blocks().begin();
        std::advance(it, rng() % model.blocks().size());
        pfn = it->first + rng() % 4;
      } else {
        pfn = rng() % (last_pfn + 16);
      }
      const unsigned order = rng() % 12;
      const uint32_t owner = owners[rng() % 3];
      const absl::StatusCode want = model.ExpectedFree(pfn, order, owner);
      const absl::Status got = pa.FreePfn(pfn, order, owner);
      ASSERT_EQ(got.code(), want) << "step " << step << " pfn " << pfn << " order " << order << ": " << got;
      if (got.ok()) {
        model.Freed(pfn);
        ++frees;
      } else {
        ++refused;
      }
    }
    // Cheap check every step: free pages per zone (buddy + per-CPU lists) equal the model's.
    if (step % 16 == 0) {
      for (const ZoneStats& z : pa.Stats()) {
        ASSERT_EQ(z.free_pages, model.free_pages(z.type)) << "step " << step << " zone " << zone_name(z.type);
      }
    }
    if (step % 4096 == 0) {
      auto c = pa.Validate();
      ASSERT_TRUE(c.ok()) << "step " << step << ": " << c.status();
    }
  }
  for (auto it = model.blocks().begin(); it != model.blocks().end(); it = model.blocks().begin()) {
    ASSERT_TRUE(pa.FreePfn(it->first, it->second.order, it->second.owner).ok());
    model.Freed(it->first);
  }
  pa.drain_all_pages();
  auto c = pa.Validate();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->allocated_pages, 0u);
  EXPECT_EQ(c->buddy_free_pages, c->total_pages);
  // The run must have exercised every path.
  EXPECT_GT(allocs, GetParam().ops / 5);
  EXPECT_GT(fails, 100);
  EXPECT_GT(refused, GetParam().ops / 50);
  std::printf("%s: %d ops: %d allocations, %d failures, %d frees, %d refused frees\n", GetParam().name,
              GetParam().ops, allocs, fails, frees, refused);
}

INSTANTIATE_TEST_SUITE_P(
    Targets, Differential,
    ::testing::Values(DiffParam{"x86_pcp", &testing::SmallX86, true, 600000},
                      DiffParam{"x86_buddy_only", &testing::SmallX86, false, 200000},
                      DiffParam{"i386_highmem_pcp", &testing::SmallI386, true, 400000}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace physmem
