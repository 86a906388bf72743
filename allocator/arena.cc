#include "allocator/arena.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace physmem {
namespace {

using Backing = ArenaOptions::Backing;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

constexpr char kThpDir[] = "/sys/kernel/mm/transparent_hugepage";
constexpr char kThpEnabled[] = "/sys/kernel/mm/transparent_hugepage/enabled";
constexpr char kThpShmemEnabled[] = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
constexpr char kThpPmdSize[] = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";
// x86-64's PMD size, for kernels too old to publish hpage_pmd_size.
constexpr uint64_t kDefaultPmdSize = 2 * kMiB;

// Everything a successful mapping attempt hands to the Arena.
struct Mapping {
  std::byte* base = nullptr;
  uint64_t size = 0;
  ArenaBacking backing = ArenaBacking::kOrdinary;
  uint64_t page_size = 0;
  int fd = -1;  // Owned: the memfd or the arena file.
  bool shared = false;
  std::string where;  // Describe()'s "anonymous", "memfd", "file X on tmpfs".
};

uint64_t BasePageSize() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof(buf));  // GNU strerror_r: returns the text.
}

// "512 MiB", "2 MiB", "4 KiB", "1000 bytes": exact, so messages never hide a rounding.
std::string Bytes(uint64_t n) {
  if (n != 0 && n % kGiB == 0) return absl::StrCat(n / kGiB, " GiB");
  if (n != 0 && n % kMiB == 0) return absl::StrCat(n / kMiB, " MiB");
  if (n != 0 && n % kKiB == 0) return absl::StrCat(n / kKiB, " KiB");
  return absl::StrCat(n, " bytes");
}

std::optional<uint64_t> RoundUp(uint64_t n, uint64_t align) {
  if (n > std::numeric_limits<uint64_t>::max() - (align - 1)) return std::nullopt;
  return (n + align - 1) / align * align;
}

absl::StatusOr<uint64_t> RoundSize(uint64_t requested, uint64_t page_size) {
  std::optional<uint64_t> size = RoundUp(requested, page_size);
  // mmap lengths and file sizes are signed 64-bit in the kernel (loff_t).
  if (!size || *size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("arena size_bytes %d cannot be rounded up to %s pages within 2^63 bytes",
                        requested, Bytes(page_size)));
  }
  return *size;
}

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The active choice of a sysfs selector such as "always [madvise] never".
std::string SelectedChoice(absl::string_view text) {
  const size_t open = text.find('[');
  const size_t close = text.find(']', open);
  if (open == absl::string_view::npos || close == absl::string_view::npos) {
    return std::string(absl::StripAsciiWhitespace(text));
  }
  return std::string(text.substr(open + 1, close - open - 1));
}

uint64_t ReadUint(const std::string& path, uint64_t fallback) {
  uint64_t value = 0;
  std::optional<std::string> text = ReadSmallFile(path);
  if (!text || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &value)) return fallback;
  return value;
}

uint64_t PmdSize() { return ReadUint(kThpPmdSize, kDefaultPmdSize); }

// ---- hugetlb ----

// The kernel's hugetlb pool for one page size, in pages (HugePages_* of /proc/meminfo).
struct HugetlbPool {
  uint64_t page_size = 0;  // 0: the kernel has no hugetlb support.
  uint64_t total = 0;
  uint64_t free = 0;  // Not yet faulted in, including those reserved (rsvd).
  uint64_t rsvd = 0;  // Promised to existing mappings, not yet faulted in.
};

// /proc/meminfo describes the default huge page size only.
HugetlbPool ReadDefaultHugetlbPool() {
  HugetlbPool pool;
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 2) continue;
    uint64_t value = 0;
    if (!absl::SimpleAtoi(f[1], &value)) continue;
    if (f[0] == "HugePages_Total:") pool.total = value;
    if (f[0] == "HugePages_Free:") pool.free = value;
    if (f[0] == "HugePages_Rsvd:") pool.rsvd = value;
    if (f[0] == "Hugepagesize:") pool.page_size = value * kKiB;
  }
  return pool;
}

// Other sizes (a hugetlbfs mount with pagesize=1G) are only in sysfs.
HugetlbPool ReadHugetlbPool(uint64_t page_size) {
  HugetlbPool pool = ReadDefaultHugetlbPool();
  if (pool.page_size == page_size) return pool;
  const std::string dir =
      absl::StrFormat("/sys/kernel/mm/hugepages/hugepages-%dkB/", page_size / kKiB);
  pool.page_size = page_size;
  pool.total = ReadUint(dir + "nr_hugepages", 0);
  pool.free = ReadUint(dir + "free_hugepages", 0);
  pool.rsvd = ReadUint(dir + "resv_hugepages", 0);
  return pool;
}

// Why a hugetlb mmap failed. ENOMEM is the reservation (hugetlb_reserve_pages) finding the
// pool short, so the pool figures are the explanation.
absl::Status HugetlbMmapError(absl::string_view what, uint64_t size, uint64_t page_size, int err) {
  if (err != ENOMEM) {
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrFormat("%s: mmap of %s: %s", what, Bytes(size), ErrnoText(err)));
  }
  const HugetlbPool pool = ReadHugetlbPool(page_size);
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: %s needs %d x %s pages, HugePages_Free is %d (HugePages_Total %d, HugePages_Rsvd %d "
      "promised to other mappings) (mmap: %s)",
      what, Bytes(size), size / page_size, Bytes(page_size), pool.free, pool.total, pool.rsvd,
      ErrnoText(err)));
}

// MAP_SHARED without MAP_NORESERVE: the kernel reserves every page now or refuses now.
absl::StatusOr<std::byte*> MapHugetlbFd(int fd, absl::string_view what, uint64_t size,
                                        uint64_t page_size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return HugetlbMmapError(what, size, page_size, errno);
  return static_cast<std::byte*>(p);
}

absl::StatusOr<Mapping> TryHugetlbMemfd(uint64_t requested) {
  const HugetlbPool pool = ReadDefaultHugetlbPool();
  if (pool.page_size == 0) {
    return absl::FailedPreconditionError(
        "the kernel has no hugetlb support (no Hugepagesize in /proc/meminfo)");
  }
  absl::StatusOr<uint64_t> size = RoundSize(requested, pool.page_size);
  if (!size.ok()) return size.status();
  constexpr char kWhat[] = "memfd_create(MFD_HUGETLB)";
  const int fd = memfd_create("physmem-arena", MFD_CLOEXEC | MFD_HUGETLB);
  if (fd < 0) return absl::ErrnoToStatus(errno, kWhat);
  // Sizing a hugetlbfs file reserves nothing; the mmap below does.
  if (ftruncate(fd, static_cast<off_t>(*size)) != 0) {
    const int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat(kWhat, ": ftruncate to ", Bytes(*size)));
  }
  absl::StatusOr<std::byte*> base = MapHugetlbFd(fd, kWhat, *size, pool.page_size);
  if (!base.ok()) {
    close(fd);
    return base.status();
  }
  return Mapping{*base, *size, ArenaBacking::kHugetlb, pool.page_size, fd, true, "memfd"};
}

// ---- transparent huge pages ----

// MMF_DISABLE_THP overrides every sysfs setting for this process.
absl::Status ThpProcessPolicy() {
  if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1) {
    return absl::FailedPreconditionError(
        "disabled for this process (prctl(PR_SET_THP_DISABLE) is set)");
  }
  return absl::OkStatus();
}

// Anonymous memory: the PMD size's own knob (kernels with multi-size THP, 6.8+) wins unless it
// says "inherit", in which case the top-level "enabled" decides.
absl::Status AnonThpPolicy(uint64_t pmd_size) {
  if (absl::Status s = ThpProcessPolicy(); !s.ok()) return s;
  std::optional<std::string> top = ReadSmallFile(kThpEnabled);
  if (!top) {
    return absl::FailedPreconditionError(
        absl::StrCat("not supported by this kernel (no ", kThpEnabled, ")"));
  }
  const std::string per_size_path =
      absl::StrFormat("%s/hugepages-%dkB/enabled", kThpDir, pmd_size / kKiB);
  std::string mode = SelectedChoice(*top);
  std::string decided_by = kThpEnabled;
  if (std::optional<std::string> per_size = ReadSmallFile(per_size_path)) {
    if (std::string m = SelectedChoice(*per_size); m != "inherit") {
      mode = m;
      decided_by = per_size_path;
    }
  }
  if (mode == "never") {
    return absl::FailedPreconditionError(absl::StrFormat("disabled ([never] in %s)", decided_by));
  }
  return absl::OkStatus();
}

// The huge= option of the tmpfs superblock behind st_dev, from /proc/self/mountinfo
// ("... - tmpfs tmpfs rw,size=...,huge=advise"); tmpfs shows none for its default, never.
std::string TmpfsHugeOption(dev_t dev) {
  const std::string dev_field = absl::StrFormat("%d:%d", major(dev), minor(dev));
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 3 || f[2] != dev_field) continue;
    const size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::vector<absl::string_view> tail =
        absl::StrSplit(absl::string_view(line).substr(dash + 3), ' ', absl::SkipEmpty());
    if (tail.size() < 3) continue;
    for (absl::string_view opt : absl::StrSplit(tail[2], ',')) {
      if (absl::ConsumePrefix(&opt, "huge=")) return std::string(opt);
    }
    return "never";
  }
  return "never";
}

// A tmpfs mount (/dev/shm) follows its own huge= option; shmem_enabled governs the kernel's
// internal mount (memfd, SysV shm, shared anonymous memory) and overrides every mount only when
// it says "deny" or "force" (Documentation/admin-guide/mm/transhuge.rst).
absl::Status TmpfsThpPolicy(dev_t dev) {
  if (absl::Status s = ThpProcessPolicy(); !s.ok()) return s;
  std::optional<std::string> shmem = ReadSmallFile(kThpShmemEnabled);
  if (!shmem) {
    return absl::FailedPreconditionError(
        absl::StrCat("not supported by this kernel (no ", kThpShmemEnabled, ")"));
  }
  const std::string shmem_mode = SelectedChoice(*shmem);
  if (shmem_mode == "deny") {
    return absl::FailedPreconditionError(
        absl::StrFormat("disabled on every tmpfs mount ([deny] in %s)", kThpShmemEnabled));
  }
  if (shmem_mode == "force") return absl::OkStatus();
  const std::string huge = TmpfsHugeOption(dev);
  if (huge == "never" || huge == "deny") {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the tmpfs mount has huge=%s (tmpfs's default; mount it with huge=advise or "
        "huge=within_size; [%s] in %s governs only memfd, SysV and shared anonymous memory)",
        huge, shmem_mode, kThpShmemEnabled));
  }
  return absl::OkStatus();
}

// The kernel's own verdict on whether THP may back the mapping that starts at base
// (THPeligible in /proc/self/smaps, Linux 4.19+): it folds in every knob, the VMA's flags and
// its alignment, so a policy this file misreads cannot be reported as THP. nullopt if unknown.
std::optional<bool> SmapsThpEligible(const void* base) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool in_vma = false;
  while (std::getline(in, line)) {
    // VMA headers start with a lowercase-hex address range; field lines with a capital.
    const size_t dash = line.find('-');
    if (dash != std::string::npos && dash > 0 &&
        absl::ascii_isxdigit(static_cast<unsigned char>(line[0])) &&
        !absl::ascii_isupper(static_cast<unsigned char>(line[0]))) {
      uint64_t start = 0;
      in_vma = absl::SimpleHexAtoi(absl::string_view(line).substr(0, dash), &start) &&
               start == reinterpret_cast<uintptr_t>(base);
      continue;
    }
    absl::string_view rest = line;
    if (in_vma && absl::ConsumePrefix(&rest, "THPeligible:")) {
      int eligible = 0;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &eligible)) return std::nullopt;
      return eligible != 0;
    }
  }
  return std::nullopt;
}

// madvise(MADV_HUGEPAGE), then the kernel's confirmation.
absl::Status AdviseHugepages(std::byte* base, uint64_t size) {
  if (madvise(base, size, MADV_HUGEPAGE) != 0) {
    return absl::ErrnoToStatus(errno, "madvise(MADV_HUGEPAGE)");
  }
  if (SmapsThpEligible(base) == std::optional<bool>(false)) {
    return absl::FailedPreconditionError(
        "madvise(MADV_HUGEPAGE) succeeded but /proc/self/smaps reports THPeligible 0 for the "
        "mapping");
  }
  return absl::OkStatus();
}

// "Ordinary" must stay true even where THP is "always" or tmpfs is huge=always.
void OptOutOfHugepages(std::byte* base, uint64_t size) {
  (void)madvise(base, size, MADV_NOHUGEPAGE);  // EINVAL without CONFIG_TRANSPARENT_HUGEPAGE.
}

absl::Status AnonMmapError(uint64_t size, int err) {
  std::string hint;
  if (err == ENOMEM) {
    hint = ReadUint("/proc/sys/vm/overcommit_memory", 0) == 2
               ? " (vm.overcommit_memory is 2: strict accounting ignores MAP_NORESERVE)"
               : " (address space exhausted? check ulimit -v)";
  }
  return absl::ErrnoToStatus(
      err,
      absl::StrFormat("mmap of %s (MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)%s", Bytes(size), hint));
}

// MAP_NORESERVE keeps a 64 GiB arena on a 24 GiB host from being refused by overcommit
// accounting. For align > page size, over-map by align - page and trim both ends: a huge page
// can only back a naturally aligned range.
absl::StatusOr<std::byte*> MapAnonAligned(uint64_t size, uint64_t align) {
  const uint64_t slack = align - BasePageSize();
  const uint64_t span = size + slack;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return AnonMmapError(span, errno);
  const uint64_t misalignment = reinterpret_cast<uintptr_t>(p) % align;
  const uint64_t head = misalignment == 0 ? 0 : align - misalignment;
  const uint64_t tail = span - head - size;
  std::byte* const base = static_cast<std::byte*>(p) + head;
  if (head != 0) munmap(p, head);
  if (tail != 0) munmap(base + size, tail);
  return base;
}

absl::StatusOr<Mapping> TryAnonThp(uint64_t requested) {
  const uint64_t pmd_size = PmdSize();
  if (absl::Status s = AnonThpPolicy(pmd_size); !s.ok()) return s;
  absl::StatusOr<uint64_t> size = RoundSize(requested, pmd_size);
  if (!size.ok()) return size.status();
  absl::StatusOr<std::byte*> base = MapAnonAligned(*size, pmd_size);
  if (!base.ok()) return base.status();
  if (absl::Status s = AdviseHugepages(*base, *size); !s.ok()) {
    munmap(*base, *size);
    return s;
  }
  return Mapping{*base, *size,      ArenaBacking::kTransparentHugepages, pmd_size, -1,
                 false, "anonymous"};
}

absl::StatusOr<Mapping> TryAnonOrdinary(uint64_t requested) {
  const uint64_t page = BasePageSize();
  absl::StatusOr<uint64_t> size = RoundSize(requested, page);
  if (!size.ok()) return size.status();
  absl::StatusOr<std::byte*> base = MapAnonAligned(*size, page);
  if (!base.ok()) return base.status();
  OptOutOfHugepages(*base, *size);
  return Mapping{*base, *size, ArenaBacking::kOrdinary, page, -1, false, "anonymous"};
}

// ---- the anonymous arena ----

// Status for a demanded backing that could not be had.
absl::Status Required(absl::string_view backing_label, const absl::Status& why) {
  return absl::Status(why.code(), absl::StrFormat("arena: %s backing was required but refused: %s",
                                                  backing_label, why.message()));
}

absl::StatusOr<Mapping> MapAnonymous(const ArenaOptions& options,
                                     std::vector<std::string>& refusals) {
  const Backing want = options.backing;
  if (want == Backing::kBest || want == Backing::kHugetlb) {
    absl::StatusOr<Mapping> m = TryHugetlbMemfd(options.size_bytes);
    if (m.ok()) return m;
    if (want == Backing::kHugetlb) return Required("hugetlb", m.status());
    refusals.push_back(absl::StrCat("hugetlb: ", m.status().message()));
  }
  if (want == Backing::kBest || want == Backing::kThp) {
    absl::StatusOr<Mapping> m = TryAnonThp(options.size_bytes);
    if (m.ok()) return m;
    if (want == Backing::kThp) return Required("thp", m.status());
    refusals.push_back(absl::StrCat("transparent hugepages: ", m.status().message()));
  }
  absl::StatusOr<Mapping> m = TryAnonOrdinary(options.size_bytes);
  if (!m.ok() && !refusals.empty()) {
    return absl::Status(m.status().code(),
                        absl::StrCat(m.status().message(),
                                     "; refused before that: ", absl::StrJoin(refusals, "; ")));
  }
  return m;
}

// ---- the file-backed arena ----

std::string FilesystemName(uint32_t f_type) {
  switch (f_type) {
    case TMPFS_MAGIC:
      return "tmpfs";
    case HUGETLBFS_MAGIC:
      return "hugetlbfs";
    case EXT4_SUPER_MAGIC:
      return "ext2/3/4";
    case XFS_SUPER_MAGIC:
      return "xfs";
    case BTRFS_SUPER_MAGIC:
      return "btrfs";
    case OVERLAYFS_SUPER_MAGIC:
      return "overlayfs";
    case NFS_SUPER_MAGIC:
      return "nfs";
    default:
      return absl::StrFormat("filesystem type 0x%x", f_type);
  }
}

// Undoes what Create did to an arena file if Create fails: removes a file it created, shrinks
// back one it grew (only the zeros it added), and closes the descriptor.
class FileRollback {
 public:
  FileRollback(std::string path, int fd, bool created)
      : path_(std::move(path)), fd_(fd), created_(created) {}
  ~FileRollback() {
    if (fd_ < 0) return;
    if (created_) {
      unlink(path_.c_str());
    } else if (grown_from_) {
      (void)ftruncate(fd_, *grown_from_);
    }
    close(fd_);
  }
  FileRollback(const FileRollback&) = delete;
  FileRollback& operator=(const FileRollback&) = delete;

  void GrewFrom(off_t old_size) { grown_from_ = old_size; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  std::string path_;
  int fd_;
  bool created_;
  std::optional<off_t> grown_from_;
};

// O_EXCL first so we know whether the file is ours to remove on failure.
absl::StatusOr<std::pair<int, bool>> OpenOrCreate(const std::string& path) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    (void)fchmod(fd, 0600);  // Whatever the umask: the arena is the daemon's alone.
    return std::make_pair(fd, true);
  }
  if (errno != EEXIST) {
    return absl::ErrnoToStatus(errno, absl::StrCat("arena file ", path, ": open(O_CREAT)"));
  }
  fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("arena file ", path, ": open"));
  return std::make_pair(fd, false);
}

// What the file's filesystem allows, decided before the file is sized.
struct FilePlan {
  ArenaBacking backing = ArenaBacking::kOrdinary;
  uint64_t page_size = 0;
  bool try_thp = false;
  std::string where;
};

absl::StatusOr<FilePlan> PlanFile(const ArenaOptions& options, int fd, dev_t dev,
                                  std::vector<std::string>& refusals) {
  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("arena file ", options.path, ": fstatfs"));
  }
  const uint32_t type = static_cast<uint32_t>(fs.f_type);
  const std::string fs_name = FilesystemName(type);
  const Backing want = options.backing;
  FilePlan plan;
  plan.where = absl::StrFormat("file %s on %s", options.path, fs_name);
  if (type == HUGETLBFS_MAGIC) {
    if (want == Backing::kThp || want == Backing::kOrdinary) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "arena file %s is on hugetlbfs, which provides only hugetlb pages; %s backing was "
          "required: use a tmpfs path such as /dev/shm/... or backing best/hugetlb",
          options.path, want == Backing::kThp ? "thp" : "ordinary"));
    }
    plan.backing = ArenaBacking::kHugetlb;
    plan.page_size = static_cast<uint64_t>(fs.f_bsize);  // hugetlbfs reports its page size.
    return plan;
  }
  const std::string not_hugetlbfs =
      absl::StrFormat("%s is on %s, not hugetlbfs", options.path, fs_name);
  if (want == Backing::kHugetlb)
    return Required("hugetlb", absl::InvalidArgumentError(not_hugetlbfs));
  if (want == Backing::kBest) refusals.push_back(absl::StrCat("hugetlb: ", not_hugetlbfs));
  plan.page_size = BasePageSize();
  if (type != TMPFS_MAGIC) {
    plan.where += " (not memory-backed: the kernel writes dirty pages back to the file)";
    const std::string why = absl::StrFormat(
        "%s is on %s, not tmpfs (huge pages are not attempted for disk-backed files)", options.path,
        fs_name);
    if (want == Backing::kThp) return Required("thp", absl::InvalidArgumentError(why));
    if (want == Backing::kBest) refusals.push_back(absl::StrCat("transparent hugepages: ", why));
    return plan;
  }
  if (want == Backing::kOrdinary) return plan;
  absl::Status thp = TmpfsThpPolicy(dev);
  if (!thp.ok()) {
    if (want == Backing::kThp) return Required("thp", thp);
    refusals.push_back(absl::StrCat("transparent hugepages: ", thp.message()));
    return plan;
  }
  plan.backing = ArenaBacking::kTransparentHugepages;
  plan.page_size = PmdSize();
  plan.try_thp = true;
  return plan;
}

// Grows the file to size, never shrinks it: shrinking would destroy the pages of a previous run.
absl::Status SizeFile(const std::string& path, int fd, uint64_t old_size, uint64_t size,
                      uint64_t requested, uint64_t page_size, FileRollback& rollback) {
  if (old_size > size) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "arena file %s is %s (%d bytes), larger than the arena of %s (%d bytes: %d requested, "
        "rounded up to %s pages); refusing to shrink it, which would destroy its contents: ask "
        "for at least %d bytes or remove the file",
        path, Bytes(old_size), old_size, Bytes(size), size, requested, Bytes(page_size), old_size));
  }
  if (old_size == size) return absl::OkStatus();
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("arena file %s: growing it from %s to %s",
                                                      path, Bytes(old_size), Bytes(size)));
  }
  rollback.GrewFrom(static_cast<off_t>(old_size));
  return absl::OkStatus();
}

absl::StatusOr<std::byte*> MapFile(const std::string& path, int fd, const FilePlan& plan,
                                   uint64_t size) {
  if (plan.backing == ArenaBacking::kHugetlb) {
    return MapHugetlbFd(fd, absl::StrCat("file ", path, " on hugetlbfs"), size, plan.page_size);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return absl::ErrnoToStatus(errno,
                               absl::StrFormat("arena file %s: mmap of %s", path, Bytes(size)));
  }
  return static_cast<std::byte*>(p);
}

// A hugetlbfs file has no fallback: its pages can only ever be huge pages.
absl::Status FileMapRefused(const ArenaOptions& options, const FilePlan& plan,
                            const absl::Status& why) {
  if (plan.backing != ArenaBacking::kHugetlb) return why;
  if (options.backing == Backing::kHugetlb) return Required("hugetlb", why);
  return absl::Status(why.code(), absl::StrCat("arena: a file on hugetlbfs can only be "
                                               "hugetlb-backed, and hugetlb was refused: ",
                                               why.message()));
}

// The tmpfs mount allows huge pages; ask, and settle for ordinary ones if best was asked for.
absl::Status AdviseFileThp(const ArenaOptions& options, Mapping& m,
                           std::vector<std::string>& refusals) {
  absl::Status s = AdviseHugepages(m.base, m.size);
  if (s.ok()) return s;
  if (options.backing == Backing::kThp) {
    munmap(m.base, m.size);
    return Required("thp", s);
  }
  refusals.push_back(absl::StrCat("transparent hugepages: ", s.message()));
  m.backing = ArenaBacking::kOrdinary;
  m.page_size = BasePageSize();
  return absl::OkStatus();
}

absl::StatusOr<Mapping> MapFileBacked(const ArenaOptions& options,
                                      std::vector<std::string>& refusals) {
  absl::StatusOr<std::pair<int, bool>> opened = OpenOrCreate(options.path);
  if (!opened.ok()) return opened.status();
  const auto [fd, created] = *opened;
  FileRollback rollback(options.path, fd, created);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("arena file ", options.path, ": fstat"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "arena file %s is not a regular file (st_mode 0%o); expected a file on tmpfs or hugetlbfs",
        options.path, st.st_mode));
  }
  absl::StatusOr<FilePlan> plan = PlanFile(options, fd, st.st_dev, refusals);
  if (!plan.ok()) return plan.status();
  absl::StatusOr<uint64_t> size = RoundSize(options.size_bytes, plan->page_size);
  if (!size.ok()) return size.status();
  if (absl::Status s = SizeFile(options.path, fd, static_cast<uint64_t>(st.st_size), *size,
                                options.size_bytes, plan->page_size, rollback);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::byte*> base = MapFile(options.path, fd, *plan, *size);
  if (!base.ok()) return FileMapRefused(options, *plan, base.status());
  Mapping m{*base, *size, plan->backing, plan->page_size, fd, true, plan->where};
  if (plan->try_thp) {
    if (absl::Status s = AdviseFileThp(options, m, refusals); !s.ok()) return s;
  }
  if (m.backing == ArenaBacking::kOrdinary) OptOutOfHugepages(*base, *size);
  rollback.Release();
  return m;
}

}  // namespace

std::string_view ArenaBackingName(ArenaBacking backing) {
  switch (backing) {
    case ArenaBacking::kHugetlb:
      return "hugetlb";
    case ArenaBacking::kTransparentHugepages:
      return "thp";
    case ArenaBacking::kOrdinary:
      return "ordinary";
  }
  return "unknown";
}

absl::StatusOr<ArenaOptions::Backing> ParseArenaBacking(std::string_view name_std) {
  // Debian's Abseil is built with its own absl::string_view, not an alias of std::string_view.
  const absl::string_view name(name_std.data(), name_std.size());
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "best") return Backing::kBest;
  if (lower == "hugetlb") return Backing::kHugetlb;
  if (lower == "thp") return Backing::kThp;
  if (lower == "ordinary") return Backing::kOrdinary;
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown arena backing \"%s\"; expected one of best, hugetlb, thp, ordinary",
                      absl::CHexEscape(name)));
}

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(const ArenaOptions& options) {
  if (options.size_bytes == 0) {
    return absl::InvalidArgumentError(
        "arena size_bytes is 0; expected the bytes of emulated RAM to hold (> 0)");
  }
  std::vector<std::string> refusals;
  absl::StatusOr<Mapping> m =
      options.path.empty() ? MapAnonymous(options, refusals) : MapFileBacked(options, refusals);
  if (!m.ok()) return m.status();
  std::unique_ptr<Arena> arena(new Arena());
  arena->base_ = m->base;
  arena->size_ = m->size;
  arena->backing_ = m->backing;
  arena->page_size_ = m->page_size;
  arena->refusals_ = std::move(refusals);
  arena->path_ = options.path;
  arena->fd_ = m->fd;
  arena->shared_ = m->shared;
  arena->where_ = std::move(m->where);
  return arena;
}

Arena::~Arena() {
  if (base_ != nullptr) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

void Arena::Prefault() {
  // MADV_POPULATE_WRITE (5.14+) faults pages in writable without changing a byte, and returns
  // an error where a touch would raise SIGBUS (tmpfs full).
  if (madvise(base_, size_, MADV_POPULATE_WRITE) == 0) return;
  if (const int err = errno; err != EINVAL) {
    std::fprintf(stderr,
                 "physmem arena: Prefault of %s stopped early: madvise(MADV_POPULATE_WRITE): %s\n",
                 Bytes(size_).c_str(), ErrnoText(err).c_str());
    return;
  }
  // Older kernels: rewrite one byte per base page; the volatile read keeps its value.
  const uint64_t step = BasePageSize();
  for (uint64_t off = 0; off < size_; off += step) {
    volatile std::byte* p = base_ + off;
    *p = *p;
  }
}

absl::StatusOr<uint64_t> Arena::ResidentBytes() const {
  // One mincore() byte per base page: a 1 GiB window keeps the vector at 256 KiB.
  const uint64_t page = BasePageSize();
  constexpr uint64_t kWindow = kGiB;
  std::vector<unsigned char> vec(kWindow / page);
  uint64_t resident_pages = 0;
  for (uint64_t off = 0; off < size_; off += kWindow) {
    const uint64_t len = std::min(kWindow, size_ - off);
    if (mincore(base_ + off, len, vec.data()) != 0) {
      return absl::ErrnoToStatus(errno,
                                 absl::StrFormat("mincore over %s at offset %d", Bytes(len), off));
    }
    const uint64_t pages = (len + page - 1) / page;
    for (uint64_t i = 0; i < pages; ++i) resident_pages += vec[i] & 1;
  }
  return resident_pages * page;
}

std::string Arena::Describe() const {
  std::string line = absl::StrFormat("%s, %s at %p, %s", ArenaBackingName(backing_), Bytes(size_),
                                     static_cast<const void*>(base_), where_);
  if (!refusals_.empty()) absl::StrAppend(&line, "; refused: ", absl::StrJoin(refusals_, "; "));
  return line;
}

absl::StatusOr<void*> MapZeroedNoReserve(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("MapZeroedNoReserve: bytes is 0; expected > 0");
  absl::StatusOr<uint64_t> size = RoundSize(bytes, BasePageSize());
  if (!size.ok()) return size.status();
  void* p = mmap(nullptr, *size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return AnonMmapError(*size, errno);
  return p;
}

void UnmapNoReserve(void* addr, uint64_t bytes) {
  if (addr == nullptr) return;
  const uint64_t size = RoundUp(bytes, BasePageSize()).value_or(bytes);
  if (munmap(addr, size) != 0) {
    // Only a pointer or length that MapZeroedNoReserve never returned gets here.
    std::fprintf(stderr, "UnmapNoReserve(%p, %llu): munmap: %s\n", addr,
                 static_cast<unsigned long long>(bytes), ErrnoText(errno).c_str());
    std::abort();
  }
}

}  // namespace physmem
