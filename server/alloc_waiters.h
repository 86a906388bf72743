// Allocations waiting for memory: the service's counterpart of the kernel's direct reclaim.
//
// An allocation whose gfp mask allows blocking (__GFP_DIRECT_RECLAIM, as in GFP_KERNEL) and that
// finds no memory is parked here instead of failing, and its gRPC call stays open without holding
// a thread: the callback API lets the call finish from any thread later. One background thread
// (our kswapd) retries the parked calls in arrival order whenever memory is freed (a free, a
// revoke, an expired lease: Kick()) and at least every 20 ms, and finishes each call once it
// succeeds, its deadline passes (RESOURCE_EXHAUSTED), the client cancels (CANCELLED), or the
// daemon shuts down (UNAVAILABLE).
//
// Thread-safety: Add/Kick from any thread. Attempts run on the waiter thread only.
#ifndef PHYSMEM_SERVER_ALLOC_WAITERS_H_
#define PHYSMEM_SERVER_ALLOC_WAITERS_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include <grpcpp/support/status.h>

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

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Waiter> queue_;  // guarded by mu_
  bool kicked_ = false;       // guarded by mu_
  bool stop_ = false;         // guarded by mu_
  std::atomic<size_t> size_{0};
  std::atomic<uint64_t> total_{0};
  std::thread thread_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_ALLOC_WAITERS_H_
