#include "server/page_tenancy.h"

#include <cstring>

namespace physmem {

PageTenancy::PageTenancy(PageAllocator* pa, bool arena_zero_filled)
    : pa_(pa),
      init_on_free_(pa->options().init_on_free),
      last_owner_(pa->mem_map().nr_pages(), arena_zero_filled ? kNeverOwned : kUnknown) {}

uint16_t PageTenancy::TagOf(const std::string& identity) {
  MutexLock l(&mu_);
  if (auto it = tags_.find(identity); it != tags_.end()) return it->second;
  if (tags_.size() >= kUnknown - 1) return kUnknown;
  const uint16_t tag = static_cast<uint16_t>(tags_.size() + 1);
  tags_.emplace(identity, tag);
  return tag;
}

void PageTenancy::Claim(uint32_t head, unsigned order, uint16_t tag, bool zeroed) {
  const uint32_t n = uint32_t{1} << order;
  const uint64_t page_bytes = uint64_t{1} << pa_->target().page_shift;
  uint64_t scrubbed = 0;
  for (uint32_t i = 0; i < n; ++i) {
    uint16_t& last = last_owner_[head + i];
    // A never-owned page is still zero; an identity without a tag of its own (kUnknown) matches
    // no page, not even one it had: always scrubbed.
    // Under init_on_free a page with a known last owner was zeroed when that owner freed it.
    const bool zero_since_freed = init_on_free_ && last != kUnknown;
    if (!zeroed && !zero_since_freed && last != kNeverOwned && (last != tag || tag == kUnknown)) {
      std::memset(pa_->page_host_address(&pa_->mem_map().page(head + i)), 0, page_bytes);
      ++scrubbed;
    }
    last = tag;
  }
  if (scrubbed != 0) scrubbed_.fetch_add(scrubbed, std::memory_order_relaxed);
}

void PageTenancy::Adopt(uint32_t head, unsigned order, uint16_t tag) {
  for (uint32_t i = 0; i < (uint32_t{1} << order); ++i) last_owner_[head + i] = tag;
}

}  // namespace physmem
