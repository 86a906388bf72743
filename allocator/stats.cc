#include "allocator/stats.h"

#include "absl/strings/str_format.h"

namespace physmem {
namespace {

// fill_contig_page_info() of mm/vmstat.c.
struct ContigPageInfo {
  uint64_t free_pages = 0;
  uint64_t free_blocks_total = 0;
  uint64_t free_blocks_suitable = 0;
};

ContigPageInfo FillContigPageInfo(std::span<const uint64_t> nr_free, unsigned order) {
  ContigPageInfo info;
  for (unsigned o = 0; o < nr_free.size(); ++o) {
    info.free_blocks_total += nr_free[o];
    info.free_pages += nr_free[o] << o;
    if (o >= order) info.free_blocks_suitable += nr_free[o] << (o - order);
  }
  return info;
}

}  // namespace

int FragmentationIndex(std::span<const uint64_t> nr_free, unsigned order) {
  const ContigPageInfo info = FillContigPageInfo(nr_free, order);
  const uint64_t requested = uint64_t{1} << order;
  if (info.free_blocks_total == 0) return 0;
  if (info.free_blocks_suitable != 0) return -1000;
  return static_cast<int>(1000 - static_cast<int64_t>((1000 + info.free_pages * 1000 / requested) /
                                                      info.free_blocks_total));
}

int UnusableFreeIndex(std::span<const uint64_t> nr_free, unsigned order) {
  const ContigPageInfo info = FillContigPageInfo(nr_free, order);
  if (info.free_pages == 0) return 1000;
  return static_cast<int>((info.free_pages - (info.free_blocks_suitable << order)) * 1000 / info.free_pages);
}

std::string FormatBuddyinfoLine(const ZoneStats& z, int node) {
  // mm/vmstat.c frag_show_print(): "Node %d, zone %8s " then "%6lu " per order.
  std::string line = absl::StrFormat("Node %d, zone %8s ", node, zone_name(z.type));
  for (uint64_t n : z.nr_free) absl::StrAppendFormat(&line, "%6lu ", n);
  return line;
}

}  // namespace physmem
