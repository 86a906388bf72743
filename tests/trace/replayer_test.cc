#include "trace/replayer.h"

#include <cstdint>
#include <vector>

#include "allocator/target.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/trace/sample_count.h"
#include "trace/replay_plan.h"
#include "trace/trace_reader.h"

namespace physmem::trace {
namespace {

ReplayConfig Config(uint64_t mem_mb, bool pcp = true, bool per_cpu = false) {
  ReplayConfig c;
  c.allocator.target = *BuiltinTarget("x86_64", mem_mb << 20);
  c.allocator.arena_backing = ArenaOptions::Backing::kOrdinary;
  c.allocator.pcp_enabled = pcp;
  c.per_cpu_threads = per_cpu;
  c.samples = 8;
  return c;
}

const ReplayPlan& SamplePlan() {
  static const ReplayPlan* plan = [] {
    absl::StatusOr<Trace> t = ReadTraceFile(testing_trace::kSamplePath);
    return new ReplayPlan(BuildReplayPlan(*t));
  }();
  return *plan;
}

struct PlanTotals {
  uint64_t allocs = 0, frees = 0;
};
PlanTotals Totals(const ReplayPlan& plan) {
  PlanTotals t;
  for (const ReplayOp& op : plan.ops) (op.kind == ReplayOpKind::kAlloc ? t.allocs : t.frees)++;
  return t;
}

// Books that must balance whatever the machine: every op is accounted for exactly once.
void ExpectBalanced(const ReplayPlan& plan, const ReplayResult& r) {
  const PlanTotals t = Totals(plan);
  const ReplayCounts& c = r.counts;
  EXPECT_EQ(c.allocs + c.alloc_failures, t.allocs);
  EXPECT_EQ(c.frees + c.free_of_refused + c.free_errors, t.frees);
  EXPECT_EQ(c.free_errors, 0u) << c.first_free_error;
  EXPECT_EQ(r.blocks_allocated_at_end, c.allocs - c.frees);
  uint64_t by_reason = 0;
  for (const auto& [reason, n] : c.failures_by_reason) by_reason += n;
  EXPECT_EQ(by_reason, c.alloc_failures);
  uint64_t by_order = 0;
  for (uint64_t n : c.allocs_by_order) by_order += n;
  EXPECT_EQ(by_order, t.allocs);
  ASSERT_FALSE(r.samples.empty());
  EXPECT_EQ(r.samples.back().ops_done, plan.ops.size());
}

TEST(Replayer, SampleOnARoomyMachineGrantsEveryAllocation) {
  absl::StatusOr<ReplayResult> r = Replay(SamplePlan(), Config(4096));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBalanced(SamplePlan(), *r);
  EXPECT_EQ(r->counts.alloc_failures, 0u);
  EXPECT_EQ(r->counts.frees, Totals(SamplePlan()).frees);
  EXPECT_EQ(r->samples.size(), 8u);
  EXPECT_THAT(r->final_buddyinfo, ::testing::HasSubstr("zone   Normal"));
}

TEST(Replayer, SampleOnASmallMachineRefusesSomeWithReasons) {
  absl::StatusOr<ReplayResult> r = Replay(SamplePlan(), Config(64));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBalanced(SamplePlan(), *r);
  EXPECT_GT(r->counts.alloc_failures, 0u);
  EXPECT_GT(r->counts.free_of_refused, 0u);
  for (const auto& [reason, n] : r->counts.failures_by_reason) {
    EXPECT_THAT(reason, ::testing::AnyOf("below_watermark", "fragmented", "exhausted"));
  }
}

TEST(Replayer, PerCpuThreadsReplayTheSameOpsAndBalance) {
  absl::StatusOr<ReplayResult> r = Replay(SamplePlan(), Config(4096, true, true));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBalanced(SamplePlan(), *r);
  EXPECT_EQ(r->threads, SamplePlan().nr_cpus);
  EXPECT_EQ(r->counts.alloc_failures, 0u);
  EXPECT_THAT(r->cpu_mapping, ::testing::HasSubstr("pinned"));
}

TEST(Replayer, PerCpuListsOffStillBalance) {
  absl::StatusOr<ReplayResult> r = Replay(SamplePlan(), Config(4096, false));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBalanced(SamplePlan(), *r);
  EXPECT_FALSE(r->pcp_active);
}

TEST(Replayer, OrdersAboveTheTargetMaximumAreRefusedByReason) {
  Trace t;
  PageEvent e;
  e.type = PageEventType::kAlloc;
  e.pfn = 0x400;
  e.order = 10;
  e.gfp = GFP_KERNEL;
  e.migratetype = 0;
  t.events = {e};
  const ReplayPlan plan = BuildReplayPlan(t);
  ReplayConfig c = Config(512);
  c.allocator.target.max_page_order = 9;
  absl::StatusOr<ReplayResult> r = Replay(plan, c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->counts.failures_by_reason.at("order_above_target_max"), 1u);
}

TEST(Replayer, InvalidGfpMasksAreRefusedByReason) {
  Trace t;
  PageEvent e;
  e.type = PageEventType::kAlloc;
  e.pfn = 0x400;
  e.gfp = GFP_KERNEL | __GFP_DMA | __GFP_DMA32;
  t.events = {e};
  absl::StatusOr<ReplayResult> r = Replay(BuildReplayPlan(t), Config(512));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->counts.failures_by_reason.at("invalid_gfp"), 1u);
}

TEST(Replayer, ABadConfigurationNamesItself) {
  ReplayConfig c = Config(512);
  c.name = "broken";
  c.allocator.target.page_size = 3;
  absl::StatusOr<ReplayResult> r = Replay(SamplePlan(), c);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("\"broken\""));
}

}  // namespace
}  // namespace physmem::trace
