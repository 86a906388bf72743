// server/refusal_status.h: every allocator refusal reason becomes one precise status code and
// one physmem_free_refused_total label, the table is total, and the reason survives the trip
// through a status (RefusalReasonOf) but not onto the wire.
#include "server/refusal_status.h"

#include <map>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/status_util.h"

namespace physmem {
namespace {

using R = RefusalReason;

struct Expected {
  absl::StatusCode code;
  std::string_view label;
};

// The contract, written out independently of the implementation: what a client sees and what
// /metrics counts for each reason (docs/metrics.md, page_allocator.h).
const std::map<R, Expected>& Contract() {
  static const auto* m = new std::map<R, Expected>{
      {R::kOrderTooHigh, {absl::StatusCode::kInvalidArgument, "bad_request"}},
      {R::kInvalidGfp, {absl::StatusCode::kInvalidArgument, "bad_request"}},
      {R::kNoZone, {absl::StatusCode::kResourceExhausted, "bad_request"}},
      {R::kBelowWatermark, {absl::StatusCode::kResourceExhausted, "bad_request"}},
      {R::kNoFreeBlock, {absl::StatusCode::kResourceExhausted, "bad_request"}},
      {R::kNotAPage, {absl::StatusCode::kInvalidArgument, "bad_request"}},
      {R::kPfnOutOfRange, {absl::StatusCode::kOutOfRange, "out_of_range"}},
      {R::kMisaligned, {absl::StatusCode::kInvalidArgument, "misaligned"}},
      {R::kNotAllocated, {absl::StatusCode::kFailedPrecondition, "not_allocated"}},
      {R::kTailPage, {absl::StatusCode::kFailedPrecondition, "not_allocated"}},
      {R::kInsideBlock, {absl::StatusCode::kFailedPrecondition, "not_allocated"}},
      {R::kWrongOrder, {absl::StatusCode::kInvalidArgument, "wrong_order"}},
      {R::kWrongOwner, {absl::StatusCode::kPermissionDenied, "wrong_owner"}},
      {R::kStillMapped, {absl::StatusCode::kFailedPrecondition, "not_allocated"}},
      {R::kCommitFailed, {absl::StatusCode::kUnavailable, "bad_request"}},  // the cause's code (below)
      {R::kAddrUnaligned, {absl::StatusCode::kInvalidArgument, "misaligned"}},
      {R::kAddrKmapWindow, {absl::StatusCode::kInvalidArgument, "bad_request"}},
      {R::kAddrBelowDirectMap, {absl::StatusCode::kInvalidArgument, "out_of_range"}},
      {R::kAddrBeyondDirectMap, {absl::StatusCode::kInvalidArgument, "out_of_range"}},
      {R::kKmapWindowFull, {absl::StatusCode::kResourceExhausted, "bad_request"}},  // never a free
      {R::kNotKmapped, {absl::StatusCode::kFailedPrecondition, "bad_request"}},     // never a free
  };
  return *m;
}

Refusal Example(R r) {
  Refusal x{r, 0x1234, "detail of " + std::string(RefusalReasonName(r))};
  if (r == R::kCommitFailed) x.cause = absl::UnavailableError("the journal is full");
  return x;
}

TEST(RefusalStatus, TheContractListsEveryReason) {
  EXPECT_EQ(Contract().size(), static_cast<size_t>(R::kCount));
}

TEST(RefusalStatus, EveryReasonMapsToItsPreciseCodeAndLabel) {
  for (int i = 0; i < static_cast<int>(R::kCount); ++i) {
    const R r = static_cast<R>(i);
    SCOPED_TRACE(RefusalReasonName(r));
    ASSERT_TRUE(Contract().contains(r));
    const absl::Status s = RefusalStatus(Example(r));
    EXPECT_EQ(s.code(), Contract().at(r).code);
    EXPECT_EQ(FreeRefusedLabel(r), Contract().at(r).label);
    EXPECT_EQ(kFreeRefusedLabels[FreeRefusedLabelIndex(r)], Contract().at(r).label);
  }
}

TEST(RefusalStatus, TheMessageIsTheAllocatorsDetailWithTheServicesContext) {
  const absl::Status s = RefusalStatus(Example(R::kNoFreeBlock), " (the mask cannot wait)");
  EXPECT_EQ(s.message(), "detail of no_free_block (the mask cannot wait)");
  EXPECT_EQ(RefusalStatus(Example(R::kMisaligned)).message(), "detail of misaligned");
}

TEST(RefusalStatus, AnotherOwnersBlockIsWordedWithoutNamingTheOwner) {
  Refusal r{R::kWrongOwner, 0x2a, "the block at pfn 0x2a belongs to owner 7, not 8"};
  EXPECT_EQ(RefusalStatus(r).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(RefusalStatus(r).message(), "pfn 0x2a belongs to another lease");
  EXPECT_THAT(std::string(RefusalStatus(r).message()), ::testing::Not(::testing::HasSubstr("owner 7")));
}

TEST(RefusalStatus, AFailedCommitPassesItsCauseThrough) {
  const absl::Status s = RefusalStatus(Example(R::kCommitFailed));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "the journal is full");
}

TEST(RefusalStatus, TheReasonComesBackOutOfTheStatusAndNotOntoTheWire) {
  for (int i = 0; i < static_cast<int>(R::kCount); ++i) {
    const R r = static_cast<R>(i);
    const absl::Status s = RefusalStatus(Example(r));
    EXPECT_EQ(RefusalReasonOf(s), r) << RefusalReasonName(r);
    const grpc::Status wire = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(wire.error_code()), static_cast<int>(s.code()));
    EXPECT_EQ(wire.error_details(), "");
  }
}

TEST(RefusalStatus, TheServersOwnRefusalsCarryNoReasonAndCountAsBadRequest) {
  EXPECT_EQ(RefusalReasonOf(absl::NotFoundError("lease 5 not found")), std::nullopt);
  EXPECT_EQ(RefusalReasonOf(absl::OkStatus()), std::nullopt);
  EXPECT_EQ(FreeRefusedLabel(std::nullopt), "bad_request");
}

TEST(RefusalStatus, TheLabelsAreTheSixThatDocsMetricsNames) {
  const std::set<std::string_view> labels(kFreeRefusedLabels.begin(), kFreeRefusedLabels.end());
  EXPECT_EQ(labels, (std::set<std::string_view>{"not_allocated", "wrong_owner", "wrong_order", "misaligned",
                                                "out_of_range", "bad_request"}));
}

}  // namespace
}  // namespace physmem
