// Tests for allocator/arena.h.
//
// The host has 24 GiB of RAM and no swap: no test touches more than a few MiB of any arena.
// Expectations about the host (hugetlb pool, THP mode, tmpfs mount options) are read from the
// host, never assumed; a test whose precondition does not hold skips and says why.
#include "allocator/arena.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/time_scale.h"

namespace physmem {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Backing = ArenaOptions::Backing;
using ::physmem::testing::ScaledTimeout;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// Debian's Abseil has its own absl::string_view, which gmock's string matchers do not take.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

uint64_t BasePage() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

std::optional<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// "always [madvise] never" -> "madvise"; nullopt if the file is missing.
std::optional<std::string> SysfsChoice(const std::string& path) {
  std::optional<std::string> text = ReadText(path);
  if (!text) return std::nullopt;
  const size_t open = text->find('['), close = text->find(']');
  if (open == std::string::npos || close == std::string::npos) return std::nullopt;
  return text->substr(open + 1, close - open - 1);
}

uint64_t PmdSize() {
  std::optional<std::string> text = ReadText("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
  return text ? std::stoull(*text) : 2 * kMiB;
}

// Anonymous THP is possible unless the PMD size's knob (or, if it inherits, the global one) is
// "never".
bool AnonThpAvailable() {
  std::optional<std::string> mode = SysfsChoice(absl::StrFormat(
      "/sys/kernel/mm/transparent_hugepage/hugepages-%dkB/enabled", PmdSize() / 1024));
  if (!mode || *mode == "inherit")
    mode = SysfsChoice("/sys/kernel/mm/transparent_hugepage/enabled");
  return mode && *mode != "never";
}

struct Pool {
  uint64_t total = 0, free = 0, rsvd = 0, page_size = 0;
  uint64_t available() const { return free - rsvd; }
};

Pool ReadPool() {
  Pool pool;
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (!(fields >> key >> value)) continue;
    if (key == "HugePages_Total:") pool.total = value;
    if (key == "HugePages_Free:") pool.free = value;
    if (key == "HugePages_Rsvd:") pool.rsvd = value;
    if (key == "Hugepagesize:") pool.page_size = value * 1024;
  }
  return pool;
}

uint64_t ProcessRssBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * BasePage();
}

std::unique_ptr<Arena> MustCreate(const ArenaOptions& options) {
  absl::StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(options);
  EXPECT_TRUE(arena.ok()) << arena.status();
  return arena.ok() ? std::move(*arena) : nullptr;
}

ArenaOptions Options(uint64_t size, Backing backing = Backing::kBest, std::string path = "") {
  ArenaOptions o;
  o.size_bytes = size;
  o.backing = backing;
  o.path = std::move(path);
  return o;
}

std::string BackingParamName(const ::testing::TestParamInfo<Backing>& info) {
  switch (info.param) {
    case Backing::kBest:
      return "Best";
    case Backing::kHugetlb:
      return "Hugetlb";
    case Backing::kThp:
      return "Thp";
    case Backing::kOrdinary:
      return "Ordinary";
  }
  return "Unknown";
}

void SkipUnlessBackingPossible(Backing backing) {
  if (backing == Backing::kThp && !AnonThpAvailable()) {
    GTEST_SKIP() << "transparent hugepages are [never] on this host";
  }
}

// ---- ParseArenaBacking / ArenaBackingName ----

struct ParseCase {
  const char* text;
  Backing expected;
};

class ParseArenaBackingAccepts : public ::testing::TestWithParam<ParseCase> {};

TEST_P(ParseArenaBackingAccepts, EachNameInAnyCase) {
  absl::StatusOr<Backing> parsed = ParseArenaBacking(GetParam().text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, GetParam().expected);
}

INSTANTIATE_TEST_SUITE_P(
    Names, ParseArenaBackingAccepts,
    ::testing::Values(ParseCase{"best", Backing::kBest}, ParseCase{"hugetlb", Backing::kHugetlb},
                    ParseCase{"thp", Backing::kThp}, ParseCase{"ordinary", Backing::kOrdinary},
                    ParseCase{"HugeTLB", Backing::kHugetlb}, ParseCase{"THP", Backing::kThp}));

class ParseArenaBackingRejects : public ::testing::TestWithParam<const char*> {};

TEST_P(ParseArenaBackingRejects, UnknownNamesListingTheAcceptedOnes) {
  absl::StatusOr<Backing> parsed = ParseArenaBacking(GetParam());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(parsed.status()), HasSubstr("expected one of best, hugetlb, thp, ordinary"));
}

INSTANTIATE_TEST_SUITE_P(Names, ParseArenaBackingRejects,
                         ::testing::Values("", "huge", "thp ", "transparent", "4k", "hugetlbfs"));

TEST(ArenaBackingName, RoundTripsThroughParseArenaBacking) {
  const std::pair<ArenaBacking, Backing> pairs[] = {
      {ArenaBacking::kHugetlb, Backing::kHugetlb},
      {ArenaBacking::kTransparentHugepages, Backing::kThp},
      {ArenaBacking::kOrdinary, Backing::kOrdinary}};
  for (const auto& [backing, option] : pairs) {
    absl::StatusOr<Backing> parsed = ParseArenaBacking(ArenaBackingName(backing));
    ASSERT_TRUE(parsed.ok()) << ArenaBackingName(backing);
    EXPECT_EQ(*parsed, option) << ArenaBackingName(backing);
  }
}

// ---- anonymous arenas ----

TEST(Arena, RejectsZeroSize) {
  absl::StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(Options(0));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(arena.status()), HasSubstr("size_bytes is 0"));
}

TEST(Arena, BestFallsBackToThpAndRecordsWhyHugetlbWasRefused) {
  const Pool pool = ReadPool();
  const uint64_t size = 256 * kMiB;
  if (pool.page_size == 0) GTEST_SKIP() << "no hugetlb support in this kernel";
  const uint64_t pages = size / pool.page_size;
  if (pool.available() >= pages) {
    GTEST_SKIP() << "the hugetlb pool can back " << size << " bytes here; nothing to refuse";
  }
  if (!AnonThpAvailable()) GTEST_SKIP() << "transparent hugepages are [never] on this host";
  std::unique_ptr<Arena> arena = MustCreate(Options(size));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->backing(), ArenaBacking::kTransparentHugepages);
  EXPECT_EQ(arena->backing_page_size(), PmdSize());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(arena->base()) % PmdSize(), 0u);
  EXPECT_EQ(arena->size(), size);
  EXPECT_FALSE(arena->shared());
  EXPECT_EQ(arena->fd(), -1);
  EXPECT_EQ(arena->path(), "");
  ASSERT_EQ(arena->refusals().size(), 1u);
  EXPECT_THAT(arena->refusals()[0],
              AllOf(StartsWith("hugetlb: memfd_create(MFD_HUGETLB): "),
                    HasSubstr(absl::StrFormat("256 MiB needs %d x %d MiB pages", pages,
                                              pool.page_size / kMiB)),
                    HasSubstr(absl::StrFormat("HugePages_Free is %d", pool.free)),
                    HasSubstr("(mmap: Cannot allocate memory)")));
  EXPECT_THAT(arena->Describe(), AllOf(StartsWith("thp, 256 MiB at 0x"), HasSubstr(", anonymous"),
                                       HasSubstr("; refused: hugetlb: memfd_create")));
}

TEST(Arena, RequiredHugetlbFailsWithThePoolFiguresWhenThePoolIsTooSmall) {
  const Pool pool = ReadPool();
  if (pool.page_size == 0) GTEST_SKIP() << "no hugetlb support in this kernel";
  const uint64_t size = 4 * pool.page_size;
  if (pool.available() >= 4) GTEST_SKIP() << "the hugetlb pool has 4 free pages here";
  absl::StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(Options(size, Backing::kHugetlb));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(arena.status()),
              AllOf(StartsWith("arena: hugetlb backing was required but refused: "),
                    HasSubstr(absl::StrFormat("needs 4 x %d MiB pages", pool.page_size / kMiB)),
                    HasSubstr(absl::StrFormat("HugePages_Free is %d", pool.free)),
                    HasSubstr(absl::StrFormat("HugePages_Total %d", pool.total))));
}

TEST(Arena, RequiredOrdinaryUsesBasePagesAndRefusesNothing) {
  std::unique_ptr<Arena> arena = MustCreate(Options(kMiB + 1, Backing::kOrdinary));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->backing(), ArenaBacking::kOrdinary);
  EXPECT_EQ(arena->backing_page_size(), BasePage());
  EXPECT_EQ(arena->size(), kMiB + BasePage());
  EXPECT_TRUE(arena->refusals().empty());
  arena->base()[kMiB / 2] = std::byte{1};
  // MADV_NOHUGEPAGE keeps one touch to one base page even where THP is "always".
  EXPECT_EQ(arena->ResidentBytes().value(), BasePage());
}

TEST(Arena, RequiredThpFaultsInWholeHugePages) {
  if (!AnonThpAvailable()) GTEST_SKIP() << "transparent hugepages are [never] on this host";
  std::unique_ptr<Arena> arena = MustCreate(Options(3 * kMiB + 1, Backing::kThp));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->backing(), ArenaBacking::kTransparentHugepages);
  EXPECT_EQ(arena->size(), 2 * PmdSize());
  EXPECT_TRUE(arena->refusals().empty());
  arena->base()[1] = std::byte{1};
  // One write maps a whole PMD-sized page (512 base pages on x86-64), proving the advice took.
  EXPECT_EQ(arena->ResidentBytes().value(), PmdSize());
}

class ArenaOfEveryBacking : public ::testing::TestWithParam<Backing> {};

TEST_P(ArenaOfEveryBacking, MapsSixtyFourGiBQuicklyWithoutTouchingIt) {
  SkipUnlessBackingPossible(GetParam());
  const uint64_t size = 64 * kGiB;
  const uint64_t rss_before = ProcessRssBytes();
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<Arena> arena = MustCreate(Options(size, GetParam()));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_NE(arena, nullptr);
  const uint64_t rss_after = ProcessRssBytes();
  // Quickly: no page is touched, so the time does not grow with the size; a sanitized build on a
  // loaded machine gets its scaled bound.
  EXPECT_LT(elapsed, ScaledTimeout(std::chrono::milliseconds(500)));
  EXPECT_EQ(arena->size(), size);
  const uint64_t resident = arena->ResidentBytes().value();
  EXPECT_LT(resident, size / 50);  // The requirement: under 2%.
  EXPECT_EQ(resident, 0u);         // And in fact nothing.
  // Process-wide: allow for unrelated allocator noise, but not for the arena.
  EXPECT_LT(rss_after - std::min(rss_before, rss_after), 16 * kMiB);
  std::cout << "64 GiB " << arena->Describe() << ": mapped in "
            << std::chrono::duration<double, std::milli>(elapsed).count() << " ms, resident "
            << resident << " bytes, process RSS +" << (rss_after - std::min(rss_before, rss_after))
            << " bytes\n";
}

TEST_P(ArenaOfEveryBacking, WritesLandAndReadBackAcrossTheWholeRange) {
  SkipUnlessBackingPossible(GetParam());
  const uint64_t size = 64 * kGiB;
  std::unique_ptr<Arena> arena = MustCreate(Options(size, GetParam()));
  ASSERT_NE(arena, nullptr);
  const uint64_t offsets[] = {0, size / 2 + 12345, size - 1};
  for (uint64_t off : offsets) arena->base()[off] = std::byte(off % 251 + 1);
  for (uint64_t off : offsets) EXPECT_EQ(arena->base()[off], std::byte(off % 251 + 1)) << off;
  // Three touches cost at most three backing pages: nothing else was faulted in.
  const uint64_t resident = arena->ResidentBytes().value();
  EXPECT_GE(resident, 3 * BasePage());
  EXPECT_LE(resident, 3 * arena->backing_page_size());
}

TEST_P(ArenaOfEveryBacking, SizeIsTheRequestRoundedUpToTheBackingPage) {
  SkipUnlessBackingPossible(GetParam());
  for (uint64_t requested : {uint64_t{1}, BasePage() + 1, 3 * kMiB + 1}) {
    std::unique_ptr<Arena> arena = MustCreate(Options(requested, GetParam()));
    ASSERT_NE(arena, nullptr);
    const uint64_t page = arena->backing_page_size();
    EXPECT_EQ(arena->size(), (requested + page - 1) / page * page) << requested;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(arena->base()) % page, 0u) << requested;
  }
}

TEST_P(ArenaOfEveryBacking, PrefaultMakesEveryPageResidentAndKeepsContents) {
  SkipUnlessBackingPossible(GetParam());
  std::unique_ptr<Arena> arena = MustCreate(Options(8 * kMiB, GetParam()));
  ASSERT_NE(arena, nullptr);
  ASSERT_EQ(arena->ResidentBytes().value(), 0u);
  arena->base()[5 * kMiB + 7] = std::byte{0x5a};
  arena->Prefault();
  EXPECT_EQ(arena->ResidentBytes().value(), arena->size());
  EXPECT_EQ(arena->base()[5 * kMiB + 7], std::byte{0x5a});
  EXPECT_EQ(arena->base()[arena->size() - 1], std::byte{0});
}

INSTANTIATE_TEST_SUITE_P(Backings, ArenaOfEveryBacking,
                         ::testing::Values(Backing::kBest, Backing::kThp, Backing::kOrdinary),
                         BackingParamName);

TEST(Arena, BackingPageSizeMatchesTheBackingObtained) {
  for (Backing b : {Backing::kBest, Backing::kThp, Backing::kOrdinary}) {
    if (b == Backing::kThp && !AnonThpAvailable()) continue;
    std::unique_ptr<Arena> arena = MustCreate(Options(4 * kMiB, b));
    ASSERT_NE(arena, nullptr);
    switch (arena->backing()) {
      case ArenaBacking::kHugetlb:
        EXPECT_EQ(arena->backing_page_size(), ReadPool().page_size);
        break;
      case ArenaBacking::kTransparentHugepages:
        EXPECT_EQ(arena->backing_page_size(), PmdSize());
        break;
      case ArenaBacking::kOrdinary:
        EXPECT_EQ(arena->backing_page_size(), BasePage());
        break;
    }
  }
}

// ---- file-backed arenas ----

// A unique path per test under dir, removed when the test ends whatever happened.
class ArenaFileTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const std::string& p : paths_) unlink(p.c_str());
  }
  std::string NewPath(const std::string& dir = "/dev/shm") {
    paths_.push_back(absl::StrFormat("%s/physmem-arena-test-%d-%s-%d", dir, getpid(),
                                     ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                                     paths_.size()));
    unlink(paths_.back().c_str());
    return paths_.back();
  }
  static void WriteFile(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
  }
  static std::string Pattern(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
    return s;
  }

 private:
  std::vector<std::string> paths_;
};

TEST_F(ArenaFileTest, CreatesAMissingFileOfTheArenaSizeWithMode0600) {
  const std::string path = NewPath();
  std::unique_ptr<Arena> arena = MustCreate(Options(kMiB + 100, Backing::kBest, path));
  ASSERT_NE(arena, nullptr);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), arena->size());
  EXPECT_EQ(arena->size() % arena->backing_page_size(), 0u);
  EXPECT_GE(arena->size(), kMiB + 100);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(arena->shared());
  EXPECT_GE(arena->fd(), 0);
  EXPECT_EQ(arena->path(), path);
  EXPECT_NE(arena->backing(), ArenaBacking::kHugetlb);
  ASSERT_GE(arena->refusals().size(), 1u);
  EXPECT_EQ(arena->refusals()[0], absl::StrCat("hugetlb: ", path, " is on tmpfs, not hugetlbfs"));
  EXPECT_THAT(arena->Describe(), HasSubstr(absl::StrCat("file ", path, " on tmpfs")));
  EXPECT_EQ(arena->ResidentBytes().value(), 0u);
}

TEST_F(ArenaFileTest, SecondArenaOnTheSamePathSeesTheFirstOnesWrites) {
  const std::string path = NewPath();
  std::unique_ptr<Arena> first = MustCreate(Options(4 * kMiB, Backing::kBest, path));
  std::unique_ptr<Arena> second = MustCreate(Options(4 * kMiB, Backing::kBest, path));
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  ASSERT_NE(first->base(), second->base());
  std::memcpy(first->base() + 3 * kMiB, "hello", 5);
  EXPECT_EQ(std::memcmp(second->base() + 3 * kMiB, "hello", 5), 0);
  second->base()[17] = std::byte{0x42};
  EXPECT_EQ(first->base()[17], std::byte{0x42});
}

TEST_F(ArenaFileTest, DataOutlivesTheArenaThatWroteIt) {
  const std::string path = NewPath();
  {
    std::unique_ptr<Arena> writer = MustCreate(Options(kMiB, Backing::kBest, path));
    ASSERT_NE(writer, nullptr);
    std::memcpy(writer->base() + 1000, "survives", 8);
  }
  std::unique_ptr<Arena> reader = MustCreate(Options(kMiB, Backing::kBest, path));
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(std::memcmp(reader->base() + 1000, "survives", 8), 0);
}

TEST_F(ArenaFileTest, RefusesAnExistingLargerFileAndLeavesItUntouched) {
  const std::string path = NewPath();
  const std::string contents = Pattern(3 * BasePage());
  WriteFile(path, contents);
  absl::StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(Options(BasePage(), Backing::kBest, path));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(arena.status()),
              AllOf(HasSubstr(absl::StrFormat("is 12 KiB (%d bytes)", 3 * BasePage())),
                    HasSubstr(absl::StrFormat("the arena of 4 KiB (%d bytes", BasePage()))));
  EXPECT_EQ(ReadText(path), contents);
}

TEST_F(ArenaFileTest, GrowsAnExistingSmallerFileKeepingItsContents) {
  const std::string path = NewPath();
  const std::string contents = Pattern(BasePage() + 10);
  WriteFile(path, contents);
  std::unique_ptr<Arena> arena = MustCreate(Options(64 * BasePage(), Backing::kBest, path));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(std::memcmp(arena->base(), contents.data(), contents.size()), 0);
  EXPECT_EQ(arena->base()[contents.size()], std::byte{0});
  EXPECT_EQ(arena->base()[arena->size() - 1], std::byte{0});
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), arena->size());
}

TEST_F(ArenaFileTest, RequiredHugetlbOnTmpfsFailsAndRemovesTheFileItCreated) {
  const std::string path = NewPath();
  absl::StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(Options(4 * kMiB, Backing::kHugetlb, path));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(arena.status()), HasSubstr("is on tmpfs, not hugetlbfs"));
  EXPECT_NE(access(path.c_str(), F_OK), 0) << path << " was left behind";
}

TEST_F(ArenaFileTest, RequiredThpOnTmpfsMatchesWhatBestFound) {
  const std::string path = NewPath();
  std::unique_ptr<Arena> best = MustCreate(Options(4 * kMiB, Backing::kBest, path));
  ASSERT_NE(best, nullptr);
  absl::StatusOr<std::unique_ptr<Arena>> thp =
      Arena::Create(Options(4 * kMiB, Backing::kThp, path));
  if (best->backing() == ArenaBacking::kTransparentHugepages) {
    ASSERT_TRUE(thp.ok()) << thp.status();
    EXPECT_EQ((*thp)->backing(), ArenaBacking::kTransparentHugepages);
    return;
  }
  ASSERT_EQ(best->refusals().size(), 2u);
  ASSERT_FALSE(thp.ok());
  EXPECT_EQ(thp.status().code(), absl::StatusCode::kFailedPrecondition);
  constexpr char kPrefix[] = "transparent hugepages: ";
  ASSERT_THAT(best->refusals()[1], StartsWith(kPrefix));
  EXPECT_EQ(Message(thp.status()), absl::StrCat("arena: thp backing was required but refused: ",
                                                best->refusals()[1].substr(strlen(kPrefix))));
}

TEST_F(ArenaFileTest, FileOnADiskFilesystemIsSharedOrdinaryAndSaysItIsNotMemoryBacked) {
  struct statfs fs;
  ASSERT_EQ(statfs("/tmp", &fs), 0);
  if (fs.f_type == TMPFS_MAGIC || fs.f_type == static_cast<decltype(fs.f_type)>(HUGETLBFS_MAGIC)) {
    GTEST_SKIP() << "/tmp is memory-backed on this host";
  }
  const std::string path = NewPath("/tmp");
  std::unique_ptr<Arena> arena = MustCreate(Options(kMiB, Backing::kBest, path));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->backing(), ArenaBacking::kOrdinary);
  EXPECT_TRUE(arena->shared());
  EXPECT_EQ(arena->refusals().size(), 2u);
  EXPECT_THAT(arena->Describe(), HasSubstr("not memory-backed"));
}

// A mount private to this process (its own mount namespace), removed at the end: lets tests
// use hugetlbfs and tmpfs mount options without changing what anyone else sees.
class PrivateMount {
 public:
  // Returns why mounting failed, "" on success.
  std::string Mount(const char* fstype, const char* options) {
    if (unshare(CLONE_NEWNS) != 0) return absl::StrCat("unshare(CLONE_NEWNS): ", strerror(errno));
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      return absl::StrCat("making / private: ", strerror(errno));
    }
    char dir[] = "/tmp/physmem-arena-mount-XXXXXX";
    if (mkdtemp(dir) == nullptr) return absl::StrCat("mkdtemp: ", strerror(errno));
    dir_ = dir;
    if (mount("none", dir, fstype, 0, options) != 0) {
      return absl::StrFormat("mount -t %s -o %s: %s", fstype, options ? options : "",
                             strerror(errno));
    }
    mounted_ = true;
    return "";
  }
  const std::string& dir() const { return dir_; }
  ~PrivateMount() {
    if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) rmdir(dir_.c_str());
  }

 private:
  std::string dir_;
  bool mounted_ = false;
};

TEST(ArenaOnTmpfs, MountWithHugeAdviseGivesThpBacking) {
  if (SysfsChoice("/sys/kernel/mm/transparent_hugepage/shmem_enabled") == "deny") {
    GTEST_SKIP() << "shmem_enabled is [deny]";
  }
  PrivateMount fs;
  if (std::string why = fs.Mount("tmpfs", "huge=advise,size=16m"); !why.empty()) {
    GTEST_SKIP() << why;
  }
  const std::string path = fs.dir() + "/arena";
  std::unique_ptr<Arena> arena = MustCreate(Options(kMiB, Backing::kBest, path));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->backing(), ArenaBacking::kTransparentHugepages);
  EXPECT_EQ(arena->backing_page_size(), PmdSize());
  EXPECT_EQ(arena->size(), PmdSize());
  ASSERT_EQ(arena->refusals().size(), 1u);
  EXPECT_THAT(arena->refusals()[0], StartsWith("hugetlb: "));
  arena->base()[3] = std::byte{3};
  // The first write allocates one PMD-sized shmem page: all of it is resident at once.
  EXPECT_EQ(arena->ResidentBytes().value(), PmdSize());
  arena.reset();
  unlink(path.c_str());
}

// PR_SET_THP_DISABLE turns THP off for this process only: a real refusal without touching sysfs.
class ThpDisabledForProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) GTEST_SKIP() << "PR_SET_THP_DISABLE";
  }
  void TearDown() override { prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0); }
};

TEST_F(ThpDisabledForProcess, BestFallsBackToOrdinaryAndSaysWhy) {
  std::unique_ptr<Arena> arena = MustCreate(Options(4 * kMiB));
  ASSERT_NE(arena, nullptr);
  if (arena->backing() == ArenaBacking::kHugetlb) GTEST_SKIP() << "the hugetlb pool backed it";
  EXPECT_EQ(arena->backing(), ArenaBacking::kOrdinary);
  ASSERT_EQ(arena->refusals().size(), 2u);
  EXPECT_THAT(arena->refusals()[0], StartsWith("hugetlb: "));
  EXPECT_EQ(arena->refusals()[1],
            "transparent hugepages: disabled for this process (prctl(PR_SET_THP_DISABLE) is set)");
  arena->base()[0] = std::byte{1};
  EXPECT_EQ(arena->ResidentBytes().value(), BasePage());
}

TEST_F(ThpDisabledForProcess, RequiredThpFailsWithTheReason) {
  absl::StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(Options(4 * kMiB, Backing::kThp));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Message(arena.status()),
            "arena: thp backing was required but refused: disabled for this process "
            "(prctl(PR_SET_THP_DISABLE) is set)");
}

// ---- hugetlb pool: the success path, on hosts where root may grow vm.nr_hugepages ----

// Serializes pool changes across test processes (a sanitizer build running at the same time)
// with an abstract Unix socket name: released by the kernel even if the process dies.
class CrossProcessLock {
 public:
  bool Acquire(std::chrono::milliseconds timeout) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    constexpr char kName[] = "physmemd-arena-test-nr_hugepages";
    std::memcpy(addr.sun_path + 1, kName, sizeof(kName) - 1);
    const socklen_t len = offsetof(sockaddr_un, sun_path) + 1 + sizeof(kName) - 1;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
      if (errno != EADDRINUSE || std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return true;
  }
  ~CrossProcessLock() {
    if (fd_ >= 0) close(fd_);
  }

 private:
  int fd_ = -1;
};

constexpr char kNrHugepages[] = "/proc/sys/vm/nr_hugepages";

bool WriteNrHugepages(uint64_t n) {
  const int fd = open(kNrHugepages, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const std::string text = std::to_string(n);
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return ok;
}

class HugetlbPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Another process's test holds it for as long as its arenas take to create (longer under a
    // sanitizer): the wait is scaled to the build.
    if (!lock_.Acquire(ScaledTimeout(std::chrono::seconds(30)))) GTEST_SKIP() << "another test holds the pool";
    if (ReadPool().page_size == 0) GTEST_SKIP() << "no hugetlb support in this kernel";
    std::optional<std::string> old = ReadText(kNrHugepages);
    ASSERT_TRUE(old.has_value());
    old_nr_ = std::stoull(*old);
  }
  void TearDown() override {
    if (changed_) {
      EXPECT_TRUE(WriteNrHugepages(old_nr_)) << "could not restore " << kNrHugepages;
    }
  }
  // Makes exactly `pages` default-size huge pages available (free and unreserved), or skips.
  void MakeAvailable(uint64_t pages) {
    const Pool pool = ReadPool();
    if (pool.available() > pages) {
      GTEST_SKIP() << "the pool already has " << pool.available() << " pages available";
    }
    const uint64_t target = pool.total + (pages - pool.available());
    changed_ = WriteNrHugepages(target);  // Possibly with fewer pages: restore even then.
    if (!changed_ || ReadPool().available() != pages) {
      GTEST_SKIP() << "cannot grow " << kNrHugepages << " to " << target
                   << " (not root, or no contiguous memory): the success path is untested here";
    }
  }

 private:
  CrossProcessLock lock_;
  uint64_t old_nr_ = 0;
  bool changed_ = false;
};

TEST_F(HugetlbPoolTest, BestPicksHugetlbAndReservesThePagesAtMapTime) {
  MakeAvailable(4);
  if (IsSkipped()) return;
  const Pool before = ReadPool();
  std::unique_ptr<Arena> arena = MustCreate(Options(4 * before.page_size - 1));
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->backing(), ArenaBacking::kHugetlb);
  EXPECT_EQ(arena->backing_page_size(), before.page_size);
  EXPECT_EQ(arena->size(), 4 * before.page_size);
  EXPECT_TRUE(arena->refusals().empty());
  EXPECT_TRUE(arena->shared());
  EXPECT_GE(arena->fd(), 0);
  EXPECT_THAT(arena->Describe(), AllOf(StartsWith("hugetlb, "), HasSubstr("memfd")));
  // No MAP_NORESERVE: all four pages are promised now, none is faulted in yet.
  EXPECT_EQ(ReadPool().rsvd, before.rsvd + 4);
  EXPECT_EQ(arena->ResidentBytes().value(), 0u);
  arena->base()[arena->size() - 1] = std::byte{9};
  EXPECT_EQ(arena->base()[arena->size() - 1], std::byte{9});
  EXPECT_EQ(arena->ResidentBytes().value(), before.page_size);
  arena.reset();
  EXPECT_EQ(ReadPool().available(), 4u);
}

TEST_F(HugetlbPoolTest, RequiredHugetlbFailsCleanlyWhenThePoolIsOnePageShort) {
  MakeAvailable(3);
  if (IsSkipped()) return;
  const Pool pool = ReadPool();
  absl::StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(Options(4 * pool.page_size, Backing::kHugetlb));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(arena.status()),
              AllOf(HasSubstr(absl::StrFormat("needs 4 x %d MiB pages", pool.page_size / kMiB)),
                    HasSubstr("HugePages_Free is 3")));
  EXPECT_EQ(ReadPool().available(), 3u) << "a failed Create must not keep a reservation";
}

TEST_F(HugetlbPoolTest, FileOnHugetlbfsIsHugetlbBackedAndShared) {
  MakeAvailable(2);
  if (IsSkipped()) return;
  PrivateMount fs;
  if (std::string why = fs.Mount("hugetlbfs", nullptr); !why.empty()) GTEST_SKIP() << why;
  const uint64_t page = ReadPool().page_size;
  const std::string path = fs.dir() + "/arena";
  {
    std::unique_ptr<Arena> first = MustCreate(Options(2 * page, Backing::kBest, path));
    ASSERT_NE(first, nullptr);
    EXPECT_EQ(first->backing(), ArenaBacking::kHugetlb);
    EXPECT_EQ(first->backing_page_size(), page);
    EXPECT_TRUE(first->refusals().empty());
    EXPECT_THAT(first->Describe(), HasSubstr(absl::StrCat("file ", path, " on hugetlbfs")));
    std::unique_ptr<Arena> second = MustCreate(Options(2 * page, Backing::kHugetlb, path));
    ASSERT_NE(second, nullptr);
    std::memcpy(first->base() + page + 5, "shared", 6);
    EXPECT_EQ(std::memcmp(second->base() + page + 5, "shared", 6), 0);
    absl::StatusOr<std::unique_ptr<Arena>> thp =
        Arena::Create(Options(2 * page, Backing::kThp, path));
    EXPECT_EQ(thp.status().code(), absl::StatusCode::kInvalidArgument);
  }
  unlink(path.c_str());
}

TEST_F(HugetlbPoolTest, FileOnHugetlbfsFailsWithoutFallbackWhenThePoolIsShort) {
  MakeAvailable(1);
  if (IsSkipped()) return;
  PrivateMount fs;
  if (std::string why = fs.Mount("hugetlbfs", nullptr); !why.empty()) GTEST_SKIP() << why;
  const uint64_t page = ReadPool().page_size;
  const std::string path = fs.dir() + "/arena";
  absl::StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(Options(2 * page, Backing::kBest, path));
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(arena.status()),
              AllOf(HasSubstr("can only be hugetlb-backed"),
                    HasSubstr(absl::StrFormat("needs 2 x %d MiB pages, HugePages_Free is 1",
                                              page / kMiB))));
  EXPECT_NE(access(path.c_str(), F_OK), 0) << path << " was left behind";
}

// ---- MapZeroedNoReserve ----

TEST(MapZeroedNoReserve, MapsSixtyFourGiBThatReadsAsZeroAndCostsNothingUntilWritten) {
  const uint64_t size = 64 * kGiB;
  const uint64_t rss_before = ProcessRssBytes();
  absl::StatusOr<void*> p = MapZeroedNoReserve(size);
  ASSERT_TRUE(p.ok()) << p.status();
  auto* bytes = static_cast<unsigned char*>(*p);
  for (uint64_t off : {uint64_t{0}, size / 3, size - 1}) {
    EXPECT_EQ(bytes[off], 0) << off;
    bytes[off] = 0xff;
    EXPECT_EQ(bytes[off], 0xff) << off;
  }
  EXPECT_LT(ProcessRssBytes() - std::min(rss_before, ProcessRssBytes()), 16 * kMiB);
  UnmapNoReserve(*p, size);
}

TEST(MapZeroedNoReserve, RejectsZeroBytes) {
  absl::StatusOr<void*> p = MapZeroedNoReserve(0);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace physmem
