// ThreadPages: per-thread caches of order-0 blocks in front of the per-CPU lists, for in-process
// callers that want an alloc+free pair in a few nanoseconds (opt-in:
// PageAllocatorOptions::thread_pages; off by default).
//
// What it is for, and where it departs from the kernel: the kernel reaches its per-CPU list with
// preemption off, so for the length of the call the running task owns the CPU's list outright. In
// user space a thread can be preempted anywhere, which is why the per-CPU rings need a restartable
// sequence per operation (per_cpu_ring.h) and a chain of dependent loads to find the ring. A
// per-thread cache is what "the task owns the list" becomes when the owner is a thread: tcmalloc's
// thread cache, DPDK's per-lcore mempool cache. Each thread has one LIFO of at most kMaxBlocks
// blocks, each tagged with its zone and its list's migratetype (the pageblock's type, as
// free_unref_page() picks the list), in a thread_local block at a fixed offset from the thread
// pointer. A free pushes; an allocation of (zone, migratetype) pops the top block if its tag
// matches, before the rings are tried. When the LIFO is full a free goes to the CPU's ring; when
// the top does not match (or it is empty) an allocation takes the ring's path. So an allocation
// still gets a block of its own list, as from the kernel's per-type lists; it only gives up
// sooner (a matching block deeper down waits). One LIFO rather than one per list keeps the freed
// page off the path to the next operation: a push's slot does not depend on the page's pageblock,
// which a per-list cache must load before it knows where to push (measured: 9.7 ns per pair with
// per-list caches, against the figures in docs/benchmarks.md). Cached blocks are per-CPU-list pages
// in every respect but the list: head state PagePcp(0), not in NR_FREE_PAGES (the watermark check
// sees them as the kernel sees pcp pages), counted in the zone's pcp pages, checked by
// Validate(), returned to the buddy by drain_all_pages() and when their thread exits.
// /proc/zoneinfo's per-CPU "count" lines show the rings only; ZoneStats::thread_pages has the rest.
//
// Who calls it: PageAllocator only: its inline fast paths (pcp_fast_path.h) pop and push; its
// drain, validation and statistics read every thread's cache through this class.
//
// Thread-safety. A thread's cache serves one PageAllocator at a time (the first it freed into;
// freeing into another moves it, handing the old one's blocks back to their buddy). Only the owner
// thread pops and pushes, with plain loads and stores, bracketed by an asymmetric Dekker against
// the one remote writer, the drainer (DrainAll(), under mu_), whose flag is the cache's `owner`:
//   owner:   busy = 1; compiler barrier; if (owner != id) { busy = 0; fail }  op;  busy = 0 (release)
//   drainer: owner = id | kDrainBit (every cache); FenceAllThreads(); wait until busy == 0
//            (acquire); take the blocks; owner = id (release)
// FenceAllThreads() (membarrier PRIVATE_EXPEDITED) makes every running thread execute a full
// barrier: an owner whose `busy = 1` preceded that barrier is seen busy and waited for (its op is
// a few instructions); one whose `busy = 1` came after it sees the drain bit and fails to the
// rings. Either way no op overlaps the drain, and the owner's fast path pays no atomic RMW, no
// fence, and no load beyond the ownership check it makes anyway. Under ThreadSanitizer, which
// cannot see membarrier, busy and owner are seq_cst instead (a plain Dekker TSan can follow).
// Binding, thread exit and the lifetime of a thread's cache beyond its allocator are slow paths
// under mu_ and one process-wide lock (thread_pages.cc). Not async-signal-safe: a signal handler
// that allocates or frees on a thread interrupted inside an op would find the cache mid-change
// (the per-CPU rings, whose sections restart on a signal, are).
#ifndef PHYSMEM_ALLOCATOR_THREAD_PAGES_H_
#define PHYSMEM_ALLOCATOR_THREAD_PAGES_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "allocator/gfp.h"
#include "allocator/migratetype.h"
#include "allocator/page.h"
#include "allocator/pageblock.h"
#include "allocator/mutex.h"
#include "allocator/zone_type.h"

namespace physmem {

// One zone's share of the thread caches (racy while their owners run). Exact counts without a
// counter per free: every block enters a cache by a free and leaves it by an allocation, a drain
// or its thread's leaving, so frees = hits + count + taken.
struct ThreadPagesStats {
  uint64_t threads = 0;  // threads whose cache serves this allocator now
  uint64_t count = 0;    // order-0 blocks of this zone cached now
  uint64_t hits = 0;     // allocations a thread cache served (threads that left included)
  uint64_t frees = 0;    // frees a thread cache took (threads that left included)
  uint64_t taken = 0;    // blocks drain_all_pages() or a leaving thread gave back to the buddy
  std::array<uint64_t, kNrGfpClasses> hits_by_class{};  // hits by gfp_class_index()
};

class ThreadPages {
 public:
  static constexpr uint32_t kMaxBlocks = 16;  // per thread, all zones and types

  // Hands blocks back to their zone's buddy (drains, thread exit): zone, head pages.
  using GiveBack = std::function<void(ZoneType, std::span<Page* const>)>;

  // Disabled (every Pop/Push fails, nothing is ever cached) unless `enabled` and membarrier
  // PRIVATE_EXPEDITED is available.
  ThreadPages(bool enabled, GiveBack give_back);
  // Unbinds every thread; their cached blocks are dropped with the allocator.
  ~ThreadPages();
  ThreadPages(const ThreadPages&) = delete;
  ThreadPages& operator=(const ThreadPages&) = delete;

  bool enabled() const { return enabled_; }

  // Fast path, calling thread, for blocks named by their page tag (PageTag(): zone and list
  // type). Pop: the top block if its tag is `tag`, counted under `gfp_class` (the vm event, read
  // back by Stats()); false when the top is another list's or there is none. Push: false when the
  // LIFO is full. Both fail when the thread's cache serves another allocator or none (Push then
  // binds it, on its slow path) or a drain holds it.
  bool Pop(uint8_t tag, ZoneType zt, int gfp_class, Page** page);  // zt == PageTagZone(tag)
  bool Push(uint8_t tag, Page* page);

  // drain_all_pages(): every thread's blocks back to the buddy (through GiveBack). Returns pages.
  uint64_t DrainAll();
  // Every cached block (zone, head page), without removing it (Validate(); exact only while no
  // owner runs).
  void Snapshot(std::vector<std::pair<ZoneType, Page*>>* out) const;
  ThreadPagesStats Stats(ZoneType zt) const;

 private:
  friend class ThreadPagesRegistry;  // thread_pages.cc: binding, thread exit, allocator lifetime

  // A thread's cache. Trivially constructed (constinit) and reached by name, so the fast path
  // addresses it %fs-relative with no TLS wrapper call and no pointer to load.
  struct Cache {
    std::atomic<uint64_t> owner;  // id_ it serves (| kDrainBit while drained); 0: none
    std::atomic<uint32_t> busy;
    std::atomic<uint32_t> count;
    // The blocks are page[1..count] with their PageTag()s, bottom first; slot 0 holds kNoTag, so
    // that an empty LIFO fails the top's tag compare like a mismatch (no separate test).
    std::atomic<uint8_t> tag[kMaxBlocks + 1] = {kNoTag};
    std::atomic<Page*> page[kMaxBlocks + 1];
    std::atomic<uint64_t> hits[MAX_NR_ZONES][kNrGfpClasses];  // written by the owner only
  };
  static constexpr uint8_t kNoTag = 0xff;  // no PageTag() is: zones < 4, list types < 3
  static constexpr uint64_t kDrainBit = uint64_t{1} << 63;
  static constinit thread_local Cache tls_cache_;

  bool BindAndPush(uint8_t tag, Page* page);
  // Under the registry lock, on c's thread: c stops serving this allocator; its blocks go back.
  void Leave(Cache* c);
  std::vector<std::pair<ZoneType, Page*>> TakeAllLocked(Cache* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void GiveBackAll(const std::vector<std::pair<ZoneType, Page*>>& blocks);

  static void EnterBusy();
  static uint64_t Owner();

  // Process-unique and never reused, so a thread whose allocator died never matches a new one.
  // A disabled instance's id is one no cache ever holds.
  const uint64_t id_;
  const bool enabled_;
  const GiveBack give_back_;
  mutable Mutex mu_;
  std::vector<Cache*> caches_ ABSL_GUARDED_BY(mu_);  // the threads bound now
  // What left the caches other than by Pop, and the hits of threads that left: Stats() stays
  // exact and monotonic.
  std::array<uint64_t, MAX_NR_ZONES> taken_ ABSL_GUARDED_BY(mu_){};
  std::array<std::array<uint64_t, kNrGfpClasses>, MAX_NR_ZONES> left_hits_ ABSL_GUARDED_BY(mu_){};
};

// --- The fast path, inline. ---

#if defined(__SANITIZE_THREAD__)
#define PHYSMEM_THREAD_PAGES_SC 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PHYSMEM_THREAD_PAGES_SC 1
#endif
#endif

inline void ThreadPages::EnterBusy() {
#ifdef PHYSMEM_THREAD_PAGES_SC
  tls_cache_.busy.store(1, std::memory_order_seq_cst);
#else
  tls_cache_.busy.store(1, std::memory_order_relaxed);
  // Only the compiler is held back: the drainer's membarrier orders this store for the CPU.
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

inline uint64_t ThreadPages::Owner() {
#ifdef PHYSMEM_THREAD_PAGES_SC
  return tls_cache_.owner.load(std::memory_order_seq_cst);
#else
  // Acquire (a plain load on x86-64): seeing a drain's final `owner = id` store orders the
  // drainer's emptying of the LIFO before this op's loads.
  return tls_cache_.owner.load(std::memory_order_acquire);
#endif
}

inline bool ThreadPages::Pop(uint8_t tag, ZoneType zt, int gfp_class, Page** page) {
  EnterBusy();
  const uint32_t n = tls_cache_.count.load(std::memory_order_relaxed);
  const bool ok = Owner() == id_ && tls_cache_.tag[n].load(std::memory_order_relaxed) == tag;
  if (ok) [[likely]] {
    *page = tls_cache_.page[n].load(std::memory_order_relaxed);
    tls_cache_.count.store(n - 1, std::memory_order_relaxed);
  }
  tls_cache_.busy.store(0, std::memory_order_release);
  if (ok) [[likely]] {
    std::atomic<uint64_t>& hits = tls_cache_.hits[zt][gfp_class];
    hits.store(hits.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  return ok;
}

inline bool ThreadPages::Push(uint8_t tag, Page* page) {
  EnterBusy();
  if (Owner() != id_) [[unlikely]] {
    tls_cache_.busy.store(0, std::memory_order_release);
    return enabled_ && BindAndPush(tag, page);
  }
  const uint32_t n = tls_cache_.count.load(std::memory_order_relaxed);
  const bool ok = n < kMaxBlocks;
  if (ok) [[likely]] {
    tls_cache_.page[n + 1].store(page, std::memory_order_relaxed);
    tls_cache_.tag[n + 1].store(tag, std::memory_order_relaxed);
    tls_cache_.count.store(n + 1, std::memory_order_relaxed);
  }
  tls_cache_.busy.store(0, std::memory_order_release);
  return ok;
}

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_THREAD_PAGES_H_
