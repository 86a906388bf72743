// /proc/pagetypeinfo as FormatPagetypeinfo() (allocator/stats.h) prints it, against the format
// strings of mm/vmstat.c in 6.12 LTS (pagetypeinfo_show(), pagetypeinfo_showfree_print(),
// pagetypeinfo_showblockcount_print(), quoted below), against a real kernel's file from
// KERNEL-2.md §4, and against this machine's /proc/pagetypeinfo with the same numbers.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "allocator/page_allocator.h"
#include "allocator/stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

ZoneStats Zone(ZoneType type, unsigned pageblock_order = 9, unsigned nr_orders = 11) {
  ZoneStats z;
  z.type = type;
  z.populated = true;
  z.pageblock_order = pageblock_order;
  z.nr_free.assign(nr_orders, 0);
  z.nr_free_by_type.assign(nr_orders, {});
  return z;
}

TEST(Pagetypeinfo, FollowsTheKernelFormatStrings) {
  // The kernel's own format strings, with its arguments, for one zone with known numbers.
  ZoneStats dma = Zone(ZONE_DMA);
  dma.nr_free_by_type[8][MIGRATE_UNMOVABLE] = 1;
  dma.nr_free_by_type[10][MIGRATE_MOVABLE] = 3;
  dma.nr_pageblocks_by_type = {1, 7, 0, 0, 0};
  std::string want;
  want += absl::StrFormat("Page block order: %d\n", 9);       // pagetypeinfo_show()
  want += absl::StrFormat("Pages per block:  %lu\n", 512ul);
  want += "\n";
  want += absl::StrFormat("%-43s ", "Free pages count per migrate type at order");  // pagetypeinfo_showfree()
  for (int o = 0; o < 11; ++o) want += absl::StrFormat("%6d ", o);
  want += "\n";
  const char* names[] = {"Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate"};  // migratetype_names[]
  for (int mt = 0; mt < 5; ++mt) {
    want += absl::StrFormat("Node %4d, zone %8s, type %12s ", 0, "DMA", names[mt]);  // _showfree_print()
    for (int o = 0; o < 11; ++o) want += absl::StrFormat("%s%6lu ", "", dma.nr_free_by_type[o][mt]);
    want += "\n";
  }
  want += absl::StrFormat("\n%-23s", "Number of blocks type ");  // pagetypeinfo_showblockcount()
  for (int mt = 0; mt < 5; ++mt) want += absl::StrFormat("%12s ", names[mt]);
  want += "\n";
  want += absl::StrFormat("Node %d, zone %8s ", 0, "DMA");  // _showblockcount_print()
  for (int mt = 0; mt < 5; ++mt) want += absl::StrFormat("%12lu ", dma.nr_pageblocks_by_type[mt]);
  want += "\n";
  const std::vector<ZoneStats> zones = {dma};
  EXPECT_EQ(FormatPagetypeinfo(zones), want);
}

TEST(Pagetypeinfo, ReproducesARealKernelsLines) {
  // KERNEL-2.md §4, from a live 6.18 x86_64 (trailing spaces are part of each line).
  ZoneStats dma = Zone(ZONE_DMA);
  dma.nr_free_by_type[8][MIGRATE_UNMOVABLE] = 1;
  dma.nr_pageblocks_by_type = {1, 7, 0, 0, 0};
  ZoneStats normal = Zone(ZONE_NORMAL);
  const uint64_t movable[] = {5483, 4653, 14453, 5430, 6820, 3052, 1310, 559, 255, 138, 108};
  for (int o = 0; o < 11; ++o) normal.nr_free_by_type[o][MIGRATE_MOVABLE] = movable[o];
  normal.nr_pageblocks_by_type = {137, 3067, 124, 0, 0};
  const std::vector<ZoneStats> zones = {dma, normal};
  const std::string text = FormatPagetypeinfo(zones);
  EXPECT_THAT(text, ::testing::StartsWith("Page block order: 9\nPages per block:  512\n\n"
                                          "Free pages count per migrate type at order       0      1      2      3"
                                          "      4      5      6      7      8      9     10 \n"));
  EXPECT_THAT(text, ::testing::HasSubstr("Node    0, zone      DMA, type    Unmovable      0      0      0      0"
                                         "      0      0      0      0      1      0      0 \n"));
  EXPECT_THAT(text, ::testing::HasSubstr("Node    0, zone   Normal, type      Movable   5483   4653  14453   5430"
                                         "   6820   3052   1310    559    255    138    108 \n"));
  EXPECT_THAT(text, ::testing::HasSubstr("\nNumber of blocks type     Unmovable      Movable  Reclaimable   HighAtomic"
                                         "      Isolate \n"
                                         "Node 0, zone      DMA            1            7            0            0"
                                         "            0 \n"
                                         "Node 0, zone   Normal          137         3067          124            0"
                                         "            0 \n"));
}

TEST(Pagetypeinfo, CapsListWalksAtOneHundredThousand) {
  // pagetypeinfo_showfree_print(): "if (++freecount >= 100000) { overflow = true; break; }"
  ZoneStats z = Zone(ZONE_NORMAL);
  z.nr_free_by_type[0][MIGRATE_MOVABLE] = 250000;
  z.nr_free_by_type[1][MIGRATE_MOVABLE] = 99999;
  const std::vector<ZoneStats> zones = {z};
  EXPECT_THAT(FormatPagetypeinfo(zones), ::testing::HasSubstr("type      Movable >100000  99999      0 "));
}

TEST(Pagetypeinfo, PrintsOnlyPopulatedZonesAndNothingForAMemorylessNode) {
  ZoneStats empty = Zone(ZONE_DMA32);
  empty.populated = false;
  const std::vector<ZoneStats> none = {empty};
  EXPECT_EQ(FormatPagetypeinfo(none), "");
  const std::vector<ZoneStats> some = {empty, Zone(ZONE_NORMAL)};
  EXPECT_THAT(FormatPagetypeinfo(some), ::testing::Not(::testing::HasSubstr("DMA32")));
}

TEST(Pagetypeinfo, AllocatorReportsItsOwnFreeListsAndBlocks) {
  // SmallX86 at boot: Normal [1024, 3072) is two free order-10 MOVABLE blocks in 4 pageblocks.
  auto pa = PageAllocator::Create(testing::SmallOptions(testing::SmallX86(), /*pcp=*/false));
  ASSERT_TRUE(pa.ok()) << pa.status();
  const std::string text = (*pa)->Pagetypeinfo();
  EXPECT_THAT(text, ::testing::HasSubstr("Node    0, zone   Normal, type      Movable      0      0      0      0"
                                         "      0      0      0      0      0      0      2 \n"));
  EXPECT_THAT(text, ::testing::HasSubstr("Node 0, zone   Normal            0            4            0            0"
                                         "            0 \n"));
  // One GFP_KERNEL page claims an order-10 block (2 pageblocks) for UNMOVABLE; its split halves
  // are on UNMOVABLE lists, one block at each order 0..9.
  ASSERT_NE((*pa)->alloc_pages(GFP_KERNEL, 0), nullptr);
  const std::string after = (*pa)->Pagetypeinfo();
  EXPECT_THAT(after, ::testing::HasSubstr("Node    0, zone   Normal, type    Unmovable      1      1      1      1"
                                          "      1      1      1      1      1      1      0 \n"));
  EXPECT_THAT(after, ::testing::HasSubstr("Node 0, zone   Normal            2            2            0            0"
                                          "            0 \n"));
}

// Parses this machine's /proc/pagetypeinfo into ZoneStats (node 0 only) and reprints it.
TEST(Pagetypeinfo, MatchesThisMachinesFileForTheSameNumbers) {
  std::ifstream in("/proc/pagetypeinfo");
  if (!in) GTEST_SKIP() << "cannot read /proc/pagetypeinfo (needs root: mode 0400)";
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string real = buf.str();
  if (real.find("Number of mixed blocks") != std::string::npos) {
    GTEST_SKIP() << "this kernel prints the page_owner 'mixed blocks' section, which we do not model";
  }
  std::map<std::string, ZoneStats> zones;  // by name, in file order below
  std::vector<std::string> order;
  unsigned pageblock_order = 0;
  int section = 0;
  const std::map<std::string, int> type_of = {
      {"Unmovable", 0}, {"Movable", 1}, {"Reclaimable", 2}, {"HighAtomic", 3}, {"Isolate", 4}};
  std::vector<std::string> columns;
  for (absl::string_view line : absl::StrSplit(real, '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(" ,"), absl::SkipEmpty());
    if (f.empty()) continue;
    if (absl::StartsWith(line, "Page block order:")) pageblock_order = std::stoi(f.back());
    if (absl::StartsWith(line, "Number of blocks type")) {
      section = 1;
      columns.assign(f.begin() + 4, f.end());
      if (columns != std::vector<std::string>{"Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate"}) {
        GTEST_SKIP() << "this kernel's migratetypes differ from ours (CMA configured?): " << line;
      }
    }
    if (f[0] != "Node") continue;
    if (f[1] != "0") GTEST_SKIP() << "more than one node; FormatPagetypeinfo prints one";
    const std::string name = f[3];
    const std::optional<ZoneType> zt = ParseZoneName(name);
    if (!zt) GTEST_SKIP() << "zone " << name << " is not one we model";
    if (!zones.count(name)) {
      zones[name] = Zone(*zt, pageblock_order);
      order.push_back(name);
    }
    ZoneStats& z = zones[name];
    if (section == 0) {
      const int mt = type_of.at(f[5]);
      for (int o = 0; o < 11; ++o) {
        std::string v = f[6 + o];
        if (v[0] == '>') v = v.substr(1);
        z.nr_free_by_type[o][mt] = std::stoull(v);
      }
    } else {
      for (int mt = 0; mt < 5; ++mt) z.nr_pageblocks_by_type[mt] = std::stoull(f[4 + mt]);
    }
  }
  std::vector<ZoneStats> list;
  for (const std::string& n : order) list.push_back(zones[n]);
  ASSERT_FALSE(list.empty());
  EXPECT_EQ(FormatPagetypeinfo(list), real);
}


// /proc/zoneinfo: the format strings of 6.12 mm/vmstat.c zoneinfo_show_print(), with its
// arguments, for one populated zone on two CPUs, then the empty zones the kernel always has.
TEST(Zoneinfo, FollowsTheKernelFormatStrings) {
  ZoneStats dma = Zone(ZONE_DMA);
  dma.start_pfn = 1;
  dma.spanned_pages = 4095;
  dma.present_pages = 3998;
  dma.managed_pages = 3998;
  dma.buddy_free_pages = 3900;  // NR_FREE_PAGES: the per-CPU pages below are not in it
  dma.free_pages = 3907;
  dma.watermarks = {15, 18, 21};
  dma.lowmem_reserve = {0, 3018, 16074, 16074};
  dma.pcp_batch = 1;
  dma.pcp_high = 9;
  dma.pcp = {PcpCpuStats{.cpu = 0, .count = 7}, PcpCpuStats{.cpu = 1, .count = 0}};
  ZoneStats dma32 = Zone(ZONE_DMA32);
  dma32.populated = false;
  NodeStats node;
  for (size_t k = 0; k < kNrNodeStatItems; ++k) node.value[k] = 1000 * k;
  std::string want = absl::StrFormat("Node %d, zone %8s", 0, "DMA");
  // is_zone_first_populated(): the node block, seq_printf(m, "\n      %-12s %lu", ...) per item.
  want += "\n  per-node stats";
  for (size_t k = 0; k < kNrNodeStatItems; ++k) want += absl::StrFormat("\n      %-12s %lu", kNodeStatNames[k], 1000 * k);
  want += absl::StrFormat(
      "\n  pages free     %lu\n        boost    %lu\n        min      %lu\n        low      %lu"
      "\n        high     %lu\n        promo    %lu\n        spanned  %lu\n        present  %lu"
      "\n        managed  %lu\n        cma      %lu",
      3900ul, 0ul, 15ul, 18ul, 21ul, 24ul, 4095ul, 3998ul, 3998ul, 0ul);
  want += absl::StrFormat("\n        protection: (%ld", 0l);
  for (long p : {3018l, 16074l}) want += absl::StrFormat(", %ld", p);  // DMA, DMA32, Movable
  want += ")";
  for (const char* item : {"nr_free_pages", "nr_zone_inactive_anon", "nr_zone_active_anon", "nr_zone_inactive_file",
                           "nr_zone_active_file", "nr_zone_unevictable", "nr_zone_write_pending", "nr_mlock",
                           "nr_bounce", "nr_free_cma"}) {
    want += absl::StrFormat("\n      %-12s %lu", item, std::string_view(item) == "nr_free_pages" ? 3900ul : 0ul);
  }
  want += "\n  pagesets";
  for (int cpu = 0; cpu < 2; ++cpu) {
    want += absl::StrFormat(
        "\n    cpu: %i\n              count:    %i\n              high:     %i\n              batch:    %i"
        "\n              high_min: %i\n              high_max: %i",
        cpu, cpu == 0 ? 7 : 0, 9, 1, 9, 3998 / 8 / 2);
    want += absl::StrFormat("\n  vm stats threshold: %d", 4);  // 2 * fls(2) * (1 + fls(3998 >> 15))
  }
  want += absl::StrFormat("\n  node_unreclaimable:  %u\n  start_pfn:           %lu", 0u, 1ul);
  want += "\n";
  // An unpopulated zone: "If unpopulated, no other information is useful" after protection.
  want += absl::StrFormat("Node %d, zone %8s", 0, "DMA32");
  want += absl::StrFormat(
      "\n  pages free     %lu\n        boost    %lu\n        min      %lu\n        low      %lu"
      "\n        high     %lu\n        promo    %lu\n        spanned  %lu\n        present  %lu"
      "\n        managed  %lu\n        cma      %lu",
      0ul, 0ul, 0ul, 0ul, 0ul, 0ul, 0ul, 0ul, 0ul, 0ul);
  want += "\n        protection: (0, 0, 0)\n";
  const std::vector<ZoneStats> zones = {dma, dma32};
  const std::string got = FormatZoneinfo(zones, ZoneinfoConfig{.page_shift = 12, .nr_online_cpus = 2}, 0, node);
  ASSERT_TRUE(absl::StartsWith(got, want)) << got;
  EXPECT_THAT(got.substr(want.size()), ::testing::StartsWith("Node 0, zone  Movable"));
}

// The empty zones as this machine's kernel prints them (lines copied from its /proc/zoneinfo;
// the numbers agree because the kernel computes them the same way: an empty ZONE_MOVABLE gets
// MIN 32 and no gap, ZONE_DEVICE 0), and the DMA zone's head and protection lines for the same
// zone sizes, watermarks and lowmem_reserve.
TEST(Zoneinfo, ReproducesARealKernelsEmptyZonesAndProtectionLine) {
  const std::string real_dma_head =
      "  pages free     3840\n"
      "        boost    0\n"
      "        min      15\n"
      "        low      18\n"
      "        high     21\n"
      "        promo    24\n"
      "        spanned  4095\n"
      "        present  3998\n"
      "        managed  3840\n"
      "        cma      0\n"
      "        protection: (0, 3018, 16074, 16074, 16074)\n";
  const std::string real_empty =
      "Node 0, zone  Movable\n"
      "  pages free     0\n"
      "        boost    0\n"
      "        min      32\n"
      "        low      32\n"
      "        high     32\n"
      "        promo    32\n"
      "        spanned  0\n"
      "        present  0\n"
      "        managed  0\n"
      "        cma      0\n"
      "        protection: (0, 0, 0, 0, 0)\n"
      "Node 0, zone   Device\n"
      "  pages free     0\n"
      "        boost    0\n"
      "        min      0\n"
      "        low      0\n"
      "        high     0\n"
      "        promo    0\n"
      "        spanned  0\n"
      "        present  0\n"
      "        managed  0\n"
      "        cma      0\n"
      "        protection: (0, 0, 0, 0, 0)\n";
  ZoneStats dma = Zone(ZONE_DMA);
  dma.start_pfn = 1;
  dma.spanned_pages = 4095;
  dma.present_pages = 3998;
  dma.managed_pages = 3840;
  dma.buddy_free_pages = 3840;
  dma.watermarks = {15, 18, 21};
  dma.lowmem_reserve = {0, 3018, 16074, 16074};
  dma.pcp_batch = 1;
  dma.pcp_high = 9;
  dma.pcp = {PcpCpuStats{.cpu = 0}, PcpCpuStats{.cpu = 1}};
  ZoneStats dma32 = Zone(ZONE_DMA32);
  dma32.lowmem_reserve = {0, 0, 13056, 13056};
  dma32.populated = false;
  ZoneStats normal = Zone(ZONE_NORMAL);
  normal.populated = false;
  const std::vector<ZoneStats> zones = {dma, dma32, normal};
  const std::string got =
      FormatZoneinfo(zones, ZoneinfoConfig{.page_shift = 12, .zone_device = true, .nr_online_cpus = 2});
  std::string head = real_dma_head;
  head.pop_back();  // the populated zone goes on with its counters
  EXPECT_TRUE(absl::StartsWith(got, "Node 0, zone      DMA\n  per-node stats\n")) << got;
  EXPECT_THAT(got, ::testing::HasSubstr("\n      pgdemote_khugepaged 0\n" + head)) << got;
  EXPECT_TRUE(absl::EndsWith(got, real_empty)) << got;
  // The real DMA zone's pageset values that follow from the same numbers.
  EXPECT_THAT(got, ::testing::HasSubstr("\n              high_min: 9\n              high_max: 240\n"
                                        "  vm stats threshold: 4\n"));
}

// The "per-node stats" block against this machine's (a later kernel's) /proc/zoneinfo, lines
// copied from its DMA zone: with the same numbers every counter both kernels have prints the same
// line, in the same order. The lists differ only by version: 6.12 still has nr_writeback_temp;
// the later kernel adds pgdemote_proactive, nr_hugetlb, nr_balloon_pages, nr_kernel_file_pages,
// and, being a NUMA kernel, the NUMA_BALANCING promotion counters.
TEST(Zoneinfo, PerNodeStatsLinesMatchARealKernelsForTheSameNumbers) {
  const std::vector<std::string> real = {
      "      nr_inactive_anon 1179", "      nr_active_anon 8", "      nr_inactive_file 151982",
      "      nr_active_file 136443", "      nr_unevictable 3715", "      nr_slab_reclaimable 64324",
      "      nr_slab_unreclaimable 13184", "      nr_isolated_anon 0", "      nr_isolated_file 0",
      "      workingset_nodes 58071", "      workingset_refault_anon 0", "      workingset_refault_file 2842086",
      "      workingset_activate_anon 0", "      workingset_activate_file 1252889",
      "      workingset_restore_anon 0", "      workingset_restore_file 0", "      workingset_nodereclaim 0",
      "      nr_anon_pages 2470", "      nr_mapped    2921", "      nr_file_pages 290865", "      nr_dirty     50",
      "      nr_writeback 0", "      nr_shmem     2439", "      nr_shmem_hugepages 0", "      nr_shmem_pmdmapped 0",
      "      nr_file_hugepages 3", "      nr_file_pmdmapped 0", "      nr_anon_transparent_hugepages 0",
      "      nr_vmscan_write 0", "      nr_vmscan_immediate_reclaim 121694", "      nr_dirtied   50312761",
      "      nr_written   41237609", "      nr_throttled_written 0", "      nr_kernel_misc_reclaimable 0",
      "      nr_foll_pin_acquired 0", "      nr_foll_pin_released 0", "      nr_kernel_stack 1544",
      "      nr_page_table_pages 478", "      nr_sec_page_table_pages 0", "      nr_iommu_pages 0",
      "      nr_swapcached 0", "      pgpromote_success 0", "      pgpromote_candidate 0",
      "      pgpromote_candidate_nrl 0", "      pgdemote_kswapd 0", "      pgdemote_direct 0",
      "      pgdemote_khugepaged 0", "      pgdemote_proactive 0", "      nr_hugetlb   0",
      "      nr_balloon_pages 0", "      nr_kernel_file_pages 0"};
  std::map<std::string, std::pair<uint64_t, std::string>> by_name;  // name -> (value, line)
  std::vector<std::string> real_order;
  for (const std::string& line : real) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    ASSERT_EQ(f.size(), 2u) << line;
    uint64_t v = 0;
    ASSERT_TRUE(absl::SimpleAtoi(f[1], &v)) << line;
    by_name[f[0]] = {v, line};
    real_order.push_back(f[0]);
  }
  NodeStats node;
  std::vector<std::string> only_ours;
  for (size_t k = 0; k < kNrNodeStatItems; ++k) {
    auto it = by_name.find(kNodeStatNames[k]);
    if (it == by_name.end()) {
      only_ours.push_back(kNodeStatNames[k]);
    } else {
      node.value[k] = it->second.first;
    }
  }
  EXPECT_THAT(only_ours, ::testing::ElementsAre("nr_writeback_temp"));
  ZoneStats dma = Zone(ZONE_DMA);
  dma.pcp = {PcpCpuStats{.cpu = 0}};
  const std::string got = FormatZoneinfo(std::vector<ZoneStats>{dma}, ZoneinfoConfig{}, 0, node);
  const std::vector<std::string> lines = absl::StrSplit(got, '\n');
  ASSERT_GT(lines.size(), 2 + kNrNodeStatItems);
  EXPECT_EQ(lines[0], "Node 0, zone      DMA");
  EXPECT_EQ(lines[1], "  per-node stats");
  std::vector<std::string> shared_ours, shared_real;
  for (size_t k = 0; k < kNrNodeStatItems; ++k) {
    const std::string& line = lines[2 + k];
    auto it = by_name.find(kNodeStatNames[k]);
    if (it == by_name.end()) continue;
    EXPECT_EQ(line, it->second.second);
    shared_ours.push_back(kNodeStatNames[k]);
  }
  EXPECT_THAT(lines[2 + kNrNodeStatItems], ::testing::StartsWith("  pages free "));
  for (const std::string& name : real_order) {
    if (std::find(kNodeStatNames.begin(), kNodeStatNames.end(), name) != kNodeStatNames.end()) {
      shared_real.push_back(name);
    }
  }
  EXPECT_EQ(shared_ours, shared_real);
  EXPECT_EQ(shared_real.size() + 7, real.size());  // the seven counters 6.12 does not have
}

// Only the node's first populated zone carries the block; a node with no populated zone has none.
TEST(Zoneinfo, PerNodeStatsPrecedeOnlyTheFirstPopulatedZone) {
  ZoneStats dma = Zone(ZONE_DMA);
  dma.populated = false;
  ZoneStats normal = Zone(ZONE_NORMAL);
  normal.pcp = {PcpCpuStats{.cpu = 0}};
  std::string got = FormatZoneinfo(std::vector<ZoneStats>{dma, normal}, ZoneinfoConfig{});
  EXPECT_THAT(got, ::testing::HasSubstr("Node 0, zone   Normal\n  per-node stats\n      nr_inactive_anon 0\n"));
  EXPECT_EQ(got.find("per-node stats"), got.rfind("per-node stats"));
  EXPECT_THAT(got, ::testing::HasSubstr("Node 0, zone      DMA\n  pages free     0\n"));
  normal.populated = false;
  got = FormatZoneinfo(std::vector<ZoneStats>{dma, normal}, ZoneinfoConfig{});
  EXPECT_THAT(got, ::testing::Not(::testing::HasSubstr("per-node stats")));
}

}  // namespace
}  // namespace physmem
