// Helpers for the fault tests (fault_test.cc, exhaustion_test.cc): raw-stub calls with deadlines,
// client processes that are really killed, and the daemon's thread and fd counts from /proc.
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
#include <vector>

#include <grpcpp/grpcpp.h>

#include "physmem/v1/physmem.grpc.pb.h"

namespace physmem::testing {

// A channel with a connection of its own (gRPC would otherwise share one between channels to the
// same target), and a stub on it.
inline std::shared_ptr<grpc::Channel> OwnChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return ch;
}
inline std::unique_ptr<v1::PhysMem::Stub> OwnStub(const std::string& target) {
  return v1::PhysMem::NewStub(OwnChannel(target));
}

struct Deadline {
  explicit Deadline(int64_t ms = 5000) {
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  }
  grpc::ClientContext c;
  grpc::ClientContext* operator&() { return &c; }
};

inline uint64_t CreateLease(v1::PhysMem::Stub* stub, int64_t ttl_ms, grpc::Status* status = nullptr) {
  v1::CreateLeaseRequest req;
  req.set_ttl_ms(ttl_ms);
  req.set_name("fault");
  v1::CreateLeaseResponse resp;
  Deadline ctx;
  grpc::Status s = stub->CreateLease(&ctx, req, &resp);
  if (status != nullptr) *status = s;
  return s.ok() ? resp.lease_id() : 0;
}

inline grpc::Status AllocPages(v1::PhysMem::Stub* stub, uint64_t lease, const std::string& gfp, uint32_t order,
                               v1::Allocation* out, int64_t deadline_ms = 5000) {
  v1::AllocPagesRequest req;
  req.set_lease_id(lease);
  req.set_gfp(gfp);
  req.set_order(order);
  Deadline ctx(deadline_ms);
  return stub->AllocPages(&ctx, req, out);
}

inline grpc::Status AllocBulk(v1::PhysMem::Stub* stub, uint64_t lease, const std::string& gfp, uint32_t count,
                              v1::AllocPagesBulkResponse* out, int64_t deadline_ms = 10000) {
  v1::AllocPagesBulkRequest req;
  req.set_lease_id(lease);
  req.set_gfp(gfp);
  req.set_count(count);
  Deadline ctx(deadline_ms);
  return stub->AllocPagesBulk(&ctx, req, out);
}

inline grpc::Status FreeBulk(v1::PhysMem::Stub* stub, uint64_t lease, const std::vector<uint64_t>& pfns) {
  v1::FreePagesBulkRequest req;
  req.set_lease_id(lease);
  for (uint64_t p : pfns) req.add_pfn(p);
  v1::FreePagesBulkResponse resp;
  Deadline ctx(10000);
  return stub->FreePagesBulk(&ctx, req, &resp);
}

inline v1::ValidateResponse Validate(v1::PhysMem::Stub* stub, grpc::Status* status) {
  v1::ValidateResponse resp;
  Deadline ctx(20000);
  *status = stub->Validate(&ctx, v1::ValidateRequest(), &resp);
  return resp;
}

inline size_t ListLeases(v1::PhysMem::Stub* stub) {
  v1::ListLeasesResponse resp;
  Deadline ctx;
  if (!stub->ListLeases(&ctx, v1::ListLeasesRequest(), &resp).ok()) return SIZE_MAX;
  return static_cast<size_t>(resp.leases_size());
}

inline bool Nop(v1::PhysMem::Stub* stub, int64_t deadline_ms = 5000) {
  v1::NopResponse resp;
  Deadline ctx(deadline_ms);
  return stub->Nop(&ctx, v1::NopRequest(), &resp).ok();
}

// Entries in /proc/<pid>/<dir> ("task": threads, "fd": open files), or -1.
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
