// Zone types of the emulated machine (the kernel's enum zone_type, include/linux/mmzone.h).
//
// Who uses it: every layer that names a zone: the target profile (which zones an architecture
// configures and where they end), gfp_zone(), the zones themselves, statistics.
// Thread-safety: constants only.
//
// ZONE_MOVABLE and ZONE_DEVICE are not modelled: they are policy overlays on NORMAL/HIGHMEM
// memory (kernelcore=, hotplug) rather than address-range limits a device cares about.
#ifndef PHYSMEM_ALLOCATOR_ZONE_TYPE_H_
#define PHYSMEM_ALLOCATOR_ZONE_TYPE_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace physmem {

// Ordered from the lowest physical addresses up, as in the kernel: a zonelist walks this
// enum downward from the highest zone an allocation may use.
enum ZoneType : uint8_t {
  ZONE_DMA = 0,
  ZONE_DMA32 = 1,
  ZONE_NORMAL = 2,
  ZONE_HIGHMEM = 3,
  MAX_NR_ZONES = 4,
};

// Names exactly as /proc/zoneinfo and /proc/buddyinfo print them (mm/page_alloc.c zone_names[]).
inline constexpr std::array<std::string_view, MAX_NR_ZONES> kZoneNames = {"DMA", "DMA32", "Normal",
                                                                         "HighMem"};

inline constexpr std::string_view zone_name(ZoneType z) { return kZoneNames[z]; }

// Accepts the /proc spelling ("Normal") and the enum spelling ("ZONE_NORMAL"), case-insensitively.
std::optional<ZoneType> ParseZoneName(std::string_view name);

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_ZONE_TYPE_H_
