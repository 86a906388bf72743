#include "server/inflight_calls.h"

#include <thread>

#include "server/tsan_annotations.h"

namespace physmem {

// gRPC runs OnDone on one of its threads after the status went out; the ordering between Reply
// (which may write the reactor's backlog when the handler has not returned yet) and OnDone passes
// through Debian's gRPC, which ThreadSanitizer cannot see: hand the object over around Finish
// (tsan_annotations.h; empty outside a TSan build).
void UnaryCall::Reply(const grpc::Status& status) {
  grpc::Status s = status;
  if (s.ok() && sink_ != nullptr && !sink_->Serialize()) {
    s = grpc::Status(grpc::StatusCode::INTERNAL, "the response could not be serialized");
  }
  TsanHandOff(this);
  Finish(s);
  TsanHandOff(this);
}

// gRPC runs OnDone after OnCancel returns (ServerCallbackUnaryImpl counts OnCancel among the
// callbacks outstanding), again through its uninstrumented atomics: CI14's TSan run saw OnDone's
// delete race OnCancel's read of calls_. Hand the object over at the end of OnCancel too.
void UnaryCall::OnCancel() {
  TsanTakeOver(this);
  if (calls_->cancel_hook_) calls_->cancel_hook_();
  TsanHandOff(this);
}

void UnaryCall::OnDone() {
  TsanTakeOver(this);
  calls_->count_.fetch_sub(1, std::memory_order_acq_rel);
  delete this;
}

namespace {
thread_local std::unique_ptr<ResponseSink> next_sink;
}  // namespace

void InflightCalls::SetNextSink(std::unique_ptr<ResponseSink> sink) { next_sink = std::move(sink); }
std::unique_ptr<ResponseSink> InflightCalls::TakeUnclaimedSink() { return std::move(next_sink); }

UnaryCall* InflightCalls::Begin() {
  count_.fetch_add(1, std::memory_order_acq_rel);
  auto* call = new UnaryCall(this, std::move(next_sink));
  TsanHandOff(call);
  return call;
}

bool InflightCalls::WaitIdle(std::chrono::steady_clock::time_point deadline) const {
  // Polled: shutdown happens once, and a condition variable signalled from gRPC's threads on
  // every call's end would cost the per-call path for it.
  while (count() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace physmem
