#include "allocator/highmem.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace physmem {

PkmapWindow::PkmapWindow(uint64_t pkmap_base, uint32_t nr_slots, uint64_t page_size)
    : base_(pkmap_base), nr_slots_(nr_slots), page_size_(page_size), slots_(nr_slots) {}

void PkmapWindow::FlushAllZeroPkmapsLocked() {
  // flush_all_zero_pkmaps(): "Only a count of 1 means that it is free but needs to be unmapped".
  for (uint32_t i = 0; i < nr_slots_; ++i) {
    if (slots_[i].count != 1) continue;
    slots_[i].count = 0;
    slot_of_pfn_.erase(slots_[i].pfn);  // set_page_address(page, NULL)
  }
}

std::optional<uint32_t> PkmapWindow::MapNewVirtualLocked(uint64_t pfn) {
  const uint32_t saved_last = last_pkmap_nr_;
  uint32_t count = nr_slots_;
  for (;;) {
    // get_next_pkmap_nr(); no_more_pkmaps() at the wrap to 0: flush, and search a full round more.
    last_pkmap_nr_ = (last_pkmap_nr_ + 1) % nr_slots_;
    if (last_pkmap_nr_ == 0) {
      FlushAllZeroPkmapsLocked();
      count = nr_slots_;
    }
    if (slots_[last_pkmap_nr_].count == 0) break;
    if (--count == 0) {
      // The kernel sleeps here for a kunmap(); we refuse. The flush above freed nothing (else the
      // search would have found it), so only the search position changed: put it back.
      last_pkmap_nr_ = saved_last;
      return std::nullopt;
    }
  }
  slots_[last_pkmap_nr_] = Slot{pfn, 1};
  slot_of_pfn_[pfn] = last_pkmap_nr_;
  return last_pkmap_nr_;
}

RefusalOr<uint64_t> PkmapWindow::Kmap(uint64_t pfn) {
  MutexLock l(&lock_);
  uint32_t slot;
  if (auto it = slot_of_pfn_.find(pfn); it != slot_of_pfn_.end()) {
    slot = it->second;  // kmap_high(): page_address() found; a lazily kept mapping is reused
  } else if (std::optional<uint32_t> fresh = MapNewVirtualLocked(pfn)) {
    slot = *fresh;
  } else {
    return Refusal{RefusalReason::kKmapWindowFull, pfn,
                   absl::StrFormat("kmap window full: all %d pkmap slots at %#x are in use; kunmap() a page first",
                                   nr_slots_, base_)};
  }
  ++slots_[slot].count;
  return base_ + uint64_t{slot} * page_size_;
}

std::optional<Refusal> PkmapWindow::Kunmap(uint64_t pfn) {
  MutexLock l(&lock_);
  auto it = slot_of_pfn_.find(pfn);
  if (it == slot_of_pfn_.end() || slots_[it->second].count < 2) {
    // kunmap_high() would BUG() on a count that drops to 0.
    return Refusal{RefusalReason::kNotKmapped, pfn, absl::StrFormat("kunmap: pfn %#x is not kmap()ed", pfn)};
  }
  --slots_[it->second].count;  // at 1 the mapping stays until the next flush
  return std::nullopt;
}

std::optional<uint64_t> PkmapWindow::Lookup(uint64_t pfn) const {
  MutexLock l(&lock_);
  auto it = slot_of_pfn_.find(pfn);
  if (it == slot_of_pfn_.end()) return std::nullopt;
  return base_ + uint64_t{it->second} * page_size_;
}

std::optional<uint64_t> PkmapWindow::PfnAt(uint64_t vaddr) const {
  if (!Contains(vaddr)) return std::nullopt;
  MutexLock l(&lock_);
  const Slot& s = slots_[(vaddr - base_) / page_size_];
  if (s.count == 0) return std::nullopt;
  return s.pfn;
}

uint32_t PkmapWindow::Users(uint64_t pfn) const {
  MutexLock l(&lock_);
  auto it = slot_of_pfn_.find(pfn);
  return it == slot_of_pfn_.end() ? 0 : slots_[it->second].count - 1;
}

uint32_t PkmapWindow::slots_in_use() const {
  MutexLock l(&lock_);
  uint32_t n = 0;
  for (const Slot& s : slots_) n += s.count > 1;
  return n;
}

uint32_t PkmapWindow::slots_mapped() const {
  MutexLock l(&lock_);
  return static_cast<uint32_t>(slot_of_pfn_.size());
}

}  // namespace physmem
