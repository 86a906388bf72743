// Which identity last owned each page, so that a page's bytes never pass from one identity to
// another: a block handed to an identity is scrubbed (zeroed) page by page where the page's last
// owner was another identity, or is unknown — lazily, at hand-out, and only then. The kernel
// zeroes only on request (__GFP_ZERO) or always (init_on_alloc / init_on_free); between tenants
// that trust each other no more than processes do, "always" is the safe default and "on a change
// of tenant" is the same guarantee at a fraction of the cost: a service that frees and reallocates
// its own pages (the common case) never pays for a scrub.
//
// Every path a page can leave a lease by (FreePages by pfn, key or address, FreePagesBulk,
// revoke, expiry, shutdown) ends in the allocator, and every way back into a lease goes through
// the lessor's Attach/AttachBulk, which call Claim: so the check is in one place, whatever the
// free path was. Pages of a fresh anonymous arena start "never owned" (the mapping is zero-filled);
// a file-backed arena may hold a previous run's bytes (it outlives the daemon, by design), so its
// pages start "unknown" and are scrubbed on their first hand-out; blocks recovered from the
// journal go back to the identity that held them. With the allocator's init_on_free (the
// daemon's --init_on_free, the kernel's blunt alternative) every freed page is already zero, so
// only pages of unknown history (a file-backed arena's first hand-out) are scrubbed here.
//
// Who uses it: Lessor (TagOf at grant and adoption, Claim when a block joins a lease, Adopt in
// recovery). Thread-safety: TagOf takes its own lock. Claim and Adopt touch only the pages of the
// block they are given, which the caller holds exclusively (just allocated, not yet in any book);
// the allocator's own synchronization orders one owner's Claim before the next owner's.
#ifndef PHYSMEM_SERVER_PAGE_TENANCY_H_
#define PHYSMEM_SERVER_PAGE_TENANCY_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "allocator/page_allocator.h"
#include "allocator/mutex.h"

namespace physmem {

class PageTenancy {
 public:
  // `arena_zero_filled`: the arena is a fresh anonymous mapping, all zeros.
  PageTenancy(PageAllocator* pa, bool arena_zero_filled);

  // The tag of an identity, assigned on first sight (1..65534); kUnknown once 65534 identities
  // have been seen — such an identity's pages are then scrubbed on every hand-out, still safe.
  uint16_t TagOf(const std::string& identity);
  // Before the block at mem_map index `head` (2^order pages) joins a lease of identity `tag`:
  // zeroes each page whose last owner was not `tag` (skipped when `zeroed`: the allocator just
  // zeroed the block for __GFP_ZERO; and for pages some identity freed, under init_on_free),
  // and makes `tag` its owner.
  void Claim(uint32_t head, unsigned order, uint16_t tag, bool zeroed);
  // A block recovered from the journal belongs to `tag` again.
  void Adopt(uint32_t head, unsigned order, uint16_t tag);
  // Pages zeroed so far because their tenant changed.
  uint64_t pages_scrubbed() const { return scrubbed_.load(std::memory_order_relaxed); }

  static constexpr uint16_t kNeverOwned = 0;  // zero-filled since the arena was mapped
  static constexpr uint16_t kUnknown = 0xffff;

 private:
  PageAllocator* const pa_;
  const bool init_on_free_;  // the allocator zeroes every freed block
  std::vector<uint16_t> last_owner_;  // by mem_map index
  Mutex mu_;
  absl::flat_hash_map<std::string, uint16_t> tags_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> scrubbed_{0};
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_PAGE_TENANCY_H_
