// The highatomic reserve: pageblocks set aside for high-order atomic allocations
// (mm/page_alloc.c of the reference kernel, 6.12 LTS: reserve_highatomic_pageblock(),
// unreserve_highatomic_pageblock()). Buddy members, zone lock held.
#include <algorithm>

#include "allocator/buddy.h"

namespace physmem {

uint64_t Buddy::HighatomicMax(uint64_t managed_pages) const {
  // "minimum is 1 pageblock, maximum is roughly 1% of a zone. But if 1% of a zone falls below a
  // pageblock size, then don't reserve any pageblocks."
  const uint64_t nr = pageblocks_.nr_pages();
  if (managed_pages / 100 < nr) return 0;
  return (managed_pages / 100 + nr - 1) & ~(nr - 1);  // ALIGN(managed / 100, pageblock_nr_pages)
}

void Buddy::ReserveHighatomic(uint32_t idx, unsigned order, uint64_t managed_pages) {
  const uint64_t max_managed = HighatomicMax(managed_pages);
  if (max_managed == 0 || nr_reserved_highatomic_ >= max_managed) return;
  const uint64_t pfn = pfn_of(idx);
  const int mt = pageblocks_.Get(pfn);
  // "Only reserve normal pageblocks (i.e., they can merge with others)"
  if (!migratetype_is_mergeable(mt)) return;
  if (order < pageblocks_.order()) {
    if (MoveFreepagesBlock(pfn, mt, MIGRATE_HIGHATOMIC) == -1) return;
    nr_reserved_highatomic_ += pageblocks_.nr_pages();
  } else {
    ChangePageblockRange(pfn, order, MIGRATE_HIGHATOMIC);
    nr_reserved_highatomic_ += uint64_t{1} << order;
  }
  ++counters_.highatomic_reserves;
}

bool Buddy::UnreserveHighatomic(bool force, int mt) {
  // "Preserve at least one pageblock unless memory pressure is really high."
  if (!force && nr_reserved_highatomic_ <= pageblocks_.nr_pages()) return false;
  for (unsigned order = 0; order < nr_orders_; ++order) {
    const uint32_t idx = area_[order].list[MIGRATE_HIGHATOMIC].head;
    if (idx == kNilIndex) continue;
    const uint64_t pfn = pfn_of(idx);
    const int block_mt = pageblocks_.Get(pfn);
    if (block_mt == MIGRATE_HIGHATOMIC) {
      const uint64_t size = std::min(std::max(pageblocks_.nr_pages(), uint64_t{1} << order), nr_reserved_highatomic_);
      nr_reserved_highatomic_ -= size;
    }
    // "Convert to ac->migratetype and avoid the normal pageblock stealing heuristics."
    int64_t moved;
    if (order < pageblocks_.order()) {
      moved = MoveFreepagesBlock(pfn, block_mt, mt);
    } else {
      MoveToFreeList(idx, order, block_mt, mt);
      ChangePageblockRange(pfn, order, mt);
      moved = 1;
    }
    if (moved > 0) {
      ++counters_.highatomic_unreserves;
      return true;
    }
  }
  return false;
}

}  // namespace physmem
