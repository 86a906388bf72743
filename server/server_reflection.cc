#include "server/server_reflection.h"

#include <algorithm>
#include <memory>

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>
#include <grpcpp/server_builder.h>

namespace physmem {
namespace {

using grpc::reflection::v1::ServerReflectionRequest;
using grpc::reflection::v1::ServerReflectionResponse;

// Registers the v1 service when a server is built, and gives it the server's service list when
// the build finishes (the list is complete only then), as gRPC's v1alpha plugin does.
class ReflectionV1Plugin final : public grpc::ServerBuilderPlugin {
 public:
  std::string name() override { return "physmem_reflection_v1"; }
  void InitServer(grpc::ServerInitializer* si) override { si->RegisterService(service_); }
  void Finish(grpc::ServerInitializer* si) override { service_->set_services(*si->GetServiceList()); }
  void ChangeArguments(const std::string& /*name*/, void* /*value*/) override {}
  bool has_sync_methods() const override { return true; }
  bool has_async_methods() const override { return false; }

 private:
  std::shared_ptr<ServerReflectionV1> service_ = std::make_shared<ServerReflectionV1>();
};

std::unique_ptr<grpc::ServerBuilderPlugin> CreateReflectionV1Plugin() {
  return std::make_unique<ReflectionV1Plugin>();
}

}  // namespace

void EnableServerReflection() {
  static const bool once = [] {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder::InternalAddPluginFactory(&CreateReflectionV1Plugin);
    return true;
  }();
  (void)once;
}

ServerReflectionV1::ServerReflectionV1() : pool_(google::protobuf::DescriptorPool::generated_pool()) {}

grpc::Status ServerReflectionV1::ServerReflectionInfo(
    grpc::ServerContext* /*context*/,
    grpc::ServerReaderWriter<ServerReflectionResponse, ServerReflectionRequest>* stream) {
  std::vector<std::string> sent;  // file names this stream has carried
  ServerReflectionRequest req;
  while (stream->Read(&req)) {
    ServerReflectionResponse resp;
    Answer(req, &sent, &resp);
    if (!stream->Write(resp)) break;
  }
  return grpc::Status::OK;
}

void ServerReflectionV1::Answer(const ServerReflectionRequest& req, std::vector<std::string>* sent,
                                ServerReflectionResponse* resp) const {
  resp->set_valid_host(req.host());
  *resp->mutable_original_request() = req;
  switch (req.message_request_case()) {
    case ServerReflectionRequest::kListServices: {
      MutexLock l(&mu_);
      for (const std::string& s : services_) resp->mutable_list_services_response()->add_service()->set_name(s);
      return;
    }
    case ServerReflectionRequest::kFileByFilename: {
      const google::protobuf::FileDescriptor* f = pool_->FindFileByName(req.file_by_filename());
      if (f == nullptr) return NotFound("file not found: " + req.file_by_filename(), resp);
      return AddFile(f, sent, resp);
    }
    case ServerReflectionRequest::kFileContainingSymbol: {
      const google::protobuf::FileDescriptor* f = pool_->FindFileContainingSymbol(req.file_containing_symbol());
      if (f == nullptr) return NotFound("symbol not found: " + req.file_containing_symbol(), resp);
      return AddFile(f, sent, resp);
    }
    case ServerReflectionRequest::kFileContainingExtension: {
      const auto& ext = req.file_containing_extension();
      const google::protobuf::Descriptor* type = pool_->FindMessageTypeByName(ext.containing_type());
      if (type == nullptr) return NotFound("type not found: " + ext.containing_type(), resp);
      const google::protobuf::FieldDescriptor* field = pool_->FindExtensionByNumber(type, ext.extension_number());
      if (field == nullptr) {
        return NotFound("extension " + std::to_string(ext.extension_number()) + " of " + ext.containing_type() +
                            " not found",
                        resp);
      }
      return AddFile(field->file(), sent, resp);
    }
    case ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const google::protobuf::Descriptor* type = pool_->FindMessageTypeByName(req.all_extension_numbers_of_type());
      if (type == nullptr) return NotFound("type not found: " + req.all_extension_numbers_of_type(), resp);
      std::vector<const google::protobuf::FieldDescriptor*> exts;
      pool_->FindAllExtensions(type, &exts);
      auto* out = resp->mutable_all_extension_numbers_response();
      out->set_base_type_name(type->full_name());
      for (const google::protobuf::FieldDescriptor* e : exts) out->add_extension_number(e->number());
      return;
    }
    case ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      break;
  }
  resp->mutable_error_response()->set_error_code(static_cast<int>(grpc::StatusCode::UNIMPLEMENTED));
  resp->mutable_error_response()->set_error_message("the request sets none of the message_request fields");
}

// The file and, before it, every dependency the stream has not carried yet (clients build their
// pool from what they were sent).
void ServerReflectionV1::AddFile(const google::protobuf::FileDescriptor* file, std::vector<std::string>* sent,
                                 ServerReflectionResponse* resp) const {
  auto* out = resp->mutable_file_descriptor_response();
  std::vector<const google::protobuf::FileDescriptor*> todo = {file};
  while (!todo.empty()) {
    const google::protobuf::FileDescriptor* f = todo.back();
    todo.pop_back();
    if (std::find(sent->begin(), sent->end(), f->name()) != sent->end()) continue;
    sent->push_back(f->name());
    google::protobuf::FileDescriptorProto proto;
    f->CopyTo(&proto);
    out->add_file_descriptor_proto(proto.SerializeAsString());
    for (int i = 0; i < f->dependency_count(); ++i) todo.push_back(f->dependency(i));
  }
}

void ServerReflectionV1::NotFound(const std::string& message, ServerReflectionResponse* resp) {
  resp->mutable_error_response()->set_error_code(static_cast<int>(grpc::StatusCode::NOT_FOUND));
  resp->mutable_error_response()->set_error_message(message);
}

}  // namespace physmem
