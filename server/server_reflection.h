// Server reflection, both versions: grpc.reflection.v1alpha.ServerReflection (gRPC's own plugin)
// and grpc.reflection.v1.ServerReflection (this file). Reflection-only clients — grpcurl, ghz,
// grpcui, Postman, Python's grpcio without stubs — list the services and fetch the descriptors of
// physmem.v1.PhysMem and grpc.health.v1.Health (server/health.h) with no .proto of their own;
// newer ones ask for v1 first and only fall back to v1alpha.
//
// Debian 12's gRPC 1.51 ships only v1alpha (v1 arrived in gRPC 1.56). The two protocols have the
// same messages and wire format under different package names, so v1 here is gRPC's v1alpha
// implementation again over a compiled copy of the standard reflection/v1 proto
// (proto/grpc/reflection/v1/reflection.proto): the same descriptor pool (the generated one), the
// same answers, NOT_FOUND errors inside the stream for unknown names, each file sent once per
// stream with the dependencies it still lacks.
//
// Who uses it: server/server.cc calls EnableServerReflection() before building its gRPC server; a
// ServerBuilder plugin then registers the v1 service and, once the server is built, hands it the
// list of registered services. Thread-safety: EnableServerReflection() before any server is built
// (it registers process-wide plugin factories); the service answers streams concurrently (its
// service list under a mutex) and keeps no other state between them.
#ifndef PHYSMEM_SERVER_SERVER_REFLECTION_H_
#define PHYSMEM_SERVER_SERVER_REFLECTION_H_

#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "allocator/mutex.h"

namespace physmem {

// Both reflection services on every gRPC server built from now on. Idempotent.
void EnableServerReflection();

// grpc.reflection.v1.ServerReflection over the generated descriptor pool.
class ServerReflectionV1 final : public grpc::reflection::v1::ServerReflection::Service {
 public:
  ServerReflectionV1();

  // The services list_services answers with. Set when the server's build finishes, which is
  // after it started: a stream that comes before gets an empty list rather than a race.
  void set_services(const std::vector<std::string>& services) {
    MutexLock l(&mu_);
    services_ = services;
  }

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<grpc::reflection::v1::ServerReflectionResponse,
                               grpc::reflection::v1::ServerReflectionRequest>* stream) override;

 private:
  using Response = grpc::reflection::v1::ServerReflectionResponse;
  // One request's answer; `sent` holds the files this stream already carried.
  void Answer(const grpc::reflection::v1::ServerReflectionRequest& req, std::vector<std::string>* sent,
              Response* resp) const;
  void AddFile(const google::protobuf::FileDescriptor* file, std::vector<std::string>* sent, Response* resp) const;
  static void NotFound(const std::string& message, Response* resp);

  const google::protobuf::DescriptorPool* pool_;
  mutable Mutex mu_;
  std::vector<std::string> services_ ABSL_GUARDED_BY(mu_);
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_SERVER_REFLECTION_H_
