#include "trace/replay_plan.h"

#include <algorithm>
#include <cstdint>

#include "absl/container/flat_hash_map.h"

namespace physmem::trace {
namespace {

struct Live {
  uint32_t block;
  uint8_t order;
};

uint32_t MicrosSince(uint64_t first_ns, uint64_t ns) {
  const uint64_t us = ns > first_ns ? (ns - first_ns) / 1000 : 0;
  return static_cast<uint32_t>(std::min<uint64_t>(us, UINT32_MAX));
}

}  // namespace

ReplayPlan BuildReplayPlan(const Trace& trace, uint64_t page_size) {
  ReplayPlan plan;
  plan.nr_cpus = static_cast<uint16_t>(trace.stats.max_cpu + 1);
  plan.trace_seconds = trace.stats.duration_seconds();
  plan.ops.reserve(trace.stats.events[static_cast<int>(PageEventType::kAlloc)] +
                   trace.stats.events[static_cast<int>(PageEventType::kFree)]);
  const uint64_t first_ns = trace.stats.first_timestamp_ns;
  absl::flat_hash_map<uint64_t, Live> live;
  PerfKmemSummary& perf = plan.perf;
  for (const PageEvent& e : trace.events) {
    const uint64_t bytes = page_size << e.order;
    switch (e.type) {
      case PageEventType::kAlloc: {
        ++perf.alloc_requests;
        perf.alloc_bytes += bytes;
        if (e.failed()) {
          ++perf.failures;
          perf.failure_bytes += bytes;
          ++plan.failed_allocs;
          break;
        }
        if (e.migratetype >= 0 && e.migratetype < kNrTraceMigratetypes) {
          ++perf.order_migratetype[e.order][e.migratetype];
        }
        const uint32_t block = plan.nr_blocks++;
        auto [it, inserted] = live.try_emplace(e.pfn, Live{block, e.order});
        if (!inserted) {
          ++plan.realloc_of_live_pfn;
          it->second = Live{block, e.order};
        }
        plan.ops.push_back(ReplayOp{block, e.gfp, MicrosSince(first_ns, e.timestamp_ns), e.order,
                                    ReplayOpKind::kAlloc, e.migratetype, static_cast<uint8_t>(e.cpu)});
        break;
      }
      case PageEventType::kFree: {
        ++perf.free_requests;
        perf.free_bytes += bytes;
        auto it = live.find(e.pfn);
        if (it == live.end()) {
          ++perf.free_only;
          perf.free_only_bytes += bytes;
          ++plan.free_only;
          break;
        }
        ++perf.alloc_freed;
        perf.alloc_freed_bytes += bytes;
        const Live l = it->second;
        live.erase(it);
        if (l.order != e.order) {
          ++plan.free_order_mismatch;
          break;
        }
        plan.ops.push_back(ReplayOp{l.block, 0, MicrosSince(first_ns, e.timestamp_ns), e.order,
                                    ReplayOpKind::kFree, kNoMigratetype, static_cast<uint8_t>(e.cpu)});
        break;
      }
      case PageEventType::kFreeBatched: ++plan.free_batched; break;
      case PageEventType::kPcpDrain:
      case PageEventType::kExtfrag:
      case PageEventType::kAllocZoneLocked: ++plan.reference_events; break;
    }
  }
  plan.live_at_end = live.size();
  return plan;
}

}  // namespace physmem::trace
