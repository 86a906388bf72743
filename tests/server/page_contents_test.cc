// ReadPages / WritePages against the real daemon: bytes round-trip inside one block (across its
// pages, in every zone, highmem included), every refusal has its documented code and changes
// nothing (Validate census before == after), and a concurrent free cannot let a read see the
// next owner's bytes.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using v1::PhysMem;
using C = grpc::StatusCode;
using Ctx = testing::Deadline;  // a call's deadline: 5 s unless given

class PageContents : public testing::DaemonStubTest {
 protected:
  void SetUp() override {
    // i386: DMA, Normal and HighMem, so every kind of page is here. A small per-call limit so
    // that the limit itself can be tested without megabyte messages.
    StartDaemon({"--target=i386", "--mem_mb=1024", "--max_page_io_bytes=65536"});
  }

  v1::Allocation Alloc(uint64_t lease, const std::string& gfp, uint32_t order) {
    v1::Allocation a;
    grpc::Status s = testing::AllocPages(stub_.get(), lease, gfp, order, &a);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return a;
  }
  grpc::Status Read(uint64_t lease, uint64_t pfn, uint64_t offset, uint64_t length, std::string* out = nullptr) {
    v1::ReadPagesRequest r;
    r.set_lease_id(lease);
    r.set_pfn(pfn);
    r.set_offset(offset);
    r.set_length(length);
    v1::ReadPagesResponse resp;
    Ctx ctx;
    grpc::Status s = stub_->ReadPages(&ctx, r, &resp);
    if (out != nullptr) *out = resp.data();
    return s;
  }
  grpc::Status Write(uint64_t lease, uint64_t pfn, uint64_t offset, const std::string& data) {
    v1::WritePagesRequest r;
    r.set_lease_id(lease);
    r.set_pfn(pfn);
    r.set_offset(offset);
    r.set_data(data);
    v1::WritePagesResponse resp;
    Ctx ctx;
    grpc::Status s = stub_->WritePages(&ctx, r, &resp);
    if (s.ok()) {
      EXPECT_EQ(resp.bytes_written(), data.size());
    }
    return s;
  }
};

std::string Pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7);
  return s;
}

TEST_F(PageContents, BytesWrittenAreReadBackAcrossPagesOfOneBlock) {
  const uint64_t lease = NewLease();
  const v1::Allocation b = Alloc(lease, "GFP_KERNEL", 2);  // 4 pages, 16 KiB
  const std::string data = Pattern(6000, 'a');
  // Start in the block's second page, run into its third.
  ASSERT_TRUE(Write(lease, b.pfn() + 1, 3000, data).ok());
  std::string got;
  ASSERT_TRUE(Read(lease, b.pfn() + 1, 3000, data.size(), &got).ok());
  EXPECT_EQ(got, data);
  // The same bytes, addressed from the head page.
  ASSERT_TRUE(Read(lease, b.pfn(), 4096 + 3000, data.size(), &got).ok());
  EXPECT_EQ(got, data);
  // The last byte of the block is reachable; one past it is not.
  ASSERT_TRUE(Write(lease, b.pfn() + 3, 4095, "z").ok());
  ASSERT_TRUE(Read(lease, b.pfn(), 16383, 1, &got).ok());
  EXPECT_EQ(got, "z");
}

TEST_F(PageContents, EveryZoneHighmemIncludedHoldsItsBytes) {
  const uint64_t lease = NewLease();
  for (const char* gfp : {"GFP_DMA", "GFP_KERNEL", "GFP_HIGHUSER"}) {
    const v1::Allocation a = Alloc(lease, gfp, 0);
    const std::string data = Pattern(4096, gfp[4]);
    ASSERT_TRUE(Write(lease, a.pfn(), 0, data).ok()) << gfp;
    std::string got;
    ASSERT_TRUE(Read(lease, a.pfn(), 0, 4096, &got).ok()) << gfp;
    EXPECT_EQ(got, data) << gfp << " zone " << a.zone();
  }
}

TEST_F(PageContents, RefusalsHaveTheirCodesAndChangeNothing) {
  const uint64_t lease = NewLease();
  const uint64_t other = NewLease();  // same identity, another lease
  const v1::Allocation mine = Alloc(lease, "GFP_KERNEL", 1);
  const v1::Allocation theirs = Alloc(other, "GFP_KERNEL", 0);
  const v1::Allocation freed = Alloc(lease, "GFP_KERNEL", 0);
  ASSERT_TRUE(testing::FreePages(stub_.get(), lease, freed.pfn(), 0).ok());
  ASSERT_TRUE(Write(lease, mine.pfn(), 0, Pattern(8192, 'm')).ok());
  ASSERT_TRUE(Write(other, theirs.pfn(), 0, Pattern(4096, 't')).ok());
  struct Case {
    const char* name;
    C code;
    std::function<grpc::Status()> call;
  };
  const std::vector<Case> cases = {
      {"read past the block", C::OUT_OF_RANGE, [&] { return Read(lease, mine.pfn() + 1, 4000, 200); }},
      {"write past the block", C::OUT_OF_RANGE, [&] { return Write(lease, mine.pfn(), 8190, "abc"); }},
      {"offset far past the block", C::OUT_OF_RANGE, [&] { return Read(lease, mine.pfn(), uint64_t{1} << 40, 1); }},
      {"read another lease's page", C::PERMISSION_DENIED, [&] { return Read(lease, theirs.pfn(), 0, 16); }},
      {"write another lease's page", C::PERMISSION_DENIED, [&] { return Write(lease, theirs.pfn(), 0, "x"); }},
      {"read a free page", C::FAILED_PRECONDITION, [&] { return Read(lease, freed.pfn(), 0, 16); }},
      {"write a free page", C::FAILED_PRECONDITION, [&] { return Write(lease, freed.pfn(), 0, "x"); }},
      {"pfn beyond RAM", C::OUT_OF_RANGE, [&] { return Read(lease, 0x10000000, 0, 16); }},
      {"zero length", C::INVALID_ARGUMENT, [&] { return Read(lease, mine.pfn(), 0, 0); }},
      {"empty write", C::INVALID_ARGUMENT, [&] { return Write(lease, mine.pfn(), 0, ""); }},
      {"read above --max_page_io_bytes", C::INVALID_ARGUMENT, [&] { return Read(lease, mine.pfn(), 0, 65537); }},
      {"write above --max_page_io_bytes", C::INVALID_ARGUMENT,
       [&] { return Write(lease, mine.pfn(), 0, std::string(65537, 'x')); }},
      {"no such lease", C::NOT_FOUND, [&] { return Read(lease ^ 0xffff, mine.pfn(), 0, 16); }},
  };
  for (const Case& c : cases) {
    const v1::ValidateResponse before = Census();
    const grpc::Status s = c.call();
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    EXPECT_FALSE(s.error_message().empty()) << c.name;
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages()) << c.name;
    EXPECT_EQ(after.free_pages(), before.free_pages()) << c.name;
    EXPECT_EQ(after.lease_pages(), after.allocated_pages()) << c.name;
  }
  // And the contents are untouched by the refused writes.
  std::string got;
  ASSERT_TRUE(Read(lease, mine.pfn(), 0, 8192, &got).ok());
  EXPECT_EQ(got, Pattern(8192, 'm'));
  ASSERT_TRUE(Read(other, theirs.pfn(), 0, 4096, &got).ok());
  EXPECT_EQ(got, Pattern(4096, 't'));
}

TEST_F(PageContents, MessagesSayWhatWasWrong) {
  const uint64_t lease = NewLease();
  const v1::Allocation mine = Alloc(lease, "GFP_KERNEL", 0);
  grpc::Status s = Read(lease, mine.pfn(), 4000, 200);
  EXPECT_THAT(s.error_message(), HasSubstr("past the end of its order-0 block"));
  s = Read(lease, mine.pfn(), 0, 70000);
  EXPECT_THAT(s.error_message(), HasSubstr("--max_page_io_bytes"));
}

// Lease A allocates zeroed pages, fills them with 'A', frees them; lease B (the same identity, so
// only the block-ownership check stands between them) allocates the same pages and fills them
// with 'B'. A reader keeps reading A's most recent page through A: whenever it succeeds, the
// block was A's for the whole copy, so it sees zeros or 'A's, never a 'B'.
TEST_F(PageContents, AConcurrentFreeNeverLetsAReadSeeTheNextOwnersBytes) {
  // Leases of an hour: they outlive the run however slow the machine (the run has no fixed length).
  const uint64_t a = NewLease(3600 * 1000);
  const uint64_t b = NewLease(3600 * 1000);
  std::atomic<uint64_t> last_pfn{0};
  std::atomic<bool> stop{false};
  std::atomic<int> reads_ok{0}, reads_refused{0}, bad{0};
  auto stub_a = testing::ConnectStub(daemon_->unix_target());
  auto stub_b = testing::ConnectStub(daemon_->unix_target());
  auto stub_r = testing::ConnectStub(daemon_->unix_target());
  auto cycle = [&](PhysMem::Stub* stub, uint64_t lease, const char* gfp, char fill, bool publish) {
    while (!stop.load()) {
      v1::Allocation page;
      if (!testing::AllocPages(stub, lease, gfp, 0, &page).ok()) continue;
      if (publish) last_pfn.store(page.pfn());
      v1::WritePagesRequest w;
      w.set_lease_id(lease);
      w.set_pfn(page.pfn());
      w.set_data(std::string(4096, fill));
      v1::WritePagesResponse wr;
      Ctx ctx;
      stub->WritePages(&ctx, w, &wr);
      testing::FreePages(stub, lease, page.pfn(), 0);
    }
  };
  std::thread ta(cycle, stub_a.get(), a, "GFP_KERNEL|__GFP_ZERO", 'A', true);
  std::thread tb(cycle, stub_b.get(), b, "GFP_KERNEL", 'B', false);
  std::thread reader([&] {
    while (!stop.load()) {
      const uint64_t pfn = last_pfn.load();
      if (pfn == 0) continue;
      v1::ReadPagesRequest r;
      r.set_lease_id(a);
      r.set_pfn(pfn);
      r.set_length(4096);
      v1::ReadPagesResponse resp;
      Ctx ctx;
      if (!stub_r->ReadPages(&ctx, r, &resp).ok()) {
        reads_refused.fetch_add(1);
        continue;
      }
      reads_ok.fetch_add(1);
      if (resp.data().find('B') != std::string::npos) bad.fetch_add(1);
    }
  });
  // At least 2 s of the race, and until the reader has caught A's page at least once: a slow
  // (sanitized, loaded) machine gets there later, not never. The cap only bounds a broken run.
  const auto start = std::chrono::steady_clock::now();
  testing::Eventually(testing::ScaledTimeout(std::chrono::seconds(30)), [&] {
    return std::chrono::steady_clock::now() - start >= std::chrono::seconds(2) && reads_ok.load() > 0;
  });
  stop.store(true);
  ta.join();
  tb.join();
  reader.join();
  EXPECT_EQ(bad.load(), 0) << "a read through lease A returned bytes lease B wrote";
  EXPECT_GT(reads_ok.load(), 0) << "the reader never caught a page while A held it";
  std::fprintf(stderr, "reads ok %d, refused %d\n", reads_ok.load(), reads_refused.load());
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.lease_pages(), v.allocated_pages());
}

}  // namespace
}  // namespace physmem
