#include "server/journal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

// Ordering rules (what makes "every acknowledged change is recovered" true; the service and the
// lease table keep them, see docs/recovery.md):
//   - lease created: appended under the table lock, before the lease can be found or listed;
//   - block allocated: appended after the allocator allocated it, under the lease lock, before
//     the reply (a crash before the append leaves the block free: it was never acknowledged);
//   - block freed: appended from the allocator's commit hook, i.e. after every check passed and
//     before the block can be handed out again, so another lease's ALLOC of the same pfn always
//     comes later in the journal;
//   - lease ended: appended under the lease lock (which also keeps allocations off a dead lease),
//     before its pages are freed;
//   - renewal: appended under the lease lock before the reply; deadlines only grow.
// Offsets are reserved with fetch_add, so the journal order of two records is the order of their
// reservations, and each rule above puts the reservation inside the critical section it needs.

namespace physmem {
namespace {

constexpr uint64_t kFileMagic = 0x31304C4E524A4D50ull;  // "PMJRNL01"
constexpr uint32_t kKindSegment = 1, kKindSnapshot = 2;
constexpr uint32_t kVersion = 1;
constexpr uint64_t kSuperblockBytes = 4096;
constexpr uint64_t kSlot = 64;
constexpr uint32_t kHeadMagic = 0x4A524543;  // 'JREC'
constexpr uint32_t kContMagic = 0x4A434F4E;  // 'JCON'
constexpr size_t kHeadPayload = kSlot - 24, kContPayload = kSlot - 8;
constexpr size_t kSnapshotEntriesPerRecord = 4096;

enum RecordType : uint8_t { kMeta = 1, kLeaseCreate = 2, kLeaseRenew = 3, kLeaseEnd = 4, kAlloc = 5, kFree = 6 };

struct Superblock {
  uint64_t magic;  // kFileMagic, written last when a file is created
  uint32_t kind;
  uint32_t version;
  uint64_t gen;
  uint64_t fingerprint;
  uint64_t capacity;    // bytes of slots after the superblock
  uint64_t covers_gen;  // snapshot: segments <= this are folded in
  char boot_id[40];
  uint8_t pad[128 - 88];
  std::atomic<uint64_t> tail;  // bytes of slots reserved (may run past capacity: those are void)
};
static_assert(offsetof(Superblock, tail) == 128);
static_assert(sizeof(Superblock) <= kSuperblockBytes);

// ---- CRC32C ----

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

uint32_t Crc32cSoft(uint32_t crc, const uint8_t* p, size_t n) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  crc = ~crc;
  while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHw(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}
#endif

// ---- Payload encoding ----

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void PutStr(std::string_view s) {
    Put(static_cast<uint16_t>(s.size()));
    buf_.append(s.data(), s.size());
  }
  std::string& buf() { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() < sizeof(T)) return false;
    std::memcpy(v, s_.data(), sizeof(T));
    s_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetStr(std::string* out) {
    uint16_t n;
    if (!Get(&n) || s_.size() < n) return false;
    out->assign(s_.data(), n);
    s_.remove_prefix(n);
    return true;
  }
  bool empty() const { return s_.empty(); }

 private:
  std::string_view s_;
};

// pfn:48 | flags:8 | order:8 (flags: 1 = compound, 2 = a key follows)
uint64_t PackEntry(uint64_t pfn, uint8_t order, bool compound, bool has_key) {
  return pfn << 16 | uint64_t{compound ? 1u : 0u} << 8 | uint64_t{has_key ? 2u : 0u} << 8 | order;
}

uint32_t SlotsFor(size_t payload) {
  if (payload <= kHeadPayload) return 1;
  return 1 + static_cast<uint32_t>((payload - kHeadPayload + kContPayload - 1) / kContPayload);
}

uint32_t RecordCrc(uint64_t word_low, uint64_t seq, uint32_t len, const char* payload) {
  uint8_t hdr[16];
  const uint32_t low = static_cast<uint32_t>(word_low);
  std::memcpy(hdr, &low, 4);
  std::memcpy(hdr + 4, &seq, 8);
  std::memcpy(hdr + 12, &len, 4);
  return Crc32c(Crc32c(0, hdr, sizeof(hdr)), payload, len);
}

// Writes one record of `nslots` slots at dst; the header word goes last, with release, so a
// reader (recovery after a crash, or the compactor after a switch) never sees a header whose
// body is not there.
void WriteRecord(uint8_t* dst, uint32_t nslots, uint64_t seq, uint8_t type, const std::string& payload) {
  const size_t len = payload.size();
  size_t done = std::min(len, kHeadPayload);
  for (uint32_t j = 1; j < nslots; ++j) {
    uint8_t* slot = dst + j * kSlot;
    const uint64_t cont = uint64_t{kContMagic} << 32 | j;
    std::memcpy(slot, &cont, 8);
    const size_t n = std::min(kContPayload, len - done);
    std::memcpy(slot + 8, payload.data() + done, n);
    std::memset(slot + 8 + n, 0, kContPayload - n);
    done += n;
  }
  const uint64_t word = uint64_t{kHeadMagic} << 32 | uint64_t{nslots} << 8 | type;
  const uint32_t len32 = static_cast<uint32_t>(len);
  const uint32_t crc = RecordCrc(word, seq, len32, payload.data());
  std::memcpy(dst + 8, &seq, 8);
  std::memcpy(dst + 16, &len32, 4);
  std::memcpy(dst + 20, &crc, 4);
  const size_t n0 = std::min(len, kHeadPayload);
  std::memcpy(dst + 24, payload.data(), n0);
  std::memset(dst + 24 + n0, 0, kHeadPayload - n0);
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(dst)).store(word, std::memory_order_release);
}

std::string BootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

// Applies one record to the state. Returns false if the payload does not parse.
bool Apply(uint8_t type, std::string_view payload, JournalState* st) {
  Reader r(payload);
  uint64_t id = 0;
  switch (type) {
    case kMeta: {
      uint64_t nonce;
      uint32_t next;
      if (!r.Get(&nonce) || !r.Get(&next)) return false;
      st->nonce = nonce;
      st->next_id = std::max(st->next_id, next);
      return true;
    }
    case kLeaseCreate: {
      JournalLease l;
      if (!r.Get(&l.id) || !r.Get(&l.deadline_ns) || !r.Get(&l.ttl_ms) || !r.Get(&l.quota) ||
          !r.GetStr(&l.identity) || !r.GetStr(&l.name)) {
        return false;
      }
      if (st->nonce == 0) st->nonce = l.id & ~uint64_t{0xffffffff};
      st->next_id = std::max<uint32_t>(st->next_id, static_cast<uint32_t>(l.id) + 1);
      if (st->leases.contains(l.id)) ++st->anomalies;
      const uint64_t lid = l.id;
      st->leases[lid] = std::move(l);
      return true;
    }
    case kLeaseRenew: {
      int64_t deadline;
      if (!r.Get(&id) || !r.Get(&deadline)) return false;
      auto it = st->leases.find(id);
      if (it == st->leases.end()) {
        ++st->anomalies;
      } else {
        it->second.deadline_ns = deadline;
      }
      return true;
    }
    case kLeaseEnd: {
      if (!r.Get(&id)) return false;
      if (st->leases.erase(id) == 0) ++st->anomalies;
      return true;
    }
    case kAlloc: {
      uint32_t count;
      if (!r.Get(&id) || !r.Get(&count)) return false;
      auto it = st->leases.find(id);
      if (it == st->leases.end()) ++st->anomalies;
      JournalLease* lease = it == st->leases.end() ? nullptr : &it->second;
      if (lease != nullptr) lease->blocks.reserve(lease->blocks.size() + count);
      for (uint32_t i = 0; i < count; ++i) {
        uint64_t word;
        if (!r.Get(&word)) return false;
        JournalBlock b;
        b.order = static_cast<uint8_t>(word);
        b.compound = (word >> 8) & 1;
        if ((word >> 8) & 2) {
          if (!r.GetStr(&b.key)) return false;
        }
        if (lease == nullptr) continue;
        if (!lease->blocks.try_emplace(word >> 16, std::move(b)).second) ++st->anomalies;
      }
      return true;
    }
    case kFree: {
      uint64_t pfn;
      if (!r.Get(&id) || !r.Get(&pfn)) return false;
      auto it = st->leases.find(id);
      if (it == st->leases.end() || it->second.blocks.erase(pfn) == 0) ++st->anomalies;
      return true;
    }
    default:
      return false;
  }
}

// A mapped journal file, read-only.
struct MappedFile {
  int fd = -1;
  const uint8_t* map = nullptr;
  uint64_t size = 0;
  ~MappedFile() {
    if (map != nullptr) munmap(const_cast<uint8_t*>(map), size);
    if (fd >= 0) close(fd);
  }
  const Superblock* sb() const { return reinterpret_cast<const Superblock*>(map); }
};

absl::Status MapForRead(const std::string& path, MappedFile* f) {
  f->fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal ", path, ": open"));
  struct stat st;
  if (fstat(f->fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal ", path, ": fstat"));
  f->size = static_cast<uint64_t>(st.st_size);
  if (f->size < kSuperblockBytes) return absl::DataLossError(absl::StrCat("journal ", path, ": shorter than its header"));
  void* p = mmap(nullptr, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
  if (p == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat("journal ", path, ": mmap"));
  f->map = static_cast<const uint8_t*>(p);
  return absl::OkStatus();
}

// Reads every record of one file into *st. Slots that hold no valid record are counted in
// skipped (a snapshot must have none).
void ScanRecords(const MappedFile& f, uint64_t gen, JournalState* st, uint64_t* skipped) {
  const Superblock* sb = f.sb();
  const uint64_t end = std::min({sb->tail.load(std::memory_order_acquire), sb->capacity, f.size - kSuperblockBytes});
  const uint8_t* slots = f.map + kSuperblockBytes;
  const uint64_t n = end / kSlot;
  std::string payload;
  for (uint64_t i = 0; i < n;) {
    const uint8_t* s = slots + i * kSlot;
    uint64_t word;
    std::memcpy(&word, s, 8);
    const uint32_t nslots = static_cast<uint32_t>(word >> 8) & 0xffffff;
    uint64_t seq;
    uint32_t len, crc;
    std::memcpy(&seq, s + 8, 8);
    std::memcpy(&len, s + 16, 4);
    std::memcpy(&crc, s + 20, 4);
    bool ok = (word >> 32) == kHeadMagic && nslots != 0 && i + nslots <= n && seq == (gen << 32 | i) &&
              SlotsFor(len) == nslots;
    if (ok) {
      payload.assign(reinterpret_cast<const char*>(s + 24), std::min<size_t>(len, kHeadPayload));
      for (uint32_t j = 1; j < nslots && ok; ++j) {
        const uint8_t* c = s + j * kSlot;
        uint64_t cont;
        std::memcpy(&cont, c, 8);
        ok = cont == (uint64_t{kContMagic} << 32 | j);
        payload.append(reinterpret_cast<const char*>(c + 8), std::min<size_t>(kContPayload, len - payload.size()));
      }
      ok = ok && RecordCrc(word, seq, len, payload.data()) == crc;
    }
    if (!ok) {
      ++*skipped;
      ++i;
      continue;
    }
    if (!Apply(static_cast<uint8_t>(word), payload, st)) ++st->anomalies;
    ++st->records;
    st->bytes += uint64_t{nslots} * kSlot;
    i += nslots;
  }
}

[[noreturn]] void FailStop(const absl::Status& s) {
  LogError("journal_failed", {{"error", s.ToString()}, {"note", "exiting: a restart recovers every acknowledged change"}});
  _exit(74);
}

std::string SegmentPath(const std::string& p, uint64_t gen) { return absl::StrCat(p, ".", gen); }

}  // namespace

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return Crc32cHw(crc, p, n);
#endif
  return Crc32cSoft(crc, p, n);
}

std::string DefaultJournalPath(const std::string& arena_path) {
  const std::filesystem::path p(arena_path);
  struct statfs fs;
  const std::string dir = p.has_parent_path() ? p.parent_path().string() : std::string(".");
  constexpr long kHugetlbfsMagic = 0x958458f6;
  if (statfs(dir.c_str(), &fs) == 0 && static_cast<long>(fs.f_type) == kHugetlbfsMagic) {
    return absl::StrCat("/dev/shm/", p.filename().string(), ".journal");
  }
  return arena_path + ".journal";
}

// ---- Segments ----

struct Journal::Segment {
  std::string path;
  uint64_t gen = 0;
  int fd = -1;
  uint8_t* map = nullptr;
  uint64_t map_bytes = 0;
  uint64_t capacity = 0;
  Superblock* sb() const { return reinterpret_cast<Superblock*>(map); }
  uint8_t* slots() const { return map + kSuperblockBytes; }
  ~Segment() {
    if (map != nullptr) munmap(map, map_bytes);
    if (fd >= 0) close(fd);
  }
};

Journal::Journal(JournalOptions options) : options_(std::move(options)) {}

Journal::~Journal() {
  {
    std::lock_guard<std::mutex> l(wake_mu_);
    stop_ = true;
  }
  wake_cv_.notify_all();
  if (compactor_.joinable()) compactor_.join();
}

absl::StatusOr<std::unique_ptr<Journal::Segment>> Journal::CreateSegment(uint64_t gen, uint64_t min_capacity) {
  auto seg = std::make_unique<Segment>();
  seg->gen = gen;
  seg->path = SegmentPath(options_.path, gen);
  seg->capacity = std::max<uint64_t>(options_.compact_bytes * 2, 1 << 20) + min_capacity;
  seg->capacity = (seg->capacity + 4095) & ~uint64_t{4095};
  seg->map_bytes = kSuperblockBytes + seg->capacity;
  seg->fd = open(seg->path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (seg->fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal segment ", seg->path, ": open"));
  // Sparse: tmpfs backs only the slots that get written.
  if (ftruncate(seg->fd, static_cast<off_t>(seg->map_bytes)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("journal segment ", seg->path, ": ftruncate"));
  }
  void* p = mmap(nullptr, seg->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd, 0);
  if (p == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat("journal segment ", seg->path, ": mmap"));
  seg->map = static_cast<uint8_t*>(p);
  Superblock* sb = seg->sb();
  sb->kind = kKindSegment;
  sb->version = kVersion;
  sb->gen = gen;
  sb->fingerprint = options_.target_fingerprint;
  sb->capacity = seg->capacity;
  sb->covers_gen = 0;
  const std::string boot = BootId();
  std::memset(sb->boot_id, 0, sizeof(sb->boot_id));
  std::memcpy(sb->boot_id, boot.data(), std::min(boot.size(), sizeof(sb->boot_id) - 1));
  sb->tail.store(0, std::memory_order_relaxed);
  // The magic last: a segment whose creation was cut short is recognizably not one.
  std::atomic_ref<uint64_t>(sb->magic).store(kFileMagic, std::memory_order_release);
  return seg;
}

absl::StatusOr<std::unique_ptr<Journal>> Journal::Recover(JournalOptions options, JournalState* state) {
  std::unique_ptr<Journal> j(new Journal(std::move(options)));
  *state = JournalState{};
  const std::filesystem::path p(j->options_.path);
  const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  const std::string base = p.filename().string();
  std::error_code ec;
  std::filesystem::remove(j->options_.path + ".snap.tmp", ec);
  std::map<uint64_t, std::string> segments;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= base.size() + 1 || name.compare(0, base.size() + 1, base + ".") != 0) continue;
    const std::string suffix = name.substr(base.size() + 1);
    if (!suffix.empty() && std::all_of(suffix.begin(), suffix.end(), ::isdigit) && suffix.size() < 19) {
      segments[std::stoull(suffix)] = e.path().string();
    }
  }
  const std::string boot = BootId();
  auto from_other_boot = [&](const Superblock* sb) {
    return std::string(sb->boot_id, strnlen(sb->boot_id, sizeof(sb->boot_id))) != boot;
  };
  auto discard_all = [&](const std::string& why) {
    LogWarn("journal_discarded", {{"path", j->options_.path}, {"reason", why}});
    std::filesystem::remove(j->options_.path + ".snap", ec);
    for (const auto& [gen, path] : segments) std::filesystem::remove(path, ec);
    segments.clear();
    *state = JournalState{};
    j->snapshot_gen_ = 0;
  };
  auto check_target = [&](const Superblock* sb, const std::string& path) -> absl::Status {
    if (sb->fingerprint != j->options_.target_fingerprint) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "journal %s was written for another target or memory size (fingerprint %#x, this target %#x); start "
          "with the same --target/--mem_mb, or remove %s.* (their leases are lost) or use --journal=off",
          path, sb->fingerprint, j->options_.target_fingerprint, j->options_.path));
    }
    return absl::OkStatus();
  };

  const std::string snap = j->options_.path + ".snap";
  if (std::filesystem::exists(snap, ec)) {
    MappedFile f;
    if (absl::Status s = MapForRead(snap, &f); !s.ok()) return s;
    const Superblock* sb = f.sb();
    if (sb->magic != kFileMagic || sb->kind != kKindSnapshot || sb->version != kVersion) {
      return absl::DataLossError(absl::StrCat("journal snapshot ", snap, " has a bad header"));
    }
    if (from_other_boot(sb)) {
      discard_all("written before the last reboot: its deadlines and page contents are gone");
    } else {
      if (absl::Status s = check_target(sb, snap); !s.ok()) return s;
      uint64_t skipped = 0;
      ScanRecords(f, sb->gen, state, &skipped);
      if (skipped != 0) {
        return absl::DataLossError(
            absl::StrFormat("journal snapshot %s: %u slots hold no valid record (corrupt)", snap, skipped));
      }
      state->from_snapshot = true;
      j->snapshot_gen_ = sb->covers_gen;
      state->last_gen = sb->covers_gen;
    }
  }
  const uint64_t snapshot_bytes = state->bytes;
  for (auto it = segments.begin(); it != segments.end();) {
    const auto& [gen, path] = *it;
    if (gen <= j->snapshot_gen_) {  // folded into the snapshot; left by a crash before the unlink
      std::filesystem::remove(path, ec);
      it = segments.erase(it);
      continue;
    }
    MappedFile f;
    if (absl::Status s = MapForRead(path, &f); !s.ok()) {
      if (s.code() != absl::StatusCode::kDataLoss) return s;
      std::filesystem::remove(path, ec);  // shorter than a header: its creation never finished
      it = segments.erase(it);
      continue;
    }
    const Superblock* sb = f.sb();
    if (std::atomic_ref<const uint64_t>(sb->magic).load(std::memory_order_acquire) != kFileMagic) {
      std::filesystem::remove(path, ec);  // its creation never finished: it holds no record
      it = segments.erase(it);
      continue;
    }
    if (sb->kind != kKindSegment || sb->version != kVersion || sb->gen != gen) {
      return absl::DataLossError(absl::StrCat("journal segment ", path, " has a bad header"));
    }
    if (from_other_boot(sb)) {
      discard_all("written before the last reboot: its deadlines and page contents are gone");
      break;
    }
    if (absl::Status s = check_target(sb, path); !s.ok()) return s;
    ScanRecords(f, gen, state, &state->skipped_slots);
    ++state->segments;
    state->last_gen = std::max(state->last_gen, gen);
    ++it;
  }
  j->live_gen_ = state->last_gen;
  // Compact soon after Start() when the segments are past the threshold already, or when earlier
  // runs left more than one: every start opens a new segment (64 MiB apparent each), and a daemon
  // that restarts often with a small journal would otherwise never reach the threshold and keep
  // them all. Compaction folds them into the snapshot and deletes them.
  j->compact_wanted_.store(state->bytes - snapshot_bytes > j->options_.compact_bytes || state->segments > 1);
  return j;
}

absl::Status Journal::Start(uint64_t nonce, uint32_t next_id) {
  // The first new gen follows every gen recovery saw (live_gen_ = JournalState::last_gen).
  absl::StatusOr<std::unique_ptr<Segment>> seg = CreateSegment(live_gen_ + 1, 0);
  if (!seg.ok()) return seg.status();
  {
    std::lock_guard<SwitchLock> l(switch_mu_);
    live_ = *std::move(seg);
    live_gen_ = live_->gen;
  }
  Writer w;
  w.Put(nonce);
  w.Put(next_id);
  Append(kMeta, w.buf());
  compactor_ = std::thread([this] { CompactorLoop(); });
  return absl::OkStatus();
}

uint64_t Journal::live_bytes() const {
  std::shared_lock<SwitchLock> l(switch_mu_);
  return live_ ? std::min(live_->sb()->tail.load(std::memory_order_relaxed), live_->capacity) : 0;
}

void Journal::Append(uint8_t type, const std::string& payload) {
  const uint32_t nslots = SlotsFor(payload.size());
  const uint64_t bytes = uint64_t{nslots} * kSlot;
  for (;;) {
    const Segment* full;
    {
      std::shared_lock<SwitchLock> l(switch_mu_);
      Segment* s = live_.get();
      const uint64_t off = s->sb()->tail.fetch_add(bytes, std::memory_order_relaxed);
      if (off + bytes <= s->capacity) {
        WriteRecord(s->slots() + off, nslots, s->gen << 32 | off / kSlot, type, payload);
        if (off + bytes > options_.compact_bytes && !compact_wanted_.exchange(true)) wake_cv_.notify_one();
        return;
      }
      full = s;
    }
    SwitchSegment(full, bytes);
  }
}

void Journal::SwitchSegment(const Segment* full, uint64_t min_capacity) {
  std::lock_guard<SwitchLock> l(switch_mu_);
  if (live_.get() != full) return;  // another thread switched already
  absl::StatusOr<std::unique_ptr<Segment>> seg = CreateSegment(live_gen_ + 1, min_capacity);
  if (!seg.ok()) FailStop(seg.status());
  live_ = *std::move(seg);  // no appender holds the old one: they all hold switch_mu_ shared
  live_gen_ = live_->gen;
}

// ---- Appends ----

void Journal::LeaseCreated(uint64_t id, std::string_view identity, std::string_view name, int64_t ttl_ms,
                           uint64_t quota, int64_t deadline_ns) {
  Writer w;
  w.Put(id);
  w.Put(deadline_ns);
  w.Put(ttl_ms);
  w.Put(quota);
  w.PutStr(identity.substr(0, 65535));
  w.PutStr(name.substr(0, 65535));
  Append(kLeaseCreate, w.buf());
}

void Journal::LeaseRenewed(uint64_t id, int64_t deadline_ns) {
  Writer w;
  w.Put(id);
  w.Put(deadline_ns);
  Append(kLeaseRenew, w.buf());
}

void Journal::LeaseEnded(uint64_t id) {
  Writer w;
  w.Put(id);
  Append(kLeaseEnd, w.buf());
}

void Journal::Allocated(uint64_t lease_id, std::span<const JournalEntry> entries) {
  Writer w;
  w.buf().reserve(12 + entries.size() * 8);
  w.Put(lease_id);
  w.Put(static_cast<uint32_t>(entries.size()));
  for (const JournalEntry& e : entries) {
    w.Put(PackEntry(e.pfn, e.order, e.compound, !e.key.empty()));
    if (!e.key.empty()) w.PutStr(e.key.substr(0, 65535));
  }
  Append(kAlloc, w.buf());
}

void Journal::Freed(uint64_t lease_id, uint64_t pfn) {
  Writer w;
  w.Put(lease_id);
  w.Put(pfn);
  Append(kFree, w.buf());
}

// ---- Compaction ----

void Journal::CrashPoint(std::string_view point, std::string_view stop_at, bool* stop) const {
  if (options_.step_hook) options_.step_hook(point);
  if (stop_at == point) *stop = true;
}

absl::Status Journal::Compact(std::string_view stop_at) {
  std::lock_guard<std::mutex> cl(compact_mu_);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t sealed;
  {
    std::shared_lock<SwitchLock> l(switch_mu_);
    if (live_ == nullptr) return absl::FailedPreconditionError("journal not started");
  }
  // 1. Seal the live segment: appends go to a new one from now on.
  {
    std::lock_guard<SwitchLock> l(switch_mu_);
    sealed = live_gen_;
    absl::StatusOr<std::unique_ptr<Segment>> seg = CreateSegment(live_gen_ + 1, 0);
    if (!seg.ok()) return seg.status();
    live_ = *std::move(seg);
    live_gen_ = live_->gen;
  }
  compact_wanted_.store(false);
  bool stop = false;
  CrashPoint("compact_after_switch", stop_at, &stop);
  if (stop) return absl::OkStatus();

  // 2. Replay the snapshot and the sealed segments (they no longer change).
  JournalState st;
  uint64_t skipped = 0;
  {
    const std::string snap = options_.path + ".snap";
    MappedFile f;
    if (snapshot_gen_ != 0) {
      if (absl::Status s = MapForRead(snap, &f); !s.ok()) return s;
      ScanRecords(f, f.sb()->gen, &st, &skipped);
    }
  }
  for (uint64_t gen = snapshot_gen_ + 1; gen <= sealed; ++gen) {
    MappedFile f;
    if (!MapForRead(SegmentPath(options_.path, gen), &f).ok()) continue;  // removed at recovery
    if (f.sb()->magic != kFileMagic) continue;
    ScanRecords(f, gen, &st, &skipped);
  }

  // 3. Write the snapshot beside the old one, then rename it into place (atomic).
  Writer out;
  uint64_t slot = 0;
  auto emit = [&](uint8_t type, const std::string& payload) {
    const uint32_t n = SlotsFor(payload.size());
    const size_t at = out.buf().size();
    out.buf().resize(at + n * kSlot);
    WriteRecord(reinterpret_cast<uint8_t*>(out.buf().data() + at), n, sealed << 32 | slot, type, payload);
    slot += n;
  };
  {
    Writer w;
    w.Put(st.nonce);
    w.Put(st.next_id);
    emit(kMeta, w.buf());
  }
  std::vector<uint64_t> ids;
  for (const auto& [id, l] : st.leases) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    const JournalLease& l = st.leases.at(id);
    Writer w;
    w.Put(l.id);
    w.Put(l.deadline_ns);
    w.Put(l.ttl_ms);
    w.Put(l.quota);
    w.PutStr(l.identity);
    w.PutStr(l.name);
    emit(kLeaseCreate, w.buf());
    std::vector<std::pair<uint64_t, const JournalBlock*>> blocks;
    blocks.reserve(l.blocks.size());
    for (const auto& [pfn, b] : l.blocks) blocks.emplace_back(pfn, &b);
    std::sort(blocks.begin(), blocks.end());
    for (size_t i = 0; i < blocks.size(); i += kSnapshotEntriesPerRecord) {
      const size_t n = std::min(kSnapshotEntriesPerRecord, blocks.size() - i);
      Writer a;
      a.Put(l.id);
      a.Put(static_cast<uint32_t>(n));
      for (size_t k = i; k < i + n; ++k) {
        const JournalBlock& b = *blocks[k].second;
        a.Put(PackEntry(blocks[k].first, b.order, b.compound, !b.key.empty()));
        if (!b.key.empty()) a.PutStr(b.key);
      }
      emit(kAlloc, a.buf());
    }
  }
  std::string header(kSuperblockBytes, '\0');
  Superblock* sb = reinterpret_cast<Superblock*>(header.data());
  sb->magic = kFileMagic;
  sb->kind = kKindSnapshot;
  sb->version = kVersion;
  sb->gen = sealed;
  sb->covers_gen = sealed;
  sb->fingerprint = options_.target_fingerprint;
  sb->capacity = out.buf().size();
  const std::string boot = BootId();
  std::memcpy(sb->boot_id, boot.data(), std::min(boot.size(), sizeof(sb->boot_id) - 1));
  sb->tail.store(out.buf().size(), std::memory_order_relaxed);
  const std::string tmp = options_.path + ".snap.tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal snapshot ", tmp, ": open"));
  auto write_all = [&](const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  const size_t half = out.buf().size() / 2;
  bool ok = write_all(header.data(), header.size()) && write_all(out.buf().data(), half);
  CrashPoint("compact_mid_snapshot", stop_at, &stop);
  if (stop) {
    close(fd);
    return absl::OkStatus();
  }
  ok = ok && write_all(out.buf().data() + half, out.buf().size() - half);
  close(fd);
  if (!ok) return absl::ErrnoToStatus(errno, absl::StrCat("journal snapshot ", tmp, ": write"));
  if (rename(tmp.c_str(), (options_.path + ".snap").c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("journal snapshot ", tmp, ": rename"));
  }
  const uint64_t folded_from = snapshot_gen_ + 1;
  snapshot_gen_ = sealed;
  CrashPoint("compact_after_rename", stop_at, &stop);
  if (stop) return absl::OkStatus();

  // 4. The folded segments are garbage now.
  for (uint64_t gen = folded_from; gen <= sealed; ++gen) {
    unlink(SegmentPath(options_.path, gen).c_str());
    CrashPoint("compact_mid_unlink", stop_at, &stop);
    if (stop) return absl::OkStatus();
  }
  compactions_.fetch_add(1);
  uint64_t blocks = 0;
  for (const auto& [id, l] : st.leases) blocks += l.blocks.size();
  LogInfo("journal_compacted",
          {{"gen", sealed}, {"leases", st.leases.size()}, {"blocks", blocks}, {"snapshot_bytes", out.buf().size()},
           {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()}});
  return absl::OkStatus();
}

void Journal::CompactorLoop() {
  std::unique_lock<std::mutex> l(wake_mu_);
  while (!stop_) {
    wake_cv_.wait_for(l, std::chrono::milliseconds(100));
    if (stop_) break;
    if (!compact_wanted_.load()) continue;
    l.unlock();
    if (absl::Status s = Compact(); !s.ok()) {
      LogError("journal_compaction_failed", {{"error", s.ToString()}});
      compact_wanted_.store(false);  // try again when the segment grows further
    }
    l.lock();
  }
}

}  // namespace physmem
