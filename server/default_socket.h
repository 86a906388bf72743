// Where physmemd listens, and where its clients look, when no flag says: one rule in one place,
// so that a daemon and a physmemctl started by the same user meet without a flag.
//
//   system socket: /run/physmemd/physmemd.sock — root's default, and the systemd unit's
//                  (RuntimeDirectory=physmemd).
//   user socket:   $XDG_RUNTIME_DIR/physmemd.sock, or /tmp/physmemd-<uid>/physmemd.sock where
//                  XDG_RUNTIME_DIR is not set (the daemon makes that directory, mode 0700).
//
// The daemon (--unix_socket's default): root, or a user who may write to /run/physmemd (an
// installed service account), gets the system socket; anyone else the user socket.
// A client (--target's default in physmemctl, the load generator and the client library): the
// environment variable PHYSMEM_TARGET if it is set; else the system socket if one exists (a
// system daemon is running); else the user socket.
//
// Who uses it: server/daemon_main.cc, clients/physmem_client.h. Header-only, no dependencies, so
// that clients need not link the server. Thread-safety: pure functions of the environment.
#ifndef PHYSMEM_SERVER_DEFAULT_SOCKET_H_
#define PHYSMEM_SERVER_DEFAULT_SOCKET_H_

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace physmem {

inline constexpr char kSystemSocketDir[] = "/run/physmemd";
inline constexpr char kSystemSocket[] = "/run/physmemd/physmemd.sock";

inline std::string UserSocketPath() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/physmemd.sock";
  return "/tmp/physmemd-" + std::to_string(::getuid()) + "/physmemd.sock";
}

inline std::string DefaultDaemonSocket() {
  if (::geteuid() == 0 || ::access(kSystemSocketDir, W_OK | X_OK) == 0) return kSystemSocket;
  return UserSocketPath();
}

inline std::string DefaultClientTarget() {
  const char* env = std::getenv("PHYSMEM_TARGET");
  if (env != nullptr && env[0] != '\0') return env;
  struct stat st;
  if (::stat(kSystemSocket, &st) == 0 && S_ISSOCK(st.st_mode)) return std::string("unix://") + kSystemSocket;
  return "unix://" + UserSocketPath();
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_DEFAULT_SOCKET_H_
