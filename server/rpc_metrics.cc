#include "server/rpc_metrics.h"

#include <chrono>
#include <mutex>
#include <shared_mutex>

#include <google/protobuf/descriptor.h>

#include "server/tsan_annotations.h"

namespace physmem {
namespace {

using RpcType = grpc::experimental::ServerRpcInfo::Type;
using grpc::experimental::InterceptionHookPoints;

std::string_view TypeName(RpcType t) {
  switch (t) {
    case RpcType::UNARY:
      return "unary";
    case RpcType::CLIENT_STREAMING:
      return "client_stream";
    case RpcType::SERVER_STREAMING:
      return "server_stream";
    case RpcType::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unary";
}

// 10 µs .. 10 s: a Nop over a Unix socket takes tens of µs, a waiting GFP_KERNEL allocation up to
// --max_alloc_wait_ms (10 s by default).
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *b;
}

// One per call: created when the call arrives (started), finished when the status goes out
// (handled + latency). A call that ends without a status (the client went away) counts as
// CANCELLED when gRPC destroys the interceptor. gRPC runs the constructor, each Intercept and the
// destructor on whichever of its threads the call's event lands, one at a time: each takes the
// object over and hands it back (tsan_annotations.h) so ThreadSanitizer sees that ordering.
class CallInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(RpcMetrics* metrics, const RpcMetrics::Method* method)
      : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {
    method_->started->Increment();
    TsanHandOff(this);
  }
  ~CallInterceptor() override {
    TsanTakeOver(this);
    if (!done_) Done(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    TsanTakeOver(this);
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Done(methods->GetSendStatus().error_code());
    }
    TsanHandOff(this);
    methods->Proceed();
  }

 private:
  void Done(grpc::StatusCode code) {
    done_ = true;
    metrics_->Handled(*method_, code,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }

  RpcMetrics* const metrics_;
  const RpcMetrics::Method* const method_;
  const std::chrono::steady_clock::time_point start_;
  bool done_ = false;
};

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new CallInterceptor(metrics_, &metrics_->Find(info->method() ? info->method() : "", info->type()));
  }

 private:
  RpcMetrics* const metrics_;
};

}  // namespace

std::string_view GrpcCodeName(grpc::StatusCode code) {
  static constexpr std::string_view kNames[] = {
      "OK",           "CANCELLED",          "UNKNOWN",          "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",          "UNAVAILABLE",      "DATA_LOSS",        "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(std::size(kNames)) ? kNames[i] : "UNKNOWN";
}

RpcMetrics::RpcMetrics(prometheus::Registry& registry, const std::vector<std::string>& services)
    : started_(prometheus::BuildCounter()
                   .Name("grpc_server_started_total")
                   .Help("Total number of RPCs started on the server.")
                   .Register(registry)),
      handled_(prometheus::BuildCounter()
                   .Name("grpc_server_handled_total")
                   .Help("Total number of RPCs completed on the server, regardless of success or failure.")
                   .Register(registry)),
      handling_(prometheus::BuildHistogram()
                    .Name("grpc_server_handling_seconds")
                    .Help("Histogram of response latency (seconds) of gRPC that had been application-level "
                          "handled by the server.")
                    .Register(registry)) {
  WriterLock l(&mu_);
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* svc =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
    if (svc == nullptr) continue;
    for (int i = 0; i < svc->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* m = svc->method(i);
      const RpcType t = m->client_streaming() ? (m->server_streaming() ? RpcType::BIDI_STREAMING
                                                                       : RpcType::CLIENT_STREAMING)
                                              : (m->server_streaming() ? RpcType::SERVER_STREAMING : RpcType::UNARY);
      AddLocked("/" + name + "/" + m->name(), TypeName(t));
    }
  }
  AddLocked("/grpc.health.v1.Health/Check", "unary");
  AddLocked("/grpc.health.v1.Health/Watch", "server_stream");
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcMetrics::InterceptorFactory() {
  return std::make_unique<Factory>(this);
}

RpcMetrics::Method& RpcMetrics::Find(std::string_view path, RpcType type) {
  {
    ReaderLock l(&mu_);
    if (auto it = methods_.find(absl::string_view(path.data(), path.size())); it != methods_.end()) return *it->second;
  }
  // Not a method of a served service (UNIMPLEMENTED): one shared series, so made-up method names
  // cannot create series without bound.
  WriterLock l(&mu_);
  return AddLocked("/unknown/unknown", TypeName(type));
}

RpcMetrics::Method& RpcMetrics::AddLocked(std::string_view path, std::string_view type) {
  if (auto it = methods_.find(absl::string_view(path.data(), path.size())); it != methods_.end()) return *it->second;
  // "/physmem.v1.PhysMem/AllocPages" -> service "physmem.v1.PhysMem", method "AllocPages".
  std::string_view rest = path.substr(path.starts_with('/') ? 1 : 0);
  const size_t slash = rest.find('/');
  std::string service(slash == std::string_view::npos ? "unknown" : rest.substr(0, slash));
  std::string method(slash == std::string_view::npos ? (rest.empty() ? "unknown" : rest) : rest.substr(slash + 1));
  auto m = std::make_unique<Method>();
  m->labels = {{"grpc_type", std::string(type)}, {"grpc_service", service}, {"grpc_method", method}};
  m->started = &started_.Add(m->labels);
  m->handling = &handling_.Add(m->labels, LatencyBuckets());
  Method& ref = *m;
  methods_.emplace(std::string(path), std::move(m));
  return ref;
}

void RpcMetrics::Handled(const Method& m, grpc::StatusCode code, double seconds) {
  std::map<std::string, std::string> labels = m.labels;
  labels.emplace("grpc_code", std::string(GrpcCodeName(code)));
  handled_.Add(labels).Increment();
  m.handling->Observe(seconds);
}

}  // namespace physmem
