#include "allocator/zone.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace physmem {

Zone::Zone(const MemMap& mem_map, ZoneConfig config)
    : mem_map_(mem_map),
      config_(std::move(config)),
      pageblocks_(config_.start_pfn, config_.end_pfn, config_.pageblock_order, config_.group_by_mobility_disabled),
      buddy_(mem_map, config_.segments, config_.nr_orders, pageblocks_, config_.start_pfn, config_.end_pfn) {
  for (const Segment& s : config_.segments) managed_pages_ += s.nr_pages();
  present_pages_ = std::max(config_.present_pages, managed_pages_);
  if (!config_.segments.empty()) {
    const Segment& s = config_.segments.front();
    first_seg_index_ = s.first_index;
    first_seg_pages_ = static_cast<uint32_t>(s.nr_pages());  // page indices are 32-bit
    first_seg_pb_bias_ = s.start_pfn - s.first_index - pageblocks_.base_pfn();
  }
  {
    MutexLock l(&lock_);
    buddy_.FreeAllRam();
    PublishLocked();
  }
  // Until SetWatermarks() runs, size the lists from the zone alone.
  const uint32_t batch = config_.pcp_batch ? config_.pcp_batch : ZoneBatchsize(managed_pages_, config_.page_shift);
  pcp_ = std::make_unique<PerCpuPages>(config_.nr_cpus, batch, config_.pcp_high ? config_.pcp_high : 4 * batch,
                                       config_.pcp_enabled && populated());
  pcp_enabled_ = pcp_->enabled();
}

void Zone::SetWatermarks(const Watermarks& w, const std::array<uint64_t, MAX_NR_ZONES>& lowmem_reserve) {
  wmark_ = w;
  lowmem_reserve_ = lowmem_reserve;
  // zone_set_pageset_high_and_batch(): high follows the low watermark, so rebuild the lists
  // (they are empty: this runs before the zone serves anything).
  const uint32_t batch = pcp_->batch();
  const uint32_t high = config_.pcp_high ? config_.pcp_high : ZoneHighsize(w.low, batch, config_.nr_cpus);
  pcp_ = std::make_unique<PerCpuPages>(config_.nr_cpus, batch, high, config_.pcp_enabled && populated());
  pcp_enabled_ = pcp_->enabled();
}

void Zone::PublishLocked() {
  free_pages_.store(buddy_.free_pages(), std::memory_order_relaxed);
  usable_free_.store(buddy_.free_pages() - buddy_.nr_free_highatomic(), std::memory_order_relaxed);
  uint32_t mask = 0;
  for (unsigned o = 0; o < config_.nr_orders; ++o) {
    const uint64_t highatomic = buddy_.nr_free(o, MIGRATE_HIGHATOMIC);
    mask |= (buddy_.nr_free(o) != highatomic ? 1u : 0u) << o;
    mask |= (highatomic != 0 ? 1u : 0u) << (o + 16);
  }
  nonempty_orders_.store(mask, std::memory_order_relaxed);
}

bool Zone::WatermarkOk(unsigned order, uint64_t mark, ZoneType highest, unsigned alloc_flags) const {
  // __zone_watermark_unusable_free(): without ALLOC_RESERVES the free highatomic pages are not
  // usable; __zone_watermark_ok() counts a HIGHATOMIC free list only for ALLOC_HIGHATOMIC/OOM.
  const uint64_t free = (alloc_flags & ALLOC_RESERVES) ? free_pages_.load(std::memory_order_relaxed)
                                                       : usable_free_.load(std::memory_order_relaxed);
  const uint32_t mask = nonempty_orders_.load(std::memory_order_relaxed);
  const uint32_t orders =
      (mask & kPcptypeOrderMask) | ((alloc_flags & (ALLOC_HIGHATOMIC | ALLOC_OOM)) ? mask >> 16 : 0);
  return ZoneWatermarkOk(free, orders, order, mark, lowmem_reserve_[highest], alloc_flags);
}

std::optional<uint32_t> Zone::RmqueueBuddy(unsigned order, int mt, unsigned alloc_flags) {
  MutexLock l(&lock_);
  std::optional<uint32_t> idx = buddy_.RmqueueBuddy(order, mt, alloc_flags);
  PublishLocked();
  return idx;
}

void Zone::ReserveHighatomic(uint32_t idx, unsigned order) {
  // The kernel checks the limit once without the lock ("race-prone but harmless") and again
  // under it; the buddy does the locked check.
  MutexLock l(&lock_);
  buddy_.ReserveHighatomic(idx, order, managed_pages_);
  PublishLocked();
}

bool Zone::UnreserveHighatomic(bool force, int mt) {
  MutexLock l(&lock_);
  const bool converted = buddy_.UnreserveHighatomic(force, mt);
  PublishLocked();
  return converted;
}

void Zone::FreeToBuddy(uint32_t idx, unsigned order) { FreeBlocksToBuddy(&idx, 1, order); }

void Zone::FreeBlocksToBuddy(const uint32_t* idx, uint32_t n, unsigned order) {
  if (n == 0) return;
  MutexLock l(&lock_);
  for (uint32_t i = 0; i < n; ++i) buddy_.FreeOne(idx[i], order);
  PublishLocked();
}

std::optional<uint32_t> Zone::Rmqueue(unsigned order, int mt, unsigned alloc_flags) {
  if (pcp_allowed_order(order) && pcp_enabled_) {
    uint32_t idx;
    if (pcp_->Pop(order, mt, &idx)) [[likely]] return idx;
    if (!(alloc_flags & ALLOC_HIGHATOMIC)) {
      if (std::optional<uint32_t> got = RefillAndTake(order, mt, alloc_flags)) return got;
    }
  }
  return RmqueueBuddy(order, mt, alloc_flags);
}

// rmqueue_bulk(): one lock hold takes a batch; the first block goes to the caller, the rest are
// appended to the list's cold end in physical order. If the list cannot take them (another
// thread on this CPU filled it meanwhile, or a remote drain holds it) they go straight back.
std::optional<uint32_t> Zone::RefillAndTake(unsigned order, int mt, unsigned alloc_flags) {
  uint32_t batch[1024];
  const uint32_t want = std::min<uint32_t>(pcp_->batch_blocks(order), std::size(batch));
  uint32_t got = 0;
  {
    MutexLock l(&lock_);
    RmqueueMode mode = RmqueueMode::kNormal;  // kept across the batch, as rmqueue_bulk() does
    while (got < want) {
      std::optional<uint32_t> idx = buddy_.Rmqueue(order, mt, alloc_flags, &mode);
      if (!idx) break;
      mem_map_.page(*idx).state.store(PageState::Pcp(order), std::memory_order_relaxed);
      batch[got++] = *idx;
    }
    PublishLocked();
  }
  if (got == 0) return std::nullopt;
  const uint32_t listed = got > 1 ? pcp_->PushCold(order, mt, batch + 1, got - 1) : 0;
  FreeBlocksToBuddy(batch + 1 + listed, got - 1 - listed, order);
  mem_map_.page(batch[0]).state.store(0, std::memory_order_relaxed);
  return batch[0];
}

void Zone::DrainBatch(unsigned order, int mt) {
  uint32_t out[1024];
  const uint32_t n = pcp_->PopCold(order, mt, std::min<uint32_t>(pcp_->batch_blocks(order), std::size(out)), out);
  FreeBlocksToBuddy(out, n, order);
}

bool Zone::FreeBlockSlow(uint32_t idx, unsigned order) {
  if (pcp_allowed_order(order) && pcp_enabled_) {
    // free_frozen_page_commit(): the list is at high; return a batch from its cold end first.
    const int mt = PcpFreeType(idx);
    DrainBatch(order, mt);
    if (pcp_->Push(order, mt, idx)) return true;
  }
  FreeToBuddy(idx, order);
  return false;
}

uint64_t Zone::PcpFrees(unsigned order) const { return pcp_allowed_order(order) ? pcp_->pushes(order) : 0; }

uint64_t Zone::DrainAllPcp() {
  if (!pcp_enabled_) return 0;
  uint64_t pages = 0;
  uint32_t out[1024];
  for (int cpu = 0; cpu < pcp_->nr_cpus(); ++cpu) {
    for (unsigned o = 0; o < NR_PCP_ORDERS; ++o) {
      for (int mt = 0; mt < MIGRATE_PCPTYPES; ++mt) {
        uint32_t n;
        while ((n = pcp_->DrainRemote(cpu, o, mt, std::size(out), out)) != 0) {
          FreeBlocksToBuddy(out, n, o);
          pages += uint64_t{n} << o;
        }
      }
    }
  }
  return pages;
}

ZoneStats Zone::Stats() const {
  ZoneStats s;
  s.type = config_.type;
  s.populated = populated();
  s.start_pfn = config_.start_pfn;
  s.spanned_pages = config_.end_pfn - config_.start_pfn;
  s.present_pages = present_pages_;
  s.managed_pages = managed_pages_;
  s.watermarks = wmark_;
  s.lowmem_reserve = lowmem_reserve_;
  {
    MutexLock l(&lock_);
    s.buddy_free_pages = buddy_.free_pages();
    for (unsigned o = 0; o < config_.nr_orders; ++o) {
      s.nr_free.push_back(buddy_.nr_free(o));
      std::array<uint64_t, MIGRATE_TYPES> by_type{};
      for (int t = 0; t < MIGRATE_TYPES; ++t) by_type[t] = buddy_.nr_free(o, t);
      s.nr_free_by_type.push_back(by_type);
    }
    // pagetypeinfo_showblockcount_print(): from zone_start_pfn in pageblock steps, every pfn
    // with a struct page counts, reserved RAM included (x86's DMA zone from pfn 1: 8 blocks).
    for (uint64_t pfn = config_.start_pfn; pfn < config_.end_pfn; pfn += pageblocks_.nr_pages()) {
      const bool present = std::any_of(config_.present_ranges.begin(), config_.present_ranges.end(),
                                       [pfn](const auto& r) { return pfn >= r.first && pfn < r.second; });
      const int t = pageblocks_.Get(pfn);
      if (present && t < MIGRATE_TYPES) ++s.nr_pageblocks_by_type[t];
    }
    s.nr_reserved_highatomic = buddy_.nr_reserved_highatomic();
    s.nr_free_highatomic = buddy_.nr_free_highatomic();
    s.highatomic_max = buddy_.HighatomicMax(managed_pages_);
    s.migrate = buddy_.counters();
  }
  s.pageblock_order = pageblocks_.order();
  s.group_by_mobility_disabled = pageblocks_.group_by_mobility_disabled();
  s.pcp_batch = pcp_->batch();
  s.pcp_high = pcp_->high();
  for (int cpu = 0; cpu < pcp_->nr_cpus(); ++cpu) {
    s.pcp.push_back(pcp_->Stats(cpu));
    s.pcp_pages += s.pcp.back().count;
  }
  s.free_pages = s.buddy_free_pages + s.pcp_pages;
  return s;
}

absl::Status Zone::ValidateFree(std::vector<uint8_t>& seen, uint64_t* pcp_pages) const {
  MutexLock l(&lock_);
  const char* zname = zone_name(config_.type).data();
  absl::Status status;
  uint64_t listed_pages = 0;
  std::vector<uint64_t> counted(config_.nr_orders);
  auto mark = [&](uint32_t head, unsigned order, const char* where) {
    lock_.AssertHeld();  // called only below, under the lock taken above
    const Segment& seg = buddy_.segment_of(head);
    const uint64_t pfn = seg.pfn_of(head);
    if (pfn % (uint64_t{1} << order) != 0 || pfn + (uint64_t{1} << order) > seg.end_pfn) {
      status.Update(absl::InternalError(absl::StrFormat("zone %s: %s block pfn %#x order %u is misaligned or "
                                                        "crosses its segment [%#x, %#x)",
                                                        zname, where, pfn, order, seg.start_pfn, seg.end_pfn)));
      return;
    }
    for (uint64_t i = 0; i < (uint64_t{1} << order); ++i) {
      const uint32_t idx = head + static_cast<uint32_t>(i);
      if (seen[idx]) {
        status.Update(absl::InternalError(absl::StrFormat("zone %s: page pfn %#x is on two free lists (%s)", zname,
                                                          pfn + i, where)));
        return;
      }
      seen[idx] = 1;
      if (i != 0 && mem_map_.page(idx).state.load(std::memory_order_relaxed) != 0) {
        status.Update(absl::InternalError(absl::StrFormat(
            "zone %s: pfn %#x inside free block %#x/%u has state %#x, want 0", zname, pfn + i, pfn, order,
            mem_map_.page(idx).state.load(std::memory_order_relaxed))));
      }
    }
  };
  std::vector<std::array<uint64_t, MIGRATE_TYPES>> counted_by_type(config_.nr_orders);
  uint64_t highatomic_pages = 0;
  const unsigned pb_order = pageblocks_.order();
  buddy_.ForEachFreeBlock([&](uint32_t idx, unsigned order, int mt) {
    lock_.AssertHeld();  // runs inside ForEachFreeBlock, under the lock taken above
    if (mem_map_.page(idx).state.load(std::memory_order_relaxed) != PageState::Buddy(order)) {
      status.Update(absl::InternalError(absl::StrFormat("zone %s: block at index %u on free_area[%u] is not PageBuddy "
                                                        "of that order (state %#x)",
                                                        zname, idx, order, mem_map_.page(idx).state.load())));
    }
    ++counted[order];
    ++counted_by_type[order][mt];
    listed_pages += uint64_t{1} << order;
    if (mt == MIGRATE_HIGHATOMIC) highatomic_pages += uint64_t{1} << order;
    // 6.10+ freelist hygiene: a free block is on the list of its pageblock's type, and a block
    // covering several pageblocks has the same type in all of them.
    const uint64_t pfn = buddy_.pfn_of(idx);
    const uint64_t span = std::max<uint64_t>(uint64_t{1} << order, 1);
    for (uint64_t p = pageblocks_.start_of(pfn); p < pfn + span; p += pageblocks_.nr_pages()) {
      if (pageblocks_.Get(p) != mt) {
        status.Update(absl::InternalError(absl::StrFormat(
            "zone %s: free block pfn %#x order %u is on the %s list but pageblock %#x is %s", zname, pfn, order,
            kMigratetypeNames[mt], p, kMigratetypeNames[std::min(pageblocks_.Get(p), MIGRATE_TYPES - 1)])));
        break;
      }
      if (order < pb_order) break;
    }
    mark(idx, order, "buddy");
  });
  for (unsigned o = 0; o < config_.nr_orders; ++o) {
    if (counted[o] != buddy_.nr_free(o)) {
      status.Update(absl::InternalError(absl::StrFormat("zone %s: free_area[%u].nr_free = %u but the list holds %u",
                                                        zname, o, buddy_.nr_free(o), counted[o])));
    }
    uint64_t sum = 0;
    for (int t = 0; t < MIGRATE_TYPES; ++t) {
      sum += buddy_.nr_free(o, t);
      if (counted_by_type[o][t] != buddy_.nr_free(o, t)) {
        status.Update(absl::InternalError(absl::StrFormat("zone %s: free_area[%u].free_list[%s] counts %u but holds %u",
                                                          zname, o, kMigratetypeNames[t], buddy_.nr_free(o, t),
                                                          counted_by_type[o][t])));
      }
    }
    if (sum != buddy_.nr_free(o)) {
      status.Update(absl::InternalError(absl::StrFormat(
          "zone %s: Σ_t len(free_area[%u].free_list[t]) = %u != nr_free %u", zname, o, sum, buddy_.nr_free(o))));
    }
  }
  if (highatomic_pages != buddy_.nr_free_highatomic()) {
    status.Update(absl::InternalError(absl::StrFormat("zone %s: nr_free_highatomic = %u but HIGHATOMIC lists hold %u",
                                                      zname, buddy_.nr_free_highatomic(), highatomic_pages)));
  }
  // Every pageblock has a type; HIGHATOMIC blocks make up exactly the reserve, which stays within
  // one reservation step of ALIGN(managed / 100, pageblock_nr_pages).
  uint64_t highatomic_blocks = 0;
  for (uint64_t pfn = pageblocks_.start_of(config_.start_pfn); pfn < config_.end_pfn; pfn += pageblocks_.nr_pages()) {
    const int t = pageblocks_.Get(pfn);
    if (t >= MIGRATE_TYPES || (pageblocks_.group_by_mobility_disabled() && (t == MIGRATE_MOVABLE || t == MIGRATE_RECLAIMABLE))) {
      status.Update(absl::InternalError(absl::StrFormat("zone %s: pageblock %#x has type %d%s", zname, pfn, t,
                                                        t >= MIGRATE_TYPES ? " (no such migratetype)"
                                                                           : " with mobility grouping off")));
    }
    highatomic_blocks += t == MIGRATE_HIGHATOMIC;
  }
  const uint64_t reserved = buddy_.nr_reserved_highatomic();
  if (reserved != highatomic_blocks * pageblocks_.nr_pages()) {
    status.Update(absl::InternalError(absl::StrFormat(
        "zone %s: nr_reserved_highatomic = %u pages but %u pageblocks of %u pages are HIGHATOMIC", zname, reserved,
        highatomic_blocks, pageblocks_.nr_pages())));
  }
  const uint64_t max = buddy_.HighatomicMax(managed_pages_);
  const uint64_t step = std::max(pageblocks_.nr_pages(), uint64_t{1} << (config_.nr_orders - 1));
  if (reserved != 0 && (max == 0 || reserved >= max + step)) {
    status.Update(absl::InternalError(absl::StrFormat(
        "zone %s: highatomic reserve %u pages exceeds its bound (max %u, one step %u)", zname, reserved, max, step)));
  }
  if (listed_pages != buddy_.free_pages() || listed_pages != free_pages_.load() ||
      listed_pages - highatomic_pages != usable_free_.load()) {
    status.Update(absl::InternalError(absl::StrFormat(
        "zone %s: Σ nr_free[o] << o = %u, but NR_FREE_PAGES = %u (published %u, usable %u, highatomic %u)", zname,
        listed_pages, buddy_.free_pages(), free_pages_.load(), usable_free_.load(), highatomic_pages)));
  }
  *pcp_pages = 0;
  std::vector<uint32_t> items;
  for (int cpu = 0; cpu < pcp_->nr_cpus(); ++cpu) {
    for (int list = 0; list < NR_PCP_LISTS; ++list) {
      const unsigned o = static_cast<unsigned>(list / MIGRATE_PCPTYPES);
      items.clear();
      pcp_->Snapshot(cpu, o, list % MIGRATE_PCPTYPES, &items);
      for (uint32_t idx : items) {
        if (mem_map_.page(idx).state.load(std::memory_order_relaxed) != PageState::Pcp(o)) {
          status.Update(absl::InternalError(absl::StrFormat("zone %s: block at index %u on cpu %d's order-%u list has "
                                                            "state %#x, want PagePcp order %u",
                                                            zname, idx, cpu, o, mem_map_.page(idx).state.load(), o)));
        }
        mark(idx, o, "per-CPU");
        *pcp_pages += uint64_t{1} << o;
      }
    }
  }
  return status;
}

}  // namespace physmem
