// ReplayPlan: a trace turned into the operations a replay performs, with every event that is not
// replayed counted by why, and the trace's own summary as `perf kmem --page stat` computes it.
//
// Who calls it: the replayer (trace/replayer.h) runs a plan on one or more emulated machines
// (built once, replayed per configuration in compare mode); the report prints its counts.
// Thread-safety: built by one thread, then read-only; concurrent replays may share it.
//
// Matching frees to allocations (KERNEL-2.md section 7): a traced allocation at pfn P makes P
// live; the next mm_page_free of P ends it. Frees count from mm_page_free only
// (mm_page_free_batched repeats a free already logged). Each op keeps the kernel's meaning:
//   alloc i   allocate a block of the traced order with the traced gfp mask; it becomes block i
//   free i    free block i (whatever emulated pfn it got), with the traced order
// Not replayed, counted:
//   failed_allocs        the kernel's own failures (pfn -1): nothing to map a free to
//   free_only            a free with no live allocation: allocated before the trace began, or by
//                        a path that logs no mm_page_alloc (alloc_pages_bulk's array path,
//                        split_page remainders, compaction targets)
//   free_order_mismatch  a free of a live pfn with another order (a non-compound block freed as
//                        halves, ___free_pages); the block stays allocated in the replay
//   realloc_of_live_pfn  an allocation of a pfn that is still live (its free was lost or never
//                        logged): the earlier block stays allocated in the replay
//   free_batched, reference_events (pcpu_drain, extfrag, zone_locked)
// Invariant: nr_blocks (alloc ops) + failed_allocs = events[kAlloc];
//            free ops + free_only + free_order_mismatch = events[kFree].
#ifndef PHYSMEM_TRACE_REPLAY_PLAN_H_
#define PHYSMEM_TRACE_REPLAY_PLAN_H_

#include <array>
#include <cstdint>
#include <vector>

#include "allocator/gfp.h"
#include "trace/page_event.h"
#include "trace/trace_reader.h"

namespace physmem::trace {

inline constexpr int kNrTraceOrders = kMaxTraceOrder + 1;
inline constexpr int kNrTraceMigratetypes = 6;  // UNMOVABLE MOVABLE RECLAIMABLE HIGHATOMIC CMA ISOLATE
inline constexpr std::array<const char*, kNrTraceMigratetypes> kMigratetypeNames = {
    "Unmovable", "Movable", "Reclaimable", "HighAtomic", "CMA", "Isolate"};

enum class ReplayOpKind : uint8_t { kAlloc, kFree };

struct ReplayOp {
  uint32_t block;         // index into the replay's block table
  gfp_t gfp;              // kAlloc: the traced mask
  uint32_t time_us;       // since the first event of the trace (saturates at ~71 minutes)
  uint8_t order;
  ReplayOpKind kind;
  int8_t migratetype;     // kAlloc: the traced migratetype
  uint8_t cpu;            // traced CPU modulo 256
};
static_assert(sizeof(ReplayOp) == 16);

// The figures `perf kmem --page stat` prints for the same events (tools/perf/builtin-kmem.c
// print_page_summary()): requests and their bytes (page_size << order), frees matched to
// allocations by pfn alone, and successful allocations by order and migratetype.
struct PerfKmemSummary {
  uint64_t alloc_requests = 0, alloc_bytes = 0;  // failures included
  uint64_t free_requests = 0, free_bytes = 0;
  uint64_t alloc_freed = 0, alloc_freed_bytes = 0;  // frees that found their pfn live
  uint64_t free_only = 0, free_only_bytes = 0;
  uint64_t failures = 0, failure_bytes = 0;
  std::array<std::array<uint64_t, kNrTraceMigratetypes>, kNrTraceOrders> order_migratetype{};
};

struct ReplayPlan {
  std::vector<ReplayOp> ops;
  uint32_t nr_blocks = 0;
  uint16_t nr_cpus = 1;  // highest traced CPU + 1
  double trace_seconds = 0;

  // Not replayed (see the file comment).
  uint64_t failed_allocs = 0;
  uint64_t free_only = 0;
  uint64_t free_order_mismatch = 0;
  uint64_t realloc_of_live_pfn = 0;
  uint64_t free_batched = 0;
  uint64_t reference_events = 0;
  uint64_t live_at_end = 0;  // traced allocations never freed within the trace

  PerfKmemSummary perf;
};

// page_size: bytes per page of the traced machine, for perf kmem's byte columns.
ReplayPlan BuildReplayPlan(const Trace& trace, uint64_t page_size = 4096);

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_REPLAY_PLAN_H_
