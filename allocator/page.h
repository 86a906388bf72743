// struct page: the per-page metadata record, one per page of emulated RAM (never for holes).
//
// Who uses it: the buddy core (free-list links, PageBuddy, order), the per-CPU lists (PagePcp),
// the page allocator (allocation state, owner, refcount), highmem (kmap count), Validate().
// Thread-safety: `state` is the only field that changes outside the zone lock: allocation and
// free move it with atomic stores and a compare-and-swap, so two racing frees of one block can
// never both succeed. `next`/`prev` are guarded by the owning zone's lock. `mapcount` is atomic.
//
// Layout (24 bytes, far below the kernel's 64):
//   state    64 bits: owner:32 | refcount:16 | order:8 | flags:8   (one word so that a free can
//            check owner, order and "allocated" and claim the block with one CAS)
//   next     32-bit page index of the next block on a buddy free list (kNilIndex at the end)
//   prev     32-bit page index of the previous block
//   mapcount outstanding kmap()s of this page. Unlike the kernel's _mapcount (which starts at -1)
//            ours starts at 0, so that untouched zero-filled metadata means "free, never used":
//            the metadata array is mapped lazily and most of it is never written at start-up.
//   head_offset  for a compound tail page (__GFP_COMP): distance in pages back to its head.
//
// Page states (the zero word is the state of every page that heads no block):
//   free in the buddy:  flags == PG_buddy,   order = block order, refcount 0, owner 0 (head only)
//   on a per-CPU list:  flags == PG_pcp,     order = block order, refcount 0, owner 0 (head only)
//   allocated:          refcount >= 1, order = block order, owner = caller's id (head only);
//                       PG_head marks a compound head, whose tails carry PG_tail + head_offset;
//                       PG_movable a block allocated with gfp_migratetype() == MOVABLE.
#ifndef PHYSMEM_ALLOCATOR_PAGE_H_
#define PHYSMEM_ALLOCATOR_PAGE_H_

#include <atomic>
#include <cstdint>

namespace physmem {

// Page flags (the low byte of Page::state). Kernel names where the concept is the kernel's.
inline constexpr uint8_t PG_buddy = 0x01;  // head of a free block on a buddy free list
inline constexpr uint8_t PG_pcp = 0x02;    // head of a free block on a per-CPU list
inline constexpr uint8_t PG_head = 0x04;   // head of an allocated compound page (__GFP_COMP)
inline constexpr uint8_t PG_tail = 0x08;   // tail of an allocated compound page
// Head of a block allocated with a MOVABLE migratetype: our stand-in for PageLRU() /
// __PageMovable(), which prep_move_freepages_block() counts when deciding a claim.
inline constexpr uint8_t PG_movable = 0x10;

inline constexpr uint32_t kNilIndex = 0xffffffffu;  // end of a free list
inline constexpr uint32_t kNoOwner = 0;             // owner id of free pages and ownerless calls

// The unpacked view of Page::state.
struct PageState {
  uint8_t flags = 0;
  uint8_t order = 0;
  uint16_t refcount = 0;
  uint32_t owner = 0;

  static constexpr PageState Unpack(uint64_t w) {
    return PageState{static_cast<uint8_t>(w), static_cast<uint8_t>(w >> 8),
                     static_cast<uint16_t>(w >> 16), static_cast<uint32_t>(w >> 32)};
  }
  constexpr uint64_t Pack() const {
    return uint64_t{flags} | uint64_t{order} << 8 | uint64_t{refcount} << 16 |
           uint64_t{owner} << 32;
  }
  static constexpr uint64_t Buddy(unsigned order) { return PageState{PG_buddy, uint8_t(order), 0, 0}.Pack(); }
  static constexpr uint64_t Pcp(unsigned order) { return PageState{PG_pcp, uint8_t(order), 0, 0}.Pack(); }
  static constexpr uint64_t Allocated(unsigned order, uint32_t owner, bool compound, bool movable = false) {
    return PageState{static_cast<uint8_t>((compound ? PG_head : 0) | (movable ? PG_movable : 0)), uint8_t(order), 1,
                     owner}.Pack();
  }
  static constexpr uint64_t Tail() { return PageState{PG_tail, 0, 0, 0}.Pack(); }
};

struct Page {
  std::atomic<uint64_t> state{0};
  uint32_t next = 0;
  uint32_t prev = 0;
  std::atomic<int32_t> mapcount{0};
  uint32_t head_offset = 0;

  PageState Load(std::memory_order mo = std::memory_order_acquire) const {
    return PageState::Unpack(state.load(mo));
  }
};

static_assert(sizeof(Page) <= 32, "struct page must stay within 32 bytes (issue #2)");
static_assert(sizeof(Page) == 24, "layout documented above is 24 bytes");
static_assert(std::atomic<uint64_t>::is_always_lock_free);

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_PAGE_H_
