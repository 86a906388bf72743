// The C++ client's keep-alive (clients/physmem_client.h, Lease) across a daemon restart, for real:
// physmemd on a file-backed arena with its journal, a lease kept alive by the library, the daemon
// killed with SIGKILL and started again on the same journal and socket after a downtime shorter
// than the TTL. The lease must come out of it alive, renewed by the same Lease object, with its
// pages and their contents.
//
// Time: the TTL and the downtime are scaled together by TimeScale() (tests/time_scale.h): a
// sanitized daemon starts 5-20x slower, and keeping their ratio keeps the test as hard as on the
// normal build (downtime half the TTL). The kill is placed at the worst moment, just before a
// renewal was due, so the lease has the least time left when the daemon goes away. The 6 s case
// runs on the normal build only (RestartCase::normal_build_only). The library's Lease and
// `physmemctl lease keepalive` (the CLI on top of it) are each tested.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "clients/physmem_client.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace physmem::client {
namespace {

using ::physmem::testing::DaemonProcess;
using ::physmem::testing::Eventually;
using ::physmem::testing::ScaledTimeout;
using ::physmem::testing::TimeScale;
using Clock = std::chrono::steady_clock;

struct RestartCase {
  int64_t ttl_ms;   // normal build; scaled by TimeScale()
  int64_t down_ms;  // from the kill to the new daemon's exec; scaled likewise
  // The 6 s case takes the same code paths as the 2 s one; scaled for a sanitizer
  // (x20 under TSan: a 2-minute TTL) it would wait minutes for renewals and check nothing new.
  bool normal_build_only;
};

// Skips, saying why, a case that runs on the normal build only.
#define SKIP_IF_NORMAL_BUILD_ONLY()                                                                       \
  if (GetParam().normal_build_only && TimeScale() > 1)                                                    \
  GTEST_SKIP() << "TTL " << GetParam().ttl_ms << " ms across " << GetParam().down_ms                      \
               << " ms runs on the normal build only (time scale " << TimeScale()                        \
               << "): the shorter case covers the same code"

std::string CaseName(const ::testing::TestParamInfo<RestartCase>& info) {
  return "Ttl" + std::to_string(info.param.ttl_ms) + "msDown" + std::to_string(info.param.down_ms) + "ms";
}

class KeepAliveAcrossRestart : public ::testing::TestWithParam<RestartCase> {
 protected:
  KeepAliveAcrossRestart()
      : arena_("/dev/shm/physmemd-keepalive-restart-test-" + std::to_string(::getpid())),
        daemon_({"--target=i386", "--mem_mb=64", "--arena_path=" + arena_}) {}

  void SetUp() override { RemoveArenaFiles(); }
  void TearDown() override {
    daemon_.Kill(SIGKILL);
    daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(10)));
    RemoveArenaFiles();
  }
  // The arena and its journal (<arena>.journal.*): nothing is left in /dev/shm.
  void RemoveArenaFiles() {
    testing::RemoveShmFiles(arena_);
  }

  // Renewals seen by the keep-alive callback, with when they came.
  struct Renewal {
    Clock::time_point at;
    int64_t ttl_ms;
  };
  std::vector<Renewal> Renewals() {
    std::lock_guard<std::mutex> l(mu_);
    return renewals_;
  }
  KeepAliveCallback Recorder() {
    return [this](const v1::KeepAliveResponse& r) {
      std::lock_guard<std::mutex> l(mu_);
      renewals_.push_back({Clock::now(), r.ttl_ms()});
    };
  }

  const std::string arena_;
  DaemonProcess daemon_;
  std::mutex mu_;
  std::vector<Renewal> renewals_;  // guarded by mu_
};

TEST_P(KeepAliveAcrossRestart, ALeaseKeptAliveSurvivesAKillAndRestartShorterThanItsTtl) {
  SKIP_IF_NORMAL_BUILD_ONLY();
  const std::chrono::milliseconds ttl(GetParam().ttl_ms * TimeScale());
  const std::chrono::milliseconds down(GetParam().down_ms * TimeScale());
  ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  ClientOptions co;
  co.target = daemon_.unix_target();
  co.connect_timeout_ms = co.call_timeout_ms = ScaledTimeout(std::chrono::seconds(20)).count();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status();

  LeaseOptions lo;
  lo.ttl_ms = ttl.count();
  lo.name = "keepalive-restart";
  lo.on_keepalive = Recorder();
  absl::StatusOr<std::unique_ptr<Lease>> lease = (*client)->CreateLease(lo);
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<PageHandle> block = (*lease)->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(block.ok()) << block.status();
  const std::string pattern = "kept alive across a restart";
  ASSERT_TRUE((*lease)->WritePages(block->pfn(), 100, pattern).ok());

  // Kill just before a renewal is due (9/10 of the renewal period after the last one): the lease
  // then has the least time left that steady keep-alive ever leaves it.
  // (A loaded machine may oversleep past the renewal: then aim at the next one.)
  const auto period = ttl / 4;  // the library's renewal period (clients/physmem_client.cc)
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(20)), [&] { return Renewals().size() >= 2; }));
  size_t before_kill = 0;
  for (int attempt = 0; attempt < 10 && before_kill == 0; ++attempt) {
    const std::vector<Renewal> seen = Renewals();
    std::this_thread::sleep_until(seen.back().at + period * 9 / 10);
    if (Renewals().size() == seen.size()) before_kill = seen.size();
  }
  ASSERT_GT(before_kill, 0u) << "could not place the kill between two renewals";
  daemon_.Kill(SIGKILL);
  const auto killed = Clock::now();
  ASSERT_TRUE(daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(10))).has_value());

  std::this_thread::sleep_until(killed + down);
  ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  ASSERT_TRUE(daemon_.WaitForLog("event=recovered")) << daemon_.log();
  // The keep-alive reconnects and renews on the new daemon.
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(20)), [&] { return Renewals().size() > before_kill; }))
      << (*lease)->keepalive_status() << "\n" << daemon_.log();
  const Renewal first_after = Renewals()[before_kill];
  EXPECT_GT(first_after.ttl_ms, 0) << "the restarted daemon no longer knew the lease:\n" << daemon_.log();
  EXPECT_GE(first_after.at, killed + down);
  EXPECT_FALSE((*lease)->gone());
  EXPECT_EQ(daemon_.LogCount("event=lease_expired"), 0u) << daemon_.log();

  // Still there, from another connection, with its pages and their contents.
  absl::StatusOr<std::unique_ptr<Client>> other = Client::Connect(co);
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<v1::LeaseInfo> info = (*other)->GetLease((*lease)->id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pages_held(), 4u);
  EXPECT_EQ(info->name(), lo.name);
  absl::StatusOr<std::string> read = (*lease)->ReadPages(block->pfn(), 100, pattern.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, pattern);
  // And it keeps being renewed on the new daemon.
  const size_t n = Renewals().size();
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(20)), [&] { return Renewals().size() >= n + 2; }));
  EXPECT_TRUE((*lease)->keepalive_status().ok()) << (*lease)->keepalive_status();
  EXPECT_TRUE(block->Free().ok());
  EXPECT_TRUE((*lease)->Revoke().ok());
}

// `physmemctl lease keepalive` (the library's keep-alive behind a CLI) through the same restart:
// it keeps running, prints renewals from the new daemon, and the lease is still there with its
// pages; SIGTERM then ends it with exit 0.
TEST_P(KeepAliveAcrossRestart, PhysmemctlLeaseKeepaliveKeepsTheLeaseThroughAKillAndRestart) {
  SKIP_IF_NORMAL_BUILD_ONLY();
  const std::chrono::milliseconds ttl(GetParam().ttl_ms * TimeScale());
  const std::chrono::milliseconds down(GetParam().down_ms * TimeScale());
  ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  ClientOptions co;
  co.target = daemon_.unix_target();
  co.connect_timeout_ms = co.call_timeout_ms = ScaledTimeout(std::chrono::seconds(20)).count();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status();
  LeaseOptions lo;
  lo.ttl_ms = ttl.count();
  lo.name = "ctl-keepalive";
  lo.keepalive = false;  // physmemctl keeps it alive
  absl::StatusOr<std::unique_ptr<Lease>> lease = (*client)->CreateLease(lo);
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<PageHandle> block = (*lease)->AllocPages("GFP_KERNEL", 1);
  ASSERT_TRUE(block.ok()) << block.status();
  block->Release();
  const uint64_t id = (*lease)->Release();

  // physmemctl's stdout through a pipe; a reader thread timestamps each renewal line.
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  std::vector<std::string> args = {PHYSMEMCTL_BINARY, "--target=" + daemon_.unix_target(), "lease", "keepalive",
                                   lo.name};
  const pid_t ctl = ::fork();
  if (ctl == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(out[1], STDOUT_FILENO);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  std::thread reader([&] {
    std::string line;
    char c;
    while (::read(out[0], &c, 1) == 1) {
      if (c != '\n') {
        line += c;
        continue;
      }
      std::lock_guard<std::mutex> l(mu_);
      const size_t at = line.find("ttl_ms=");
      renewals_.push_back({Clock::now(), at == std::string::npos ? -1 : std::stoll(line.substr(at + 7))});
      line.clear();
    }
  });
  // Stops physmemctl (SIGTERM) and the reader, also when an assertion ends the test early.
  bool stopped = false;
  const auto stop_ctl = [&] {
    stopped = true;
    ::kill(ctl, SIGTERM);
    int status = 0;
    const pid_t r = ::waitpid(ctl, &status, 0);
    reader.join();
    ::close(out[0]);
    return r == ctl ? status : -1;
  };
  absl::Cleanup stop_on_return = [&] {
    if (!stopped) stop_ctl();
  };

  const auto period = ttl / 4;
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(20)), [&] { return Renewals().size() >= 2; }))
      << "physmemctl printed no renewals";
  size_t before_kill = 0;
  for (int attempt = 0; attempt < 10 && before_kill == 0; ++attempt) {
    const std::vector<Renewal> seen = Renewals();
    std::this_thread::sleep_until(seen.back().at + period * 9 / 10);
    if (Renewals().size() == seen.size()) before_kill = seen.size();
  }
  daemon_.Kill(SIGKILL);
  const auto killed = Clock::now();
  ASSERT_TRUE(daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(10))).has_value());
  std::this_thread::sleep_until(killed + down);
  ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  const bool renewed =
      Eventually(ScaledTimeout(std::chrono::seconds(20)), [&] { return Renewals().size() > before_kill + 1; });
  int status = 0;
  const bool running = ::waitpid(ctl, &status, WNOHANG) == 0;
  EXPECT_TRUE(running) << "physmemctl exited (status " << status << ") during the restart";
  EXPECT_TRUE(renewed) << "no renewal after the restart\n" << daemon_.log();
  for (const Renewal& r : Renewals()) EXPECT_GT(r.ttl_ms, 0) << "a renewal line without a live TTL";
  EXPECT_EQ(daemon_.LogCount("event=lease_expired"), 0u) << daemon_.log();
  // The lease, from a new connection (its first call may meet the old connection's end).
  absl::StatusOr<std::unique_ptr<Client>> other = Client::Connect(co);
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<v1::LeaseInfo> info;
  EXPECT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(10)), [&] {
    info = (*other)->GetLease(id);
    return info.ok();
  })) << info.status();
  if (info.ok()) {
    EXPECT_EQ(info->pages_held(), 2u);
  }
  if (running) {
    const int exit_status = stop_ctl();
    EXPECT_TRUE(WIFEXITED(exit_status) && WEXITSTATUS(exit_status) == 0) << exit_status;
  }
  EXPECT_TRUE((*other)->RevokeLease(id).ok());
}

// The two cases: a 2 s lease across a 1 s restart, a 6 s lease across a 3 s one.
INSTANTIATE_TEST_SUITE_P(Restarts, KeepAliveAcrossRestart,
                         ::testing::Values(RestartCase{2000, 1000, false}, RestartCase{6000, 3000, true}), CaseName);

}  // namespace
}  // namespace physmem::client
