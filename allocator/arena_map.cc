#include "allocator/arena_map.h"

#include <algorithm>
#include <array>
#include <mutex>

#include "allocator/migratetype.h"
#include "allocator/page.h"
#include "allocator/page_allocator.h"
#include "allocator/zone.h"

namespace physmem {

uint64_t ArenaMapZone::entry_span_pages(size_t i, uint64_t pages_per_entry) const {
  const uint64_t lo = std::max(start_pfn, first_pfn + i * pages_per_entry);
  const uint64_t hi = std::min(end_pfn, first_pfn + (i + 1) * pages_per_entry);
  return hi > lo ? hi - lo : 0;
}

// The friend of PageAllocator and Zone that reads a zone's lock, pageblock types and segments
// (the two classes keep them private; this is their only reader outside the allocator's core).
class ArenaMapWalker {
 public:
  ArenaMapWalker(const PageAllocator& pa, uint32_t max_entries) : pa_(pa), max_entries_(std::max(max_entries, 1u)) {}

  ArenaMap Take() {
    ArenaMap map;
    map.target_name = pa_.target_.name;
    map.page_shift = pa_.target_.page_shift;
    map.pageblock_order = pa_.pageblock_order_;
    map.nr_orders = pa_.target_.nr_page_orders();
    map.pageblocks_per_entry = PageblocksPerEntry();
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      const Zone* zone = pa_.zone(static_cast<ZoneType>(z));
      if (zone == nullptr || zone->config_.segments.empty()) continue;
      map.zones.push_back(WalkZone(*zone, map.pages_per_entry()));
    }
    return map;
  }

 private:
  // The smallest power of two that keeps every zone's entries, summed, within max_entries_.
  uint32_t PageblocksPerEntry() const {
    const uint64_t pb_pages = uint64_t{1} << pa_.pageblock_order_;
    uint32_t per_entry = 1;
    for (;;) {
      uint64_t total = 0;
      const uint64_t entry_pages = pb_pages * per_entry;
      for (int z = 0; z < MAX_NR_ZONES; ++z) {
        const Zone* zone = pa_.zone(static_cast<ZoneType>(z));
        if (zone == nullptr || zone->config_.segments.empty()) continue;
        const uint64_t first = zone->config_.segments.front().start_pfn & ~(entry_pages - 1);
        total += (zone->config_.segments.back().end_pfn - first + entry_pages - 1) / entry_pages;
      }
      if (total <= max_entries_ || per_entry >= (1u << 30)) return per_entry;
      per_entry *= 2;
    }
  }

  ArenaMapZone WalkZone(const Zone& zone, uint64_t entry_pages) {
    const std::vector<Segment>& segs = zone.config_.segments;
    ArenaMapZone out;
    out.type = zone.type();
    out.start_pfn = segs.front().start_pfn;
    out.end_pfn = segs.back().end_pfn;
    out.first_pfn = out.start_pfn & ~(entry_pages - 1);
    out.entries.resize((out.end_pfn - out.first_pfn + entry_pages - 1) / entry_pages);
    out.nr_free = zone.Stats().nr_free;
    for (const Segment& seg : segs) WalkSegment(zone, seg, out, entry_pages);
    SetMigratetypes(zone, out, entry_pages);
    return out;
  }

  // Page by page in pfn order, one zone-lock hold per pageblock; a block is accounted whole when
  // its head is read, so a block larger than a pageblock moves the cursor past the next ones.
  void WalkSegment(const Zone& zone, const Segment& seg, ArenaMapZone& out, uint64_t entry_pages) {
    const uint64_t pb_pages = zone.pageblocks_.nr_pages();
    const MemMap& mm = zone.mem_map_;
    const unsigned nr_orders = zone.config_.nr_orders;
    uint64_t pfn = seg.start_pfn;
    while (pfn < seg.end_pfn) {
      const uint64_t pb_end = std::min(seg.end_pfn, (pfn & ~(pb_pages - 1)) + pb_pages);
      MutexLock l(&zone.lock_);
      while (pfn < pb_end) {
        const PageState s = mm.page(seg.index_of(pfn)).Load(std::memory_order_acquire);
        const bool free = (s.flags & (PG_buddy | PG_pcp)) != 0;
        const bool head = free || (s.refcount >= 1 && (s.flags & PG_tail) == 0);
        uint64_t n = uint64_t{1} << s.order;
        // A head must be aligned to its order and lie in its segment (Buddy's invariants); a word
        // that is not (a block in transit) counts as one allocated page.
        if (!head || s.order >= nr_orders || pfn % n != 0 || pfn + n > seg.end_pfn) {
          Account(out, pfn, 1, /*free=*/false, 0, entry_pages);
          pfn += 1;
          continue;
        }
        Account(out, pfn, n, free, s.order, entry_pages);
        pfn += n;
      }
    }
  }

  static void Account(ArenaMapZone& out, uint64_t pfn, uint64_t n, bool free, unsigned order, uint64_t entry_pages) {
    while (n != 0) {
      const uint64_t i = (pfn - out.first_pfn) / entry_pages;
      const uint64_t take = std::min(n, out.first_pfn + (i + 1) * entry_pages - pfn);
      ArenaMapEntry& e = out.entries[i];
      if (free) {
        e.free_pages += static_cast<uint32_t>(take);
        e.max_free_order = std::max<int8_t>(e.max_free_order, static_cast<int8_t>(order));
      } else {
        e.allocated_pages += static_cast<uint32_t>(take);
      }
      pfn += take;
      n -= take;
    }
  }

  // get_pfnblock_migratetype() of every pageblock with RAM (lock-free reads, as the per-CPU free
  // path's); an entry of several pageblocks takes the most common type, the lowest on a tie.
  static void SetMigratetypes(const Zone& zone, ArenaMapZone& out, uint64_t entry_pages) {
    const uint64_t pb_pages = zone.pageblocks_.nr_pages();
    for (size_t i = 0; i < out.entries.size(); ++i) {
      std::array<uint32_t, MIGRATE_TYPES> count{};
      const uint64_t lo = out.first_pfn + i * entry_pages;
      for (uint64_t pb = lo; pb < lo + entry_pages; pb += pb_pages) {
        const uint64_t pfn = std::max(pb, zone.config_.start_pfn);
        if (pfn >= pb + pb_pages || pfn >= zone.config_.end_pfn || !HasRam(zone, pfn, pb + pb_pages)) continue;
        const int t = zone.pageblocks_.Get(pfn);
        if (t >= 0 && t < MIGRATE_TYPES) ++count[t];
      }
      out.entries[i].migratetype = static_cast<uint8_t>(std::max_element(count.begin(), count.end()) - count.begin());
    }
  }

  static bool HasRam(const Zone& zone, uint64_t lo, uint64_t hi) {
    for (const Segment& s : zone.config_.segments) {
      if (s.start_pfn < hi && s.end_pfn > lo) return true;
    }
    return false;
  }

  const PageAllocator& pa_;
  const uint32_t max_entries_;
};

ArenaMap TakeArenaMap(const PageAllocator& pa, uint32_t max_entries) { return ArenaMapWalker(pa, max_entries).Take(); }

}  // namespace physmem
