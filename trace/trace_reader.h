// TraceReader: reads a kernel page-allocation trace (ftrace text from tracefs trace_pipe, or
// `perf script` output, plain or gzip) into PageEvents and says what it skipped.
//
// Who calls it: physmem_trace replay/compare (clients/physmem_trace.cc), the tests, the fuzz
// target and the benchmark. Thread-safety: a reader is used by one thread; distinct readers
// share nothing.
//
// Every line is accounted for exactly once:
//   lines = events + unknown_events + callchain_lines + blank_lines + comment_lines
//           + lost_markers + malformed_lines
// A malformed line (see trace/trace_line.h for what is refused; also lines longer than
// max_line_bytes) is either counted and skipped, with its line number and reason kept for the
// first max_reported_errors of them, or, with `strict`, refused: the read fails with
// InvalidArgument "FILE:LINE: reason". Unknown events are counted (by name, for the first 32
// names) and skipped. "CPU:N [LOST M EVENTS]" lines add M to lost_events: a trace with lost
// events is still read, and the report says so.
#ifndef PHYSMEM_TRACE_TRACE_READER_H_
#define PHYSMEM_TRACE_TRACE_READER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trace/page_event.h"
#include "trace/trace_line.h"

namespace physmem::trace {

struct TraceReadOptions {
  bool strict = false;               // refuse the whole trace at the first malformed line
  size_t max_line_bytes = 64 << 10;  // a longer line is malformed (and not buffered whole)
  size_t max_reported_errors = 20;   // malformed lines whose reason is kept
};

struct LineError {
  uint64_t line = 0;  // 1-based
  std::string reason;
};

struct TraceReadStats {
  uint64_t lines = 0;
  uint64_t bytes = 0;  // uncompressed
  std::array<uint64_t, kNrPageEventTypes> events{};  // by PageEventType
  uint64_t unknown_events = 0;
  std::map<std::string, uint64_t> unknown_event_names;  // at most 32 names
  uint64_t callchain_lines = 0;
  uint64_t blank_lines = 0;
  uint64_t comment_lines = 0;
  uint64_t lost_markers = 0;  // "CPU:N [LOST M EVENTS]" lines
  uint64_t lost_events = 0;   // sum of their M
  uint64_t malformed_lines = 0;
  std::vector<LineError> first_errors;
  uint16_t max_cpu = 0;  // highest "[cpu]" among page events
  uint64_t first_timestamp_ns = 0;
  uint64_t last_timestamp_ns = 0;

  uint64_t page_events() const;
  // Seconds between the first and the last page event.
  double duration_seconds() const;
};

struct Trace {
  std::vector<PageEvent> events;  // in file order
  TraceReadStats stats;
};

class TraceReader {
 public:
  explicit TraceReader(TraceReadOptions options = {}, std::string source_name = "trace");

  // Feeds the next bytes of the text (any split, lines may span calls). Returns the strict-mode
  // refusal; after an error the reader must not be fed again.
  absl::Status Feed(std::string_view bytes);
  // Ends the text (a last line without '\n' counts). Moves the result out.
  absl::StatusOr<Trace> Finish();

 private:
  absl::Status Line(std::string_view line);
  absl::Status Malformed(std::string reason);

  TraceReadOptions options_;
  std::string source_name_;
  TraceLineParser parser_;
  Trace trace_;
  std::string pending_;       // the start of a line not yet ended
  bool overlong_ = false;     // pending_ line passed max_line_bytes: drop until '\n'
  bool have_timestamp_ = false;
};

// The whole text at once (tests, fuzzing).
absl::StatusOr<Trace> ReadTraceText(std::string_view text, const TraceReadOptions& options = {});
// A file, plain or gzip (told apart by zlib from its first bytes). NotFound/PermissionDenied
// when it cannot be opened, DataLoss for a corrupt or truncated gzip stream.
absl::StatusOr<Trace> ReadTraceFile(const std::string& path, const TraceReadOptions& options = {});

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_TRACE_READER_H_
