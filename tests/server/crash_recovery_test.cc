// Crash recovery for real (server/journal.h, docs/recovery.md): the physmemd binary on a /dev/shm
// arena, several client threads each with its own lease and ledger of acknowledged allocations,
// writing a unique pattern into every page they hold through their own MAP_SHARED mapping of the
// arena file; the daemon is SIGKILLed at random moments (and, in some rounds, kills itself at a
// compaction step) and restarted, over and over. After every restart: every acknowledged,
// not-freed block is still owned by the same lease (PageAddress OK for it, PERMISSION_DENIED for
// another lease), its contents are intact, no page is in two ledgers, keyed retries return the
// same block, the books balance (Validate), and recovery found no anomaly. At the end every lease
// is revoked: every page is free and Validate is clean, across one more crash too.
//
// Time: the clients' leases live a day (the test runs for minutes under a sanitizer and never
// renews them). Every daemon of the test runs on one lease clock (a file they share, so that a
// restarted daemon reads the journal's deadlines on the scale they were written in); the test
// moves it to expire two short leases, one while the daemon is down and one while it runs.
// The daemon is killed at a random moment, but not before the clients had a random number of
// blocks acknowledged, so that a slow build does enough work between crashes.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/daemon_process.h"

namespace physmem {
namespace {

using testing::DaemonProcess;
namespace v1 = ::physmem::v1;

constexpr uint64_t kMemMb = 64;
constexpr uint64_t kPageSize = 4096;
constexpr int kClients = 4;
constexpr int kExternalKills = 20;
constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;
using testing::kLongTtlMs;
const std::vector<std::string> kCrashPoints = {"compact_after_switch", "compact_mid_snapshot",
                                               "compact_after_rename", "compact_mid_unlink"};

struct Block {
  uint64_t pfn = 0;
  unsigned order = 0;
  uint64_t arena_offset = 0;
  uint64_t serial = 0;  // seeds its pattern
  std::string key;
};

// What the test process knows: the arena mapping, which pages are acknowledged to which client.
class World {
 public:
  explicit World(const std::string& arena_path) {
    fd_ = ::open(arena_path.c_str(), O_RDWR);
    bytes_ = kMemMb << 20;
    map_ = static_cast<uint8_t*>(::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    owner_.assign(bytes_ / kPageSize, -1);
  }
  ~World() {
    ::munmap(map_, bytes_);
    ::close(fd_);
  }
  bool ok() const { return map_ != MAP_FAILED; }
  // Blocks acknowledged so far, by every client: the test kills the daemon after a number of them.
  uint64_t acked() const { return acked_.load(); }
  void CountAck() { acked_.fetch_add(1); }

  static uint64_t Word(int client, uint64_t serial, uint64_t i) {
    return (uint64_t(client) << 56) ^ (serial << 20) ^ (i * 0x9E3779B97F4A7C15ull);
  }
  void Fill(int client, const Block& b) {
    auto* w = reinterpret_cast<uint64_t*>(map_ + b.arena_offset);
    for (uint64_t i = 0; i < ((kPageSize << b.order) / 8); ++i) w[i] = Word(client, b.serial, i);
  }
  bool Intact(int client, const Block& b) const {
    const auto* w = reinterpret_cast<const uint64_t*>(map_ + b.arena_offset);
    for (uint64_t i = 0; i < ((kPageSize << b.order) / 8); ++i) {
      if (w[i] != Word(client, b.serial, i)) return false;
    }
    return true;
  }
  // An acknowledged block: no page of it may be acknowledged to anyone else.
  std::string Claim(int client, const Block& b) {
    std::lock_guard<std::mutex> l(mu_);
    const uint64_t first = b.arena_offset / kPageSize;
    for (uint64_t p = first; p < first + (1u << b.order); ++p) {
      if (owner_[p] != -1) {
        return "page at arena offset " + std::to_string(p * kPageSize) + " handed to client " +
               std::to_string(client) + " while client " + std::to_string(owner_[p]) + " holds it";
      }
    }
    for (uint64_t p = first; p < first + (1u << b.order); ++p) owner_[p] = client;
    return "";
  }
  void Release(const Block& b) {
    std::lock_guard<std::mutex> l(mu_);
    const uint64_t first = b.arena_offset / kPageSize;
    for (uint64_t p = first; p < first + (1u << b.order); ++p) owner_[p] = -1;
  }

 private:
  int fd_ = -1;
  uint64_t bytes_ = 0;
  uint8_t* map_ = nullptr;
  std::mutex mu_;
  std::vector<int> owner_;
  std::atomic<uint64_t> acked_{0};
};

struct Client {
  int id = 0;
  uint64_t lease = 0;
  std::map<uint64_t, Block> ledger;     // pfn -> acknowledged, not freed
  std::vector<Block> uncertain_frees;   // FreePages sent, answer lost in a crash
  std::vector<std::string> lost_keys;   // keyed AllocPages sent, answer lost
  uint64_t serial = 0;
  uint64_t acked = 0, freed = 0, replayed_after_crash = 0;
  std::vector<std::string> failures;
};

std::unique_ptr<v1::PhysMem::Stub> Connect(const DaemonProcess& d) {
  return v1::PhysMem::NewStub(grpc::CreateChannel(d.unix_target(), grpc::InsecureChannelCredentials()));
}

// Only bounds a call to a daemon that hangs: scaled to the build.
void SetDeadline(grpc::ClientContext* ctx, int ms = 3000) {
  ctx->set_deadline(std::chrono::system_clock::now() + testing::ScaledTimeout(std::chrono::milliseconds(ms)));
}

// A status that means "the daemon went away": the request may or may not have taken effect.
bool Lost(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         s.error_code() == grpc::StatusCode::CANCELLED;
}

void Acknowledge(World& world, Client& c, Block b) {
  if (std::string e = world.Claim(c.id, b); !e.empty()) {
    c.failures.push_back(e);
    return;
  }
  world.Fill(c.id, b);
  c.ledger[b.pfn] = std::move(b);
  ++c.acked;
  world.CountAck();
}

// One client's load until `stop`: keyed and keyless single allocations, bulk allocations, frees.
void RunLoad(const DaemonProcess& d, World& world, Client& c, const std::atomic<bool>& stop, uint32_t seed) {
  auto stub = Connect(d);
  std::mt19937 rng(seed);
  while (!stop.load()) {
    const int op = c.ledger.size() > 400 ? 9 : static_cast<int>(rng() % 10);
    if (op < 4 || c.ledger.size() < 8) {
      v1::AllocPagesRequest req;
      req.set_lease_id(c.lease);
      req.set_gfp("GFP_KERNEL");
      req.set_order(rng() % 4 == 0 ? rng() % 4 : 0);
      const bool keyed = rng() % 2 == 0;
      if (keyed) req.set_key("k" + std::to_string(c.id) + "-" + std::to_string(c.serial++));
      v1::Allocation resp;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::Status s = stub->AllocPages(&ctx, req, &resp);
      if (s.ok()) {
        Acknowledge(world, c, Block{resp.pfn(), resp.order(), resp.arena_offset(), c.serial++, resp.key()});
      } else if (Lost(s)) {
        if (keyed) c.lost_keys.push_back(req.key());
        return;
      } else if (s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        c.failures.push_back("AllocPages: " + s.error_message());
      }
    } else if (op < 6) {
      v1::AllocPagesBulkRequest req;
      req.set_lease_id(c.lease);
      req.set_gfp("GFP_KERNEL");
      req.set_count(1 + rng() % 32);
      v1::AllocPagesBulkResponse resp;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::Status s = stub->AllocPagesBulk(&ctx, req, &resp);
      if (s.ok()) {
        for (int i = 0; i < resp.pfn_size(); ++i) {
          Acknowledge(world, c, Block{resp.pfn(i), 0, resp.arena_offset(i), c.serial++, ""});
        }
      } else if (Lost(s)) {
        return;
      } else if (s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        c.failures.push_back("AllocPagesBulk: " + s.error_message());
      }
    } else {
      // Free a random block (by key when it has one): the page leaves the ledger before the call.
      auto it = c.ledger.begin();
      std::advance(it, rng() % c.ledger.size());
      Block b = it->second;
      c.ledger.erase(it);
      world.Release(b);
      v1::FreePagesRequest req;
      req.set_lease_id(c.lease);
      if (!b.key.empty() && rng() % 2 == 0) {
        req.set_key(b.key);
      } else {
        req.set_pfn(b.pfn);
        req.set_order(b.order);
      }
      v1::FreePagesResponse resp;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::Status s = stub->FreePages(&ctx, req, &resp);
      if (s.ok()) {
        ++c.freed;
      } else if (Lost(s)) {
        c.uncertain_frees.push_back(b);
        return;
      } else {
        c.failures.push_back("FreePages pfn " + std::to_string(b.pfn) + ": " + s.error_message());
      }
    }
  }
}

grpc::Status Probe(v1::PhysMem::Stub& stub, uint64_t lease, uint64_t pfn) {
  v1::PageAddressRequest req;
  req.set_lease_id(lease);
  req.set_pfn(pfn);
  v1::PageAddressResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  return stub.PageAddress(&ctx, req, &resp);
}

// After a restart, with no load running: settle what the crash left uncertain, then check.
void Verify(const DaemonProcess& d, World& world, std::vector<Client>& clients, uint32_t seed) {
  auto stub = Connect(d);
  std::mt19937 rng(seed);
  for (Client& c : clients) {
    SCOPED_TRACE("client " + std::to_string(c.id));
    // A free whose answer was lost happened or not: the block is ours or free, never someone else's.
    for (const Block& b : c.uncertain_frees) {
      grpc::Status s = Probe(*stub, c.lease, b.pfn);
      if (s.ok()) {
        Block kept = b;
        if (std::string e = world.Claim(c.id, kept); !e.empty()) ADD_FAILURE() << e;
        EXPECT_TRUE(world.Intact(c.id, kept)) << "pfn " << b.pfn;
        c.ledger[b.pfn] = kept;
      } else {
        // Freed: now free, or already handed to another lease (whose answer may also be lost).
        EXPECT_TRUE(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                    s.error_code() == grpc::StatusCode::PERMISSION_DENIED)
            << "pfn " << b.pfn << ": " << s.error_message();
      }
    }
    c.uncertain_frees.clear();
    // A keyed allocation whose answer was lost: retrying the key returns the journaled block, or
    // allocates afresh if it never was journaled. Either way it is acknowledged now.
    for (const std::string& key : c.lost_keys) {
      v1::AllocPagesRequest req;
      req.set_lease_id(c.lease);
      req.set_gfp("GFP_KERNEL");
      req.set_key(key);
      v1::Allocation resp;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::Status s = stub->AllocPages(&ctx, req, &resp);
      if (!s.ok()) {
        // The lost request may have had another order: INVALID_ARGUMENT says the key exists.
        if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) continue;
        ADD_FAILURE() << "retry of key " << key << ": " << s.error_message();
        continue;
      }
      c.replayed_after_crash += resp.replayed();
      Acknowledge(world, c, Block{resp.pfn(), resp.order(), resp.arena_offset(), c.serial++, key});
    }
    c.lost_keys.clear();
    // Every acknowledged block: owned by this lease, contents intact; keyed ones replay.
    for (const auto& [pfn, b] : c.ledger) {
      grpc::Status s = Probe(*stub, c.lease, pfn);
      EXPECT_TRUE(s.ok()) << "acknowledged pfn " << pfn << " order " << b.order << " lost: " << s.error_message();
      EXPECT_TRUE(world.Intact(c.id, b)) << "contents of pfn " << pfn << " changed";
      if (!b.key.empty() && rng() % 8 == 0) {
        v1::AllocPagesRequest req;
        req.set_lease_id(c.lease);
        req.set_gfp("GFP_KERNEL");
        req.set_order(b.order);
        req.set_key(b.key);
        v1::Allocation resp;
        grpc::ClientContext ctx;
        SetDeadline(&ctx);
        ASSERT_TRUE(stub->AllocPages(&ctx, req, &resp).ok());
        EXPECT_TRUE(resp.replayed());
        EXPECT_EQ(resp.pfn(), pfn) << "key " << b.key;
      }
    }
    // Another lease cannot free them.
    const Client& other = clients[(c.id + 1) % clients.size()];
    for (auto it = c.ledger.begin(); it != c.ledger.end(); std::advance(it, std::min<size_t>(7, std::distance(it, c.ledger.end())))) {
      v1::FreePagesRequest req;
      req.set_lease_id(other.lease);
      req.set_pfn(it->first);
      req.set_order(it->second.order);
      v1::FreePagesResponse resp;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      EXPECT_EQ(stub->FreePages(&ctx, req, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    }
  }
  v1::ValidateResponse v;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  ASSERT_TRUE(stub->Validate(&ctx, v1::ValidateRequest(), &v).ok());
  uint64_t ledger_pages = 0;
  for (const Client& c : clients) {
    for (const auto& [pfn, b] : c.ledger) ledger_pages += 1u << b.order;
  }
  EXPECT_EQ(v.allocated_pages(), v.lease_pages());
  EXPECT_EQ(v.allocated_pages() + v.free_pages(), v.total_pages());
  // Pages the daemon holds beyond the ledgers were allocated for requests whose answer was lost.
  EXPECT_GE(v.allocated_pages(), ledger_pages);
}

std::string Field(const std::string& log, const std::string& event, const std::string& key) {
  std::smatch m;
  const std::regex re("event=" + event + " .*\\b" + key + "=([^ \\n]+)");
  return std::regex_search(log, m, re) ? m[1].str() : "";
}

TEST(CrashRecovery, AcknowledgedAllocationsSurviveRepeatedKillNine) {
  const std::string arena = "/dev/shm/physmemd-crash-test-" + std::to_string(::getpid());
  const std::vector<std::string> args = {"--arena_path=" + arena, "--mem_mb=" + std::to_string(kMemMb),
                                         "--journal_compact_bytes=131072"};
  auto cleanup = [&] {
    testing::RemoveShmFiles(arena);
  };
  cleanup();
  // Also when an assertion ends the test early (the daemon dies with the test: PDEATHSIG).
  struct AtExit {
    std::function<void()> f;
    ~AtExit() { f(); }
  } at_exit{cleanup};
  // The lease clock of every daemon here (removed by cleanup, like the arena).
  const std::string clock_file = arena + ".lease_clock";
  auto make_daemon = [&] {
    auto d = std::make_unique<DaemonProcess>(args);
    d->UseLeaseClock(clock_file);
    return d;
  };
  auto daemon = make_daemon();
  ASSERT_TRUE(daemon->Start()) << daemon->log();
  World world(arena);
  ASSERT_TRUE(world.ok());

  std::vector<Client> clients(kClients);
  {
    auto stub = Connect(*daemon);
    for (int i = 0; i < kClients; ++i) {
      clients[i].id = i;
      v1::CreateLeaseRequest req;
      req.set_ttl_ms(kDayMs);
      req.set_name("crash-client-" + std::to_string(i));
      v1::CreateLeaseResponse resp;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      ASSERT_TRUE(stub->CreateLease(&ctx, req, &resp).ok());
      clients[i].lease = resp.lease_id();
    }
  }
  // Two short leases that nobody renews, of 100 pages each: they must expire across restarts,
  // their pages coming back, and stay expired. The test moves the lease clock an hour on while
  // the daemon is down after round kDownRound (recovery finds `expires_down` past its deadline),
  // and another hour while it runs after round kUpRound (its reaper ends `expires_up`).
  constexpr int kDownRound = 2, kUpRound = 4;
  auto short_lease = [&](int64_t ttl_ms) -> uint64_t {
    auto stub = Connect(*daemon);
    v1::CreateLeaseRequest req;
    req.set_ttl_ms(ttl_ms);
    v1::CreateLeaseResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    EXPECT_TRUE(stub->CreateLease(&ctx, req, &resp).ok());
    v1::AllocPagesBulkRequest bulk;
    bulk.set_lease_id(resp.lease_id());
    bulk.set_gfp("GFP_KERNEL");
    bulk.set_count(100);
    v1::AllocPagesBulkResponse bresp;
    grpc::ClientContext ctx2;
    SetDeadline(&ctx2);
    EXPECT_TRUE(stub->AllocPagesBulk(&ctx2, bulk, &bresp).ok());
    EXPECT_EQ(bresp.pfn_size(), 100);
    return resp.lease_id();
  };
  const uint64_t expires_down = short_lease(kLongTtlMs);
  const uint64_t expires_up = short_lease(2 * kLongTtlMs);
  ASSERT_FALSE(HasFailure());
  auto expired_event = [](uint64_t lease) { return "event=lease_expired lease=" + std::to_string(lease) + " "; };

  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  int external_kills = 0, self_kills = 0, rounds = 0;
  uint64_t compactions = 0;
  bool armed = false;  // this daemon kills itself at a compaction step
  auto start = [&](bool arm) {
    daemon = make_daemon();
    if (arm) daemon->CrashAtJournalStep(kCrashPoints[self_kills]);
    return daemon->Start();
  };
  while (external_kills < kExternalKills || self_kills < static_cast<int>(kCrashPoints.size())) {
    ++rounds;
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (Client& c : clients) {
      threads.emplace_back([&, seed = static_cast<uint32_t>(rng())] { RunLoad(*daemon, world, c, stop, seed); });
    }
    if (armed) {
      // The load runs until the journal grows to a compaction and the daemon kills itself there.
      EXPECT_TRUE(daemon->WaitExit(testing::ScaledTimeout(std::chrono::seconds(30))).has_value())
          << "crash point never reached";
      EXPECT_NE(daemon->log().find("event=journal_test_crash"), std::string::npos) << daemon->log();
      ++self_kills;
    } else {
      // Killed at a random moment 100-600 ms into the load, once the clients have had at least 50
      // to 300 more blocks acknowledged: a slow build gets as far between crashes as a fast one.
      const auto at = std::chrono::steady_clock::now() + std::chrono::milliseconds(100 + rng() % 500);
      const uint64_t from = world.acked(), least = 50 + rng() % 250;
      testing::Eventually(std::chrono::milliseconds(600) + testing::ScaledTimeout(std::chrono::seconds(10)), [&] {
        return std::chrono::steady_clock::now() >= at && world.acked() - from >= least;
      });
      daemon->Kill(SIGKILL);
      ASSERT_TRUE(daemon->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10))).has_value());
      ++external_kills;
    }
    stop = true;
    for (auto& t : threads) t.join();
    {
      const std::string l = daemon->log();
      for (size_t p = 0; (p = l.find("event=journal_compacted", p)) != std::string::npos; ++p) ++compactions;
    }
    for (const Client& c : clients) {
      for (const std::string& f : c.failures) ADD_FAILURE() << "client " << c.id << ": " << f;
    }
    ASSERT_FALSE(HasFailure());

    if (rounds == kDownRound) daemon->AdvanceLeaseClock(std::chrono::milliseconds(kLongTtlMs + 1));
    ASSERT_TRUE(start(false)) << daemon->log();
    const std::string log = daemon->log();
    SCOPED_TRACE("round " + std::to_string(rounds) + ": " + log.substr(0, log.find("event=started")));
    EXPECT_EQ(Field(log, "recovered", "anomalies"), "0");
    if (rounds == kDownRound) {
      EXPECT_NE(log.find(expired_event(expires_down)), std::string::npos) << "recovery kept lease " << expires_down;
    }
    Verify(*daemon, world, clients, static_cast<uint32_t>(rng()));
    ASSERT_FALSE(HasFailure());
    if (rounds == kUpRound) {
      daemon->AdvanceLeaseClock(std::chrono::milliseconds(kLongTtlMs + 1));
      EXPECT_TRUE(daemon->WaitForLog(expired_event(expires_up))) << "the reaper did not end lease " << expires_up;
    }
    // Each short lease is there until its expiry, and gone after it, whatever the restarts.
    for (const auto& [lease, gone_after] : {std::pair{expires_down, kDownRound}, std::pair{expires_up, kUpRound}}) {
      auto stub = Connect(*daemon);
      v1::GetLeaseRequest req;
      req.set_lease_id(lease);
      v1::LeaseInfo info;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      const grpc::Status s = stub->GetLease(&ctx, req, &info);
      if (rounds >= gone_after) {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << "lease " << lease << " outlived its TTL";
      } else {
        EXPECT_TRUE(s.ok()) << "lease " << lease << " ended early: " << s.error_message();
        EXPECT_EQ(info.pages_held(), 100u);
      }
    }
    armed = self_kills < static_cast<int>(kCrashPoints.size()) && (external_kills >= kExternalKills || rounds % 5 == 0);
    if (armed) {  // a quiet restart, armed to die at the next compaction step
      daemon->Kill(SIGKILL);
      daemon->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10)));
      // It may even die during start-up, if its recovered journal is due for compaction at once.
      const bool started = start(true);
      ASSERT_TRUE(started || daemon->log().find("event=journal_test_crash") != std::string::npos) << daemon->log();
    }
  }
  uint64_t acked = 0, freed = 0, replayed = 0;
  for (const Client& c : clients) {
    acked += c.acked;
    freed += c.freed;
    replayed += c.replayed_after_crash;
  }
  std::printf("crashes: %d external kill -9, %d at compaction steps, %d rounds; %lu blocks acknowledged, %lu freed, "
              "%lu lost-answer keys replayed; %lu compactions\n",
              external_kills, self_kills, rounds, acked, freed, replayed, compactions);
  EXPECT_GE(external_kills, 20);
  EXPECT_GT(acked, 1000u);

  // The end: revoke everything; every page is free, and stays so across one more crash.
  auto stub = Connect(*daemon);
  for (const Client& c : clients) {
    v1::RevokeLeaseRequest req;
    req.set_lease_id(c.lease);
    v1::RevokeLeaseResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ASSERT_TRUE(stub->RevokeLease(&ctx, req, &resp).ok());
  }
  for (int i = 0; i < 2; ++i) {
    v1::ValidateResponse v;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ASSERT_TRUE(stub->Validate(&ctx, v1::ValidateRequest(), &v).ok());
    EXPECT_EQ(v.allocated_pages(), 0u);
    EXPECT_EQ(v.free_pages(), v.total_pages());
    EXPECT_EQ(v.leases(), 0u);
    if (i == 1) break;
    daemon->Kill(SIGKILL);
    daemon->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10)));
    daemon = make_daemon();
    ASSERT_TRUE(daemon->Start()) << daemon->log();
    EXPECT_EQ(Field(daemon->log(), "recovered", "leases"), "0");
    stub = Connect(*daemon);
  }
  daemon.reset();
}

}  // namespace
}  // namespace physmem
