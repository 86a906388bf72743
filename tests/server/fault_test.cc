// Fault tests against the real physmemd process: clients killed in the middle of a call, a client
// that opens many leases and streams and disappears, clients that stop reading (SIGSTOP), and
// SIGTERM while clients hammer the daemon. Clients are separate processes (fault_helpers.h's
// ChildClient) killed for real; nothing is simulated.
//
// Time: a client's lease lives until the test moves the daemon's lease clock past its TTL
// (DaemonProcess::UseLeaseClock) after killing or stopping the client, and the test then waits for
// the daemon's `lease_expired` lines; nothing races a TTL against a slow machine. The test sees
// calls parked or finished inside the daemon through its /metrics. Every real-time wait is bounded
// by ScaledTimeout() (tests/time_scale.h): a bound only a hang, a leak or a lost wake-up would
// miss. The one real-time guarantee checked as such is SIGTERM answering a parked call promptly.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/server/fault_helpers.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::ChildClient;
using testing::Deadline;
using testing::ScaledTimeout;
using v1::PhysMem;

// A child's lease: it outlives any slow machine and ends when the test moves the lease clock past
// it, after the child is gone. The test's own leases (the longest TTL the daemon grants by
// default) outlive those moves.
constexpr milliseconds kChildTtl = std::chrono::hours(1);
constexpr milliseconds kTestTtl = std::chrono::hours(24);

// ---------------------------------------------------------------------------------------------
// The client programs (run only as children, by ChildClient).

// A keep-alive thread for `lease` over a stream of its own, renewing every TTL/3 as a client
// library does, until the process dies. Returns once the first renewal is answered (false if it
// failed): from then on the daemon has no renewal of `lease` in flight (the next is 20 minutes
// away), so once the test kills this process and moves the lease clock past the TTL, it expires.
bool KeepAliveForever(const std::string& target, uint64_t lease) {
  auto first = std::make_shared<std::promise<bool>>();
  std::future<bool> renewed = first->get_future();
  std::thread([target, lease, first] {
    auto stub = testing::OwnStub(target);
    grpc::ClientContext ctx;
    auto stream = stub->KeepAlive(&ctx);
    for (bool told = false;; told = true) {
      v1::KeepAliveRequest k;
      k.set_lease_id(lease);
      v1::KeepAliveResponse r;
      const bool ok = stream->Write(k) && stream->Read(&r) && r.ttl_ms() > 0;
      if (!told) first->set_value(ok);
      if (!ok) return;
      std::this_thread::sleep_for(kChildTtl / 3);
    }
  }).detach();
  return renewed.get();
}

// Allocates 10 pages, then parks in a GFP_KERNEL allocation on a full machine (a deadline far
// beyond the test's: the daemon's --max_alloc_wait_ms bounds the wait). READY <lease id>.
TEST(ChildClient, DISABLED_WaitForMemory) {
  const std::string target = testing::ChildTarget();
  auto stub = testing::OwnStub(target);
  const uint64_t lease = testing::CreateLease(stub.get(), kChildTtl.count());
  ASSERT_NE(lease, 0u);
  ASSERT_TRUE(KeepAliveForever(target, lease));
  v1::AllocPagesBulkResponse got;
  ASSERT_TRUE(testing::AllocBulk(stub.get(), lease, "GFP_KERNEL|__GFP_MEMALLOC", 10, &got).ok());
  testing::Ready(std::to_string(lease));
  v1::Allocation a;
  testing::AllocPages(stub.get(), lease, "GFP_KERNEL", 0, &a, 600000);
  std::this_thread::sleep_for(std::chrono::hours(1));
}

// Three threads allocate 8192 pages in one bulk call and free them in one, over and over.
// READY <lease id> once each has done a round.
TEST(ChildClient, DISABLED_BulkForever) {
  const std::string target = testing::ChildTarget();
  auto stub = testing::OwnStub(target);
  const uint64_t lease = testing::CreateLease(stub.get(), kChildTtl.count());
  ASSERT_NE(lease, 0u);
  ASSERT_TRUE(KeepAliveForever(target, lease));
  std::atomic<int> rounds{0};
  for (int t = 0; t < 3; ++t) {
    std::thread([&, target] {
      auto s = testing::OwnStub(target);
      for (;;) {
        v1::AllocPagesBulkResponse got;
        if (testing::AllocBulk(s.get(), lease, "GFP_KERNEL", 8192, &got).ok()) {
          ++rounds;
          testing::FreeBulk(s.get(), lease, {got.pfn().begin(), got.pfn().end()});
        }
      }
    }).detach();
  }
  while (rounds.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  testing::Ready(std::to_string(lease));
  std::this_thread::sleep_for(std::chrono::hours(1));
}

// Opens FAULT_LEASES leases, 4 pages each, renewed over FAULT_STREAMS KeepAlive streams, each on
// a connection of its own; READY <number of leases> once every stream has renewed each of its
// leases (answered: no renewal is in flight after that, the next round is TTL/3 away); then waits
// to be killed.
TEST(ChildClient, DISABLED_ManyLeasesAndStreams) {
  const std::string target = testing::ChildTarget();
  const int nleases = testing::EnvInt("FAULT_LEASES", 100);
  const int nstreams = testing::EnvInt("FAULT_STREAMS", 20);
  auto stub = testing::OwnStub(target);
  std::vector<uint64_t> leases;
  for (int i = 0; i < nleases; ++i) {
    const uint64_t lease = testing::CreateLease(stub.get(), kChildTtl.count());
    ASSERT_NE(lease, 0u) << "lease " << i;
    v1::AllocPagesBulkResponse got;
    ASSERT_TRUE(testing::AllocBulk(stub.get(), lease, "GFP_KERNEL", 4, &got).ok());
    leases.push_back(lease);
  }
  std::atomic<int> streaming{0};
  for (int s = 0; s < nstreams; ++s) {
    std::vector<uint64_t> mine;
    for (size_t i = static_cast<size_t>(s); i < leases.size(); i += static_cast<size_t>(nstreams)) mine.push_back(leases[i]);
    std::thread([&streaming, target, mine] {
      auto ch = testing::OwnChannel(target);
      auto st = PhysMem::NewStub(ch);
      grpc::ClientContext ctx;
      auto stream = st->KeepAlive(&ctx);
      bool counted = false;
      for (;;) {
        for (uint64_t id : mine) {
          v1::KeepAliveRequest k;
          k.set_lease_id(id);
          v1::KeepAliveResponse r;
          if (!stream->Write(k) || !stream->Read(&r)) return;
        }
        if (!counted) {
          counted = true;
          ++streaming;
        }
        std::this_thread::sleep_for(kChildTtl / 3);
      }
    }).detach();
  }
  while (streaming.load() < nstreams) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  testing::Ready(std::to_string(leases.size()));
  std::this_thread::sleep_for(std::chrono::hours(1));
}

// A client the test will SIGSTOP: a KeepAlive stream written as fast as the window allows and
// never read, and two threads asking for 65536-page bulk replies (about 2 MiB each). READY
// <lease id> once each thread has done a round.
TEST(ChildClient, DISABLED_FloodThenStop) {
  const std::string target = testing::ChildTarget();
  auto stub = testing::OwnStub(target);
  const uint64_t lease = testing::CreateLease(stub.get(), kChildTtl.count());
  ASSERT_NE(lease, 0u);
  std::thread([target, lease] {
    auto st = testing::OwnStub(target);
    grpc::ClientContext ctx;
    auto stream = st->KeepAlive(&ctx);
    v1::KeepAliveRequest k;
    k.set_lease_id(lease);
    while (stream->Write(k)) {
    }
  }).detach();
  std::atomic<int> rounds{0};
  for (int t = 0; t < 2; ++t) {
    std::thread([&, target] {
      auto st = testing::OwnStub(target);
      for (;;) {
        v1::AllocPagesBulkResponse got;
        if (testing::AllocBulk(st.get(), lease, "GFP_KERNEL", 65536, &got).ok()) {
          ++rounds;
          testing::FreeBulk(st.get(), lease, {got.pfn().begin(), got.pfn().end()});
        }
      }
    }).detach();
  }
  while (rounds.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  testing::Ready(std::to_string(lease));
  std::this_thread::sleep_for(std::chrono::hours(1));
}

// ---------------------------------------------------------------------------------------------

class Fault : public ::testing::Test {
 protected:
  // Starts physmemd with `args`; with `lease_clock` (the default) on a lease clock the test moves
  // (ExpireChildLeases), so that a child's leases end when the test says, not by a race.
  void StartDaemon(std::vector<std::string> args, bool lease_clock = true) {
    args.insert(args.begin(), testing::kServeMetrics);  // Metric() watches the daemon's counters
    daemon_ = std::make_unique<testing::DaemonProcess>(std::move(args));
    if (lease_clock) daemon_->UseLeaseClock();
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
    stub_ = testing::OwnStub(daemon_->unix_target());
  }
  void TearDown() override {
    if (HasFailure() && daemon_) std::fprintf(stderr, "daemon log (tail):\n%s\n", Tail(daemon_->log()).c_str());
  }
  static std::string Tail(const std::string& s) { return s.size() > 6000 ? s.substr(s.size() - 6000) : s; }

  // Validate's census. Only while the daemon is quiet: the allocator's invariant checker needs no
  // allocation or free to run beside it (allocator/page_allocator.h), and while a lease's pages
  // are being freed it can report a page in transit as lost.
  v1::ValidateResponse Census() {
    grpc::Status s;
    v1::ValidateResponse c = testing::Validate(stub_.get(), &s);
    EXPECT_TRUE(s.ok()) << "Validate: " << s.error_message();
    EXPECT_EQ(c.allocated_pages(), c.lease_pages()) << "allocator and leases disagree";
    return c;
  }
  // Free pages of all zones from GetZoneInfo: a statistics snapshot, safe to poll at any time.
  uint64_t FreePagesNow() {
    v1::GetZoneInfoResponse resp;
    Deadline ctx;
    if (!stub_->GetZoneInfo(&ctx, v1::GetZoneInfoRequest(), &resp).ok()) return 0;
    uint64_t n = 0;
    for (const v1::ZoneInfo& z : resp.zones()) n += z.free_pages();
    return n;
  }
  uint64_t TotalPages() {
    v1::GetTargetResponse t;
    Deadline ctx;
    EXPECT_TRUE(stub_->GetTarget(&ctx, v1::GetTargetRequest(), &t).ok());
    return t.total_pages();
  }
  // Every page free and no lease left within `within` (scaled; polled without Validate), then
  // Validate's census once the daemon is quiet.
  void ExpectAllReclaimed(milliseconds within) {
    const uint64_t total = TotalPages();
    EXPECT_TRUE(testing::Eventually(ScaledTimeout(within),
                                    [&] { return FreePagesNow() == total && testing::ListLeases(stub_.get()) == 0; }))
        << "free pages " << FreePagesNow() << " of " << total << ", leases " << testing::ListLeases(stub_.get());
    const v1::ValidateResponse c = Census();
    EXPECT_EQ(c.allocated_pages(), 0u);
    EXPECT_EQ(c.leases(), 0u);
    EXPECT_EQ(c.free_pages(), c.total_pages());
  }

  // After the child that renewed them is gone: moves the lease clock past kChildTtl and waits for
  // the daemon to have logged `expiries` lease_expired lines in all (the reaper logs each once the
  // lease's pages are free).
  void ExpireChildLeases(size_t expiries) {
    daemon_->AdvanceLeaseClock(kChildTtl + milliseconds(1));
    ASSERT_TRUE(daemon_->WaitForLog("event=lease_expired", expiries, seconds(10)))
        << daemon_->LogCount("event=lease_expired") << " lease_expired lines, " << expiries << " expected";
  }
  static std::string ExpiredLine(const std::string& lease) { return "event=lease_expired lease=" + lease + " "; }

  // The sum of a metric's samples (testing::MetricSum) on the daemon's exporter.
  double Metric(const std::string& name, const std::vector<std::string>& labels = {}) {
    return testing::MetricSum(daemon_->metrics_port(), name, labels);
  }
  // Allocation failures so far (a parked call counts one per attempt: its first, then each retry
  // from the waiter queue every 20 ms), those preferring `zone` if given.
  double AllocFailures(const std::string& zone = "") {
    return Metric("physmem_alloc_failures_total", zone.empty() ? std::vector<std::string>{}
                                                               : std::vector<std::string>{"zone=\"" + zone + "\""});
  }
  // AllocPages calls the daemon has started and not answered (nor dropped) yet. Answered ones are
  // read first, so the difference never undercounts.
  double AllocPagesInFlight() {
    const std::vector<std::string> method = {"grpc_method=\"AllocPages\""};
    const double handled = Metric("grpc_server_handled_total", method);
    return Metric("grpc_server_started_total", method) - handled;
  }

  std::unique_ptr<testing::DaemonProcess> daemon_;
  std::unique_ptr<PhysMem::Stub> stub_;
};

std::string Ms(milliseconds d) { return std::to_string(d.count()); }

// ---- Clients killed mid-call ----

TEST_F(Fault, ClientKilledWhileWaitingForMemoryLeavesNothingBehind) {
  // The child's wait is bounded far beyond the test (a minute, scaled): it is still waiting when
  // it is killed.
  StartDaemon({"--mem_mb=64", "--max_alloc_wait_ms=" + Ms(ScaledTimeout(seconds(60))),
               "--identity_dma_pages=4096"});  // fills ZONE_DMA too
  const uint64_t hog = testing::CreateLease(stub_.get(), kTestTtl.count());
  std::vector<uint64_t> pages = testing::FillMachine(stub_.get(), hog);
  ASSERT_GT(pages.size(), 12000u);
  // Ten pages back: the child takes them (__GFP_MEMALLOC), and then the machine is full.
  ASSERT_TRUE(testing::FreeBulk(stub_.get(), hog, std::vector<uint64_t>(pages.end() - 10, pages.end())).ok());
  pages.resize(pages.size() - 10);
  const double failures = AllocFailures();
  ChildClient child("WaitForMemory", daemon_->unix_target());
  const std::string lease = child.WaitReady();
  ASSERT_NE(lease, "");
  // Parked in its GFP_KERNEL wait: its first attempt and a retry from the waiter queue have failed.
  ASSERT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)), [&] { return AllocFailures() >= failures + 2; }))
      << "the child's allocation did not park";
  EXPECT_EQ(Census().allocated_pages(), pages.size() + 10);
  child.Kill();

  EXPECT_TRUE(testing::Nop(stub_.get()));
  // Nothing renews its lease now: past its TTL it expires, and its 10 pages come back.
  ASSERT_NO_FATAL_FAILURE(ExpireChildLeases(1));
  EXPECT_EQ(daemon_->LogCount(ExpiredLine(lease)), 1u) << "expired, but not the child's lease " << lease;
  const uint64_t total = TotalPages();
  EXPECT_EQ(FreePagesNow(), total - pages.size()) << "the killed client's 10 pages did not come back";
  EXPECT_EQ(Census().leases(), 1u);
  // Take those 10 back, so the machine is full again.
  v1::AllocPagesBulkResponse again;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), hog, "GFP_KERNEL|__GFP_MEMALLOC", 10, &again).ok());
  ASSERT_EQ(again.pfn_size(), 10);
  // The dead client's parked allocation must not take a page freed now for a lease that is gone.
  // The census comes once the daemon has answered every AllocPages call it started, that one
  // included (cancelled with its client, or failed with its lease): it had its chance by then.
  ASSERT_TRUE(testing::FreeBulk(stub_.get(), hog, {pages[0], pages[1]}).ok());
  EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)), [&] { return AllocPagesInFlight() == 0; }))
      << "the dead client's allocation is still parked";
  EXPECT_EQ(Census().allocated_pages(), pages.size() + 10 - 2);
  // They are free for anyone alive.
  v1::AllocPagesBulkResponse two;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), hog, "GFP_KERNEL|__GFP_MEMALLOC", 2, &two).ok());
  EXPECT_EQ(two.pfn_size(), 2);
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), hog).ok());
  ExpectAllReclaimed(seconds(1));
}

TEST_F(Fault, ClientsKilledInTheMiddleOfBulkCallsLeaveNothingBehind) {
  StartDaemon({"--mem_mb=128"});
  std::mt19937 rng(7);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ChildClient child("BulkForever", daemon_->unix_target());
    const std::string lease = child.WaitReady();
    ASSERT_NE(lease, "");
    // Somewhere inside a bulk allocation, a bulk free, or a reply on the wire.
    std::this_thread::sleep_for(milliseconds(20 + rng() % 300));
    child.Kill();
    ASSERT_TRUE(testing::Nop(stub_.get())) << "daemon unresponsive";
    // Its lease expires once the clock passes its TTL; a bulk call of the dead client that the
    // daemon is still running must not leave a page behind either.
    ASSERT_NO_FATAL_FAILURE(ExpireChildLeases(static_cast<size_t>(round) + 1));
    EXPECT_EQ(daemon_->LogCount(ExpiredLine(lease)), 1u) << "expired, but not the child's lease " << lease;
    ExpectAllReclaimed(seconds(5));
  }
  EXPECT_TRUE(daemon_->Running());
}

// ---- A client that opens many leases and streams, then disappears ----

TEST_F(Fault, ManyLeasesAndStreamsOfAVanishedClientAreAllReclaimed) {
  constexpr int kLimit = 200;  // --max_leases_per_identity: the child takes all of them
  StartDaemon({"--mem_mb=64", "--max_leases_per_identity=" + std::to_string(kLimit)});
  const pid_t pid = daemon_->pid();
  const std::vector<std::string> env = {"FAULT_LEASES=" + std::to_string(kLimit), "FAULT_STREAMS=40"};
  // Round 0 warms the daemon's gRPC thread pools up; round 1 must then leave the daemon exactly as
  // round 0 did: a leak of threads, fds, leases or pages per vanished client shows as growth.
  int threads_after_first = 0, sockets_after_first = 0;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const int sockets_before = testing::OpenSockets(pid);
    ChildClient child("ManyLeasesAndStreams", daemon_->unix_target(), env);
    ASSERT_EQ(child.WaitReady(), std::to_string(kLimit));
    EXPECT_EQ(testing::ListLeases(stub_.get()), static_cast<size_t>(kLimit));
    EXPECT_EQ(Census().allocated_pages(), 4u * kLimit);
    EXPECT_GE(testing::OpenSockets(pid), sockets_before + 40) << "a connection per stream";
    // Same uid, same identity: the limit is reached for this process too.
    grpc::Status s;
    EXPECT_EQ(testing::CreateLease(stub_.get(), kTestTtl.count(), &s), 0u);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();

    child.Kill();
    // Every stream renewed its leases before READY and has none in flight: with the clock past
    // their TTL, all of them expire.
    ASSERT_NO_FATAL_FAILURE(ExpireChildLeases(static_cast<size_t>(kLimit) * (round + 1)));
    ExpectAllReclaimed(seconds(5));
    EXPECT_EQ(testing::ListLeases(stub_.get()), 0u);
    // The identity's lease count went back to 0: a full set can be created again.
    std::vector<uint64_t> again;
    for (int i = 0; i < kLimit; ++i) {
      const uint64_t id = testing::CreateLease(stub_.get(), kTestTtl.count(), &s);
      ASSERT_NE(id, 0u) << "lease " << i << ": " << s.error_message();
      again.push_back(id);
    }
    for (uint64_t id : again) ASSERT_TRUE(testing::RevokeLease(stub_.get(), id).ok());
    EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)),
                                    [&] { return testing::OpenSockets(pid) <= sockets_before; }))
        << "sockets: " << sockets_before << " before the client, " << testing::OpenSockets(pid) << " after";
    if (round == 0) {
      threads_after_first = testing::ProcEntries(pid, "task");
      sockets_after_first = testing::OpenSockets(pid);
    } else {
      // gRPC's pools may still add a thread or two under load; a thread per stream, connection or
      // lease would add 40 or 200.
      EXPECT_LE(testing::ProcEntries(pid, "task"), threads_after_first + 4);
      EXPECT_LE(testing::OpenSockets(pid), sockets_after_first);
    }
  }
}

// ---- Slow clients ----

TEST_F(Fault, AStoppedClientDoesNotHoldUpOthers) {
  StartDaemon({"--mem_mb=512"});
  const int sockets_before = testing::OpenSockets(daemon_->pid());
  ChildClient child("FloodThenStop", daemon_->unix_target());
  const std::string lease = child.WaitReady();
  ASSERT_NE(lease, "");
  std::this_thread::sleep_for(milliseconds(200));
  child.Signal(SIGSTOP);  // stops reading: its KeepAlive replies and 2 MiB bulk replies back up

  // The stopped client's lease is not renewed: it expires and its pages (its two bulk calls can
  // hold all of RAM) come back, although its connection still has unread replies queued. Its
  // KeepAlive stream may still hold renewals the daemon reads after this point (those sent before
  // SIGSTOP, until the daemon's replies fill the stopped client's window), so the clock moves one
  // TTL at a time, as time would pass: the lease expires at the first move after its last
  // renewal. A daemon that kept renewing it never gets there.
  EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)), [&] {
    daemon_->AdvanceLeaseClock(kChildTtl + milliseconds(1));
    return daemon_->WaitForLog(ExpiredLine(lease), 1, milliseconds(100));
  })) << "the stopped client's lease " << lease << " never expired";
  EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(5)), [&] {
    return FreePagesNow() == TotalPages() && testing::ListLeases(stub_.get()) == 0;
  })) << "free pages " << FreePagesNow() << " of " << TotalPages();

  // Four other clients, each on its own connection: 100 allocations and frees each, every call
  // with a generous deadline (scaled) that only a daemon held up by the stopped client would miss.
  std::atomic<int> failures{0};
  std::vector<std::thread> others;
  for (int t = 0; t < 4; ++t) {
    others.emplace_back([&] {
      auto st = testing::OwnStub(daemon_->unix_target());
      const uint64_t lease = testing::CreateLease(st.get(), kTestTtl.count());
      for (int i = 0; i < 100; ++i) {
        v1::Allocation a;
        grpc::Status s = testing::AllocPages(st.get(), lease, "GFP_KERNEL", static_cast<uint32_t>(i % 4), &a, 10000);
        if (!s.ok()) {
          ++failures;
          continue;
        }
        v1::FreePagesRequest r;
        r.set_lease_id(lease);
        r.set_pfn(a.pfn());
        r.set_order(a.order());
        v1::FreePagesResponse fr;
        Deadline ctx(10000);
        if (!st->FreePages(&ctx, r, &fr).ok()) ++failures;
      }
      if (!testing::RevokeLease(st.get(), lease, nullptr, 10000).ok()) ++failures;
    });
  }
  for (auto& th : others) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(testing::Nop(stub_.get(), 2000));
  child.Kill();
  EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)),
                                  [&] { return testing::OpenSockets(daemon_->pid()) <= sockets_before; }))
      << "the stopped client's connections were not closed";
  ExpectAllReclaimed(seconds(1));
}

// ---- SIGTERM under load ----

TEST_F(Fault, SigtermUnderLoadDrainsCleanly) {
  // The production binary (no lease clock: no lease here ends by time). The parked call's wait is
  // bounded far beyond the bound on its answer after SIGTERM, so that bound tells "answered at
  // shutdown" from "its wait ran out".
  const milliseconds answered_within = ScaledTimeout(seconds(5));
  StartDaemon({"--mem_mb=64", "--max_alloc_wait_ms=" + Ms(answered_within * 12), "--identity_dma_pages=4096"},
              /*lease_clock=*/false);  // fills ZONE_DMA too
  std::mutex mu;
  std::map<std::string, int> codes;  // every status any client saw
  std::atomic<int> ok_calls{0};
  auto saw = [&](const grpc::Status& s) {
    if (s.ok()) ++ok_calls;
    std::lock_guard<std::mutex> l(mu);
    ++codes[absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()))];
  };
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::vector<std::thread> clients;
  // Six hammering clients: single and bulk allocations of mixed masks, frees, until the daemon
  // is gone (each call with a 20 s deadline, scaled: a hang shows as a join that never comes).
  for (int t = 0; t < 6; ++t) {
    clients.emplace_back([&, t] {
      auto st = testing::OwnStub(daemon_->unix_target());
      const uint64_t lease = testing::CreateLease(st.get(), kTestTtl.count());
      std::mt19937 rng(t);
      std::vector<std::pair<uint64_t, uint32_t>> held;
      ++started;
      const char* masks[] = {"GFP_KERNEL", "GFP_ATOMIC", "GFP_KERNEL|__GFP_ZERO", "GFP_HIGHUSER", "GFP_NOWAIT"};
      while (!stop.load()) {
        grpc::Status s;
        if (held.size() < 100 && rng() % 3 != 0) {  // at most 800 pages: DMA is never needed
          if (rng() % 4 == 0) {
            v1::AllocPagesBulkResponse got;
            s = testing::AllocBulk(st.get(), lease, masks[rng() % 5], 64, &got, 20000);
            for (uint64_t p : got.pfn()) held.emplace_back(p, 0);
          } else {
            v1::Allocation a;
            s = testing::AllocPages(st.get(), lease, masks[rng() % 5], rng() % 4, &a, 20000);
            if (s.ok()) held.emplace_back(a.pfn(), a.order());
          }
        } else if (!held.empty()) {
          v1::FreePagesRequest r;
          r.set_lease_id(lease);
          r.set_pfn(held.back().first);
          r.set_order(held.back().second);
          v1::FreePagesResponse fr;
          Deadline ctx(20000);
          s = st->FreePages(&ctx, r, &fr);
          held.pop_back();
        }
        saw(s);
        if (s.error_code() == grpc::StatusCode::UNAVAILABLE) break;  // the daemon is gone
      }
    });
  }
  // One client parked in a wait that cannot be satisfied (DMA filled) when SIGTERM comes.
  grpc::Status parked;
  std::chrono::steady_clock::time_point parked_done;
  std::thread waiter([&] {
    auto st = testing::OwnStub(daemon_->unix_target());
    const uint64_t lease = testing::CreateLease(st.get(), kTestTtl.count());
    for (;;) {
      v1::AllocPagesBulkResponse got;
      if (!testing::AllocBulk(st.get(), lease, "GFP_DMA|__GFP_MEMALLOC", 4096, &got).ok()) break;
    }
    ++started;
    v1::Allocation a;
    // A caller deadline beyond the daemon's bound on the wait (both far beyond answered_within).
    parked = testing::AllocPages(st.get(), lease, "GFP_KERNEL|__GFP_DMA", 0, &a, 120000);
    parked_done = std::chrono::steady_clock::now();
  });
  // Everyone started; then hammering (answers coming) and the waiter parked: its allocation, the
  // only one preferring ZONE_DMA, has failed a first time and again from the waiter queue.
  EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)), [&] { return started.load() == 7; }));
  const double dma_failures = AllocFailures("DMA");
  EXPECT_TRUE(testing::Eventually(ScaledTimeout(seconds(10)), [&] {
    return ok_calls.load() >= 60 && AllocFailures("DMA") >= dma_failures + 2;
  })) << ok_calls.load() << " answers OK; the waiter's allocation " << AllocFailures("DMA") - dma_failures
      << " failures";

  const auto sigterm = std::chrono::steady_clock::now();
  daemon_->Kill(SIGTERM);
  const std::optional<int> st = daemon_->WaitExit(ScaledTimeout(seconds(10)));
  EXPECT_TRUE(st.has_value()) << "physmemd did not exit within " << ScaledTimeout(seconds(10)).count()
                              << " ms of SIGTERM (grace period 2 s)";
  if (!st.has_value()) daemon_->Kill(SIGKILL);  // the clients still end (UNAVAILABLE) and are joined
  stop = true;
  for (auto& th : clients) th.join();
  waiter.join();
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "wait status " << *st;

  EXPECT_EQ(parked.error_code(), grpc::StatusCode::UNAVAILABLE) << parked.error_message();
  // A real-time guarantee: shutdown answers a parked allocation at once, not when its wait (a
  // minute and more) runs out. The bound is 5 s, scaled to the build.
  EXPECT_LT(parked_done - sigterm, answered_within) << "the parked allocation was not answered at shutdown";
  const std::set<std::string> allowed = {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED"};
  for (const auto& [code, n] : codes) {
    EXPECT_TRUE(allowed.count(code)) << n << " calls answered " << code;
  }
  EXPECT_GT(codes["OK"], 0);
  EXPECT_GT(codes["UNAVAILABLE"] + codes["CANCELLED"], 0);
  EXPECT_THAT(daemon_->log(), HasSubstr("event=stopped"));
  std::printf("statuses seen under SIGTERM:");
  for (const auto& [code, n] : codes) std::printf(" %s=%d", code.c_str(), n);
  std::printf("\n");
}

}  // namespace
}  // namespace physmem
