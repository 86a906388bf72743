// The run form of the bulk calls (issue #15 part 1) against the real daemon: AllocPagesBulk with
// `runs` describes every page as the per-page arrays would (pfn, zone, phys, virt, arena offset
// for lowmem and highmem), FreePagesBulk with runs frees exactly the pages named, and every bad
// run (empty, overflowing, overlapping, outside RAM, a free page, another lease's page, a page of
// a larger block, a kmap()ed page, runs mixed with pfns, too many pages) is refused as a whole
// with a precise status, the census and the lease's pages as they were.
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using Ctx = testing::Deadline;  // a call's deadline: 5 s (scaled to the build) unless given

class BulkRuns : public testing::DaemonStubTest {
 protected:
  // i386 with 1 GiB: lowmem ends at MAXMEM (887.99 MiB), HighMem above it.
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=1024"})); }

  v1::AllocPagesBulkResponse AllocRuns(uint64_t lease, const std::string& gfp, uint32_t count) {
    v1::AllocPagesBulkRequest req;
    req.set_lease_id(lease);
    req.set_gfp(gfp);
    req.set_count(count);
    req.set_runs(true);
    v1::AllocPagesBulkResponse resp;
    Ctx ctx;
    const grpc::Status s = stub_->AllocPagesBulk(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  grpc::Status FreeRuns(uint64_t lease, const std::vector<std::pair<uint64_t, uint32_t>>& runs,
                        v1::FreePagesBulkResponse* resp) {
    v1::FreePagesBulkRequest req;
    req.set_lease_id(lease);
    for (const auto& [pfn, count] : runs) {
      v1::PageRun* r = req.add_run();
      r->set_pfn(pfn);
      r->set_count(count);
    }
    Ctx ctx;
    return stub_->FreePagesBulk(&ctx, req, resp);
  }

  uint64_t PagesHeld(uint64_t lease) {
    v1::GetLeaseRequest req;
    req.set_lease_id(lease);
    v1::LeaseInfo info;
    Ctx ctx;
    const grpc::Status s = stub_->GetLease(&ctx, req, &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return info.pages_held();
  }

  uint64_t PageAddress(uint64_t lease, uint64_t pfn) {
    v1::PageAddressRequest req;
    req.set_lease_id(lease);
    req.set_pfn(pfn);
    v1::PageAddressResponse resp;
    Ctx ctx;
    const grpc::Status s = stub_->PageAddress(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.virt_addr();
  }

  // Every page of every run against the daemon's per-page answers; returns the pfns.
  std::vector<uint64_t> CheckRuns(uint64_t lease, const v1::AllocPagesBulkResponse& r, v1::Zone zone) {
    EXPECT_EQ(r.pfn_size(), 0) << "runs asked for: the per-page arrays stay empty";
    EXPECT_EQ(r.page_shift(), 12u);
    std::vector<uint64_t> pfns;
    for (const v1::PageRun& run : r.run()) {
      EXPECT_GE(run.count(), 1u);
      EXPECT_EQ(run.zone(), zone);
      for (uint32_t i = 0; i < run.count(); ++i) {
        const uint64_t pfn = run.pfn() + i;
        pfns.push_back(pfn);
        EXPECT_EQ(run.phys_addr() + (uint64_t{i} << 12), pfn << 12);
        const uint64_t virt = run.virt_addr() == 0 ? 0 : run.virt_addr() + (uint64_t{i} << 12);
        EXPECT_EQ(virt, PageAddress(lease, pfn)) << "pfn " << pfn;
      }
    }
    EXPECT_EQ(std::set<uint64_t>(pfns.begin(), pfns.end()).size(), pfns.size()) << "a page in two runs";
    return pfns;
  }

  // The refusal: its code, a message naming the problem, and nothing changed.
  void ExpectRefused(uint64_t lease, const std::vector<std::pair<uint64_t, uint32_t>>& runs, grpc::StatusCode code,
                     const std::string& says) {
    const v1::ValidateResponse before = Census();
    const uint64_t held = PagesHeld(lease);
    v1::FreePagesBulkResponse resp;
    const grpc::Status s = FreeRuns(lease, runs, &resp);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(says));
    EXPECT_THAT(s.error_message(), HasSubstr("nothing was freed"));
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages()) << says;
    EXPECT_EQ(after.free_pages(), before.free_pages()) << says;
    EXPECT_EQ(after.lease_pages(), before.lease_pages()) << says;
    EXPECT_EQ(PagesHeld(lease), held) << says;
  }
};

TEST_F(BulkRuns, AllocationInRunsDescribesEveryLowmemPageAndFreeingTheRunsReturnsThem) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::ValidateResponse start = Census();
  const v1::AllocPagesBulkResponse r = AllocRuns(lease, "GFP_KERNEL", 1000);
  EXPECT_EQ(r.requested(), 1000u);
  const std::vector<uint64_t> pfns = CheckRuns(lease, r, v1::ZONE_NORMAL);
  EXPECT_EQ(pfns.size(), 1000u);
  EXPECT_LT(r.run_size(), 1000) << "a fresh machine hands out consecutive pages";
  EXPECT_EQ(Census().allocated_pages(), start.allocated_pages() + 1000);

  // The reply's runs go back as they are.
  v1::FreePagesBulkRequest f;
  f.set_lease_id(lease);
  *f.mutable_run() = r.run();
  v1::FreePagesBulkResponse freed;
  Ctx ctx;
  ASSERT_TRUE(stub_->FreePagesBulk(&ctx, f, &freed).ok());
  EXPECT_EQ(freed.pages_freed(), 1000u);
  EXPECT_EQ(freed.blocks_freed(), 1000u);
  EXPECT_EQ(freed.refused_size(), 0);
  const v1::ValidateResponse end = Census();
  EXPECT_EQ(end.allocated_pages(), start.allocated_pages());
  EXPECT_EQ(end.free_pages(), start.free_pages());
  EXPECT_EQ(PagesHeld(lease), 0u);
}

TEST_F(BulkRuns, HighmemRunsHaveNoAddress) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::AllocPagesBulkResponse r = AllocRuns(lease, "GFP_HIGHUSER", 300);
  const std::vector<uint64_t> pfns = CheckRuns(lease, r, v1::ZONE_HIGHMEM);
  EXPECT_EQ(pfns.size(), 300u);
  for (const v1::PageRun& run : r.run()) EXPECT_EQ(run.virt_addr(), 0u);
}

TEST_F(BulkRuns, FreeingPartOfARunFreesExactlyThosePages) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::AllocPagesBulkResponse r = AllocRuns(lease, "GFP_KERNEL", 64);
  ASSERT_GE(r.run_size(), 1);
  const v1::PageRun run = r.run(0);
  ASSERT_GE(run.count(), 4u) << "a fresh machine hands out consecutive pages";
  v1::FreePagesBulkResponse freed;
  // Its second and third page, then its first: the fourth stays the lease's.
  ASSERT_TRUE(FreeRuns(lease, {{run.pfn() + 1, 2}, {run.pfn(), 1}}, &freed).ok());
  EXPECT_EQ(freed.pages_freed(), 3u);
  EXPECT_EQ(PagesHeld(lease), 61u);
  EXPECT_NE(PageAddress(lease, run.pfn() + 3), 0u);
  // Freed pages are no longer the lease's: a second free of one is refused, all or nothing.
  ExpectRefused(lease, {{run.pfn() + 3, 1}, {run.pfn() + 1, 1}}, grpc::StatusCode::FAILED_PRECONDITION, "run 1:");
  EXPECT_EQ(PagesHeld(lease), 61u);
}

TEST_F(BulkRuns, BadRunsAreRefusedAsAWholeAndChangeNothing) {
  const uint64_t lease = NewLease(3600 * 1000);
  const uint64_t other = NewLease(3600 * 1000);
  const v1::AllocPagesBulkResponse r = AllocRuns(lease, "GFP_KERNEL", 64);
  ASSERT_GE(r.run_size(), 1);
  const v1::PageRun mine = r.run(0);
  ASSERT_GE(mine.count(), 4u);
  const v1::AllocPagesBulkResponse theirs = AllocRuns(other, "GFP_KERNEL", 8);
  ASSERT_GE(theirs.run_size(), 1);
  v1::Allocation pair;
  ASSERT_TRUE(testing::AllocPages(stub_.get(), lease, "GFP_KERNEL", 1, &pair).ok());
  const v1::ValidateResponse census = Census();

  using grpc::StatusCode;
  ExpectRefused(lease, {{mine.pfn(), 2}, {mine.pfn() + 2, 0}}, StatusCode::INVALID_ARGUMENT, "run 1 (pfn");
  ExpectRefused(lease, {{mine.pfn(), 0}}, StatusCode::INVALID_ARGUMENT, "count 0");
  ExpectRefused(lease, {{UINT64_MAX - 1, 4}}, StatusCode::INVALID_ARGUMENT, "overflows");
  ExpectRefused(lease, {{mine.pfn(), 3}, {mine.pfn() + 2, 1}}, StatusCode::INVALID_ARGUMENT,
                "runs 0 and 1 overlap at pfn");
  ExpectRefused(lease, {{mine.pfn() + 1, 1}, {mine.pfn(), 2}}, StatusCode::INVALID_ARGUMENT, "overlap");
  // Beyond the end of RAM (1 GiB = 262144 pages), after a good run: nothing of the good run goes.
  ExpectRefused(lease, {{mine.pfn(), 1}, {uint64_t{1} << 30, 1}}, StatusCode::OUT_OF_RANGE, "run 1:");
  ExpectRefused(lease, {{theirs.run(0).pfn(), 1}}, StatusCode::PERMISSION_DENIED, "another lease");
  ExpectRefused(lease, {{pair.pfn(), 1}}, StatusCode::INVALID_ARGUMENT, "order-1 block");
  ExpectRefused(lease, {{pair.pfn() + 1, 1}}, StatusCode::INVALID_ARGUMENT, "order-1 block");
  EXPECT_EQ(Census().allocated_pages(), census.allocated_pages());

  // Runs and pfns together.
  {
    v1::FreePagesBulkRequest req;
    req.set_lease_id(lease);
    req.add_pfn(mine.pfn());
    v1::PageRun* run = req.add_run();
    run->set_pfn(mine.pfn() + 1);
    run->set_count(1);
    v1::FreePagesBulkResponse resp;
    Ctx ctx;
    const grpc::Status s = stub_->FreePagesBulk(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("not both"));
    EXPECT_EQ(Census().allocated_pages(), census.allocated_pages());
  }
  // More pages than --max_bulk_pages (65536) in one call.
  ExpectRefused(lease, {{mine.pfn(), 40000}, {mine.pfn() + 40000, 40000}}, StatusCode::INVALID_ARGUMENT,
                "--max_bulk_pages");
  // The good runs still free.
  v1::FreePagesBulkResponse freed;
  ASSERT_TRUE(FreeRuns(lease, {{mine.pfn(), mine.count()}}, &freed).ok());
  EXPECT_EQ(freed.pages_freed(), mine.count());
}

TEST_F(BulkRuns, AKmappedHighmemPageRefusesItsRun) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::AllocPagesBulkResponse r = AllocRuns(lease, "GFP_HIGHUSER", 16);
  ASSERT_GE(r.run_size(), 1);
  const v1::PageRun run = r.run(0);
  v1::KmapRequest k;
  k.set_lease_id(lease);
  k.set_pfn(run.pfn());
  v1::KmapResponse kr;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->Kmap(&ctx, k, &kr).ok());
  }
  ExpectRefused(lease, {{run.pfn(), run.count()}}, grpc::StatusCode::FAILED_PRECONDITION, "kmap");
  {
    Ctx ctx;
    v1::KunmapResponse ku;
    ASSERT_TRUE(stub_->Kunmap(&ctx, k, &ku).ok());
  }
  v1::FreePagesBulkResponse freed;
  ASSERT_TRUE(FreeRuns(lease, {{run.pfn(), run.count()}}, &freed).ok());
  EXPECT_EQ(freed.pages_freed(), run.count());
}

}  // namespace
}  // namespace physmem
