#include "server/request_decoding.h"

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <set>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/common.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/log.h"
#include "server/physmem_service.h"
#include "server/status_util.h"

namespace physmem {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::io::CodedInputStream;
using WireFormatLite = google::protobuf::internal::WireFormatLite;

constexpr int kMaxNesting = 32;

std::string WireTypeName(int wire_type) {
  switch (wire_type) {
    case WireFormatLite::WIRETYPE_VARINT: return "varint";
    case WireFormatLite::WIRETYPE_FIXED64: return "64-bit";
    case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: return "length-delimited";
    case WireFormatLite::WIRETYPE_START_GROUP: return "group start";
    case WireFormatLite::WIRETYPE_END_GROUP: return "group end";
    case WireFormatLite::WIRETYPE_FIXED32: return "32-bit";
  }
  return absl::StrFormat("%d", wire_type);
}

std::string FieldName(const Descriptor& type, uint32_t number) {
  const FieldDescriptor* f = type.FindFieldByNumber(static_cast<int>(number));
  return f != nullptr ? absl::StrFormat("field '%s' (%d)", f->name(), number) : absl::StrFormat("field %d", number);
}

// The first fault in `body` read as the wire format of `type`, or "" if there is none. `base` is
// the body's offset in the whole request, for the byte offsets the messages give.
std::string FirstFault(const Descriptor& type, std::string_view body, size_t base, int depth) {
  if (depth > kMaxNesting) return "messages nested too deeply";
  CodedInputStream in(reinterpret_cast<const uint8_t*>(body.data()), static_cast<int>(body.size()));
  while (static_cast<size_t>(in.CurrentPosition()) < body.size()) {
    const size_t at = base + static_cast<size_t>(in.CurrentPosition());
    uint64_t tag = 0;
    if (!in.ReadVarint64(&tag)) return absl::StrFormat("a field tag cut short (truncated varint) at byte %d", at);
    const uint64_t number = tag >> 3;
    const int wire_type = static_cast<int>(tag & 7);
    if (number == 0) return absl::StrFormat("field number 0 at byte %d", at);
    if (number > static_cast<uint64_t>(FieldDescriptor::kMaxNumber)) {
      return absl::StrFormat("field number %d at byte %d is above the largest allowed, %d", number, at,
                             FieldDescriptor::kMaxNumber);
    }
    const std::string name = FieldName(type, static_cast<uint32_t>(number));
    const size_t value_at = base + static_cast<size_t>(in.CurrentPosition());
    std::string_view bytes;  // a length-delimited value
    switch (wire_type) {
      case WireFormatLite::WIRETYPE_VARINT: {
        uint64_t v;
        if (!in.ReadVarint64(&v)) return absl::StrFormat("%s: a varint cut short at byte %d", name, value_at);
        break;
      }
      case WireFormatLite::WIRETYPE_FIXED64: {
        uint64_t v;
        if (!in.ReadLittleEndian64(&v)) return absl::StrFormat("%s: a 64-bit value cut short at byte %d", name, value_at);
        break;
      }
      case WireFormatLite::WIRETYPE_FIXED32: {
        uint32_t v;
        if (!in.ReadLittleEndian32(&v)) return absl::StrFormat("%s: a 32-bit value cut short at byte %d", name, value_at);
        break;
      }
      case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
        uint32_t length;
        if (!in.ReadVarint32(&length)) return absl::StrFormat("%s: a length cut short at byte %d", name, value_at);
        const size_t start = static_cast<size_t>(in.CurrentPosition());
        if (length > body.size() - start) {
          return absl::StrFormat("%s: length %d at byte %d runs past the end of the body (%d bytes left)", name, length,
                                 value_at, body.size() - start);
        }
        bytes = body.substr(start, length);
        in.Skip(static_cast<int>(length));
        break;
      }
      case WireFormatLite::WIRETYPE_START_GROUP:
      case WireFormatLite::WIRETYPE_END_GROUP:
        return absl::StrFormat("%s: a group (wire type %s) at byte %d; this API has no groups", name,
                               WireTypeName(wire_type), at);
      default:
        return absl::StrFormat("%s: invalid wire type %d at byte %d", name, wire_type, at);
    }
    const FieldDescriptor* f = type.FindFieldByNumber(static_cast<int>(number));
    if (f == nullptr) continue;  // an unknown field is kept, not a fault
    const int expected = WireFormatLite::WireTypeForFieldType(static_cast<WireFormatLite::FieldType>(f->type()));
    const bool packed = f->is_packable() && wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (wire_type != expected && !packed) {
      return absl::StrFormat("%s at byte %d is %s; its type %s is sent %s", name, at, WireTypeName(wire_type),
                             f->type_name(), WireTypeName(expected));
    }
    if (f->type() == FieldDescriptor::TYPE_STRING && !google::protobuf::internal::IsStructurallyValidUTF8(
                                                         bytes.data(), static_cast<int>(bytes.size()))) {
      return absl::StrFormat("%s at byte %d is a string and is not valid UTF-8 (send text, or use a bytes field)",
                             name, at);
    }
    if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
      const size_t inner_base = base + static_cast<size_t>(bytes.data() - body.data());
      const std::string inner = FirstFault(*f->message_type(), bytes, inner_base, depth + 1);
      if (!inner.empty()) return absl::StrFormat("in %s: %s", name, inner);
    }
  }
  return "";
}

std::string BodyBytes(const grpc::ByteBuffer& body) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!body.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// One call's typed request and response, and how the response becomes the raw reply.
template <class Request, class Response>
class TypedCall final : public ResponseSink {
 public:
  explicit TypedCall(grpc::ByteBuffer* reply) : reply_(reply) {}
  bool Serialize() override {
    bool own_buffer;
    return grpc::SerializationTraits<Response>::Serialize(response, reply_, &own_buffer).ok();
  }
  Request request;
  Response response;

 private:
  grpc::ByteBuffer* const reply_;
};

using Service = v1::PhysMem::CallbackService;

// grpc::Service keeps MarkMethodRawCallback protected (its generated subclasses call it); this
// names it through a subclass to re-register the methods of the service object we were given.
struct ServiceAccess : grpc::Service {
  static void MarkRaw(grpc::Service* service, int index, grpc::internal::MethodHandler* handler) {
    (service->*&ServiceAccess::MarkMethodRawCallback)(index, handler);
  }
};

class Installer {
 public:
  Installer(PhysMemService* service, InflightCalls* calls)
      : service_(service),
        calls_(calls),
        descriptor_(google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("physmem.v1.PhysMem")) {}

  // Re-registers `name`, whose typed handler is `typed` (a member of one of the service's bases).
  template <class Base, class Request, class Response>
  void Add(const std::string& name,
           grpc::ServerUnaryReactor* (Base::*typed)(grpc::CallbackServerContext*, const Request*, Response*)) {
    const google::protobuf::MethodDescriptor* m = Claim(name, /*bidi=*/false);
    if (m == nullptr) return;
    Service* service = service_;
    InflightCalls* calls = calls_;
    const std::string full_method = absl::StrFormat("/physmem.v1.PhysMem/%s", name);
    ServiceAccess::MarkRaw(
        service_, m->index(),
        new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
            [service, calls, typed, full_method](grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* body,
                                                 grpc::ByteBuffer* reply) -> grpc::ServerUnaryReactor* {
              auto call = std::make_unique<TypedCall<Request, Response>>(reply);
              if (absl::Status s = DecodeRequest(full_method, *body, &call->request); !s.ok()) {
                return Refuse(ctx, calls, s);
              }
              Request* request = &call->request;
              Response* response = &call->response;
              InflightCalls::SetNextSink(std::move(call));
              grpc::ServerUnaryReactor* reactor = (service->*typed)(ctx, request, response);
              if (InflightCalls::TakeUnclaimedSink() != nullptr) {
                // The handler answered without InflightCalls::Begin(): its response would never
                // be serialized, and its request would be freed under it. A bug, found by tests.
                LogError("handler_without_unary_call", {{"method", full_method}});
                std::abort();
              }
              return reactor;
            }));
  }

  // Re-registers the bidirectional stream `name`, whose reactor `stream` makes.
  void AddStream(const std::string& name,
                 std::function<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*(grpc::CallbackServerContext*)>
                     stream) {
    const google::protobuf::MethodDescriptor* m = Claim(name, /*bidi=*/true);
    if (m == nullptr) return;
    ServiceAccess::MarkRaw(service_, m->index(),
                           new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(std::move(stream)));
  }

  absl::Status Done() const {
    if (descriptor_ == nullptr) return absl::InternalError("physmem.v1.PhysMem is not in the descriptor pool");
    std::vector<std::string> missing;
    for (int i = 0; i < descriptor_->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* m = descriptor_->method(i);
      if (!covered_.contains(m->name())) missing.push_back(m->name());
    }
    if (missing.empty() && unknown_.empty()) return absl::OkStatus();
    return absl::InternalError(absl::StrFormat(
        "request decoding does not cover methods [%s] and names methods the service lacks or has of another kind [%s] "
        "(server/request_decoding.cc)",
        absl::StrJoin(missing, ", "), absl::StrJoin(unknown_, ", ")));
  }

 private:
  // The service's method `name` if it exists and is unary (or, with `bidi`, a bidirectional
  // stream), counted as covered; else nullptr, recorded for Done() to name.
  const google::protobuf::MethodDescriptor* Claim(const std::string& name, bool bidi) {
    const google::protobuf::MethodDescriptor* m = descriptor_ != nullptr ? descriptor_->FindMethodByName(name) : nullptr;
    if (m == nullptr || m->client_streaming() != bidi || m->server_streaming() != bidi) {
      unknown_.push_back(name);
      return nullptr;
    }
    covered_.insert(name);
    return m;
  }

  static grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx, InflightCalls* calls,
                                          const absl::Status& why) {
    LogInfo("refused", {{"code", "INVALID_ARGUMENT"}, {"peer", ctx->peer()}, {"reason", std::string(why.message())}});
    UnaryCall* call = calls->Begin();
    call->Reply(ToGrpcStatus(why));
    return call;
  }

  PhysMemService* const service_;
  InflightCalls* const calls_;
  const google::protobuf::ServiceDescriptor* const descriptor_;
  std::set<std::string> covered_;
  std::vector<std::string> unknown_;
};

}  // namespace

std::string DescribeParseFailure(const Descriptor& type, std::string_view body) {
  std::string why = FirstFault(type, body, 0, 0);
  if (why.empty()) why = absl::StrFormat("it does not parse (%d bytes; no single fault found)", body.size());
  return why;
}

absl::Status ParseFailureStatus(std::string_view method, const Descriptor& type, const grpc::ByteBuffer& body) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: the request body is not a valid %s: %s", method,
                                                    type.full_name(), DescribeParseFailure(type, BodyBytes(body))));
}

absl::Status InstallRequestDecoding(PhysMemService* service, InflightCalls* calls) {
  Installer in(service, calls);
  in.AddStream("KeepAlive", [service](grpc::CallbackServerContext* ctx) { return service->KeepAliveStream(ctx); });
  in.Add("CreateLease", &Service::CreateLease);
  in.Add("RenewLease", &Service::RenewLease);
  in.Add("RevokeLease", &Service::RevokeLease);
  in.Add("GetLease", &Service::GetLease);
  in.Add("ListLeases", &Service::ListLeases);
  in.Add("AllocPages", &Service::AllocPages);
  in.Add("GetFreePages", &Service::GetFreePages);
  in.Add("GetZeroedPage", &Service::GetZeroedPage);
  in.Add("AllocPagesBulk", &Service::AllocPagesBulk);
  in.Add("FreePages", &Service::FreePages);
  in.Add("FreePagesByAddress", &Service::FreePagesByAddress);
  in.Add("FreePagesBulk", &Service::FreePagesBulk);
  in.Add("PageAddress", &Service::PageAddress);
  in.Add("Kmap", &Service::Kmap);
  in.Add("Kunmap", &Service::Kunmap);
  in.Add("ReadPages", &Service::ReadPages);
  in.Add("WritePages", &Service::WritePages);
  in.Add("GetZoneInfo", &Service::GetZoneInfo);
  in.Add("GetTarget", &Service::GetTarget);
  in.Add("GetArenaMap", &Service::GetArenaMap);
  in.Add("Validate", &Service::Validate);
  in.Add("Nop", &Service::Nop);
  return in.Done();
}

}  // namespace physmem
