// The physmemd server: builds the allocator, the lessor, the waiter queue and the gRPC
// server (PhysMem service, grpc.health.v1, server reflection) and serves them on a Unix socket
// (default) and, on request, on TCP with TLS, mutual TLS, or — only with --allow_insecure_tcp —
// plaintext.
//
// Who uses it: server/main.cc (flags -> ServerOptions -> BuildAndStart -> Wait), and tests that
// run the daemon in-process. Thread-safety: BuildAndStart, Wait and Shutdown from one thread;
// Shutdown may also be called from a signal-handling thread while Wait blocks.
#ifndef PHYSMEM_SERVER_SERVER_H_
#define PHYSMEM_SERVER_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "allocator/mutex.h"
#include "allocator/page_allocator.h"
#include "server/alloc_waiters.h"
#include "server/identity.h"
#include "server/journal.h"
#include "server/identity_limits.h"
#include "server/inflight_calls.h"
#include "server/lease_clock.h"
#include "server/lessor.h"
#include "server/metrics.h"
#include "server/physmem_service.h"
#include "server/unix_listener.h"

namespace physmem {

struct ServerOptions {
  PageAllocatorOptions allocator;
  std::string unix_socket = "/run/physmemd/physmemd.sock";  // "" = no Unix socket
  unsigned unix_socket_mode = 0660;
  std::string tcp_listen;            // "host:port" ("127.0.0.1:0" picks a port); "" = no TCP
  bool allow_insecure_tcp = false;   // plaintext TCP (every client at an address shares an identity)
  std::string tls_cert_file;         // server certificate (PEM) for TCP
  std::string tls_key_file;
  std::string tls_client_ca_file;    // set: mutual TLS, clients must present a cert signed by it
  LeaseLimits lease_limits;
  IdentityLimitsOptions identity_limits;
  ServiceLimits service_limits;
  int max_message_bytes = 64 << 20;
  int shutdown_grace_ms = 2000;      // how long in-flight unary calls get on shutdown (inflight_calls.h)
  // Crash recovery (server/journal.h, docs/recovery.md): "auto" = on with a file-backed arena.
  std::string journal = "auto";      // auto, on, off
  std::string journal_path;          // "" = DefaultJournalPath(arena_path)
  uint64_t journal_compact_bytes = 32ull << 20;
  // Called at each step of a journal compaction (JournalOptions::step_hook); null in physmemd.
  std::function<void(std::string_view step)> journal_step_hook;
  // The clock lease deadlines are read from (server/lease_clock.h); null: LeaseClock::Monotonic().
  // Must outlive the server. Only test programs set another one.
  const LeaseClock* lease_clock = nullptr;
  MetricsOptions metrics;            // Prometheus exporter (listen "" = off)
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> BuildAndStart(ServerOptions options);
  ~Server();

  void Wait();
  // Stops accepting, fails waiting allocations, lets in-flight calls finish (up to the grace
  // period), then returns. Idempotent.
  void Shutdown();

  int tcp_port() const { return tcp_port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  PageAllocator& allocator() { return *pa_; }
  Lessor& lessor() { return *lessor_; }

 private:
  explicit Server(ServerOptions options) : options_(std::move(options)) {}
  absl::Status Start();

  ServerOptions options_;
  absl::Status StartJournal();  // recovery, before serving

  std::unique_ptr<Journal> journal_;  // outlives the lessor, which appends to it
  std::unique_ptr<PageAllocator> pa_;
  PeerRegistry peers_;
  std::unique_ptr<AllocWaiters> waiters_;
  std::unique_ptr<IdentityLimits> identity_limits_;
  std::unique_ptr<Lessor> lessor_;
  // After the allocator and the lessor (its collector reads them), before the service and the
  // gRPC server (they count into it): destroyed in the opposite order.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<PhysMemService> service_;
  InflightCalls inflight_;  // unary calls in flight, for Shutdown's grace period
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<UnixListener> unix_;
  int tcp_port_ = 0;
  Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_SERVER_H_
