// Highmem: the kmap() window (mm/highmem.c: kmap_high(), kunmap_high(), map_new_virtual(),
// flush_all_zero_pkmaps(), page_address() for HASHED_PAGE_VIRTUAL), kernel 6.12.
//
// A HIGHMEM page has no permanent kernel virtual address. kmap() gives it one from a small window
// of LAST_PKMAP slots at PKMAP_BASE. Each slot has the kernel's pkmap_count[]:
//   0   free: nothing mapped;
//   1   mapped, no user: kunmap() dropped the last user but the mapping stays (lazy unmap);
//   n>1 mapped with n - 1 users.
// Mapping a page that is still mapped (count >= 1) reuses its slot and adds a user. A new mapping
// takes the next slot after the last one handed out (last_pkmap_nr; the first kmap() gets slot 1,
// slot 0 comes after the window wraps). When the search wraps to slot 0, every count-1 slot is
// unmapped at once (flush_all_zero_pkmaps(): one global TLB flush) and becomes free. So
// page_address() of a page kunmap()ed since the last wrap still returns its old address, as the
// kernel's does. When no slot is free even after a flush the kernel sleeps in kmap(); a service
// cannot, so we return RESOURCE_EXHAUSTED instead (and change nothing).
//
// Who uses it: PageAllocator (kmap/kunmap/page_address, and the free path, which refuses to free
// a page that still has kmap() users). Thread-safety: all methods are safe to call concurrently;
// one mutex guards the slot table (the kernel's kmap_lock), held only by kmap/kunmap/lookups of
// highmem pages — lowmem pages never reach this class.
#ifndef PHYSMEM_ALLOCATOR_HIGHMEM_H_
#define PHYSMEM_ALLOCATOR_HIGHMEM_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "allocator/mutex.h"
#include "allocator/refusal.h"

namespace physmem {

class PkmapWindow {
 public:
  PkmapWindow(uint64_t pkmap_base, uint32_t nr_slots, uint64_t page_size);

  // kmap_high(): maps pfn (or adds a user to its mapping); returns its emulated virtual address.
  // kKmapWindowFull when every slot has users (the kernel would sleep).
  RefusalOr<uint64_t> Kmap(uint64_t pfn);
  // kunmap_high(): drops one user; the slot stays mapped at count 1 until the next wrap flushes
  // it. kNotKmapped if pfn has no kmap() user (nothing changed then).
  std::optional<Refusal> Kunmap(uint64_t pfn);
  // page_address(): the mapped address (users or not, until flushed), or nullopt.
  std::optional<uint64_t> Lookup(uint64_t pfn) const;
  // The page mapped at a window address (for address-form calls that receive a kmap address).
  std::optional<uint64_t> PfnAt(uint64_t vaddr) const;
  // kmap() users of pfn (pkmap_count - 1; 0 when unmapped or mapped without users).
  uint32_t Users(uint64_t pfn) const;

  bool Contains(uint64_t vaddr) const { return vaddr >= base_ && vaddr - base_ < uint64_t{nr_slots_} * page_size_; }
  uint32_t nr_slots() const { return nr_slots_; }
  uint32_t slots_in_use() const;  // slots with users (count > 1)
  uint32_t slots_mapped() const;  // slots mapped, with or without users (count >= 1)
  uint64_t base() const { return base_; }

 private:
  struct Slot {
    uint64_t pfn = 0;
    uint32_t count = 0;  // pkmap_count[]: 0 free, 1 mapped without users, n > 1: n - 1 users
  };
  // map_new_virtual(); nullopt when every slot has users.
  std::optional<uint32_t> MapNewVirtualLocked(uint64_t pfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void FlushAllZeroPkmapsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);

  const uint64_t base_;
  const uint32_t nr_slots_;
  const uint64_t page_size_;
  mutable Mutex lock_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(lock_);
  absl::flat_hash_map<uint64_t, uint32_t> slot_of_pfn_ ABSL_GUARDED_BY(lock_);  // slots with count >= 1
  uint32_t last_pkmap_nr_ ABSL_GUARDED_BY(lock_) = 0;  // the slot handed out last (starts at 0)
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_HIGHMEM_H_
