// Crash recovery, in two halves: reading the journal's files back into a JournalState
// (ReadJournalFiles, through the segment and record API of server/journal_segment.h and
// server/journal_record.h), and turning that state into a live allocator and lessor
// (RestoreFromJournal), before the daemon serves.
//
// Who uses it: Journal::Recover (the first half), Server::Start (the second). Thread-safety:
// single-threaded, before serving.
//
// Leases whose deadline passed while the daemon was down are expired here (their pages stay
// free; the caller journals their end); the rest keep their deadline, so a restart costs a lease
// no TTL and gives it none. Every other lease comes back with the same id, identity, name, TTL,
// quota, blocks (pfn, order, zone, compound) and allocation keys. Page contents are not touched:
// they are in the file-backed arena already.
#ifndef PHYSMEM_SERVER_RECOVERY_H_
#define PHYSMEM_SERVER_RECOVERY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/page_allocator.h"
#include "server/journal.h"
#include "server/lessor.h"

namespace physmem {

// What ReadJournalFiles found besides the state.
struct JournalFiles {
  uint64_t snapshot_gen = 0;    // segments <= this are folded into P.snap (0: no snapshot)
  uint64_t snapshot_bytes = 0;  // of records read from P.snap
};

// Reads P.snap, then every segment P.<gen> after the snapshot's, in gen order, into *state
// (cleared first). Removes what a crash leaves behind and no reader needs: P.snap.tmp, segments
// folded into the snapshot, segments whose creation never finished (no magic). Discards the whole
// journal, with event=journal_discarded, if it was written before the last reboot. Errors:
// FAILED_PRECONDITION (written for another target: the message says what to do), DATA_LOSS (a
// snapshot or segment header that does not parse, or a snapshot with a torn record).
absl::StatusOr<JournalFiles> ReadJournalFiles(const std::string& prefix, uint64_t target_fingerprint,
                                              JournalState* state);

struct RecoveryReport {
  uint64_t leases = 0;   // restored
  uint64_t blocks = 0;
  uint64_t pages = 0;
  std::vector<uint64_t> expired;  // lease ids that expired while the daemon was down
};

// A number that changes whenever a journal's pfns would mean something else: the target's memory
// map, page size, zone limits and orders.
uint64_t TargetFingerprint(const Target& t);

// Restores `state` into a fresh allocator and lessor: the allocator marks the blocks allocated,
// the lessor adopts each live lease (its book and charges: Lessor::Adopt). DATA_LOSS if the
// journal's blocks are inconsistent (overlap, not RAM): then nothing is restored.
absl::StatusOr<RecoveryReport> RestoreFromJournal(JournalState& state, PageAllocator* pa, Lessor* lessor);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_RECOVERY_H_
