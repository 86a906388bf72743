// ArenaMap (allocator/arena_map.h) to and from the GetArenaMap RPC's reply.
//
// Who calls it: the service's GetArenaMap (ToProto), physmemctl map (FromProto). FromProto checks
// everything a renderer relies on, so a reply from another build (or a broken one) is refused with
// a message instead of drawing garbage or indexing out of range. Thread-safety: pure functions.
#ifndef PHYSMEM_PICTURE_ARENA_MAP_PROTO_H_
#define PHYSMEM_PICTURE_ARENA_MAP_PROTO_H_

#include "absl/status/statusor.h"
#include "allocator/arena_map.h"
#include "physmem/v1/physmem.pb.h"

namespace physmem {

// The largest GetArenaMapRequest.max_entries the service takes: about 2.6 MB of reply, within
// gRPC's default 4 MiB message limit.
inline constexpr uint32_t kArenaMapMaxRequestEntries = 262144;

void ArenaMapToProto(const ArenaMap& map, v1::GetArenaMapResponse* out);
// INVALID_ARGUMENT naming the zone and field when the reply is inconsistent (per-entry fields of
// different lengths, an unknown zone name, pages beyond an entry's span, an order or migratetype
// out of range, a pageblocks_per_entry that is not a power of two).
absl::StatusOr<ArenaMap> ArenaMapFromProto(const v1::GetArenaMapResponse& in);

}  // namespace physmem

#endif  // PHYSMEM_PICTURE_ARENA_MAP_PROTO_H_
