// Tests clients/arena_mapping.h against the real physmemd with a file-backed arena on /dev/shm:
// bytes written through the local mapping are what ReadPages returns and the other way round,
// views are exactly a block and refuse to leave it, and mapping is refused with a clear status
// for an anonymous arena and for a uid that may not open the file (run as uid 65534 in a
// re-executed child, see kMapPeerRan).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "clients/arena_mapping.h"
#include "clients/physmem_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/clients/client_options.h"
#include "tests/daemon_process.h"

namespace physmem::client {
namespace {

using ::testing::HasSubstr;

using testing::OptionsFor;

// In the re-executed child (uid 65534): map the file named by the environment and print the
// status code's name, then exit before gtest's main runs.
[[maybe_unused]] const bool kMapPeerRan = [] {
  const char* path = std::getenv("PHYSMEM_MAP_PEER");
  if (path == nullptr) return false;
  v1::GetTargetResponse t;
  t.set_arena_path(path);
  t.set_arena_bytes(std::strtoull(std::getenv("PHYSMEM_MAP_PEER_BYTES"), nullptr, 10));
  t.mutable_profile()->set_page_size(4096);
  absl::StatusOr<std::unique_ptr<ArenaMapping>> m = ArenaMapping::Map(t);
  std::printf("%s\n", std::string(absl::StatusCodeToString(m.status().code())).c_str());
  std::fflush(stdout);
  std::_Exit(0);
}();

std::string ShmPath() {
  std::random_device rd;
  return absl::StrFormat("/dev/shm/physmemd-test-%08x%08x", rd(), rd());
}

class ArenaMappingTest : public ::testing::Test {
 protected:
  ArenaMappingTest()
      : path_(ShmPath()), daemon_({"--target=i386", "--mem_mb=1024", "--arena_path=" + path_}) {}
  ~ArenaMappingTest() override {
    arena_.reset();
    lease_.reset();  // revokes, while the daemon still runs
    client_.reset();
    daemon_.Stop();
    // The daemon keeps its arena file and journal (<path>.journal.*: they outlive a crash).
    testing::RemoveShmFiles(path_);
  }
  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(OptionsFor(daemon_));
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
    // Kept alive while the test runs; an hour's TTL, so that a slow renewal cannot end it.
    absl::StatusOr<std::unique_ptr<Lease>> l = client_->CreateLease({.ttl_ms = int64_t{3600} * 1000});
    ASSERT_TRUE(l.ok()) << l.status();
    lease_ = *std::move(l);
    absl::StatusOr<std::unique_ptr<ArenaMapping>> m = ArenaMapping::Map(*client_);
    ASSERT_TRUE(m.ok()) << m.status();
    arena_ = *std::move(m);
  }

  const std::string path_;
  testing::DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Lease> lease_;
  std::unique_ptr<ArenaMapping> arena_;
};

TEST_F(ArenaMappingTest, MapsTheFileTheDaemonReports) {
  EXPECT_EQ(arena_->path(), path_);
  // The arena backs the managed pages: 1 GiB of x86 RAM less page 0 (trim_bios_range()) and the
  // 158 other pages below 1 MiB that reserve_real_mode() memblock-reserves.
  EXPECT_EQ(arena_->size(), (uint64_t{1024} << 20) - 159 * 4096);
  EXPECT_EQ(arena_->page_size(), 4096u);
}

TEST_F(ArenaMappingTest, LocalWritesAreWhatReadPagesReturns) {
  for (const char* gfp : {"GFP_KERNEL", "GFP_HIGHUSER", "GFP_DMA"}) {
    absl::StatusOr<PageHandle> page = lease_->AllocPages(gfp, 1);
    ASSERT_TRUE(page.ok()) << page.status();
    absl::StatusOr<std::span<std::byte>> bytes = arena_->Block(*page);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    ASSERT_EQ(bytes->size(), 8192u) << "exactly the order-1 block";
    for (size_t i = 0; i < bytes->size(); ++i) (*bytes)[i] = static_cast<std::byte>((i * 13 + gfp[4]) & 0xff);
    absl::StatusOr<std::string> got = lease_->ReadPages(page->pfn(), 0, 8192);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 8192u);
    EXPECT_EQ(std::memcmp(got->data(), bytes->data(), 8192), 0) << gfp << " zone " << page->zone();
  }
}

TEST_F(ArenaMappingTest, WritePagesIsSeenThroughTheMapping) {
  absl::StatusOr<PageHandle> page = lease_->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_TRUE(lease_->WritePages(page->pfn() + 2, 100, "through the daemon").ok());
  absl::StatusOr<std::span<std::byte>> view = arena_->Bytes(page->allocation(), 2 * 4096 + 100, 18);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(view->data()), view->size()), "through the daemon");
}

TEST_F(ArenaMappingTest, ViewsCannotLeaveTheBlock) {
  absl::StatusOr<PageHandle> page = lease_->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(arena_->Bytes(page->allocation(), 4095, 1).ok());
  EXPECT_EQ(arena_->Bytes(page->allocation(), 4095, 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(arena_->Bytes(page->allocation(), 5000, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(arena_->Bytes(page->allocation(), ~uint64_t{0}, 2).status().code(), absl::StatusCode::kOutOfRange);
  v1::Allocation beyond = page->allocation();
  beyond.set_arena_offset(arena_->size());  // one past the arena's end
  EXPECT_EQ(arena_->Block(beyond).status().code(), absl::StatusCode::kOutOfRange);
  beyond.set_arena_offset(arena_->size() - 4096);
  beyond.set_order(1);  // a block that would run past the end
  EXPECT_EQ(arena_->Block(beyond).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(arena_->Page(1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ArenaMappingTest, AnotherUidCannotMapTheArenaFile) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to run a child as uid 65534";
  std::string self(4096, '\0');
  self.resize(static_cast<size_t>(::readlink("/proc/self/exe", self.data(), self.size())));
  std::vector<std::string> env_s = {"PHYSMEM_MAP_PEER=" + path_,
                                    "PHYSMEM_MAP_PEER_BYTES=" + std::to_string(arena_->size())};
  std::vector<char*> envp;
  for (std::string& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  char* argv[] = {self.data(), nullptr};
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(126);
    ::execve(self.c_str(), argv, envp.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[256];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(out, "PERMISSION_DENIED\n");
}

TEST(ArenaMappingAnonymous, IsRefusedWithAClearStatus) {
  testing::DaemonProcess d({"--target=i386", "--mem_mb=64"});
  ASSERT_TRUE(d.Start()) << d.log();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(OptionsFor(d));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<std::unique_ptr<ArenaMapping>> m = ArenaMapping::Map(**c);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("--arena_path"));
}

}  // namespace
}  // namespace physmem::client
