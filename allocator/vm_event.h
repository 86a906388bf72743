// Allocator event counters: the kernel's vm_event_item / count_vm_event() (mm/vmstat.c) for one
// PageAllocator — successful allocations by (serving zone, order, gfp class), failures by
// (preferred zone, order, gfp class), zone fallbacks, frees, and pages zeroed.
//
// Who uses it: PageAllocator counts on its alloc and free paths (including the order-0 fast path)
// and hands out Snapshot()s through PageAllocator::VmEvents(); the server turns a snapshot into
// Prometheus counters at scrape time. Frees that go onto a per-CPU list are not counted here:
// the list's ring counts every successful push exactly as part of its own state
// (per_cpu_ring.h), and PageAllocator::VmEvents() adds those counts to free(zone, order), so the
// fast path pays for no separate count. Thread-safety: the Count*() methods may be called from any
// thread; Snapshot() from any thread, concurrently with counting.
//
// Why per-thread blocks, not the kernel's per-CPU counters: the kernel bumps a per-CPU counter
// with preemption off (this_cpu_inc). Here a per-CPU counter would need an rseq critical
// section per increment (or an atomic RMW, since two threads may run on one CPU in turn), which
// costs more than the increment itself. A counter block that belongs to one thread needs neither:
// its owner does a relaxed load and a relaxed store (no lock prefix, no RMW) on memory no other
// thread writes, and a scrape reads it with relaxed loads. The atomics make the concurrent read
// well-defined (and TSan-clean); on x86 and arm64 they compile to plain moves.
//
// Lifetimes: threads come and go, and tests build and destroy many allocators on one thread.
//   * Each VmEventCounters has a process-unique id (never reused). A thread caches (id, block) of the
//     allocator it last counted for; the fast path compares ids, so a cache entry left by a
//     destroyed allocator can never match a live one. Another allocator takes the slow path,
//     which finds or creates the thread's block for it.
//   * Blocks belong to their thread. The allocator's side is a Registry (shared_ptr, kept alive by
//     the allocator and by every block) holding, under its mutex, the set of live blocks and an
//     accumulator. At thread exit each block folds into its registry's accumulator and leaves the
//     set; a snapshot sums accumulator + live blocks under the same mutex, so a count is never
//     lost or doubled across a thread exit. Blocks of destroyed allocators are dropped by their
//     thread the next time it creates a block (or at its exit).
//
// Invariants (each checked by tests/allocator/vm_event_test.cc):
//   alloc_pages(z)  = Σ_o Σ_c alloc(z, o, c) << o
//   free_pages(z)   = Σ_o free(z, o) << o
//   allocated now   = Σ_z alloc_pages(z) - free_pages(z)    (when no allocation is in flight)
#ifndef PHYSMEM_ALLOCATOR_VM_EVENT_H_
#define PHYSMEM_ALLOCATOR_VM_EVENT_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "allocator/gfp.h"
#include "allocator/zone_type.h"

namespace physmem {

// A summed snapshot. Indices: zone (ZoneType), order (0..nr_orders-1), gfp class (gfp_class_index()).
struct VmEventCounts {
  unsigned nr_orders = 0;
  std::vector<uint64_t> alloc;       // [zone][order][class]: blocks allocated, zone = serving zone
  std::vector<uint64_t> alloc_fail;  // [zone][order][class]: failed requests, zone = preferred zone
  std::array<std::array<uint64_t, MAX_NR_ZONES>, MAX_NR_ZONES> fallback{};  // [served][preferred]
  std::vector<uint64_t> free;        // [zone][order]: blocks freed
  uint64_t pages_zeroed = 0;

  uint64_t allocs(ZoneType z, unsigned order, int cls) const { return alloc[(z * nr_orders + order) * kNrGfpClasses + cls]; }
  uint64_t failures(ZoneType z, unsigned order, int cls) const {
    return alloc_fail[(z * nr_orders + order) * kNrGfpClasses + cls];
  }
  uint64_t frees(ZoneType z, unsigned order) const { return free[z * nr_orders + order]; }
  uint64_t alloc_pages(ZoneType z) const;  // pgalloc_<zone>
  uint64_t free_blocks(ZoneType z) const;
  uint64_t free_pages(ZoneType z) const;   // pgfree, per zone
};

class VmEventCounters {
 public:
  explicit VmEventCounters(unsigned nr_orders);
  ~VmEventCounters();
  VmEventCounters(const VmEventCounters&) = delete;
  VmEventCounters& operator=(const VmEventCounters&) = delete;

  // An allocation of 2^order pages served by `served` for a request whose gfp_zone() is
  // `preferred`; served below preferred is also a fallback.
  void CountAlloc(ZoneType served, ZoneType preferred, unsigned order, int gfp_class) {
    std::atomic<uint64_t>* c = ThisThread();
    Bump(c[(served * nr_orders_ + order) * kNrGfpClasses + gfp_class], 1);
    if (served != preferred) [[unlikely]] Bump(c[fallback_base_ + served * MAX_NR_ZONES + preferred], 1);
  }
  // An allocation of the order-0..3 fast path, which is always served by the zonelist's first
  // populated zone: counted by the preferred zone alone (no served-zone load, no fallback test);
  // Snapshot() books it as CountAlloc(served, preferred, ...) through SetFastPathZones()' map.
  void CountFastAlloc(ZoneType preferred, unsigned order, int gfp_class) {
    Bump(ThisThread()[fast_zone_base_[preferred] + order * kNrGfpClasses + gfp_class], 1);
  }
  // served[preferred]: the zone that serves the fast path's requests whose gfp_zone() is
  // `preferred` (-1: none). Set once, before the first CountFastAlloc().
  void SetFastPathZones(const std::array<int8_t, MAX_NR_ZONES>& served) { fast_served_ = served; }
  void CountAllocFail(ZoneType preferred, unsigned order, int gfp_class) {
    Bump(ThisThread()[fail_base_ + (preferred * nr_orders_ + order) * kNrGfpClasses + gfp_class], 1);
  }
  void CountFree(ZoneType zone, unsigned order) { Bump(ThisThread()[free_base_ + zone * nr_orders_ + order], 1); }
  void CountZeroed(uint64_t pages) { Bump(ThisThread()[zeroed_index_], pages); }

  // Sums every thread's block and what exited threads left behind.
  VmEventCounts Snapshot() const;

  struct Registry;  // vm_event.cc
  // Internal (thread exit): drops the calling thread's cached block.
  static void ForgetThisThread() { tls_cache_ = {0, nullptr}; }

 private:
  // The owner thread is the only writer of its block: a load and a store, no read-modify-write.
  static void Bump(std::atomic<uint64_t>& c, uint64_t n) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::atomic<uint64_t>* ThisThread() {
    if (tls_cache_.id == id_) [[likely]] return tls_cache_.counters;
    return ThisThreadSlow();
  }
  std::atomic<uint64_t>* ThisThreadSlow();

  // The calling thread's block for the allocator it counted for last. Trivial, so reading it
  // needs no TLS-initialisation guard; the thread's list of blocks lives in vm_event.cc.
  struct TlsCache {
    uint64_t id;
    std::atomic<uint64_t>* counters;
  };
  static inline thread_local constinit TlsCache tls_cache_{0, nullptr};

  const uint64_t id_;
  const unsigned nr_orders_;
  const size_t fail_base_, fallback_base_, free_base_, zeroed_index_, fast_base_, nr_counters_;
  std::array<size_t, MAX_NR_ZONES> fast_zone_base_;  // fast_base_ + z * nr_orders_ * kNrGfpClasses
  std::array<int8_t, MAX_NR_ZONES> fast_served_;
  std::shared_ptr<Registry> registry_;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_VM_EVENT_H_
