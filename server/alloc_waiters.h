// Allocations waiting for memory: the service's counterpart of the kernel's direct reclaim.
//
// An allocation whose gfp mask allows blocking (__GFP_DIRECT_RECLAIM, as in GFP_KERNEL) and that
// finds no memory is parked here instead of failing, and its gRPC call stays open without holding
// a thread: the callback API lets the call finish from any thread later. One background thread
// (our kswapd) retries the parked calls in arrival order whenever memory is freed (a free, a
// revoke, an expired lease: Kick()), and finishes each call once it succeeds, its deadline passes
// (RESOURCE_EXHAUSTED), the client cancels (CANCELLED: the call's reactor Kicks on cancel, see
// InflightCalls::SetCancelHook), or the daemon shuts down (UNAVAILABLE). Between events the
// thread sleeps until the earliest parked deadline: no periodic wake-up.
//
// Thread-safety: Add/Kick from any thread. Attempts run on the waiter thread only. mu_ guards the
// queue and the flags (checked by clang's -Wthread-safety).
#ifndef PHYSMEM_SERVER_ALLOC_WAITERS_H_
#define PHYSMEM_SERVER_ALLOC_WAITERS_H_

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <thread>

#include <grpcpp/support/status.h>

#include "allocator/mutex.h"

namespace physmem {

class AllocWaiters {
 public:
  struct Waiter {
    // Tries once; returns true if the call is finished (allocated, or failed for good).
    std::function<bool()> attempt;
    // Finishes the call with a status of the queue's choosing (timeout, cancel, shutdown).
    std::function<void(const grpc::Status&)> finish;
    std::function<bool()> cancelled;
    std::chrono::steady_clock::time_point deadline;
    std::string timeout_message;  // RESOURCE_EXHAUSTED text when the deadline passes
  };

  AllocWaiters();
  ~AllocWaiters();

  void Add(Waiter w);
  void Kick();
  // Finishes every parked call with UNAVAILABLE and stops the thread.
  void Stop();
  size_t size() const { return size_.load(std::memory_order_relaxed); }
  uint64_t total_waits() const { return total_.load(std::memory_order_relaxed); }

 private:
  void Loop();
  // Sleeps until a Kick, Stop, or the earliest deadline in the queue.
  void SleepUntilEvent() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Mutex mu_;
  CondVar cv_;
  std::deque<Waiter> queue_ ABSL_GUARDED_BY(mu_);
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<size_t> size_{0};
  std::atomic<uint64_t> total_{0};
  std::thread thread_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_ALLOC_WAITERS_H_
