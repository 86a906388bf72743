#include "allocator/vm_event.h"

#include <algorithm>
#include <new>

#include "absl/container/flat_hash_set.h"
#include "allocator/mutex.h"

namespace physmem {
namespace {

std::atomic<uint64_t> g_next_id{1};

// A zeroed array of n counters on its own cache lines (a thread's block shares no line with
// another thread's).
struct CounterArray {
  explicit CounterArray(size_t n) : n(n), bytes((n * sizeof(std::atomic<uint64_t>) + 63) / 64 * 64) {
    void* mem = ::operator new(bytes, std::align_val_t{64});
    c = static_cast<std::atomic<uint64_t>*>(mem);
    for (size_t i = 0; i < n; ++i) new (&c[i]) std::atomic<uint64_t>(0);
  }
  // Unsized: clang declares sized deallocation only with -fsized-deallocation.
  ~CounterArray() { ::operator delete(c, std::align_val_t{64}); }
  CounterArray(const CounterArray&) = delete;
  CounterArray& operator=(const CounterArray&) = delete;

  const size_t n;
  const size_t bytes;
  std::atomic<uint64_t>* c;
};

}  // namespace

// Shared by an allocator's VmEventCounters and every thread block counting for it; outlives both.
struct VmEventCounters::Registry {
  explicit Registry(size_t n) : nr_counters(n), exited_sum(n), late(n) {}

  const size_t nr_counters;
  std::atomic<bool> allocator_gone{false};
  // physmem::Mutex (std::mutex underneath), not absl::Mutex: Debian's Abseil is not built with
  // TSan, which then cannot see absl::Mutex's ordering and reports the fold at thread exit as
  // racing with a snapshot.
  Mutex mu;
  absl::flat_hash_set<const CounterArray*> live ABSL_GUARDED_BY(mu);  // blocks of running threads
  std::vector<uint64_t> exited_sum ABSL_GUARDED_BY(mu);               // what exited threads counted
  // Counts made by a thread after its blocks were folded (from another thread_local's destructor):
  // several threads may write here, so a concurrent increment can be lost. Never the normal path.
  CounterArray late;
};

namespace {

struct Block {
  std::shared_ptr<VmEventCounters::Registry> registry;
  uint64_t id;
  CounterArray counters;
  Block(std::shared_ptr<VmEventCounters::Registry> r, uint64_t id) : registry(std::move(r)), id(id), counters(registry->nr_counters) {}
};

// Folds a block into its registry's accumulator and unlinks it; after this the block may be freed.
void Retire(Block& b) {
  VmEventCounters::Registry& r = *b.registry;
  MutexLock l(&r.mu);
  for (size_t i = 0; i < b.counters.n; ++i) r.exited_sum[i] += b.counters.c[i].load(std::memory_order_relaxed);
  r.live.erase(&b.counters);
}

struct ThreadBlocks {
  std::vector<std::unique_ptr<Block>> blocks;
  ~ThreadBlocks();
};

thread_local bool tls_blocks_gone = false;  // set once this thread's blocks are folded
thread_local ThreadBlocks tls_blocks;

}  // namespace

VmEventCounters::VmEventCounters(unsigned nr_orders)
    : id_(g_next_id.fetch_add(1, std::memory_order_relaxed)),
      nr_orders_(nr_orders),
      fail_base_(size_t{MAX_NR_ZONES} * nr_orders * kNrGfpClasses),
      fallback_base_(2 * fail_base_),
      free_base_(fallback_base_ + MAX_NR_ZONES * MAX_NR_ZONES),
      zeroed_index_(free_base_ + size_t{MAX_NR_ZONES} * nr_orders),
      fast_base_(zeroed_index_ + 1),
      nr_counters_(fast_base_ + size_t{MAX_NR_ZONES} * nr_orders * kNrGfpClasses),
      registry_(std::make_shared<Registry>(nr_counters_)) {
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    fast_zone_base_[z] = fast_base_ + size_t{static_cast<unsigned>(z)} * nr_orders * kNrGfpClasses;
    fast_served_[z] = static_cast<int8_t>(z);  // until SetFastPathZones(): served = preferred
  }
}

VmEventCounters::~VmEventCounters() {
  // Threads still hold blocks (and the registry); they drop them lazily. Nothing counts for this
  // allocator any more: its id is never reused, so no thread's cache can match it again.
  registry_->allocator_gone.store(true, std::memory_order_relaxed);
}

std::atomic<uint64_t>* VmEventCounters::ThisThreadSlow() {
  if (tls_blocks_gone) [[unlikely]] return registry_->late.c;
  std::vector<std::unique_ptr<Block>>& blocks = tls_blocks.blocks;
  Block* mine = nullptr;
  for (const std::unique_ptr<Block>& b : blocks) {
    if (b->id == id_) mine = b.get();
  }
  if (mine == nullptr) {
    // Drop the blocks of destroyed allocators first: a thread that outlives many allocators
    // (a test binary's main thread) keeps only the live ones.
    std::erase_if(blocks, [](const std::unique_ptr<Block>& b) {
      if (!b->registry->allocator_gone.load(std::memory_order_relaxed)) return false;
      Retire(*b);
      return true;
    });
    auto b = std::make_unique<Block>(registry_, id_);
    {
      MutexLock l(&registry_->mu);
      registry_->live.insert(&b->counters);
    }
    mine = b.get();
    blocks.push_back(std::move(b));
  }
  tls_cache_ = {id_, mine->counters.c};
  return mine->counters.c;
}

ThreadBlocks::~ThreadBlocks() {
  for (const std::unique_ptr<Block>& b : blocks) Retire(*b);
  tls_blocks_gone = true;
  VmEventCounters::ForgetThisThread();  // the cached block is about to be freed
  blocks.clear();
}

VmEventCounts VmEventCounters::Snapshot() const {
  std::vector<uint64_t> sum;
  {
    MutexLock l(&registry_->mu);
    sum = registry_->exited_sum;
    for (const CounterArray* a : registry_->live) {
      for (size_t i = 0; i < nr_counters_; ++i) sum[i] += a->c[i].load(std::memory_order_relaxed);
    }
  }
  for (size_t i = 0; i < nr_counters_; ++i) sum[i] += registry_->late.c[i].load(std::memory_order_relaxed);
  VmEventCounts out;
  out.nr_orders = nr_orders_;
  out.alloc.assign(sum.begin(), sum.begin() + fail_base_);
  out.alloc_fail.assign(sum.begin() + fail_base_, sum.begin() + fallback_base_);
  for (int s = 0; s < MAX_NR_ZONES; ++s) {
    for (int p = 0; p < MAX_NR_ZONES; ++p) out.fallback[s][p] = sum[fallback_base_ + s * MAX_NR_ZONES + p];
  }
  out.free.assign(sum.begin() + free_base_, sum.begin() + zeroed_index_);
  out.pages_zeroed = sum[zeroed_index_];
  // The fast path's counts, booked as CountAlloc(served, preferred, ...) would have booked them.
  for (int p = 0; p < MAX_NR_ZONES; ++p) {
    const int s = fast_served_[p];
    if (s < 0) continue;  // no zone serves p: the fast path never counted for it
    uint64_t blocks = 0;
    for (unsigned o = 0; o < nr_orders_; ++o) {
      for (int cls = 0; cls < kNrGfpClasses; ++cls) {
        const uint64_t n = sum[fast_zone_base_[p] + o * kNrGfpClasses + cls];
        if (n == 0) continue;
        out.alloc[(s * nr_orders_ + o) * kNrGfpClasses + cls] += n;
        blocks += n;
      }
    }
    if (s != p) out.fallback[s][p] += blocks;
  }
  return out;
}

uint64_t VmEventCounts::alloc_pages(ZoneType z) const {
  uint64_t pages = 0;
  for (unsigned o = 0; o < nr_orders; ++o) {
    for (int c = 0; c < kNrGfpClasses; ++c) pages += allocs(z, o, c) << o;
  }
  return pages;
}

uint64_t VmEventCounts::free_blocks(ZoneType z) const {
  uint64_t n = 0;
  for (unsigned o = 0; o < nr_orders; ++o) n += frees(z, o);
  return n;
}

uint64_t VmEventCounts::free_pages(ZoneType z) const {
  uint64_t pages = 0;
  for (unsigned o = 0; o < nr_orders; ++o) pages += frees(z, o) << o;
  return pages;
}

}  // namespace physmem
