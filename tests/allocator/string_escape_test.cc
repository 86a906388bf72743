// QuoteInput (allocator/string_escape.h): what a message quotes of a caller's input is short,
// escaped and says how long the input was.
#include "allocator/string_escape.h"

#include <string>

#include "gtest/gtest.h"

namespace physmem {
namespace {

TEST(QuoteInput, QuotesShortInputWholeAndEscaped) {
  EXPECT_EQ(QuoteInput("GFP_KERNEL"), "\"GFP_KERNEL\"");
  EXPECT_EQ(QuoteInput(std::string("a\"b\\c\0", 6)), "\"a\\\"b\\\\c\\x00\"");
}

TEST(QuoteInput, QuotesAtMostTheLimitAndSaysHowLongTheInputWas) {
  const std::string key(129, 'k');
  EXPECT_EQ(QuoteInput(key), "\"" + key + "\"");
  const std::string big(1 << 20, 'z');
  EXPECT_EQ(QuoteInput(big), "\"" + std::string(kMaxQuotedInputBytes, 'z') + "...\" (1048576 bytes)");
}

TEST(AppendEscaped, StopsAtTheLimitOnACharacterBoundaryAndSaysHowMuchWentIn) {
  std::string out;
  // "é" is two bytes of UTF-8: with room for 2 bytes, "a" and not half of "é" goes in.
  EXPECT_EQ(AppendEscaped("a\xc3\xa9" "b", 2, /*quotes=*/false, &out), 1u);
  EXPECT_EQ(out, "a");
  out.clear();
  EXPECT_EQ(AppendEscaped("a\xff" "b", 100, /*quotes=*/false, &out), 3u);
  EXPECT_EQ(out, "a\\xffb");  // a byte that is not UTF-8, escaped
}

}  // namespace
}  // namespace physmem
