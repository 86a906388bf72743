// ThreadSanitizer annotations for Debian's Abseil Mutex and CondVar, linked into every executable of
// a TSan build (-DPHYSMEM_SANITIZE=thread) and into nothing else.
//
// Why: Debian 12's gRPC and Abseil are not built with TSan. gRPC's callback API runs our handlers,
// reactors and the gRPC C++ code inlined into our binaries (grpcpp/ headers, compiled WITH TSan) on
// threads that hand work to each other through gRPC's executor and completion queues, which are
// ordered by absl::Mutex/absl::CondVar (grpc_core::Mutex and gpr_mu are absl::Mutex). Those block
// on futexes TSan cannot see, so every such hand-off looked like a race. An Abseil built with TSan
// annotates its Mutex with TSan's hooks; this file does what that build would, from outside: it
// interposes the handful of Mutex/CondVar entry points that libgrpc, libgpr and libgrpc++ import
// (nm -D --undefined-only), tells TSan "acquire"/"release" on the mutex's address, and calls the real
// function (found with dlsym(RTLD_NEXT)).
//
// How it interposes: a symbol defined in the executable comes first in the dynamic linker's lookup
// order, before libabsl_synchronization.so, for every library that calls it through its PLT (gRPC's
// calls into Abseil all do). The definitions are extern "C" functions whose names are the C++
// mangled names of Abseil's members (`this` is the first argument in the Itanium ABI), so this file
// needs no change to Abseil's headers; CMake exports them with --export-dynamic-symbol.
//
// What it does not do: model lock state or lock order (no deadlock detection for Abseil mutexes; a
// plain acquire/release never reports a double unlock that it cannot see the lock for), or see
// gRPC's lock-free hand-offs (combiner queues, atomics inside libgrpc). Only memory ordering through
// Abseil's Mutex becomes visible, which is all that it adds: the mutex is a real one.
//
// Thread-safety: every function may be called from any thread; the cached real-function pointers
// are resolved once and stored with release/acquire atomics.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "absl/base/config.h"
#include "absl/time/time.h"

namespace {

// The real function `mangled`, resolved on first use and cached in `slot`.
template <typename Fn>
Fn Real(std::atomic<Fn>& slot, const char* mangled) {
  Fn fn = slot.load(std::memory_order_acquire);
  if (fn != nullptr) return fn;
  fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, mangled));
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan abseil_sync_annotations: %s not found: %s\n", mangled, dlerror());
    std::abort();
  }
  slot.store(fn, std::memory_order_release);
  return fn;
}

}  // namespace

#define PHYSMEM_REAL(ret, mangled, ...)                 \
  static std::atomic<ret (*)(__VA_ARGS__)> real{nullptr}; \
  auto* fn = Real(real, #mangled)

extern "C" {

// absl::Mutex::Lock()
void _ZN4absl7debian35Mutex4LockEv(void* mu) {
  PHYSMEM_REAL(void, _ZN4absl7debian35Mutex4LockEv, void*);
  fn(mu);
  __tsan_acquire(mu);
}

// absl::Mutex::TryLock()
bool _ZN4absl7debian35Mutex7TryLockEv(void* mu) {
  PHYSMEM_REAL(bool, _ZN4absl7debian35Mutex7TryLockEv, void*);
  const bool locked = fn(mu);
  if (locked) __tsan_acquire(mu);
  return locked;
}

// absl::Mutex::Unlock()
void _ZN4absl7debian35Mutex6UnlockEv(void* mu) {
  PHYSMEM_REAL(void, _ZN4absl7debian35Mutex6UnlockEv, void*);
  __tsan_release(mu);
  fn(mu);
}

// absl::Mutex::ReaderLock()
void _ZN4absl7debian35Mutex10ReaderLockEv(void* mu) {
  PHYSMEM_REAL(void, _ZN4absl7debian35Mutex10ReaderLockEv, void*);
  fn(mu);
  __tsan_acquire(mu);
}

// absl::Mutex::ReaderUnlock()
void _ZN4absl7debian35Mutex12ReaderUnlockEv(void* mu) {
  PHYSMEM_REAL(void, _ZN4absl7debian35Mutex12ReaderUnlockEv, void*);
  __tsan_release(mu);
  fn(mu);
}

// absl::ReleasableMutexLock::Release(): its only member is the Mutex* it holds.
void _ZN4absl7debian319ReleasableMutexLock7ReleaseEv(void** lock) {
  PHYSMEM_REAL(void, _ZN4absl7debian319ReleasableMutexLock7ReleaseEv, void**);
  __tsan_release(*lock);
  fn(lock);
}

// absl::CondVar::Wait(Mutex*): unlocks `mu` while waiting and locks it again before returning.
void _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(void* cv, void* mu) {
  PHYSMEM_REAL(void, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, void*, void*);
  __tsan_release(mu);
  fn(cv, mu);
  __tsan_acquire(mu);
}

// absl::CondVar::WaitWithTimeout(Mutex*, Duration)
bool _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(void* cv, void* mu,
                                                                          absl::Duration timeout) {
  PHYSMEM_REAL(bool, _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE, void*,
               void*, absl::Duration);
  __tsan_release(mu);
  const bool timed_out = fn(cv, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

// absl::CondVar::WaitWithDeadline(Mutex*, Time)
bool _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(void* cv, void* mu,
                                                                       absl::Time deadline) {
  PHYSMEM_REAL(bool, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE, void*,
               void*, absl::Time);
  __tsan_release(mu);
  const bool timed_out = fn(cv, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

}  // extern "C"
