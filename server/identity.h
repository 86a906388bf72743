// Caller identity: who owns a lease.
//
//   Unix socket   "uid:<uid>"        from SO_PEERCRED, read when the daemon accepted the
//                                    connection (UnixListener records it; gRPC names such a
//                                    connection's peer "fd:<n>", which is how a call finds it)
//   TCP + mTLS    "x509:<subject>"   the client certificate's subject, checked by gRPC's TLS
//   TCP, no TLS   "tcp:<address>"    only with --allow_insecure_tcp; every client at that address
//                                    shares the identity, which is why the flag logs a warning
//
// Who uses it: the service, on every call. Thread-safety: PeerRegistry is internally locked.
#ifndef PHYSMEM_SERVER_IDENTITY_H_
#define PHYSMEM_SERVER_IDENTITY_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <optional>
#include <string>

#include <grpcpp/server_context.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "allocator/mutex.h"

namespace physmem {

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

class PeerRegistry {
 public:
  void Record(int fd, const PeerCred& cred);
  std::optional<PeerCred> Lookup(int fd) const;

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<int, PeerCred> by_fd_ ABSL_GUARDED_BY(mu_);  // an fd's entry is replaced on reuse
};

// The identity of the caller of `ctx`, or UNAUTHENTICATED if it cannot be established.
absl::StatusOr<std::string> CallerIdentity(const grpc::ServerContextBase& ctx, const PeerRegistry& peers);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_IDENTITY_H_
