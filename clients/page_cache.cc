#include "clients/page_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace physmem::client {

namespace {

// Ids start at 1: a thread's slot with id 0 matches no cache.
std::atomic<uint32_t> next_cache_id{1};

// The most blocks one FreePagesBulk carries (the daemon's default --max_bulk_pages).
constexpr size_t kMaxBlocksPerFree = 4096;

bool Transient(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

thread_local PageCache::TlsSlot PageCache::tls_;

absl::StatusOr<std::unique_ptr<PageCache>> PageCache::Create(Lease& lease, const PageCacheOptions& options) {
  if (options.batch == 0) return absl::InvalidArgumentError("page cache batch 0: a refill must bring at least one page");
  if (options.high < options.batch) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "page cache high %d is below batch %d: a list must hold at least one batch (pcp->high >= pcp->batch)",
        options.high, options.batch));
  }
  if (lease.gone()) {
    return absl::FailedPreconditionError(absl::StrFormat("lease %d is gone: no cache for it", lease.id()));
  }
  std::unique_ptr<PageCache> cache(new PageCache(lease, options, next_cache_id.fetch_add(1)));
  PageCache* raw = cache.get();
  if (!lease.SetCachedPagesReporter([raw] { return raw->cached_pages(); })) {
    cache->reporting_ = false;  // the other cache's report stays
    return absl::FailedPreconditionError(
        absl::StrFormat("lease %d already has a page cache: one cache per lease (share it between threads)", lease.id()));
  }
  return cache;
}

PageCache::PageCache(Lease& lease, const PageCacheOptions& options, uint32_t id)
    : lease_(lease), options_(options), id_(id), lease_gone_(lease.gone_flag()) {}

PageCache::~PageCache() {
  (void)Drain();
  if (reporting_) lease_.SetCachedPagesReporter(nullptr);
}

PageCache::ThreadCache& PageCache::Register() {
  MutexLock l(&mu_);
  const std::thread::id me = std::this_thread::get_id();
  ThreadCache* tc = nullptr;
  for (const auto& [tid, t] : by_thread_) {
    if (tid == me) tc = t;
  }
  if (tc == nullptr) {
    threads_.push_back(std::make_unique<ThreadCache>());
    tc = threads_.back().get();
    by_thread_.emplace_back(me, tc);
    for (unsigned o = 0; o < kOrders; ++o) {
      // At least one batch of blocks above what a refill brings, so a refill never drains itself.
      const size_t batch_blocks = std::max<size_t>(1, options_.batch >> o);
      const size_t high_blocks = std::max<size_t>(batch_blocks, options_.high >> o);
      for (List& list : tc->lists[o]) list.high_blocks = high_blocks;
    }
  }
  tls_ = TlsSlot{id_, tc};
  return *tc;
}

absl::Status PageCache::GoneStatus() const {
  return absl::NotFoundError(
      absl::StrFormat("lease %d is gone: its end freed the cached pages, and the cache hands out no more", lease_.id()));
}

// The lease ended: the daemon freed every page of it, cached ones included. Nothing is handed out
// again; this thread's lists are dropped (other threads drop theirs on their next call).
absl::Status PageCache::Gone(const absl::Status& why) {
  dead_.store(true, std::memory_order_release);
  // The daemon said so (NOT_FOUND): the Lease knows it too, and its later calls fail fast.
  if (!why.ok()) lease_.MarkGone(std::string(why.message()));
  if (ThreadCache* tc = Local()) DropThread(*tc);
  return why.ok() ? GoneStatus() : why;
}

void PageCache::DropThread(ThreadCache& tc) {
  int64_t dropped = 0;
  for (auto& by_zone : tc.lists) {
    for (List& l : by_zone) {
      for (const CachedPage& p : l.pages) dropped += int64_t{1} << p.order;
      l.pages.clear();
    }
  }
  tc.cached.store(tc.cached.load(std::memory_order_relaxed) - dropped, std::memory_order_relaxed);
}

CachedPage PageCache::FromAllocation(const v1::Allocation& a, gfp_t gfp_mask) const {
  CachedPage p;
  p.pfn = a.pfn();
  p.arena_offset = a.arena_offset();
  p.virt_addr = a.virt_addr();
  p.cache_id = id_;
  p.order = static_cast<uint8_t>(a.order());
  const std::string& z = a.zone();
  p.zone = z == "DMA" ? 1 : z == "DMA32" ? 2 : z == "Normal" ? 3 : z == "HighMem" ? 4 : 5;
  p.zone_class = static_cast<uint8_t>(gfp_mask & GFP_ZONEMASK);
  return p;
}

absl::Status PageCache::ZeroBlock(const CachedPage& p) const {
  v1::Allocation a;
  a.set_pfn(p.pfn);
  a.set_order(p.order);
  a.set_arena_offset(p.arena_offset);
  absl::StatusOr<std::span<std::byte>> bytes = options_.arena->Block(a);
  if (!bytes.ok()) return bytes.status();
  std::memset(bytes->data(), 0, bytes->size());
  return absl::OkStatus();
}

absl::StatusOr<CachedPage> PageCache::AllocUncached(gfp_t gfp_mask, unsigned order) {
  absl::StatusOr<v1::Allocation> a = lease_.AllocRaw(gfp_mask, order);
  if (!a.ok()) {
    if (a.status().code() == absl::StatusCode::kNotFound) return Gone(a.status());
    return a.status();
  }
  return FromAllocation(*a, gfp_mask);
}

absl::StatusOr<CachedPage> PageCache::AllocSlow(gfp_t gfp_mask, unsigned order) {
  if (Dead()) return Gone(absl::OkStatus());
  // Orders above PAGE_ALLOC_COSTLY_ORDER are not cached (the kernel's pcp lists stop there too).
  if (order >= kOrders) return AllocUncached(gfp_mask, order);
  ThreadCache* tc = Local();
  if (tc == nullptr) tc = &Register();
  if (!tc->Validated(gfp_mask)) {
    // The daemon's own check (GfpFromRequest), so a mask it would refuse is refused here alike.
    if (absl::Status s = ValidateGfp(gfp_mask); !s.ok()) return s;
    tc->valid[tc->valid_next++ % tc->valid.size()] = gfp_mask;
  }
  const bool zero = (gfp_mask & __GFP_ZERO) != 0;
  // Without the arena mapped we cannot zero a cached page: the daemon does (GetZeroedPage's path).
  if (zero && options_.arena == nullptr) return AllocUncached(gfp_mask, order);
  List& l = tc->lists[order][gfp_mask & GFP_ZONEMASK];
  const bool refill = l.pages.empty();
  if (refill) {
    if (absl::Status s = Refill(*tc, gfp_mask & ~__GFP_ZERO, order); !s.ok()) {
      if (s.code() == absl::StatusCode::kNotFound) return Gone(s);
      if (s.code() != absl::StatusCode::kResourceExhausted) return s;
      // No memory for a batch: give back what this thread holds elsewhere (drain_all_pages() in
      // __alloc_pages_direct_reclaim; we cannot reach other threads' lists without an IPI), then
      // ask for this one block as an uncached call would, waiting if the mask allows.
      (void)DrainThread(*tc);
      absl::StatusOr<CachedPage> p = AllocUncached(gfp_mask & ~__GFP_ZERO, order);
      if (!p.ok()) return p.status();
      if (zero) {
        if (absl::Status z = ZeroBlock(*p); !z.ok()) return z;
      }
      return p;
    }
  }
  const CachedPage p = l.pages.back();
  l.pages.pop_back();
  tc->Count(-(int64_t{1} << order), refill ? 0 : 1);  // a hit is an allocation that made no call
  if (zero) {
    if (absl::Status z = ZeroBlock(p); !z.ok()) return z;
  }
  return p;
}

absl::Status PageCache::Refill(ThreadCache& tc, gfp_t gfp_mask, unsigned order) {
  List& l = tc.lists[order][gfp_mask & GFP_ZONEMASK];
  const uint32_t blocks = std::max<uint32_t>(1, options_.batch >> order);
  if (l.refill_gfp == 0) l.refill_gfp = gfp_mask;
  l.pages.reserve(l.high_blocks + 1);
  tc.refills.store(tc.refills.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  int64_t pages = 0;
  if (order == 0) {
    // rmqueue_bulk(): one call for the batch; the reply may hold fewer (never none: that is
    // RESOURCE_EXHAUSTED).
    absl::StatusOr<v1::AllocPagesBulkResponse> r = lease_.AllocBulkRaw(gfp_mask, blocks);
    if (!r.ok()) return r.status();
    for (int i = 0; i < r->pfn_size(); ++i) {
      CachedPage p;
      p.pfn = r->pfn(i);
      p.arena_offset = r->arena_offset(i);
      p.virt_addr = r->virt_addr(i);
      p.cache_id = id_;
      p.zone = static_cast<uint8_t>(r->zone(i));
      p.zone_class = static_cast<uint8_t>(gfp_mask & GFP_ZONEMASK);
      l.pages.push_back(p);
    }
    pages = r->pfn_size();
  } else {
    // No bulk call for higher orders: a batch of AllocPages, stopping at the first refusal (the
    // blocks already got stay cached; a refusal with none got is the refill's answer).
    for (uint32_t i = 0; i < blocks; ++i) {
      absl::StatusOr<v1::Allocation> a = lease_.AllocRaw(gfp_mask, order);
      if (!a.ok()) {
        if (i == 0) return a.status();
        break;
      }
      l.pages.push_back(FromAllocation(*a, gfp_mask));
      pages += int64_t{1} << order;
    }
  }
  tc.Count(pages, 0);
  return absl::OkStatus();
}

absl::Status PageCache::FreeSlow(const CachedPage& page) {
  if (page.cache_id != id_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pfn %#x was not handed out by this page cache (cache %d, the page says %d): free it where it came from",
        page.pfn, id_, page.cache_id));
  }
  if (Dead()) return Gone(absl::OkStatus());
  if (page.order >= kOrders) {
    absl::StatusOr<v1::FreePagesBulkResponse> r = lease_.FreeRaw({page.pfn}, {page.order});
    if (!r.ok()) return r.status().code() == absl::StatusCode::kNotFound ? Gone(r.status()) : r.status();
    if (r->refused_size() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(r->refused(0).code()), r->refused(0).message());
    }
    return absl::OkStatus();
  }
  ThreadCache* tc = Local();
  if (tc == nullptr) tc = &Register();
  List& l = tc->lists[page.order][page.zone_class & GFP_ZONEMASK];
  l.pages.push_back(page);
  tc->Count(int64_t{1} << page.order, 0);
  if (l.pages.size() <= l.high_blocks) return absl::OkStatus();
  // Past high: free a batch of the coldest (free_pcppages_bulk()).
  absl::Status s = DrainList(*tc, l, std::max<size_t>(1, options_.batch >> page.order));
  if (s.code() == absl::StatusCode::kNotFound) return Gone(s);
  return Transient(s) ? absl::OkStatus() : s;
}

absl::Status PageCache::DrainList(ThreadCache& tc, List& l, size_t blocks) {
  blocks = std::min(blocks, l.pages.size());
  if (blocks == 0) return absl::OkStatus();
  std::vector<CachedPage> cold(l.pages.begin(), l.pages.begin() + static_cast<ptrdiff_t>(blocks));
  l.pages.erase(l.pages.begin(), l.pages.begin() + static_cast<ptrdiff_t>(blocks));
  int64_t pages = 0;
  for (const CachedPage& p : cold) pages += int64_t{1} << p.order;
  tc.drains.store(tc.drains.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  absl::Status s = FreeBlocks(&cold);
  // What a transient failure left is still ours: back to the cold end of the list.
  for (const CachedPage& p : cold) pages -= int64_t{1} << p.order;
  l.pages.insert(l.pages.begin(), cold.begin(), cold.end());
  tc.Count(-pages, 0);
  return s;
}

absl::Status PageCache::FreeBlocks(std::vector<CachedPage>* blocks) {
  absl::Status first_refusal;
  size_t done = 0;
  while (done < blocks->size()) {
    const size_t n = std::min(kMaxBlocksPerFree, blocks->size() - done);
    std::vector<uint64_t> pfns(n);
    std::vector<uint32_t> orders(n);
    for (size_t i = 0; i < n; ++i) {
      pfns[i] = (*blocks)[done + i].pfn;
      orders[i] = (*blocks)[done + i].order;
    }
    absl::StatusOr<v1::FreePagesBulkResponse> r = lease_.FreeRaw(pfns, orders);
    if (!r.ok()) {
      // Nothing of this call happened: keep these blocks and the rest.
      blocks->erase(blocks->begin(), blocks->begin() + static_cast<ptrdiff_t>(done));
      if (r.status().code() == absl::StatusCode::kNotFound) blocks->clear();  // the lease's end freed them
      return r.status();
    }
    if (r->refused_size() != 0 && first_refusal.ok()) {
      // A block the daemon would not take back from this lease: the caller freed it twice or
      // handed in a forged page. It is not ours to hand out again either way.
      first_refusal = absl::InternalError(absl::StrFormat(
          "the daemon refused to take back pfn %#x from the page cache (freed twice?): %s", r->refused(0).pfn(),
          r->refused(0).message()));
    }
    done += n;
  }
  blocks->clear();
  return first_refusal;
}

absl::Status PageCache::DrainThread(ThreadCache& tc) {
  absl::Status first;
  for (auto& by_zone : tc.lists) {
    for (List& l : by_zone) {
      absl::Status s = DrainList(tc, l, l.pages.size());
      if (first.ok()) first = s;
    }
  }
  return first;
}

absl::Status PageCache::Drain() {
  std::vector<ThreadCache*> all;
  {
    MutexLock l(&mu_);
    for (const auto& t : threads_) all.push_back(t.get());
  }
  absl::Status first;
  for (ThreadCache* tc : all) {
    if (Dead()) {
      DropThread(*tc);
      continue;
    }
    absl::Status s = DrainThread(*tc);
    if (s.code() == absl::StatusCode::kNotFound) {
      dead_.store(true, std::memory_order_release);
      DropThread(*tc);
    }
    if (first.ok()) first = s;
  }
  return first;
}

PageCacheStats PageCache::stats() const {
  PageCacheStats s;
  MutexLock l(&mu_);
  int64_t cached = 0;
  for (const auto& t : threads_) {
    cached += t->cached.load(std::memory_order_relaxed);
    s.hits += t->hits.load(std::memory_order_relaxed);
    s.refills += t->refills.load(std::memory_order_relaxed);
    s.drains += t->drains.load(std::memory_order_relaxed);
  }
  s.cached_pages = cached > 0 ? static_cast<uint64_t>(cached) : 0;
  return s;
}

}  // namespace physmem::client
