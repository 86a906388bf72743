#include "allocator/per_cpu_ring.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_format.h"

namespace physmem {
namespace {

size_t RoundUp(size_t n, size_t align) { return (n + align - 1) / align * align; }

bool IsPowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

int Log2(size_t v) {
  int shift = 0;
  while ((size_t{1} << shift) < v) ++shift;
  return shift;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "PerCpuRings: %s\n", message.c_str());
  std::abort();
}

}  // namespace

absl::Status PerCpuRings::ValidateShape(int nr_cpus, int nr_lists, uint32_t capacity) {
  if (nr_cpus < 1 || nr_cpus > kMaxCpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("nr_cpus must be in [1, %d] (use NumPossibleCpus()), got %d", kMaxCpus, nr_cpus));
  }
  if (nr_lists < 1 || nr_lists > kMaxLists) {
    return absl::InvalidArgumentError(absl::StrFormat("nr_lists must be in [1, %d], got %d", kMaxLists, nr_lists));
  }
  if (!IsPowerOfTwo(capacity) || capacity > kMaxCapacity) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "capacity must be a power of two in [1, %u] (ring slots per list), got %u", kMaxCapacity, capacity));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PerCpuRings>> PerCpuRings::Create(int nr_cpus, int nr_lists, uint32_t capacity) {
  if (absl::Status status = ValidateShape(nr_cpus, nr_lists, capacity); !status.ok()) {
    return status;
  }
  return std::make_unique<PerCpuRings>(nr_cpus, nr_lists, capacity);
}

PerCpuRings::PerCpuRings(int nr_cpus, int nr_lists, uint32_t capacity)
    : capacity_(capacity), nr_cpus_(nr_cpus), nr_lists_(nr_lists) {
  if (absl::Status status = ValidateShape(nr_cpus, nr_lists, capacity); !status.ok()) {
    Die(std::string(status.message()));
  }
  mask_ = capacity - 1;
  list_shift_ = Log2(size_t{capacity} * sizeof(uint32_t));
  header_bytes_ = RoundUp(static_cast<size_t>(nr_lists) * sizeof(Ring), kBlockAlign);
  const size_t slot_bytes = RoundUp(static_cast<size_t>(nr_lists) << list_shift_, kBlockAlign);
  stride_ = header_bytes_ + slot_bytes;
  const size_t total = static_cast<size_t>(nr_cpus) * stride_;
  base_ = static_cast<char*>(std::aligned_alloc(kBlockAlign, total));
  if (base_ == nullptr) Die(absl::StrFormat("cannot allocate %u bytes of rings", total));
  std::memset(base_, 0, total);  // every ring empty: pushes = hits = bottom = 0
  for (int list = 0; list < nr_lists; ++list) slots0_[list] = SlotsOf(0, list);
  slow_ = std::make_unique<SlowCounters[]>(nr_cpus);

  // Remote drains are only safe if membarrier can fence a CPU's sections; without it the fast
  // path must stay off (every op then fails and callers use their locked path).
  enabled_ = PHYSMEM_RSEQ_X86_64 && RseqRegistered() && MembarrierRseqReady();
  ncpus_active_ = enabled_ ? static_cast<uint32_t>(nr_cpus) : 0;
}

PerCpuRings::~PerCpuRings() { std::free(base_); }

void PerCpuRings::CheckCpuAndList(int cpu, int list) const {
  if (cpu < 0 || cpu >= nr_cpus_ || list < 0 || list >= nr_lists_) {
    Die(absl::StrFormat("cpu %d / list %d out of range: expected cpu in [0, %d), list in [0, %d)", cpu, list, nr_cpus_,
                        nr_lists_));
  }
}

void PerCpuRings::Note(std::atomic<uint64_t> SlowCounters::*counter, uint32_t cpu) {
  (slow_[cpu].*counter).fetch_add(1, std::memory_order_relaxed);
}

uint32_t PerCpuRings::PushCold(int list, const uint32_t* items, uint32_t n, uint32_t limit) {
  PHYSMEM_DCHECK(list >= 0 && list < nr_lists_, "per-CPU list index out of range");
#if PHYSMEM_RSEQ_X86_64
  if (!enabled_ || n == 0) return 0;
  const uint64_t bound = std::min(limit, capacity_);
  const uint64_t want = n;
  TsanRelease(RingOf(0, list));
  SectionResult res;
restart:
  // clang-format off
  asm volatile goto(
      PHYSMEM_RING_ENTER(PHYSMEM_RING_SAVE_CPU)
      "movq %c[bottom_off](%%rcx), %%rdx\n\t"  // rdx = bottom
      "movq %c[pushes_off](%%rcx), %%rsi\n\t"
      "subq %c[hits_off](%%rcx), %%rsi\n\t"    // rsi = top
      "subq %%rdx, %%rsi\n\t"                   // rsi = count (>= 2^63 if drain-locked)
      "movq %[bound], %%r8\n\t"
      "subq %%rsi, %%r8\n\t"                    // r8 = limit - count = room
      "jbe %l[fail]\n\t"                        // limit <= count: full (or locked)
      "cmpq %[want], %%r8\n\t"
      "jbe 5f\n\t"
      "movq %[want], %%r8\n\t"                  // r8 = k = min(room, n)
      "5:\n\t"
      "movl %%r8d, %c[res_value](%[res])\n\t"
      "movq %[items], %%r9\n\t"
      "6:\n\t"                                  // for each item: slots[--bottom & mask] = item
      "subq $1, %%rdx\n\t"
      "movl %%edx, %%esi\n\t"
      "andl %k[mask], %%esi\n\t"
      "movl (%%r9), %%r10d\n\t"
      "movl %%r10d, (%%rax, %%rsi, 4)\n\t"      // below bottom: garbage until the commit
      "addq $4, %%r9\n\t"
      "subl $1, %%r8d\n\t"
      "jnz 6b\n\t"
      "movq %%rdx, %c[bottom_off](%%rcx)\n\t"  // commit: bottom - k
      "2:\n\t"
      PHYSMEM_RSEQ_ABORT("restart")
      :
      : PHYSMEM_RING_INPUTS(list), [res] "r"(&res), [items] "r"(items), [want] "rm"(want),
        [bound] "rm"(bound), [res_value] "i"(offsetof(SectionResult, value)),
        [res_cpu] "i"(offsetof(SectionResult, cpu))
      : "memory", "cc", "rax", "rcx", "rdx", "rsi", "r8", "r9", "r10"
      : restart, fail);
  // clang-format on
  Note(&SlowCounters::refills, res.cpu);
  return res.value;
fail:
  return 0;
#else
  (void)list;
  (void)items;
  (void)n;
  (void)limit;
  return 0;
#endif
}

uint32_t PerCpuRings::PopCold(int list, uint32_t n, uint32_t* out) {
  PHYSMEM_DCHECK(list >= 0 && list < nr_lists_, "per-CPU list index out of range");
#if PHYSMEM_RSEQ_X86_64
  if (!enabled_ || n == 0) return 0;
  const uint64_t want = n;
  SectionResult res;
restart:
  // clang-format off
  asm volatile goto(
      PHYSMEM_RING_ENTER(PHYSMEM_RING_SAVE_CPU)
      "movq %c[bottom_off](%%rcx), %%rdx\n\t"  // rdx = bottom
      "movq %c[pushes_off](%%rcx), %%rsi\n\t"
      "subq %c[hits_off](%%rcx), %%rsi\n\t"    // rsi = top
      "subq %%rdx, %%rsi\n\t"                   // rsi = count
      "leaq -1(%%rsi), %%r8\n\t"
      "cmpq %[mask], %%r8\n\t"
      "ja %l[fail]\n\t"                         // count - 1 > capacity - 1: empty (or locked)
      "cmpq %[want], %%rsi\n\t"
      "jbe 5f\n\t"
      "movq %[want], %%rsi\n\t"                 // rsi = k = min(count, n)
      "5:\n\t"
      "movl %%esi, %c[res_value](%[res])\n\t"
      "movq %[out], %%r9\n\t"
      "6:\n\t"                                  // for each: *out++ = slots[bottom++ & mask]
      "movl %%edx, %%r8d\n\t"
      "andl %k[mask], %%r8d\n\t"
      "movl (%%rax, %%r8, 4), %%r8d\n\t"
      "movl %%r8d, (%%r9)\n\t"
      "addq $4, %%r9\n\t"
      "addq $1, %%rdx\n\t"
      "subl $1, %%esi\n\t"
      "jnz 6b\n\t"
      "movq %%rdx, %c[bottom_off](%%rcx)\n\t"  // commit: bottom + k
      "2:\n\t"
      PHYSMEM_RSEQ_ABORT("restart")
      :
      : PHYSMEM_RING_INPUTS(list), [res] "r"(&res), [out] "r"(out), [want] "rm"(want),
        [res_value] "i"(offsetof(SectionResult, value)),
        [res_cpu] "i"(offsetof(SectionResult, cpu))
      : "memory", "cc", "rax", "rcx", "rdx", "rsi", "r8", "r9"
      : restart, fail);
  // clang-format on
  TsanAcquire(RingOf(0, list));
  Note(&SlowCounters::drains, res.cpu);
  return res.value;
fail:
  return 0;
#else
  (void)list;
  (void)n;
  (void)out;
  return 0;
#endif
}

uint64_t PerCpuRings::LockForDrain(int cpu, int list) {
  Ring* const ring = RingOf(cpu, list);
  for (;;) {
    const uint64_t biased = __atomic_add_fetch(&ring->bottom, kDrainLockBias, __ATOMIC_SEQ_CST);
    if (const int rc = FenceCpu(cpu); rc != 0) {
      // Registration succeeded at construction, so this cannot happen short of a kernel bug;
      // touching the ring without the fence could hand a page out twice.
      Die(absl::StrFormat("membarrier(PRIVATE_EXPEDITED_RSEQ, cpu %d) failed: %s", cpu, std::strerror(-rc)));
    }
    // Still locked iff bottom still holds the value our add produced: a section that loaded the
    // biased value fails before its commit, and one that loaded the old value stores old -/+ k
    // (k <= capacity < 2^63), never old + 2^63. Otherwise such a cold op committed before the
    // fence, overwriting the bias; it was a legitimate op, and after the fence no section can
    // commit on the old value any more: bias again.
    // The test is one load of `bottom` alone, never pushes - hits - bottom from three loads: the
    // ring is unlocked when the bias was overwritten, so its sections keep committing between
    // such loads, and a drainer preempted between them could read a "count" above capacity from
    // an unlocked ring, take it for locked and race with that CPU's sections (the 2026-12-06
    // stress failure, docs/design.md).
    if (__atomic_load_n(&ring->bottom, __ATOMIC_SEQ_CST) == biased) return biased - kDrainLockBias;
  }
}

uint32_t PerCpuRings::DrainRemote(int cpu, int list, uint32_t n, uint32_t* out) {
  CheckCpuAndList(cpu, list);
  if (!enabled_ || n == 0) return 0;
  MutexLock lock(&drain_mu_);
  Ring* const ring = RingOf(cpu, list);
  // Sole writer of this ring from here until bottom is stored unbiased.
  const uint64_t bottom = LockForDrain(cpu, list);
  const uint64_t pushes = __atomic_load_n(&ring->pushes, __ATOMIC_RELAXED);
  const uint64_t hits = __atomic_load_n(&ring->hits, __ATOMIC_RELAXED);
  const uint64_t count = pushes - hits - bottom;
  if (count > capacity_) {
    Die(
        absl::StrFormat("cpu %d list %d: count = pushes %u - hits %u - bottom %u = %d, expected "
                        "in [0, %u]",
                        cpu, list, pushes, hits, bottom, static_cast<int64_t>(count), capacity_));
  }
  const auto k = static_cast<uint32_t>(std::min<uint64_t>(n, count));
  const uint32_t* const slots = SlotsOf(cpu, list);
  for (uint32_t j = 0; j < k; ++j) out[j] = slots[(bottom + j) & mask_];
  TsanAcquire(RingOf(0, list));
  if (k > 0) Note(&SlowCounters::remote_drains, static_cast<uint32_t>(cpu));
  __atomic_store_n(&ring->bottom, bottom + k, __ATOMIC_RELEASE);  // commit and unlock
  return k;
}

uint64_t PerCpuRings::CountOf(const Ring& ring) {
  const uint64_t bottom = __atomic_load_n(&ring.bottom, __ATOMIC_RELAXED);
  const uint64_t hits = __atomic_load_n(&ring.hits, __ATOMIC_RELAXED);
  const uint64_t pushes = __atomic_load_n(&ring.pushes, __ATOMIC_RELAXED);
  return pushes - hits - bottom;
}

uint32_t PerCpuRings::Count(int cpu, int list) const {
  CheckCpuAndList(cpu, list);
  uint64_t count = CountOf(*RingOf(cpu, list));
  // A drain in progress adds the lock bias; report the real count.
  if (count - kDrainLockBias <= capacity_) count -= kDrainLockBias;
  // Racy: the three counters may come from different moments; keep the answer in range.
  return static_cast<uint32_t>(std::clamp<int64_t>(static_cast<int64_t>(count), 0, capacity_));
}

void PerCpuRings::Snapshot(int cpu, int list, std::vector<uint32_t>* out) const {
  CheckCpuAndList(cpu, list);
  const Ring& ring = *RingOf(cpu, list);
  uint64_t bottom = __atomic_load_n(&ring.bottom, __ATOMIC_RELAXED);
  uint64_t count = CountOf(ring);
  if (count - kDrainLockBias <= capacity_) {  // a drain in progress: see its unbiased bottom
    bottom -= kDrainLockBias;
    count -= kDrainLockBias;
  }
  count = std::min<uint64_t>(count, capacity_);  // racy reads; Validate() reports real damage
  const uint32_t* const slots = SlotsOf(cpu, list);
  for (uint64_t i = 0; i < count; ++i) out->push_back(slots[(bottom + i) & mask_]);
}

uint64_t PerCpuRings::Pushes(int cpu, int list) const {
  CheckCpuAndList(cpu, list);
  return __atomic_load_n(&RingOf(cpu, list)->pushes, __ATOMIC_RELAXED);
}

PerCpuRingCounters PerCpuRings::Counters(int cpu) const {
  CheckCpuAndList(cpu, 0);
  PerCpuRingCounters c;
  for (int list = 0; list < nr_lists_; ++list) {
    const Ring* ring = RingOf(cpu, list);
    c.hits += __atomic_load_n(&ring->hits, __ATOMIC_RELAXED);
    c.pushes += __atomic_load_n(&ring->pushes, __ATOMIC_RELAXED);
  }
  c.refills = slow_[cpu].refills.load(std::memory_order_relaxed);
  c.drains = slow_[cpu].drains.load(std::memory_order_relaxed);
  c.remote_drains = slow_[cpu].remote_drains.load(std::memory_order_relaxed);
  return c;
}

absl::Status PerCpuRings::Validate() const {
  for (int cpu = 0; cpu < nr_cpus_; ++cpu) {
    for (int list = 0; list < nr_lists_; ++list) {
      const Ring* ring = RingOf(cpu, list);
      const uint64_t count = CountOf(*ring);
      if (count > capacity_) {
        return absl::InternalError(
            absl::StrFormat("cpu %d list %d: count = pushes %u - hits %u - bottom %u = %d, expected in [0, %u] "
                            "(%s)",
                            cpu, list, ring->pushes, ring->hits, ring->bottom, static_cast<int64_t>(count), capacity_,
                            count - kDrainLockBias <= capacity_ ? "left locked by a drain" : "corrupted"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace physmem
