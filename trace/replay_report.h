// Replay reports: what a trace held, what was replayed or skipped and why, and what each
// emulated configuration made of it. Text for people, JSON (stable field names, documented in
// docs/trace.md) for scripts.
//
// Who calls it: physmem_trace replay and compare; the tests. Thread-safety: pure functions.
//
// The trace summary is laid out as `perf kmem --page stat` prints it (print_page_summary():
// "%-30s: %16lu   [ %16lu KB ]" lines, then the order x migratetype table with '.' for zero),
// so a kernel reader recognises it and the numbers can be checked against perf's on the same
// recording. One difference, on purpose: perf labels the migratetype columns in the pre-4.4
// order (Unmovable, Reclaimable, Movable, Reserved, CMA/Isolated) although the kernel's order is
// UNMOVABLE, MOVABLE, RECLAIMABLE, HIGHATOMIC (KERNEL-2.md section 7); the numbers stand in the
// same columns here, under the kernel's names.
#ifndef PHYSMEM_TRACE_REPLAY_REPORT_H_
#define PHYSMEM_TRACE_REPLAY_REPORT_H_

#include <string>
#include <vector>

#include "trace/replay_plan.h"
#include "trace/replayer.h"
#include "trace/trace_reader.h"

namespace physmem::trace {

// Events read, by kind; what the plan replays and skips; lost events; the first malformed lines.
std::string FormatTraceText(const TraceReadStats& stats, const ReplayPlan& plan);
// The perf kmem --page stat layout of the trace's own figures.
std::string FormatPerfKmemSummary(const PerfKmemSummary& perf);
// One configuration's replay: counts, refusals by reason, per order / gfp class / migratetype,
// fragmentation index over time, final buddyinfo, speed.
std::string FormatReplayText(const ReplayResult& result, const ReplayPlan& plan);
// Two or more configurations side by side, one column each.
std::string FormatCompareText(const std::vector<ReplayResult>& results);
// Everything above as one JSON object: {"trace": {...}, "perf_kmem": {...}, "replays": [...]}.
std::string FormatReportJson(const TraceReadStats& stats, const ReplayPlan& plan,
                             const std::vector<ReplayResult>& results);

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_REPLAY_REPORT_H_
