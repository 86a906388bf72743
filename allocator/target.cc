#include "allocator/target.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace physmem {
namespace {

namespace pb = ::google::protobuf;
using physmem::v1::TargetProfile;

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kTiB = uint64_t{1} << 40;
constexpr uint64_t kUnbounded = std::numeric_limits<uint64_t>::max();

constexpr uint64_t kDefaultPageSize = 4096;
constexpr uint64_t kMinPageSize = 4 * kKiB;
constexpr uint64_t kMaxPageSize = 64 * kKiB;
constexpr unsigned kDefaultMaxPageOrder = 10;  // the kernel's MAX_PAGE_ORDER default
// 64 KiB << 15 = 2 GiB: the largest block any valid profile can ask for still fits easily in
// the 64-bit byte counts used everywhere, so the order range is the only limit needed.
constexpr unsigned kMaxMaxPageOrder = 15;
// Page metadata links pages by 32-bit index; two values stay free for "none" sentinels.
constexpr uint64_t kMaxTotalPages = (uint64_t{1} << 32) - 2;

// ---- formatting ---------------------------------------------------------------------------

// Debian's Abseil keeps its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so StrCat
// does not take std::string_view directly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

std::string Hex(uint64_t v) { return absl::StrFormat("0x%x", v); }

// Largest binary unit that divides the value exactly, so nothing is rounded away: "636 KiB".
std::string FormatBytes(uint64_t bytes) {
  static constexpr std::pair<uint64_t, const char*> kUnits[] = {
      {kTiB, "TiB"}, {kGiB, "GiB"}, {kMiB, "MiB"}, {kKiB, "KiB"}};
  for (const auto& [unit, suffix] : kUnits) {
    if (bytes != 0 && bytes % unit == 0) return absl::StrCat(bytes / unit, " ", suffix);
  }
  return absl::StrCat(bytes, " bytes");
}

std::string RangeString(uint64_t start, uint64_t size) {
  return absl::StrCat("{start: ", Hex(start), " size: ", Hex(size), "}");
}

// Zone names as they are written in profile files (the proto enum's spelling).
std::string ProtoZoneName(int value) {
  if (!v1::Zone_IsValid(value)) return absl::StrCat("zone value ", value);
  return v1::Zone_Name(static_cast<v1::Zone>(value));
}

// ZONE_DMA (0) in C++ is ZONE_DMA (1) in the proto, which reserves 0 for "unspecified".
v1::Zone ToProtoZone(ZoneType z) { return static_cast<v1::Zone>(z + 1); }

std::optional<ZoneType> FromProtoZone(int value) {
  if (value < v1::ZONE_DMA || value > v1::ZONE_HIGHMEM) return std::nullopt;
  return static_cast<ZoneType>(value - 1);
}

bool IsPageAligned(uint64_t v, uint64_t page_size) { return (v & (page_size - 1)) == 0; }

// ---- validation problems ------------------------------------------------------------------
//
// Validation runs on the proto, so a problem can point back at the profile text: `field` and
// `index` name a TargetProfile field (index -1 for a singular one), `sub` a field inside that
// message. `where` lists candidates best first; the parser reports the first line it has
// (e.g. pkmap_slots' own line, else the HIGHMEM zone entry when pkmap_slots is absent).

struct FieldRef {
  std::string_view field;
  int index = -1;
  std::string_view sub = {};
};

struct Problem {
  std::string message;
  std::vector<FieldRef> where;
};

using MaybeProblem = std::optional<Problem>;

Problem At(std::vector<FieldRef> where, std::string message) {
  return Problem{std::move(message), std::move(where)};
}

std::string RamName(const TargetProfile& p, int i) {
  return absl::StrCat("ram[", i, "] ", RangeString(p.ram(i).start(), p.ram(i).size()));
}

std::string ReservedName(const TargetProfile& p, int i) {
  return absl::StrCat("reserved[", i, "] ", RangeString(p.reserved(i).start(), p.reserved(i).size()));
}

std::string ZoneEntryName(const TargetProfile& p, int i) {
  return absl::StrCat("zone[", i, "] (", ProtoZoneName(p.zone(i).zone()), ")");
}

uint64_t EffectivePageSize(const TargetProfile& p) {
  return p.page_size() == 0 ? kDefaultPageSize : p.page_size();
}

unsigned EffectiveMaxPageOrder(const TargetProfile& p) {
  return p.max_page_order() == 0 ? kDefaultMaxPageOrder : p.max_page_order();
}

MaybeProblem CheckPageSize(uint64_t page_size) {
  if (std::has_single_bit(page_size) && page_size >= kMinPageSize && page_size <= kMaxPageSize) {
    return std::nullopt;
  }
  return At({{"page_size"}},
            absl::StrCat("page_size ", page_size, " (", Hex(page_size),
                         ") is not allowed: expected a power of two from 4096 (4 KiB) to 65536 "
                         "(64 KiB)"));
}

MaybeProblem CheckMaxPageOrder(unsigned order) {
  if (order >= 1 && order <= kMaxMaxPageOrder) return std::nullopt;
  return At({{"max_page_order"}},
            absl::StrCat("max_page_order ", order, " is out of range: expected 1..",
                         kMaxMaxPageOrder, " (0 or absent means ", kDefaultMaxPageOrder, ")"));
}

// The pageblock_order override (CONFIG_PAGE_BLOCK_ORDER: range 1..MAX_PAGE_ORDER, a build error
// beyond it). A pageblock must also fit the zone layout: a pageblock straddling a zone end could
// not be moved whole (prep_move_freepages_block() refuses such blocks), so every bounded zone end
// must be a multiple of the pageblock size.
MaybeProblem CheckPageblockOrder(const TargetProfile& p, uint64_t page_size) {
  if (!p.has_pageblock_order()) return std::nullopt;
  const int order = p.pageblock_order();
  const unsigned max_order = EffectiveMaxPageOrder(p);
  if (order < 1 || order > static_cast<int>(max_order)) {
    return At({{"pageblock_order"}},
              absl::StrCat("pageblock_order ", order, " is impossible: expected 1..max_page_order (",
                           max_order, "); ", order < 1 ? "a pageblock holds at least 2 pages"
                                                       : "a pageblock cannot exceed the largest buddy block"));
  }
  if (order > 62 - std::countr_zero(page_size)) return std::nullopt;  // the order check above bounds it
  const uint64_t block_bytes = page_size << order;
  for (int i = 0; i < p.zone_size(); ++i) {
    const uint64_t end = p.zone(i).end();
    if (end != 0 && end % block_bytes != 0) {
      return At({{"pageblock_order"}, {"zone", i, "end"}},
                absl::StrCat("pageblock_order ", order, " does not fit the zone layout: ", ZoneEntryName(p, i),
                             " ends at ", Hex(end), ", not a multiple of the pageblock size ", Hex(block_bytes),
                             " (", page_size, " << ", order, ")"));
    }
  }
  return std::nullopt;
}

MaybeProblem CheckOffsets(const TargetProfile& p, uint64_t page_size) {
  if (!IsPageAligned(p.page_offset(), page_size)) {
    return At({{"page_offset"}}, absl::StrCat("page_offset ", Hex(p.page_offset()),
                                              " is not a multiple of page_size ", page_size));
  }
  if (!IsPageAligned(p.phys_offset(), page_size)) {
    return At({{"phys_offset"}}, absl::StrCat("phys_offset ", Hex(p.phys_offset()),
                                              " is not a multiple of page_size ", page_size));
  }
  return std::nullopt;
}

MaybeProblem CheckOneRamRange(const TargetProfile& p, int i, uint64_t page_size) {
  const v1::RamRange& r = p.ram(i);
  if (r.size() == 0) {
    return At({{"ram", i, "size"}, {"ram", i}},
              absl::StrCat(RamName(p, i), " is empty: size must be at least one page (",
                           page_size, " bytes)"));
  }
  if (!IsPageAligned(r.start(), page_size)) {
    return At({{"ram", i, "start"}, {"ram", i}},
              absl::StrCat(RamName(p, i), ": start ", Hex(r.start()),
                           " is not a multiple of page_size ", page_size));
  }
  if (!IsPageAligned(r.size(), page_size)) {
    return At({{"ram", i, "size"}, {"ram", i}},
              absl::StrCat(RamName(p, i), ": size ", Hex(r.size()),
                           " is not a multiple of page_size ", page_size));
  }
  if (r.size() - 1 > kUnbounded - r.start()) {
    return At({{"ram", i, "size"}, {"ram", i}},
              absl::StrCat(RamName(p, i), " runs past the end of the 64-bit address space"));
  }
  return std::nullopt;
}

// Two ranges overlap iff, walking them by start, one starts below the furthest end seen so
// far; that range and the one owning the furthest end are a concrete overlapping pair.
MaybeProblem CheckRamOverlaps(const TargetProfile& p) {
  std::vector<int> order(p.ram_size());
  for (int i = 0; i < p.ram_size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&p](int a, int b) { return p.ram(a).start() < p.ram(b).start(); });
  int furthest = order[0];
  for (size_t k = 1; k < order.size(); ++k) {
    const int cur = order[k];
    const uint64_t furthest_end = p.ram(furthest).start() + p.ram(furthest).size();
    if (p.ram(cur).start() < furthest_end) {
      const int later = std::max(cur, furthest);  // report at the entry written second
      const int earlier = std::min(cur, furthest);
      return At({{"ram", later}}, absl::StrCat(RamName(p, later), " overlaps ",
                                               RamName(p, earlier),
                                               "; RAM ranges must not overlap"));
    }
    if (p.ram(cur).start() + p.ram(cur).size() > furthest_end) furthest = cur;
  }
  return std::nullopt;
}

MaybeProblem CheckRamRanges(const TargetProfile& p, uint64_t page_size) {
  if (p.ram_size() == 0) {
    return At({}, "no RAM: the profile needs at least one `ram { start: ... size: ... }` range");
  }
  for (int i = 0; i < p.ram_size(); ++i) {
    if (auto problem = CheckOneRamRange(p, i, page_size)) return problem;
  }
  return CheckRamOverlaps(p);
}

MaybeProblem CheckZoneEntry(const TargetProfile& p, int i, uint64_t page_size,
                            const std::array<int, MAX_NR_ZONES>& first_seen) {
  const v1::ZoneLimit& zl = p.zone(i);
  const std::optional<ZoneType> z = FromProtoZone(zl.zone());
  const bool last = i == p.zone_size() - 1;
  if (!z) {
    return At({{"zone", i, "zone"}, {"zone", i}},
              absl::StrCat("zone[", i, "]: ", ProtoZoneName(zl.zone()),
                           " is not a zone; expected ZONE_DMA, ZONE_DMA32, ZONE_NORMAL or "
                           "ZONE_HIGHMEM"));
  }
  if (first_seen[*z] >= 0) {
    return At({{"zone", i, "zone"}, {"zone", i}},
              absl::StrCat(ZoneEntryName(p, i), " is listed twice (also zone[", first_seen[*z],
                           "]); each zone may appear once"));
  }
  if (i > 0 && zl.zone() < p.zone(i - 1).zone()) {
    return At({{"zone", i, "zone"}, {"zone", i}},
              absl::StrCat(ZoneEntryName(p, i), " is out of order: it comes after ",
                           ZoneEntryName(p, i - 1),
                           "; list zones from low to high: ZONE_DMA, ZONE_DMA32, ZONE_NORMAL, "
                           "ZONE_HIGHMEM"));
  }
  if (zl.end() == 0 && !last) {
    return At({{"zone", i, "end"}, {"zone", i}},
              absl::StrCat(ZoneEntryName(p, i),
                           " is unbounded (end 0 or absent) but is not the last zone listed; "
                           "only the highest zone may be unbounded"));
  }
  if (zl.end() != 0 && last) {
    return At({{"zone", i, "end"}, {"zone", i}},
              absl::StrCat(ZoneEntryName(p, i), " ends at ", Hex(zl.end()),
                           ", but the highest zone must be unbounded (omit end) so that every "
                           "physical address has a zone"));
  }
  if (!IsPageAligned(zl.end(), page_size)) {
    return At({{"zone", i, "end"}, {"zone", i}},
              absl::StrCat(ZoneEntryName(p, i), ": end ", Hex(zl.end()),
                           " is not a multiple of page_size ", page_size));
  }
  if (i > 0 && zl.end() != 0 && zl.end() < p.zone(i - 1).end()) {
    return At({{"zone", i, "end"}, {"zone", i}},
              absl::StrCat(ZoneEntryName(p, i), " ends at ", Hex(zl.end()),
                           ", below the end of ", ZoneEntryName(p, i - 1), " at ",
                           Hex(p.zone(i - 1).end()),
                           "; zone ends must not decrease (equal ends make an empty zone)"));
  }
  return std::nullopt;
}

MaybeProblem CheckZones(const TargetProfile& p, uint64_t page_size) {
  if (p.zone_size() == 0) {
    return At({}, "no zones: list at least `zone { zone: ZONE_NORMAL }` (unbounded)");
  }
  std::array<int, MAX_NR_ZONES> first_seen;
  first_seen.fill(-1);
  for (int i = 0; i < p.zone_size(); ++i) {
    if (auto problem = CheckZoneEntry(p, i, page_size, first_seen)) return problem;
    first_seen[*FromProtoZone(p.zone(i).zone())] = i;
  }
  if (first_seen[ZONE_NORMAL] < 0) {
    std::vector<std::string> listed;
    for (const v1::ZoneLimit& zl : p.zone()) listed.push_back(ProtoZoneName(zl.zone()));
    return At({{"zone", p.zone_size() - 1}},
              absl::StrCat("ZONE_NORMAL is not configured (zones listed: ",
                           absl::StrJoin(listed, ", "), "); every target needs ZONE_NORMAL"));
  }
  return std::nullopt;
}

// Valid zones assumed. The direct map ends where ZONE_HIGHMEM starts: the end of the zone
// listed just before it.
uint64_t ProfileLowmemEnd(const TargetProfile& p) {
  for (int i = 1; i < p.zone_size(); ++i) {
    if (p.zone(i).zone() == v1::ZONE_HIGHMEM) return p.zone(i - 1).end();
  }
  return kUnbounded;
}

int HighmemEntry(const TargetProfile& p) {
  for (int i = 0; i < p.zone_size(); ++i) {
    if (p.zone(i).zone() == v1::ZONE_HIGHMEM) return i;
  }
  return -1;
}

MaybeProblem CheckRamAbovePhysOffset(const TargetProfile& p) {
  for (int i = 0; i < p.ram_size(); ++i) {
    if (p.ram(i).start() < p.phys_offset()) {
      return At({{"ram", i, "start"}, {"ram", i}},
                absl::StrCat(RamName(p, i), " starts below phys_offset ", Hex(p.phys_offset()),
                             ": RAM there would have no direct-map address; raise the range or "
                             "lower phys_offset"));
    }
  }
  return std::nullopt;
}

MaybeProblem CheckTotalPages(const TargetProfile& p, uint64_t page_size) {
  const unsigned shift = std::countr_zero(page_size);
  uint64_t pages = 0;
  for (int i = 0; i < p.ram_size(); ++i) {
    pages += p.ram(i).size() >> shift;
    if (pages > kMaxTotalPages) {
      return At({{"ram", i}},
                absl::StrCat("too many pages: with ", RamName(p, i), " the RAM reaches ", pages,
                             " pages of ", page_size, " bytes; at most ", kMaxTotalPages,
                             " pages (2^32 - 2) are allowed because page indices are 32 bit"));
    }
  }
  return std::nullopt;
}

// The direct map covers phys [phys_offset, end of the highest lowmem RAM byte) at
// [page_offset, page_offset + span). Returns the span and the RAM entry that sets it.
std::pair<uint64_t, int> DirectMapSpan(const TargetProfile& p) {
  const uint64_t lowmem_end = ProfileLowmemEnd(p);
  uint64_t end = p.phys_offset();
  int owner = -1;
  for (int i = 0; i < p.ram_size(); ++i) {
    if (p.ram(i).start() >= lowmem_end) continue;
    const uint64_t e = std::min(p.ram(i).start() + p.ram(i).size(), lowmem_end);
    if (e > end) {
      end = e;
      owner = i;
    }
  }
  return {end - p.phys_offset(), owner};
}

MaybeProblem CheckDirectMap(const TargetProfile& p) {
  const auto [span, owner] = DirectMapSpan(p);
  if (span == 0 || span - 1 <= kUnbounded - p.page_offset()) return std::nullopt;
  return At({{"page_offset"}, {"ram", owner}},
            absl::StrCat("the direct map of lowmem wraps past 2^64: page_offset ",
                         Hex(p.page_offset()), " + ", Hex(span), " bytes (up to the end of ",
                         RamName(p, owner), "); lower page_offset or the RAM"));
}

MaybeProblem CheckPkmap(const TargetProfile& p, uint64_t page_size) {
  const int highmem = HighmemEntry(p);
  if (highmem < 0) return std::nullopt;
  if (p.pkmap_slots() == 0) {
    return At({{"pkmap_slots"}, {"zone", highmem}},
              "ZONE_HIGHMEM is configured but pkmap_slots is 0: highmem pages need a kmap() "
              "window; set pkmap_base and pkmap_slots (LAST_PKMAP, e.g. 1024)");
  }
  if (p.pkmap_base() == 0) {
    return At({{"pkmap_base"}, {"pkmap_slots"}},
              "ZONE_HIGHMEM is configured but pkmap_base is 0, the null address; set it to the "
              "kmap() window's first virtual address (i386: 0xff800000)");
  }
  if (!IsPageAligned(p.pkmap_base(), page_size)) {
    return At({{"pkmap_base"}}, absl::StrCat("pkmap_base ", Hex(p.pkmap_base()),
                                             " is not a multiple of page_size ", page_size));
  }
  const uint64_t window = uint64_t{p.pkmap_slots()} * page_size;  // <= 2^32 * 2^16
  const uint64_t window_last = p.pkmap_base() + (window - 1);
  if (window - 1 > kUnbounded - p.pkmap_base()) {
    return At({{"pkmap_base"}, {"pkmap_slots"}},
              absl::StrCat("the kmap() window at pkmap_base ", Hex(p.pkmap_base()), " with ",
                           p.pkmap_slots(), " slots of ", page_size,
                           " bytes wraps past 2^64; lower pkmap_base or pkmap_slots"));
  }
  const auto [span, owner] = DirectMapSpan(p);
  if (span == 0) return std::nullopt;
  const uint64_t map_last = p.page_offset() + (span - 1);
  if (p.pkmap_base() <= map_last && p.page_offset() <= window_last) {
    return At({{"pkmap_base"}, {"pkmap_slots"}},
              absl::StrCat("the kmap() window [", Hex(p.pkmap_base()), ", ",
                           Hex(window_last), "] overlaps the direct map of lowmem [",
                           Hex(p.page_offset()), ", ", Hex(map_last),
                           "]; move pkmap_base outside it"));
  }
  return std::nullopt;
}

// memblock_reserve() ranges: page aligned, non-empty, within the address space. Overlaps are
// allowed (memblock_add_range() merges them), and so are holes: 6.12 reserves [0, 1 MiB) over
// the ISA hole. Zones valid assumed.
MaybeProblem CheckReservedRanges(const TargetProfile& p, uint64_t page_size) {
  for (int i = 0; i < p.reserved_size(); ++i) {
    const v1::RamRange& r = p.reserved(i);
    if (r.size() == 0) {
      return At({{"reserved", i, "size"}, {"reserved", i}},
                absl::StrCat(ReservedName(p, i), " is empty: size must be at least one page (", page_size,
                             " bytes)"));
    }
    if (!IsPageAligned(r.start(), page_size)) {
      return At({{"reserved", i, "start"}, {"reserved", i}},
                absl::StrCat(ReservedName(p, i), ": start ", Hex(r.start()), " is not a multiple of page_size ",
                             page_size));
    }
    if (!IsPageAligned(r.size(), page_size)) {
      return At({{"reserved", i, "size"}, {"reserved", i}},
                absl::StrCat(ReservedName(p, i), ": size ", Hex(r.size()), " is not a multiple of page_size ",
                             page_size));
    }
    if (r.size() - 1 > kUnbounded - r.start()) {
      return At({{"reserved", i, "size"}, {"reserved", i}},
                absl::StrCat(ReservedName(p, i), " runs past the end of the 64-bit address space"));
    }
  }
  if (p.reserved_size() == 0) return std::nullopt;
  // The kernel copes with a zone whose pages are all reserved (present, managed_pages 0); the
  // emulator's zones need a buddy page, so a profile must leave one.
  const Target t = FromProto(p);
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    const auto zone = static_cast<ZoneType>(z);
    const uint64_t present = t.zone_ram_pages(zone);
    if (present == 0 || t.zone_managed_pages(zone) != 0) continue;
    const uint64_t lo = t.zone_start(zone);
    const uint64_t last = t.zone_end[z] - 1;
    int culprit = 0;
    for (int i = 0; i < p.reserved_size(); ++i) {
      const uint64_t r_last = p.reserved(i).start() + (p.reserved(i).size() - 1);
      if (p.reserved(i).start() <= last && r_last >= lo) {
        culprit = i;
        break;
      }
    }
    return At({{"reserved", culprit}},
              absl::StrCat("the reserved ranges cover all ", present, " RAM pages of zone ", Sv(kZoneNames[z]),
                           " (with ", ReservedName(p, culprit),
                           "); a zone with RAM must keep at least one page for the buddy allocator"));
  }
  return std::nullopt;
}

// Every rule of target.proto, on the proto so that problems can name entries as written.
MaybeProblem CheckProfile(const TargetProfile& p) {
  const uint64_t page_size = EffectivePageSize(p);
  if (auto problem = CheckPageSize(page_size)) return problem;
  if (auto problem = CheckMaxPageOrder(EffectiveMaxPageOrder(p))) return problem;
  if (auto problem = CheckOffsets(p, page_size)) return problem;
  if (auto problem = CheckRamRanges(p, page_size)) return problem;
  if (auto problem = CheckZones(p, page_size)) return problem;
  if (auto problem = CheckPageblockOrder(p, page_size)) return problem;
  if (auto problem = CheckRamAbovePhysOffset(p)) return problem;
  if (auto problem = CheckTotalPages(p, page_size)) return problem;
  if (auto problem = CheckReservedRanges(p, page_size)) return problem;
  if (auto problem = CheckDirectMap(p)) return problem;
  return CheckPkmap(p, page_size);
}

// Checks that cannot be seen after ToProto: values whose 0 means "default" in the proto, and
// the Target's derived fields.
MaybeProblem CheckTargetBeforeProto(const Target& t) {
  if (auto problem = CheckPageSize(t.page_size)) return problem;
  if (auto problem = CheckMaxPageOrder(t.max_page_order)) return problem;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (t.zone_configured[z] && t.zone_end[z] == 0) {
      return At({}, absl::StrCat("zone_end[", Sv(kZoneNames[z]),
                                 "] is 0: a configured zone must end above address 0 "
                                 "(UINT64_MAX = unbounded)"));
    }
  }
  return std::nullopt;
}

MaybeProblem CheckTargetAfterProto(const Target& t) {
  if (t.page_shift != static_cast<unsigned>(std::countr_zero(t.page_size))) {
    return At({}, absl::StrCat("page_shift ", t.page_shift, " does not match page_size ",
                               t.page_size, " (expected ", std::countr_zero(t.page_size), ")"));
  }
  for (size_t i = 1; i < t.ram.size(); ++i) {
    if (t.ram[i].start < t.ram[i - 1].start) {
      return At({}, absl::StrCat("ram[", i, "] starts at ", Hex(t.ram[i].start), ", below ram[",
                                 i - 1, "] at ", Hex(t.ram[i - 1].start),
                                 "; Target::ram must be sorted by start (FromProto sorts)"));
    }
  }
  for (size_t i = 1; i < t.reserved.size(); ++i) {
    if (t.reserved[i].start <= t.reserved[i - 1].start + (t.reserved[i - 1].size - 1)) {
      return At({}, absl::StrCat("reserved[", i, "] starts at ", Hex(t.reserved[i].start), ", inside or below reserved[",
                                 i - 1, "]; Target::reserved must be sorted and disjoint (FromProto merges)"));
    }
  }
  return std::nullopt;
}

// ---- locating problems in the text ----------------------------------------------------------

// 1-based line of the field, or 0 if the text does not contain it.
int LineOf(const pb::TextFormat::ParseInfoTree& tree, const FieldRef& ref) {
  const pb::FieldDescriptor* field =
      TargetProfile::descriptor()->FindFieldByName(std::string(ref.field));
  if (field == nullptr) return 0;
  if (field->is_repeated() && ref.index < 0) return 0;
  if (ref.sub.empty()) return tree.GetLocation(field, ref.index).line + 1;
  const pb::TextFormat::ParseInfoTree* nested = tree.GetTreeForNested(field, ref.index);
  const pb::FieldDescriptor* sub = field->message_type()->FindFieldByName(std::string(ref.sub));
  if (nested == nullptr || sub == nullptr) return 0;
  return nested->GetLocation(sub, -1).line + 1;
}

std::string Locate(const Problem& problem, const pb::TextFormat::ParseInfoTree& tree,
                   std::string_view source) {
  for (const FieldRef& ref : problem.where) {
    if (const int line = LineOf(tree, ref); line > 0) {
      return absl::StrCat(Sv(source), ":", line, ": ", problem.message);
    }
  }
  return absl::StrCat(Sv(source), ": ", problem.message);
}

// Keeps protobuf's syntax errors (unknown fields included) instead of letting it log them.
class FirstErrorCollector : public pb::io::ErrorCollector {
 public:
  explicit FirstErrorCollector(std::string_view source) : source_(source) {}

  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!first_.empty()) return;
    first_ = absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", message);
  }

  std::string first() const {
    return first_.empty() ? absl::StrCat(source_, ": not a valid TargetProfile") : first_;
  }

 private:
  std::string source_;
  std::string first_;
};

// "deploy/targets/board.textproto" -> "board".
std::string SourceStem(std::string_view source) {
  const size_t slash = source.find_last_of('/');
  if (slash != std::string_view::npos) source.remove_prefix(slash + 1);
  const size_t dot = source.find('.');
  return std::string(source.substr(0, dot));
}

// ---- built-in profiles ----------------------------------------------------------------------

constexpr uint64_t kIsaHoleStart = 0x9f000;  // 636 KiB of low RAM, then VGA/BIOS to 1 MiB

// Low memory on x86 as 6.12 boots it (arch/x86/kernel/setup.c):
//  - trim_bios_range() turns the first page into E820_TYPE_RESERVED ("the first 4Kb of memory
//    is a BIOS owned area, not kernel ram"): e820__memblock_setup() adds only E820_TYPE_RAM to
//    memblock.memory, so page 0 is not present and ZONE_DMA starts at pfn 1 (zoneinfo
//    "start_pfn: 1", "spanned 4095"). The built-ins' RAM therefore starts at 0x1000.
//  - early_reserve_memory() reserves [0, 64 KiB) (memblock_reserve(0, SZ_64K)) and
//    reserve_bios_regions() the EBDA up to 1 MiB; then x86_platform.realmode_reserve() =
//    reserve_real_mode() (arch/x86/realmode/init.c) reserves all of it: "Unconditionally reserve
//    the entire first 1M" (memblock_reserve(0, SZ_1M), since 5.13's commit f1d4d47c5851, which
//    also removed CONFIG_X86_RESERVE_LOW, reservelow= and trim_low_memory_range()). Those pages
//    stay present but never reach the buddy: DMA's managed = present - 158 (pfns 1..0x9e).
// This machine's /proc/zoneinfo with 636 KiB of low RAM: DMA spanned 4095, present 3998,
// managed 3840, start_pfn 1.
constexpr uint64_t kX86FirstRamPage = 0x1000;
constexpr uint64_t kX86RealModeReserve = kMiB;  // reserve_real_mode(): memblock_reserve(0, SZ_1M)
constexpr uint64_t kFourGiB = 4 * kGiB;

uint64_t RoundDown(uint64_t v, uint64_t align) { return v & ~(align - 1); }

void SetZone(Target& t, ZoneType z, uint64_t end) {
  t.zone_configured[z] = true;
  t.zone_end[z] = end;
}

void AddRam(Target& t, uint64_t start, uint64_t size) {
  if (size != 0) t.ram.push_back({start, size});
}

// x86_64 PC (arch/x86/mm/init.c zone_sizes_init): DMA below 16 MiB (ISA), DMA32 below 4 GiB,
// NORMAL above; PCI MMIO hole below 4 GiB, so part of the RAM sits above 4 GiB.
Target BuildX86_64(uint64_t mem) {
  Target t;
  t.name = "x86_64";
  t.page_offset = 0xffff888000000000;  // __PAGE_OFFSET_BASE_L4, 4-level paging
  SetZone(t, ZONE_DMA, 16 * kMiB);     // MAX_DMA_PFN
  SetZone(t, ZONE_DMA32, kFourGiB);    // MAX_DMA32_PFN
  SetZone(t, ZONE_NORMAL, kUnbounded);
  const uint64_t low_end = RoundDown(std::min(mem / 2, 3 * kGiB), 2 * kMiB);
  AddRam(t, kX86FirstRamPage, kIsaHoleStart - kX86FirstRamPage);  // page 0: trim_bios_range()
  AddRam(t, kMiB, low_end - kMiB);
  AddRam(t, kFourGiB, mem - kIsaHoleStart - (low_end - kMiB));
  t.reserved.push_back({0, kX86RealModeReserve});
  t.description = absl::StrCat(
      "x86_64 PC, ", FormatBytes(mem), " RAM, 4-level paging. Zones as arch/x86/mm/init.c: "
      "DMA below 16 MiB (ISA DMA), DMA32 below 4 GiB (32-bit PCI masters), Normal above. "
      "e820-like map: 636 KiB of low RAM (page 0 taken by trim_bios_range()), the VGA/BIOS hole "
      "up to 1 MiB, RAM from 1 MiB, a PCI hole up to 4 GiB, the rest above 4 GiB. The first "
      "1 MiB is memblock-reserved (reserve_real_mode()): present, not managed.");
  return t;
}

// i386 with VMSPLIT_3G. Lowmem ends at MAXMEM (arch/x86/include/asm/pgtable_32_areas.h, 6.12):
//   MAXMEM = VMALLOC_END - PAGE_OFFSET - __VMALLOC_RESERVE, VMALLOC_END = PKMAP_BASE - 2 * PAGE_SIZE
// (CONFIG_HIGHMEM), with the default __VMALLOC_RESERVE of 128 MiB (arch/x86/mm/pgtable_32.c;
// the vmalloc= boot option changes it) and PKMAP_BASE 0xff800000, the classic layout's window
// (pkmap 0xff800000-0xffc00000 below the fixmap): 0xff7fe000 - 0xc0000000 - 0x8000000 =
// 0x377fe000, i.e. 887.99 MiB ("lowmem : 0xc0000000 - 0xf77fe000 (887 MB)" in the kernel's
// boot log), not a round 896 MiB. highmem_pfn_init() (arch/x86/mm/init_32.c) sets max_low_pfn =
// MAXMEM_PFN = PFN_DOWN(MAXMEM); RAM above it is HIGHMEM. RAM is contiguous from 1 MiB, so it
// ends 388 KiB (the ISA hole) above mem.
constexpr uint64_t kI386PageOffset = 0xC0000000;
constexpr uint64_t kI386PkmapBase = 0xff800000;
constexpr uint64_t kI386VmallocReserve = 128 * kMiB;  // __VMALLOC_RESERVE
constexpr uint64_t kI386Maxmem = (kI386PkmapBase - 2 * 4096) - kI386PageOffset - kI386VmallocReserve;
static_assert(kI386Maxmem == 0x377fe000);

Target BuildI386(uint64_t mem) {
  Target t;
  t.name = "i386";
  t.page_offset = kI386PageOffset;
  SetZone(t, ZONE_DMA, 16 * kMiB);
  SetZone(t, ZONE_NORMAL, kI386Maxmem);
  SetZone(t, ZONE_HIGHMEM, kUnbounded);
  AddRam(t, kX86FirstRamPage, kIsaHoleStart - kX86FirstRamPage);  // page 0: trim_bios_range()
  AddRam(t, kMiB, mem - kIsaHoleStart);
  t.reserved.push_back({0, kX86RealModeReserve});
  const bool pae = t.ram.back().end() > kFourGiB;  // physical addresses above 4 GiB need PAE
  t.pkmap_base = kI386PkmapBase;                  // PKMAP_BASE below the fixmap
  t.pkmap_slots = pae ? 512 : 1024;               // LAST_PKMAP: one page table of PTEs
  t.description = absl::StrCat(
      "i386 PC, ", FormatBytes(mem), " RAM, VMSPLIT_3G", pae ? ", PAE" : "",
      ". DMA below 16 MiB, Normal below MAXMEM 0x377fe000 (887.99 MiB: the 1 GiB kernel space "
      "minus the 128 MiB vmalloc reserve and the pkmap/fixmap area), HighMem above, reached "
      "through a ", t.pkmap_slots, "-slot kmap() window at 0xff800000. Page 0 is not RAM "
      "(trim_bios_range()) and the first 1 MiB is memblock-reserved (reserve_real_mode()).");
  return t;
}

// arm64, 48-bit VA, DRAM banks as in Arm's base platform memory map (Juno, FVP): 2 GiB at
// 0x80000000, 30 GiB at 0x880000000, 480 GiB at 0x8800000000. zone_dma_bits defaults to 32,
// so ZONE_DMA reaches 4 GiB and ZONE_DMA32, though configured, is empty.
Target BuildArm64(uint64_t mem) {
  Target t;
  t.name = "arm64";
  t.page_offset = 0xffff000000000000;
  t.phys_offset = 0x80000000;  // memstart_addr: the DRAM base
  SetZone(t, ZONE_DMA, kFourGiB);
  SetZone(t, ZONE_DMA32, kFourGiB);
  SetZone(t, ZONE_NORMAL, kUnbounded);
  const uint64_t bank0 = RoundDown(std::min(mem / 2, 2 * kGiB), 2 * kMiB);
  const uint64_t bank1 = std::min(mem - bank0, 30 * kGiB);
  AddRam(t, 0x80000000, bank0);
  AddRam(t, 0x880000000, bank1);
  AddRam(t, 0x8800000000, mem - bank0 - bank1);
  t.description = absl::StrCat(
      "arm64, ", FormatBytes(mem), " RAM, 48-bit VA, DRAM banks at 0x80000000 and "
      "0x880000000 (Arm's standard memory map). zone_dma_bits = 32: DMA covers up to 4 GiB, "
      "DMA32 is configured but empty, Normal above.");
  return t;
}

// Raspberry Pi 4: its DMA masters reach only 30 bits, so ZONE_DMA ends at 1 GiB. The firmware
// keeps [0x3b400000, 0x40000000) for the GPU and the SoC's MMIO sits at [0xfc000000, 4 GiB).
Target BuildRpi4(uint64_t mem) {
  Target t;
  t.name = "rpi4";
  t.page_offset = 0xffff000000000000;
  SetZone(t, ZONE_DMA, kGiB);
  SetZone(t, ZONE_DMA32, kFourGiB);
  SetZone(t, ZONE_NORMAL, kUnbounded);
  const uint64_t bank0 = std::min<uint64_t>(mem, 0x3b400000);
  const uint64_t bank1 = std::min<uint64_t>(mem - bank0, 0xfc000000 - 0x40000000);
  AddRam(t, 0, bank0);
  AddRam(t, 0x40000000, bank1);
  AddRam(t, kFourGiB, mem - bank0 - bank1);
  t.description = absl::StrCat(
      "Raspberry Pi 4 (arm64, 48-bit VA), ", FormatBytes(mem), " RAM. zone_dma_bits = 30: "
      "DMA below 1 GiB, DMA32 below 4 GiB, Normal above. Holes: the GPU's "
      "[0x3b400000, 0x40000000) and the MMIO at [0xfc000000, 4 GiB).");
  return t;
}

struct BuiltinSpec {
  std::string_view name;
  uint64_t default_bytes;
  uint64_t min_bytes;
  uint64_t max_bytes;
  std::string_view max_reason;
  Target (*build)(uint64_t mem);
};

constexpr BuiltinSpec kBuiltins[] = {
    {"x86_64", 512 * kMiB, 64 * kMiB, kMaxTotalPages * 4096,
     "at most 2^32 - 2 pages: page indices are 32 bit", BuildX86_64},
    {"i386", kGiB, 32 * kMiB, 64 * kGiB - (kMiB - kIsaHoleStart),
     "RAM must end by 64 GiB, PAE's 36-bit limit, and the ISA hole moves it up by 388 KiB",
     BuildI386},
    {"arm64", 512 * kMiB, 64 * kMiB, 512 * kGiB, "the three DRAM banks hold 512 GiB",
     BuildArm64},
    {"rpi4", 2 * kGiB, kGiB, 8 * kGiB, "the Raspberry Pi 4 comes with 1 to 8 GiB", BuildRpi4},
};

const BuiltinSpec* FindBuiltin(std::string_view name) {
  for (const BuiltinSpec& spec : kBuiltins) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

std::string ZonesOf(const Target& t, const RamRange& r) {
  std::vector<std::string> names;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    const auto zone = static_cast<ZoneType>(z);
    const uint64_t lo = t.zone_start(zone);
    const uint64_t hi = t.zone_end[z];
    if (t.zone_configured[z] && lo < hi && r.start < hi && lo < r.end()) {
      names.emplace_back(zone_name(zone));
    }
  }
  return absl::StrJoin(names, " ");
}

}  // namespace

// ---- Target ---------------------------------------------------------------------------------

uint64_t Target::zone_start(ZoneType z) const {
  for (int below = z - 1; below >= 0; --below) {
    if (zone_configured[below]) return zone_end[below];
  }
  return 0;
}

uint64_t Target::total_ram_bytes() const {
  uint64_t total = 0;
  for (const RamRange& r : ram) total += r.size;
  return total;
}

uint64_t Target::zone_ram_pages(ZoneType z) const {
  if (!zone_configured[z]) return 0;
  const uint64_t lo = zone_start(z);
  const uint64_t hi = zone_end[z];
  uint64_t bytes = 0;
  for (const RamRange& r : ram) {
    const uint64_t start = std::max(r.start, lo);
    const uint64_t end = std::min(r.end(), hi);
    if (start < end) bytes += end - start;
  }
  return bytes >> page_shift;
}

uint64_t Target::zone_managed_pages(ZoneType z) const {
  if (!zone_configured[z]) return 0;
  const uint64_t lo = zone_start(z);
  const uint64_t hi = zone_end[z];
  uint64_t bytes = 0;
  for (const RamRange& r : ManagedRam()) {
    const uint64_t start = std::max(r.start, lo);
    const uint64_t end = std::min(r.end(), hi);
    if (start < end) bytes += end - start;
  }
  return bytes >> page_shift;
}

uint64_t Target::managed_pages() const {
  uint64_t bytes = 0;
  for (const RamRange& r : ManagedRam()) bytes += r.size;
  return bytes >> page_shift;
}

std::vector<RamRange> Target::ManagedRam() const {
  // Both lists are sorted; reserved ranges are disjoint. Inclusive last bytes, so a range that
  // ends at 2^64 does not wrap.
  std::vector<RamRange> out;
  for (const RamRange& r : ram) {
    uint64_t pos = r.start;
    const uint64_t last = r.start + (r.size - 1);
    bool covered_to_end = false;
    for (const RamRange& res : reserved) {
      const uint64_t res_last = res.start + (res.size - 1);
      if (res_last < pos || res.start > last) continue;
      if (res.start > pos) out.push_back({pos, res.start - pos});
      if (res_last >= last) {
        covered_to_end = true;
        break;
      }
      pos = res_last + 1;
    }
    if (!covered_to_end) out.push_back({pos, last - pos + 1});
  }
  return out;
}

bool Target::IsReservedRam(uint64_t phys) const {
  auto in = [phys](const RamRange& r) { return phys >= r.start && phys - r.start < r.size; };
  return std::any_of(ram.begin(), ram.end(), in) && std::any_of(reserved.begin(), reserved.end(), in);
}

uint64_t Target::lowmem_end() const {
  return has_highmem() ? zone_start(ZONE_HIGHMEM) : kUnbounded;
}

std::string Target::MemoryMapString() const {
  std::string out;
  uint64_t prev_end = 0;
  for (const RamRange& r : ram) {
    if (r.start > prev_end) {
      absl::StrAppendFormat(&out, "[mem 0x%016x-0x%016x] hole %10s\n", prev_end, r.start - 1,
                            FormatBytes(r.start - prev_end));
    }
    absl::StrAppendFormat(&out, "[mem 0x%016x-0x%016x] RAM  %10s  %s\n", r.start, r.end() - 1,
                          FormatBytes(r.size), ZonesOf(*this, r));
    prev_end = r.end();
  }
  for (const RamRange& r : reserved) {
    uint64_t ram_bytes = 0;
    for (const RamRange& m : ram) {
      const uint64_t start = std::max(r.start, m.start);
      const uint64_t last = std::min(r.start + (r.size - 1), m.start + (m.size - 1));
      if (start <= last) ram_bytes += last - start + 1;
    }
    absl::StrAppendFormat(&out, "[mem 0x%016x-0x%016x] reserved %s, %u RAM pages (memblock_reserve)\n", r.start,
                          r.start + (r.size - 1), FormatBytes(r.size), ram_bytes >> page_shift);
  }
  return out;
}

// ---- free functions -------------------------------------------------------------------------

std::vector<std::string> BuiltinTargetNames() {
  std::vector<std::string> names;
  for (const BuiltinSpec& spec : kBuiltins) names.emplace_back(spec.name);
  return names;
}

absl::StatusOr<Target> BuiltinTarget(std::string_view name, uint64_t mem_bytes) {
  const BuiltinSpec* spec = FindBuiltin(name);
  if (spec == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown target '", Sv(name), "'; built-in targets: ",
                                            absl::StrJoin(BuiltinTargetNames(), ", "),
                                            ", or a path to a .textproto profile"));
  }
  const uint64_t mem = RoundDown(mem_bytes == 0 ? spec->default_bytes : mem_bytes, 4096);
  if (mem < spec->min_bytes || mem > spec->max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        Sv(spec->name), ": memory size ", mem_bytes, " bytes (", FormatBytes(mem_bytes),
        ") is out of range; allowed ", FormatBytes(spec->min_bytes), " (", spec->min_bytes,
        " bytes) to ", FormatBytes(spec->max_bytes), " (", spec->max_bytes, " bytes): ",
        Sv(spec->max_reason)));
  }
  Target t = spec->build(mem);
  if (absl::Status s = ValidateTarget(t); !s.ok()) {
    return absl::InternalError(absl::StrCat("built-in target ", Sv(spec->name), " at ",
                                            FormatBytes(mem), " is invalid: ", s.message()));
  }
  return t;
}

absl::StatusOr<Target> DefaultTarget() { return BuiltinTarget("x86_64"); }

absl::StatusOr<Target> ParseTargetText(std::string_view text, std::string_view source_name) {
  TargetProfile profile;
  pb::TextFormat::ParseInfoTree tree;
  FirstErrorCollector errors(source_name);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(std::string(text), &profile)) {
    return absl::InvalidArgumentError(errors.first());
  }
  if (MaybeProblem problem = CheckProfile(profile)) {
    return absl::InvalidArgumentError(Locate(*problem, tree, source_name));
  }
  Target t = FromProto(profile);
  if (t.name.empty()) t.name = SourceStem(source_name);
  if (absl::Status s = ValidateTarget(t); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(source_name), ": ", s.message()));
  }
  return t;
}

absl::StatusOr<Target> LoadTargetFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open target profile '", path, "'"));
  }
  std::string text;
  char buf[8192];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    return absl::ErrnoToStatus(err, absl::StrCat("cannot read target profile '", path, "'"));
  }
  return ParseTargetText(text, path);
}

absl::Status ValidateTarget(const Target& t) {
  MaybeProblem problem = CheckTargetBeforeProto(t);
  if (!problem) problem = CheckProfile(ToProto(t));
  if (!problem) problem = CheckTargetAfterProto(t);
  if (problem) return absl::InvalidArgumentError(problem->message);
  return absl::OkStatus();
}

Target FromProto(const TargetProfile& profile) {
  Target t;
  t.name = profile.name();
  t.description = profile.description();
  t.page_size = EffectivePageSize(profile);
  t.page_shift = std::countr_zero(t.page_size);
  t.page_offset = profile.page_offset();
  t.phys_offset = profile.phys_offset();
  for (const v1::ZoneLimit& zl : profile.zone()) {
    if (const std::optional<ZoneType> z = FromProtoZone(zl.zone())) {
      SetZone(t, *z, zl.end() == 0 ? kUnbounded : zl.end());
    }
  }
  for (const v1::RamRange& r : profile.ram()) t.ram.push_back({r.start(), r.size()});
  std::stable_sort(t.ram.begin(), t.ram.end(),
                   [](const RamRange& a, const RamRange& b) { return a.start < b.start; });
  std::vector<RamRange> merged;
  for (const RamRange& r : t.ram) {
    if (!merged.empty() && merged.back().size != 0 && r.size != 0 &&
        merged.back().end() == r.start) {
      merged.back().size += r.size;
    } else {
      merged.push_back(r);
    }
  }
  t.ram = std::move(merged);
  // memblock.reserved: sorted, overlapping or touching ranges merged (memblock_merge_regions()).
  for (const v1::RamRange& r : profile.reserved()) t.reserved.push_back({r.start(), r.size()});
  std::stable_sort(t.reserved.begin(), t.reserved.end(),
                   [](const RamRange& a, const RamRange& b) { return a.start < b.start; });
  std::vector<RamRange> reserved;
  for (const RamRange& r : t.reserved) {
    if (!reserved.empty() && reserved.back().size != 0 && r.size != 0) {
      RamRange& b = reserved.back();
      const uint64_t b_last = b.start + (b.size - 1);
      if (b_last == kUnbounded || r.start <= b_last + 1) {
        const uint64_t r_last = r.start + (r.size - 1);
        if (r_last > b_last) b.size += r_last - b_last;
        continue;
      }
    }
    reserved.push_back(r);
  }
  t.reserved = std::move(reserved);
  t.pkmap_base = profile.pkmap_base();
  t.pkmap_slots = profile.pkmap_slots();
  t.max_page_order = EffectiveMaxPageOrder(profile);
  if (profile.has_pageblock_order()) t.pageblock_order_override = profile.pageblock_order();
  return t;
}

TargetProfile ToProto(const Target& t) {
  TargetProfile p;
  p.set_name(t.name);
  p.set_description(t.description);
  p.set_page_size(t.page_size);
  p.set_page_offset(t.page_offset);
  p.set_phys_offset(t.phys_offset);
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (!t.zone_configured[z]) continue;
    v1::ZoneLimit* zl = p.add_zone();
    zl->set_zone(ToProtoZone(static_cast<ZoneType>(z)));
    if (t.zone_end[z] != kUnbounded) zl->set_end(t.zone_end[z]);
  }
  for (const RamRange& r : t.ram) {
    v1::RamRange* out = p.add_ram();
    out->set_start(r.start);
    out->set_size(r.size);
  }
  for (const RamRange& r : t.reserved) {
    v1::RamRange* out = p.add_reserved();
    out->set_start(r.start);
    out->set_size(r.size);
  }
  p.set_pkmap_base(t.pkmap_base);
  p.set_pkmap_slots(t.pkmap_slots);
  p.set_max_page_order(t.max_page_order);
  if (t.pageblock_order_override != -1) p.set_pageblock_order(t.pageblock_order_override);
  return p;
}

}  // namespace physmem
