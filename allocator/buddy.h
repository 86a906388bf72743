// The buddy allocator of one zone: free_area[order].free_list[migratetype] and the split/merge
// algorithm, with the kernel's mobility grouping (mm/page_alloc.c of the reference kernel, 6.12
// LTS: __free_one_page(), __rmqueue_smallest(), expand(), __rmqueue() with its claim and steal
// fallbacks, move_freepages_block(), the highatomic reserve). The fallback rules live in
// allocator/fallback.cc, the highatomic reserve in allocator/highatomic.cc; both are Buddy
// members because they work on its lists.
//
// Who uses it: Zone, always with the zone lock held (every method here is "...Locked" in spirit;
// the Buddy object itself holds no lock). Thread-safety: none of its own; the caller serializes.
// The pageblock types it changes are read lock-free by the per-CPU free path (pageblock.h).
//
// Invariants (checked by Zone::ValidateFree()):
//   - The buddy of the block at pfn B and order O is B ^ (1 << O); the merged parent is
//     B & ~(1 << O). E.g. block 8's order-1 buddy is 10, and together they form block 8 at order 2.
//   - Every free block is naturally aligned (B % (1 << O) == 0), lies inside one segment
//     (RAM of one zone, no hole), and its head page has state PageState::Buddy(O).
//   - Two free buddies of the same order never coexist unless the merge rule forbids it (at
//     order >= pageblock_order, a HIGHATOMIC or ISOLATE block merges only with its own type).
//   - A free block sits on the list of its pageblock's current type (the 6.10+ freelist hygiene
//     that __add_to_free_list() warns about); a free block of order >= pageblock_order has the
//     same type in every pageblock it covers.
//   - nr_free[O] counts blocks, not pages, on all of order O's lists: nr_free[O] = Σ_t len(list[O][t]);
//     free pages = Σ_O nr_free[O] << O (NR_FREE_PAGES; ISOLATE would be excluded, and is empty);
//     nr_free_highatomic = pages on HIGHATOMIC lists.
//   - nr_reserved_highatomic = pageblock_nr_pages × (pageblocks of type HIGHATOMIC), and at most
//     one reservation step (max(pageblock_nr_pages, 2^order)) above ALIGN(managed / 100,
//     pageblock_nr_pages) (reserve_highatomic_pageblock()).
//
// Lists are intrusive and doubly linked through Page::next/prev as 32-bit page indices.
// Allocation takes from the head; expand() returns upper halves to the head of their lists, so
// consecutive small allocations come out in ascending physical order, as the kernel's comment on
// expand() wants for the I/O subsystem.
#ifndef PHYSMEM_ALLOCATOR_BUDDY_H_
#define PHYSMEM_ALLOCATOR_BUDDY_H_

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "allocator/mem_map.h"
#include "allocator/migratetype.h"
#include "allocator/pageblock.h"
#include "allocator/stats.h"

namespace physmem {

// enum rmqueue_mode (6.15, in 6.12.118 stable): where __rmqueue() starts, kept across one
// rmqueue_bulk() batch so a refill that had to fall back does not retry the empty lists per page.
enum class RmqueueMode { kNormal, kClaim, kSteal };

class Buddy {
 public:
  // `segments` are this zone's segments, in pfn order; `nr_orders` is NR_PAGE_ORDERS;
  // [span_start_pfn, span_end_pfn) the zone's span (zone_spans_pfn()).
  Buddy(const MemMap& mem_map, std::vector<Segment> segments, unsigned nr_orders, Pageblocks& pageblocks,
        uint64_t span_start_pfn, uint64_t span_end_pfn);

  // Puts all of the zone's RAM on the free lists as maximal aligned blocks (the kernel's
  // memblock hand-over: __free_pages_core() with FPI_TO_TAIL), each on its pageblock's list
  // (MOVABLE from boot marking). Writes only block heads.
  void FreeAllRam();

  // Crash recovery (allocator/restore.cc): empties the free lists, then frees, as maximal aligned
  // blocks, every page of the zone outside `allocated` (page index and order of each allocated
  // block, ascending, non-overlapping, each inside one segment). One pass over the zone: the
  // greedy split of each free gap is already the fully merged buddy state, because a block the
  // greedy walk stops short of merging always borders an allocated page or a segment end.
  // Pageblock types are not journaled: they keep what they have (boot marking on a fresh zone).
  void RebuildFreeAround(const std::vector<std::pair<uint32_t, unsigned>>& allocated);

  // __rmqueue_smallest(): the first block of the smallest order >= `order` on `mt`'s lists, split
  // down to `order`. Returns the head's page index, or nullopt if no block is large enough.
  std::optional<uint32_t> RmqueueSmallest(unsigned order, int mt);
  // __rmqueue() (fallback.cc): own type, else claim a pageblock of another type, else (without
  // ALLOC_NOFRAGMENT) steal one block of another type. `mode` carries over a batch.
  std::optional<uint32_t> Rmqueue(unsigned order, int mt, unsigned alloc_flags, RmqueueMode* mode);
  // rmqueue_buddy()'s choice of lists: HIGHATOMIC first for ALLOC_HIGHATOMIC, then __rmqueue(),
  // then HIGHATOMIC for ALLOC_OOM / ALLOC_NON_BLOCK callers.
  std::optional<uint32_t> RmqueueBuddy(unsigned order, int mt, unsigned alloc_flags);

  // __free_one_page(): returns the block at `idx` (whose head state the caller has already
  // cleared to 0 or PG_pcp) to the lists of its pageblock's type, merging with free buddies as
  // far as the merge rule allows.
  void FreeOne(uint32_t idx, unsigned order);

  // reserve_highatomic_pageblock() (highatomic.cc), after a successful ALLOC_HIGHATOMIC
  // allocation of the block at `idx`; `managed_pages` is the zone's.
  void ReserveHighatomic(uint32_t idx, unsigned order, uint64_t managed_pages);
  // unreserve_highatomic_pageblock() for this zone: converts the first reserved pageblock that
  // has a free page to `mt`. Without `force`, keeps the last pageblock of reserve. Returns
  // whether it converted one.
  bool UnreserveHighatomic(bool force, int mt);
  // ALIGN(managed / 100, pageblock_nr_pages), or 0 when 1% of the zone is less than a pageblock.
  uint64_t HighatomicMax(uint64_t managed_pages) const;

  int pageblock_migratetype(uint32_t idx) const { return pageblocks_.Get(pfn_of(idx)); }
  const Pageblocks& pageblocks() const { return pageblocks_; }
  unsigned nr_orders() const { return nr_orders_; }
  uint64_t nr_free(unsigned order) const { return area_[order].nr_free; }
  uint64_t nr_free(unsigned order, int mt) const { return area_[order].list[mt].nr; }
  bool free_list_empty(unsigned order, int mt) const { return area_[order].list[mt].head == kNilIndex; }
  uint64_t free_pages() const { return free_pages_; }
  uint64_t nr_free_highatomic() const { return free_highatomic_; }
  uint64_t nr_reserved_highatomic() const { return nr_reserved_highatomic_; }
  const MigrateCounters& counters() const { return counters_; }
  const std::vector<Segment>& segments() const { return segments_; }
  const Segment& segment_of(uint32_t idx) const;
  uint64_t pfn_of(uint32_t idx) const { return segment_of(idx).pfn_of(idx); }

  // Walks every free list; calls fn(idx, order, mt) for each free block.
  template <typename Fn>
  void ForEachFreeBlock(Fn&& fn) const {
    for (unsigned o = 0; o < nr_orders_; ++o) {
      for (int t = 0; t < MIGRATE_TYPES; ++t) {
        for (uint32_t i = area_[o].list[t].head; i != kNilIndex; i = mem_map_.page(i).next) fn(i, o, t);
      }
    }
  }

 private:
  struct FreeList {
    uint32_t head = kNilIndex;
    uint32_t tail = kNilIndex;
    uint64_t nr = 0;  // blocks on this list
  };
  struct FreeArea {
    std::array<FreeList, MIGRATE_TYPES> list;
    uint64_t nr_free = 0;  // blocks on all of this order's lists
  };

  // __add_to_free_list() / __del_page_from_free_list() with account_freepages() folded in.
  void AddToFreeList(uint32_t idx, unsigned order, int mt, bool to_tail);
  void DelFromFreeList(uint32_t idx, unsigned order, int mt);
  void MoveToFreeList(uint32_t idx, unsigned order, int old_mt, int new_mt);
  // expand(): splits the block at `idx` from order `high` down to `low`, the upper halves onto
  // `mt`'s lists.
  void Expand(uint32_t idx, unsigned low, unsigned high, int mt);
  // Frees [start_pfn, end_pfn) of `seg` as maximal aligned blocks, appended in pfn order.
  void FreeRange(const Segment& seg, uint64_t start_pfn, uint64_t end_pfn);
  // buddy_merge_likely(): is the next-order buddy of the block at `pfn` free, so that this block
  // will probably merge soon and should stay cold at the tail?
  bool BuddyMergeLikely(const Segment& seg, uint64_t pfn, unsigned order) const;
  // The free buddy of (pfn, order) inside `seg`, or nullopt (page_is_buddy() failed).
  std::optional<uint32_t> FindFreeBuddy(const Segment& seg, uint64_t pfn, unsigned order) const;
  // set_pageblock_migratetype() with the change counted.
  void SetPageblockType(uint64_t pfn, int mt);
  // change_pageblock_range(): every pageblock of the order-`order` block at `pfn` becomes `mt`.
  void ChangePageblockRange(uint64_t pfn, unsigned order, int mt);

  // fallback.cc
  std::optional<uint32_t> RmqueueClaim(unsigned order, int start_mt, unsigned alloc_flags);
  std::optional<uint32_t> RmqueueSteal(unsigned order, int start_mt);
  int FindSuitableFallback(unsigned order, int mt, bool* can_steal) const;
  bool CanStealFallback(unsigned order, int start_mt) const;
  std::optional<uint32_t> TryToStealBlock(uint32_t idx, unsigned current_order, unsigned order, int start_mt,
                                          int block_mt);
  // prep_move_freepages_block(): false if the pageblock of `pfn` crosses the zone span; else its
  // free pages (PageBuddy blocks) and movable pages (allocated with a MOVABLE migratetype, our
  // stand-in for PageLRU / __PageMovable).
  bool PrepMoveFreepagesBlock(uint64_t pfn, uint64_t* start_pfn, uint64_t* free_pages, uint64_t* movable_pages) const;
  // move_freepages_block(): every free block of the pageblock moves to `new_mt`'s lists and the
  // block becomes `new_mt`. Returns pages moved, or -1 if the block crosses the zone span.
  int64_t MoveFreepagesBlock(uint64_t pfn, int old_mt, int new_mt);

  const MemMap& mem_map_;
  std::vector<Segment> segments_;
  unsigned nr_orders_;
  Pageblocks& pageblocks_;
  uint64_t span_start_pfn_;
  uint64_t span_end_pfn_;
  std::vector<FreeArea> area_;
  uint64_t free_pages_ = 0;
  uint64_t free_highatomic_ = 0;         // nr_free_highatomic (6.12)
  uint64_t nr_reserved_highatomic_ = 0;  // zone->nr_reserved_highatomic
  MigrateCounters counters_;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_BUDDY_H_
