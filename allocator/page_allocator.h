// PageAllocator: the kernel's page allocator interface over an emulated machine's RAM.
//
// Who uses it: the gRPC server (through the StatusOr forms, which say why a call failed), the
// demo and the benchmarks (through the kernel forms, which fail with a null value as the kernel's
// do). It owns the arena (the emulated RAM), the mem_map (struct page array) and one Zone per
// zone the target configures. Thread-safety: every method may be called from any thread at any
// time, except Validate(), which needs no allocation or free to run concurrently.
//
// Allocation (__alloc_pages()): gfp_zone() picks the highest zone allowed; the zonelist walks
// down from it (HIGHMEM -> NORMAL -> DMA32 -> DMA, skipping zones the target lacks). The first
// pass takes a zone only above its LOW watermark + lowmem_reserve[highest]; the slow pass uses
// the MIN watermark with the reserve discounts of gfp_to_alloc_flags() (__GFP_HIGH: half,
// GFP_ATOMIC: a further quarter); a caller that may block (__GFP_DIRECT_RECLAIM) then has every
// CPU's lists drained and tries once more, as direct reclaim does in the kernel. Waiting
// (direct reclaim) is not the allocator's business: the service decides whether to wait.
//
// Owners: every allocated block records a 32-bit owner id (the server's lease); a free must name
// the same owner. Kernel-style callers use kNoOwner for both.
//
// Refusals never change anything. Each has a typed reason (allocator/refusal.h: RefusalReason,
// with the kernel check it models); the Try* forms return it, the Status forms turn it into a
// status with RefusalCode():
//   INVALID_ARGUMENT     order > MAX_PAGE_ORDER; a bad gfp mask; pfn not aligned to the order;
//                        wrong order for the block; an address that is not a page address
//                        (unaligned, not in the direct map, a kmap address)
//   RESOURCE_EXHAUSTED   no memory: no allowed zone, below the watermarks, no free block; no
//                        free kmap() slot
//   OUT_OF_RANGE         pfn in a hole or beyond the end of RAM
//   FAILED_PRECONDITION  the page is not allocated (double free), is a tail or inside another
//                        block, or is still kmap()ed; a kunmap() without a kmap()
//   PERMISSION_DENIED    the block belongs to another owner
#ifndef PHYSMEM_ALLOCATOR_PAGE_ALLOCATOR_H_
#define PHYSMEM_ALLOCATOR_PAGE_ALLOCATOR_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/arena.h"
#include "allocator/gfp.h"
#include "allocator/highmem.h"
#include "allocator/mem_map.h"
#include "allocator/refusal.h"
#include "allocator/stats.h"
#include "allocator/target.h"
#include "allocator/thread_pages.h"
#include "allocator/vm_event.h"
#include "allocator/watermark.h"
#include "allocator/zone.h"

namespace physmem {

struct PageAllocatorOptions {
  Target target;
  ArenaOptions::Backing arena_backing = ArenaOptions::Backing::kBest;
  std::string arena_path;  // empty: anonymous arena
  uint64_t min_free_kbytes = 0;  // vm.min_free_kbytes; 0 = the kernel's default formula
  uint32_t watermark_scale_factor = kDefaultWatermarkScaleFactor;
  std::array<uint32_t, MAX_NR_ZONES> lowmem_reserve_ratio = kDefaultLowmemReserveRatio;
  bool pcp_enabled = true;  // false: every allocation takes the zone lock (the mutex-buddy baseline)
  uint32_t pcp_batch = 0;   // 0: zone_batchsize()
  uint32_t pcp_high = 0;    // 0: zone_highsize()
  // Per-thread caches of order-0 blocks in front of the per-CPU lists (allocator/thread_pages.h):
  // an in-process pair without a restartable sequence. Off by default: the kernel has no such
  // level, and /proc/zoneinfo's per-CPU counts do not show what they hold.
  bool thread_pages = false;
  int nr_cpus = 0;          // 0: the machine's possible CPUs
  // false: page_group_by_mobility_disabled, as the kernel sets it for small machines: every
  // pageblock and request is UNMOVABLE and claims always succeed. true: grouping on unless the
  // zones are too small (build_all_zonelists()).
  bool page_group_by_mobility = true;
  // The kernel's init_on_free=1 (want_init_on_free()): every freed block is zeroed before it
  // returns to the free lists, so no freed page keeps its bytes. Costs a memset per free.
  bool init_on_free = false;
};

// One allocated block to restore after a crash (RestoreAllocated()).
struct RestoredBlock {
  uint64_t pfn = 0;
  unsigned order = 0;
  uint32_t owner = kNoOwner;
  bool compound = false;  // allocated with __GFP_COMP: tails carry PG_tail
};

// What Validate() counted, for tests that check the books balance.
struct PageCensus {
  uint64_t total_pages = 0;
  uint64_t buddy_free_pages = 0;
  uint64_t pcp_pages = 0;
  uint64_t allocated_pages = 0;
  uint64_t allocated_blocks = 0;
};

class PageAllocator {
 public:
  static constexpr uint32_t kAllZones = (1u << MAX_NR_ZONES) - 1;

  static absl::StatusOr<std::unique_ptr<PageAllocator>> Create(PageAllocatorOptions options);
  ~PageAllocator();
  const PageAllocatorOptions& options() const { return options_; }

  // ---- The kernel's interface (include/linux/gfp.h). Failure is a null value. ----
  // `allowed_zones` (bit z = ZoneType z) removes zones from the zonelist, as a cpuset removes
  // nodes in get_page_from_freelist() (__cpuset_zone_allowed): the server uses it to keep a
  // client out of zones where it reached its per-identity share. Default: every zone.
  Page* alloc_pages(gfp_t gfp, unsigned order, uint32_t owner = kNoOwner, uint32_t allowed_zones = kAllZones);
  Page* alloc_page(gfp_t gfp, uint32_t owner = kNoOwner) { return alloc_pages(gfp, 0, owner); }
  // Address forms: a direct-map (lowmem) address, or 0. __GFP_HIGHMEM is stripped, as the
  // kernel's __get_free_pages() does, because a highmem page has no permanent address.
  uint64_t __get_free_pages(gfp_t gfp, unsigned order, uint32_t owner = kNoOwner);
  uint64_t __get_free_page(gfp_t gfp, uint32_t owner = kNoOwner) { return __get_free_pages(gfp, 0, owner); }
  uint64_t get_zeroed_page(gfp_t gfp, uint32_t owner = kNoOwner) {
    return __get_free_pages(gfp | __GFP_ZERO, 0, owner);
  }
  absl::Status __free_pages(Page* page, unsigned order, uint32_t owner = kNoOwner);
  // The trusted free, for callers whose own books already exclude double frees (the server's
  // lease book): free_unref_page() without the bad-page checks of free_pages_prepare(). It skips
  // only what the caller guarantees, that `page` heads an allocated block of `order` owned by
  // `owner`, and with them the CAS that makes a racing double free harmless; in PHYSMEM_DCHECK
  // builds (tests, sanitizers) it still checks and claims, and a broken promise aborts. A highmem
  // block, a compound block and init_on_free take __free_pages() (kmap()ed pages are refused with
  // its status). Breaking the promise in a Release build corrupts the free lists.
  absl::Status __free_pages_trusted(Page* page, unsigned order, uint32_t owner = kNoOwner);
  absl::Status __free_page(Page* page, uint32_t owner = kNoOwner) { return __free_pages(page, 0, owner); }
  // free_pages(0, order) does nothing, as in the kernel.
  absl::Status free_pages(uint64_t addr, unsigned order, uint32_t owner = kNoOwner);
  absl::Status free_page(uint64_t addr, uint32_t owner = kNoOwner) { return free_pages(addr, 0, owner); }
  // alloc_pages_bulk() (6.12 alloc_pages_bulk_noprof()): order-0 pages into the null slots of
  // page_array[0..nr). One zone that passes LOW + nr serves them from its per-CPU list; when no
  // zone qualifies, one page is wanted, or the list cannot give even the first page, exactly one
  // page goes through the full allocator and the call returns. A list that runs dry after giving
  // some pages ends the call. Returns the kernel's nr_populated: slots [0, result) are all
  // populated (those that already were count too); a null slot may follow. Often fewer than nr:
  // callers that need them all loop, as AllocPagesBulkFill() does.
  unsigned alloc_pages_bulk(gfp_t gfp, unsigned nr, Page** page_array, uint32_t owner = kNoOwner,
                            uint32_t allowed_zones = kAllZones);
  // alloc_pages_bulk() again while it makes progress, as the kernel's callers do
  // (vm_area_alloc_pages(), svc_alloc_arg()): returns less than nr only when a call added nothing,
  // i.e. even the full allocator found no page. The service's AllocPagesBulk uses this.
  unsigned AllocPagesBulkFill(gfp_t gfp, unsigned nr, Page** page_array, uint32_t owner = kNoOwner,
                              uint32_t allowed_zones = kAllZones);
  // Emulated kernel virtual address: PAGE_OFFSET + (phys - PHYS_OFFSET) for lowmem; for highmem
  // the kmap() address if mapped, else 0 (null).
  uint64_t page_address(const Page* page) const;
  // page_count() = folio_ref_count(page_folio(page)): the real reference count. An allocated
  // block's head holds the one reference the allocation gave it (set_page_refcounted() in
  // post_alloc_hook()); nothing else takes references (we model no get_page()/put_page() sharing,
  // and __free_pages() drops that one reference), so it is 1 while allocated and 0 when free. A
  // compound (__GFP_COMP) tail reports its head's count; a tail of a non-compound block reports
  // 0, as the kernel's does (only the first page is refcounted).
  int page_count(const Page* page) const;
  absl::StatusOr<uint64_t> kmap(Page* page, uint32_t owner = kNoOwner) { return TryKmap(page, owner).ToStatusOr(); }
  absl::Status kunmap(Page* page, uint32_t owner = kNoOwner) { return ToStatus(TryKunmap(page, owner)); }
  uint64_t drain_all_pages();

  // ---- The same with reasons, for the service (allocator/refusal.h). ----
  // kOrderTooHigh, kInvalidGfp, or AllocFailure()'s reason when no allowed zone could serve it.
  RefusalOr<Page*> TryAllocPages(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones = kAllZones);
  absl::StatusOr<Page*> AllocPages(gfp_t gfp, unsigned order, uint32_t owner) {
    return TryAllocPages(gfp, order, owner).ToStatusOr();
  }
  // Why an allocation of `order` with `gfp` (in `allowed_zones`) finds nothing now: kNoZone,
  // kBelowWatermark or kNoFreeBlock (or the argument refusals), detail "no free order-N block
  // for GFP: zones tried: ..." (ExplainAllocFailure). Read after the failure, so a racing free
  // may already have changed the picture; the reason is for counting and wording, not retrying.
  Refusal AllocFailure(gfp_t gfp, unsigned order, uint32_t allowed_zones = kAllZones) const;
  // Each zone of gfp's zonelist with its free pages, largest free order, min watermark and
  // lowmem_reserve ("zones tried: ..."). For error messages.
  std::string ExplainAllocFailure(gfp_t gfp) const;
  // Frees the block at pfn, or returns why not (nothing changed then): kOrderTooHigh,
  // kPfnOutOfRange, kMisaligned, kNotAllocated, kTailPage, kInsideBlock, kWrongOwner, kWrongOrder,
  // kStillMapped, kCommitFailed. `commit`, if set, is called once the free is certain (every check
  // passed, the block claimed) and before the block can be handed out again; if it fails the
  // block stays allocated (kCommitFailed, its status the cause). The server's journal records the
  // free there (server/journal.h).
  std::optional<Refusal> TryFreePfn(uint64_t pfn, unsigned order, uint32_t owner,
                                    const std::function<absl::Status()>& commit = {});
  absl::Status FreePfn(uint64_t pfn, unsigned order, uint32_t owner);
  absl::Status FreePfn(uint64_t pfn, unsigned order, uint32_t owner, const std::function<absl::Status()>& commit);
  RefusalOr<Page*> TryPfnToPage(uint64_t pfn) const;  // kPfnOutOfRange for holes / beyond RAM
  absl::StatusOr<Page*> PfnToPage(uint64_t pfn) const;
  // virt_to_page() of a direct-map address: the kAddr* reasons, or TryPfnToPage()'s.
  RefusalOr<Page*> TryVirtToPage(uint64_t addr) const;
  absl::StatusOr<Page*> VirtToPage(uint64_t addr) const;
  // The allocated block that contains pfn (its head), whoever owns it; nullptr if pfn is free.
  Page* AllocatedBlockContaining(uint64_t pfn) const;
  // What the allocator records of that block, for callers that check their own books against it
  // (the lessor's invariant) rather than read page state words themselves.
  struct BlockInfo {
    Page* head = nullptr;
    unsigned order = 0;
    uint32_t owner = kNoOwner;
    bool compound = false;  // PageHead(): allocated with __GFP_COMP
  };
  std::optional<BlockInfo> AllocatedBlockAt(uint64_t pfn) const;
  // The head of the allocated block containing pfn if `owner` holds it. kPfnOutOfRange for a
  // hole or beyond RAM, kNotAllocated "pfn .. is not allocated", kWrongOwner if another owner
  // holds it (the detail names neither owner: the caller knows whom to name).
  RefusalOr<Page*> TryOwnedBlockContaining(uint64_t pfn, uint32_t owner) const;
  absl::StatusOr<Page*> OwnedBlockContaining(uint64_t pfn, uint32_t owner) const {
    return TryOwnedBlockContaining(pfn, owner).ToStatusOr();
  }
  // kmap(): the page's emulated kernel virtual address, mapping a HIGHMEM page into the pkmap
  // window (kmap_high()); a lowmem page's is page_address(). The page must lie in a block `owner`
  // holds: kNotAllocated "kmap: pfn .. is not allocated", kWrongOwner (the detail names both
  // owners; the server words it without them), kKmapWindowFull.
  RefusalOr<uint64_t> TryKmap(Page* page, uint32_t owner = kNoOwner);
  // kunmap(): drops one kmap() user of a HIGHMEM page (kunmap_high()). The same ownership checks
  // as TryKmap for every page, lowmem included, where there is nothing to undo but a free page or
  // another owner's is still a wrong call; kNotKmapped for a highmem page without a user.
  std::optional<Refusal> TryKunmap(Page* page, uint32_t owner = kNoOwner);
  // page_mapcount(): the page's kmap() count (HIGHMEM pages; 0 for lowmem).
  int page_mapcount(const Page* page) const { return page->mapcount.load(std::memory_order_seq_cst); }

  // ---- Crash recovery (allocator/restore.cc). ----
  // On an allocator that has handed out nothing yet, marks `blocks` allocated to their owners and
  // rebuilds every zone's buddy lists from the rest in one pass (no allocation-by-allocation
  // replay). Every block must be a valid, aligned block of RAM inside one zone, owned (owner !=
  // 0), and no two may overlap; otherwise DATA_LOSS names the first bad block and nothing
  // changes. FAILED_PRECONDITION if anything is allocated or on a per-CPU list already.
  // `blocks` is sorted in place. Not thread-safe: call before serving.
  absl::Status RestoreAllocated(std::vector<RestoredBlock>& blocks);

  // ---- Translation. ----
  uint64_t page_to_pfn(const Page* page) const { return mem_map_->index_to_pfn(mem_map_->index_of(page)); }
  uint64_t page_to_phys(const Page* page) const { return page_to_pfn(page) << target_.page_shift; }
  ZoneType page_zonenum(const Page* page) const { return ZoneOfIndex(mem_map_->index_of(page)); }
  uint64_t arena_offset(const Page* page) const { return uint64_t{mem_map_->index_of(page)} << target_.page_shift; }
  std::byte* page_host_address(const Page* page) const { return arena_->base() + arena_offset(page); }

  // ---- Introspection. ----
  const Target& target() const { return target_; }
  const Arena& arena() const { return *arena_; }
  Arena& arena() { return *arena_; }  // Prefault() for benchmarks
  const MemMap& mem_map() const { return *mem_map_; }
  bool pcp_active() const;  // per-CPU lists on (requested, and rseq usable in this process)
  bool thread_pages_active() const { return thread_pages_.enabled(); }  // options.thread_pages, and usable
  std::vector<ZoneStats> Stats() const;  // configured zones, lowest first
  std::string Buddyinfo() const;         // /proc/buddyinfo text, populated zones only
  std::string Pagetypeinfo() const;      // /proc/pagetypeinfo text (FormatPagetypeinfo())
  std::string Zoneinfo() const;          // /proc/zoneinfo text (FormatZoneinfo())
  // The kernel configuration /proc/zoneinfo models for this target: page shift, CPUs, and
  // CONFIG_ZONE_DEVICE on 64-bit targets. For FormatZoneinfo() over a snapshot of Stats().
  ZoneinfoConfig zoneinfo_config() const;
  unsigned pageblock_order() const { return pageblock_order_; }
  bool group_by_mobility_disabled() const { return group_by_mobility_disabled_; }
  // get_pageblock_migratetype() of the pageblock holding pfn's page (tests, the reference model).
  int pageblock_migratetype(const Page* page) const {
    const uint32_t idx = mem_map_->index_of(page);
    return zone(ZoneOfIndex(idx))->pageblock_migratetype(idx);
  }
  // Event counters summed over all threads (allocator/vm_event.h): allocations, failures,
  // fallbacks, frees, zeroed pages. Counts of calls still running may or may not be in it.
  // The counted events plus the frees the per-CPU lists counted themselves (their rings' push
  // counts; the free paths count only frees that did not go onto a list).
  VmEventCounts VmEvents() const;
  // Every page free on exactly one list or inside exactly one allocated block; counts agree.
  absl::StatusOr<PageCensus> Validate() const;

 private:
  friend class ArenaMapWalker;  // allocator/arena_map.cc: reads the zones for the arena map

  explicit PageAllocator(PageAllocatorOptions options);
  absl::Status Init();

  ZoneType ZoneOfIndex(uint32_t idx) const;
  Zone* zone(ZoneType z) const { return zones_[z].get(); }
  // get_page_from_freelist(): the first zone from `highest` down that passes the watermark.
  // With ALLOC_NOFRAGMENT, a walk that finds nothing is repeated without it.
  std::optional<uint32_t> GetPageFromFreelist(unsigned order, int mt, unsigned alloc_flags, ZoneType highest,
                                              ZoneType* got_zone, uint32_t allowed_zones = kAllZones);
  bool MobilityGroupingTooSmall(const std::array<uint64_t, MAX_NR_ZONES>& managed,
                                const std::array<Watermarks, MAX_NR_ZONES>& wmarks, unsigned pageblock_order) const;
  unsigned AllocFlagsNofragment(ZoneType highest) const;
  int AllocMigratetype(gfp_t gfp) const;
  // unreserve_highatomic_pageblock() over the zonelist: true after the first conversion.
  bool UnreserveHighatomic(ZoneType highest, uint32_t allowed_zones, int mt, bool force);
  unsigned BulkFallbackOnePage(gfp_t gfp, unsigned nr_populated, Page** page_array, uint32_t owner,
                               uint32_t allowed_zones);
  // alloc_pages() after its per-CPU fast path (allocator/pcp_fast_path.h): argument checks, the
  // zonelist walk at LOW, then AllocSlow().
  Page* AllocFromFreelist(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones);
  // __free_pages() after its inline fast path: every check, with the reason for a refusal.
  absl::Status FreePagesSlow(Page* page, unsigned order, uint32_t owner);
  Page* AllocSlow(gfp_t gfp, unsigned order, uint32_t owner, ZoneType highest, uint32_t allowed_zones);
  Page* PrepNewPage(uint32_t idx, unsigned order, gfp_t gfp, uint32_t owner);
  std::optional<Refusal> ValidateAllocArgs(gfp_t gfp, unsigned order) const;
  Refusal OrderTooHigh(unsigned order) const;
  std::optional<Refusal> FreeBlock(Page* page, unsigned order, uint32_t owner,
                                   const std::function<absl::Status()>* commit = nullptr);
  Refusal DiagnoseBadFree(uint32_t idx, PageState s, unsigned order, uint32_t owner) const;
  std::optional<uint32_t> FindAllocatedHead(uint32_t idx) const;
  // Zone::FreeBlock() of a claimed block, and its vm event: a block that went onto a per-CPU list
  // is counted by the list's own push count (VmEvents() adds those), any other here. Every free
  // path ends here, so the count is exact whichever path freed.
  void FreeToZone(Zone* zn, ZoneType zt, Page* head, uint32_t idx, unsigned order);
  // The same, and alloc_pages()' and __free_pages()' fast paths, compiled once with thread pages
  // and once without, so that the per-CPU lists' own path pays one test for them, not one per step.
  template <bool kThreadPages>
  void FreeToZoneAs(Zone* zn, ZoneType zt, Page* head, uint32_t idx, unsigned order);
  template <bool kThreadPages>
  Page* AllocPagesFast(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones);
  template <bool kThreadPages>
  absl::Status FreePagesFast(Page* page, unsigned order, uint32_t owner);
  absl::Status ValidateThreadPages(std::vector<uint8_t>& seen, uint64_t* pcp_pages) const;
  // The trusted free's claim of a block whose state is `word`: a plain store of `free_word`, or
  // in PHYSMEM_DCHECK builds the checked free's CAS, dying if another caller freed it meanwhile.
  void ClaimTrusted(Page* page, uint64_t word, uint64_t free_word, uint32_t idx, unsigned order, uint32_t owner);
  // TryKmap's and TryKunmap's check: the page lies in a block `owner` holds.
  std::optional<Refusal> CheckKmapOwner(uint32_t idx, uint32_t owner, std::string_view call) const;

  PageAllocatorOptions options_;
  Target target_;
  // The highest order the per-CPU lists take on this target: min(PAGE_ALLOC_COSTLY_ORDER,
  // MAX_PAGE_ORDER), so that the fast path tests the order with one compare.
  const unsigned pcp_max_order_ = std::min(PAGE_ALLOC_COSTLY_ORDER, target_.max_page_order);
  VmEventCounters vm_events_;  // per-thread blocks: counting takes no lock and shares no line
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<MemMap> mem_map_;
  std::array<std::unique_ptr<Zone>, MAX_NR_ZONES> zones_;
  std::array<uint32_t, MAX_NR_ZONES> zone_index_end_{};  // zones occupy consecutive index ranges
  std::array<int8_t, 16> gfp_zone_table_{};               // gfp_zone() per zone-modifier bits; -1 = bad
  // The first populated zone of each zonelist (by highest zone): where the fast path looks.
  std::array<Zone*, MAX_NR_ZONES> first_zone_{};
  std::unique_ptr<PkmapWindow> pkmap_;
  // After zones_: destroyed first, so a thread leaving it never finds the zones gone. In place:
  // the fast path reaches its id with no load of a pointer.
  ThreadPages thread_pages_;
  // PageTag() of every page (Pageblocks::AttachPageTags()), when thread pages are on; else null.
  std::unique_ptr<std::atomic<uint8_t>[]> page_tags_;
  uint64_t lowmem_end_pfn_ = 0;
  unsigned pageblock_order_ = 0;
  bool group_by_mobility_disabled_ = false;
  int nr_cpus_ = 1;  // CPUs the per-CPU lists are built for (set once in Init())
};

}  // namespace physmem

#include "allocator/pcp_fast_path.h"  // the inline fast paths of alloc_pages() and the trusted free

#endif  // PHYSMEM_ALLOCATOR_PAGE_ALLOCATOR_H_
