// Randomized differential test: the allocator against a deliberately simple reference model
// (a bitmap of allocated pages and a map of blocks), for well over a million operations across
// orders, zones, GFP masks and owners, including bad frees.
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
#include <map>
#include <random>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

class Model {
 public:
  explicit Model(const PageAllocator& pa) : pa_(pa), used_(pa.mem_map().nr_pages()) {
    for (const ZoneStats& z : pa.Stats()) zone_pages_[z.type] = z.present_pages;
  }

  struct Block {
    unsigned order;
    uint32_t owner;
    ZoneType zone;
  };

  // Checks a fresh allocation and records it.
  ::testing::AssertionResult Allocated(uint64_t pfn, unsigned order, uint32_t owner, gfp_t gfp) {
    const ZoneType zone = pa_.page_zonenum(*pa_.PfnToPage(pfn));
    const ZoneType highest = gfp_zone(gfp, pa_.target().zone_configured);
    if (zone > highest) return ::testing::AssertionFailure() << "zone " << zone_name(zone) << " above " << zone_name(highest);
    if (pfn % (1u << order)) return ::testing::AssertionFailure() << "misaligned pfn " << pfn;
    for (uint64_t p = pfn; p < pfn + (1u << order); ++p) {
      std::optional<uint32_t> idx = pa_.mem_map().pfn_to_index(p);
      if (!idx) return ::testing::AssertionFailure() << "pfn " << p << " is not RAM";
      if (used_[*idx]) return ::testing::AssertionFailure() << "pfn " << p << " handed out twice";
      if (pa_.page_zonenum(&pa_.mem_map().page(*idx)) != zone) return ::testing::AssertionFailure() << "crosses zones";
    }
    for (uint64_t p = pfn; p < pfn + (1u << order); ++p) used_[*pa_.mem_map().pfn_to_index(p)] = 1;
    blocks_[pfn] = Block{order, owner, zone};
    allocated_[zone] += 1u << order;
    return ::testing::AssertionSuccess();
  }

  // What a free of (pfn, order) by owner must answer.
  absl::StatusCode ExpectedFree(uint64_t pfn, unsigned order, uint32_t owner) const {
    if (order > pa_.target().max_page_order) return absl::StatusCode::kInvalidArgument;
    if (!pa_.mem_map().pfn_to_index(pfn)) return absl::StatusCode::kOutOfRange;
    if (pfn % (1u << order)) return absl::StatusCode::kInvalidArgument;
    auto it = blocks_.find(pfn);
    if (it == blocks_.end()) return absl::StatusCode::kFailedPrecondition;
    if (it->second.owner != owner) return absl::StatusCode::kPermissionDenied;
    if (it->second.order != order) return absl::StatusCode::kInvalidArgument;
    return absl::StatusCode::kOk;
  }

  void Freed(uint64_t pfn) {
    const Block b = blocks_.at(pfn);
    for (uint64_t p = pfn; p < pfn + (1u << b.order); ++p) used_[*pa_.mem_map().pfn_to_index(p)] = 0;
    allocated_[b.zone] -= 1u << b.order;
    blocks_.erase(pfn);
  }

  uint64_t free_pages(ZoneType z) const { return zone_pages_[z] - allocated_[z]; }

  bool HasFreeAlignedRun(ZoneType zone, unsigned order) const {
    for (const Segment& s : pa_.mem_map().segments()) {
      if (s.zone != zone) continue;
      const uint64_t n = uint64_t{1} << order;
      for (uint64_t p = (s.start_pfn + n - 1) & ~(n - 1); p + n <= s.end_pfn; p += n) {
        bool all_free = true;
        for (uint64_t q = p; q < p + n && all_free; ++q) all_free = !used_[s.index_of(q)];
        if (all_free) return true;
      }
    }
    return false;
  }

  // True if no zone of the zonelist could have served the request.
  ::testing::AssertionResult FailureJustified(gfp_t gfp, unsigned order, const std::vector<ZoneStats>& stats) const {
    const ZoneType highest = gfp_zone(gfp, pa_.target().zone_configured);
    const unsigned alloc_flags = gfp_to_alloc_flags(gfp, order);
    for (const ZoneStats& z : stats) {
      if (z.type > highest || !z.populated) continue;
      std::vector<uint64_t> nr_free(pa_.target().nr_page_orders(), 0);
      const bool run = HasFreeAlignedRun(z.type, order);
      if (run) nr_free[order] = 1;
      const uint64_t mark = z.watermarks[static_cast<WatermarkLevel>(alloc_flags & ALLOC_WMARK_MASK)];
      if (run && ZoneWatermarkOk(free_pages(z.type), nr_free, order, mark, z.lowmem_reserve[highest], alloc_flags)) {
        return ::testing::AssertionFailure() << "order-" << order << " " << FormatGfp(gfp) << " failed but zone "
                                             << zone_name(z.type) << " had a free aligned run and "
                                             << free_pages(z.type) << " free pages";
      }
    }
    return ::testing::AssertionSuccess();
  }

  const std::map<uint64_t, Block>& blocks() const { return blocks_; }

 private:
  const PageAllocator& pa_;
  std::vector<uint8_t> used_;
  std::map<uint64_t, Block> blocks_;
  std::array<uint64_t, MAX_NR_ZONES> zone_pages_{};
  std::array<uint64_t, MAX_NR_ZONES> allocated_{};
};

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
