#include "server/recovery.h"

#include <chrono>
#include <ratio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace physmem {

uint64_t TargetFingerprint(const Target& t) {
  std::string s = absl::StrCat(t.MemoryMapString(), "|", t.page_shift, "|", t.max_page_order, "|", t.phys_offset);
  for (int z = 0; z < MAX_NR_ZONES; ++z) absl::StrAppend(&s, "|", t.zone_configured[z], ":", t.zone_end[z]);
  return uint64_t{Crc32c(0, s.data(), s.size())} << 32 | Crc32c(0x9e3779b9u, s.data(), s.size());
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
