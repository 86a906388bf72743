// Runs the real physmemd binary as a child process for integration tests: on a fresh Unix socket
// in a temporary directory (and optionally loopback TCP), waits until it serves, and stops it on
// destruction (SIGTERM, then SIGKILL after a grace period). Kill() sends any signal for real.
//
// Who uses it: tests under tests/server and tests/clients. Thread-safety: one owner thread.
#ifndef PHYSMEM_TESTS_DAEMON_PROCESS_H_
#define PHYSMEM_TESTS_DAEMON_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace physmem::testing {

// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
inline bool Eventually(std::chrono::milliseconds timeout, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

class DaemonProcess {
 public:
  // `args` are extra physmemd flags (e.g. "--target=i386", "--mem_mb=64"). The socket lives in a
  // new temporary directory; its log goes to <dir>/physmemd.log.
  explicit DaemonProcess(std::vector<std::string> args = {}, bool tcp = false) : args_(std::move(args)), tcp_(tcp) {
    char tmpl[] = "/tmp/physmemd-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    socket_ = dir_ + "/physmemd.sock";
    log_ = dir_ + "/physmemd.log";
  }
  ~DaemonProcess() {
    Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // Starts the daemon and waits (up to 20 s) until it accepts connections and has logged its
  // "started" line (which carries the TCP port, written after the Unix socket already accepts).
  // False on failure; the reason is in log().
  bool Start() {
    // Metrics on a free port (the default 9464 would collide between daemons); a test's own
    // --metrics_listen comes later and wins.
    std::vector<std::string> argv = {PHYSMEMD_BINARY, "--unix_socket=" + socket_, "--arena=ordinary",
                                     "--metrics_listen=127.0.0.1:0"};
    if (tcp_) {
      argv.push_back("--tcp=127.0.0.1:0");
      argv.push_back("--allow_insecure_tcp");
    }
    argv.insert(argv.end(), args_.begin(), args_.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test that dies takes its daemon with it
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Running()) return false;
      if (Connectable() && Started()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  bool Running() {
    if (pid_ <= 0) return false;
    int status;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }

  // Sends a signal for real.
  void Kill(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // Waits for exit; returns the wait status, or nullopt after the timeout.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Running()) return exit_status_;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::nullopt;
  }

  void Stop() {
    if (pid_ <= 0) return;
    Kill(SIGTERM);
    if (!WaitExit(std::chrono::seconds(10))) {
      Kill(SIGKILL);
      WaitExit(std::chrono::seconds(5));
    }
  }

  const std::string& socket_path() const { return socket_; }
  std::string unix_target() const { return "unix://" + socket_; }
  pid_t pid() const { return pid_; }
  std::optional<int> exit_status() const { return exit_status_; }

  bool Started() const { return log().find("event=started") != std::string::npos; }

  // The TCP port from the daemon's "started" log line (tcp=<port>), or 0.
  int tcp_port() const {
    static const std::regex kPort(R"(event=started .* tcp=(\d+))");
    std::smatch m;
    const std::string text = log();
    if (std::regex_search(text, m, kPort)) return std::stoi(m[1]);
    return 0;
  }

  // The Prometheus exporter's port from the "started" log line (metrics=<port>), or 0 (off).
  int metrics_port() const {
    static const std::regex kPort(R"(event=started .* metrics=(\d+))");
    std::smatch m;
    const std::string text = log();
    if (std::regex_search(text, m, kPort)) return std::stoi(m[1]);
    return 0;
  }

  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  bool Connectable() const {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof(addr.sun_path) - 1);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  }

  std::vector<std::string> args_;
  bool tcp_;
  std::string dir_, socket_, log_;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_DAEMON_PROCESS_H_
