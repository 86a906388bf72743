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
// Segment layout: a 4 KiB superblock (magic, kind, gen, boot id, target fingerprint, capacity,
// the reservation tail), then 64-byte slots. A record is 1..n slots. Slot 0 starts with the
// header word {magic 'JREC', nslots, type}, then seq, payload length, CRC32C, and 40 payload
// bytes; every further slot starts with a continuation word {magic 'JCON', index} and carries
// 56 payload bytes. So client-chosen bytes (names, keys) never sit where a header could be read.
// An append reserves its slots with one fetch_add on the tail (in the superblock, so it survives
// too), writes the continuation slots and the body, and stores the header word last (release).
// Recovery scans [first slot, tail): a slot whose header is absent or whose CRC fails is a record
// that was being written when the daemon died (never acknowledged) and is skipped slot by slot.
// seq = gen << 32 | slot index: checked on read, so a stale record can never be taken for a new one.
//
// Deadlines are steady_clock (CLOCK_MONOTONIC) nanoseconds: the same clock in every process of
// one boot, and it keeps running while the daemon is down. The superblock records the boot id
// (/proc/sys/kernel/random/boot_id); a journal from another boot is discarded.
//
// Thread-safety: the Append methods may be called from any thread concurrently (one shared lock
// + one atomic add each; the shared lock only keeps them off a segment being switched). Recover()
// and Start() run once, before serving; the compactor runs on its own thread.
// Failure policy: if a segment cannot be created, the journal logs event=journal_failed and the
// process exits (74) rather than acknowledge state it could not recover; a restart recovers.
#ifndef PHYSMEM_SERVER_JOURNAL_H_
#define PHYSMEM_SERVER_JOURNAL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace physmem {

// CRC32C (Castagnoli), SSE4.2 when the CPU has it.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// A block as the journal knows it.
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
  int64_t deadline_ns = 0;  // steady_clock
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

// One allocated block in an Allocated() record.
struct JournalEntry {
  uint64_t pfn = 0;
  uint8_t order = 0;
  bool compound = false;
  std::string_view key;
};

struct JournalOptions {
  std::string path;                       // P: segment and snapshot files are P.<gen>, P.snap
  uint64_t compact_bytes = 32ull << 20;   // compact when the live segment holds more than this
  uint64_t target_fingerprint = 0;        // a journal written for another target is refused
  // Called at each step of a compaction with the step's name: "compact_after_switch",
  // "compact_mid_snapshot", "compact_after_rename", "compact_mid_unlink". Null in physmemd; the
  // crash tests' daemon (tests/server/physmemd_test_main.cc) SIGKILLs itself at a chosen step.
  std::function<void(std::string_view step)> step_hook;
};

class Journal {
 public:
  // Reads P.snap and the segments into *state (empty state if there are none). Removes leftover
  // P.snap.tmp, folded segments and segments whose creation never finished. Errors:
  // FAILED_PRECONDITION (written for another target), DATA_LOSS (an unreadable snapshot).
  static absl::StatusOr<std::unique_ptr<Journal>> Recover(JournalOptions options, JournalState* state);
  ~Journal();  // stops the compactor; the files stay (they are the point)

  // Opens segment last_gen + 1, records nonce and next id, starts the compactor.
  absl::Status Start(uint64_t nonce, uint32_t next_id);

  // ---- Appends: return once the record is in the shared mapping. ----
  void LeaseCreated(uint64_t id, std::string_view identity, std::string_view name, int64_t ttl_ms, uint64_t quota,
                    int64_t deadline_ns);
  void LeaseRenewed(uint64_t id, int64_t deadline_ns);
  void LeaseEnded(uint64_t id);
  void Allocated(uint64_t lease_id, std::span<const JournalEntry> entries);
  void Freed(uint64_t lease_id, uint64_t pfn);

  // Runs one compaction now (tests; the background thread calls it too). `stop_at` names a
  // crash point at which to return early, leaving the files exactly as a crash there would.
  absl::Status Compact(std::string_view stop_at = "");

  const std::string& path() const { return options_.path; }
  uint64_t live_bytes() const;  // bytes reserved in the live segment
  uint64_t compactions() const { return compactions_.load(); }

 private:
  struct Segment;
  explicit Journal(JournalOptions options);

  void Append(uint8_t type, const std::string& payload);
  absl::StatusOr<std::unique_ptr<Segment>> CreateSegment(uint64_t gen, uint64_t min_capacity);
  void SwitchSegment(const Segment* full, uint64_t min_capacity);  // if `full` is still live
  void CompactorLoop();
  void CrashPoint(std::string_view point, std::string_view stop_at, bool* stop) const;

  const JournalOptions options_;

  // Shared: appenders; exclusive: switching segments. A waiting switch holds off new appenders,
  // so a stream of appends cannot starve it. std::shared_mutex rather than absl::Mutex: TSan
  // sees the former, not Debian's uninstrumented Abseil.
  class SwitchLock {
   public:
    void lock() {
      pending_.fetch_add(1, std::memory_order_acq_rel);
      mu_.lock();
    }
    void unlock() {
      mu_.unlock();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
    // glibc's rwlock prefers readers: new appenders wait while a switch is pending.
    void lock_shared() {
      while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
      mu_.lock_shared();
    }
    void unlock_shared() { mu_.unlock_shared(); }

   private:
    std::shared_mutex mu_;
    std::atomic<int> pending_{0};
  };
  mutable SwitchLock switch_mu_;
  std::unique_ptr<Segment> live_;  // guarded by switch_mu_
  uint64_t live_gen_ = 0;          // guarded by switch_mu_
  std::mutex compact_mu_;                // one compaction at a time
  uint64_t snapshot_gen_ = 0;            // guarded by compact_mu_: segments <= it are folded in

  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool stop_ = false;                    // guarded by wake_mu_
  std::atomic<bool> compact_wanted_{false};
  std::atomic<uint64_t> compactions_{0};
  std::thread compactor_;
};

// The journal path for an arena file: <arena_path>.journal, except that an arena on hugetlbfs
// (where small files cannot be written) gets /dev/shm/<basename>.journal.
std::string DefaultJournalPath(const std::string& arena_path);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_JOURNAL_H_
