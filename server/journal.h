// The ownership journal: makes leases and their allocations outlive a crash of physmemd.
//
// What it is for: with a file-backed arena (--arena_path on /dev/shm or hugetlbfs) page contents
// survive a daemon crash by themselves; the journal makes the ownership survive too. Every change
// a reply acknowledges — lease created, renewed, ended; block allocated; block freed — is appended
// here BEFORE the reply is sent, into a file mapped MAP_SHARED. A store into a shared file
// mapping is in the kernel's page cache the moment it executes, so kill -9 loses nothing that was
// appended (a machine reboot loses /dev/shm, arena and journal alike: out of scope). On restart
// Recover() reads the journal back into a JournalState, from which the server rebuilds the lease
// table and the allocator (PageAllocator::RestoreAllocated, one pass). docs/recovery.md has the
// whole story; the ordering rules that make "acknowledged => recovered" true are in journal.cc.
//
// Files (P = the journal path, by default <arena_path>.journal):
//   P.<gen>      segments, appended to concurrently; the highest gen is the live one
//   P.snap       a snapshot of the live state folding in every segment with gen <= its covers_gen
//   P.snap.tmp   a snapshot being written (ignored and removed by recovery)
// Compaction (a background thread, when the live segment passes --journal_compact_bytes):
// switch to a new segment, replay snapshot + sealed segments, write P.snap.tmp, rename() it over
// P.snap (atomic), delete the folded segments. A crash at any point leaves a readable set.
//
// The parts, one concept a file: server/journal_record.h (CRC32C, payloads, slot framing: what a
// record is), server/journal_segment.h (the files: superblock, preallocation, reservation, the
// reserve kept for frees), server/journal_compaction.h (snapshots), server/recovery.h (reading
// the files back: ReadJournalFiles; and the state into the allocator and lessor). This class
// ties them together: the live segment, rotation, the compactor thread, and the fault state.
// An append reserves its slots in the live segment (one compare-and-swap on the tail, which is
// in the superblock so it survives too), writes the continuation slots and the body, and stores
// the header word last (release). Recovery scans [first slot, tail): a slot whose header is
// absent or whose CRC fails is a record that was being written when the daemon died (never
// acknowledged) and is skipped slot by slot.
//
// Deadlines are steady_clock (CLOCK_MONOTONIC) nanoseconds: the same clock in every process of
// one boot, and it keeps running while the daemon is down. The superblock records the boot id
// (/proc/sys/kernel/random/boot_id); a journal from another boot is discarded.
//
// Thread-safety: the Append methods may be called from any thread concurrently (one shared lock
// + one compare-and-swap each; the shared lock only keeps them off a segment being switched). Recover()
// and Start() run once, before serving; the compactor runs on its own thread.
// Failure policy (docs/recovery.md "When the journal cannot be written"): an append that cannot
// be written (the file system is full, an I/O error) returns UNAVAILABLE "journal: write to
// <segment> failed: <strerror> (<call>)" having written nothing, and its caller refuses the
// change it was about to acknowledge. Frees and lease ends draw on a reserve that allocations may
// not use, so they keep working longer. The first failure logs event=journal_failing, the first
// success after it event=journal_writable; every append retries the file system, so the journal
// heals by itself once space returns.
#ifndef PHYSMEM_SERVER_JOURNAL_H_
#define PHYSMEM_SERVER_JOURNAL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/mutex.h"
#include "server/journal_record.h"
#include "server/journal_segment.h"

namespace physmem {

struct JournalOptions {
  std::string path;                      // P: segment and snapshot files are P.<gen>, P.snap
  uint64_t compact_bytes = 32ull << 20;  // compact when the live segment holds more than this
  uint64_t target_fingerprint = 0;       // a journal written for another target is refused
  uint64_t reserve_bytes = 256 << 10;    // per segment, for frees and lease ends only
  // Called at each step of a compaction with the step's name: "compact_after_switch",
  // "compact_mid_snapshot", "compact_after_rename", "compact_mid_unlink". Null in physmemd; the
  // crash tests' daemon (tests/server/physmemd_test_main.cc) SIGKILLs itself at a chosen step.
  std::function<void(std::string_view step)> step_hook;
  // Tests only (JournalSegmentOptions::fault_hook): an errno to fail a file-system call with.
  std::function<int(std::string_view op)> fault_hook;
};

class Journal {
 public:
  // Reads P.snap and the segments into *state (empty state if there are none) through
  // ReadJournalFiles (server/recovery.h), which also removes leftovers. Errors:
  // FAILED_PRECONDITION (written for another target), DATA_LOSS (an unreadable snapshot).
  static absl::StatusOr<std::unique_ptr<Journal>> Recover(JournalOptions options, JournalState* state);
  ~Journal();  // stops the compactor; the files stay (they are the point)

  // Opens segment last_gen + 1, records nonce and next id, starts the compactor.
  absl::Status Start(uint64_t nonce, uint32_t next_id);

  // ---- Appends: return once the record is in the shared mapping. ----
  // Each returns OK, or UNAVAILABLE naming the segment and the errno with nothing written: the
  // caller must then not acknowledge the change (server/lessor.cc refuses it).
  absl::Status LeaseCreated(uint64_t id, std::string_view identity, std::string_view name, int64_t ttl_ms,
                            uint64_t quota, int64_t deadline_ns);
  absl::Status LeaseRenewed(uint64_t id, int64_t deadline_ns);
  absl::Status LeaseEnded(uint64_t id);
  absl::Status Allocated(uint64_t lease_id, std::span<const JournalEntry> entries);
  absl::Status Freed(uint64_t lease_id, uint64_t pfn);
  // A bulk call's order-0 pages as runs, one record for the call (kJournalAllocRuns,
  // kJournalFreeRuns): what AttachBulk allocated, what DetachRuns is about to free.
  absl::Status AllocatedRuns(uint64_t lease_id, std::span<const JournalRun> runs);
  absl::Status FreedRuns(uint64_t lease_id, std::span<const JournalRun> runs);

  // Runs one compaction now (tests; the background thread calls it too). `stop_at` names a
  // crash point at which to return early, leaving the files exactly as a crash there would.
  // Defined in server/journal_compaction.cc.
  absl::Status Compact(std::string_view stop_at = "");

  const std::string& path() const { return options_.path; }
  uint64_t live_bytes() const;  // bytes reserved in the live segment
  uint64_t compactions() const { return compactions_.load(); }
  // Fault state: whether the last append that gives something out failed, and how many appends
  // failed in all (a metrics exporter may show both).
  bool failing() const { return failing_.load(std::memory_order_relaxed); }
  uint64_t failed_appends() const { return failed_appends_.load(std::memory_order_relaxed); }

 private:
  explicit Journal(JournalOptions options);

  absl::Status Append(uint8_t type, std::string_view payload);
  absl::StatusOr<std::unique_ptr<JournalSegment>> CreateSegment(uint64_t gen, uint64_t min_capacity);
  // Rotates to a new segment if `full` is still the live one.
  absl::Status SwitchSegment(const JournalSegment* full, uint64_t min_capacity);
  absl::Status NoteFailure(absl::Status s);
  void NoteSuccess();
  void CompactorLoop();
  void CrashPoint(std::string_view point, std::string_view stop_at, bool* stop) const;

  const JournalOptions options_;

  // Shared: appenders; exclusive: switching segments. A waiting switch holds off new appenders,
  // so a stream of appends cannot starve it. A SharedMutex (allocator/mutex.h) underneath, so
  // TSan sees it and clang checks its contract.
  class ABSL_LOCKABLE SwitchLock {
   public:
    void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
      pending_.fetch_add(1, std::memory_order_acq_rel);
      mu_.Lock();
    }
    void Unlock() ABSL_UNLOCK_FUNCTION() {
      mu_.Unlock();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
    // glibc's rwlock prefers readers: new appenders wait while a switch is pending.
    void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() {
      while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
      mu_.ReaderLock();
    }
    void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.ReaderUnlock(); }

   private:
    SharedMutex mu_;
    std::atomic<int> pending_{0};
  };
  class ABSL_SCOPED_LOCKABLE SwitchExclusive {
   public:
    explicit SwitchExclusive(SwitchLock* l) ABSL_EXCLUSIVE_LOCK_FUNCTION(l) : l_(l) { l_->Lock(); }
    ~SwitchExclusive() ABSL_UNLOCK_FUNCTION() { l_->Unlock(); }

   private:
    SwitchLock* const l_;
  };
  class ABSL_SCOPED_LOCKABLE SwitchShared {
   public:
    explicit SwitchShared(SwitchLock* l) ABSL_SHARED_LOCK_FUNCTION(l) : l_(l) { l_->ReaderLock(); }
    ~SwitchShared() ABSL_UNLOCK_FUNCTION() { l_->ReaderUnlock(); }

   private:
    SwitchLock* const l_;
  };
  mutable SwitchLock switch_mu_;
  std::unique_ptr<JournalSegment> live_ ABSL_GUARDED_BY(switch_mu_);
  uint64_t live_gen_ ABSL_GUARDED_BY(switch_mu_) = 0;
  Mutex compact_mu_;  // one compaction at a time
  uint64_t snapshot_gen_ ABSL_GUARDED_BY(compact_mu_) = 0;  // segments <= it are folded in

  std::atomic<bool> failing_{false};
  std::atomic<uint64_t> failed_appends_{0};

  Mutex wake_mu_;
  CondVar wake_cv_;
  bool stop_ ABSL_GUARDED_BY(wake_mu_) = false;
  std::atomic<bool> compact_wanted_{false};
  std::atomic<uint64_t> compactions_{0};
  std::thread compactor_;
};

// The journal path for an arena file: <arena_path>.journal, except that an arena on hugetlbfs
// (where small files cannot be written) gets /dev/shm/<basename>.journal.
std::string DefaultJournalPath(const std::string& arena_path);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_JOURNAL_H_
