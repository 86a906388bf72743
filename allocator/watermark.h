// Zone watermarks, lowmem_reserve and the watermark check, as the kernel computes them
// (mm/page_alloc.c: calculate_min_free_kbytes(), __setup_per_zone_wmarks(),
// setup_per_zone_lowmem_reserve(), __zone_watermark_ok()).
//
// Who uses it: PageAllocator at start-up (to set each zone's marks) and Zone on every allocation
// (the check). Thread-safety: pure functions of their arguments.
#ifndef PHYSMEM_ALLOCATOR_WATERMARK_H_
#define PHYSMEM_ALLOCATOR_WATERMARK_H_

#include <array>
#include <cstdint>
#include <span>

#include "allocator/zone_type.h"

namespace physmem {

enum WatermarkLevel { WMARK_MIN = 0, WMARK_LOW = 1, WMARK_HIGH = 2, NR_WMARK = 3 };

struct Watermarks {
  uint64_t min = 0;   // pages; below it only reserve-entitled callers allocate
  uint64_t low = 0;   // kswapd would wake here; the first allocation attempt checks this mark
  uint64_t high = 0;  // kswapd would reclaim up to here
  uint64_t operator[](WatermarkLevel l) const { return l == WMARK_MIN ? min : l == WMARK_LOW ? low : high; }
};

// The kernel's sysctl_lowmem_reserve_ratio defaults: DMA 256, DMA32 256, NORMAL 32, HIGHMEM 0.
inline constexpr std::array<uint32_t, MAX_NR_ZONES> kDefaultLowmemReserveRatio = {256, 256, 32, 0};
inline constexpr uint32_t kDefaultWatermarkScaleFactor = 10;  // 0.1% of a zone

// calculate_min_free_kbytes(): int_sqrt(lowmem_kbytes * 16), clamped to [128, 262144] KiB.
// lowmem_kbytes is the memory of the zones GFP_USER may use (all but HIGHMEM).
uint64_t DefaultMinFreeKbytes(uint64_t lowmem_kbytes);

// __setup_per_zone_wmarks(). `managed[z]` are the managed pages of every zone (0 if absent).
// Lowmem zones share pages_min = min_free_kbytes / (PAGE_SIZE / 1024) in proportion to their
// size (share = pages_min * managed / lowmem_pages); HIGHMEM's MIN is clamp(managed / 1024, 32,
// 128) instead, because only __GFP_HIGH callers need it. The gap comes from the uncapped share in
// every zone: gap = max(share / 4, managed * watermark_scale_factor / 10000); low = min + gap;
// high = low + gap. E.g. i386 with 1 GiB: HighMem 32/66/100, not 32/64/96.
std::array<Watermarks, MAX_NR_ZONES> SetupZoneWatermarks(const std::array<uint64_t, MAX_NR_ZONES>& managed,
                                                         uint64_t min_free_kbytes, unsigned page_shift,
                                                         uint32_t watermark_scale_factor);

// setup_per_zone_lowmem_reserve(): reserve[i][j] = (sum of managed pages of zones i+1..j) /
// ratio[i], for j > i; 0 when ratio[i] is 0 or zone i has no managed pages.
// Meaning: an allocation whose highest allowed zone is j may take pages from zone i only while
// zone i keeps more than its watermark + reserve[i][j] free pages.
std::array<std::array<uint64_t, MAX_NR_ZONES>, MAX_NR_ZONES> SetupLowmemReserve(
    const std::array<uint64_t, MAX_NR_ZONES>& managed, const std::array<uint32_t, MAX_NR_ZONES>& ratio);

// __zone_watermark_ok(). `free_pages` is the zone's NR_FREE_PAGES; `nr_free` its free blocks per
// order; `alloc_flags` the ALLOC_* bits (gfp.h); `reserve` = lowmem_reserve[highest_zoneidx].
// ALLOC_MIN_RESERVE (__GFP_HIGH) lowers the mark by half, and ALLOC_NON_BLOCK on top of it by a
// further quarter, so GFP_ATOMIC may go down to 37.5% of it; ALLOC_OOM halves it once more.
bool ZoneWatermarkOk(uint64_t free_pages, std::span<const uint64_t> nr_free, unsigned order, uint64_t mark,
                     uint64_t reserve, unsigned alloc_flags);
// The same, with the free lists summarized as a bitmask: bit o set when nr_free[o] != 0. Zones
// publish this mask so the check reads one word instead of every order's count.
bool ZoneWatermarkOk(uint64_t free_pages, uint32_t nonempty_orders, unsigned order, uint64_t mark, uint64_t reserve,
                     unsigned alloc_flags);

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_WATERMARK_H_
