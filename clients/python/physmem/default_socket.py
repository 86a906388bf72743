"""Where the client looks for physmemd when no target is given. This mirrors
server/default_socket.h's DefaultClientTarget() (used by physmemctl, the load generator and the C++
client), so that a daemon and any client started by the same user meet without a flag:
$PHYSMEM_TARGET if set; else the system socket if one exists (a system daemon is running); else
this user's socket. Keep the two in step."""
import os
import stat

SYSTEM_SOCKET = "/run/physmemd/physmemd.sock"


def user_socket_path():
    """$XDG_RUNTIME_DIR/physmemd.sock, or /tmp/physmemd-<uid>/physmemd.sock without it (or when it
    is not an absolute path, as the C++ rule)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        return xdg + "/physmemd.sock"
    return "/tmp/physmemd-%d/physmemd.sock" % os.getuid()


def default_target():
    """The gRPC target: "unix:///path" or whatever $PHYSMEM_TARGET says ("host:port" too)."""
    env = os.environ.get("PHYSMEM_TARGET", "")
    if env:
        return env
    try:
        if stat.S_ISSOCK(os.stat(SYSTEM_SOCKET).st_mode):
            return "unix://" + SYSTEM_SOCKET
    except OSError:
        pass
    return "unix://" + user_socket_path()
