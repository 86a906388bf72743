// Measures crash recovery of a full 1 GiB machine (x86_64, --mem_mb=1024) in order-0 pages:
// fill it over the real API, kill -9 the daemon, restart, and print what recovery took (the
// daemon's event=recovered line). Performance is measured, not asserted (docs/recovery.md has
// the figures); what is asserted is that everything came back.
//   1. straight from the segment the bulk allocations were journaled into;
//   2. from a snapshot (after a compaction);
//   3. the worst case for the journal: one record per page (262144 single AllocPages records),
//      written with the journal API directly (262144 RPCs would take a minute), then recovered
//      by the real daemon.
// The lease that owns everything lives a day: a sanitized build takes minutes to fill, restart
// and check the machine. Waits (a restart serving, a compaction) are scaled to the build.
#include <unistd.h>

#include <regex>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/journal.h"
#include "server/recovery.h"
#include "tests/daemon_process.h"

namespace physmem {
namespace {

using testing::DaemonProcess;
namespace v1 = ::physmem::v1;

constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;

std::string Field(const std::string& log, const std::string& key) {
  std::smatch m;
  const std::regex re("event=recovered .*\\b" + key + "=([^ \\n]+)");
  return std::regex_search(log, m, re) ? m[1].str() : "";
}

class RecoveryTime : public ::testing::Test {
 protected:
  void SetUp() override {
    arena_ = "/dev/shm/physmemd-recovery-time-" + std::to_string(::getpid());
    Cleanup();
  }
  void TearDown() override { Cleanup(); }
  void Cleanup() {
    testing::RemoveShmFiles(arena_);
  }
  std::vector<std::string> Args(const std::string& compact = "1073741824") {
    return {"--arena_path=" + arena_, "--mem_mb=1024", "--min_free_kbytes=128", "--journal_compact_bytes=" + compact,
            "--max_alloc_wait_ms=0",
            // One identity fills all of RAM here, ZONE_DMA included (its default cap is 1/8).
            "--identity_dma_pages=4096"};
  }
  // Restarts after kill -9 and returns the recovered line's fields of interest.
  std::string KillAndRecover(std::unique_ptr<DaemonProcess>& d, const std::vector<std::string>& args,
                             uint64_t want_pages) {
    d->Kill(SIGKILL);
    EXPECT_TRUE(d->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10))).has_value());
    const auto t0 = std::chrono::steady_clock::now();
    d = std::make_unique<DaemonProcess>(args);
    EXPECT_TRUE(d->Start()) << d->log();
    const double serving_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const std::string log = d->log();
    EXPECT_EQ(Field(log, "pages"), std::to_string(want_pages)) << log;
    EXPECT_EQ(Field(log, "anomalies"), "0");
    return "recovery ms=" + Field(log, "ms") + " (journal read " + Field(log, "read_ms") + " ms, " +
           Field(log, "records") + " records, " + Field(log, "journal_bytes") + " bytes, snapshot " +
           Field(log, "snapshot") + "); exec to serving " + std::to_string(static_cast<int>(serving_ms)) + " ms";
  }
  std::string arena_;
};

TEST_F(RecoveryTime, OneGibFullOfOrderZeroPages) {
  auto d = std::make_unique<DaemonProcess>(Args());
  ASSERT_TRUE(d->Start()) << d->log();
  auto stub = v1::PhysMem::NewStub(grpc::CreateChannel(d->unix_target(), grpc::InsecureChannelCredentials()));
  uint64_t lease = 0;
  {
    v1::CreateLeaseRequest req;
    req.set_ttl_ms(kDayMs);
    v1::CreateLeaseResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->CreateLease(&ctx, req, &resp).ok());
    lease = resp.lease_id();
  }
  uint64_t pages = 0;
  for (;;) {
    v1::AllocPagesBulkRequest req;
    req.set_lease_id(lease);
    req.set_gfp("GFP_ATOMIC");
    req.set_count(65536);
    v1::AllocPagesBulkResponse resp;
    grpc::ClientContext ctx;
    if (!stub->AllocPagesBulk(&ctx, req, &resp).ok()) break;
    pages += resp.pfn_size();
  }
  v1::ValidateResponse v;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Validate(&ctx, v1::ValidateRequest(), &v).ok());
  }
  EXPECT_GT(pages, v.total_pages() * 99 / 100);
  std::printf("filled %lu of %lu pages (%.2f%%)\n", pages, v.total_pages(), 100.0 * pages / v.total_pages());
  std::printf("from the bulk records: %s\n", KillAndRecover(d, Args(), pages).c_str());
  // A tiny threshold makes the restarted daemon compact at once; the next recovery reads the snapshot.
  const std::vector<std::string> compacting = Args("4096");
  std::printf("again (journal as the restart left it): %s\n", KillAndRecover(d, compacting, pages).c_str());
  ASSERT_TRUE(d->WaitForLog("event=journal_compacted", 1, std::chrono::seconds(20)));
  std::printf("from a snapshot: %s\n", KillAndRecover(d, Args(), pages).c_str());
}

TEST_F(RecoveryTime, OneGibFromOneRecordPerPage) {
  // The daemon's fingerprint of the x86_64 target at 1 GiB, and a lease that owns every page.
  absl::StatusOr<Target> t = BuiltinTarget("x86_64", uint64_t{1024} << 20);
  ASSERT_TRUE(t.ok());
  JournalOptions o;
  o.path = arena_ + ".journal";
  o.compact_bytes = uint64_t{1} << 30;
  o.target_fingerprint = TargetFingerprint(*t);
  std::vector<uint64_t> pfns;
  // Every page the allocator manages: the RAM less the x86 boot's reserved first megabyte.
  for (const RamRange& r : t->ManagedRam()) {
    for (uint64_t p = r.start >> 12; p < r.end() >> 12; ++p) pfns.push_back(p);
  }
  {
    JournalState st;
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(o, &st);
    ASSERT_TRUE(j.ok());
    ASSERT_TRUE((*j)->Start(uint64_t{5} << 32, 2).ok());
    const uint64_t lease = (uint64_t{5} << 32) | 1;
    // On the daemon's lease clock, CLOCK_MONOTONIC (steady_clock), as the daemon writes them.
    const int64_t deadline = std::chrono::steady_clock::now().time_since_epoch().count() + kDayMs * 1000000;
    ASSERT_TRUE((*j)->LeaseCreated(lease, "uid:" + std::to_string(::getuid()), "full", kDayMs, 0, deadline).ok());
    for (uint64_t pfn : pfns) {
      const JournalEntry e{pfn, 0, false, {}};
      ASSERT_TRUE((*j)->Allocated(lease, {&e, 1}).ok());
    }
  }
  auto d = std::make_unique<DaemonProcess>(Args());
  ASSERT_TRUE(d->Start()) << d->log();
  EXPECT_EQ(Field(d->log(), "pages"), std::to_string(pfns.size()));
  std::printf("one record per page (%zu records): recovery ms=%s (journal read %s ms)\n", pfns.size(),
              Field(d->log(), "ms").c_str(), Field(d->log(), "read_ms").c_str());
  auto stub = v1::PhysMem::NewStub(grpc::CreateChannel(d->unix_target(), grpc::InsecureChannelCredentials()));
  v1::ValidateResponse v;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->Validate(&ctx, v1::ValidateRequest(), &v).ok());
  EXPECT_EQ(v.free_pages(), 0u);
  EXPECT_EQ(v.allocated_pages(), v.total_pages());
}

}  // namespace
}  // namespace physmem
