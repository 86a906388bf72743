// A lease's kmap()s end with the lease: revoking or letting expire a lease whose HIGHMEM pages
// are still kmap()ed frees those pages and their window slots, like its other pages.
//
// Found by tests/fuzz/service_fuzz (corpus file tests/fuzz/corpus/service_fuzz/
// crash-4a2207d63483d31db4579de5da1ba25e46a33ab2): the lease's free was refused ("still
// kmap()ed"), the lease was gone, and the page stayed allocated to nobody for good.
#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/daemon_process.h"

namespace physmem {
namespace {

using v1::PhysMem;

struct Ctx {
  Ctx() { c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5)); }
  grpc::ClientContext c;
  grpc::ClientContext* operator&() { return &c; }
};

class LeaseKmap : public ::testing::Test {
 protected:
  void SetUp() override {
    // i386 with 1 GiB: lowmem ends at 896 MiB, HighMem above it.
    daemon_ = std::make_unique<testing::DaemonProcess>(std::vector<std::string>{"--target=i386", "--mem_mb=1024"});
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
    auto ch = grpc::CreateChannel(daemon_->unix_target(), grpc::InsecureChannelCredentials());
    ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5));
    stub_ = PhysMem::NewStub(ch);
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "daemon log:\n%s\n", daemon_->log().c_str());
  }

  uint64_t NewLease(int64_t ttl_ms) {
    v1::CreateLeaseRequest req;
    req.set_ttl_ms(ttl_ms);
    v1::CreateLeaseResponse resp;
    Ctx ctx;
    EXPECT_TRUE(stub_->CreateLease(&ctx, req, &resp).ok());
    return resp.lease_id();
  }
  // An order-1 HIGHMEM block with its first page kmap()ed twice and its second once.
  v1::Allocation AllocKmapped(uint64_t lease) {
    v1::AllocPagesRequest req;
    req.set_lease_id(lease);
    req.set_gfp("GFP_HIGHUSER");
    req.set_order(1);
    v1::Allocation a;
    Ctx ctx;
    grpc::Status s = stub_->AllocPages(&ctx, req, &a);
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
  v1::ValidateResponse Census() {
    v1::ValidateResponse resp;
    Ctx ctx;
    grpc::Status s = stub_->Validate(&ctx, v1::ValidateRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }
  std::unique_ptr<testing::DaemonProcess> daemon_;
  std::unique_ptr<PhysMem::Stub> stub_;
};

TEST_F(LeaseKmap, RevokingALeaseUnmapsAndFreesItsKmappedPages) {
  const uint64_t lease = NewLease(60000);
  AllocKmapped(lease);
  EXPECT_EQ(Census().allocated_pages(), 2u);

  v1::RevokeLeaseRequest req;
  req.set_lease_id(lease);
  v1::RevokeLeaseResponse resp;
  Ctx ctx;
  ASSERT_TRUE(stub_->RevokeLease(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.pages_freed(), 2u);
  const v1::ValidateResponse c = Census();
  EXPECT_EQ(c.allocated_pages(), 0u);
  EXPECT_EQ(c.free_pages(), c.total_pages());
  EXPECT_EQ(daemon_->log().find("lease_free_failed"), std::string::npos) << daemon_->log();
}

TEST_F(LeaseKmap, AnExpiredLeaseUnmapsAndFreesItsKmappedPages) {
  const uint64_t lease = NewLease(500);  // the shortest TTL the daemon allows by default
  AllocKmapped(lease);
  ASSERT_TRUE(testing::Eventually(std::chrono::seconds(10), [&] { return Census().allocated_pages() == 0; }))
      << "allocated pages: " << Census().allocated_pages();
  EXPECT_EQ(Census().leases(), 0u);
  EXPECT_EQ(daemon_->log().find("lease_free_failed"), std::string::npos) << daemon_->log();
}

TEST_F(LeaseKmap, KmapOnARevokedLeaseIsRefused) {
  const uint64_t lease = NewLease(60000);
  v1::AllocPagesRequest req;
  req.set_lease_id(lease);
  req.set_gfp("GFP_HIGHUSER");
  v1::Allocation a;
  Ctx actx;
  ASSERT_TRUE(stub_->AllocPages(&actx, req, &a).ok());
  v1::RevokeLeaseRequest rr;
  rr.set_lease_id(lease);
  v1::RevokeLeaseResponse rresp;
  Ctx rctx;
  ASSERT_TRUE(stub_->RevokeLease(&rctx, rr, &rresp).ok());
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
