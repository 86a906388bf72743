// Journal files: the superblock every file starts with, a segment being appended to, a file read
// back, and the directory listing of a journal's segments.
//
// What it is for: server/journal.h appends records (server/journal_record.h) into the live
// segment, a file mapped MAP_SHARED, so a record is in the page cache the moment its stores
// execute and a kill -9 loses nothing. This file owns everything about such a file:
//   - layout: a 4 KiB superblock (magic, kind, gen, boot id, target fingerprint, capacity, the
//     reservation tail at byte 128), then `capacity` bytes of 64-byte slots;
//   - reservation: Reserve() moves the tail with a compare-and-swap, so the journal order of two
//     records is the order of their reservations, and the tail never passes the capacity;
//   - preallocation: slots are backed with fallocate() ahead of the tail, a chunk (1 MiB) at a
//     time, so a full file system shows up as a status from Reserve() — before anything of the
//     record is written — and never as SIGBUS on a store into a sparse page of the mapping (which
//     is what writing into an unbacked page of a full tmpfs does). Where the file system cannot
//     preallocate (EOPNOTSUPP) the file stays sparse, as before;
//   - the reserve: a record that gives something out (JournalRecordReleases() false) must leave
//     `reserve` preallocated bytes behind it, which only frees and lease ends may use. So when
//     the file system fills, allocations are refused first, and the frees that would make room in
//     the arena still have room in the journal for a while (about 4096 frees per 256 KiB).
// fsync policy: none per record. The promise is "acknowledged => recovered after a daemon crash"
// (the page cache holds the mapping's stores); a machine crash loses /dev/shm, arena and journal
// alike (docs/recovery.md). Snapshots are fdatasync'd before their rename (journal_compaction.h).
//
// Who calls it: Journal (create, reserve, rotate), ReadJournalFiles in server/recovery.cc and
// the compactor (JournalFile, ListJournalSegments). Thread-safety: JournalSegment::Reserve and
// the accessors may be called from any number of threads (the tail is atomic; growing the
// preallocation takes a mutex); creation and destruction are the owner's. JournalFile is
// single-threaded.
#ifndef PHYSMEM_SERVER_JOURNAL_SEGMENT_H_
#define PHYSMEM_SERVER_JOURNAL_SEGMENT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/mutex.h"
#include "server/journal_record.h"

namespace physmem {

inline constexpr uint64_t kJournalFileMagic = 0x31304C4E524A4D50ull;  // "PMJRNL01"
inline constexpr uint32_t kJournalKindSegment = 1, kJournalKindSnapshot = 2;
inline constexpr uint32_t kJournalVersion = 1;
inline constexpr uint64_t kJournalSuperblockBytes = 4096;

struct JournalSuperblock {
  uint64_t magic;  // kJournalFileMagic, stored last (release) when a file is created
  uint32_t kind;
  uint32_t version;
  uint64_t gen;
  uint64_t fingerprint;
  uint64_t capacity;    // bytes of slots after the superblock
  uint64_t covers_gen;  // snapshot: segments <= this are folded in
  char boot_id[40];
  uint8_t pad[128 - 88];
  std::atomic<uint64_t> tail;  // bytes of slots reserved, <= capacity

  std::string boot() const;  // boot_id as a string
};
static_assert(offsetof(JournalSuperblock, tail) == 128);
static_assert(sizeof(JournalSuperblock) <= kJournalSuperblockBytes);

// /proc/sys/kernel/random/boot_id: a journal from another boot is discarded (its deadlines are
// on another CLOCK_MONOTONIC, its /dev/shm arena is gone).
std::string BootId();

// Fills a superblock (magic included: for files written whole, e.g. a snapshot).
void InitJournalSuperblock(JournalSuperblock* sb, uint32_t kind, uint64_t gen, uint64_t fingerprint, uint64_t capacity);

// P.<gen>: the segment of generation gen of the journal with prefix P.
std::string JournalSegmentPath(const std::string& prefix, uint64_t gen);
// Every P.<digits> file beside prefix P, by generation.
std::map<uint64_t, std::string> ListJournalSegments(const std::string& prefix);

struct JournalSegmentOptions {
  uint64_t capacity = 1 << 20;        // bytes of slots (rounded up to 4 KiB)
  uint64_t fingerprint = 0;           // the target's (server/recovery.h TargetFingerprint)
  uint64_t prealloc_chunk = 1 << 20;  // fallocate() this much more whenever the tail nears the end
  uint64_t reserve = 256 << 10;       // preallocated bytes only releasing records may use
  // Tests only: called before each file-system call with its name ("open", "fallocate"); a
  // non-zero return is taken as that call's errno. Null in physmemd.
  std::function<int(std::string_view op)> fault_hook;
};

// A segment being appended to: created empty (tail 0), mapped MAP_SHARED read-write.
class JournalSegment {
 public:
  // Creates (truncates) `path`, preallocates its superblock and first chunk plus the reserve,
  // writes the superblock with the magic last. On failure removes the file again and returns
  // UNAVAILABLE "journal: write to <path> failed: <strerror>" (the status the service passes on).
  static absl::StatusOr<std::unique_ptr<JournalSegment>> Create(std::string path, uint64_t gen,
                                                                JournalSegmentOptions options);
  ~JournalSegment();  // unmaps and closes; the file stays
  JournalSegment(const JournalSegment&) = delete;
  JournalSegment& operator=(const JournalSegment&) = delete;

  // Reserves `bytes` (a whole number of slots) for one record and returns their offset in the
  // slots. A record that gives something out (releases == false) must also leave `reserve`
  // preallocated bytes behind it. OUT_OF_RANGE: this segment has no room for it (the caller
  // rotates to a new one); UNAVAILABLE: the slots could not be preallocated (ENOSPC, EIO), nothing
  // was reserved. Either way nothing of the record is written.
  absl::StatusOr<uint64_t> Reserve(uint64_t bytes, bool releases);

  uint8_t* slots() const { return map_ + kJournalSuperblockBytes; }
  JournalSuperblock* sb() const { return reinterpret_cast<JournalSuperblock*>(map_); }
  uint64_t gen() const { return gen_; }
  uint64_t capacity() const { return capacity_; }
  uint64_t reserve() const { return options_.reserve; }
  uint64_t tail() const { return sb()->tail.load(std::memory_order_relaxed); }
  uint64_t preallocated() const { return prealloc_.load(std::memory_order_acquire); }
  const std::string& path() const { return path_; }

 private:
  JournalSegment(std::string path, uint64_t gen, JournalSegmentOptions options);
  // Makes slots [0, upto) backed (fallocate from the current end, at least a chunk more).
  absl::Status Preallocate(uint64_t upto);
  absl::Status Failed(const char* op, int err) const;

  const std::string path_;
  const uint64_t gen_;
  const JournalSegmentOptions options_;
  uint64_t capacity_ = 0;
  int fd_ = -1;
  uint8_t* map_ = nullptr;
  uint64_t map_bytes_ = 0;
  std::atomic<uint64_t> prealloc_{0};  // slots bytes backed; only Preallocate raises it
  Mutex grow_mu_;                      // one Preallocate at a time (guards no field: prealloc_ is atomic)
};

// A journal file mapped read-only (recovery, compaction).
class JournalFile {
 public:
  JournalFile() = default;
  ~JournalFile();
  JournalFile(const JournalFile&) = delete;
  JournalFile& operator=(const JournalFile&) = delete;

  // DATA_LOSS if the file is shorter than a superblock (its creation never finished).
  absl::Status Open(const std::string& path);
  const JournalSuperblock* sb() const { return reinterpret_cast<const JournalSuperblock*>(map_); }
  // The magic, with acquire: a file whose magic is absent was never finished.
  bool complete() const;
  // Applies every valid record to *state; returns the slots that held none (torn, unfinished).
  uint64_t ScanInto(uint64_t gen, JournalState* state) const;

 private:
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_JOURNAL_SEGMENT_H_
