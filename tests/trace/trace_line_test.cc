#include "trace/trace_line.h"

#include <string>
#include <string_view>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace physmem::trace {
namespace {

using ::testing::HasSubstr;

// Lines as the live 6.18 kernel and perf 6.1 printed them on this project's VM.
constexpr std::string_view kFtraceAlloc =
    "         cc1plus-29068   [001] ..... 12655.953257: mm_page_alloc: page=00000000765f22e3 pfn=0x12bd01 "
    "order=2 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP";
constexpr std::string_view kPerfAlloc =
    "cc1plus 29135 [000] 12658.987161: kmem:mm_page_alloc: page=0x197ffe pfn=0x197ffe order=0 migratetype=1 "
    "gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP";

ParsedLine Parse(std::string_view line) {
  TraceLineParser parser;
  return parser.Parse(line);
}

TEST(TraceLine, ParsesAnFtraceAllocation) {
  const ParsedLine p = Parse(kFtraceAlloc);
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.type, PageEventType::kAlloc);
  EXPECT_EQ(p.event.cpu, 1);
  EXPECT_EQ(p.event.pfn, 0x12bd01u);
  EXPECT_EQ(p.event.order, 2);
  EXPECT_EQ(p.event.migratetype, 1);
  EXPECT_EQ(p.event.gfp, GFP_HIGHUSER_MOVABLE | __GFP_ZERO | __GFP_COMP);
  EXPECT_EQ(p.event.timestamp_ns, 12655953257000u);
  EXPECT_FALSE(p.event.failed());
}

TEST(TraceLine, ParsesAPerfScriptAllocation) {
  const ParsedLine p = Parse(kPerfAlloc);
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.cpu, 0);
  EXPECT_EQ(p.event.pfn, 0x197ffeu);
  EXPECT_EQ(p.event.timestamp_ns, 12658987161000u);
}

TEST(TraceLine, ParsesFreeBatchedDrainExtfragAndZoneLocked) {
  ParsedLine p = Parse("            bash-12135   [000] ...4.  2146.069228: mm_page_free_batched: page=00000000fd26f4a4 pfn=0x2095ec order=0");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.type, PageEventType::kFreeBatched);
  p = Parse("     kworker/0:1-17886   [000] d..3.  2146.068791: mm_page_pcpu_drain: page=0000000072cd3a57 pfn=0x1343d7 order=0 migratetype=0");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.type, PageEventType::kPcpDrain);
  p = Parse("            bash-12135   [000] d..3.  2146.069052: mm_page_alloc_zone_locked: page=00000000451dc397 pfn=0x118ee0 order=0 migratetype=0 percpu_refill=1");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.type, PageEventType::kAllocZoneLocked);
  p = Parse("              cc-1 [001] d..2. 1.000001: mm_page_alloc_extfrag: page=0000000011111111 pfn=0x1000 alloc_order=0 "
            "fallback_order=9 pageblock_order=9 alloc_migratetype=0 fallback_migratetype=1 fragmenting=0 change_ownership=1");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.type, PageEventType::kExtfrag);
  EXPECT_EQ(p.event.order, 0);
}

TEST(TraceLine, ACommWithBlanksAndRecordTgidStillParse) {
  const ParsedLine p = Parse("  Web Content-4242    (   4240) [003] ..... 100.5: mm_page_free: page=0000000011111111 pfn=0x10 order=1");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_EQ(p.event.cpu, 3);
  EXPECT_EQ(p.event.order, 1);
  EXPECT_EQ(p.event.timestamp_ns, 100500000000u);
}

TEST(TraceLine, FailedAllocationIsRecognisedInBothForms) {
  ParsedLine p = Parse("  x-1 [000] ..... 1.000000: mm_page_alloc: page=0000000000000000 pfn=0x0 order=3 migratetype=0 gfp_flags=GFP_KERNEL");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_TRUE(p.event.failed());
  p = Parse("x 1 [000] 1.000000: kmem:mm_page_alloc: page=0x0 pfn=0xffffffffffffffff order=3 migratetype=0 gfp_flags=GFP_KERNEL");
  ASSERT_EQ(p.kind, LineKind::kEvent) << p.error;
  EXPECT_TRUE(p.event.failed());
}

TEST(TraceLine, ClassifiesNonEventLines) {
  EXPECT_EQ(Parse("\tffffffff8163d6b7 __alloc_frozen_pages_noprof+0x2b7 ([kernel.kallsyms])").kind, LineKind::kCallchain);
  EXPECT_EQ(Parse("").kind, LineKind::kBlank);
  EXPECT_EQ(Parse("   ").kind, LineKind::kBlank);
  EXPECT_EQ(Parse("# tracer: nop").kind, LineKind::kComment);
  const ParsedLine lost = Parse("CPU:1 [LOST 123 EVENTS]");
  EXPECT_EQ(lost.kind, LineKind::kLost);
  EXPECT_EQ(lost.lost, 123u);
  const ParsedLine other = Parse("  bash-1 [000] ..... 1.0: sched_switch: prev_comm=bash prev_pid=1");
  EXPECT_EQ(other.kind, LineKind::kUnknownEvent);
  EXPECT_EQ(other.unknown_name, "sched_switch");
  EXPECT_EQ(Parse("perf 1 [000] 1.0: kmem:kmalloc: call_site=x").kind, LineKind::kUnknownEvent);
}

struct Hostile {
  std::string_view line;
  std::string_view reason;
};

class TraceLineRefuses : public ::testing::TestWithParam<Hostile> {};

TEST_P(TraceLineRefuses, WithAReason) {
  const ParsedLine p = Parse(GetParam().line);
  EXPECT_EQ(p.kind, LineKind::kMalformed);
  EXPECT_THAT(p.error, HasSubstr(std::string(GetParam().reason)));
  EXPECT_LE(p.error.size(), 400u) << "messages quote only a short excerpt";
}

INSTANTIATE_TEST_SUITE_P(
    AbsurdValues, TraceLineRefuses,
    ::testing::Values(
        Hostile{"a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=11 migratetype=0 gfp_flags=GFP_KERNEL",
                "order=11 is outside 0..10"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x10 order=-1", "order=-1 is outside"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0xffffffffffffffff order=0", "-1 marks only a failed"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x10000000000000 order=0", "beyond any physical page"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x1ffffffffffffffffff order=0", "not 0x-hex"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=0 migratetype=9 gfp_flags=GFP_KERNEL",
                "migratetype=9 is outside"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=0 migratetype=0 gfp_flags=GFP_BOGUS",
                "unknown GFP flag"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=0 migratetype=0 gfp_flags=0x80000000",
                "not GFP flags"},
        Hostile{"a-1 [99999] ..... 1.0: mm_page_free: page=1 pfn=0x10 order=0", "is not 0..4095"}));
INSTANTIATE_TEST_SUITE_P(
    BrokenShape, TraceLineRefuses,
    ::testing::Values(
        Hostile{"a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=0 migratetype=0", "missing gfp_flags="},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 order=0", "missing pfn="},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x10 pfn=0x11 order=0", "appears twice"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x10 order=0 colour=red", "unknown field"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x10 order", "expected key=value"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=16 order=0", "not 0x-hex"},
        Hostile{"a-1 [000] ..... banana: mm_page_free: pfn=0x10 order=0", "expected a timestamp"},
        Hostile{"a-1 [000] ..... 1.0 mm_page_free: pfn=0x10 order=0", "expected a timestamp"},
        Hostile{"a-1 [000] ..... 1.0: : pfn=0x10 order=0", "expected an event name"},
        Hostile{"no cpu field at all: mm_page_free: pfn=0x10 order=0", "no \"[cpu]\" field"},
        Hostile{"a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0x10 or\x01" "der=0", "control byte 0x01"},
        Hostile{std::string_view("a-1 [000] \0\xff\xfe", 13), "control byte 0x00"}));

TEST(TraceLine, RefusalOfALongTokenQuotesAnEscapedExcerptOnly) {
  const std::string line = "a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=0 migratetype=0 gfp_flags=" +
                           std::string(5000, 'X') + "\xc3\xa9";
  const ParsedLine p = Parse(line);
  ASSERT_EQ(p.kind, LineKind::kMalformed);
  EXPECT_LT(p.error.size(), 300u);
  EXPECT_THAT(p.error, HasSubstr("..."));
}

TEST(TraceLine, RepeatedGfpTextsAreParsedOnceAndGiveTheSameMask) {
  TraceLineParser parser;
  for (int i = 0; i < 3; ++i) {
    const ParsedLine p = parser.Parse(kFtraceAlloc);
    ASSERT_EQ(p.kind, LineKind::kEvent);
    EXPECT_EQ(p.event.gfp, GFP_HIGHUSER_MOVABLE | __GFP_ZERO | __GFP_COMP);
  }
}

}  // namespace
}  // namespace physmem::trace
