// struct zone: one zone's buddy allocator, per-CPU lists, watermarks and lowmem_reserve.
//
// Who uses it: PageAllocator, which walks a zonelist of Zones from the highest allowed zone
// down. Thread-safety: all methods may be called concurrently.
//
// Synchronization:
//   lock_         guards buddy_ (free_area lists, nr_free) and nothing else. Held for one buddy
//                 operation, or for one batched refill/drain of a per-CPU list. Lock order: a
//                 thread holds at most one zone lock at a time; no other lock is taken under it.
//   pcp_          lock-free per-CPU rings (per_cpu_pages.h): the alloc/free fast path for orders
//                 0..3 takes no lock at all.
//   free_pages_, nonempty_orders_  atomic mirrors of the buddy's counts, published under lock_ after
//                 every change and read without it by the watermark check (the kernel reads
//                 NR_FREE_PAGES and free_area[].nr_free locklessly the same way).
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
#include <mutex>
#include <optional>
#include <vector>

#include "allocator/buddy.h"
#include "allocator/mem_map.h"
#include "allocator/per_cpu_pages.h"
#include "allocator/stats.h"
#include "allocator/watermark.h"
#include "allocator/zone_type.h"

namespace physmem {

inline constexpr unsigned kMaxNrOrders = 16;

struct ZoneConfig {
  ZoneType type = ZONE_NORMAL;
  uint64_t start_pfn = 0;  // zone_start_pfn: first pfn the zone spans
  uint64_t end_pfn = 0;    // exclusive end of the span (spanned = end - start, holes included)
  std::vector<Segment> segments;
  unsigned nr_orders = 11;
  unsigned page_shift = 12;
  int nr_cpus = 1;
  bool pcp_enabled = true;
  uint32_t pcp_batch = 0;  // 0: zone_batchsize()
  uint32_t pcp_high = 0;   // 0: zone_highsize()
};

class Zone {
 public:
  Zone(const MemMap& mem_map, ZoneConfig config);

  // Set once, before first use (they feed the per-CPU high limit, as in the kernel).
  void SetWatermarks(const Watermarks& w, const std::array<uint64_t, MAX_NR_ZONES>& lowmem_reserve);

  ZoneType type() const { return config_.type; }
  bool populated() const { return present_pages_ != 0; }
  uint64_t managed_pages() const { return present_pages_; }
  const Watermarks& watermarks() const { return wmark_; }
  uint64_t lowmem_reserve(ZoneType highest) const { return lowmem_reserve_[highest]; }
  uint64_t buddy_free_pages() const { return free_pages_.load(std::memory_order_relaxed); }
  PerCpuPages& pcp() { return *pcp_; }

  // __zone_watermark_ok() against this zone's mark, for a request whose highest allowed zone is
  // `highest` (that selects the lowmem_reserve entry).
  bool WatermarkOk(unsigned order, uint64_t mark, ZoneType highest, unsigned alloc_flags) const;

  // The allocation fast path's watermark check: order <= 3, ALLOC_WMARK_LOW, no reserve
  // discounts. Reads two atomics; no copying.
  bool FastWatermarkOk(unsigned order, ZoneType highest) const {
    const uint64_t free = free_pages_.load(std::memory_order_relaxed);
    return free > wmark_.low + lowmem_reserve_[highest] + ((uint64_t{1} << order) - 1) &&
           (order == 0 || (nonempty_orders_.load(std::memory_order_relaxed) >> order) != 0);
  }
  // A block from the current CPU's list, or false (empty, or the lists are off): no lock.
  bool PcpPop(unsigned order, uint32_t* idx) { return pcp_enabled_ && pcp_->Pop(order, idx); }

  // rmqueue(): a free block of `order`, or nullopt. Orders 0..3 come from the current CPU's list
  // (refilled from the buddy in one lock hold when empty); larger orders from the buddy.
  // The returned block belongs to the caller, who overwrites its head state (left PG_pcp or 0).
  std::optional<uint32_t> Rmqueue(unsigned order);
  // Takes back a block the caller has claimed by moving its head state to FreeState(order):
  // onto the current CPU's list, draining a batch to the buddy first when the list is at high.
  void FreeBlock(uint32_t idx, unsigned order) {
    if (pcp_allowed_order(order) && pcp_enabled_ && pcp_->Push(order, idx)) [[likely]] return;
    FreeBlockSlow(idx, order);
  }
  // The head state a block must carry when handed to FreeBlock(): PagePcp for orders the per-CPU
  // lists take (so the block never looks allocated, nor mergeable, while on a list), else 0.
  uint64_t FreeState(unsigned order) const {
    return pcp_allowed_order(order) && pcp_enabled_ ? PageState::Pcp(order) : 0;
  }
  // The buddy-only path (pcp bypassed), used for non-pcp orders and as the fallback.
  std::optional<uint32_t> RmqueueBuddy(unsigned order);
  void FreeToBuddy(uint32_t idx, unsigned order);

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
  void PublishLocked();  // copies buddy counts into the lock-free mirrors
  void FreeBlockSlow(uint32_t idx, unsigned order);
  std::optional<uint32_t> RefillAndTake(unsigned order);
  void DrainBatch(unsigned order);
  void FreeBlocksToBuddy(const uint32_t* idx, uint32_t n, unsigned order);

  const MemMap& mem_map_;
  ZoneConfig config_;
  uint64_t present_pages_ = 0;
  Watermarks wmark_;
  std::array<uint64_t, MAX_NR_ZONES> lowmem_reserve_{};

  mutable std::mutex lock_;
  Buddy buddy_;  // guarded by lock_
  std::atomic<uint64_t> free_pages_{0};
  std::atomic<uint32_t> nonempty_orders_{0};  // bit o: free_area[o] has a block
  std::unique_ptr<PerCpuPages> pcp_;
  bool pcp_enabled_ = false;  // pcp_->enabled(), cached: read on every fast-path call
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_ZONE_H_
