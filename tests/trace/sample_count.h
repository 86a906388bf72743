// An independent count of a trace file for the tests: lines and events found by plain substring
// matching on the raw text (zlib's gzgets), and frees matched to allocations by the pfn's text,
// as perf kmem matches them. Shares no code with trace/: the tests compare the two.
//
// Who uses it: tests/trace/*_test.cc. Thread-safety: pure functions.
#ifndef PHYSMEM_TESTS_TRACE_SAMPLE_COUNT_H_
#define PHYSMEM_TESTS_TRACE_SAMPLE_COUNT_H_

#include <zlib.h>

#include <cstdint>
#include <set>
#include <string>
#include <string_view>

namespace physmem::testing_trace {

inline const std::string kSamplePath = std::string(PHYSMEM_SOURCE_DIR) + "/tests/trace/testdata/compile_sample.txt.gz";
inline const std::string kPerfSamplePath =
    std::string(PHYSMEM_SOURCE_DIR) + "/tests/trace/testdata/perf_kmem_script_sample.txt";

struct SampleCount {
  uint64_t lines = 0, tab_lines = 0;
  uint64_t alloc = 0, alloc_failed = 0, free = 0, free_batched = 0, pcpu_drain = 0, extfrag = 0;
  uint64_t free_matched = 0, free_unmatched = 0;  // by pfn text, frees of mm_page_free only
  uint64_t cpus = 0;                              // distinct "[NNN]" among page events
};

inline std::string Field(std::string_view line, std::string_view key) {
  const size_t at = line.find(key);
  if (at == std::string_view::npos) return "";
  const size_t end = line.find(' ', at);
  return std::string(line.substr(at + key.size(), end == std::string_view::npos ? end : end - at - key.size()));
}

inline SampleCount CountSample(const std::string& path) {
  SampleCount c;
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return c;
  std::set<std::string> live, cpus;
  std::string line;
  char buf[8192];
  while (gzgets(f, buf, sizeof(buf)) != nullptr) {
    line += buf;
    if (line.empty() || line.back() != '\n') continue;
    ++c.lines;
    if (line[0] == '\t') ++c.tab_lines;
    const bool alloc = line.find("mm_page_alloc: ") != std::string::npos;
    const bool free = line.find("mm_page_free: ") != std::string::npos;
    const bool batched = line.find("mm_page_free_batched: ") != std::string::npos;
    const bool drain = line.find("mm_page_pcpu_drain: ") != std::string::npos;
    const bool extfrag = line.find("mm_page_alloc_extfrag: ") != std::string::npos;
    if (alloc || free || batched || drain || extfrag) cpus.insert(line.substr(line.find('['), 5));
    const std::string pfn = Field(line, "pfn=");
    if (alloc) {
      ++c.alloc;
      if (pfn == "0xffffffffffffffff" || (pfn == "0x0" && Field(line, "page=") == "0000000000000000")) {
        ++c.alloc_failed;
      } else {
        live.insert(pfn);
      }
    }
    if (free) {
      ++c.free;
      if (live.erase(pfn)) {
        ++c.free_matched;
      } else {
        ++c.free_unmatched;
      }
    }
    c.free_batched += batched;
    c.pcpu_drain += drain;
    c.extfrag += extfrag;
    line.clear();
  }
  gzclose(f);
  c.cpus = cpus.size();
  return c;
}

}  // namespace physmem::testing_trace

#endif  // PHYSMEM_TESTS_TRACE_SAMPLE_COUNT_H_
