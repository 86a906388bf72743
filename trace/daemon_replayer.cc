#include "trace/daemon_replayer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "allocator/gfp.h"
#include "allocator/target.h"
#include "clients/physmem_client.h"

namespace physmem::trace {
namespace {

constexpr uint64_t kPending = ~uint64_t{0};      // block's allocation not yet replayed
constexpr uint64_t kRefused = ~uint64_t{0} - 1;  // refused, or already freed

std::string CodeName(absl::StatusCode code) { return absl::AsciiStrToLower(absl::StatusCodeToString(code)); }

// Reads "NAME value" out of "... NAME value, ..." or "... NAME value)" at or after `from`.
bool NumberAfter(absl::string_view text, absl::string_view name, size_t from, uint64_t* out) {
  const size_t at = text.find(name, from);
  if (at == absl::string_view::npos) return false;
  size_t end = at + name.size();
  while (end < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[end]))) ++end;
  return absl::SimpleAtoi(text.substr(at + name.size(), end - at - name.size()), out);
}

class DaemonRun {
 public:
  DaemonRun(const ReplayPlan& plan, const DaemonReplayOptions& options, client::Client& client, client::Lease& lease,
            const Target& target)
      : plan_(plan),
        options_(options),
        client_(client),
        lease_(lease),
        target_(target),
        pfn_(plan.nr_blocks, kPending),
        order_(plan.nr_blocks, 0) {
    gfp_mask_ = options.zero_pages ? ~gfp_t{0} : ~__GFP_ZERO;
    const uint64_t samples = static_cast<uint64_t>(std::max(options.samples, 1));
    sample_every_ = std::max<uint64_t>(1, (plan.ops.size() + samples - 1) / samples);
    next_sample_ = sample_every_;
  }

  absl::Status Run(ReplayResult& result) {
    ReplayPacer pacer(plan_, options_.pace, options_.clock ? *options_.clock : ReplayClock::Real());
    DaemonReplayInfo& d = result.daemon;
    while (std::optional<ReplayBatch> batch = pacer.Next()) {
      absl::Status s;
      switch (batch->kind) {
        case BatchKind::kAllocBulk:
          s = AllocBulk(*batch, result.counts, d);
          break;
        case BatchKind::kAlloc:
          s = AllocOne(batch->first, result.counts, d);
          break;
        case BatchKind::kFreeBulk:
          s = FreeBulk(*batch, result.counts, d);
          break;
      }
      if (!s.ok()) return s;
      const uint64_t done = uint64_t{batch->first} + batch->count;
      if (done >= next_sample_ && done < plan_.ops.size()) {
        absl::Status sampled = Sample(done, plan_.ops[done - 1].time_us, result);
        if (!sampled.ok()) return sampled;
        while (next_sample_ <= done) next_sample_ += sample_every_;
      }
    }
    d.slept_seconds = pacer.slept_us() / 1e6;
    return absl::OkStatus();
  }

  absl::Status Sample(uint64_t ops_done, uint32_t time_us, ReplayResult& result) {
    absl::StatusOr<v1::GetZoneInfoResponse> info = client_.GetZoneInfo();
    if (!info.ok()) return info.status();
    FragmentationSample s;
    s.ops_done = ops_done;
    s.trace_seconds = time_us / 1e6;
    for (const v1::ZoneInfo& z : info->zones()) {
      for (int mt = 0; mt < z.migrate_claims_size() && mt < kNrPcpMigratetypes; ++mt)
        s.migrate.claims[mt] += z.migrate_claims(mt);
      for (int mt = 0; mt < z.migrate_steals_size() && mt < kNrPcpMigratetypes; ++mt)
        s.migrate.steals[mt] += z.migrate_steals(mt);
      if (!z.populated()) continue;
      FragmentationSample::Zone zone{z.zone(),
                                     z.managed_pages(),
                                     z.free_pages(),
                                     {z.fragmentation_index().begin(), z.fragmentation_index().end()}};
      s.zones.push_back(std::move(zone));
      result.group_by_mobility = z.page_group_by_mobility();
    }
    last_info_ = *std::move(info);
    result.samples.push_back(std::move(s));
    return absl::OkStatus();
  }

  const v1::GetZoneInfoResponse& last_info() const { return last_info_; }

  // Blocks held, and their pages (Σ 2^order), as this replay's book says.
  std::pair<uint64_t, uint64_t> Held() const {
    uint64_t blocks = 0, pages = 0;
    for (size_t b = 0; b < pfn_.size(); ++b) {
      if (pfn_[b] < kRefused) {
        ++blocks;
        pages += uint64_t{1} << order_[b];
      }
    }
    return {blocks, pages};
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context(int64_t timeout_ms) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    return ctx;
  }

  void CountAsked(const ReplayOp& op, ReplayCounts& c) {
    ++c.allocs_by_order[op.order];
    ++c.allocs_by_gfp_class[gfp_class_index(op.gfp & gfp_mask_)];
    if (op.migratetype >= 0 && op.migratetype < kNrTraceMigratetypes) ++c.allocs_by_migratetype[op.migratetype];
  }
  void Granted(const ReplayOp& op, uint64_t pfn, ReplayCounts& c) {
    known_refusals_.clear();
    ++c.allocs;
    pfn_[op.block] = pfn;
    order_[op.block] = op.order;
  }
  void Refused(const ReplayOp& op, const std::string& reason, ReplayCounts& c) {
    ++c.alloc_failures;
    ++c.failures_by_order[op.order];
    ++c.failures_by_gfp_class[gfp_class_index(op.gfp & gfp_mask_)];
    if (op.migratetype >= 0 && op.migratetype < kNrTraceMigratetypes) ++c.failures_by_migratetype[op.migratetype];
    ++c.failures_by_reason[reason];
    pfn_[op.block] = kRefused;
  }

  // The mask sent for a traced one (see "Waiting" in the header).
  gfp_t Sent(gfp_t gfp) const {
    if (options_.wait_for_memory || !gfpflags_allow_blocking(gfp) || (gfp & __GFP_NOFAIL)) return gfp;
    return gfp | __GFP_NORETRY;
  }

  // A refusal the daemon gave for this mask and order since this replay last allocated or freed
  // anything, within kRecheckAfter: the answer would be the same (see "Known refusals").
  const std::string* KnownRefusal(gfp_t gfp, unsigned order) {
    auto it = known_refusals_.find(uint64_t{gfp} << 8 | order);
    if (it == known_refusals_.end()) return nullptr;
    if (std::chrono::steady_clock::now() - it->second.at > kRecheckAfter) {
      known_refusals_.erase(it);
      return nullptr;
    }
    return &it->second.reason;
  }
  void RememberRefusal(gfp_t gfp, unsigned order, const std::string& reason) {
    known_refusals_[uint64_t{gfp} << 8 | order] = {reason, std::chrono::steady_clock::now()};
  }

  // One alloc_pages(); refusals that need no call are decided here as in-process.
  absl::Status AllocOne(uint32_t i, ReplayCounts& c, DaemonReplayInfo& d) {
    const ReplayOp& op = plan_.ops[i];
    const gfp_t gfp = op.gfp & gfp_mask_;
    CountAsked(op, c);
    if (op.order >= target_.nr_page_orders()) {
      Refused(op, "order_above_target_max", c);
      return absl::OkStatus();
    }
    if (!ValidateGfp(gfp).ok()) {
      Refused(op, "invalid_gfp", c);
      return absl::OkStatus();
    }
    if (const std::string* known = KnownRefusal(gfp, op.order)) {
      ++d.refusals_without_call;
      Refused(op, *known, c);
      return absl::OkStatus();
    }
    v1::AllocPagesRequest req;
    req.set_lease_id(lease_.id());
    req.set_gfp_mask(Sent(gfp));
    req.set_order(op.order);
    v1::Allocation resp;
    ++d.alloc_calls;
    const absl::Status s =
        client::ToAbslStatus(client_.stub().AllocPages(Context(options_.alloc_timeout_ms).get(), req, &resp));
    if (s.ok()) {
      Granted(op, resp.pfn(), c);
      return absl::OkStatus();
    }
    switch (s.code()) {
      case absl::StatusCode::kResourceExhausted: {
        const std::string reason = ReasonFromExhausted(s, op.order);
        RememberRefusal(gfp, op.order, reason);
        Refused(op, reason, c);
        break;
      }
      case absl::StatusCode::kInvalidArgument:
        Refused(op, "invalid_gfp", c);
        break;
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kUnauthenticated:
        return Ended(s);
      default:
        Refused(op, "rpc_" + CodeName(s.code()), c);
        break;
    }
    return absl::OkStatus();
  }

  absl::Status AllocBulk(const ReplayBatch& batch, ReplayCounts& c, DaemonReplayInfo& d) {
    const ReplayOp& first = plan_.ops[batch.first];
    const gfp_t gfp = first.gfp & gfp_mask_;
    uint32_t filled = 0;
    if (ValidateGfp(gfp).ok() && KnownRefusal(gfp, 0) == nullptr) {
      v1::AllocPagesBulkRequest req;
      req.set_lease_id(lease_.id());
      req.set_gfp_mask(gfp);
      req.set_count(batch.count);
      v1::AllocPagesBulkResponse resp;
      ++d.alloc_bulk_calls;
      const absl::Status s =
          client::ToAbslStatus(client_.stub().AllocPagesBulk(Context(options_.alloc_timeout_ms).get(), req, &resp));
      if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted) return Ended(s);
      filled = static_cast<uint32_t>(std::min<int>(resp.pfn_size(), static_cast<int>(batch.count)));
      for (uint32_t k = 0; k < filled; ++k) {
        CountAsked(plan_.ops[batch.first + k], c);
        Granted(plan_.ops[batch.first + k], resp.pfn(static_cast<int>(k)), c);
      }
      d.bulk_pages += filled;
      if (filled < batch.count) ++d.bulk_short;
    }
    // What the bulk call did not fill goes through alloc_pages() one by one: each refusal then
    // has its own reason, and a page the bulk path would not give (LOW + nr) may still come.
    for (uint32_t k = filled; k < batch.count; ++k) {
      if (absl::Status s = AllocOne(batch.first + k, c, d); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status FreeBulk(const ReplayBatch& batch, ReplayCounts& c, DaemonReplayInfo& d) {
    v1::FreePagesBulkRequest req;
    req.set_lease_id(lease_.id());
    std::vector<uint32_t> blocks;
    for (uint32_t i = batch.first; i < batch.first + batch.count; ++i) {
      const ReplayOp& op = plan_.ops[i];
      const uint64_t pfn = pfn_[op.block];
      if (pfn >= kRefused) {  // refused (kPending cannot happen: allocations precede their frees)
        ++c.free_of_refused;
        continue;
      }
      req.add_pfn(pfn);
      req.add_order(op.order);
      blocks.push_back(i);
    }
    if (blocks.empty()) return absl::OkStatus();
    v1::FreePagesBulkResponse resp;
    ++d.free_bulk_calls;
    const absl::Status s =
        client::ToAbslStatus(client_.stub().FreePagesBulk(Context(options_.alloc_timeout_ms).get(), req, &resp));
    if (!s.ok()) return Ended(s);
    std::vector<uint64_t> refused;
    for (const v1::FreeResult& r : resp.refused()) {
      refused.push_back(r.pfn());
      ++c.free_errors;
      if (c.first_free_error.empty()) c.first_free_error = absl::StrCat("pfn ", r.pfn(), ": ", r.message());
    }
    for (uint32_t i : blocks) {
      const ReplayOp& op = plan_.ops[i];
      if (std::find(refused.begin(), refused.end(), pfn_[op.block]) != refused.end()) continue;
      known_refusals_.clear();
      ++c.frees;
      ++c.frees_by_order[op.order];
      pfn_[op.block] = kRefused;  // freed: a stale second free is not replayed
    }
    return absl::OkStatus();
  }

  absl::Status Ended(const absl::Status& s) const {
    return absl::Status(
        s.code(), absl::StrCat("replay on ", options_.address, " (lease ", lease_.id(), ") stopped: ", s.message()));
  }

  const ReplayPlan& plan_;
  const DaemonReplayOptions& options_;
  client::Client& client_;
  client::Lease& lease_;
  const Target& target_;
  std::vector<uint64_t> pfn_;   // per block: its emulated pfn, kPending or kRefused
  std::vector<uint8_t> order_;  // per block: its order, once granted
  gfp_t gfp_mask_;
  uint64_t sample_every_ = 1, next_sample_ = 1;
  v1::GetZoneInfoResponse last_info_;
  struct Known {
    std::string reason;
    std::chrono::steady_clock::time_point at;
  };
  static constexpr std::chrono::milliseconds kRecheckAfter{100};
  absl::flat_hash_map<uint64_t, Known> known_refusals_;  // key: gfp << 8 | order
};

std::string DefaultLeaseName() {
  static std::atomic<int> n{0};
  return absl::StrCat("physmem_trace-", getpid(), "-", n.fetch_add(1));
}

}  // namespace

std::string ReasonFromExhausted(const absl::Status& status, unsigned order) {
  const absl::string_view m = status.message();
  const size_t tried = m.find("zones tried:");
  if (tried == absl::string_view::npos) {
    if (absl::StrContains(m, "page quota")) return "lease_quota";
    if (absl::StrContains(m, "identity ")) return "identity_limit";
    return "resource_exhausted";
  }
  // Each zone: "NAME (free F, largest free order L, min M, lowmem_reserve R)".
  uint64_t free_pages = 0;
  bool block = false;
  for (size_t at = m.find("(free ", tried); at != absl::string_view::npos; at = m.find("(free ", at + 1)) {
    uint64_t f = 0, largest = 0;
    if (!NumberAfter(m, "(free ", at, &f) || !NumberAfter(m, "largest free order ", at, &largest)) {
      return "resource_exhausted";
    }
    free_pages += f;
    block |= f > 0 && largest >= order;
  }
  if (block) return "below_watermark";
  if (free_pages >= (uint64_t{1} << order)) return "fragmented";
  return "exhausted";
}

absl::StatusOr<ReplayResult> ReplayOnDaemon(const ReplayPlan& plan, const DaemonReplayOptions& options) {
  client::ClientOptions copts;
  copts.target = options.address;
  copts.alloc_timeout_ms = options.alloc_timeout_ms;
  absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Connect(copts);
  if (!client.ok()) {
    return absl::Status(client.status().code(),
                        absl::StrCat("cannot reach physmemd at ", options.address, ": ", client.status().message()));
  }
  absl::StatusOr<v1::GetTargetResponse> target_info = (*client)->GetTarget();
  if (!target_info.ok()) return target_info.status();
  const Target target = FromProto(target_info->profile());

  client::LeaseOptions lopts;
  lopts.ttl_ms = options.lease_ttl_ms;
  lopts.name = options.lease_name.empty() ? DefaultLeaseName() : options.lease_name;
  absl::StatusOr<std::unique_ptr<client::Lease>> lease = (*client)->CreateLease(lopts);
  if (!lease.ok()) {
    return absl::Status(lease.status().code(),
                        absl::StrCat("CreateLease on ", options.address, ": ", lease.status().message()));
  }

  ReplayResult result;
  result.config_name = options.name;
  result.mode = "daemon";
  result.target = absl::StrFormat("%s %d MiB (physmemd)", target.name, target.total_ram_bytes() >> 20);
  result.threads = 1;
  result.cpu_mapping = absl::StrCat("every traced CPU (", plan.nr_cpus,
                                    ") from one client thread; the daemon's "
                                    "handler threads pick the per-CPU lists");
  DaemonReplayInfo& d = result.daemon;
  d.address = options.address;
  d.lease_id = (*lease)->id();
  d.pace = options.pace.pace;

  DaemonRun run(plan, options, **client, **lease, target);
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = run.Run(result);
  if (!s.ok()) return s;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.wall_seconds = wall;
  result.ops_per_second = wall > 0 ? static_cast<double>(plan.ops.size()) / wall : 0;
  if (absl::Status sampled = run.Sample(plan.ops.size(), plan.ops.empty() ? 0 : plan.ops.back().time_us, result);
      !sampled.ok()) {
    return sampled;
  }
  const v1::GetZoneInfoResponse& info = run.last_info();
  result.final_buddyinfo = info.buddyinfo();
  result.final_pagetypeinfo = info.pagetypeinfo();
  result.migrate = result.samples.back().migrate;
  for (const v1::ZoneInfo& z : info.zones()) {
    result.min_free_kbytes += z.min() * target.page_size / 1024;
    result.pcp_active |= z.pcp_high() > 0;
  }
  result.pcp_requested = result.pcp_active;
  const auto [blocks, pages] = run.Held();
  result.blocks_allocated_at_end = blocks;
  d.pages_allocated_at_end = pages;
  absl::StatusOr<v1::LeaseInfo> held = (*lease)->Info();
  if (!held.ok()) return held.status();
  d.lease_pages_at_end = held->pages_held();
  if (options.keep_lease) {
    (*lease)->Release();
    d.lease_kept = true;
  }
  return result;
}

}  // namespace physmem::trace
