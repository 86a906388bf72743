#include "server/server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/health.h"
#include "server/log.h"
#include "server/recovery.h"
#include "server/server_reflection.h"
#include "server/request_decoding.h"

namespace physmem {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot read %s file %s", what, path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TcpCredentials(const ServerOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (o.tls_cert_file.empty()) {
    if (!o.tls_client_ca_file.empty()) return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    if (!o.allow_insecure_tcp) {
      return absl::FailedPreconditionError(
          "--tcp without TLS needs --allow_insecure_tcp: plaintext TCP cannot tell clients apart (every "
          "client at one address shares its leases); prefer --tls_cert/--tls_key/--tls_client_ca");
    }
    LogWarn("insecure_tcp", {{"listen", o.tcp_listen},
                             {"note", "plaintext TCP: callers are identified by address only"}});
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl;
  absl::StatusOr<std::string> cert = ReadFile(o.tls_cert_file, "TLS certificate");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(o.tls_key_file, "TLS key");
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!o.tls_client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(o.tls_client_ca_file, "client CA");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    LogWarn("tls_without_client_certs",
            {{"note", "TLS without --tls_client_ca: callers are identified by address only"}});
  }
  return grpc::SslServerCredentials(ssl);
}

// The socket's directory: made if missing, and otherwise owned by this user or root (a
// /tmp/physmemd-UID made by someone else could be swapped under us). A directory root makes
// (/run/physmemd) keeps the umask's mode, so that the socket's own mode (0660) decides who may
// connect; anyone else's (the per-user default) is 0700: only that user's clients.
absl::Status PrepareSocketDirectory(const std::string& socket) {
  const std::filesystem::path dir = std::filesystem::path(socket).parent_path();
  if (dir.empty()) return absl::OkStatus();
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      return absl::PermissionDeniedError(absl::StrFormat(
          "cannot serve on Unix socket %s: cannot create its directory %s: %s; choose another path with "
          "--unix_socket=PATH ('' for none), or run as a user who may create it",
          socket, dir.string(), ec.message()));
    }
    if (::geteuid() != 0) ::chmod(dir.c_str(), 0700);
    return absl::OkStatus();
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot serve on Unix socket %s: %s is not a directory; choose another path with --unix_socket=PATH", socket,
        dir.string()));
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "cannot serve on Unix socket %s: its directory %s belongs to uid %d, not to this user (uid %d) or root; "
        "choose another path with --unix_socket=PATH",
        socket, dir.string(), st.st_uid, ::geteuid()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::BuildAndStart(ServerOptions options) {
  std::unique_ptr<Server> s(new Server(std::move(options)));
  if (absl::Status st = s->Start(); !st.ok()) return st;
  return s;
}

absl::Status Server::Start() {
  if (options_.service_limits.max_page_io_bytes + (64 << 10) > static_cast<uint64_t>(options_.max_message_bytes)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--max_page_io_bytes %d must stay 64 KiB below --max_message_bytes %d (room for the rest of the message)",
        options_.service_limits.max_page_io_bytes, options_.max_message_bytes));
  }
  if (absl::Status st = CheckIdentityLimitsOptions(options_.identity_limits); !st.ok()) return st;
  if (absl::Status s = StartJournal(); !s.ok()) return s;
  metrics_ = std::make_unique<Metrics>(pa_.get(), lessor_.get(), journal_.get(), options_.metrics);
  if (absl::Status st = metrics_->StartExposer(); !st.ok()) return st;
  // A cancelled call wakes the waiters, so a parked allocation answers CANCELLED at once.
  inflight_.SetCancelHook([this] { waiters_->Kick(); });
  service_ = std::make_unique<PhysMemService>(pa_.get(), lessor_.get(), waiters_.get(), &peers_,
                                              options_.service_limits, metrics_.get(), &inflight_);
  // Unary requests are decoded by us, so a body that does not parse is INVALID_ARGUMENT, not
  // gRPC's empty UNIMPLEMENTED (server/request_decoding.h).
  if (absl::Status st = InstallRequestDecoding(service_.get(), &inflight_); !st.ok()) return st;

  EnableHealthChecking();
  EnableServerReflection();  // v1alpha and v1
  grpc::ServerBuilder builder;
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  if (metrics_->enabled()) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(metrics_->rpc().InterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  if (!options_.tcp_listen.empty()) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = TcpCredentials(options_);
    if (!creds.ok()) return creds.status();
    builder.AddListeningPort(options_.tcp_listen, *creds, &tcp_port_);
  }
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr) return absl::InternalError("gRPC server failed to start (see gRPC's log above)");
  MarkServing(grpc_.get());
  if (!options_.tcp_listen.empty() && tcp_port_ == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on TCP %s", options_.tcp_listen));
  }
  if (!options_.unix_socket.empty()) {
    if (absl::Status st = PrepareSocketDirectory(options_.unix_socket); !st.ok()) return st;
    unix_ = std::make_unique<UnixListener>(options_.unix_socket, &peers_);
    if (absl::Status st = unix_->Start(grpc_.get(), options_.unix_socket_mode); !st.ok()) return st;
  }
  lessor_->StartReaper();

  const Target& t = pa_->target();
  std::vector<std::string> zones;
  for (const ZoneStats& z : pa_->Stats()) {
    zones.push_back(absl::StrFormat("%s:%u", zone_name(z.type), z.present_pages));
  }
  LogInfo("started", {{"target", t.name},
                      {"ram_mib", t.total_ram_bytes() >> 20},
                      {"zones", absl::StrJoin(zones, ",")},
                      {"arena", std::string(ArenaBackingName(pa_->arena().backing()))},
                      {"arena_refusals", absl::StrJoin(pa_->arena().refusals(), "; ")},
                      {"metadata_bytes", pa_->mem_map().metadata_bytes()},
                      {"metadata_pct", absl::StrFormat("%.2f", 100.0 * pa_->mem_map().metadata_bytes() /
                                                                   pa_->arena().size())},
                      {"pcp", pa_->pcp_active() ? "rseq" : "off"},
                      {"unix", options_.unix_socket},
                      {"tcp", options_.tcp_listen.empty() ? std::string("off") : std::to_string(tcp_port_)},
                      {"metrics", options_.metrics.listen.empty() ? std::string("off")
                                                                  : std::to_string(metrics_->port())}});
  return absl::OkStatus();
}

absl::Status Server::StartJournal() {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string& arena_path = options_.allocator.arena_path;
  if (options_.journal != "auto" && options_.journal != "on" && options_.journal != "off") {
    return absl::InvalidArgumentError(absl::StrFormat("--journal=%s: expected auto, on or off", options_.journal));
  }
  if (options_.journal == "on" && arena_path.empty()) {
    return absl::InvalidArgumentError(
        "--journal=on needs a file-backed arena (--arena_path on /dev/shm or hugetlbfs): an anonymous arena's "
        "contents die with the process, so there would be nothing to recover into");
  }
  const bool on = options_.journal != "off" && !arena_path.empty();
  JournalState state;
  if (on) {
    JournalOptions jo;
    jo.path = options_.journal_path.empty() ? DefaultJournalPath(arena_path) : options_.journal_path;
    jo.compact_bytes = options_.journal_compact_bytes;
    jo.target_fingerprint = TargetFingerprint(options_.allocator.target);
    jo.step_hook = options_.journal_step_hook;
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(std::move(jo), &state);
    if (!j.ok()) return j.status();
    journal_ = *std::move(j);
  }
  const auto t_read = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(options_.allocator);
  if (!pa.ok()) return pa.status();
  pa_ = *std::move(pa);
  waiters_ = std::make_unique<AllocWaiters>();
  identity_limits_ = std::make_unique<IdentityLimits>(*pa_, options_.identity_limits);
  // The journal (null when off) takes no appends before Start below: recovery adopts without them.
  lessor_ = std::make_unique<Lessor>(
      pa_.get(), options_.lease_limits, identity_limits_.get(), journal_.get(), [this] { waiters_->Kick(); },
      options_.lease_clock != nullptr ? options_.lease_clock : &LeaseClock::Monotonic());
  if (!on) return absl::OkStatus();
  absl::StatusOr<RecoveryReport> report = RestoreFromJournal(state, pa_.get(), lessor_.get());
  if (!report.ok()) return report.status();
  if (absl::Status s = journal_->Start(lessor_->boot_nonce(), lessor_->next_id()); !s.ok()) return s;
  for (uint64_t id : report->expired) {
    // Its pages are free here: not journaled, they could be handed out while the journal still
    // gives them to it. So a journal that cannot record the end stops the start.
    if (absl::Status s = journal_->LeaseEnded(id); !s.ok()) return s;
    LogInfo("lease_expired", {{"lease", id}, {"while", "daemon down"}});
  }
  const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
  const auto t_end = std::chrono::steady_clock::now();
  LogInfo("recovered", {{"leases", report->leases},
                        {"blocks", report->blocks},
                        {"pages", report->pages},
                        {"expired", report->expired.size()},
                        {"records", state.records},
                        {"journal_bytes", state.bytes},
                        {"segments", state.segments},
                        {"snapshot", state.from_snapshot ? "yes" : "no"},
                        {"skipped_slots", state.skipped_slots},
                        {"anomalies", state.anomalies},
                        {"read_ms", absl::StrFormat("%.1f", ms(t_read - t0))},
                        {"ms", absl::StrFormat("%.1f", ms(t_end - t0))},
                        {"journal", journal_->path()}});
  return absl::OkStatus();
}

void Server::Wait() {
  if (grpc_) grpc_->Wait();
}

void Server::Shutdown() {
  {
    MutexLock l(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  LogInfo("shutting_down", {{"leases", lessor_ ? lessor_->size() : 0}});
  if (grpc_) MarkNotServing(grpc_.get());  // health checkers see it before anything stops
  if (unix_) unix_->Stop();  // no new Unix connections
  if (waiters_) waiters_->Stop();  // parked allocations answer UNAVAILABLE now
  // The exporter's web server takes up to a second to stop (civetweb's poll period): overlap it
  // with the rest.
  std::thread metrics_stop([this] {
    if (metrics_) metrics_->StopExposer();
  });
  if (grpc_) {
    // In-flight unary calls get the grace period to finish; then gRPC stops at once: streams are
    // cancelled and idle connections closed, instead of waiting out the deadline for clients
    // that keep their channels open (server/inflight_calls.h).
    const auto grace = std::chrono::milliseconds(options_.shutdown_grace_ms);
    const bool idle = inflight_.WaitIdle(std::chrono::steady_clock::now() + grace);
    if (!idle) LogWarn("shutdown_grace_expired", {{"calls_in_flight", inflight_.count()}});
    grpc_->Shutdown(std::chrono::system_clock::now());
  }
  metrics_stop.join();
  if (lessor_) {
    lessor_->StopReaper();
    const uint64_t pages = lessor_->RevokeAll();
    LogInfo("stopped", {{"pages_returned", pages}});
  }
}

Server::~Server() { Shutdown(); }

}  // namespace physmem
