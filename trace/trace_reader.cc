#include "trace/trace_reader.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace physmem::trace {
namespace {

constexpr size_t kMaxUnknownNames = 32;

absl::Status OpenError(const std::string& path, int err) {
  const std::string message = absl::StrCat(path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::FailedPreconditionError(message);
}

}  // namespace

uint64_t TraceReadStats::page_events() const {
  uint64_t n = 0;
  for (uint64_t e : events) n += e;
  return n;
}

double TraceReadStats::duration_seconds() const {
  return static_cast<double>(last_timestamp_ns - first_timestamp_ns) / 1e9;
}

TraceReader::TraceReader(TraceReadOptions options, std::string source_name)
    : options_(options), source_name_(std::move(source_name)) {}

absl::Status TraceReader::Malformed(std::string reason) {
  TraceReadStats& s = trace_.stats;
  ++s.malformed_lines;
  if (options_.strict) {
    return absl::InvalidArgumentError(absl::StrCat(source_name_, ":", s.lines, ": ", reason));
  }
  if (s.first_errors.size() < options_.max_reported_errors) s.first_errors.push_back({s.lines, std::move(reason)});
  return absl::OkStatus();
}

absl::Status TraceReader::Line(std::string_view line) {
  TraceReadStats& s = trace_.stats;
  ++s.lines;
  ParsedLine parsed = parser_.Parse(line);
  switch (parsed.kind) {
    case LineKind::kEvent: {
      const PageEvent& e = parsed.event;
      ++s.events[static_cast<int>(e.type)];
      if (e.cpu > s.max_cpu) s.max_cpu = e.cpu;
      if (!have_timestamp_) {
        s.first_timestamp_ns = e.timestamp_ns;
        have_timestamp_ = true;
      }
      if (e.timestamp_ns > s.last_timestamp_ns) s.last_timestamp_ns = e.timestamp_ns;
      trace_.events.push_back(e);
      return absl::OkStatus();
    }
    case LineKind::kUnknownEvent: {
      ++s.unknown_events;
      std::string name = Excerpt(parsed.unknown_name);
      auto it = s.unknown_event_names.find(name);
      if (it != s.unknown_event_names.end()) {
        ++it->second;
      } else if (s.unknown_event_names.size() < kMaxUnknownNames) {
        s.unknown_event_names.emplace(std::move(name), 1);
      }
      return absl::OkStatus();
    }
    case LineKind::kCallchain: ++s.callchain_lines; return absl::OkStatus();
    case LineKind::kBlank: ++s.blank_lines; return absl::OkStatus();
    case LineKind::kComment: ++s.comment_lines; return absl::OkStatus();
    case LineKind::kLost:
      ++s.lost_markers;
      s.lost_events += parsed.lost;
      return absl::OkStatus();
    case LineKind::kMalformed: return Malformed(std::move(parsed.error));
  }
  return absl::OkStatus();
}

absl::Status TraceReader::Feed(std::string_view bytes) {
  trace_.stats.bytes += bytes.size();
  while (!bytes.empty()) {
    const size_t newline = bytes.find('\n');
    const std::string_view piece = bytes.substr(0, newline);
    const bool ended = newline != std::string_view::npos;
    bytes = ended ? bytes.substr(newline + 1) : std::string_view();
    if (!overlong_ && pending_.size() + piece.size() > options_.max_line_bytes) {
      overlong_ = true;
      pending_.clear();
    }
    if (overlong_) {
      if (!ended) continue;
      overlong_ = false;
      ++trace_.stats.lines;
      if (absl::Status s = Malformed(absl::StrCat("line longer than ", options_.max_line_bytes, " bytes"));
          !s.ok()) {
        return s;
      }
      continue;
    }
    if (!ended) {
      pending_.append(piece);
      continue;
    }
    absl::Status s;
    if (pending_.empty()) {
      s = Line(piece);
    } else {
      pending_.append(piece);
      s = Line(pending_);
      pending_.clear();
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<Trace> TraceReader::Finish() {
  if (overlong_) {
    overlong_ = false;
    ++trace_.stats.lines;
    if (absl::Status s = Malformed(absl::StrCat("line longer than ", options_.max_line_bytes, " bytes"));
        !s.ok()) {
      return s;
    }
  } else if (!pending_.empty()) {
    const std::string last = std::move(pending_);
    pending_.clear();
    if (absl::Status s = Line(last); !s.ok()) return s;
  }
  return std::move(trace_);
}

absl::StatusOr<Trace> ReadTraceText(std::string_view text, const TraceReadOptions& options) {
  TraceReader reader(options);
  if (absl::Status s = reader.Feed(text); !s.ok()) return s;
  return reader.Finish();
}

absl::StatusOr<Trace> ReadTraceFile(const std::string& path, const TraceReadOptions& options) {
  errno = 0;
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  if (file == nullptr) return OpenError(path, errno != 0 ? errno : ENOMEM);
  gzbuffer(file.get(), 1 << 18);
  TraceReader reader(options, path);
  std::string buffer(1 << 18, '\0');
  while (true) {
    const int n = gzread(file.get(), buffer.data(), static_cast<unsigned>(buffer.size()));
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(file.get(), &code);
      if (code == Z_ERRNO) return OpenError(path, errno);
      return absl::DataLossError(absl::StrCat(path, ": gzip: ", message));
    }
    if (n == 0) break;
    if (absl::Status s = reader.Feed(std::string_view(buffer.data(), static_cast<size_t>(n))); !s.ok()) return s;
  }
  int code = 0;
  const char* message = gzerror(file.get(), &code);
  // A gzip stream cut short reads as end of file with Z_BUF_ERROR set.
  if (code != Z_OK) return absl::DataLossError(absl::StrCat(path, ": gzip: ", message, " (truncated?)"));
  return reader.Finish();
}

}  // namespace physmem::trace
