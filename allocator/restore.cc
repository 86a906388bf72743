// Crash recovery of the allocator: rebuild the buddy lists around a set of allocated blocks in
// one pass (see PageAllocator::RestoreAllocated in page_allocator.h and
// Buddy::RebuildFreeAround in buddy.h). The server's journal (server/journal.h) supplies the
// blocks; the allocator knows nothing of journals or leases.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "allocator/buddy.h"
#include "allocator/page_allocator.h"
#include "allocator/zone.h"

namespace physmem {

void Buddy::RebuildFreeAround(const std::vector<std::pair<uint32_t, unsigned>>& allocated) {
  // Forget the current lists: clear the head state of every listed block.
  ForEachFreeBlock([&](uint32_t idx, unsigned, int) { mem_map_.page(idx).state.store(0, std::memory_order_relaxed); });
  for (FreeArea& a : area_) a = FreeArea{};
  free_pages_ = 0;
  free_highatomic_ = 0;
  // Pageblock types and the highatomic reserve are not journaled: they start again as at boot
  // (memmap_init_range() marks every block MOVABLE), which is what a fresh zone already holds.
  nr_reserved_highatomic_ = 0;
  size_t next = 0;
  for (const Segment& seg : segments_) {
    uint64_t cursor = seg.start_pfn;
    while (next < allocated.size() && seg.contains_index(allocated[next].first)) {
      const uint64_t pfn = seg.pfn_of(allocated[next].first);
      FreeRange(seg, cursor, pfn);
      cursor = pfn + (uint64_t{1} << allocated[next].second);
      ++next;
    }
    FreeRange(seg, cursor, seg.end_pfn);
  }
}

void Zone::RebuildFreeAround(const std::vector<std::pair<uint32_t, unsigned>>& allocated) {
  MutexLock l(&lock_);
  buddy_.RebuildFreeAround(allocated);
  PublishLocked();
}

absl::Status PageAllocator::RestoreAllocated(std::vector<RestoredBlock>& blocks) {
  for (const ZoneStats& z : Stats()) {
    if (z.buddy_free_pages != z.managed_pages || z.pcp_pages != 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "RestoreAllocated needs an allocator that has handed out nothing; zone %s has %u of %u pages free "
          "in the buddy and %u on per-CPU lists",
          zone_name(z.type), z.buddy_free_pages, z.managed_pages, z.pcp_pages));
    }
  }
  std::sort(blocks.begin(), blocks.end(), [](const RestoredBlock& a, const RestoredBlock& b) { return a.pfn < b.pfn; });
  // Check everything before changing anything.
  std::array<std::vector<std::pair<uint32_t, unsigned>>, MAX_NR_ZONES> per_zone;
  uint64_t prev_end = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const RestoredBlock& b = blocks[i];
    if (b.order >= target_.nr_page_orders() || b.owner == kNoOwner || b.pfn % (uint64_t{1} << b.order) != 0) {
      return absl::DataLossError(absl::StrFormat("restored block pfn %#x order %u owner %u: bad order, alignment or "
                                                 "owner",
                                                 b.pfn, b.order, b.owner));
    }
    const Segment* seg = mem_map_->segment_of_pfn(b.pfn);
    if (seg == nullptr || b.pfn + (uint64_t{1} << b.order) > seg->end_pfn) {
      return absl::DataLossError(absl::StrFormat(
          "restored block pfn %#x order %u is not managed RAM of one zone (hole, reserved RAM, beyond RAM, or "
          "crosses a zone)",
          b.pfn, b.order));
    }
    if (i > 0 && b.pfn < prev_end) {
      return absl::DataLossError(absl::StrFormat("restored blocks overlap: pfn %#x order %u (owner %u) starts inside "
                                                 "the block at pfn %#x order %u (owner %u)",
                                                 b.pfn, b.order, b.owner, blocks[i - 1].pfn, blocks[i - 1].order,
                                                 blocks[i - 1].owner));
    }
    prev_end = b.pfn + (uint64_t{1} << b.order);
    per_zone[seg->zone].emplace_back(seg->index_of(b.pfn), b.order);
  }
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (zones_[z]) zones_[z]->RebuildFreeAround(per_zone[z]);
  }
  for (const RestoredBlock& b : blocks) {
    const uint32_t idx = *mem_map_->pfn_to_index(b.pfn);
    const bool compound = b.compound && b.order > 0;
    if (compound) {
      for (uint32_t i = 1; i < (1u << b.order); ++i) {
        Page& tail = mem_map_->page(idx + i);
        tail.head_offset = i;
        tail.state.store(PageState::Tail(), std::memory_order_relaxed);
      }
    }
    mem_map_->page(idx).state.store(PageState::Allocated(b.order, b.owner, compound), std::memory_order_release);
  }
  return absl::OkStatus();
}

}  // namespace physmem
