// Runs the real physmemd binary as a child process for integration tests: on a fresh Unix socket
// in a temporary directory (and optionally loopback TCP), waits until it serves, and stops it on
// destruction (SIGTERM, then SIGKILL after a grace period). Kill() sends any signal for real.
//
// Time: a test that needs a lease to expire calls UseLeaseClock() before Start(): the daemon is
// then physmemd_test_hooks (tests/server/physmemd_test_main.cc), whose lease clock runs ahead of
// CLOCK_MONOTONIC by an offset this class keeps in a file; AdvanceLeaseClock() moves it, and the
// leases whose deadline it passes expire at the reaper's next pass (WaitForLog counts them).
// Real-time waits (a daemon starting, a log line appearing) are bounded by ScaledTimeout(), which
// grows with the build's slowness (sanitizers) instead of racing it.
//
// Who uses it: tests under tests/server and tests/clients. Thread-safety: one owner thread.
#ifndef PHYSMEM_TESTS_DAEMON_PROCESS_H_
#define PHYSMEM_TESTS_DAEMON_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
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

#include "tests/time_scale.h"

namespace physmem::testing {

// Removes every /dev/shm entry whose path starts with `prefix`: a file-backed arena and what the
// daemon keeps beside it (<arena>.journal.<gen> segments, the snapshot). Tests that run one call
// it before and after, so that no run leaves files behind (tests/leftover_files.py).
inline void RemoveShmFiles(const std::string& prefix) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (e.path().string().rfind(prefix, 0) == 0) std::filesystem::remove(e.path(), ec);
  }
}

// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
inline bool Eventually(std::chrono::milliseconds timeout, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

// The flag a test passes to have its daemon serve /metrics, on a free port (metrics_port()).
inline constexpr char kServeMetrics[] = "--metrics_listen=127.0.0.1:0";

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

  // Before Start(): run physmemd_test_hooks with a lease clock this object advances. `clock_file`
  // (default: one in the daemon's directory) may be shared by the daemons of one test that
  // restart on the same journal, so that their deadlines stay on one scale.
  void UseLeaseClock(std::string clock_file = "") {
    binary_ = PHYSMEMD_TEST_HOOKS_BINARY;
    clock_file_ = clock_file.empty() ? dir_ + "/lease_clock" : std::move(clock_file);
    if (!std::filesystem::exists(clock_file_)) {
      const int64_t zero = 0;
      std::ofstream(clock_file_, std::ios::binary).write(reinterpret_cast<const char*>(&zero), sizeof(zero));
    }
    env_.push_back("PHYSMEM_TEST_LEASE_CLOCK=" + clock_file_);
  }
  // Before Start(): run physmemd_test_hooks, SIGKILLed at journal compaction step `step`.
  void CrashAtJournalStep(const std::string& step) {
    binary_ = PHYSMEMD_TEST_HOOKS_BINARY;
    env_.push_back("PHYSMEM_TEST_JOURNAL_CRASH_STEP=" + step);
  }
  // Moves the daemon's lease clock `by` forward: every lease whose deadline is then past has
  // expired (Find answers NOT_FOUND at once; the reaper frees it within 20 ms).
  void AdvanceLeaseClock(std::chrono::milliseconds by) {
    const int fd = ::open(clock_file_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) std::abort();  // UseLeaseClock() was not called
    void* p = ::mmap(nullptr, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) std::abort();
    std::atomic_ref<int64_t>(*static_cast<int64_t*>(p)).fetch_add(by.count() * 1000000, std::memory_order_release);
    ::munmap(p, sizeof(int64_t));
  }
  // Waits (up to ScaledTimeout(timeout)) until the log holds at least `n` lines with `needle`.
  bool WaitForLog(const std::string& needle, size_t n = 1,
                  std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) const {
    return Eventually(ScaledTimeout(timeout), [&] { return LogCount(needle) >= n; });
  }
  size_t LogCount(const std::string& needle) const {
    const std::string text = log();
    size_t n = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
    return n;
  }
  ~DaemonProcess() {
    Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // Starts the daemon and waits (up to ScaledTimeout(20 s)) until it accepts connections and has logged its
  // "started" line (which carries the TCP port, written after the Unix socket already accepts).
  // False on failure; the reason is in log(). May be called again after the daemon exited (a
  // restart on the same socket, arena and journal): it then waits for this start's own line, as
  // the log keeps every start's.
  bool Start() {
    starts_before_ = LogCount("event=started ");
    // No metrics unless the test asks (kServeMetrics, or its own --metrics_listen, which comes
    // later and wins): the exporter's web server takes up to a second and a half to stop, which
    // every daemon of every test would pay, and the default 9464 would collide between daemons.
    std::vector<std::string> argv = {binary_, "--unix_socket=" + socket_, "--arena=ordinary", "--metrics_listen="};
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
      for (std::string& e : env_) ::putenv(e.data());
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + ScaledTimeout(std::chrono::seconds(20));
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
    if (!WaitExit(ScaledTimeout(std::chrono::seconds(10)))) {
      Kill(SIGKILL);
      WaitExit(std::chrono::seconds(5));
    }
  }

  const std::string& socket_path() const { return socket_; }
  std::string unix_target() const { return "unix://" + socket_; }
  pid_t pid() const { return pid_; }
  std::optional<int> exit_status() const { return exit_status_; }

  // This start (the latest Start()) logged its "started" line.
  bool Started() const { return LogCount("event=started ") > starts_before_; }

  // The TCP port from the latest "started" log line (tcp=<port>), or 0.
  int tcp_port() const { return LatestStartedField(" tcp="); }

  // The Prometheus exporter's port from the latest "started" log line (metrics=<port>), or 0 (off).
  int metrics_port() const { return LatestStartedField(" metrics="); }

  // The number after `field` (" tcp=") on the last "started" line: after a restart, this start's.
  int LatestStartedField(const std::string& field) const {
    const std::string text = log();
    const size_t line = text.rfind("event=started ");
    if (line == std::string::npos) return 0;
    const size_t end = text.find('\n', line);
    const std::string started = text.substr(line, end == std::string::npos ? std::string::npos : end - line);
    const size_t at = started.find(field);
    if (at == std::string::npos) return 0;
    return std::atoi(started.c_str() + at + field.size());
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
  size_t starts_before_ = 0;  // "started" lines in the log before the latest Start()
  std::string binary_ = PHYSMEMD_BINARY;
  std::vector<std::string> env_;  // NAME=value for the daemon (physmemd_test_hooks' seams)
  std::string clock_file_;
  std::string dir_, socket_, log_;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_DAEMON_PROCESS_H_
