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

#include "allocator/per_cpu_pages.h"
#include "allocator/watermark.h"
#include "allocator/zone_type.h"

namespace physmem {

struct ZoneStats {
  ZoneType type = ZONE_NORMAL;
  bool populated = false;
  uint64_t start_pfn = 0;
  uint64_t spanned_pages = 0;  // end_pfn - start_pfn, holes included
  uint64_t present_pages = 0;  // RAM pages in the span
  uint64_t managed_pages = 0;  // present minus reserved (we reserve none)
  uint64_t free_pages = 0;     // buddy free + per-CPU list pages
  uint64_t buddy_free_pages = 0;  // NR_FREE_PAGES: what the watermark check compares
  uint64_t pcp_pages = 0;
  Watermarks watermarks;
  std::array<uint64_t, MAX_NR_ZONES> lowmem_reserve{};  // zoneinfo "protection: (...)"
  std::vector<uint64_t> nr_free;                          // buddyinfo: free blocks per order
  uint32_t pcp_batch = 0;
  uint32_t pcp_high = 0;
  std::vector<PcpCpuStats> pcp;  // one per CPU
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

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_STATS_H_
