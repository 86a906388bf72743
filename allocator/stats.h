// Statistics snapshots of the allocator: what /proc/buddyinfo, /proc/zoneinfo and debugfs
// extfrag/ show for a zone, as plain structs.
//
// Who uses it: the server turns snapshots into RPC replies and Prometheus metrics at scrape time;
// the demo prints them. The allocator never pushes statistics anywhere: the fast path pays
// nothing for them. Thread-safety: snapshots are values; taking one is safe at any time (the
// buddy part is read under the zone lock, per-CPU parts are racy-but-atomic reads).
#ifndef PHYSMEM_ALLOCATOR_STATS_H_
#define PHYSMEM_ALLOCATOR_STATS_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "allocator/migratetype.h"
#include "allocator/per_cpu_pages.h"
#include "allocator/thread_pages.h"
#include "allocator/watermark.h"
#include "allocator/zone_type.h"

namespace physmem {

inline constexpr unsigned kMaxNrOrders = 16;  // NR_PAGE_ORDERS is at most 16 (max_page_order 15)

// Mobility-grouping events of one zone, counted under the zone lock on the (slow) fallback paths.
// Indices: [requested migratetype][migratetype taken from][order of the free block used], the
// fields of the kernel's mm_page_alloc_extfrag event (alloc_migratetype, fallback_migratetype,
// fallback_order). Every such event is either a claim or a steal:
//   claims  __rmqueue_claim() took over the pageblock(s) (try_to_steal_block() succeeded:
//           change_ownership = 1 in the event);
//   steals  __rmqueue_steal() took one block and left the pageblock's type alone.
struct MigrateCounters {
  using ByOrder = std::array<uint64_t, kMaxNrOrders>;
  using ByFallback = std::array<std::array<ByOrder, MIGRATE_PCPTYPES>, MIGRATE_PCPTYPES>;
  ByFallback claims{};
  ByFallback steals{};
  // Pageblock type changes [from][to]: claims, highatomic reserve/unreserve, merges that match a
  // buddy's type (__free_one_page()).
  std::array<std::array<uint64_t, MIGRATE_TYPES>, MIGRATE_TYPES> pageblock_changes{};
  uint64_t highatomic_reserves = 0;    // reserve_highatomic_pageblock() calls that reserved
  uint64_t highatomic_unreserves = 0;  // unreserve_highatomic_pageblock() conversions
};

struct ZoneStats {
  ZoneType type = ZONE_NORMAL;
  bool populated = false;
  uint64_t start_pfn = 0;
  uint64_t spanned_pages = 0;  // end_pfn - start_pfn, holes included
  uint64_t present_pages = 0;  // RAM pages in the span
  uint64_t managed_pages = 0;  // present minus memblock-reserved (Target::reserved)
  uint64_t free_pages = 0;     // buddy free + per-CPU list pages
  uint64_t buddy_free_pages = 0;  // NR_FREE_PAGES: what the watermark check compares
  uint64_t pcp_pages = 0;
  Watermarks watermarks;
  std::array<uint64_t, MAX_NR_ZONES> lowmem_reserve{};  // zoneinfo "protection: (...)"
  std::vector<uint64_t> nr_free;                          // buddyinfo: free blocks per order
  uint32_t pcp_batch = 0;
  uint32_t pcp_high = 0;
  std::vector<PcpCpuStats> pcp;  // one per CPU (the rings; pcp_pages adds thread_pages.count)
  ThreadPagesStats thread_pages;  // per-thread caches in front of the lists (off unless asked for)
  // Mobility grouping (allocator/buddy.h, pageblock.h).
  unsigned pageblock_order = 0;
  bool group_by_mobility_disabled = false;  // page_group_by_mobility_disabled
  // nr_free_by_type[o][t]: blocks on free_area[o].free_list[t] (pagetypeinfo's first section).
  std::vector<std::array<uint64_t, MIGRATE_TYPES>> nr_free_by_type;
  // Pageblocks of each type, counted as pagetypeinfo_showblockcount_print() counts them.
  std::array<uint64_t, MIGRATE_TYPES> nr_pageblocks_by_type{};
  uint64_t nr_reserved_highatomic = 0;  // pages (whole pageblocks) reserved
  uint64_t nr_free_highatomic = 0;      // free pages on HIGHATOMIC lists
  uint64_t highatomic_max = 0;          // ALIGN(managed / 100, pageblock_nr_pages), 0 = never
  MigrateCounters migrate;
};

// debugfs extfrag/extfrag_index: -1000 when a suitable block exists (the index is meaningless
// then), 0 when there are no free blocks at all; else 1000 - (1000 + free*1000/requested) /
// free_blocks_total. Toward 0: failure would be for lack of memory; toward 1000: fragmentation.
// Values are thousandths (the kernel prints them as %d.%03d).
int FragmentationIndex(std::span<const uint64_t> nr_free, unsigned order);
// debugfs extfrag/unusable_index: the share (thousandths) of free memory unusable for `order`.
int UnusableFreeIndex(std::span<const uint64_t> nr_free, unsigned order);

// One /proc/buddyinfo line: "Node 0, zone   Normal      1      0 ...".
std::string FormatBuddyinfoLine(const ZoneStats& z, int node = 0);

// /proc/pagetypeinfo for one node, byte for byte as mm/vmstat.c of 6.12 prints it
// (pagetypeinfo_show(): the header from pageblock_order, pagetypeinfo_showfree_print() and
// pagetypeinfo_showblockcount_print()) for `zones` (populated ones are printed, in order). Free
// counts above 100000 print as ">100000" as the kernel caps its walk. No "mixed blocks" section:
// that needs CONFIG_PAGE_OWNER with page_owner=on.
std::string FormatPagetypeinfo(std::span<const ZoneStats> zones, int node = 0);

// The node counters /proc/zoneinfo prints in its "per-node stats" block: 6.12's enum
// node_stat_item (include/linux/mmzone.h) with the names of mm/vmstat.c vmstat_text[], for the
// configuration the zoneinfo view models (x86-like, !NUMA so no NUMA_BALANCING promotion
// counters, CONFIG_SWAP and CONFIG_IOMMU_SUPPORT on, no SHADOW_CALL_STACK): 45 items, from
// nr_inactive_anon to pgdemote_khugepaged. (Later kernels add pgpromote_candidate_nrl,
// pgdemote_proactive, nr_hugetlb, nr_balloon_pages, nr_kernel_file_pages and drop
// nr_writeback_temp.) Every one of them counts something the emulator has no model of (LRU lists,
// slab, page cache, writeback, workingset shadows, page tables, swap, demotion): its RAM holds
// only the buddy's free pages and the blocks handed to callers, which the kernel counts nowhere in
// this block (an alloc_pages() caller's pages change NR_FREE_PAGES only). So the allocator
// passes an all-zero NodeStats; a caller that models such counters fills them in.
inline constexpr size_t kNrNodeStatItems = 45;
extern const std::array<const char*, kNrNodeStatItems> kNodeStatNames;

struct NodeStats {
  // node_page_state_pages() per item in kNodeStatNames order, as zoneinfo_show_print() prints it:
  // the THP items (vmstat_item_print_in_thp(): nr_shmem_hugepages, nr_shmem_pmdmapped,
  // nr_file_hugepages, nr_file_pmdmapped, nr_anon_transparent_hugepages) already divided by
  // HPAGE_PMD_NR.
  std::array<uint64_t, kNrNodeStatItems> value{};
};

// What /proc/zoneinfo needs beyond the zones' snapshots: the kernel configuration it models.
struct ZoneinfoConfig {
  unsigned page_shift = 12;
  // CONFIG_ZONE_DEVICE: a "Device" zone after Movable (distribution kernels on 64-bit set it).
  bool zone_device = false;
  int nr_online_cpus = 1;  // num_online_cpus(), for "vm stats threshold"
};

// /proc/zoneinfo for one node, in the layout of 6.12 mm/vmstat.c zoneinfo_show_print(), for the
// zones of the kernel's enum zone_type: the configured ones in `zones` (lowest first), then
// ZONE_MOVABLE (always configured; empty here) and, with zone_device, ZONE_DEVICE. Every zone is
// printed, populated or not (walk_zones_in_node(..., assert_populated = false)); an unpopulated
// one stops after its "protection:" line. "pages free" is NR_FREE_PAGES (the buddy's free pages,
// per-CPU list pages excluded); "protection:" has one lowmem_reserve entry per printed zone.
// The zone counters are the 6.12 zone_stat_item list for a !NUMA kernel without ZSMALLOC and
// unaccepted memory (nr_free_pages, the LRU counters, nr_mlock, nr_bounce, nr_free_cma): the
// emulator has no LRU or mlock, so those are 0. Pagesets print count, high, batch, high_min
// (= high: our high does not auto-tune), high_max (zone_highsize() with
// MIN_PERCPU_PAGELIST_HIGH_FRACTION 8) and the vm stats threshold (calculate_normal_threshold()).
// The node's first populated zone (is_zone_first_populated()) is preceded by "  per-node stats"
// and one "      %-12s %lu" line per node counter (`node_stats`, all zero from the allocator: see
// NodeStats); a node without a populated zone prints no such block.
std::string FormatZoneinfo(std::span<const ZoneStats> zones, const ZoneinfoConfig& config, int node = 0,
                           const NodeStats& node_stats = {});

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_STATS_H_
