// A sequence of arena pictures over a trace replay (physmem_trace replay --map_every=N
// --map_dir=DIR): the replayer calls Observer() every N ops and at the end, and each call draws the
// allocator's arena map (allocator/arena_map.h, picture/arena_map_render.h) into
// DIR/<name>-<ops done, 12 digits>.png, so the files sort in replay order and a user can page
// through them (or make an animation: `ffmpeg -pattern_type glob -i 'DIR/replay-*.png' out.webm`).
//
// Who calls it: clients/physmem_trace.cc. Thread-safety: the observer may run on several replay
// threads at once (--per_cpu); each call writes its own file, and the error and count are guarded.
#ifndef PHYSMEM_PICTURE_MAP_SEQUENCE_H_
#define PHYSMEM_PICTURE_MAP_SEQUENCE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/mutex.h"
#include "allocator/page_allocator.h"

namespace physmem {

class MapSequence {
 public:
  // INVALID_ARGUMENT if `dir` is not an existing directory or `name` is empty or holds a '/'.
  static absl::StatusOr<std::unique_ptr<MapSequence>> Create(std::string dir, std::string name);

  // The replayer's observer (trace/replayer.h ReplayConfig::observer). Valid while this lives.
  std::function<void(const PageAllocator&, uint64_t)> Observer();
  // The path of the picture after `ops_done` ops.
  std::string PathFor(uint64_t ops_done) const;

  int written() const;
  // The first failure to draw or write a picture (the replay goes on without pictures after it).
  absl::Status status() const;

 private:
  MapSequence(std::string dir, std::string name) : dir_(std::move(dir)), name_(std::move(name)) {}
  void Write(const PageAllocator& pa, uint64_t ops_done);

  const std::string dir_, name_;
  mutable Mutex mu_;
  int written_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace physmem

#endif  // PHYSMEM_PICTURE_MAP_SEQUENCE_H_
