// Journal segments do not pile up across restarts (server/journal.h): every start opens a new
// segment (64 MiB apparent), and a daemon restarted often on a small journal never reached the
// compaction threshold, so one segment per restart stayed in /dev/shm. Now a start that finds
// more than one segment compacts them into the snapshot: at most two segments and the snapshot
// remain, and the leases they describe are all still recovered. Real daemon, real kill -9.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <string>

#include "clients/physmem_client.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace physmem {
namespace {

using ::physmem::testing::DaemonProcess;
using ::physmem::testing::Eventually;
using ::physmem::testing::ScaledTimeout;

class JournalSegments : public ::testing::Test {
 protected:
  JournalSegments()
      : arena_("/dev/shm/physmemd-journal-segments-test-" + std::to_string(::getpid())),
        daemon_({"--target=i386", "--mem_mb=64", "--arena_path=" + arena_}) {}
  void SetUp() override { RemoveArenaFiles(); }
  void TearDown() override {
    daemon_.Kill(SIGKILL);
    daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(10)));
    RemoveArenaFiles();
  }
  void RemoveArenaFiles() {
    testing::RemoveShmFiles(arena_);
  }
  // Files <arena>.journal.<gen>: the segments.
  int Segments() {
    const std::regex segment(std::filesystem::path(arena_).filename().string() + R"(\.journal\.\d+)");
    int n = 0;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
      if (std::regex_match(e.path().filename().string(), segment)) ++n;
    }
    return n;
  }
  void KillAndRestart() {
    daemon_.Kill(SIGKILL);
    ASSERT_TRUE(daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(10))).has_value());
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  }

  const std::string arena_;
  DaemonProcess daemon_;
};

TEST_F(JournalSegments, RestartsLeaveAtMostTwoSegmentsAndEveryLeaseIsRecovered) {
  ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  client::ClientOptions co;
  co.target = daemon_.unix_target();
  co.connect_timeout_ms = co.call_timeout_ms = ScaledTimeout(std::chrono::seconds(20)).count();
  absl::StatusOr<std::unique_ptr<client::Client>> c;
  constexpr int kRestarts = 6;
  std::vector<uint64_t> ids;
  for (int i = 0; i < kRestarts; ++i) {
    if (i == 0) c = client::Client::Connect(co);
    ASSERT_TRUE(c.ok()) << c.status();
    // After a restart the first call can fail (UNAVAILABLE, broken pipe: gRPC had not noticed the
    // old connection end, docs/recovery.md); the next one reconnects.
    ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(10)), [&] { return (*c)->GetTarget().ok(); }));
    // A lease a day long in each run, left to the daemon (Release): each run's segment holds one.
    absl::StatusOr<std::unique_ptr<client::Lease>> lease =
        (*c)->CreateLease({.ttl_ms = int64_t{24} * 3600 * 1000, .name = "run" + std::to_string(i), .keepalive = false});
    ASSERT_TRUE(lease.ok()) << lease.status();
    ids.push_back((*lease)->Release());
    ASSERT_NO_FATAL_FAILURE(KillAndRestart());
    EXPECT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(10)), [&] { return Segments() <= 2; }))
        << Segments() << " segments after restart " << i + 1 << "\n" << daemon_.log();
  }
  EXPECT_GE(daemon_.LogCount("event=journal_compacted"), 1u) << daemon_.log();
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(10)), [&] { return (*c)->GetTarget().ok(); }));
  for (uint64_t id : ids) EXPECT_TRUE((*c)->GetLease(id).ok()) << "lease " << id << " lost\n" << daemon_.log();
}

}  // namespace
}  // namespace physmem
