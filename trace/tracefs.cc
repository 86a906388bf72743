#include "trace/tracefs.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace physmem::trace {
namespace {

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

absl::Status WriteFile(const std::string& path, const std::string& value) {
  const int fd = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) return absl::FailedPreconditionError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  const std::string line = value + "\n";
  const ssize_t n = write(fd, line.data(), line.size());
  const int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(line.size())) {
    return absl::FailedPreconditionError(absl::StrCat("write \"", value, "\" to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

std::string Trimmed(const std::string& s) { return std::string(absl::StripAsciiWhitespace(s)); }

}  // namespace

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::unique_ptr<TracefsSession>> TracefsSession::Open(const TracefsOptions& options) {
  bool mounted = false;
  if (!Exists(options.dir + "/trace_pipe")) {
    if (!options.mount_if_needed) {
      return absl::FailedPreconditionError(absl::StrCat("no tracefs at ", options.dir, " (no trace_pipe there)"));
    }
    // mount -t tracefs nodev /sys/kernel/tracing
    if (mount("nodev", options.dir.c_str(), "tracefs", 0, nullptr) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("no tracefs: ", options.dir, " is not mounted and mount -t tracefs failed: ",
                                                        std::strerror(errno), " (a kernel without CONFIG_TRACING, or a container without CAP_SYS_ADMIN?)"));
    }
    mounted = true;
    if (!Exists(options.dir + "/trace_pipe")) {
      umount(options.dir.c_str());
      return absl::FailedPreconditionError(absl::StrCat("no tracefs: mounted ", options.dir, " but it has no trace_pipe"));
    }
  }
  std::vector<std::string> missing;
  for (int i = 0; i < kRequiredRecordEvents; ++i) {
    if (!Exists(absl::StrCat(options.dir, "/events/kmem/", kRecordEvents[i], "/enable"))) missing.push_back(kRecordEvents[i]);
  }
  if (!missing.empty()) {
    if (mounted) umount(options.dir.c_str());
    return absl::NotFoundError(absl::StrCat("this kernel has no kmem:", absl::StrJoin(missing, ", kmem:"), " tracepoint (",
                                            options.dir, "/events/kmem/)"));
  }
  return std::unique_ptr<TracefsSession>(new TracefsSession(options.dir, mounted, options.buffer_size_kb));
}

TracefsSession::~TracefsSession() {
  Restore().IgnoreError();
  Unmount().IgnoreError();
}

absl::Status TracefsSession::Set(const std::string& relative, const std::string& value) {
  const std::string path = absl::StrCat(dir_, "/", relative);
  absl::StatusOr<std::string> old = ReadSmallFile(path);
  if (!old.ok()) return old.status();
  std::string previous = Trimmed(*old);
  // buffer_size_kb reads "7 (expanded: 1408)" before first use: 1408 is the size in effect.
  if (const size_t at = previous.find("(expanded: "); at != std::string::npos) {
    previous = previous.substr(at + 11, previous.find(')', at) - at - 11);
  }
  if (previous == value) return absl::OkStatus();
  if (absl::Status s = WriteFile(path, value); !s.ok()) return s;
  saved_.emplace_back(path, previous);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> TracefsSession::Start() {
  absl::StatusOr<std::string> set_event = ReadSmallFile(dir_ + "/set_event");
  const bool nothing_traced = set_event.ok() && Trimmed(*set_event).empty();
  if (buffer_size_kb_ != 0) {
    if (absl::Status s = Set("buffer_size_kb", absl::StrCat(buffer_size_kb_)); !s.ok()) return s;
  }
  std::vector<std::string> enabled;
  for (const char* event : kRecordEvents) {
    const std::string file = absl::StrCat("events/kmem/", event, "/enable");
    if (!Exists(absl::StrCat(dir_, "/", file))) continue;  // optional reference event
    if (absl::Status s = Set(file, "1"); !s.ok()) return s;
    enabled.push_back(event);
  }
  if (nothing_traced) {
    // Only our events are on, so the buffer holds nothing anyone else is waiting for.
    WriteFile(dir_ + "/trace", "").IgnoreError();
  }
  if (absl::Status s = Set("tracing_on", "1"); !s.ok()) return s;
  return enabled;
}

absl::StatusOr<int> TracefsSession::OpenPipe() const {
  const std::string path = dir_ + "/trace_pipe";
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return absl::FailedPreconditionError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  return fd;
}

TracefsLoss TracefsSession::Loss() const {
  TracefsLoss loss;
  for (int cpu = 0; cpu < 4096; ++cpu) {
    absl::StatusOr<std::string> stats = ReadSmallFile(absl::StrCat(dir_, "/per_cpu/cpu", cpu, "/stats"));
    if (!stats.ok()) break;
    for (absl::string_view line : absl::StrSplit(*stats, '\n')) {
      uint64_t n = 0;
      if (absl::ConsumePrefix(&line, "overrun: ") && absl::SimpleAtoi(line, &n)) loss.overrun += n;
      if (absl::ConsumePrefix(&line, "dropped events: ") && absl::SimpleAtoi(line, &n)) loss.dropped += n;
    }
  }
  return loss;
}

absl::Status TracefsSession::Restore() {
  absl::Status first;
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
    absl::Status s = WriteFile(it->first, it->second);
    if (first.ok() && !s.ok()) first = s;
  }
  saved_.clear();
  return first;
}

absl::Status TracefsSession::Unmount() {
  if (!mounted_) return absl::OkStatus();
  mounted_ = false;
  if (umount(dir_.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("umount ", dir_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace physmem::trace
