#include "server/refusal_status.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"

namespace physmem {
namespace {

enum Label : size_t { kNotAllocated, kWrongOwner, kWrongOrder, kMisaligned, kOutOfRange, kBadRequest };

// physmem_free_refused_total's grouping of each reason. A switch without a default: a reason
// added to allocator/refusal.h without a label here fails to compile (-Wswitch -Werror).
Label LabelOf(RefusalReason r) {
  switch (r) {
    case RefusalReason::kNotAllocated:
    case RefusalReason::kTailPage:
    case RefusalReason::kInsideBlock:
    case RefusalReason::kStillMapped:
      return kNotAllocated;
    case RefusalReason::kWrongOwner:
      return kWrongOwner;
    case RefusalReason::kWrongOrder:
      return kWrongOrder;
    case RefusalReason::kMisaligned:
    case RefusalReason::kAddrUnaligned:
      return kMisaligned;
    case RefusalReason::kPfnOutOfRange:
    case RefusalReason::kAddrBelowDirectMap:
    case RefusalReason::kAddrBeyondDirectMap:
      return kOutOfRange;
    case RefusalReason::kOrderTooHigh:
    case RefusalReason::kAddrKmapWindow:
    case RefusalReason::kNotAPage:
    case RefusalReason::kCommitFailed:
    // Allocation and kmap() reasons never reach a free's counter; grouped for totality.
    case RefusalReason::kKmapWindowFull:
    case RefusalReason::kNotKmapped:
    case RefusalReason::kInvalidGfp:
    case RefusalReason::kNoZone:
    case RefusalReason::kBelowWatermark:
    case RefusalReason::kNoFreeBlock:
    case RefusalReason::kCount:
      return kBadRequest;
  }
  return kBadRequest;
}

// The message the client reads for `r` (before `context`).
std::string ClientMessage(const Refusal& r) {
  switch (r.reason) {
    case RefusalReason::kWrongOwner:
      // The allocator's detail names both owner ids; a lease id is another identity's secret.
      return absl::StrFormat("pfn %#x belongs to another lease", r.pfn);
    case RefusalReason::kCommitFailed:
      if (!r.cause.ok()) return std::string(r.cause.message());
      return r.detail;
    default:
      return r.detail;
  }
}

}  // namespace

absl::Status RefusalStatus(const Refusal& r, std::string_view context) {
  const absl::StatusCode code =
      r.reason == RefusalReason::kCommitFailed && !r.cause.ok() ? r.cause.code() : RefusalCode(r.reason);
  absl::Status s(code, ClientMessage(r) + std::string(context));
  s.SetPayload(kRefusalPayloadUrl, absl::Cord(std::string(RefusalReasonName(r.reason))));
  return s;
}

std::optional<RefusalReason> RefusalReasonOf(const absl::Status& s) {
  const auto payload = s.GetPayload(kRefusalPayloadUrl);  // absl::optional: Debian's Abseil has its own
  if (!payload) return std::nullopt;
  const std::string name(*payload);
  for (int i = 0; i < static_cast<int>(RefusalReason::kCount); ++i) {
    if (RefusalReasonName(static_cast<RefusalReason>(i)) == name) return static_cast<RefusalReason>(i);
  }
  return std::nullopt;
}

size_t FreeRefusedLabelIndex(std::optional<RefusalReason> reason) {
  return reason ? LabelOf(*reason) : kBadRequest;
}

}  // namespace physmem
