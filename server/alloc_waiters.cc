#include "server/alloc_waiters.h"

namespace physmem {

AllocWaiters::AllocWaiters() : thread_([this] { Loop(); }) {}

AllocWaiters::~AllocWaiters() { Stop(); }

void AllocWaiters::Add(Waiter w) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) {
      w.finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "physmemd is shutting down"));
      return;
    }
    queue_.push_back(std::move(w));
    size_.store(queue_.size(), std::memory_order_relaxed);
    kicked_ = true;  // memory may have been freed between the failed attempt and now
  }
  total_.fetch_add(1, std::memory_order_relaxed);
  cv_.notify_one();
}

void AllocWaiters::Kick() {
  // Frees call this on every success: stay cheap when nobody waits.
  if (size_.load(std::memory_order_relaxed) == 0) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    kicked_ = true;
  }
  cv_.notify_one();
}

void AllocWaiters::Stop() {
  std::deque<Waiter> rest;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> l(mu_);
    rest.swap(queue_);
    size_.store(0);
  }
  for (Waiter& w : rest) w.finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "physmemd is shutting down"));
}

void AllocWaiters::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    cv_.wait_for(l, std::chrono::milliseconds(20), [this] { return kicked_ || stop_; });
    if (stop_) break;
    kicked_ = false;
    std::deque<Waiter> batch;
    batch.swap(queue_);
    l.unlock();
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
    l.lock();
    // Earlier arrivals stay ahead of calls parked while we worked.
    for (auto it = keep.rbegin(); it != keep.rend(); ++it) queue_.push_front(std::move(*it));
    size_.store(queue_.size(), std::memory_order_relaxed);
  }
}

}  // namespace physmem
