// Helpers for the fault tests (fault_test.cc, exhaustion_test.cc): client processes that are
// really killed, the daemon's thread and fd counts from /proc, and a sum over its /metrics (how a
// test sees a call parked or finished inside the daemon). The raw-stub calls with deadlines they
// make are in stub_calls.h, included here.
//
// A ChildClient re-executes the test binary itself (/proc/self/exe) running one DISABLED_ test
// as the client program, with the daemon's target in PHYSMEM_FAULT_TARGET: a real separate
// process with its own connections, which the test can SIGKILL or SIGSTOP mid-call. The child
// prints "READY ..." on stdout once it is in the state the test wants.
//
// Who uses it: tests/server/*fault*/exhaustion tests. Thread-safety: one owner thread.
#ifndef PHYSMEM_TESTS_SERVER_FAULT_HELPERS_H_
#define PHYSMEM_TESTS_SERVER_FAULT_HELPERS_H_

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tests/server/metrics_scrape.h"
#include "tests/server/stub_calls.h"
#include "tests/time_scale.h"

namespace physmem::testing {

// Entries in /proc/<pid>/<dir> ("task": threads), or -1.
inline int ProcEntries(pid_t pid, const char* dir) {
  const std::string path = "/proc/" + std::to_string(pid) + "/" + dir;
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n;
}

// Open sockets of `pid` (its connections and listeners), or -1. Counted rather than all fds: a
// sanitizer build opens report files (TSAN_OPTIONS=log_path) whenever it first reports, which says
// nothing about connections.
inline int OpenSockets(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char target[64];
    const ssize_t len = ::readlinkat(::dirfd(d), e->d_name, target, sizeof(target) - 1);
    if (len > 0 && std::string_view(target, static_cast<size_t>(len)).starts_with("socket:")) ++n;
  }
  ::closedir(d);
  return n;
}

class ChildClient {
 public:
  // Runs DISABLED_<name> of this binary's ChildClient suite as a process; `env` are extra
  // NAME=value settings.
  ChildClient(const std::string& name, const std::string& target, std::vector<std::string> env = {}) {
    int out[2];
    if (::pipe(out) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::setenv("PHYSMEM_FAULT_TARGET", target.c_str(), 1);
      for (const std::string& e : env) ::putenv(::strdup(e.c_str()));
      const std::string filter = "--gtest_filter=ChildClient.DISABLED_" + name;
      ::execl("/proc/self/exe", "fault-child", "--gtest_also_run_disabled_tests", filter.c_str(), nullptr);
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = out[0];
  }
  ~ChildClient() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }
  ChildClient(const ChildClient&) = delete;
  ChildClient& operator=(const ChildClient&) = delete;

  // Reads the child's stdout until a line starting with READY; returns the rest of that line
  // ("-" if empty), or "" if the child exited first or printed none within `within` (scaled to
  // the build: a child is this test binary, sanitized too, starting and connecting).
  std::string WaitReady(std::chrono::milliseconds within = std::chrono::seconds(30)) {
    const auto deadline = std::chrono::steady_clock::now() + ScaledTimeout(within);
    for (;;) {
      for (size_t nl; (nl = buffered_.find('\n')) != std::string::npos;) {
        std::string line = buffered_.substr(0, nl);
        buffered_.erase(0, nl + 1);
        if (line.rfind("READY", 0) != 0) continue;
        std::string rest = line.substr(5);
        while (!rest.empty() && rest.front() == ' ') rest.erase(0, 1);
        return rest.empty() ? "-" : rest;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (out_ < 0 || left.count() <= 0) return "";
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;  // timeout (checked above) or EINTR
      char buf[512];
      const ssize_t n = ::read(out_, buf, sizeof(buf));
      if (n <= 0) return "";  // the child exited (or its stdout closed)
      buffered_.append(buf, static_cast<size_t>(n));
    }
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // SIGKILL and reap.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;          // the read end of the child's stdout
  std::string buffered_;  // read from it, not yet a whole line
};

// In a child: the daemon's target, from the parent.
inline std::string ChildTarget() {
  const char* t = std::getenv("PHYSMEM_FAULT_TARGET");
  return t != nullptr ? t : "";
}
inline int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}
inline void Ready(const std::string& what = "") {
  std::printf("READY %s\n", what.c_str());
  std::fflush(stdout);
}

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_SERVER_FAULT_HELPERS_H_
