// Arena: the one host mapping that holds all the emulated RAM.
//
// What it is for: the emulated machine's RAM ranges (holes excluded) are laid out back to back in
// a single mapping; a page's bytes live at base() + its offset in that layout. The mapping is
// backed, best first, by hugetlb pages (memfd_create(MFD_HUGETLB), or a file on hugetlbfs), by
// transparent huge pages (madvise(MADV_HUGEPAGE)) or by ordinary pages. Which one was obtained,
// and why each better one was refused, is recorded so the daemon can report it (log, metric, API).
// An optional file path (on hugetlbfs or tmpfs such as /dev/shm) makes the arena shared: local
// clients can later map the very pages they were handed, and the contents outlive a daemon crash.
//
// The rule it exists to keep: creating an arena never touches its memory. Nothing is written,
// prefaulted or zeroed at start-up, so a 64 GiB arena on a 24 GiB machine without swap maps in
// milliseconds with (near) zero resident memory. Anonymous mappings use MAP_NORESERVE so that
// overcommit accounting does not refuse them. The one exception is hugetlb, which is mapped
// WITHOUT MAP_NORESERVE on purpose: the kernel then reserves the pool pages at mmap() time
// (HugePages_Rsvd) and refuses a mapping the pool cannot back, instead of sending SIGBUS on some
// later first touch. Reserved hugetlb pages are not resident until touched either.
//
// Who calls it: the page allocator creates one Arena at daemon start and keeps it for the life of
// the process; the server reports Describe()/backing(); benchmarks call Prefault(). The lead's
// page-metadata array uses MapZeroedNoReserve() below under the same no-touch rule.
//
// Thread-safety: an Arena is immutable after Create(); every const method may be called from any
// thread. The bytes of the mapping belong to the caller, who synchronizes access to them.
#ifndef PHYSMEM_ALLOCATOR_ARENA_H_
#define PHYSMEM_ALLOCATOR_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace physmem {

// The backing actually obtained.
enum class ArenaBacking { kHugetlb, kTransparentHugepages, kOrdinary };

// "hugetlb", "thp", "ordinary" (the spelling ParseArenaBacking accepts, minus "best").
std::string_view ArenaBackingName(ArenaBacking backing);

struct ArenaOptions {
  // Rounded up to the backing's page size: the hugetlb page size (Hugepagesize in /proc/meminfo,
  // or the hugetlbfs mount's page size), the PMD size for THP (2 MiB on x86-64), else 4 KiB.
  uint64_t size_bytes = 0;
  // kBest tries hugetlb -> thp -> ordinary and records why each better one was refused. The
  // others demand exactly that backing and fail with the kernel's reason if it is impossible.
  enum class Backing { kBest, kHugetlb, kThp, kOrdinary } backing = Backing::kBest;
  // Empty: anonymous (hugetlb memfd, else private anonymous memory). Otherwise a file that is
  // created if missing (mode 0600), grown if smaller, refused if larger, never truncated; its
  // filesystem decides the backing: hugetlbfs -> hugetlb; tmpfs -> thp if the mount allows huge
  // pages, else ordinary; any other filesystem -> ordinary, shared, and not memory-backed.
  std::string path;
};

// Accepts "best", "hugetlb", "thp", "ordinary" (case-insensitive); anything else is
// InvalidArgument naming the accepted values.
absl::StatusOr<ArenaOptions::Backing> ParseArenaBacking(std::string_view name);

class Arena {
 public:
  // Maps the arena without touching it. Errors: InvalidArgument (size 0 or too large, backing
  // impossible for the path's filesystem, path not a regular file), FailedPrecondition (the
  // demanded backing is disabled on this host; existing file larger than the arena),
  // ResourceExhausted (hugetlb pool too small, address space or tmpfs exhausted), or the errno's
  // code for a failing open/ftruncate/mmap. On error, a file this call created is removed and a
  // file it grew is shrunk back to its old size (dropping only the zeros it added).
  static absl::StatusOr<std::unique_ptr<Arena>> Create(const ArenaOptions& options);

  ~Arena();  // munmap, close; a file-backed arena's file stays (its state outlives us).
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size() const { return size_; }  // Mapped bytes, >= the requested size.
  ArenaBacking backing() const { return backing_; }
  uint64_t backing_page_size() const { return page_size_; }  // 4096, 2 MiB or the hugetlb size.
  // Why each better backing was refused, in the order tried, each prefixed "hugetlb: " or
  // "transparent hugepages: ". Empty when the best one was obtained or a backing was demanded.
  const std::vector<std::string>& refusals() const { return refusals_; }
  const std::string& path() const { return path_; }  // "" if anonymous.
  int fd() const { return fd_; }                     // -1 if anonymous private memory.
  bool shared() const { return shared_; }            // MAP_SHARED (file or memfd).

  // Makes every backing page resident and writable without changing its contents
  // (madvise(MADV_POPULATE_WRITE), falling back to rewriting one byte per page on kernels before
  // 5.14). For benchmarks only: never at start-up. If the kernel cannot back a page (tmpfs full),
  // it stops there and says so on stderr; ResidentBytes() tells how far it got.
  void Prefault();

  // Bytes of the mapping that are resident, from mincore() in 4 KiB units. A page that was only
  // read from anonymous memory maps the shared zero page and counts as resident here.
  absl::StatusOr<uint64_t> ResidentBytes() const;

  // One line, e.g. "thp, 512 MiB at 0x7f3a40000000, anonymous; refused: hugetlb: ...".
  std::string Describe() const;

 private:
  Arena() = default;

  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  ArenaBacking backing_ = ArenaBacking::kOrdinary;
  uint64_t page_size_ = 0;
  std::vector<std::string> refusals_;
  std::string path_;
  int fd_ = -1;
  bool shared_ = false;
  std::string where_;  // For Describe(): "anonymous", "memfd", "file /dev/shm/x on tmpfs".
};

// Anonymous, private, MAP_NORESERVE memory for large side arrays (the page-metadata array):
// nothing is touched, so it costs no RAM until used. Every byte reads as zero until first
// written: callers may rely on all-zero records meaning "free, untouched" and never initialize
// them. bytes is rounded up to the 4 KiB page size; bytes == 0 is InvalidArgument.
absl::StatusOr<void*> MapZeroedNoReserve(uint64_t bytes);
// Releases memory from MapZeroedNoReserve; pass the same byte count. nullptr is ignored.
void UnmapNoReserve(void* addr, uint64_t bytes);

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_ARENA_H_
