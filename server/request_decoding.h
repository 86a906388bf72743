// Decoding of unary request bodies, so that a body that is not a valid message gets
// INVALID_ARGUMENT naming the method and what failed to parse, and changes nothing.
//
// Why it is needed: gRPC 1.51's callback API parses a request before any of our code runs, and
// when the parse fails it answers UNIMPLEMENTED with an empty message
// (grpc::internal::CallbackUnaryHandler::RunHandler) — a client that sent garbage bytes, a
// truncated varint or a string that is not UTF-8 is told the method does not exist.
// InstallRequestDecoding re-registers every unary method of physmem.v1.PhysMem as a raw method
// (the body as gRPC received it, a ByteBuffer): its handler parses the body into the method's
// request type itself, answers a failure with DescribeParseFailure's reason, and otherwise calls
// the service's own typed handler with the request and a response that the call's UnaryCall
// serializes into the reply just before its status goes out (server/inflight_calls.h). The one
// stream, KeepAlive, is registered raw too: gRPC 1.51 reports a message that fails to parse on a
// stream as a failed read, the same as the client's half-close, so the stream would end OK with
// no word; its reactor decodes each message with DecodeRequest and ends the stream with
// INVALID_ARGUMENT instead.
//
// Who uses it: Server, once, before the service is registered with gRPC. Thread-safety: the
// handlers run on gRPC's threads, concurrently, like the typed ones.
#ifndef PHYSMEM_SERVER_REQUEST_DECODING_H_
#define PHYSMEM_SERVER_REQUEST_DECODING_H_

#include <string>
#include <string_view>

#include <google/protobuf/descriptor.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/inflight_calls.h"

namespace physmem {

class PhysMemService;

// Why `body` does not parse as a `type` message, for a client: the first wire-format fault and
// its byte offset (a truncated varint, field number 0, a length running past the end, an invalid
// wire type), else a declared field sent with the wrong wire type, else a string field that is
// not valid UTF-8 (with the field's name and number), looking into nested messages too.
std::string DescribeParseFailure(const google::protobuf::Descriptor& type, std::string_view body);

// The status a client gets for a body of `method` ("/physmem.v1.PhysMem/Name") that does not
// parse as `type`: INVALID_ARGUMENT "<method>: the request body is not a valid <type>: <why>".
absl::Status ParseFailureStatus(std::string_view method, const google::protobuf::Descriptor& type,
                                const grpc::ByteBuffer& body);

// Parses `body` into `out`; ParseFailureStatus() when it does not parse.
template <class Request>
absl::Status DecodeRequest(std::string_view method, const grpc::ByteBuffer& body, Request* out) {
  grpc::ByteBuffer copy(body);  // Deserialize consumes its buffer; the copy shares the slices
  if (grpc::SerializationTraits<Request>::Deserialize(&copy, out).ok()) return absl::OkStatus();
  return ParseFailureStatus(method, *Request::descriptor(), body);
}

// Makes every method of `service` decode its own requests (see above): the unary ones through
// the typed handlers, KeepAlive through PhysMemService::KeepAliveStream. Refuses, naming them, if
// the service has a method this file does not know (a new RPC must be added to its table) — so no
// method silently keeps gRPC's UNIMPLEMENTED answer.
absl::Status InstallRequestDecoding(PhysMemService* service, InflightCalls* calls);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_REQUEST_DECODING_H_
