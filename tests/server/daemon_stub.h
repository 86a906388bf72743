// A gtest fixture around one real physmemd process and a raw PhysMem stub on its Unix socket:
// the set-up the gRPC-level integration tests share. StartDaemon() spawns the daemon with the
// test's flags (tests/daemon_process.h) and connects `stub_`; a failed test prints the daemon's
// log; Census() and NewLease() are the calls nearly every such test makes, with their success
// checked (the calls themselves are in stub_calls.h).
//
// Who uses it: tests/server/{physmemd,metrics,identity_limits,page_contents,two_uids,lease_kmap}
// _test.cc, each deriving its own fixture with its machine's flags. Thread-safety: the fixture is
// driven by the test's thread; Census() and NewLease() may also be called from threads the test
// starts (gRPC stubs are thread-safe, gtest's EXPECT is too).
#ifndef PHYSMEM_TESTS_SERVER_DAEMON_STUB_H_
#define PHYSMEM_TESTS_SERVER_DAEMON_STUB_H_

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/daemon_process.h"
#include "tests/server/stub_calls.h"

namespace physmem::testing {

// kTestControlled: the daemon's leases expire when the test advances its lease clock
// (AdvanceLeaseClock, ExpireByClock), not while a slow machine is still making calls into them.
enum class LeaseClockMode { kReal, kTestControlled };

class DaemonStubTest : public ::testing::Test {
 protected:
  // Starts physmemd with `args` (and loopback TCP if `tcp`), then connects `stub_` to its Unix
  // socket. A daemon that does not start fails the test with its log; call it under
  // ASSERT_NO_FATAL_FAILURE when more set-up follows.
  void StartDaemon(std::vector<std::string> args, bool tcp = false, LeaseClockMode clock = LeaseClockMode::kReal) {
    daemon_ = std::make_unique<DaemonProcess>(std::move(args), tcp);
    if (clock == LeaseClockMode::kTestControlled) daemon_->UseLeaseClock();
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
    stub_ = ConnectStub(daemon_->unix_target());
  }

  void TearDown() override {
    if (HasFailure() && daemon_) std::fprintf(stderr, "daemon log:\n%s\n", daemon_->log().c_str());
  }

  // Validate's census: the daemon's invariant check passed and its page counts. Tests compare
  // one taken before a refused call with one taken after it.
  v1::ValidateResponse Census() {
    grpc::Status s;
    v1::ValidateResponse v = Validate(stub_.get(), &s);
    EXPECT_TRUE(s.ok()) << "Validate: " << s.error_message();
    return v;
  }

  // Waits up to `within` for the reaper to have ended `lease` at its deadline: its
  // `event=lease_expired` line, which the daemon logs once every page of the lease is freed.
  // The event itself, rather than a census that happens to match: a test then knows the lease
  // ended by expiry, not by something else, and when.
  // `within` is for the normal build; it is scaled for sanitizer builds (ScaledTimeout).
  bool WaitForExpiry(uint64_t lease, std::chrono::milliseconds within) {
    const std::string line = "event=lease_expired lease=" + std::to_string(lease) + " ";
    return Eventually(ScaledTimeout(within), [&] { return daemon_->log().find(line) != std::string::npos; });
  }

  // With LeaseClockMode::kTestControlled: moves the daemon's lease clock past `ttl` (the TTL the
  // lease was granted or last renewed with) and waits for the reaper to end `lease`.
  void ExpireByClock(uint64_t lease, std::chrono::milliseconds ttl) {
    daemon_->AdvanceLeaseClock(ttl + std::chrono::milliseconds(1));
    ASSERT_TRUE(WaitForExpiry(lease, std::chrono::seconds(5))) << "lease " << lease << " did not expire";
  }

  // A new lease of `ttl_ms` over `stub` (default `stub_`); its id, the failure EXPECTed against.
  uint64_t NewLease(int64_t ttl_ms = 60000, v1::PhysMem::Stub* stub = nullptr) {
    grpc::Status s;
    const uint64_t id = CreateLease(stub != nullptr ? stub : stub_.get(), ttl_ms, &s);
    EXPECT_TRUE(s.ok()) << "CreateLease: " << s.error_message();
    return id;
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<v1::PhysMem::Stub> stub_;
};

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_SERVER_DAEMON_STUB_H_
