#include "allocator/watermark.h"

#include <algorithm>
#include <cmath>

#include "allocator/gfp.h"

namespace physmem {
namespace {

// int_sqrt(): floor of the square root, exact for 64-bit inputs.
uint64_t IntSqrt(uint64_t x) {
  uint64_t r = static_cast<uint64_t>(std::sqrt(static_cast<long double>(x)));
  while (r * r > x) --r;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

}  // namespace

uint64_t DefaultMinFreeKbytes(uint64_t lowmem_kbytes) {
  return std::clamp<uint64_t>(IntSqrt(lowmem_kbytes * 16), 128, 262144);
}

std::array<Watermarks, MAX_NR_ZONES> SetupZoneWatermarks(const std::array<uint64_t, MAX_NR_ZONES>& managed,
                                                         uint64_t min_free_kbytes, unsigned page_shift,
                                                         uint32_t watermark_scale_factor) {
  const uint64_t pages_min = min_free_kbytes >> (page_shift - 10);
  uint64_t lowmem_pages = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (z != ZONE_HIGHMEM) lowmem_pages += managed[z];
  }
  std::array<Watermarks, MAX_NR_ZONES> w{};
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (managed[z] == 0) continue;
    // The zone's share of pages_min, computed for every zone, HIGHMEM included: the kernel caps
    // only WMARK_MIN of HIGHMEM (and MOVABLE) zones and keeps this uncapped share for the
    // low/high gap, because "The WMARK_HIGH-WMARK_LOW and (WMARK_LOW-WMARK_MIN) deltas control
    // async page reclaim, and so should not be capped for highmem and movable zones"
    // (__setup_per_zone_wmarks(), 6.12).
    const uint64_t share = lowmem_pages == 0 ? 0 : pages_min * managed[z] / lowmem_pages;
    const uint64_t min = z == ZONE_HIGHMEM ? std::clamp<uint64_t>(managed[z] / 1024, 32 /* SWAP_CLUSTER_MAX */, 128)
                                           : share;
    // mult_frac(managed, watermark_scale_factor, 10000): managed * factor / 10000 without overflow.
    const uint64_t scaled =
        managed[z] / 10000 * watermark_scale_factor + managed[z] % 10000 * watermark_scale_factor / 10000;
    const uint64_t gap = std::max(share >> 2, scaled);
    w[z].min = min;
    w[z].low = min + gap;
    w[z].high = min + 2 * gap;
  }
  return w;
}

std::array<std::array<uint64_t, MAX_NR_ZONES>, MAX_NR_ZONES> SetupLowmemReserve(
    const std::array<uint64_t, MAX_NR_ZONES>& managed, const std::array<uint32_t, MAX_NR_ZONES>& ratio) {
  std::array<std::array<uint64_t, MAX_NR_ZONES>, MAX_NR_ZONES> reserve{};
  for (int i = 0; i < MAX_NR_ZONES - 1; ++i) {
    const bool clear = ratio[i] == 0 || managed[i] == 0;
    uint64_t upper = 0;
    for (int j = i + 1; j < MAX_NR_ZONES; ++j) {
      upper += managed[j];
      reserve[i][j] = clear ? 0 : upper / ratio[i];
    }
  }
  return reserve;
}

bool ZoneWatermarkOk(uint64_t free_pages, uint32_t nonempty_orders, unsigned order, uint64_t mark, uint64_t reserve,
                     unsigned alloc_flags) {
  if (alloc_flags & ALLOC_NO_WATERMARKS) return true;
  // Pages that cannot serve this order anyway: the request needs a whole block.
  const int64_t free = static_cast<int64_t>(free_pages) - ((int64_t{1} << order) - 1);
  int64_t min = static_cast<int64_t>(mark);
  if (alloc_flags & (ALLOC_MIN_RESERVE | ALLOC_NON_BLOCK | ALLOC_OOM)) {
    if (alloc_flags & ALLOC_MIN_RESERVE) {
      min -= min / 2;
      if (alloc_flags & ALLOC_NON_BLOCK) min -= min / 4;
    }
    if (alloc_flags & ALLOC_OOM) min -= min / 2;
  }
  if (free <= min + static_cast<int64_t>(reserve)) return false;
  // Order 0 needs only the count; a larger order needs a free block of at least that order.
  return order == 0 || (nonempty_orders >> order) != 0;
}

bool ZoneWatermarkOk(uint64_t free_pages, std::span<const uint64_t> nr_free, unsigned order, uint64_t mark,
                     uint64_t reserve, unsigned alloc_flags) {
  uint32_t mask = 0;
  for (unsigned o = 0; o < nr_free.size() && o < 32; ++o) mask |= (nr_free[o] != 0 ? 1u : 0u) << o;
  return ZoneWatermarkOk(free_pages, mask, order, mark, reserve, alloc_flags);
}

}  // namespace physmem
