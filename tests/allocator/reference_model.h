// A deliberately simple reference model of the page allocator's books — a bitmap of allocated
// pages and a map of blocks — that predicts what a correct allocator must satisfy without
// predicting which block it picks (that is policy):
//   - a returned block is naturally aligned, all RAM, inside one zone the gfp mask allows, and
//     disjoint from every block the model holds (Allocated);
//   - a failure is justified: for every zone on the zonelist, either the watermark check fails
//     (computed from the model's own free count) or the model has no naturally aligned free run
//     of that order in the zone (FailureJustified, to call after drain_all_pages(); a caller that
//     cannot block is not drained for, so its failure is also explained by pages that sat on
//     per-CPU lists when it failed: ListedPagesOnZonelist);
//   - a free succeeds or fails with the code the model predicts (ExpectedFree);
//   - free pages per zone equal the model's (free_pages);
//   - migratetypes (kernel 6.12 LTS rules): a block carries PG_movable exactly when its request's
//     gfp_migratetype() is MOVABLE (UNMOVABLE for all while mobility grouping is off); pageblocks
//     are counted once each with a valid type (MigratetypesConsistent); a failure is judged with
//     the free pages of HIGHATOMIC pageblocks set aside for callers without ALLOC_RESERVES
//     (__zone_watermark_unusable_free()) and their runs set aside for callers that may not take
//     from HIGHATOMIC lists (rmqueue_buddy()); a blocking caller's failure comes only after the
//     reserve's free pages were released (unreserve_highatomic_pageblock(force)).
//
// Who uses it: tests/allocator/differential_test.cc (randomized, a million operations) and
// tests/fuzz/page_allocator_fuzz.cc (an operation stream from libFuzzer). Thread-safety: none;
// one thread drives the allocator and the model together.
#ifndef PHYSMEM_TESTS_ALLOCATOR_REFERENCE_MODEL_H_
#define PHYSMEM_TESTS_ALLOCATOR_REFERENCE_MODEL_H_

#include <algorithm>
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
    for (const ZoneStats& z : pa.Stats()) zone_pages_[z.type] = z.managed_pages;  // reserved pages are never free
  }

  struct Block {
    unsigned order;
    uint32_t owner;
    ZoneType zone;
    int migratetype;  // gfp_migratetype() of the request, as the allocator sees it
  };

  int RequestMigratetype(gfp_t gfp) const {
    return pa_.group_by_mobility_disabled() ? MIGRATE_UNMOVABLE : gfp_migratetype(gfp);
  }

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
    const Page* head = *pa_.PfnToPage(pfn);
    const int mt = RequestMigratetype(gfp);
    const bool movable = (head->Load().flags & PG_movable) != 0;
    if (movable != (mt == MIGRATE_MOVABLE)) {
      return ::testing::AssertionFailure() << "pfn " << pfn << " PG_movable " << movable << " for migratetype " << mt;
    }
    const int block_mt = pa_.pageblock_migratetype(head);
    if (block_mt < 0 || block_mt >= MIGRATE_ISOLATE) {
      return ::testing::AssertionFailure() << "pfn " << pfn << " in a pageblock of type " << block_mt;
    }
    for (uint64_t p = pfn; p < pfn + (1u << order); ++p) used_[*pa_.mem_map().pfn_to_index(p)] = 1;
    blocks_[pfn] = Block{order, owner, zone, mt};
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

  bool IsHighatomic(const Segment& s, uint64_t pfn) const {
    return pa_.pageblock_migratetype(&pa_.mem_map().page(s.index_of(pfn))) == MIGRATE_HIGHATOMIC;
  }

  // A naturally aligned run of free pages the buddy can hand out as one block: HIGHATOMIC
  // pageblocks never merge with other types (__free_one_page()), so a run is all HIGHATOMIC or
  // has none; with `exclude_highatomic`, none.
  bool HasFreeAlignedRun(ZoneType zone, unsigned order, bool exclude_highatomic = false) const {
    const uint64_t block = uint64_t{1} << pa_.pageblock_order();
    for (const Segment& s : pa_.mem_map().segments()) {
      if (s.zone != zone) continue;
      const uint64_t n = uint64_t{1} << order;
      for (uint64_t p = (s.start_pfn + n - 1) & ~(n - 1); p + n <= s.end_pfn; p += n) {
        bool all_free = true;
        for (uint64_t q = p; q < p + n && all_free; ++q) all_free = !used_[s.index_of(q)];
        if (!all_free) continue;
        int highatomic = 0, blocks = 0;
        for (uint64_t q = p; q < p + n; q = (q | (block - 1)) + 1, ++blocks) highatomic += IsHighatomic(s, q);
        if (highatomic == 0 || (!exclude_highatomic && highatomic == blocks)) return true;
      }
    }
    return false;
  }

  // Free pages in HIGHATOMIC pageblocks of a zone, from the model's own bitmap (nr_free_highatomic
  // once the per-CPU lists are drained).
  uint64_t FreeHighatomicPages(ZoneType zone) const {
    uint64_t n = 0;
    for (const Segment& s : pa_.mem_map().segments()) {
      if (s.zone != zone) continue;
      for (uint64_t p = s.start_pfn; p < s.end_pfn; ++p) n += !used_[s.index_of(p)] && IsHighatomic(s, p);
    }
    return n;
  }

  // Pageblock bookkeeping that holds whatever the policy did: every pageblock starting in the
  // zone's RAM is counted once (pagetypeinfo_showblockcount_print()'s walk), types add up, the
  // reserve is whole HIGHATOMIC pageblocks within ALIGN(managed / 100, pageblock_nr_pages) plus
  // one step, no ISOLATE, and with grouping off no MOVABLE or RECLAIMABLE block.
  ::testing::AssertionResult MigratetypesConsistent(const std::vector<ZoneStats>& stats) const {
    const uint64_t block = uint64_t{1} << pa_.pageblock_order();
    for (const ZoneStats& z : stats) {
      uint64_t starts = 0;
      // pagetypeinfo_showblockcount_print(): every pfn with a struct page, i.e. present RAM
      // (reserved pages included), in pageblock steps from the zone start.
      const Target& t = pa_.target();
      for (uint64_t p = z.start_pfn; p < z.start_pfn + z.spanned_pages; p += block) {
        const uint64_t phys = p << t.page_shift;
        starts += std::any_of(t.ram.begin(), t.ram.end(),
                              [phys](const RamRange& r) { return phys >= r.start && phys - r.start < r.size; });
      }
      uint64_t counted = 0;
      for (uint64_t c : z.nr_pageblocks_by_type) counted += c;
      const char* name = zone_name(z.type).data();
      if (counted != starts) {
        return ::testing::AssertionFailure() << name << ": " << counted << " pageblocks typed, " << starts << " exist";
      }
      if (z.nr_pageblocks_by_type[MIGRATE_ISOLATE] != 0) return ::testing::AssertionFailure() << name << ": ISOLATE";
      if (z.nr_reserved_highatomic != z.nr_pageblocks_by_type[MIGRATE_HIGHATOMIC] * block) {
        return ::testing::AssertionFailure() << name << ": reserve " << z.nr_reserved_highatomic << " pages but "
                                             << z.nr_pageblocks_by_type[MIGRATE_HIGHATOMIC] << " HIGHATOMIC blocks";
      }
      const uint64_t step = std::max<uint64_t>(block, uint64_t{1} << pa_.target().max_page_order);
      if (z.nr_reserved_highatomic != 0 && z.nr_reserved_highatomic >= z.highatomic_max + step) {
        return ::testing::AssertionFailure() << name << ": reserve " << z.nr_reserved_highatomic << " above "
                                             << z.highatomic_max;
      }
      if (pa_.group_by_mobility_disabled() &&
          z.nr_pageblocks_by_type[MIGRATE_MOVABLE] + z.nr_pageblocks_by_type[MIGRATE_RECLAIMABLE] != 0) {
        return ::testing::AssertionFailure() << name << ": MOVABLE/RECLAIMABLE pageblocks with grouping off";
      }
      for (size_t o = 0; o < z.nr_free.size(); ++o) {
        uint64_t sum = 0;
        for (uint64_t n : z.nr_free_by_type[o]) sum += n;
        if (sum != z.nr_free[o]) return ::testing::AssertionFailure() << name << ": order " << o << " types don't add up";
      }
    }
    return ::testing::AssertionSuccess();
  }

  // Pages parked on per-CPU lists in the zones of gfp's zonelist. A caller that cannot block
  // fails without drain_all_pages() (the kernel drains only in __alloc_pages_direct_reclaim()),
  // so such a failure is explained whenever pages sat on the lists when it failed: call this
  // with the stats taken before draining, and judge with FailureJustified() only when it is 0.
  uint64_t ListedPagesOnZonelist(gfp_t gfp, const std::vector<ZoneStats>& stats) const {
    const ZoneType highest = gfp_zone(gfp, pa_.target().zone_configured);
    uint64_t listed = 0;
    for (const ZoneStats& z : stats) {
      if (z.type <= highest) listed += z.pcp_pages;
    }
    return listed;
  }

  // True if no zone of the zonelist could have served the request.
  ::testing::AssertionResult FailureJustified(gfp_t gfp, unsigned order, const std::vector<ZoneStats>& stats) const {
    const ZoneType highest = gfp_zone(gfp, pa_.target().zone_configured);
    const unsigned alloc_flags = gfp_to_alloc_flags(gfp, order);
    // rmqueue_buddy() falls back to HIGHATOMIC lists for ALLOC_NON_BLOCK too, but for order > 0
    // __zone_watermark_ok() counts a HIGHATOMIC free block only for ALLOC_HIGHATOMIC / ALLOC_OOM.
    const bool may_use_highatomic = (alloc_flags & (ALLOC_HIGHATOMIC | ALLOC_OOM)) ||
                                    (order == 0 && (alloc_flags & ALLOC_NON_BLOCK));
    for (const ZoneStats& z : stats) {
      if (z.type > highest || !z.populated) continue;
      const uint64_t highatomic_free = FreeHighatomicPages(z.type);
      if (highatomic_free != z.nr_free_highatomic) {
        return ::testing::AssertionFailure() << zone_name(z.type) << ": nr_free_highatomic " << z.nr_free_highatomic
                                             << " but the model counts " << highatomic_free;
      }
      if (gfpflags_allow_blocking(gfp) && highatomic_free != 0) {
        return ::testing::AssertionFailure() << "blocking " << FormatGfp(gfp) << " failed with " << highatomic_free
                                             << " free pages still reserved highatomic in " << zone_name(z.type);
      }
      std::vector<uint64_t> nr_free(pa_.target().nr_page_orders(), 0);
      const bool run = HasFreeAlignedRun(z.type, order, /*exclude_highatomic=*/!may_use_highatomic);
      if (run) nr_free[order] = 1;
      const uint64_t mark = z.watermarks[static_cast<WatermarkLevel>(alloc_flags & ALLOC_WMARK_MASK)];
      const uint64_t usable = free_pages(z.type) - ((alloc_flags & ALLOC_RESERVES) ? 0 : highatomic_free);
      if (run && ZoneWatermarkOk(usable, nr_free, order, mark, z.lowmem_reserve[highest], alloc_flags)) {
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
