#include "server/identity_limits.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace physmem {
namespace {

absl::StatusOr<uint32_t> ParsePercent(absl::string_view text) {
  uint32_t p = 0;
  if (!absl::SimpleAtoi(text, &p) || p < 1 || p > 100) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--identity_zone_share_percent: '%s' is not a percentage in [1, 100]", std::string(text)));
  }
  return p;
}

// Books `pages` on `counter` unless that takes it past `cap`; a compare-and-swap, so two calls
// cannot both see the same room.
bool ChargeUpTo(std::atomic<uint64_t>& counter, uint64_t pages, uint64_t cap) {
  uint64_t held = counter.load(std::memory_order_relaxed);
  do {
    if (held + pages > cap) return false;
  } while (!counter.compare_exchange_weak(held, held + pages, std::memory_order_relaxed));
  return true;
}

}  // namespace

absl::StatusOr<std::array<uint32_t, MAX_NR_ZONES>> ParseZoneSharePercent(const std::string& text) {
  std::array<uint32_t, MAX_NR_ZONES> out = {100, 100, 100, 100};
  const std::string t(absl::StripAsciiWhitespace(text));
  if (t.empty()) return out;
  if (t.find(':') == std::string::npos) {
    absl::StatusOr<uint32_t> p = ParsePercent(t);
    if (!p.ok()) return p.status();
    out.fill(*p);
    return out;
  }
  for (absl::string_view item : absl::StrSplit(t, ',')) {
    std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits(':', 1));
    if (kv.size() != 2) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--identity_zone_share_percent: '%s' is not zone:percent (like Normal:50)", std::string(item)));
    }
    int zone = -1;
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      if (absl::EqualsIgnoreCase(std::string(kv[0]), std::string(zone_name(static_cast<ZoneType>(z))))) zone = z;
    }
    if (zone < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--identity_zone_share_percent: unknown zone '%s' (DMA, DMA32, Normal, HighMem)", std::string(kv[0])));
    }
    absl::StatusOr<uint32_t> p = ParsePercent(kv[1]);
    if (!p.ok()) return p.status();
    out[zone] = *p;
  }
  return out;
}

absl::Status CheckIdentityLimitsOptions(const IdentityLimitsOptions& options) {
  // Only -1 means automatic; any other negative number is a typo or a wrapped value, and would
  // otherwise silently become the automatic cap.
  if (options.dma_pages < -1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--identity_dma_pages %d: expected a page count >= 0, or -1 for automatic (an eighth of an ISA-sized "
        "ZONE_DMA)",
        options.dma_pages));
  }
  return absl::OkStatus();
}

IdentityLimits::IdentityLimits(const PageAllocator& pa, IdentityLimitsOptions options)
    : pa_(pa), options_(options) {
  for (const ZoneStats& z : pa_.Stats()) {
    uint64_t cap = z.managed_pages * options_.zone_share_percent[z.type] / 100;
    if (z.type == ZONE_DMA) {
      // Automatic: an eighth of an ISA-sized ZONE_DMA (x86's 16 MiB). Where ZONE_DMA is most of
      // RAM (arm64: up to 4 GiB; rpi4: 1 GiB) it is not scarce, and only the zone share applies.
      const bool isa_sized = (z.present_pages << pa_.target().page_shift) <= (uint64_t{16} << 20);
      const uint64_t automatic = isa_sized ? z.managed_pages / 8 : z.managed_pages;
      const uint64_t dma = options_.dma_pages < 0 ? automatic : static_cast<uint64_t>(options_.dma_pages);
      cap = std::min(cap, dma);
    }
    // A cap of the whole zone is no limit: then lack of memory, not a limit, is what stops the
    // caller (it may wait for frees, and the reply says "no memory", not "limit").
    zone_cap_[z.type] = cap >= z.managed_pages ? kNoCap : cap;
    if (z.managed_pages != 0) populated_ |= 1u << z.type;
  }
}

std::shared_ptr<IdentityUsage> IdentityLimits::For(const std::string& identity) {
  MutexLock l(&mu_);
  std::shared_ptr<IdentityUsage>& u = by_identity_[identity];
  if (u == nullptr) u = std::make_shared<IdentityUsage>(identity);
  return u;
}

uint64_t IdentityLimits::TotalPages() {
  MutexLock l(&mu_);
  uint64_t n = 0;
  for (const auto& [id, u] : by_identity_) n += u->pages.load(std::memory_order_relaxed);
  return n;
}

uint32_t IdentityLimits::AllowedZones(const IdentityUsage& u, uint64_t pages) const {
  uint32_t mask = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (u.zone_pages[z].load(std::memory_order_relaxed) + pages <= zone_cap_[z]) mask |= 1u << z;
  }
  return mask;
}

uint32_t IdentityLimits::ZonelistZones(gfp_t gfp) const {
  const ZoneType highest = gfp_zone(gfp, pa_.target().zone_configured);
  // Only zones with pages: an empty zone (arm64's DMA32, i386's HighMem on a small machine) is
  // not a zone the limits keep the caller out of.
  return ((2u << highest) - 1) & populated_;
}

absl::Status IdentityLimits::ChargeTotal(IdentityUsage& u, uint64_t pages) const {
  const uint64_t cap = options_.max_pages ? options_.max_pages : UINT64_MAX / 2;
  if (ChargeUpTo(u.pages, pages, cap)) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrFormat("identity %s holds %d of its %d pages limit (--identity_max_pages) and asked for %d more",
                      u.identity, u.pages.load(), cap, pages));
}

absl::Status IdentityLimits::ChargeZone(IdentityUsage& u, ZoneType zone, uint64_t pages) const {
  if (ChargeUpTo(u.zone_pages[zone], pages, zone_cap_[zone])) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat("identity %s holds %d of its %d pages limit in zone %s (%s)",
                                                      u.identity, u.zone_pages[zone].load(), zone_cap_[zone],
                                                      zone_name(zone), ZoneCapFlag(zone)));
}

void IdentityLimits::ChargeRecovered(IdentityUsage& u, ZoneType zone, uint64_t pages) const {
  u.pages.fetch_add(pages, std::memory_order_relaxed);
  u.zone_pages[zone].fetch_add(pages, std::memory_order_relaxed);
}

void IdentityLimits::UnchargeTotal(IdentityUsage& u, uint64_t pages) const {
  u.pages.fetch_sub(pages, std::memory_order_relaxed);
}

void IdentityLimits::UnchargeZone(IdentityUsage& u, ZoneType zone, uint64_t pages) const {
  u.zone_pages[zone].fetch_sub(pages, std::memory_order_relaxed);
}

std::string IdentityLimits::ZoneCapFlag(ZoneType z) const {
  if (z == ZONE_DMA) return "--identity_dma_pages, --identity_zone_share_percent";
  return "--identity_zone_share_percent";
}

std::string IdentityLimits::ExplainZoneRefusal(const IdentityUsage& u, gfp_t gfp, uint64_t pages) const {
  std::vector<std::string> parts;
  const uint32_t zones = ZonelistZones(gfp);
  for (int z = MAX_NR_ZONES - 1; z >= 0; --z) {
    if (!(zones & (1u << z)) || zone_cap_[z] == kNoCap) continue;
    const ZoneType zt = static_cast<ZoneType>(z);
    parts.push_back(absl::StrFormat("%s %d of %d (%s)", zone_name(zt), u.zone_pages[z].load(), zone_cap_[z],
                                    ZoneCapFlag(zt)));
  }
  return absl::StrFormat("identity %s has no room for %d more pages in any zone %s may use: it holds %s", u.identity,
                         pages, FormatGfp(gfp), absl::StrJoin(parts, ", "));
}

}  // namespace physmem
