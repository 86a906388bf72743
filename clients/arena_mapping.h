// Zero-copy access to page contents for local clients: maps the daemon's arena file (started
// with --arena_path on /dev/shm or hugetlbfs) read/write and MAP_SHARED into this process, and
// hands out bounds-checked views of exactly the blocks a lease was given. A byte written through
// the view is the byte the daemon's ReadPages returns, and the other way round: both are the
// same page of the same file.
//
//   absl::StatusOr<std::unique_ptr<ArenaMapping>> arena = ArenaMapping::Map(*client);
//   absl::StatusOr<PageHandle> page = lease->AllocPages("GFP_KERNEL", 1);    // 2 pages
//   absl::StatusOr<std::span<std::byte>> bytes = (*arena)->Block(*page);    // exactly 2 pages
//   (*bytes)[0] = std::byte{42};
//
// The mapping grants what the file's permissions grant: the daemon creates the file 0600, so
// only its own uid (or root) can map it; anyone else gets PERMISSION_DENIED here and uses
// ReadPages/WritePages instead, which check the lease. The view does not keep the block
// allocated: once the block is freed (or its lease ends) the bytes belong to whoever gets the
// pages next, exactly as with a kernel pointer after free_pages().
//
// Who uses it: local clients and tests. Thread-safety: immutable after Map(); views may be used
// from any thread (synchronising the bytes themselves is the caller's business).
#ifndef PHYSMEM_CLIENTS_ARENA_MAPPING_H_
#define PHYSMEM_CLIENTS_ARENA_MAPPING_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "clients/physmem_client.h"
#include "physmem/v1/physmem.pb.h"

namespace physmem::client {

class ArenaMapping {
 public:
  // Asks the daemon where its arena is (GetTarget) and maps it. FAILED_PRECONDITION if the arena
  // is anonymous (no --arena_path: nothing to map; use ReadPages/WritePages), PERMISSION_DENIED
  // or NOT_FOUND if the file cannot be opened (another uid's 0600 file, another machine),
  // FAILED_PRECONDITION if its size is not the arena's.
  static absl::StatusOr<std::unique_ptr<ArenaMapping>> Map(Client& client);
  // The same from a GetTarget reply already at hand.
  static absl::StatusOr<std::unique_ptr<ArenaMapping>> Map(const v1::GetTargetResponse& target);
  ~ArenaMapping();
  ArenaMapping(const ArenaMapping&) = delete;
  ArenaMapping& operator=(const ArenaMapping&) = delete;

  // Exactly the bytes of the block: page_size << order bytes at its arena_offset. OUT_OF_RANGE
  // if the allocation does not lie inside the arena (a reply from another daemon, say).
  absl::StatusOr<std::span<std::byte>> Block(const v1::Allocation& block) const;
  absl::StatusOr<std::span<std::byte>> Block(const PageHandle& page) const { return Block(page.allocation()); }
  // `length` bytes at `offset` from the block's start; OUT_OF_RANGE if they leave the block.
  absl::StatusOr<std::span<std::byte>> Bytes(const v1::Allocation& block, uint64_t offset, uint64_t length) const;
  // One page of a bulk reply (order 0), by its arena offset.
  absl::StatusOr<std::span<std::byte>> Page(uint64_t arena_offset) const;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  uint64_t page_size() const { return page_size_; }

 private:
  ArenaMapping(std::string path, std::byte* base, uint64_t size, uint64_t page_size)
      : path_(std::move(path)), base_(base), size_(size), page_size_(page_size) {}
  absl::StatusOr<std::span<std::byte>> Range(uint64_t arena_offset, uint64_t bytes) const;

  const std::string path_;
  std::byte* const base_;
  const uint64_t size_;
  const uint64_t page_size_;
};

}  // namespace physmem::client

#endif  // PHYSMEM_CLIENTS_ARENA_MAPPING_H_
