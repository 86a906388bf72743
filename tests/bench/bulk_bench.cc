// Bulk benchmark (not a test): AllocPagesBulk(N) followed by FreePagesBulk of the same pages,
// through the daemon, in pages per second (a page counts once: allocated and freed again).
//
// Starts the real server (server/server.h) in this process on a Unix socket, an x86_64 target of
// 512 MiB, twice: with an anonymous arena (no journal) and with a file-backed arena in /dev/shm
// (journal on, every allocation and free recorded before the reply). Each client thread has its
// own connection and lease and loops: AllocPagesBulk(count = N, GFP_KERNEL), then FreePagesBulk
// of every pfn it got. Two forms of the same calls, measured in the same run: `pages`, the per-page
// packed arrays (every client before issue #15), and `runs`, AllocPagesBulkRequest.runs with the
// reply's runs passed back to FreePagesBulk as they are (what the C++ and Python clients send
// now). Rounds interleave forms and daemons; medians reported, with the runs/pages ratio. Goal
// (issue #15 part 1): 10 M pages/s.
//
//   ./build-bench/bulk_bench [--seconds=2] [--rounds=3] [--threads=2] [--bulk=4096] [--journal=both|off|on]
//                            [--form=both|pages|runs]
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/server.h"
#include "tests/bench/bench_stats.h"

namespace physmem {
namespace {

using v1::PhysMem;

struct Config {
  double seconds = 2;
  int rounds = 3;
  int threads = 2;
  uint32_t bulk = 4096;
  std::string journal = "both";
  std::string form = "both";
};

std::unique_ptr<PhysMem::Stub> Connect(const std::string& target, int i) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per client thread
  args.SetInt("physmem.bench.channel", i);
  args.SetMaxReceiveMessageSize(64 << 20);
  return PhysMem::NewStub(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

// One AllocPagesBulk + FreePagesBulk of its pages; pages done, or -1 on an error. `runs`: the
// run form both ways.
int64_t BulkPair(PhysMem::Stub* stub, uint64_t lease, uint32_t n, bool runs, uint64_t* nr_runs) {
  v1::AllocPagesBulkRequest a;
  a.set_lease_id(lease);
  a.set_gfp_mask(0xcc0);  // GFP_KERNEL
  a.set_count(n);
  a.set_runs(runs);
  v1::AllocPagesBulkResponse got;
  {
    grpc::ClientContext ctx;
    if (!stub->AllocPagesBulk(&ctx, a, &got).ok()) return -1;
  }
  v1::FreePagesBulkRequest f;
  f.set_lease_id(lease);
  uint64_t pages = got.pfn_size();
  if (runs) {
    pages = 0;
    for (const v1::PageRun& r : got.run()) pages += r.count();
    *nr_runs += got.run_size();
    *f.mutable_run() = got.run();
  } else {
    *f.mutable_pfn() = got.pfn();
  }
  v1::FreePagesBulkResponse freed;
  grpc::ClientContext ctx;
  if (!stub->FreePagesBulk(&ctx, f, &freed).ok() || freed.pages_freed() != pages) return -1;
  return static_cast<int64_t>(pages);
}

// Pages per second over the round; *pages_per_run (runs form) the mean run length seen.
double Run(const Config& cfg, const std::string& target, bool runs, uint64_t* errors, double* pages_per_run) {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::atomic<uint64_t> pages{0}, errs{0}, nr_runs{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < cfg.threads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = Connect(target, t);
      uint64_t lease = 0;
      {
        grpc::ClientContext ctx;
        v1::CreateLeaseRequest r;
        r.set_ttl_ms(3600 * 1000);
        v1::CreateLeaseResponse resp;
        if (!stub->CreateLease(&ctx, r, &resp).ok()) std::abort();
        lease = resp.lease_id();
      }
      uint64_t p = 0, e = 0, k = 0;
      for (int i = 0; i < 5; ++i) BulkPair(stub.get(), lease, cfg.bulk, runs, &k);  // warm up
      k = 0;
      ++ready;
      while (ready.load() < cfg.threads) std::this_thread::yield();
      while (!stop.load(std::memory_order_relaxed)) {
        const int64_t n = BulkPair(stub.get(), lease, cfg.bulk, runs, &k);
        if (n < 0) {
          ++e;
        } else {
          p += n;
        }
      }
      pages += p;
      errs += e;
      nr_runs += k;
      grpc::ClientContext ctx;
      v1::RevokeLeaseRequest r;
      r.set_lease_id(lease);
      v1::RevokeLeaseResponse resp;
      (void)stub->RevokeLease(&ctx, r, &resp);
    });
  }
  while (ready.load() < cfg.threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(cfg.seconds));
  stop = true;
  for (auto& th : threads) th.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *errors += errs.load();
  if (nr_runs.load() != 0) *pages_per_run = static_cast<double>(pages.load()) / static_cast<double>(nr_runs.load());
  return pages.load() / secs;
}

struct Daemon {
  std::unique_ptr<Server> server;
  std::string target;
};

Daemon Start(const std::string& dir, const std::string& name, bool journal) {
  ServerOptions o;
  o.allocator.target = *BuiltinTarget("x86_64", uint64_t{512} << 20);
  o.unix_socket = dir + "/" + name + ".sock";
  if (journal) {
    o.allocator.arena_path = "/dev/shm/bulk_bench-" + std::to_string(getpid());
    o.journal = "on";
  } else {
    o.allocator.arena_backing = ArenaOptions::Backing::kBest;
    o.journal = "off";
  }
  absl::StatusOr<std::unique_ptr<Server>> s = Server::BuildAndStart(o);
  if (!s.ok()) {
    std::fprintf(stderr, "server (%s): %s\n", name.c_str(), s.status().ToString().c_str());
    std::exit(1);
  }
  // No Prefault(): the bulk path never touches page contents (an anonymous arena's pages start
  // zeroed and stay with one identity here), and faulting in the arena costs seconds on a VM.
  return Daemon{*std::move(s), "unix://" + o.unix_socket};
}

void RemoveShmFiles() {
  const std::string prefix = "/dev/shm/bulk_bench-" + std::to_string(getpid());
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (e.path().string().rfind(prefix, 0) == 0) std::filesystem::remove(e.path(), ec);
  }
}

int Main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    char journal[16] = {};
    if (std::sscanf(argv[i], "--seconds=%lf", &cfg.seconds) == 1) continue;
    if (std::sscanf(argv[i], "--rounds=%d", &cfg.rounds) == 1 && cfg.rounds > 0) continue;
    if (std::sscanf(argv[i], "--threads=%d", &cfg.threads) == 1 && cfg.threads > 0) continue;
    if (std::sscanf(argv[i], "--bulk=%u", &cfg.bulk) == 1 && cfg.bulk > 0) continue;
    if (std::sscanf(argv[i], "--journal=%15s", journal) == 1 &&
        (!std::strcmp(journal, "both") || !std::strcmp(journal, "off") || !std::strcmp(journal, "on"))) {
      cfg.journal = journal;
      continue;
    }
    char form[16] = {};
    if (std::sscanf(argv[i], "--form=%15s", form) == 1 &&
        (!std::strcmp(form, "both") || !std::strcmp(form, "pages") || !std::strcmp(form, "runs"))) {
      cfg.form = form;
      continue;
    }
    std::fprintf(stderr,
                 "usage: bulk_bench [--seconds=2] [--rounds=3] [--threads=2] [--bulk=4096] [--journal=both|off|on] "
                 "[--form=both|pages|runs]\n");
    return 2;
  }
  const std::string dir = std::filesystem::temp_directory_path() / ("bulk_bench." + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const bool off = cfg.journal != "on", on = cfg.journal != "off";
  const bool pages_form = cfg.form != "runs", runs_form = cfg.form != "pages";
  std::printf("bulk_bench: AllocPagesBulk(%u) + FreePagesBulk, %d client threads, %.1f s per round, %d CPUs\n",
              cfg.bulk, cfg.threads, cfg.seconds, static_cast<int>(std::thread::hardware_concurrency()));
  // rate[journal on][runs form]
  std::vector<double> rate[2][2];
  double pages_per_run[2] = {0, 0};
  uint64_t errors = 0;
  {
    Daemon daemons[2];
    if (off) daemons[0] = Start(dir, "plain", false);
    if (on) daemons[1] = Start(dir, "journaled", true);
    for (int r = 0; r < cfg.rounds; ++r) {
      for (int j = 0; j < 2; ++j) {
        if (!daemons[j].server) continue;
        if (pages_form) rate[j][0].push_back(Run(cfg, daemons[j].target, false, &errors, nullptr));
        if (runs_form) rate[j][1].push_back(Run(cfg, daemons[j].target, true, &errors, &pages_per_run[j]));
      }
    }
    for (Daemon& d : daemons) {
      if (d.server) d.server->Shutdown();
    }
  }
  RemoveShmFiles();
  std::filesystem::remove_all(dir);
  std::printf("\nmedian of %d interleaved rounds (spread = max/min - 1)\n\n", cfg.rounds);
  std::printf("| AllocPagesBulk(%u) + FreePagesBulk | pages/s | vs goal 10 M | spread | vs pages form |\n"
              "|---|---|---|---|---|\n",
              cfg.bulk);
  const char* what[2] = {"journal off (anonymous arena)", "journal on (file-backed arena in /dev/shm)"};
  for (int j = 0; j < 2; ++j) {
    for (int f = 0; f < 2; ++f) {
      const std::vector<double>& v = rate[j][f];
      if (v.empty()) continue;
      const std::string ratio =
          f == 1 && !rate[j][0].empty() ? absl::StrFormat("%.2fx", Median(v) / Median(rate[j][0])) : "1.00";
      const std::string form = f == 0 ? "pages (per-page arrays)"
                                      : absl::StrFormat("runs (%.0f pages a run)", pages_per_run[j]);
      std::printf("| %s, %s | %.2f M | %.2f | %.0f%% | %s |\n", what[j], form.c_str(), Median(v) / 1e6,
                  Median(v) / 1e7, Spread(v), ratio.c_str());
    }
  }
  std::printf("\nerrors: %lu\n", static_cast<unsigned long>(errors));
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) { return physmem::Main(argc, argv); }
