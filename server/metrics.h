// The daemon's Prometheus metrics (docs/metrics.md is the contract: names, labels, meanings).
//
// Two kinds of metric live here:
//   * Snapshot metrics — zones, buddyinfo, per-CPU lists, allocator event counters, leases, arena,
//     process — are built AT SCRAPE TIME by SnapshotCollector from PageAllocator::Stats(),
//     PageAllocator::VmEvents() and the lessor. Nothing updates them in the background and
//     the allocator's fast path never touches Prometheus.
//   * Service events that happen off the allocator's fast path (refused frees, allocation waits,
//     and the RPC metrics of server/rpc_metrics.h) are prometheus-cpp counters and histograms in
//     one Registry, incremented where they happen.
// Both are served by prometheus-cpp's pull Exposer (civetweb) on --metrics_listen.
//
// The same listener serves the live picture of the arena (server/arena_page.h: /arena,
// /arena.json, /arena.png). prometheus-cpp 1.0.1's Exposer takes no extra handlers, but its
// constructor takes civetweb callbacks (a documented parameter), and civetweb documents
// begin_request as the hook that may answer a request itself: ArenaRequest answers the arena's
// paths there and leaves every other path (/metrics) to the Exposer. The callback has no pointer
// of ours (the context's user data is the Exposer's CivetServer), so it finds the allocator by
// the port the request arrived on, in a process-wide table StartExposer fills and StopExposer
// empties.
//
// Who uses it: Server builds one Metrics, hands it to PhysMemService (FreeRefused, AllocWait*)
// and installs the RPC interceptor (rpc()). Thread-safety: every method may be called from any
// thread; scrapes run on the exposer's threads concurrently with everything else.
#ifndef PHYSMEM_SERVER_METRICS_H_
#define PHYSMEM_SERVER_METRICS_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/page_allocator.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/journal.h"
#include "server/lessor.h"
#include "server/refusal_status.h"
#include "server/rpc_metrics.h"

namespace physmem {

struct MetricsOptions {
  // host:port; port 0 picks a free one; "" = no exporter. Off here (in-process servers in tests
  // must not fight over a port); physmemd's --metrics_listen defaults to 127.0.0.1:9464.
  std::string listen;
  size_t max_lease_names = 50;            // physmem_lease_held_pages series before "(other)"
};

// physmem_alloc_waits_total{outcome}.
enum class WaitOutcome : int { kSatisfied = 0, kTimedOut, kCancelled, kCount };
std::string_view WaitOutcomeName(WaitOutcome o);

class Metrics {
 public:
  // Never fails: the exporter is started separately by StartExposer().
  // `journal` may be null (no journal: physmem_journal_* stay 0).
  Metrics(const PageAllocator* pa, const Lessor* lessor, const Journal* journal, MetricsOptions options);
  ~Metrics();

  // Starts serving /metrics on options.listen (nothing if it is empty). UNAVAILABLE if the
  // address cannot be bound (civetweb's message included).
  absl::Status StartExposer();
  // Stops serving /metrics (idempotent); the collectors stay usable.
  void StopExposer();
  // The port the exporter listens on (the real one when options.listen asked for port 0); 0 if off.
  int port() const { return port_; }

  // physmem_free_refused_total{reason}: the allocator's reason for a refused free, grouped by
  // FreeRefusedLabel() (server/refusal_status.h); nullopt when the server refused it itself.
  void FreeRefused(std::optional<RefusalReason> reason);
  void AllocWaitDone(WaitOutcome outcome, std::chrono::steady_clock::duration waited);

  // grpc_server_* (server/rpc_metrics.h): Server installs rpc().InterceptorFactory() when enabled().
  RpcMetrics& rpc() { return *rpc_; }
  bool enabled() const { return !options_.listen.empty(); }

  // Exposed for tests and for physmemctl-like tools: the text exposition of everything.
  std::string Serialize() const;

 private:
  class SnapshotCollector;

  const MetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<SnapshotCollector> snapshot_;
  std::array<prometheus::Counter*, kFreeRefusedLabels.size()> free_refused_{};
  std::array<prometheus::Counter*, static_cast<int>(WaitOutcome::kCount)> waits_{};
  prometheus::Histogram* wait_seconds_ = nullptr;
  std::unique_ptr<RpcMetrics> rpc_;
  std::unique_ptr<CivetCallbacks> callbacks_;  // begin_request: the arena's pages
  std::unique_ptr<prometheus::Exposer> exposer_;
  const PageAllocator* const pa_;
  int port_ = 0;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_METRICS_H_
