// A deliberately simple reference model of the page allocator's books — a bitmap of allocated
// pages and a map of blocks — that predicts what a correct allocator must satisfy without
// predicting which block it picks (that is policy):
//   - a returned block is naturally aligned, all RAM, inside one zone the gfp mask allows, and
//     disjoint from every block the model holds (Allocated);
//   - a failure is justified: for every zone on the zonelist, either the watermark check fails
//     (computed from the model's own free count) or the model has no naturally aligned free run
//     of that order in the zone (FailureJustified, to call after drain_all_pages());
//   - a free succeeds or fails with the code the model predicts (ExpectedFree);
//   - free pages per zone equal the model's (free_pages).
//
// Who uses it: tests/allocator/differential_test.cc (randomized, a million operations) and
// tests/fuzz/page_allocator_fuzz.cc (an operation stream from libFuzzer). Thread-safety: none;
// one thread drives the allocator and the model together.
#ifndef PHYSMEM_TESTS_ALLOCATOR_REFERENCE_MODEL_H_
#define PHYSMEM_TESTS_ALLOCATOR_REFERENCE_MODEL_H_

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"

namespace physmem::testing {

class ReferenceModel {
 public:
  explicit ReferenceModel(const PageAllocator& pa) : pa_(pa), used_(pa.mem_map().nr_pages()) {
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

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_ALLOCATOR_REFERENCE_MODEL_H_
