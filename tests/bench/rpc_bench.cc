// RPC benchmark (not a test): what the allocator adds to a gRPC call, and bulk throughput.
//
// Starts the real server (server/server.h) on a Unix socket in this process, then drives it from
// client threads, each with its own connection, for a fixed time per workload:
//   nop          Nop + Nop                         the gRPC stack's own cost of two unary calls
//   alloc_free   AllocPages(order 0) + FreePages   the same two calls doing allocator work
//   bulk         AllocPagesBulk(N) alone, pages per second (leases revoked every 64 Ki pages)
// and prints pairs/s, µs per pair and the ratio alloc_free / nop measured in the same run.
//
// Then the floor: a trivial callback server built from the same proto (Nop alone, answered at
// once) beside physmemd, both driven by a closed-loop async client with N calls in flight (1, 16,
// 64) over 2 connections: calls/s, p50 and p99 per call, and the ratio to the trivial server's
// Nop at the same depth — so a regression of the per-call path shows at once.
//
//   ./build-bench/rpc_bench [--seconds=5] [--threads=4] [--bulk=4096] [--floor_seconds=2]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "physmem/v1/physmem.grpc.pb.h"
#include "server/server.h"
#include "server/unix_listener.h"

namespace physmem {
namespace {

using v1::PhysMem;

struct Config {
  double seconds = 5;
  int threads = 4;
  uint32_t bulk = 4096;
  double floor_seconds = 2;
};

std::unique_ptr<PhysMem::Stub> Connect(const std::string& target, int i) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per client thread
  args.SetInt("physmem.bench.channel", i);
  return PhysMem::NewStub(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

uint64_t NewLease(PhysMem::Stub* stub) {
  grpc::ClientContext ctx;
  v1::CreateLeaseRequest r;
  r.set_ttl_ms(3600 * 1000);
  v1::CreateLeaseResponse resp;
  if (!stub->CreateLease(&ctx, r, &resp).ok()) std::abort();
  return resp.lease_id();
}

struct Result {
  double pairs_per_s = 0;
  double units_per_s = 0;  // pages for bulk
  uint64_t errors = 0;
};

// Runs `body` (one pair; returns units done, or -1 on error) on every thread for cfg.seconds.
Result Run(const Config& cfg, const std::string& target, std::function<int64_t(PhysMem::Stub*, uint64_t)> body) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> pairs{0}, units{0}, errors{0};
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int t = 0; t < cfg.threads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = Connect(target, t);
      const uint64_t lease = NewLease(stub.get());
      for (int i = 0; i < 50; ++i) body(stub.get(), lease);  // warm up the connection
      ++ready;
      while (ready.load() < cfg.threads) std::this_thread::yield();
      uint64_t p = 0, u = 0, e = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const int64_t n = body(stub.get(), lease);
        if (n < 0) {
          ++e;
        } else {
          ++p;
          u += n;
        }
      }
      pairs += p;
      units += u;
      errors += e;
    });
  }
  while (ready.load() < cfg.threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(cfg.seconds));
  stop = true;
  for (auto& th : threads) th.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Result{pairs / secs, units / secs, errors.load()};
}

int64_t NopPair(PhysMem::Stub* stub, uint64_t) {
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext ctx;
    v1::NopResponse resp;
    if (!stub->Nop(&ctx, v1::NopRequest(), &resp).ok()) return -1;
  }
  return 1;
}

int64_t AllocFreePair(PhysMem::Stub* stub, uint64_t lease) {
  v1::AllocPagesRequest a;
  a.set_lease_id(lease);
  a.set_gfp_mask(0xcc0);  // GFP_KERNEL
  v1::Allocation got;
  {
    grpc::ClientContext ctx;
    if (!stub->AllocPages(&ctx, a, &got).ok()) return -1;
  }
  v1::FreePagesRequest f;
  f.set_lease_id(lease);
  f.set_pfn(got.pfn());
  v1::FreePagesResponse fr;
  grpc::ClientContext ctx;
  return stub->FreePages(&ctx, f, &fr).ok() ? 1 : -1;
}

// AllocPagesBulk alone. Its pages go back by revoking the lease every 64 Ki pages (one call that
// frees them all); that call's time is counted too, so the rate is conservative.
int64_t BulkAlloc(PhysMem::Stub* stub, uint64_t* lease, uint64_t* held, uint32_t n) {
  if (*held + n > (64u << 10)) {
    grpc::ClientContext ctx;
    v1::RevokeLeaseRequest r;
    r.set_lease_id(*lease);
    v1::RevokeLeaseResponse resp;
    if (!stub->RevokeLease(&ctx, r, &resp).ok()) return -1;
    *lease = NewLease(stub);
    *held = 0;
  }
  v1::AllocPagesBulkRequest a;
  a.set_lease_id(*lease);
  a.set_gfp_mask(0xcc0);
  a.set_count(n);
  v1::AllocPagesBulkResponse got;
  grpc::ClientContext ctx;
  if (!stub->AllocPagesBulk(&ctx, a, &got).ok()) return -1;
  *held += got.pfn_size();
  return got.pfn_size();
}

// ---- the floor: a trivial server and a closed-loop async client ----

// Nop alone, answered at once: what any gRPC callback server built from this proto costs.
class TrivialService final : public PhysMem::CallbackService {
  grpc::ServerUnaryReactor* Nop(grpc::CallbackServerContext* ctx, const v1::NopRequest*, v1::NopResponse*) override {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

enum class Calls { kNop, kAllocFree };

struct FloorResult {
  double calls_per_s = 0;
  double p50_us = 0, p99_us = 0;
  uint64_t errors = 0;
};

// `depth` calls kept in flight for `seconds`, slot i on connection i % 2; each slot issues its
// next call from the previous one's completion (gRPC's callback API: no client thread per call).
// kAllocFree chains AllocPages then FreePages of that page; both count as calls.
class ClosedLoop {
 public:
  ClosedLoop(const std::string& target, int depth, Calls calls) : calls_(calls) {
    stubs_.push_back(Connect(target, 100));
    stubs_.push_back(Connect(target, 101));
    if (calls_ == Calls::kAllocFree) {
      for (auto& stub : stubs_) leases_.push_back(NewLease(stub.get()));
    }
    slots_.resize(depth);
    for (int i = 0; i < depth; ++i) slots_[i].stub = i % 2;
  }

  FloorResult Run(double seconds) {
    // Warm-up: every slot completes one call before the clock starts.
    Start(/*record=*/false);
    Drain();
    for (Slot& s : slots_) s.latencies_ns.clear();
    completed_ = 0;
    stop_ = false;
    const auto t0 = std::chrono::steady_clock::now();
    Start(/*record=*/true);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop_ = true;
    const uint64_t done = completed_.load();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Drain();
    std::vector<int64_t> all;
    for (const Slot& s : slots_) all.insert(all.end(), s.latencies_ns.begin(), s.latencies_ns.end());
    std::sort(all.begin(), all.end());
    FloorResult r;
    r.calls_per_s = done / secs;
    if (!all.empty()) {
      r.p50_us = all[all.size() / 2] / 1e3;
      r.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)] / 1e3;
    }
    r.errors = errors_.load();
    return r;
  }

 private:
  struct Slot {
    int stub = 0;
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::NopResponse nop;
    v1::AllocPagesRequest alloc;
    v1::Allocation got;
    v1::FreePagesRequest free;
    v1::FreePagesResponse freed;
    std::chrono::steady_clock::time_point sent;
    std::vector<int64_t> latencies_ns;  // touched only by this slot's own chain of completions
  };

  void Start(bool record) {
    {
      std::lock_guard<std::mutex> l(mu_);
      in_flight_ = static_cast<int>(slots_.size());
    }
    // The warm-up round is one call per slot: stop_ is set so no slot continues.
    if (!record) stop_ = true;
    for (Slot& s : slots_) Issue(&s, record);
  }

  void Issue(Slot* s, bool record) {
    s->ctx = std::make_unique<grpc::ClientContext>();
    s->sent = std::chrono::steady_clock::now();
    PhysMem::Stub* stub = stubs_[s->stub].get();
    if (calls_ == Calls::kNop) {
      stub->async()->Nop(s->ctx.get(), &nop_req_, &s->nop, [this, s, record](grpc::Status st) { Done(s, st, record); });
      return;
    }
    s->alloc.set_lease_id(leases_[s->stub]);
    s->alloc.set_gfp_mask(0xcc0);  // GFP_KERNEL
    stub->async()->AllocPages(s->ctx.get(), &s->alloc, &s->got, [this, s, stub, record](grpc::Status st) {
      Record(s, st, record);
      if (!st.ok()) return Done(s, st, record, /*recorded=*/true);
      s->ctx = std::make_unique<grpc::ClientContext>();
      s->sent = std::chrono::steady_clock::now();
      s->free.set_lease_id(leases_[s->stub]);
      s->free.set_pfn(s->got.pfn());
      stub->async()->FreePages(s->ctx.get(), &s->free, &s->freed,
                               [this, s, record](grpc::Status st2) { Done(s, st2, record); });
    });
  }

  void Record(Slot* s, const grpc::Status& st, bool record) {
    if (!st.ok()) ++errors_;
    if (!record) return;
    s->latencies_ns.push_back(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - s->sent).count());
    ++completed_;
  }

  void Done(Slot* s, const grpc::Status& st, bool record, bool recorded = false) {
    if (!recorded) Record(s, st, record);
    if (!stop_.load()) return Issue(s, record);
    std::lock_guard<std::mutex> l(mu_);
    if (--in_flight_ == 0) cv_.notify_all();
  }

  void Drain() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return in_flight_ == 0; });
  }

  const Calls calls_;
  std::vector<std::unique_ptr<PhysMem::Stub>> stubs_;
  std::vector<uint64_t> leases_;
  std::vector<Slot> slots_;
  const v1::NopRequest nop_req_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> completed_{0}, errors_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  int in_flight_ = 0;
};

// The floor table: for each depth, interleaved rounds of the trivial server's Nop, physmemd's Nop
// and physmemd's AllocPages + FreePages; medians, and each against the trivial Nop.
void FloorTable(const Config& cfg, const std::string& physmemd, const std::string& trivial,
                const std::string& trivial_fd) {
  constexpr int kRounds = 3;
  std::printf("\nthe floor: closed loop, N calls in flight over 2 connections, %.1f s each, median of %d rounds\n\n",
              cfg.floor_seconds, kRounds);
  std::printf("| in flight | server: calls | calls/s | p50 µs | p99 µs | vs trivial Nop |\n|---|---|---|---|---|---|\n");
  uint64_t errors = 0;
  for (int depth : {1, 16, 64}) {
    struct Row {
      const char* name;
      std::string target;
      Calls calls;
      std::vector<FloorResult> runs;
    };
    std::vector<Row> rows = {{"trivial: Nop", trivial, Calls::kNop, {}},
                             {"trivial, connections accepted as physmemd does: Nop", trivial_fd, Calls::kNop, {}},
                             {"physmemd: Nop", physmemd, Calls::kNop, {}},
                             {"physmemd: AllocPages + FreePages", physmemd, Calls::kAllocFree, {}}};
    for (int r = 0; r < kRounds; ++r) {
      for (Row& row : rows) {
        ClosedLoop loop(row.target, depth, row.calls);
        row.runs.push_back(loop.Run(cfg.floor_seconds));
        errors += row.runs.back().errors;
      }
    }
    auto median = [](std::vector<FloorResult> v) {
      std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.calls_per_s < b.calls_per_s; });
      return v[v.size() / 2];
    };
    const double base = median(rows[0].runs).calls_per_s;
    for (const Row& row : rows) {
      const FloorResult m = median(row.runs);
      std::printf("| %d | %s | %.0f | %.1f | %.1f | %.2f |\n", depth, row.name, m.calls_per_s, m.p50_us, m.p99_us,
                  m.calls_per_s / base);
    }
  }
  std::printf("\nfloor errors: %lu\n", static_cast<unsigned long>(errors));
}

int Main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    if (std::sscanf(argv[i], "--seconds=%lf", &cfg.seconds) == 1) continue;
    if (std::sscanf(argv[i], "--threads=%d", &cfg.threads) == 1) continue;
    if (std::sscanf(argv[i], "--bulk=%u", &cfg.bulk) == 1) continue;
    if (std::sscanf(argv[i], "--floor_seconds=%lf", &cfg.floor_seconds) == 1) continue;
    std::fprintf(stderr, "usage: rpc_bench [--seconds=5] [--threads=4] [--bulk=4096] [--floor_seconds=2]\n");
    return 2;
  }
  const std::string dir = std::filesystem::temp_directory_path() / ("rpc_bench." + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ServerOptions o;
  o.allocator.target = *BuiltinTarget("x86_64", uint64_t{2} << 30);
  o.allocator.arena_backing = ArenaOptions::Backing::kBest;
  o.unix_socket = dir + "/physmemd.sock";
  auto server = Server::BuildAndStart(o);
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  (*server)->allocator().arena().Prefault();
  const std::string target = "unix://" + o.unix_socket;

  std::printf("rpc_bench: %d client threads, %.1f s per workload, %d CPUs, arena %s\n", cfg.threads, cfg.seconds,
              static_cast<int>(std::thread::hardware_concurrency()),
              std::string(ArenaBackingName((*server)->allocator().arena().backing())).c_str());
  // Interleaved rounds, medians reported: this machine's noise drifts over seconds, and
  // alternating the workloads spreads the drift over both sides of the ratio.
  constexpr int kRounds = 3;
  std::vector<double> nop, af, bulk;
  uint64_t errors = 0;
  const uint32_t n = cfg.bulk;
  for (int r = 0; r < kRounds; ++r) {
    const Result a = Run(cfg, target, NopPair);
    const Result b = Run(cfg, target, AllocFreePair);
    const Result c = Run(cfg, target, [n](PhysMem::Stub* s, uint64_t l) {
      // Each thread's own lease and page count, replaced as BulkAlloc revokes it.
      thread_local uint64_t lease = 0, held = 0;
      if (lease == 0) lease = l;
      return BulkAlloc(s, &lease, &held, n);
    });
    nop.push_back(a.pairs_per_s);
    af.push_back(b.pairs_per_s);
    bulk.push_back(c.units_per_s);
    errors += a.errors + b.errors + c.errors;
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto spread = [](const std::vector<double>& v) {
    return 100.0 * (*std::max_element(v.begin(), v.end()) / *std::min_element(v.begin(), v.end()) - 1);
  };
  const double nop_m = median(nop), af_m = median(af), bulk_m = median(bulk);
  std::printf("\nmedian of %d interleaved rounds (spread = max/min - 1 over the rounds)\n\n", kRounds);
  std::printf("| workload | rate | µs per pair | vs Nop + Nop | spread |\n|---|---|---|---|---|\n");
  std::printf("| Nop + Nop | %.0f pairs/s | %.1f | 1.00 | %.0f%% |\n", nop_m, 1e6 / nop_m, spread(nop));
  std::printf("| AllocPages + FreePages (order 0) | %.0f pairs/s | %.1f | %.2f (%+.1f%% per call) | %.0f%% |\n", af_m,
              1e6 / af_m, nop_m / af_m, 100.0 * (nop_m / af_m - 1), spread(af));
  std::printf("| AllocPagesBulk(%u) | %.2f M pages/s | | | %.0f%% |\n", n, bulk_m / 1e6, spread(bulk));
  std::printf("\nerrors: %lu\n", static_cast<unsigned long>(errors));

  TrivialService trivial_service;
  grpc::ServerBuilder builder;
  const std::string trivial = "unix://" + dir + "/trivial.sock";
  builder.AddListeningPort(trivial, grpc::InsecureServerCredentials());
  builder.RegisterService(&trivial_service);
  std::unique_ptr<grpc::Server> trivial_server = builder.BuildAndStart();
  if (trivial_server == nullptr) {
    std::fprintf(stderr, "trivial server did not start\n");
    return 1;
  }
  // The same trivial server, its Unix connections accepted the way physmemd accepts them (our
  // listener reads the peer's uid, then hands the fd to gRPC): what that path costs by itself.
  PeerRegistry peers;
  UnixListener fd_listener(dir + "/trivial-fd.sock", &peers);
  if (absl::Status st = fd_listener.Start(trivial_server.get()); !st.ok()) {
    std::fprintf(stderr, "trivial fd listener: %s\n", st.ToString().c_str());
    return 1;
  }
  FloorTable(cfg, target, trivial, "unix://" + dir + "/trivial-fd.sock");
  fd_listener.Stop();
  trivial_server->Shutdown(std::chrono::system_clock::now());
  (*server)->Shutdown();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) { return physmem::Main(argc, argv); }
