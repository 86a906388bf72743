#include "server/recovery.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <ratio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/journal_segment.h"
#include "server/log.h"

namespace physmem {

uint64_t TargetFingerprint(const Target& t) {
  std::string s = absl::StrCat(t.MemoryMapString(), "|", t.page_shift, "|", t.max_page_order, "|", t.phys_offset);
  for (int z = 0; z < MAX_NR_ZONES; ++z) absl::StrAppend(&s, "|", t.zone_configured[z], ":", t.zone_end[z]);
  return uint64_t{Crc32c(0, s.data(), s.size())} << 32 | Crc32c(0x9e3779b9u, s.data(), s.size());
}

absl::StatusOr<JournalFiles> ReadJournalFiles(const std::string& prefix, uint64_t target_fingerprint,
                                              JournalState* state) {
  *state = JournalState{};
  JournalFiles files;
  std::error_code ec;
  std::filesystem::remove(prefix + ".snap.tmp", ec);
  std::map<uint64_t, std::string> segments = ListJournalSegments(prefix);
  const std::string boot = BootId();
  auto discard_all = [&] {
    LogWarn("journal_discarded",
            {{"path", prefix}, {"reason", "written before the last reboot: its deadlines and page contents are gone"}});
    std::filesystem::remove(prefix + ".snap", ec);
    for (const auto& [gen, path] : segments) std::filesystem::remove(path, ec);
    segments.clear();
    *state = JournalState{};
    files = JournalFiles{};
  };
  auto check_target = [&](const JournalSuperblock* sb, const std::string& path) -> absl::Status {
    if (sb->fingerprint == target_fingerprint) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrFormat(
        "journal %s was written for another target or memory size (fingerprint %#x, this target %#x); start "
        "with the same --target/--mem_mb, or remove %s.* (their leases are lost) or use --journal=off",
        path, sb->fingerprint, target_fingerprint, prefix));
  };

  const std::string snap = prefix + ".snap";
  if (std::filesystem::exists(snap, ec)) {
    JournalFile f;
    if (absl::Status s = f.Open(snap); !s.ok()) return s;
    const JournalSuperblock* sb = f.sb();
    if (sb->magic != kJournalFileMagic || sb->kind != kJournalKindSnapshot || sb->version != kJournalVersion) {
      return absl::DataLossError(absl::StrCat("journal snapshot ", snap, " has a bad header"));
    }
    if (sb->boot() != boot) {
      discard_all();
    } else {
      if (absl::Status s = check_target(sb, snap); !s.ok()) return s;
      if (const uint64_t skipped = f.ScanInto(sb->gen, state); skipped != 0) {
        return absl::DataLossError(
            absl::StrFormat("journal snapshot %s: %u slots hold no valid record (corrupt)", snap, skipped));
      }
      state->from_snapshot = true;
      files.snapshot_gen = sb->covers_gen;
      files.snapshot_bytes = state->bytes;
      state->last_gen = sb->covers_gen;
    }
  }
  for (auto it = segments.begin(); it != segments.end();) {
    const auto& [gen, path] = *it;
    if (gen <= files.snapshot_gen) {  // folded into the snapshot; left by a crash before the unlink
      std::filesystem::remove(path, ec);
      it = segments.erase(it);
      continue;
    }
    JournalFile f;
    if (absl::Status s = f.Open(path); !s.ok()) {
      if (s.code() != absl::StatusCode::kDataLoss) return s;
      std::filesystem::remove(path, ec);  // shorter than a header: its creation never finished
      it = segments.erase(it);
      continue;
    }
    if (!f.complete()) {
      std::filesystem::remove(path, ec);  // its creation never finished: it holds no record
      it = segments.erase(it);
      continue;
    }
    const JournalSuperblock* sb = f.sb();
    if (sb->kind != kJournalKindSegment || sb->version != kJournalVersion || sb->gen != gen) {
      return absl::DataLossError(absl::StrCat("journal segment ", path, " has a bad header"));
    }
    if (sb->boot() != boot) {
      discard_all();
      break;
    }
    if (absl::Status s = check_target(sb, path); !s.ok()) return s;
    state->skipped_slots += f.ScanInto(gen, state);
    ++state->segments;
    state->last_gen = std::max(state->last_gen, gen);
    ++it;
  }
  return files;
}

absl::StatusOr<RecoveryReport> RestoreFromJournal(JournalState& state, PageAllocator* pa, Lessor* lessor) {
  RecoveryReport report;
  const int64_t now = lessor->clock().Now();
  std::vector<RestoredBlock> blocks;
  std::vector<JournalLease*> live;
  for (auto& [id, l] : state.leases) {
    if (l.deadline_ns <= now) {
      report.expired.push_back(id);
      continue;
    }
    live.push_back(&l);
    for (const auto& [pfn, b] : l.blocks) blocks.push_back({pfn, b.order, static_cast<uint32_t>(id), b.compound});
  }
  if (absl::Status s = pa->RestoreAllocated(blocks); !s.ok()) return s;
  for (JournalLease* jl : live) {
    report.blocks += jl->blocks.size();
    for (const auto& [pfn, b] : jl->blocks) report.pages += uint64_t{1} << b.order;
    lessor->Adopt(*jl);
  }
  report.leases = live.size();
  lessor->AdoptIdSpace(state.nonce, state.next_id);
  return report;
}

}  // namespace physmem
