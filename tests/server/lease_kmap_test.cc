// A lease's kmap()s end with the lease: revoking or letting expire a lease whose HIGHMEM pages
// are still kmap()ed frees those pages and their window slots, like its other pages.
//
// Found by tests/fuzz/service_fuzz (corpus file tests/fuzz/corpus/service_fuzz/
// crash-4a2207d63483d31db4579de5da1ba25e46a33ab2): the lease's free was refused ("still
// kmap()ed"), the lease was gone, and the page stayed allocated to nobody for good.
#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using Ctx = testing::Deadline;  // a call's deadline: 5 s unless given

class LeaseKmap : public testing::DaemonStubTest {
 protected:
  // i386 with 1 GiB: lowmem ends at MAXMEM (887.99 MiB), HighMem above it. A lease expires when a test moves
  // the daemon's lease clock, not while a slow machine is still making its kmap() calls.
  void SetUp() override {
    StartDaemon({"--target=i386", "--mem_mb=1024"}, /*tcp=*/false, testing::LeaseClockMode::kTestControlled);
  }

  // An order-1 HIGHMEM block with its first page kmap()ed twice and its second once.
  v1::Allocation AllocKmapped(uint64_t lease) {
    v1::Allocation a;
    grpc::Status s = testing::AllocPages(stub_.get(), lease, "GFP_HIGHUSER", 1, &a);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(a.zone(), "HighMem");
    for (uint64_t pfn : {a.pfn(), a.pfn(), a.pfn() + 1}) {
      v1::KmapRequest k;
      k.set_lease_id(lease);
      k.set_pfn(pfn);
      v1::KmapResponse kr;
      Ctx kctx;
      s = stub_->Kmap(&kctx, k, &kr);
      EXPECT_TRUE(s.ok()) << s.error_message();
      EXPECT_NE(kr.virt_addr(), 0u);
    }
    // Still mapped: the owner's own free is refused.
    v1::FreePagesRequest f;
    f.set_lease_id(lease);
    f.set_pfn(a.pfn());
    f.set_order(1);
    v1::FreePagesResponse fr;
    Ctx fctx;
    EXPECT_EQ(stub_->FreePages(&fctx, f, &fr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    return a;
  }
};

TEST_F(LeaseKmap, RevokingALeaseUnmapsAndFreesItsKmappedPages) {
  const uint64_t lease = NewLease(60000);
  AllocKmapped(lease);
  EXPECT_EQ(Census().allocated_pages(), 2u);

  v1::RevokeLeaseResponse resp;
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), lease, &resp).ok());
  EXPECT_EQ(resp.pages_freed(), 2u);
  const v1::ValidateResponse c = Census();
  EXPECT_EQ(c.allocated_pages(), 0u);
  EXPECT_EQ(c.free_pages(), c.total_pages());
  EXPECT_EQ(daemon_->log().find("lease_free_failed"), std::string::npos) << daemon_->log();
}

TEST_F(LeaseKmap, AnExpiredLeaseUnmapsAndFreesItsKmappedPages) {
  constexpr auto kTtl = std::chrono::milliseconds(3600 * 1000);  // outlives any slow machine
  const uint64_t lease = NewLease(kTtl.count());
  AllocKmapped(lease);
  EXPECT_EQ(Census().allocated_pages(), 2u);
  // No keep-alive: once the clock passes its TTL the reaper ends it, kmap()s and all.
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(lease, kTtl));
  EXPECT_EQ(Census().allocated_pages(), 0u);
  EXPECT_EQ(Census().leases(), 0u);
  EXPECT_EQ(daemon_->log().find("lease_free_failed"), std::string::npos) << daemon_->log();
}

TEST_F(LeaseKmap, KmapOnARevokedLeaseIsRefused) {
  const uint64_t lease = NewLease(60000);
  v1::Allocation a;
  ASSERT_TRUE(testing::AllocPages(stub_.get(), lease, "GFP_HIGHUSER", 0, &a).ok());
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), lease).ok());
  v1::KmapRequest k;
  k.set_lease_id(lease);
  k.set_pfn(a.pfn());
  v1::KmapResponse kr;
  Ctx kctx;
  EXPECT_EQ(stub_->Kmap(&kctx, k, &kr).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

}  // namespace
}  // namespace physmem
