// TracefsSession: the tracefs settings a recording needs, changed for the duration of one
// recording and put back afterwards (KERNEL-2.md section 7, "Capturing through tracefs").
//
// Who calls it: physmem_trace record (clients/physmem_trace.cc); tests drive it against a fake
// tracefs directory. Thread-safety: one thread; Restore() is also what the destructor does, so
// an early return or an error restores too. Signals (Ctrl-C) are the caller's: it stops reading
// and lets the session go out of scope.
//
// What it changes, and puts back exactly as found (file by file, the old content written back):
//   the tracefs mount (mounted with mount(2) if the directory has no trace_pipe; unmounted at the
//   end only if this session mounted it); events/kmem/<event>/enable of each event asked for;
//   tracing_on (set to 1 if it was 0); buffer_size_kb (when a size is asked for).
// The ring buffer is cleared before recording only when no event at all was enabled (set_event
// empty): then nothing of anyone else's is lost, and old page events cannot leak into the trace.
#ifndef PHYSMEM_TRACE_TRACEFS_H_
#define PHYSMEM_TRACE_TRACEFS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace physmem::trace {

// The events a recording enables: the three replayed ones first, then the reference events.
inline constexpr const char* kRecordEvents[] = {"mm_page_alloc", "mm_page_free", "mm_page_free_batched",
                                                "mm_page_alloc_extfrag", "mm_page_pcpu_drain"};
inline constexpr int kRequiredRecordEvents = 3;  // a kernel without these cannot be recorded

struct TracefsOptions {
  std::string dir = "/sys/kernel/tracing";
  bool mount_if_needed = true;  // only for the default directory
  uint32_t buffer_size_kb = 0;  // per CPU; 0 leaves it alone
};

// Kernel-side loss counters summed over CPUs (per_cpu/cpuN/stats).
struct TracefsLoss {
  uint64_t overrun = 0;  // events overwritten before they were read
  uint64_t dropped = 0;  // events dropped (buffer full in no-overwrite mode)
};

class TracefsSession {
 public:
  // FailedPrecondition "no tracefs" if the directory has no trace_pipe and cannot be mounted;
  // NotFound naming every required event this kernel lacks. Changes nothing on error.
  static absl::StatusOr<std::unique_ptr<TracefsSession>> Open(const TracefsOptions& options);
  ~TracefsSession();

  // Enables kRecordEvents (the optional ones if present) and tracing_on; clears the buffer when
  // nothing else was tracing. Returns the events enabled.
  absl::StatusOr<std::vector<std::string>> Start();
  // Opens trace_pipe, non-blocking.
  absl::StatusOr<int> OpenPipe() const;
  TracefsLoss Loss() const;
  // Writes back every setting changed, in reverse order; reports the first failure but tries all.
  absl::Status Restore();
  // Unmounts tracefs if this session mounted it. Close trace_pipe first (an open file keeps the
  // mount busy). The destructor does Restore() then Unmount().
  absl::Status Unmount();

  const std::string& dir() const { return dir_; }
  bool mounted_by_us() const { return mounted_; }

 private:
  explicit TracefsSession(std::string dir, bool mounted, uint32_t buffer_size_kb)
      : dir_(std::move(dir)), mounted_(mounted), buffer_size_kb_(buffer_size_kb) {}
  absl::Status Set(const std::string& relative, const std::string& value);

  std::string dir_;
  bool mounted_;
  uint32_t buffer_size_kb_;
  std::vector<std::pair<std::string, std::string>> saved_;  // file, old content, in change order
};

// Reads a small tracefs file whole ("" and the error if it cannot).
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_TRACEFS_H_
