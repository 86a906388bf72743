// DaemonReplayer: runs a ReplayPlan against a running physmemd over gRPC, under one lease, so the
// daemon's metrics (and the Grafana dashboards in deploy/) show the replay live. The result is the
// same ReplayResult the in-process replayer (trace/replayer.h) fills, so the same report prints it.
//
// Who calls it: physmem_trace replay|compare --daemon=ADDRESS (clients/physmem_trace.cc), the
// tests, the benchmark. Thread-safety: Replay() is one client thread; separate calls may run
// concurrently (each makes its own lease).
//
// Calls (trace/replay_pacer.h cuts the plan into batches, consecutive ops only):
//   2+ consecutive order-0 allocations, same mask  AllocPagesBulk (alloc_pages_bulk()); pages it
//                                                   did not fill go one by one through AllocPages,
//                                                   so every refusal has its own answer
//   any other allocation                            AllocPages
//   consecutive frees                               FreePagesBulk of the blocks' emulated pfns
// The mask is sent as a number (gfp_mask), __GFP_ZERO stripped unless zero_pages, as in-process.
// Differences from in-process: alloc_pages_bulk() checks the LOW watermark plus the pages wanted
// and takes from one zone's per-CPU list (mm/page_alloc.c __alloc_pages_bulk()), where one
// alloc_pages() per page checks each page on its own, so near the watermarks the two can refuse
// differently; per-CPU identity is the daemon's (its handler threads), not the trace's.
//
// Refusals by reason, from the daemon's answer: INVALID_ARGUMENT -> order_above_target_max /
// invalid_gfp (decided here first, with the target from GetTarget and ValidateGfp(), so no call is
// made); RESOURCE_EXHAUSTED -> below_watermark / fragmented / exhausted read from its "zones
// tried: Z (free F, largest free order L, ...)" explanation as in-process decides them, or
// lease_quota / identity_limit; any other code -> rpc_<code> (UNAVAILABLE ends the replay).
// Waiting: the daemon parks a refused allocation whose mask may sleep until memory is freed (its
// direct reclaim, up to --max_alloc_wait_ms), but nothing else frees while the replay waits, so
// by default the replay adds __GFP_NORETRY to such masks (not to __GFP_NOFAIL ones, which the
// kernel never lets fail): the daemon then tries once more after expiring due leases and answers
// at once, as the in-process replay refuses. gfp_class() ignores __GFP_NORETRY, so the counts by
// class are unchanged. wait_for_memory = true sends the traced mask as it is.
//
// Known refusals: a replay that outgrows the machine is refused over and over, one call each. As
// the in-process replayer keeps a refusal's reason until an allocation or free succeeds, this one
// keeps the daemon's refusal of (mask, order) until this replay allocates or frees anything, or
// for 100 ms (other clients may free meanwhile), and refuses the same request again without a
// call (DaemonReplayInfo::refusals_without_call). Nothing this replay does in between can make
// room: only its own successes change what it holds.
#ifndef PHYSMEM_TRACE_DAEMON_REPLAYER_H_
#define PHYSMEM_TRACE_DAEMON_REPLAYER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trace/replay_pacer.h"
#include "trace/replay_plan.h"
#include "trace/replayer.h"

namespace physmem::trace {

struct DaemonReplayOptions {
  std::string name = "daemon";       // column label in compare mode
  std::string address;               // gRPC target: unix:/path, /path, or host:port
  int64_t lease_ttl_ms = 10000;      // kept alive by the client library while the replay runs
  std::string lease_name;            // default: physmem_trace-<pid>-<n>
  bool keep_lease = false;           // leave the lease (holding what the trace left allocated) to expire
  int64_t alloc_timeout_ms = 10000;  // deadline of each allocating call
  PaceOptions pace;
  ReplayClock* clock = nullptr;  // default ReplayClock::Real()
  bool zero_pages = false;
  bool wait_for_memory = false;  // see "Waiting" above
  int samples = 16;              // fragmentation snapshots (GetZoneInfo), evenly spaced over the ops
};

// Replays `plan`; the ReplayResult's `daemon` part says how (calls, lease, pages at the end).
// UNAVAILABLE / DEADLINE_EXCEEDED if the daemon cannot be reached, NOT_FOUND if the lease ended
// under the replay; the message names the daemon.
absl::StatusOr<ReplayResult> ReplayOnDaemon(const ReplayPlan& plan, const DaemonReplayOptions& options);

// The refusal reason for a RESOURCE_EXHAUSTED answer to an allocation of `order` (exposed for
// the tests): parses the daemon's "zones tried:" explanation.
std::string ReasonFromExhausted(const absl::Status& status, unsigned order);

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_DAEMON_REPLAYER_H_
