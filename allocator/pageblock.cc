#include "allocator/pageblock.h"

#include <algorithm>

namespace physmem {

unsigned PageblockOrder(const Target& t) {
  if (t.pageblock_order_override != -1) return static_cast<unsigned>(t.pageblock_order_override);
  constexpr uint64_t kFourGiB = uint64_t{1} << 32;
  unsigned pmd_shift;
  if (t.page_offset < kFourGiB) {
    // A 32-bit kernel (i386): PAE's 3-level tables put PMD_SHIFT at 21; 2-level paging folds the
    // PMD into the PGD, PGDIR_SHIFT 22 (asm/pgtable-{2,3}level_types.h).
    const bool pae = !t.ram.empty() && t.ram.back().end() > kFourGiB;
    pmd_shift = pae ? 21 : 22;
  } else {
    // 8-byte entries: one table level resolves PAGE_SHIFT - 3 bits (arm64 pgtable-hwdef.h
    // ARM64_HW_PGTABLE_LEVEL_SHIFT(2); x86_64's 21 is the same formula).
    pmd_shift = (t.page_shift - 3) * 2 + 3;
  }
  return std::min(pmd_shift - t.page_shift, t.max_page_order);
}

Pageblocks::Pageblocks(uint64_t zone_start_pfn, uint64_t zone_end_pfn, unsigned pageblock_order,
                       bool group_by_mobility_disabled)
    : base_pfn_(zone_start_pfn & ~((uint64_t{1} << pageblock_order) - 1)),
      order_(pageblock_order),
      grouping_disabled_(group_by_mobility_disabled) {
  nr_blocks_ = zone_end_pfn > base_pfn_ ? ((zone_end_pfn - base_pfn_) + nr_pages() - 1) >> order_ : 0;
  types_ = std::make_unique<std::atomic<uint8_t>[]>(std::max<uint64_t>(nr_blocks_, 1));
  // memmap_init_range() marks every pageblock MOVABLE at boot ([MMI 6.12]); with grouping off
  // set_pageblock_migratetype() turns that into UNMOVABLE.
  const uint8_t boot = grouping_disabled_ ? MIGRATE_UNMOVABLE : MIGRATE_MOVABLE;
  for (uint64_t i = 0; i < std::max<uint64_t>(nr_blocks_, 1); ++i) types_[i].store(boot, std::memory_order_relaxed);
}

bool Pageblocks::Set(uint64_t pfn, int mt) {
  if (grouping_disabled_ && mt < MIGRATE_PCPTYPES) mt = MIGRATE_UNMOVABLE;
  std::atomic<uint8_t>& slot = types_[Slot(pfn)];
  if (slot.load(std::memory_order_relaxed) == mt) return false;
  slot.store(static_cast<uint8_t>(mt), std::memory_order_relaxed);
  if (tags_ != nullptr) WritePageTags(start_of(pfn), mt);
  return true;
}

void Pageblocks::AttachPageTags(std::atomic<uint8_t>* tags, const std::vector<Segment>& segments, ZoneType zone) {
  tags_ = tags;
  tag_segments_ = segments;
  tag_zone_ = zone;
  // Every pageblock as Set() writes it after a change: one writer of the tags.
  for (uint64_t i = 0; i < nr_blocks_; ++i) {
    WritePageTags(base_pfn_ + (i << order_), types_[i].load(std::memory_order_relaxed));
  }
}

void Pageblocks::WritePageTags(uint64_t block_start_pfn, int mt) {
  const uint8_t tag = PageTag(tag_zone_, pcp_list_type(mt));
  const uint64_t block_end_pfn = block_start_pfn + nr_pages();
  for (const Segment& seg : tag_segments_) {
    const uint64_t lo = std::max(seg.start_pfn, block_start_pfn);
    const uint64_t hi = std::min(seg.end_pfn, block_end_pfn);
    for (uint64_t pfn = lo; pfn < hi; ++pfn) tags_[seg.index_of(pfn)].store(tag, std::memory_order_relaxed);
  }
}

}  // namespace physmem
