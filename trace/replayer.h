// Replayer: runs a ReplayPlan (trace/replay_plan.h) against an in-process PageAllocator on an
// emulated target, and measures what the emulated machine made of it: allocations granted and
// refused (by reason), frees, per order / gfp class / traced migratetype, the fragmentation index
// per order sampled over the replay, and the final /proc/buddyinfo.
//
// Who calls it: physmem_trace replay and compare (clients/physmem_trace.cc), the tests, the
// benchmark. Thread-safety: Replay() builds its own PageAllocator and may run concurrently with
// other Replay() calls on the same plan.
//
// CPUs. The allocator's per-CPU lists are indexed by the CPU a thread really runs on (rseq, see
// allocator/rseq.h); there is no way to tell it "pretend to be CPU 3". So:
//   per_cpu_threads = false  one thread replays every op in trace order: all traffic lands on
//                            one CPU's lists (whichever that thread runs on).
//   per_cpu_threads = true   one thread per traced CPU, thread c pinned (sched_setaffinity) to
//                            the c-th CPU this process may use, modulo their count: a 2-CPU trace
//                            on a 2-CPU host keeps its CPU identity exactly; more traced CPUs than
//                            host CPUs share lists. Each thread replays its CPU's ops in trace
//                            order; a free whose allocation ran on another thread waits (spins,
//                            yielding) until that allocation is done. Waits only go back in trace
//                            order, so they cannot deadlock. Cross-CPU interleaving is otherwise
//                            the machine's, not the trace's: results may differ run to run.
//
// Refusal reasons (ReplayResult::failures_by_reason):
//   order_above_target_max  the traced order exceeds the target's MAX_PAGE_ORDER
//   invalid_gfp             ValidateGfp() refuses the traced mask (e.g. DMA|DMA32)
//   below_watermark         a large enough free block existed, the watermark check refused it
//   fragmented              enough free pages, no free block of the order (zones the mask allows)
//   exhausted               fewer free pages than the request (zones the mask allows)
// Frees of blocks whose allocation was refused are skipped and counted (free_of_refused).
#ifndef PHYSMEM_TRACE_REPLAYER_H_
#define PHYSMEM_TRACE_REPLAYER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/gfp.h"
#include "allocator/page_allocator.h"
#include "trace/replay_plan.h"

namespace physmem::trace {

struct ReplayConfig {
  std::string name = "default";  // column label in compare mode
  PageAllocatorOptions allocator;
  bool per_cpu_threads = false;
  // __GFP_ZERO makes the allocator memset every page; contents are not what a replay measures
  // and zeroing costs more than the allocation, so it is stripped unless this is set.
  bool zero_pages = false;
  int samples = 16;  // fragmentation snapshots, evenly spaced over the ops, the last at the end
  // Called with the allocator after every `observe_every` ops (by op index in the trace) and once
  // at the end, e.g. to draw the arena (physmem_trace replay --map_every). With per_cpu_threads it
  // runs on the replay threads, concurrently. 0 or no observer: never.
  uint64_t observe_every = 0;
  std::function<void(const PageAllocator& pa, uint64_t ops_done)> observer;
};

// Mobility grouping's fallbacks so far (the kernel's mm_page_alloc_extfrag events), summed over
// zones, by requested migratetype (Unmovable, Movable, Reclaimable): every fallback is a claim
// (the pageblock became the requested type, __rmqueue_claim()) or a steal (one block taken, the
// pageblock's type left alone, __rmqueue_steal()). With grouping off there are none.
inline constexpr int kNrPcpMigratetypes = 3;
struct MigrateFallbacks {
  std::array<uint64_t, kNrPcpMigratetypes> claims{}, steals{};
  uint64_t total_claims() const { return claims[0] + claims[1] + claims[2]; }
  uint64_t total_steals() const { return steals[0] + steals[1] + steals[2]; }
  uint64_t fallbacks() const { return total_claims() + total_steals(); }
};

// One snapshot of the emulated machine during the replay.
struct FragmentationSample {
  uint64_t ops_done = 0;
  double trace_seconds = 0;  // trace time of the last op done
  struct Zone {
    std::string name;
    uint64_t managed_pages = 0;
    uint64_t free_pages = 0;
    std::vector<int> fragmentation_index;  // per order, thousandths (debugfs extfrag_index)
  };
  std::vector<Zone> zones;  // populated zones, lowest first
  MigrateFallbacks migrate;  // cumulative, all zones
};

struct ReplayCounts {
  uint64_t allocs = 0, alloc_failures = 0, frees = 0, free_of_refused = 0, free_errors = 0;
  std::array<uint64_t, kNrTraceOrders> allocs_by_order{}, failures_by_order{}, frees_by_order{};
  std::array<uint64_t, kNrGfpClasses> allocs_by_gfp_class{}, failures_by_gfp_class{};
  std::array<uint64_t, kNrTraceMigratetypes> allocs_by_migratetype{}, failures_by_migratetype{};
  std::map<std::string, uint64_t> failures_by_reason;
  std::string first_free_error;

  void Add(const ReplayCounts& other);
};

// How a replay over gRPC (trace/daemon_replayer.h) went; empty for in-process replays.
struct DaemonReplayInfo {
  std::string address;
  uint64_t lease_id = 0;
  double pace = 0;  // 0: full speed
  uint64_t alloc_bulk_calls = 0, bulk_pages = 0, bulk_short = 0;  // bulk_short: calls that filled fewer
  uint64_t alloc_calls = 0, free_bulk_calls = 0;
  uint64_t refusals_without_call = 0;  // a known refusal repeated (trace/daemon_replayer.h)
  uint64_t pages_allocated_at_end = 0;  // Σ 2^order over the blocks this replay holds
  uint64_t lease_pages_at_end = 0;      // what the daemon says the lease holds (GetLease)
  bool lease_kept = false;
  double slept_seconds = 0;  // pacing
};

struct ReplayResult {
  std::string config_name;
  std::string mode = "in_process";  // or "daemon"
  bool group_by_mobility = true;    // false: page_group_by_mobility_disabled
  std::string target;          // e.g. "x86_64 2048 MiB"
  uint64_t min_free_kbytes = 0;  // the value in effect (the kernel formula's when 0 was asked)
  bool pcp_requested = false;
  bool pcp_active = false;       // requested and rseq usable
  bool thread_pages_requested = false;  // PageAllocatorOptions::thread_pages (in-process only)
  bool thread_pages_active = false;     // requested and usable (per-CPU lists on, membarrier)
  int threads = 1;
  std::string cpu_mapping;       // how traced CPUs were mapped, in words
  ReplayCounts counts;
  std::vector<FragmentationSample> samples;
  std::string final_buddyinfo;
  std::string final_pagetypeinfo;
  MigrateFallbacks migrate;  // at the end
  uint64_t blocks_allocated_at_end = 0;
  DaemonReplayInfo daemon;
  double wall_seconds = 0;
  double ops_per_second = 0;
};

absl::StatusOr<ReplayResult> Replay(const ReplayPlan& plan, const ReplayConfig& config);

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_REPLAYER_H_
