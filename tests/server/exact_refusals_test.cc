// Refusals that were missing or inexact (issue #10): Kunmap runs Kmap's ownership and state
// checks for every pfn, lowmem included; FreePages checks a key's length as AllocPages does; a
// key replayed with a different request (order, GFP mask, call) is INVALID_ARGUMENT naming what
// differs, instead of handing back the earlier block; every limited field is checked on every call
// that takes it, with a message that names the field and the limit and stays short whatever the
// input. Each refusal leaves the census unchanged.
#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/status_util.h"
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
  grpc::Status FreeByKey(uint64_t lease, const std::string& key, uint64_t pfn = 0) {
    v1::FreePagesRequest req;
    req.set_lease_id(lease);
    req.set_key(key);
    req.set_pfn(pfn);
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

TEST_F(ExactRefusals, AFreeThatNamesAKeyAndAnotherBlocksPfnIsRefused) {
  const uint64_t lease = NewLease(kLongTtlMs);
  v1::Allocation keyed, other;
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_KERNEL", 0, "k", &keyed).ok());
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_KERNEL", 0, "", &other).ok());
  const v1::ValidateResponse before = Census();
  ExpectRefused(FreeByKey(lease, "k", other.pfn()), grpc::StatusCode::INVALID_ARGUMENT,
                absl::StrFormat("key \"k\" names the block at pfn %#x, not pfn %#x", keyed.pfn(), other.pfn()), before);
  // The key with its own block's pfn frees it; the other block is still held.
  EXPECT_TRUE(FreeByKey(lease, "k", keyed.pfn()).ok());
  EXPECT_EQ(Census().allocated_pages(), before.allocated_pages() - 1);
}

TEST_F(ExactRefusals, ACachedPagesReportAboveTheMachineIsRefusedAndOneAboveTheLeaseIsCapped) {
  const uint64_t lease = NewLease(kLongTtlMs);
  v1::Allocation a;
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_KERNEL", 1, "", &a).ok());  // 2 pages held
  auto renew = [&](uint64_t cached) {
    v1::KeepAliveRequest req;
    req.set_lease_id(lease);
    req.set_client_cached_pages(cached);
    v1::KeepAliveResponse resp;
    testing::Deadline ctx;
    return stub_->RenewLease(&ctx, req, &resp);
  };
  auto reported = [&] {
    v1::GetLeaseRequest req;
    req.set_lease_id(lease);
    v1::LeaseInfo info;
    testing::Deadline ctx;
    EXPECT_TRUE(stub_->GetLease(&ctx, req, &info).ok());
    return info.client_cached_pages();
  };
  ASSERT_TRUE(renew(1).ok());
  EXPECT_EQ(reported(), 1u);
  const v1::ValidateResponse before = Census();
  // No lease can cache more pages than the machine has (64 MiB: at most 16384).
  ExpectRefused(renew(UINT64_MAX), grpc::StatusCode::INVALID_ARGUMENT,
                "client_cached_pages 18446744073709551615 is more than the ", before);
  ExpectRefused(renew(16385), grpc::StatusCode::INVALID_ARGUMENT, "pages of the emulated machine; lease", before);
  EXPECT_EQ(reported(), 1u) << "a refused renewal changed the report";
  // Above what the lease holds, but possible (a drain on its way): kept, capped at the 2 held.
  ASSERT_TRUE(renew(3).ok());
  EXPECT_EQ(reported(), 2u);
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

// Each field with a limit, over its limit (or under it), on every call that takes it: the call is
// refused with the code and a message naming the field and the limit, no longer than
// kMaxStatusMessageBytes whatever the input's size, and the census is unchanged.
class LimitedFields : public ExactRefusals {
 protected:
  void SetUp() override {
    // Small limits so that requests over them stay small.
    ASSERT_NO_FATAL_FAILURE(
        StartDaemon({"--target=i386", "--mem_mb=64", "--max_bulk_pages=16", "--max_page_io_bytes=65536"}));
  }
};

TEST_F(LimitedFields, EveryLimitedFieldIsCheckedOnEveryCallThatTakesIt) {
  const uint64_t lease = NewLease(kLongTtlMs);
  v1::Allocation page;
  ASSERT_TRUE(Alloc(stub_.get(), lease, "GFP_KERNEL", 0, "", &page).ok());
  const std::string big_key(1 << 20, 'k');
  PhysMem::Stub* s = stub_.get();
  auto alloc_req = [&](uint32_t order, const std::string& key) {
    v1::AllocPagesRequest r;
    r.set_lease_id(lease);
    r.set_gfp("GFP_KERNEL");
    r.set_order(order);
    r.set_key(key);
    return r;
  };
  struct Case {
    std::string what;
    std::function<grpc::Status()> call;
    grpc::StatusCode code;
    std::string text;
  };
  const std::vector<Case> cases = {
      {"CreateLease name",
       [&] {
         v1::CreateLeaseRequest r;
         r.set_ttl_ms(kLongTtlMs);
         r.set_name(std::string(65, 'n'));
         v1::CreateLeaseResponse out;
         testing::Deadline ctx;
         return s->CreateLease(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "lease name is 65 bytes; at most 64 allowed"},
      {"CreateLease ttl_ms below",
       [&] {
         v1::CreateLeaseRequest r;
         r.set_ttl_ms(-1);
         v1::CreateLeaseResponse out;
         testing::Deadline ctx;
         return s->CreateLease(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "ttl_ms -1 is outside the allowed range"},
      {"CreateLease ttl_ms above",
       [&] {
         v1::CreateLeaseRequest r;
         r.set_ttl_ms(int64_t{1} << 62);
         v1::CreateLeaseResponse out;
         testing::Deadline ctx;
         return s->CreateLease(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "is outside the allowed range"},
      {"CreateLease page_quota",
       [&] {
         v1::CreateLeaseRequest r;
         r.set_ttl_ms(kLongTtlMs);
         r.set_page_quota(uint64_t{1} << 62);
         v1::CreateLeaseResponse out;
         testing::Deadline ctx;
         return s->CreateLease(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "(--max_lease_pages)"},
      {"AllocPages order",
       [&] {
         v1::Allocation out;
         testing::Deadline ctx;
         return s->AllocPages(&ctx, alloc_req(11, ""), &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "order 11 exceeds MAX_PAGE_ORDER 10"},
      {"AllocPages key",
       [&] {
         v1::Allocation out;
         testing::Deadline ctx;
         return s->AllocPages(&ctx, alloc_req(0, big_key), &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "key is 1048576 bytes; at most 128 allowed"},
      {"GetFreePages order",
       [&] {
         v1::Allocation out;
         testing::Deadline ctx;
         return s->GetFreePages(&ctx, alloc_req(0xffffffffu, ""), &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "order 4294967295 exceeds MAX_PAGE_ORDER 10"},
      {"GetFreePages key",
       [&] {
         v1::Allocation out;
         testing::Deadline ctx;
         return s->GetFreePages(&ctx, alloc_req(0, big_key), &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "key is 1048576 bytes; at most 128 allowed"},
      {"GetZeroedPage order",
       [&] {
         v1::Allocation out;
         testing::Deadline ctx;
         return s->GetZeroedPage(&ctx, alloc_req(1, ""), &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "order 0 only"},
      {"GetZeroedPage key",
       [&] {
         v1::Allocation out;
         testing::Deadline ctx;
         return s->GetZeroedPage(&ctx, alloc_req(0, big_key), &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "key is 1048576 bytes; at most 128 allowed"},
      {"AllocPagesBulk count 0",
       [&] {
         v1::AllocPagesBulkResponse out;
         return testing::AllocBulk(s, lease, "GFP_KERNEL", 0, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "count 0 is outside [1, 16] (--max_bulk_pages)"},
      {"AllocPagesBulk count above",
       [&] {
         v1::AllocPagesBulkResponse out;
         return testing::AllocBulk(s, lease, "GFP_KERNEL", 17, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "count 17 is outside [1, 16] (--max_bulk_pages)"},
      {"FreePages order",
       [&] {
         v1::FreePagesRequest r;
         r.set_lease_id(lease);
         r.set_pfn(page.pfn());
         r.set_order(11);
         v1::FreePagesResponse out;
         testing::Deadline ctx;
         return s->FreePages(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "order 11 exceeds MAX_PAGE_ORDER 10"},
      {"FreePages key",
       [&] {
         v1::FreePagesRequest r;
         r.set_lease_id(lease);
         r.set_key(big_key);
         v1::FreePagesResponse out;
         testing::Deadline ctx;
         return s->FreePages(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "key is 1048576 bytes; at most 128 allowed"},
      {"FreePagesByAddress order",
       [&] {
         v1::FreePagesByAddressRequest r;
         r.set_lease_id(lease);
         r.set_addr(page.virt_addr());
         r.set_order(11);
         v1::FreePagesResponse out;
         testing::Deadline ctx;
         return s->FreePagesByAddress(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "order 11 exceeds MAX_PAGE_ORDER 10"},
      {"FreePagesBulk order",  // per block: the block's refusal in the reply, the call OK
       [&] {
         v1::FreePagesBulkRequest r;
         r.set_lease_id(lease);
         r.add_pfn(page.pfn());
         r.add_order(11);
         v1::FreePagesBulkResponse out;
         testing::Deadline ctx;
         grpc::Status st = s->FreePagesBulk(&ctx, r, &out);
         if (st.ok() && out.refused_size() == 1) {
           st = grpc::Status(static_cast<grpc::StatusCode>(out.refused(0).code()), out.refused(0).message());
         }
         return st;
       },
       grpc::StatusCode::INVALID_ARGUMENT, "order 11 exceeds MAX_PAGE_ORDER 10"},
      {"FreePagesBulk blocks",
       [&] {
         v1::FreePagesBulkRequest r;
         r.set_lease_id(lease);
         for (int i = 0; i < 17; ++i) r.add_pfn(page.pfn());
         v1::FreePagesBulkResponse out;
         testing::Deadline ctx;
         return s->FreePagesBulk(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "17 blocks is outside [1, 16] (--max_bulk_pages)"},
      {"FreePagesBulk runs",
       [&] {
         v1::FreePagesBulkRequest r;
         r.set_lease_id(lease);
         v1::PageRun* run = r.add_run();
         run->set_pfn(page.pfn());
         run->set_count(0xffffffffu);
         v1::FreePagesBulkResponse out;
         testing::Deadline ctx;
         return s->FreePagesBulk(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "more than 16 (--max_bulk_pages); nothing was freed"},
      {"ReadPages length 0",
       [&] {
         v1::ReadPagesRequest r;
         r.set_lease_id(lease);
         r.set_pfn(page.pfn());
         v1::ReadPagesResponse out;
         testing::Deadline ctx;
         return s->ReadPages(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "length 0 is outside [1, 65536] (--max_page_io_bytes)"},
      {"ReadPages length above",
       [&] {
         v1::ReadPagesRequest r;
         r.set_lease_id(lease);
         r.set_pfn(page.pfn());
         r.set_length(uint64_t{1} << 40);
         v1::ReadPagesResponse out;
         testing::Deadline ctx;
         return s->ReadPages(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "is outside [1, 65536] (--max_page_io_bytes)"},
      {"WritePages data",
       [&] {
         v1::WritePagesRequest r;
         r.set_lease_id(lease);
         r.set_pfn(page.pfn());
         r.set_data(std::string(65537, 'w'));
         v1::WritePagesResponse out;
         testing::Deadline ctx;
         return s->WritePages(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "65537 is outside [1, 65536] (--max_page_io_bytes)"},
      {"GetArenaMap max_entries",
       [&] {
         v1::GetArenaMapRequest r;
         r.set_max_entries(262145);
         v1::GetArenaMapResponse out;
         testing::Deadline ctx;
         return s->GetArenaMap(&ctx, r, &out);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "max_entries 262145 is above 262144"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const v1::ValidateResponse before = Census();
    const grpc::Status st = c.call();
    ExpectRefused(st, c.code, c.text, before);
    EXPECT_LE(st.error_message().size(), kMaxStatusMessageBytes);
  }
  // The page is still the lease's: nothing above freed it.
  EXPECT_TRUE(testing::FreePages(stub_.get(), lease, page.pfn(), 0).ok());
}

}  // namespace
}  // namespace physmem
