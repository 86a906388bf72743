#include "trace/trace_reader.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/trace/sample_count.h"

namespace physmem::trace {
namespace {

using ::testing::HasSubstr;

constexpr std::string_view kAlloc =
    "  cc1plus-1 [000] ..... 1.000001: mm_page_alloc: page=00000000765f22e3 pfn=0x100 order=0 migratetype=1 "
    "gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP\n";
constexpr std::string_view kFree = "  cc1plus-1 [001] ..... 1.000002: mm_page_free: page=00000000765f22e3 pfn=0x100 order=0\n";
constexpr std::string_view kBad = "  cc1plus-1 [001] ..... 1.000003: mm_page_free: page=0 pfn=0x100 order=12\n";

uint64_t Accounted(const TraceReadStats& s) {
  return s.page_events() + s.unknown_events + s.callchain_lines + s.blank_lines + s.comment_lines + s.lost_markers +
         s.malformed_lines;
}

// A file under the test's own temporary directory, removed when the test ends.
class TempFile {
 public:
  TempFile(const std::string& name, std::string_view content, bool gzip) : path_(MakePath(name)) { Write(content, gzip); }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  static std::string MakePath(const std::string& name) {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return ::testing::TempDir() + "/trace_reader_test." + info->name() + "." + std::to_string(getpid()) + "." + name;
  }
  void Write(std::string_view content, bool gzip) {
    const std::string& path = path_;
    if (gzip) {
      gzFile f = gzopen(path.c_str(), "wb");
      gzwrite(f, content.data(), static_cast<unsigned>(content.size()));
      gzclose(f);
    } else {
      std::ofstream(path, std::ios::binary) << content;
    }
  }
  std::string path_;
};

TEST(TraceReader, EveryLineIsAccountedForOnce) {
  const std::string text = std::string("# tracer: nop\n") + std::string(kAlloc) + "CPU:1 [LOST 7 EVENTS]\n" +
                           std::string(kBad) + "\n  x-1 [000] ..... 1.1: sched_switch: a=b\n" + std::string(kFree);
  absl::StatusOr<Trace> t = ReadTraceText(text);
  ASSERT_TRUE(t.ok()) << t.status();
  const TraceReadStats& s = t->stats;
  EXPECT_EQ(s.lines, 7u);
  EXPECT_EQ(Accounted(s), s.lines);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kAlloc)], 1u);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kFree)], 1u);
  EXPECT_EQ(s.lost_events, 7u);
  EXPECT_EQ(s.unknown_events, 1u);
  EXPECT_EQ(s.unknown_event_names.at("sched_switch"), 1u);
  ASSERT_EQ(s.malformed_lines, 1u);
  ASSERT_EQ(s.first_errors.size(), 1u);
  EXPECT_EQ(s.first_errors[0].line, 4u);
  EXPECT_THAT(s.first_errors[0].reason, HasSubstr("order=12"));
  EXPECT_EQ(s.max_cpu, 1);
  EXPECT_EQ(t->events.size(), 2u);
}

TEST(TraceReader, StrictModeRefusesTheFirstMalformedLineWithItsNumber) {
  TraceReadOptions options;
  options.strict = true;
  absl::StatusOr<Trace> t = ReadTraceText(std::string(kAlloc) + std::string(kAlloc) + std::string(kBad), options);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("trace:3: mm_page_free: order=12 is outside 0..10"));
}

TEST(TraceReader, LinesSplitAcrossFeedsAreJoined) {
  const std::string text = std::string(kAlloc) + std::string(kFree);
  TraceReader reader;
  for (char c : text) ASSERT_TRUE(reader.Feed(std::string_view(&c, 1)).ok());
  absl::StatusOr<Trace> t = reader.Finish();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->events.size(), 2u);
  EXPECT_EQ(t->stats.malformed_lines, 0u);
}

TEST(TraceReader, ALastLineWithoutNewlineCounts) {
  absl::StatusOr<Trace> t = ReadTraceText(std::string(kAlloc) + std::string(kFree.substr(0, kFree.size() - 1)));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->events.size(), 2u);
}

TEST(TraceReader, AHundredMegabyteLineIsOneMalformedLineAndIsNotBuffered) {
  TraceReader reader;
  ASSERT_TRUE(reader.Feed(kAlloc).ok());
  const std::string chunk(1 << 20, 'A');
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(reader.Feed(chunk).ok());
  ASSERT_TRUE(reader.Feed("\n").ok());
  ASSERT_TRUE(reader.Feed(kFree).ok());
  absl::StatusOr<Trace> t = reader.Finish();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->stats.lines, 3u);
  EXPECT_EQ(t->stats.malformed_lines, 1u);
  EXPECT_THAT(t->stats.first_errors.at(0).reason, HasSubstr("line longer than 65536 bytes"));
  EXPECT_EQ(t->stats.first_errors.at(0).line, 2u);
  EXPECT_EQ(t->events.size(), 2u);
}

TEST(TraceReader, BinaryJunkIsCountedNeverFatal) {
  std::string junk;
  uint32_t x = 12345;
  for (int i = 0; i < 200000; ++i) {
    x = x * 1103515245u + 12345u;
    junk.push_back(static_cast<char>(x >> 24));
  }
  absl::StatusOr<Trace> t = ReadTraceText(junk);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(Accounted(t->stats), t->stats.lines);
  EXPECT_GT(t->stats.malformed_lines, 0u);
  EXPECT_EQ(t->events.size(), 0u);
}

TEST(TraceReader, OnlyTheFirstErrorsAreKeptButAllAreCounted) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += kBad;
  absl::StatusOr<Trace> t = ReadTraceText(text);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->stats.malformed_lines, 100u);
  EXPECT_EQ(t->stats.first_errors.size(), 20u);
}

TEST(TraceReader, ReadsPlainAndGzipFilesAlike) {
  const std::string text = std::string(kAlloc) + std::string(kFree);
  for (bool gzip : {false, true}) {
    const TempFile file(gzip ? "t.txt.gz" : "t.txt", text, gzip);
    absl::StatusOr<Trace> t = ReadTraceFile(file.path());
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->events.size(), 2u);
    EXPECT_EQ(t->stats.bytes, text.size());
  }
}

TEST(TraceReader, MissingFileIsNotFound) {
  absl::StatusOr<Trace> t = ReadTraceFile("/nonexistent/trace.gz");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr("/nonexistent/trace.gz"));
}

TEST(TraceReader, ATruncatedGzipFileIsDataLoss) {
  std::string text;
  for (int i = 0; i < 5000; ++i) text += kAlloc;
  const TempFile whole("whole.gz", text, true);
  std::ifstream in(whole.path(), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const TempFile cut("cut.gz", std::string_view(bytes).substr(0, bytes.size() / 2), false);
  absl::StatusOr<Trace> t = ReadTraceFile(cut.path());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(t.status().message(), HasSubstr("gzip"));
}

TEST(TraceReader, ADirectoryIsRefusedWithItsName) {
  absl::StatusOr<Trace> t = ReadTraceFile(::testing::TempDir());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(::testing::TempDir()));
}

// The committed recording, counted independently: plain substring matching on each line.
TEST(TraceReader, CommittedSampleMatchesAnIndependentCount) {
  const testing_trace::SampleCount expected = testing_trace::CountSample(testing_trace::kSamplePath);
  ASSERT_GT(expected.alloc, 10000u) << "the sample is a few seconds of a compiler workload";
  absl::StatusOr<Trace> t = ReadTraceFile(testing_trace::kSamplePath, {.strict = true});
  ASSERT_TRUE(t.ok()) << t.status();
  const TraceReadStats& s = t->stats;
  EXPECT_EQ(s.lines, expected.lines);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kAlloc)], expected.alloc);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kFree)], expected.free);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kFreeBatched)], expected.free_batched);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kPcpDrain)], expected.pcpu_drain);
  EXPECT_EQ(s.events[static_cast<int>(PageEventType::kExtfrag)], expected.extfrag);
  EXPECT_EQ(s.lost_events, 0u);
  EXPECT_EQ(s.max_cpu + 1, static_cast<int>(expected.cpus));
  EXPECT_EQ(Accounted(s), s.lines);
}

TEST(TraceReader, PerfKmemScriptOutputWithCallChainsIsRead) {
  const testing_trace::SampleCount expected = testing_trace::CountSample(testing_trace::kPerfSamplePath);
  absl::StatusOr<Trace> t = ReadTraceFile(testing_trace::kPerfSamplePath, {.strict = true});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->stats.events[static_cast<int>(PageEventType::kAlloc)], expected.alloc);
  EXPECT_EQ(t->stats.events[static_cast<int>(PageEventType::kFree)], expected.free);
  EXPECT_EQ(t->stats.callchain_lines, expected.tab_lines);
  EXPECT_GT(t->stats.callchain_lines, 0u);
  EXPECT_EQ(Accounted(t->stats), t->stats.lines);
}

}  // namespace
}  // namespace physmem::trace
