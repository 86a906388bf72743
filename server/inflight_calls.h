// The unary calls the gRPC server is in the middle of, so that a shutdown can wait for exactly
// those and no longer. gRPC's Server::Shutdown(deadline) also waits for idle connections to close
// — a client that keeps its channel open holds it until the deadline, every time — so Server
// waits here for the calls in flight (up to its grace period) and then shuts gRPC down at once,
// which cancels the streams (KeepAlive, health Watch) and closes idle connections.
//
// A unary call counts from its arrival until gRPC destroys it, after its status went out (the
// interceptor's lifetime). Streaming calls are not counted: they have no end to wait for.
//
// Who uses it: Server (installs InterceptorFactory() on every build, WaitIdle() in Shutdown).
// Thread-safety: the interceptors run on gRPC's threads; WaitIdle from any thread.
#ifndef PHYSMEM_SERVER_INFLIGHT_CALLS_H_
#define PHYSMEM_SERVER_INFLIGHT_CALLS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include <grpcpp/support/server_interceptor.h>

namespace physmem {

class InflightCalls {
 public:
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();
  // True once no unary call is in flight; false if `deadline` came first.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline) const;
  int64_t count() const { return count_.load(std::memory_order_acquire); }

 private:
  friend class InflightCallInterceptor;
  std::atomic<int64_t> count_{0};
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_INFLIGHT_CALLS_H_
