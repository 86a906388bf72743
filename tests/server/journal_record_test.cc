// Tests server/journal_record.h on its own, in memory: CRC32C's check value, every record type's
// payload folded back into a JournalState, the slot arithmetic, and the framing (a record reads
// back whole; a corrupt, torn or stale one is skipped alone; client bytes never pass for a
// header).
#include "server/journal_record.h"

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace physmem {
namespace {

TEST(Crc32c, MatchesTheCastagnoliCheckValue) { EXPECT_EQ(Crc32c(0, "123456789", 9), 0xE3069283u); }

TEST(Crc32c, ContinuesAcrossPieces) {
  const std::string s = "the journal's records are checksummed in two pieces: header, then payload";
  EXPECT_EQ(Crc32c(Crc32c(0, s.data(), 10), s.data() + 10, s.size() - 10), Crc32c(0, s.data(), s.size()));
}

TEST(JournalRecord, SlotsForCountsTheHeadSlotAndFiftySixBytesPerContinuation) {
  EXPECT_EQ(JournalSlotsFor(0), 1u);
  EXPECT_EQ(JournalSlotsFor(40), 1u);
  EXPECT_EQ(JournalSlotsFor(41), 2u);
  EXPECT_EQ(JournalSlotsFor(96), 2u);
  EXPECT_EQ(JournalSlotsFor(97), 3u);
  EXPECT_EQ(JournalSlotsFor(322), 7u);  // an Allocated record of one block with a 300-byte key
}

TEST(JournalRecord, EveryRecordTypeFoldsIntoTheState) {
  JournalState st;
  const uint64_t id = uint64_t{9} << 32 | 3;
  ASSERT_TRUE(ApplyRecord(kJournalMeta, EncodeMeta(uint64_t{9} << 32, 3), &st));
  ASSERT_TRUE(ApplyRecord(kJournalLeaseCreate, EncodeLeaseCreated(id, "uid:1000", "cache", 5000, 64, 111), &st));
  const std::vector<JournalEntry> entries = {{4096, 0, false, {}}, {8192, 9, true, "key-a"}};
  ASSERT_TRUE(ApplyRecord(kJournalAlloc, EncodeAllocated(id, entries), &st));
  ASSERT_TRUE(ApplyRecord(kJournalLeaseRenew, EncodeLeaseRenewed(id, 222), &st));
  ASSERT_TRUE(ApplyRecord(kJournalFree, EncodeFreed(id, 4096), &st));
  EXPECT_EQ(st.nonce, uint64_t{9} << 32);
  EXPECT_EQ(st.next_id, 4u);
  ASSERT_EQ(st.leases.count(id), 1u);
  const JournalLease& l = st.leases.at(id);
  EXPECT_EQ(l.identity, "uid:1000");
  EXPECT_EQ(l.name, "cache");
  EXPECT_EQ(l.ttl_ms, 5000);
  EXPECT_EQ(l.quota, 64u);
  EXPECT_EQ(l.deadline_ns, 222);
  ASSERT_EQ(l.blocks.size(), 1u);
  const JournalBlock& b = l.blocks.at(8192);
  EXPECT_EQ(b.order, 9);
  EXPECT_TRUE(b.compound);
  EXPECT_EQ(b.key, "key-a");
  ASSERT_TRUE(ApplyRecord(kJournalLeaseEnd, EncodeLeaseEnded(id), &st));
  EXPECT_TRUE(st.leases.empty());
  EXPECT_EQ(st.anomalies, 0u);
}

TEST(JournalRecord, RunRecordsFoldPageByPageAsOrderZeroBlocks) {
  JournalState st;
  const uint64_t id = 7;
  ASSERT_TRUE(ApplyRecord(kJournalLeaseCreate, EncodeLeaseCreated(id, "uid:1", "", 5000, 0, 1), &st));
  const std::vector<JournalRun> alloc = {{100, 3}, {200, 1}, {50, 2}};
  ASSERT_TRUE(ApplyRecord(kJournalAllocRuns, EncodeRuns(id, alloc), &st));
  const std::vector<JournalRun> free = {{101, 2}, {50, 1}};
  ASSERT_TRUE(ApplyRecord(kJournalFreeRuns, EncodeRuns(id, free), &st));
  const JournalLease& l = st.leases.at(id);
  ASSERT_EQ(l.blocks.size(), 3u);
  for (const uint64_t pfn : {100, 200, 51}) {
    ASSERT_EQ(l.blocks.count(pfn), 1u) << pfn;
    EXPECT_EQ(l.blocks.at(pfn).order, 0) << pfn;
    EXPECT_FALSE(l.blocks.at(pfn).compound) << pfn;
    EXPECT_TRUE(l.blocks.at(pfn).key.empty()) << pfn;
  }
  EXPECT_EQ(st.anomalies, 0u);
  EXPECT_EQ(EncodeRuns(id, alloc).size(), 12u + 3 * 12);
  EXPECT_TRUE(JournalRecordReleases(kJournalFreeRuns));
  EXPECT_FALSE(JournalRecordReleases(kJournalAllocRuns));
  // A page freed that the lease does not hold, or allocated twice, is an anomaly (one a page).
  ASSERT_TRUE(ApplyRecord(kJournalFreeRuns, EncodeRuns(id, std::vector<JournalRun>{{101, 2}}), &st));
  EXPECT_EQ(st.anomalies, 2u);
  ASSERT_TRUE(ApplyRecord(kJournalAllocRuns, EncodeRuns(id, std::vector<JournalRun>{{200, 1}}), &st));
  EXPECT_EQ(st.anomalies, 3u);
}

TEST(JournalRecord, ARunRecordTruncatedOrPastTheLastPfnDoesNotParse) {
  JournalState st;
  const std::string p = EncodeRuns(7, std::vector<JournalRun>{{100, 3}, {200, 1}});
  EXPECT_FALSE(ApplyRecord(kJournalAllocRuns, std::string_view(p).substr(0, p.size() - 1), &st));
  EXPECT_FALSE(ApplyRecord(kJournalFreeRuns, std::string_view(p).substr(0, 12 + 12 - 4), &st));
  EXPECT_FALSE(ApplyRecord(kJournalAllocRuns, EncodeRuns(7, std::vector<JournalRun>{{~uint64_t{0}, 2}}), &st));
}

TEST(JournalRecord, RecordsNamingUnknownLeasesOrBlocksAreCountedAsAnomalies) {
  JournalState st;
  EXPECT_TRUE(ApplyRecord(kJournalFree, EncodeFreed(5, 1), &st));
  EXPECT_TRUE(ApplyRecord(kJournalLeaseEnd, EncodeLeaseEnded(5), &st));
  EXPECT_EQ(st.anomalies, 2u);
}

TEST(JournalRecord, ATruncatedPayloadOrUnknownTypeDoesNotParse) {
  JournalState st;
  const std::string p = EncodeLeaseCreated(1, "who", "name", 1, 1, 1);
  EXPECT_FALSE(ApplyRecord(kJournalLeaseCreate, std::string_view(p).substr(0, p.size() - 1), &st));
  EXPECT_FALSE(ApplyRecord(77, EncodeLeaseEnded(1), &st));
  EXPECT_TRUE(st.leases.empty());
}

// Slots in memory, as a segment's are.
struct Slots {
  explicit Slots(size_t n) : bytes(n * kJournalSlotBytes, '\0') {}
  uint8_t* at(uint64_t i) { return reinterpret_cast<uint8_t*>(bytes.data()) + i * kJournalSlotBytes; }
  uint64_t n() const { return bytes.size() / kJournalSlotBytes; }
  // Every record in order, as (type, payload).
  std::vector<std::pair<uint8_t, std::string>> Scan(uint64_t gen, uint64_t* skipped) {
    std::vector<std::pair<uint8_t, std::string>> out;
    uint64_t records = 0, read = 0;
    *skipped = ScanRecords(at(0), n(), gen, &records, &read,
                           [&](uint8_t type, std::string_view p) { out.emplace_back(type, std::string(p)); });
    EXPECT_EQ(records, out.size());
    return out;
  }
  std::string bytes;
};

TEST(JournalRecord, AMultiSlotRecordReadsBackWhole) {
  Slots s(8);
  const std::string payload = EncodeAllocated(7, std::vector<JournalEntry>{{100, 2, false, std::string(300, 'k')}});
  ASSERT_EQ(JournalSlotsFor(payload.size()), 7u);
  WriteRecord(s.at(0), uint64_t{3} << 32 | 0, kJournalAlloc, payload);
  WriteRecord(s.at(7), uint64_t{3} << 32 | 7, kJournalFree, EncodeFreed(7, 100));
  uint64_t skipped = 0;
  const auto got = s.Scan(3, &skipped);
  EXPECT_EQ(skipped, 0u);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first, kJournalAlloc);
  EXPECT_EQ(got[0].second, payload);
  EXPECT_EQ(got[1].first, kJournalFree);
}

TEST(JournalRecord, ACorruptTornOrStaleRecordIsSkippedAloneAndTheRestKept) {
  Slots s(6);
  for (uint64_t i = 0; i < 6; ++i) WriteRecord(s.at(i), uint64_t{2} << 32 | i, kJournalFree, EncodeFreed(1, i));
  s.at(1)[30] ^= 1;                                                              // a payload bit flipped: CRC mismatch
  std::memset(s.at(3), 0, 8);                                                    // its header word never written
  WriteRecord(s.at(4), uint64_t{1} << 32 | 4, kJournalFree, EncodeFreed(1, 4));  // from gen 1: stale
  uint64_t skipped = 0;
  const auto got = s.Scan(2, &skipped);
  EXPECT_EQ(skipped, 3u);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].second, EncodeFreed(1, 0));
  EXPECT_EQ(got[1].second, EncodeFreed(1, 2));
  EXPECT_EQ(got[2].second, EncodeFreed(1, 5));
}

TEST(JournalRecord, AKeyShapedLikeARecordHeaderIsNeverReadAsOne) {
  // A key holding a whole valid one-slot record, at every alignment a client could try.
  Slots probe(1);
  WriteRecord(probe.at(0), uint64_t{4} << 32 | 1, kJournalLeaseEnd, EncodeLeaseEnded(99));
  std::string key(probe.bytes);
  key = std::string(8, 'x') + key + key;
  Slots s(12);
  const std::string payload = EncodeAllocated(1, std::vector<JournalEntry>{{0, 0, false, key}});
  WriteRecord(s.at(0), uint64_t{4} << 32 | 0, kJournalAlloc, payload);
  s.at(0)[40] ^= 1;  // and the record itself torn, so a scan looks at every continuation slot alone
  uint64_t skipped = 0;
  const auto got = s.Scan(4, &skipped);
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(skipped, s.n());
}

}  // namespace
}  // namespace physmem
