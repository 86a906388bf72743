// Highmem: the kmap() window (mm/highmem.c: kmap_high(), kunmap_high(), page_address() for
// HASHED_PAGE_VIRTUAL).
//
// A HIGHMEM page has no permanent kernel virtual address. kmap() gives it one from a small window
// of LAST_PKMAP slots at PKMAP_BASE; page_address() of an unmapped highmem page is null.
// Mapping a page that is already mapped returns the same address and counts one more user
// (the kernel's pkmap_count[]); kunmap() releases one. When every slot is in use the kernel
// sleeps in kmap(); a service cannot, so we return RESOURCE_EXHAUSTED instead.
//
// Who uses it: PageAllocator (kmap/kunmap/page_address, and the free path, which refuses to free
// a page that is still mapped). Thread-safety: all methods are safe to call concurrently; one
// mutex guards the slot table (the kernel's kmap_lock), held only by kmap/kunmap/lookups of
// highmem pages — lowmem pages never reach this class.
#ifndef PHYSMEM_ALLOCATOR_HIGHMEM_H_
#define PHYSMEM_ALLOCATOR_HIGHMEM_H_

#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace physmem {

class PkmapWindow {
 public:
  PkmapWindow(uint64_t pkmap_base, uint32_t nr_slots, uint64_t page_size);

  // Maps pfn (or adds a user to its mapping); returns its emulated virtual address.
  absl::StatusOr<uint64_t> Kmap(uint64_t pfn);
  // Drops one user; the slot frees when the last user is gone.
  absl::Status Kunmap(uint64_t pfn);
  // The mapped address, or nullopt if the page is not mapped.
  std::optional<uint64_t> Lookup(uint64_t pfn) const;
  // The page mapped at a window address (for address-form calls that receive a kmap address).
  std::optional<uint64_t> PfnAt(uint64_t vaddr) const;
  // Pages of [pfn, pfn + nr_pages) that are mapped now.
  uint32_t MappedIn(uint64_t pfn, uint64_t nr_pages) const;

  bool Contains(uint64_t vaddr) const { return vaddr >= base_ && vaddr - base_ < uint64_t{nr_slots_} * page_size_; }
  uint32_t nr_slots() const { return nr_slots_; }
  uint32_t slots_in_use() const;
  uint64_t base() const { return base_; }

 private:
  struct Slot {
    uint64_t pfn = 0;
    uint32_t users = 0;  // 0: free
  };

  const uint64_t base_;
  const uint32_t nr_slots_;
  const uint64_t page_size_;
  mutable std::mutex lock_;
  std::vector<Slot> slots_;                             // guarded by lock_
  absl::flat_hash_map<uint64_t, uint32_t> slot_of_pfn_;  // guarded by lock_
  uint32_t next_ = 0;  // guarded by lock_: where the search for a free slot starts (last_pkmap_nr)
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_HIGHMEM_H_
