#include "server/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <utility>
#include <vector>

#include <CivetServer.h>
#include <civetweb.h>

#include "absl/container/flat_hash_map.h"
#include "allocator/mutex.h"
#include "absl/strings/str_format.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"
#include "server/arena_page.h"
#include "server/log.h"
#include "server/version.h"


namespace physmem {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

// Appends one sample; the value goes where the family's type reads it.
void Add(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

std::string Z(ZoneType z) { return std::string(zone_name(z)); }

// Resident set from /proc/self/statm (second field, in host pages).
double ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE)) : 0;
}

// The allocators whose arena pages each metrics port serves (see metrics.h).
class ArenaPorts {
 public:
  static ArenaPorts& Get() {
    static ArenaPorts* const ports = new ArenaPorts;  // never destroyed: exposers may stop at exit
    return *ports;
  }
  void Add(int port, const PageAllocator* pa) {
    MutexLock l(&mu_);
    by_port_[port] = pa;
  }
  void Remove(int port) {
    MutexLock l(&mu_);
    by_port_.erase(port);
  }
  const PageAllocator* Find(int port) const {
    MutexLock l(&mu_);
    auto it = by_port_.find(port);
    return it == by_port_.end() ? nullptr : it->second;
  }

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<int, const PageAllocator*> by_port_ ABSL_GUARDED_BY(mu_);
};

// civetweb's begin_request: answers the arena's paths (returning the HTTP status, which tells
// civetweb the request is done), 0 for anything else. A pointer found in ArenaPorts stays valid
// while this runs: StopExposer removes the port, then stops civetweb, which waits for its
// workers.
int ArenaRequest(mg_connection* conn) {
  const mg_request_info* ri = mg_get_request_info(conn);
  if (ri == nullptr || ri->local_uri == nullptr) return 0;
  const PageAllocator* pa = ArenaPorts::Get().Find(ri->server_port);
  if (pa == nullptr) return 0;
  std::optional<HttpReply> reply = ServeArena(*pa, ri->local_uri);
  if (!reply) return 0;
  const std::string_view method = ri->request_method != nullptr ? ri->request_method : "";
  if (method != "GET" && method != "HEAD") {
    mg_send_http_error(conn, 405, "%s", "the arena pages answer GET and HEAD only\n");
    return 405;
  }
  if (reply->status != 200) {
    mg_send_http_error(conn, reply->status, "%s", reply->body.c_str());
    return reply->status;
  }
  mg_send_http_ok(conn, reply->content_type.c_str(), static_cast<long long>(reply->body.size()));
  if (method == "GET") mg_write(conn, reply->body.data(), reply->body.size());
  return 200;
}

}  // namespace

std::string_view WaitOutcomeName(WaitOutcome o) {
  static constexpr std::string_view kNames[] = {"satisfied", "timed_out", "cancelled"};
  return kNames[static_cast<int>(o)];
}

// Builds every snapshot family from the allocator and the lessor when Prometheus scrapes.
class Metrics::SnapshotCollector final : public prometheus::Collectable {
 public:
  SnapshotCollector(const PageAllocator* pa, const Lessor* leases, const Journal* journal, size_t max_lease_names)
      : pa_(pa),
        leases_(leases),
        journal_(journal),
        max_lease_names_(max_lease_names),
        start_time_(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()) {}

  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out;
    CollectZones(out);
    CollectVmEvents(out);
    CollectLeases(out);
    CollectJournal(out);
    CollectArenaAndProcess(out);
    return out;
  }

 private:
  void CollectZones(std::vector<MetricFamily>& out) const {
    auto free = Family("physmem_zone_free_pages", "Free pages: buddy plus per-CPU lists", MetricType::Gauge);
    auto managed = Family("physmem_zone_managed_pages", "Pages the buddy allocator manages", MetricType::Gauge);
    auto present = Family("physmem_zone_present_pages", "RAM pages in the zone's span", MetricType::Gauge);
    auto spanned = Family("physmem_zone_spanned_pages", "Pages from zone start to end, holes included",
                          MetricType::Gauge);
    auto wmark = Family("physmem_zone_watermark_pages", "Zone watermarks", MetricType::Gauge);
    auto reserve = Family("physmem_zone_lowmem_reserve_pages",
                          "Pages of zone kept back from allocations whose preferred zone is for_zone",
                          MetricType::Gauge);
    auto buddy = Family("physmem_buddyinfo_blocks", "Free blocks per order (/proc/buddyinfo)", MetricType::Gauge);
    auto frag = Family("physmem_zone_fragmentation_index",
                       "extfrag_index as a ratio: -1 a suitable block exists, 0 lack of memory .. 1 fragmentation",
                       MetricType::Gauge);
    auto pcp = Family("physmem_pcp_pages", "Pages on the per-CPU lists, summed over CPUs", MetricType::Gauge);
    auto hits = Family("physmem_pcp_hits_total", "Allocations served by a per-CPU list", MetricType::Counter);
    auto frees = Family("physmem_pcp_frees_total", "Frees that went onto a per-CPU list", MetricType::Counter);
    auto refills = Family("physmem_pcp_refills_total", "Per-CPU list refills from the buddy", MetricType::Counter);
    auto drains = Family("physmem_pcp_drains_total", "Batches drained to the buddy because a list reached high",
                         MetricType::Counter);
    auto remote = Family("physmem_pcp_remote_drains_total", "drain_all_pages() visits that found pages on a CPU",
                         MetricType::Counter);
    // Mobility grouping (issue #11, kernel 6.12): pageblocks per migratetype (pagetypeinfo's second
    // section), the highatomic reserve, and fallbacks into other types' pageblocks by (requested
    // type, type taken from, order of the free block used). Fallback and type-change series exist
    // once non-zero: 3 x 2 type pairs x 11 orders per zone would be mostly zeros.
    auto pageblocks = Family("physmem_pageblocks", "Pageblocks per migratetype (/proc/pagetypeinfo block counts)",
                             MetricType::Gauge);
    auto ha_reserved = Family("physmem_highatomic_reserved_pages",
                              "Pages in pageblocks reserved for high-order atomic allocations (nr_reserved_highatomic)",
                              MetricType::Gauge);
    auto ha_free = Family("physmem_highatomic_free_pages", "Free pages on HIGHATOMIC free lists (nr_free_highatomic)",
                          MetricType::Gauge);
    auto ha_max = Family("physmem_highatomic_max_pages",
                         "Most the reserve grows to: ALIGN(managed / 100, pageblock pages), 0 = never",
                         MetricType::Gauge);
    auto claims = Family("physmem_migrate_claims_total",
                         "Fallbacks that took over the pageblock(s) of another migratetype (try_to_steal_block)",
                         MetricType::Counter);
    auto steals = Family("physmem_migrate_steals_total",
                         "Fallbacks that took one block from another migratetype's pageblock (__rmqueue_steal)",
                         MetricType::Counter);
    auto changes = Family("physmem_pageblock_type_changes_total", "Pageblock migratetype changes by old and new type",
                          MetricType::Counter);
    for (const ZoneStats& z : pa_->Stats()) {
      if (!z.populated) continue;
      const std::string zn = Z(z.type);
      Add(free, {{"zone", zn}}, static_cast<double>(z.free_pages));
      Add(managed, {{"zone", zn}}, static_cast<double>(z.managed_pages));
      Add(present, {{"zone", zn}}, static_cast<double>(z.present_pages));
      Add(spanned, {{"zone", zn}}, static_cast<double>(z.spanned_pages));
      Add(wmark, {{"zone", zn}, {"level", "min"}}, static_cast<double>(z.watermarks.min));
      Add(wmark, {{"zone", zn}, {"level", "low"}}, static_cast<double>(z.watermarks.low));
      Add(wmark, {{"zone", zn}, {"level", "high"}}, static_cast<double>(z.watermarks.high));
      // lowmem_reserve[j] of zone z matters only for preferred zones j >= z (the kernel prints 0 below).
      for (int j = z.type; j < MAX_NR_ZONES; ++j) {
        if (!pa_->target().zone_configured[j]) continue;
        Add(reserve, {{"zone", zn}, {"for_zone", Z(static_cast<ZoneType>(j))}},
            static_cast<double>(z.lowmem_reserve[j]));
      }
      for (unsigned o = 0; o < z.nr_free.size(); ++o) {
        const std::string os = std::to_string(o);
        Add(buddy, {{"zone", zn}, {"order", os}}, static_cast<double>(z.nr_free[o]));
        Add(frag, {{"zone", zn}, {"order", os}}, FragmentationIndex(z.nr_free, o) / 1000.0);
      }
      PcpCpuStats sum;
      for (const PcpCpuStats& c : z.pcp) {
        sum.hits += c.hits;
        sum.frees += c.frees;
        sum.refills += c.refills;
        sum.drains += c.drains;
        sum.remote_drains += c.remote_drains;
      }
      Add(pcp, {{"zone", zn}}, static_cast<double>(z.pcp_pages));
      Add(hits, {{"zone", zn}}, static_cast<double>(sum.hits));
      Add(frees, {{"zone", zn}}, static_cast<double>(sum.frees));
      Add(refills, {{"zone", zn}}, static_cast<double>(sum.refills));
      Add(drains, {{"zone", zn}}, static_cast<double>(sum.drains));
      Add(remote, {{"zone", zn}}, static_cast<double>(sum.remote_drains));
      for (int t = 0; t < MIGRATE_TYPES; ++t) {
        Add(pageblocks, {{"zone", zn}, {"migratetype", std::string(kMigratetypeNames[t])}},
            static_cast<double>(z.nr_pageblocks_by_type[t]));
      }
      Add(ha_reserved, {{"zone", zn}}, static_cast<double>(z.nr_reserved_highatomic));
      Add(ha_free, {{"zone", zn}}, static_cast<double>(z.nr_free_highatomic));
      Add(ha_max, {{"zone", zn}}, static_cast<double>(z.highatomic_max));
      for (int a = 0; a < MIGRATE_PCPTYPES; ++a) {
        for (int b = 0; b < MIGRATE_PCPTYPES; ++b) {
          for (unsigned o = 0; o < z.nr_free.size(); ++o) {
            const std::vector<ClientMetric::Label> l = {{"zone", zn},
                              {"alloc_migratetype", std::string(kMigratetypeNames[a])},
                              {"fallback_migratetype", std::string(kMigratetypeNames[b])},
                              {"order", std::to_string(o)}};
            if (const uint64_t n = z.migrate.claims[a][b][o]) Add(claims, l, static_cast<double>(n));
            if (const uint64_t n = z.migrate.steals[a][b][o]) Add(steals, l, static_cast<double>(n));
          }
        }
      }
      for (int a = 0; a < MIGRATE_TYPES; ++a) {
        for (int b = 0; b < MIGRATE_TYPES; ++b) {
          if (const uint64_t n = z.migrate.pageblock_changes[a][b]) {
            Add(changes,
                {{"zone", zn}, {"from", std::string(kMigratetypeNames[a])}, {"to", std::string(kMigratetypeNames[b])}},
                static_cast<double>(n));
          }
        }
      }
    }
    for (auto* f : {&free, &managed, &present, &spanned, &wmark, &reserve, &buddy, &frag, &pcp, &hits, &frees,
                    &refills, &drains, &remote, &pageblocks, &ha_reserved, &ha_free, &ha_max, &claims, &steals,
                    &changes}) {
      out.push_back(std::move(*f));
    }
  }

  // (zone, order, gfp_class) series exist once non-zero: 3 zones x 11 orders x 8 classes would be
  // 264 mostly-zero series per family. Per-zone counters always exist.
  void CollectVmEvents(std::vector<MetricFamily>& out) const {
    const VmEventCounts c = pa_->VmEvents();
    auto alloc = Family("physmem_alloc_total", "Successful allocations (blocks) by serving zone, order and gfp class",
                        MetricType::Counter);
    auto alloc_pages = Family("physmem_alloc_pages_total", "Pages allocated (vmstat pgalloc_<zone>)",
                              MetricType::Counter);
    auto fail = Family("physmem_alloc_failures_total", "Failed allocations by preferred zone, order and gfp class",
                       MetricType::Counter);
    auto fallback = Family("physmem_alloc_fallbacks_total",
                           "Allocations served by zone, lower than the preferred zone", MetricType::Counter);
    auto free = Family("physmem_free_total", "Blocks freed", MetricType::Counter);
    auto free_pages = Family("physmem_free_pages_total", "Pages freed (vmstat pgfree)", MetricType::Counter);
    auto zeroed = Family("physmem_pages_zeroed_total", "Pages zeroed for __GFP_ZERO / GetZeroedPage",
                         MetricType::Counter);
    const Target& t = pa_->target();
    for (int zi = 0; zi < MAX_NR_ZONES; ++zi) {
      if (!t.zone_configured[zi]) continue;
      const auto z = static_cast<ZoneType>(zi);
      const std::string zn = Z(z);
      for (unsigned o = 0; o < c.nr_orders; ++o) {
        for (int cls = 0; cls < kNrGfpClasses; ++cls) {
          const std::vector<ClientMetric::Label> labels = {
              {"zone", zn}, {"order", std::to_string(o)}, {"gfp_class", std::string(kGfpClassNames[cls])}};
          if (const uint64_t n = c.allocs(z, o, cls)) Add(alloc, labels, static_cast<double>(n));
          if (const uint64_t n = c.failures(z, o, cls)) Add(fail, labels, static_cast<double>(n));
        }
      }
      for (int p = zi + 1; p < MAX_NR_ZONES; ++p) {
        if (const uint64_t n = c.fallback[zi][p]) {
          Add(fallback, {{"zone", zn}, {"preferred_zone", Z(static_cast<ZoneType>(p))}}, static_cast<double>(n));
        }
      }
      Add(alloc_pages, {{"zone", zn}}, static_cast<double>(c.alloc_pages(z)));
      Add(free, {{"zone", zn}}, static_cast<double>(c.free_blocks(z)));
      Add(free_pages, {{"zone", zn}}, static_cast<double>(c.free_pages(z)));
    }
    Add(zeroed, {}, static_cast<double>(c.pages_zeroed));
    for (auto* f : {&alloc, &alloc_pages, &fail, &fallback, &free, &free_pages, &zeroed}) out.push_back(std::move(*f));
  }

  // The journal's health (server/journal.h; docs/recovery.md): 0 and 0 without a journal, which
  // never fails.
  void CollectJournal(std::vector<MetricFamily>& out) const {
    auto failing = Family("physmem_journal_failing",
                          "1 while the journal cannot be written (allocations, new leases and renewals are refused)",
                          MetricType::Gauge);
    Add(failing, {}, journal_ != nullptr && journal_->failing() ? 1.0 : 0.0);
    auto failed = Family("physmem_journal_failed_appends_total", "Journal appends refused by the file system",
                         MetricType::Counter);
    Add(failed, {}, journal_ != nullptr ? static_cast<double>(journal_->failed_appends()) : 0.0);
    out.push_back(std::move(failing));
    out.push_back(std::move(failed));
  }

  void CollectLeases(std::vector<MetricFamily>& out) const {
    const LeaseCounters& c = leases_->counters();
    auto active = Family("physmem_leases_active", "Leases alive now", MetricType::Gauge);
    Add(active, {}, static_cast<double>(leases_->size()));
    auto created = Family("physmem_leases_created_total", "Leases created", MetricType::Counter);
    Add(created, {}, static_cast<double>(c.created.load(std::memory_order_relaxed)));
    auto expired = Family("physmem_leases_expired_total", "Leases whose TTL ran out", MetricType::Counter);
    Add(expired, {}, static_cast<double>(c.expired.load(std::memory_order_relaxed)));
    auto revoked = Family("physmem_leases_revoked_total", "Leases revoked (RevokeLease and shutdown)",
                          MetricType::Counter);
    Add(revoked, {}, static_cast<double>(c.revoked.load(std::memory_order_relaxed)));
    auto reclaimed = Family("physmem_lease_pages_reclaimed_total",
                            "Pages freed because their lease expired or was revoked", MetricType::Counter);
    Add(reclaimed, {}, static_cast<double>(c.pages_reclaimed.load(std::memory_order_relaxed)));
    auto scrubbed = Family("physmem_pages_scrubbed_total",
                           "Pages zeroed on their way to a lease because their last owner was another identity "
                           "(or unknown)",
                           MetricType::Counter);
    Add(scrubbed, {}, static_cast<double>(leases_->pages_scrubbed()));
    // Reported by the clients with their renewals (clients/page_cache.h), not counted here.
    auto cached = Family("physmem_client_cached_pages",
                         "Pages held by leases but idle in their clients' page caches, as the clients last reported",
                         MetricType::Gauge);
    uint64_t cached_pages = 0;
    leases_->ForEachLive([&](const Lease& l, uint64_t) { cached_pages += l.client_cached_pages(); });
    Add(cached, {}, static_cast<double>(cached_pages));
    for (auto* f : {&active, &created, &expired, &revoked, &reclaimed, &scrubbed, &cached}) {
      out.push_back(std::move(*f));
    }
    out.push_back(LeaseHeldPages());
  }

  // Sums pages held by lease name; the max_lease_names_ names holding most pages keep their own
  // series, the rest fold into "(other)", so a client that names every lease differently cannot
  // blow up the series count.
  MetricFamily LeaseHeldPages() const {
    absl::flat_hash_map<std::string, uint64_t> by_name;
    leases_->ForEachLive([&](const Lease& l, uint64_t pages) {
      by_name[l.name.empty() ? std::string("(unnamed)") : l.name] += pages;
    });
    std::vector<std::pair<std::string, uint64_t>> names(by_name.begin(), by_name.end());
    std::sort(names.begin(), names.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    auto f = Family("physmem_lease_held_pages", "Pages held by live leases, summed by lease name",
                    MetricType::Gauge);
    uint64_t other = 0;
    bool has_other = false;
    for (size_t i = 0; i < names.size(); ++i) {
      if (i < max_lease_names_ && names[i].first != "(other)") {
        Add(f, {{"lease_name", names[i].first}}, static_cast<double>(names[i].second));
      } else {
        other += names[i].second;
        has_other = true;
      }
    }
    if (has_other) Add(f, {{"lease_name", "(other)"}}, static_cast<double>(other));
    return f;
  }

  void CollectArenaAndProcess(std::vector<MetricFamily>& out) const {
    const Arena& arena = pa_->arena();
    auto bytes = Family("physmem_arena_bytes", "Host mapping size of the emulated RAM", MetricType::Gauge);
    Add(bytes, {}, static_cast<double>(arena.size()));
    auto backing = Family("physmem_arena_backing_info", "How the arena is backed (always 1)", MetricType::Gauge);
    Add(backing, {{"backing", std::string(ArenaBackingName(arena.backing()))}, {"file", arena.path()}}, 1);
    auto mem_map = Family("physmem_mem_map_bytes", "Page metadata (struct page array) bytes", MetricType::Gauge);
    Add(mem_map, {}, static_cast<double>(pa_->mem_map().metadata_bytes()));
    auto page_size = Family("physmem_page_size_bytes", "Emulated page size", MetricType::Gauge);
    Add(page_size, {}, static_cast<double>(pa_->target().page_size));
    auto build = Family("physmem_build_info", "physmemd version and emulated target (always 1)", MetricType::Gauge);
    Add(build, {{"version", Version()}, {"target", pa_->target().name}}, 1);
    auto rss = Family("process_resident_memory_bytes", "Resident memory size in bytes", MetricType::Gauge);
    Add(rss, {}, ResidentBytes());
    auto start = Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds",
                        MetricType::Gauge);
    Add(start, {}, start_time_);
    for (auto* f : {&bytes, &backing, &mem_map, &page_size, &build, &rss, &start}) out.push_back(std::move(*f));
  }

  const PageAllocator* const pa_;
  const Lessor* const leases_;
  const Journal* const journal_;  // null without a journal
  const size_t max_lease_names_;
  const double start_time_;
};

Metrics::Metrics(const PageAllocator* pa, const Lessor* leases, const Journal* journal, MetricsOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()),
      snapshot_(std::make_shared<SnapshotCollector>(pa, leases, journal, options_.max_lease_names)),
      pa_(pa) {
  auto& refused = prometheus::BuildCounter()
                      .Name("physmem_free_refused_total")
                      .Help("Refused frees by reason")
                      .Register(*registry_);
  for (size_t i = 0; i < kFreeRefusedLabels.size(); ++i) {
    free_refused_[i] = &refused.Add({{"reason", std::string(kFreeRefusedLabels[i])}});
  }
  auto& waits = prometheus::BuildCounter()
                    .Name("physmem_alloc_waits_total")
                    .Help("Allocations that had to wait for memory, by outcome")
                    .Register(*registry_);
  for (int o = 0; o < static_cast<int>(WaitOutcome::kCount); ++o) {
    waits_[o] = &waits.Add({{"outcome", std::string(WaitOutcomeName(static_cast<WaitOutcome>(o)))}});
  }
  auto& wait_seconds = prometheus::BuildHistogram()
                           .Name("physmem_alloc_wait_duration_seconds")
                           .Help("How long allocations waited for memory")
                           .Register(*registry_);
  wait_seconds_ = &wait_seconds.Add(
      {}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                  5, 10, 30, 60});
  rpc_ = std::make_unique<RpcMetrics>(*registry_, std::vector<std::string>{"physmem.v1.PhysMem",
                                                                           "grpc.reflection.v1alpha.ServerReflection"});
}

Metrics::~Metrics() { StopExposer(); }

void Metrics::FreeRefused(std::optional<RefusalReason> reason) {
  free_refused_[FreeRefusedLabelIndex(reason)]->Increment();
}

void Metrics::AllocWaitDone(WaitOutcome outcome, std::chrono::steady_clock::duration waited) {
  waits_[static_cast<int>(outcome)]->Increment();
  wait_seconds_->Observe(std::chrono::duration<double>(waited).count());
}

absl::Status Metrics::StartExposer() {
  if (options_.listen.empty()) return absl::OkStatus();
  try {
    // One worker thread: scrapes are rare and each builds its snapshot anyway.
    callbacks_ = std::make_unique<CivetCallbacks>();
    callbacks_->begin_request = ArenaRequest;
    exposer_ = std::make_unique<prometheus::Exposer>(options_.listen, 1, callbacks_.get());
  } catch (const std::exception& e) {
    // CivetServer says only "null context when constructing CivetServer. Possible problem binding
    // to port." when the bind fails: the port is in use (another daemon) or not allowed.
    return absl::UnavailableError(absl::StrFormat(
        "cannot serve metrics on %s: the port is in use (another physmemd?) or not allowed (%s); choose "
        "another with --metrics_listen=HOST:PORT (port 0 picks a free one), or turn metrics off with "
        "--metrics_listen=''",
        options_.listen, e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  exposer_->RegisterCollectable(snapshot_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? 0 : ports.front();
  for (int p : ports) ArenaPorts::Get().Add(p, pa_);
  return absl::OkStatus();
}

void Metrics::StopExposer() {
  if (exposer_ != nullptr) {
    for (int p : exposer_->GetListeningPorts()) ArenaPorts::Get().Remove(p);
  }
  exposer_.reset();
}

std::string Metrics::Serialize() const {
  std::vector<MetricFamily> families = registry_->Collect();
  for (MetricFamily& f : snapshot_->Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace physmem
