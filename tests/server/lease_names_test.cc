// Unique lease names (--unique_lease_names, on by default; the Lessor's name index) against the
// real daemon: a
// second live lease of one identity with the same non-empty name is ALREADY_EXISTS, naming the
// name and the lease that has it, and changes nothing; the name is free again once that lease has
// ended, by revoke or by expiry; the empty name never conflicts; another identity has names of its
// own; leases recovered from the journal keep their names taken. With --nounique_lease_names names
// may repeat, as metric labels shared by many leases do.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using v1::PhysMem;

// Leases here live a day: none may expire while a slow (sanitized, loaded) build still uses it.
// The one that must expire is expired by the test's lease clock.
constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;

// The default: names are unique.
const std::vector<std::string> kUnique = {"--target=i386", "--mem_mb=64"};

struct Created {
  grpc::Status status;
  uint64_t id = 0;
};

Created CreateNamed(PhysMem::Stub* stub, const std::string& name, int64_t ttl_ms = kDayMs) {
  v1::CreateLeaseRequest req;
  req.set_ttl_ms(ttl_ms);
  req.set_name(name);
  v1::CreateLeaseResponse resp;
  testing::Deadline ctx;
  Created c;
  c.status = stub->CreateLease(&ctx, req, &resp);
  c.id = resp.lease_id();
  return c;
}

class LeaseNames : public testing::DaemonStubTest {
 protected:
  std::vector<uint64_t> ListedIds(PhysMem::Stub* stub = nullptr) {
    v1::ListLeasesResponse resp;
    testing::Deadline ctx;
    const grpc::Status s = (stub ? stub : stub_.get())->ListLeases(&ctx, v1::ListLeasesRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::vector<uint64_t> ids;
    for (const v1::LeaseInfo& l : resp.leases()) ids.push_back(l.lease_id());
    return ids;
  }
  // A CreateLease that must be refused as a duplicate of `holder`: ALREADY_EXISTS naming `quoted`
  // (the name as the message quotes it) and the holder's id, with the census unchanged.
  void ExpectDuplicateRefused(const std::string& name, const std::string& quoted, uint64_t holder) {
    const v1::ValidateResponse before = Census();
    const std::vector<uint64_t> listed = ListedIds();
    const Created dup = CreateNamed(stub_.get(), name);
    EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::ALREADY_EXISTS) << dup.status.error_message();
    EXPECT_THAT(dup.status.error_message(), HasSubstr("\"" + quoted + "\""));
    EXPECT_THAT(dup.status.error_message(), HasSubstr("lease " + std::to_string(holder) + " "));
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.leases(), before.leases());
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages());
    EXPECT_EQ(after.free_pages(), before.free_pages());
    EXPECT_EQ(ListedIds(), listed);
  }
};

TEST_F(LeaseNames, ASecondLiveLeaseWithTheNameIsAlreadyExistsAndChangesNothing) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique));
  const Created rx = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(rx.status.ok()) << rx.status.error_message();
  ASSERT_TRUE(testing::AllocPages(stub_.get(), rx.id, "GFP_KERNEL", 2, nullptr).ok());
  ExpectDuplicateRefused("rx", "rx", rx.id);
  // Other names are fine.
  EXPECT_TRUE(CreateNamed(stub_.get(), "tx").status.ok());
  EXPECT_TRUE(CreateNamed(stub_.get(), "rx2").status.ok());
}

TEST_F(LeaseNames, TheMessageQuotesTheNameEscaped) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique));
  // The longest name allowed (64 bytes), with a quote and a newline in it.
  const std::string name = "a\"b\n" + std::string(60, 'x');
  const Created first = CreateNamed(stub_.get(), name);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ExpectDuplicateRefused(name, "a\\\"b\\n" + std::string(60, 'x'), first.id);
}

TEST_F(LeaseNames, TheNameIsFreeAgainOnceItsLeaseIsRevoked) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique));
  const Created first = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), first.id).ok());
  const Created second = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_NE(second.id, first.id);
  ExpectDuplicateRefused("rx", "rx", second.id);
}

TEST_F(LeaseNames, TheNameIsFreeAgainOnceItsLeaseExpires) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique, /*tcp=*/false, testing::LeaseClockMode::kTestControlled));
  const Created first = CreateNamed(stub_.get(), "rx", 60000);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  const Created other = CreateNamed(stub_.get(), "tx", kDayMs);  // stays: only "rx" is freed
  ASSERT_TRUE(other.status.ok()) << other.status.error_message();
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(first.id, std::chrono::milliseconds(60000)));
  EXPECT_TRUE(CreateNamed(stub_.get(), "rx").status.ok());
  EXPECT_EQ(CreateNamed(stub_.get(), "tx").status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(LeaseNames, ALeasePastItsDeadlineHoldsNoNameEvenBeforeTheReaperCollectsIt) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique, /*tcp=*/false, testing::LeaseClockMode::kTestControlled));
  const Created first = CreateNamed(stub_.get(), "rx", 60000);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  // Past its deadline; whether or not the reaper (every 20 ms) has ended it yet, it is not live.
  daemon_->AdvanceLeaseClock(std::chrono::milliseconds(60001));
  const Created second = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  ASSERT_TRUE(WaitForExpiry(first.id, std::chrono::seconds(5)));
  ExpectDuplicateRefused("rx", "rx", second.id);
}

TEST_F(LeaseNames, TheEmptyNameNeverConflicts) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique));
  for (int i = 0; i < 3; ++i) {
    const Created c = CreateNamed(stub_.get(), "");
    EXPECT_TRUE(c.status.ok()) << c.status.error_message();
  }
  EXPECT_EQ(ListedIds().size(), 3u);
}

TEST_F(LeaseNames, AnotherIdentityHasNamesOfItsOwn) {
  // Plaintext TCP: the caller is identified by its address, not by the Unix socket's uid.
  ASSERT_NO_FATAL_FAILURE(StartDaemon(kUnique, /*tcp=*/true));
  std::unique_ptr<PhysMem::Stub> tcp = testing::ConnectStub("127.0.0.1:" + std::to_string(daemon_->tcp_port()));
  const Created mine = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(mine.status.ok()) << mine.status.error_message();
  const Created theirs = CreateNamed(tcp.get(), "rx");
  ASSERT_TRUE(theirs.status.ok()) << theirs.status.error_message();
  EXPECT_EQ(CreateNamed(tcp.get(), "rx").status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // Revoking the other identity's lease frees its name only.
  ASSERT_TRUE(testing::RevokeLease(tcp.get(), theirs.id).ok());
  EXPECT_TRUE(CreateNamed(tcp.get(), "rx").status.ok());
  ExpectDuplicateRefused("rx", "rx", mine.id);
}

TEST_F(LeaseNames, WithTheFlagOffNamesMayRepeat) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=64", "--nounique_lease_names"}));
  EXPECT_TRUE(CreateNamed(stub_.get(), "loadgen").status.ok());
  EXPECT_TRUE(CreateNamed(stub_.get(), "loadgen").status.ok());
}

// A daemon with a journal (a shared arena in /dev/shm), killed and restarted: the leases it
// recovers (server/recovery.cc, Lessor::Adopt) hold their names as created ones do.
class LeaseNamesRecovered : public LeaseNames {
 protected:
  void SetUp() override {
    arena_ = "/dev/shm/physmemd-lease-names-test-" + std::to_string(::getpid());
    Cleanup();
  }
  void TearDown() override {
    LeaseNames::TearDown();
    if (daemon_) {
      daemon_->Kill(SIGKILL);
      daemon_->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10)));
    }
    Cleanup();
  }
  void Cleanup() {
    testing::RemoveShmFiles(arena_);
  }
  std::vector<std::string> Args(bool unique) const {
    std::vector<std::string> a = {"--target=i386", "--mem_mb=64", "--arena_path=" + arena_};
    if (!unique) a.push_back("--nounique_lease_names");
    return a;
  }
  // SIGKILL (no orderly shutdown that would revoke the leases), then a new daemon on the journal.
  void Restart(bool unique) {
    daemon_->Kill(SIGKILL);
    ASSERT_TRUE(daemon_->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10))).has_value());
    ASSERT_NO_FATAL_FAILURE(StartDaemon(Args(unique)));
    ASSERT_TRUE(daemon_->WaitForLog("event=recovered", 1)) << daemon_->log();
  }
  std::string arena_;
};

TEST_F(LeaseNamesRecovered, ARecoveredLeaseKeepsItsName) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(Args(true)));
  const Created rx = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(rx.status.ok()) << rx.status.error_message();
  ASSERT_NO_FATAL_FAILURE(Restart(true));
  const Created dup = CreateNamed(stub_.get(), "rx");
  EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::ALREADY_EXISTS) << dup.status.error_message();
  EXPECT_THAT(dup.status.error_message(), HasSubstr("lease " + std::to_string(rx.id) + " "));
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), rx.id).ok());
  EXPECT_TRUE(CreateNamed(stub_.get(), "rx").status.ok());
}

TEST_F(LeaseNamesRecovered, DuplicatesJournaledWithoutTheFlagHoldTheNameUntilTheLastEnds) {
  // Two "rx" leases made while names could repeat, recovered by a daemon where they cannot: both
  // live on, and the name is taken until neither does.
  ASSERT_NO_FATAL_FAILURE(StartDaemon(Args(false)));
  const Created a = CreateNamed(stub_.get(), "rx"), b = CreateNamed(stub_.get(), "rx");
  ASSERT_TRUE(a.status.ok() && b.status.ok()) << a.status.error_message() << b.status.error_message();
  ASSERT_NO_FATAL_FAILURE(Restart(true));
  EXPECT_EQ(ListedIds().size(), 2u);
  EXPECT_EQ(CreateNamed(stub_.get(), "rx").status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), a.id).ok());
  const Created dup = CreateNamed(stub_.get(), "rx");
  EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(dup.status.error_message(), HasSubstr("lease " + std::to_string(b.id) + " "));
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), b.id).ok());
  EXPECT_TRUE(CreateNamed(stub_.get(), "rx").status.ok());
}

}  // namespace
}  // namespace physmem
