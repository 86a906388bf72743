// The page allocator's fast paths through the per-CPU lists, inline so that an order-0 pair costs
// no call: alloc_pages()'s first attempt (the kernel's rmqueue_pcplist() behind
// get_page_from_freelist()'s first zone), the checked free's common case (__free_pages(): one
// compare for every check, the claiming CAS, free_unref_page()'s push) and the trusted free
// (free_unref_page() without the bad-page checks of free_pages_prepare()). Everything else, every
// refusal included, stays out of line in page_allocator.cc.
//
// Who uses it: included at the end of page_allocator.h only; callers see PageAllocator's methods.
// Thread-safety: as PageAllocator's: any thread, any time. The per-CPU lists are lock-free
// (restartable sequences); with rseq off (GLIBC_TUNABLES=glibc.pthread.rseq=0) PcpPop() fails and
// Zone::FreeBlock() takes the zone lock, so both paths fall back to the buddy under it.
#ifndef PHYSMEM_ALLOCATOR_PCP_FAST_PATH_H_
#define PHYSMEM_ALLOCATOR_PCP_FAST_PATH_H_

#include <cinttypes>
#include <cstdio>

#include "allocator/check.h"
#include "allocator/page_allocator.h"

namespace physmem {

inline ZoneType PageAllocator::ZoneOfIndex(uint32_t idx) const {
  // Zones occupy consecutive index ranges (zone_index_end_ never decreases): a binary search of
  // the four, two compares for any page (a linear scan took three for ZONE_NORMAL, the zone of
  // most pages on a large target).
  static_assert(MAX_NR_ZONES == 4, "the search below is written for DMA, DMA32, NORMAL, HIGHMEM");
  if (idx < zone_index_end_[ZONE_DMA32]) return idx < zone_index_end_[ZONE_DMA] ? ZONE_DMA : ZONE_DMA32;
  return idx < zone_index_end_[ZONE_NORMAL] ? ZONE_NORMAL : ZONE_HIGHMEM;
}

template <bool kThreadPages>
inline void PageAllocator::FreeToZoneAs(Zone* zn, ZoneType zt, Page* head, uint32_t idx, unsigned order) {
  // With thread pages, an order-0 block goes to the thread's cache first; the cache's counts
  // account for that free, as a ring's push count does.
  if constexpr (kThreadPages) {
    if (order == 0 && thread_pages_.Push(page_tags_[idx].load(std::memory_order_relaxed), head)) return;
  }
  if (!zn->FreeBlock(idx, order)) [[unlikely]] vm_events_.CountFree(zt, order);
}

inline void PageAllocator::FreeToZone(Zone* zn, ZoneType zt, Page* head, uint32_t idx, unsigned order) {
  thread_pages_.enabled() ? FreeToZoneAs<true>(zn, zt, head, idx, order) : FreeToZoneAs<false>(zn, zt, head, idx, order);
}

inline int PageAllocator::AllocMigratetype(gfp_t gfp) const {
  // gfp_migratetype(): "always UNMOVABLE while mobility grouping is off".
  if (group_by_mobility_disabled_) return MIGRATE_UNMOVABLE;
  return static_cast<int>((gfp & (__GFP_RECLAIMABLE | __GFP_MOVABLE)) >> 3);
}

inline Page* PageAllocator::alloc_pages(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones) {
  // One test here, so that the per-CPU lists' own path is the same code with thread pages off.
  return thread_pages_.enabled() ? AllocPagesFast<true>(gfp, order, owner, allowed_zones)
                                 : AllocPagesFast<false>(gfp, order, owner, allowed_zones);
}

template <bool kThreadPages>
inline Page* PageAllocator::AllocPagesFast(gfp_t gfp, unsigned order, uint32_t owner, uint32_t allowed_zones) {
  // The fast path: a pcp order without __GFP_ZERO/__GFP_COMP, the zonelist's first zone passes
  // the LOW watermark and the thread's cache (thread pages on, order 0) or the current CPU's list
  // of this migratetype has a block. Two atomic loads, a few thread-local loads and stores or one
  // restartable sequence, and one store; anything else (bad arguments included) goes to
  // AllocFromFreelist(), which validates.
  if (order <= pcp_max_order_ && (gfp & (~kGfpKnownMask | __GFP_ZERO | __GFP_COMP)) == 0) [[likely]] {
    const int8_t highest = gfp_zone_table_[gfp & GFP_ZONEMASK];
    const int mt = AllocMigratetype(gfp);
    Zone* zn = highest >= 0 ? first_zone_[highest] : nullptr;
    uint32_t idx;
    if (zn != nullptr && mt < MIGRATE_PCPTYPES && (allowed_zones & (1u << zn->type())) &&
        zn->FastWatermarkOk(order, static_cast<ZoneType>(highest))) [[likely]] {
      const uint64_t allocated = PageState::Allocated(order, owner, false, mt == MIGRATE_MOVABLE);
      // The thread's cache first (it counts its own hits as the vm event), then the CPU's list.
      Page* head;
      if constexpr (kThreadPages) {
        if (order == 0 && thread_pages_.Pop(PageTag(zn->type(), mt), zn->type(), gfp_class_index(gfp), &head))
            [[likely]] {
          head->state.store(allocated, std::memory_order_release);
          return head;
        }
      }
      if (zn->PcpPop(order, mt, &idx)) [[likely]] {
        head = &mem_map_->page(idx);
        head->state.store(allocated, std::memory_order_release);
        vm_events_.CountFastAlloc(static_cast<ZoneType>(highest), order, gfp_class_index(gfp));
        return head;
      }
    }
  }
  return AllocFromFreelist(gfp, order, owner, allowed_zones);
}

inline absl::Status PageAllocator::__free_pages(Page* page, unsigned order, uint32_t owner) {
  return thread_pages_.enabled() ? FreePagesFast<true>(page, order, owner) : FreePagesFast<false>(page, order, owner);
}

template <bool kThreadPages>
inline absl::Status PageAllocator::FreePagesFast(Page* page, unsigned order, uint32_t owner) {
  // The fast path: every check of the checked free in one compare (allocated with refcount 1,
  // this order and owner, not compound; PG_movable may be either), then the claiming CAS, the
  // per-CPU push and the count. A lowmem block without init_on_free only; anything else, and any
  // refusal, is decided by FreePagesSlow(), which checks again from the start.
  if (const uint64_t owned = mem_map_->owned_index(page); owned < mem_map_->nr_pages()) [[likely]] {
    const auto idx = static_cast<uint32_t>(owned);  // also rules out nullptr
    const ZoneType zt = ZoneOfIndex(idx);
    uint64_t word = page->state.load(std::memory_order_relaxed);
    if ((word & ~uint64_t{PG_movable}) == PageState::Allocated(order, owner, /*compound=*/false) &&
        zt != ZONE_HIGHMEM && !options_.init_on_free) [[likely]] {
      Zone* const zn = zone(zt);
      // The CAS makes a double free harmless: of two racing frees, one finds the state changed
      // (and FreePagesSlow() refuses it). seq_cst as in FreeBlock() (free on x86).
      if (page->state.compare_exchange_strong(word, zn->FreeState(order), std::memory_order_seq_cst)) [[likely]] {
        FreeToZoneAs<kThreadPages>(zn, zt, page, idx, order);
        return absl::OkStatus();
      }
    }
  }
  return FreePagesSlow(page, order, owner);
}

// The caller broke the trusted free's contract (PHYSMEM_DCHECK builds only): say what the page
// really was, then abort as a failed PHYSMEM_DCHECK does.
[[noreturn, gnu::cold, gnu::noinline]] inline void TrustedFreeViolated(uint64_t pfn, uint64_t word, unsigned order,
                                                                       uint32_t owner, const char* what) {
  const PageState s = PageState::Unpack(word);
  char message[256];
  std::snprintf(message, sizeof message,
                "__free_pages_trusted(pfn %#" PRIx64 ", order %u, owner %u): %s (page state: flags %#x, order %u, "
                "refcount %u, owner %u)",
                pfn, order, owner, what, unsigned{s.flags}, unsigned{s.order}, unsigned{s.refcount}, s.owner);
  internal::DcheckFailed("trusted free of an allocated block of this owner and order", __FILE__, __LINE__, message);
}

inline void PageAllocator::ClaimTrusted(Page* page, uint64_t word, uint64_t free_word, uint32_t idx, unsigned order,
                                       uint32_t owner) {
  if constexpr (kPhysmemDchecks) {
    // Claimed with the checked free's CAS here, so that two racing trusted frees of one block
    // (a broken book) die in the tests instead of listing the block twice.
    if (!page->state.compare_exchange_strong(word, free_word, std::memory_order_seq_cst)) {
      TrustedFreeViolated(mem_map_->index_to_pfn(idx), word, order, owner, "freed concurrently by another caller");
    }
  } else {
    // free_unref_page(): no claim. The caller's book is the only path to this block, so a plain
    // store does; release orders the caller's writes to the block before its reuse.
    page->state.store(free_word, std::memory_order_release);
  }
}

inline absl::Status PageAllocator::__free_pages_trusted(Page* page, unsigned order, uint32_t owner) {
  PHYSMEM_DCHECK(page != nullptr && mem_map_->owns(page), "__free_pages_trusted: not a struct page of this allocator");
  const uint32_t idx = mem_map_->index_of(page);
  const uint64_t word = page->state.load(std::memory_order_relaxed);
  if constexpr (kPhysmemDchecks) {
    // What the caller promises, checked where tests run: the head of an allocated block of this
    // order and owner (free_pages_prepare()'s bad-page checks, and our owner).
    const PageState s = PageState::Unpack(word);
    const char* broken = (s.flags & PG_tail) ? "a tail page"
                         : s.refcount == 0   ? "not allocated (double free?)"
                         : s.owner != owner  ? "another owner's block"
                         : s.order != order  ? "wrong order"
                                             : nullptr;
    if (broken != nullptr) TrustedFreeViolated(mem_map_->index_to_pfn(idx), word, order, owner, broken);
  }
  if (order == 0 && thread_pages_.enabled()) [[likely]] {
    // The thread's cache: the page's tag names its zone and list without finding either.
    const uint8_t tag = page_tags_[idx].load(std::memory_order_relaxed);
    // HIGHMEM's tags are the highest (PageTag() puts the zone on top): one compare excludes them.
    if (tag < PageTag(ZONE_HIGHMEM, 0) && !(word & PG_head)) [[likely]] {
      ClaimTrusted(page, word, PageState::Pcp(0), idx, order, owner);  // thread pages imply pcp
      if (!thread_pages_.Push(tag, page)) [[unlikely]] {
        const ZoneType zt = PageTagZone(tag);
        FreeToZoneAs<false>(zone(zt), zt, page, idx, 0);  // the cache is full: the CPU's list
      }
      return absl::OkStatus();
    }
  }
  const ZoneType zt = ZoneOfIndex(idx);
  Zone* const zn = zone(zt);
  if (zt == ZONE_HIGHMEM || (word & PG_head) || options_.init_on_free) [[unlikely]] {
    // The rare shapes take the checked free: it pairs with kmap() (a mapped highmem page is
    // refused, which no book can promise against), clears compound tails and zeroes for
    // init_on_free. Its checks pass for a caller that kept the contract.
    return __free_pages(page, order, owner);
  }
  ClaimTrusted(page, word, zn->FreeState(order), idx, order, owner);
  // Thread pages took every block that reaches here at order 0 (lowmem, not compound) above.
  FreeToZoneAs<false>(zn, zt, page, idx, order);
  return absl::OkStatus();
}

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_PCP_FAST_PATH_H_
