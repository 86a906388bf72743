#include "trace/replay_pacer.h"

#include <algorithm>
#include <chrono>
#include <thread>

namespace physmem::trace {
namespace {

class SteadyClock final : public ReplayClock {
 public:
  double NowUs() override {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  void SleepUs(double us) override {
    if (us > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(us));
  }
};

}  // namespace

ReplayClock& ReplayClock::Real() {
  static SteadyClock* clock = new SteadyClock();
  return *clock;
}

ReplayPacer::ReplayPacer(const ReplayPlan& plan, const PaceOptions& options, ReplayClock& clock)
    : plan_(plan), options_(options), clock_(clock), start_us_(clock.NowUs()) {}

double ReplayPacer::DueUs(uint32_t i) const { return options_.pace > 0 ? plan_.ops[i].time_us / options_.pace : 0; }

// Whether ops[index] may join a batch that starts with `first`: same kind of call, and due.
bool ReplayPacer::Joins(const ReplayOp& first, const ReplayOp& op, uint32_t index, double horizon_us) const {
  if (!options_.bulk || op.kind != first.kind) return false;
  if (options_.pace > 0 && DueUs(index) > horizon_us) return false;
  if (op.kind == ReplayOpKind::kFree) return true;
  return first.order == 0 && op.order == 0 && op.gfp == first.gfp;
}

std::optional<ReplayBatch> ReplayPacer::Next() {
  if (next_ >= plan_.ops.size()) return std::nullopt;
  double now = clock_.NowUs() - start_us_;
  if (options_.pace > 0 && DueUs(next_) > now) {
    const double wait = DueUs(next_) - now;
    clock_.SleepUs(wait);
    slept_us_ += wait;
    now = clock_.NowUs() - start_us_;
  }
  const double horizon = now + options_.slack_us;
  const ReplayOp& first = plan_.ops[next_];
  const uint32_t limit = static_cast<uint32_t>(
      std::min<uint64_t>(plan_.ops.size(), uint64_t{next_} + std::max<uint32_t>(options_.max_batch, 1)));
  uint32_t end = next_ + 1;
  while (end < limit && Joins(first, plan_.ops[end], end, horizon)) ++end;
  ReplayBatch batch;
  batch.first = next_;
  batch.count = end - next_;
  batch.issued_us = now;
  if (first.kind == ReplayOpKind::kFree) {
    batch.kind = BatchKind::kFreeBulk;
  } else {
    batch.kind = batch.count > 1 ? BatchKind::kAllocBulk : BatchKind::kAlloc;
  }
  next_ = end;
  return batch;
}

}  // namespace physmem::trace
