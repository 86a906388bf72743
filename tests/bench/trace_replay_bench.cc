// Benchmark (not a test): replay speed of a kernel page-allocation trace in-process
// (trace/replayer.h), on the committed compiler recording tests/trace/testdata/compile_sample.txt.gz
// or --trace=FILE. Issue #12's goal: at least 10 M events per second.
//
//   build/trace_replay_bench --benchmark_repetitions=5 [--trace=FILE]
//
// Reported per benchmark (Google Benchmark counters):
//   ops_per_s          replayed allocations + frees per second of replay (manual time: the op
//                      loop only, not PageAllocator::Create)
//   events_per_s       every page event of the trace (batched frees, skipped frees included)
//                      over the same time: the rate at which the trace is consumed
//   x_trace_rate       ops_per_s / the trace's own rate of the same ops (baseline from the trace)
// and, for comparison in the same run, the text reader's speed (BM_ReadTrace, lines per second),
// and the replay over gRPC (trace/daemon_replayer.h) against a physmemd server started in this
// process on a Unix socket, at full speed, with bulk calls and without (BM_ReplayOnDaemon): its
// x_trace_rate says how many times faster than the kernel ran a live replay can go.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "allocator/target.h"
#include "benchmark/benchmark.h"
#include "server/server.h"
#include "trace/daemon_replayer.h"
#include "trace/replay_plan.h"
#include "trace/replayer.h"
#include "trace/trace_reader.h"

namespace physmem::trace {
namespace {

std::string g_trace_path = std::string(PHYSMEM_SOURCE_DIR) + "/tests/trace/testdata/compile_sample.txt.gz";

const Trace& TheTrace() {
  static const Trace* trace = [] {
    absl::StatusOr<Trace> t = ReadTraceFile(g_trace_path);
    if (!t.ok()) {
      std::fprintf(stderr, "trace_replay_bench: %s\n", std::string(t.status().message()).c_str());
      std::exit(1);
    }
    return new Trace(*std::move(t));
  }();
  return *trace;
}

const ReplayPlan& ThePlan() {
  static const ReplayPlan* plan = new ReplayPlan(BuildReplayPlan(TheTrace()));
  return *plan;
}

void BM_Replay(benchmark::State& state, bool pcp, bool per_cpu) {
  const ReplayPlan& plan = ThePlan();
  ReplayConfig config;
  config.allocator.target = *BuiltinTarget("x86_64", uint64_t{4096} << 20);
  config.allocator.arena_backing = ArenaOptions::Backing::kOrdinary;
  config.allocator.pcp_enabled = pcp;
  config.per_cpu_threads = per_cpu;
  config.samples = 1;
  double wall = 0;
  for (auto _ : state) {
    absl::StatusOr<ReplayResult> r = Replay(plan, config);
    if (!r.ok() || r->counts.free_errors != 0) {
      state.SkipWithError("replay failed");
      return;
    }
    state.SetIterationTime(r->wall_seconds);
    wall += r->wall_seconds;
  }
  const double iterations = static_cast<double>(state.iterations());
  const double ops_per_s = plan.ops.size() * iterations / wall;
  state.counters["ops_per_s"] = ops_per_s;
  state.counters["events_per_s"] = TheTrace().stats.page_events() * iterations / wall;
  state.counters["x_trace_rate"] = plan.trace_seconds > 0 ? ops_per_s / (plan.ops.size() / plan.trace_seconds) : 0;
  state.SetLabel(std::to_string(plan.ops.size()) + " ops of " + std::to_string(TheTrace().stats.page_events()) +
                 " events, " + std::to_string(plan.nr_cpus) + " CPUs");
}
BENCHMARK_CAPTURE(BM_Replay, pcp_one_thread, true, false)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Replay, pcp_off_one_thread, false, false)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Replay, pcp_per_cpu_threads, true, true)->UseManualTime()->Unit(benchmark::kMillisecond);

// One physmemd server for the gRPC benchmarks (x86_64 4 GiB, as in-process), on a Unix socket in
// a directory of its own, removed at exit.
class BenchServer {
 public:
  BenchServer() : dir_(std::filesystem::temp_directory_path() / ("trace_replay_bench." + std::to_string(getpid()))) {
    std::filesystem::create_directories(dir_);
    ServerOptions o;
    o.allocator.target = *BuiltinTarget("x86_64", uint64_t{4096} << 20);
    o.allocator.arena_backing = ArenaOptions::Backing::kOrdinary;
    o.unix_socket = dir_ + "/physmemd.sock";
    o.journal = "off";
    absl::StatusOr<std::unique_ptr<Server>> server = Server::BuildAndStart(o);
    if (!server.ok()) {
      std::fprintf(stderr, "trace_replay_bench: server: %s\n", server.status().ToString().c_str());
      std::exit(1);
    }
    server_ = *std::move(server);
    address_ = "unix://" + o.unix_socket;
  }
  ~BenchServer() {
    server_->Shutdown();
    std::filesystem::remove_all(dir_);
  }
  const std::string& address() const { return address_; }

 private:
  std::string dir_, address_;
  std::unique_ptr<Server> server_;
};

void BM_ReplayOnDaemon(benchmark::State& state, bool bulk) {
  static BenchServer* server = new BenchServer();  // shared by both variants; see main()
  const ReplayPlan& plan = ThePlan();
  DaemonReplayOptions o;
  o.address = server->address();
  o.pace.bulk = bulk;
  o.samples = 1;
  o.lease_ttl_ms = 60000;
  double wall = 0;
  for (auto _ : state) {
    absl::StatusOr<ReplayResult> r = ReplayOnDaemon(plan, o);
    if (!r.ok() || r->counts.free_errors != 0 || r->counts.alloc_failures != 0) {
      state.SkipWithError(r.ok() ? "refusals or refused frees" : std::string(r.status().message()).c_str());
      return;
    }
    state.SetIterationTime(r->wall_seconds);
    wall += r->wall_seconds;
  }
  const double iterations = static_cast<double>(state.iterations());
  const double ops_per_s = plan.ops.size() * iterations / wall;
  state.counters["ops_per_s"] = ops_per_s;
  state.counters["events_per_s"] = TheTrace().stats.page_events() * iterations / wall;
  state.counters["x_trace_rate"] = plan.trace_seconds > 0 ? ops_per_s / (plan.ops.size() / plan.trace_seconds) : 0;
}
BENCHMARK_CAPTURE(BM_ReplayOnDaemon, grpc_bulk, true)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReplayOnDaemon, grpc_one_call_per_op, false)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_ReadTrace(benchmark::State& state) {
  uint64_t lines = 0;
  for (auto _ : state) {
    absl::StatusOr<Trace> t = ReadTraceFile(g_trace_path);
    if (!t.ok()) {
      state.SkipWithError("read failed");
      return;
    }
    lines += t->stats.lines;
  }
  state.counters["lines_per_s"] = benchmark::Counter(static_cast<double>(lines), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ReadTrace)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace physmem::trace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--trace=", 8) == 0) {
      physmem::trace::g_trace_path = argv[i] + 8;
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      --argc;
      --i;
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
