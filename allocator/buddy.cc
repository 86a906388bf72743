#include "allocator/buddy.h"

#include <algorithm>
#include <bit>
#include <cassert>

namespace physmem {

Buddy::Buddy(const MemMap& mem_map, std::vector<Segment> segments, unsigned nr_orders)
    : mem_map_(mem_map), segments_(std::move(segments)), nr_orders_(nr_orders), area_(nr_orders) {}

const Segment& Buddy::segment_of(uint32_t idx) const {
  // A zone has one segment per RAM range it touches: a linear scan beats anything cleverer.
  for (const Segment& s : segments_) {
    if (s.contains_index(idx)) return s;
  }
  assert(false && "page index outside this zone");
  return segments_.front();
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
    AddToFreeList(idx, order, /*to_tail=*/true);
    free_pages_ += uint64_t{1} << order;
    pfn += uint64_t{1} << order;
  }
}

void Buddy::AddToFreeList(uint32_t idx, unsigned order, bool to_tail) {
  FreeArea& a = area_[order];
  Page& p = mem_map_.page(idx);
  if (a.head == kNilIndex) {
    p.next = p.prev = kNilIndex;
    a.head = a.tail = idx;
  } else if (to_tail) {
    p.prev = a.tail;
    p.next = kNilIndex;
    mem_map_.page(a.tail).next = idx;
    a.tail = idx;
  } else {
    p.next = a.head;
    p.prev = kNilIndex;
    mem_map_.page(a.head).prev = idx;
    a.head = idx;
  }
  ++a.nr_free;
}

void Buddy::DelFromFreeList(uint32_t idx, unsigned order) {
  FreeArea& a = area_[order];
  Page& p = mem_map_.page(idx);
  if (p.prev != kNilIndex) mem_map_.page(p.prev).next = p.next; else a.head = p.next;
  if (p.next != kNilIndex) mem_map_.page(p.next).prev = p.prev; else a.tail = p.prev;
  p.next = p.prev = 0;
  --a.nr_free;
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
  assert(pfn % (uint64_t{1} << order) == 0);
  free_pages_ += uint64_t{1} << order;
  mem_map_.page(idx).state.store(0, std::memory_order_relaxed);
  while (order < nr_orders_ - 1) {
    std::optional<uint32_t> buddy = FindFreeBuddy(seg, pfn, order);
    if (!buddy) break;
    DelFromFreeList(*buddy, order);
    mem_map_.page(*buddy).state.store(0, std::memory_order_relaxed);
    pfn &= ~(uint64_t{1} << order);  // combined pfn = buddy_pfn & pfn
    ++order;
  }
  const uint32_t head = seg.index_of(pfn);
  mem_map_.page(head).state.store(PageState::Buddy(order), std::memory_order_relaxed);
  AddToFreeList(head, order, /*to_tail=*/BuddyMergeLikely(seg, pfn, order));
}

std::optional<uint32_t> Buddy::RmqueueSmallest(unsigned order) {
  for (unsigned current = order; current < nr_orders_; ++current) {
    const uint32_t idx = area_[current].head;
    if (idx == kNilIndex) continue;
    DelFromFreeList(idx, current);
    mem_map_.page(idx).state.store(0, std::memory_order_relaxed);
    free_pages_ -= uint64_t{1} << current;
    // expand(): hand the upper halves back, keep the lower half.
    const Segment& seg = segment_of(idx);
    const uint64_t pfn = seg.pfn_of(idx);
    for (unsigned high = current; high > order;) {
      --high;
      const uint32_t upper = seg.index_of(pfn + (uint64_t{1} << high));
      mem_map_.page(upper).state.store(PageState::Buddy(high), std::memory_order_relaxed);
      AddToFreeList(upper, high, /*to_tail=*/false);
      free_pages_ += uint64_t{1} << high;
    }
    return idx;
  }
  return std::nullopt;
}

}  // namespace physmem
