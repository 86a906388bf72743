// libFuzzer target: the GFP-string parser (allocator/gfp.h), which the service runs on every
// client's "GFP_KERNEL|__GFP_ZERO" text.
//
// Properties checked on every input:
//   - ParseGfp never crashes, and refuses with INVALID_ARGUMENT and a non-empty message;
//   - an accepted mask has no bits outside kGfpKnownMask (the parser promises that);
//   - round trip: ParseGfp(FormatGfp(m)) == m, and formatting is a fixed point
//     (FormatGfp(ParseGfp(FormatGfp(m))) == FormatGfp(m));
//   - ValidateGfp answers OK or INVALID_ARGUMENT with a message, and for a valid mask
//     gfp_zone/gfp_migratetype/gfp_to_alloc_flags/gfp_class are total (no assert fires).
// The first 4 bytes, read as a number, are also formatted and parsed back, so the round trip
// covers masks the text form rarely reaches.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "allocator/gfp.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "gfp_parse_fuzz: %s\n", what.c_str());
  std::abort();
}

void CheckRoundTrip(physmem::gfp_t mask) {
  const std::string text = physmem::FormatGfp(mask);
  absl::StatusOr<physmem::gfp_t> back = physmem::ParseGfp(text);
  if ((mask & ~physmem::kGfpKnownMask) != 0) {
    // Unknown bits print as a hex number, which the parser must refuse again.
    if (back.ok()) Fail("ParseGfp accepted unknown bits: " + text);
    return;
  }
  if (!back.ok()) Fail("ParseGfp refused FormatGfp's output '" + text + "': " + std::string(back.status().message()));
  if (*back != mask) Fail("round trip changed the mask: '" + text + "'");
  if (physmem::FormatGfp(*back) != text) Fail("FormatGfp is not a fixed point for '" + text + "'");
}

void CheckDerived(physmem::gfp_t mask) {
  const absl::Status v = physmem::ValidateGfp(mask);
  if (!v.ok()) {
    if (v.code() != absl::StatusCode::kInvalidArgument || v.message().empty()) Fail("ValidateGfp: " + v.ToString());
    return;
  }
  // Every zone configuration a target can have (NORMAL always configured).
  for (unsigned bits = 0; bits < 8; ++bits) {
    const std::array<bool, physmem::MAX_NR_ZONES> configured = {(bits & 1) != 0, (bits & 2) != 0, true,
                                                                (bits & 4) != 0};
    const physmem::ZoneType z = physmem::gfp_zone(mask, configured);
    if (!configured[z]) Fail("gfp_zone picked an unconfigured zone");
  }
  (void)physmem::gfp_migratetype(mask);
  for (unsigned order = 0; order <= 10; ++order) (void)physmem::gfp_to_alloc_flags(mask, order);
  if (physmem::gfp_class(mask).empty()) Fail("empty gfp_class");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size >= 4) {
    uint32_t raw;
    std::memcpy(&raw, data, 4);
    CheckRoundTrip(raw);
    CheckDerived(raw & physmem::kGfpKnownMask);
  }
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<physmem::gfp_t> parsed = physmem::ParseGfp(text);
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument || parsed.status().message().empty()) {
      Fail("ParseGfp refused with " + parsed.status().ToString());
    }
    return 0;
  }
  if ((*parsed & ~physmem::kGfpKnownMask) != 0) Fail("ParseGfp accepted unknown bits");
  CheckRoundTrip(*parsed);
  CheckDerived(*parsed);
  return 0;
}
