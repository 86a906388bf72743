// Maps absl::Status (what the allocator and the lease table speak) to grpc::Status (what the
// wire speaks). The codes are the same canonical set, so this is a straight copy of code and
// message. Who uses it: every RPC handler. Thread-safety: pure function.
#ifndef PHYSMEM_SERVER_STATUS_UTIL_H_
#define PHYSMEM_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace physmem {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_STATUS_UTIL_H_
