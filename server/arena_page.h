// The daemon's live picture of the arena, served on the metrics listener beside /metrics:
//   /arena       an HTML page (inline script, no external scripts or fonts) that fetches
//                /arena.json every second and draws the map on a canvas, with /proc/buddyinfo
//   /arena.json  the map's layout and cell colours (picture/arena_map_render.h RenderJson) from a
//                fresh snapshot (allocator/arena_map.h TakeArenaMap)
//   /arena.png   the same picture as physmemctl map --out=arena.png
//
// Who calls it: server/metrics.cc, from the civetweb begin_request callback the exporter is built
// with. Thread-safety: ServeArena may run on any thread, concurrently with anything; each call takes
// its own snapshot.
#ifndef PHYSMEM_SERVER_ARENA_PAGE_H_
#define PHYSMEM_SERVER_ARENA_PAGE_H_

#include <optional>
#include <string>
#include <string_view>

#include "allocator/page_allocator.h"

namespace physmem {

struct HttpReply {
  int status = 200;
  std::string content_type;
  std::string body;
};

// The reply for `path` (the request's path, without the query string), or nullopt when the path
// is not one of the arena's (the caller then serves it as before).
std::optional<HttpReply> ServeArena(const PageAllocator& pa, std::string_view path);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_ARENA_PAGE_H_
