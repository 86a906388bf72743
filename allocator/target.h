// The emulated target machine: what the allocator pretends to run on.
//
// A Target fixes the page size, PAGE_OFFSET (the base of the kernel's direct map), where each
// zone ends in emulated physical address space, and the memory map: RAM ranges with holes
// between them, as a firmware (e820 / devicetree) map would give the kernel. Built-in profiles
// model x86_64, i386 (with HIGHMEM), arm64 and the Raspberry Pi 4 with the kernel's own zone
// limits (KERNEL.md section 1); custom profiles are Protobuf text files whose schema,
// proto/physmem/v1/target.proto, is also what the GetTarget RPC returns.
//
// Who calls it: the daemon at start-up (BuiltinTarget / LoadTargetFile, then the arena and
// the zones are sized from the Target), the zone set-up code (zone_start, zone_end, ram), and
// the service's GetTarget (ToProto).
//
// Thread-safety: a Target is a plain value, immutable once built; concurrent reads are safe,
// and the free functions share no state.
#ifndef PHYSMEM_ALLOCATOR_TARGET_H_
#define PHYSMEM_ALLOCATOR_TARGET_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/zone_type.h"
#include "physmem/v1/target.pb.h"

namespace physmem {

// One range of RAM in emulated physical address space, in bytes: [start, end()).
struct RamRange {
  uint64_t start;
  uint64_t size;
  uint64_t end() const { return start + size; }
  friend bool operator==(const RamRange&, const RamRange&) = default;
};

// A validated Target (see ValidateTarget) satisfies:
//   page_size == 1 << page_shift;
//   zone z spans [zone_start(z), zone_end[z]) with zone_start(z) = zone_end of the highest
//   configured zone below z (0 for the lowest), so the configured zones tile [0, 2^64);
//   every RAM byte lies in exactly one configured zone;
//   page_address(phys) = page_offset + (phys - phys_offset) for phys < lowmem_end().
struct Target {
  std::string name;
  std::string description;
  uint64_t page_size = 4096;  // bytes, power of two
  unsigned page_shift = 12;   // log2(page_size)
  uint64_t page_offset = 0;   // PAGE_OFFSET: emulated kernel virtual address of phys_offset
  uint64_t phys_offset = 0;   // physical address PAGE_OFFSET maps (0 on x86; DRAM base on arm64)
  // Zones the architecture configures (a configured zone may hold no RAM: arm64's DMA32).
  std::array<bool, MAX_NR_ZONES> zone_configured{};
  // Exclusive physical end of each configured zone; UINT64_MAX for the highest configured
  // zone. A zone spans [end of the previous configured zone (or 0), zone_end).
  std::array<uint64_t, MAX_NR_ZONES> zone_end{};
  std::vector<RamRange> ram;  // sorted by start, disjoint, touching ones merged, page aligned
  uint64_t pkmap_base = 0;    // first emulated virtual address of the kmap() window (highmem)
  uint32_t pkmap_slots = 0;   // LAST_PKMAP: pages in that window
  unsigned max_page_order = 10;  // MAX_PAGE_ORDER; NR_PAGE_ORDERS = max_page_order + 1
  // The profile's pageblock_order override (CONFIG_PAGE_BLOCK_ORDER), or -1: derive it
  // (PageblockOrder() in allocator/pageblock.h).
  int pageblock_order_override = -1;
  // memblock_reserve()d ranges (memblock.reserved), sorted by start, overlapping and touching
  // ones merged; they may cover holes. Their RAM pages are present but not managed: the buddy
  // never sees them, as memblock_free_all() skips reserved memory.
  std::vector<RamRange> reserved;

  unsigned nr_page_orders() const { return max_page_order + 1; }
  // Physical start of zone z: the end of the highest configured zone below it, or 0.
  uint64_t zone_start(ZoneType z) const;
  uint64_t total_ram_bytes() const;
  uint64_t total_pages() const { return total_ram_bytes() >> page_shift; }
  // RAM pages that lie in [zone_start(z), zone_end[z]); 0 for a zone that is not configured.
  // The zone's present_pages.
  uint64_t zone_ram_pages(ZoneType z) const;
  // Of those, the pages no reserved range covers: the zone's managed_pages.
  uint64_t zone_managed_pages(ZoneType z) const;
  // RAM pages not reserved, over all zones: what the allocator manages (PageCensus total_pages).
  uint64_t managed_pages() const;
  // The RAM of `ram` that no reserved range covers, in address order (what mem_map describes).
  std::vector<RamRange> ManagedRam() const;
  // Whether the byte at `phys` is RAM inside a reserved range (present, not managed).
  bool IsReservedRam(uint64_t phys) const;
  bool has_highmem() const { return zone_configured[ZONE_HIGHMEM]; }
  // Physical end of the direct map: the start of ZONE_HIGHMEM, or UINT64_MAX without it.
  uint64_t lowmem_end() const;
  // e820-style listing, one line per RAM range and per hole between (or below) them, then one
  // line per reserved range, e.g.
  //   [mem 0x0000000000100000-0x000000000fffffff] RAM     255 MiB  DMA DMA32
  //   [mem 0x0000000010000000-0x00000000ffffffff] hole   3840 MiB
  //   [mem 0x0000000000000000-0x00000000000fffff] reserved  1 MiB  (158 RAM pages)
  std::string MemoryMapString() const;

  friend bool operator==(const Target&, const Target&) = default;
};

// The built-in profiles, in this order: "x86_64", "i386", "arm64", "rpi4".
std::vector<std::string> BuiltinTargetNames();

// A built-in profile with mem_bytes of RAM in total (rounded down to whole pages; holes are
// not counted); 0 = the profile's default size. Errors: NotFound for an unknown name (listing
// the known ones); InvalidArgument for a size outside the profile's range (saying the range).
absl::StatusOr<Target> BuiltinTarget(std::string_view name, uint64_t mem_bytes = 0);

// Parses and validates one TargetProfile in Protobuf text format. source_name (usually the
// file path) prefixes every error, with the 1-based line of the offending field when the
// file has one: "board.textproto:7: ram[1] {...} overlaps ram[0] {...}". InvalidArgument on
// syntax errors, unknown fields and every rule listed in target.proto.
absl::StatusOr<Target> ParseTargetText(std::string_view text, std::string_view source_name);

// Reads path and calls ParseTargetText. NotFound / PermissionDenied / ... if it cannot be read.
absl::StatusOr<Target> LoadTargetFile(const std::string& path);

// Checks every rule listed in target.proto, plus the Target's own invariants (page_shift
// matches page_size, ram sorted). OK or InvalidArgument naming the field, what was wrong and
// what was expected.
absl::Status ValidateTarget(const Target& t);

// Field-for-field conversion without validation; 0 means the documented default for
// page_size and max_page_order, and end 0 means unbounded (zone_end UINT64_MAX). RAM ranges
// are sorted by start and touching ranges merged; overlapping ones are kept for
// ValidateTarget to report.
Target FromProto(const physmem::v1::TargetProfile& profile);
physmem::v1::TargetProfile ToProto(const Target& t);

// The embedded default: BuiltinTarget("x86_64") at its default size (512 MiB, with RAM in
// DMA, DMA32 and NORMAL). Needs no file.
absl::StatusOr<Target> DefaultTarget();

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_TARGET_H_
