// PHYSMEM_DCHECK (allocator/check.h): on in the builds tests run in, where a failed check aborts
// with the condition, file:line and message — it does not fall through as assert() does under
// NDEBUG.
#include "allocator/check.h"

#include "gtest/gtest.h"

namespace physmem {
namespace {

TEST(Dcheck, IsOnWhereTestsRun) {
  // CMake turns checks off only in Release (PHYSMEM_DCHECKS=OFF), which builds no tests.
  EXPECT_TRUE(kPhysmemDchecks);
}

TEST(Dcheck, APassingCheckDoesNothing) {
  int evaluated = 0;
  PHYSMEM_DCHECK(++evaluated == 1, "evaluated once");
  EXPECT_EQ(evaluated, 1);
}

TEST(DcheckDeathTest, AFailingCheckAbortsNamingTheConditionAndTheMessage) {
  const int order = 11;
  EXPECT_DEATH(PHYSMEM_DCHECK(order <= 10, "order above MAX_PAGE_ORDER"),
               "check_test.cc:[0-9]+: PHYSMEM_DCHECK\\(order <= 10\\) failed: order above MAX_PAGE_ORDER");
}

}  // namespace
}  // namespace physmem
