// The double-hand checker must find overlaps (or the soak's "no overlap" proves nothing) and must
// not report blocks held one after the other, or side by side.
#include "tests/soak/ledger.h"

#include "gtest/gtest.h"

namespace physmem::soak {
namespace {

LedgerRecord Rec(uint64_t pfn, uint32_t order, uint32_t owner, int64_t start, int64_t end) {
  return LedgerRecord{pfn, order, owner, start, end};
}

TEST(Ledger, BlocksHeldOneAfterAnotherOrSideBySideDoNotOverlap) {
  const LedgerVerdict v = CheckLedger({
      Rec(100, 0, 1, 10, 20), Rec(100, 0, 2, 20, 30),  // same page, back to back
      Rec(96, 2, 3, 0, 100),                           // pfns 96..99: just below 100
      Rec(101, 0, 4, 5, 50), Rec(102, 1, 5, 5, 50),    // 101, then 102..103
      Rec(104, 2, 6, 40, 60), Rec(104, 0, 7, 61, 70),  // a block, then a page of it later
  });
  EXPECT_EQ(v.records, 7u);
  EXPECT_EQ(v.overlaps, 0u);
}

TEST(Ledger, FindsTheSamePageHeldTwice) {
  const LedgerVerdict v = CheckLedger({Rec(100, 0, 1, 10, 20), Rec(100, 0, 2, 19, 30)});
  ASSERT_EQ(v.overlaps, 1u);
  EXPECT_EQ(v.examples[0].first.owner, 1u);
  EXPECT_EQ(v.examples[0].second.owner, 2u);
}

TEST(Ledger, FindsAPageInsideALargerBlockHeldByAnother) {
  // An order-3 block 96..103 and, during it, page 101 (a neighbour below, a block above).
  EXPECT_EQ(CheckLedger({Rec(96, 3, 1, 0, 100), Rec(101, 0, 2, 50, 60)}).overlaps, 1u);
  // The small block first, then a larger one that covers it while it is still held.
  EXPECT_EQ(CheckLedger({Rec(101, 0, 2, 0, 100), Rec(96, 3, 1, 50, 60)}).overlaps, 1u);
  // Partial: order-2 block 100..103 and order-2 block 102..? cannot exist aligned, but an
  // order-1 block at 102 inside an order-2 block at 100 can.
  EXPECT_EQ(CheckLedger({Rec(100, 2, 1, 0, 100), Rec(102, 1, 2, 99, 200)}).overlaps, 1u);
}

}  // namespace
}  // namespace physmem::soak
