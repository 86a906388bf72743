// Refusals that were missing or inexact (issue #10): Kunmap runs Kmap's ownership and state
// checks for every pfn, lowmem included; FreePages checks a key's length as AllocPages does; a
// key replayed with a different request (order, GFP mask, call) is INVALID_ARGUMENT naming what
// differs, instead of handing back the earlier block. Each refusal leaves the census unchanged.
#include <grpcpp/grpcpp.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"
#include "tests/time_scale.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using v1::PhysMem;

using testing::kLongTtlMs;

class ExactRefusals : public testing::DaemonStubTest {
 protected:
  // i386 with 64 MiB: every page is lowmem (DMA and Normal), where kunmap() has nothing to undo.
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=64"}, /*tcp=*/true));
    tcp_stub_ = testing::ConnectStub("127.0.0.1:" + std::to_string(daemon_->tcp_port()));  // another identity
  }

  grpc::Status Alloc(PhysMem::Stub* stub, uint64_t lease, const std::string& gfp, uint32_t order,
                     const std::string& key, v1::Allocation* out, bool address_form = false) {
    v1::AllocPagesRequest req;
    req.set_lease_id(lease);
    req.set_gfp(gfp);
    req.set_order(order);
    req.set_key(key);
    testing::Deadline ctx;
    return address_form ? stub->GetFreePages(&ctx, req, out) : stub->AllocPages(&ctx, req, out);
  }
  grpc::Status Kunmap(PhysMem::Stub* stub, uint64_t lease, uint64_t pfn) {
    v1::KmapRequest req;
    req.set_lease_id(lease);
    req.set_pfn(pfn);
    v1::KunmapResponse resp;
    testing::Deadline ctx;
    return stub->Kunmap(&ctx, req, &resp);
  }
  grpc::Status FreeByKey(uint64_t lease, const std::string& key) {
    v1::FreePagesRequest req;
    req.set_lease_id(lease);
    req.set_key(key);
    v1::FreePagesResponse resp;
    testing::Deadline ctx;
    return stub_->FreePages(&ctx, req, &resp);
  }
  // The refusal's code and text, and a census equal to `before`.
  void ExpectRefused(const grpc::Status& s, grpc::StatusCode code, const std::string& text,
                     const v1::ValidateResponse& before) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages());
    EXPECT_EQ(after.lease_pages(), before.lease_pages());
    EXPECT_EQ(after.leases(), before.leases());
  }

  std::unique_ptr<PhysMem::Stub> tcp_stub_;
};

TEST_F(ExactRefusals, KunmapChecksEveryPfnAsKmapDoes) {
  const uint64_t mine = NewLease(kLongTtlMs), other = NewLease(kLongTtlMs);
  v1::Allocation a, b;
  ASSERT_TRUE(Alloc(stub_.get(), mine, "GFP_KERNEL", 0, "", &a).ok());
  ASSERT_TRUE(Alloc(stub_.get(), other, "GFP_KERNEL", 0, "", &b).ok());
  const v1::ValidateResponse before = Census();
  // Another lease's page (same identity), a free page, another identity calling on my lease.
  ExpectRefused(Kunmap(stub_.get(), mine, b.pfn()), grpc::StatusCode::PERMISSION_DENIED, "belongs to another lease",
                before);
  ExpectRefused(Kunmap(stub_.get(), mine, b.pfn() + 1), grpc::StatusCode::FAILED_PRECONDITION, "is not allocated",
                before);
  ExpectRefused(Kunmap(tcp_stub_.get(), mine, a.pfn()), grpc::StatusCode::PERMISSION_DENIED, "", before);
  // Outside RAM: OUT_OF_RANGE, as for Kmap.
  ExpectRefused(Kunmap(stub_.get(), mine, uint64_t{1} << 40), grpc::StatusCode::OUT_OF_RANGE, "", before);
  // Its own page: kunmap of a lowmem page is a no-op, and OK.
  EXPECT_TRUE(Kunmap(stub_.get(), mine, a.pfn()).ok());
}

TEST_F(ExactRefusals, FreePagesChecksTheKeyLengthAsAllocPagesDoes) {
  const uint64_t lease = NewLease(kLongTtlMs);
  v1::Allocation a;
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_KERNEL", 0, "k", &a).ok());
  const v1::ValidateResponse before = Census();
  ExpectRefused(FreeByKey(lease, std::string(129, 'k')), grpc::StatusCode::INVALID_ARGUMENT,
                "key is 129 bytes; at most 128 allowed", before);
  ExpectRefused(FreeByKey(lease, std::string(1 << 20, 'k')), grpc::StatusCode::INVALID_ARGUMENT,
                "key is 1048576 bytes; at most 128 allowed", before);
  EXPECT_TRUE(FreeByKey(lease, "k").ok());
}

TEST_F(ExactRefusals, AKeyReplayedWithADifferentRequestIsRefusedNamingTheDifference) {
  const uint64_t lease = NewLease(kLongTtlMs);
  v1::Allocation first;
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_DMA", 0, "rx-0", &first).ok());
  EXPECT_EQ(first.zone(), "DMA");
  const v1::ValidateResponse before = Census();
  v1::Allocation again;
  ExpectRefused(Alloc(stub_.get(), lease, "GFP_KERNEL", 0, "rx-0", &again), grpc::StatusCode::INVALID_ARGUMENT,
                "GFP mask GFP_KERNEL (it was GFP_DMA)", before);
  ExpectRefused(Alloc(stub_.get(), lease, "GFP_DMA", 1, "rx-0", &again), grpc::StatusCode::INVALID_ARGUMENT,
                "order 1 (it was 0)", before);
  ExpectRefused(Alloc(stub_.get(), lease, "GFP_DMA", 0, "rx-0", &again, /*address_form=*/true),
                grpc::StatusCode::INVALID_ARGUMENT, "call GetFreePages (it was AllocPages)", before);
  // The same request is a retry: the same block, marked replayed.
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_DMA", 0, "rx-0", &again).ok());
  EXPECT_EQ(again.pfn(), first.pfn());
  EXPECT_TRUE(again.replayed());
  EXPECT_EQ(Census().allocated_pages(), before.allocated_pages());
}

}  // namespace
}  // namespace physmem
