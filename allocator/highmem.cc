#include "allocator/highmem.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace physmem {

PkmapWindow::PkmapWindow(uint64_t pkmap_base, uint32_t nr_slots, uint64_t page_size)
    : base_(pkmap_base), nr_slots_(nr_slots), page_size_(page_size), slots_(nr_slots) {}

absl::StatusOr<uint64_t> PkmapWindow::Kmap(uint64_t pfn) {
  std::lock_guard<std::mutex> l(lock_);
  if (auto it = slot_of_pfn_.find(pfn); it != slot_of_pfn_.end()) {
    ++slots_[it->second].users;
    return base_ + uint64_t{it->second} * page_size_;
  }
  // map_new_virtual(): scan from where the last search stopped, like last_pkmap_nr.
  for (uint32_t i = 0; i < nr_slots_; ++i) {
    const uint32_t slot = (next_ + i) % nr_slots_;
    if (slots_[slot].users != 0) continue;
    slots_[slot] = Slot{pfn, 1};
    slot_of_pfn_[pfn] = slot;
    next_ = (slot + 1) % nr_slots_;
    return base_ + uint64_t{slot} * page_size_;
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "kmap window full: all %d pkmap slots at %#x are in use; kunmap() a page first", nr_slots_, base_));
}

absl::Status PkmapWindow::Kunmap(uint64_t pfn) {
  std::lock_guard<std::mutex> l(lock_);
  auto it = slot_of_pfn_.find(pfn);
  if (it == slot_of_pfn_.end()) {
    return absl::FailedPreconditionError(absl::StrFormat("kunmap: pfn %#x is not kmap()ed", pfn));
  }
  Slot& s = slots_[it->second];
  if (--s.users == 0) slot_of_pfn_.erase(it);
  return absl::OkStatus();
}

std::optional<uint64_t> PkmapWindow::Lookup(uint64_t pfn) const {
  std::lock_guard<std::mutex> l(lock_);
  auto it = slot_of_pfn_.find(pfn);
  if (it == slot_of_pfn_.end()) return std::nullopt;
  return base_ + uint64_t{it->second} * page_size_;
}

std::optional<uint64_t> PkmapWindow::PfnAt(uint64_t vaddr) const {
  if (!Contains(vaddr)) return std::nullopt;
  std::lock_guard<std::mutex> l(lock_);
  const Slot& s = slots_[(vaddr - base_) / page_size_];
  if (s.users == 0) return std::nullopt;
  return s.pfn;
}

uint32_t PkmapWindow::MappedIn(uint64_t pfn, uint64_t nr_pages) const {
  std::lock_guard<std::mutex> l(lock_);
  uint32_t n = 0;
  if (nr_pages < slot_of_pfn_.size()) {
    for (uint64_t p = pfn; p < pfn + nr_pages; ++p) n += slot_of_pfn_.contains(p);
  } else {
    for (const auto& [p, slot] : slot_of_pfn_) n += p >= pfn && p < pfn + nr_pages;
  }
  return n;
}

uint32_t PkmapWindow::slots_in_use() const {
  std::lock_guard<std::mutex> l(lock_);
  return static_cast<uint32_t>(slot_of_pfn_.size());
}

}  // namespace physmem
