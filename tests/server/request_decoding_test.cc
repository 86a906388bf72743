// Request bodies that do not parse (server/request_decoding.h): DescribeParseFailure names the
// first fault; against the real daemon, every unary method answers such a body with
// INVALID_ARGUMENT naming the method and the fault — not gRPC's empty UNIMPLEMENTED — and the
// census is unchanged after each; a KeepAlive message that does not parse ends its stream with
// INVALID_ARGUMENT, not with OK as if the client had closed it, and renews nothing.
#include "server/request_decoding.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Describe(const google::protobuf::Descriptor* type, const std::string& body) {
  return DescribeParseFailure(*type, body);
}

TEST(DescribeParseFailure, ATruncatedVarintIsNamedWithItsOffset) {
  // lease_id (1, varint) whose value's continuation bit promises a byte that never comes.
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x08\x96", 2)),
            "field 'lease_id' (1): a varint cut short at byte 1");
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x80", 1)),
            "a field tag cut short (truncated varint) at byte 0");
}

TEST(DescribeParseFailure, FieldNumberZeroAndInvalidWireTypesAreNamed) {
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x00\x01", 2)), "field number 0 at byte 0");
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x08\x01\x0e", 3)),
            "field 'lease_id' (1): invalid wire type 6 at byte 2");
  EXPECT_THAT(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x0b", 1)), HasSubstr("this API has no groups"));
}

TEST(DescribeParseFailure, AStringThatIsNotUtf8IsNamedByField) {
  v1::AllocPagesRequest req;
  req.set_lease_id(7);
  const std::string prefix = req.SerializeAsString();
  // gfp (2, length-delimited) holding 0xff: not UTF-8.
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), prefix + std::string("\x12\x01\xff", 3)),
            "field 'gfp' (2) at byte 2 is a string and is not valid UTF-8 (send text, or use a bytes field)");
}

TEST(DescribeParseFailure, AWrongWireTypeAndALengthPastTheEndAreNamed) {
  // order (4) is uint32, sent as a 2-byte string.
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x22\x02hi", 4)),
            "field 'order' (4) at byte 0 is length-delimited; its type uint32 is sent varint");
  EXPECT_EQ(Describe(v1::AllocPagesRequest::descriptor(), std::string("\x12\x10GFP", 5)),
            "field 'gfp' (2): length 16 at byte 1 runs past the end of the body (3 bytes left)");
}

TEST(DescribeParseFailure, AFaultInANestedMessageGivesThePathAndTheWholeBodysOffset) {
  // GetZoneInfoResponse.zones (1) holding a ZoneInfo whose zone (1) is not UTF-8.
  const std::string zone("\x0a\x01\xfe", 3);
  const std::string body = std::string("\x0a") + static_cast<char>(zone.size()) + zone;
  EXPECT_EQ(Describe(v1::GetZoneInfoResponse::descriptor(), body),
            "in field 'zones' (1): field 'zone' (1) at byte 2 is a string and is not valid UTF-8 (send text, or use a "
            "bytes field)");
}

TEST(DescribeParseFailure, AValidBodyHasNoSingleFault) {
  v1::AllocPagesRequest req;
  req.set_gfp("GFP_KERNEL");
  EXPECT_THAT(Describe(v1::AllocPagesRequest::descriptor(), req.SerializeAsString()), HasSubstr("no single fault"));
}

class RequestDecoding : public testing::DaemonStubTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartDaemon({"--target=i386", "--mem_mb=64"})); }

  grpc::Status RawCall(const std::string& method, const std::string& body) {
    grpc::GenericStub generic(grpc::CreateChannel(daemon_->unix_target(), grpc::InsecureChannelCredentials()));
    testing::Deadline ctx;
    grpc::Slice slice(body.data(), body.size());
    grpc::ByteBuffer req(&slice, 1), resp;
    grpc::Status status;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
      std::lock_guard<std::mutex> l(mu);
      status = s;
      done = true;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return done; });
    return status;
  }

  // Opens a KeepAlive stream, writes `messages` one at a time as raw bodies, reading a reply
  // after each until a read fails (the server ended the stream); returns the stream's status and
  // the replies read.
  grpc::Status RawKeepAlive(const std::vector<std::string>& messages, std::vector<v1::KeepAliveResponse>* replies) {
    grpc::GenericStub generic(grpc::CreateChannel(daemon_->unix_target(), grpc::InsecureChannelCredentials()));
    grpc::CompletionQueue cq;
    testing::Deadline ctx;
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
        generic.PrepareCall(&ctx, "/physmem.v1.PhysMem/KeepAlive", &cq);
    auto await = [&](intptr_t want) {
      void* tag;
      bool ok = false;
      EXPECT_TRUE(cq.Next(&tag, &ok));
      EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
      return ok;
    };
    call->StartCall(reinterpret_cast<void*>(1));
    EXPECT_TRUE(await(1));
    for (const std::string& m : messages) {
      grpc::Slice slice(m.data(), m.size());
      grpc::ByteBuffer req(&slice, 1), resp;
      call->Write(req, reinterpret_cast<void*>(2));
      if (!await(2)) break;
      call->Read(&resp, reinterpret_cast<void*>(3));
      if (!await(3)) break;
      v1::KeepAliveResponse reply;
      EXPECT_TRUE(grpc::SerializationTraits<v1::KeepAliveResponse>::Deserialize(&resp, &reply).ok());
      replies->push_back(reply);
    }
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(4));
    EXPECT_TRUE(await(4));
    cq.Shutdown();
    void* tag;
    bool ok;
    while (cq.Next(&tag, &ok)) {
    }
    return status;
  }
};

TEST_F(RequestDecoding, EveryUnaryMethodRefusesABodyThatDoesNotParseAndChangesNothing) {
  const uint64_t lease = NewLease(3600 * 1000);
  ASSERT_TRUE(testing::AllocPages(stub_.get(), lease, "GFP_KERNEL", 0, nullptr).ok());
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("physmem.v1.PhysMem");
  ASSERT_NE(service, nullptr);
  const std::vector<std::pair<std::string, std::string>> bodies = {
      {std::string("\xff\xff\xff", 3), "cut short"},   // garbage: a tag whose varint never ends
      {std::string("\x00", 1), "field number 0"},      // field number 0
  };
  int methods = 0;
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* m = service->method(i);
    if (m->client_streaming() || m->server_streaming()) continue;
    ++methods;
    for (const auto& [body, fault] : bodies) {
      const v1::ValidateResponse before = Census();
      const std::string method = "/physmem.v1.PhysMem/" + m->name();
      const grpc::Status s = RawCall(method, body);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method << ": " << s.error_message();
      EXPECT_THAT(s.error_message(),
                  StartsWith(method + ": the request body is not a valid " + m->input_type()->full_name() + ": "));
      EXPECT_THAT(s.error_message(), HasSubstr(fault)) << method;
      const v1::ValidateResponse after = Census();
      EXPECT_EQ(after.allocated_pages(), before.allocated_pages()) << method;
      EXPECT_EQ(after.leases(), before.leases()) << method;
    }
  }
  EXPECT_EQ(methods, 22);  // 21 + GetArenaMap
}

TEST_F(RequestDecoding, AStringFieldThatIsNotUtf8IsRefusedByName) {
  const uint64_t lease = NewLease(3600 * 1000);
  v1::AllocPagesRequest req;
  req.set_lease_id(lease);
  const std::string body = req.SerializeAsString() + std::string("\x12\x02\xc3\x28", 4);
  const v1::ValidateResponse before = Census();
  const grpc::Status s = RawCall("/physmem.v1.PhysMem/AllocPages", body);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("field 'gfp' (2)"));
  EXPECT_THAT(s.error_message(), HasSubstr("not valid UTF-8"));
  EXPECT_EQ(Census().allocated_pages(), before.allocated_pages());
}

TEST_F(RequestDecoding, AKeepAliveMessageThatDoesNotParseEndsTheStreamWithInvalidArgument) {
  const uint64_t lease = NewLease(3600 * 1000);
  v1::KeepAliveRequest good;
  good.set_lease_id(lease);
  const std::vector<std::pair<std::string, std::string>> bodies = {
      {std::string("\xff\xff\xff", 3), "cut short"},
      {std::string("\x00", 1), "field number 0"},
  };
  for (const auto& [bad, fault] : bodies) {
    // A valid renewal is answered first; the bad one after it ends the stream.
    const v1::ValidateResponse before = Census();
    std::vector<v1::KeepAliveResponse> replies;
    const grpc::Status s = RawKeepAlive({good.SerializeAsString(), bad, good.SerializeAsString()}, &replies);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), StartsWith("/physmem.v1.PhysMem/KeepAlive: the request body is not a valid "
                                              "physmem.v1.KeepAliveRequest: "));
    EXPECT_THAT(s.error_message(), HasSubstr(fault));
    ASSERT_EQ(replies.size(), 1u) << "the message after the bad one was answered";
    EXPECT_EQ(replies[0].lease_id(), lease);
    EXPECT_GT(replies[0].ttl_ms(), 0);
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.leases(), before.leases());
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages());
  }
}

// The decoded path still answers: a valid body through the same generic stub gets its reply.
TEST_F(RequestDecoding, AValidBodyIsServed) {
  v1::NopRequest req;
  EXPECT_TRUE(RawCall("/physmem.v1.PhysMem/Nop", req.SerializeAsString()).ok());
}

}  // namespace
}  // namespace physmem
