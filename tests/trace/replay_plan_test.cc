#include "trace/replay_plan.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/trace/sample_count.h"
#include "trace/trace_reader.h"

namespace physmem::trace {
namespace {

PageEvent Alloc(uint64_t pfn, uint8_t order, int8_t mt = 0, gfp_t gfp = GFP_KERNEL) {
  PageEvent e;
  e.type = PageEventType::kAlloc;
  e.pfn = pfn;
  e.order = order;
  e.migratetype = mt;
  e.gfp = gfp;
  return e;
}
PageEvent Free(uint64_t pfn, uint8_t order, PageEventType type = PageEventType::kFree) {
  PageEvent e;
  e.type = type;
  e.pfn = pfn;
  e.order = order;
  return e;
}

Trace Make(std::vector<PageEvent> events) {
  Trace t;
  for (const PageEvent& e : events) ++t.stats.events[static_cast<int>(e.type)];
  t.events = std::move(events);
  return t;
}

TEST(ReplayPlan, AFreeEndsTheAllocationOfItsPfn) {
  const ReplayPlan plan = BuildReplayPlan(Make({Alloc(0x100, 1), Free(0x100, 1)}));
  ASSERT_EQ(plan.ops.size(), 2u);
  EXPECT_EQ(plan.ops[0].kind, ReplayOpKind::kAlloc);
  EXPECT_EQ(plan.ops[1].kind, ReplayOpKind::kFree);
  EXPECT_EQ(plan.ops[0].block, plan.ops[1].block);
  EXPECT_EQ(plan.ops[1].order, 1);
  EXPECT_EQ(plan.live_at_end, 0u);
  EXPECT_EQ(plan.perf.alloc_freed, 1u);
}

TEST(ReplayPlan, APfnReusedAfterItsFreeIsANewBlock) {
  const ReplayPlan plan = BuildReplayPlan(Make({Alloc(0x100, 0), Free(0x100, 0), Alloc(0x100, 0), Free(0x100, 0)}));
  ASSERT_EQ(plan.ops.size(), 4u);
  EXPECT_EQ(plan.nr_blocks, 2u);
  EXPECT_NE(plan.ops[0].block, plan.ops[2].block);
  EXPECT_EQ(plan.ops[2].block, plan.ops[3].block);
}

TEST(ReplayPlan, FreesOfPagesAllocatedBeforeTheTraceAreCountedAndSkipped) {
  const ReplayPlan plan = BuildReplayPlan(Make({Free(0x200, 0), Alloc(0x100, 0)}));
  EXPECT_EQ(plan.free_only, 1u);
  EXPECT_EQ(plan.perf.free_only, 1u);
  EXPECT_EQ(plan.ops.size(), 1u);
  EXPECT_EQ(plan.live_at_end, 1u);
}

TEST(ReplayPlan, FreeBatchedIsNeverAFree) {
  const ReplayPlan plan = BuildReplayPlan(
      Make({Alloc(0x100, 0), Free(0x100, 0), Free(0x100, 0, PageEventType::kFreeBatched), Free(0x300, 0, PageEventType::kPcpDrain)}));
  EXPECT_EQ(plan.ops.size(), 2u);
  EXPECT_EQ(plan.free_batched, 1u);
  EXPECT_EQ(plan.reference_events, 1u);
  EXPECT_EQ(plan.free_only, 0u);
  EXPECT_EQ(plan.perf.free_requests, 1u);
}

TEST(ReplayPlan, AFreeOfAnotherOrderIsNotReplayedAndEndsTheMatch) {
  const ReplayPlan plan = BuildReplayPlan(Make({Alloc(0x100, 2), Free(0x100, 1), Free(0x102, 1)}));
  EXPECT_EQ(plan.free_order_mismatch, 1u);
  EXPECT_EQ(plan.free_only, 1u);
  EXPECT_EQ(plan.ops.size(), 1u);
}

TEST(ReplayPlan, KernelFailuresAreCountedNotReplayed) {
  PageEvent failed = Alloc(kFailedPfn, 4);
  const ReplayPlan plan = BuildReplayPlan(Make({failed, Alloc(0x100, 0)}));
  EXPECT_EQ(plan.failed_allocs, 1u);
  EXPECT_EQ(plan.perf.failures, 1u);
  EXPECT_EQ(plan.perf.failure_bytes, 4096u << 4);
  EXPECT_EQ(plan.perf.alloc_requests, 2u);
  EXPECT_EQ(plan.ops.size(), 1u);
  // perf's order table counts successful allocations only.
  EXPECT_EQ(plan.perf.order_migratetype[4][0], 0u);
  EXPECT_EQ(plan.perf.order_migratetype[0][0], 1u);
}

TEST(ReplayPlan, AnAllocationOfALivePfnLeavesTheOldBlockAllocated) {
  const ReplayPlan plan = BuildReplayPlan(Make({Alloc(0x100, 0), Alloc(0x100, 0), Free(0x100, 0)}));
  EXPECT_EQ(plan.realloc_of_live_pfn, 1u);
  ASSERT_EQ(plan.ops.size(), 3u);
  EXPECT_EQ(plan.ops[2].block, plan.ops[1].block);
}

// The committed recording: the plan's books against a count made on the raw text.
TEST(ReplayPlan, CommittedSampleBalancesAgainstAnIndependentCount) {
  const testing_trace::SampleCount c = testing_trace::CountSample(testing_trace::kSamplePath);
  absl::StatusOr<Trace> t = ReadTraceFile(testing_trace::kSamplePath);
  ASSERT_TRUE(t.ok()) << t.status();
  const ReplayPlan plan = BuildReplayPlan(*t);
  uint64_t alloc_ops = 0, free_ops = 0;
  for (const ReplayOp& op : plan.ops) (op.kind == ReplayOpKind::kAlloc ? alloc_ops : free_ops)++;
  EXPECT_EQ(alloc_ops + plan.failed_allocs, c.alloc);
  EXPECT_EQ(plan.failed_allocs, c.alloc_failed);
  EXPECT_EQ(free_ops + plan.free_only + plan.free_order_mismatch, c.free);
  EXPECT_EQ(plan.perf.alloc_freed, c.free_matched);
  EXPECT_EQ(plan.perf.free_only, c.free_unmatched);
  EXPECT_EQ(plan.free_batched, c.free_batched);
  EXPECT_EQ(plan.nr_cpus, c.cpus);
  EXPECT_EQ(plan.nr_blocks, alloc_ops);
}

}  // namespace
}  // namespace physmem::trace
