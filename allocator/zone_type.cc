#include "allocator/zone_type.h"

#include <algorithm>
#include <cctype>

namespace physmem {
namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

std::optional<ZoneType> ParseZoneName(std::string_view name) {
  constexpr std::string_view kPrefix = "ZONE_";
  std::string_view bare = name;
  if (bare.size() > kPrefix.size() && EqualsIgnoreCase(bare.substr(0, kPrefix.size()), kPrefix)) {
    bare.remove_prefix(kPrefix.size());
  }
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (EqualsIgnoreCase(bare, kZoneNames[z])) return static_cast<ZoneType>(z);
  }
  return std::nullopt;
}

}  // namespace physmem
