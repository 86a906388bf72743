#include "trace/replayer.h"

#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/mutex.h"
#include "allocator/stats.h"

namespace physmem::trace {
namespace {

// A block's slot: 0 while its allocation has not run, kRefused if the emulated machine refused
// it, else the Page*. Atomic because in per-CPU mode a free may run on another thread than its
// allocation (release on store, acquire on load; plain moves on x86).
constexpr uintptr_t kPending = 0;
constexpr uintptr_t kRefused = 1;

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
  }
  return cpus;
}

// Why an allocation was refused, from the machine's state right after the refusal.
std::string FailureReason(const PageAllocator& pa, gfp_t gfp, unsigned order) {
  if (!ValidateGfp(gfp).ok()) return "invalid_gfp";
  const ZoneType highest = gfp_zone(gfp, pa.target().zone_configured);
  uint64_t free_pages = 0;
  bool block = false;
  for (const ZoneStats& z : pa.Stats()) {
    if (!z.populated || z.type > highest) continue;
    free_pages += z.free_pages;
    for (size_t o = order; o < z.nr_free.size(); ++o) block |= z.nr_free[o] > 0;
  }
  if (block) return "below_watermark";
  if (free_pages >= (uint64_t{1} << order)) return "fragmented";
  return "exhausted";
}

// The zones' claims and steals, by requested migratetype (allocator/stats.h MigrateCounters).
MigrateFallbacks Fallbacks(const std::vector<ZoneStats>& zones) {
  MigrateFallbacks f;
  for (const ZoneStats& z : zones) {
    for (int mt = 0; mt < kNrPcpMigratetypes; ++mt) {
      for (int from = 0; from < MIGRATE_PCPTYPES; ++from) {
        for (uint64_t n : z.migrate.claims[mt][from]) f.claims[mt] += n;
        for (uint64_t n : z.migrate.steals[mt][from]) f.steals[mt] += n;
      }
    }
  }
  return f;
}

class Run {
 public:
  Run(const ReplayPlan& plan, const ReplayConfig& config, PageAllocator& pa)
      : plan_(plan), pa_(pa), blocks_(plan.nr_blocks) {
    const uint64_t n = plan.ops.size();
    const uint64_t samples = static_cast<uint64_t>(std::max(config.samples, 1));
    sample_every_ = std::max<uint64_t>(1, (n + samples - 1) / samples);
    gfp_mask_ = config.zero_pages ? ~gfp_t{0} : ~__GFP_ZERO;
    cache_reasons_ = !config.per_cpu_threads;
    if (config.observer) observe_every_ = config.observe_every;
    observer_ = &config.observer;
  }

  // Replays ops[indices[k]] in order (all ops when indices is null); counts into `counts`.
  void Ops(const std::vector<uint32_t>* indices, ReplayCounts& counts) {
    const uint64_t n = indices ? indices->size() : plan_.ops.size();
    for (uint64_t k = 0; k < n; ++k) {
      const uint64_t i = indices ? (*indices)[k] : k;
      const ReplayOp& op = plan_.ops[i];
      if (op.kind == ReplayOpKind::kAlloc) {
        Alloc(op, counts);
      } else {
        Free(op, counts);
      }
      if ((i + 1) % sample_every_ == 0 && i + 1 < plan_.ops.size()) Sample(i + 1, op.time_us);
      if (observe_every_ != 0 && (i + 1) % observe_every_ == 0 && i + 1 < plan_.ops.size()) (*observer_)(pa_, i + 1);
    }
  }

  void Observe(uint64_t ops_done) {
    if (observe_every_ != 0) (*observer_)(pa_, ops_done);
  }

  void Sample(uint64_t ops_done, uint32_t time_us) {
    FragmentationSample s;
    s.ops_done = ops_done;
    s.trace_seconds = time_us / 1e6;
    const std::vector<ZoneStats> stats = pa_.Stats();
    for (const ZoneStats& z : stats) {
      if (!z.populated) continue;
      FragmentationSample::Zone zone{std::string(zone_name(z.type)), z.managed_pages, z.free_pages, {}};
      for (unsigned o = 0; o < z.nr_free.size(); ++o) zone.fragmentation_index.push_back(FragmentationIndex(z.nr_free, o));
      s.zones.push_back(std::move(zone));
    }
    s.migrate = Fallbacks(stats);
    MutexLock lock(&samples_mu_);
    samples_.push_back(std::move(s));
  }

  std::vector<FragmentationSample> TakeSamples() {
    MutexLock lock(&samples_mu_);
    std::sort(samples_.begin(), samples_.end(),
              [](const FragmentationSample& a, const FragmentationSample& b) { return a.ops_done < b.ops_done; });
    return std::move(samples_);
  }

  uint64_t BlocksHeld() const {
    uint64_t n = 0;
    for (const auto& b : blocks_) n += b.load(std::memory_order_relaxed) > kRefused;
    return n;
  }

 private:
  void Alloc(const ReplayOp& op, ReplayCounts& c) {
    const gfp_t gfp = op.gfp & gfp_mask_;
    const int cls = gfp_class_index(gfp);
    const bool has_mt = op.migratetype >= 0 && op.migratetype < kNrTraceMigratetypes;
    ++c.allocs_by_order[op.order];
    ++c.allocs_by_gfp_class[cls];
    if (has_mt) ++c.allocs_by_migratetype[op.migratetype];
    Page* page = op.order < pa_.target().nr_page_orders() ? pa_.alloc_pages(gfp, op.order) : nullptr;
    if (page != nullptr) [[likely]] {
      ++c.allocs;
      if (cache_reasons_) ++generation_;
      blocks_[op.block].store(reinterpret_cast<uintptr_t>(page), std::memory_order_release);
      return;
    }
    ++c.alloc_failures;
    ++c.failures_by_order[op.order];
    ++c.failures_by_gfp_class[cls];
    if (has_mt) ++c.failures_by_migratetype[op.migratetype];
    ++c.failures_by_reason[op.order >= pa_.target().nr_page_orders() ? std::string("order_above_target_max")
                                                                      : Reason(gfp, op.order)];
    blocks_[op.block].store(kRefused, std::memory_order_release);
  }

  void Free(const ReplayOp& op, ReplayCounts& c) {
    std::atomic<uintptr_t>& slot = blocks_[op.block];
    uintptr_t v;
    while ((v = slot.load(std::memory_order_acquire)) == kPending) std::this_thread::yield();
    if (v == kRefused) {
      ++c.free_of_refused;
      return;
    }
    absl::Status s = pa_.__free_pages(reinterpret_cast<Page*>(v), op.order);
    if (!s.ok()) [[unlikely]] {
      ++c.free_errors;
      if (c.first_free_error.empty()) c.first_free_error = std::string(s.message());
      return;
    }
    ++c.frees;
    if (cache_reasons_) ++generation_;
    ++c.frees_by_order[op.order];
    slot.store(kRefused, std::memory_order_relaxed);  // freed: a stale second free is not replayed
  }

  const ReplayPlan& plan_;
  PageAllocator& pa_;
  std::vector<std::atomic<uintptr_t>> blocks_;
  // FailureReason() snapshots every zone: costly when most allocations fail (a small target).
  // Single-threaded, the reason for (zone, order) cannot change until an allocation or a free
  // succeeds, so it is kept per generation of the machine's state.
  std::string Reason(gfp_t gfp, unsigned order) {
    if (!cache_reasons_ || !ValidateGfp(gfp).ok()) return FailureReason(pa_, gfp, order);
    CachedReason& cached = reason_cache_[gfp_zone(gfp, pa_.target().zone_configured)][order];
    if (cached.generation != generation_ || cached.reason.empty()) {
      cached.reason = FailureReason(pa_, gfp, order);
      cached.generation = generation_;
    }
    return cached.reason;
  }
  struct CachedReason {
    uint64_t generation = 0;
    std::string reason;
  };

  uint64_t sample_every_ = 1;
  uint64_t observe_every_ = 0;  // 0: no observer
  const std::function<void(const PageAllocator&, uint64_t)>* observer_ = nullptr;
  gfp_t gfp_mask_ = ~gfp_t{0};
  bool cache_reasons_ = false;
  uint64_t generation_ = 0;  // successful allocations + frees so far (single-threaded mode only)
  std::array<std::array<CachedReason, kNrTraceOrders>, MAX_NR_ZONES> reason_cache_;
  Mutex samples_mu_;
  std::vector<FragmentationSample> samples_ ABSL_GUARDED_BY(samples_mu_);
};

}  // namespace

void ReplayCounts::Add(const ReplayCounts& o) {
  allocs += o.allocs;
  alloc_failures += o.alloc_failures;
  frees += o.frees;
  free_of_refused += o.free_of_refused;
  free_errors += o.free_errors;
  for (int i = 0; i < kNrTraceOrders; ++i) {
    allocs_by_order[i] += o.allocs_by_order[i];
    failures_by_order[i] += o.failures_by_order[i];
    frees_by_order[i] += o.frees_by_order[i];
  }
  for (int i = 0; i < kNrGfpClasses; ++i) {
    allocs_by_gfp_class[i] += o.allocs_by_gfp_class[i];
    failures_by_gfp_class[i] += o.failures_by_gfp_class[i];
  }
  for (int i = 0; i < kNrTraceMigratetypes; ++i) {
    allocs_by_migratetype[i] += o.allocs_by_migratetype[i];
    failures_by_migratetype[i] += o.failures_by_migratetype[i];
  }
  for (const auto& [reason, n] : o.failures_by_reason) failures_by_reason[reason] += n;
  if (first_free_error.empty()) first_free_error = o.first_free_error;
}

absl::StatusOr<ReplayResult> Replay(const ReplayPlan& plan, const ReplayConfig& config) {
  absl::StatusOr<std::unique_ptr<PageAllocator>> created = PageAllocator::Create(config.allocator);
  if (!created.ok()) {
    return absl::Status(created.status().code(),
                        absl::StrCat("configuration \"", config.name, "\": ", created.status().message()));
  }
  PageAllocator& pa = **created;
  ReplayResult result;
  result.config_name = config.name;
  result.target = absl::StrFormat("%s %d MiB", pa.target().name, pa.target().total_ram_bytes() >> 20);
  result.pcp_requested = config.allocator.pcp_enabled;
  result.pcp_active = pa.pcp_active();
  result.thread_pages_requested = config.allocator.thread_pages;
  result.thread_pages_active = pa.thread_pages_active();
  for (const ZoneStats& z : pa.Stats()) result.min_free_kbytes += z.watermarks.min * pa.target().page_size / 1024;

  Run run(plan, config, pa);
  const auto start = std::chrono::steady_clock::now();
  if (!config.per_cpu_threads || plan.nr_cpus <= 1) {
    result.threads = 1;
    result.cpu_mapping = absl::StrCat("every traced CPU (", plan.nr_cpus, ") on one replay thread");
    run.Ops(nullptr, result.counts);
  } else {
    const std::vector<int> host = AllowedCpus();
    std::vector<std::vector<uint32_t>> per_cpu(plan.nr_cpus);
    for (uint32_t i = 0; i < plan.ops.size(); ++i) per_cpu[plan.ops[i].cpu % plan.nr_cpus].push_back(i);
    std::vector<ReplayCounts> counts(plan.nr_cpus);
    std::vector<std::string> pin_errors(plan.nr_cpus);
    std::vector<std::thread> threads;
    for (int c = 0; c < plan.nr_cpus; ++c) {
      threads.emplace_back([&, c] {
        if (!host.empty()) {
          cpu_set_t set;
          CPU_ZERO(&set);
          CPU_SET(host[c % host.size()], &set);
          if (sched_setaffinity(0, sizeof(set), &set) != 0) pin_errors[c] = "sched_setaffinity failed";
        }
        run.Ops(&per_cpu[c], counts[c]);
      });
    }
    for (std::thread& t : threads) t.join();
    for (const ReplayCounts& c : counts) result.counts.Add(c);
    result.threads = plan.nr_cpus;
    int unpinned = 0;
    for (const std::string& e : pin_errors) unpinned += !e.empty();
    result.cpu_mapping = absl::StrCat(plan.nr_cpus, " traced CPUs on ", plan.nr_cpus, " threads, thread c pinned to host CPU #(c mod ",
                                      host.size(), ")", unpinned ? absl::StrCat(" (", unpinned, " could not be pinned)") : "");
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.wall_seconds = wall;
  result.ops_per_second = wall > 0 ? static_cast<double>(plan.ops.size()) / wall : 0;
  run.Sample(plan.ops.size(), plan.ops.empty() ? 0 : plan.ops.back().time_us);
  run.Observe(plan.ops.size());
  result.samples = run.TakeSamples();
  result.final_buddyinfo = pa.Buddyinfo();
  result.final_pagetypeinfo = pa.Pagetypeinfo();
  result.migrate = result.samples.empty() ? MigrateFallbacks{} : result.samples.back().migrate;
  for (const ZoneStats& z : pa.Stats()) {
    if (z.populated) result.group_by_mobility = !z.group_by_mobility_disabled;
  }
  result.blocks_allocated_at_end = run.BlocksHeld();
  return result;
}

}  // namespace physmem::trace
