// Small emulated machines for tests: a few thousand pages, every zone, holes between RAM ranges,
// zone boundaries that cut through RAM. Built in code (not from files) so each test states the
// exact layout it relies on.
#ifndef PHYSMEM_TESTS_ALLOCATOR_TEST_TARGETS_H_
#define PHYSMEM_TESTS_ALLOCATOR_TEST_TARGETS_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "allocator/page_allocator.h"
#include "allocator/target.h"

namespace physmem::testing {

inline constexpr uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

// x86_64-like: DMA [0,1M) DMA32 [1M,4M) NORMAL [4M,...). RAM: [0,640K) hole [1M,3.5M) hole
// [4M,12M) -> DMA 160 pages, DMA32 640 pages, NORMAL 2048 pages.
inline Target SmallX86() {
  Target t;
  t.name = "small-x86";
  t.page_size = 4096;
  t.page_shift = 12;
  t.page_offset = 0xffff888000000000ull;
  t.zone_configured = {true, true, true, false};
  t.zone_end = {1 * MiB, 4 * MiB, std::numeric_limits<uint64_t>::max(), 0};
  t.ram = {{0, 640 * KiB}, {1 * MiB, 2560 * KiB}, {4 * MiB, 8 * MiB}};
  t.max_page_order = 10;
  return t;
}

// i386-like with highmem: DMA [0,1M) NORMAL [1M,4M) HIGHMEM [4M,...), PAGE_OFFSET 0xC0000000,
// a 16-slot kmap window. RAM [0,8M) -> DMA 256, NORMAL 768, HIGHMEM 1024 pages.
inline Target SmallI386() {
  Target t;
  t.name = "small-i386";
  t.page_size = 4096;
  t.page_shift = 12;
  t.page_offset = 0xC0000000ull;
  t.zone_configured = {true, false, true, true};
  t.zone_end = {1 * MiB, 0, 4 * MiB, std::numeric_limits<uint64_t>::max()};
  t.ram = {{0, 8 * MiB}};
  t.pkmap_base = 0xff800000ull;
  t.pkmap_slots = 16;
  t.max_page_order = 10;
  return t;
}

// arm64 with 64 KiB pages: DRAM at 0x80000000 (PHYS_OFFSET), DMA [0x80000000, 0x84000000) and
// NORMAL above, 128 MiB -> DMA 1024, NORMAL 1024 pages; MAX_PAGE_ORDER 13 (ARCH_FORCE_MAX_ORDER
// for 64K pages). pageblock_order 7 (8 MiB) instead of the derived 13 (512 MiB), so that 2048
// pages hold 16 pageblocks and mobility grouping has room to claim and steal.
inline Target SmallArm64_64K() {
  Target t;
  t.name = "small-arm64-64k";
  t.page_size = 65536;
  t.page_shift = 16;
  t.page_offset = 0xffff000000000000ull;
  t.phys_offset = 0x80000000ull;
  t.zone_configured = {true, false, true, false};
  t.zone_end = {0x84000000ull, 0, std::numeric_limits<uint64_t>::max(), 0};
  t.ram = {{0x80000000ull, 128 * MiB}};
  t.max_page_order = 13;
  t.pageblock_order_override = 7;
  return t;
}

inline PageAllocatorOptions SmallOptions(Target t, bool pcp = true) {
  PageAllocatorOptions o;
  o.target = std::move(t);
  o.arena_backing = ArenaOptions::Backing::kOrdinary;
  o.pcp_enabled = pcp;
  o.nr_cpus = 0;
  return o;
}

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_ALLOCATOR_TEST_TARGETS_H_
