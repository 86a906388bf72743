// ReplayPacer: cuts a ReplayPlan into the batches a replay over gRPC sends (trace/daemon_replayer.h)
// and decides when each batch is due, at full speed or at the trace's own pace times a factor.
//
// Who calls it: DaemonReplayer, one batch at a time; the tests, with a fake clock, to check the
// order and the virtual time of every batch. Thread-safety: one owner thread.
//
// Batches (what "bulk where the trace allows" means): consecutive ops only, so trace order is
// kept exactly.
//   kAllocBulk  2+ consecutive order-0 allocations with the same gfp mask: alloc_pages_bulk()
//   kAlloc      one allocation (order > 0, or a lone order-0 one): alloc_pages()
//   kFreeBulk   1+ consecutive frees, any orders: one FreePagesBulk
// A batch holds at most max_batch ops (the daemon's --max_bulk_pages bounds both bulk calls).
//
// Pacing. pace = 0: no waiting; batches are as long as the rules above allow. pace > 0: op i is
// due at wall time time_us[i] / pace after the start (pace 2 replays twice as fast as the kernel
// ran). Before a batch the pacer sleeps until its first op is due; the batch then takes the
// consecutive ops that are due by now + slack (a replay that falls behind catches up in larger
// batches, it never skips). So every op is sent no earlier than its due time minus `slack_us`,
// and never before an op that precedes it in the trace.
#ifndef PHYSMEM_TRACE_REPLAY_PACER_H_
#define PHYSMEM_TRACE_REPLAY_PACER_H_

#include <cstdint>
#include <optional>

#include "trace/replay_plan.h"

namespace physmem::trace {

// Wall time for the pacer, in microseconds since an arbitrary start. The real one is
// steady_clock; tests pass a fake whose time moves only when the pacer sleeps.
class ReplayClock {
 public:
  virtual ~ReplayClock() = default;
  virtual double NowUs() = 0;
  virtual void SleepUs(double us) = 0;
  static ReplayClock& Real();
};

struct PaceOptions {
  double pace = 0;            // 0: full speed; else the trace's own rate times this factor
  uint32_t max_batch = 4096;  // ops in one bulk call
  double slack_us = 1000;     // pace > 0: ops due within this much of now go in the current batch
  bool bulk = true;           // false: one call per op (kAlloc, and kFreeBulk of one op)
};

enum class BatchKind : uint8_t { kAllocBulk, kAlloc, kFreeBulk };

struct ReplayBatch {
  BatchKind kind;
  uint32_t first;  // ops [first, first + count) of the plan
  uint32_t count;
  double issued_us;  // the clock when the batch was handed out (after any sleep)
};

class ReplayPacer {
 public:
  ReplayPacer(const ReplayPlan& plan, const PaceOptions& options, ReplayClock& clock);

  // The next batch, after sleeping until it is due; nullopt when every op has been handed out.
  std::optional<ReplayBatch> Next();
  // The wall time (µs after the start) at which op i is due; 0 at full speed.
  double DueUs(uint32_t i) const;
  double slept_us() const { return slept_us_; }

 private:
  bool Joins(const ReplayOp& first, const ReplayOp& op, uint32_t index, double horizon_us) const;

  const ReplayPlan& plan_;
  const PaceOptions options_;
  ReplayClock& clock_;
  const double start_us_;
  uint32_t next_ = 0;
  double slept_us_ = 0;
};

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_REPLAY_PACER_H_
