// The buddy allocator of one zone: free_area[order] lists and the split/merge algorithm
// (mm/page_alloc.c: __free_one_page(), __rmqueue_smallest(), expand()).
//
// Who uses it: Zone, always with the zone lock held (every method here is "...Locked" in spirit;
// the Buddy object itself holds no lock). Thread-safety: none of its own; the caller serializes.
//
// Invariants (checked by Validate()):
//   - The buddy of the block at pfn B and order O is B ^ (1 << O); the merged parent is
//     B & ~(1 << O). E.g. block 8's order-1 buddy is 10, and together they form block 8 at order 2.
//   - Every free block is naturally aligned (B % (1 << O) == 0), lies inside one segment
//     (RAM of one zone, no hole), and its head page has state PageState::Buddy(O).
//   - Two free buddies of the same order never coexist: freeing merges them at once.
//   - nr_free[O] counts blocks, not pages; free pages = sum over O of nr_free[O] << O.
//
// Lists are intrusive and doubly linked through Page::next/prev as 32-bit page indices.
// Allocation takes from the head; expand() returns upper halves to the lists, so consecutive
// small allocations come out in ascending physical order, as the kernel's comment on expand()
// wants for the I/O subsystem.
#ifndef PHYSMEM_ALLOCATOR_BUDDY_H_
#define PHYSMEM_ALLOCATOR_BUDDY_H_

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "allocator/mem_map.h"

namespace physmem {

class Buddy {
 public:
  // `segments` are this zone's segments, in pfn order; `nr_orders` is NR_PAGE_ORDERS.
  Buddy(const MemMap& mem_map, std::vector<Segment> segments, unsigned nr_orders);

  // Puts all of the zone's RAM on the free lists as maximal aligned blocks (the kernel's
  // memblock hand-over: __free_pages_core() with FPI_TO_TAIL). Writes only block heads.
  void FreeAllRam();

  // Crash recovery (allocator/restore.cc): empties the free lists, then frees, as maximal aligned
  // blocks, every page of the zone outside `allocated` (page index and order of each allocated
  // block, ascending, non-overlapping, each inside one segment). One pass over the zone: the
  // greedy split of each free gap is already the fully merged buddy state, because a block the
  // greedy walk stops short of merging always borders an allocated page or a segment end.
  void RebuildFreeAround(const std::vector<std::pair<uint32_t, unsigned>>& allocated);

  // __rmqueue_smallest(): the first block of the smallest order >= `order` that is free, split
  // down to `order`. Returns the head's page index, or nullopt if no block is large enough.
  std::optional<uint32_t> RmqueueSmallest(unsigned order);

  // __free_one_page(): returns the block at `idx` (whose head state the caller has already
  // cleared to 0 or PG_pcp) to the lists, merging with free buddies as far as they go.
  void FreeOne(uint32_t idx, unsigned order);

  unsigned nr_orders() const { return nr_orders_; }
  uint64_t nr_free(unsigned order) const { return area_[order].nr_free; }
  uint64_t free_pages() const { return free_pages_; }
  const std::vector<Segment>& segments() const { return segments_; }
  const Segment& segment_of(uint32_t idx) const;

  // Walks every free list; calls fn(idx, order) for each free block.
  template <typename Fn>
  void ForEachFreeBlock(Fn&& fn) const {
    for (unsigned o = 0; o < nr_orders_; ++o) {
      for (uint32_t i = area_[o].head; i != kNilIndex; i = mem_map_.page(i).next) fn(i, o);
    }
  }

 private:
  struct FreeArea {
    uint32_t head = kNilIndex;
    uint32_t tail = kNilIndex;
    uint64_t nr_free = 0;  // blocks
  };

  void AddToFreeList(uint32_t idx, unsigned order, bool to_tail);
  // Frees [start_pfn, end_pfn) of `seg` as maximal aligned blocks, appended in pfn order.
  void FreeRange(const Segment& seg, uint64_t start_pfn, uint64_t end_pfn);
  void DelFromFreeList(uint32_t idx, unsigned order);
  // buddy_merge_likely(): is the next-order buddy of the block at `pfn` free, so that this block
  // will probably merge soon and should stay cold at the tail?
  bool BuddyMergeLikely(const Segment& seg, uint64_t pfn, unsigned order) const;
  // The free buddy of (pfn, order) inside `seg`, or nullopt (page_is_buddy() failed).
  std::optional<uint32_t> FindFreeBuddy(const Segment& seg, uint64_t pfn, unsigned order) const;

  const MemMap& mem_map_;
  std::vector<Segment> segments_;
  unsigned nr_orders_;
  std::vector<FreeArea> area_;
  uint64_t free_pages_ = 0;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_BUDDY_H_
