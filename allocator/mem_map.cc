#include "allocator/mem_map.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "allocator/arena.h"

namespace physmem {
namespace {

// The zone that holds physical address `phys`, and the exclusive end of that zone.
std::pair<ZoneType, uint64_t> ZoneAt(const Target& t, uint64_t phys) {
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (t.zone_configured[z] && phys < t.zone_end[z]) return {static_cast<ZoneType>(z), t.zone_end[z]};
  }
  // ValidateTarget() guarantees the highest configured zone is unbounded.
  return {ZONE_NORMAL, UINT64_MAX};
}

}  // namespace

absl::StatusOr<std::unique_ptr<MemMap>> MemMap::Create(const Target& target) {
  std::unique_ptr<MemMap> mm(new MemMap());
  const unsigned shift = target.page_shift;
  uint64_t next_index = 0;
  // Reserved RAM (memblock_reserve()) gets no metadata: it never reaches the buddy, so nothing
  // here could ever look at it; its pages are counted only as the zone's present pages.
  for (const RamRange& r : target.ManagedRam()) {
    uint64_t pos = r.start;
    while (pos < r.end()) {
      auto [zone, zone_end] = ZoneAt(target, pos);
      const uint64_t end = std::min(r.end(), zone_end);
      Segment s;
      s.start_pfn = pos >> shift;
      s.end_pfn = end >> shift;
      s.first_index = static_cast<uint32_t>(next_index);
      s.zone = zone;
      if (s.end_pfn > s.start_pfn) {
        next_index += s.nr_pages();
        mm->segments_.push_back(s);
      }
      pos = end;
    }
  }
  if (next_index == 0) return absl::InvalidArgumentError("target has no RAM pages");
  if (next_index >= kNilIndex) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "target has %d pages; page indices are 32-bit, so at most %d", next_index, kNilIndex - 1));
  }
  mm->nr_pages_ = static_cast<uint32_t>(next_index);
  mm->metadata_bytes_ = next_index * sizeof(Page);
  absl::StatusOr<void*> mem = MapZeroedNoReserve(mm->metadata_bytes_);
  if (!mem.ok()) return mem.status();
  // Zero-filled memory is a valid array of Page: std::atomic<uint64_t> and std::atomic<int32_t>
  // are lock-free and have the representation of their value type, so no constructor needs to run
  // (running one would touch every page of the array, which start-up must not do).
  mm->pages_ = static_cast<Page*>(*mem);
  return mm;
}

MemMap::~MemMap() {
  if (pages_ != nullptr) UnmapNoReserve(pages_, metadata_bytes_);
}

const Segment& MemMap::segment_of_index(uint32_t idx) const {
  // Segments are few (RAM ranges x zones); the search is a handful of compares.
  auto it = std::upper_bound(segments_.begin(), segments_.end(), idx,
                             [](uint32_t i, const Segment& s) { return i < s.first_index; });
  return *(it - 1);
}

const Segment* MemMap::segment_of_pfn(uint64_t pfn) const {
  auto it = std::upper_bound(segments_.begin(), segments_.end(), pfn,
                             [](uint64_t p, const Segment& s) { return p < s.start_pfn; });
  if (it == segments_.begin()) return nullptr;
  const Segment& s = *(it - 1);
  return s.contains_pfn(pfn) ? &s : nullptr;
}

std::optional<uint32_t> MemMap::pfn_to_index(uint64_t pfn) const {
  const Segment* s = segment_of_pfn(pfn);
  if (s == nullptr) return std::nullopt;
  return s->index_of(pfn);
}

}  // namespace physmem
