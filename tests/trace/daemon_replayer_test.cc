#include "trace/daemon_replayer.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "allocator/target.h"
#include "clients/physmem_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/trace/sample_count.h"
#include "trace/replay_plan.h"
#include "trace/replay_report.h"
#include "trace/replayer.h"
#include "trace/trace_reader.h"

namespace physmem::trace {
namespace {

using ::physmem::testing::DaemonProcess;

const ReplayPlan& SamplePlan() {
  static const ReplayPlan* plan = [] {
    absl::StatusOr<Trace> t = ReadTraceFile(testing_trace::kSamplePath);
    return new ReplayPlan(BuildReplayPlan(*t));
  }();
  return *plan;
}

// The pages the trace leaves allocated, counted from the plan's ops alone (not by a replayer):
// blocks allocated and never freed, 2^order pages each.
uint64_t PagesLiveAtEnd(const ReplayPlan& plan) {
  std::map<uint32_t, unsigned> live;
  for (const ReplayOp& op : plan.ops) {
    if (op.kind == ReplayOpKind::kAlloc) {
      live[op.block] = op.order;
    } else {
      live.erase(op.block);
    }
  }
  uint64_t pages = 0;
  for (const auto& [block, order] : live) pages += uint64_t{1} << order;
  return pages;
}

ReplayConfig InProcess(uint64_t mem_mb) {
  ReplayConfig c;
  c.allocator.target = *BuiltinTarget("x86_64", mem_mb << 20);
  c.allocator.arena_backing = ArenaOptions::Backing::kOrdinary;
  c.samples = 4;
  return c;
}

DaemonReplayOptions OnDaemon(const DaemonProcess& daemon) {
  DaemonReplayOptions o;
  o.address = daemon.unix_target();
  o.samples = 4;
  // A sanitized daemon on a loaded machine may answer slowly: the lease must not expire under
  // the replay, and no successful call may pass its deadline.
  o.lease_ttl_ms = 60000;
  o.alloc_timeout_ms = 60000;
  return o;
}

void ExpectBalanced(const ReplayPlan& plan, const ReplayResult& r) {
  uint64_t allocs = 0, frees = 0;
  for (const ReplayOp& op : plan.ops) (op.kind == ReplayOpKind::kAlloc ? allocs : frees)++;
  const ReplayCounts& c = r.counts;
  EXPECT_EQ(c.allocs + c.alloc_failures, allocs);
  EXPECT_EQ(c.frees + c.free_of_refused, frees);
  EXPECT_EQ(c.free_errors, 0u) << c.first_free_error;
  EXPECT_EQ(r.blocks_allocated_at_end, c.allocs - c.frees);
  uint64_t by_reason = 0;
  for (const auto& [reason, n] : c.failures_by_reason) by_reason += n;
  EXPECT_EQ(by_reason, c.alloc_failures);
  ASSERT_FALSE(r.samples.empty());
  EXPECT_EQ(r.samples.back().ops_done, plan.ops.size());
}

class DaemonReplayerTest : public ::testing::Test {
 protected:
  void Start(uint64_t mem_mb) {
    daemon_ = std::make_unique<DaemonProcess>(
        std::vector<std::string>{"--target=x86_64", "--mem_mb=" + std::to_string(mem_mb), "--max_alloc_wait_ms=0"});
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  }
  void TearDown() override {
    if (HasFailure() && daemon_) std::fprintf(stderr, "physmemd log:\n%s\n", daemon_->log().c_str());
  }
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(DaemonReplayerTest, SampleOverGrpcCountsWhatTheInProcessReplayCountsAndTheLeaseHoldsWhatTheTraceLeft) {
  ASSERT_NO_FATAL_FAILURE(Start(4096));
  DaemonReplayOptions o = OnDaemon(*daemon_);
  o.keep_lease = true;  // to ask the daemon afterwards what the lease holds
  absl::StatusOr<ReplayResult> remote = ReplayOnDaemon(SamplePlan(), o);
  ASSERT_TRUE(remote.ok()) << remote.status();
  absl::StatusOr<ReplayResult> local = Replay(SamplePlan(), InProcess(4096));
  ASSERT_TRUE(local.ok()) << local.status();
  ExpectBalanced(SamplePlan(), *remote);

  // On a machine with room for everything, both grant every allocation and replay every free.
  EXPECT_EQ(remote->counts.alloc_failures, 0u);
  EXPECT_EQ(local->counts.alloc_failures, 0u);
  EXPECT_EQ(remote->counts.allocs, local->counts.allocs);
  EXPECT_EQ(remote->counts.frees, local->counts.frees);
  EXPECT_EQ(remote->counts.allocs_by_order, local->counts.allocs_by_order);
  EXPECT_EQ(remote->counts.frees_by_order, local->counts.frees_by_order);
  EXPECT_EQ(remote->counts.allocs_by_gfp_class, local->counts.allocs_by_gfp_class);
  EXPECT_EQ(remote->counts.allocs_by_migratetype, local->counts.allocs_by_migratetype);
  EXPECT_EQ(remote->blocks_allocated_at_end, local->blocks_allocated_at_end);
  // The label floors the target's RAM: 4 GiB of e820 RAM less page 0 (trim_bios_range()).
  EXPECT_EQ(remote->target, "x86_64 4095 MiB (physmemd)");
  EXPECT_EQ(remote->mode, "daemon");

  // The lease ends holding exactly the pages the trace left allocated.
  const uint64_t live = PagesLiveAtEnd(SamplePlan());
  EXPECT_GT(live, 0u);
  EXPECT_EQ(remote->daemon.pages_allocated_at_end, live);
  EXPECT_EQ(remote->daemon.lease_pages_at_end, live);
  client::ClientOptions copts;
  copts.target = daemon_->unix_target();
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Connect(copts);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::LeaseInfo> lease = (*c)->GetLease(remote->daemon.lease_id);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->pages_held(), live);
  absl::StatusOr<v1::ValidateResponse> census = (*c)->Validate();
  ASSERT_TRUE(census.ok()) << census.status();
  EXPECT_EQ(census->allocated_pages(), live);

  // Bulk where the trace allows: far fewer calls than ops, and each kind used.
  const DaemonReplayInfo& d = remote->daemon;
  EXPECT_GT(d.alloc_bulk_calls, 0u);
  EXPECT_GT(d.free_bulk_calls, 0u);
  EXPECT_LT(d.alloc_bulk_calls + d.alloc_calls + d.free_bulk_calls, SamplePlan().ops.size() / 2);
  EXPECT_THAT(remote->final_buddyinfo, ::testing::HasSubstr("zone   Normal"));
  EXPECT_THAT(remote->final_pagetypeinfo, ::testing::HasSubstr("Page block order"));
}

TEST_F(DaemonReplayerTest, ALeaseNotKeptIsRevokedAndFreesEverything) {
  ASSERT_NO_FATAL_FAILURE(Start(4096));
  absl::StatusOr<ReplayResult> r = ReplayOnDaemon(SamplePlan(), OnDaemon(*daemon_));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->daemon.lease_pages_at_end, PagesLiveAtEnd(SamplePlan()));
  client::ClientOptions copts;
  copts.target = daemon_->unix_target();
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Connect(copts);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::ValidateResponse> census = (*c)->Validate();
  ASSERT_TRUE(census.ok()) << census.status();
  EXPECT_EQ(census->allocated_pages(), 0u);
  EXPECT_EQ(census->leases(), 0u);
}

TEST_F(DaemonReplayerTest, ASmallMachineRefusesWithReasonsAndTheLeaseStillMatchesTheBook) {
  ASSERT_NO_FATAL_FAILURE(Start(64));
  // The sample's first 20000 ops: enough to fill 64 MiB, few enough that a sanitized build's
  // one call per refusal stays short.
  ReplayPlan plan = SamplePlan();
  plan.ops.resize(20000);
  absl::StatusOr<ReplayResult> r = ReplayOnDaemon(plan, OnDaemon(*daemon_));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBalanced(plan, *r);
  EXPECT_GT(r->counts.alloc_failures, 0u);
  for (const auto& [reason, n] : r->counts.failures_by_reason) {
    EXPECT_THAT(reason, ::testing::AnyOf("below_watermark", "fragmented", "exhausted")) << n;
  }
  EXPECT_EQ(r->daemon.lease_pages_at_end, r->daemon.pages_allocated_at_end);
}

TEST_F(DaemonReplayerTest, InvalidMasksAreRefusedWithoutACallAndOrderTenIsGranted) {
  ASSERT_NO_FATAL_FAILURE(Start(256));
  Trace t;
  PageEvent big;
  big.type = PageEventType::kAlloc;
  big.pfn = 0x400;
  big.order = 10;
  big.gfp = GFP_KERNEL;
  PageEvent bad = big;
  bad.pfn = 0x800;
  bad.order = 0;
  bad.gfp = GFP_KERNEL | __GFP_DMA | __GFP_DMA32;
  t.events = {big, bad};
  ReplayPlan plan = BuildReplayPlan(t);
  absl::StatusOr<ReplayResult> r = ReplayOnDaemon(plan, OnDaemon(*daemon_));
  ASSERT_TRUE(r.ok()) << r.status();
  // x86_64's MAX_PAGE_ORDER is 10: order 10 is allowed and granted; the mask is not.
  EXPECT_EQ(r->counts.allocs, 1u);
  EXPECT_EQ(r->counts.failures_by_reason.at("invalid_gfp"), 1u);
  EXPECT_EQ(r->daemon.alloc_calls, 1u);
}

// Virtual time for a paced replay: moves only when the pacer sleeps, so the test checks the
// schedule the daemon replay keeps, not this machine's speed.
class SleepOnlyClock final : public ReplayClock {
 public:
  double NowUs() override { return now_us; }
  void SleepUs(double us) override { now_us += us; }
  double now_us = 0;
};

TEST_F(DaemonReplayerTest, APacedReplayWaitsUntilEachOpIsDueAtTheTracesRateTimesThePace) {
  ASSERT_NO_FATAL_FAILURE(Start(4096));
  ReplayPlan plan = SamplePlan();
  plan.ops.resize(20000);
  SleepOnlyClock clock;
  DaemonReplayOptions o = OnDaemon(*daemon_);
  o.pace.pace = 4;
  o.clock = &clock;
  absl::StatusOr<ReplayResult> r = ReplayOnDaemon(plan, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBalanced(plan, *r);
  EXPECT_EQ(r->counts.alloc_failures, 0u);
  EXPECT_EQ(r->daemon.pace, 4);
  // The last op was sent no earlier than its trace time / 4, less the pacer's 1 ms slack, and
  // the replay never slept past it: the daemon saw the trace's own rate, four times faster.
  const double last_due_s = plan.ops.back().time_us / 1e6 / 4;
  ASSERT_GT(last_due_s, 0.01) << "the plan's ops span some trace time";
  EXPECT_GE(r->daemon.slept_seconds, last_due_s - 0.001);
  EXPECT_LE(r->daemon.slept_seconds, last_due_s + 1e-9);
  EXPECT_DOUBLE_EQ(clock.now_us / 1e6, r->daemon.slept_seconds);

  // The report's "daemon" object carries these figures under the names docs/trace.md lists.
  const std::string json = FormatReportJson(TraceReadStats{}, plan, {*r});
  EXPECT_THAT(json, ::testing::HasSubstr("\"mode\":\"daemon\""));
  EXPECT_THAT(json, ::testing::HasSubstr("\"daemon\":{\"address\":\"" + daemon_->unix_target() + "\""));
  EXPECT_THAT(json, ::testing::HasSubstr("\"pace\":4"));
  for (const char* key : {"lease_id", "alloc_bulk_calls", "bulk_pages", "bulk_short", "alloc_calls", "free_bulk_calls",
                          "refusals_without_call", "pages_allocated_at_end", "lease_pages_at_end", "lease_kept",
                          "slept_seconds"}) {
    EXPECT_THAT(json, ::testing::HasSubstr(absl::StrCat("\"", key, "\":"))) << key;
  }
}

TEST_F(DaemonReplayerTest, AnUnreachableDaemonIsNamedInTheError) {
  DaemonReplayOptions o;
  o.address = "unix:///nonexistent/physmemd.sock";
  absl::StatusOr<ReplayResult> r = ReplayOnDaemon(SamplePlan(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("/nonexistent/physmemd.sock"));
}

TEST(ReasonFromExhausted, ReadsTheDaemonsZonesTriedExplanation) {
  const absl::Status fragmented = absl::ResourceExhaustedError(
      "no free order-3 block for GFP_KERNEL: zones tried: Normal (free 900, largest free order 2, min 128, "
      "lowmem_reserve 0), DMA32 (free 100, largest free order 1, min 10, lowmem_reserve 0)");
  EXPECT_EQ(ReasonFromExhausted(fragmented, 3), "fragmented");
  EXPECT_EQ(ReasonFromExhausted(fragmented, 2), "below_watermark");
  EXPECT_EQ(ReasonFromExhausted(fragmented, 10), "exhausted");
  EXPECT_EQ(ReasonFromExhausted(absl::ResourceExhaustedError("lease 7 page quota: it holds 3 of its 4 pages"), 0),
            "lease_quota");
  EXPECT_EQ(ReasonFromExhausted(absl::ResourceExhaustedError("something else"), 0), "resource_exhausted");
}

}  // namespace
}  // namespace physmem::trace
