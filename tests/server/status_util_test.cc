// SafeStatusMessage (server/status_util.h): what a refusal may carry back to any
// client — no control byte or broken UTF-8 raw, never more than kMaxStatusMessageBytes, so a
// stock client (8 KiB metadata limit) always sees the refusal itself.
#include "server/status_util.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace physmem {
namespace {

using ::testing::EndsWith;
using ::testing::StartsWith;

TEST(SafeStatusMessage, PrintableAsciiAndValidUtf8PassUnchanged) {
  EXPECT_EQ(SafeStatusMessage("order 11 exceeds MAX_PAGE_ORDER 10"), "order 11 exceeds MAX_PAGE_ORDER 10");
  EXPECT_EQ(SafeStatusMessage("lease name \"rx\" — taken ≤ 1 µs"), "lease name \"rx\" — taken ≤ 1 µs");
}

TEST(SafeStatusMessage, ControlBytesAndInvalidUtf8AreEscaped) {
  EXPECT_EQ(SafeStatusMessage(std::string("a\0b\n\x7f", 5)), "a\\x00b\\x0a\\x7f");
  // A lone continuation byte, a truncated 2-byte sequence, an overlong '/', a surrogate.
  EXPECT_EQ(SafeStatusMessage("x\x80y"), "x\\x80y");
  EXPECT_EQ(SafeStatusMessage("\xc3"), "\\xc3");
  EXPECT_EQ(SafeStatusMessage("\xc0\xaf"), "\\xc0\\xaf");
  EXPECT_EQ(SafeStatusMessage("\xed\xa0\x80"), "\\xed\\xa0\\x80");
}

TEST(SafeStatusMessage, ALongMessageIsCutWithANote) {
  const std::string huge(1 << 20, 'k');
  const std::string safe = SafeStatusMessage("unknown GFP flag \"" + huge + "\"");
  EXPECT_LE(safe.size(), kMaxStatusMessageBytes);
  EXPECT_THAT(safe, StartsWith("unknown GFP flag \"kkkk"));
  EXPECT_THAT(safe, EndsWith(" more bytes cut]"));
  // Escaping counts toward the bound: a megabyte of NULs is cut just the same.
  EXPECT_LE(SafeStatusMessage(std::string(1 << 20, '\0')).size(), kMaxStatusMessageBytes);
}

TEST(SafeStatusMessage, ACutNeverSplitsACharacter) {
  std::string m;
  while (m.size() < 4000) m += "é";
  const std::string safe = SafeStatusMessage(m);
  EXPECT_LE(safe.size(), kMaxStatusMessageBytes);
  EXPECT_EQ(SafeStatusMessage(safe), safe) << "the cut left a broken sequence behind";
}

TEST(ToGrpcStatus, KeepsTheCodeAndMakesTheMessageSafe) {
  const grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError(std::string("bad\0", 4)));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "bad\\x00");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace physmem
