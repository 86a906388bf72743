// RPC benchmark (not a test): what the allocator adds to a gRPC call, and bulk throughput.
//
// Starts the real server (server/server.h) on a Unix socket in this process, then drives it from
// client threads, each with its own connection, for a fixed time per workload:
//   nop          Nop + Nop                         the gRPC stack's own cost of two unary calls
//   alloc_free   AllocPages(order 0) + FreePages   the same two calls doing allocator work
//   bulk         AllocPagesBulk(N) alone, pages per second (leases revoked every 64 Ki pages)
// and prints pairs/s, µs per pair and the ratio alloc_free / nop measured in the same run.
//
//   ./build-bench/rpc_bench [--seconds=5] [--threads=4] [--bulk=4096]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "physmem/v1/physmem.grpc.pb.h"
#include "server/server.h"

namespace physmem {
namespace {

using v1::PhysMem;

struct Config {
  double seconds = 5;
  int threads = 4;
  uint32_t bulk = 4096;
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

int Main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    if (std::sscanf(argv[i], "--seconds=%lf", &cfg.seconds) == 1) continue;
    if (std::sscanf(argv[i], "--threads=%d", &cfg.threads) == 1) continue;
    if (std::sscanf(argv[i], "--bulk=%u", &cfg.bulk) == 1) continue;
    std::fprintf(stderr, "usage: rpc_bench [--seconds=5] [--threads=4] [--bulk=4096]\n");
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
  (*server)->Shutdown();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) { return physmem::Main(argc, argv); }
