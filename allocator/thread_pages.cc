#include "allocator/thread_pages.h"

#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "allocator/rseq.h"

namespace physmem {

constinit thread_local ThreadPages::Cache ThreadPages::tls_cache_ = {};

// The slow paths that outlive one allocator: which ThreadPages are alive (a thread's cache may
// name an allocator that was destroyed since), and the thread-exit hook that hands a dead
// thread's blocks back to their buddy before its thread_local block is freed.
// Lock order: the registry's mu_, then a ThreadPages::mu_, then a zone lock (through GiveBack).
class ThreadPagesRegistry {
 public:
  static ThreadPagesRegistry& Get() {
    static ThreadPagesRegistry* const r = new ThreadPagesRegistry;  // never destroyed: threads may exit late
    return *r;
  }

  uint64_t Register(ThreadPages* tp) {
    MutexLock l(&mu_);
    const uint64_t id = ++last_id_;
    live_[id] = tp;
    return id;
  }
  void Unregister(uint64_t id) {
    MutexLock l(&mu_);
    live_.erase(id);
  }

  // The calling thread's cache leaves what it served and serves `tp` from now on.
  void Bind(ThreadPages* tp) {
    ThreadExitHook::Arm();
    MutexLock l(&mu_);
    ThreadPages::Cache* const c = &ThreadPages::tls_cache_;
    LeaveLocked(c);
    MutexLock tl(&tp->mu_);
    tp->caches_.push_back(c);
    c->owner.store(tp->id_, std::memory_order_release);
  }

  // At thread exit, before the thread's thread_local block goes away.
  void Exit() {
    MutexLock l(&mu_);
    LeaveLocked(&ThreadPages::tls_cache_);
  }

 private:
  // Armed on a thread's first binding; its destructor runs at that thread's exit. Kept apart from
  // the cache so that the cache stays trivially constructed (no TLS wrapper on the fast path).
  struct ThreadExitHook {
    bool armed = false;
    ~ThreadExitHook() {
      if (armed) ThreadPagesRegistry::Get().Exit();
    }
    static void Arm() {
      static thread_local ThreadExitHook hook;
      hook.armed = true;
    }
  };

  void LeaveLocked(ThreadPages::Cache* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // A drain may hold the cache (the drain bit); Leave() waits for it on the allocator's lock.
    if (const uint64_t owner = c->owner.load(std::memory_order_acquire) & ~ThreadPages::kDrainBit; owner != 0) {
      // A live allocator takes its blocks back; a dead one's blocks died with its arena.
      if (auto it = live_.find(owner); it != live_.end()) it->second->Leave(c);
    }
    c->owner.store(0, std::memory_order_relaxed);
    c->count.store(0, std::memory_order_relaxed);
    for (auto& per_zone : c->hits) {
      for (auto& n : per_zone) n.store(0, std::memory_order_relaxed);
    }
  }

  Mutex mu_;
  uint64_t last_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, ThreadPages*> live_ ABSL_GUARDED_BY(mu_);
};

ThreadPages::ThreadPages(bool enabled, GiveBack give_back)
    : id_(enabled && MembarrierExpeditedReady() ? ThreadPagesRegistry::Get().Register(this)
                                                : std::numeric_limits<uint64_t>::max()),
      enabled_(id_ != std::numeric_limits<uint64_t>::max()),
      give_back_(std::move(give_back)) {}

ThreadPages::~ThreadPages() {
  if (enabled_) ThreadPagesRegistry::Get().Unregister(id_);
}

bool ThreadPages::BindAndPush(uint8_t tag, Page* page) {
  // Already ours, only drained right now: the CPU's list takes this block.
  if ((tls_cache_.owner.load(std::memory_order_relaxed) & ~kDrainBit) == id_) return false;
  ThreadPagesRegistry::Get().Bind(this);
  return Push(tag, page);
}

std::vector<std::pair<ZoneType, Page*>> ThreadPages::TakeAllLocked(Cache* c) {
  std::vector<std::pair<ZoneType, Page*>> blocks;
  const uint32_t n = c->count.load(std::memory_order_relaxed);
  for (uint32_t i = 1; i <= n; ++i) {
    const ZoneType zt = PageTagZone(c->tag[i].load(std::memory_order_relaxed));
    blocks.emplace_back(zt, c->page[i].load(std::memory_order_relaxed));
    ++taken_[zt];
  }
  c->count.store(0, std::memory_order_relaxed);
  return blocks;
}

void ThreadPages::GiveBackAll(const std::vector<std::pair<ZoneType, Page*>>& blocks) {
  std::vector<Page*> zone_blocks;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    zone_blocks.clear();
    for (const auto& [zt, page] : blocks) {
      if (zt == z) zone_blocks.push_back(page);
    }
    if (!zone_blocks.empty()) give_back_(static_cast<ZoneType>(z), zone_blocks);
  }
}

void ThreadPages::Leave(Cache* c) {
  // Called by the registry, on the thread that owns `c` (it is exiting or moving to another
  // allocator), so no op of its runs: no protocol needed, only the drainers' lock.
  std::vector<std::pair<ZoneType, Page*>> blocks;
  {
    MutexLock l(&mu_);
    std::erase(caches_, c);
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      for (int k = 0; k < kNrGfpClasses; ++k) left_hits_[z][k] += c->hits[z][k].load(std::memory_order_relaxed);
    }
    blocks = TakeAllLocked(c);
  }
  GiveBackAll(blocks);
}

uint64_t ThreadPages::DrainAll() {
  if (!enabled_) return 0;
  std::vector<std::pair<ZoneType, Page*>> blocks;
  {
    MutexLock l(&mu_);
    for (Cache* c : caches_) c->owner.store(id_ | kDrainBit, std::memory_order_seq_cst);
    if (const int rc = FenceAllThreads(); rc != 0) {
      // Registered at construction (enabled_), so only a broken kernel gets here; carrying on
      // could hand a block out twice.
      std::fprintf(stderr, "physmem: membarrier(PRIVATE_EXPEDITED) failed: %s\n", std::strerror(-rc));
      std::abort();
    }
    for (Cache* c : caches_) {
      // An owner inside its few-instruction op, or preempted inside it: wait it out.
      while (c->busy.load(std::memory_order_acquire) != 0) sched_yield();
      std::vector<std::pair<ZoneType, Page*>> taken = TakeAllLocked(c);
      blocks.insert(blocks.end(), taken.begin(), taken.end());
    }
    for (Cache* c : caches_) c->owner.store(id_, std::memory_order_release);
  }
  GiveBackAll(blocks);
  return blocks.size();
}

void ThreadPages::Snapshot(std::vector<std::pair<ZoneType, Page*>>* out) const {
  MutexLock l(&mu_);
  for (const Cache* c : caches_) {
    const uint32_t n = std::min(c->count.load(std::memory_order_acquire), kMaxBlocks);
    for (uint32_t i = 1; i <= n; ++i) {
      out->emplace_back(PageTagZone(c->tag[i].load(std::memory_order_relaxed)), c->page[i].load(std::memory_order_relaxed));
    }
  }
}

ThreadPagesStats ThreadPages::Stats(ZoneType zt) const {
  ThreadPagesStats s;
  MutexLock l(&mu_);
  s.threads = caches_.size();
  s.taken = taken_[zt];
  s.hits_by_class = left_hits_[zt];
  for (const Cache* c : caches_) {
    const uint32_t n = std::min(c->count.load(std::memory_order_relaxed), kMaxBlocks);
    for (uint32_t i = 1; i <= n; ++i) s.count += PageTagZone(c->tag[i].load(std::memory_order_relaxed)) == zt;
    for (int k = 0; k < kNrGfpClasses; ++k) s.hits_by_class[k] += c->hits[zt][k].load(std::memory_order_relaxed);
  }
  for (uint64_t h : s.hits_by_class) s.hits += h;
  s.frees = s.hits + s.count + s.taken;
  return s;
}

}  // namespace physmem
