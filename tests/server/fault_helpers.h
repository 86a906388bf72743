// Helpers for the fault tests (fault_test.cc, exhaustion_test.cc): client processes that are
// really killed, and the daemon's thread and fd counts from /proc. The raw-stub calls with
// deadlines they make are in stub_calls.h, included here.
//
// A ChildClient re-executes the test binary itself (/proc/self/exe) running one DISABLED_ test
// as the client program, with the daemon's target in PHYSMEM_FAULT_TARGET: a real separate
// process with its own connections, which the test can SIGKILL or SIGSTOP mid-call. The child
// prints "READY ..." on stdout once it is in the state the test wants.
//
// Who uses it: tests/server/*fault*/exhaustion tests. Thread-safety: one owner thread.
#ifndef PHYSMEM_TESTS_SERVER_FAULT_HELPERS_H_
#define PHYSMEM_TESTS_SERVER_FAULT_HELPERS_H_

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tests/server/stub_calls.h"

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
    out_ = ::fdopen(out[0], "r");
  }
  ~ChildClient() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ != nullptr) std::fclose(out_);
  }
  ChildClient(const ChildClient&) = delete;
  ChildClient& operator=(const ChildClient&) = delete;

  // Reads the child's stdout until a line starting with READY; returns the rest of that line,
  // or "" if the child exited first.
  std::string WaitReady() {
    char line[512];
    while (out_ != nullptr && std::fgets(line, sizeof(line), out_) != nullptr) {
      if (std::strncmp(line, "READY", 5) == 0) {
        std::string rest(line + 5);
        while (!rest.empty() && (rest.back() == '\n' || rest.front() == ' ')) {
          if (rest.back() == '\n') rest.pop_back(); else rest.erase(0, 1);
        }
        return rest.empty() ? "-" : rest;
      }
    }
    return "";
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
  std::FILE* out_ = nullptr;
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
