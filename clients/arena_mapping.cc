#include "clients/arena_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace physmem::client {

absl::StatusOr<std::unique_ptr<ArenaMapping>> ArenaMapping::Map(Client& client) {
  absl::StatusOr<v1::GetTargetResponse> t = client.GetTarget();
  if (!t.ok()) return t.status();
  return Map(*t);
}

absl::StatusOr<std::unique_ptr<ArenaMapping>> ArenaMapping::Map(const v1::GetTargetResponse& target) {
  const std::string& path = target.arena_path();
  if (path.empty()) {
    return absl::FailedPreconditionError(
        "the daemon's arena is anonymous (started without --arena_path), so there is no file to map; "
        "use Lease::ReadPages/WritePages, or restart it with --arena_path=/dev/shm/physmemd-arena");
  }
  const uint64_t size = target.arena_bytes();
  const uint64_t page_size = target.profile().page_size();
  if (page_size == 0 || size == 0) return absl::FailedPreconditionError("GetTarget reply lacks the arena size");
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open the arena file ", path,
                                                 " read/write (it is the daemon's uid's, mode 0600; "
                                                 "other users read and write pages with ReadPages/WritePages)"));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < size) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrFormat(
        "arena file %s holds %d bytes, the daemon reports %d: not this daemon's arena", path,
        static_cast<int64_t>(st.st_size), size));
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  if (p == MAP_FAILED) return absl::ErrnoToStatus(err, absl::StrCat("mmap of the arena file ", path));
  return std::unique_ptr<ArenaMapping>(new ArenaMapping(path, static_cast<std::byte*>(p), size, page_size));
}

ArenaMapping::~ArenaMapping() { ::munmap(base_, size_); }

absl::StatusOr<std::span<std::byte>> ArenaMapping::Range(uint64_t arena_offset, uint64_t bytes) const {
  if (arena_offset > size_ || bytes > size_ - arena_offset) {
    return absl::OutOfRangeError(absl::StrFormat("bytes [%#x, %#x) of the arena: it has %#x", arena_offset,
                                                 arena_offset + bytes, size_));
  }
  return std::span<std::byte>(base_ + arena_offset, bytes);
}

absl::StatusOr<std::span<std::byte>> ArenaMapping::Block(const v1::Allocation& block) const {
  if (block.order() >= 32) return absl::OutOfRangeError(absl::StrFormat("order %d", block.order()));
  return Range(block.arena_offset(), page_size_ << block.order());
}

absl::StatusOr<std::span<std::byte>> ArenaMapping::Bytes(const v1::Allocation& block, uint64_t offset,
                                                         uint64_t length) const {
  absl::StatusOr<std::span<std::byte>> b = Block(block);
  if (!b.ok()) return b.status();
  if (offset > b->size() || length > b->size() - offset) {
    return absl::OutOfRangeError(absl::StrFormat("bytes [%d, %d) leave the order-%d block at pfn %#x (%d bytes)",
                                                 offset, offset + length, block.order(), block.pfn(), b->size()));
  }
  return b->subspan(offset, length);
}

absl::StatusOr<std::span<std::byte>> ArenaMapping::Page(uint64_t arena_offset) const {
  if (arena_offset % page_size_ != 0) {
    return absl::InvalidArgumentError(absl::StrFormat("arena offset %#x is not page aligned", arena_offset));
  }
  return Range(arena_offset, page_size_);
}

}  // namespace physmem::client
