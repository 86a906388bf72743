// The unary calls the gRPC server is in the middle of, so that a shutdown can wait for exactly
// those and no longer. gRPC's Server::Shutdown(deadline) also waits for idle connections to close
// — a client that keeps its channel open holds it until the deadline, every time — so Server
// waits here for the calls in flight (up to its grace period) and then shuts gRPC down at once,
// which cancels the streams (KeepAlive, health Watch) and closes idle connections.
//
// Every unary handler of the PhysMem service answers through a UnaryCall, its reactor: the call
// counts from Begin() until gRPC is done with it (OnDone, after its status went out). Streaming
// calls and gRPC's own services are not counted: streams have no end to wait for, and health and
// reflection change nothing. (A server interceptor would count every call, but it runs on each of
// a call's operations, costs the per-call path, and makes ThreadSanitizer see gRPC's own objects
// from our frames: CI saw a report whose other side it could not restore.)
//
// Who uses it: Server (owns it, WaitIdle in Shutdown), PhysMemService (Begin in every unary
// handler). Thread-safety: Begin and WaitIdle from any thread; a UnaryCall is gRPC's reactor and
// runs where gRPC runs it.
#ifndef PHYSMEM_SERVER_INFLIGHT_CALLS_H_
#define PHYSMEM_SERVER_INFLIGHT_CALLS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include <grpcpp/support/server_callback.h>

namespace physmem {

class InflightCalls;

// What a self-decoding call (server/request_decoding.h) must do before its status goes out:
// serialize its typed response into the reply gRPC sends. It also owns the call's typed request
// and response, so they live exactly as long as the call.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  virtual bool Serialize() = 0;  // false: the response could not be serialized
};

// The reactor of one unary call. Reply() may be called once, from the handler or later from any
// thread (a parked allocation); gRPC deletes nothing — OnDone deletes the call.
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  void Reply(const grpc::Status& status);
  void OnDone() override;
  // The client cancelled (or the deadline passed): runs the calls' cancel hook, which wakes the
  // allocation waiters so a parked call answers CANCELLED now (server/alloc_waiters.h).
  void OnCancel() override;
  // gRPC runs an inlineable reactor's OnDone and OnCancel on the thread that completed the call's
  // last operation; any other reactor's go through its executor (ServerCallbackCall::
  // ScheduleOnDone / CallOnCancel in grpcpp/support/server_callback.h), a thread hop per call, and
  // the callback server asks for the method's next call only after OnDone (CallOnDone runs the
  // call_requester). Ours are trivial and never block (a count and a delete; the cancel hook
  // signals a condition variable), as ctx->DefaultReactor()'s are, which says true for the same
  // reason (grpcpp/server_context.h). gRPC marks the method "not API"; Debian 12 pins gRPC 1.51.
  // Measured: docs/benchmarks.md, "The per-call path against the floor".
  bool InternalInlineable() override { return true; }

 private:
  friend class InflightCalls;
  UnaryCall(InflightCalls* calls, std::unique_ptr<ResponseSink> sink) : calls_(calls), sink_(std::move(sink)) {}
  InflightCalls* const calls_;
  std::unique_ptr<ResponseSink> sink_;  // null for a call gRPC decoded
};

class InflightCalls {
 public:
  // A new call, counted until gRPC is done with it. Return it from the handler. It takes the sink
  // set on this thread by SetNextSink, if any.
  UnaryCall* Begin();
  // The sink of the call whose typed handler this thread is about to run (request_decoding.cc):
  // the handler's Begin() takes it. TakeUnclaimedSink returns it if Begin() was not called.
  static void SetNextSink(std::unique_ptr<ResponseSink> sink);
  static std::unique_ptr<ResponseSink> TakeUnclaimedSink();
  // True once no unary call is in flight; false if `deadline` came first.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline) const;
  // Run by every call that gRPC cancels. Set once, before the server starts (the thread start
  // orders it before any call reads it).
  void SetCancelHook(std::function<void()> hook) { cancel_hook_ = std::move(hook); }
  int64_t count() const { return count_.load(std::memory_order_acquire); }

 private:
  friend class UnaryCall;
  std::atomic<int64_t> count_{0};
  std::function<void()> cancel_hook_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_INFLIGHT_CALLS_H_
