// Tests server/journal_segment.h on its own, on files in /dev/shm (tmpfs, as in production): a
// new segment is a complete file with no record; reservations are consecutive and never pass
// the capacity; records that give something out leave the reserve, which frees may use; slots are
// preallocated ahead of the tail; a file-system error (injected through fault_hook) is UNAVAILABLE
// naming the segment with nothing reserved, and the segment heals once the error goes; a segment
// whose creation fails leaves no file; only P.<digits> are segments.
#include "server/journal_segment.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;

class JournalSegmentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/dev/shm/physmem-journal-segment-test-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // 1 MiB of slots with a 256 KiB reserve and 64 KiB chunks; fails "fallocate" while fail_ is set.
  JournalSegmentOptions Options() {
    JournalSegmentOptions o;
    o.capacity = 1 << 20;
    o.fingerprint = 42;
    o.prealloc_chunk = 64 << 10;
    o.reserve = 256 << 10;
    o.fault_hook = [this](std::string_view op) { return op == "fallocate" ? fail_.load() : 0; };
    return o;
  }
  std::unique_ptr<JournalSegment> Create(uint64_t gen = 1) {
    absl::StatusOr<std::unique_ptr<JournalSegment>> s =
        JournalSegment::Create(dir_ + "/j." + std::to_string(gen), gen, Options());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  std::string dir_;
  std::atomic<int> fail_{0};
};

TEST_F(JournalSegmentTest, ANewSegmentIsACompleteFileWithNoRecord) {
  auto seg = Create(3);
  ASSERT_NE(seg, nullptr);
  JournalFile f;
  ASSERT_TRUE(f.Open(dir_ + "/j.3").ok());
  EXPECT_TRUE(f.complete());
  EXPECT_EQ(f.sb()->kind, kJournalKindSegment);
  EXPECT_EQ(f.sb()->gen, 3u);
  EXPECT_EQ(f.sb()->fingerprint, 42u);
  EXPECT_EQ(f.sb()->capacity, uint64_t{1} << 20);
  EXPECT_EQ(f.sb()->boot(), BootId());
  JournalState st;
  EXPECT_EQ(f.ScanInto(3, &st), 0u);
  EXPECT_EQ(st.records, 0u);
}

TEST_F(JournalSegmentTest, RecordsWrittenAtReservedOffsetsReadBack) {
  auto seg = Create();
  for (uint64_t pfn = 0; pfn < 100; ++pfn) {
    const std::string p = EncodeFreed(1, pfn);
    absl::StatusOr<uint64_t> off = seg->Reserve(kJournalSlotBytes, /*releases=*/true);
    ASSERT_TRUE(off.ok()) << off.status();
    EXPECT_EQ(*off, pfn * kJournalSlotBytes);  // consecutive
    WriteRecord(seg->slots() + *off, seg->gen() << 32 | *off / kJournalSlotBytes, kJournalFree, p);
  }
  JournalFile f;
  ASSERT_TRUE(f.Open(seg->path()).ok());
  JournalState st;
  EXPECT_EQ(f.ScanInto(1, &st), 0u);
  EXPECT_EQ(st.records, 100u);
  EXPECT_EQ(st.anomalies, 100u);  // frees of a lease never created: read, and counted as such
}

TEST_F(JournalSegmentTest, GrantsLeaveTheReserveWhichOnlyReleasesMayUse) {
  auto seg = Create();
  const uint64_t record = 4096;
  uint64_t grants = 0;
  for (;;) {
    absl::StatusOr<uint64_t> off = seg->Reserve(record, /*releases=*/false);
    if (!off.ok()) {
      EXPECT_EQ(off.status().code(), absl::StatusCode::kOutOfRange) << off.status();
      break;
    }
    ++grants;
  }
  // Grants stop where the reserve begins: (1 MiB - 256 KiB) / 4 KiB = 192.
  EXPECT_EQ(grants, 192u);
  EXPECT_EQ(seg->tail(), (uint64_t{1} << 20) - (256 << 10));
  uint64_t releases = 0;
  while (seg->Reserve(record, /*releases=*/true).ok()) ++releases;
  EXPECT_EQ(releases, 64u);  // the whole reserve, and not a byte past the capacity
  EXPECT_EQ(seg->tail(), seg->capacity());
}

TEST_F(JournalSegmentTest, SlotsArePreallocatedAheadOfTheTail) {
  auto seg = Create();
  ASSERT_TRUE(seg->Reserve(300 << 10, /*releases=*/false).ok());
  EXPECT_GE(seg->preallocated(), seg->tail() + seg->reserve());
  struct stat st;
  ASSERT_EQ(::stat(seg->path().c_str(), &st), 0);
  // tmpfs backs what fallocate() asked for: the superblock and every preallocated slot.
  EXPECT_GE(uint64_t(st.st_blocks) * 512, kJournalSuperblockBytes + seg->preallocated());
}

TEST_F(JournalSegmentTest, AFailedPreallocationIsUnavailableNamingTheSegmentAndReservesNothing) {
  auto seg = Create();
  const uint64_t backed = seg->preallocated();
  // Grants up to the end of what is backed succeed without the file system.
  fail_ = ENOSPC;
  ASSERT_TRUE(seg->Reserve(backed - seg->reserve(), /*releases=*/false).ok());
  const uint64_t tail = seg->tail();
  absl::StatusOr<uint64_t> off = seg->Reserve(kJournalSlotBytes, /*releases=*/false);
  ASSERT_FALSE(off.ok());
  EXPECT_EQ(off.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(off.status().message(),
              HasSubstr("journal: write to " + seg->path() + " failed: " + std::strerror(ENOSPC)));
  EXPECT_EQ(seg->tail(), tail);
  // Frees still fit, in the reserve.
  EXPECT_TRUE(seg->Reserve(kJournalSlotBytes, /*releases=*/true).ok());
  // EIO reads the same way; once the file system works again, so does the segment.
  fail_ = EIO;
  EXPECT_THAT(seg->Reserve(kJournalSlotBytes, false).status().message(), HasSubstr(std::strerror(EIO)));
  fail_ = 0;
  EXPECT_TRUE(seg->Reserve(kJournalSlotBytes, /*releases=*/false).ok());
}

TEST_F(JournalSegmentTest, ASegmentWhoseCreationFailsLeavesNoFile) {
  fail_ = ENOSPC;
  absl::StatusOr<std::unique_ptr<JournalSegment>> s = JournalSegment::Create(dir_ + "/j.5", 5, Options());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr(dir_ + "/j.5"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/j.5"));
}

TEST_F(JournalSegmentTest, OnlyNumberedFilesBesideThePrefixAreSegments) {
  for (const char* name : {"j.1", "j.12", "j.snap", "j.snap.tmp", "j.3x", "jj.4", "k.5"}) {
    std::ofstream(dir_ + "/" + name) << "x";
  }
  const std::map<uint64_t, std::string> got = ListJournalSegments(dir_ + "/j");
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got.at(1), dir_ + "/j.1");
  EXPECT_EQ(got.at(12), dir_ + "/j.12");
}

}  // namespace
}  // namespace physmem
