// ThreadSanitizer annotations for hand-offs TSan cannot see: gRPC's callback API passes our
// reactors and interceptors between its threads through Debian's gRPC and Abseil, which are not
// built with TSan, so the ordering gRPC guarantees (a reaction starts after the Start*/Finish that
// asked for it, OnDone runs after every other reaction) is invisible and every field of the
// object looks raced. TsanHandOff(obj) before giving `obj` to gRPC (before StartRead/StartWrite/
// Finish/Proceed) and TsanTakeOver(obj) at the start of each callback and before deleting it
// declare exactly that ordering, per object, so a real race on anything else is still reported.
//
// Who uses it: server/physmem_service.cc (KeepAliveReactor), server/rpc_metrics.cc (the per-call
// interceptor). Outside a TSan build (-DPHYSMEM_SANITIZE=thread) both are empty inline functions.
// Thread-safety: both may be called from any thread. (allocator/per_cpu_ring.h has its own pair
// for the rseq hand-off: the allocator must not depend on the server.)
#ifndef PHYSMEM_SERVER_TSAN_ANNOTATIONS_H_
#define PHYSMEM_SERVER_TSAN_ANNOTATIONS_H_

#if defined(__SANITIZE_THREAD__)
#define PHYSMEM_SERVER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PHYSMEM_SERVER_TSAN 1
#endif
#endif
#ifdef PHYSMEM_SERVER_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace physmem {

// Everything this thread did so far happens-before a later TsanTakeOver(obj) on any thread.
inline void TsanHandOff([[maybe_unused]] const void* obj) {
#ifdef PHYSMEM_SERVER_TSAN
  __tsan_release(const_cast<void*>(obj));
#endif
}

// Everything done before the latest TsanHandOff(obj) happens-before what this thread does next.
inline void TsanTakeOver([[maybe_unused]] const void* obj) {
#ifdef PHYSMEM_SERVER_TSAN
  __tsan_acquire(const_cast<void*>(obj));
#endif
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_TSAN_ANNOTATIONS_H_
