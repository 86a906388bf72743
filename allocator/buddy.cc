#include "allocator/buddy.h"

#include <algorithm>
#include <bit>

#include "allocator/check.h"
#include "allocator/gfp.h"

namespace physmem {

Buddy::Buddy(const MemMap& mem_map, std::vector<Segment> segments, unsigned nr_orders, Pageblocks& pageblocks,
             uint64_t span_start_pfn, uint64_t span_end_pfn)
    : mem_map_(mem_map),
      segments_(std::move(segments)),
      nr_orders_(nr_orders),
      pageblocks_(pageblocks),
      span_start_pfn_(span_start_pfn),
      span_end_pfn_(span_end_pfn),
      area_(nr_orders) {}

const Segment& Buddy::segment_of(uint32_t idx) const {
  // A zone has one segment per RAM range it touches: a linear scan beats anything cleverer.
  for (const Segment& s : segments_) {
    if (s.contains_index(idx)) return s;
  }
  PHYSMEM_DCHECK(false, "page index outside this zone");
  return segments_.front();  // not reached where checks are on
}

void Buddy::FreeAllRam() {
  for (const Segment& seg : segments_) FreeRange(seg, seg.start_pfn, seg.end_pfn);
}

void Buddy::FreeRange(const Segment& seg, uint64_t start_pfn, uint64_t end_pfn) {
  const unsigned max_order = nr_orders_ - 1;
  uint64_t pfn = start_pfn;
  while (pfn < end_pfn) {
    // The largest order at which pfn is aligned (countr_zero(0) = 64) and the block still fits.
    unsigned order = std::min<unsigned>(std::countr_zero(pfn), max_order);
    while (pfn + (uint64_t{1} << order) > end_pfn) --order;
    const uint32_t idx = seg.index_of(pfn);
    mem_map_.page(idx).state.store(PageState::Buddy(order), std::memory_order_relaxed);
    // A block larger than a pageblock takes the type of its first one; boot marking made them
    // all alike, and restore keeps the invariant by matching the rest.
    const int mt = pageblocks_.Get(pfn);
    if (order > pageblocks_.order()) ChangePageblockRange(pfn, order, mt);
    AddToFreeList(idx, order, mt, /*to_tail=*/true);
    pfn += uint64_t{1} << order;
  }
}

void Buddy::AddToFreeList(uint32_t idx, unsigned order, int mt, bool to_tail) {
  FreeArea& a = area_[order];
  FreeList& l = a.list[mt];
  Page& p = mem_map_.page(idx);
  if (l.head == kNilIndex) {
    p.next = p.prev = kNilIndex;
    l.head = l.tail = idx;
  } else if (to_tail) {
    p.prev = l.tail;
    p.next = kNilIndex;
    mem_map_.page(l.tail).next = idx;
    l.tail = idx;
  } else {
    p.next = l.head;
    p.prev = kNilIndex;
    mem_map_.page(l.head).prev = idx;
    l.head = idx;
  }
  ++l.nr;
  ++a.nr_free;
  // account_freepages(): NR_FREE_PAGES counts every type but ISOLATE; HIGHATOMIC also has its own.
  if (mt != MIGRATE_ISOLATE) free_pages_ += uint64_t{1} << order;
  if (mt == MIGRATE_HIGHATOMIC) free_highatomic_ += uint64_t{1} << order;
}

void Buddy::DelFromFreeList(uint32_t idx, unsigned order, int mt) {
  FreeArea& a = area_[order];
  FreeList& l = a.list[mt];
  Page& p = mem_map_.page(idx);
  if (p.prev != kNilIndex) mem_map_.page(p.prev).next = p.next; else l.head = p.next;
  if (p.next != kNilIndex) mem_map_.page(p.next).prev = p.prev; else l.tail = p.prev;
  p.next = p.prev = 0;
  --l.nr;
  --a.nr_free;
  if (mt != MIGRATE_ISOLATE) free_pages_ -= uint64_t{1} << order;
  if (mt == MIGRATE_HIGHATOMIC) free_highatomic_ -= uint64_t{1} << order;
}

void Buddy::MoveToFreeList(uint32_t idx, unsigned order, int old_mt, int new_mt) {
  // move_to_free_list(): to the tail, as the kernel does ("the page is likely to be merged").
  DelFromFreeList(idx, order, old_mt);
  AddToFreeList(idx, order, new_mt, /*to_tail=*/true);
}

void Buddy::SetPageblockType(uint64_t pfn, int mt) {
  const int old = pageblocks_.Get(pfn);
  if (pageblocks_.Set(pfn, mt)) ++counters_.pageblock_changes[old][pageblocks_.Get(pfn)];
}

void Buddy::ChangePageblockRange(uint64_t pfn, unsigned order, int mt) {
  const uint64_t step = pageblocks_.nr_pages();
  const uint64_t end = pfn + (uint64_t{1} << order);
  for (uint64_t p = pageblocks_.start_of(pfn); p < end; p += step) SetPageblockType(p, mt);
}

std::optional<uint32_t> Buddy::FindFreeBuddy(const Segment& seg, uint64_t pfn, unsigned order) const {
  const uint64_t buddy_pfn = pfn ^ (uint64_t{1} << order);  // __find_buddy_pfn()
  // The whole buddy block must be in this segment: no hole, no other zone.
  if (buddy_pfn < seg.start_pfn || buddy_pfn + (uint64_t{1} << order) > seg.end_pfn) return std::nullopt;
  const uint32_t bidx = seg.index_of(buddy_pfn);
  // page_is_buddy(): PageBuddy, same order. A block on a per-CPU list is not PageBuddy, so it
  // does not merge until it is drained, exactly as in the kernel.
  if (mem_map_.page(bidx).state.load(std::memory_order_relaxed) != PageState::Buddy(order)) return std::nullopt;
  return bidx;
}

bool Buddy::BuddyMergeLikely(const Segment& seg, uint64_t pfn, unsigned order) const {
  if (order >= nr_orders_ - 2) return false;
  const uint64_t parent_pfn = pfn & ~(uint64_t{1} << order);
  return FindFreeBuddy(seg, parent_pfn, order + 1).has_value();
}

void Buddy::FreeOne(uint32_t idx, unsigned order) {
  const Segment& seg = segment_of(idx);
  uint64_t pfn = seg.pfn_of(idx);
  PHYSMEM_DCHECK(pfn % (uint64_t{1} << order) == 0, "a freed block must be aligned to its order");
  // free_pcppages_bulk() / free_one_page() re-read the block's type now (6.10+): a pcp list may
  // have held the page while its block changed type.
  const int mt = pageblocks_.Get(pfn);
  mem_map_.page(idx).state.store(0, std::memory_order_relaxed);
  while (order < nr_orders_ - 1) {
    std::optional<uint32_t> buddy = FindFreeBuddy(seg, pfn, order);
    if (!buddy) break;
    const uint64_t buddy_pfn = pfn ^ (uint64_t{1} << order);
    int buddy_mt = mt;
    if (order >= pageblocks_.order()) {
      // __free_one_page(): "prevent merge between freepages on pageblock without fallbacks and
      // normal pageblock" (HIGHATOMIC, ISOLATE keep to themselves).
      buddy_mt = pageblocks_.Get(buddy_pfn);
      if (mt != buddy_mt && (!migratetype_is_mergeable(mt) || !migratetype_is_mergeable(buddy_mt))) break;
    }
    DelFromFreeList(*buddy, order, buddy_mt);
    mem_map_.page(*buddy).state.store(0, std::memory_order_relaxed);
    // "Match buddy type. This ensures that an expand() down the line puts the sub-blocks on the
    // right freelists." The kernel sets the buddy's first pageblock; we set all of them so that a
    // free block's pageblocks always agree (the invariant above).
    if (buddy_mt != mt) ChangePageblockRange(buddy_pfn, order, mt);
    pfn &= ~(uint64_t{1} << order);  // combined pfn = buddy_pfn & pfn
    ++order;
  }
  const uint32_t head = seg.index_of(pfn);
  mem_map_.page(head).state.store(PageState::Buddy(order), std::memory_order_relaxed);
  AddToFreeList(head, order, mt, /*to_tail=*/BuddyMergeLikely(seg, pfn, order));
}

void Buddy::Expand(uint32_t idx, unsigned low, unsigned high, int mt) {
  // expand(): hand the upper halves back, keep the lower half.
  const Segment& seg = segment_of(idx);
  const uint64_t pfn = seg.pfn_of(idx);
  while (high > low) {
    --high;
    const uint32_t upper = seg.index_of(pfn + (uint64_t{1} << high));
    mem_map_.page(upper).state.store(PageState::Buddy(high), std::memory_order_relaxed);
    AddToFreeList(upper, high, mt, /*to_tail=*/false);
  }
}

std::optional<uint32_t> Buddy::RmqueueSmallest(unsigned order, int mt) {
  for (unsigned current = order; current < nr_orders_; ++current) {
    const uint32_t idx = area_[current].list[mt].head;
    if (idx == kNilIndex) continue;
    DelFromFreeList(idx, current, mt);  // page_del_and_expand()
    mem_map_.page(idx).state.store(0, std::memory_order_relaxed);
    Expand(idx, order, current, mt);
    return idx;
  }
  return std::nullopt;
}

std::optional<uint32_t> Buddy::RmqueueBuddy(unsigned order, int mt, unsigned alloc_flags) {
  std::optional<uint32_t> idx;
  if (alloc_flags & ALLOC_HIGHATOMIC) idx = RmqueueSmallest(order, MIGRATE_HIGHATOMIC);
  if (!idx) {
    RmqueueMode mode = RmqueueMode::kNormal;
    idx = Rmqueue(order, mt, alloc_flags, &mode);
    // "If the allocation fails, allow OOM handling and order-0 (atomic) allocs access to
    // HIGHATOMIC reserves as failing now is worse than failing a high-order atomic allocation
    // in the future."
    if (!idx && (alloc_flags & (ALLOC_OOM | ALLOC_NON_BLOCK))) idx = RmqueueSmallest(order, MIGRATE_HIGHATOMIC);
  }
  return idx;
}

}  // namespace physmem
