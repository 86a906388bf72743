// The arena map: a snapshot of every pageblock of the emulated RAM — how many of its pages are free
// (in the buddy or on a per-CPU list) and allocated, the largest free block touching it, and its
// migratetype — zone by zone. It is what the picture of the arena is drawn from (physmemctl map,
// the daemon's /arena page, the trace replayer's map sequence); the kernel has no such file, the
// nearest are /proc/pagetypeinfo's per-type pageblock counts (pagetypeinfo_showblockcount_print())
// and page_owner's pfn walk.
//
// Who calls it: the server's GetArenaMap RPC and /arena.json (server/), the trace replayer
// (trace/), tests. The drawing lives apart, in clients/arena_map_render.h.
//
// Thread-safety: TakeArenaMap() may run at any time, concurrently with allocations and frees. It
// walks each zone's page-state words in pfn order and holds the zone lock for one pageblock of the
// walk at a time, so no buddy merge or split is seen half done and no allocation waits longer than
// one pageblock's walk (the kernel's pagetypeinfo_showmixedcount_print() holds zone->lock the same
// way, for the whole zone). Allocations and frees move a block's head state outside the zone lock
// (page.h); a block caught between the lists and its caller (head state 0) counts as allocated, one
// page at a time: it is allocated until its call returns.
//
// Sizes: 64 GiB of x86_64 is 32768 pageblocks; entries are 12 bytes. Above `max_entries`, an entry
// covers 2, 4, ... pageblocks (pageblocks_per_entry, a power of two), so the snapshot stays small
// for any target while every page is still counted.
//
// Invariants (checked by tests/allocator/arena_map_test.cc on a quiet allocator):
//   Σ over a zone's entries of free_pages       = the zone's free pages (buddy + per-CPU lists)
//   Σ over a zone's entries of allocated_pages  = the zone's present pages - free pages
//   an entry's free_pages + allocated_pages + hole pages = its pages inside the zone's range
#ifndef PHYSMEM_ALLOCATOR_ARENA_MAP_H_
#define PHYSMEM_ALLOCATOR_ARENA_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "allocator/zone_type.h"

namespace physmem {

class PageAllocator;

// One pageblock, or pageblocks_per_entry aligned pageblocks, of one zone.
struct ArenaMapEntry {
  uint32_t free_pages = 0;       // free in the buddy or on a per-CPU list
  uint32_t allocated_pages = 0;  // RAM pages not free
  uint8_t migratetype = 0;       // pageblock type; over several pageblocks, the most common one
  int8_t max_free_order = -1;    // order of the largest free block with pages here; -1: none

  friend bool operator==(const ArenaMapEntry&, const ArenaMapEntry&) = default;
};

struct ArenaMapZone {
  ZoneType type = ZONE_NORMAL;
  // Entry i covers pfns [first_pfn + i * pages_per_entry, first_pfn + (i + 1) * pages_per_entry)
  // ∩ [start_pfn, end_pfn). first_pfn is start_pfn rounded down to an entry.
  uint64_t first_pfn = 0;
  uint64_t start_pfn = 0;  // the zone's first RAM pfn
  uint64_t end_pfn = 0;    // exclusive end of the zone's last RAM pfn
  std::vector<ArenaMapEntry> entries;
  std::vector<uint64_t> nr_free;  // /proc/buddyinfo's free blocks per order, read just before the walk

  // Pages of entry i inside [start_pfn, end_pfn): RAM plus holes.
  uint64_t entry_span_pages(size_t i, uint64_t pages_per_entry) const;
};

struct ArenaMap {
  std::string target_name;
  unsigned page_shift = 12;
  unsigned pageblock_order = 9;
  unsigned nr_orders = 11;
  uint32_t pageblocks_per_entry = 1;
  std::vector<ArenaMapZone> zones;  // populated zones, lowest first

  uint64_t pages_per_entry() const { return uint64_t{pageblocks_per_entry} << pageblock_order; }
};

// Entries above which TakeArenaMap() makes an entry cover several pageblocks: 65536 entries is
// 128 GiB of x86_64 at one pageblock an entry, and 768 KiB of snapshot.
inline constexpr uint32_t kArenaMapMaxEntries = 65536;

// The snapshot (see the thread-safety paragraph above). `max_entries` >= 1.
ArenaMap TakeArenaMap(const PageAllocator& pa, uint32_t max_entries = kArenaMapMaxEntries);

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_ARENA_MAP_H_
