// Randomized differential test: the allocator against a deliberately simple reference model
// (tests/allocator/reference_model.h: a bitmap of allocated pages and a map of blocks), for well
// over a million operations across orders, zones, GFP masks and owners, including bad frees.
//
// The model does not predict which block the allocator picks (that is policy); it predicts
// everything a correct allocator must satisfy:
//   - a returned block is naturally aligned, all RAM, inside one zone the gfp mask allows, and
//     disjoint from every block the model holds;
//   - a failure is justified (for a caller that cannot block, pages on per-CPU lists also justify
//     it: the kernel drains them only in direct reclaim): after drain_all_pages(), for every zone on the zonelist, either the
//     watermark check fails (computed from the model's own free count) or the model has no
//     naturally aligned free run of that order in the zone;
//   - every free succeeds or fails exactly as the model says, with the model's status code, and a
//     refused free changes nothing;
//   - free pages per zone always equal the model's, and Validate() passes (checked periodically
//     and at the end);
//   - migratetypes: PG_movable follows the request's migratetype, pageblock counts and the
//     highatomic reserve stay consistent, failures are judged with the reserve set aside as the
//     kernel does (reference_model.h). One run uses 8-page pageblocks (a target-file override), so
//     that a 2848-page machine has room for claims, steals and a highatomic reserve.
#include <algorithm>
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
  bool expect_highatomic = false;  // the run must have reserved and released highatomic blocks
  bool thread_pages = false;       // per-thread caches in front of the per-CPU lists
};

// SmallX86 with pageblock_order 3: Normal's 2048 pages hold 256 pageblocks, 1% of it (20 pages)
// rounds up to a 24-page highatomic reserve, and grouping needs only 8 * 5 pages.
Target SmallX86SmallPageblocks() {
  Target t = testing::SmallX86();
  t.pageblock_order_override = 3;
  return t;
}

// SmallX86 with x86's low-memory boot: page 0 is not RAM (trim_bios_range()) and [0, 256 KiB)
// is memblock-reserved, so DMA has 159 present but 96 managed pages and the buddy's first DMA
// block starts at pfn 64, mid-segment of the present RAM.
Target SmallX86ReservedLow() {
  Target t = testing::SmallX86();
  t.ram.front() = {4096, 640 * testing::KiB - 4096};
  t.reserved = {{0, 256 * testing::KiB}};
  return t;
}

class Differential : public ::testing::TestWithParam<DiffParam> {};

TEST_P(Differential, AgreesWithTheReferenceModel) {
  PageAllocatorOptions o = testing::SmallOptions(GetParam().target(), GetParam().pcp);
  o.pcp_batch = 7;
  o.pcp_high = 48;
  o.thread_pages = GetParam().thread_pages;
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
  uint64_t reserved_seen = 0;

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
        if (order > 0 && (gfp & __GFP_HIGH) && !gfpflags_allow_blocking(gfp)) {
          // ALLOC_HIGHATOMIC: the one call that may just have reserved a pageblock. Look now: a
          // reserve can be undone again before the next periodic look (one run saw 1 reserve
          // and 1 unreserve between two of them when the thread's CPU, hence its lists, changed).
          for (const ZoneStats& z : pa.Stats()) reserved_seen = std::max(reserved_seen, z.nr_reserved_highatomic);
        }
      } else {
        ++fails;
        // A blocking caller was drained for before it failed; the model judges against the
        // drained state. A non-blocking one was not (__alloc_pages_slowpath() drains only in
        // direct reclaim): pages left on per-CPU lists explain its failure.
        const uint64_t listed = gfpflags_allow_blocking(gfp) ? 0 : model.ListedPagesOnZonelist(gfp, pa.Stats());
        pa.drain_all_pages();
        if (listed == 0) {
          ASSERT_TRUE(model.FailureJustified(gfp, order, pa.Stats())) << "step " << step;
        }
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
    if (step % 256 == 0) {
      const std::vector<ZoneStats> stats = pa.Stats();
      ASSERT_TRUE(model.MigratetypesConsistent(stats)) << "step " << step;
      for (const ZoneStats& z : stats) reserved_seen = std::max(reserved_seen, z.nr_reserved_highatomic);
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
  uint64_t claims = 0, steals = 0, reserves = 0, unreserves = 0;
  for (const ZoneStats& z : pa.Stats()) {
    for (int a = 0; a < MIGRATE_PCPTYPES; ++a) {
      for (int b = 0; b < MIGRATE_PCPTYPES; ++b) {
        for (uint64_t n : z.migrate.claims[a][b]) claims += n;
        for (uint64_t n : z.migrate.steals[a][b]) steals += n;
      }
    }
    reserves += z.migrate.highatomic_reserves;
    unreserves += z.migrate.highatomic_unreserves;
  }
  if (!pa.group_by_mobility_disabled()) {
    EXPECT_GT(claims, 0u);
    // With 8-page pageblocks can_steal_fallback() lets every order >= 1 claim, and an order-0
    // MOVABLE request nearly always finds a claimable block first: steals need real pageblocks.
    if (pa.pageblock_order() >= 4) {
      EXPECT_GT(steals, 0u);
    }
  }
  // The reserve is reached through the per-CPU path of this op stream; where rseq is unusable
  // (scripts/test.sh's rseq-off stage) the lists are off and the run is a buddy-only one, which
  // expects none (as x86_8page_pageblocks_buddy_only does).
  if (GetParam().expect_highatomic && pa.pcp_active()) {
    EXPECT_GT(reserved_seen, 0u);
    EXPECT_GT(reserves, 0u);
    EXPECT_GT(unreserves, 0u);
  }
  std::printf("%s: grouping %s, %lu claims, %lu steals, %lu highatomic reserves, %lu unreserves\n", GetParam().name,
              pa.group_by_mobility_disabled() ? "off" : "on", claims, steals, reserves, unreserves);
  std::printf("%s: %d ops: %d allocations, %d failures, %d frees, %d refused frees\n", GetParam().name,
              GetParam().ops, allocs, fails, frees, refused);
}

INSTANTIATE_TEST_SUITE_P(
    Targets, Differential,
    ::testing::Values(DiffParam{"x86_pcp", &testing::SmallX86, true, 600000},
                      DiffParam{"x86_buddy_only", &testing::SmallX86, false, 200000},
                      DiffParam{"x86_reserved_low_pcp", &SmallX86ReservedLow, true, 200000},
                      DiffParam{"i386_highmem_pcp", &testing::SmallI386, true, 400000},
                      DiffParam{"x86_8page_pageblocks_pcp", &SmallX86SmallPageblocks, true, 400000, true},
                      // Without per-CPU lists every zone rarely sits below LOW at once, so this
                      // run seldom reaches the slow path where ALLOC_HIGHATOMIC exists.
                      DiffParam{"x86_8page_pageblocks_buddy_only", &SmallX86SmallPageblocks, false, 200000},
                      // 64 KiB pages (arm64 64K): every PAGE_SHIFT-dependent formula off 4 KiB.
                      DiffParam{"arm64_64k_pcp", &testing::SmallArm64_64K, true, 300000},
                      // Thread pages: the model's per-CPU total includes the thread's cache.
                      DiffParam{"x86_thread_pages", &testing::SmallX86, true, 150000, false, true},
                      DiffParam{"i386_highmem_thread_pages", &testing::SmallI386, true, 100000, false, true}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace physmem
