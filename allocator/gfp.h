// GFP ("get free pages") flags: the kernel's allocation-request mask, with its bit values, its
// named combinations, and the functions the allocator derives from a mask: the highest zone an
// allocation may use (gfp_zone()), its migratetype, whether it may block, and the slow-path
// ALLOC_* flags (gfp_to_alloc_flags()).
//
// Who calls it: the service validates a client's mask once at the API edge (ParseGfp() for the
// "GFP_KERNEL|__GFP_ZERO" form, ValidateGfp() for either form); the page allocator then uses
// gfp_zone(), gfp_migratetype(), gfpflags_allow_blocking() and gfp_to_alloc_flags() on every
// request; statistics label requests with gfp_class(); logs and replies print FormatGfp().
// Thread-safety: constants and pure functions only; every function may be called concurrently.
//
// Names are spelled as in the kernel (include/linux/gfp_types.h), double underscores included,
// so a kernel reader finds __GFP_DMA where she expects it. Values are those of current kernels;
// bit 0x200 (the old __GFP_ATOMIC, removed in 6.3) is unused. The config-dependent high bits
// (__GFP_SKIP_ZERO, __GFP_SKIP_KASAN, __GFP_NOLOCKDEP, __GFP_NO_OBJ_EXT) are not modelled.
#ifndef PHYSMEM_ALLOCATOR_GFP_H_
#define PHYSMEM_ALLOCATOR_GFP_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/check.h"
#include "allocator/zone_type.h"

namespace physmem {

using gfp_t = uint32_t;

// --- Single bits (include/linux/gfp_types.h) ---------------------------------------------------
// Zone modifiers: the low four bits index GFP_ZONE_TABLE (see gfp_zone()).
inline constexpr gfp_t __GFP_DMA = 0x01u;      // lowest zone (16 MiB ISA DMA on x86)
inline constexpr gfp_t __GFP_HIGHMEM = 0x02u;  // may use HIGHMEM (no direct-map address)
inline constexpr gfp_t __GFP_DMA32 = 0x04u;    // below 4 GiB
inline constexpr gfp_t __GFP_MOVABLE = 0x08u;  // zone modifier and migratetype MOVABLE
// Migratetype, reserves, reclaim and behaviour modifiers.
inline constexpr gfp_t __GFP_RECLAIMABLE = 0x10u;     // migratetype RECLAIMABLE
inline constexpr gfp_t __GFP_HIGH = 0x20u;            // may use part of the min reserve
inline constexpr gfp_t __GFP_IO = 0x40u;              // reclaim may start I/O
inline constexpr gfp_t __GFP_FS = 0x80u;              // reclaim may call into filesystems
inline constexpr gfp_t __GFP_ZERO = 0x100u;           // return zeroed memory
inline constexpr gfp_t __GFP_DIRECT_RECLAIM = 0x400u;  // may reclaim directly: "can block"
inline constexpr gfp_t __GFP_KSWAPD_RECLAIM = 0x800u;  // wake kswapd at the low watermark
inline constexpr gfp_t __GFP_WRITE = 0x1000u;          // caller will dirty the page
inline constexpr gfp_t __GFP_NOWARN = 0x2000u;         // no failure report
inline constexpr gfp_t __GFP_RETRY_MAYFAIL = 0x4000u;  // retry hard, may fail, never OOM-kill
inline constexpr gfp_t __GFP_NOFAIL = 0x8000u;         // retry forever
inline constexpr gfp_t __GFP_NORETRY = 0x10000u;       // light effort only, then fail
inline constexpr gfp_t __GFP_MEMALLOC = 0x20000u;      // ignore watermarks
inline constexpr gfp_t __GFP_COMP = 0x40000u;          // build a compound page
inline constexpr gfp_t __GFP_NOMEMALLOC = 0x80000u;    // never touch reserves (beats MEMALLOC)
inline constexpr gfp_t __GFP_HARDWALL = 0x100000u;     // enforce the cpuset
inline constexpr gfp_t __GFP_THISNODE = 0x200000u;     // no fallback to other nodes
inline constexpr gfp_t __GFP_ACCOUNT = 0x400000u;      // charge to kmemcg
inline constexpr gfp_t __GFP_ZEROTAGS = 0x800000u;     // also zero memory tags (arm64 MTE)

// --- Combinations ------------------------------------------------------------------------------
inline constexpr gfp_t __GFP_RECLAIM = __GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM;
inline constexpr gfp_t GFP_ZONEMASK = __GFP_DMA | __GFP_HIGHMEM | __GFP_DMA32 | __GFP_MOVABLE;

// 6.3+: "cannot block" alone is what gives GFP_ATOMIC its deeper reserve access (ALLOC_NON_BLOCK).
inline constexpr gfp_t GFP_ATOMIC = __GFP_HIGH | __GFP_KSWAPD_RECLAIM;                  // 0x820
inline constexpr gfp_t GFP_KERNEL = __GFP_RECLAIM | __GFP_IO | __GFP_FS;                // 0xcc0
inline constexpr gfp_t GFP_KERNEL_ACCOUNT = GFP_KERNEL | __GFP_ACCOUNT;                 // 0x400cc0
inline constexpr gfp_t GFP_NOWAIT = __GFP_KSWAPD_RECLAIM | __GFP_NOWARN;                // 0x2800
inline constexpr gfp_t GFP_NOIO = __GFP_RECLAIM;                                        // 0xc00
inline constexpr gfp_t GFP_NOFS = __GFP_RECLAIM | __GFP_IO;                             // 0xc40
inline constexpr gfp_t GFP_USER = __GFP_RECLAIM | __GFP_IO | __GFP_FS | __GFP_HARDWALL;  // 0x100cc0
inline constexpr gfp_t GFP_DMA = __GFP_DMA;
inline constexpr gfp_t GFP_DMA32 = __GFP_DMA32;
inline constexpr gfp_t GFP_HIGHUSER = GFP_USER | __GFP_HIGHMEM;  // 0x100cc2
// The kernel also ORs in __GFP_SKIP_KASAN, whose bit exists only with CONFIG_KASAN_HW_TAGS.
inline constexpr gfp_t GFP_HIGHUSER_MOVABLE = GFP_HIGHUSER | __GFP_MOVABLE;  // 0x100cca
inline constexpr gfp_t GFP_TRANSHUGE_LIGHT =
    (GFP_HIGHUSER_MOVABLE | __GFP_COMP | __GFP_NOMEMALLOC | __GFP_NOWARN) & ~__GFP_RECLAIM;
inline constexpr gfp_t GFP_TRANSHUGE = GFP_TRANSHUGE_LIGHT | __GFP_DIRECT_RECLAIM;

// Every defined bit: 0x000001..0x800000 except the retired 0x200.
inline constexpr gfp_t kGfpKnownMask =
    __GFP_DMA | __GFP_HIGHMEM | __GFP_DMA32 | __GFP_MOVABLE | __GFP_RECLAIMABLE | __GFP_HIGH |
    __GFP_IO | __GFP_FS | __GFP_ZERO | __GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM | __GFP_WRITE |
    __GFP_NOWARN | __GFP_RETRY_MAYFAIL | __GFP_NOFAIL | __GFP_NORETRY | __GFP_MEMALLOC |
    __GFP_COMP | __GFP_NOMEMALLOC | __GFP_HARDWALL | __GFP_THISNODE | __GFP_ACCOUNT |
    __GFP_ZEROTAGS;

// --- Text form ---------------------------------------------------------------------------------
// Parses "GFP_KERNEL|__GFP_ZERO", "0xcc0", "3264" or mixtures ("GFP_KERNEL | 0x100"): terms joined
// by '|', blanks around terms ignored, each term an exact (case-sensitive) kernel name or a
// number (hex with 0x, or decimal without leading zeros, since C would read "010" as octal).
// InvalidArgument for an empty text or term, an unknown name (the message suggests the closest
// known one), a number above 32 bits, or a number with bits outside kGfpKnownMask (listed in hex).
// Zone combinations are not checked here: see ValidateGfp().
absl::StatusOr<gfp_t> ParseGfp(std::string_view text);

// Parses a mask as the kernel's page-allocation tracepoints print it (show_gfp_flags(),
// include/trace/events/mmflags.h), for trace replay: ParseGfp()'s grammar, plus "none" (how a
// zero mask prints), and the names of the config-dependent bits this file does not model, which
// are dropped: __GFP_NO_OBJ_EXT (bit 24 on 6.18 with SLAB_OBJ_EXT), __GFP_SKIP_ZERO,
// __GFP_SKIP_KASAN, __GFP_NOLOCKDEP and 6.1's __GFP_ATOMIC. Their bit values move with the
// kernel config, and none of them changes which zone or free list a page comes from.
// Unknown names and bits are InvalidArgument as in ParseGfp(), the whole mask quoted.
absl::StatusOr<gfp_t> ParseKernelGfp(std::string_view text);

// Prints a mask as the kernel's %pGg / show_gfp_flags() does: greedily, in the order of
// __def_gfpflag_names (include/trace/events/mmflags.h), so the largest compound names come first
// and leftover bits print alone: 0x2dc2 → "GFP_KERNEL|__GFP_HIGHMEM|__GFP_NOWARN|__GFP_ZERO".
// 0 prints "0"; bits outside kGfpKnownMask are appended as one hex number ("GFP_KERNEL|0x1000000").
// ParseGfp(FormatGfp(x)) == x for every x within kGfpKnownMask.
std::string FormatGfp(gfp_t gfp);

// OK, or InvalidArgument listing every problem found: bits outside kGfpKnownMask; more than one
// of __GFP_DMA/__GFP_DMA32/__GFP_HIGHMEM (the kernel's GFP_ZONE_BAD: 0x3, 0x5, 0x6, 0x7 and each
// with __GFP_MOVABLE); __GFP_MOVABLE with __GFP_RECLAIMABLE; __GFP_NOFAIL without
// __GFP_DIRECT_RECLAIM; __GFP_NOFAIL with __GFP_NORETRY.
absl::Status ValidateGfp(gfp_t gfp);

// --- What the allocator derives from a mask -----------------------------------------------------
// The highest zone the allocation may use (the kernel's gfp_zone(), i.e. ac->highest_zoneidx);
// the zonelist walk goes down from there. `configured[z]` says whether the target's kernel has
// zone z at all (CONFIG_ZONE_DMA, CONFIG_ZONE_DMA32, CONFIG_HIGHMEM), not whether it has pages:
// an unconfigured DMA, DMA32 or HIGHMEM falls back to ZONE_NORMAL like the kernel's OPT_ZONE_*.
// ZONE_NORMAL must be configured.
// Precondition: ValidateGfp(gfp).ok() (asserted in debug builds, as the kernel's VM_BUG_ON).
ZoneType gfp_zone(gfp_t gfp, const std::array<bool, MAX_NR_ZONES>& configured);

// Migratetypes that a gfp mask can select (the first three of the kernel's enum migratetype).
inline constexpr int MIGRATE_UNMOVABLE = 0;
inline constexpr int MIGRATE_MOVABLE = 1;
inline constexpr int MIGRATE_RECLAIMABLE = 2;

// MOVABLE (0x08) → 1 and RECLAIMABLE (0x10) → 2 by a shift, as the kernel does. Both set would
// give 3 (HIGHATOMIC); ValidateGfp() rejects that, and PHYSMEM_DCHECK catches it here.
constexpr int gfp_migratetype(gfp_t gfp) {
  PHYSMEM_DCHECK((gfp & (__GFP_RECLAIMABLE | __GFP_MOVABLE)) != (__GFP_RECLAIMABLE | __GFP_MOVABLE),
                 "__GFP_MOVABLE|__GFP_RECLAIMABLE (ValidateGfp refuses it)");
  return static_cast<int>((gfp & (__GFP_RECLAIMABLE | __GFP_MOVABLE)) >> 3);
}

// "May this allocation wait?" In the kernel that means direct reclaim (sleeping); here it means
// the request may wait, within its deadline, for pages to be freed.
constexpr bool gfpflags_allow_blocking(gfp_t gfp) { return (gfp & __GFP_DIRECT_RECLAIM) != 0; }

// --- ALLOC_* flags (mm/internal.h, 6.3+) ---------------------------------------------------------
// The low two bits select the watermark to check against; the rest relax or steer the check.
inline constexpr unsigned ALLOC_WMARK_MIN = 0;
inline constexpr unsigned ALLOC_WMARK_LOW = 1;
inline constexpr unsigned ALLOC_WMARK_HIGH = 2;
inline constexpr unsigned ALLOC_WMARK_MASK = 3;
inline constexpr unsigned ALLOC_NO_WATERMARKS = 0x04;  // skip the watermark check entirely
inline constexpr unsigned ALLOC_OOM = 0x08;            // OOM victim: a further min/2
inline constexpr unsigned ALLOC_NON_BLOCK = 0x10;      // cannot block: a further min/4
inline constexpr unsigned ALLOC_MIN_RESERVE = 0x20;    // __GFP_HIGH: min/2
inline constexpr unsigned ALLOC_CPUSET = 0x40;         // honour the cpuset
inline constexpr unsigned ALLOC_CMA = 0x80;            // may use CMA pageblocks
inline constexpr unsigned ALLOC_NOFRAGMENT = 0x100;    // avoid mixing migratetypes in a block
inline constexpr unsigned ALLOC_HIGHATOMIC = 0x200;    // may use/create the highatomic reserve
inline constexpr unsigned ALLOC_KSWAPD = 0x800;        // wake kswapd when below LOW
// The flags that grant access to reserves below the min watermark.
inline constexpr unsigned ALLOC_RESERVES =
    ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE | ALLOC_HIGHATOMIC | ALLOC_OOM;

// The slow path's flags for a request, as the kernel's gfp_to_alloc_flags() computes them, plus
// ALLOC_NO_WATERMARKS for __GFP_MEMALLOC (which the kernel adds separately, from
// __gfp_pfmemalloc_flags()). Not modelled: RT tasks, CMA, defrag_mode, PF_MEMALLOC, OOM victims.
unsigned gfp_to_alloc_flags(gfp_t gfp, unsigned order);

// A bounded label for metrics: "GFP_DMA" if __GFP_DMA is set, else "GFP_DMA32" if __GFP_DMA32 is
// set (the zone a request needs matters more than how it was asked); otherwise the mask with the
// modifiers __GFP_ZERO, __GFP_NOWARN, __GFP_COMP, __GFP_NORETRY, __GFP_RETRY_MAYFAIL,
// __GFP_NOFAIL, __GFP_ACCOUNT and the migratetype hints __GFP_MOVABLE, __GFP_RECLAIMABLE removed
// must equal one of GFP_ATOMIC, GFP_NOWAIT, GFP_KERNEL, GFP_USER, GFP_HIGHUSER (with the same
// bits removed), else "other". So GFP_KERNEL_ACCOUNT|__GFP_ZERO is "GFP_KERNEL",
// GFP_HIGHUSER_MOVABLE is "GFP_HIGHUSER", and GFP_NOFS is "other".
std::string_view gfp_class(gfp_t gfp);

// gfp_class() as a dense index, for counter arrays (allocator/vm_event.h): the classes in the order
// of kGfpClassNames, "other" last.
inline constexpr int kNrGfpClasses = 8;
inline constexpr std::array<std::string_view, kNrGfpClasses> kGfpClassNames = {
    "GFP_ATOMIC", "GFP_NOWAIT", "GFP_KERNEL", "GFP_USER", "GFP_HIGHUSER", "GFP_DMA", "GFP_DMA32", "other"};
inline constexpr gfp_t kGfpClassIgnoredBits = __GFP_ZERO | __GFP_NOWARN | __GFP_COMP | __GFP_NORETRY |
                                              __GFP_RETRY_MAYFAIL | __GFP_NOFAIL | __GFP_ACCOUNT |
                                              __GFP_MOVABLE | __GFP_RECLAIMABLE;
constexpr int gfp_class_index(gfp_t gfp) {
  if (gfp & __GFP_DMA) return 5;
  if (gfp & __GFP_DMA32) return 6;
  switch (gfp & ~kGfpClassIgnoredBits) {
    case GFP_ATOMIC & ~kGfpClassIgnoredBits: return 0;
    case GFP_NOWAIT & ~kGfpClassIgnoredBits: return 1;
    case GFP_KERNEL & ~kGfpClassIgnoredBits: return 2;
    case GFP_USER & ~kGfpClassIgnoredBits: return 3;
    case GFP_HIGHUSER & ~kGfpClassIgnoredBits: return 4;
    default: return 7;
  }
}

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_GFP_H_
