#include "server/alloc_waiters.h"

#include <algorithm>

namespace physmem {

AllocWaiters::AllocWaiters() : thread_([this] { Loop(); }) {}

AllocWaiters::~AllocWaiters() { Stop(); }

void AllocWaiters::Add(Waiter w) {
  {
    MutexLock l(&mu_);
    if (stop_) {
      w.finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "physmemd is shutting down"));
      return;
    }
    queue_.push_back(std::move(w));
    size_.store(queue_.size(), std::memory_order_relaxed);
    kicked_ = true;  // memory may have been freed between the failed attempt and now
  }
  total_.fetch_add(1, std::memory_order_relaxed);
  cv_.Signal();
}

void AllocWaiters::Kick() {
  // Frees call this on every success: stay cheap when nobody waits.
  if (size_.load(std::memory_order_relaxed) == 0) return;
  {
    MutexLock l(&mu_);
    kicked_ = true;
  }
  cv_.Signal();
}

void AllocWaiters::Stop() {
  std::deque<Waiter> rest;
  {
    MutexLock l(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.Signal();
  if (thread_.joinable()) thread_.join();
  {
    MutexLock l(&mu_);
    rest.swap(queue_);
    size_.store(0);
  }
  for (Waiter& w : rest) w.finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "physmemd is shutting down"));
}

void AllocWaiters::SleepUntilEvent() {
  while (!kicked_ && !stop_) {
    if (queue_.empty()) {
      cv_.Wait(&mu_);
      continue;
    }
    auto earliest = queue_.front().deadline;
    for (const Waiter& w : queue_) earliest = std::min(earliest, w.deadline);
    if (cv_.WaitUntil(&mu_, earliest)) return;  // a deadline passed: time to answer it
  }
}

void AllocWaiters::Loop() {
  mu_.Lock();
  while (!stop_) {
    SleepUntilEvent();
    if (stop_) break;
    kicked_ = false;
    std::deque<Waiter> batch;
    batch.swap(queue_);
    mu_.Unlock();
    std::deque<Waiter> keep;
    const auto now = std::chrono::steady_clock::now();
    for (Waiter& w : batch) {
      if (w.cancelled()) {
        w.finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the call while it waited for memory"));
      } else if (w.attempt()) {
        // finished by attempt()
      } else if (now >= w.deadline) {
        w.finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, w.timeout_message));
      } else {
        keep.push_back(std::move(w));
      }
    }
    mu_.Lock();
    // Earlier arrivals stay ahead of calls parked while we worked.
    for (auto it = keep.rbegin(); it != keep.rend(); ++it) queue_.push_front(std::move(*it));
    size_.store(queue_.size(), std::memory_order_relaxed);
  }
  mu_.Unlock();
}

}  // namespace physmem
