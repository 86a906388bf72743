// Tests of allocator/arena_map.h: the per-pageblock snapshot the picture of the arena is drawn from.
#include "allocator/arena_map.h"

#include <atomic>
#include <limits>
#include <thread>
#include <vector>

#include "allocator/page_allocator.h"
#include "gtest/gtest.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using testing::MiB;

std::unique_ptr<PageAllocator> Make(Target t, bool pcp = true) {
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(testing::SmallOptions(std::move(t), pcp));
  EXPECT_TRUE(pa.ok()) << pa.status();
  return std::move(*pa);
}

// NORMAL [4M, 8M) and [10M, 16M): the pageblock [8M, 10M) is a hole inside the zone.
Target HoleInNormal() {
  Target t = testing::SmallX86();
  t.ram = {{0, 640 * testing::KiB}, {1 * MiB, 2560 * testing::KiB}, {4 * MiB, 4 * MiB}, {10 * MiB, 6 * MiB}};
  return t;
}

const ArenaMapEntry& EntryOf(const ArenaMap& map, ZoneType z, uint64_t pfn) {
  for (const ArenaMapZone& zone : map.zones) {
    if (zone.type == z) return zone.entries.at((pfn - zone.first_pfn) / map.pages_per_entry());
  }
  ADD_FAILURE() << "no zone " << zone_name(z);
  static ArenaMapEntry none;
  return none;
}

// Σ free = the zone's free pages, Σ allocated = present - free, and no entry holds more pages than
// its span inside the zone.
void ExpectBooksBalance(const PageAllocator& pa, const ArenaMap& map) {
  for (const ArenaMapZone& zone : map.zones) {
    uint64_t free = 0, allocated = 0;
    for (size_t i = 0; i < zone.entries.size(); ++i) {
      const ArenaMapEntry& e = zone.entries[i];
      free += e.free_pages;
      allocated += e.allocated_pages;
      EXPECT_LE(uint64_t{e.free_pages} + e.allocated_pages, zone.entry_span_pages(i, map.pages_per_entry()))
          << zone_name(zone.type) << " entry " << i;
      EXPECT_EQ(e.free_pages == 0, e.max_free_order < 0) << zone_name(zone.type) << " entry " << i;
    }
    for (const ZoneStats& s : pa.Stats()) {
      if (s.type != zone.type) continue;
      EXPECT_EQ(free, s.free_pages) << zone_name(zone.type);
      EXPECT_EQ(allocated, s.present_pages - s.free_pages) << zone_name(zone.type);
    }
  }
}

TEST(ArenaMap, AFreshMachineIsAllFreeInMaximalBlocks) {
  auto pa = Make(testing::SmallX86());
  const ArenaMap map = TakeArenaMap(*pa);
  EXPECT_EQ(map.pageblocks_per_entry, 1u);
  EXPECT_EQ(map.pageblock_order, pa->pageblock_order());
  ASSERT_EQ(map.zones.size(), 3u);
  ExpectBooksBalance(*pa, map);
  // NORMAL [4M, 12M) is four 2 MiB pageblocks inside two free order-10 (4 MiB) blocks.
  const ArenaMapZone& normal = map.zones[2];
  EXPECT_EQ(normal.type, ZONE_NORMAL);
  ASSERT_EQ(normal.entries.size(), 8 * MiB / (uint64_t{4096} << map.pageblock_order));
  for (const ArenaMapEntry& e : normal.entries) {
    EXPECT_EQ(e.allocated_pages, 0u);
    EXPECT_EQ(e.max_free_order, 10);
  }
  EXPECT_EQ(normal.nr_free.size(), map.nr_orders);
}

TEST(ArenaMap, AnAllocatedPageblockIsAllocatedWithItsMigratetype) {
  auto pa = Make(testing::SmallX86());
  Page* block = pa->alloc_pages(GFP_KERNEL, pa->pageblock_order());
  ASSERT_NE(block, nullptr);
  Page* small = pa->alloc_pages(GFP_HIGHUSER_MOVABLE, 0);
  ASSERT_NE(small, nullptr);
  const ArenaMap map = TakeArenaMap(*pa);
  ExpectBooksBalance(*pa, map);
  const ArenaMapEntry& e = EntryOf(map, pa->page_zonenum(block), pa->page_to_pfn(block));
  EXPECT_EQ(e.allocated_pages, 1u << pa->pageblock_order());
  EXPECT_EQ(e.free_pages, 0u);
  EXPECT_EQ(e.max_free_order, -1);
  EXPECT_EQ(e.migratetype, pa->pageblock_migratetype(block));
  const ArenaMapEntry& s = EntryOf(map, pa->page_zonenum(small), pa->page_to_pfn(small));
  EXPECT_GE(s.allocated_pages, 1u);
  EXPECT_GT(s.free_pages, 0u);
  EXPECT_EQ(s.migratetype, pa->pageblock_migratetype(small));
}

TEST(ArenaMap, BlocksOnPerCpuListsCountAsFree) {
  auto pa = Make(testing::SmallX86(), /*pcp=*/true);
  std::vector<Page*> pages;
  for (int i = 0; i < 40; ++i) pages.push_back(pa->alloc_pages(GFP_KERNEL, 0));
  for (Page* p : pages) ASSERT_TRUE(pa->__free_pages(p, 0).ok());
  ExpectBooksBalance(*pa, TakeArenaMap(*pa));
}

TEST(ArenaMap, APageblockWithoutRamInsideAZoneHasNoPages) {
  auto pa = Make(HoleInNormal());
  const ArenaMap map = TakeArenaMap(*pa);
  ExpectBooksBalance(*pa, map);
  const uint64_t hole_pfn = 8 * MiB / 4096;
  const ArenaMapEntry& hole = EntryOf(map, ZONE_NORMAL, hole_pfn);
  EXPECT_EQ(hole.free_pages + hole.allocated_pages, 0u);
  EXPECT_EQ(hole.max_free_order, -1);
  const ArenaMapEntry& after = EntryOf(map, ZONE_NORMAL, 10 * MiB / 4096);
  EXPECT_EQ(after.free_pages, 1u << map.pageblock_order);
}

TEST(ArenaMap, ManyPageblocksShareAnEntryAboveMaxEntries) {
  auto pa = Make(testing::SmallX86());
  ASSERT_NE(pa->alloc_pages(GFP_KERNEL, 3), nullptr);
  const ArenaMap map = TakeArenaMap(*pa, /*max_entries=*/3);
  // Entries are aligned: at 4 pageblocks (8 MiB) an entry, NORMAL [4M, 12M) still needs two; at 8
  // (16 MiB), every zone fits one.
  EXPECT_EQ(map.pageblocks_per_entry, 8u);
  size_t entries = 0;
  for (const ArenaMapZone& z : map.zones) entries += z.entries.size();
  EXPECT_LE(entries, 3u);
  ExpectBooksBalance(*pa, map);
}

TEST(ArenaMap, SnapshotsRunBesideAllocationsAndFrees) {
  auto pa = Make(testing::SmallX86());
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    std::vector<std::pair<Page*, unsigned>> held;
    unsigned n = 0;
    while (!stop.load()) {
      const unsigned order = n++ % 4;
      if (Page* p = pa->alloc_pages(GFP_KERNEL, order)) held.emplace_back(p, order);
      if (held.size() > 64 || (n % 3 == 0 && !held.empty())) {
        ASSERT_TRUE(pa->__free_pages(held.back().first, held.back().second).ok());
        held.pop_back();
      }
    }
    for (auto [p, o] : held) ASSERT_TRUE(pa->__free_pages(p, o).ok());
  });
  for (int i = 0; i < 200; ++i) {
    const ArenaMap map = TakeArenaMap(*pa);
    for (const ArenaMapZone& zone : map.zones) {
      for (size_t e = 0; e < zone.entries.size(); ++e) {
        EXPECT_LE(uint64_t{zone.entries[e].free_pages} + zone.entries[e].allocated_pages,
                  zone.entry_span_pages(e, map.pages_per_entry()));
      }
    }
  }
  stop = true;
  worker.join();
  ExpectBooksBalance(*pa, TakeArenaMap(*pa));
}

}  // namespace
}  // namespace physmem
