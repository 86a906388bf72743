// Page cache benchmark (not a test): what an alloc+free pair costs through the client-side page
// cache (clients/page_cache.h) on one and two threads, against the same pair as two RPCs
// (AllocPages + FreePages) measured in the same run.
//
// Starts the real server (server/server.h) on a Unix socket in this process (an x86_64 target of
// 2 GiB, anonymous arena), one lease, one PageCache (batch 64, high 256), then per round:
//   cached x1   one thread: Alloc(GFP_KERNEL, 0) + Free, for --seconds
//   cached x2   two threads, each its own loop on the same cache, for --seconds
//   rpc         one thread: AllocPages + FreePages (order 0) through Lease, for --seconds
//   control     an arithmetic loop on one and on two threads (did the run have two cores?)
// and prints the medians over the rounds: ns per pair, pairs/s, the two-thread speed-up and the
// ratio to the RPC pair. Goals (issue #15 part 3): ≤ 50 ns per pair, ≥ 1.8x with two threads.
//
//   ./build-bench/page_cache_bench [--seconds=1] [--rounds=5]
// On a shared machine, run it ahead of the other tenants as scripts/bench.sh does:
//   setsid --wait sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' sh
//       ./build-bench/page_cache_bench
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "clients/page_cache.h"
#include "clients/physmem_client.h"
#include "server/server.h"
#include "tests/bench/bench_stats.h"

namespace physmem {
namespace {

using client::CachedPage;
using client::PageCache;

struct Config {
  double seconds = 1;
  int rounds = 5;
};

// `threads` loops of alloc+free on `cache` for `seconds`: pairs per second over all threads.
double CachedRate(PageCache& cache, int threads, double seconds, uint64_t* errors) {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::atomic<uint64_t> pairs{0}, errs{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      // Warm: this thread's list refilled once before the clock starts.
      for (int i = 0; i < 1000; ++i) {
        absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
        if (p.ok()) (void)cache.Free(*p);
      }
      ++ready;
      while (ready.load() < threads) std::this_thread::yield();
      uint64_t n = 0, e = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 1024; ++i) {  // the stop flag is read once per 1024 pairs
          absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
          if (!p.ok() || !cache.Free(*p).ok()) ++e;
        }
        n += 1024;
      }
      pairs += n;
      errs += e;
    });
  }
  while (ready.load() < threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : ts) th.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *errors += errs.load();
  return pairs.load() / secs;
}

// The control: `threads` loops of pure arithmetic. Its two-thread speed-up says whether the run
// had two cores to itself; a cache figure below 1.8x next to a control below ~1.9x measured the
// machine's other tenants, not the cache.
double SpinRate(int threads, double seconds) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> total{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      uint64_t n = 0, x = 1;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 1024; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
        n += 1024;
      }
      total += n + (x & 1);
    });
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : ts) th.join();
  return total.load() / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double RpcRate(client::Lease& lease, double seconds, uint64_t* errors) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto end = t0 + std::chrono::duration<double>(seconds);
  uint64_t n = 0;
  while (std::chrono::steady_clock::now() < end) {
    absl::StatusOr<client::PageHandle> p = lease.AllocPages("GFP_KERNEL", 0);
    if (!p.ok() || !p->Free().ok()) ++*errors;
    ++n;
  }
  return n / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int Main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    if (std::sscanf(argv[i], "--seconds=%lf", &cfg.seconds) == 1) continue;
    if (std::sscanf(argv[i], "--rounds=%d", &cfg.rounds) == 1 && cfg.rounds > 0) continue;
    std::fprintf(stderr, "usage: page_cache_bench [--seconds=1] [--rounds=5]\n");
    return 2;
  }
  const std::string dir = std::filesystem::temp_directory_path() / ("page_cache_bench." + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ServerOptions o;
  o.allocator.target = *BuiltinTarget("x86_64", uint64_t{2} << 30);
  o.unix_socket = dir + "/physmemd.sock";
  auto server = Server::BuildAndStart(o);
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  (*server)->allocator().arena().Prefault();
  client::ClientOptions co;
  co.target = "unix://" + o.unix_socket;
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Connect(co);
  if (!c.ok()) {
    std::fprintf(stderr, "connect: %s\n", c.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<client::Lease>> lease = (*c)->CreateLease({.ttl_ms = 3600 * 1000});
  if (!lease.ok()) {
    std::fprintf(stderr, "lease: %s\n", lease.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<PageCache>> cache = PageCache::Create(**lease, {});
  if (!cache.ok()) {
    std::fprintf(stderr, "cache: %s\n", cache.status().ToString().c_str());
    return 1;
  }
  std::printf("page_cache_bench: %.1f s per workload, %d rounds, %d CPUs\n", cfg.seconds, cfg.rounds,
              static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<double> one, two, rpc, spin_ratio;
  uint64_t errors = 0;
  for (int r = 0; r < cfg.rounds; ++r) {
    one.push_back(CachedRate(**cache, 1, cfg.seconds, &errors));
    two.push_back(CachedRate(**cache, 2, cfg.seconds, &errors));
    rpc.push_back(RpcRate(**lease, cfg.seconds, &errors));
    const double spin1 = SpinRate(1, cfg.seconds / 4);
    spin_ratio.push_back(SpinRate(2, cfg.seconds / 4) / spin1);
  }
  const double one_m = Median(one), two_m = Median(two), rpc_m = Median(rpc);
  std::printf("\nmedian of %d interleaved rounds (spread = max/min - 1 over the rounds)\n\n", cfg.rounds);
  std::printf("| alloc+free pair (order 0, GFP_KERNEL) | pairs/s | ns per pair | vs RPC pair | spread |\n");
  std::printf("|---|---|---|---|---|\n");
  std::printf("| AllocPages + FreePages RPCs, 1 thread | %.0f | %.0f | 1 | %.0f%% |\n", rpc_m, 1e9 / rpc_m, Spread(rpc));
  std::printf("| page cache, 1 thread | %.0f | %.1f | %.0fx | %.0f%% |\n", one_m, 1e9 / one_m, one_m / rpc_m,
              Spread(one));
  std::printf("| page cache, 2 threads | %.0f | %.1f per thread | %.0fx | %.0f%% |\n", two_m, 2e9 / two_m,
              two_m / rpc_m, Spread(two));
  std::printf("\ntwo threads / one thread: %.2fx (goal >= 1.8x); one thread: %.1f ns per pair (goal <= 50 ns)\n",
              two_m / one_m, 1e9 / one_m);
  std::printf("control (arithmetic loop) two threads / one thread: %.2fx\n", Median(spin_ratio));
  const client::PageCacheStats s = (*cache)->stats();
  std::printf("cache: %lu hits, %lu refills, %lu drains; errors: %lu\n", static_cast<unsigned long>(s.hits),
              static_cast<unsigned long>(s.refills), static_cast<unsigned long>(s.drains),
              static_cast<unsigned long>(errors));
  cache->reset();
  lease->reset();
  (*server)->Shutdown();
  std::filesystem::remove_all(dir);
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) { return physmem::Main(argc, argv); }
