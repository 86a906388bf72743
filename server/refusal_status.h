// RefusalStatus: the one place where the allocator's typed refusals (allocator/refusal.h) become
// what a client sees — a status code and message — and what /metrics counts
// (physmem_free_refused_total{reason}, docs/metrics.md).
//
// The code is the reason's (RefusalCode()); the message is the allocator's detail, except where
// the service words it for a client: another lease's block is not named ("pfn .. belongs to
// another lease": a caller should not learn another identity's owner ids), and a journal that
// could not record a free passes its own status through. The reason travels inside the status
// as a payload (kRefusalPayloadUrl), so that callers which hand absl::Status on (the lessor's
// Detach, its bulk callback) need no second result type, and the handler that counts the refusal
// reads the reason back (RefusalReasonOf) instead of re-deriving it from the code and the request.
// The payload never reaches the wire (ToGrpcStatus copies code and message only).
//
// Who uses it: the lessor (frees, allocations that find no memory), the service's free handlers
// and Metrics (labels). Thread-safety: pure functions.
#ifndef PHYSMEM_SERVER_REFUSAL_STATUS_H_
#define PHYSMEM_SERVER_REFUSAL_STATUS_H_

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "allocator/refusal.h"

namespace physmem {

inline constexpr char kRefusalPayloadUrl[] = "type.physmem.dev/physmem.RefusalReason";

// The status a client gets for `r`: RefusalCode(r.reason), the message as above with `context`
// (the service's own words: " (the mask cannot wait)") appended, and the reason as a payload.
absl::Status RefusalStatus(const Refusal& r, std::string_view context = {});

// The reason RefusalStatus() put into `s`; nullopt for any other status (the server's own
// refusals: no such lease, unknown key, malformed request).
std::optional<RefusalReason> RefusalReasonOf(const absl::Status& s);

// physmem_free_refused_total's label values, in the order Metrics registers them.
inline constexpr std::array<std::string_view, 6> kFreeRefusedLabels = {
    "not_allocated", "wrong_owner", "wrong_order", "misaligned", "out_of_range", "bad_request"};
// The label of a refused free: the allocator's reason grouped as docs/metrics.md says (a tail, a
// page inside another block and a still-kmap()ed block count as not_allocated; an order above
// MAX_PAGE_ORDER and a kmap() window address as bad_request); nullopt (the server refused it) is
// bad_request. An index into kFreeRefusedLabels.
size_t FreeRefusedLabelIndex(std::optional<RefusalReason> reason);
inline std::string_view FreeRefusedLabel(std::optional<RefusalReason> reason) {
  return kFreeRefusedLabels[FreeRefusedLabelIndex(reason)];
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_REFUSAL_STATUS_H_
