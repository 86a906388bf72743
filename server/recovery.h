// Crash recovery: turns what the journal read back (JournalState, server/journal.h) into a live
// allocator and lessor, before the daemon serves.
//
// Who uses it: Server::Start. Thread-safety: single-threaded, before serving.
//
// Leases whose deadline passed while the daemon was down are expired here (their pages stay
// free; the caller journals their end); the rest keep their deadline, so a restart costs a lease
// no TTL and gives it none. Every other lease comes back with the same id, identity, name, TTL,
// quota, blocks (pfn, order, zone, compound) and allocation keys. Page contents are not touched:
// they are in the file-backed arena already.
#ifndef PHYSMEM_SERVER_RECOVERY_H_
#define PHYSMEM_SERVER_RECOVERY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/page_allocator.h"
#include "server/journal.h"
#include "server/lessor.h"

namespace physmem {

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
