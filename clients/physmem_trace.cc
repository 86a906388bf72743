// physmem_trace: record a real kernel's page-allocation stream, replay it on emulated machines,
// and compare configurations side by side (issue #12; docs/trace.md).
//
//   physmem_trace record --seconds=5 --out=trace.txt.gz           (root: tracefs)
//   physmem_trace replay --trace=trace.txt.gz --mem_mb=2048 [--json=report.json]
//   physmem_trace compare --trace=trace.txt.gz name=small,mem_mb=512 name=big,mem_mb=4096,pcp=off
//   physmem_trace replay --trace=trace.txt.gz --daemon=unix:///run/physmemd.sock --pace=1
//
// Exit status: 0 done; 1 usage or configuration error; 2 record: not root; 3 record: no tracefs;
// 4 record: a required kmem event is missing on this kernel; 5 record: the kernel lost events
// (the file is complete otherwise and marks where, with "CPU:N [LOST M EVENTS]" lines);
// 6 the trace cannot be read (missing, corrupt gzip, or a malformed line with --strict), or
// record's output cannot be created or written; 7 record: a tracefs setting could not be put back (named);
// 8 --daemon: the daemon cannot be reached, or the replay's lease ended under it (named);
// 130 record interrupted (Ctrl-C / SIGTERM; the file holds what was read, tracefs restored).
#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "allocator/page_allocator.h"
#include "allocator/target.h"
#include "picture/map_sequence.h"
#include "clients/physmem_client.h"
#include "server/version.h"
#include "trace/daemon_replayer.h"
#include "trace/replay_pacer.h"
#include "trace/replay_plan.h"
#include "trace/replay_report.h"
#include "trace/replayer.h"
#include "trace/trace_reader.h"
#include "trace/tracefs.h"

ABSL_FLAG(double, seconds, 5, "record: how long to read the kernel's stream, in seconds");
ABSL_FLAG(std::string, out, "", "record: output file; a name ending in .gz is gzip-compressed");
ABSL_FLAG(std::string, tracefs, "", "record: tracefs directory (default /sys/kernel/tracing, mounted if needed)");
ABSL_FLAG(uint32_t, buffer_kb, 8192,
          "record: per-CPU ring buffer size in KiB while recording, restored afterwards (0: leave as is)");
ABSL_FLAG(std::string, trace, "", "replay/compare: the trace (ftrace or perf script text, plain or .gz)");
ABSL_FLAG(bool, strict, false, "replay/compare: refuse the trace at its first malformed line (default: count and skip)");
ABSL_FLAG(std::string, target, "x86_64", "replay: emulated target, a built-in name (x86_64, i386, arm64, rpi4) or a .textproto file");
ABSL_FLAG(uint64_t, mem_mb, 2048, "replay: emulated RAM in MiB (built-in targets)");
ABSL_FLAG(uint64_t, min_free_kbytes, 0, "replay: vm.min_free_kbytes (0: the kernel's formula)");
ABSL_FLAG(bool, pcp, true, "replay: per-CPU page lists on");
ABSL_FLAG(bool, thread_pages, false,
          "replay: per-thread order-0 caches in front of the per-CPU lists (PageAllocatorOptions::thread_pages)");
ABSL_FLAG(bool, page_group_by_mobility, true,
          "replay: mobility grouping (migratetypes, fallbacks); false = the kernel's page_group_by_mobility_disabled");
ABSL_FLAG(bool, per_cpu, false, "replay: one pinned thread per traced CPU instead of one thread for all");
ABSL_FLAG(bool, zero_pages, false, "replay: honour __GFP_ZERO (memset each page; slow, and contents are not measured)");
ABSL_FLAG(int32_t, samples, 16, "replay: fragmentation snapshots over the replay");
ABSL_FLAG(std::string, daemon, "",
          "replay/compare: replay over gRPC against this running physmemd (unix:/path, /path or host:port; "
          "'default': where physmemctl looks, $PHYSMEM_TARGET first) under one lease, instead of in-process; "
          "the daemon's own target and settings apply");
ABSL_FLAG(double, pace, 0,
          "--daemon: 0 = full speed; else the trace's own rate times this factor (1 = as the kernel ran, 2 = twice as fast)");
ABSL_FLAG(int64_t, lease_ttl_ms, 10000, "--daemon: the replay's lease TTL (kept alive while the replay runs)");
ABSL_FLAG(bool, keep_lease, false,
          "--daemon: leave the lease holding what the trace left allocated (it expires one TTL later) instead of revoking it");
ABSL_FLAG(uint32_t, max_batch, 4096, "--daemon: most ops in one AllocPagesBulk / FreePagesBulk (<= the daemon's --max_bulk_pages)");
ABSL_FLAG(bool, bulk, true, "--daemon: bulk calls for consecutive order-0 allocations of one mask and consecutive frees");
ABSL_FLAG(int64_t, alloc_timeout_ms, 10000,
          "--daemon: deadline of each allocating call (a mask that may sleep waits in the daemon for memory up to "
          "min(this, its --max_alloc_wait_ms))");
ABSL_FLAG(bool, wait_for_memory, false,
          "--daemon: send masks that may sleep as traced, so the daemon waits for memory before refusing "
          "(default: __GFP_NORETRY added, refusals at once as in-process)");
ABSL_FLAG(std::string, json, "", "replay/compare: also write the report as JSON to this file ('-': stdout, instead of text)");
ABSL_FLAG(uint64_t, map_every, 0,
          "replay/compare in-process: draw the arena every N ops and at the end, into --map_dir as "
          "<configuration>-<ops>.png (docs/physmemctl.md, the picture)");
ABSL_FLAG(std::string, map_dir, "", "--map_every: an existing directory for the pictures");

namespace physmem::trace {
namespace {

constexpr char kUsage[] = R"(physmem_trace: record kernel page-allocation traces and replay them on emulated machines.

  physmem_trace record --seconds=N --out=FILE[.gz] [--buffer_kb=K] [--tracefs=DIR]
  physmem_trace replay --trace=FILE [--target=x86_64] [--mem_mb=2048] [--min_free_kbytes=K]
                       [--pcp=true|false] [--page_group_by_mobility=true|false] [--per_cpu] [--strict]
                       [--json=FILE|-] [--map_every=N --map_dir=DIR]   (a picture of the arena every N ops)
  physmem_trace replay --trace=FILE --daemon=unix:/path/physmemd.sock [--pace=0|F] [--lease_ttl_ms=MS]
                       [--keep_lease] [--max_batch=N] [--bulk=true|false] [--json=FILE|-]
  physmem_trace compare --trace=FILE CONFIG CONFIG...
      CONFIG = comma-separated key=value: name, target, mem_mb, min_free_kbytes, pcp (on/off),
               mobility (on/off: page_group_by_mobility), per_cpu (on/off), daemon (a physmemd address:
               replay there over gRPC); unset keys take the flags' values.
      e.g. physmem_trace compare --trace=t.gz name=small,mem_mb=512 name=big,mem_mb=4096 name=nogroup,mobility=off

Exit: 0 ok, 1 usage, 2 not root, 3 no tracefs, 4 kmem events missing, 5 events lost,
      6 trace unreadable / output unwritable, 7 tracefs not restored, 8 daemon unreachable or lease lost,
      130 interrupted.
      docs/trace.md has the details.)";

enum Exit { kOk = 0, kBadUsage = 1, kNotRoot = 2, kNoTracefs = 3, kNoEvents = 4, kLost = 5, kUnreadable = 6, kRestoreFailed = 7,
            kDaemon = 8, kInterrupted = 130 };

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

int Fail(int code, absl::string_view message) {
  std::cerr << "physmem_trace: " << message << "\n";
  return code;
}

// ---- record ----------------------------------------------------------------------------------
int Record() {
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return Fail(kBadUsage, "record: --out=FILE is required (FILE.gz to compress)");
  if (!(seconds > 0 && seconds <= 24 * 3600)) return Fail(kBadUsage, "record: --seconds must be in (0, 86400]");
  if (geteuid() != 0) {
    return Fail(kNotRoot, "record: needs root to enable kernel tracepoints in tracefs; run it with sudo");
  }
  TracefsOptions options;
  if (!absl::GetFlag(FLAGS_tracefs).empty()) {
    options.dir = absl::GetFlag(FLAGS_tracefs);
    options.mount_if_needed = false;
  }
  options.buffer_size_kb = absl::GetFlag(FLAGS_buffer_kb);
  absl::StatusOr<std::unique_ptr<TracefsSession>> session = TracefsSession::Open(options);
  if (!session.ok()) {
    return Fail(session.status().code() == absl::StatusCode::kNotFound ? kNoEvents : kNoTracefs,
                absl::StrCat("record: ", session.status().message()));
  }
  if ((*session)->mounted_by_us()) std::cerr << "physmem_trace: mounted tracefs at " << options.dir << " (unmounted at the end)\n";

  // Ctrl-C, SIGTERM, SIGHUP: stop reading, then restore and write out what was read.
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);

  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(out.c_str(), absl::EndsWith(out, ".gz") ? "wb3" : "wbT"), gzclose);
  // Before Start(): a file that cannot be created changes nothing in tracefs (exit 6, as documented).
  if (file == nullptr) return Fail(kUnreadable, absl::StrCat("record: cannot create ", out, ": ", std::strerror(errno)));

  absl::StatusOr<std::vector<std::string>> enabled = (*session)->Start();
  // A setting tracefs refused: what Start() changed before it is put back by the session's
  // destructor (Restore(), then Unmount() if it mounted), before this returns.
  if (!enabled.ok()) return Fail(kNoTracefs, absl::StrCat("record: ", enabled.status().message(), " (tracefs restored)"));
  // After Start(): resizing the buffer resets the kernel's per-CPU counters.
  const TracefsLoss before = (*session)->Loss();
  // A counter below its start value was reset (someone resized the buffer): count from zero.
  auto since = [](uint64_t now, uint64_t start) { return now >= start ? now - start : now; };
  absl::StatusOr<int> pipe = (*session)->OpenPipe();
  if (!pipe.ok()) return Fail(kNoTracefs, absl::StrCat("record: ", pipe.status().message()));
  std::cerr << "physmem_trace: recording kmem:" << absl::StrJoin(*enabled, ", kmem:") << " for " << seconds << " s into "
            << out << "\n";

  std::string buffer(1 << 20, '\0');
  uint64_t lines = 0, bytes = 0, lost_lines = 0;
  bool write_failed = false;
  auto drain = [&](bool once) {
    while (true) {
      const ssize_t n = read(*pipe, buffer.data(), buffer.size());
      if (n <= 0) return;
      const std::string_view chunk(buffer.data(), static_cast<size_t>(n));
      for (char c : chunk) lines += c == '\n';
      for (size_t at = chunk.find("[LOST "); at != std::string_view::npos; at = chunk.find("[LOST ", at + 1)) ++lost_lines;
      bytes += chunk.size();
      if (gzwrite(file.get(), chunk.data(), static_cast<unsigned>(chunk.size())) != static_cast<int>(chunk.size())) {
        write_failed = true;
      }
      if (once) return;
    }
  };
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  double next_progress = 1;
  uint64_t lines_at_last = 0;
  while (g_signal.load() == 0 && elapsed() < seconds && !write_failed) {
    pollfd p{*pipe, POLLIN, 0};
    if (poll(&p, 1, 100) > 0) drain(true);
    if (elapsed() >= next_progress) {
      const TracefsLoss now = (*session)->Loss();
      absl::FPrintF(stderr, "physmem_trace: %5.1f s  %10u lines  %8u lines/s  lost so far: %u overrun, %u dropped\n", elapsed(),
                    lines, lines - lines_at_last, since(now.overrun, before.overrun), since(now.dropped, before.dropped));
      lines_at_last = lines;
      next_progress += 1;
    }
  }
  const double recorded = elapsed();
  const TracefsLoss after = (*session)->Loss();
  // Events off first, then read what is still buffered: nothing new arrives meanwhile.
  absl::Status restored = (*session)->Restore();
  drain(false);
  close(*pipe);
  if (absl::Status s = (*session)->Unmount(); restored.ok()) restored = s;
  const int close_result = gzclose(file.release());
  if (!restored.ok()) {
    return Fail(kRestoreFailed, absl::StrCat("record: restoring tracefs: ", restored.message(), " (the trace in ", out, " is complete)"));
  }
  if (write_failed || close_result != Z_OK) return Fail(kUnreadable, absl::StrCat("record: writing ", out, " failed"));
  absl::FPrintF(stderr, "physmem_trace: wrote %u lines (%u bytes of text) in %.1f s to %s; tracefs restored\n", lines, bytes,
                recorded, out);
  const uint64_t overrun = since(after.overrun, before.overrun), dropped = since(after.dropped, before.dropped);
  if (overrun + dropped + lost_lines > 0) {
    return Fail(kLost, absl::StrCat("record: the kernel lost events: ", overrun, " overwritten, ", dropped, " dropped (", lost_lines,
                                    " LOST notices in the file). Use a larger --buffer_kb or a shorter recording; the file "
                                    "is usable but incomplete"));
  }
  if (g_signal.load() != 0) return Fail(kInterrupted, absl::StrCat("record: interrupted by signal ", g_signal.load(), " after ",
                                                                  absl::StrFormat("%.1f", recorded), " s; the file holds what was read"));
  return kOk;
}

// ---- replay / compare --------------------------------------------------------------------------
absl::StatusOr<ReplayConfig> ConfigFromFlags() {
  ReplayConfig config;
  config.allocator.min_free_kbytes = absl::GetFlag(FLAGS_min_free_kbytes);
  config.allocator.pcp_enabled = absl::GetFlag(FLAGS_pcp);
  config.allocator.thread_pages = absl::GetFlag(FLAGS_thread_pages);
  config.allocator.page_group_by_mobility = absl::GetFlag(FLAGS_page_group_by_mobility);
  config.allocator.arena_backing = ArenaOptions::Backing::kOrdinary;  // untouched unless --zero_pages
  config.per_cpu_threads = absl::GetFlag(FLAGS_per_cpu);
  config.zero_pages = absl::GetFlag(FLAGS_zero_pages);
  config.samples = absl::GetFlag(FLAGS_samples);
  return config;
}

absl::StatusOr<Target> MakeTarget(const std::string& name, uint64_t mem_mb) {
  if (absl::StrContains(name, '/') || absl::EndsWith(name, ".textproto")) return LoadTargetFile(name);
  return BuiltinTarget(name, mem_mb << 20);
}

bool ParseOnOff(std::string_view v, bool* out) {
  if (v == "on" || v == "true" || v == "1") return *out = true, true;
  if (v == "off" || v == "false" || v == "0") return *out = false, true;
  return false;
}

// One column of a replay or comparison: in-process (config), or on a daemon (daemon.address set).
struct RunSpec {
  ReplayConfig config;
  DaemonReplayOptions daemon;
};

DaemonReplayOptions DaemonFromFlags() {
  DaemonReplayOptions d;
  d.address = absl::GetFlag(FLAGS_daemon);
  d.lease_ttl_ms = absl::GetFlag(FLAGS_lease_ttl_ms);
  d.keep_lease = absl::GetFlag(FLAGS_keep_lease);
  d.alloc_timeout_ms = absl::GetFlag(FLAGS_alloc_timeout_ms);
  d.pace.pace = absl::GetFlag(FLAGS_pace);
  d.pace.max_batch = absl::GetFlag(FLAGS_max_batch);
  d.pace.bulk = absl::GetFlag(FLAGS_bulk);
  d.zero_pages = absl::GetFlag(FLAGS_zero_pages);
  d.wait_for_memory = absl::GetFlag(FLAGS_wait_for_memory);
  d.samples = absl::GetFlag(FLAGS_samples);
  return d;
}

// "name=small,mem_mb=512,pcp=off" on top of the flags' configuration.
absl::StatusOr<RunSpec> ParseConfig(const std::string& spec, int index) {
  absl::StatusOr<ReplayConfig> config = ConfigFromFlags();
  if (!config.ok()) return config.status();
  DaemonReplayOptions daemon = DaemonFromFlags();
  std::string target = absl::GetFlag(FLAGS_target);
  uint64_t mem_mb = absl::GetFlag(FLAGS_mem_mb);
  config->name = absl::StrCat("config", index);
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    const std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    const std::string key(kv.first), value(kv.second);
    bool ok = true;
    if (key == "name") {
      ok = !value.empty();
      config->name = value;
    } else if (key == "target") {
      target = value;
    } else if (key == "mem_mb") {
      ok = absl::SimpleAtoi(value, &mem_mb);
    } else if (key == "min_free_kbytes") {
      ok = absl::SimpleAtoi(value, &config->allocator.min_free_kbytes);
    } else if (key == "pcp") {
      ok = ParseOnOff(value, &config->allocator.pcp_enabled);
    } else if (key == "thread_pages") {
      ok = ParseOnOff(value, &config->allocator.thread_pages);
    } else if (key == "mobility") {
      ok = ParseOnOff(value, &config->allocator.page_group_by_mobility);
    } else if (key == "per_cpu") {
      ok = ParseOnOff(value, &config->per_cpu_threads);
    } else if (key == "daemon") {
      ok = !value.empty();
      daemon.address = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("configuration \"", spec, "\": unknown key \"", key,
                                                     "\" (known: name, target, mem_mb, min_free_kbytes, pcp, thread_pages, "
                                                     "mobility, per_cpu, daemon)"));
    }
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("configuration \"", spec, "\": bad value for ", key, ": \"", value, "\""));
  }
  absl::StatusOr<Target> t = MakeTarget(target, mem_mb);
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("configuration \"", spec, "\": ", t.status().message()));
  config->allocator.target = *t;
  daemon.name = config->name;
  if (daemon.address == "default") daemon.address = client::DefaultTarget();
  if (!daemon.address.empty() && daemon.pace.pace < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--pace must be 0 (full speed) or positive, not ", daemon.pace.pace));
  }
  return RunSpec{*std::move(config), std::move(daemon)};
}

int ReplayOrCompare(bool compare, const std::vector<char*>& args) {
  const std::string path = absl::GetFlag(FLAGS_trace);
  if (path.empty()) return Fail(kBadUsage, "--trace=FILE is required");
  std::vector<RunSpec> configs;
  if (compare) {
    if (args.size() < 4) return Fail(kBadUsage, "compare: give two or more configurations, e.g. name=a,mem_mb=512 name=b,mem_mb=4096");
    for (size_t i = 2; i < args.size(); ++i) {
      absl::StatusOr<RunSpec> c = ParseConfig(args[i], static_cast<int>(i - 1));
      if (!c.ok()) return Fail(kBadUsage, c.status().message());
      configs.push_back(*c);
    }
  } else {
    if (args.size() > 2) return Fail(kBadUsage, absl::StrCat("replay: unexpected argument \"", args[2], "\" (compare takes configurations)"));
    absl::StatusOr<RunSpec> c = ParseConfig("name=replay", 0);
    if (!c.ok()) return Fail(kBadUsage, c.status().message());
    configs.push_back(*c);
  }
  TraceReadOptions read_options;
  read_options.strict = absl::GetFlag(FLAGS_strict);
  absl::StatusOr<Trace> trace = ReadTraceFile(path, read_options);
  if (!trace.ok()) return Fail(kUnreadable, trace.status().message());
  const ReplayPlan plan = BuildReplayPlan(*trace);
  std::vector<ReplayResult> results;
  for (const RunSpec& spec : configs) {
    if (!spec.daemon.address.empty()) {
      std::cerr << "physmem_trace: replaying " << plan.ops.size() << " ops on " << spec.daemon.address
                << (spec.daemon.pace.pace > 0 ? absl::StrFormat(" at %gx the trace's pace", spec.daemon.pace.pace)
                                              : std::string(" at full speed"))
                << "\n";
    }
    // --map_every: a picture of the arena every N ops (picture/map_sequence.h); in-process only (a
    // daemon draws its own, live, at http://METRICS_LISTEN/arena).
    ReplayConfig config = spec.config;
    std::unique_ptr<MapSequence> maps;
    if (absl::GetFlag(FLAGS_map_every) != 0) {
      if (!spec.daemon.address.empty()) {
        return Fail(kBadUsage,
                    "--map_every draws in-process replays; a daemon shows its arena live at /arena on its metrics "
                    "listener");
      }
      absl::StatusOr<std::unique_ptr<MapSequence>> m =
          MapSequence::Create(absl::GetFlag(FLAGS_map_dir), config.name);
      if (!m.ok()) return Fail(kBadUsage, absl::StrCat("--map_dir: ", m.status().message()));
      maps = std::move(*m);
      config.observe_every = absl::GetFlag(FLAGS_map_every);
      config.observer = maps->Observer();
    }
    absl::StatusOr<ReplayResult> r =
        spec.daemon.address.empty() ? Replay(plan, config) : ReplayOnDaemon(plan, spec.daemon);
    if (!r.ok()) return Fail(spec.daemon.address.empty() ? kBadUsage : kDaemon, r.status().message());
    if (maps) {
      if (!maps->status().ok()) return Fail(kBadUsage, absl::StrCat("--map_dir: ", maps->status().message()));
      std::cerr << "physmem_trace: " << maps->written() << " pictures of the arena in "
                << absl::GetFlag(FLAGS_map_dir) << "\n";
    }
    results.push_back(std::move(*r));
  }
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (json_path == "-") {
    std::cout << FormatReportJson(trace->stats, plan, results);
    return kOk;
  }
  std::cout << FormatTraceText(trace->stats, plan) << FormatPerfKmemSummary(plan.perf);
  for (const ReplayResult& r : results) std::cout << FormatReplayText(r, plan);
  if (compare) std::cout << FormatCompareText(results);
  if (!json_path.empty()) {
    std::ofstream json(json_path);
    json << FormatReportJson(trace->stats, plan, results);
    if (!json) return Fail(kBadUsage, absl::StrCat("cannot write ", json_path));
  }
  return kOk;
}

}  // namespace
}  // namespace physmem::trace

int main(int argc, char** argv) {
  using namespace physmem::trace;
  absl::SetProgramUsageMessage(kUsage);
  physmem::SetFlagsUsage("physmem_trace", {"clients/physmem_trace.cc"});
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Fail(kBadUsage, absl::StrCat("a subcommand is required: record, replay or compare\n\n", kUsage));
  const std::string command = args[1];
  if (command == "record") {
    if (args.size() > 2) return Fail(kBadUsage, absl::StrCat("record: unexpected argument \"", args[2], "\""));
    return Record();
  }
  if (command == "replay") return ReplayOrCompare(false, args);
  if (command == "compare") return ReplayOrCompare(true, args);
  return Fail(kBadUsage, absl::StrCat("unknown subcommand \"", command, "\" (record, replay or compare)"));
}
