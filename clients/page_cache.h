// A client-side page cache for local clients: the kernel's per-CPU page lists (struct
// per_cpu_pages, mm/page_alloc.c rmqueue_pcplist / free_unref_page) and DPDK's mempool cache
// (rte_mempool_cache), one level further out. Pages stay allocated to the lease on the daemon
// while they sit here, so an allocation or a free that hits the cache makes no call at all.
//
//   absl::StatusOr<std::unique_ptr<PageCache>> cache = PageCache::Create(*lease, {});
//   absl::StatusOr<CachedPage> p = (*cache)->Alloc(GFP_KERNEL, 0);   // no RPC once warm
//   ... p->pfn, p->arena_offset (the bytes, through ArenaMapping) ...
//   (*cache)->Free(*p);                                              // back on the list
//
// Shape: per thread (our "CPU"), per order 0..3 (PAGE_ALLOC_COSTLY_ORDER, as the kernel's pcp
// lists), per zone class — the mask's zone modifiers (__GFP_DMA, __GFP_DMA32, __GFP_HIGHMEM,
// __GFP_MOVABLE), which decide gfp_zone() — a LIFO list of blocks. An empty list is refilled
// with `batch` pages (AllocPagesBulk for order 0; batch >> order AllocPages calls above); a list
// that grows past `high` pages drains `batch` pages, its coldest, with one FreePagesBulk
// (free_pcppages_bulk). Orders above 3 pass straight through to AllocPages / FreePages.
//
// Semantics (clients/README.md, "The page cache", says the same at length):
//  - Ownership: a cached page is allocated to the lease on the daemon — journaled, counted in
//    pages_held, the quota and the identity's limits, and freed when the lease ends. Clients
//    report the pages idle here with each renewal (KeepAliveRequest.client_cached_pages; the
//    daemon's physmem_client_cached_pages gauge).
//  - GFP: a cached block satisfies any valid mask with the same zone modifiers (so the same
//    gfp_zone()), whatever its other bits; the first refill of a list uses the caller's mask.
//    Masks are validated as the daemon does (ValidateGfp) before any cached page is handed out.
//    __GFP_ZERO is honoured by zeroing the block through the arena mapping at hand-out; without a
//    mapping it goes to the daemon (an uncached AllocPages, which zeroes) and the block joins
//    the cache when freed.
//  - Watermarks: as for the kernel's pcp pages, cached pages are not free memory: the watermark
//    check happens at refill, with the refilling call's mask, and a hit checks none.
//  - Privacy: cached pages never leave the lease, so no other identity can see their contents;
//    within the lease a reused page keeps what the lease last wrote (as a kernel page off a pcp
//    list), unless __GFP_ZERO asks. Pages drained back to the daemon are scrubbed by it before
//    another identity gets them (server/page_tenancy.h).
//  - Lease end: once the lease is known to be gone (its keep-alive saw ttl 0, it was revoked, or
//    a refill or drain was answered NOT_FOUND), the cache hands out nothing: each thread drops its
//    lists (the daemon already freed those pages) and Alloc answers NOT_FOUND. Between the
//    daemon ending the lease and the client learning it, a cached page is as stale as any page
//    the application holds.
//  - Daemon restart: with a journal the lease and its cached pages survive; refills and drains
//    that fail with UNAVAILABLE change nothing (a drain keeps its pages and tries again later).
//  - Trust: as the kernel's pcp lists, the cache trusts its caller with the pages it handed out:
//    Free() checks that the page came from this cache, not that it is not freed twice.
//
// Thread-safety: Alloc and Free may be called from any number of threads at once; each thread
// works on its own lists without locks (a page freed by another thread than the one that got it
// goes to the freeing thread's lists, as a kernel page freed on another CPU). Create, Drain and
// the destructor must not run concurrently with other calls on the cache. The Lease must outlive
// the cache; one cache per lease.
#ifndef PHYSMEM_CLIENTS_PAGE_CACHE_H_
#define PHYSMEM_CLIENTS_PAGE_CACHE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/gfp.h"
#include "allocator/mutex.h"
#include "clients/arena_mapping.h"
#include "clients/physmem_client.h"

namespace physmem::client {

// One block handed out by a PageCache: a plain value (no destructor frees it; give it back with
// PageCache::Free).
struct CachedPage {
  uint64_t pfn = 0;
  uint64_t arena_offset = 0;  // byte offset in the arena mapping
  uint64_t virt_addr = 0;     // emulated kernel virtual address; 0 for an unmapped highmem page
  uint32_t cache_id = 0;      // the cache that handed it out
  uint8_t order = 0;
  uint8_t zone = 0;           // v1::Zone: 1 DMA, 2 DMA32, 3 Normal, 4 HighMem, ...
  uint8_t zone_class = 0;     // the zone modifiers (gfp & GFP_ZONEMASK) it was allocated for
};

struct PageCacheOptions {
  uint32_t batch = 64;  // pcp->batch: pages per refill and per drain (blocks: batch >> order, at least 1)
  uint32_t high = 256;  // pcp->high: pages a list may hold; a free beyond it drains `batch` pages
  // The mapped arena (clients/arena_mapping.h), to zero __GFP_ZERO blocks at hand-out. Null:
  // __GFP_ZERO allocations go to the daemon. Must outlive the cache.
  const ArenaMapping* arena = nullptr;
};

// Counters of one cache, summed over its threads (read while the threads run: approximate).
struct PageCacheStats {
  uint64_t cached_pages = 0;  // idle on the lists now
  uint64_t hits = 0;          // allocations served from a list without a call
  uint64_t refills = 0;       // refill calls (AllocPagesBulk or a batch of AllocPages)
  uint64_t drains = 0;        // FreePagesBulk calls past `high` (and by Drain)
};

class PageCache {
 public:
  static constexpr unsigned kOrders = 4;  // orders 0..3 are cached (PAGE_ALLOC_COSTLY_ORDER = 3)
  static constexpr unsigned kZoneClasses = 16;  // every value of gfp & GFP_ZONEMASK

  // INVALID_ARGUMENT for batch 0, high < batch; FAILED_PRECONDITION if the lease is gone or
  // already has a cache.
  static absl::StatusOr<std::unique_ptr<PageCache>> Create(Lease& lease, const PageCacheOptions& options);
  // Drains every thread's lists back to the daemon (one FreePagesBulk per 4096 blocks), unless
  // the lease is gone.
  ~PageCache();
  PageCache(const PageCache&) = delete;
  PageCache& operator=(const PageCache&) = delete;

  // alloc_pages(gfp_mask, order) through the cache. Errors: INVALID_ARGUMENT (mask the daemon
  // would refuse: the same message), NOT_FOUND (the lease is gone), RESOURCE_EXHAUSTED and the
  // rest as Lease::AllocPages (after the refill found no memory, this thread's other lists were
  // given back, and a single AllocPages, which may wait, failed too).
  absl::StatusOr<CachedPage> Alloc(gfp_t gfp_mask, unsigned order) {
    ThreadCache* tc = Local();
    if (ABSL_PREDICT_TRUE(tc != nullptr && order < kOrders && (gfp_mask & __GFP_ZERO) == 0 &&
                          tc->Validated(gfp_mask) && !Dead())) {
      List& l = tc->lists[order][gfp_mask & GFP_ZONEMASK];
      if (ABSL_PREDICT_TRUE(!l.pages.empty())) {
        const CachedPage p = l.pages.back();
        l.pages.pop_back();
        tc->Count(-(int64_t{1} << order), 1);
        return p;
      }
    }
    return AllocSlow(gfp_mask, order);
  }

  // Gives a block back to this thread's lists (or, above order 3, to the daemon). NOT_FOUND if the
  // lease is gone (its end freed the block: nothing to do); INVALID_ARGUMENT for a page this
  // cache did not hand out. A drain past `high` that fails for a transient reason keeps its
  // pages and returns OK; one refused block by block is INTERNAL naming the first.
  absl::Status Free(const CachedPage& page) {
    ThreadCache* tc = Local();
    if (ABSL_PREDICT_TRUE(tc != nullptr && page.order < kOrders && page.cache_id == id_ && !Dead())) {
      List& l = tc->lists[page.order][page.zone_class & GFP_ZONEMASK];
      if (ABSL_PREDICT_TRUE(l.pages.size() < l.high_blocks)) {
        l.pages.push_back(page);
        tc->Count(int64_t{1} << page.order, 0);
        return absl::OkStatus();
      }
    }
    return FreeSlow(page);
  }

  // Gives every list of every thread back to the daemon now (drain_all_pages()). Not concurrently
  // with Alloc/Free.
  absl::Status Drain();

  PageCacheStats stats() const;
  uint64_t cached_pages() const { return stats().cached_pages; }
  uint32_t id() const { return id_; }
  const PageCacheOptions& options() const { return options_; }

 private:
  struct List {
    std::vector<CachedPage> pages;  // LIFO: back() is the hottest
    size_t high_blocks = 0;         // high >> order (at least batch blocks): a push beyond drains
    uint32_t refill_gfp = 0;        // the mask of the first refill (documentation: the zone class is the key)
  };
  // One thread's lists. Written only by its thread; the counters are atomics so that stats() and
  // the keep-alive's report may read them from another thread (relaxed: figures, not protocol).
  struct alignas(64) ThreadCache {
    std::array<std::array<List, kZoneClasses>, kOrders> lists;
    std::array<gfp_t, 4> valid{};  // masks ValidateGfp accepted (starts with 0, a valid mask: Normal, no flags)
    unsigned valid_next = 0;
    std::atomic<int64_t> cached{0};  // pages idle on these lists
    std::atomic<uint64_t> hits{0}, refills{0}, drains{0};

    bool Validated(gfp_t gfp) const {
      return gfp == valid[0] || gfp == valid[1] || gfp == valid[2] || gfp == valid[3];
    }
    // Owner thread only: a load and a store, no locked instruction.
    void Count(int64_t pages, uint64_t hit) {
      cached.store(cached.load(std::memory_order_relaxed) + pages, std::memory_order_relaxed);
      if (hit) hits.store(hits.load(std::memory_order_relaxed) + hit, std::memory_order_relaxed);
    }
  };
  struct TlsSlot {
    uint64_t cache_id = 0;  // unique over the process's life (a new cache never reuses an id)
    ThreadCache* tc = nullptr;
  };
  static thread_local TlsSlot tls_;

  PageCache(Lease& lease, const PageCacheOptions& options, uint32_t id);

  ThreadCache* Local() const { return ABSL_PREDICT_TRUE(tls_.cache_id == id_) ? tls_.tc : nullptr; }
  bool Dead() const {
    return lease_gone_.load(std::memory_order_acquire) || dead_.load(std::memory_order_acquire);
  }
  ThreadCache& Register();
  absl::StatusOr<CachedPage> AllocSlow(gfp_t gfp_mask, unsigned order);
  absl::Status FreeSlow(const CachedPage& page);
  absl::StatusOr<CachedPage> AllocUncached(gfp_t gfp_mask, unsigned order);
  absl::Status Refill(ThreadCache& tc, gfp_t gfp_mask, unsigned order);
  // Frees blocks with FreePagesBulk; the pages of a transient failure are left in *blocks.
  absl::Status FreeBlocks(std::vector<CachedPage>* blocks);
  absl::Status DrainList(ThreadCache& tc, List& l, size_t blocks);
  absl::Status DrainThread(ThreadCache& tc);
  void DropThread(ThreadCache& tc);
  absl::Status Gone(const absl::Status& why);
  absl::Status GoneStatus() const;
  absl::Status ZeroBlock(const CachedPage& p) const;
  CachedPage FromAllocation(const v1::Allocation& a, gfp_t gfp_mask) const;

  Lease& lease_;
  const PageCacheOptions options_;
  const uint32_t id_;
  const std::atomic<bool>& lease_gone_;
  std::atomic<bool> dead_{false};  // a call was answered NOT_FOUND: the lease ended
  bool reporting_ = true;          // this cache is the lease's reporter (Create)

  mutable Mutex mu_;
  // The ThreadCaches themselves are not guarded: each belongs to its thread (Drain and the
  // destructor excepted, which run alone).
  std::vector<std::unique_ptr<ThreadCache>> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::thread::id, ThreadCache*>> by_thread_ ABSL_GUARDED_BY(mu_);
};

}  // namespace physmem::client

#endif  // PHYSMEM_CLIENTS_PAGE_CACHE_H_
