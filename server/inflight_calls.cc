#include "server/inflight_calls.h"

#include <thread>

namespace physmem {

// One per unary call: counts it in on construction (the call arrived) and out on destruction
// (gRPC is done with it). It intercepts nothing.
class InflightCallInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit InflightCallInterceptor(InflightCalls* calls) : calls_(calls) {
    calls_->count_.fetch_add(1, std::memory_order_acq_rel);
  }
  ~InflightCallInterceptor() override { calls_->count_.fetch_sub(1, std::memory_order_acq_rel); }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override { methods->Proceed(); }

 private:
  InflightCalls* const calls_;
};

namespace {

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(InflightCalls* calls) : calls_(calls) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    if (info->type() != grpc::experimental::ServerRpcInfo::Type::UNARY) return nullptr;
    return new InflightCallInterceptor(calls_);
  }

 private:
  InflightCalls* const calls_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InflightCalls::InterceptorFactory() {
  return std::make_unique<Factory>(this);
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
