// Journal compaction: folds the sealed segments into one snapshot of the live state, so the
// journal stays about as large as the state it describes rather than its history.
//
// What it is for: every change is appended (server/journal.h), so a long-running daemon's
// segments grow without bound. Journal::Compact (defined in journal_compaction.cc, beside the
// pieces below, and run by the journal's compactor thread when the live segment passes
// --journal_compact_bytes) does it in four steps, each leaving a readable set of files if the
// daemon dies right there (the crash tests kill it at each of the named steps):
//   1. switch appends to a new segment (gen = sealed + 1)          -> "compact_after_switch"
//   2. ReplayForCompaction: P.snap and segments (snapshot_gen, sealed] into a JournalState
//   3. EncodeSnapshot + WriteSnapshot: P.snap.tmp, written, fdatasync'd, renamed over P.snap
//                                                                  -> "compact_mid_snapshot"
//                                                                     (half written)
//                                                                  -> "compact_after_rename"
//   4. unlink the folded segments                                  -> "compact_mid_unlink"
// A snapshot is a journal file of kind kJournalKindSnapshot whose records are written by the same
// codec as live appends (server/journal_record.h): one Meta record, then per lease (by id) one
// LeaseCreated record and its blocks (by pfn) in Allocated records of at most 4096 entries.
//
// Who calls it: the Journal. Thread-safety: the free functions touch only their arguments and
// the files named; Journal::Compact runs one at a time (compact_mu_).
#ifndef PHYSMEM_SERVER_JOURNAL_COMPACTION_H_
#define PHYSMEM_SERVER_JOURNAL_COMPACTION_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/journal_record.h"

namespace physmem {

// Replays P.snap (when snapshot_gen != 0) and the segments snapshot_gen+1 .. sealed_gen of the
// journal with prefix P. A segment missing or never finished holds nothing (recovery removed it).
absl::StatusOr<JournalState> ReplayForCompaction(const std::string& prefix, uint64_t snapshot_gen, uint64_t sealed_gen);

// The slots of a snapshot of `st` for generation `gen` (seq = gen << 32 | slot).
std::string EncodeSnapshot(const JournalState& st, uint64_t gen);

// Writes superblock + `slots` to P.snap.tmp, fdatasyncs it and renames it over P.snap. `halfway`
// (may be null) is called with half the slots written; if it returns true the write stops there,
// the file left as a crash would leave it, and OK is returned. On an error P.snap.tmp is removed
// and P.snap is untouched.
absl::Status WriteSnapshot(const std::string& prefix, uint64_t gen, uint64_t fingerprint, const std::string& slots,
                           const std::function<bool()>& halfway);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_JOURNAL_COMPACTION_H_
