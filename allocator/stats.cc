#include "allocator/stats.h"

#include "absl/strings/str_cat.h"
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

std::string FormatPagetypeinfo(std::span<const ZoneStats> zones, int node) {
  const ZoneStats* first = nullptr;
  for (const ZoneStats& z : zones) {
    if (z.populated && first == nullptr) first = &z;
  }
  if (first == nullptr) return "";  // pagetypeinfo_show(): a memoryless node prints nothing
  // pagetypeinfo_show()
  std::string text = absl::StrFormat("Page block order: %d\n", first->pageblock_order);
  absl::StrAppendFormat(&text, "Pages per block:  %lu\n", uint64_t{1} << first->pageblock_order);
  text += "\n";
  // pagetypeinfo_showfree(): the header, then pagetypeinfo_showfree_print() per populated zone.
  absl::StrAppendFormat(&text, "%-43s ", "Free pages count per migrate type at order");
  for (size_t o = 0; o < first->nr_free.size(); ++o) absl::StrAppendFormat(&text, "%6d ", o);
  text += "\n";
  for (const ZoneStats& z : zones) {
    if (!z.populated) continue;
    for (int mt = 0; mt < MIGRATE_TYPES; ++mt) {
      absl::StrAppendFormat(&text, "Node %4d, zone %8s, type %12s ", node, zone_name(z.type), kMigratetypeNames[mt]);
      for (const auto& by_type : z.nr_free_by_type) {
        // The kernel stops counting a list at 100000 entries ("Cap the free_list iteration").
        const bool overflow = by_type[mt] >= 100000;
        absl::StrAppendFormat(&text, "%s%6lu ", overflow ? ">" : "", overflow ? uint64_t{100000} : by_type[mt]);
      }
      text += "\n";
    }
  }
  // pagetypeinfo_showblockcount(): the header, then pagetypeinfo_showblockcount_print().
  absl::StrAppendFormat(&text, "\n%-23s", "Number of blocks type ");
  for (int mt = 0; mt < MIGRATE_TYPES; ++mt) absl::StrAppendFormat(&text, "%12s ", kMigratetypeNames[mt]);
  text += "\n";
  for (const ZoneStats& z : zones) {
    if (!z.populated) continue;
    absl::StrAppendFormat(&text, "Node %d, zone %8s ", node, zone_name(z.type));
    for (int mt = 0; mt < MIGRATE_TYPES; ++mt) absl::StrAppendFormat(&text, "%12lu ", z.nr_pageblocks_by_type[mt]);
    text += "\n";
  }
  return text;
}

}  // namespace physmem
