// Refusals that quote a client's input reach a stock client whole and readable (server/
// status_util.h): a 100 KB GFP string, a GFP string with a NUL, a lease name of control bytes —
// the C++ client keeps its default 8 KiB metadata limit here, so an oversized message would
// arrive as "received initial metadata size exceeds limit" instead of the refusal. Each refused
// call leaves the census as it was.
#include <grpcpp/grpcpp.h>

#include <algorithm>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/status_util.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The longest run of `c` in `s`: how much of a run of input a message quoted.
size_t LongestRunOf(char c, const std::string& s) {
  size_t best = 0, run = 0;
  for (const char x : s) {
    run = x == c ? run + 1 : 0;
    best = std::max(best, run);
  }
  return best;
}

class RefusalMessages : public testing::DaemonStubTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=64"})); }

  // The refusal is INVALID_ARGUMENT, within the bound, with no raw control byte, and changed nothing.
  void ExpectReadableRefusal(const grpc::Status& s, const v1::ValidateResponse& before) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message().substr(0, 300);
    EXPECT_LE(s.error_message().size(), kMaxStatusMessageBytes);
    for (const char c : s.error_message()) {
      EXPECT_FALSE(static_cast<unsigned char>(c) < 0x20) << "raw control byte in: " << s.error_message();
    }
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages());
    EXPECT_EQ(after.free_pages(), before.free_pages());
  }
};

TEST_F(RefusalMessages, AHundredKilobyteGfpStringIsRefusedReadably) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::ValidateResponse before = Census();
  const grpc::Status s = testing::AllocPages(stub_.get(), lease, std::string(100 << 10, 'G'), 0, nullptr);
  ExpectReadableRefusal(s, before);
  EXPECT_THAT(s.error_message(), HasSubstr("GGGG"));
  EXPECT_THAT(s.error_message(), Not(HasSubstr("metadata")));
  // The parser quotes an excerpt (allocator/string_escape.h), not the whole input.
  EXPECT_LE(LongestRunOf('G', s.error_message()), kMaxQuotedInputBytes) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("...\" (102400 bytes)"));
}

TEST_F(RefusalMessages, AHundredKilobyteTermInAMaskIsQuotedShortInTheMaskAndTheTerm) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::ValidateResponse before = Census();
  const grpc::Status s =
      testing::AllocPages(stub_.get(), lease, "GFP_KERNEL|" + std::string(100 << 10, 'G'), 0, nullptr);
  ExpectReadableRefusal(s, before);
  EXPECT_THAT(s.error_message(), HasSubstr("GFP mask \"GFP_KERNEL|GGG"));
  EXPECT_LE(LongestRunOf('G', s.error_message()), kMaxQuotedInputBytes) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("(102411 bytes)"));  // the mask
  EXPECT_THAT(s.error_message(), HasSubstr("(102400 bytes)"));  // its term
}

TEST_F(RefusalMessages, ANulInAGfpStringIsEscaped) {
  const uint64_t lease = NewLease(3600 * 1000);
  const v1::ValidateResponse before = Census();
  const grpc::Status s = testing::AllocPages(stub_.get(), lease, std::string("GFP_KER\0NEL", 11), 0, nullptr);
  ExpectReadableRefusal(s, before);
  EXPECT_THAT(s.error_message(), HasSubstr("\\x00"));
}

TEST_F(RefusalMessages, ALeaseNameOfControlBytesIsEscaped) {
  const v1::ValidateResponse before = Census();
  v1::CreateLeaseRequest req;
  req.set_ttl_ms(3600 * 1000);
  req.set_name(std::string(1 << 20, '\x01'));
  v1::CreateLeaseResponse resp;
  testing::Deadline ctx;
  const grpc::Status s = stub_->CreateLease(&ctx, req, &resp);
  ExpectReadableRefusal(s, before);
  EXPECT_EQ(Census().leases(), before.leases());
}

}  // namespace
}  // namespace physmem
