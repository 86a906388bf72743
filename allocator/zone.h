// struct zone: one zone's buddy allocator, per-CPU lists, watermarks and lowmem_reserve.
//
// Who uses it: PageAllocator, which walks a zonelist of Zones from the highest allowed zone
// down. Thread-safety: all methods may be called concurrently.
//
// Synchronization:
//   lock_         guards buddy_ (free_area lists, nr_free, the highatomic reserve, the mobility
//                 counters) and writes of pageblock types (pageblocks_). Held for one buddy
//                 operation, or for one batched refill/drain of a per-CPU list. Lock order: a
//                 thread holds at most one zone lock at a time; no other lock is taken under it.
//   pcp_          lock-free per-CPU rings (per_cpu_pages.h): the alloc/free fast path for orders
//                 0..3 takes no lock at all.
//   free_pages_, usable_free_, nonempty_orders_  atomic mirrors of the buddy's counts, published
//                 under lock_ after every change and read without it by the watermark check (the
//                 kernel reads NR_FREE_PAGES, nr_free_highatomic and free_area[] locklessly the
//                 same way).
//   pageblocks_   types read without lock_ by the per-CPU free path (free_unref_page()'s
//                 get_pfnblock_migratetype() is a READ_ONCE too); a stale read only puts the page
//                 on another type's per-CPU list, and the buddy re-reads the type when it drains.
//   Watermarks and lowmem_reserve are set once before the zone is used, then read-only.
//
// Free pages of the zone = buddy free pages (Σ nr_free[o] << o, the kernel's NR_FREE_PAGES) +
// pages on per-CPU lists. Watermark checks use the buddy part only, as the kernel's do.
#ifndef PHYSMEM_ALLOCATOR_ZONE_H_
#define PHYSMEM_ALLOCATOR_ZONE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "allocator/buddy.h"
#include "allocator/mem_map.h"
#include "allocator/migratetype.h"
#include "allocator/mutex.h"
#include "allocator/pageblock.h"
#include "allocator/per_cpu_pages.h"
#include "allocator/stats.h"
#include "allocator/watermark.h"
#include "allocator/zone_type.h"

namespace physmem {

struct ZoneConfig {
  ZoneType type = ZONE_NORMAL;
  uint64_t start_pfn = 0;  // zone_start_pfn: first pfn the zone spans
  uint64_t end_pfn = 0;    // exclusive end of the span (spanned = end - start, holes included)
  uint64_t present_pages = 0;  // RAM pages in the span, memblock-reserved ones included
  // The RAM of the zone as pfn ranges [first, second), reserved pages included: where the kernel
  // has a struct page (pfn_to_online_page()), which pagetypeinfo's block count walks.
  std::vector<std::pair<uint64_t, uint64_t>> present_ranges;
  std::vector<Segment> segments;  // the managed RAM: present minus reserved
  unsigned nr_orders = 11;
  unsigned page_shift = 12;
  int nr_cpus = 1;
  bool pcp_enabled = true;
  uint32_t pcp_batch = 0;  // 0: zone_batchsize()
  uint32_t pcp_high = 0;   // 0: zone_highsize()
  unsigned pageblock_order = 9;
  bool group_by_mobility_disabled = false;  // page_group_by_mobility_disabled
};

class Zone {
 public:
  Zone(const MemMap& mem_map, ZoneConfig config);

  // Set once, before first use (they feed the per-CPU high limit, as in the kernel).
  void SetWatermarks(const Watermarks& w, const std::array<uint64_t, MAX_NR_ZONES>& lowmem_reserve);

  ZoneType type() const { return config_.type; }
  bool populated() const { return present_pages_ != 0; }  // populated_zone()
  // present - reserved (zone_managed_pages()): what watermarks, batch and the highatomic cap
  // are computed from. ValidateTarget() keeps it > 0 in a populated zone.
  uint64_t managed_pages() const { return managed_pages_; }
  const Watermarks& watermarks() const { return wmark_; }
  uint64_t lowmem_reserve(ZoneType highest) const { return lowmem_reserve_[highest]; }
  uint64_t buddy_free_pages() const { return free_pages_.load(std::memory_order_relaxed); }
  PerCpuPages& pcp() { return *pcp_; }

  // __zone_watermark_ok() against this zone's mark, for a request whose highest allowed zone is
  // `highest` (that selects the lowmem_reserve entry).
  bool WatermarkOk(unsigned order, uint64_t mark, ZoneType highest, unsigned alloc_flags) const;

  // The allocation fast path's watermark check: order <= 3, ALLOC_WMARK_LOW, no reserve
  // discounts, so the free highatomic pages do not count (__zone_watermark_unusable_free()).
  // Reads two atomics; no copying.
  bool FastWatermarkOk(unsigned order, ZoneType highest) const {
    const uint64_t free = usable_free_.load(std::memory_order_relaxed);
    return free > wmark_.low + lowmem_reserve_[highest] + ((uint64_t{1} << order) - 1) &&
           (order == 0 || ((nonempty_orders_.load(std::memory_order_relaxed) & kPcptypeOrderMask) >> order) != 0);
  }
  // A block from the current CPU's list of (order, mt), or false (empty, or the lists are off):
  // no lock. mt < MIGRATE_PCPTYPES.
  bool PcpPop(unsigned order, int mt, uint32_t* idx) { return pcp_enabled_ && pcp_->Pop(order, mt, idx); }

  // rmqueue(): a free block of `order` for migratetype `mt`, or nullopt. Orders 0..3 come from
  // the current CPU's list (refilled from the buddy in one lock hold when empty; an
  // ALLOC_HIGHATOMIC request is not refilled and goes to the buddy); larger orders from the buddy
  // (rmqueue_buddy()). The returned block belongs to the caller, who overwrites its head state.
  std::optional<uint32_t> Rmqueue(unsigned order, int mt, unsigned alloc_flags);
  // Takes back a block the caller has claimed by moving its head state to FreeState(order):
  // onto the current CPU's list of its pageblock's type, draining a batch to the buddy first
  // when the list is at high. True when the block went onto a per-CPU list: that free is
  // counted by the list's own push count (PcpFrees()), so the caller counts only the others.
  bool FreeBlock(uint32_t idx, unsigned order) {
    if (pcp_allowed_order(order) && pcp_enabled_ && pcp_->Push(order, PcpFreeType(idx), idx)) [[likely]] return true;
    return FreeBlockSlow(idx, order);
  }
  // Blocks of `order` that FreeBlock() put onto a per-CPU list, over every CPU and type: the
  // rings' exact push counts (0 for orders the lists do not take). Racy while frees run.
  uint64_t PcpFrees(unsigned order) const;
  // The head state a block must carry when handed to FreeBlock(): PagePcp for orders the per-CPU
  // lists take (so the block never looks allocated, nor mergeable, while on a list), else 0.
  uint64_t FreeState(unsigned order) const {
    return pcp_allowed_order(order) && pcp_enabled_ ? PageState::Pcp(order) : 0;
  }
  // The buddy-only path (pcp bypassed), used for non-pcp orders and as the fallback.
  std::optional<uint32_t> RmqueueBuddy(unsigned order, int mt, unsigned alloc_flags);
  void FreeToBuddy(uint32_t idx, unsigned order);
  // free_pcppages_bulk(): n blocks of `order` (claimed, off every list) back to the buddy in one
  // lock hold.
  void FreeBlocksToBuddy(const uint32_t* idx, uint32_t n, unsigned order);
  // Starts the per-page mirror of this zone's pageblock types that the thread caches read
  // (Pageblocks::AttachPageTags()). Before the zone serves anything.
  void AttachPageTags(std::atomic<uint8_t>* tags) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    pageblocks_.AttachPageTags(tags, config_.segments, config_.type);
  }

  // reserve_highatomic_pageblock() after a successful ALLOC_HIGHATOMIC allocation of `idx`.
  void ReserveHighatomic(uint32_t idx, unsigned order);
  // unreserve_highatomic_pageblock() for this zone; true if a pageblock was converted to `mt`.
  bool UnreserveHighatomic(bool force, int mt);
  // The migratetype of the pageblock holding page `idx` (get_pageblock_migratetype()).
  int pageblock_migratetype(uint32_t idx) const { return pageblocks_.Get(PfnOf(idx)); }
  unsigned pageblock_order() const { return pageblocks_.order(); }
  bool group_by_mobility_disabled() const { return pageblocks_.group_by_mobility_disabled(); }

  // Crash recovery (allocator/restore.cc): on a zone that has served nothing yet, rebuilds the
  // buddy lists around `allocated` (page index, order; ascending). The caller writes the
  // allocated blocks' head states.
  void RebuildFreeAround(const std::vector<std::pair<uint32_t, unsigned>>& allocated);

  // drain_all_pages(zone): returns every CPU's listed blocks to the buddy. Returns pages moved.
  uint64_t DrainAllPcp();

  ZoneStats Stats() const;
  // Checks this zone's lists against page states; marks every free page in `seen` (one bit per
  // page index). Call only while no allocation or free runs on this zone.
  absl::Status ValidateFree(std::vector<uint8_t>& seen, uint64_t* pcp_pages) const;

 private:
  friend class ArenaMapWalker;  // allocator/arena_map.cc: walks page states under lock_, pageblock by pageblock

  // Bits 0..15 of nonempty_orders_: order o has a free block of an UNMOVABLE/MOVABLE/RECLAIMABLE
  // list; bits 16..31: of the HIGHATOMIC list (__zone_watermark_ok() counts those only for
  // ALLOC_HIGHATOMIC and ALLOC_OOM).
  static constexpr uint32_t kPcptypeOrderMask = 0xffff;

  // Reads only the buddy's segment geometry, fixed at construction: no lock needed.
  uint64_t PfnOf(uint32_t idx) const ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const Segment& s = config_.segments.front();  // most zones are one segment
    return s.contains_index(idx) ? s.pfn_of(idx) : buddy_.pfn_of(idx);
  }
  // free_unref_page(): the per-CPU list a freed block joins is its pageblock's type
  // (pcp_list_type(): HIGHATOMIC on MOVABLE's). The first segment's pages (most zones have one)
  // find their pageblock from the page index alone: offset from the pageblocks' base = idx + first_seg_pb_bias_ (precomputed, modulo 2^64).
  int PcpFreeType(uint32_t idx) const {
    const int mt = idx - first_seg_index_ < first_seg_pages_ ? pageblocks_.GetAtOffset(idx + first_seg_pb_bias_)
                                                             : pageblocks_.Get(PfnOf(idx));
    return pcp_list_type(mt);
  }
  void PublishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);  // copies buddy counts into the lock-free mirrors
  bool FreeBlockSlow(uint32_t idx, unsigned order);
  std::optional<uint32_t> RefillAndTake(unsigned order, int mt, unsigned alloc_flags);
  void DrainBatch(unsigned order, int mt);

  const MemMap& mem_map_;
  ZoneConfig config_;
  uint64_t present_pages_ = 0;
  uint64_t managed_pages_ = 0;
  Watermarks wmark_;
  std::array<uint64_t, MAX_NR_ZONES> lowmem_reserve_{};

  mutable Mutex lock_;
  Pageblocks pageblocks_;  // writes under lock_; read without it (see the header comment)
  Buddy buddy_ ABSL_GUARDED_BY(lock_);
  std::atomic<uint64_t> free_pages_{0};
  std::atomic<uint64_t> usable_free_{0};      // free_pages_ - nr_free_highatomic
  std::atomic<uint32_t> nonempty_orders_{0};  // see kPcptypeOrderMask
  std::unique_ptr<PerCpuPages> pcp_;
  bool pcp_enabled_ = false;  // pcp_->enabled(), cached: read on every fast-path call
  // PcpFreeType()'s view of config_.segments.front() (fixed at construction; 0 pages if none).
  uint32_t first_seg_index_ = 0;
  uint32_t first_seg_pages_ = 0;
  uint64_t first_seg_pb_bias_ = 0;  // start_pfn - first_index - pageblocks_.base_pfn()
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_ZONE_H_
