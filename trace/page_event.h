// PageEvent: one kernel page-allocation tracepoint hit (include/trace/events/kmem.h), as the trace
// reader (trace/trace_reader.h) decodes it and the replayer (trace/replayer.h) consumes it.
//
// Who uses it: the reader fills a vector of them from an ftrace or `perf script` text trace; the
// replayer maps allocations and frees onto an emulated machine; tests build them by hand.
// Thread-safety: a plain value.
//
// Which events are kept and why (KERNEL-2.md section 7):
//   kAlloc        mm_page_alloc: one per __alloc_pages() call. pfn -1 (ftrace prints pfn=0x0 with
//                 page=0000000000000000, perf prints 0xffffffffffffffff) is a failed allocation.
//   kFree         mm_page_free: once per freed block on every path; the only event frees are
//                 counted from.
//   kFreeBatched  mm_page_free_batched: a duplicate marker of a folio that already logged
//                 mm_page_free ("order=0" literally, whatever the folio's order). Never replayed.
//   kPcpDrain, kExtfrag, kAllocZoneLocked: reference events (pcp drains, fallbacks, buddy
//                 removals). Counted, not replayed.
#ifndef PHYSMEM_TRACE_PAGE_EVENT_H_
#define PHYSMEM_TRACE_PAGE_EVENT_H_

#include <array>
#include <cstdint>
#include <string_view>

#include "allocator/gfp.h"

namespace physmem::trace {

enum class PageEventType : uint8_t { kAlloc, kFree, kFreeBatched, kPcpDrain, kExtfrag, kAllocZoneLocked };
inline constexpr int kNrPageEventTypes = 6;
// The tracepoint names, indexed by PageEventType.
inline constexpr std::array<std::string_view, kNrPageEventTypes> kPageEventNames = {
    "mm_page_alloc", "mm_page_free", "mm_page_free_batched", "mm_page_pcpu_drain", "mm_page_alloc_extfrag",
    "mm_page_alloc_zone_locked"};

// The largest order a kernel trace can carry: MAX_PAGE_ORDER is 10 on x86_64 and arm64 with 4 KiB
// pages; __alloc_pages() refuses (with no event) anything larger.
inline constexpr unsigned kMaxTraceOrder = 10;
// The pfn the kernel records for a failed allocation (-1UL).
inline constexpr uint64_t kFailedPfn = ~uint64_t{0};
// Migratetype of an event that has none (free, free_batched).
inline constexpr int8_t kNoMigratetype = -1;

struct PageEvent {
  uint64_t timestamp_ns = 0;  // trace clock (seconds.microseconds in the text), in nanoseconds
  uint64_t pfn = 0;           // kFailedPfn for a failed allocation
  gfp_t gfp = 0;              // kAlloc only: the mask, parsed by ParseKernelGfp()
  uint16_t cpu = 0;           // the CPU that logged the event ("[001]")
  uint8_t order = 0;          // kExtfrag: alloc_order
  int8_t migratetype = kNoMigratetype;  // kAlloc, kPcpDrain, kAllocZoneLocked; kExtfrag: alloc_migratetype
  PageEventType type = PageEventType::kAlloc;

  bool failed() const { return type == PageEventType::kAlloc && pfn == kFailedPfn; }
};

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_PAGE_EVENT_H_
