// libFuzzer target: the trace reader (trace/trace_reader.h, trace/trace_line.h), which reads
// files recorded on other machines, and what the replay builds on it (trace/replay_plan.h,
// trace/replayer.h).
//
// Properties checked on every input:
//   - reading never crashes and never fails without strict mode; every line is accounted for
//     exactly once (lines = events + unknown + call-chain + blank + comment + LOST + malformed);
//   - the same bytes fed in two pieces (split where the first byte says) give the same result;
//   - every event is in range: order <= 10, pfn < 2^52 unless a failed allocation, migratetype
//     in 0..5 where present, cpu <= 4095;
//   - strict mode refuses exactly when the lenient read counted a malformed line, with
//     INVALID_ARGUMENT and a message naming the line;
//   - the plan's books balance (allocations and frees each accounted for once), and a replay on
//     a small emulated machine grants or refuses every allocation and frees what it granted.
// Lines longer than 512 bytes are malformed here (64 KiB in production), so that the fuzzer
// reaches that path with small inputs.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "allocator/target.h"
#include "trace/replay_plan.h"
#include "trace/replayer.h"
#include "trace/trace_reader.h"

namespace {

using namespace physmem::trace;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "trace_reader_fuzz: %s\n", what.c_str());
  std::abort();
}

uint64_t Accounted(const TraceReadStats& s) {
  return s.page_events() + s.unknown_events + s.callchain_lines + s.blank_lines + s.comment_lines + s.lost_markers +
         s.malformed_lines;
}

Trace Read(std::string_view text, size_t split) {
  TraceReadOptions options;
  options.max_line_bytes = 512;
  TraceReader reader(options);
  if (!reader.Feed(text.substr(0, split)).ok() || !reader.Feed(text.substr(split)).ok()) Fail("lenient Feed failed");
  absl::StatusOr<Trace> t = reader.Finish();
  if (!t.ok()) Fail("lenient Finish failed");
  return *std::move(t);
}

void CheckEvents(const Trace& t) {
  for (const PageEvent& e : t.events) {
    if (e.order > kMaxTraceOrder) Fail("order out of range");
    if (e.pfn >= (uint64_t{1} << 52) && !e.failed()) Fail("pfn out of range");
    if (e.migratetype < kNoMigratetype || e.migratetype > 5) Fail("migratetype out of range");
    if (e.cpu > 4095) Fail("cpu out of range");
    if (e.type == PageEventType::kAlloc && (e.gfp & ~physmem::kGfpKnownMask)) Fail("unknown gfp bits accepted");
  }
}

void CheckReplay(const Trace& t) {
  const ReplayPlan plan = BuildReplayPlan(t);
  uint64_t allocs = 0, frees = 0;
  for (const ReplayOp& op : plan.ops) (op.kind == ReplayOpKind::kAlloc ? allocs : frees)++;
  const auto& ev = t.stats.events;
  if (allocs + plan.failed_allocs != ev[static_cast<int>(PageEventType::kAlloc)]) Fail("plan: allocations unbalanced");
  if (frees + plan.free_only + plan.free_order_mismatch != ev[static_cast<int>(PageEventType::kFree)]) {
    Fail("plan: frees unbalanced");
  }
  if (plan.ops.size() > 4096) return;  // keep each input fast
  static const physmem::Target target = *physmem::BuiltinTarget("x86_64", 64 << 20);
  ReplayConfig config;
  config.allocator.target = target;
  config.allocator.arena_backing = physmem::ArenaOptions::Backing::kOrdinary;
  config.allocator.nr_cpus = 2;
  config.samples = 2;
  absl::StatusOr<ReplayResult> r = Replay(plan, config);
  if (!r.ok()) Fail("replay failed: " + std::string(r.status().message()));
  const ReplayCounts& c = r->counts;
  if (c.allocs + c.alloc_failures != allocs) Fail("replay: allocations unbalanced");
  if (c.frees + c.free_of_refused + c.free_errors != frees) Fail("replay: frees unbalanced");
  if (c.free_errors != 0) Fail("replay: a planned free was refused: " + c.first_free_error);
  if (r->blocks_allocated_at_end != c.allocs - c.frees) Fail("replay: blocks at end");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t split = size == 0 ? 0 : data[0] % (size + 1);
  const Trace whole = Read(text, size);
  const Trace pieces = Read(text, split);
  if (Accounted(whole.stats) != whole.stats.lines) Fail("a line not accounted for exactly once");
  if (whole.stats.lines != pieces.stats.lines || whole.events.size() != pieces.events.size() ||
      whole.stats.malformed_lines != pieces.stats.malformed_lines) {
    Fail("split input read differently");
  }
  CheckEvents(whole);

  TraceReadOptions strict;
  strict.strict = true;
  strict.max_line_bytes = 512;
  TraceReader reader(strict);
  absl::Status fed = reader.Feed(text);
  absl::StatusOr<Trace> t = fed.ok() ? reader.Finish() : absl::StatusOr<Trace>(fed);
  if (t.ok() != (whole.stats.malformed_lines == 0)) Fail("strict mode disagrees with the lenient count");
  if (!t.ok() && (t.status().code() != absl::StatusCode::kInvalidArgument || t.status().message().find("trace:") != 0)) {
    Fail("strict refusal without a line number");
  }
  CheckReplay(whole);
  return 0;
}
