// Per-identity limits: what one caller identity (server/identity.h: "uid:1000",
// "x509:CN=alice") may hold across all of its leases, so that one client cannot starve the others.
//
//   pages      Σ pages held by the identity's leases        <= --identity_max_pages (0: no limit)
//   zone z     Σ pages the identity holds in zone z          <= cap[z], where
//              cap[z] = managed_pages(z) * --identity_zone_share_percent(z) / 100 for every zone,
//              and for ZONE_DMA additionally <= --identity_dma_pages
//
// ZONE_DMA is the ISA DMA zone on x86 (16 MiB), precious because only it serves old devices. The
// kernel lets any allocation fall back into it (zonelist Normal -> DMA32 -> DMA, guarded only by
// lowmem_reserve); we keep that fallback, but every page an identity holds in ZONE_DMA counts
// against its DMA cap however it got there (explicit GFP_DMA or fallback). Once the cap is
// reached, ZONE_DMA drops out of that identity's zonelist: GFP_DMA fails with RESOURCE_EXHAUSTED
// naming the limit, and GFP_KERNEL can no longer fall back into it. So no identity can drain DMA,
// by either road.
//
// How the cap binds without a check-then-act race: AllowedZones() gives the allocator the zones
// where the identity has room for the request (the allocator skips the others, as a cpuset does),
// and Charge() then books the page count with a compare-and-swap that fails if a concurrent call
// of the same identity took the room meanwhile; the lessor then frees the block and retries, so
// the counters never exceed a cap and a refused call leaves nothing behind.
//
// Who uses it: the lessor alone (server/lessor.h: charge on allocation, uncharge on free and when
// a lease ends; Lessor::CheckInvariants checks the charges against the books). Thread-safety: all methods may be called concurrently; the
// counters are atomics, the identity map has its own mutex (taken once per lease creation).
#ifndef PHYSMEM_SERVER_IDENTITY_LIMITS_H_
#define PHYSMEM_SERVER_IDENTITY_LIMITS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/page_allocator.h"
#include "allocator/mutex.h"

namespace physmem {

struct IdentityLimitsOptions {
  uint64_t max_pages = 0;  // --identity_max_pages; 0 = no limit
  // --identity_zone_share_percent, per zone (1..100); 100 = no limit beyond the zone's size.
  std::array<uint32_t, MAX_NR_ZONES> zone_share_percent = {100, 100, 100, 100};
  // --identity_dma_pages; -1 = automatic: an eighth of ZONE_DMA's managed pages where ZONE_DMA is
  // ISA-sized (at most 16 MiB, x86), no cap beyond the zone share where it is most of RAM (arm64).
  int64_t dma_pages = -1;
};

// Parses --identity_zone_share_percent: "50" (every zone) or "Normal:50,DMA32:25" (others 100).
absl::StatusOr<std::array<uint32_t, MAX_NR_ZONES>> ParseZoneSharePercent(const std::string& text);

// INVALID_ARGUMENT, naming the flag and the accepted values, for options no daemon should start
// with: --identity_dma_pages below -1 (-1 is the only value that means "automatic").
absl::Status CheckIdentityLimitsOptions(const IdentityLimitsOptions& options);

// What one identity holds now. Shared by the identity's leases (each keeps a pointer).
struct IdentityUsage {
  explicit IdentityUsage(std::string identity) : identity(std::move(identity)) {}
  const std::string identity;
  std::atomic<uint64_t> pages{0};
  std::array<std::atomic<uint64_t>, MAX_NR_ZONES> zone_pages{};
};

class IdentityLimits {
 public:
  IdentityLimits(const PageAllocator& pa, IdentityLimitsOptions options);

  // The identity's usage record (created on first use, kept for the daemon's life: identities are
  // few — one per uid or certificate).
  std::shared_ptr<IdentityUsage> For(const std::string& identity);

  // Zones (bit z = ZoneType z) in which `u` has room for `pages` more pages. Advisory: Charge()
  // is what binds.
  uint32_t AllowedZones(const IdentityUsage& u, uint64_t pages) const;
  // RESOURCE_EXHAUSTED if `pages` more would break the identity's page limit; else books them.
  absl::Status ChargeTotal(IdentityUsage& u, uint64_t pages) const;
  // RESOURCE_EXHAUSTED if `pages` more in `zone` would break its cap; else books them.
  absl::Status ChargeZone(IdentityUsage& u, ZoneType zone, uint64_t pages) const;
  // Books pages a recovered lease already holds (crash recovery), limits or not: they are
  // owned, and the limits only bind what comes next.
  void ChargeRecovered(IdentityUsage& u, ZoneType zone, uint64_t pages) const;
  void UnchargeTotal(IdentityUsage& u, uint64_t pages) const;
  void UnchargeZone(IdentityUsage& u, ZoneType zone, uint64_t pages) const;
  void Uncharge(IdentityUsage& u, ZoneType zone, uint64_t pages) const {
    UnchargeZone(u, zone, pages);
    UnchargeTotal(u, pages);
  }

  // Why a request limited to the zones of `gfp`'s zonelist found no zone with room: the message
  // names each zone's cap and the flag that sets it.
  std::string ExplainZoneRefusal(const IdentityUsage& u, gfp_t gfp, uint64_t pages) const;
  // The populated zones of gfp's zonelist (gfp_zone() and every zone below it that has pages).
  uint32_t ZonelistZones(gfp_t gfp) const;

  // Σ pages over every identity's counter, for Validate (must equal the pages leases hold).
  uint64_t TotalPages();

  static constexpr uint64_t kNoCap = UINT64_MAX / 2;  // a zone the identity may fill (no overflow in sums)
  uint64_t zone_cap(ZoneType z) const { return zone_cap_[z]; }
  uint64_t max_pages() const { return options_.max_pages; }

 private:
  std::string ZoneCapFlag(ZoneType z) const;

  const PageAllocator& pa_;
  const IdentityLimitsOptions options_;
  std::array<uint64_t, MAX_NR_ZONES> zone_cap_{};  // pages; kNoCap: no limit below the zone's size
  uint32_t populated_ = 0;                         // bit z: zone z has pages

  Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<IdentityUsage>> by_identity_ ABSL_GUARDED_BY(mu_);
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_IDENTITY_LIMITS_H_
