// Fallback between migratetypes: __rmqueue() and its claim and steal paths, as the reference
// kernel (6.12 LTS; 6.12.118 stable carries the 6.15 __rmqueue_claim/__rmqueue_steal rework but
// keeps the name try_to_steal_block()) does them in mm/page_alloc.c. Buddy members, zone lock held.
//
// Not modelled: boost_watermark() on a claim attempt (no kswapd here to reclaim the boost), CMA.
#include "allocator/buddy.h"
#include "allocator/gfp.h"

namespace physmem {

std::optional<uint32_t> Buddy::Rmqueue(unsigned order, int mt, unsigned alloc_flags, RmqueueMode* mode) {
  std::optional<uint32_t> idx;
  switch (*mode) {
    case RmqueueMode::kNormal:
      if ((idx = RmqueueSmallest(order, mt))) return idx;
      [[fallthrough]];
    case RmqueueMode::kClaim:
      if ((idx = RmqueueClaim(order, mt, alloc_flags))) {
        *mode = RmqueueMode::kNormal;  // "Replenished preferred freelist, back to normal mode."
        return idx;
      }
      [[fallthrough]];
    case RmqueueMode::kSteal:
      if (!(alloc_flags & ALLOC_NOFRAGMENT) && (idx = RmqueueSteal(order, mt))) {
        *mode = RmqueueMode::kSteal;
        return idx;
      }
  }
  return std::nullopt;
}

// can_steal_fallback(): may a fallback at this (free block) order take over the pageblock?
bool Buddy::CanStealFallback(unsigned order, int start_mt) const {
  const unsigned pb = pageblocks_.order();
  if (order >= pb) return true;
  return order >= pb / 2 || start_mt == MIGRATE_RECLAIMABLE || start_mt == MIGRATE_UNMOVABLE ||
         pageblocks_.group_by_mobility_disabled();
}

// find_suitable_fallback(area, order, mt, only_stealable = false, &can_steal): the first type of
// fallbacks[mt] with a free block of this order, or -1.
int Buddy::FindSuitableFallback(unsigned order, int mt, bool* can_steal) const {
  *can_steal = false;
  if (area_[order].nr_free == 0) return -1;
  for (int fallback_mt : kFallbacks[mt]) {
    if (free_list_empty(order, fallback_mt)) continue;
    *can_steal = CanStealFallback(order, mt);
    return fallback_mt;
  }
  return -1;
}

// __rmqueue_claim(): largest block first ("approximates the block with most free pages"); under
// ALLOC_NOFRAGMENT only whole pageblocks. Stops at the first order where claiming is not allowed.
std::optional<uint32_t> Buddy::RmqueueClaim(unsigned order, int start_mt, unsigned alloc_flags) {
  unsigned min_order = order;
  if (order < pageblocks_.order() && (alloc_flags & ALLOC_NOFRAGMENT)) min_order = pageblocks_.order();
  for (int current = static_cast<int>(nr_orders_) - 1; current >= static_cast<int>(min_order); --current) {
    bool can_steal;
    const int fallback_mt = FindSuitableFallback(current, start_mt, &can_steal);
    if (fallback_mt == -1) continue;
    if (!can_steal) break;
    const uint32_t idx = area_[current].list[fallback_mt].head;  // get_page_from_free_area()
    if (std::optional<uint32_t> got = TryToStealBlock(idx, current, order, start_mt, fallback_mt)) {
      ++counters_.claims[start_mt][fallback_mt][current];  // trace_mm_page_alloc_extfrag()
      return got;
    }
  }
  return std::nullopt;
}

// __rmqueue_steal(): the smallest block of a fallback type; the pageblock keeps its type and the
// split halves go back to the fallback type's lists.
std::optional<uint32_t> Buddy::RmqueueSteal(unsigned order, int start_mt) {
  for (unsigned current = order; current < nr_orders_; ++current) {
    bool can_steal;
    const int fallback_mt = FindSuitableFallback(current, start_mt, &can_steal);
    if (fallback_mt == -1) continue;
    const uint32_t idx = area_[current].list[fallback_mt].head;
    DelFromFreeList(idx, current, fallback_mt);  // page_del_and_expand()
    mem_map_.page(idx).state.store(0, std::memory_order_relaxed);
    Expand(idx, order, current, fallback_mt);
    ++counters_.steals[start_mt][fallback_mt][current];  // trace_mm_page_alloc_extfrag()
    return idx;
  }
  return std::nullopt;
}

// try_to_steal_block() (6.15+: try_to_claim_block()).
std::optional<uint32_t> Buddy::TryToStealBlock(uint32_t idx, unsigned current_order, unsigned order, int start_mt,
                                               int block_mt) {
  const uint64_t pfn = pfn_of(idx);
  // "Take ownership for orders >= pageblock_order."
  if (current_order >= pageblocks_.order()) {
    DelFromFreeList(idx, current_order, block_mt);
    mem_map_.page(idx).state.store(0, std::memory_order_relaxed);
    ChangePageblockRange(pfn, current_order, start_mt);
    Expand(idx, order, current_order, start_mt);
    return idx;
  }
  uint64_t start_pfn, free_pages, movable_pages;
  // "moving whole block can fail due to zone boundary conditions"
  if (!PrepMoveFreepagesBlock(pfn, &start_pfn, &free_pages, &movable_pages)) return std::nullopt;
  // "Determine how many pages are compatible with our allocation." For a MOVABLE request the
  // movable pages; for UNMOVABLE/RECLAIMABLE in a MOVABLE block every page that is not movable;
  // between UNMOVABLE and RECLAIMABLE nothing (their pages cannot be told apart).
  uint64_t alike_pages = 0;
  if (start_mt == MIGRATE_MOVABLE) {
    alike_pages = movable_pages;
  } else if (block_mt == MIGRATE_MOVABLE) {
    alike_pages = pageblocks_.nr_pages() - (free_pages + movable_pages);
  }
  // "If a sufficient number of pages in the block are either free or of comparable migratability
  // as our allocation, claim the whole block."
  if (free_pages + alike_pages >= (pageblocks_.nr_pages() >> 1) || pageblocks_.group_by_mobility_disabled()) {
    MoveFreepagesBlock(start_pfn, block_mt, start_mt);
    return RmqueueSmallest(order, start_mt);
  }
  return std::nullopt;
}

bool Buddy::PrepMoveFreepagesBlock(uint64_t pfn, uint64_t* start_pfn, uint64_t* free_pages,
                                   uint64_t* movable_pages) const {
  const uint64_t start = pageblocks_.start_of(pfn);
  const uint64_t end = start + pageblocks_.nr_pages();
  if (start < span_start_pfn_ || end > span_end_pfn_) return false;  // !zone_spans_pfn()
  *start_pfn = start;
  *free_pages = 0;
  *movable_pages = 0;
  for (const Segment& seg : segments_) {
    uint64_t p = std::max(start, seg.start_pfn);
    const uint64_t seg_end = std::min(end, seg.end_pfn);
    while (p < seg_end) {
      const PageState s = PageState::Unpack(mem_map_.page(seg.index_of(p)).state.load(std::memory_order_relaxed));
      if (s.flags & PG_buddy) {
        *free_pages += uint64_t{1} << s.order;
        p += uint64_t{1} << s.order;
      } else if (s.refcount != 0) {
        // An allocated head: PageLRU() / __PageMovable() is, here, "allocated as MOVABLE".
        if (s.flags & PG_movable) *movable_pages += uint64_t{1} << s.order;
        p += uint64_t{1} << s.order;
      } else {
        ++p;  // a tail, or a per-CPU list head (neither buddy nor LRU)
      }
    }
  }
  return true;
}

int64_t Buddy::MoveFreepagesBlock(uint64_t pfn, int old_mt, int new_mt) {
  const uint64_t start = pageblocks_.start_of(pfn);
  const uint64_t end = start + pageblocks_.nr_pages();
  if (start < span_start_pfn_ || end > span_end_pfn_) return -1;
  int64_t moved = 0;
  for (const Segment& seg : segments_) {
    uint64_t p = std::max(start, seg.start_pfn);
    const uint64_t seg_end = std::min(end, seg.end_pfn);
    while (p < seg_end) {
      const uint32_t idx = seg.index_of(p);
      const PageState s = PageState::Unpack(mem_map_.page(idx).state.load(std::memory_order_relaxed));
      if (!(s.flags & PG_buddy)) {
        ++p;
        continue;
      }
      MoveToFreeList(idx, s.order, old_mt, new_mt);
      moved += int64_t{1} << s.order;
      p += uint64_t{1} << s.order;
    }
  }
  SetPageblockType(start, new_mt);
  return moved;
}

}  // namespace physmem
