#include "server/journal.h"

#include <sys/vfs.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/recovery.h"

// Ordering rules (what makes "every acknowledged change is recovered" true; the lessor keeps
// them, see docs/recovery.md):
//   - lease created: appended under the table lock, before the lease can be found or listed;
//   - block allocated: appended after the allocator allocated it, under the lease lock, before
//     the reply (a crash before the append leaves the block free: it was never acknowledged; a
//     failed append gives the block back and refuses the call);
//   - block freed: appended from the allocator's commit hook, i.e. after every check passed and
//     before the block can be handed out again, so another lease's ALLOC of the same pfn always
//     comes later in the journal (a failed append keeps the block allocated and refuses the free);
//     a free of runs (DetachRuns) appends its one record after the lessor checked every page of
//     every run, under the lease lock, and before the first page is freed: the same rule for the
//     whole call (a failed append refuses every page, none freed);
//   - lease ended: appended under the lease lock (which also keeps allocations off a dead lease),
//     before its pages are freed;
//   - renewal: appended under the lease lock before the reply; deadlines only grow.
// Offsets are reserved with a compare-and-swap on the tail, so the journal order of two records
// is the order of their reservations, and each rule above puts the reservation inside the
// critical section it needs.

namespace physmem {

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

Journal::Journal(JournalOptions options) : options_(std::move(options)) {}

Journal::~Journal() {
  {
    MutexLock l(&wake_mu_);
    stop_ = true;
  }
  wake_cv_.SignalAll();
  if (compactor_.joinable()) compactor_.join();
}

absl::StatusOr<std::unique_ptr<JournalSegment>> Journal::CreateSegment(uint64_t gen, uint64_t min_capacity) {
  JournalSegmentOptions so;
  // Twice the compaction threshold, so appends go on while a compaction runs.
  so.capacity = std::max<uint64_t>(options_.compact_bytes * 2, 1 << 20) + min_capacity;
  so.fingerprint = options_.target_fingerprint;
  so.reserve = options_.reserve_bytes;
  so.fault_hook = options_.fault_hook;
  return JournalSegment::Create(JournalSegmentPath(options_.path, gen), gen, std::move(so));
}

absl::StatusOr<std::unique_ptr<Journal>> Journal::Recover(JournalOptions options, JournalState* state) {
  std::unique_ptr<Journal> j(new Journal(std::move(options)));
  absl::StatusOr<JournalFiles> files = ReadJournalFiles(j->options_.path, j->options_.target_fingerprint, state);
  if (!files.ok()) return files.status();
  {
    MutexLock cl(&j->compact_mu_);  // nobody else has the journal yet: taken for the analysis
    j->snapshot_gen_ = files->snapshot_gen;
  }
  {
    SwitchExclusive l(&j->switch_mu_);
    j->live_gen_ = state->last_gen;
  }
  // Compact soon after Start() when the segments are past the threshold already, or when earlier
  // runs left more than one: every start opens a new segment (64 MiB apparent each), and a daemon
  // that restarts often with a small journal would otherwise never reach the threshold and keep
  // them all. Compaction folds them into the snapshot and deletes them.
  j->compact_wanted_.store(state->bytes - files->snapshot_bytes > j->options_.compact_bytes || state->segments > 1);
  return j;
}

absl::Status Journal::Start(uint64_t nonce, uint32_t next_id) {
  // The first new gen follows every gen recovery saw (live_gen_ = JournalState::last_gen).
  {
    SwitchExclusive l(&switch_mu_);  // no appender yet: held for the segment's creation too
    absl::StatusOr<std::unique_ptr<JournalSegment>> seg = CreateSegment(live_gen_ + 1, 0);
    if (!seg.ok()) return seg.status();
    live_ = *std::move(seg);
    live_gen_ = live_->gen();
  }
  if (absl::Status s = Append(kJournalMeta, EncodeMeta(nonce, next_id)); !s.ok()) return s;
  compactor_ = std::thread([this] { CompactorLoop(); });
  return absl::OkStatus();
}

uint64_t Journal::live_bytes() const {
  SwitchShared l(&switch_mu_);
  return live_ ? live_->tail() : 0;
}

absl::Status Journal::Append(uint8_t type, std::string_view payload) {
  const uint64_t bytes = uint64_t{JournalSlotsFor(payload.size())} * kJournalSlotBytes;
  const bool releases = JournalRecordReleases(type);
  for (;;) {
    const JournalSegment* full;
    {
      SwitchShared l(&switch_mu_);
      JournalSegment* s = live_.get();
      absl::StatusOr<uint64_t> off = s->Reserve(bytes, releases);
      if (off.ok()) {
        WriteRecord(s->slots() + *off, s->gen() << 32 | *off / kJournalSlotBytes, type, payload);
        if (!releases) NoteSuccess();  // a free from the reserve says nothing about the space
        if (*off + bytes > options_.compact_bytes && !compact_wanted_.exchange(true)) wake_cv_.Signal();
        return absl::OkStatus();
      }
      if (off.status().code() != absl::StatusCode::kOutOfRange) return NoteFailure(off.status());
      full = s;
    }
    // The new segment has room for this record and the reserve behind it, however large it is.
    if (absl::Status s = SwitchSegment(full, bytes + options_.reserve_bytes); !s.ok()) return NoteFailure(s);
  }
}

absl::Status Journal::SwitchSegment(const JournalSegment* full, uint64_t min_capacity) {
  SwitchExclusive l(&switch_mu_);
  if (live_.get() != full) return absl::OkStatus();  // another thread switched already
  absl::StatusOr<std::unique_ptr<JournalSegment>> seg = CreateSegment(live_gen_ + 1, min_capacity);
  // Not created: the full segment stays live (its reserve still serves frees) and the next
  // append that needs room tries again.
  if (!seg.ok()) return seg.status();
  live_ = *std::move(seg);  // no appender holds the old one: they all hold switch_mu_ shared
  live_gen_ = live_->gen();
  return absl::OkStatus();
}

absl::Status Journal::NoteFailure(absl::Status s) {
  failed_appends_.fetch_add(1, std::memory_order_relaxed);
  if (!failing_.exchange(true)) {
    LogError("journal_failing", {{"path", options_.path},
                                 {"error", std::string(s.message())},
                                 {"note", "allocations, new leases and renewals are refused until it can be written"}});
  }
  return s;
}

void Journal::NoteSuccess() {
  if (failing_.load(std::memory_order_relaxed) && failing_.exchange(false)) {
    LogInfo("journal_writable", {{"path", options_.path}, {"failed_appends", failed_appends_.load()}});
  }
}

// ---- Appends ----

absl::Status Journal::LeaseCreated(uint64_t id, std::string_view identity, std::string_view name, int64_t ttl_ms,
                                   uint64_t quota, int64_t deadline_ns) {
  return Append(kJournalLeaseCreate, EncodeLeaseCreated(id, identity, name, ttl_ms, quota, deadline_ns));
}

absl::Status Journal::LeaseRenewed(uint64_t id, int64_t deadline_ns) {
  return Append(kJournalLeaseRenew, EncodeLeaseRenewed(id, deadline_ns));
}

absl::Status Journal::LeaseEnded(uint64_t id) { return Append(kJournalLeaseEnd, EncodeLeaseEnded(id)); }

absl::Status Journal::Allocated(uint64_t lease_id, std::span<const JournalEntry> entries) {
  return Append(kJournalAlloc, EncodeAllocated(lease_id, entries));
}

absl::Status Journal::Freed(uint64_t lease_id, uint64_t pfn) {
  return Append(kJournalFree, EncodeFreed(lease_id, pfn));
}

absl::Status Journal::AllocatedRuns(uint64_t lease_id, std::span<const JournalRun> runs) {
  return Append(kJournalAllocRuns, EncodeRuns(lease_id, runs));
}

absl::Status Journal::FreedRuns(uint64_t lease_id, std::span<const JournalRun> runs) {
  return Append(kJournalFreeRuns, EncodeRuns(lease_id, runs));
}

}  // namespace physmem
