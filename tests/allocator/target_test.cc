// Tests for allocator/target.h: the built-in profiles against the kernel's zone limits
// (KERNEL.md section 1), their memory maps, and the custom-profile parser and validator.
#include "allocator/target.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace physmem {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kTiB = uint64_t{1} << 40;
constexpr uint64_t kUnbounded = UINT64_MAX;
// i386 RAM starts again at 1 MiB after 636 KiB of low memory: 388 KiB are not RAM.
constexpr uint64_t kIsaHole = kMiB - 0x9f000;
// The x86 firmware map's page 0, which 6.12's trim_bios_range() turns into E820_TYPE_RESERVED:
// the built-ins are asked for `mem` bytes of e820 RAM and list one page less as memblock memory.
uint64_t TrimmedPage0(std::string_view target) {
  return target == "x86_64" || target == "i386" ? 4096 : 0;
}

// Directory of this file's test data; PHYSMEM_TESTDATA overrides it for out-of-tree runs.
std::string TestdataDir() {
  if (const char* dir = std::getenv("PHYSMEM_TESTDATA")) return dir;
  const std::string here = __FILE__;
  return here.substr(0, here.find_last_of('/')) + "/testdata";
}

std::string RepoPath(const std::string& relative) {
  return TestdataDir() + "/../../../" + relative;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Debian's absl::string_view is not std::string_view, so gMock matchers need a std::string.
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

bool IsRam(const Target& t, uint64_t addr) {
  for (const RamRange& r : t.ram) {
    if (addr >= r.start && addr < r.end()) return true;
  }
  return false;
}

bool AnyRamIn(const Target& t, uint64_t start, uint64_t end) {
  for (const RamRange& r : t.ram) {
    if (r.start < end && start < r.end()) return true;
  }
  return false;
}

Target MustBuiltin(std::string_view name, uint64_t mem = 0) {
  absl::StatusOr<Target> t = BuiltinTarget(name, mem);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : Target{};
}

// ---- built-in zone limits (KERNEL.md section 1) ---------------------------------------------

struct ZoneLimitCase {
  const char* target;
  ZoneType zone;
  bool configured;
  uint64_t end;  // ignored when not configured
};

class BuiltinZoneLimit : public ::testing::TestWithParam<ZoneLimitCase> {};

TEST_P(BuiltinZoneLimit, MatchesTheKernel) {
  const ZoneLimitCase& c = GetParam();
  const Target t = MustBuiltin(c.target);
  EXPECT_EQ(t.zone_configured[c.zone], c.configured) << zone_name(c.zone);
  if (c.configured) {
    EXPECT_EQ(t.zone_end[c.zone], c.end) << zone_name(c.zone);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Targets, BuiltinZoneLimit,
    ::testing::Values(
        // x86_64: MAX_DMA_PFN (16 MiB ISA), MAX_DMA32_PFN (4 GiB), NORMAL above, no HIGHMEM.
        ZoneLimitCase{"x86_64", ZONE_DMA, true, 16 * kMiB},
        ZoneLimitCase{"x86_64", ZONE_DMA32, true, 4 * kGiB},
        ZoneLimitCase{"x86_64", ZONE_NORMAL, true, kUnbounded},
        ZoneLimitCase{"x86_64", ZONE_HIGHMEM, false, 0},
        // i386 VMSPLIT_3G: DMA 16 MiB, NORMAL up to MAXMEM = (PKMAP_BASE - 2 pages) - PAGE_OFFSET
        // - 128 MiB __VMALLOC_RESERVE = 0x377fe000 (arch/x86/include/asm/pgtable_32_areas.h).
        ZoneLimitCase{"i386", ZONE_DMA, true, 16 * kMiB},
        ZoneLimitCase{"i386", ZONE_DMA32, false, 0},
        ZoneLimitCase{"i386", ZONE_NORMAL, true, 0x377fe000},
        ZoneLimitCase{"i386", ZONE_HIGHMEM, true, kUnbounded},
        // arm64, zone_dma_bits = 32: DMA reaches 4 GiB, DMA32 configured but zero-width.
        ZoneLimitCase{"arm64", ZONE_DMA, true, 4 * kGiB},
        ZoneLimitCase{"arm64", ZONE_DMA32, true, 4 * kGiB},
        ZoneLimitCase{"arm64", ZONE_NORMAL, true, kUnbounded},
        ZoneLimitCase{"arm64", ZONE_HIGHMEM, false, 0},
        // Raspberry Pi 4, zone_dma_bits = 30: DMA 1 GiB, DMA32 4 GiB.
        ZoneLimitCase{"rpi4", ZONE_DMA, true, 1 * kGiB},
        ZoneLimitCase{"rpi4", ZONE_DMA32, true, 4 * kGiB},
        ZoneLimitCase{"rpi4", ZONE_NORMAL, true, kUnbounded},
        ZoneLimitCase{"rpi4", ZONE_HIGHMEM, false, 0}),
    [](const auto& info) {
      return std::string(info.param.target) + "_" + std::string(zone_name(info.param.zone));
    });

TEST(BuiltinTarget, Arm64Dma32IsConfiguredButHoldsNoRam) {
  const Target t = MustBuiltin("arm64", 8 * kGiB);
  EXPECT_EQ(t.zone_start(ZONE_DMA32), t.zone_end[ZONE_DMA32]);
  EXPECT_EQ(t.zone_ram_pages(ZONE_DMA32), 0u);
  EXPECT_GT(t.zone_ram_pages(ZONE_DMA), 0u);
  EXPECT_GT(t.zone_ram_pages(ZONE_NORMAL), 0u);
}

// max_low_pfn = MAXMEM_PFN (arch/x86/mm/init_32.c highmem_pfn_init()), with MAXMEM =
// VMALLOC_END - PAGE_OFFSET - __VMALLOC_RESERVE and VMALLOC_END = PKMAP_BASE - 2 * PAGE_SIZE
// (arch/x86/include/asm/pgtable_32_areas.h, 6.12): 0xff7fe000 - 0xc0000000 - 128 MiB = 0x377fe000,
// the "lowmem : 0xc0000000 - 0xf77fe000 (887 MB)" of the kernel's boot log, not 896 MiB.
TEST(BuiltinTarget, I386LowmemEndsAtTheKernelsMaxmem) {
  const Target t = MustBuiltin("i386", 2 * kGiB);
  EXPECT_TRUE(t.has_highmem());
  const uint64_t maxmem = (t.pkmap_base - 2 * t.page_size) - t.page_offset - 128 * kMiB;
  EXPECT_EQ(maxmem, 0x377fe000u);
  EXPECT_EQ(t.lowmem_end(), maxmem);
  EXPECT_EQ(t.zone_start(ZONE_HIGHMEM), maxmem);
  EXPECT_EQ(t.zone_ram_pages(ZONE_HIGHMEM), (2 * kGiB + kIsaHole - maxmem) / 4096);
}

TEST(BuiltinTarget, TargetsWithoutHighmemHaveAnUnboundedDirectMap) {
  for (const char* name : {"x86_64", "arm64", "rpi4"}) {
    const Target t = MustBuiltin(name);
    EXPECT_FALSE(t.has_highmem()) << name;
    EXPECT_EQ(t.lowmem_end(), kUnbounded) << name;
  }
}

struct AddressCase {
  const char* target;
  uint64_t page_offset;
  uint64_t phys_offset;
};

class BuiltinAddresses : public ::testing::TestWithParam<AddressCase> {};

TEST_P(BuiltinAddresses, UseTheKernelsPageOffsetAndPhysOffset) {
  const Target t = MustBuiltin(GetParam().target);
  EXPECT_EQ(t.page_offset, GetParam().page_offset);
  EXPECT_EQ(t.phys_offset, GetParam().phys_offset);
  EXPECT_EQ(t.page_size, 4096u);
  EXPECT_EQ(t.page_shift, 12u);
  EXPECT_EQ(t.max_page_order, 10u);
  EXPECT_EQ(t.nr_page_orders(), 11u);
}

INSTANTIATE_TEST_SUITE_P(Targets, BuiltinAddresses,
                         ::testing::Values(AddressCase{"x86_64", 0xffff888000000000, 0},
                                           AddressCase{"i386", 0xc0000000, 0},
                                           AddressCase{"arm64", 0xffff000000000000, 0x80000000},
                                           AddressCase{"rpi4", 0xffff000000000000, 0}),
                         [](const auto& info) { return std::string(info.param.target); });

TEST(BuiltinTarget, I386KmapWindowHas1024SlotsWithoutPae) {
  const Target t = MustBuiltin("i386", 4 * kGiB - kIsaHole);  // RAM ends exactly at 4 GiB
  EXPECT_EQ(t.pkmap_base, 0xff800000u);
  EXPECT_EQ(t.pkmap_slots, 1024u);
}

TEST(BuiltinTarget, I386KmapWindowHas512SlotsWithPae) {
  const Target t = MustBuiltin("i386", 8 * kGiB);
  EXPECT_EQ(t.pkmap_base, 0xff800000u);
  EXPECT_EQ(t.pkmap_slots, 512u);
}

// ---- built-in sizes -------------------------------------------------------------------------

struct SizeCase {
  const char* target;
  uint64_t mem;
};

class BuiltinSize : public ::testing::TestWithParam<SizeCase> {};

TEST_P(BuiltinSize, Validates) {
  absl::StatusOr<Target> t = BuiltinTarget(GetParam().target, GetParam().mem);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(ValidateTarget(*t).ok()) << ValidateTarget(*t);
}

// The requested size is the firmware's RAM; on x86 trim_bios_range() then takes page 0.
TEST_P(BuiltinSize, HasExactlyTheRequestedRamRoundedDownToPages) {
  const Target t = MustBuiltin(GetParam().target, GetParam().mem);
  EXPECT_EQ(t.total_ram_bytes() + TrimmedPage0(GetParam().target), GetParam().mem & ~uint64_t{4095});
  EXPECT_EQ(t.total_pages() + TrimmedPage0(GetParam().target) / 4096, GetParam().mem / 4096);
}

TEST_P(BuiltinSize, PutsEveryRamPageInExactlyOneZone) {
  const Target t = MustBuiltin(GetParam().target, GetParam().mem);
  uint64_t sum = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) sum += t.zone_ram_pages(static_cast<ZoneType>(z));
  EXPECT_EQ(sum, t.total_pages());
}

TEST_P(BuiltinSize, KeepsRamSortedMergedAndPageAligned) {
  const Target t = MustBuiltin(GetParam().target, GetParam().mem);
  ASSERT_FALSE(t.ram.empty());
  for (size_t i = 0; i < t.ram.size(); ++i) {
    EXPECT_GT(t.ram[i].size, 0u);
    EXPECT_EQ(t.ram[i].start % t.page_size, 0u);
    EXPECT_EQ(t.ram[i].size % t.page_size, 0u);
    if (i > 0) {
      EXPECT_GT(t.ram[i].start, t.ram[i - 1].end()) << "ranges must not touch";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, BuiltinSize,
    ::testing::Values(SizeCase{"x86_64", 64 * kMiB},
                      SizeCase{"x86_64", 100 * kMiB + 123}, SizeCase{"x86_64", 1 * kGiB},
                      SizeCase{"x86_64", 6 * kGiB + 4096}, SizeCase{"x86_64", 64 * kGiB},
                      SizeCase{"x86_64", 16 * kTiB - 8 * kKiB},  // 2^32 - 2 pages
                      SizeCase{"i386", 32 * kMiB},
                      SizeCase{"i386", 900 * kMiB}, SizeCase{"i386", 4 * kGiB},
                      SizeCase{"i386", 64 * kGiB - kIsaHole},  // RAM ends at 64 GiB
                      SizeCase{"arm64", 64 * kMiB},
                      SizeCase{"arm64", 4 * kGiB}, SizeCase{"arm64", 5 * kGiB},
                      SizeCase{"arm64", 40 * kGiB}, SizeCase{"arm64", 512 * kGiB},
                      SizeCase{"rpi4", 1 * kGiB},
                      SizeCase{"rpi4", 3 * kGiB}, SizeCase{"rpi4", 4 * kGiB},
                      SizeCase{"rpi4", 8 * kGiB}),
    [](const auto& info) {
      return std::string(info.param.target) + "_" + std::to_string(info.param.mem) + "_bytes";
    });

struct DefaultSizeCase {
  const char* target;
  uint64_t default_mem;
};

class BuiltinDefaultSize : public ::testing::TestWithParam<DefaultSizeCase> {};

TEST_P(BuiltinDefaultSize, Validates) {
  absl::StatusOr<Target> t = BuiltinTarget(GetParam().target);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(ValidateTarget(*t).ok()) << ValidateTarget(*t);
}

TEST_P(BuiltinDefaultSize, IsUsedWhenNoSizeIsGiven) {
  EXPECT_EQ(MustBuiltin(GetParam().target).total_ram_bytes() + TrimmedPage0(GetParam().target),
            GetParam().default_mem);
}

INSTANTIATE_TEST_SUITE_P(Targets, BuiltinDefaultSize,
                         ::testing::Values(DefaultSizeCase{"x86_64", 512 * kMiB},
                                           DefaultSizeCase{"i386", 1 * kGiB},
                                           DefaultSizeCase{"arm64", 512 * kMiB},
                                           DefaultSizeCase{"rpi4", 2 * kGiB}),
                         [](const auto& info) { return std::string(info.param.target); });

struct RangeCase {
  const char* target;
  uint64_t too_small;
  uint64_t too_large;
  const char* allowed;  // how the message states the range
};

class BuiltinSizeRange : public ::testing::TestWithParam<RangeCase> {};

TEST_P(BuiltinSizeRange, RejectsTooLittleMemoryWithTheAllowedRange) {
  absl::StatusOr<Target> t = BuiltinTarget(GetParam().target, GetParam().too_small);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()),
              AllOf(HasSubstr("out of range"), HasSubstr(GetParam().allowed)));
}

TEST_P(BuiltinSizeRange, RejectsTooMuchMemoryWithTheAllowedRange) {
  absl::StatusOr<Target> t = BuiltinTarget(GetParam().target, GetParam().too_large);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()),
              AllOf(HasSubstr("out of range"), HasSubstr(GetParam().allowed)));
}

INSTANTIATE_TEST_SUITE_P(
    Targets, BuiltinSizeRange,
    ::testing::Values(
        RangeCase{"x86_64", 64 * kMiB - 4096, 16 * kTiB, "allowed 64 MiB (67108864 bytes) to"},
        RangeCase{"i386", 32 * kMiB - 4096, 64 * kGiB, "allowed 32 MiB (33554432 bytes) to"},
        RangeCase{"arm64", 64 * kMiB - 4096, 512 * kGiB + 4096, "to 512 GiB"},
        RangeCase{"rpi4", 1 * kGiB - 4096, 8 * kGiB + 4096, "allowed 1 GiB (1073741824 bytes) "
                                                             "to 8 GiB"}),
    [](const auto& info) { return std::string(info.param.target); });

TEST(BuiltinTarget, UnknownNameIsNotFoundAndListsTheKnownNames) {
  absl::StatusOr<Target> t = BuiltinTarget("sparc64");
  ASSERT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(t.status()), HasSubstr("sparc64"));
  for (const std::string& name : BuiltinTargetNames()) {
    EXPECT_THAT(Msg(t.status()), HasSubstr(name));
  }
}

TEST(BuiltinTarget, NamesAreTheFourProfilesInOrder) {
  EXPECT_EQ(BuiltinTargetNames(), (std::vector<std::string>{"x86_64", "i386", "arm64", "rpi4"}));
}

// ---- holes ----------------------------------------------------------------------------------

struct HoleCase {
  const char* target;
  uint64_t mem;
  uint64_t start;  // the hole is [start, end)
  uint64_t end;
};

class BuiltinHole : public ::testing::TestWithParam<HoleCase> {};

TEST_P(BuiltinHole, IsNotRamButRamSurroundsIt) {
  const HoleCase& c = GetParam();
  const Target t = MustBuiltin(c.target, c.mem);
  EXPECT_FALSE(AnyRamIn(t, c.start, c.end));
  EXPECT_TRUE(IsRam(t, c.start - 4096));
  EXPECT_TRUE(IsRam(t, c.end));
}

INSTANTIATE_TEST_SUITE_P(
    Targets, BuiltinHole,
    ::testing::Values(
        HoleCase{"x86_64", 512 * kMiB, 0x9f000, 1 * kMiB},      // VGA and BIOS
        HoleCase{"x86_64", 512 * kMiB, 256 * kMiB, 4 * kGiB},  // PCI hole (low RAM = M/2)
        HoleCase{"x86_64", 16 * kGiB, 3 * kGiB, 4 * kGiB},     // low RAM capped at 3 GiB
        HoleCase{"i386", 1 * kGiB, 0x9f000, 1 * kMiB},
        HoleCase{"arm64", 512 * kMiB, 2 * kGiB + 256 * kMiB, 0x880000000},
        HoleCase{"rpi4", 4 * kGiB, 0x3b400000, 0x40000000},    // GPU firmware
        HoleCase{"rpi4", 8 * kGiB, 0xfc000000, 4 * kGiB}),     // SoC MMIO
    [](const auto& info) {
      return std::string(info.param.target) + "_" + std::to_string(info.index);
    });

TEST(BuiltinTarget, Arm64HasNoRamBelowItsDramBase) {
  const Target t = MustBuiltin("arm64");
  EXPECT_FALSE(AnyRamIn(t, 0, t.phys_offset));
  EXPECT_TRUE(IsRam(t, t.phys_offset));
}

// ---- the default ----------------------------------------------------------------------------

TEST(DefaultTarget, IsX86_64WithItsDefaultSize) {
  absl::StatusOr<Target> t = DefaultTarget();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, MustBuiltin("x86_64"));
  EXPECT_EQ(t->total_ram_bytes(), 512 * kMiB - 4096);  // page 0 trimmed (trim_bios_range())
}

TEST(DefaultTarget, HasRamInEveryZoneItsArchitectureConfigures) {
  absl::StatusOr<Target> t = DefaultTarget();
  ASSERT_TRUE(t.ok()) << t.status();
  int configured = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    if (!t->zone_configured[z]) continue;
    ++configured;
    EXPECT_GT(t->zone_ram_pages(static_cast<ZoneType>(z)), 0u) << kZoneNames[z];
  }
  EXPECT_EQ(configured, 3);  // DMA, DMA32, Normal
}

// ---- custom profiles: the good ones ---------------------------------------------------------

TEST(ParseTargetText, ReadsHexValuesFromAGoodFile) {
  absl::StatusOr<Target> t = LoadTargetFile(TestdataDir() + "/good_board.textproto");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name, "good-board");
  EXPECT_THAT(t->description, HasSubstr("test board"));
  EXPECT_EQ(t->page_size, 0x1000u);
  EXPECT_EQ(t->page_offset, 0xc0000000u);
  EXPECT_EQ(t->zone_end[ZONE_DMA], 0x1000000u);
  EXPECT_EQ(t->zone_end[ZONE_NORMAL], 0x4000000u);
  EXPECT_EQ(t->zone_end[ZONE_HIGHMEM], kUnbounded);
  EXPECT_FALSE(t->zone_configured[ZONE_DMA32]);
  EXPECT_EQ(t->pkmap_base, 0xff800000u);
  EXPECT_EQ(t->pkmap_slots, 0x400u);
}

TEST(ParseTargetText, SortsRamAndMergesTouchingRanges) {
  absl::StatusOr<Target> t = LoadTargetFile(TestdataDir() + "/good_board.textproto");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->ram, (std::vector<RamRange>{
                        {0x0, 0x9f000}, {0x100000, 0x5f00000}, {0x8000000, 0x2000000}}));
}

TEST(ParseTargetText, NamesAnUnnamedProfileAfterItsFile) {
  absl::StatusOr<Target> t = ParseTargetText(
      "zone { zone: ZONE_NORMAL } ram { start: 0 size: 0x100000 }", "conf/my-board.textproto");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name, "my-board");
  EXPECT_EQ(t->page_size, 4096u);      // absent: the default
  EXPECT_EQ(t->max_page_order, 10u);   // absent: the default
}

TEST(ParseTargetText, AcceptsTheDocumentedExampleBoard) {
  absl::StatusOr<Target> t = LoadTargetFile(RepoPath("deploy/targets/example-board.textproto"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name, "example-board");
  EXPECT_TRUE(t->has_highmem());
  EXPECT_GT(t->zone_ram_pages(ZONE_DMA), 0u);
  EXPECT_GT(t->zone_ram_pages(ZONE_NORMAL), 0u);
  EXPECT_GT(t->zone_ram_pages(ZONE_HIGHMEM), 0u);
  // Its one memblock reservation (page tables and kernel image) is present DMA RAM, not managed.
  EXPECT_THAT(t->reserved, ElementsAre(RamRange{0x80004000, 0xffc000}));
  EXPECT_EQ(t->zone_managed_pages(ZONE_DMA), t->zone_ram_pages(ZONE_DMA) - 0xffc);
  EXPECT_EQ(t->managed_pages(), t->total_pages() - 0xffc);
}

// ---- custom profiles: the bad ones ----------------------------------------------------------

struct BadCase {
  const char* file;
  const char* expected;  // part of the message after "file:line: "
};

// The offending line carries a "# <-- error" comment, so the expected line lives with the data.
int MarkedLine(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find("# <-- error") != std::string::npos) return n;
  }
  return 0;
}

class BadProfile : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadProfile, IsRejectedNamingTheFileLineAndProblem) {
  const std::string path = TestdataDir() + "/" + GetParam().file;
  const std::string text = ReadFile(path);
  const int line = MarkedLine(text);
  ASSERT_GT(line, 0) << path << " has no '# <-- error' marker";

  absl::StatusOr<Target> t = ParseTargetText(text, GetParam().file);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  EXPECT_THAT(Msg(t.status()),
              AllOf(StartsWith(std::string(GetParam().file) + ":" + std::to_string(line) + ":"),
                    HasSubstr(GetParam().expected)));
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadProfile,
    ::testing::Values(
        BadCase{"bad_overlapping_ram.textproto",
                "ram[1] {start: 0x100000 size: 0x200000} overlaps ram[0] {start: 0x0 size: "
                "0x180000}"},
        BadCase{"bad_unaligned_start.textproto",
                "start 0x100800 is not a multiple of page_size 4096"},
        BadCase{"bad_unaligned_size.textproto",
                "size 0x100800 is not a multiple of page_size 4096"},
        BadCase{"bad_empty_ram_range.textproto",
                "ram[1] {start: 0x200000 size: 0x0} is empty"},
        BadCase{"bad_page_size_3000.textproto",
                "page_size 3000 (0xbb8) is not allowed: expected a power of two"},
        BadCase{"bad_page_size_2mib.textproto",
                "page_size 2097152 (0x200000) is not allowed: expected a power of two from 4096"},
        BadCase{"bad_max_page_order.textproto", "max_page_order 16 is out of range"},
        // CONFIG_PAGE_BLOCK_ORDER's range is 1..MAX_PAGE_ORDER (include/linux/pageblock-flags.h).
        BadCase{"bad_pageblock_order_too_large.textproto",
                "pageblock_order 11 is impossible: expected 1..max_page_order (10); a pageblock cannot "
                "exceed the largest buddy block"},
        BadCase{"bad_pageblock_order_negative.textproto",
                "pageblock_order -1 is impossible: expected 1..max_page_order (10); a pageblock holds at "
                "least 2 pages"},
        BadCase{"bad_pageblock_order_zone_alignment.textproto",
                "pageblock_order 9 does not fit the zone layout: zone[0] (ZONE_DMA) ends at 0x100000, not a "
                "multiple of the pageblock size 0x200000 (4096 << 9)"},
        BadCase{"bad_zones_out_of_order.textproto",
                "zone[1] (ZONE_DMA) is out of order: it comes after zone[0] (ZONE_DMA32)"},
        BadCase{"bad_zone_twice.textproto",
                "zone[1] (ZONE_DMA) is listed twice (also zone[0])"},
        BadCase{"bad_two_unbounded_zones.textproto",
                "zone[0] (ZONE_NORMAL) is unbounded (end 0 or absent) but is not the last"},
        BadCase{"bad_last_zone_bounded.textproto",
                "zone[1] (ZONE_NORMAL) ends at 0x100000000, but the highest zone must be "
                "unbounded"},
        BadCase{"bad_zone_ends_decrease.textproto",
                "zone[1] (ZONE_DMA32) ends at 0x1000000, below the end of zone[0] (ZONE_DMA)"},
        BadCase{"bad_zone_end_unaligned.textproto",
                "zone[0] (ZONE_DMA): end 0xfff800 is not a multiple of page_size"},
        BadCase{"bad_zone_unspecified.textproto", "zone[0]: ZONE_UNSPECIFIED is not a zone"},
        BadCase{"bad_missing_normal.textproto",
                "ZONE_NORMAL is not configured (zones listed: ZONE_DMA, ZONE_DMA32)"},
        BadCase{"bad_highmem_without_pkmap.textproto",
                "ZONE_HIGHMEM is configured but pkmap_slots is 0"},
        BadCase{"bad_pkmap_overlaps_direct_map.textproto",
                "the kmap() window [0xf0000000, 0xf03fffff] overlaps the direct map of lowmem "
                "[0xc0000000, 0xf7ffffff]"},
        BadCase{"bad_ram_below_phys_offset.textproto",
                "ram[1] {start: 0x40000000 size: 0x10000000} starts below phys_offset "
                "0x80000000"},
        BadCase{"bad_direct_map_wraps.textproto", "the direct map of lowmem wraps past 2^64"},
        BadCase{"bad_too_many_pages.textproto",
                "too many pages: with ram[1] {start: 0x100000000000 size: 0x80000000000} the RAM "
                "reaches 4294967296 pages"},
        BadCase{"bad_reserved_unaligned.textproto",
                "reserved[1] {start: 0x200800 size: 0x1000}: start 0x200800 is not a multiple of page_size 4096"},
        BadCase{"bad_reserved_empty.textproto",
                "reserved[0] {start: 0x100000 size: 0x0} is empty: size must be at least one page"},
        BadCase{"bad_reserved_whole_zone.textproto",
                "the reserved ranges cover all 3999 RAM pages of zone DMA (with reserved[1] {start: 0x0 size: "
                "0x1000000}); a zone with RAM must keep at least one page for the buddy allocator"},
        BadCase{"bad_unknown_field.textproto", "no field named \"colour\""},
        BadCase{"bad_syntax_error.textproto", "Expected integer"}),
    [](const auto& info) {
      std::string name = info.param.file;
      name = name.substr(4, name.find('.') - 4);  // "bad_x_y.textproto" -> "x_y"
      return name;
    });

// memblock.reserved as the kernel keeps it: sorted, overlapping and touching ranges merged
// (memblock_merge_regions()), holes allowed; reserved RAM is present but not managed.
TEST(ParseTargetText, MergesReservedRangesAndCountsOnlyTheirRamAsUnmanaged) {
  absl::StatusOr<Target> t = ParseTargetText(
      "zone { zone: ZONE_DMA end: 0x1000000 } zone { zone: ZONE_NORMAL } "
      "ram { start: 0x1000 size: 0x9e000 } ram { start: 0x100000 size: 0x3f00000 } "
      "reserved { start: 0x1800000 size: 0x2000 } reserved { start: 0x0 size: 0x10000 } "
      "reserved { start: 0x8000 size: 0xf8000 } reserved { start: 0x1801000 size: 0x3000 }",
      "reserved.textproto");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->reserved, ElementsAre(RamRange{0, 0x100000}, RamRange{0x1800000, 0x4000}));
  EXPECT_EQ(t->zone_ram_pages(ZONE_DMA), 3998u);      // pfns 1..0x9e and 0x100..0xfff
  EXPECT_EQ(t->zone_managed_pages(ZONE_DMA), 3840u);  // less the 158 below 1 MiB
  EXPECT_EQ(t->zone_managed_pages(ZONE_NORMAL), t->zone_ram_pages(ZONE_NORMAL) - 4);
  EXPECT_EQ(t->managed_pages(), t->total_pages() - 158 - 4);
  EXPECT_THAT(t->ManagedRam(), ElementsAre(RamRange{0x100000, 0x1700000}, RamRange{0x1804000, 0x27fc000}));
  EXPECT_EQ(FromProto(ToProto(*t)), *t);
}

// The x86 built-ins boot low memory as 6.12's setup_arch() does: trim_bios_range() takes page 0
// out of the RAM map, reserve_real_mode() memblock-reserves [0, 1 MiB). The numbers are this
// machine's /proc/zoneinfo DMA zone (start_pfn 1, spanned 4095, present 3998, managed 3840).
TEST(BuiltinTarget, X86ReservesTheFirstMegabyteAndHasNoPageZero) {
  for (const char* name : {"x86_64", "i386"}) {
    const Target t = MustBuiltin(name);
    EXPECT_FALSE(IsRam(t, 0)) << name;
    EXPECT_TRUE(IsRam(t, 0x1000)) << name;
    EXPECT_THAT(t.reserved, ElementsAre(RamRange{0, kMiB})) << name;
    EXPECT_EQ(t.zone_ram_pages(ZONE_DMA), 3998u) << name;
    EXPECT_EQ(t.zone_managed_pages(ZONE_DMA), 3840u) << name;
    EXPECT_EQ(t.managed_pages(), t.total_pages() - 158) << name;
  }
  for (const char* name : {"arm64", "rpi4"}) EXPECT_TRUE(MustBuiltin(name).reserved.empty()) << name;
}

TEST(ParseTargetText, RejectsAProfileWithoutRamNamingTheFile) {
  const std::string path = TestdataDir() + "/bad_no_ram.textproto";
  absl::StatusOr<Target> t = LoadTargetFile(path);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()), AllOf(StartsWith(path + ": "), HasSubstr("no RAM")));
}

TEST(LoadTargetFile, ReportsAMissingFileAsNotFoundWithItsPath) {
  const std::string path = TestdataDir() + "/does_not_exist.textproto";
  absl::StatusOr<Target> t = LoadTargetFile(path);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(t.status()), HasSubstr(path));
}

// ---- ValidateTarget on hand-built targets ---------------------------------------------------

Target SmallValidTarget() {
  Target t;
  t.name = "small";
  t.zone_configured[ZONE_NORMAL] = true;
  t.zone_end[ZONE_NORMAL] = kUnbounded;
  t.ram = {{0, 16 * kMiB}, {32 * kMiB, 16 * kMiB}};
  return t;
}

TEST(ValidateTarget, AcceptsASmallValidTarget) {
  EXPECT_TRUE(ValidateTarget(SmallValidTarget()).ok()) << ValidateTarget(SmallValidTarget());
}

TEST(ValidateTarget, RejectsAPageShiftThatDoesNotMatchThePageSize) {
  Target t = SmallValidTarget();
  t.page_shift = 13;
  EXPECT_THAT(Msg(ValidateTarget(t)), HasSubstr("page_shift 13 does not match page_size 4096"));
}

TEST(ValidateTarget, RejectsUnsortedRam) {
  Target t = SmallValidTarget();
  std::swap(t.ram[0], t.ram[1]);
  EXPECT_THAT(Msg(ValidateTarget(t)), HasSubstr("must be sorted by start"));
}

TEST(ValidateTarget, RejectsAZeroPageSizeInsteadOfDefaultingIt) {
  Target t = SmallValidTarget();
  t.page_size = 0;
  EXPECT_THAT(Msg(ValidateTarget(t)), HasSubstr("page_size 0 (0x0) is not allowed"));
}

TEST(ValidateTarget, RejectsAConfiguredZoneEndingAtZero) {
  Target t = SmallValidTarget();
  t.zone_configured[ZONE_DMA] = true;
  EXPECT_THAT(Msg(ValidateTarget(t)), HasSubstr("zone_end[DMA] is 0"));
}

TEST(ValidateTarget, RejectsHighmemWithoutKmapSlots) {
  Target t = MustBuiltin("i386");
  t.pkmap_slots = 0;
  EXPECT_THAT(Msg(ValidateTarget(t)), HasSubstr("pkmap_slots is 0"));
}

// ---- conversions ----------------------------------------------------------------------------

class BuiltinRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(BuiltinRoundTrip, SurvivesToProtoAndFromProto) {
  const Target t = MustBuiltin(GetParam());
  EXPECT_EQ(FromProto(ToProto(t)), t);
}

TEST_P(BuiltinRoundTrip, SurvivesPrintingAsTextAndParsing) {
  const Target t = MustBuiltin(GetParam());
  std::string text;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(ToProto(t), &text));
  absl::StatusOr<Target> parsed = ParseTargetText(text, "printed.textproto");
  ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << text;
  EXPECT_EQ(*parsed, t);
}

INSTANTIATE_TEST_SUITE_P(Targets, BuiltinRoundTrip,
                         ::testing::ValuesIn(BuiltinTargetNames()),
                         [](const auto& info) { return info.param; });

TEST(ToProto, WritesTheHighestZoneAsUnbounded) {
  const physmem::v1::TargetProfile p = ToProto(MustBuiltin("x86_64"));
  ASSERT_EQ(p.zone_size(), 3);
  EXPECT_EQ(p.zone(0).zone(), physmem::v1::ZONE_DMA);
  EXPECT_EQ(p.zone(0).end(), 16 * kMiB);
  EXPECT_EQ(p.zone(2).zone(), physmem::v1::ZONE_NORMAL);
  EXPECT_EQ(p.zone(2).end(), 0u);
}

TEST(FromProto, KeepsOverlappingRangesForValidationToReport) {
  physmem::v1::TargetProfile p;
  p.add_zone()->set_zone(physmem::v1::ZONE_NORMAL);
  for (auto [start, size] : {std::pair{2 * kMiB, 2 * kMiB}, std::pair{0 * kMiB, 3 * kMiB}}) {
    physmem::v1::RamRange* r = p.add_ram();
    r->set_start(start);
    r->set_size(size);
  }
  const Target t = FromProto(p);
  EXPECT_EQ(t.ram, (std::vector<RamRange>{{0, 3 * kMiB}, {2 * kMiB, 2 * kMiB}}));
  EXPECT_THAT(Msg(ValidateTarget(t)), HasSubstr("overlaps"));
}

// ---- MemoryMapString ------------------------------------------------------------------------

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(MemoryMapString, ListsEveryRamRangeAndHoleWithSizesAndZones) {
  std::vector<std::string> lines = Lines(MustBuiltin("x86_64").MemoryMapString());
  ASSERT_EQ(lines.size(), 7u);
  // Page 0 is a hole: trim_bios_range() makes it E820_TYPE_RESERVED, not memblock memory.
  EXPECT_THAT(lines[0], AllOf(StartsWith("[mem 0x0000000000000000-0x0000000000000fff] hole"),
                              HasSubstr("4 KiB")));
  EXPECT_THAT(lines[1], AllOf(StartsWith("[mem 0x0000000000001000-0x000000000009efff] RAM"),
                              HasSubstr("632 KiB"), HasSubstr("DMA")));
  lines.erase(lines.begin());
  EXPECT_THAT(lines[1], AllOf(StartsWith("[mem 0x000000000009f000-0x00000000000fffff] hole"),
                              HasSubstr("388 KiB")));
  EXPECT_THAT(lines[2], AllOf(StartsWith("[mem 0x0000000000100000-0x000000000fffffff] RAM"),
                              HasSubstr("255 MiB"), HasSubstr("DMA DMA32")));
  EXPECT_THAT(lines[3], AllOf(StartsWith("[mem 0x0000000010000000-0x00000000ffffffff] hole"),
                              HasSubstr("3840 MiB")));
  EXPECT_THAT(lines[4], AllOf(StartsWith("[mem 0x0000000100000000-0x"), HasSubstr("Normal")));
  // reserve_real_mode()'s memblock_reserve(0, SZ_1M), of which pfns 1..0x9e are RAM.
  EXPECT_EQ(lines[5], "[mem 0x0000000000000000-0x00000000000fffff] reserved 1 MiB, 158 RAM pages (memblock_reserve)");
}

TEST(MemoryMapString, ShowsTheHoleBelowTheDramBase) {
  const std::vector<std::string> lines = Lines(MustBuiltin("arm64").MemoryMapString());
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_THAT(lines[0], AllOf(StartsWith("[mem 0x0000000000000000-0x000000007fffffff] hole"),
                              HasSubstr("2 GiB")));
  EXPECT_THAT(lines[1], AllOf(HasSubstr("256 MiB"), HasSubstr("DMA")));
  EXPECT_THAT(lines[3], AllOf(HasSubstr("256 MiB"), HasSubstr("Normal")));
}

TEST(MemoryMapString, LeavesOutZeroWidthZonesThatARangeStraddles) {
  // arm64's layout with one bank across 4 GiB, where the empty DMA32 zone sits.
  absl::StatusOr<Target> t = ParseTargetText(
      "zone { zone: ZONE_DMA end: 0x100000000 } zone { zone: ZONE_DMA32 end: 0x100000000 } "
      "zone { zone: ZONE_NORMAL } ram { start: 0xc0000000 size: 0x80000000 }",
      "straddle.textproto");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->MemoryMapString(), HasSubstr("2 GiB  DMA Normal\n"));
}

}  // namespace
}  // namespace physmem
