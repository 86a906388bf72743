// Tests server/journal_compaction.h on its own: a snapshot written from a state reads back as
// that state, with the same codec as live appends; a big lease's blocks go in records of at most
// 4096 entries; a snapshot stopped halfway (a crash) leaves the previous one in place; a snapshot
// that cannot be written leaves no temporary file; replay folds a snapshot and the segments after
// it, and nothing before it.
#include "server/journal_compaction.h"

#include <unistd.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "server/journal_segment.h"

namespace physmem {
namespace {

class JournalCompactionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/dev/shm/physmem-journal-compaction-test-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    prefix_ = dir_ + "/j";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Two leases, one with `blocks` order-0 blocks (every third keyed), one with a compound block.
  static JournalState SomeState(uint64_t blocks) {
    JournalState st;
    st.nonce = uint64_t{5} << 32;
    st.next_id = 9;
    JournalLease& a = st.leases[st.nonce | 1];
    a = JournalLease{st.nonce | 1, "uid:1", "big", 1000, 0, 77, {}};
    for (uint64_t p = 0; p < blocks; ++p)
      a.blocks[p] = JournalBlock{0, false, p % 3 == 0 ? "k" + std::to_string(p) : ""};
    JournalLease& b = st.leases[st.nonce | 4];
    b = JournalLease{st.nonce | 4, "uid:2", "", 5, 10, 88, {}};
    b.blocks[1 << 20] = JournalBlock{9, true, "huge"};
    return st;
  }
  JournalState ReadSnapshot(uint64_t* skipped) {
    JournalFile f;
    EXPECT_TRUE(f.Open(prefix_ + ".snap").ok());
    JournalState st;
    *skipped = f.ScanInto(f.sb()->gen, &st);
    EXPECT_EQ(f.sb()->kind, kJournalKindSnapshot);
    return st;
  }
  static void ExpectSame(const JournalState& got, const JournalState& want) {
    EXPECT_EQ(got.nonce, want.nonce);
    EXPECT_EQ(got.next_id, want.next_id);
    ASSERT_EQ(got.leases.size(), want.leases.size());
    for (const auto& [id, w] : want.leases) {
      ASSERT_EQ(got.leases.count(id), 1u) << id;
      const JournalLease& g = got.leases.at(id);
      EXPECT_EQ(g.identity, w.identity);
      EXPECT_EQ(g.name, w.name);
      EXPECT_EQ(g.ttl_ms, w.ttl_ms);
      EXPECT_EQ(g.quota, w.quota);
      EXPECT_EQ(g.deadline_ns, w.deadline_ns);
      ASSERT_EQ(g.blocks.size(), w.blocks.size());
      for (const auto& [pfn, b] : w.blocks) {
        ASSERT_EQ(g.blocks.count(pfn), 1u) << pfn;
        EXPECT_EQ(g.blocks.at(pfn).order, b.order);
        EXPECT_EQ(g.blocks.at(pfn).compound, b.compound);
        EXPECT_EQ(g.blocks.at(pfn).key, b.key);
      }
    }
  }

  std::string dir_, prefix_;
};

TEST_F(JournalCompactionTest, ASnapshotReadsBackAsTheStateItWasWrittenFrom) {
  const JournalState want = SomeState(100);
  ASSERT_TRUE(WriteSnapshot(prefix_, 7, 42, EncodeSnapshot(want, 7), nullptr).ok());
  uint64_t skipped = 1;
  const JournalState got = ReadSnapshot(&skipped);
  EXPECT_EQ(skipped, 0u);
  EXPECT_EQ(got.anomalies, 0u);
  ExpectSame(got, want);
  EXPECT_FALSE(std::filesystem::exists(prefix_ + ".snap.tmp"));
}

TEST_F(JournalCompactionTest, ABigLeaseIsWrittenInRecordsOfAtMost4096Blocks) {
  const JournalState want = SomeState(10000);
  ASSERT_TRUE(WriteSnapshot(prefix_, 1, 42, EncodeSnapshot(want, 1), nullptr).ok());
  uint64_t skipped = 1;
  const JournalState got = ReadSnapshot(&skipped);
  // meta + (create + 3 allocs of 4096, 4096, 1808) + (create + 1 alloc)
  EXPECT_EQ(got.records, 1u + 4u + 2u);
  ExpectSame(got, want);
}

TEST_F(JournalCompactionTest, ASnapshotStoppedHalfwayLeavesThePreviousOneInPlace) {
  const JournalState first = SomeState(10);
  ASSERT_TRUE(WriteSnapshot(prefix_, 1, 42, EncodeSnapshot(first, 1), nullptr).ok());
  const JournalState second = SomeState(500);
  ASSERT_TRUE(WriteSnapshot(prefix_, 2, 42, EncodeSnapshot(second, 2), [] { return true; }).ok());
  EXPECT_TRUE(std::filesystem::exists(prefix_ + ".snap.tmp"));  // as a crash leaves it
  uint64_t skipped = 1;
  ExpectSame(ReadSnapshot(&skipped), first);
  EXPECT_EQ(skipped, 0u);
}

TEST_F(JournalCompactionTest, ASnapshotThatCannotBeWrittenLeavesNoFile) {
  absl::Status s = WriteSnapshot(dir_ + "/missing-dir/j", 1, 42, EncodeSnapshot(SomeState(1), 1), nullptr);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing-dir/j.snap.tmp"), std::string_view::npos) << s;
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 0);
}

TEST_F(JournalCompactionTest, ReplayFoldsTheSnapshotAndTheSegmentsAfterIt) {
  JournalState snap = SomeState(3);
  const uint64_t a = snap.nonce | 1, b = snap.nonce | 4;
  ASSERT_TRUE(WriteSnapshot(prefix_, 2, 42, EncodeSnapshot(snap, 2), nullptr).ok());
  // Segment 2 is folded in already (it would double-apply); segment 3 frees a block of lease a.
  for (uint64_t gen : {2, 3}) {
    JournalSegmentOptions o;
    o.fingerprint = 42;
    absl::StatusOr<std::unique_ptr<JournalSegment>> seg =
        JournalSegment::Create(JournalSegmentPath(prefix_, gen), gen, o);
    ASSERT_TRUE(seg.ok()) << seg.status();
    const std::string p = gen == 2 ? EncodeLeaseEnded(b) : EncodeFreed(a, 0);
    absl::StatusOr<uint64_t> off = (*seg)->Reserve(kJournalSlotBytes, true);
    ASSERT_TRUE(off.ok());
    WriteRecord((*seg)->slots() + *off, gen << 32, gen == 2 ? kJournalLeaseEnd : kJournalFree, p);
  }
  absl::StatusOr<JournalState> st = ReplayForCompaction(prefix_, 2, 3);
  ASSERT_TRUE(st.ok()) << st.status();
  snap.leases.at(a).blocks.erase(0);
  ExpectSame(*st, snap);
  EXPECT_EQ(st->anomalies, 0u);
}

}  // namespace
}  // namespace physmem
