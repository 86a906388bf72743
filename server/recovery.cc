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

absl::StatusOr<RecoveryReport> RestoreFromJournal(JournalState& state, PageAllocator* pa, LeaseTable* leases) {
  RecoveryReport report;
  const int64_t now = leases->clock().Now();
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

  std::vector<std::shared_ptr<Lease>> restored;
  restored.reserve(live.size());
  for (JournalLease* jl : live) {
    auto lease = std::make_shared<Lease>(jl->id, jl->identity, jl->name, jl->ttl_ms, jl->quota);
    lease->deadline.store(jl->deadline_ns);
    IdentityLimits* limits = leases->identity_limits();
    if (limits != nullptr) lease->usage = limits->For(jl->identity);
    lease->blocks.reserve(jl->blocks.size());
    for (auto& [pfn, b] : jl->blocks) {
      const ZoneType zone = pa->page_zonenum(*pa->PfnToPage(pfn));
      if (!b.key.empty()) lease->keys.emplace(b.key, pfn);
      lease->pages_held += uint64_t{1} << b.order;
      if (lease->usage != nullptr) limits->ChargeRecovered(*lease->usage, zone, uint64_t{1} << b.order);
      lease->blocks.emplace(pfn, LeaseBlock{b.order, zone, std::move(b.key)});
    }
    report.blocks += lease->blocks.size();
    report.pages += lease->pages_held;
    restored.push_back(std::move(lease));
  }
  report.leases = restored.size();
  leases->Restore(state.nonce, state.next_id, std::move(restored));
  return report;
}

void LeaseTable::Restore(uint64_t boot_nonce, uint32_t next_id, std::vector<std::shared_ptr<Lease>> leases) {
  std::lock_guard<std::mutex> l(mu_);
  if (boot_nonce != 0) boot_nonce_ = boot_nonce;
  next_id_ = std::max(next_id_, next_id);
  for (auto& lease : leases) {
    ++per_identity_[lease->identity];
    IndexName(*lease);
    leases_[lease->id] = std::move(lease);
  }
}

uint64_t LeaseTable::boot_nonce() const {
  std::lock_guard<std::mutex> l(mu_);
  return boot_nonce_;
}

uint32_t LeaseTable::next_id() const {
  std::lock_guard<std::mutex> l(mu_);
  return next_id_;
}

}  // namespace physmem
