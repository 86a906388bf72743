// Per-CPU page lists of one zone (the kernel's struct per_cpu_pages, "pcp"): per CPU, one list per
// order 0..PAGE_ALLOC_COSTLY_ORDER and migratetype UNMOVABLE/MOVABLE/RECLAIMABLE in front of the
// buddy (NR_LOWORDER_PCP_LISTS = 12, order_to_pindex(mt, o) = 3 * o + mt), so that small
// allocations and frees take no lock. A free goes to the list of its pageblock's type, HIGHATOMIC
// onto MOVABLE's (free_unref_page()); a refill fills the requesting type's list with whatever
// __rmqueue() found, fallbacks included (rmqueue_bulk()). Not modelled: the two THP lists
// (NR_PCP_THP) for pageblock_order blocks; those go through the buddy.
//
// Who uses it: Zone, which owns one and moves blocks between it and the buddy (refill under the
// zone lock when a list is empty, drain under the zone lock when a list reaches `high`, drain of
// every CPU before an allocation is declared failed).
// Thread-safety: the fast path (PopHot/PushHot) is lock-free and runs on the caller's current
// CPU through restartable sequences (per_cpu_ring.h); remote drains are serialized inside the
// ring; all methods may be called from any thread.
//
// Sizing follows the kernel (zone_batchsize(), zone_highsize() of 6.7+ with auto-tuning off):
//   batch = rounddown_pow_of_two(b + b/2) - 1 with b = min(managed >> 10, 1 MiB / PAGE_SIZE) / 4,
//           at least 1 (63 for zones of 1 GiB and more, 15 for 256 MiB)
//   high  = max(low watermark / CPUs, 4 * batch)  (pages)
// Where we differ, and why: the kernel's pcp->count and high are in pages across all of a CPU's
// lists, adjusted in one locked section. Our lists are independent lock-free rings whose single
// committing store cannot also update a shared page count, so each order's list has its own limit:
// high >> order blocks (that is, up to `high` pages per order and migratetype). Refill of order o takes
// batch_o = batch (order 0) or max(batch >> o, 2) blocks, as nr_pcp_alloc() does without scaling.
#ifndef PHYSMEM_ALLOCATOR_PER_CPU_PAGES_H_
#define PHYSMEM_ALLOCATOR_PER_CPU_PAGES_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "allocator/migratetype.h"
#include "allocator/per_cpu_ring.h"

namespace physmem {

inline constexpr unsigned PAGE_ALLOC_COSTLY_ORDER = 3;
inline constexpr unsigned NR_PCP_ORDERS = PAGE_ALLOC_COSTLY_ORDER + 1;

inline constexpr bool pcp_allowed_order(unsigned order) { return order <= PAGE_ALLOC_COSTLY_ORDER; }
inline constexpr int NR_PCP_LISTS = static_cast<int>(NR_PCP_ORDERS) * MIGRATE_PCPTYPES;
// order_to_pindex(): the list of (order, migratetype), for order <= PAGE_ALLOC_COSTLY_ORDER and
// migratetype < MIGRATE_PCPTYPES.
inline constexpr int order_to_pindex(int mt, unsigned order) { return MIGRATE_PCPTYPES * static_cast<int>(order) + mt; }

// zone_batchsize(): blocks moved per refill or drain, from the zone's managed pages.
uint32_t ZoneBatchsize(uint64_t managed_pages, unsigned page_shift);
// zone_highsize() with high_fraction 0: the per-CPU high limit in pages.
uint32_t ZoneHighsize(uint64_t low_wmark, uint32_t batch, int nr_cpus);

struct PcpCpuStats {
  int cpu = 0;
  uint64_t count = 0;    // pages on this CPU's lists (all orders and types)
  uint64_t hits = 0;     // allocations served from the lists without touching the buddy
  uint64_t frees = 0;    // frees that went onto the lists
  uint64_t refills = 0;  // refills from the buddy (one zone-lock round trip each)
  uint64_t drains = 0;   // batches drained back to the buddy because the list reached high
  uint64_t remote_drains = 0;  // drain_all_pages() visits that found blocks on this CPU
};

class PerCpuPages {
 public:
  // batch and high in pages, as the kernel reports them in /proc/zoneinfo.
  PerCpuPages(int nr_cpus, uint32_t batch, uint32_t high, bool enabled);

  bool enabled() const { return enabled_; }
  int nr_cpus() const { return nr_cpus_; }
  uint32_t batch() const { return batch_; }
  uint32_t high() const { return high_; }
  uint32_t batch_blocks(unsigned order) const { return batch_blocks_[order]; }
  uint32_t high_blocks(unsigned order) const { return high_blocks_[order]; }

  // Fast path on the current CPU. Each returns false when it cannot act (list empty or full,
  // rseq unusable on this thread, or a remote drain holds the CPU): the caller then takes the
  // zone lock. A false return never loses or duplicates a block.
  bool Pop(unsigned order, int mt, uint32_t* idx) { return rings_.PopHot(order_to_pindex(mt, order), idx); }
  bool Push(unsigned order, int mt, uint32_t idx) {
    return rings_.PushHotWithin(order_to_pindex(mt, order), idx, high_blocks_[order]);
  }

  // Slow path, current CPU: append a refilled block at the cold end (physical order preserved,
  // like rmqueue_bulk()'s list_add_tail()); take up to n blocks from the cold end for a drain.
  // Returns how many of idx[0..n) it took (idx[0] ends nearest the hot end).
  uint32_t PushCold(unsigned order, int mt, const uint32_t* idx, uint32_t n) {
    return rings_.PushCold(order_to_pindex(mt, order), idx, n, high_blocks_[order]);
  }
  uint32_t PopCold(unsigned order, int mt, uint32_t n, uint32_t* out) {
    return rings_.PopCold(order_to_pindex(mt, order), n, out);
  }
  // Any CPU's list (drain_all_pages()): up to n blocks from its cold end.
  uint32_t DrainRemote(int cpu, unsigned order, int mt, uint32_t n, uint32_t* out) {
    return rings_.DrainRemote(cpu, order_to_pindex(mt, order), n, out);
  }
  // Every block on every list, without removing them (Validate(); callers keep the zone quiet).
  void Snapshot(int cpu, unsigned order, int mt, std::vector<uint32_t>* out) const;

  uint64_t count_pages(int cpu) const;
  // Successful Push() calls of `order` over every CPU and migratetype: the rings' own exact push
  // counts, which the page allocator reports as those frees' vm events (no separate count).
  uint64_t pushes(unsigned order) const;
  PcpCpuStats Stats(int cpu) const;

 private:
  int nr_cpus_;
  uint32_t batch_;
  uint32_t high_;
  bool enabled_;
  std::array<uint32_t, NR_PCP_ORDERS> batch_blocks_;
  std::array<uint32_t, NR_PCP_ORDERS> high_blocks_;
  // In place, not behind a pointer: the fast path reaches a ring with one load less.
  PerCpuRings rings_;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_PER_CPU_PAGES_H_
