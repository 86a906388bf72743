// Tests ReadJournalFiles (server/recovery.h), the reading half of crash recovery, on files in
// /dev/shm: what a crash leaves behind and no reader needs is removed (P.snap.tmp, a segment
// shorter than its header or without its magic, segments the snapshot folds in); a journal from
// another boot is discarded whole; one written for another target is refused with a message that
// says what to do; torn records are counted, not fatal.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/journal_compaction.h"
#include "server/journal_segment.h"
#include "server/recovery.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;

class JournalRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/dev/shm/physmem-journal-recovery-test-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    prefix_ = dir_ + "/j";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Segment `gen` holding one lease with `blocks` blocks; returns it still mapped.
  std::unique_ptr<JournalSegment> Segment(uint64_t gen, uint64_t lease, uint64_t blocks, uint64_t fingerprint = 42) {
    JournalSegmentOptions o;
    o.fingerprint = fingerprint;
    absl::StatusOr<std::unique_ptr<JournalSegment>> seg =
        JournalSegment::Create(JournalSegmentPath(prefix_, gen), gen, o);
    EXPECT_TRUE(seg.ok()) << seg.status();
    if (!seg.ok()) return nullptr;
    Append(**seg, kJournalLeaseCreate, EncodeLeaseCreated(lease, "uid:1", "", 1000, 0, 5));
    for (uint64_t p = 0; p < blocks; ++p) {
      const JournalEntry e{gen << 20 | p, 0, false, {}};
      Append(**seg, kJournalAlloc, EncodeAllocated(lease, {&e, 1}));
    }
    return *std::move(seg);
  }
  static void Append(JournalSegment& seg, uint8_t type, const std::string& payload) {
    const uint64_t bytes = uint64_t{JournalSlotsFor(payload.size())} * kJournalSlotBytes;
    absl::StatusOr<uint64_t> off = seg.Reserve(bytes, false);
    ASSERT_TRUE(off.ok()) << off.status();
    WriteRecord(seg.slots() + *off, seg.gen() << 32 | *off / kJournalSlotBytes, type, payload);
  }

  std::string dir_, prefix_;
};

TEST_F(JournalRecoveryTest, ReadsEverySegmentInGenerationOrder) {
  Segment(1, 1, 3);
  auto s2 = Segment(2, 2, 4);
  Append(*s2, kJournalLeaseEnd, EncodeLeaseEnded(1));
  JournalState st;
  absl::StatusOr<JournalFiles> files = ReadJournalFiles(prefix_, 42, &st);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->snapshot_gen, 0u);
  EXPECT_EQ(st.segments, 2u);
  EXPECT_EQ(st.last_gen, 2u);
  ASSERT_EQ(st.leases.size(), 1u);
  EXPECT_EQ(st.leases.at(2).blocks.size(), 4u);
  EXPECT_EQ(st.anomalies, 0u);
}

TEST_F(JournalRecoveryTest, RemovesWhatACrashLeavesBehind) {
  Segment(1, 1, 2);
  std::ofstream(prefix_ + ".snap.tmp") << "half a snapshot";
  std::ofstream(JournalSegmentPath(prefix_, 2)) << "short";  // cut before its header was written
  {
    auto s3 = Segment(3, 3, 1);
    s3->sb()->magic = 0;  // its magic never stored: creation cut short
  }
  JournalState st;
  ASSERT_TRUE(ReadJournalFiles(prefix_, 42, &st).ok());
  EXPECT_EQ(st.leases.size(), 1u);
  EXPECT_FALSE(std::filesystem::exists(prefix_ + ".snap.tmp"));
  EXPECT_FALSE(std::filesystem::exists(JournalSegmentPath(prefix_, 2)));
  EXPECT_FALSE(std::filesystem::exists(JournalSegmentPath(prefix_, 3)));
  EXPECT_TRUE(std::filesystem::exists(JournalSegmentPath(prefix_, 1)));
}

TEST_F(JournalRecoveryTest, SegmentsTheSnapshotFoldsInAreRemovedNotReadTwice) {
  Segment(1, 1, 2);
  JournalState snap;
  ASSERT_TRUE(ReadJournalFiles(prefix_, 42, &snap).ok());
  ASSERT_TRUE(WriteSnapshot(prefix_, 1, 42, EncodeSnapshot(snap, 1), nullptr).ok());
  Segment(2, 2, 1);
  JournalState st;
  absl::StatusOr<JournalFiles> files = ReadJournalFiles(prefix_, 42, &st);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->snapshot_gen, 1u);
  EXPECT_TRUE(st.from_snapshot);
  EXPECT_EQ(st.leases.size(), 2u);
  EXPECT_EQ(st.anomalies, 0u);  // lease 1 created once, not again from segment 1
  EXPECT_FALSE(std::filesystem::exists(JournalSegmentPath(prefix_, 1)));
}

TEST_F(JournalRecoveryTest, AJournalFromAnotherBootIsDiscardedWhole) {
  {
    auto s = Segment(1, 1, 2);
    std::memcpy(s->sb()->boot_id, "00000000-another-boot", 21);
  }
  JournalState st;
  ASSERT_TRUE(ReadJournalFiles(prefix_, 42, &st).ok());
  EXPECT_TRUE(st.leases.empty());
  EXPECT_FALSE(std::filesystem::exists(JournalSegmentPath(prefix_, 1)));
}

TEST_F(JournalRecoveryTest, AJournalForAnotherTargetIsRefusedSayingWhatToDo) {
  Segment(1, 1, 2, /*fingerprint=*/7);
  JournalState st;
  absl::StatusOr<JournalFiles> files = ReadJournalFiles(prefix_, 42, &st);
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(files.status().message(), HasSubstr("written for another target"));
  EXPECT_THAT(files.status().message(), HasSubstr("--journal=off"));
  EXPECT_TRUE(std::filesystem::exists(JournalSegmentPath(prefix_, 1)));  // nothing removed
}

TEST_F(JournalRecoveryTest, TornRecordsAreCountedAndTheRestRead) {
  {
    auto s = Segment(1, 1, 5);
    s->slots()[2 * kJournalSlotBytes + 30] ^= 1;  // the second block's record: bad CRC
  }
  JournalState st;
  ASSERT_TRUE(ReadJournalFiles(prefix_, 42, &st).ok());
  EXPECT_EQ(st.skipped_slots, 1u);
  EXPECT_EQ(st.leases.at(1).blocks.size(), 4u);
}

}  // namespace
}  // namespace physmem
