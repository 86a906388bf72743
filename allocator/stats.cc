#include "allocator/stats.h"

#include <algorithm>
#include <bit>
#include <string_view>

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

const std::array<const char*, kNrNodeStatItems> kNodeStatNames = {
    // enum node_stat_item of 6.12, names from vmstat_text[] (mm/vmstat.c).
    "nr_inactive_anon", "nr_active_anon", "nr_inactive_file", "nr_active_file", "nr_unevictable",
    "nr_slab_reclaimable", "nr_slab_unreclaimable", "nr_isolated_anon", "nr_isolated_file",
    "workingset_nodes", "workingset_refault_anon", "workingset_refault_file", "workingset_activate_anon",
    "workingset_activate_file", "workingset_restore_anon", "workingset_restore_file", "workingset_nodereclaim",
    "nr_anon_pages", "nr_mapped", "nr_file_pages", "nr_dirty", "nr_writeback", "nr_writeback_temp", "nr_shmem",
    "nr_shmem_hugepages", "nr_shmem_pmdmapped", "nr_file_hugepages", "nr_file_pmdmapped",
    "nr_anon_transparent_hugepages", "nr_vmscan_write", "nr_vmscan_immediate_reclaim", "nr_dirtied", "nr_written",
    "nr_throttled_written", "nr_kernel_misc_reclaimable", "nr_foll_pin_acquired", "nr_foll_pin_released",
    "nr_kernel_stack",  // NR_KERNEL_STACK_KB (CONFIG_SHADOW_CALL_STACK's nr_shadow_call_stack would follow)
    "nr_page_table_pages", "nr_sec_page_table_pages",
    "nr_iommu_pages",  // CONFIG_IOMMU_SUPPORT (6.11+)
    "nr_swapcached",   // CONFIG_SWAP (CONFIG_NUMA_BALANCING's pgpromote_* would follow)
    "pgdemote_kswapd", "pgdemote_direct", "pgdemote_khugepaged"};

namespace {

// The zone_stat_item names of 6.12 mm/vmstat.c vmstat_text[] (CONFIG_ZSMALLOC and
// CONFIG_UNACCEPTED_MEMORY off); every one but nr_free_pages is 0 in the emulator.
constexpr const char* kZoneStatNames[] = {
    "nr_free_pages",         "nr_zone_inactive_anon", "nr_zone_active_anon", "nr_zone_inactive_file",
    "nr_zone_active_file",   "nr_zone_unevictable",   "nr_zone_write_pending", "nr_mlock",
    "nr_bounce",             "nr_free_cma"};

int Fls(uint64_t x) { return x == 0 ? 0 : 64 - std::countl_zero(x); }

// One printed zone: a configured one (its snapshot) or the empty Movable / Device zone.
struct PrintedZone {
  std::string_view name;
  const ZoneStats* stats;  // null for Movable and Device
  Watermarks wmark;
};

}  // namespace

std::string FormatZoneinfo(std::span<const ZoneStats> zones, const ZoneinfoConfig& config, int node,
                           const NodeStats& node_stats) {
  std::vector<PrintedZone> printed;
  for (const ZoneStats& z : zones) {
    // An empty HIGHMEM zone still gets MIN = clamp(0, SWAP_CLUSTER_MAX, 128) = 32 in the kernel.
    const bool empty_highmem = z.type == ZONE_HIGHMEM && z.managed_pages == 0;
    printed.push_back({zone_name(z.type), &z, empty_highmem ? Watermarks{32, 32, 32} : z.watermarks});
  }
  // __setup_per_zone_wmarks() on an empty ZONE_MOVABLE: MIN = clamp(0 / 1024, SWAP_CLUSTER_MAX,
  // 128) = 32 and a gap of 0; ZONE_DEVICE takes the lowmem branch: 0.
  printed.push_back({"Movable", nullptr, Watermarks{32, 32, 32}});
  if (config.zone_device) printed.push_back({"Device", nullptr, Watermarks{}});

  // is_zone_first_populated(): the node's first zone with present pages carries the node block.
  const PrintedZone* first_populated = nullptr;
  for (const PrintedZone& pz : printed) {
    if (pz.stats != nullptr && pz.stats->populated) {
      first_populated = &pz;
      break;
    }
  }
  std::string out;
  for (size_t i = 0; i < printed.size(); ++i) {
    const PrintedZone& pz = printed[i];
    const ZoneStats* z = pz.stats;
    absl::StrAppendFormat(&out, "Node %d, zone %8s", node, pz.name);
    if (&pz == first_populated) {
      out += "\n  per-node stats";
      for (size_t k = 0; k < kNrNodeStatItems; ++k) {
        absl::StrAppendFormat(&out, "\n      %-12s %lu", kNodeStatNames[k], node_stats.value[k]);
      }
    }
    const uint64_t gap = pz.wmark.low - pz.wmark.min;
    absl::StrAppendFormat(&out,
                          "\n  pages free     %lu"
                          "\n        boost    %lu"
                          "\n        min      %lu"
                          "\n        low      %lu"
                          "\n        high     %lu"
                          "\n        promo    %lu"
                          "\n        spanned  %lu"
                          "\n        present  %lu"
                          "\n        managed  %lu"
                          "\n        cma      %lu",
                          z ? z->buddy_free_pages : 0, uint64_t{0}, pz.wmark.min, pz.wmark.low, pz.wmark.high,
                          pz.wmark.high + gap, z ? z->spanned_pages : 0, z ? z->present_pages : 0,
                          z ? z->managed_pages : 0, uint64_t{0});
    // lowmem_reserve[] over the printed zones: 0 up to the zone itself; beyond the configured
    // zones (Movable, Device: no pages) the largest entry repeats, as
    // setup_per_zone_lowmem_reserve() adds their zero managed pages.
    std::vector<uint64_t> protection(printed.size(), 0);
    if (z != nullptr) {
      for (size_t j = i + 1; j < printed.size(); ++j) {
        protection[j] = printed[j].stats ? z->lowmem_reserve[printed[j].stats->type]
                                         : z->lowmem_reserve[MAX_NR_ZONES - 1];
      }
    }
    absl::StrAppendFormat(&out, "\n        protection: (%ld", protection[0]);
    for (size_t j = 1; j < protection.size(); ++j) absl::StrAppendFormat(&out, ", %ld", protection[j]);
    out += ')';
    // "If unpopulated, no other information is useful"
    if (z == nullptr || !z->populated) {
      out += '\n';
      continue;
    }
    for (const char* name : kZoneStatNames) {
      absl::StrAppendFormat(&out, "\n      %-12s %lu", name,
                            std::string_view(name) == "nr_free_pages" ? z->buddy_free_pages : 0);
    }
    out += "\n  pagesets";
    // zone_highsize(zone, batch, cpu_online = 0, MIN_PERCPU_PAGELIST_HIGH_FRACTION = 8).
    const uint64_t nr_cpus = std::max<uint64_t>(z->pcp.size(), 1);
    const uint64_t high_max = std::max<uint64_t>(z->managed_pages / 8 / nr_cpus, uint64_t{z->pcp_batch} << 2);
    // calculate_normal_threshold(): 2 * fls(online cpus) * (1 + fls(managed in 128 MiB units)), <= 125.
    const int threshold = std::min(
        125, 2 * Fls(static_cast<uint64_t>(std::max(config.nr_online_cpus, 1))) *
                 (1 + Fls(z->managed_pages >> (27 - config.page_shift))));
    for (const PcpCpuStats& c : z->pcp) {
      absl::StrAppendFormat(&out,
                            "\n    cpu: %i"
                            "\n              count:    %i"
                            "\n              high:     %i"
                            "\n              batch:    %i"
                            "\n              high_min: %i"
                            "\n              high_max: %i",
                            c.cpu, c.count, z->pcp_high, z->pcp_batch, z->pcp_high, high_max);
      absl::StrAppendFormat(&out, "\n  vm stats threshold: %d", threshold);
    }
    absl::StrAppendFormat(&out,
                          "\n  node_unreclaimable:  %u"
                          "\n  start_pfn:           %lu",
                          0u, z->start_pfn);
    out += '\n';
  }
  return out;
}

}  // namespace physmem
