#include "server/journal_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace physmem {

std::string JournalSuperblock::boot() const { return std::string(boot_id, strnlen(boot_id, sizeof(boot_id))); }

std::string BootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

void InitJournalSuperblock(JournalSuperblock* sb, uint32_t kind, uint64_t gen, uint64_t fingerprint,
                           uint64_t capacity) {
  sb->kind = kind;
  sb->version = kJournalVersion;
  sb->gen = gen;
  sb->fingerprint = fingerprint;
  sb->capacity = capacity;
  sb->covers_gen = kind == kJournalKindSnapshot ? gen : 0;
  const std::string boot = BootId();
  std::memset(sb->boot_id, 0, sizeof(sb->boot_id));
  std::memcpy(sb->boot_id, boot.data(), std::min(boot.size(), sizeof(sb->boot_id) - 1));
  sb->tail.store(0, std::memory_order_relaxed);
  // The magic last: a file whose creation was cut short is recognizably not one.
  std::atomic_ref<uint64_t>(sb->magic).store(kJournalFileMagic, std::memory_order_release);
}

std::string JournalSegmentPath(const std::string& prefix, uint64_t gen) { return absl::StrCat(prefix, ".", gen); }

std::map<uint64_t, std::string> ListJournalSegments(const std::string& prefix) {
  const std::filesystem::path p(prefix);
  const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  const std::string base = p.filename().string() + ".";
  std::map<uint64_t, std::string> segments;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= base.size() || name.compare(0, base.size(), base) != 0) continue;
    const std::string suffix = name.substr(base.size());
    if (suffix.size() < 19 && std::all_of(suffix.begin(), suffix.end(), ::isdigit)) {
      segments[std::stoull(suffix)] = e.path().string();
    }
  }
  return segments;
}

// ---- JournalSegment ----

JournalSegment::JournalSegment(std::string path, uint64_t gen, JournalSegmentOptions options)
    : path_(std::move(path)), gen_(gen), options_(std::move(options)) {}

JournalSegment::~JournalSegment() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
  if (fd_ >= 0) close(fd_);
}

absl::Status JournalSegment::Failed(const char* op, int err) const {
  // UNAVAILABLE: the condition is the machine's and passes (space comes back); the service hands
  // this status to the client as it is, so it names the journal, the file and the errno.
  return absl::UnavailableError(
      absl::StrCat("journal: write to ", path_, " failed: ", std::strerror(err), " (", op, ")"));
}

absl::StatusOr<std::unique_ptr<JournalSegment>> JournalSegment::Create(std::string path, uint64_t gen,
                                                                       JournalSegmentOptions options) {
  std::unique_ptr<JournalSegment> seg(new JournalSegment(std::move(path), gen, std::move(options)));
  seg->capacity_ = (seg->options_.capacity + 4095) & ~uint64_t{4095};
  seg->map_bytes_ = kJournalSuperblockBytes + seg->capacity_;
  const auto& hook = seg->options_.fault_hook;
  int err = hook ? hook("open") : 0;
  if (err == 0) {
    seg->fd_ = open(seg->path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (seg->fd_ < 0) err = errno;
  }
  if (err != 0) return seg->Failed("open", err);
  auto fail = [&](const char* op, int e) {
    const absl::Status s = seg->Failed(op, e);
    unlink(seg->path_.c_str());  // recovery would discard it (no magic); it only takes space
    return s;
  };
  // The apparent size is the whole capacity; only what Preallocate() backs takes space.
  if (ftruncate(seg->fd_, static_cast<off_t>(seg->map_bytes_)) != 0) return fail("ftruncate", errno);
  err = hook ? hook("fallocate") : 0;
  if (err == 0 && fallocate(seg->fd_, 0, 0, static_cast<off_t>(kJournalSuperblockBytes)) != 0 && errno != EOPNOTSUPP) {
    err = errno;
  }
  if (err != 0) return fail("fallocate", err);
  void* p = mmap(nullptr, seg->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd_, 0);
  if (p == MAP_FAILED) return fail("mmap", errno);
  seg->map_ = static_cast<uint8_t*>(p);
  if (absl::Status s = seg->Preallocate(std::min(seg->capacity_, seg->options_.reserve + kJournalSlotBytes)); !s.ok()) {
    unlink(seg->path_.c_str());
    return s;
  }
  InitJournalSuperblock(seg->sb(), kJournalKindSegment, gen, seg->options_.fingerprint, seg->capacity_);
  return seg;
}

absl::Status JournalSegment::Preallocate(uint64_t upto) {
  MutexLock l(&grow_mu_);
  const uint64_t have = prealloc_.load(std::memory_order_relaxed);
  if (have >= upto) return absl::OkStatus();
  uint64_t want = std::max(upto, have + options_.prealloc_chunk);
  want = std::min(capacity_, (want + 4095) & ~uint64_t{4095});
  int err = options_.fault_hook ? options_.fault_hook("fallocate") : 0;
  if (err == 0 &&
      fallocate(fd_, 0, static_cast<off_t>(kJournalSuperblockBytes + have), static_cast<off_t>(want - have)) != 0) {
    err = errno;
  }
  if (err == EOPNOTSUPP) {
    want = capacity_;  // a file system without fallocate: sparse, as a plain mapping would be
  } else if (err != 0) {
    return Failed("fallocate", err);
  }
  prealloc_.store(want, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> JournalSegment::Reserve(uint64_t bytes, bool releases) {
  // A record that gives something out leaves the reserve behind it, preallocated.
  const uint64_t behind = releases ? 0 : options_.reserve;
  std::atomic<uint64_t>& tail = sb()->tail;
  uint64_t off = tail.load(std::memory_order_relaxed);
  for (;;) {
    const uint64_t end = off + bytes;
    if (end + behind > capacity_) {
      return absl::OutOfRangeError(absl::StrCat("journal segment ", path_, " is full"));
    }
    if (end + behind > prealloc_.load(std::memory_order_acquire)) {
      if (absl::Status s = Preallocate(end + behind); !s.ok()) return s;
    }
    if (tail.compare_exchange_weak(off, end, std::memory_order_relaxed)) return off;
  }
}

// ---- JournalFile ----

JournalFile::~JournalFile() {
  if (map_ != nullptr) munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) close(fd_);
}

absl::Status JournalFile::Open(const std::string& path) {
  fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal ", path, ": open"));
  struct stat st;
  if (fstat(fd_, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal ", path, ": fstat"));
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < kJournalSuperblockBytes) {
    return absl::DataLossError(absl::StrCat("journal ", path, ": shorter than its header"));
  }
  void* p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat("journal ", path, ": mmap"));
  map_ = static_cast<const uint8_t*>(p);
  return absl::OkStatus();
}

bool JournalFile::complete() const {
  return std::atomic_ref<const uint64_t>(sb()->magic).load(std::memory_order_acquire) == kJournalFileMagic;
}

uint64_t JournalFile::ScanInto(uint64_t gen, JournalState* state) const {
  const uint64_t end =
      std::min({sb()->tail.load(std::memory_order_acquire), sb()->capacity, size_ - kJournalSuperblockBytes});
  return ScanRecords(map_ + kJournalSuperblockBytes, end / kJournalSlotBytes, gen, &state->records, &state->bytes,
                     [state](uint8_t type, std::string_view payload) {
                       if (!ApplyRecord(type, payload, state)) ++state->anomalies;
                     });
}

}  // namespace physmem
