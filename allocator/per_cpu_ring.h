// PerCpuRings: lock-free per-CPU rings of 32-bit page indices, the container under the per-CPU
// page lists (the kernel's struct per_cpu_pages, "pcp").
//
// What it is for: every CPU owns `nr_lists` bounded rings (one per pcp list: order x migratetype).
// The hot end ("top", the kernel's list head) serves allocation and free in LIFO order, so the
// page freed last, still warm in the cache, is handed out first; the cold end ("bottom", the list
// tail) takes refills in physical order (rmqueue_bulk's list_add_tail) and gives up pages to drains
// (free_pcppages_bulk's list_last_entry).
//
// Who calls it: the per-CPU page lists (allocator/per_cpu_pages) on their fast path; the allocator
// drains every CPU with DrainRemote() before it declares an allocation failed; the statistics
// snapshot reads Count() and Counters().
//
// Thread-safety: every method may be called from any thread at any time. PushHot/PopHot/PushCold/
// PopCold run without locks as one restartable sequence (rseq) on the CPU the thread is running on;
// they report failure (false / 0) when the ring is full/empty, when rseq is unusable, or while a
// remote drain owns that ring, and the caller then takes its locked path. DrainRemote serializes
// with other drains on a mutex and with the fast path by the protocol below. Count() and
// Counters() are racy snapshots.
//
// ---------------------------------------------------------------------------------------------
// Layout and invariants. One Ring header per (cpu, list) holds three free-running u64 counters;
// the ends of the ring are derived from them, so the exact event counters ARE the state:
//
//   top    = pushes - hits                  (hot end: only PushHot +1 and PopHot -1 move it)
//   bottom                                   (cold end: PushCold -k, PopCold/DrainRemote +k)
//   count  = top - bottom,   0 <= count <= capacity        (all arithmetic modulo 2^64)
//   items  = slots[i & (capacity - 1)] for i in [bottom, top); hot end top - 1, cold end bottom
//   e.g. capacity 8, pushes 25, hits 15, bottom 6: top 10, count 4, the items sit in slots
//        6, 7, 0, 1; PopHot takes slot 1, PopCold takes slot 6, PushCold writes slot 5, PushHot
//        writes slot 2.
//
// Every operation commits exactly one aligned 8-byte store: PushHot `pushes + 1`, PopHot
// `hits + 1`, PushCold/PopCold/DrainRemote the new `bottom`. So `hits` (successful PopHot) and
// `pushes` (successful PushHot) are exact for free: an aborted attempt commits nothing, and a
// committed one is counted by its own commit. (A first design kept {top:32|bottom:32} in one word
// and committed the counters beside it with a 16-byte SSE store; the partly overlapping 16-byte
// stores defeated store-to-load forwarding and a push+pop pair cost 12 ns instead of ~4.)
// Slot indices are taken modulo capacity, which divides 2^64, so the wrap of a counter (584 years
// at 1e9 ops/s) changes nothing.
//
// A slot outside [bottom, top) is garbage: an operation may write it before its commit, and the
// commit alone makes it an item.
//
// Each CPU's block (ring headers, then slot arrays) starts on its own 128-byte boundary and is
// written only by code running on that CPU, or by a drainer while that CPU's sections are fenced
// off, so CPUs never share a cache line (nor an adjacent-line prefetch pair).
//
// Fast path: one rseq critical section per operation (x86-64, glibc's registered area):
//   arm rseq_cs -> cpu = rseq->cpu_id (inside the section) -> cpu < nr_cpus? -> ring of (cpu,list)
//   -> load counters, check count (fails when full/empty/drain-locked) -> slot access
//   -> ONE committing store.
// If the thread is preempted, migrated or signalled before the commit, the kernel resumes it at
// the abort handler and the operation restarts from the top on whatever CPU it now runs on; the
// aborted attempt wrote only garbage slots. Two sections can therefore never interleave on one
// ring: a section commits only if nothing else ran on its CPU between its first load and its
// commit, and only code on CPU c (or the drainer, below) touches CPU c's rings.
//
// Remote drain protocol (DrainRemote(cpu, list)), after tcmalloc's fence. The drain lock is a bias
// in `bottom` rather than a separate flag, so the fast path pays no extra load or branch for it:
//   1. take drain_mu_ (drainers are serialized among themselves; it is the slow path);
//   2. bottom += kDrainLockBias (2^63) with an atomic RMW. While biased, count = real count + 2^63
//      fails every fast-path check (count < limit, 0 < count, count <= capacity), so no section
//      that loads the biased bottom commits anything;
//   3. FenceCpu(cpu): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, cpu). When it
//      returns, every section that was running on `cpu` has committed (its stores visible here)
//      or will restart; a section preempted earlier restarts when it resumes;
//   4. if bottom no longer holds exactly the value step 2 produced, a cold op that loaded bottom
//      before step 2 committed between steps 2 and 3 (a legitimate op that overwrote the bias):
//      repeat from 2. The test compares that one word, never a count from three loads: once the
//      bias is overwritten the ring is unlocked and its sections commit between such loads;
//   5. the drainer is now the only writer of the ring: copy k items from the cold end, then store
//      the unbiased bottom + k with release semantics: one store that both commits the drain and
//      unlocks the ring (a section that loads it sees the final value; the drainer wrote no slot).
// Why no item is lost or handed out twice: an item leaves a ring only by the commit that moves
// top or bottom past it, performed by exactly one writer: the one section on that CPU that reached
// its commit without interruption (rseq), or the drainer while no section of that CPU can commit
// (steps 2-4). The item's value was read before that commit from a slot inside [bottom, top),
// which no other writer can have changed in between. Pushes write their slot before the commit
// and the commit makes the item visible exactly once; aborted pushes wrote only outside
// [bottom, top) (count < limit <= capacity guarantees the target slot is free).
//
// ThreadSanitizer cannot see inside the asm, so the happens-before that the CPU provides through
// the rings (a push's earlier writes are visible to whoever pops that item) is declared to it
// explicitly: __tsan_release before a push commits, __tsan_acquire after a pop or drain, on one
// sync address per list (shared by all CPUs: the CPU is only known inside the section).
// ---------------------------------------------------------------------------------------------
#ifndef PHYSMEM_ALLOCATOR_PER_CPU_RING_H_
#define PHYSMEM_ALLOCATOR_PER_CPU_RING_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/check.h"
#include "allocator/mutex.h"
#include "allocator/rseq.h"

#if defined(__SANITIZE_THREAD__)
#define PHYSMEM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PHYSMEM_TSAN 1
#endif
#endif
#ifdef PHYSMEM_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace physmem {

// Event counters of one CPU, summed over its lists. hits and pushes are exact (they are the
// rings' own state, see below); the slow-path counters are relaxed atomics.
struct PerCpuRingCounters {
  uint64_t hits = 0;           // successful PopHot on this CPU (allocations served by the pcp)
  uint64_t pushes = 0;         // successful PushHot on this CPU (frees absorbed by the pcp)
  uint64_t refills = 0;        // successful PushCold calls on this CPU (one per refill batch)
  uint64_t drains = 0;         // PopCold calls on this CPU that returned at least one item
  uint64_t remote_drains = 0;  // DrainRemote calls on this CPU's rings that took >= 1 item
};

class PerCpuRings {
 public:
  static constexpr uint32_t kMaxCapacity = 1u << 20;
  static constexpr int kMaxLists = 64;
  static constexpr int kMaxCpus = 1 << 16;

  // Validates the shape (nr_cpus in [1, kMaxCpus], nr_lists in [1, kMaxLists], capacity a power
  // of two in [1, kMaxCapacity]) and builds the rings. Size nr_cpus with NumPossibleCpus(): a
  // thread on a CPU id >= nr_cpus gets failures from the fast path (never wrong answers).
  static absl::StatusOr<std::unique_ptr<PerCpuRings>> Create(int nr_cpus, int nr_lists, uint32_t capacity);
  static absl::Status ValidateShape(int nr_cpus, int nr_lists, uint32_t capacity);

  // Same as Create() for shapes known to be valid; aborts with the reason on an invalid shape.
  PerCpuRings(int nr_cpus, int nr_lists, uint32_t capacity);
  ~PerCpuRings();
  PerCpuRings(const PerCpuRings&) = delete;
  PerCpuRings& operator=(const PerCpuRings&) = delete;

  // True when the rseq fast path is live: x86-64, glibc registered rseq for the constructing
  // thread, and membarrier can fence a CPU. When false, every fast-path op and DrainRemote
  // report failure and the rings stay empty.
  bool enabled() const { return enabled_; }
  int nr_cpus() const { return nr_cpus_; }
  int nr_lists() const { return nr_lists_; }
  uint32_t capacity() const { return capacity_; }

  // The CPU the caller runs on now (rseq cpu_id, or sched_getcpu()); a hint, it may change.
  static int CurrentCpu() { return RseqCpuId(); }

  // --- Fast path: current CPU, lock-free, one critical section each. ---
  // Free into the hot end. False if count >= min(limit, capacity), rseq is unusable, or a remote
  // drain owns the ring: the caller then frees through its locked path.
  bool PushHot(int list, uint32_t item, uint32_t limit) { return PushHotWithin(list, item, std::min(limit, capacity_)); }
  // The same for a caller whose bound is already at most capacity() (the per-CPU lists' high).
  bool PushHotWithin(int list, uint32_t item, uint32_t bound);
  // Allocate from the hot end (LIFO). False if empty/unusable/locked; *item is written only on
  // success.
  bool PopHot(int list, uint32_t* item);
  // Refill: append at the cold end, below the current bottom. The batch form stores
  // items[0..k) in that order toward the cold end (items[k-1] becomes the coldest), with
  // k = min(n, limit - count), all in one section, and returns k (0 on failure), so hot pops
  // meet the refilled items in the order they were given (the kernel's list_add_tail order).
  bool PushCold(int list, uint32_t item, uint32_t limit);
  uint32_t PushCold(int list, const uint32_t* items, uint32_t n, uint32_t limit);
  // Drain from the cold end: out[0] = coldest. Takes min(n, count) items in one section; returns
  // how many (0 if empty/unusable/locked).
  uint32_t PopCold(int list, uint32_t n, uint32_t* out);

  // --- Slow path: any CPU's ring, from any thread. ---
  // Takes up to n items from the cold end of `cpu`'s ring under the fence protocol above; returns
  // how many. Fast-path ops on that ring fail while it runs (a few microseconds).
  uint32_t DrainRemote(int cpu, int list, uint32_t n, uint32_t* out);
  // Racy snapshot of the number of items in one ring (exact when nothing runs concurrently).
  uint32_t Count(int cpu, int list) const;
  // Appends the items of one ring to *out, coldest first, without removing them. Exact only when
  // nothing runs on that ring (validation with the zone quiet); otherwise a racy best effort.
  void Snapshot(int cpu, int list, std::vector<uint32_t>* out) const;
  PerCpuRingCounters Counters(int cpu) const;
  // Successful PushHot calls on one ring (exact: the ring's own state). Relaxed load.
  uint64_t Pushes(int cpu, int list) const;

  // Checks 0 <= count <= capacity (hence no ring left drain-locked) for every ring. Call when no
  // operation runs concurrently (tests call it after each step).
  absl::Status Validate() const;

 private:
  // One per (cpu, list); the asm addresses the fields by offsetof. 32-byte aligned so that a
  // header never straddles a cache line.
  struct alignas(32) Ring {
    uint64_t pushes;  // successful PushHot, exact; top = pushes - hits
    uint64_t hits;    // successful PopHot, exact
    uint64_t bottom;  // cold end, free-running; + kDrainLockBias while DrainRemote owns the ring
    uint64_t unused;
  };
  static_assert(sizeof(Ring) == 32);

  // Added to `bottom` by DrainRemote to lock the ring: count becomes >= 2^63 > any capacity.
  static constexpr uint64_t kDrainLockBias = uint64_t{1} << 63;

  // Relaxed per-CPU counters of the slow path (never touched by the lock-free sections).
  struct alignas(128) SlowCounters {
    std::atomic<uint64_t> refills{0};
    std::atomic<uint64_t> drains{0};
    std::atomic<uint64_t> remote_drains{0};
  };

  // Where the batch sections leave their results (memory keeps their register pressure low).
  struct SectionResult {
    uint32_t value;  // number of items moved
    uint32_t cpu;    // CPU the section ran on
  };

  static constexpr size_t kBlockAlign = 128;  // cache line pair: no adjacent-line false sharing

  Ring* RingOf(int cpu, int list) const {
    return reinterpret_cast<Ring*>(base_ + static_cast<size_t>(cpu) * stride_ +
                                   static_cast<size_t>(list) * sizeof(Ring));
  }
  uint32_t* SlotsOf(int cpu, int list) const {
    return reinterpret_cast<uint32_t*>(base_ + static_cast<size_t>(cpu) * stride_ + header_bytes_ +
                                       (static_cast<size_t>(list) << list_shift_));
  }
  // pushes - hits - bottom from relaxed loads: exact when no section can run on that ring.
  static uint64_t CountOf(const Ring& ring);
  // Steps 2-4 of the drain protocol; returns the unbiased bottom.
  uint64_t LockForDrain(int cpu, int list);
  void CheckCpuAndList(int cpu, int list) const;
  void Note(std::atomic<uint64_t> SlowCounters::*counter, uint32_t cpu);

  // ThreadSanitizer cannot see the hand-off inside the asm: declare the happens-before the CPU
  // really provides (release before a push commits, acquire after a pop or drain took items).
  static void TsanRelease([[maybe_unused]] const void* sync) {
#ifdef PHYSMEM_TSAN
    __tsan_release(const_cast<void*>(sync));
#endif
  }
  static void TsanAcquire([[maybe_unused]] const void* sync) {
#ifdef PHYSMEM_TSAN
    __tsan_acquire(const_cast<void*>(sync));
#endif
  }

  // Read by every fast-path op: keep together at the front.
  char* base_ = nullptr;       // nr_cpus_ blocks of stride_ bytes, kBlockAlign-aligned
  uint64_t stride_ = 0;        // bytes per CPU block (multiple of kBlockAlign)
  uint32_t ncpus_active_ = 0;  // nr_cpus_ when enabled_, else 0: the in-section CPU bound, so
                               // a disabled instance fails inside the section (no flag test)
  uint32_t capacity_ = 0;
  uint64_t mask_ = 0;        // capacity_ - 1
  size_t header_bytes_ = 0;  // Ring headers of one CPU, rounded up to kBlockAlign
  int list_shift_ = 0;       // log2(capacity_ * sizeof(uint32_t)): bytes of one slot array
  bool enabled_ = false;
  // SlotsOf(0, list) for every list, so that a section's slot base is one load, not a shift and
  // two adds of three fields.
  std::array<uint32_t*, kMaxLists> slots0_{};

  int nr_cpus_ = 0;
  int nr_lists_ = 0;
  std::unique_ptr<SlowCounters[]> slow_;
  Mutex drain_mu_;  // serializes DrainRemote callers; guards no field (rings: protocol)
};

// ---------------------------------------------------------------------------------------------
// Critical sections (x86-64), built from rseq.h's descriptor and abort-handler pieces.
//
// PushHot/PopHot do not test enabled_: a disabled instance has ncpus_active_ == 0, so the
// section's CPU bound check fails. Running the section is harmless even when glibc did not
// register rseq: the area exists in every glibc 2.35+ thread (cpu_id then holds -1 or -2), and
// storing to its rseq_cs without a registration means nothing to the kernel. This saves ~0.4 ns
// per pair. PopHot returns the item through an asm goto output (GCC >= 11, clang >= 11; only the
// fall-through path uses it, as GCC documents; `asm volatile goto` also sidesteps GCC PR 113921).
// The batch sections return through memory (SectionResult).
#if PHYSMEM_RSEQ_X86_64
// clang-format off
// Arms the section, reads the CPU inside it, bounds-checks it (cpu_id -1/-2 compare as huge
// unsigned values) and finds this CPU's ring (rcx) and slot array (rax). `save_cpu` optionally
// records the CPU in SectionResult.
#define PHYSMEM_RING_ENTER(save_cpu)                                        \
  PHYSMEM_RSEQ_DESCRIPTOR                                                   \
  "leaq 3b(%%rip), %%rax\n\t"                                               \
  "movq %%rax, %c[cs_off](%[rs])\n\t" /* arm: rseq->rseq_cs = &desc */     \
  "1:\n\t"                                                                  \
  "movl %c[cpu_off](%[rs]), %%eax\n\t" /* cpu = rseq->cpu_id */            \
  "cmpl %[ncpu], %%eax\n\t"                                                 \
  "jae %l[fail]\n\t"                                                        \
  save_cpu                                                                  \
  "imulq %[stride], %%rax\n\t"                                              \
  "leaq (%[ring0], %%rax), %%rcx\n\t" /* rcx = ring of (cpu, list) */       \
  "addq %[slots0], %%rax\n\t"         /* rax = slots of (cpu, list) */

#define PHYSMEM_RING_SAVE_CPU "movl %%eax, %c[res_cpu](%[res])\n\t"

#define PHYSMEM_RING_INPUTS(list)                                                             \
  [rs] "r"(RseqArea()), [ring0] "r"(RingOf(0, list)), [slots0] "rm"(slots0_[list]),          \
      [ncpu] "rm"(ncpus_active_), [stride] "rm"(stride_), [mask] "rm"(mask_),                \
      [cs_off] "i"(kRseqCsOffset), [cpu_off] "i"(kRseqCpuIdOffset),                           \
      [pushes_off] "i"(offsetof(Ring, pushes)), [hits_off] "i"(offsetof(Ring, hits)),         \
      [bottom_off] "i"(offsetof(Ring, bottom))
// clang-format on
#endif  // PHYSMEM_RSEQ_X86_64

inline bool PerCpuRings::PushHotWithin(int list, uint32_t item, uint32_t limit) {
  PHYSMEM_DCHECK(list >= 0 && list < nr_lists_, "per-CPU list index out of range");
  PHYSMEM_DCHECK(limit <= capacity_, "PushHotWithin: bound above the ring's capacity");
#if PHYSMEM_RSEQ_X86_64
  const uint64_t bound = limit;
  TsanRelease(RingOf(0, list));
restart:
  // clang-format off
  asm volatile goto(
      PHYSMEM_RING_ENTER("")
      "movq %c[pushes_off](%%rcx), %%rdx\n\t"  // rdx = pushes
      "movq %%rdx, %%rsi\n\t"
      "subq %c[hits_off](%%rcx), %%rsi\n\t"    // rsi = top = pushes - hits
      "movq %%rsi, %%r8\n\t"
      "subq %c[bottom_off](%%rcx), %%r8\n\t"   // r8 = count (>= 2^63 if drain-locked)
      "cmpq %[bound], %%r8\n\t"
      "jae %l[fail]\n\t"                       // count >= limit: full (or locked)
      "andl %k[mask], %%esi\n\t"
      "movl %[item], (%%rax, %%rsi, 4)\n\t"    // slot at top: garbage until the commit
      "addq $1, %%rdx\n\t"
      "movq %%rdx, %c[pushes_off](%%rcx)\n\t"  // commit: pushes + 1 (top + 1)
      "2:\n\t"
      PHYSMEM_RSEQ_ABORT("restart")
      :
      : PHYSMEM_RING_INPUTS(list), [item] "r"(item), [bound] "rm"(bound)
      : "memory", "cc", "rax", "rcx", "rdx", "rsi", "r8"
      : restart, fail);
  // clang-format on
  return true;
fail:
  return false;
#else
  (void)list;
  (void)item;
  (void)limit;
  return false;
#endif
}

inline bool PerCpuRings::PopHot(int list, uint32_t* item) {
  PHYSMEM_DCHECK(list >= 0 && list < nr_lists_, "per-CPU list index out of range");
#if PHYSMEM_RSEQ_X86_64
  uint32_t value;
restart:
  // clang-format off
  asm volatile goto(
      PHYSMEM_RING_ENTER("")
      "movq %c[hits_off](%%rcx), %%rdx\n\t"    // rdx = hits
      "movq %c[pushes_off](%%rcx), %%rsi\n\t"
      "subq %%rdx, %%rsi\n\t"                   // rsi = top = pushes - hits
      "leaq -1(%%rsi), %%r8\n\t"
      "subq %c[bottom_off](%%rcx), %%r8\n\t"   // r8 = count - 1
      "cmpq %[mask], %%r8\n\t"
      "ja %l[fail]\n\t"                         // count - 1 > capacity - 1: empty (or locked)
      "subl $1, %%esi\n\t"
      "andl %k[mask], %%esi\n\t"
      "movl (%%rax, %%rsi, 4), %k[value]\n\t"   // item = slots[(top - 1) & mask]
      "addq $1, %%rdx\n\t"
      "movq %%rdx, %c[hits_off](%%rcx)\n\t"    // commit: hits + 1 (top - 1)
      "2:\n\t"
      PHYSMEM_RSEQ_ABORT("restart")
      : [value] "=&r"(value)  // valid on the fall-through (success) path only
      : PHYSMEM_RING_INPUTS(list)
      : "memory", "cc", "rax", "rcx", "rdx", "rsi", "r8"
      : restart, fail);
  // clang-format on
  *item = value;
  TsanAcquire(RingOf(0, list));
  return true;
fail:
  return false;
#else
  (void)list;
  (void)item;
  return false;
#endif
}

inline bool PerCpuRings::PushCold(int list, uint32_t item, uint32_t limit) {
  return PushCold(list, &item, 1, limit) == 1;
}

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_PER_CPU_RING_H_
