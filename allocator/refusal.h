// Refusal: why the allocator said no, as a type rather than a status message to parse.
//
// Every call of the allocator that can be refused for a reason a caller may want to tell apart
// (an allocation that found no memory, a free that was wrong, an address that is no page of the
// direct map, a kmap() that cannot be made) has a form that returns a Refusal:
// PageAllocator::TryAllocPages, AllocFailure, TryFreePfn, TryPfnToPage, TryVirtToPage,
// TryOwnedBlockContaining, TryKmap, TryKunmap. The absl::Status forms (AllocPages, FreePfn,
// __free_pages, free_pages, PfnToPage, VirtToPage, kmap, kunmap) are the same calls with
// ToStatus() applied.
// The server maps a Refusal to its gRPC status and its metric label in one place
// (server/refusal_status.h); nothing there re-derives a reason from a code or a message.
//
// Each reason names the kernel check it models. Where the kernel has no check (it trusts its
// callers: a wrong-order free of a non-compound block corrupts the free lists silently) we refuse
// and say which check a kernel with CONFIG_DEBUG_VM would have failed, or that it is ours.
//
// Who uses it: allocator/page_allocator.cc produces them; server/lessor.cc and
// server/physmem_service.cc consume them; tests/allocator/refusal_test.cc produces each one from
// a real allocator situation. Thread-safety: plain values; RefusalCode and RefusalReasonName are
// pure functions.
#ifndef PHYSMEM_ALLOCATOR_REFUSAL_H_
#define PHYSMEM_ALLOCATOR_REFUSAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace physmem {

enum class RefusalReason : uint8_t {
  // ---- Either direction ----
  kOrderTooHigh,  // order > MAX_PAGE_ORDER: __alloc_pages()'s WARN_ON_ONCE_GFP(order > MAX_PAGE_ORDER)

  // ---- Allocation (__alloc_pages() and what it calls) ----
  kInvalidGfp,       // unknown bits, a bad zone-modifier combination (gfp_zone()'s BAD_RANGE
                     // VM_BUG_ON), or flags that contradict each other (ValidateGfp())
  kNoZone,           // no populated zone of the zonelist is allowed to the caller: the zonelist
                     // walk (for_next_zone_zonelist_nodemask(), __cpuset_zone_allowed()) is empty
  kBelowWatermark,   // some allowed zone holds a free block of the order, but every such zone
                     // failed __zone_watermark_ok() (MIN + lowmem_reserve, after ALLOC_* discounts)
  kNoFreeBlock,      // no allowed zone holds a free block of the order or larger:
                     // __rmqueue_smallest() and the fallbacks find nothing

  // ---- Free (__free_pages(), free_pages_prepare()'s checks) ----
  kNotAPage,         // __free_pages() given a pointer that is no struct page of this allocator
  kPfnOutOfRange,    // pfn in a hole or beyond the end of RAM: !pfn_valid()
  kMisaligned,       // pfn not a multiple of 2^order: no block of that order starts there
  kNotAllocated,     // the page is free: a double free (put_page_testzero() on refcount 0)
  kTailPage,         // a tail page of a compound block (free_pages_prepare(): PageTail)
  kInsideBlock,      // a page inside another allocated block (not its head)
  kWrongOrder,       // the block was allocated with another order (free_pages_prepare()'s
                     // VM_BUG_ON_PAGE(compound && compound_order(page) != order); ours for all)
  kWrongOwner,       // the block belongs to another owner (ours: the kernel has no owners)
  kStillMapped,      // a HIGHMEM page of the block is still kmap()ed (bad_page("nonzero mapcount"))
  kCommitFailed,     // the caller's commit hook (the server's journal) refused; `cause` says why

  // ---- Addresses (free_pages()'s virt_to_page(), i.e. virt_addr_valid()) ----
  kAddrUnaligned,          // not a page address: not a multiple of PAGE_SIZE
  kAddrKmapWindow,         // a kmap() window (PKMAP) address: no direct-map page behind it
  kAddrBelowDirectMap,     // below PAGE_OFFSET
  kAddrBeyondDirectMap,    // beyond lowmem (high_memory): a highmem page has no direct mapping

  // ---- kmap()/kunmap() (mm/highmem.c); kNotAllocated and kWrongOwner apply to them too ----
  kKmapWindowFull,  // every pkmap slot has users: kmap_high()'s map_new_virtual() would sleep on
                    // pkmap_map_wait until a kunmap(); a service refuses instead
  kNotKmapped,      // kunmap() of a highmem page with no kmap() user: kunmap_high()'s BUG_ON

  kCount
};

// "order_too_high", "no_free_block", ...: for logs and tests (not a metric label: see
// server/refusal_status.h for those).
std::string_view RefusalReasonName(RefusalReason r);
// The canonical status code of each reason, as page_allocator.h documents them:
//   INVALID_ARGUMENT     kOrderTooHigh, kInvalidGfp, kNotAPage, kMisaligned, kWrongOrder and
//                        every kAddr* reason
//   RESOURCE_EXHAUSTED   kNoZone, kBelowWatermark, kNoFreeBlock, kKmapWindowFull
//   OUT_OF_RANGE         kPfnOutOfRange
//   FAILED_PRECONDITION  kNotAllocated, kTailPage, kInsideBlock, kStillMapped, kNotKmapped
//   PERMISSION_DENIED    kWrongOwner
//   (kCommitFailed: the code of its cause)
absl::StatusCode RefusalCode(RefusalReason r);

struct Refusal {
  RefusalReason reason = RefusalReason::kNotAllocated;
  uint64_t pfn = 0;    // the pfn the refused call named (frees); 0 where there is none
  std::string detail;  // what was wrong, for people: the message the Status forms carry
  absl::Status cause;  // kCommitFailed only: the commit hook's status
};

// The allocator's own status for a refusal: RefusalCode() and `detail` (the cause itself for
// kCommitFailed). The server words some refusals differently (server/refusal_status.h).
absl::Status ToStatus(const Refusal& r);
inline absl::Status ToStatus(const std::optional<Refusal>& r) { return r ? ToStatus(*r) : absl::OkStatus(); }

// A value or the Refusal that took its place (absl::StatusOr's shape, with a reason instead of a
// code). `value()` on a refusal aborts, as StatusOr's does.
template <typename T>
class RefusalOr {
 public:
  RefusalOr(T value) : v_(std::in_place_index<0>, std::move(value)) {}     // NOLINT: implicit, as StatusOr
  RefusalOr(Refusal refusal) : v_(std::in_place_index<1>, std::move(refusal)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  const T& value() const { return std::get<0>(v_); }
  T& value() { return std::get<0>(v_); }
  const T& operator*() const { return value(); }
  T& operator*() { return value(); }
  const Refusal& refusal() const { return std::get<1>(v_); }
  absl::StatusOr<T> ToStatusOr() const {
    if (ok()) return value();
    return ToStatus(refusal());
  }

 private:
  std::variant<T, Refusal> v_;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_REFUSAL_H_
