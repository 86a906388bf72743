#include "server/journal_compaction.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/journal.h"
#include "server/journal_segment.h"
#include "server/log.h"

namespace physmem {
namespace {

constexpr size_t kSnapshotEntriesPerRecord = 4096;

}  // namespace

absl::StatusOr<JournalState> ReplayForCompaction(const std::string& prefix, uint64_t snapshot_gen,
                                                 uint64_t sealed_gen) {
  JournalState st;
  if (snapshot_gen != 0) {
    JournalFile f;
    if (absl::Status s = f.Open(prefix + ".snap"); !s.ok()) return s;
    f.ScanInto(f.sb()->gen, &st);
  }
  for (uint64_t gen = snapshot_gen + 1; gen <= sealed_gen; ++gen) {
    JournalFile f;
    if (!f.Open(JournalSegmentPath(prefix, gen)).ok() || !f.complete()) continue;  // removed at recovery
    f.ScanInto(gen, &st);
  }
  return st;
}

std::string EncodeSnapshot(const JournalState& st, uint64_t gen) {
  std::string out;
  uint64_t slot = 0;
  auto emit = [&](uint8_t type, const std::string& payload) {
    const uint32_t n = JournalSlotsFor(payload.size());
    const size_t at = out.size();
    out.resize(at + n * kJournalSlotBytes);
    WriteRecord(reinterpret_cast<uint8_t*>(out.data() + at), gen << 32 | slot, type, payload);
    slot += n;
  };
  emit(kJournalMeta, EncodeMeta(st.nonce, st.next_id));
  std::vector<uint64_t> ids;
  ids.reserve(st.leases.size());
  for (const auto& [id, l] : st.leases) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  std::vector<JournalEntry> entries;
  for (uint64_t id : ids) {
    const JournalLease& l = st.leases.at(id);
    emit(kJournalLeaseCreate, EncodeLeaseCreated(l.id, l.identity, l.name, l.ttl_ms, l.quota, l.deadline_ns));
    entries.clear();
    entries.reserve(l.blocks.size());
    for (const auto& [pfn, b] : l.blocks) entries.push_back({pfn, b.order, b.compound, b.key});
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.pfn < b.pfn; });
    for (size_t i = 0; i < entries.size(); i += kSnapshotEntriesPerRecord) {
      const size_t n = std::min(kSnapshotEntriesPerRecord, entries.size() - i);
      emit(kJournalAlloc, EncodeAllocated(l.id, std::span<const JournalEntry>(entries).subspan(i, n)));
    }
  }
  return out;
}

absl::Status WriteSnapshot(const std::string& prefix, uint64_t gen, uint64_t fingerprint, const std::string& slots,
                           const std::function<bool()>& halfway) {
  std::string header(kJournalSuperblockBytes, '\0');
  auto* sb = reinterpret_cast<JournalSuperblock*>(header.data());
  InitJournalSuperblock(sb, kJournalKindSnapshot, gen, fingerprint, slots.size());
  sb->tail.store(slots.size(), std::memory_order_relaxed);
  const std::string tmp = prefix + ".snap.tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("journal snapshot ", tmp, ": open"));
  auto write_all = [fd](const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  auto fail = [&](const char* what) {
    const absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("journal snapshot ", tmp, ": ", what));
    close(fd);
    unlink(tmp.c_str());  // a full file system gets its space back; P.snap is untouched
    return s;
  };
  const size_t half = slots.size() / 2;
  if (!write_all(header.data(), header.size()) || !write_all(slots.data(), half)) return fail("write");
  if (halfway && halfway()) {
    close(fd);
    return absl::OkStatus();
  }
  if (!write_all(slots.data() + half, slots.size() - half)) return fail("write");
  // Its contents before its name: rename() must never publish a snapshot a power cut could tear.
  if (fdatasync(fd) != 0) return fail("fdatasync");
  close(fd);
  if (rename(tmp.c_str(), (prefix + ".snap").c_str()) != 0) {
    const absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("journal snapshot ", tmp, ": rename"));
    unlink(tmp.c_str());
    return s;
  }
  return absl::OkStatus();
}

// ---- Journal::Compact: the four steps of journal_compaction.h ----

void Journal::CrashPoint(std::string_view point, std::string_view stop_at, bool* stop) const {
  if (options_.step_hook) options_.step_hook(point);
  if (stop_at == point) *stop = true;
}

absl::Status Journal::Compact(std::string_view stop_at) {
  MutexLock cl(&compact_mu_);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t sealed;
  // 1. Seal the live segment: appends go to a new one from now on.
  {
    SwitchExclusive l(&switch_mu_);
    if (live_ == nullptr) return absl::FailedPreconditionError("journal not started");
    sealed = live_gen_;
    absl::StatusOr<std::unique_ptr<JournalSegment>> seg = CreateSegment(live_gen_ + 1, 0);
    if (!seg.ok()) return seg.status();
    live_ = *std::move(seg);
    live_gen_ = live_->gen();
  }
  compact_wanted_.store(false);
  bool stop = false;
  CrashPoint("compact_after_switch", stop_at, &stop);
  if (stop) return absl::OkStatus();

  // 2. Replay the snapshot and the sealed segments (they no longer change).
  absl::StatusOr<JournalState> st = ReplayForCompaction(options_.path, snapshot_gen_, sealed);
  if (!st.ok()) return st.status();

  // 3. Write the snapshot beside the old one, then rename it into place (atomic).
  const std::string slots = EncodeSnapshot(*st, sealed);
  absl::Status written = WriteSnapshot(options_.path, sealed, options_.target_fingerprint, slots, [&] {
    CrashPoint("compact_mid_snapshot", stop_at, &stop);
    return stop;
  });
  if (!written.ok() || stop) return written;
  const uint64_t folded_from = snapshot_gen_ + 1;
  snapshot_gen_ = sealed;
  CrashPoint("compact_after_rename", stop_at, &stop);
  if (stop) return absl::OkStatus();

  // 4. The folded segments are garbage now.
  for (uint64_t gen = folded_from; gen <= sealed; ++gen) {
    unlink(JournalSegmentPath(options_.path, gen).c_str());
    CrashPoint("compact_mid_unlink", stop_at, &stop);
    if (stop) return absl::OkStatus();
  }
  compactions_.fetch_add(1);
  uint64_t blocks = 0;
  for (const auto& [id, l] : st->leases) blocks += l.blocks.size();
  LogInfo(
      "journal_compacted",
      {{"gen", sealed},
       {"leases", st->leases.size()},
       {"blocks", blocks},
       {"snapshot_bytes", slots.size()},
       {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()}});
  return absl::OkStatus();
}

void Journal::CompactorLoop() {
  wake_mu_.Lock();
  while (!stop_) {
    wake_cv_.WaitFor(&wake_mu_, std::chrono::milliseconds(100));
    if (stop_) break;
    if (!compact_wanted_.load()) continue;
    wake_mu_.Unlock();
    if (absl::Status s = Compact(); !s.ok()) {
      LogError("journal_compaction_failed", {{"error", s.ToString()}});
      compact_wanted_.store(false);  // try again when the segment grows further
    }
    wake_mu_.Lock();
  }
  wake_mu_.Unlock();
}

}  // namespace physmem
