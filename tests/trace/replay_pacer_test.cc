#include "trace/replay_pacer.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/trace/sample_count.h"
#include "trace/replay_plan.h"
#include "trace/trace_reader.h"

namespace physmem::trace {
namespace {

// Virtual time: moves only when the pacer sleeps, so every assertion is about the schedule, not
// about how fast this machine is.
class FakeClock final : public ReplayClock {
 public:
  double NowUs() override { return now_us; }
  void SleepUs(double us) override {
    ++sleeps;
    now_us += us;
  }
  double now_us = 5e6;  // an arbitrary start: the pacer measures from its construction
  int sleeps = 0;
};

ReplayOp Alloc(uint32_t block, uint32_t time_us, uint8_t order = 0, gfp_t gfp = GFP_KERNEL) {
  return ReplayOp{block, gfp, time_us, order, ReplayOpKind::kAlloc, 0, 0};
}
ReplayOp Free(uint32_t block, uint32_t time_us, uint8_t order = 0) {
  return ReplayOp{block, 0, time_us, order, ReplayOpKind::kFree, -1, 0};
}

std::vector<ReplayBatch> Drain(ReplayPacer& pacer) {
  std::vector<ReplayBatch> out;
  while (std::optional<ReplayBatch> b = pacer.Next()) out.push_back(*b);
  return out;
}

const ReplayPlan& SamplePlan() {
  static const ReplayPlan* plan = [] {
    absl::StatusOr<Trace> t = ReadTraceFile(testing_trace::kSamplePath);
    return new ReplayPlan(BuildReplayPlan(*t));
  }();
  return *plan;
}

TEST(ReplayPacer, FullSpeedBatchesConsecutiveOrderZeroAllocationsOfOneMaskAndConsecutiveFrees) {
  ReplayPlan plan;
  plan.ops = {Alloc(0, 0),    Alloc(1, 1),    Alloc(2, 2), Alloc(3, 3, 0, GFP_ATOMIC),
              Alloc(4, 4, 2), Alloc(5, 5, 0), Free(0, 6),  Free(4, 7, 2),
              Free(1, 8),     Alloc(6, 9)};
  FakeClock clock;
  ReplayPacer pacer(plan, PaceOptions{}, clock);
  const std::vector<ReplayBatch> b = Drain(pacer);
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ(b[0].kind, BatchKind::kAllocBulk);  // three GFP_KERNEL order-0
  EXPECT_EQ(b[0].count, 3u);
  EXPECT_EQ(b[1].kind, BatchKind::kAlloc);     // another mask
  EXPECT_EQ(b[2].kind, BatchKind::kAlloc);     // order 2 never goes in bulk
  EXPECT_EQ(b[3].kind, BatchKind::kAlloc);     // a lone order-0 one
  EXPECT_EQ(b[4].kind, BatchKind::kFreeBulk);  // frees of any order together
  EXPECT_EQ(b[4].count, 3u);
  EXPECT_EQ(b[5].kind, BatchKind::kAlloc);
  EXPECT_EQ(clock.sleeps, 0);
}

TEST(ReplayPacer, BatchesCoverEveryOpOnceInTraceOrder) {
  FakeClock clock;
  PaceOptions o;
  o.max_batch = 64;
  ReplayPacer pacer(SamplePlan(), o, clock);
  uint32_t next = 0;
  for (const ReplayBatch& b : Drain(pacer)) {
    ASSERT_EQ(b.first, next);
    ASSERT_GE(b.count, 1u);
    ASSERT_LE(b.count, 64u);
    for (uint32_t i = b.first; i < b.first + b.count; ++i) {
      const ReplayOp& op = SamplePlan().ops[i];
      ASSERT_EQ(op.kind == ReplayOpKind::kFree, b.kind == BatchKind::kFreeBulk) << i;
      if (b.kind == BatchKind::kAllocBulk) {
        ASSERT_EQ(op.order, 0u);
        ASSERT_EQ(op.gfp, SamplePlan().ops[b.first].gfp);
      }
    }
    next = b.first + b.count;
  }
  EXPECT_EQ(next, SamplePlan().ops.size());
}

TEST(ReplayPacer, NoBulkSendsOneOpPerBatch) {
  FakeClock clock;
  PaceOptions o;
  o.bulk = false;
  ReplayPacer pacer(SamplePlan(), o, clock);
  EXPECT_EQ(Drain(pacer).size(), SamplePlan().ops.size());
}

// At pace p, op i is due at time_us / p of virtual time: no op is handed out before it is due
// (less the slack), and the replay ends when the last op is due, not earlier and not later.
void ExpectPaced(double pace) {
  FakeClock clock;
  PaceOptions o;
  o.pace = pace;
  o.slack_us = 500;
  const double start = clock.now_us;
  ReplayPacer pacer(SamplePlan(), o, clock);
  double last_issue = 0;
  while (std::optional<ReplayBatch> next = pacer.Next()) {
    const ReplayBatch& b = *next;
    EXPECT_GE(b.issued_us, last_issue);
    last_issue = b.issued_us;
    ASSERT_DOUBLE_EQ(b.issued_us, clock.now_us - start);
    for (uint32_t i = b.first; i < b.first + b.count; ++i) {
      ASSERT_LE(SamplePlan().ops[i].time_us / pace, b.issued_us + o.slack_us) << "op " << i << " sent early";
    }
    // The batch's first op was due when it went: the pacer slept exactly until then, or was late.
    ASSERT_GE(b.issued_us, SamplePlan().ops[b.first].time_us / pace - 1e-6);
  }
  const double last_due = SamplePlan().ops.back().time_us / pace;
  EXPECT_NEAR(clock.now_us - start, last_due, o.slack_us);
  EXPECT_NEAR(pacer.slept_us(), clock.now_us - start, 1e-3);
}

TEST(ReplayPacer, AtTheTracesOwnPaceTheReplayTakesTheTracesTime) { ExpectPaced(1.0); }
TEST(ReplayPacer, AtPaceFourTheReplayTakesAQuarterOfTheTracesTime) { ExpectPaced(4.0); }
TEST(ReplayPacer, AtPaceAQuarterTheReplayTakesFourTimesTheTracesTime) { ExpectPaced(0.25); }

TEST(ReplayPacer, AReplayThatFallsBehindCatchesUpInLargerBatchesWithoutSkipping) {
  ReplayPlan plan;
  for (uint32_t i = 0; i < 100; ++i) plan.ops.push_back(Alloc(i, i * 1000));  // one a millisecond
  FakeClock clock;
  PaceOptions o;
  o.pace = 1;
  o.slack_us = 0;
  ReplayPacer pacer(plan, o, clock);
  std::optional<ReplayBatch> first = pacer.Next();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->count, 1u);
  clock.now_us += 50'000;  // the first call took 50 ms: 50 more ops are due
  std::optional<ReplayBatch> second = pacer.Next();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->first, 1u);
  EXPECT_EQ(second->count, 50u);
  EXPECT_EQ(second->kind, BatchKind::kAllocBulk);
  EXPECT_EQ(clock.sleeps, 0);
}

}  // namespace
}  // namespace physmem::trace
