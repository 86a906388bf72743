// Pageblocks: pageblock_order for a target, and the per-pageblock migratetype of one zone
// (include/linux/pageblock-flags.h; mm/page_alloc.c get_pfnblock_flags_mask(),
// set_pfnblock_flags_mask(), set_pageblock_migratetype() of the reference kernel, 6.12 LTS).
//
// Who uses it: Zone owns one Pageblocks for its span; the buddy (allocator/buddy.h) reads and
// changes block types under the zone lock; the per-CPU free path reads a block's type without
// any lock to pick the list (free_unref_page() does the same with a READ_ONCE).
// Thread-safety: Get() may run concurrently with anything (relaxed atomic byte loads); Set() needs
// the zone lock (the kernel uses a cmpxchg loop on the word because the other flag bits share it;
// our byte per block has nothing to share, so a plain atomic store does).
//
// Layout as the kernel's FLATMEM zone->pageblock_flags: block i covers pfns
// [base + i * pageblock_nr_pages, base + (i + 1) * pageblock_nr_pages) with base = zone_start_pfn
// rounded down to a pageblock. The kernel keeps 4 bits per block (3 migratetype bits and
// PB_migrate_skip); we keep one byte holding only the migratetype (no compaction here).
#ifndef PHYSMEM_ALLOCATOR_PAGEBLOCK_H_
#define PHYSMEM_ALLOCATOR_PAGEBLOCK_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include <vector>

#include "allocator/mem_map.h"
#include "allocator/migratetype.h"
#include "allocator/target.h"
#include "allocator/zone_type.h"

namespace physmem {

// pageblock_order as the reference kernel derives it for `t` ([PBF 6.12]): with HUGETLB/THP,
// min(HPAGE_PMD_ORDER, MAX_PAGE_ORDER), HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT. PMD_SHIFT for a
// 64-bit target with 8-byte page-table entries is (PAGE_SHIFT - 3) * 2 + 3 (x86_64 21; arm64
// 21/25/29 for 4/16/64 KiB pages), for 32-bit i386 21 with PAE (RAM above 4 GiB, as the i386
// profile decides) and 22 without (the PMD folds into PGDIR_SHIFT). A profile's override
// (Target::pageblock_order_override, validated by ValidateTarget()) wins.
unsigned PageblockOrder(const Target& t);

// A page's tag (Pageblocks::AttachPageTags()): its zone and the per-CPU list type of its
// pageblock, which is what names a per-thread cache's list.
constexpr uint8_t PageTag(ZoneType zone, int pcp_type) { return static_cast<uint8_t>(zone << 2 | pcp_type); }
constexpr ZoneType PageTagZone(uint8_t tag) { return static_cast<ZoneType>(tag >> 2); }

class Pageblocks {
 public:
  Pageblocks(uint64_t zone_start_pfn, uint64_t zone_end_pfn, unsigned pageblock_order,
             bool group_by_mobility_disabled);

  unsigned order() const { return order_; }
  uint64_t nr_pages() const { return uint64_t{1} << order_; }  // pageblock_nr_pages
  bool group_by_mobility_disabled() const { return grouping_disabled_; }
  uint64_t start_of(uint64_t pfn) const { return pfn & ~(nr_pages() - 1); }  // pageblock_start_pfn()
  uint64_t nr_blocks() const { return nr_blocks_; }

  // get_pfnblock_migratetype(): lock-free.
  int Get(uint64_t pfn) const { return types_[Slot(pfn)].load(std::memory_order_relaxed); }
  // The same by pfn - base_pfn() (the per-CPU free path precomputes that offset's bias).
  int GetAtOffset(uint64_t pfn_offset) const { return types_[pfn_offset >> order_].load(std::memory_order_relaxed); }
  uint64_t base_pfn() const { return base_pfn_; }
  // set_pageblock_migratetype(): with grouping disabled, UNMOVABLE/MOVABLE/RECLAIMABLE are all
  // stored as UNMOVABLE, as in the kernel. Zone lock held. Returns whether the type changed.
  bool Set(uint64_t pfn, int mt);

  // Page tags: a per-page mirror of the types, indexed by page index, for the per-thread page
  // caches (thread_pages.h), whose free path must name a block's list without finding its zone
  // and pageblock first: tag = PageTag(zone, pcp_list_type(type)), the kernel's page_zonenum()
  // and get_pfnblock_migratetype() in one byte load. Attach fills this zone's pages (given by
  // `segments`) and makes Set() keep them; readers load them relaxed, as Get() (a stale tag only
  // puts the block on another type's list, as a stale type does in free_unref_page()).
  void AttachPageTags(std::atomic<uint8_t>* tags, const std::vector<Segment>& segments, ZoneType zone);

 private:
  uint64_t Slot(uint64_t pfn) const { return (pfn - base_pfn_) >> order_; }

  uint64_t base_pfn_;
  unsigned order_;
  bool grouping_disabled_;
  uint64_t nr_blocks_;
  std::unique_ptr<std::atomic<uint8_t>[]> types_;
  // AttachPageTags(): where Set() mirrors a change (tags_ null: nowhere).
  void WritePageTags(uint64_t block_start_pfn, int mt);
  std::atomic<uint8_t>* tags_ = nullptr;
  std::vector<Segment> tag_segments_;
  ZoneType tag_zone_ = ZONE_NORMAL;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_PAGEBLOCK_H_
