// mem_map: the array of struct page and the pfn <-> page translation (the kernel's
// pfn_to_page()/page_to_pfn() under SPARSEMEM, reduced to what a handful of RAM ranges need).
//
// Who uses it: zones (to find a block's buddy), the page allocator (pfn and address forms of the
// API), Validate().
// Thread-safety: immutable after Create(); the Page records it hands out follow page.h's rules.
//
// Metadata exists only for managed RAM: RAM that no memblock reservation of the target covers
// (Target::ManagedRam()). The kernel has a struct page for reserved RAM too (PG_reserved, never
// in the buddy); the emulator needs none, as no path may touch such a page. Managed RAM is cut
// into *segments*: maximal runs of pages that are managed RAM and lie in one zone. Segments are numbered in pfn order and their pages are numbered densely, so a
// page's index is also its position in the arena (host offset = index * PAGE_SIZE) and in the
// metadata array. Within a segment, index and pfn differ by a constant:
//     pfn = segment.start_pfn + (index - segment.first_index)
// Two blocks can only be buddies inside one segment, because a block spanning two segments would
// hold a hole or cross a zone boundary, which the kernel never merges across either.
//
// The metadata array is an anonymous MAP_NORESERVE mapping: zero pages mean "heads no block",
// and start-up writes only the head of each initial free block, so a 64 GiB target's 384 MiB of
// metadata stays almost entirely untouched until pages are used.
#ifndef PHYSMEM_ALLOCATOR_MEM_MAP_H_
#define PHYSMEM_ALLOCATOR_MEM_MAP_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/page.h"
#include "allocator/target.h"
#include "allocator/zone_type.h"

namespace physmem {

struct Segment {
  uint64_t start_pfn = 0;    // first pfn of the run
  uint64_t end_pfn = 0;      // exclusive
  uint32_t first_index = 0;  // page index of start_pfn
  ZoneType zone = ZONE_NORMAL;

  uint64_t nr_pages() const { return end_pfn - start_pfn; }
  bool contains_pfn(uint64_t pfn) const { return pfn >= start_pfn && pfn < end_pfn; }
  bool contains_index(uint32_t idx) const { return idx >= first_index && idx - first_index < nr_pages(); }
  uint64_t pfn_of(uint32_t idx) const { return start_pfn + (idx - first_index); }
  uint32_t index_of(uint64_t pfn) const { return static_cast<uint32_t>(first_index + (pfn - start_pfn)); }
};

class MemMap {
 public:
  static absl::StatusOr<std::unique_ptr<MemMap>> Create(const Target& target);
  ~MemMap();
  MemMap(const MemMap&) = delete;
  MemMap& operator=(const MemMap&) = delete;

  uint32_t nr_pages() const { return nr_pages_; }
  const std::vector<Segment>& segments() const { return segments_; }
  uint64_t metadata_bytes() const { return metadata_bytes_; }

  Page* pages() const { return pages_; }
  Page& page(uint32_t idx) const { return pages_[idx]; }
  uint32_t index_of(const Page* p) const { return static_cast<uint32_t>(p - pages_); }
  bool owns(const Page* p) const { return p >= pages_ && p < pages_ + nr_pages_; }
  // index_of(p) if owns(p), else a value >= nr_pages() (nullptr and foreign pointers included):
  // both tests in one compare, on the addresses as integers (a pointer below pages_ wraps far
  // above any index: user addresses are < 2^47, indices < 2^32).
  uint64_t owned_index(const Page* p) const {
    return (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(pages_)) / sizeof(Page);
  }

  // nullopt when pfn is in a hole, beyond the last RAM range (the kernel's !pfn_valid()) or in
  // reserved RAM (which the kernel would find PageReserved).
  std::optional<uint32_t> pfn_to_index(uint64_t pfn) const;
  uint64_t index_to_pfn(uint32_t idx) const { return segment_of_index(idx).pfn_of(idx); }
  const Segment& segment_of_index(uint32_t idx) const;
  const Segment* segment_of_pfn(uint64_t pfn) const;

 private:
  MemMap() = default;

  std::vector<Segment> segments_;
  uint32_t nr_pages_ = 0;
  Page* pages_ = nullptr;
  uint64_t metadata_bytes_ = 0;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_MEM_MAP_H_
