// A gRPC server with a deliberate data race in its handler: proof that the TSan run of the server
// and client tests still catches a race in our handlers despite everything it tolerates in gRPC
// (tests/tsan/tsan_reports.py, tests/tsan/abseil_sync_annotations.cc, tests/tsan.supp).
//
// It serves PhysMem.Nop over a Unix socket with the callback API, as physmemd does, and makes
// two calls at once. Each handler writes a plain int, then waits (relaxed atomics only, which
// give TSan no ordering) until the other handler has written it too, so the two writes are
// concurrent in every run and nothing orders them. Built only in TSan builds; run by
// tests/tsan/canary_test.py, which expects tsan_reports.py to fail on what it reports.
// Exit status: 0 when both calls succeeded (the race is for TSan to see), 1 otherwise.
//
// Time: the rendezvous and the calls' deadline only bound a hang (a second call that never comes);
// they are scaled to the build (tests/time_scale.h: 20x under TSan, the only build of this file),
// since under TSan on a loaded machine the second call may take seconds to arrive.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "physmem/v1/physmem.grpc.pb.h"
// Relative: this target's include path has only the generated code (CMakeLists.txt).
#include "../time_scale.h"

namespace {

using ::physmem::testing::ScaledTimeout;

// How long a handler waits for the other one (40 s under TSan), and the calls' deadline.
const std::chrono::milliseconds kRendezvous = ScaledTimeout(std::chrono::seconds(2));
const std::chrono::milliseconds kCallDeadline = 2 * kRendezvous;

class RacyNopService final : public physmem::v1::PhysMem::CallbackService {
 public:
  grpc::ServerUnaryReactor* Nop(grpc::CallbackServerContext* ctx, const physmem::v1::NopRequest*,
                                physmem::v1::NopResponse*) override {
    ++calls_;  // the race: two handlers at once, no lock
    arrived_.fetch_add(1, std::memory_order_relaxed);
    const auto give_up = std::chrono::steady_clock::now() + kRendezvous;
    while (arrived_.load(std::memory_order_relaxed) < 2 && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  int calls_ = 0;
  std::atomic<int> arrived_{0};
};

}  // namespace

int main() {
  const std::string target = "unix:/tmp/physmem-tsan-canary-" + std::to_string(::getpid()) + ".sock";
  RacyNopService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(target, grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "canary: cannot listen on %s\n", target.c_str());
    return 1;
  }
  std::atomic<int> ok{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 2; ++i) {
    callers.emplace_back([&] {
      auto stub = physmem::v1::PhysMem::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
      physmem::v1::NopResponse resp;
      if (stub->Nop(&ctx, physmem::v1::NopRequest(), &resp).ok()) ok.fetch_add(1);
    });
  }
  for (auto& t : callers) t.join();
  server->Shutdown();
  ::unlink(target.substr(5).c_str());
  std::printf("canary: %d of 2 calls succeeded\n", ok.load());
  return ok.load() == 2 ? 0 : 1;
}
