// TraceLineParser: decodes one line of a kernel page-allocation trace in either text form the
// kernel's tools print:
//   ftrace (tracefs trace / trace_pipe, kernel/trace/trace_output.c trace_print_context()):
//     "            bash-12135   [000] .....  2146.068886: mm_page_alloc: page=... pfn=0x10577a
//      order=1 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP"
//     "CPU:1 [LOST 123 EVENTS]" (the ring buffer overwrote events before they were read)
//   perf script (of `perf kmem --page record` or `perf record -e kmem:...`):
//     "cc1plus 29135 [000] 12658.987161: kmem:mm_page_alloc: page=0x197ffe pfn=0x197ffe ..."
//     followed by call-chain lines, each starting with a tab, and a blank line.
//
// Who calls it: TraceReader (trace/trace_reader.h) for each line of a file; the fuzz target.
// Thread-safety: one parser per thread (it caches parsed gfp masks); no shared state.
//
// Every line gets a verdict; nothing in a line can crash the parser. Malformed lines get a reason
// that quotes at most a short, escaped excerpt. What is refused, and why:
//   order above kMaxTraceOrder (the kernel logs no event for order > MAX_PAGE_ORDER);
//   pfn at or above 2^52 (beyond any 4 KiB-page physical address), except -1 in mm_page_alloc;
//   migratetype outside 0..5 (MIGRATE_TYPES is at most 6);
//   gfp_flags that ParseKernelGfp() does not know; missing or repeated fields; control bytes.
#ifndef PHYSMEM_TRACE_TRACE_LINE_H_
#define PHYSMEM_TRACE_TRACE_LINE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "trace/page_event.h"

namespace physmem::trace {

enum class LineKind : uint8_t {
  kEvent,         // a page event: `event` is filled
  kUnknownEvent,  // a well-formed event line of another tracepoint: `unknown_name` is its name
  kCallchain,     // a perf call-chain line (starts with a tab)
  kBlank,         // empty or only blanks (perf separates samples with one)
  kComment,       // starts with '#': the header of tracefs `trace`, perf script's comments
  kLost,          // "CPU:N [LOST M EVENTS]": `lost` = M
  kMalformed,     // `error` says what is wrong
};

struct ParsedLine {
  LineKind kind = LineKind::kMalformed;
  PageEvent event;
  uint64_t lost = 0;
  std::string_view unknown_name;  // points into the line
  std::string error;
};

class TraceLineParser {
 public:
  ParsedLine Parse(std::string_view line);

 private:
  // Distinct gfp texts in a trace are few (tens): parse each once.
  absl::StatusOr<gfp_t> Gfp(std::string_view text);
  absl::flat_hash_map<std::string, absl::StatusOr<gfp_t>> gfp_cache_;
};

// A short printable excerpt of untrusted text for messages: at most 40 bytes, C-escaped, with
// "..." when cut.
std::string Excerpt(std::string_view text);

}  // namespace physmem::trace

#endif  // PHYSMEM_TRACE_TRACE_LINE_H_
