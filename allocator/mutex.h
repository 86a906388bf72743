// Mutexes whose lock contracts the compiler checks.
//
// What it is for: every lock in allocator/ and server/ is one of these, and every field a lock
// guards says so with ABSL_GUARDED_BY; functions that expect a lock held say
// ABSL_EXCLUSIVE_LOCKS_REQUIRED. Clang's -Wthread-safety then proves the contracts at compile
// time: the fuzz build (clang-14, scripts/fuzz.sh, part of CI) compiles allocator/ and server/
// with -Wthread-safety -Werror.
//
// Why a wrapper around std::mutex rather than absl::Mutex (which carries the same annotations):
// ThreadSanitizer sees std::mutex (it intercepts pthread_mutex_*), but not Debian's Abseil, which
// is not built with TSan — an absl::Mutex would look like no lock at all to the TSan stage
// (docs/sanitizers.md). The wrapper costs nothing: every member is an inline call of std::mutex.
//
// Who calls it: anything that needs a lock. Thread-safety: these are the locks.
//
// Example:
//   class Counter {
//    public:
//     void Add(int n) { physmem::MutexLock l(&mu_); total_ += n; }
//    private:
//     physmem::Mutex mu_;
//     int total_ ABSL_GUARDED_BY(mu_) = 0;
//   };
#ifndef PHYSMEM_ALLOCATOR_MUTEX_H_
#define PHYSMEM_ALLOCATOR_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#include "absl/base/thread_annotations.h"

namespace physmem {

class CondVar;

// An exclusive lock. lock()/unlock() make it a BasicLockable for the standard library's RAII
// types; our code uses MutexLock, which the analysis understands.
class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  // Tells the analysis the lock is held where it cannot see it (a callback run under the lock).
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// A reader-writer lock (std::shared_mutex underneath, which TSan sees).
class ABSL_LOCKABLE SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }
  bool ReaderTryLock() ABSL_SHARED_TRYLOCK_FUNCTION(true) { return mu_.try_lock_shared(); }
  void AssertReaderHeld() const ABSL_ASSERT_SHARED_LOCK() {}

 private:
  std::shared_mutex mu_;
};

class ABSL_SCOPED_LOCKABLE WriterLock {
 public:
  explicit WriterLock(SharedMutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~WriterLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  SharedMutex* const mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderLock {
 public:
  explicit ReaderLock(SharedMutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) { mu_->ReaderLock(); }
  ~ReaderLock() ABSL_UNLOCK_FUNCTION() { mu_->ReaderUnlock(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  SharedMutex* const mu_;
};

// A condition variable over a Mutex: std::condition_variable on the wrapped std::mutex, so TSan
// sees the wait's unlock and relock. Waits require the lock, as the analysis checks.
class CondVar {
 public:
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> l(mu->mu_, std::adopt_lock);
    cv_.wait(l);
    l.release();
  }
  // Returns true if `deadline` passed (as std::cv_status::timeout), false if woken.
  template <typename Clock, typename Duration>
  bool WaitUntil(Mutex* mu, std::chrono::time_point<Clock, Duration> deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> l(mu->mu_, std::adopt_lock);
    const bool timed_out = cv_.wait_until(l, deadline) == std::cv_status::timeout;
    l.release();
    return timed_out;
  }
  template <typename Rep, typename Period>
  bool WaitFor(Mutex* mu, std::chrono::duration<Rep, Period> timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return WaitUntil(mu, std::chrono::steady_clock::now() + timeout);
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_MUTEX_H_
