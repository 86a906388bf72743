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
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "physmem/v1/physmem.grpc.pb.h"

namespace {

class RacyNopService final : public physmem::v1::PhysMem::CallbackService {
 public:
  grpc::ServerUnaryReactor* Nop(grpc::CallbackServerContext* ctx, const physmem::v1::NopRequest*,
                                physmem::v1::NopResponse*) override {
    ++calls_;  // the race: two handlers at once, no lock
    arrived_.fetch_add(1, std::memory_order_relaxed);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
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
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
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
