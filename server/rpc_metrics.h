// RPC metrics under go-grpc-prometheus's names, so existing gRPC dashboards work unchanged:
//   grpc_server_started_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
//   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method} (histogram, 10 µs .. 10 s)
// collected by a gRPC server interceptor, so every method is covered — PhysMem's, the streaming
// KeepAlive (its handling time is the stream's lifetime), grpc.health.v1 and reflection — without
// touching the handlers.
//
// Who uses it: Server adds RpcMetrics::InterceptorFactory() to its ServerBuilder. The series of
// the given services' methods exist from the start (started/handling at 0, as go-grpc-prometheus's
// InitializeMetrics does); calls to any other method share grpc_service="unknown",
// grpc_method="unknown" (a client cannot create series by inventing method names). Thread-safety: the
// interceptors run on gRPC's threads concurrently; RpcMetrics is safe for that and must outlive
// the gRPC server.
#ifndef PHYSMEM_SERVER_RPC_METRICS_H_
#define PHYSMEM_SERVER_RPC_METRICS_H_

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

#include "absl/container/flat_hash_map.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "allocator/mutex.h"

namespace physmem {

class RpcMetrics {
 public:
  // Registers the three families in `registry`; pre-creates the series of every method of the
  // listed services (full names, e.g. "physmem.v1.PhysMem") found in protobuf's generated pool,
  // and of grpc.health.v1.Health (which gRPC implements without a protobuf descriptor).
  RpcMetrics(prometheus::Registry& registry, const std::vector<std::string>& services);

  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

  // One method's series; the interceptor finds it once per call.
  struct Method {
    prometheus::Counter* started;
    prometheus::Histogram* handling;
    std::map<std::string, std::string> labels;  // grpc_type, grpc_service, grpc_method
  };
  Method& Find(std::string_view path, grpc::experimental::ServerRpcInfo::Type type);
  void Handled(const Method& m, grpc::StatusCode code, double seconds);

 private:
  Method& AddLocked(std::string_view path, std::string_view type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  prometheus::Family<prometheus::Counter>& started_;
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& handling_;
  SharedMutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Method>> methods_ ABSL_GUARDED_BY(mu_);  // by "/svc/method"
};

// "OK", "RESOURCE_EXHAUSTED", ...: the names go-grpc-prometheus's grpc_code label uses.
std::string_view GrpcCodeName(grpc::StatusCode code);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_RPC_METRICS_H_
