#include "allocator/refusal.h"

#include <array>

#include "allocator/check.h"

namespace physmem {
namespace {

struct ReasonRow {
  RefusalReason reason;
  std::string_view name;
  absl::StatusCode code;
};

// One row a reason, in enum order (checked below).
constexpr std::array<ReasonRow, static_cast<int>(RefusalReason::kCount)> kReasons = {{
    {RefusalReason::kOrderTooHigh, "order_too_high", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kInvalidGfp, "invalid_gfp", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kNoZone, "no_zone", absl::StatusCode::kResourceExhausted},
    {RefusalReason::kBelowWatermark, "below_watermark", absl::StatusCode::kResourceExhausted},
    {RefusalReason::kNoFreeBlock, "no_free_block", absl::StatusCode::kResourceExhausted},
    {RefusalReason::kNotAPage, "not_a_page", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kPfnOutOfRange, "pfn_out_of_range", absl::StatusCode::kOutOfRange},
    {RefusalReason::kMisaligned, "misaligned", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kNotAllocated, "not_allocated", absl::StatusCode::kFailedPrecondition},
    {RefusalReason::kTailPage, "tail_page", absl::StatusCode::kFailedPrecondition},
    {RefusalReason::kInsideBlock, "inside_block", absl::StatusCode::kFailedPrecondition},
    {RefusalReason::kWrongOrder, "wrong_order", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kWrongOwner, "wrong_owner", absl::StatusCode::kPermissionDenied},
    {RefusalReason::kStillMapped, "still_mapped", absl::StatusCode::kFailedPrecondition},
    // The cause's code in ToStatus(); UNKNOWN only if a caller builds one without a cause.
    {RefusalReason::kCommitFailed, "commit_failed", absl::StatusCode::kUnknown},
    {RefusalReason::kAddrUnaligned, "addr_unaligned", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kAddrKmapWindow, "addr_kmap_window", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kAddrBelowDirectMap, "addr_below_direct_map", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kAddrBeyondDirectMap, "addr_beyond_direct_map", absl::StatusCode::kInvalidArgument},
    {RefusalReason::kKmapWindowFull, "kmap_window_full", absl::StatusCode::kResourceExhausted},
    {RefusalReason::kNotKmapped, "not_kmapped", absl::StatusCode::kFailedPrecondition},
}};

constexpr bool RowsInEnumOrder() {
  for (size_t i = 0; i < kReasons.size(); ++i) {
    if (static_cast<size_t>(kReasons[i].reason) != i) return false;
  }
  return true;
}
static_assert(RowsInEnumOrder(), "kReasons must list every RefusalReason once, in enum order");

const ReasonRow& Row(RefusalReason r) {
  PHYSMEM_DCHECK(static_cast<size_t>(r) < kReasons.size(), "RefusalReason out of range");
  return kReasons[static_cast<size_t>(r)];
}

}  // namespace

std::string_view RefusalReasonName(RefusalReason r) { return Row(r).name; }

absl::StatusCode RefusalCode(RefusalReason r) { return Row(r).code; }

absl::Status ToStatus(const Refusal& r) {
  if (r.reason == RefusalReason::kCommitFailed && !r.cause.ok()) return r.cause;
  return absl::Status(RefusalCode(r.reason), r.detail);
}

}  // namespace physmem
