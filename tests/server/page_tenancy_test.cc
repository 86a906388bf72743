// Page contents never pass from one identity to another (server/page_tenancy.h), on every path a
// block can leave a lease: identity A (the Unix socket's uid) fills the machine with 2 MiB blocks
// and writes a pattern into every byte, lets them go (FreePages, FreePagesBulk, RevokeLease, or
// expiry), and identity B (plaintext TCP from 127.0.0.1, another identity) then takes every 2 MiB
// block it can get — the same memory — without __GFP_ZERO and reads it: every byte is zero. A
// that frees and takes its own blocks back pays no scrub (physmem_pages_scrubbed_total).
#include <grpcpp/grpcpp.h>

#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"
#include "tests/server/metrics_scrape.h"
#include "tests/time_scale.h"

namespace physmem {
namespace {

using v1::PhysMem;

using testing::kLongTtlMs;
constexpr uint32_t kOrder = 9;                      // 2 MiB blocks: one WritePages/ReadPages each
constexpr uint64_t kBlockBytes = uint64_t{4096} << kOrder;

enum class FreePath { kFreePages, kFreePagesBulk, kRevoke, kExpiry };

class PageTenancyTest : public testing::DaemonStubTest, public ::testing::WithParamInterface<FreePath> {
 protected:
  void SetUp() override {
    // i386 with 48 MiB: a couple of dozen 2 MiB blocks, all lowmem.
    ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=48", testing::kServeMetrics,
                                         "--max_page_io_bytes=2097152"},
                                        /*tcp=*/true, testing::LeaseClockMode::kTestControlled));
    tcp_stub_ = testing::ConnectStub("127.0.0.1:" + std::to_string(daemon_->tcp_port()));
  }

  // Every order-9 block the lease can get (GFP_KERNEL, no __GFP_ZERO).
  std::vector<uint64_t> TakeAllBlocks(PhysMem::Stub* stub, uint64_t lease) {
    std::vector<uint64_t> pfns;
    for (;;) {
      v1::Allocation a;
      v1::AllocPagesRequest req;
      req.set_lease_id(lease);
      req.set_gfp("GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY");
      req.set_order(kOrder);
      testing::Deadline ctx;
      if (!stub->AllocPages(&ctx, req, &a).ok()) break;
      pfns.push_back(a.pfn());
    }
    return pfns;
  }
  grpc::Status Write(PhysMem::Stub* stub, uint64_t lease, uint64_t pfn, char byte) {
    v1::WritePagesRequest req;
    req.set_lease_id(lease);
    req.set_pfn(pfn);
    req.set_data(std::string(kBlockBytes, byte));
    v1::WritePagesResponse resp;
    testing::Deadline ctx;
    return stub->WritePages(&ctx, req, &resp);
  }
  std::string Read(PhysMem::Stub* stub, uint64_t lease, uint64_t pfn) {
    v1::ReadPagesRequest req;
    req.set_lease_id(lease);
    req.set_pfn(pfn);
    req.set_length(kBlockBytes);
    v1::ReadPagesResponse resp;
    testing::Deadline ctx;
    const grpc::Status s = stub->ReadPages(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.data();
  }
  void Let(uint64_t lease, const std::vector<uint64_t>& pfns, FreePath path) {
    switch (path) {
      case FreePath::kFreePages:
        for (uint64_t pfn : pfns) ASSERT_TRUE(testing::FreePages(stub_.get(), lease, pfn, kOrder).ok());
        return;
      case FreePath::kFreePagesBulk: {
        v1::FreePagesBulkRequest req;
        req.set_lease_id(lease);
        for (uint64_t pfn : pfns) {
          req.add_pfn(pfn);
          req.add_order(kOrder);
        }
        v1::FreePagesBulkResponse resp;
        testing::Deadline ctx;
        ASSERT_TRUE(stub_->FreePagesBulk(&ctx, req, &resp).ok());
        ASSERT_EQ(resp.refused_size(), 0);
        return;
      }
      case FreePath::kRevoke:
        ASSERT_TRUE(testing::RevokeLease(stub_.get(), lease).ok());
        return;
      case FreePath::kExpiry:
        ASSERT_NO_FATAL_FAILURE(ExpireByClock(lease, std::chrono::milliseconds(kLongTtlMs)));
        return;
    }
  }
  double Scrubbed() { return testing::MetricSum(daemon_->metrics_port(), "physmem_pages_scrubbed_total"); }

  std::unique_ptr<PhysMem::Stub> tcp_stub_;
};

TEST_P(PageTenancyTest, AnotherIdentityGetsTheSameMemoryZeroed) {
  const uint64_t a = NewLease(kLongTtlMs);
  const std::vector<uint64_t> written = TakeAllBlocks(stub_.get(), a);
  ASSERT_GE(written.size(), 8u);
  for (uint64_t pfn : written) ASSERT_TRUE(Write(stub_.get(), a, pfn, '\xab').ok());
  ASSERT_NO_FATAL_FAILURE(Let(a, written, GetParam()));

  const uint64_t b = NewLease(kLongTtlMs, tcp_stub_.get());
  const std::vector<uint64_t> got = TakeAllBlocks(tcp_stub_.get(), b);
  const std::set<uint64_t> theirs(written.begin(), written.end());
  size_t reused = 0;
  for (uint64_t pfn : got) {
    if (theirs.contains(pfn)) ++reused;
    const std::string bytes = Read(tcp_stub_.get(), b, pfn);
    ASSERT_EQ(bytes.size(), kBlockBytes);
    EXPECT_EQ(bytes.find_first_not_of('\0'), std::string::npos) << "block at pfn " << pfn << " holds another's bytes";
  }
  // The point of the test: B got A's memory back (the machine has no other 2 MiB blocks).
  EXPECT_GE(reused, written.size() / 2) << "B got " << got.size() << " blocks, " << reused << " of them A's";
  EXPECT_GE(Scrubbed(), static_cast<double>(reused << kOrder));
}

INSTANTIATE_TEST_SUITE_P(EveryFreePath, PageTenancyTest,
                         ::testing::Values(FreePath::kFreePages, FreePath::kFreePagesBulk, FreePath::kRevoke,
                                           FreePath::kExpiry),
                         [](const ::testing::TestParamInfo<FreePath>& p) {
                           switch (p.param) {
                             case FreePath::kFreePages: return std::string("FreePages");
                             case FreePath::kFreePagesBulk: return std::string("FreePagesBulk");
                             case FreePath::kRevoke: return std::string("Revoke");
                             case FreePath::kExpiry: return std::string("Expiry");
                           }
                           return std::string("?");
                         });

// The lazy half: the same identity taking its own blocks back finds its bytes (as the kernel
// leaves them without __GFP_ZERO) and nothing is scrubbed; __GFP_ZERO still zeroes.
TEST_F(PageTenancyTest, TheSameIdentityPaysNoScrub) {
  const uint64_t a = NewLease(kLongTtlMs);
  const std::vector<uint64_t> written = TakeAllBlocks(stub_.get(), a);
  ASSERT_FALSE(written.empty());
  for (uint64_t pfn : written) ASSERT_TRUE(Write(stub_.get(), a, pfn, '\x5a').ok());
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), a).ok());
  const uint64_t again = NewLease(kLongTtlMs);
  const std::vector<uint64_t> got = TakeAllBlocks(stub_.get(), again);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(Read(stub_.get(), again, got[0]), std::string(kBlockBytes, '\x5a'));
  EXPECT_EQ(Scrubbed(), 0);
}

// --init_on_free (the kernel's init_on_free=1): every freed block is zeroed as it is freed, so
// even the same identity taking its blocks back finds zeros, and nothing is left to scrub at
// hand-out, for it or for another identity.
class InitOnFreeTest : public PageTenancyTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=48", testing::kServeMetrics,
                                         "--max_page_io_bytes=2097152", "--init_on_free"},
                                        /*tcp=*/true, testing::LeaseClockMode::kTestControlled));
    tcp_stub_ = testing::ConnectStub("127.0.0.1:" + std::to_string(daemon_->tcp_port()));
  }
};

TEST_F(InitOnFreeTest, EveryFreedBlockIsZeroAtOnceForAnyIdentity) {
  const uint64_t a = NewLease(kLongTtlMs);
  const std::vector<uint64_t> written = TakeAllBlocks(stub_.get(), a);
  ASSERT_GE(written.size(), 2u);
  for (uint64_t pfn : written) ASSERT_TRUE(Write(stub_.get(), a, pfn, '\x5a').ok());
  // Half goes back by FreePages, the rest with the lease.
  for (size_t i = 0; i < written.size(); i += 2) {
    ASSERT_TRUE(testing::FreePages(stub_.get(), a, written[i], kOrder).ok());
  }
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), a).ok());
  const uint64_t again = NewLease(kLongTtlMs);
  const std::vector<uint64_t> got = TakeAllBlocks(stub_.get(), again);
  ASSERT_EQ(got.size(), written.size());
  for (uint64_t pfn : got) {
    EXPECT_EQ(Read(stub_.get(), again, pfn).find_first_not_of('\0'), std::string::npos) << "pfn " << pfn;
  }
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), again).ok());
  const uint64_t b = NewLease(kLongTtlMs, tcp_stub_.get());
  const std::vector<uint64_t> theirs = TakeAllBlocks(tcp_stub_.get(), b);
  ASSERT_FALSE(theirs.empty());
  EXPECT_EQ(Read(tcp_stub_.get(), b, theirs[0]).find_first_not_of('\0'), std::string::npos);
  EXPECT_EQ(Scrubbed(), 0) << "zeroed at free, so the hand-outs scrub nothing";
}

}  // namespace
}  // namespace physmem
