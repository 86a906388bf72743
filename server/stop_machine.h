// StopMachine: lets Validate see the page allocator and every lease's books standing still, the
// way the kernel's stop_machine() runs a function while no CPU does anything else.
//
// Every piece of server code that changes who owns a page — allocating into a lease, freeing from
// it, ending it (revoke, expiry, shutdown) — runs inside an Operation(). Stopped() waits until no
// Operation is in flight, keeps new ones out while its function runs, then lets them go. Without
// it the allocator's checker, which walks the page map, could see a block between the buddy lists
// and its lease and report a "lost page" that is only in transit.
//
// Who uses it: the Lessor (owns it: every Attach, Detach and End; Census runs Stopped).
// Thread-safety: everything may be called from any thread. Lock order: an Operation is taken
// before the lessor's mutex and a lease's, never while holding either,
// and never twice by one thread; Stopped's function may take lease mutexes.
// Operations are many and short (no waiting for memory happens inside one); Stopped is rare. A
// shared lock costs an Operation two atomic read-modify-writes; under a stream of Operations that
// never pauses, Stopped may not get in before its deadline and says so.
#ifndef PHYSMEM_SERVER_STOP_MACHINE_H_
#define PHYSMEM_SERVER_STOP_MACHINE_H_

#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <thread>

namespace physmem {

class StopMachine {
 public:
  using Operation = std::shared_lock<std::shared_mutex>;

  // Held for the whole of one ownership change.
  [[nodiscard]] Operation Enter() { return Operation(mu_); }

  // Runs `fn` with no Operation in flight; false, without running it, if the Operations in flight
  // did not drain by `deadline`.
  template <typename Fn>
  bool Stopped(std::chrono::steady_clock::time_point deadline, Fn&& fn) {
    std::unique_lock<std::shared_mutex> stopped(mu_, std::defer_lock);
    // try_lock in a loop, not std::shared_timed_mutex::try_lock_until: that one is glibc's
    // pthread_rwlock_clockwrlock, which GCC 12's ThreadSanitizer does not intercept (it would see
    // the unlock of a lock it never saw taken). Operations are short, so a gap comes soon.
    while (!stopped.try_lock()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    fn();
    return true;
  }

 private:
  // std::shared_mutex rather than absl::Mutex: ThreadSanitizer sees it (see journal.h).
  std::shared_mutex mu_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_STOP_MACHINE_H_
