#include "picture/map_sequence.h"

#include <sys/stat.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "allocator/arena_map.h"
#include "picture/arena_map_render.h"

namespace physmem {

absl::StatusOr<std::unique_ptr<MapSequence>> MapSequence::Create(std::string dir, std::string name) {
  struct stat st;
  if (dir.empty() || ::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the map directory '%s' is not an existing directory", absl::CHexEscape(dir.substr(0, 200))));
  }
  if (name.empty() || name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("'%s' cannot name a map file (empty, or holds a '/')", absl::CHexEscape(name.substr(0, 64))));
  }
  return std::unique_ptr<MapSequence>(new MapSequence(std::move(dir), std::move(name)));
}

std::function<void(const PageAllocator&, uint64_t)> MapSequence::Observer() {
  return [this](const PageAllocator& pa, uint64_t ops_done) { Write(pa, ops_done); };
}

std::string MapSequence::PathFor(uint64_t ops_done) const {
  return absl::StrFormat("%s/%s-%012u.png", dir_, name_, ops_done);
}

void MapSequence::Write(const PageAllocator& pa, uint64_t ops_done) {
  {
    MutexLock l(&mu_);
    if (!status_.ok()) return;
  }
  absl::Status s;
  absl::StatusOr<MapLayout> layout = LayoutArenaMap(TakeArenaMap(pa));
  s = layout.ok() ? WriteArenaMapFile(*layout, PathFor(ops_done)) : layout.status();
  MutexLock l(&mu_);
  if (s.ok()) {
    ++written_;
  } else {
    status_.Update(s);
  }
}

int MapSequence::written() const {
  MutexLock l(&mu_);
  return written_;
}

absl::Status MapSequence::status() const {
  MutexLock l(&mu_);
  return status_;
}

}  // namespace physmem
