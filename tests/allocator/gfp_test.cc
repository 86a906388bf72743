#include "allocator/gfp.h"

#include <array>
#include <cstdint>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace physmem {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::string Hex(gfp_t gfp) { return absl::StrCat("0x", absl::Hex(gfp)); }

// Expected values are the kernel's (KERNEL.md section 5; include/linux/gfp_types.h), written as
// literals so a wrong definition in gfp.h cannot agree with itself.
struct KernelValue {
  std::string_view name;
  gfp_t ours;
  gfp_t kernel;
};

void PrintTo(const KernelValue& v, std::ostream* os) { *os << v.name; }

const KernelValue kKernelValues[] = {
    {"__GFP_DMA", __GFP_DMA, 0x01},
    {"__GFP_HIGHMEM", __GFP_HIGHMEM, 0x02},
    {"__GFP_DMA32", __GFP_DMA32, 0x04},
    {"__GFP_MOVABLE", __GFP_MOVABLE, 0x08},
    {"__GFP_RECLAIMABLE", __GFP_RECLAIMABLE, 0x10},
    {"__GFP_HIGH", __GFP_HIGH, 0x20},
    {"__GFP_IO", __GFP_IO, 0x40},
    {"__GFP_FS", __GFP_FS, 0x80},
    {"__GFP_ZERO", __GFP_ZERO, 0x100},
    {"__GFP_DIRECT_RECLAIM", __GFP_DIRECT_RECLAIM, 0x400},
    {"__GFP_KSWAPD_RECLAIM", __GFP_KSWAPD_RECLAIM, 0x800},
    {"__GFP_WRITE", __GFP_WRITE, 0x1000},
    {"__GFP_NOWARN", __GFP_NOWARN, 0x2000},
    {"__GFP_RETRY_MAYFAIL", __GFP_RETRY_MAYFAIL, 0x4000},
    {"__GFP_NOFAIL", __GFP_NOFAIL, 0x8000},
    {"__GFP_NORETRY", __GFP_NORETRY, 0x10000},
    {"__GFP_MEMALLOC", __GFP_MEMALLOC, 0x20000},
    {"__GFP_COMP", __GFP_COMP, 0x40000},
    {"__GFP_NOMEMALLOC", __GFP_NOMEMALLOC, 0x80000},
    {"__GFP_HARDWALL", __GFP_HARDWALL, 0x100000},
    {"__GFP_THISNODE", __GFP_THISNODE, 0x200000},
    {"__GFP_ACCOUNT", __GFP_ACCOUNT, 0x400000},
    {"__GFP_ZEROTAGS", __GFP_ZEROTAGS, 0x800000},
    {"__GFP_RECLAIM", __GFP_RECLAIM, 0xc00},
    {"GFP_ATOMIC", GFP_ATOMIC, 0x820},
    {"GFP_KERNEL", GFP_KERNEL, 0xcc0},
    {"GFP_KERNEL_ACCOUNT", GFP_KERNEL_ACCOUNT, 0x400cc0},
    {"GFP_NOWAIT", GFP_NOWAIT, 0x2800},
    {"GFP_NOIO", GFP_NOIO, 0xc00},
    {"GFP_NOFS", GFP_NOFS, 0xc40},
    {"GFP_USER", GFP_USER, 0x100cc0},
    {"GFP_DMA", GFP_DMA, 0x01},
    {"GFP_DMA32", GFP_DMA32, 0x04},
    {"GFP_HIGHUSER", GFP_HIGHUSER, 0x100cc2},
    {"GFP_HIGHUSER_MOVABLE", GFP_HIGHUSER_MOVABLE, 0x100cca},
    {"GFP_TRANSHUGE_LIGHT", GFP_TRANSHUGE_LIGHT, 0x1c20ca},
    {"GFP_TRANSHUGE", GFP_TRANSHUGE, 0x1c24ca},
};

class GfpKernelValue : public ::testing::TestWithParam<KernelValue> {};

TEST_P(GfpKernelValue, ConstantHasTheKernelValue) {
  EXPECT_EQ(Hex(GetParam().ours), Hex(GetParam().kernel));
}

TEST_P(GfpKernelValue, NameParsesToTheKernelValue) {
  absl::StatusOr<gfp_t> parsed = ParseGfp(GetParam().name);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(Hex(*parsed), Hex(GetParam().kernel));
}

INSTANTIATE_TEST_SUITE_P(Gfp, GfpKernelValue, ::testing::ValuesIn(kKernelValues),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Gfp, ZoneMaskIsTheLowFourBits) { EXPECT_EQ(GFP_ZONEMASK, 0x0fu); }

TEST(Gfp, KnownMaskHasEveryBitUpTo0x800000ExceptTheRetired0x200) {
  EXPECT_EQ(Hex(kGfpKnownMask), "0xfffdff");
}

// --- ParseGfp ----------------------------------------------------------------------------------

struct ParseCase {
  std::string_view text;
  gfp_t expected;
};

void PrintTo(const ParseCase& c, std::ostream* os) { *os << '"' << c.text << '"'; }

class GfpParses : public ::testing::TestWithParam<ParseCase> {};

TEST_P(GfpParses, TextToMask) {
  absl::StatusOr<gfp_t> parsed = ParseGfp(GetParam().text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(Hex(*parsed), Hex(GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(CompoundNames, GfpParses,
                         ::testing::Values(ParseCase{"GFP_KERNEL|__GFP_ZERO", 0xdc0},
                                           ParseCase{"GFP_HIGHUSER_MOVABLE|__GFP_COMP", 0x140cca},
                                           ParseCase{"__GFP_DMA|GFP_KERNEL", 0xcc1}));
INSTANTIATE_TEST_SUITE_P(BlanksAroundBars, GfpParses,
                         ::testing::Values(ParseCase{" GFP_KERNEL | __GFP_ZERO ", 0xdc0},
                                           ParseCase{"GFP_ATOMIC\t|__GFP_NOWARN", 0x2820}));
INSTANTIATE_TEST_SUITE_P(Numbers, GfpParses,
                         ::testing::Values(ParseCase{"0xcc0", 0xcc0}, ParseCase{"0XCC0", 0xcc0},
                                           ParseCase{"3264", 0xcc0}, ParseCase{"0", 0},
                                           ParseCase{"0x0", 0},
                                           ParseCase{"0x00000000000820", 0x820}));
INSTANTIATE_TEST_SUITE_P(Mixtures, GfpParses,
                         ::testing::Values(ParseCase{"GFP_KERNEL|0x100", 0xdc0},
                                           ParseCase{"3264 | __GFP_ZERO", 0xdc0},
                                           ParseCase{"GFP_NOWAIT|GFP_NOWAIT", 0x2800}));

// Masks exactly as a 6.18 kernel's kmem:mm_page_alloc printed them (KERNEL-2.md section 7).
class GfpParsesKernelText : public ::testing::TestWithParam<ParseCase> {};

TEST_P(GfpParsesKernelText, TracepointTextToMask) {
  absl::StatusOr<gfp_t> parsed = ParseKernelGfp(GetParam().text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(Hex(*parsed), Hex(GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(
    SeenLive, GfpParsesKernelText,
    ::testing::Values(ParseCase{"GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP", 0x140dca},
                      ParseCase{"GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP", 0x440dc0},
                      ParseCase{"GFP_HIGHUSER|__GFP_ACCOUNT", 0x500cc2},
                      ParseCase{"GFP_NOWAIT", 0x2800},
                      ParseCase{"GFP_NOFS|__GFP_HIGHMEM|__GFP_MOVABLE|__GFP_NOWARN|__GFP_NORETRY|"
                                "__GFP_COMP|__GFP_HARDWALL",
                                0x152c4a}));
INSTANTIATE_TEST_SUITE_P(ZeroPrintsNone, GfpParsesKernelText, ::testing::Values(ParseCase{"none", 0}));
INSTANTIATE_TEST_SUITE_P(
    ConfigDependentBitsAreDropped, GfpParsesKernelText,
    ::testing::Values(ParseCase{"GFP_KERNEL|__GFP_NO_OBJ_EXT", 0xcc0},
                      ParseCase{"GFP_HIGHUSER_MOVABLE|__GFP_SKIP_ZERO|__GFP_SKIP_KASAN", 0x100cca},
                      ParseCase{"__GFP_NOLOCKDEP|GFP_NOIO", 0xc00},
                      ParseCase{"GFP_ATOMIC|__GFP_ATOMIC", 0x820}));

TEST(Gfp, KernelTextRoundTripsEveryFormattedSingleBit) {
  for (gfp_t bit = 1; bit <= __GFP_ZEROTAGS; bit <<= 1) {
    if (!(bit & kGfpKnownMask)) continue;
    absl::StatusOr<gfp_t> parsed = ParseKernelGfp(FormatGfp(bit | GFP_KERNEL));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(Hex(*parsed), Hex(bit | GFP_KERNEL));
  }
}

TEST(Gfp, KernelTextRejectsUnknownNamesAndBitsQuotingTheMask) {
  absl::StatusOr<gfp_t> parsed = ParseKernelGfp("GFP_KERNEL|__GFP_BOGUS");
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(),
              AllOf(HasSubstr("GFP_KERNEL|__GFP_BOGUS"), HasSubstr("unknown GFP flag \"__GFP_BOGUS\"")));
  parsed = ParseKernelGfp("GFP_KERNEL|0x1000000");
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(), HasSubstr("0x1000000"));
  EXPECT_FALSE(ParseKernelGfp("").ok());
  EXPECT_FALSE(ParseKernelGfp("none|GFP_KERNEL").ok());
  EXPECT_FALSE(ParseKernelGfp("GFP_KERNEL||__GFP_ZERO").ok());
}

struct ParseErrorCase {
  std::string_view text;
  std::vector<std::string_view> message_parts;
};

void PrintTo(const ParseErrorCase& c, std::ostream* os) { *os << '"' << c.text << '"'; }

class GfpRejects : public ::testing::TestWithParam<ParseErrorCase> {};

TEST_P(GfpRejects, TextWithAPreciseMessage) {
  absl::StatusOr<gfp_t> parsed = ParseGfp(GetParam().text);
  ASSERT_FALSE(parsed.ok()) << "parsed as " << Hex(*parsed);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  for (std::string_view part : GetParam().message_parts) {
    EXPECT_THAT(parsed.status().message(), HasSubstr(std::string(part)));
  }
}

INSTANTIATE_TEST_SUITE_P(
    EmptyText, GfpRejects,
    ::testing::Values(ParseErrorCase{"", {"empty GFP mask", "GFP_KERNEL|__GFP_ZERO"}},
                      ParseErrorCase{"  \t", {"empty GFP mask"}}));
INSTANTIATE_TEST_SUITE_P(
    EmptyTerm, GfpRejects,
    ::testing::Values(ParseErrorCase{"GFP_KERNEL||__GFP_ZERO", {"term 2 is empty"}},
                      ParseErrorCase{"GFP_KERNEL|", {"term 2 is empty"}},
                      ParseErrorCase{"|GFP_KERNEL", {"term 1 is empty"}},
                      ParseErrorCase{"GFP_KERNEL| |__GFP_ZERO", {"term 2 is empty"}}));
INSTANTIATE_TEST_SUITE_P(
    UnknownName, GfpRejects,
    ::testing::Values(
        ParseErrorCase{"GFP_KERNL", {"unknown GFP flag \"GFP_KERNL\"", "\"GFP_KERNEL\"?"}},
        ParseErrorCase{"gfp_kernel", {"unknown GFP flag \"gfp_kernel\"", "\"GFP_KERNEL\"?"}},
        ParseErrorCase{"GFP_ZERO", {"\"GFP_ZERO\"", "did you mean \"__GFP_ZERO\"?"}},
        ParseErrorCase{"GFP_KERNEL|__GFP_NOWARNING", {"did you mean \"__GFP_NOWARN\"?"}},
        ParseErrorCase{"-1", {"\"-1\" is neither a GFP flag name nor a number"}}));
INSTANTIATE_TEST_SUITE_P(
    UnknownBits, GfpRejects,
    ::testing::Values(ParseErrorCase{"0x1000000", {"bits 0x1000000 are not GFP flags"}},
                      ParseErrorCase{"0xffffffff", {"bits 0xff000200 are not GFP flags"}},
                      ParseErrorCase{"GFP_KERNEL|0xa20", {"bits 0x200", "__GFP_ATOMIC"}},
                      ParseErrorCase{"16777216", {"bits 0x1000000"}}));
INSTANTIATE_TEST_SUITE_P(
    Overflow, GfpRejects,
    ::testing::Values(ParseErrorCase{"0x100000000", {"overflows a 32-bit gfp_t"}},
                      ParseErrorCase{"4294967296", {"overflows a 32-bit gfp_t"}},
                      ParseErrorCase{"0x123456789abcdef0123", {"overflows"}}));
INSTANTIATE_TEST_SUITE_P(
    MalformedNumber, GfpRejects,
    ::testing::Values(ParseErrorCase{"0x", {"no hex digits"}},
                      ParseErrorCase{"0xcg0", {"\"0xcg0\" is not a hex number"}},
                      ParseErrorCase{"32a4", {"\"32a4\" is not a decimal number"}},
                      ParseErrorCase{"010", {"must not start with 0"}}));

TEST(Gfp, ParsingDoesNotValidateZoneCombinations) {
  absl::StatusOr<gfp_t> parsed = ParseGfp("GFP_DMA|GFP_DMA32");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, 0x5u);
}

// --- FormatGfp ---------------------------------------------------------------------------------

class GfpFormats : public ::testing::TestWithParam<ParseCase> {};

// `text` is what the kernel prints for `expected` (%pGg / show_gfp_flags, e.g. in OOM reports).
TEST_P(GfpFormats, AsTheKernelPrintsIt) {
  EXPECT_EQ(FormatGfp(GetParam().expected), GetParam().text);
}

INSTANTIATE_TEST_SUITE_P(
    KernelOutput, GfpFormats,
    ::testing::Values(ParseCase{"GFP_KERNEL", 0xcc0}, ParseCase{"GFP_ATOMIC", 0x820},
                      ParseCase{"GFP_NOWAIT", 0x2800}, ParseCase{"GFP_NOFS|__GFP_NOFAIL", 0x8c40},
                      ParseCase{"GFP_HIGHUSER_MOVABLE", 0x100cca},
                      ParseCase{"GFP_HIGHUSER_MOVABLE|__GFP_COMP", 0x140cca},
                      ParseCase{"GFP_KERNEL|__GFP_HIGHMEM|__GFP_NOWARN|__GFP_ZERO", 0x2dc2},
                      ParseCase{"GFP_KERNEL_ACCOUNT|__GFP_ZERO", 0x400dc0},
                      ParseCase{"GFP_KERNEL|GFP_DMA", 0xcc1},
                      ParseCase{"GFP_TRANSHUGE", 0x1c24ca},
                      ParseCase{"GFP_TRANSHUGE_LIGHT", 0x1c20ca},
                      ParseCase{"__GFP_DIRECT_RECLAIM", 0x400}));
INSTANTIATE_TEST_SUITE_P(LargestCompoundFirst, GfpFormats,
                         ::testing::Values(ParseCase{"GFP_USER", 0x100cc0},
                                           ParseCase{"GFP_NOIO", 0xc00},
                                           ParseCase{"GFP_NOIO|__GFP_FS", 0xc80}));
INSTANTIATE_TEST_SUITE_P(ZeroAndUnknownBits, GfpFormats,
                         ::testing::Values(ParseCase{"0", 0}, ParseCase{"0x1000000", 0x1000000},
                                           ParseCase{"GFP_KERNEL|0x1000200", 0x1000ec0}));

// Every FormatGfp() output of a mask within kGfpKnownMask parses back to the same mask.
void ExpectRoundTrip(gfp_t gfp) {
  const std::string text = FormatGfp(gfp);
  absl::StatusOr<gfp_t> parsed = ParseGfp(text);
  ASSERT_TRUE(parsed.ok()) << Hex(gfp) << " formatted as \"" << text << "\": " << parsed.status();
  EXPECT_EQ(Hex(*parsed), Hex(gfp)) << "via \"" << text << "\"";
}

TEST(Gfp, FormatRoundTripsEverySingleBit) {
  int bits = 0;
  for (gfp_t bit = 1; bit != 0; bit <<= 1) {
    if ((bit & kGfpKnownMask) == 0) continue;
    ExpectRoundTrip(bit);
    ++bits;
  }
  EXPECT_EQ(bits, 23);
}

TEST(Gfp, FormatRoundTripsEveryCompoundMask) {
  for (const KernelValue& v : kKernelValues) ExpectRoundTrip(v.kernel);
}

TEST(Gfp, FormatRoundTripsRandomMasks) {
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<gfp_t> any;
  for (int i = 0; i < 5000; ++i) ExpectRoundTrip(any(rng) & kGfpKnownMask);
}

// --- ValidateGfp -------------------------------------------------------------------------------

TEST(Gfp, ValidateAcceptsTheCommonMasks) {
  for (gfp_t gfp : {gfp_t{0}, GFP_KERNEL, GFP_ATOMIC, GFP_NOWAIT, GFP_NOIO, GFP_NOFS, GFP_USER,
                    GFP_HIGHUSER, GFP_HIGHUSER_MOVABLE, GFP_TRANSHUGE, GFP_TRANSHUGE_LIGHT,
                    GFP_KERNEL_ACCOUNT | __GFP_ZERO, GFP_KERNEL | __GFP_NOFAIL,
                    GFP_KERNEL | GFP_DMA, GFP_ATOMIC | GFP_DMA32,
                    // Every flag at once, minus one side of each conflict.
                    kGfpKnownMask &
                        ~(__GFP_DMA | __GFP_DMA32 | __GFP_RECLAIMABLE | __GFP_NORETRY)}) {
    EXPECT_TRUE(ValidateGfp(gfp).ok()) << FormatGfp(gfp) << ": " << ValidateGfp(gfp);
  }
}

// GFP_ZONE_BAD from include/linux/gfp.h, as a literal list.
const std::set<gfp_t> kZoneBad = {0x3, 0x5, 0x6, 0x7, 0xb, 0xd, 0xe, 0xf};

class GfpZoneModifiers : public ::testing::TestWithParam<gfp_t> {};

TEST_P(GfpZoneModifiers, ValidateRejectsExactlyTheZoneBadCombinations) {
  const gfp_t gfp = GFP_KERNEL | GetParam();
  const absl::Status status = ValidateGfp(gfp);
  if (kZoneBad.count(GetParam())) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(),
                HasSubstr("at most one of __GFP_DMA, __GFP_DMA32, __GFP_HIGHMEM may be set"));
  } else {
    EXPECT_TRUE(status.ok()) << status;
  }
}

INSTANTIATE_TEST_SUITE_P(Gfp, GfpZoneModifiers, ::testing::Range(gfp_t{0}, gfp_t{16}),
                         [](const auto& info) { return Hex(info.param); });

struct ValidateErrorCase {
  std::string_view label;
  gfp_t gfp;
  std::string_view message_part;
};

void PrintTo(const ValidateErrorCase& c, std::ostream* os) { *os << c.label; }

class GfpValidateRejects : public ::testing::TestWithParam<ValidateErrorCase> {};

TEST_P(GfpValidateRejects, MaskWithAPreciseMessage) {
  const absl::Status status = ValidateGfp(GetParam().gfp);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(Hex(GetParam().gfp)),
                                      HasSubstr(std::string(GetParam().message_part))));
}

INSTANTIATE_TEST_SUITE_P(
    Gfp, GfpValidateRejects,
    ::testing::Values(
        ValidateErrorCase{"DmaAndDma32", GFP_KERNEL | __GFP_DMA | __GFP_DMA32,
                          "__GFP_DMA|__GFP_DMA32: at most one of"},
        ValidateErrorCase{"DmaAndHighmem", __GFP_DMA | __GFP_HIGHMEM,
                          "__GFP_DMA|__GFP_HIGHMEM: at most one of"},
        ValidateErrorCase{"AllThreeWithMovable", GFP_ZONEMASK,
                          "__GFP_DMA|__GFP_DMA32|__GFP_HIGHMEM: at most one of"},
        ValidateErrorCase{"MovableAndReclaimable", GFP_KERNEL | __GFP_MOVABLE | __GFP_RECLAIMABLE,
                          "__GFP_MOVABLE|__GFP_RECLAIMABLE: conflicting migratetypes"},
        ValidateErrorCase{"NofailThatCannotBlock", GFP_ATOMIC | __GFP_NOFAIL,
                          "__GFP_NOFAIL without __GFP_DIRECT_RECLAIM"},
        ValidateErrorCase{"NofailAndNoretry", GFP_KERNEL | __GFP_NOFAIL | __GFP_NORETRY,
                          "__GFP_NOFAIL|__GFP_NORETRY: contradictory"},
        ValidateErrorCase{"UnknownBit", GFP_KERNEL | 0x1000000, "bits 0x1000000 are not GFP flags"},
        ValidateErrorCase{"RetiredAtomicBit", 0xa20, "0x200 was __GFP_ATOMIC"}),
    [](const auto& info) { return std::string(info.param.label); });

TEST(Gfp, ValidateReportsEveryProblemAtOnce) {
  const absl::Status status =
      ValidateGfp(GFP_ATOMIC | __GFP_NOFAIL | __GFP_NORETRY | __GFP_DMA | __GFP_DMA32);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("at most one of"), HasSubstr("without __GFP_DIRECT_RECLAIM"),
                    HasSubstr("__GFP_NOFAIL|__GFP_NORETRY")));
}

// --- gfp_zone ----------------------------------------------------------------------------------

using Configured = std::array<bool, MAX_NR_ZONES>;  // DMA, DMA32, NORMAL, HIGHMEM
constexpr Configured kAllZones = {true, true, true, true};
constexpr Configured kI386 = {true, false, true, true};      // no ZONE_DMA32
constexpr Configured kX86_64 = {true, true, true, false};    // no ZONE_HIGHMEM
constexpr Configured kNoDma = {false, true, true, false};    // e.g. arm64 without CONFIG_ZONE_DMA

struct ZoneCase {
  std::string_view target;
  Configured configured;
  gfp_t zone_bits;
  ZoneType expected;
};

void PrintTo(const ZoneCase& c, std::ostream* os) {
  *os << c.target << " " << Hex(c.zone_bits) << " -> " << zone_name(c.expected);
}

class GfpZone : public ::testing::TestWithParam<ZoneCase> {};

TEST_P(GfpZone, PicksTheHighestAllowedZone) {
  const ZoneCase& c = GetParam();
  EXPECT_EQ(zone_name(gfp_zone(GFP_KERNEL | c.zone_bits, c.configured)), zone_name(c.expected));
}

// KERNEL.md section 5: 0x0 NORMAL, 0x1 DMA, 0x2 HIGHMEM, 0x4 DMA32, 0x8 NORMAL, 0x9 DMA,
// 0xa HIGHMEM (MOVABLE in the kernel; we have no ZONE_MOVABLE), 0xc DMA32.
INSTANTIATE_TEST_SUITE_P(
    AllZones, GfpZone,
    ::testing::Values(
        ZoneCase{"all", kAllZones, 0x0, ZONE_NORMAL}, ZoneCase{"all", kAllZones, 0x1, ZONE_DMA},
        ZoneCase{"all", kAllZones, 0x2, ZONE_HIGHMEM}, ZoneCase{"all", kAllZones, 0x4, ZONE_DMA32},
        ZoneCase{"all", kAllZones, 0x8, ZONE_NORMAL}, ZoneCase{"all", kAllZones, 0x9, ZONE_DMA},
        ZoneCase{"all", kAllZones, 0xa, ZONE_HIGHMEM},
        ZoneCase{"all", kAllZones, 0xc, ZONE_DMA32}));
// OPT_ZONE_*: a zone the target's kernel lacks reads as ZONE_NORMAL.
INSTANTIATE_TEST_SUITE_P(
    I386WithoutDma32, GfpZone,
    ::testing::Values(ZoneCase{"i386", kI386, 0x0, ZONE_NORMAL},
                      ZoneCase{"i386", kI386, 0x1, ZONE_DMA},
                      ZoneCase{"i386", kI386, 0x2, ZONE_HIGHMEM},
                      ZoneCase{"i386", kI386, 0x4, ZONE_NORMAL},
                      ZoneCase{"i386", kI386, 0x8, ZONE_NORMAL},
                      ZoneCase{"i386", kI386, 0x9, ZONE_DMA},
                      ZoneCase{"i386", kI386, 0xa, ZONE_HIGHMEM},
                      ZoneCase{"i386", kI386, 0xc, ZONE_NORMAL}));
INSTANTIATE_TEST_SUITE_P(
    X86_64WithoutHighmem, GfpZone,
    ::testing::Values(ZoneCase{"x86_64", kX86_64, 0x0, ZONE_NORMAL},
                      ZoneCase{"x86_64", kX86_64, 0x1, ZONE_DMA},
                      ZoneCase{"x86_64", kX86_64, 0x2, ZONE_NORMAL},
                      ZoneCase{"x86_64", kX86_64, 0x4, ZONE_DMA32},
                      ZoneCase{"x86_64", kX86_64, 0x8, ZONE_NORMAL},
                      ZoneCase{"x86_64", kX86_64, 0x9, ZONE_DMA},
                      ZoneCase{"x86_64", kX86_64, 0xa, ZONE_NORMAL},
                      ZoneCase{"x86_64", kX86_64, 0xc, ZONE_DMA32}));
INSTANTIATE_TEST_SUITE_P(
    WithoutDma, GfpZone,
    ::testing::Values(ZoneCase{"nodma", kNoDma, 0x0, ZONE_NORMAL},
                      ZoneCase{"nodma", kNoDma, 0x1, ZONE_NORMAL},
                      ZoneCase{"nodma", kNoDma, 0x2, ZONE_NORMAL},
                      ZoneCase{"nodma", kNoDma, 0x4, ZONE_DMA32},
                      ZoneCase{"nodma", kNoDma, 0x8, ZONE_NORMAL},
                      ZoneCase{"nodma", kNoDma, 0x9, ZONE_NORMAL},
                      ZoneCase{"nodma", kNoDma, 0xa, ZONE_NORMAL},
                      ZoneCase{"nodma", kNoDma, 0xc, ZONE_DMA32}));

TEST(Gfp, GfpZoneIgnoresBitsAboveTheZoneModifiers) {
  EXPECT_EQ(gfp_zone(GFP_HIGHUSER_MOVABLE | __GFP_ZERO | __GFP_COMP, kAllZones), ZONE_HIGHMEM);
  EXPECT_EQ(gfp_zone(GFP_ATOMIC | GFP_DMA, kAllZones), ZONE_DMA);
}

class GfpZoneBad : public ::testing::TestWithParam<gfp_t> {};

// The kernel VM_BUG_ONs; PHYSMEM_DCHECK aborts wherever tests run (allocator/check.h; a Release
// build returns a defined zone).
TEST_P(GfpZoneBad, GfpZoneChecksABadCombination) {
  ASSERT_TRUE(kPhysmemDchecks);
  EXPECT_DEATH(gfp_zone(GFP_KERNEL | GetParam(), kAllZones), "PHYSMEM_DCHECK.*ValidateGfp");
}

INSTANTIATE_TEST_SUITE_P(Gfp, GfpZoneBad, ::testing::ValuesIn(kZoneBad),
                         [](const auto& info) { return Hex(info.param); });

// --- migratetype and blocking ------------------------------------------------------------------

TEST(Gfp, MigratetypeConstantsHaveTheKernelValues) {
  EXPECT_EQ(MIGRATE_UNMOVABLE, 0);
  EXPECT_EQ(MIGRATE_MOVABLE, 1);
  EXPECT_EQ(MIGRATE_RECLAIMABLE, 2);
}

TEST(Gfp, MigratetypeComesFromTheMobilityBits) {
  EXPECT_EQ(gfp_migratetype(GFP_KERNEL), MIGRATE_UNMOVABLE);
  EXPECT_EQ(gfp_migratetype(GFP_HIGHUSER_MOVABLE), MIGRATE_MOVABLE);
  EXPECT_EQ(gfp_migratetype(GFP_KERNEL | __GFP_RECLAIMABLE), MIGRATE_RECLAIMABLE);
}

TEST(Gfp, MigratetypeChecksBothMobilityBits) {
  ASSERT_TRUE(kPhysmemDchecks);
  EXPECT_DEATH(gfp_migratetype(__GFP_MOVABLE | __GFP_RECLAIMABLE), "PHYSMEM_DCHECK.*RECLAIMABLE");
}

TEST(Gfp, OnlyDirectReclaimAllowsBlocking) {
  EXPECT_TRUE(gfpflags_allow_blocking(GFP_KERNEL));
  EXPECT_TRUE(gfpflags_allow_blocking(GFP_NOIO));
  EXPECT_TRUE(gfpflags_allow_blocking(GFP_TRANSHUGE));
  EXPECT_TRUE(gfpflags_allow_blocking(__GFP_DIRECT_RECLAIM));
  EXPECT_FALSE(gfpflags_allow_blocking(GFP_ATOMIC));
  EXPECT_FALSE(gfpflags_allow_blocking(GFP_NOWAIT));
  EXPECT_FALSE(gfpflags_allow_blocking(GFP_TRANSHUGE_LIGHT));
  EXPECT_FALSE(gfpflags_allow_blocking(__GFP_KSWAPD_RECLAIM));
}

// --- ALLOC_* -----------------------------------------------------------------------------------

TEST(Gfp, AllocFlagsHaveTheKernelValues) {
  EXPECT_EQ(ALLOC_WMARK_MIN, 0u);
  EXPECT_EQ(ALLOC_WMARK_LOW, 1u);
  EXPECT_EQ(ALLOC_WMARK_HIGH, 2u);
  EXPECT_EQ(ALLOC_WMARK_MASK, 3u);
  EXPECT_EQ(ALLOC_NO_WATERMARKS, 0x04u);
  EXPECT_EQ(ALLOC_OOM, 0x08u);
  EXPECT_EQ(ALLOC_NON_BLOCK, 0x10u);
  EXPECT_EQ(ALLOC_MIN_RESERVE, 0x20u);
  EXPECT_EQ(ALLOC_CPUSET, 0x40u);
  EXPECT_EQ(ALLOC_CMA, 0x80u);
  EXPECT_EQ(ALLOC_NOFRAGMENT, 0x100u);
  EXPECT_EQ(ALLOC_HIGHATOMIC, 0x200u);
  EXPECT_EQ(ALLOC_KSWAPD, 0x800u);
  EXPECT_EQ(ALLOC_RESERVES, 0x238u);
}

struct AllocFlagsCase {
  std::string_view label;
  gfp_t gfp;
  unsigned order;
  unsigned expected;
};

void PrintTo(const AllocFlagsCase& c, std::ostream* os) { *os << c.label; }

class GfpToAllocFlags : public ::testing::TestWithParam<AllocFlagsCase> {};

TEST_P(GfpToAllocFlags, FollowsTheKernelSlowPath) {
  EXPECT_EQ(Hex(gfp_to_alloc_flags(GetParam().gfp, GetParam().order)), Hex(GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(
    Gfp, GfpToAllocFlags,
    ::testing::Values(
        // Blocking: MIN watermark, cpuset, kswapd; no reserves whatever the order.
        AllocFlagsCase{"Kernel", GFP_KERNEL, 0, ALLOC_WMARK_MIN | ALLOC_CPUSET | ALLOC_KSWAPD},
        AllocFlagsCase{"KernelOrder3", GFP_KERNEL, 3, ALLOC_CPUSET | ALLOC_KSWAPD},
        // __GFP_HIGH that may block: half the min reserve only.
        AllocFlagsCase{"KernelHigh", GFP_KERNEL | __GFP_HIGH, 3,
                       ALLOC_CPUSET | ALLOC_MIN_RESERVE | ALLOC_KSWAPD},
        // GFP_ATOMIC: MIN_RESERVE + NON_BLOCK, and the cpuset is ignored.
        AllocFlagsCase{"Atomic", GFP_ATOMIC, 0,
                       ALLOC_MIN_RESERVE | ALLOC_NON_BLOCK | ALLOC_KSWAPD},
        AllocFlagsCase{"AtomicOrder3", GFP_ATOMIC, 3,
                       ALLOC_MIN_RESERVE | ALLOC_NON_BLOCK | ALLOC_HIGHATOMIC | ALLOC_KSWAPD},
        // GFP_NOWAIT: cannot block, but no __GFP_HIGH: no min reserve, no highatomic.
        AllocFlagsCase{"Nowait", GFP_NOWAIT, 0, ALLOC_CPUSET | ALLOC_NON_BLOCK | ALLOC_KSWAPD},
        AllocFlagsCase{"NowaitOrder3", GFP_NOWAIT, 3,
                       ALLOC_CPUSET | ALLOC_NON_BLOCK | ALLOC_KSWAPD},
        // __GFP_NOMEMALLOC gives up the non-blocking extras too.
        AllocFlagsCase{"AtomicNomemallocOrder3", GFP_ATOMIC | __GFP_NOMEMALLOC, 3,
                       ALLOC_MIN_RESERVE | ALLOC_KSWAPD},
        AllocFlagsCase{"TranshugeLightOrder9", GFP_TRANSHUGE_LIGHT, 9, ALLOC_CPUSET},
        AllocFlagsCase{"NoFlags", 0, 0, ALLOC_CPUSET | ALLOC_NON_BLOCK},
        // __GFP_MEMALLOC skips watermarks unless __GFP_NOMEMALLOC forbids it.
        AllocFlagsCase{"KernelMemalloc", GFP_KERNEL | __GFP_MEMALLOC, 0,
                       ALLOC_CPUSET | ALLOC_KSWAPD | ALLOC_NO_WATERMARKS},
        AllocFlagsCase{"MemallocAlone", __GFP_MEMALLOC, 0,
                       ALLOC_CPUSET | ALLOC_NON_BLOCK | ALLOC_NO_WATERMARKS},
        AllocFlagsCase{"KernelMemallocNomemalloc", GFP_KERNEL | __GFP_MEMALLOC | __GFP_NOMEMALLOC,
                       0, ALLOC_CPUSET | ALLOC_KSWAPD}),
    [](const auto& info) { return std::string(info.param.label); });

// --- gfp_class ---------------------------------------------------------------------------------

struct ClassCase {
  gfp_t gfp;
  std::string_view expected;
};

void PrintTo(const ClassCase& c, std::ostream* os) { *os << Hex(c.gfp) << " -> " << c.expected; }

class GfpClass : public ::testing::TestWithParam<ClassCase> {};

TEST_P(GfpClass, LabelsTheRequest) { EXPECT_EQ(gfp_class(GetParam().gfp), GetParam().expected); }

INSTANTIATE_TEST_SUITE_P(
    BaseMasks, GfpClass,
    ::testing::Values(ClassCase{GFP_KERNEL, "GFP_KERNEL"}, ClassCase{GFP_ATOMIC, "GFP_ATOMIC"},
                      ClassCase{GFP_NOWAIT, "GFP_NOWAIT"}, ClassCase{GFP_USER, "GFP_USER"},
                      ClassCase{GFP_HIGHUSER, "GFP_HIGHUSER"}, ClassCase{GFP_DMA, "GFP_DMA"},
                      ClassCase{GFP_DMA32, "GFP_DMA32"}));
INSTANTIATE_TEST_SUITE_P(
    ModifiersIgnored, GfpClass,
    ::testing::Values(ClassCase{GFP_KERNEL_ACCOUNT | __GFP_ZERO, "GFP_KERNEL"},
                      ClassCase{GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY | __GFP_COMP,
                                "GFP_KERNEL"},
                      ClassCase{GFP_KERNEL | __GFP_RETRY_MAYFAIL | __GFP_NOFAIL, "GFP_KERNEL"},
                      ClassCase{GFP_KERNEL | __GFP_RECLAIMABLE, "GFP_KERNEL"},
                      ClassCase{GFP_ATOMIC | __GFP_NOWARN, "GFP_ATOMIC"},
                      ClassCase{__GFP_KSWAPD_RECLAIM, "GFP_NOWAIT"},  // pre-6.x GFP_NOWAIT
                      ClassCase{GFP_HIGHUSER_MOVABLE, "GFP_HIGHUSER"}));
INSTANTIATE_TEST_SUITE_P(
    ZoneModifiersWin, GfpClass,
    ::testing::Values(ClassCase{GFP_KERNEL | GFP_DMA, "GFP_DMA"},
                      ClassCase{GFP_ATOMIC | GFP_DMA, "GFP_DMA"},
                      ClassCase{GFP_ATOMIC | GFP_DMA32, "GFP_DMA32"},
                      ClassCase{GFP_KERNEL | GFP_DMA32 | __GFP_ZERO, "GFP_DMA32"}));
INSTANTIATE_TEST_SUITE_P(
    Other, GfpClass,
    ::testing::Values(ClassCase{0, "other"}, ClassCase{GFP_NOFS, "other"},
                      ClassCase{GFP_NOIO, "other"}, ClassCase{GFP_TRANSHUGE, "other"},
                      ClassCase{GFP_KERNEL | __GFP_HIGH, "other"},
                      ClassCase{GFP_KERNEL | __GFP_HIGHMEM, "other"},
                      ClassCase{GFP_KERNEL | __GFP_THISNODE, "other"}));

TEST(Gfp, ClassLabelsAreBounded) {
  const std::set<std::string_view> labels = {"GFP_ATOMIC", "GFP_NOWAIT", "GFP_KERNEL",
                                             "GFP_USER",   "GFP_HIGHUSER", "GFP_DMA",
                                             "GFP_DMA32",  "other"};
  std::mt19937 rng(7);
  std::uniform_int_distribution<gfp_t> any;
  for (int i = 0; i < 2000; ++i) {
    const gfp_t gfp = any(rng);
    EXPECT_TRUE(labels.count(gfp_class(gfp))) << Hex(gfp) << " -> " << gfp_class(gfp);
  }
}

}  // namespace
}  // namespace physmem
