// Migratetypes: the kernel's enum migratetype, its printed names, and the fallback order between
// types (include/linux/mmzone.h and mm/page_alloc.c of the reference kernel, 6.12 LTS).
//
// Who uses it: the buddy (one free list per order and type, allocator/buddy.h), the per-CPU lists
// (one list per order and PCP type), the pageblock flags (allocator/pageblock.h), the statistics
// (/proc/pagetypeinfo columns). Thread-safety: constants only.
//
// The enum follows an x86_64 kernel built without CONFIG_CMA and with CONFIG_MEMORY_ISOLATION, as
// the machine KERNEL-2.md was checked on: UNMOVABLE 0, MOVABLE 1, RECLAIMABLE 2, HIGHATOMIC 3
// (= MIGRATE_PCPTYPES, the number of types with per-CPU lists), ISOLATE 4, MIGRATE_TYPES 5. So
// /proc/pagetypeinfo has five columns and mobility grouping needs pageblock_nr_pages * 5 pages.
// Nothing here isolates pageblocks (no memory hot-remove, no alloc_contig_range()), so ISOLATE
// exists for the layout only and its lists stay empty.
#ifndef PHYSMEM_ALLOCATOR_MIGRATETYPE_H_
#define PHYSMEM_ALLOCATOR_MIGRATETYPE_H_

#include <array>
#include <string_view>

#include "allocator/gfp.h"  // MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE, gfp_migratetype()

namespace physmem {

inline constexpr int MIGRATE_PCPTYPES = 3;  // the types that have per-CPU lists and fallbacks
inline constexpr int MIGRATE_HIGHATOMIC = MIGRATE_PCPTYPES;
inline constexpr int MIGRATE_ISOLATE = 4;
inline constexpr int MIGRATE_TYPES = 5;

// mm/page_alloc.c migratetype_names[], as /proc/pagetypeinfo prints them.
inline constexpr std::array<std::string_view, MIGRATE_TYPES> kMigratetypeNames = {
    "Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate"};

// migratetype_is_mergeable(): only these may merge across pageblocks of another type, and only
// these get per-CPU lists.
constexpr bool migratetype_is_mergeable(int mt) { return mt < MIGRATE_PCPTYPES; }
// free_unref_page()'s choice of per-CPU list for a block in a pageblock of type `mt`: its own
// type, HIGHATOMIC (and CMA) on MOVABLE's. (ISOLATE would bypass the lists; nothing isolates here.)
constexpr int pcp_list_type(int mt) { return mt < MIGRATE_PCPTYPES ? mt : MIGRATE_MOVABLE; }

// fallbacks[MIGRATE_PCPTYPES][MIGRATE_PCPTYPES - 1] of mm/page_alloc.c (6.12: [3][2], no
// terminator): which other types' free lists a request may take from, in order.
inline constexpr int kFallbacks[MIGRATE_PCPTYPES][MIGRATE_PCPTYPES - 1] = {
    {MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE},    // UNMOVABLE
    {MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE},  // MOVABLE
    {MIGRATE_UNMOVABLE, MIGRATE_MOVABLE},      // RECLAIMABLE
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_MIGRATETYPE_H_
