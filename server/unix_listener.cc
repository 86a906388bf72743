#include "server/unix_listener.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <grpcpp/server_posix.h>

#include "absl/strings/str_format.h"
#include "server/log.h"

namespace physmem {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::ErrnoToStatus(errno, what);
}

// True if something accepts connections on `path` right now.
bool SocketIsLive(const sockaddr_un& addr) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool live = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return live;
}

}  // namespace

absl::Status UnixListener::Start(grpc::Server* server, unsigned mode) {
  server_ = server;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.empty() || path_.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat("unix socket path '%s' must be 1..%d bytes", path_,
                                                      sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrFormat("%s exists and is not a socket; refusing to replace it", path_));
    }
    if (SocketIsLive(addr)) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "another daemon is serving on %s (the socket is in use); stop it, or choose another path with "
          "--unix_socket=PATH",
          path_));
    }
    LogWarn("stale_socket_removed", {{"path", path_}});
    ::unlink(path_.c_str());
  }
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Errno("socket(AF_UNIX)");
  // Create the file with no access, then open it to exactly `mode`: never a window where a wider
  // umask would let others in.
  const mode_t old_umask = ::umask(0777);
  const int rc = ::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  ::umask(old_umask);
  if (rc != 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrFormat("cannot serve on Unix socket %s: bind: %s; choose another path "
                                                    "with --unix_socket=PATH ('' for none)",
                                                    path_, std::strerror(err)));
  }
  if (::chmod(path_.c_str(), mode) != 0) return Errno("chmod(" + path_ + ")");
  if (::listen(listen_fd_, 512) != 0) return Errno("listen(" + path_ + ")");
  thread_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void UnixListener::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;  // wake up regularly to notice Stop()
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        LogError("accept_failed", {{"path", path_}, {"error", std::strerror(errno)}});
      }
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      LogError("peercred_failed", {{"error", std::strerror(errno)}});
      ::close(fd);
      continue;
    }
    peers_->Record(fd, PeerCred{cred.pid, cred.uid, cred.gid});
    grpc::AddInsecureChannelFromFd(server_, fd);  // gRPC owns and closes the fd from here
  }
}

void UnixListener::Stop() {
  if (listen_fd_ < 0) return;
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  listen_fd_ = -1;
  ::unlink(path_.c_str());
}

}  // namespace physmem
