// The lessor (server/lessor.h) on a journal that cannot be written, in process: a real Journal
// whose fallocate() the test fails with ENOSPC (JournalOptions::fault_hook) and whose reserve for
// frees is small (4 KiB: 64 free records), so every branch of docs/recovery.md "When the journal
// cannot be written" is reached in a few steps. Each refusal is UNAVAILABLE naming the journal,
// and the books and the allocator's census are as before it (CheckInvariants after every step).
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/journal.h"
#include "server/lessor.h"
#include "tests/allocator/test_targets.h"
#include "tests/time_scale.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using testing::kLongTtlMs;

class JournalLessorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/dev/shm/physmem-journal-lessor-test-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    JournalOptions o;
    o.path = dir_ + "/j";
    o.compact_bytes = uint64_t{1} << 30;
    o.reserve_bytes = 4096;
    o.fault_hook = [this](std::string_view op) { return op == "fallocate" ? fail_.load() : 0; };
    JournalState st;
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(o, &st);
    ASSERT_TRUE(j.ok()) << j.status();
    journal_ = *std::move(j);
    absl::StatusOr<std::unique_ptr<PageAllocator>> pa =
        PageAllocator::Create(testing::SmallOptions(testing::SmallX86()));
    ASSERT_TRUE(pa.ok()) << pa.status();
    pa_ = *std::move(pa);
    identity_limits_ = std::make_unique<IdentityLimits>(*pa_, IdentityLimitsOptions{});
    LeaseLimits ll;
    ll.min_ttl_ms = 1;
    lessor_ = std::make_unique<Lessor>(pa_.get(), ll, identity_limits_.get(), journal_.get(), [] {});
    ASSERT_TRUE(journal_->Start(lessor_->boot_nonce(), lessor_->next_id()).ok());
  }
  void TearDown() override {
    lessor_.reset();
    journal_.reset();
    std::filesystem::remove_all(dir_);
  }

  uint64_t Allocated() {
    absl::StatusOr<PageCensus> c = pa_->Validate();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->allocated_pages : 0;
  }
  void ExpectJournalRefusal(const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(s.message(), HasSubstr("journal: write to " + dir_ + "/j.1 failed: No space left on device"));
  }
  void ExpectBooksBalance() {
    absl::Status s = lessor_->CheckInvariants();
    EXPECT_TRUE(s.ok()) << s;
  }
  // Bulk allocations of 32 pages and their frees (2 KiB of free records: within the reserve)
  // until the journal refuses an allocation; its status.
  absl::Status FillJournal(Lease& lease) {
    for (int round = 0; round < 1000; ++round) {
      absl::StatusOr<std::vector<Page*>> got = lessor_->AttachBulk(lease, GFP_KERNEL, 32);
      if (!got.ok()) return got.status();
      std::vector<uint64_t> pfns;
      for (Page* p : *got) pfns.push_back(pa_->page_to_pfn(p));
      lessor_->DetachBulk(lease, pfns, {}, [](size_t, const absl::Status& s) { ADD_FAILURE() << s; });
    }
    return absl::OkStatus();
  }

  // The pages as runs of consecutive pfns, in the order given.
  std::vector<Lessor::PfnRun> RunsOf(const std::vector<Page*>& pages) { return Lessor::RunsOf<Lessor::PfnRun>(*pa_, pages); }
  // Closes the lessor and journal and reads the journal back, as a restart would.
  JournalState ReadBack() {
    lessor_.reset();
    JournalOptions o;
    o.path = dir_ + "/j";
    o.compact_bytes = uint64_t{1} << 30;
    journal_.reset();
    JournalState st;
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(o, &st);
    EXPECT_TRUE(j.ok()) << j.status();
    if (j.ok()) journal_ = *std::move(j);
    return st;
  }

  std::string dir_;
  std::atomic<int> fail_{0};
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<PageAllocator> pa_;
  std::unique_ptr<IdentityLimits> identity_limits_;
  std::unique_ptr<Lessor> lessor_;
};

TEST_F(JournalLessorTest, RefusesWhatTheJournalCannotRecordAndChangesNothing) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = lessor_->Grant("uid:1", kLongTtlMs, 0, "");
  ASSERT_TRUE(lease.ok()) << lease.status();
  const uint64_t id = (*lease)->id;
  std::vector<uint64_t> held;  // more blocks than the reserve has free records for
  for (int i = 0; i < 100; ++i) {
    AttachedBlock b;
    std::optional<absl::Status> s = lessor_->Attach(**lease, GFP_KERNEL, 0, "", &b);
    ASSERT_TRUE(s && s->ok());
    held.push_back(b.pfn);
  }
  fail_ = ENOSPC;
  ExpectJournalRefusal(FillJournal(**lease));
  ExpectBooksBalance();
  EXPECT_EQ(Allocated(), held.size());  // the refused bulk allocation gave every page back
  // What the bulk record left over goes to single blocks, then none fits.
  absl::Status refused;
  for (int i = 0; i < 1000 && refused.ok(); ++i) {
    AttachedBlock b;
    std::optional<absl::Status> s = lessor_->Attach(**lease, GFP_KERNEL, 0, "", &b);
    ASSERT_TRUE(s.has_value());
    refused = *s;
    if (refused.ok()) held.push_back(b.pfn);
  }
  ExpectJournalRefusal(refused);
  const uint64_t allocated = Allocated();
  EXPECT_EQ(allocated, held.size());
  ExpectJournalRefusal(lessor_->Grant("uid:2", kLongTtlMs, 0, "").status());
  EXPECT_EQ(lessor_->All().size(), 1u);
  const int64_t remaining = lessor_->Describe(**lease).remaining_ms;
  ExpectJournalRefusal(lessor_->Renew(id, "uid:1").status());
  EXPECT_LE(lessor_->Describe(**lease).remaining_ms, remaining);  // the old deadline stands
  EXPECT_EQ(Allocated(), allocated);
  ExpectBooksBalance();
  EXPECT_TRUE(journal_->failing());

  // Frees go on from the reserve (4 KiB: at most 64 records), the book following; then they are
  // refused too, the block still allocated and in the book.
  size_t freed = 0;
  absl::StatusOr<uint64_t> f;
  while (freed < held.size() && (f = lessor_->Detach(**lease, held[freed], 0, "")).ok()) ++freed;
  // Up to the whole reserve (and the part of a slot's worth grants could not use); fewer when the
  // bulk frees since the last allocation already took some of it, as they may.
  EXPECT_GE(freed, 1u);
  EXPECT_LE(freed, 65u);
  ExpectJournalRefusal(f.status());
  EXPECT_EQ(Allocated(), allocated - freed);
  EXPECT_EQ(lessor_->Describe(**lease).pages_held, allocated - freed);
  ExpectBooksBalance();

  // A revoke whose end cannot be recorded: the lease is gone, its pages stay allocated.
  absl::StatusOr<uint64_t> revoked = lessor_->Revoke(id, "uid:1");
  ExpectJournalRefusal(revoked.status());
  EXPECT_THAT(revoked.status().message(), HasSubstr("keeps its pages"));
  EXPECT_EQ(lessor_->Lookup(id, "uid:1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Allocated(), allocated - freed);

  // Space again: grants work without anything else done.
  fail_ = 0;
  absl::StatusOr<std::shared_ptr<Lease>> again = lessor_->Grant("uid:2", kLongTtlMs, 0, "");
  ASSERT_TRUE(again.ok()) << again.status();
  AttachedBlock b;
  std::optional<absl::Status> s = lessor_->Attach(**again, GFP_KERNEL, 0, "", &b);
  EXPECT_TRUE(s && s->ok());
  EXPECT_FALSE(journal_->failing());
}

TEST_F(JournalLessorTest, ABulkAllocationAndARunsFreeAreOneRecordEachAndReadBackPageByPage) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = lessor_->Grant("uid:1", kLongTtlMs, 0, "");
  ASSERT_TRUE(lease.ok()) << lease.status();
  const uint64_t id = (*lease)->id;
  const uint64_t before = journal_->live_bytes();
  absl::StatusOr<std::vector<Page*>> got = lessor_->AttachBulk(**lease, GFP_KERNEL, 600);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 600u);
  const std::vector<Lessor::PfnRun> runs = RunsOf(*got);
  // 12 bytes + 12 a run in 64-byte slots (40 payload bytes in the first, 56 in the others); the
  // per-page record took 12 + 8 a page (600 pages: 86 slots).
  const uint64_t alloc_bytes = journal_->live_bytes() - before;
  EXPECT_EQ(alloc_bytes, uint64_t{JournalSlotsFor(12 + 12 * runs.size())} * kJournalSlotBytes);
  // Free every other run (pages of both halves interleave in pfn order: a page-exact read-back).
  std::vector<Lessor::PfnRun> freed_runs, kept_runs;
  for (size_t i = 0; i < runs.size(); ++i) (i % 2 == 0 ? freed_runs : kept_runs).push_back(runs[i]);
  const uint64_t mid = journal_->live_bytes();
  absl::StatusOr<uint64_t> freed = lessor_->DetachRuns(
      **lease, freed_runs, [](uint64_t pfn, const absl::Status& s) { ADD_FAILURE() << pfn << ": " << s; });
  ASSERT_TRUE(freed.ok()) << freed.status();
  uint64_t want_freed = 0;
  for (const Lessor::PfnRun& r : freed_runs) want_freed += r.count;
  EXPECT_EQ(*freed, want_freed);
  EXPECT_EQ(journal_->live_bytes() - mid, uint64_t{JournalSlotsFor(12 + 12 * freed_runs.size())} * kJournalSlotBytes);
  ExpectBooksBalance();
  std::set<uint64_t> held;
  for (const Lessor::PfnRun& r : kept_runs) {
    for (uint64_t p = r.pfn; p < r.pfn + r.count; ++p) held.insert(p);
  }
  EXPECT_EQ(Allocated(), held.size());

  const JournalState st = ReadBack();
  EXPECT_EQ(st.anomalies, 0u);
  ASSERT_EQ(st.leases.count(id), 1u);
  std::set<uint64_t> recovered;
  for (const auto& [pfn, b] : st.leases.at(id).blocks) {
    EXPECT_EQ(b.order, 0) << pfn;
    EXPECT_FALSE(b.compound) << pfn;
    EXPECT_TRUE(b.key.empty()) << pfn;
    recovered.insert(pfn);
  }
  EXPECT_EQ(recovered, held);
}

TEST_F(JournalLessorTest, ARunsFreeTheJournalCannotRecordFreesNoPageAndNamesEveryOne) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = lessor_->Grant("uid:1", kLongTtlMs, 0, "");
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<std::vector<Page*>> got = lessor_->AttachBulk(**lease, GFP_KERNEL, 200);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 200u);
  fail_ = ENOSPC;
  ExpectJournalRefusal(FillJournal(**lease));
  // Single frees use up the reserve (4 KiB: at most 64 records), then the journal refuses frees.
  size_t singles = 0;
  absl::StatusOr<uint64_t> f;
  while (singles < 100 && (f = lessor_->Detach(**lease, pa_->page_to_pfn((*got)[singles]), 0, "")).ok()) ++singles;
  ASSERT_LT(singles, 100u);
  ExpectJournalRefusal(f.status());
  const std::vector<Page*> rest(got->begin() + static_cast<std::ptrdiff_t>(singles), got->end());
  const uint64_t allocated = Allocated();
  ASSERT_EQ(allocated, rest.size());
  std::set<uint64_t> named;
  absl::StatusOr<uint64_t> freed = lessor_->DetachRuns(**lease, RunsOf(rest), [&](uint64_t pfn, const absl::Status& s) {
    ExpectJournalRefusal(s);
    EXPECT_TRUE(named.insert(pfn).second) << "pfn " << pfn << " named twice";
  });
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 0u);
  std::set<uint64_t> want;
  for (Page* p : rest) want.insert(pa_->page_to_pfn(p));
  EXPECT_EQ(named, want);
  EXPECT_EQ(Allocated(), allocated);
  EXPECT_EQ(lessor_->Describe(**lease).pages_held, allocated);
  ExpectBooksBalance();
  // Space again: the same runs free.
  fail_ = 0;
  freed = lessor_->DetachRuns(**lease, RunsOf(rest),
                              [](uint64_t pfn, const absl::Status& s) { ADD_FAILURE() << pfn << ": " << s; });
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, rest.size());
  EXPECT_EQ(Allocated(), 0u);
  ExpectBooksBalance();
}

}  // namespace
}  // namespace physmem
