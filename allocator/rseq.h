// Restartable sequences (rseq) and membarrier: the thin OS layer under the per-CPU page lists.
//
// What it is for: glibc (>= 2.35) registers one rseq area per thread and publishes where it is
// (`__rseq_offset` from the thread pointer). The kernel keeps `cpu_id` in that area current and,
// when a thread inside a registered critical section is preempted, migrated or signalled, restarts
// the section at its abort handler. This file finds glibc's area (we never register our own: only
// one area per thread is allowed), tells whether it is usable, and wraps the membarrier command
// that lets one thread abort the critical sections running on another CPU
// (MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ with MEMBARRIER_CMD_FLAG_CPU).
//
// Who calls it: allocator/per_cpu_ring.{h,cc} (the critical sections themselves live there, next
// to the data they commit to), statistics and tests (RseqCpuId, NumPossibleCpus).
//
// Thread-safety: every function is safe to call from any thread; RseqRegistered() and RseqCpuId()
// answer for the calling thread, MembarrierRseqReady() registers the process once.
//
// Only documented fields of struct rseq are read: `cpu_id` and `rseq_cs` (both in the original
// 20-byte ABI). tcmalloc's overlay of `cpu_id_start` broke on a recent kernel (its issue #292), so
// nothing here relies on undocumented behaviour of a field.
#ifndef PHYSMEM_ALLOCATOR_RSEQ_H_
#define PHYSMEM_ALLOCATOR_RSEQ_H_

#include <cstddef>
#include <cstdint>

#if defined(__GLIBC__) && __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#endif

// PHYSMEM_RSEQ_X86_64 is 1 when the rseq critical sections of per_cpu_ring.h are compiled in:
// x86-64 (the asm is written for it), a glibc that exports its rseq area (2.35+), and a compiler
// with asm goto outputs (GCC 11+, clang 11+). Elsewhere every fast-path op reports failure and
// callers use their locked path.
#if defined(__clang__)
#define PHYSMEM_ASM_GOTO_OUTPUTS (__clang_major__ >= 11)
#elif defined(__GNUC__)
#define PHYSMEM_ASM_GOTO_OUTPUTS (__GNUC__ >= 11)
#else
#define PHYSMEM_ASM_GOTO_OUTPUTS 0
#endif
#if defined(__x86_64__) && defined(RSEQ_SIG) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)) && PHYSMEM_ASM_GOTO_OUTPUTS
#define PHYSMEM_RSEQ_X86_64 1
#else
#define PHYSMEM_RSEQ_X86_64 0
#endif

namespace physmem {

// Byte offsets inside struct rseq used by the asm (linux/rseq.h; stable kernel ABI).
inline constexpr int kRseqCpuIdOffset = 4;  // u32 cpu_id: current CPU, or -1/-2 if unusable
inline constexpr int kRseqCsOffset = 8;     // u64 rseq_cs: address of the armed descriptor
// The fields above end here; an area smaller than this cannot host our critical sections.
inline constexpr size_t kRseqRequiredSize = 16;

#if PHYSMEM_RSEQ_X86_64
static_assert(offsetof(struct rseq, cpu_id) == kRseqCpuIdOffset);
static_assert(offsetof(struct rseq, rseq_cs) == kRseqCsOffset);

// The calling thread's rseq area as glibc placed it. Valid memory in every thread of a glibc
// 2.35+ process; its contents mean something only if RseqRegistered().
inline struct rseq* RseqArea() {
  return reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
}

// Pieces of an x86-64 critical section, in the shape of the kernel selftests' rseq-x86.h, for
// use inside one `asm goto` with local labels 1 (start, right after arming), 2 (just after the
// single committing store), 3 (the descriptor) and 4 (the abort handler):
//   PHYSMEM_RSEQ_DESCRIPTOR         struct rseq_cs {version 0, flags 0, start_ip = 1f,
//                                   post_commit_offset = 2f - 1f, abort_ip = 4f} in section
//                                   __rseq_cs, 32-byte aligned as the kernel requires;
//   "leaq 3b(%%rip), %%rax; movq %%rax, 8(<area>)"  arms it (rseq->rseq_cs = &descriptor);
//   PHYSMEM_RSEQ_ABORT("label")     the abort handler in __rseq_failure, preceded by the 4-byte
//                                   RSEQ_SIG the kernel checks before jumping there (emitted as
//                                   `ud1 sig(%rip),%edi` so that disassemblers stay in sync);
//                                   it jumps to the C label given (usually: retry).
// The kernel clears rseq_cs when it aborts; after a commit it stays armed and is ignored once the
// instruction pointer is outside [start_ip, start_ip + post_commit_offset).
// Both side sections carry the "?" flag: they join the section group (COMDAT) of the function
// that contains the asm. Without it, an inline function emitted out of line in two objects (as
// clang does under ASan/libFuzzer instrumentation) keeps descriptors whose code the linker
// discarded with the duplicate COMDAT copy, and the link fails ("referenced in section
// `__rseq_cs' ... defined in discarded section").
// clang-format off
#define PHYSMEM_RSEQ_STR_(x) #x
#define PHYSMEM_RSEQ_STR(x) PHYSMEM_RSEQ_STR_(x)
static_assert(RSEQ_SIG == 0x53053053, "x86 rseq signature");

#define PHYSMEM_RSEQ_DESCRIPTOR        \
  ".pushsection __rseq_cs, \"aw?\"\n\t" \
  ".balign 32\n\t"                     \
  "3:\n\t"                             \
  ".long 0, 0\n\t"                     \
  ".quad 1f, 2f - 1f, 4f\n\t"          \
  ".popsection\n\t"

#define PHYSMEM_RSEQ_ABORT(restart_label)     \
  ".pushsection __rseq_failure, \"ax?\"\n\t"  \
  ".byte 0x0f, 0xb9, 0x3d\n\t"                \
  ".long " PHYSMEM_RSEQ_STR(RSEQ_SIG) "\n\t"  \
  "4:\n\t"                                    \
  "jmp %l[" restart_label "]\n\t"             \
  ".popsection\n\t"
// clang-format on
#endif

// Bytes of struct rseq that both the kernel fills (getauxval(AT_RSEQ_FEATURE_SIZE); 0 before
// Linux 6.3 means the original 20-byte ABI) and glibc registered (__rseq_size). 0 when glibc did
// not register an area (e.g. GLIBC_TUNABLES=glibc.pthread.rseq=0) or on other architectures.
size_t RseqUsableSize();

// True if the calling thread has a kernel-registered rseq area (glibc's) with cpu_id and rseq_cs:
// usable size >= kRseqRequiredSize and cpu_id >= 0 (-1 = uninitialised, -2 = registration
// failed).
bool RseqRegistered();

namespace rseq_internal {
int SchedGetCpuOrZero();
}  // namespace rseq_internal

// The CPU the calling thread is running on: rseq `cpu_id` when registered (one load, ~0.2 ns),
// else sched_getcpu(), else 0. Only a hint outside a critical section: the thread may migrate
// right after the call. (Reading cpu_id is safe even without a registration: the area exists in
// every glibc 2.35+ thread and then holds -1 or -2.)
inline int RseqCpuId() {
#if PHYSMEM_RSEQ_X86_64
  // The kernel writes cpu_id behind the compiler's back: read it as an atomic.
  const auto cpu = static_cast<int32_t>(__atomic_load_n(&RseqArea()->cpu_id, __ATOMIC_RELAXED));
  if (cpu >= 0) [[likely]]
    return cpu;
#endif
  return rseq_internal::SchedGetCpuOrZero();
}

// True once the process is registered for MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ (the first call
// queries and registers; later calls return the cached answer). Without it no thread can safely
// touch another CPU's rseq-protected data, so the rseq fast path must stay off.
bool MembarrierRseqReady();

// Aborts (restarts at their abort handlers) the rseq critical sections of this process that are
// running on `cpu`, and orders memory as a full barrier on that CPU and on the caller. When it
// returns 0, every section that was running on `cpu` has either committed (and its stores are
// visible to the caller) or will restart. Offline or out-of-range CPUs return 0 (nothing runs
// there). Returns -errno on failure (-EPERM if MembarrierRseqReady() was never true).
int FenceCpu(int cpu);

// True once the process is registered for MEMBARRIER_CMD_PRIVATE_EXPEDITED (queried and
// registered by the first call). The per-thread page caches (thread_pages.h) need it to fence
// their owners' fast paths.
bool MembarrierExpeditedReady();

// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): when it returns 0, every thread of this process
// that was running has executed a full memory barrier (threads not running pass one at their next
// context switch). The heavy side of an asymmetric Dekker whose light side uses only compiler
// barriers (tcmalloc's and userspace RCU's pattern). -errno on failure.
int FenceAllThreads();

// Number of CPU ids the kernel may ever use (max id in /sys/devices/system/cpu/possible + 1;
// fallback get_nprocs_conf()). Size per-CPU arrays with this, not with the online count.
int NumPossibleCpus();

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_RSEQ_H_
