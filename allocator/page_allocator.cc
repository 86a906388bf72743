#include "allocator/page_allocator.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "allocator/per_cpu_ring.h"
#include "allocator/rseq.h"

namespace physmem {
namespace {

bool IsAllocated(const PageState& s) { return s.refcount != 0; }

// The thread caches hold PagePcp blocks, so they need the per-CPU lists on in every populated
// zone: the rings' own condition (PerCpuRings' constructor), for the constructing thread.
bool ThreadPagesUsable(const PageAllocatorOptions& o) {
  // init_on_free zeroes on every free, which the thread caches' free path does not do.
  return o.thread_pages && o.pcp_enabled && !o.init_on_free && PHYSMEM_RSEQ_X86_64 && RseqRegistered() &&
         MembarrierRseqReady();
}

}  // namespace

PageAllocator::PageAllocator(PageAllocatorOptions options)
    : options_(std::move(options)),
      target_(options_.target),
      vm_events_(target_.nr_page_orders()),
      thread_pages_(ThreadPagesUsable(options_), [this](ZoneType z, std::span<Page* const> blocks) {
        std::vector<uint32_t> idx;
        for (Page* p : blocks) idx.push_back(mem_map_->index_of(p));
        zone(z)->FreeBlocksToBuddy(idx.data(), static_cast<uint32_t>(idx.size()), 0);
      }) {}

PageAllocator::~PageAllocator() = default;

absl::StatusOr<std::unique_ptr<PageAllocator>> PageAllocator::Create(PageAllocatorOptions options) {
  if (absl::Status s = ValidateTarget(options.target); !s.ok()) return s;
  std::unique_ptr<PageAllocator> pa(new PageAllocator(std::move(options)));
  if (absl::Status s = pa->Init(); !s.ok()) return s;
  return pa;
}

absl::Status PageAllocator::Init() {
  absl::StatusOr<std::unique_ptr<MemMap>> mm = MemMap::Create(target_);
  if (!mm.ok()) return mm.status();
  mem_map_ = *std::move(mm);

  ArenaOptions ao;
  ao.size_bytes = uint64_t{mem_map_->nr_pages()} << target_.page_shift;
  ao.backing = options_.arena_backing;
  ao.path = options_.arena_path;
  absl::StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(ao);
  if (!arena.ok()) return arena.status();
  arena_ = *std::move(arena);

  const int nr_cpus = options_.nr_cpus > 0 ? options_.nr_cpus : NumPossibleCpus();
  nr_cpus_ = nr_cpus;
  // Managed pages first: the watermarks, and from them the mobility-grouping decision, are
  // needed before the zones mark their pageblocks. mem_map holds only managed RAM (present
  // minus memblock-reserved), so its segments count exactly zone_managed_pages().
  std::array<uint64_t, MAX_NR_ZONES> managed{};
  for (const Segment& s : mem_map_->segments()) managed[s.zone] += s.nr_pages();
  uint64_t lowmem_kbytes = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (z != ZONE_HIGHMEM) lowmem_kbytes += managed[z] << (target_.page_shift - 10);
  }
  const uint64_t min_free_kbytes =
      options_.min_free_kbytes ? options_.min_free_kbytes : DefaultMinFreeKbytes(lowmem_kbytes);
  const auto wmarks = SetupZoneWatermarks(managed, min_free_kbytes, target_.page_shift,
                                          options_.watermark_scale_factor);
  const auto reserve = SetupLowmemReserve(managed, options_.lowmem_reserve_ratio);
  pageblock_order_ = PageblockOrder(target_);
  group_by_mobility_disabled_ =
      !options_.page_group_by_mobility || MobilityGroupingTooSmall(managed, wmarks, pageblock_order_);

  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (!target_.zone_configured[z]) continue;
    ZoneConfig zc;
    zc.type = static_cast<ZoneType>(z);
    zc.start_pfn = target_.zone_start(zc.type) >> target_.page_shift;
    const uint64_t last_ram_pfn = target_.ram.back().end() >> target_.page_shift;
    zc.end_pfn = std::min(target_.zone_end[z] >> target_.page_shift, last_ram_pfn);
    zc.end_pfn = std::max(zc.end_pfn, zc.start_pfn);
    for (const Segment& s : mem_map_->segments()) {
      if (s.zone == z) zc.segments.push_back(s);
    }
    // spanned_pages runs from the first to the last RAM page of the zone, reserved pages
    // included, like the kernel's (zone_spanned_pages_in_node() over memblock.memory).
    zc.present_pages = target_.zone_ram_pages(zc.type);
    bool first_ram = true;
    for (const RamRange& r : target_.ram) {
      const uint64_t lo = std::max(r.start, target_.zone_start(zc.type)) >> target_.page_shift;
      const uint64_t hi = std::min(r.end() - 1, target_.zone_end[z] - 1) >> target_.page_shift;
      if (r.end() - 1 < target_.zone_start(zc.type) || r.start > target_.zone_end[z] - 1) continue;
      if (first_ram) zc.start_pfn = lo;
      first_ram = false;
      zc.end_pfn = hi + 1;
      zc.present_ranges.emplace_back(lo, hi + 1);
    }
    if (!zc.segments.empty()) {
      zone_index_end_[z] = zc.segments.back().first_index + static_cast<uint32_t>(zc.segments.back().nr_pages());
    }
    zc.nr_orders = target_.nr_page_orders();
    zc.page_shift = target_.page_shift;
    zc.nr_cpus = nr_cpus;
    zc.pcp_enabled = options_.pcp_enabled;
    zc.pcp_batch = options_.pcp_batch;
    zc.pcp_high = options_.pcp_high;
    zc.pageblock_order = pageblock_order_;
    zc.group_by_mobility_disabled = group_by_mobility_disabled_;
    zones_[z] = std::make_unique<Zone>(*mem_map_, std::move(zc));
  }
  // Zones without RAM end where the previous zone ends, so ZoneOfIndex() never lands in them.
  for (int z = 1; z < MAX_NR_ZONES; ++z) zone_index_end_[z] = std::max(zone_index_end_[z], zone_index_end_[z - 1]);

  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (zones_[z]) zones_[z]->SetWatermarks(wmarks[z], reserve[z]);
  }

  std::array<int8_t, MAX_NR_ZONES> fast_served;
  for (int h = 0; h < MAX_NR_ZONES; ++h) {
    for (int z = h; z >= 0 && first_zone_[h] == nullptr; --z) {
      if (zones_[z] && zones_[z]->populated()) first_zone_[h] = zones_[z].get();
    }
    fast_served[h] = first_zone_[h] ? static_cast<int8_t>(first_zone_[h]->type()) : -1;
  }
  vm_events_.SetFastPathZones(fast_served);  // the fast path counts by preferred zone only
  if (thread_pages_.enabled()) {
    page_tags_ = std::make_unique<std::atomic<uint8_t>[]>(mem_map_->nr_pages());
    for (auto& z : zones_) {
      if (z) z->AttachPageTags(page_tags_.get());
    }
  }
  for (unsigned bits = 0; bits < 16; ++bits) {
    gfp_zone_table_[bits] = ValidateGfp(bits).ok() ? gfp_zone(bits, target_.zone_configured) : -1;
  }
  if (target_.has_highmem()) {
    pkmap_ = std::make_unique<PkmapWindow>(target_.pkmap_base, target_.pkmap_slots, target_.page_size);
  }
  lowmem_end_pfn_ = target_.lowmem_end() == UINT64_MAX ? UINT64_MAX : target_.lowmem_end() >> target_.page_shift;
  return absl::OkStatus();
}

// build_all_zonelists() (6.12): mobility grouping is off when the pages the zonelist of
// GFP_HIGHUSER_MOVABLE offers, nr_free_zone_pages() = Σ max(0, managed - high watermark), are
// fewer than pageblock_nr_pages * MIGRATE_TYPES ("the number of pages is too small to make
// grouping by mobility worthwhile").
bool PageAllocator::MobilityGroupingTooSmall(const std::array<uint64_t, MAX_NR_ZONES>& managed,
                                             const std::array<Watermarks, MAX_NR_ZONES>& wmarks,
                                             unsigned pageblock_order) const {
  const ZoneType highest = gfp_zone(GFP_HIGHUSER_MOVABLE, target_.zone_configured);
  uint64_t total = 0;
  for (int z = 0; z <= highest; ++z) {
    if (managed[z] > wmarks[z].high) total += managed[z] - wmarks[z].high;
  }
  return total < (uint64_t{1} << pageblock_order) * MIGRATE_TYPES;
}

// alloc_flags_nofragment(): ALLOC_NOFRAGMENT when the preferred zone is ZONE_NORMAL and the
// kernel has ZONE_DMA32 (on one node, whether or not DMA32 holds pages): spreading into DMA32
// beats fragmenting Normal, spreading into HIGHMEM or DMA does not. Without ZONE_DMA32 the flag
// is 0 in the kernel.
unsigned PageAllocator::AllocFlagsNofragment(ZoneType highest) const {
  const Zone* preferred = first_zone_[highest];
  if (preferred == nullptr || preferred->type() != ZONE_NORMAL || !target_.zone_configured[ZONE_DMA32]) return 0;
  return ALLOC_NOFRAGMENT;
}

bool PageAllocator::UnreserveHighatomic(ZoneType highest, uint32_t allowed_zones, int mt, bool force) {
  for (int z = highest; z >= 0; --z) {
    Zone* zn = zone(static_cast<ZoneType>(z));
    if (zn == nullptr || !zn->populated() || !(allowed_zones & (1u << z))) continue;
    if (zn->UnreserveHighatomic(force, mt)) return true;
  }
  return false;
}

bool PageAllocator::pcp_active() const {
  for (const auto& z : zones_) {
    if (z && z->populated() && z->pcp().enabled()) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Allocation

std::optional<Refusal> PageAllocator::ValidateAllocArgs(gfp_t gfp, unsigned order) const {
  if (order >= target_.nr_page_orders()) return OrderTooHigh(order);
  if (absl::Status s = ValidateGfp(gfp); !s.ok()) {
    return Refusal{RefusalReason::kInvalidGfp, 0, std::string(s.message().data(), s.message().size())};
  }
  return std::nullopt;
}

Refusal PageAllocator::OrderTooHigh(unsigned order) const {
  return Refusal{RefusalReason::kOrderTooHigh, 0,
                 absl::StrFormat("order %u exceeds MAX_PAGE_ORDER %u", order, target_.max_page_order)};
}

std::optional<uint32_t> PageAllocator::GetPageFromFreelist(unsigned order, int mt, unsigned alloc_flags,
                                                           ZoneType highest, ZoneType* got_zone,
                                                           uint32_t allowed_zones) {
  for (;;) {
    for (int z = highest; z >= 0; --z) {
      Zone* zn = zone(static_cast<ZoneType>(z));
      if (zn == nullptr || !zn->populated() || !(allowed_zones & (1u << z))) continue;
      const uint64_t mark = zn->watermarks()[static_cast<WatermarkLevel>(alloc_flags & ALLOC_WMARK_MASK)];
      if (!zn->WatermarkOk(order, mark, highest, alloc_flags)) continue;
      if (std::optional<uint32_t> idx = zn->Rmqueue(order, mt, alloc_flags)) {
        // get_page_from_freelist(): "if (unlikely(alloc_flags & ALLOC_HIGHATOMIC))
        // reserve_highatomic_pageblock(page, order, zone)" after every successful rmqueue().
        if (alloc_flags & ALLOC_HIGHATOMIC) zn->ReserveHighatomic(*idx, order);
        *got_zone = zn->type();
        return idx;
      }
    }
    // "It's possible on a UMA machine to get through all zones that are fragmented. If avoiding
    // fragmentation, reset and try again."
    if (!(alloc_flags & ALLOC_NOFRAGMENT)) return std::nullopt;
    alloc_flags &= ~ALLOC_NOFRAGMENT;
  }
}

Page* PageAllocator::PrepNewPage(uint32_t idx, unsigned order, gfp_t gfp, uint32_t owner) {
  Page& head = mem_map_->page(idx);
  const bool compound = (gfp & __GFP_COMP) && order > 0;
  if (compound) {
    // prep_compound_page(): every tail points back to its head.
    for (uint32_t i = 1; i < (1u << order); ++i) {
      Page& tail = mem_map_->page(idx + i);
      tail.head_offset = i;
      tail.state.store(PageState::Tail(), std::memory_order_relaxed);
    }
  }
  if (gfp & __GFP_ZERO) {
    std::memset(arena_->base() + (uint64_t{idx} << target_.page_shift), 0, uint64_t{1} << (order + target_.page_shift));
    vm_events_.CountZeroed(uint64_t{1} << order);
  }
  // Release: the block's contents and tails are ready before anyone can see it allocated.
  head.state.store(PageState::Allocated(order, owner, compound, AllocMigratetype(gfp) == MIGRATE_MOVABLE),
                   std::memory_order_release);
  return &head;
}

Page* PageAllocator::AllocFromFreelist(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones) {
  if (order >= target_.nr_page_orders() || (gfp & ~kGfpKnownMask) != 0) [[unlikely]] return nullptr;
  const int8_t highest = gfp_zone_table_[gfp & GFP_ZONEMASK];
  const int mt = AllocMigratetype(gfp);
  // __GFP_MOVABLE|__GFP_RECLAIMABLE would be HIGHATOMIC (a VM_WARN in the kernel); ValidateGfp()
  // refuses it for the StatusOr forms.
  if (highest < 0 || mt >= MIGRATE_PCPTYPES) [[unlikely]] return nullptr;
  ZoneType got;
  // First attempt: the LOW watermark (ALLOC_WMARK_LOW), as __alloc_pages() does, avoiding
  // fragmentation where alloc_flags_nofragment() says so.
  const unsigned first_flags = ALLOC_WMARK_LOW | AllocFlagsNofragment(static_cast<ZoneType>(highest));
  if (std::optional<uint32_t> idx =
          GetPageFromFreelist(order, mt, first_flags, static_cast<ZoneType>(highest), &got, allowed_zones))
      [[likely]] {
    vm_events_.CountAlloc(got, static_cast<ZoneType>(highest), order, gfp_class_index(gfp));
    return PrepNewPage(*idx, order, gfp, owner);
  }
  return AllocSlow(gfp, order, owner, static_cast<ZoneType>(highest), allowed_zones);
}

Page* PageAllocator::AllocSlow(gfp_t gfp, unsigned order, uint32_t owner, ZoneType highest, uint32_t allowed_zones) {
  const unsigned alloc_flags = gfp_to_alloc_flags(gfp, order);
  const int mt = AllocMigratetype(gfp);
  ZoneType got;
  std::optional<uint32_t> idx = GetPageFromFreelist(order, mt, alloc_flags, highest, &got, allowed_zones);
  if (!idx && gfpflags_allow_blocking(gfp)) {
    // __alloc_pages_direct_reclaim(), when the attempt after reclaim fails: give back highatomic
    // reserve beyond one pageblock, then drain every CPU's lists — pages parked there count as
    // free but cannot be merged or handed to another CPU — and try again. Only callers that may
    // block get here (__alloc_pages_slowpath() skips direct reclaim without
    // __GFP_DIRECT_RECLAIM): GFP_ATOMIC and GFP_NOWAIT fail without draining other CPUs' lists.
    bool changed = UnreserveHighatomic(highest, allowed_zones, mt, /*force=*/false);
    changed |= drain_all_pages() != 0;
    if (changed) idx = GetPageFromFreelist(order, mt, alloc_flags, highest, &got, allowed_zones);
  }
  // should_reclaim_retry() with no retries left: "Before OOM, exhaust highatomic_reserve", one
  // pageblock per retry, before the allocation is declared failed.
  while (!idx && gfpflags_allow_blocking(gfp) && UnreserveHighatomic(highest, allowed_zones, mt, /*force=*/true)) {
    idx = GetPageFromFreelist(order, mt, alloc_flags, highest, &got, allowed_zones);
  }
  if (!idx) {
    vm_events_.CountAllocFail(highest, order, gfp_class_index(gfp));
    return nullptr;
  }
  vm_events_.CountAlloc(got, highest, order, gfp_class_index(gfp));
  return PrepNewPage(*idx, order, gfp, owner);
}

RefusalOr<Page*> PageAllocator::TryAllocPages(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones) {
  if (std::optional<Refusal> bad = ValidateAllocArgs(gfp, order)) return *std::move(bad);
  if (Page* p = alloc_pages(gfp, order, owner, allowed_zones)) return p;
  return AllocFailure(gfp, order, allowed_zones);
}

Refusal PageAllocator::AllocFailure(gfp_t gfp, unsigned order, uint32_t allowed_zones) const {
  if (std::optional<Refusal> bad = ValidateAllocArgs(gfp, order)) return *std::move(bad);
  Refusal r{RefusalReason::kNoZone, 0,
            absl::StrFormat("no free order-%u block for %s: %s", order, FormatGfp(gfp), ExplainAllocFailure(gfp))};
  // The zonelist walk of get_page_from_freelist(): a zone that holds a block of the order (or a
  // larger one to split) yet served nothing was refused by __zone_watermark_ok(); if none holds
  // one, rmqueue() itself had nothing. Per-CPU lists are not counted: another CPU's list cannot
  // serve this call unless drain_all_pages() runs, which only a blocking mask gets.
  for (int z = gfp_zone_table_[gfp & GFP_ZONEMASK]; z >= 0; --z) {
    const Zone* zn = zone(static_cast<ZoneType>(z));
    if (zn == nullptr || !zn->populated() || !(allowed_zones & (1u << z))) continue;
    if (r.reason == RefusalReason::kNoZone) r.reason = RefusalReason::kNoFreeBlock;
    const ZoneStats st = zn->Stats();
    for (unsigned o = order; o < st.nr_free.size(); ++o) {
      if (st.nr_free[o] != 0) r.reason = RefusalReason::kBelowWatermark;
    }
  }
  return r;
}

std::string PageAllocator::ExplainAllocFailure(gfp_t gfp) const {
  const int8_t highest = gfp_zone_table_[gfp & GFP_ZONEMASK];
  if (highest < 0) return "invalid zone modifiers";
  std::vector<std::string> tried;
  for (int z = highest; z >= 0; --z) {
    const Zone* zn = zone(static_cast<ZoneType>(z));
    if (zn == nullptr || !zn->populated()) continue;
    unsigned largest = 0;
    const ZoneStats st = zn->Stats();
    for (unsigned o = 0; o < st.nr_free.size(); ++o) {
      if (st.nr_free[o] != 0) largest = o;
    }
    tried.push_back(absl::StrFormat("%s (free %u, largest free order %u, min %u, lowmem_reserve %u)",
                                    zone_name(zn->type()), st.free_pages, largest, st.watermarks.min,
                                    st.lowmem_reserve[highest]));
  }
  return absl::StrCat("zones tried: ", absl::StrJoin(tried, ", "));
}

uint64_t PageAllocator::__get_free_pages(gfp_t gfp, unsigned order, uint32_t owner) {
  Page* page = alloc_pages(gfp & ~__GFP_HIGHMEM, order, owner);
  return page ? page_address(page) : 0;
}

unsigned PageAllocator::alloc_pages_bulk(gfp_t gfp, unsigned nr, Page** page_array, uint32_t owner,
                                         uint32_t allowed_zones) {
  // alloc_pages_bulk_noprof() (mm/page_alloc.c, 6.12). nr_populated is an index: the populated
  // prefix is skipped, then the walk counts every slot it passes, populated or filled.
  unsigned nr_populated = 0;
  while (nr_populated < nr && page_array[nr_populated] != nullptr) ++nr_populated;
  if (nr_populated == nr || (gfp & ~kGfpKnownMask) != 0 || AllocMigratetype(gfp) >= MIGRATE_PCPTYPES) {
    return nr_populated;
  }
  const int8_t highest = gfp_zone_table_[gfp & GFP_ZONEMASK];
  if (highest < 0) return nr_populated;
  // "Use the single page allocator for one page."
  if (nr - nr_populated == 1) return BulkFallbackOnePage(gfp, nr_populated, page_array, owner, allowed_zones);
  // The first zone of the zonelist that passes LOW + nr_pages (the whole request, not what is
  // left of it), as zone_watermark_fast(zone, 0, wmark + nr_pages, ...) does.
  Zone* bulk_zone = nullptr;
  for (int z = highest; z >= 0 && bulk_zone == nullptr; --z) {
    Zone* zn = zone(static_cast<ZoneType>(z));
    if (zn == nullptr || !zn->populated() || !(allowed_zones & (1u << z))) continue;
    if (zn->WatermarkOk(0, zn->watermarks().low + nr, static_cast<ZoneType>(highest), ALLOC_WMARK_LOW)) {
      bulk_zone = zn;
    }
  }
  // "If there are no allowed local zones that meets the watermarks then try to allocate a single
  // page and reclaim if necessary."
  if (bulk_zone == nullptr) return BulkFallbackOnePage(gfp, nr_populated, page_array, owner, allowed_zones);
  unsigned nr_account = 0;
  for (; nr_populated < nr; ++nr_populated) {
    if (page_array[nr_populated] != nullptr) continue;  // "Skip existing pages"
    // __rmqueue_pcplist(): the per-CPU list of the request's migratetype, refilled from the buddy.
    std::optional<uint32_t> idx = bulk_zone->Rmqueue(0, AllocMigratetype(gfp), ALLOC_WMARK_LOW);
    if (!idx) {
      // "Try and allocate at least one page": only when the loop got nothing; otherwise stop.
      if (nr_account == 0) return BulkFallbackOnePage(gfp, nr_populated, page_array, owner, allowed_zones);
      break;
    }
    ++nr_account;
    vm_events_.CountAlloc(bulk_zone->type(), static_cast<ZoneType>(highest), 0, gfp_class_index(gfp));
    page_array[nr_populated] = PrepNewPage(*idx, 0, gfp, owner);
  }
  return nr_populated;
}

// The `failed:` label of alloc_pages_bulk_noprof(): one page through the full allocator (slow
// path included) into the first empty slot, then return.
unsigned PageAllocator::BulkFallbackOnePage(gfp_t gfp, unsigned nr_populated, Page** page_array, uint32_t owner,
                                            uint32_t allowed_zones) {
  if (Page* page = alloc_pages(gfp, 0, owner, allowed_zones)) page_array[nr_populated++] = page;
  return nr_populated;
}

unsigned PageAllocator::AllocPagesBulkFill(gfp_t gfp, unsigned nr, Page** page_array, uint32_t owner,
                                           uint32_t allowed_zones) {
  unsigned populated = alloc_pages_bulk(gfp, nr, page_array, owner, allowed_zones);
  while (populated < nr) {
    const unsigned again = alloc_pages_bulk(gfp, nr, page_array, owner, allowed_zones);
    if (again <= populated) break;  // no progress: even the full allocator found nothing
    populated = again;
  }
  return populated;
}

// ---------------------------------------------------------------------------------------------
// Free

absl::Status PageAllocator::FreePagesSlow(Page* page, unsigned order, uint32_t owner) {
  if (page == nullptr || !mem_map_->owns(page)) {
    return ToStatus(Refusal{RefusalReason::kNotAPage, 0, "__free_pages: not a struct page of this allocator"});
  }
  return ToStatus(FreeBlock(page, order, owner));
}

absl::Status PageAllocator::FreePfn(uint64_t pfn, unsigned order, uint32_t owner) {
  return ToStatus(TryFreePfn(pfn, order, owner));
}

absl::Status PageAllocator::FreePfn(uint64_t pfn, unsigned order, uint32_t owner,
                                    const std::function<absl::Status()>& commit) {
  return ToStatus(TryFreePfn(pfn, order, owner, commit));
}

std::optional<Refusal> PageAllocator::TryFreePfn(uint64_t pfn, unsigned order, uint32_t owner,
                                                 const std::function<absl::Status()>& commit) {
  if (order >= target_.nr_page_orders()) {
    Refusal r = OrderTooHigh(order);
    r.pfn = pfn;
    return r;
  }
  RefusalOr<Page*> page = TryPfnToPage(pfn);
  if (!page.ok()) return page.refusal();
  if (pfn % (uint64_t{1} << order) != 0) {
    return Refusal{RefusalReason::kMisaligned, pfn,
                   absl::StrFormat("pfn %#x is not aligned to order %u (an order-%u block starts at a multiple of %u)",
                                   pfn, order, order, 1u << order)};
  }
  return FreeBlock(*page, order, owner, commit ? &commit : nullptr);
}

absl::Status PageAllocator::free_pages(uint64_t addr, unsigned order, uint32_t owner) {
  if (addr == 0) return absl::OkStatus();
  RefusalOr<Page*> page = TryVirtToPage(addr);
  if (!page.ok()) return ToStatus(page.refusal());
  return FreePfn(page_to_pfn(*page), order, owner);
}

std::optional<Refusal> PageAllocator::FreeBlock(Page* page, unsigned order, uint32_t owner,
                                                const std::function<absl::Status()>* commit) {
  const uint32_t idx = mem_map_->index_of(page);
  const ZoneType zt = ZoneOfIndex(idx);
  Zone* zn = zone(zt);
  uint64_t word = page->state.load(std::memory_order_acquire);
  uint64_t free_word;
  for (;;) {
    const PageState s = PageState::Unpack(word);
    if (!IsAllocated(s) || s.order != order || s.owner != owner) [[unlikely]] {
      return DiagnoseBadFree(idx, s, order, owner);
    }
    free_word = zn->FreeState(order);
    // The CAS is what makes a double free harmless: of two racing frees, one finds the state
    // already changed and is refused. seq_cst for the kmap() pairing below (on x86 every locked
    // RMW is seq_cst anyway: it costs nothing more).
    if (page->state.compare_exchange_weak(word, free_word, std::memory_order_seq_cst)) break;
  }
  if (zt == ZONE_HIGHMEM) {
    // Pairs with kmap(): it raises mapcount, then reads the state; we changed the state, then read
    // mapcount, all four seq_cst. In their single total order one of the two writes comes first,
    // so at least one of two racing calls sees the other (Dekker) and backs out.
    uint32_t mapped = 0;
    for (uint32_t i = 0; i < (1u << order); ++i) {
      mapped += mem_map_->page(idx + i).mapcount.load(std::memory_order_seq_cst) != 0;
    }
    if (mapped != 0) {
      page->state.store(word, std::memory_order_release);  // un-claim: the block stays allocated
      return Refusal{RefusalReason::kStillMapped, page_to_pfn(page),
                     absl::StrFormat("block at pfn %#x still has %u kmap()ed page(s); kunmap them before freeing",
                                     page_to_pfn(page), mapped)};
    }
  }
  if (commit != nullptr) {
    if (absl::Status s = (*commit)(); !s.ok()) {
      page->state.store(word, std::memory_order_release);  // un-claim, as above
      return Refusal{RefusalReason::kCommitFailed, page_to_pfn(page), std::string(s.message()), s};
    }
  }
  if (PageState::Unpack(word).flags & PG_head) {
    for (uint32_t i = 1; i < (1u << order); ++i) {
      Page& tail = mem_map_->page(idx + i);
      tail.head_offset = 0;
      tail.state.store(0, std::memory_order_relaxed);
    }
  }
  if (options_.init_on_free) {
    // free_pages_prepare(): kernel_init_pages() when want_init_on_free(), after the checks and
    // before the block can be handed out again.
    std::memset(arena_->base() + (uint64_t{idx} << target_.page_shift), 0, uint64_t{1} << (order + target_.page_shift));
  }
  FreeToZone(zn, zt, page, idx, order);
  return std::nullopt;
}

std::optional<uint32_t> PageAllocator::FindAllocatedHead(uint32_t idx) const {
  const Segment& seg = mem_map_->segment_of_index(idx);
  const uint64_t pfn = seg.pfn_of(idx);
  // seq_cst loads: kmap() relies on them being ordered after its mapcount increment.
  const Page& p = mem_map_->page(idx);
  const PageState s = p.Load(std::memory_order_seq_cst);
  if (s.flags & PG_tail) return idx - p.head_offset;
  for (unsigned o = 0; o < target_.nr_page_orders(); ++o) {
    const uint64_t head_pfn = pfn & ~((uint64_t{1} << o) - 1);
    if (!seg.contains_pfn(head_pfn)) break;
    const PageState hs = mem_map_->page(seg.index_of(head_pfn)).Load(std::memory_order_seq_cst);
    if (IsAllocated(hs) && pfn < head_pfn + (uint64_t{1} << hs.order)) return seg.index_of(head_pfn);
  }
  return std::nullopt;
}

Page* PageAllocator::AllocatedBlockContaining(uint64_t pfn) const {
  std::optional<uint32_t> idx = mem_map_->pfn_to_index(pfn);
  if (!idx) return nullptr;
  std::optional<uint32_t> head = FindAllocatedHead(*idx);
  return head ? &mem_map_->page(*head) : nullptr;
}

std::optional<PageAllocator::BlockInfo> PageAllocator::AllocatedBlockAt(uint64_t pfn) const {
  Page* head = AllocatedBlockContaining(pfn);
  if (head == nullptr) return std::nullopt;
  const PageState s = head->Load(std::memory_order_seq_cst);
  return BlockInfo{head, s.order, s.owner, (s.flags & PG_head) != 0};
}

RefusalOr<Page*> PageAllocator::TryOwnedBlockContaining(uint64_t pfn, uint32_t owner) const {
  RefusalOr<Page*> page = TryPfnToPage(pfn);
  if (!page.ok()) return page;
  std::optional<BlockInfo> b = AllocatedBlockAt(pfn);
  if (!b) return Refusal{RefusalReason::kNotAllocated, pfn, absl::StrFormat("pfn %#x is not allocated", pfn)};
  if (b->owner != owner) {
    return Refusal{RefusalReason::kWrongOwner, pfn, absl::StrFormat("pfn %#x has another owner", pfn)};
  }
  return b->head;
}

Refusal PageAllocator::DiagnoseBadFree(uint32_t idx, PageState s, unsigned order, uint32_t owner) const {
  const uint64_t pfn = mem_map_->index_to_pfn(idx);
  if (s.flags & PG_tail) {
    const uint32_t head = idx - mem_map_->page(idx).head_offset;
    return Refusal{RefusalReason::kTailPage, pfn,
                   absl::StrFormat("pfn %#x is a tail page of the compound block at pfn %#x; free the head", pfn,
                                   mem_map_->index_to_pfn(head))};
  }
  if (IsAllocated(s)) {
    // Ownership first: another owner's caller learns nothing about the block's shape.
    if (s.owner != owner) {
      return Refusal{RefusalReason::kWrongOwner, pfn,
                     absl::StrFormat("the block at pfn %#x belongs to owner %u, not %u", pfn, s.owner, owner)};
    }
    return Refusal{RefusalReason::kWrongOrder, pfn,
                   absl::StrFormat("wrong order: the block at pfn %#x was allocated with order %u, not %u", pfn,
                                   s.order, order)};
  }
  if (std::optional<uint32_t> head = FindAllocatedHead(idx)) {
    const PageState hs = mem_map_->page(*head).Load();
    return Refusal{RefusalReason::kInsideBlock, pfn,
                   absl::StrFormat("pfn %#x is inside the order-%u block allocated at pfn %#x; free that block", pfn,
                                   hs.order, mem_map_->index_to_pfn(*head))};
  }
  return Refusal{RefusalReason::kNotAllocated, pfn, absl::StrFormat("pfn %#x is not allocated (double free?)", pfn)};
}

// ---------------------------------------------------------------------------------------------
// Addresses, kmap

absl::StatusOr<Page*> PageAllocator::PfnToPage(uint64_t pfn) const { return TryPfnToPage(pfn).ToStatusOr(); }

RefusalOr<Page*> PageAllocator::TryPfnToPage(uint64_t pfn) const {
  std::optional<uint32_t> idx = mem_map_->pfn_to_index(pfn);
  if (!idx) {
    const uint64_t last = (target_.ram.back().end() >> target_.page_shift) - 1;
    return Refusal{RefusalReason::kPfnOutOfRange, pfn,
                   pfn > last                        ? absl::StrFormat("pfn %#x is beyond the last RAM page %#x", pfn, last)
                   : target_.IsReservedRam(pfn << target_.page_shift)
                       ? absl::StrFormat("pfn %#x is reserved RAM (memblock_reserve(): the buddy never manages it)", pfn)
                       : absl::StrFormat("pfn %#x is in a memory hole (not RAM)", pfn)};
  }
  return &mem_map_->page(*idx);
}

absl::StatusOr<Page*> PageAllocator::VirtToPage(uint64_t addr) const { return TryVirtToPage(addr).ToStatusOr(); }

RefusalOr<Page*> PageAllocator::TryVirtToPage(uint64_t addr) const {
  if (pkmap_ && pkmap_->Contains(addr)) {
    return Refusal{RefusalReason::kAddrKmapWindow, 0,
                   absl::StrFormat("address %#x is a kmap() window address, not a direct-map address; free highmem "
                                   "pages by pfn",
                                   addr)};
  }
  if (addr % target_.page_size != 0) {
    return Refusal{RefusalReason::kAddrUnaligned, 0,
                   absl::StrFormat("address %#x is not page aligned (page size %u)", addr, target_.page_size)};
  }
  if (addr < target_.page_offset) {
    return Refusal{RefusalReason::kAddrBelowDirectMap, 0,
                   absl::StrFormat("address %#x is below PAGE_OFFSET %#x: not a kernel direct-map address", addr,
                                   target_.page_offset)};
  }
  const uint64_t pfn = (addr - target_.page_offset + target_.phys_offset) >> target_.page_shift;
  if (pfn >= lowmem_end_pfn_ || addr - target_.page_offset > UINT64_MAX - target_.phys_offset) {
    return Refusal{RefusalReason::kAddrBeyondDirectMap, 0,
                   absl::StrFormat("address %#x lies beyond the direct map (lowmem ends at pfn %#x)", addr,
                                   lowmem_end_pfn_)};
  }
  return TryPfnToPage(pfn);
}

uint64_t PageAllocator::page_address(const Page* page) const {
  const uint64_t pfn = page_to_pfn(page);
  if (pfn >= lowmem_end_pfn_) {
    std::optional<uint64_t> v = pkmap_->Lookup(pfn);
    return v ? *v : 0;
  }
  return target_.page_offset + ((pfn << target_.page_shift) - target_.phys_offset);
}

int PageAllocator::page_count(const Page* page) const {
  const PageState s = page->Load();
  if (s.flags & PG_tail) return mem_map_->page(mem_map_->index_of(page) - page->head_offset).Load().refcount;
  return s.refcount;
}

std::optional<Refusal> PageAllocator::CheckKmapOwner(uint32_t idx, uint32_t owner, std::string_view call) const {
  const uint64_t pfn = mem_map_->index_to_pfn(idx);
  std::optional<uint32_t> head = FindAllocatedHead(idx);
  if (!head) {
    return Refusal{RefusalReason::kNotAllocated, pfn, absl::StrFormat("%s: pfn %#x is not allocated", call, pfn)};
  }
  if (const PageState hs = mem_map_->page(*head).Load(); hs.owner != owner) {
    return Refusal{RefusalReason::kWrongOwner, pfn,
                   absl::StrFormat("%s: pfn %#x belongs to owner %u, not %u", call, pfn, hs.owner, owner)};
  }
  return std::nullopt;
}

RefusalOr<uint64_t> PageAllocator::TryKmap(Page* page, uint32_t owner) {
  const uint32_t idx = mem_map_->index_of(page);
  if (ZoneOfIndex(idx) != ZONE_HIGHMEM) {
    if (std::optional<Refusal> r = CheckKmapOwner(idx, owner, "kmap")) return *std::move(r);
    return page_address(page);  // lowmem: kmap() is page_address()
  }
  page->mapcount.fetch_add(1, std::memory_order_seq_cst);  // then a seq_cst read of the state: see FreeBlock()
  if (std::optional<Refusal> r = CheckKmapOwner(idx, owner, "kmap")) {
    page->mapcount.fetch_sub(1, std::memory_order_seq_cst);
    return *std::move(r);
  }
  RefusalOr<uint64_t> v = pkmap_->Kmap(page_to_pfn(page));
  if (!v.ok()) page->mapcount.fetch_sub(1, std::memory_order_seq_cst);
  return v;
}

std::optional<Refusal> PageAllocator::TryKunmap(Page* page, uint32_t owner) {
  const uint32_t idx = mem_map_->index_of(page);
  if (std::optional<Refusal> r = CheckKmapOwner(idx, owner, "kunmap")) return r;
  if (ZoneOfIndex(idx) != ZONE_HIGHMEM) return std::nullopt;  // lowmem: nothing was mapped
  if (std::optional<Refusal> r = pkmap_->Kunmap(page_to_pfn(page))) return r;
  page->mapcount.fetch_sub(1, std::memory_order_seq_cst);
  return std::nullopt;
}

uint64_t PageAllocator::drain_all_pages() {
  uint64_t pages = thread_pages_.DrainAll();
  for (auto& z : zones_) {
    if (z) pages += z->DrainAllPcp();
  }
  return pages;
}

// ---------------------------------------------------------------------------------------------
// Statistics and validation

VmEventCounts PageAllocator::VmEvents() const {
  VmEventCounts c = vm_events_.Snapshot();
  for (const auto& z : zones_) {
    if (!z) continue;
    for (unsigned o = 0; o < NR_PCP_ORDERS && o < c.nr_orders; ++o) c.free[z->type() * c.nr_orders + o] += z->PcpFrees(o);
    // The thread caches count their own order-0 allocations and frees.
    const ThreadPagesStats t = thread_pages_.Stats(z->type());
    c.free[z->type() * c.nr_orders] += t.frees;
    for (int k = 0; k < kNrGfpClasses; ++k) c.alloc[z->type() * c.nr_orders * kNrGfpClasses + k] += t.hits_by_class[k];
  }
  return c;
}

std::vector<ZoneStats> PageAllocator::Stats() const {
  std::vector<ZoneStats> out;
  for (const auto& z : zones_) {
    if (!z) continue;
    ZoneStats& s = out.emplace_back(z->Stats());
    s.thread_pages = thread_pages_.Stats(z->type());
    s.pcp_pages += s.thread_pages.count;
    s.free_pages += s.thread_pages.count;
  }
  return out;
}

std::string PageAllocator::Buddyinfo() const {
  std::string text;
  for (const ZoneStats& z : Stats()) {
    if (z.populated) absl::StrAppend(&text, FormatBuddyinfoLine(z), "\n");
  }
  return text;
}

ZoneinfoConfig PageAllocator::zoneinfo_config() const {
  ZoneinfoConfig config;
  config.page_shift = target_.page_shift;
  config.zone_device = target_.page_offset >= (uint64_t{1} << 32);  // 64-bit: CONFIG_ZONE_DEVICE
  config.nr_online_cpus = nr_cpus_;
  return config;
}

std::string PageAllocator::Zoneinfo() const { return FormatZoneinfo(Stats(), zoneinfo_config()); }

std::string PageAllocator::Pagetypeinfo() const {
  const std::vector<ZoneStats> zones = Stats();
  return FormatPagetypeinfo(zones);
}

// The thread caches' blocks: order 0 in PagePcp state, in the zone they are cached for, on no
// other list.
absl::Status PageAllocator::ValidateThreadPages(std::vector<uint8_t>& seen, uint64_t* pcp_pages) const {
  std::vector<std::pair<ZoneType, Page*>> cached;
  thread_pages_.Snapshot(&cached);
  for (const auto& [zt, page] : cached) {
    if (!mem_map_->owns(page)) {
      return absl::InternalError(absl::StrFormat("a thread cache of zone %s holds %p, not a struct page of this "
                                                 "allocator", zone_name(zt), static_cast<const void*>(page)));
    }
    const uint32_t idx = mem_map_->index_of(page);
    const uint64_t pfn = mem_map_->index_to_pfn(idx);
    const uint64_t word = mem_map_->page(idx).state.load(std::memory_order_relaxed);
    if (ZoneOfIndex(idx) != zt || word != PageState::Pcp(0) || seen[idx]) {
      return absl::InternalError(absl::StrFormat("pfn %#x in a thread cache of zone %s: zone %s, state %#x (want "
                                                 "PagePcp order 0), %s",
                                                 pfn, zone_name(zt), zone_name(ZoneOfIndex(idx)), word,
                                                 seen[idx] ? "also on another free list" : "on no other list"));
    }
    seen[idx] = 1;
    ++*pcp_pages;
  }
  return absl::OkStatus();
}

absl::StatusOr<PageCensus> PageAllocator::Validate() const {
  PageCensus c;
  c.total_pages = mem_map_->nr_pages();
  std::vector<uint8_t> seen(mem_map_->nr_pages());
  absl::Status status;
  for (const auto& z : zones_) {
    if (!z) continue;
    uint64_t pcp_pages = 0;
    status.Update(z->ValidateFree(seen, &pcp_pages));
    c.pcp_pages += pcp_pages;
    c.buddy_free_pages += z->buddy_free_pages();
  }
  status.Update(ValidateThreadPages(seen, &c.pcp_pages));
  if (!status.ok()) return status;
  // Every page not on a free list must belong to exactly one allocated block.
  for (const Segment& seg : mem_map_->segments()) {
    uint32_t idx = seg.first_index;
    const uint32_t end = seg.first_index + static_cast<uint32_t>(seg.nr_pages());
    while (idx < end) {
      if (seen[idx]) {
        ++idx;
        continue;
      }
      const uint64_t pfn = seg.pfn_of(idx);
      const PageState s = mem_map_->page(idx).Load();
      if (!IsAllocated(s)) {
        return absl::InternalError(absl::StrFormat(
            "pfn %#x is neither on a free list nor in an allocated block (lost page; state %#x)", pfn, s.Pack()));
      }
      const uint64_t n = uint64_t{1} << s.order;
      if (pfn % n != 0 || pfn + n > seg.end_pfn) {
        return absl::InternalError(absl::StrFormat("allocated block at pfn %#x order %u is misaligned or crosses "
                                                   "its segment",
                                                   pfn, s.order));
      }
      for (uint64_t i = 0; i < n; ++i) {
        const uint32_t t = idx + static_cast<uint32_t>(i);
        if (seen[t]) {
          return absl::InternalError(
              absl::StrFormat("pfn %#x is both free and inside the block allocated at pfn %#x", pfn + i, pfn));
        }
        seen[t] = 1;
        if (i == 0) continue;
        const PageState ts = mem_map_->page(t).Load();
        const bool ok = (s.flags & PG_head) ? ts.flags == PG_tail && mem_map_->page(t).head_offset == i
                                             : ts.Pack() == 0;
        if (!ok) {
          return absl::InternalError(absl::StrFormat(
              "pfn %#x inside the block allocated at pfn %#x has state %#x", pfn + i, pfn, ts.Pack()));
        }
      }
      c.allocated_pages += n;
      ++c.allocated_blocks;
      idx += static_cast<uint32_t>(n);
    }
  }
  if (c.buddy_free_pages + c.pcp_pages + c.allocated_pages != c.total_pages) {
    return absl::InternalError(absl::StrFormat("pages do not add up: %u buddy + %u per-CPU + %u allocated != %u",
                                               c.buddy_free_pages, c.pcp_pages, c.allocated_pages, c.total_pages));
  }
  return c;
}

}  // namespace physmem
