// Journal faults for real (docs/recovery.md "When the journal cannot be written"): physmemd's
// journal on a small tmpfs the test mounts, which the test then fills to the last byte. The
// daemon must refuse what it cannot journal — allocations (single and bulk), new leases — with
// UNAVAILABLE naming the journal and the errno, the census unchanged after every refusal; it keeps
// answering reads and frees (from the journal's reserve); once space returns, allocations work
// again by themselves; and after a kill -9 the restarted daemon recovers exactly the acknowledged
// blocks. Needs root for mount(2) (CI runs as root); elsewhere it is skipped with the reason.
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/daemon_stub.h"
#include "tests/server/metrics_scrape.h"
#include "tests/time_scale.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using testing::kLongTtlMs;

class JournalFull : public testing::DaemonStubTest {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) {
      std::fprintf(stderr, "journal_full_test: skipped: mounting a tmpfs needs root (CI runs as root)\n");
      GTEST_SKIP() << "mounting a tmpfs needs root (CI runs as root)";
    }
    char tmpl[] = "/tmp/journal-full-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=8m,mode=0700") != 0) {
      const std::string why = std::string("mount -t tmpfs: ") + std::strerror(errno) +
                              " (a container without "
                              "CAP_SYS_ADMIN?)";
      std::fprintf(stderr, "journal_full_test: skipped: %s\n", why.c_str());
      ::rmdir(dir_.c_str());
      dir_.clear();
      GTEST_SKIP() << why;
    }
    mounted_ = true;
    arena_ = "/dev/shm/physmemd-journal-full-test-" + std::to_string(::getpid());
    RemoveArena();
  }
  void TearDown() override {
    DaemonStubTest::TearDown();
    daemon_.reset();  // SIGTERM, or SIGKILL if it hangs
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) ::rmdir(dir_.c_str());
    RemoveArena();
  }
  void RemoveArena() {
    testing::RemoveShmFiles(arena_);
  }
  std::vector<std::string> Args() const {
    return {"--mem_mb=64", "--arena_path=" + arena_, "--journal_path=" + dir_ + "/j", testing::kServeMetrics};
  }
  // Writes `path` until the file system has no byte left; the bytes written.
  static uint64_t Fill(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return 0;
    std::setvbuf(f, nullptr, _IONBF, 0);
    const std::string chunk(4096, 'f');
    uint64_t n = 0;
    while (std::fwrite(chunk.data(), 1, chunk.size(), f) == chunk.size()) n += chunk.size();
    std::fclose(f);
    return n;
  }
  // The refusal names the journal and the errno, and the census did not move.
  void ExpectRefused(const grpc::Status& s, const v1::ValidateResponse& before) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("journal: write to " + dir_ + "/j."));
    EXPECT_THAT(s.error_message(), HasSubstr(std::strerror(ENOSPC)));
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages());
    EXPECT_EQ(after.free_pages(), before.free_pages());
    EXPECT_EQ(after.lease_pages(), before.lease_pages());
    EXPECT_EQ(after.identity_pages(), before.identity_pages());
    EXPECT_EQ(after.leases(), before.leases());
  }

  std::string dir_, arena_;
  bool mounted_ = false;
};

TEST_F(JournalFull, RefusesWhatItCannotJournalKeepsFreeingAndRecoversOnceSpaceReturns) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(Args()));
  const uint64_t lease = NewLease(kLongTtlMs);
  std::vector<uint64_t> held;  // acknowledged and not freed: what recovery must bring back
  for (int i = 0; i < 8; ++i) {
    v1::Allocation a;
    ASSERT_TRUE(testing::AllocPages(stub_.get(), lease, "GFP_KERNEL", 0, &a).ok());
    held.push_back(a.pfn());
  }
  ASSERT_GT(Fill(dir_ + "/filler"), 0u);

  // Bulk allocations and frees use up the journal's backed slots; then it must ask the file
  // system for more, which has none.
  grpc::Status refused;
  v1::ValidateResponse before;
  for (int round = 0; round < 100 && refused.ok(); ++round) {
    before = Census();
    v1::AllocPagesBulkResponse got;
    refused = testing::AllocBulk(stub_.get(), lease, "GFP_KERNEL", 2048, &got);
    if (!refused.ok()) break;
    const std::vector<uint64_t> pfns(got.pfn().begin(), got.pfn().end());
    ASSERT_TRUE(testing::FreeBulk(stub_.get(), lease, pfns).ok()) << "round " << round;
  }
  ASSERT_FALSE(refused.ok()) << "the journal never ran out of space";
  std::printf("refused: %s\n", refused.error_message().c_str());
  ExpectRefused(refused, before);
  // What room the refused bulk record left goes to single pages (at most 16 KiB of them), then
  // none fits.
  grpc::Status single;
  for (int i = 0; i < 1000; ++i) {
    before = Census();
    v1::Allocation a;
    single = testing::AllocPages(stub_.get(), lease, "GFP_KERNEL", 0, &a);
    if (!single.ok()) break;
    held.push_back(a.pfn());
  }
  ExpectRefused(single, before);
  grpc::Status created;
  testing::CreateLease(stub_.get(), kLongTtlMs, &created);
  ExpectRefused(created, before);
  EXPECT_TRUE(daemon_->WaitForLog("event=journal_failing"));
  EXPECT_EQ(testing::MetricSum(daemon_->metrics_port(), "physmem_journal_failing"), 1);
  EXPECT_GE(testing::MetricSum(daemon_->metrics_port(), "physmem_journal_failed_appends_total"), 3);

  // A renewal gives time out: refused too, and over the KeepAlive stream not as "TTL 0" (which
  // would tell the client its lease is gone) but by ending the stream with the status.
  {
    v1::KeepAliveRequest req;
    req.set_lease_id(lease);
    v1::KeepAliveResponse resp;
    testing::Deadline ctx;
    ExpectRefused(stub_->RenewLease(&ctx, req, &resp), before);
    testing::Deadline sctx;
    auto stream = stub_->KeepAlive(&sctx);
    ASSERT_TRUE(stream->Write(req));
    EXPECT_FALSE(stream->Read(&resp)) << "answered ttl_ms=" << resp.ttl_ms();
    ExpectRefused(stream->Finish(), before);
  }

  // Reads and frees go on: a free needs one 64-byte record, from the reserve.
  EXPECT_EQ(testing::ListLeases(stub_.get()), 1u);
  ASSERT_TRUE(testing::FreePages(stub_.get(), lease, held.back(), 0).ok());
  held.pop_back();
  EXPECT_EQ(Census().allocated_pages(), before.allocated_pages() - 1);

  // Space returns: the next allocation is journaled, without a restart.
  std::filesystem::remove(dir_ + "/filler");
  v1::Allocation a;
  ASSERT_TRUE(testing::AllocPages(stub_.get(), lease, "GFP_KERNEL", 0, &a).ok());
  held.push_back(a.pfn());
  EXPECT_TRUE(daemon_->WaitForLog("event=journal_writable"));
  EXPECT_EQ(testing::MetricSum(daemon_->metrics_port(), "physmem_journal_failing"), 0);

  // And every acknowledged block, nothing refused, comes back after a crash.
  daemon_->Kill(SIGKILL);
  ASSERT_TRUE(daemon_->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10))));
  ASSERT_NO_FATAL_FAILURE(StartDaemon(Args()));
  const v1::ValidateResponse after = Census();
  EXPECT_EQ(after.leases(), 1u);
  EXPECT_EQ(after.allocated_pages(), held.size());
  EXPECT_EQ(after.lease_pages(), held.size());
  for (uint64_t pfn : held) {
    v1::PageAddressRequest req;
    req.set_lease_id(lease);
    req.set_pfn(pfn);
    v1::PageAddressResponse resp;
    testing::Deadline ctx;
    EXPECT_TRUE(stub_->PageAddress(&ctx, req, &resp).ok()) << "pfn " << pfn << " not recovered";
  }
}

}  // namespace
}  // namespace physmem
