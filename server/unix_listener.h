// The daemon's Unix-domain socket. We accept connections ourselves instead of letting gRPC
// listen, because only the accepting side can read the peer's credentials (SO_PEERCRED): each
// accepted fd is recorded in the PeerRegistry and then handed to gRPC (AddInsecureChannelFromFd).
//
// Start() creates the socket file with mode 0660 (owner and group may connect). A stale socket
// file left by a crashed daemon (nothing accepts on it) is replaced; a live one is an error, so
// two daemons never share a path. Stop() stops accepting and removes the file.
// Thread-safety: Start/Stop from one thread; the accept loop runs on its own thread.
#ifndef PHYSMEM_SERVER_UNIX_LISTENER_H_
#define PHYSMEM_SERVER_UNIX_LISTENER_H_

#include <atomic>
#include <string>
#include <thread>

#include <grpcpp/server.h>

#include "absl/status/status.h"
#include "server/identity.h"

namespace physmem {

class UnixListener {
 public:
  UnixListener(std::string path, PeerRegistry* peers) : path_(std::move(path)), peers_(peers) {}
  ~UnixListener() { Stop(); }

  absl::Status Start(grpc::Server* server, unsigned mode = 0660);
  void Stop();
  const std::string& path() const { return path_; }

 private:
  void AcceptLoop();

  std::string path_;
  PeerRegistry* peers_;
  grpc::Server* server_ = nullptr;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_UNIX_LISTENER_H_
