// The journal's record codec: what one change looks like in bytes, and how bytes become changes.
//
// What it is for: every journal file (a live segment, a snapshot) is a sequence of records in
// 64-byte slots after a 4 KiB superblock (server/journal_segment.h). This file owns the two
// layers inside a slot run, and nothing about files:
//   - the payload of each record type (EncodeLeaseCreated ... EncodeFreed), and ApplyRecord,
//     which folds one decoded record into a JournalState — the one decoder, used by recovery and
//     by compaction alike, so the snapshot writer encodes with the same functions as the live
//     appends (a snapshot is just a journal whose records happen to be minimal);
//   - the slot framing (WriteRecord, ScanRecords): slot 0 starts with the header word
//     {magic 'JREC' << 32 | nslots << 8 | type}, then seq (8), payload length (4), CRC32C (4) and
//     40 payload bytes; each further slot starts with {magic 'JCON' << 32 | index} and carries 56
//     payload bytes. So a record of n payload bytes takes 1 + ceil((n - 40) / 56) slots, e.g. a
//     Freed record (16 bytes) one slot, an Allocated record of one block with a 300-byte key
//     (12 + 8 + 2 + 300 = 322 bytes) 1 + ceil(282 / 56) = 7 slots. Client-chosen bytes (names,
//     keys) therefore never sit where a header word could be read.
//     seq = gen << 32 | slot index is checked on read, so a stale record is never taken for a
//     new one; the CRC covers the header's low word, seq, length and payload.
//
// CRC32C is written here (SSE4.2 when the CPU has it, else a table): Debian 12's Abseil
// (20220623) has no public CRC (absl/crc arrived in 20230125), and the one packaged library
// (libcrc32c-dev) would be a new dependency for forty lines that the check-value test pins.
//
// Who calls it: server/journal.cc (appends), server/journal_compaction.cc (snapshot), recovery
// through server/journal_segment.cc (scans). Thread-safety: every function is pure or writes only
// the memory it is given; WriteRecord publishes its header word with a release store so that a
// concurrent reader of the same mapping never sees a header whose body is not there.
#ifndef PHYSMEM_SERVER_JOURNAL_RECORD_H_
#define PHYSMEM_SERVER_JOURNAL_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"

namespace physmem {

// CRC32C (Castagnoli, polynomial 0x1EDC6F41 reflected): Crc32c(0, "123456789", 9) = 0xE3069283.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// ---- The state a journal describes ----

struct JournalBlock {
  uint8_t order = 0;
  bool compound = false;
  std::string key;
};

struct JournalLease {
  uint64_t id = 0;
  std::string identity;
  std::string name;
  int64_t ttl_ms = 0;
  uint64_t quota = 0;
  int64_t deadline_ns = 0;                             // steady_clock
  absl::flat_hash_map<uint64_t, JournalBlock> blocks;  // pfn -> block
};

// The state a journal describes, and what reading it found.
struct JournalState {
  uint64_t nonce = 0;    // lease id high half (0: none recorded)
  uint32_t next_id = 1;  // next lease number (low half)
  absl::flat_hash_map<uint64_t, JournalLease> leases;
  uint64_t last_gen = 0;  // highest segment or snapshot gen seen

  // Statistics of the read.
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t skipped_slots = 0;  // torn or unfinished records (never acknowledged)
  uint64_t anomalies = 0;      // records naming unknown leases/blocks (a bug if ever non-zero)
  uint64_t segments = 0;
  bool from_snapshot = false;
};

// One allocated block in an Allocated record.
struct JournalEntry {
  uint64_t pfn = 0;
  uint8_t order = 0;
  bool compound = false;
  std::string_view key;
};

// A run of order-0 pages in a run record: pfn, pfn + 1, ..., pfn + count - 1, each its own
// non-compound, keyless order-0 block (what AllocPagesBulk hands out and FreePagesBulk's runs free).
struct JournalRun {
  uint64_t pfn = 0;
  uint32_t count = 0;
};

// ---- Payloads ----

enum JournalRecordType : uint8_t {
  kJournalMeta = 1,         // nonce, next lease number
  kJournalLeaseCreate = 2,  // id, deadline, ttl, quota, identity, name
  kJournalLeaseRenew = 3,   // id, deadline
  kJournalLeaseEnd = 4,     // id
  kJournalAlloc = 5,        // lease id, count, count x (pfn:48 | flags:8 | order:8 [, key])
  kJournalFree = 6,         // lease id, pfn
  // One record per bulk call instead of one entry (alloc) or record (free) a page: issue #15
  // part 1, where 8 bytes a page allocated and a 64-byte slot a page freed were a fifth of the
  // journaled bulk path and most of what compaction reread.
  kJournalAllocRuns = 7,    // lease id, count, count x (pfn:u64, pages:u32): order-0 pages allocated
  kJournalFreeRuns = 8,     // lease id, count, count x (pfn:u64, pages:u32): order-0 pages freed
};

// Records that give something out (a lease, a block, more time) as opposed to those that give
// something back (a free, a lease's end). When the journal's file system is full, the journal
// keeps a reserve for the latter (server/journal_segment.h, docs/recovery.md).
inline bool JournalRecordReleases(uint8_t type) {
  return type == kJournalFree || type == kJournalFreeRuns || type == kJournalLeaseEnd;
}

// Strings longer than 65535 bytes are cut there (the service's limits are far below).
std::string EncodeMeta(uint64_t nonce, uint32_t next_id);
std::string EncodeLeaseCreated(uint64_t id, std::string_view identity, std::string_view name, int64_t ttl_ms,
                               uint64_t quota, int64_t deadline_ns);
std::string EncodeLeaseRenewed(uint64_t id, int64_t deadline_ns);
std::string EncodeLeaseEnded(uint64_t id);
std::string EncodeAllocated(uint64_t lease_id, std::span<const JournalEntry> entries);
std::string EncodeFreed(uint64_t lease_id, uint64_t pfn);
// kJournalAllocRuns / kJournalFreeRuns: 12 + 12 bytes a run, e.g. 4096 pages in 29 runs 360 bytes
// (8 slots) where per-page records took 32 KiB to allocate them and 256 KiB to free them.
std::string EncodeRuns(uint64_t lease_id, std::span<const JournalRun> runs);

// Folds one record into *st. Returns false if the payload does not parse (the caller counts an
// anomaly); a record naming an unknown lease or block is applied as far as it can be and counted
// in st->anomalies.
bool ApplyRecord(uint8_t type, std::string_view payload, JournalState* st);

// ---- Slot framing ----

inline constexpr uint64_t kJournalSlotBytes = 64;
inline constexpr size_t kJournalHeadPayload = kJournalSlotBytes - 24;  // 40
inline constexpr size_t kJournalContPayload = kJournalSlotBytes - 8;   // 56

// Slots a payload of `payload_bytes` takes (>= 1).
uint32_t JournalSlotsFor(size_t payload_bytes);

// Writes one record into the JournalSlotsFor(payload.size()) slots at dst, header word last.
void WriteRecord(uint8_t* dst, uint64_t seq, uint8_t type, std::string_view payload);

// Reads the records in `nslots` slots at `slots` of the file of generation `gen`, calling
// apply(type, payload) for each valid one in order. A slot that starts no valid record (absent
// header, bad CRC, wrong seq, torn continuation) is skipped alone, so the records after it are
// kept. Returns the number of slots skipped; *records and *bytes count what was applied.
template <typename Apply>
uint64_t ScanRecords(const uint8_t* slots, uint64_t nslots, uint64_t gen, uint64_t* records, uint64_t* bytes,
                     Apply&& apply);

// The record starting at slot i, if it is valid: its type, payload (in *payload) and slot count.
// 0 if slot i starts no valid record. (ScanRecords' step; exposed for it and its tests.)
uint32_t ReadRecordAt(const uint8_t* slots, uint64_t nslots, uint64_t i, uint64_t gen, uint8_t* type,
                      std::string* payload);

template <typename Apply>
uint64_t ScanRecords(const uint8_t* slots, uint64_t nslots, uint64_t gen, uint64_t* records, uint64_t* bytes,
                     Apply&& apply) {
  uint64_t skipped = 0;
  std::string payload;
  for (uint64_t i = 0; i < nslots;) {
    uint8_t type = 0;
    const uint32_t n = ReadRecordAt(slots, nslots, i, gen, &type, &payload);
    if (n == 0) {
      ++skipped;
      ++i;
      continue;
    }
    apply(type, std::string_view(payload));
    ++*records;
    *bytes += uint64_t{n} * kJournalSlotBytes;
    i += n;
  }
  return skipped;
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_JOURNAL_RECORD_H_
