#include "server/health.h"

#include <cstdio>
#include <cstdlib>

#include <google/protobuf/descriptor.h>
#include <grpcpp/health_check_service_interface.h>

#include "grpc/health/v1/health.pb.h"
#include "physmem/v1/physmem.grpc.pb.h"

namespace physmem {
namespace {

constexpr char kHealthService[] = "grpc.health.v1.Health";

}  // namespace

void EnableHealthChecking() {
  grpc::EnableDefaultHealthCheckService(true);
  // Naming a generated class links health.pb.o (the static library would drop an unreferenced
  // object) and registers its file in the generated pool; the lookup is what reflection does.
  const google::protobuf::FileDescriptor* file = grpc::health::v1::HealthCheckRequest::descriptor()->file();
  if (google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(kHealthService) == nullptr) {
    std::fprintf(stderr, "physmemd: %s is not in the generated descriptor pool (file %s); reflection could not "
                 "describe it\n", kHealthService, file->name().c_str());
    std::abort();
  }
}

void MarkServing(grpc::Server* server) {
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) return;  // EnableHealthChecking() was not called before the build
  health->SetServingStatus(true);  // every name registered so far, "" included
  health->SetServingStatus(v1::PhysMem::service_full_name(), true);
}

void MarkNotServing(grpc::Server* server) {
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health != nullptr) health->Shutdown();
}

}  // namespace physmem
