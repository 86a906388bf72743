#include "allocator/gfp.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "allocator/string_escape.h"

namespace physmem {
namespace {

// Debian's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), a
// type std::string_view does not convert to; text crosses into Abseil through this.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

struct GfpName {
  gfp_t mask;
  std::string_view name;
};

// The kernel's __def_gfpflag_names (include/trace/events/mmflags.h, before its 2025 rewrite into
// TRACE_GFP_FLAGS; the printed result is the same). Order matters: FormatGfp() takes the first
// entry whose bits are all still set, so entries with the most bits come first and
// "GFP_KERNEL|__GFP_HARDWALL" never appears where "GFP_USER" fits.
// The last three entries are only for ParseGfp(): each has the same value as an earlier entry
// (GFP_NOIO, GFP_DMA, GFP_DMA32), so FormatGfp() never reaches them.
constexpr GfpName kGfpNames[] = {
    {GFP_TRANSHUGE, "GFP_TRANSHUGE"},
    {GFP_TRANSHUGE_LIGHT, "GFP_TRANSHUGE_LIGHT"},
    {GFP_HIGHUSER_MOVABLE, "GFP_HIGHUSER_MOVABLE"},
    {GFP_HIGHUSER, "GFP_HIGHUSER"},
    {GFP_USER, "GFP_USER"},
    {GFP_KERNEL_ACCOUNT, "GFP_KERNEL_ACCOUNT"},
    {GFP_KERNEL, "GFP_KERNEL"},
    {GFP_NOFS, "GFP_NOFS"},
    {GFP_ATOMIC, "GFP_ATOMIC"},
    {GFP_NOIO, "GFP_NOIO"},
    {GFP_NOWAIT, "GFP_NOWAIT"},
    {GFP_DMA, "GFP_DMA"},
    {__GFP_HIGHMEM, "__GFP_HIGHMEM"},
    {GFP_DMA32, "GFP_DMA32"},
    {__GFP_HIGH, "__GFP_HIGH"},
    {__GFP_IO, "__GFP_IO"},
    {__GFP_FS, "__GFP_FS"},
    {__GFP_NOWARN, "__GFP_NOWARN"},
    {__GFP_RETRY_MAYFAIL, "__GFP_RETRY_MAYFAIL"},
    {__GFP_NOFAIL, "__GFP_NOFAIL"},
    {__GFP_NORETRY, "__GFP_NORETRY"},
    {__GFP_COMP, "__GFP_COMP"},
    {__GFP_ZERO, "__GFP_ZERO"},
    {__GFP_NOMEMALLOC, "__GFP_NOMEMALLOC"},
    {__GFP_MEMALLOC, "__GFP_MEMALLOC"},
    {__GFP_HARDWALL, "__GFP_HARDWALL"},
    {__GFP_THISNODE, "__GFP_THISNODE"},
    {__GFP_RECLAIMABLE, "__GFP_RECLAIMABLE"},
    {__GFP_MOVABLE, "__GFP_MOVABLE"},
    {__GFP_ACCOUNT, "__GFP_ACCOUNT"},
    {__GFP_WRITE, "__GFP_WRITE"},
    {__GFP_DIRECT_RECLAIM, "__GFP_DIRECT_RECLAIM"},
    {__GFP_KSWAPD_RECLAIM, "__GFP_KSWAPD_RECLAIM"},
    {__GFP_ZEROTAGS, "__GFP_ZEROTAGS"},
    // Parse-only aliases.
    {__GFP_RECLAIM, "__GFP_RECLAIM"},
    {__GFP_DMA, "__GFP_DMA"},
    {__GFP_DMA32, "__GFP_DMA32"},
};

// Bit 0x200 is the most likely unknown bit: masks copied from pre-6.3 traces carry it.
constexpr gfp_t kRetiredGfpAtomic = 0x200u;

std::string Hex(uint64_t value) { return absl::StrCat("0x", absl::Hex(value)); }

std::string UnknownBitsMessage(gfp_t unknown) {
  std::string message = absl::StrCat("bits ", Hex(unknown), " are not GFP flags (known bits: ",
                                     Hex(kGfpKnownMask), ")");
  if (unknown & kRetiredGfpAtomic) {
    absl::StrAppend(&message, "; 0x200 was __GFP_ATOMIC, removed in Linux 6.3");
  }
  return message;
}

std::optional<gfp_t> LookupName(std::string_view name) {
  for (const GfpName& entry : kGfpNames) {
    if (entry.name == name) return entry.mask;
  }
  return std::nullopt;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

// Compared in upper case, so "gfp_kernel" suggests "GFP_KERNEL".
std::string_view ClosestName(std::string_view name) {
  const std::string upper = absl::AsciiStrToUpper(Absl(name));
  std::string_view best = kGfpNames[0].name;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const GfpName& entry : kGfpNames) {
    const size_t distance = EditDistance(upper, entry.name);
    if (distance < best_distance) {
      best = entry.name;
      best_distance = distance;
    }
  }
  return best;
}

bool IsBlank(char c) { return absl::ascii_isspace(static_cast<unsigned char>(c)); }

std::string_view StripBlanks(std::string_view s) {
  while (!s.empty() && IsBlank(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsBlank(s.back())) s.remove_suffix(1);
  return s;
}

bool LooksLikeName(std::string_view term) {
  if (term.empty() || absl::ascii_isdigit(static_cast<unsigned char>(term[0]))) return false;
  return std::all_of(term.begin(), term.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

int DigitValue(char c, int base) {
  const unsigned char u = static_cast<unsigned char>(c);
  int value = -1;
  if (absl::ascii_isdigit(u)) {
    value = c - '0';
  } else if (absl::ascii_isxdigit(u)) {
    value = absl::ascii_tolower(u) - 'a' + 10;
  }
  return value < base ? value : -1;
}

// Hex with "0x"/"0X", or decimal. A decimal with a leading zero is refused rather than guessed:
// C and strtoul(…, 0) would read "010" as octal 8.
absl::StatusOr<gfp_t> ParseNumber(std::string_view term) {
  std::string_view digits = term;
  int base = 10;
  if (digits.starts_with("0x") || digits.starts_with("0X")) {
    base = 16;
    digits.remove_prefix(2);
    if (digits.empty()) return absl::InvalidArgumentError("\"0x\" has no hex digits after it");
  } else if (digits.size() > 1 && digits[0] == '0') {
    return absl::InvalidArgumentError(absl::StrCat(
        QuoteInput(term), ": a decimal number must not start with 0 (octal is not accepted); ",
        "write hex as 0x…"));
  }
  uint64_t value = 0;
  for (const char c : digits) {
    const int digit = DigitValue(c, base);
    if (digit < 0) {
      return absl::InvalidArgumentError(absl::StrCat(QuoteInput(term), " is not a ",
                                                     base == 16 ? "hex" : "decimal", " number"));
    }
    value = value * static_cast<uint64_t>(base) + static_cast<uint64_t>(digit);
    if (value > std::numeric_limits<gfp_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat(QuoteInput(term), " overflows a 32-bit gfp_t (at most 0xffffffff)"));
    }
  }
  const gfp_t gfp = static_cast<gfp_t>(value);
  if (gfp & ~kGfpKnownMask) {
    return absl::InvalidArgumentError(
        absl::StrCat(QuoteInput(term), ": ", UnknownBitsMessage(gfp & ~kGfpKnownMask)));
  }
  return gfp;
}

absl::StatusOr<gfp_t> ParseTerm(std::string_view term) {
  if (absl::ascii_isdigit(static_cast<unsigned char>(term[0]))) return ParseNumber(term);
  if (!LooksLikeName(term)) {
    return absl::InvalidArgumentError(absl::StrCat(
        QuoteInput(term), " is neither a GFP flag name nor a number (expected e.g. GFP_KERNEL, ",
        "0xcc0 or 3264)"));
  }
  if (std::optional<gfp_t> mask = LookupName(term)) return *mask;
  return absl::InvalidArgumentError(absl::StrCat("unknown GFP flag ", QuoteInput(term),
                                                 "; did you mean \"", Absl(ClosestName(term)),
                                                 "\"? (kernel names, case-sensitive)"));
}

// A problem ValidateGfp() reports when all of `all_of` is set and none of `none_of` is.
struct GfpConflict {
  gfp_t all_of;
  gfp_t none_of;
  std::string_view message;
};

constexpr GfpConflict kGfpConflicts[] = {
    // gfp_migratetype() would return 3 (HIGHATOMIC); the kernel VM_WARNs.
    {__GFP_MOVABLE | __GFP_RECLAIMABLE, 0,
     "__GFP_MOVABLE|__GFP_RECLAIMABLE: conflicting migratetypes, set at most one"},
    // The kernel WARNs: without direct reclaim a __GFP_NOFAIL request can only spin.
    {__GFP_NOFAIL, __GFP_DIRECT_RECLAIM,
     "__GFP_NOFAIL without __GFP_DIRECT_RECLAIM: an allocation that must not fail has to be able "
     "to block (e.g. GFP_KERNEL|__GFP_NOFAIL)"},
    {__GFP_NOFAIL | __GFP_NORETRY, 0,
     "__GFP_NOFAIL|__GFP_NORETRY: contradictory, one retries forever and the other gives up "
     "early; drop one"},
};

// include/linux/gfp.h GFP_ZONE_BAD: bit n set = zone-modifier combination n is invalid, i.e.
// more than one of DMA, HIGHMEM, DMA32, with or without MOVABLE.
constexpr uint16_t kGfpZoneBad =
    1u << (__GFP_DMA | __GFP_HIGHMEM) | 1u << (__GFP_DMA | __GFP_DMA32) |
    1u << (__GFP_DMA32 | __GFP_HIGHMEM) | 1u << (__GFP_DMA | __GFP_DMA32 | __GFP_HIGHMEM) |
    1u << (__GFP_MOVABLE | __GFP_HIGHMEM | __GFP_DMA) |
    1u << (__GFP_MOVABLE | __GFP_DMA32 | __GFP_DMA) |
    1u << (__GFP_MOVABLE | __GFP_DMA32 | __GFP_HIGHMEM) |
    1u << (__GFP_MOVABLE | __GFP_DMA32 | __GFP_DMA | __GFP_HIGHMEM);

bool IsZoneBad(gfp_t gfp) { return (kGfpZoneBad >> (gfp & GFP_ZONEMASK)) & 1u; }

std::string ZoneBadMessage(gfp_t gfp) {
  std::vector<absl::string_view> set;
  for (const GfpName& bit : {GfpName{__GFP_DMA, "__GFP_DMA"}, GfpName{__GFP_DMA32, "__GFP_DMA32"},
                             GfpName{__GFP_HIGHMEM, "__GFP_HIGHMEM"}}) {
    if (gfp & bit.mask) set.push_back(Absl(bit.name));
  }
  return absl::StrCat(absl::StrJoin(set, "|"),
                      ": at most one of __GFP_DMA, __GFP_DMA32, __GFP_HIGHMEM may be set");
}

// GFP_ZONE_TABLE as an array indexed by the zone-modifier bits. The GFP_ZONE_BAD slots hold
// ZONE_DMA, as the zero entries of the kernel's packed table do; the precondition keeps them
// unused.
constexpr std::array<ZoneType, 16> kGfpZoneTable = {
    ZONE_NORMAL,   // 0x0
    ZONE_DMA,      // 0x1 __GFP_DMA
    ZONE_HIGHMEM,  // 0x2 __GFP_HIGHMEM
    ZONE_DMA,      // 0x3 bad
    ZONE_DMA32,    // 0x4 __GFP_DMA32
    ZONE_DMA,      // 0x5 bad
    ZONE_DMA,      // 0x6 bad
    ZONE_DMA,      // 0x7 bad
    ZONE_NORMAL,   // 0x8 __GFP_MOVABLE: ZONE_MOVABLE only together with HIGHMEM
    ZONE_DMA,      // 0x9 __GFP_MOVABLE|__GFP_DMA
    // 0xa __GFP_MOVABLE|__GFP_HIGHMEM: ZONE_MOVABLE in the kernel. We model no ZONE_MOVABLE (it
    // is a kernelcore= policy overlay, not an address limit), and the kernel's zonelist would fall
    // from MOVABLE to HIGHMEM next, so HIGHMEM is the highest zone we can offer.
    ZONE_HIGHMEM,
    ZONE_DMA,    // 0xb bad
    ZONE_DMA32,  // 0xc __GFP_MOVABLE|__GFP_DMA32
    ZONE_DMA,    // 0xd bad
    ZONE_DMA,    // 0xe bad
    ZONE_DMA,    // 0xf bad
};

}  // namespace

absl::StatusOr<gfp_t> ParseGfp(std::string_view text) {
  if (StripBlanks(text).empty()) {
    return absl::InvalidArgumentError(
        "empty GFP mask; expected flag names and/or numbers joined by '|', e.g. "
        "\"GFP_KERNEL|__GFP_ZERO\" or \"0xcc0\"");
  }
  gfp_t gfp = 0;
  int index = 0;
  std::string_view rest = text;
  for (bool more = true; more;) {
    const size_t bar = rest.find('|');
    more = bar != std::string_view::npos;
    const std::string_view term = StripBlanks(rest.substr(0, bar));
    if (more) rest.remove_prefix(bar + 1);
    ++index;
    if (term.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GFP mask ", QuoteInput(text), ": term ", index, " is empty (stray '|'?)"));
    }
    absl::StatusOr<gfp_t> mask = ParseTerm(term);
    // A term's message quotes the term; quote the whole mask too when it has more than one.
    if (!mask.ok() && term == StripBlanks(text)) return mask.status();
    if (!mask.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GFP mask ", QuoteInput(text), ": ", mask.status().message()));
    }
    gfp |= *mask;
  }
  return gfp;
}

absl::StatusOr<gfp_t> ParseKernelGfp(std::string_view text) {
  static constexpr std::string_view kUnmodelled[] = {"__GFP_NO_OBJ_EXT", "__GFP_SKIP_ZERO",
                                                     "__GFP_SKIP_KASAN", "__GFP_NOLOCKDEP",
                                                     "__GFP_ATOMIC"};
  if (StripBlanks(text) == "none") return 0;
  gfp_t gfp = 0;
  std::string_view rest = text;
  for (bool more = true; more;) {
    const size_t bar = rest.find('|');
    more = bar != std::string_view::npos;
    const std::string_view term = StripBlanks(rest.substr(0, bar));
    if (more) rest.remove_prefix(bar + 1);
    if (std::find(std::begin(kUnmodelled), std::end(kUnmodelled), term) != std::end(kUnmodelled)) continue;
    absl::StatusOr<gfp_t> mask = ParseGfp(term);
    if (!mask.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GFP mask ", QuoteInput(text), ": ", mask.status().message()));
    }
    gfp |= *mask;
  }
  return gfp;
}

std::string FormatGfp(gfp_t gfp) {
  if (gfp == 0) return "0";
  std::vector<std::string> parts;
  gfp_t left = gfp;
  for (const GfpName& entry : kGfpNames) {
    if ((left & entry.mask) == entry.mask) {
      parts.emplace_back(entry.name);
      left &= ~entry.mask;
    }
  }
  if (left != 0) parts.push_back(Hex(left));
  return absl::StrJoin(parts, "|");
}

absl::Status ValidateGfp(gfp_t gfp) {
  std::vector<std::string> problems;
  if (gfp & ~kGfpKnownMask) problems.push_back(UnknownBitsMessage(gfp & ~kGfpKnownMask));
  if (IsZoneBad(gfp)) problems.push_back(ZoneBadMessage(gfp));
  for (const GfpConflict& rule : kGfpConflicts) {
    if ((gfp & rule.all_of) == rule.all_of && (gfp & rule.none_of) == 0) {
      problems.emplace_back(rule.message);
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("invalid GFP mask ", Hex(gfp), " (",
                                                 FormatGfp(gfp),
                                                 "): ", absl::StrJoin(problems, "; ")));
}

ZoneType gfp_zone(gfp_t gfp, const std::array<bool, MAX_NR_ZONES>& configured) {
  PHYSMEM_DCHECK(configured[ZONE_NORMAL], "every target has ZONE_NORMAL");
  PHYSMEM_DCHECK(ValidateGfp(gfp).ok(), "gfp_zone() of a mask ValidateGfp() refuses");
  const ZoneType zone = kGfpZoneTable[gfp & GFP_ZONEMASK];
  // OPT_ZONE_DMA/OPT_ZONE_DMA32/OPT_ZONE_HIGHMEM: a zone the kernel is built without reads as
  // ZONE_NORMAL, e.g. __GFP_DMA32 on i386 or __GFP_HIGHMEM on x86_64.
  return configured[zone] ? zone : ZONE_NORMAL;
}

unsigned gfp_to_alloc_flags(gfp_t gfp, unsigned order) {
  // The slow path checks the MIN watermark (the fast path tried LOW) and honours the cpuset.
  unsigned alloc_flags = ALLOC_WMARK_MIN | ALLOC_CPUSET;

  // __GFP_HIGH may use half of the min reserve (__zone_watermark_ok: min -= min/2).
  if (gfp & __GFP_HIGH) alloc_flags |= ALLOC_MIN_RESERVE;

  // Wake kswapd when a zone is below its LOW watermark.
  if (gfp & __GFP_KSWAPD_RECLAIM) alloc_flags |= ALLOC_KSWAPD;

  if (!gfpflags_allow_blocking(gfp)) {
    // A caller that cannot block may dip a quarter deeper (min -= min/4 inside the MIN_RESERVE
    // case), unless it refused reserves: "Not worth trying to allocate harder for
    // __GFP_NOMEMALLOC even if it can't schedule."
    if (!(gfp & __GFP_NOMEMALLOC)) {
      alloc_flags |= ALLOC_NON_BLOCK;
      // Only a non-blocking *high-priority* high-order request may use or create the highatomic
      // reserve (the MIN_RESERVE test was added in 2024, fixing 1ebbb21811b7).
      if (order > 0 && (alloc_flags & ALLOC_MIN_RESERVE)) alloc_flags |= ALLOC_HIGHATOMIC;
    }
    // "Ignore cpuset mems for non-blocking __GFP_HIGH (probably GFP_ATOMIC) rather than fail."
    if (alloc_flags & ALLOC_MIN_RESERVE) alloc_flags &= ~ALLOC_CPUSET;
  }

  // __gfp_pfmemalloc_flags(): __GFP_MEMALLOC skips the watermarks; __GFP_NOMEMALLOC forbids it.
  // The kernel switches to these flags for a retry after the first slow-path attempt fails;
  // folding them in here gives the same watermark decision.
  if ((gfp & __GFP_MEMALLOC) && !(gfp & __GFP_NOMEMALLOC)) alloc_flags |= ALLOC_NO_WATERMARKS;

  return alloc_flags;
}

std::string_view gfp_class(gfp_t gfp) { return kGfpClassNames[gfp_class_index(gfp)]; }

}  // namespace physmem
