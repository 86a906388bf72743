#include "server/identity.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <cstdlib>

#include "absl/status/status.h"

namespace physmem {

void PeerRegistry::Record(int fd, const PeerCred& cred) {
  MutexLock l(&mu_);
  by_fd_[fd] = cred;
}

std::optional<PeerCred> PeerRegistry::Lookup(int fd) const {
  MutexLock l(&mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::string> CallerIdentity(const grpc::ServerContextBase& ctx, const PeerRegistry& peers) {
  const std::string peer = ctx.peer();
  if (peer.rfind("fd:", 0) == 0) {
    // A connection UnixListener accepted: gRPC keeps the fd open while any call on it runs, so
    // the number cannot have been reused by another connection under this call.
    const int fd = std::atoi(peer.c_str() + 3);
    if (std::optional<PeerCred> cred = peers.Lookup(fd)) return "uid:" + std::to_string(cred->uid);
    return absl::UnauthenticatedError("no peer credentials recorded for this Unix-socket connection");
  }
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    for (const grpc::string_ref& subject : auth->FindPropertyValues(GRPC_X509_SUBJECT_PROPERTY_NAME)) {
      return "x509:" + std::string(subject.data(), subject.size());
    }
  }
  if (peer.rfind("ipv4:", 0) == 0 || peer.rfind("ipv6:", 0) == 0) {
    // Insecure TCP (the server only listens so with --allow_insecure_tcp): the address without
    // the port, so reconnects from the same host keep their leases.
    const size_t colon = peer.rfind(':');
    return "tcp:" + peer.substr(5, colon - 5);
  }
  return absl::UnauthenticatedError("cannot identify the caller (peer '" + peer + "')");
}

}  // namespace physmem
