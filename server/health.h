// Health checking as standard tools expect it: grpc.health.v1.Health, callable by a client that
// has no .proto (grpcurl, ghz, grpc_health_probe, Kubernetes' grpc probe) because server
// reflection can describe it, with a status for the whole server ("") and one per service
// ("physmem.v1.PhysMem"), both turned NOT_SERVING the moment shutdown begins.
//
// The service itself is gRPC's default one (grpc::EnableDefaultHealthCheckService): Check and
// Watch, with watchers told of every change. gRPC 1.51 implements it over upb tables, outside the
// protobuf descriptor pool that reflection reads, so reflection listed the service but answered
// NOT_FOUND for its symbol. This file links a compiled copy of the standard health.proto
// (proto/grpc/health/v1/health.proto) into the generated pool, where reflection finds it.
//
// Who uses it: server/server.cc — EnableHealthChecking() before building the gRPC server,
// MarkServing() once it serves, MarkNotServing() first thing in Shutdown().
// Thread-safety: EnableHealthChecking() before any server is built (it sets a process-wide gRPC
// option); MarkServing/MarkNotServing from any thread (gRPC's health service locks its own state).
#ifndef PHYSMEM_SERVER_HEALTH_H_
#define PHYSMEM_SERVER_HEALTH_H_

#include <grpcpp/server.h>

namespace physmem {

// Turns on gRPC's health service for servers built from now on, and makes sure the
// grpc.health.v1 descriptors are in the generated pool (aborts, naming the symbol, if not).
void EnableHealthChecking();

// "" and physmem.v1.PhysMem answer SERVING. Before this, "" is SERVING (gRPC's default) and
// physmem.v1.PhysMem is unknown (Check: NOT_FOUND; Watch: SERVICE_UNKNOWN).
void MarkServing(grpc::Server* server);

// Every service name answers NOT_SERVING from now on, and open Watch streams are told at once;
// later MarkServing calls change nothing (grpc::HealthCheckServiceInterface::Shutdown).
void MarkNotServing(grpc::Server* server);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_HEALTH_H_
