// The lessor (server/lessor.h) in-process: no daemon, a PageAllocator on a small target and a
// lease clock the test moves. Every test checks the book's invariant (CheckInvariants) after its
// steps; a randomized test checks it after every step against a simple model of what each lease
// holds.
#include "server/lessor.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"
#include "tests/time_scale.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMs = 1000000;
using testing::kLongTtlMs;

// A lease clock that moves only when the test says so.
class ManualClock final : public LeaseClock {
 public:
  int64_t Now() const override { return now_.load(); }
  void Advance(int64_t ms) { now_.fetch_add(ms * kMs); }

 private:
  std::atomic<int64_t> now_{1000 * kMs};
};

class LessorTest : public ::testing::Test {
 protected:
  void SetUp() override { Boot(testing::SmallX86()); }

  void Boot(Target t, IdentityLimitsOptions limits = {}) {
    lessor_.reset();
    absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(testing::SmallOptions(std::move(t)));
    ASSERT_TRUE(pa.ok()) << pa.status();
    pa_ = *std::move(pa);
    identity_limits_ = std::make_unique<IdentityLimits>(*pa_, limits);
    LeaseLimits ll;
    ll.min_ttl_ms = 1;
    lessor_ = std::make_unique<Lessor>(pa_.get(), ll, identity_limits_.get(), nullptr, [this] { ++freed_calls_; },
                                       &clock_);
  }

  std::shared_ptr<Lease> Grant(const std::string& identity = "uid:1", int64_t ttl_ms = kLongTtlMs,
                               const std::string& name = "") {
    absl::StatusOr<std::shared_ptr<Lease>> l = lessor_->Grant(identity, ttl_ms, 0, name);
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? *l : nullptr;
  }

  // Attach that must succeed.
  AttachedBlock Alloc(Lease& lease, unsigned order, const std::string& key = "", gfp_t gfp = GFP_KERNEL) {
    AttachedBlock b;
    std::optional<absl::Status> s = lessor_->Attach(lease, gfp, order, key, &b);
    EXPECT_TRUE(s.has_value() && s->ok()) << (s ? s->ToString() : "no memory");
    return b;
  }

  uint64_t Held(Lease& lease) { return lessor_->Describe(lease).pages_held; }
  uint64_t Allocated() {
    absl::StatusOr<PageCensus> c = pa_->Validate();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->allocated_pages : 0;
  }
  void ExpectBooksBalance() {
    absl::Status s = lessor_->CheckInvariants();
    EXPECT_TRUE(s.ok()) << s;
  }

  ManualClock clock_;
  std::unique_ptr<PageAllocator> pa_;
  std::unique_ptr<IdentityLimits> identity_limits_;
  std::unique_ptr<Lessor> lessor_;
  std::atomic<int> freed_calls_{0};  // on_pages_freed runs on whichever thread ended a lease
};

TEST_F(LessorTest, GrantedLeaseIsFoundByItsIdentityOnly) {
  std::shared_ptr<Lease> l = Grant("uid:1");
  ASSERT_NE(l, nullptr);
  EXPECT_TRUE(lessor_->Lookup(l->id, "uid:1").ok());
  EXPECT_EQ(lessor_->Lookup(l->id, "uid:2").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(lessor_->Lookup(l->id + 1, "uid:1").status().code(), absl::StatusCode::kNotFound);
  ExpectBooksBalance();
}

TEST_F(LessorTest, AttachBooksEachBlockAndPagesHeldIsTheSumOfTwoToTheOrder) {
  std::shared_ptr<Lease> l = Grant();
  Alloc(*l, 0);
  Alloc(*l, 3);
  Alloc(*l, 0);
  EXPECT_EQ(Held(*l), 1u + 8u + 1u);
  EXPECT_EQ(Allocated(), 10u);
  LeaseStatus s = lessor_->Describe(*l);
  uint64_t blocks = 0;
  for (const auto& [zone_order, n] : s.holdings) blocks += n;
  EXPECT_EQ(blocks, 3u);
  ExpectBooksBalance();
}

TEST_F(LessorTest, AKeyReplaysItsBlockAndDetachByKeyFreesIt) {
  std::shared_ptr<Lease> l = Grant();
  const AttachedBlock first = Alloc(*l, 2, "k");
  const AttachedBlock again = Alloc(*l, 2, "k");
  EXPECT_TRUE(again.replayed);
  EXPECT_EQ(again.pfn, first.pfn);
  EXPECT_EQ(Held(*l), 4u);
  AttachedBlock b;
  std::optional<absl::Status> wrong = lessor_->Attach(*l, GFP_KERNEL, 1, "k", &b);
  ASSERT_TRUE(wrong.has_value());
  EXPECT_EQ(wrong->code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<uint64_t> freed = lessor_->Detach(*l, 0, 0, "k");
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 4u);
  EXPECT_EQ(lessor_->Detach(*l, 0, 0, "k").status().code(), absl::StatusCode::kNotFound);
  // The key is free again: it allocates a new block.
  EXPECT_FALSE(Alloc(*l, 0, "k").replayed);
  EXPECT_EQ(Held(*l), 1u);
  ExpectBooksBalance();
}

TEST_F(LessorTest, DetachingAnotherLeasesBlockIsRefusedWithoutNamingItAndChangesNothing) {
  std::shared_ptr<Lease> a = Grant("uid:1");
  std::shared_ptr<Lease> b = Grant("uid:2");
  const AttachedBlock block = Alloc(*a, 0);
  absl::StatusOr<uint64_t> freed = lessor_->Detach(*b, block.pfn, 0, "");
  EXPECT_EQ(freed.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(freed.status().message(), HasSubstr("belongs to another lease"));
  EXPECT_THAT(freed.status().message(), ::testing::Not(HasSubstr(std::to_string(a->id))));
  EXPECT_EQ(Held(*a), 1u);
  EXPECT_EQ(Allocated(), 1u);
  ExpectBooksBalance();
}

TEST_F(LessorTest, AttachPastTheQuotaIsRefusedAndBulkStopsAtIt) {
  absl::StatusOr<std::shared_ptr<Lease>> l = lessor_->Grant("uid:1", kLongTtlMs, 5, "");
  ASSERT_TRUE(l.ok());
  AttachedBlock b;
  std::optional<absl::Status> big = lessor_->Attach(**l, GFP_KERNEL, 3, "", &b);
  ASSERT_TRUE(big.has_value());
  EXPECT_EQ(big->code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<std::vector<Page*>> pages = lessor_->AttachBulk(**l, GFP_KERNEL, 100);
  ASSERT_TRUE(pages.ok()) << pages.status();
  EXPECT_EQ(pages->size(), 5u);
  EXPECT_EQ(lessor_->AttachBulk(**l, GFP_KERNEL, 1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Held(**l), 5u);
  ExpectBooksBalance();
}

TEST_F(LessorTest, BulkDetachFreesTheGoodBlocksAndReportsEachRefusal) {
  std::shared_ptr<Lease> l = Grant();
  absl::StatusOr<std::vector<Page*>> pages = lessor_->AttachBulk(*l, GFP_KERNEL, 4);
  ASSERT_TRUE(pages.ok());
  std::vector<uint64_t> pfns;
  for (Page* p : *pages) pfns.push_back(pa_->page_to_pfn(p));
  pfns.push_back(pfns[0]);  // a double free
  std::vector<size_t> refused;
  const uint64_t freed = lessor_->DetachBulk(*l, pfns, {}, [&](size_t i, const absl::Status& s) {
    refused.push_back(i);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  });
  EXPECT_EQ(freed, 4u);
  EXPECT_THAT(refused, ::testing::ElementsAre(4u));
  EXPECT_EQ(Held(*l), 0u);
  EXPECT_EQ(Allocated(), 0u);
  ExpectBooksBalance();
}

TEST_F(LessorTest, ExpireDueEndsExactlyTheLeasesPastTheirDeadlineAndReturnsTheirPages) {
  std::shared_ptr<Lease> short_lived = Grant("uid:1", 100);
  std::shared_ptr<Lease> long_lived = Grant("uid:1", 300);
  Alloc(*short_lived, 1);
  Alloc(*long_lived, 0);
  clock_.Advance(99);
  EXPECT_EQ(lessor_->ExpireDue(), 0u);
  clock_.Advance(1);  // exactly at the deadline: expired (lease_clock.h)
  EXPECT_EQ(lessor_->ExpireDue(), 2u);
  EXPECT_EQ(lessor_->size(), 1u);
  EXPECT_EQ(lessor_->Lookup(short_lived->id, "uid:1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Allocated(), 1u);
  EXPECT_EQ(lessor_->counters().expired.load(), 1u);
  EXPECT_EQ(freed_calls_.load(), 1);
  ExpectBooksBalance();
}

TEST_F(LessorTest, RenewalMovesALeaseBehindOnesThatWereDueLater) {
  std::shared_ptr<Lease> a = Grant("uid:1", 100);
  std::shared_ptr<Lease> b = Grant("uid:1", 150);
  clock_.Advance(90);
  absl::StatusOr<int64_t> ttl = lessor_->Renew(a->id, "uid:1");
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, 100);
  ExpectBooksBalance();  // the heap, after the renewal moved a down
  clock_.Advance(60);    // b's deadline (150) passed, a's (190) not
  lessor_->ExpireDue();
  EXPECT_TRUE(lessor_->Lookup(a->id, "uid:1").ok());
  EXPECT_EQ(lessor_->Lookup(b->id, "uid:1").status().code(), absl::StatusCode::kNotFound);
  clock_.Advance(40);
  EXPECT_EQ(lessor_->Renew(a->id, "uid:1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(lessor_->size(), 0u);
}

TEST_F(LessorTest, RevokeReturnsEveryPageAndTheLeaseTakesNoMore) {
  std::shared_ptr<Lease> l = Grant();
  Alloc(*l, 0, "a");
  Alloc(*l, 4);
  ASSERT_TRUE(lessor_->AttachBulk(*l, GFP_KERNEL, 10).ok());
  absl::StatusOr<uint64_t> freed = lessor_->Revoke(l->id, "uid:1");
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 1u + 16u + 10u);
  EXPECT_EQ(Allocated(), 0u);
  AttachedBlock b;
  std::optional<absl::Status> late = lessor_->Attach(*l, GFP_KERNEL, 0, "", &b);
  ASSERT_TRUE(late.has_value());
  EXPECT_THAT(late->message(), HasSubstr("expired or was revoked"));
  EXPECT_EQ(lessor_->Detach(*l, b.pfn, 0, "").status().code(), absl::StatusCode::kNotFound);
  ExpectBooksBalance();
}

// A lease holding a good part of the machine is freed in index order through a bitmap, a small
// one through a sorted copy (Lessor::End): both return every page.
TEST_F(LessorTest, RevokingALeaseThatHoldsTheWholeMachineReturnsEveryPage) {
  std::shared_ptr<Lease> l = Grant();
  Alloc(*l, 5);
  uint64_t held = 32;
  for (;;) {
    absl::StatusOr<std::vector<Page*>> pages = lessor_->AttachBulk(*l, GFP_KERNEL | __GFP_HIGH, 512);
    if (!pages.ok()) break;
    held += pages->size();
  }
  ASSERT_GT(held, pa_->mem_map().nr_pages() / 2);
  EXPECT_EQ(Held(*l), held);
  ExpectBooksBalance();
  absl::StatusOr<uint64_t> freed = lessor_->Revoke(l->id, "uid:1");
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, held);
  EXPECT_EQ(Allocated(), 0u);
  EXPECT_EQ(identity_limits_->TotalPages(), 0u);
}

TEST_F(LessorTest, IdentityChargesFollowTheBookThroughAttachDetachAndEnd) {
  std::shared_ptr<Lease> a = Grant("uid:7");
  std::shared_ptr<Lease> b = Grant("uid:7");
  const AttachedBlock x = Alloc(*a, 2);
  Alloc(*b, 0);
  ASSERT_TRUE(lessor_->AttachBulk(*b, GFP_KERNEL, 3).ok());
  EXPECT_EQ(identity_limits_->TotalPages(), 8u);
  ExpectBooksBalance();
  ASSERT_TRUE(lessor_->Detach(*a, x.pfn, 2, "").ok());
  EXPECT_EQ(identity_limits_->TotalPages(), 4u);
  ASSERT_TRUE(lessor_->Revoke(b->id, "uid:7").ok());
  EXPECT_EQ(identity_limits_->TotalPages(), 0u);
  ExpectBooksBalance();
}

TEST_F(LessorTest, HighmemKmapsEndWithTheirLease) {
  Boot(testing::SmallI386());
  std::shared_ptr<Lease> l = Grant();
  const AttachedBlock b = Alloc(*l, 0, "", GFP_HIGHUSER);
  ASSERT_EQ(b.zone, ZONE_HIGHMEM);
  ASSERT_TRUE(lessor_->Kmap(*l, b.pfn).ok());
  ASSERT_TRUE(lessor_->Revoke(l->id, "uid:1").ok());
  EXPECT_EQ(Allocated(), 0u);  // the free was not refused as "still kmap()ed"
  EXPECT_EQ(lessor_->Kmap(*l, b.pfn).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LessorTest, AccessBytesStaysInsideTheLeasesBlock) {
  std::shared_ptr<Lease> mine = Grant("uid:1");
  std::shared_ptr<Lease> theirs = Grant("uid:2");
  const AttachedBlock b = Alloc(*mine, 1);
  const AttachedBlock other = Alloc(*theirs, 0);
  int calls = 0;
  auto count = [&](std::byte*) { ++calls; };
  EXPECT_TRUE(lessor_->AccessBytes(*mine, b.pfn + 1, 0, 4096, 1 << 20, count).ok());
  EXPECT_EQ(lessor_->AccessBytes(*mine, b.pfn + 1, 1, 4096, 1 << 20, count).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(lessor_->AccessBytes(*mine, other.pfn, 0, 1, 1 << 20, count).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(lessor_->AccessBytes(*mine, b.pfn, 0, 0, 1 << 20, count).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 1);
}

TEST_F(LessorTest, CheckInvariantsNamesABlockFreedBehindTheLessorsBack) {
  std::shared_ptr<Lease> l = Grant();
  const AttachedBlock b = Alloc(*l, 0);
  ASSERT_TRUE(pa_->FreePfn(b.pfn, 0, l->owner()).ok());  // not through the lessor
  absl::Status s = lessor_->CheckInvariants();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat("lease %d", l->id)));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat("%#x", b.pfn)));
}

TEST_F(LessorTest, CensusCountsLeasesAndTheirPagesWithTheMachineStopped) {
  std::shared_ptr<Lease> a = Grant();
  std::shared_ptr<Lease> b = Grant();
  Alloc(*a, 3);
  Alloc(*b, 0);
  absl::StatusOr<BookCensus> c = lessor_->Census(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->leases, 2u);
  EXPECT_EQ(c->lease_pages, 9u);
  EXPECT_EQ(c->lease_blocks, 2u);
  EXPECT_EQ(c->pages.allocated_pages, 9u);
  EXPECT_EQ(c->identity_pages, 9u);
}

TEST_F(LessorTest, AdoptedLeaseKeepsItsBlocksKeysChargesAndName) {
  // What recovery does: the allocator marks the journal's blocks allocated, the lessor adopts.
  JournalLease jl;
  jl.id = (uint64_t{5} << 32) | 3;
  jl.identity = "uid:9";
  jl.name = "db";
  jl.ttl_ms = kLongTtlMs;
  jl.quota = 100;
  jl.deadline_ns = clock_.Now() + kLongTtlMs * kMs;
  const uint64_t base = 4 * testing::MiB / 4096;  // ZONE_NORMAL starts at 4 MiB
  jl.blocks[base] = JournalBlock{2, false, "k"};
  jl.blocks[base + 8] = JournalBlock{0, false, ""};
  std::vector<RestoredBlock> blocks = {{base, 2, 3, false}, {base + 8, 0, 3, false}};
  ASSERT_TRUE(pa_->RestoreAllocated(blocks).ok());
  lessor_->Adopt(jl);
  lessor_->AdoptIdSpace(uint64_t{5} << 32, 4);
  absl::StatusOr<std::shared_ptr<Lease>> l = lessor_->Lookup(jl.id, "uid:9");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(Held(**l), 5u);
  EXPECT_EQ(identity_limits_->TotalPages(), 5u);
  EXPECT_TRUE(Alloc(**l, 2, "k").replayed);
  EXPECT_EQ(lessor_->Grant("uid:9", kLongTtlMs, 0, "db").status().code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<std::shared_ptr<Lease>> next = lessor_->Grant("uid:9", kLongTtlMs, 0, "");
  ASSERT_TRUE(next.ok());
  EXPECT_EQ((*next)->id, (uint64_t{5} << 32) | 4);
  ExpectBooksBalance();
}

// Random grants, attaches (keyed or not, orders 0..3, bulk), detaches, renewals, clock moves,
// expiries and revokes over a few leases; after every step the book's invariant holds and each
// lease holds what a simple model says.
TEST_F(LessorTest, RandomOperationsKeepTheBooksBalanced) {
  std::mt19937 rng(12345);
  struct Model {
    std::shared_ptr<Lease> lease;
    std::map<uint64_t, unsigned> blocks;  // pfn -> order
    std::map<std::string, uint64_t> keys;
    int64_t deadline_ms;
  };
  std::vector<Model> live;
  int64_t now_ms = 0;
  for (int step = 0; step < 3000; ++step) {
    const int op = std::uniform_int_distribution<int>(0, 9)(rng);
    if (live.empty() || op == 0) {
      const int64_t ttl = std::uniform_int_distribution<int64_t>(50, 500)(rng);
      live.push_back({Grant("uid:" + std::to_string(step % 3), ttl), {}, {}, now_ms + ttl});
      continue;
    }
    Model& m = live[std::uniform_int_distribution<size_t>(0, live.size() - 1)(rng)];
    if (op <= 3) {
      const unsigned order = std::uniform_int_distribution<unsigned>(0, 3)(rng);
      const std::string key = op == 3 ? "k" + std::to_string(step % 7) : "";
      AttachedBlock b;
      std::optional<absl::Status> s = lessor_->Attach(*m.lease, GFP_KERNEL, order, key, &b);
      if (s && s->ok() && !b.replayed) {
        m.blocks[b.pfn] = order;
        if (!key.empty()) m.keys[key] = b.pfn;
      }
    } else if (op == 4) {
      absl::StatusOr<std::vector<Page*>> pages = lessor_->AttachBulk(*m.lease, GFP_KERNEL, 5);
      if (pages.ok()) {
        for (Page* p : *pages) m.blocks[pa_->page_to_pfn(p)] = 0;
      }
    } else if (op <= 6 && !m.blocks.empty()) {
      auto it = m.blocks.begin();
      std::advance(it, std::uniform_int_distribution<size_t>(0, m.blocks.size() - 1)(rng));
      ASSERT_TRUE(lessor_->Detach(*m.lease, it->first, it->second, "").ok());
      std::erase_if(m.keys, [&](const auto& kv) { return kv.second == it->first; });
      m.blocks.erase(it);
    } else if (op == 7) {
      if (lessor_->Renew(m.lease->id, m.lease->identity).ok()) m.deadline_ms = now_ms + m.lease->granted_ttl_ms;
    } else if (op == 8) {
      const int64_t by = std::uniform_int_distribution<int64_t>(0, 60)(rng);
      clock_.Advance(by);
      now_ms += by;
      lessor_->ExpireDue();
      std::erase_if(live, [&](const Model& x) { return x.deadline_ms <= now_ms; });
    } else {
      ASSERT_TRUE(lessor_->Revoke(m.lease->id, m.lease->identity).ok());
      std::erase_if(live, [&](const Model& x) { return x.lease == m.lease; });
    }
    ASSERT_TRUE(lessor_->CheckInvariants().ok()) << "step " << step << ": " << lessor_->CheckInvariants();
    uint64_t all = 0;
    for (Model& x : live) {
      uint64_t pages = 0;
      for (const auto& [pfn, order] : x.blocks) pages += uint64_t{1} << order;
      ASSERT_EQ(Held(*x.lease), pages) << "step " << step;
      all += pages;
    }
    ASSERT_EQ(lessor_->size(), live.size()) << "step " << step;
    ASSERT_EQ(Allocated(), all) << "step " << step;
  }
}

// Threads attaching, detaching, renewing and revoking, each in its own leases, while another
// takes censuses and the reaper expires: every census sees balanced books (Census runs the
// invariant with the machine stopped), and at the end nothing is left.
TEST_F(LessorTest, ConcurrentCallsAndCensusesKeepTheBooksBalanced) {
  std::atomic<bool> stop{false};
  std::atomic<int> censuses{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 3; ++t) {
    workers.emplace_back([this, t, &censuses] {
      const std::string identity = "uid:" + std::to_string(t);
      for (int round = 0; round < 40; ++round) {
        // Halfway, wait for a census to have run: at least one then overlaps the work, however
        // the threads are scheduled (on a loaded machine the workers could otherwise finish first).
        while (round == 20 && censuses.load() == 0) std::this_thread::yield();
        std::shared_ptr<Lease> l = Grant(identity, 20);
        std::vector<AttachedBlock> held;
        for (int i = 0; i < 8; ++i) {
          AttachedBlock b;
          std::optional<absl::Status> s = lessor_->Attach(*l, GFP_KERNEL, i % 3, i == 0 ? "k" : "", &b);
          if (s && s->ok()) held.push_back(b);
        }
        (void)lessor_->AttachBulk(*l, GFP_KERNEL, 16);
        (void)lessor_->Renew(l->id, identity);
        for (size_t i = 0; i < held.size(); i += 2) (void)lessor_->Detach(*l, held[i].pfn, held[i].order, "");
        clock_.Advance(1);  // some leases end by expiry, on whichever thread gets there first
        if (round % 2 == 0) (void)lessor_->Revoke(l->id, identity);
        lessor_->ExpireDue();
      }
    });
  }
  std::thread census([&] {
    while (!stop.load()) {
      absl::StatusOr<BookCensus> c = lessor_->Census(std::chrono::steady_clock::now() + std::chrono::seconds(30));
      ASSERT_TRUE(c.ok()) << c.status();
      ASSERT_EQ(c->lease_pages, c->pages.allocated_pages);
      ++censuses;
    }
  });
  for (auto& w : workers) w.join();
  stop = true;
  census.join();
  EXPECT_GT(censuses.load(), 0);
  clock_.Advance(kLongTtlMs);
  lessor_->ExpireDue();
  EXPECT_EQ(lessor_->size(), 0u);
  EXPECT_EQ(Allocated(), 0u);
  EXPECT_EQ(identity_limits_->TotalPages(), 0u);
  ExpectBooksBalance();
}

// The reaper on the real clock: it ends a lease at its deadline, and leases far from theirs never
// wake it (no periodic scan).
TEST(LessorReaper, EndsALeaseAtItsDeadlineAndIdleLeasesNeverWakeIt) {
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(testing::SmallOptions(testing::SmallX86()));
  ASSERT_TRUE(pa.ok());
  LeaseLimits ll;
  ll.min_ttl_ms = 1;
  ll.max_leases_per_identity = 2000;
  Lessor lessor(pa->get(), ll, nullptr, nullptr, nullptr);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(lessor.Grant("uid:1", kLongTtlMs, 0, "").ok());
  lessor.StartReaper();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // A spurious condition-variable wake-up is allowed; a scan every 20 ms would be ten.
  EXPECT_LE(lessor.reaper_wakeups(), 1u);
  ASSERT_TRUE(lessor.Grant("uid:1", 50, 0, "").ok());
  const auto give_up = std::chrono::steady_clock::now() + testing::ScaledTimeout(std::chrono::milliseconds(5000));
  while (lessor.size() != 1000 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(lessor.size(), 1000u);
  EXPECT_EQ(lessor.counters().expired.load(), 1u);
  lessor.StopReaper();
}

}  // namespace
}  // namespace physmem
