#include "allocator/per_cpu_ring.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "allocator/rseq.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace physmem {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kRseqOffTunable[] = "glibc.pthread.rseq=0";

// True in the child started by ChildWithRseqDisabledPasses (or any run with the tunable set).
bool RseqDisabledByEnvironment() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables != nullptr && std::strstr(tunables, kRseqOffTunable) != nullptr;
}

// Tests of the fast path skip where it is not compiled in (not x86-64/glibc 2.35+) and in the
// rseq-disabled child (which checks the failures instead), and fail, rather than skip, when rseq
// is unexpectedly off in a normal run.
#define REQUIRE_FAST_PATH(rings)                                                        \
  do {                                                                                  \
    if (!PHYSMEM_RSEQ_X86_64) GTEST_SKIP() << "no rseq fast path on this platform";     \
    if (RseqDisabledByEnvironment()) GTEST_SKIP() << "rseq disabled by GLIBC_TUNABLES"; \
    ASSERT_TRUE((rings).enabled()) << "rseq fast path is off on x86-64 Linux";          \
  } while (0)

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

bool PinTo(pid_t tid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(tid, sizeof(set), &set) == 0;
}

bool PinToAny(pid_t tid, const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  return sched_setaffinity(tid, sizeof(set), &set) == 0;
}

// Pins the calling thread to one CPU for the scope, so a single-threaded test sees one ring.
class ScopedPin {
 public:
  explicit ScopedPin(int cpu) : saved_(AllowedCpus()), ok_(PinTo(0, cpu)) {}
  ~ScopedPin() { PinToAny(0, saved_); }
  bool ok() const { return ok_; }

 private:
  std::vector<int> saved_;
  bool ok_;
};

constexpr uint32_t kCapacity = 8;

class PerCpuRingsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_FAST_PATH(rings_);
    cpu_ = AllowedCpus().front();
    pin_ = std::make_unique<ScopedPin>(cpu_);
    ASSERT_TRUE(pin_->ok());
    ASSERT_EQ(PerCpuRings::CurrentCpu(), cpu_);
  }

  std::vector<uint32_t> PopAllHot(int list) {
    std::vector<uint32_t> items;
    uint32_t item;
    while (rings_.PopHot(list, &item)) items.push_back(item);
    return items;
  }

  PerCpuRings rings_{NumPossibleCpus(), 2, kCapacity};
  int cpu_ = 0;
  std::unique_ptr<ScopedPin> pin_;
};

TEST_F(PerCpuRingsTest, PopHotReturnsItemsInLifoOrder) {
  for (uint32_t item : {10u, 11u, 12u}) ASSERT_TRUE(rings_.PushHot(0, item, kCapacity));
  EXPECT_THAT(PopAllHot(0), ElementsAre(12, 11, 10));
}

TEST_F(PerCpuRingsTest, PopColdTakesTheOldestItemsFirst) {
  for (uint32_t item : {10u, 11u, 12u, 13u}) ASSERT_TRUE(rings_.PushHot(0, item, kCapacity));
  uint32_t out[kCapacity] = {};
  ASSERT_EQ(rings_.PopCold(0, 3, out), 3u);
  EXPECT_THAT(std::vector<uint32_t>(out, out + 3), ElementsAre(10, 11, 12));
  EXPECT_THAT(PopAllHot(0), ElementsAre(13));
}

TEST_F(PerCpuRingsTest, RefillIsServedAfterHotItemsInTheOrderGiven) {
  ASSERT_TRUE(rings_.PushHot(0, 100, kCapacity));
  const uint32_t refill[] = {1, 2, 3};
  ASSERT_EQ(rings_.PushCold(0, refill, 3, kCapacity), 3u);
  ASSERT_TRUE(rings_.PushCold(0, 4, kCapacity));
  EXPECT_THAT(PopAllHot(0), ElementsAre(100, 1, 2, 3, 4));
}

TEST_F(PerCpuRingsTest, DrainTakesRefilledItemsFromTheTail) {
  const uint32_t refill[] = {1, 2, 3};
  ASSERT_EQ(rings_.PushCold(0, refill, 3, kCapacity), 3u);
  uint32_t out[kCapacity] = {};
  ASSERT_EQ(rings_.PopCold(0, kCapacity, out), 3u);
  EXPECT_THAT(std::vector<uint32_t>(out, out + 3), ElementsAre(3, 2, 1));
}

TEST_F(PerCpuRingsTest, SnapshotListsItemsColdestFirstWithoutRemovingThem) {
  const uint32_t refill[] = {1, 2};
  ASSERT_EQ(rings_.PushCold(0, refill, 2, kCapacity), 2u);
  ASSERT_TRUE(rings_.PushHot(0, 3, kCapacity));
  std::vector<uint32_t> items = {99};  // appends
  rings_.Snapshot(cpu_, 0, &items);
  EXPECT_THAT(items, ElementsAre(99, 2, 1, 3));
  EXPECT_EQ(rings_.Count(cpu_, 0), 3u);
}

TEST_F(PerCpuRingsTest, ListsAreIndependent) {
  ASSERT_TRUE(rings_.PushHot(0, 1, kCapacity));
  ASSERT_TRUE(rings_.PushHot(1, 2, kCapacity));
  EXPECT_EQ(rings_.Count(cpu_, 0), 1u);
  EXPECT_EQ(rings_.Count(cpu_, 1), 1u);
  EXPECT_THAT(PopAllHot(1), ElementsAre(2));
  EXPECT_THAT(PopAllHot(0), ElementsAre(1));
}

TEST_F(PerCpuRingsTest, PopFromEmptyRingFailsAndLeavesOutputAlone) {
  uint32_t item = 77;
  EXPECT_FALSE(rings_.PopHot(0, &item));
  EXPECT_EQ(item, 77u);
  uint32_t out[2] = {5, 6};
  EXPECT_EQ(rings_.PopCold(0, 2, out), 0u);
  EXPECT_EQ(rings_.DrainRemote(cpu_, 0, 2, out), 0u);
  EXPECT_THAT(out, ElementsAre(5, 6));
}

TEST_F(PerCpuRingsTest, DrainRemoteTakesTheColdEndOfAnotherCpusRing) {
  for (uint32_t item : {10u, 11u, 12u}) ASSERT_TRUE(rings_.PushHot(0, item, kCapacity));
  uint32_t out[kCapacity] = {};
  uint32_t taken = 0;
  // From another thread (on another CPU when there is one), as the allocator's drain does.
  const std::vector<int> cpus = AllowedCpus();
  std::thread drainer([&] {
    PinTo(0, cpus.back());
    taken = rings_.DrainRemote(cpu_, 0, 2, out);
  });
  drainer.join();
  ASSERT_EQ(taken, 2u);
  EXPECT_THAT(std::vector<uint32_t>(out, out + 2), ElementsAre(10, 11));
  EXPECT_THAT(PopAllHot(0), ElementsAre(12));
  EXPECT_TRUE(rings_.Validate().ok());
}

// Every way of filling a ring stops at min(limit, capacity).
enum class Fill { kHot, kColdOne, kColdBatch };
struct LimitCase {
  Fill fill;
  uint32_t limit;
};

class PerCpuRingsLimitTest : public PerCpuRingsTest, public ::testing::WithParamInterface<LimitCase> {};

TEST_P(PerCpuRingsLimitTest, FillStopsAtLimitAndCapacity) {
  const auto [fill, limit] = GetParam();
  const uint32_t expected = std::min(limit, kCapacity);
  uint32_t stored = 0;
  for (uint32_t item = 0; item < 2 * kCapacity; ++item) {
    switch (fill) {
      case Fill::kHot:
        stored += rings_.PushHot(0, item, limit) ? 1 : 0;
        break;
      case Fill::kColdOne:
        stored += rings_.PushCold(0, item, limit) ? 1 : 0;
        break;
      case Fill::kColdBatch: {
        const uint32_t batch[3] = {item, item, item};
        stored += rings_.PushCold(0, batch, 3, limit);
        break;
      }
    }
  }
  EXPECT_EQ(stored, expected);
  EXPECT_EQ(rings_.Count(cpu_, 0), expected);
  EXPECT_TRUE(rings_.Validate().ok());
}

INSTANTIATE_TEST_SUITE_P(Limits, PerCpuRingsLimitTest,
                         ::testing::Values(LimitCase{Fill::kHot, 1}, LimitCase{Fill::kHot, 5},
                                           LimitCase{Fill::kHot, kCapacity}, LimitCase{Fill::kHot, 1000},
                                           LimitCase{Fill::kColdOne, 5}, LimitCase{Fill::kColdOne, 1000},
                                           LimitCase{Fill::kColdBatch, 4}, LimitCase{Fill::kColdBatch, 1000}));

TEST_F(PerCpuRingsTest, LoweredLimitRejectsPushesWithoutLosingItems) {
  for (uint32_t item = 0; item < 6; ++item) ASSERT_TRUE(rings_.PushHot(0, item, kCapacity));
  EXPECT_FALSE(rings_.PushHot(0, 99, 3));  // `high` tuned below the current count
  EXPECT_FALSE(rings_.PushCold(0, 99, 3));
  EXPECT_EQ(rings_.Count(cpu_, 0), 6u);
}

TEST_F(PerCpuRingsTest, CountersCountExactlyTheSuccessfulOps) {
  uint32_t pushes = 0, hits = 0, item = 0;
  for (int i = 0; i < 12; ++i) pushes += rings_.PushHot(0, i, 5) ? 1 : 0;  // 5 succeed
  for (int i = 0; i < 7; ++i) hits += rings_.PopHot(0, &item) ? 1 : 0;     // 5 succeed
  const uint32_t refill[] = {1, 2, 3, 4};
  const uint32_t refilled = rings_.PushCold(1, refill, 4, kCapacity);  // 1 refill
  EXPECT_EQ(rings_.PushCold(1, refill, 4, 4), 0u);                     // full: none
  uint32_t out[kCapacity];
  EXPECT_EQ(rings_.PopCold(1, 1, out), 1u);            // 1 drain
  EXPECT_EQ(rings_.PopCold(0, 1, out), 0u);            // empty: none
  EXPECT_EQ(rings_.DrainRemote(cpu_, 1, 1, out), 1u);  // 1 remote drain
  EXPECT_EQ(rings_.DrainRemote(cpu_, 0, 1, out), 0u);  // empty: none

  const PerCpuRingCounters c = rings_.Counters(cpu_);
  EXPECT_EQ(pushes, 5u);
  EXPECT_EQ(hits, 5u);
  EXPECT_EQ(refilled, 4u);
  EXPECT_EQ(c.pushes, pushes);
  EXPECT_EQ(c.hits, hits);
  EXPECT_EQ(c.refills, 1u);
  EXPECT_EQ(c.drains, 1u);
  EXPECT_EQ(c.remote_drains, 1u);
}

// Randomized single-CPU run against a deque (front = cold end, back = hot end), checking the
// invariants after every step; long enough for the free-running indices to lap the ring often.
TEST_F(PerCpuRingsTest, MatchesDequeModelUnderRandomOps) {
  std::mt19937 rng(12345);
  std::deque<uint32_t> model;
  uint32_t next = 0;
  uint32_t out[kCapacity];
  for (int step = 0; step < 20000; ++step) {
    const uint32_t limit = 1 + rng() % kCapacity;
    const uint32_t n = 1 + rng() % 4;
    switch (rng() % 5) {
      case 0: {
        const bool ok = rings_.PushHot(0, next, limit);
        ASSERT_EQ(ok, model.size() < limit) << "step " << step;
        if (ok) model.push_back(next++);
        break;
      }
      case 1: {
        uint32_t item;
        const bool ok = rings_.PopHot(0, &item);
        ASSERT_EQ(ok, !model.empty()) << "step " << step;
        if (ok) {
          ASSERT_EQ(item, model.back()) << "step " << step;
          model.pop_back();
        }
        break;
      }
      case 2: {
        uint32_t batch[4];
        for (uint32_t j = 0; j < n; ++j) batch[j] = next + j;
        const uint32_t room = model.size() < limit ? limit - model.size() : 0;
        ASSERT_EQ(rings_.PushCold(0, batch, n, limit), std::min(n, room)) << "step " << step;
        for (uint32_t j = 0; j < std::min(n, room); ++j) model.push_front(batch[j]);
        next += n;
        break;
      }
      default: {
        const uint32_t k = (step % 2) ? rings_.PopCold(0, n, out) : rings_.DrainRemote(cpu_, 0, n, out);
        ASSERT_EQ(k, std::min<uint32_t>(n, model.size())) << "step " << step;
        for (uint32_t j = 0; j < k; ++j) {
          ASSERT_EQ(out[j], model.front()) << "step " << step;
          model.pop_front();
        }
        break;
      }
    }
    ASSERT_EQ(rings_.Count(cpu_, 0), model.size()) << "step " << step;
    ASSERT_TRUE(rings_.Validate().ok()) << rings_.Validate();
  }
}

// ---------------------------------------------------------------------------------------------
// Concurrency: unique tokens circulate between threads' hands and the rings while a drainer takes
// from random CPUs (and, in the migration variant, a migrator re-pins the workers mid-operation).
// Afterwards every token must be in exactly one place, and the exact counters must equal the
// successful operations the threads observed.

struct StressCase {
  const char* name;
  int workers;
  bool migrate;  // a migrator thread re-pins workers while they run
  bool signal;   // a signaller interrupts workers: each signal aborts a section in flight
};

class PerCpuRingsStressTest : public ::testing::TestWithParam<StressCase> {};

constexpr int kStressLists = 3;
constexpr uint32_t kStressCapacity = 16;
constexpr uint32_t kTokensPerWorker = 48;
constexpr auto kStressDuration = std::chrono::milliseconds(1500);

struct OpTally {
  uint64_t hits = 0, pushes = 0, refills = 0, drains = 0, remote_drains = 0;
  void Add(const OpTally& o) {
    hits += o.hits;
    pushes += o.pushes;
    refills += o.refills;
    drains += o.drains;
    remote_drains += o.remote_drains;
  }
};

class TokenWorld {
 public:
  TokenWorld(PerCpuRings& rings, uint32_t nr_tokens) : rings_(rings), in_hand_(nr_tokens), payload_(nr_tokens) {}

  // A token leaves a hand. The payload write is plain memory: ThreadSanitizer flags it as a race
  // with the next owner's read unless the rings declare their happens-before edges. Relaxed flag
  // operations so that the flags themselves create no happens-before.
  void Release(uint32_t token, uint32_t owner) {
    payload_[token] = owner;
    in_hand_[token].store(0, std::memory_order_relaxed);
  }
  void Reclaim(uint32_t token) { in_hand_[token].store(1, std::memory_order_relaxed); }
  // A token arrives in a hand from a ring: it must not already be in some hand.
  void Take(uint32_t token, uint32_t max_owner) {
    if (token >= in_hand_.size() || in_hand_[token].exchange(1, std::memory_order_relaxed) != 0) {
      duplicates_.fetch_add(1, std::memory_order_relaxed);
    }
    if (token < in_hand_.size() && payload_[token] > max_owner) {
      bad_payloads_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  uint64_t duplicates() const { return duplicates_.load(); }
  uint64_t bad_payloads() const { return bad_payloads_.load(); }
  PerCpuRings& rings() { return rings_; }

 private:
  PerCpuRings& rings_;
  std::vector<std::atomic<uint8_t>> in_hand_;
  std::vector<uint32_t> payload_;
  std::atomic<uint64_t> duplicates_{0};
  std::atomic<uint64_t> bad_payloads_{0};
};

void WorkerLoop(TokenWorld& world, uint32_t id, uint32_t max_owner, std::vector<uint32_t>& hand, OpTally& tally,
                const std::atomic<bool>& stop) {
  PerCpuRings& rings = world.rings();
  std::mt19937 rng(id * 7919 + 1);
  uint32_t buf[8];
  while (!stop.load(std::memory_order_relaxed)) {
    const int list = static_cast<int>(rng() % kStressLists);
    const uint32_t limit = 1 + rng() % kStressCapacity;
    switch (rng() % 4) {
      case 0:
        if (!hand.empty()) {
          const uint32_t token = hand.back();
          world.Release(token, id);
          if (rings.PushHot(list, token, limit)) {
            hand.pop_back();
            ++tally.pushes;
          } else {
            world.Reclaim(token);
          }
        }
        break;
      case 1: {
        uint32_t token;
        if (rings.PopHot(list, &token)) {
          world.Take(token, max_owner);
          hand.push_back(token);
          ++tally.hits;
        }
        break;
      }
      case 2: {
        const uint32_t n = std::min<uint32_t>(hand.size(), 1 + rng() % 6);
        if (n == 0) break;
        for (uint32_t j = 0; j < n; ++j) {
          buf[j] = hand[hand.size() - 1 - j];
          world.Release(buf[j], id);
        }
        const uint32_t k = rings.PushCold(list, buf, n, limit);
        hand.resize(hand.size() - k);  // buf[0..k) went into the ring, in that order
        for (uint32_t j = k; j < n; ++j) world.Reclaim(buf[j]);
        if (k > 0) ++tally.refills;
        break;
      }
      default: {
        const uint32_t k = rings.PopCold(list, 1 + rng() % 8, buf);
        for (uint32_t j = 0; j < k; ++j) {
          world.Take(buf[j], max_owner);
          hand.push_back(buf[j]);
        }
        if (k > 0) ++tally.drains;
        break;
      }
    }
  }
}

// Drains random CPUs' rings, keeps some tokens, and puts others back through its own fast path.
void DrainerLoop(TokenWorld& world, uint32_t id, uint32_t max_owner, std::vector<uint32_t>& kept, OpTally& tally,
                 const std::atomic<bool>& stop) {
  PerCpuRings& rings = world.rings();
  std::mt19937 rng(424242);
  uint32_t buf[8];
  while (!stop.load(std::memory_order_relaxed)) {
    const int cpu = static_cast<int>(rng() % rings.nr_cpus());
    const int list = static_cast<int>(rng() % kStressLists);
    const uint32_t k = rings.DrainRemote(cpu, list, 1 + rng() % 8, buf);
    for (uint32_t j = 0; j < k; ++j) {
      world.Take(buf[j], max_owner);
      kept.push_back(buf[j]);
    }
    if (k > 0) ++tally.remote_drains;
    while (kept.size() > 16) {  // recirculate, so drained tokens meet the fast path again
      const uint32_t token = kept.back();
      world.Release(token, id);
      if (!rings.PushHot(list, token, kStressCapacity)) {
        world.Reclaim(token);
        break;
      }
      kept.pop_back();
      ++tally.pushes;
    }
  }
}

// Re-pins random workers (by thread id) to a random CPU or to all CPUs, so that migrations land
// in the middle of their critical sections.
void MigratorLoop(const std::vector<std::atomic<pid_t>>& tids, const std::vector<int>& cpus,
                  const std::atomic<bool>& stop) {
  std::mt19937 rng(99);
  while (!stop.load(std::memory_order_relaxed)) {
    const pid_t tid = tids[rng() % tids.size()].load();
    if (tid != 0) {
      if (rng() % 3 == 0) {
        PinToAny(tid, cpus);
      } else {
        PinTo(tid, cpus[rng() % cpus.size()]);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// Sends SIGUSR1 (empty handler) to every worker, over and over. rseq restarts a section that a
// signal interrupts, so this makes aborts frequent (preemption alone aborts only a few sections
// per second here), which is what the exact-counter and no-duplicate checks need to bite.
void SignallerLoop(const std::vector<std::atomic<pid_t>>& tids, const std::atomic<bool>& stop) {
  const pid_t pid = getpid();
  while (!stop.load(std::memory_order_relaxed)) {
    for (const auto& tid : tids) {
      if (const pid_t t = tid.load(); t != 0) syscall(SYS_tgkill, pid, t, SIGUSR1);
    }
  }
}

void IgnoreSignal(int) {}

TEST_P(PerCpuRingsStressTest, EveryTokenEndsUpInExactlyOnePlace) {
  const StressCase& param = GetParam();
  PerCpuRings rings(NumPossibleCpus(), kStressLists, kStressCapacity);
  REQUIRE_FAST_PATH(rings);
  const std::vector<int> cpus = AllowedCpus();
  const uint32_t nr_tokens = param.workers * kTokensPerWorker;
  const uint32_t drainer_id = param.workers;
  TokenWorld world(rings, nr_tokens);

  std::vector<std::vector<uint32_t>> hands(param.workers + 1);  // last: the drainer's set
  for (uint32_t token = 0; token < nr_tokens; ++token) {
    hands[token / kTokensPerWorker].push_back(token);
    world.Reclaim(token);
  }
  std::vector<OpTally> tallies(param.workers + 1);
  std::vector<std::atomic<pid_t>> tids(param.workers);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < param.workers; ++w) {
    threads.emplace_back([&, w] {
      tids[w].store(static_cast<pid_t>(syscall(SYS_gettid)));
      WorkerLoop(world, w, drainer_id, hands[w], tallies[w], stop);
    });
  }
  threads.emplace_back(
      [&] { DrainerLoop(world, drainer_id, drainer_id, hands[drainer_id], tallies[drainer_id], stop); });
  if (param.migrate) threads.emplace_back([&] { MigratorLoop(tids, cpus, stop); });
  if (param.signal) {
    struct sigaction action = {};
    action.sa_handler = IgnoreSignal;
    action.sa_flags = SA_RESTART;
    ASSERT_EQ(sigaction(SIGUSR1, &action, nullptr), 0);
    threads.emplace_back([&] { SignallerLoop(tids, stop); });
  }
  std::this_thread::sleep_for(kStressDuration);
  stop.store(true);
  for (auto& thread : threads) thread.join();

  // Exact counters: what the CPUs counted equals what the threads saw succeed.
  OpTally seen;
  for (const OpTally& t : tallies) seen.Add(t);
  OpTally counted;
  for (int cpu = 0; cpu < rings.nr_cpus(); ++cpu) {
    const PerCpuRingCounters c = rings.Counters(cpu);
    counted.Add({c.hits, c.pushes, c.refills, c.drains, c.remote_drains});
  }
  EXPECT_GT(seen.hits, 0u);
  EXPECT_GT(seen.remote_drains, 0u);
  EXPECT_EQ(counted.hits, seen.hits);
  EXPECT_EQ(counted.pushes, seen.pushes);
  EXPECT_EQ(counted.refills, seen.refills);
  EXPECT_EQ(counted.drains, seen.drains);
  EXPECT_EQ(counted.remote_drains, seen.remote_drains);
  EXPECT_EQ(world.duplicates(), 0u) << "a token was handed out while already in a hand";
  EXPECT_EQ(world.bad_payloads(), 0u);
  ASSERT_TRUE(rings.Validate().ok()) << rings.Validate();

  // Every token in exactly one place: a hand, the drainer's set, or a ring.
  std::vector<int> seen_times(nr_tokens, 0);
  uint64_t misplaced = 0;
  auto place = [&](uint32_t token) {
    if (token < nr_tokens) {
      ++seen_times[token];
    } else {
      ++misplaced;
    }
  };
  for (const auto& hand : hands) {
    for (uint32_t token : hand) place(token);
  }
  uint32_t buf[kStressCapacity];
  for (int cpu = 0; cpu < rings.nr_cpus(); ++cpu) {
    for (int list = 0; list < kStressLists; ++list) {
      const uint32_t count = rings.Count(cpu, list);
      std::vector<uint32_t> snapshot;
      rings.Snapshot(cpu, list, &snapshot);
      ASSERT_EQ(rings.DrainRemote(cpu, list, kStressCapacity, buf), count);
      EXPECT_EQ(std::vector<uint32_t>(buf, buf + count), snapshot);
      for (uint32_t j = 0; j < count; ++j) place(buf[j]);
    }
  }
  EXPECT_EQ(misplaced, 0u);
  EXPECT_EQ(std::count(seen_times.begin(), seen_times.end(), 0), 0) << "lost tokens";
  EXPECT_EQ(std::count_if(seen_times.begin(), seen_times.end(), [](int n) { return n > 1; }), 0) << "duplicated tokens";
}

INSTANTIATE_TEST_SUITE_P(Threads, PerCpuRingsStressTest,
                         ::testing::Values(StressCase{"FourWorkers", 4, false, false},
                                           StressCase{"EightWorkersSignalled", 8, false, true},
                                           StressCase{"SixWorkersMigrating", 6, true, false},
                                           StressCase{"SixWorkersMigratingSignalled", 6, true, true}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Shape validation.

struct ShapeCase {
  int nr_cpus;
  int nr_lists;
  uint32_t capacity;
  const char* complaint;  // substring of the error, or nullptr if valid
};

class PerCpuRingsShapeTest : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(PerCpuRingsShapeTest, CreateValidatesTheShape) {
  const ShapeCase& c = GetParam();
  auto rings = PerCpuRings::Create(c.nr_cpus, c.nr_lists, c.capacity);
  if (c.complaint == nullptr) {
    ASSERT_TRUE(rings.ok()) << rings.status();
    EXPECT_EQ((*rings)->capacity(), c.capacity);
    EXPECT_TRUE((*rings)->Validate().ok());
  } else {
    ASSERT_FALSE(rings.ok());
    EXPECT_EQ(rings.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(rings.status().message(), HasSubstr(c.complaint));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PerCpuRingsShapeTest,
                         ::testing::Values(ShapeCase{2, 1, 1, nullptr}, ShapeCase{4, 14, 1024, nullptr},
                                           ShapeCase{0, 1, 8, "nr_cpus"}, ShapeCase{2, 0, 8, "nr_lists"},
                                           ShapeCase{2, PerCpuRings::kMaxLists + 1, 8, "nr_lists"},
                                           ShapeCase{2, 1, 0, "power of two"}, ShapeCase{2, 1, 24, "got 24"},
                                           ShapeCase{2, 1, PerCpuRings::kMaxCapacity * 2, "power of two"}));

// ---------------------------------------------------------------------------------------------
// The disabled path: glibc told not to register rseq. The check runs in a child process started
// with GLIBC_TUNABLES=glibc.pthread.rseq=0 (the whole binary again).

TEST(PerCpuRingsWithoutRseq, EveryOpReportsFailure) {
  if (!RseqDisabledByEnvironment()) {
    GTEST_SKIP() << "runs in the child of ChildWithRseqDisabledPasses";
  }
  EXPECT_FALSE(RseqRegistered());
  PerCpuRings rings(NumPossibleCpus(), 2, kCapacity);
  EXPECT_FALSE(rings.enabled());
  uint32_t item = 5;
  uint32_t out[4] = {};
  const uint32_t batch[2] = {1, 2};
  EXPECT_FALSE(rings.PushHot(0, 1, kCapacity));
  EXPECT_FALSE(rings.PopHot(0, &item));
  EXPECT_EQ(item, 5u);
  EXPECT_FALSE(rings.PushCold(0, 1, kCapacity));
  EXPECT_EQ(rings.PushCold(0, batch, 2, kCapacity), 0u);
  EXPECT_EQ(rings.PopCold(0, 4, out), 0u);
  for (int cpu = 0; cpu < rings.nr_cpus(); ++cpu) {
    EXPECT_EQ(rings.DrainRemote(cpu, 0, 4, out), 0u);
    EXPECT_EQ(rings.Count(cpu, 0), 0u);
    std::vector<uint32_t> items;
    rings.Snapshot(cpu, 0, &items);
    EXPECT_TRUE(items.empty());
    const PerCpuRingCounters c = rings.Counters(cpu);
    EXPECT_EQ(c.hits + c.pushes + c.refills + c.drains + c.remote_drains, 0u);
  }
  // The CPU id still comes from somewhere (sched_getcpu) for callers that shard by CPU.
  EXPECT_THAT(AllowedCpus(), ::testing::Contains(PerCpuRings::CurrentCpu()));
}

// Runs this file's tests again, in a child with rseq disabled; returns its exit status and output.
std::pair<int, std::string> RunSelfWithRseqDisabled() {
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) return {-1, "readlink /proc/self/exe failed"};
  self[len] = '\0';
  // The parent's environment, minus its tunables and its GTEST_* settings (an XML output path or
  // a shard index would make the child overwrite the parent's report or skip the check).
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "GLIBC_TUNABLES=", 15) != 0 && std::strncmp(*e, "GTEST_", 6) != 0) {
      env_strings.emplace_back(*e);
    }
  }
  env_strings.push_back(std::string("GLIBC_TUNABLES=") + kRseqOffTunable);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string color = "--gtest_color=no";
  // Only this file's suites: the binary holds every allocator test (one executable, CMakeLists.txt),
  // and the whole of it under TSan took 95 s where these take a few.
  std::string filter = "--gtest_filter=*PerCpuRings*";
  char* argv[] = {self, color.data(), filter.data(), nullptr};

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {-1, "pipe failed"};
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return {-1, "fork failed"};
  }
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    execve(self, argv, envp.data());
    _exit(127);
  }
  close(fds[1]);
  std::string output;
  char chunk[4096];
  ssize_t n;
  while ((n = read(fds[0], chunk, sizeof(chunk))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) output.append(chunk, n);
  }
  close(fds[0]);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return {-1, "waitpid failed"};
  return {status, output};
}

TEST(PerCpuRingsWithoutRseq, ChildWithRseqDisabledPasses) {
  if (RseqDisabledByEnvironment()) GTEST_SKIP() << "already the child";
  const auto [status, output] = RunSelfWithRseqDisabled();
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
  // The child must really have run the disabled-path checks, not skipped them.
  EXPECT_THAT(output, HasSubstr("[       OK ] PerCpuRingsWithoutRseq.EveryOpReportsFailure")) << output;
}

}  // namespace
}  // namespace physmem
