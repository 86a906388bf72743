#include "server/physmem_service.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"
#include "server/status_util.h"
#include "server/tsan_annotations.h"

namespace physmem {
namespace {

// The allocator names the owning lease in its PERMISSION_DENIED text; a caller should not learn
// another identity's lease ids, so the service words it without them.
absl::Status HideOtherOwner(absl::Status s, uint64_t pfn) {
  if (s.code() != absl::StatusCode::kPermissionDenied) return s;
  return absl::PermissionDeniedError(absl::StrFormat("pfn %#x belongs to another lease", pfn));
}

// One KeepAlive stream. gRPC constructs it on one of its threads, runs each reaction on whichever
// thread the event lands, and OnDone (which deletes it) after every other reaction; at most one
// of StartRead/StartWrite is outstanding, so reactions never overlap. Every reaction takes the
// object over and hands it back around each request to gRPC (tsan_annotations.h): before it, and
// again after it, because StartWrite/Finish themselves read resp_ and the reactor's stream before
// the operation starts. Nothing touches the object after a request returns.
class KeepAliveReactor final : public grpc::ServerBidiReactor<v1::KeepAliveRequest, v1::KeepAliveResponse> {
 public:
  KeepAliveReactor(LeaseTable* leases, absl::StatusOr<std::string> identity) : leases_(leases) {
    if (!identity.ok()) {
      End(ToGrpcStatus(identity.status()));
      return;
    }
    identity_ = *std::move(identity);
    Read();
  }

  void OnReadDone(bool ok) override {
    TsanTakeOver(this);
    if (!ok) {  // the client closed its side
      End(grpc::Status::OK);
      return;
    }
    absl::StatusOr<int64_t> ttl = leases_->Renew(req_.lease_id(), identity_);
    if (!ttl.ok() && ttl.status().code() == absl::StatusCode::kPermissionDenied) {
      End(ToGrpcStatus(ttl.status()));
      return;
    }
    resp_.set_lease_id(req_.lease_id());
    resp_.set_ttl_ms(ttl.ok() ? *ttl : 0);  // etcd's convention: TTL 0 = the lease is gone
    TsanHandOff(this);
    StartWrite(&resp_);
    TsanHandOff(this);
  }

  void OnWriteDone(bool ok) override {
    TsanTakeOver(this);
    if (!ok) {
      End(grpc::Status::OK);
      return;
    }
    Read();
  }

  void OnDone() override {
    TsanTakeOver(this);
    delete this;
  }

 private:
  void Read() {
    TsanHandOff(this);
    StartRead(&req_);
    TsanHandOff(this);
  }
  void End(const grpc::Status& s) {
    TsanHandOff(this);
    Finish(s);
    TsanHandOff(this);
  }

  LeaseTable* leases_;
  std::string identity_;
  v1::KeepAliveRequest req_;
  v1::KeepAliveResponse resp_;
};

}  // namespace

absl::StatusOr<gfp_t> GfpFromRequest(const std::string& gfp, bool has_mask, uint32_t mask) {
  if (has_mask == !gfp.empty()) {
    return absl::InvalidArgumentError(has_mask ? "set either gfp or gfp_mask, not both"
                                               : "a GFP mask is required: set gfp (e.g. \"GFP_KERNEL\") or gfp_mask");
  }
  absl::StatusOr<gfp_t> parsed = has_mask ? absl::StatusOr<gfp_t>(mask) : ParseGfp(gfp);
  if (!parsed.ok()) return parsed.status();
  if (absl::Status s = ValidateGfp(*parsed); !s.ok()) return s;
  return *parsed;
}

struct PhysMemService::AllocCall {
  std::shared_ptr<Lease> lease;
  gfp_t gfp = 0;
  unsigned order = 0;
  std::string key;
};

// Finishes a unary call. Refusals are logged (one line each, with the code and the reason) so an
// operator can see who is being turned away and why; successes are not.
grpc::ServerUnaryReactor* PhysMemService::Reply(grpc::CallbackServerContext* ctx, const absl::Status& s) {
  if (!s.ok()) {
    LogInfo("refused", {{"code", absl::StatusCodeToString(s.code())}, {"peer", ctx->peer()},
                        {"reason", std::string(s.message())}});
  }
  UnaryCall* call = calls_->Begin();
  call->Reply(ToGrpcStatus(s));
  return call;
}

absl::StatusOr<std::shared_ptr<Lease>> PhysMemService::CallerLease(grpc::CallbackServerContext* ctx,
                                                                   uint64_t lease_id) const {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return id.status();
  return leases_->Find(lease_id, *id);
}

void PhysMemService::FillAllocation(uint64_t pfn, const LeaseBlock& block, v1::Allocation* out) const {
  Page* page = *pa_->PfnToPage(pfn);
  out->set_pfn(pfn);
  out->set_order(block.order);
  out->set_zone(std::string(zone_name(block.zone)));
  out->set_phys_addr(pfn << pa_->target().page_shift);
  out->set_virt_addr(pa_->page_address(page));
  out->set_arena_offset(pa_->arena_offset(page));
  out->set_key(block.key);
}

// ---- Leases ----

grpc::ServerUnaryReactor* PhysMemService::CreateLease(grpc::CallbackServerContext* ctx,
                                                      const v1::CreateLeaseRequest* req,
                                                      v1::CreateLeaseResponse* resp) {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return Reply(ctx, id.status());
  absl::StatusOr<std::shared_ptr<Lease>> lease = leases_->Create(*id, req->ttl_ms(), req->page_quota(), req->name());
  if (!lease.ok()) return Reply(ctx, lease.status());
  resp->set_lease_id((*lease)->id);
  resp->set_granted_ttl_ms((*lease)->granted_ttl_ms);
  resp->set_page_quota((*lease)->page_quota);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerBidiReactor<v1::KeepAliveRequest, v1::KeepAliveResponse>* PhysMemService::KeepAlive(
    grpc::CallbackServerContext* ctx) {
  return new KeepAliveReactor(leases_, Identity(ctx));
}

grpc::ServerUnaryReactor* PhysMemService::RenewLease(grpc::CallbackServerContext* ctx,
                                                     const v1::KeepAliveRequest* req, v1::KeepAliveResponse* resp) {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return Reply(ctx, id.status());
  absl::StatusOr<int64_t> ttl = leases_->Renew(req->lease_id(), *id);
  if (!ttl.ok()) return Reply(ctx, ttl.status());
  resp->set_lease_id(req->lease_id());
  resp->set_ttl_ms(*ttl);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::RevokeLease(grpc::CallbackServerContext* ctx,
                                                      const v1::RevokeLeaseRequest* req,
                                                      v1::RevokeLeaseResponse* resp) {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return Reply(ctx, id.status());
  absl::StatusOr<uint64_t> pages = leases_->Revoke(req->lease_id(), *id);
  if (!pages.ok()) return Reply(ctx, pages.status());
  resp->set_pages_freed(*pages);
  return Reply(ctx, absl::OkStatus());
}

void PhysMemService::FillLeaseInfo(Lease& lease, v1::LeaseInfo* out) const {
  out->set_lease_id(lease.id);
  out->set_name(lease.name);
  out->set_identity(lease.identity);
  out->set_ttl_ms(leases_->RemainingMs(lease));
  out->set_granted_ttl_ms(lease.granted_ttl_ms);
  out->set_page_quota(lease.page_quota);
  std::map<std::pair<int, uint32_t>, uint64_t> holdings;
  {
    std::lock_guard<std::mutex> l(lease.mu);
    out->set_pages_held(lease.pages_held);
    for (const auto& [pfn, b] : lease.blocks) ++holdings[{b.zone, b.order}];
  }
  for (const auto& [zo, n] : holdings) {
    v1::LeaseHolding* h = out->add_holdings();
    h->set_zone(std::string(zone_name(static_cast<ZoneType>(zo.first))));
    h->set_order(zo.second);
    h->set_blocks(n);
  }
}

grpc::ServerUnaryReactor* PhysMemService::GetLease(grpc::CallbackServerContext* ctx, const v1::GetLeaseRequest* req,
                                                   v1::LeaseInfo* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  FillLeaseInfo(**lease, resp);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::ListLeases(grpc::CallbackServerContext* ctx, const v1::ListLeasesRequest*,
                                                     v1::ListLeasesResponse* resp) {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return Reply(ctx, id.status());
  std::vector<std::shared_ptr<Lease>> leases = leases_->List(*id);
  std::sort(leases.begin(), leases.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  for (const auto& lease : leases) FillLeaseInfo(*lease, resp->add_leases());
  return Reply(ctx, absl::OkStatus());
}

// ---- Allocation ----

std::optional<absl::StatusOr<Page*>> PhysMemService::AllocCharged(Lease& lease, gfp_t gfp, unsigned order) {
  IdentityLimits* il = leases_->identity_limits();
  if (lease.usage == nullptr || il == nullptr) {
    Page* page = pa_->alloc_pages(gfp, order, lease.owner());
    if (page == nullptr) return std::nullopt;
    return page;
  }
  IdentityUsage& u = *lease.usage;
  const uint64_t n = uint64_t{1} << order;
  if (absl::Status s = il->ChargeTotal(u, n); !s.ok()) return s;
  const uint32_t zonelist = il->ZonelistZones(gfp);
  // A concurrent call of the same identity (another of its leases) may take the room in the
  // zone we landed in between AllowedZones() and ChargeZone(): then the block goes back and we
  // look again, with that zone now out of the mask. A few rounds settle it.
  for (int round = 0; round < 8; ++round) {
    const uint32_t allowed = il->AllowedZones(u, n) & zonelist;
    if (allowed == 0) {
      il->UnchargeTotal(u, n);
      return absl::ResourceExhaustedError(il->ExplainZoneRefusal(u, gfp, n));
    }
    Page* page = pa_->alloc_pages(gfp, order, lease.owner(), allowed);
    if (page == nullptr) {
      // No memory in the zones the identity may still use: like a lack of memory anywhere, the
      // caller may wait for frees there (the timeout message names the limits that narrowed it).
      il->UnchargeTotal(u, n);
      return std::nullopt;
    }
    if (il->ChargeZone(u, pa_->page_zonenum(page), n).ok()) return page;
    if (absl::Status s = pa_->FreePfn(pa_->page_to_pfn(page), order, lease.owner()); !s.ok()) {
      LogError("identity_limit_undo_failed", {{"lease", lease.id}, {"error", s.ToString()}});
    }
  }
  il->UnchargeTotal(u, n);
  return absl::ResourceExhaustedError(il->ExplainZoneRefusal(u, gfp, n) + " (concurrent allocations took the room)");
}

unsigned PhysMemService::AllocBulkCharged(Lease& lease, gfp_t gfp, unsigned want, Page** pages,
                                          std::string* why_short) {
  IdentityLimits* il = leases_->identity_limits();
  if (lease.usage == nullptr || il == nullptr) return pa_->alloc_pages_bulk(gfp, want, pages, lease.owner());
  IdentityUsage& u = *lease.usage;
  const uint32_t zonelist = il->ZonelistZones(gfp);
  unsigned got = 0;
  // In chunks no larger than the smallest room left in any zone the chunk may use, so that no
  // page of a chunk can break a zone cap (a concurrent call of the identity may still take
  // room: such a page goes back).
  while (got < want) {
    const uint32_t allowed = il->AllowedZones(u, 1) & zonelist;
    if (allowed == 0) {
      *why_short = il->ExplainZoneRefusal(u, gfp, 1);
      break;
    }
    uint64_t chunk = want - got;
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      if (!(allowed & (1u << z))) continue;
      const uint64_t held = u.zone_pages[z].load(std::memory_order_relaxed);
      const uint64_t cap = il->zone_cap(static_cast<ZoneType>(z));
      chunk = std::min(chunk, cap > held ? cap - held : 0);
    }
    if (il->max_pages() != 0) {
      const uint64_t held = u.pages.load(std::memory_order_relaxed);
      chunk = std::min(chunk, il->max_pages() > held ? il->max_pages() - held : 0);
    }
    if (chunk == 0) chunk = 1;  // let ChargeTotal name the limit
    if (absl::Status s = il->ChargeTotal(u, chunk); !s.ok()) {
      *why_short = std::string(s.message());
      break;
    }
    const unsigned n = pa_->alloc_pages_bulk(gfp, static_cast<unsigned>(chunk), pages + got, lease.owner(), allowed);
    unsigned kept = 0;
    for (unsigned i = 0; i < n; ++i) {
      Page*& p = pages[got + i];
      if (il->ChargeZone(u, pa_->page_zonenum(p), 1).ok()) {
        pages[got + kept++] = p;
        continue;
      }
      (void)pa_->FreePfn(pa_->page_to_pfn(p), 0, lease.owner());
    }
    for (unsigned i = kept; i < n; ++i) pages[got + i] = nullptr;
    il->UnchargeTotal(u, chunk - kept);
    got += kept;
    if (n < chunk) {
      if (allowed != zonelist) *why_short = il->ExplainZoneRefusal(u, gfp, 1) + "; the zones left to it are full";
      break;
    }
  }
  return got;
}

std::optional<absl::Status> PhysMemService::TryAllocate(const AllocCall& call, v1::Allocation* out) {
  Lease& lease = *call.lease;
  StopMachine::Operation op = leases_->stop_machine().Enter();  // before the lease's lock
  std::lock_guard<std::mutex> l(lease.mu);
  if (lease.dead || leases_->Expired(lease)) {
    return absl::NotFoundError(absl::StrFormat("lease %d expired or was revoked", lease.id));
  }
  if (!call.key.empty()) {
    if (auto it = lease.keys.find(call.key); it != lease.keys.end()) {
      const LeaseBlock& b = lease.blocks.at(it->second);
      if (b.order != call.order) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "key '%s' already names an order-%d block in lease %d, not order %d", call.key, b.order, lease.id, call.order));
      }
      FillAllocation(it->second, b, out);
      out->set_replayed(true);
      return absl::OkStatus();
    }
  }
  const uint64_t n = uint64_t{1} << call.order;
  if (lease.pages_held + n > lease.page_quota) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "lease %d page quota: it holds %d of its %d pages and asked for %d more", lease.id, lease.pages_held,
        lease.page_quota, n));
  }
  std::optional<absl::StatusOr<Page*>> got = AllocCharged(lease, call.gfp, call.order);
  if (!got) return std::nullopt;
  if (!got->ok()) return got->status();
  Page* page = **got;
  const uint64_t pfn = pa_->page_to_pfn(page);
  if (Journal* j = leases_->journal()) {  // before the reply: see server/journal.cc
    const JournalEntry e{pfn, static_cast<uint8_t>(call.order), (page->Load().flags & PG_head) != 0, call.key};
    j->Allocated(lease.id, {&e, 1});
  }
  LeaseBlock& b = lease.blocks[pfn];
  b = LeaseBlock{call.order, pa_->page_zonenum(page), call.key};
  if (!call.key.empty()) lease.keys[call.key] = pfn;
  lease.pages_held += n;
  FillAllocation(pfn, b, out);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PhysMemService::Allocate(grpc::CallbackServerContext* ctx,
                                                   const v1::AllocPagesRequest* req, v1::Allocation* resp,
                                                   Form form) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<gfp_t> gfp = GfpFromRequest(req->gfp(), req->has_gfp_mask(), req->gfp_mask());
  if (!gfp.ok()) return Reply(ctx, gfp.status());
  if (req->order() > pa_->target().max_page_order) {
    return Reply(ctx, absl::InvalidArgumentError(absl::StrFormat("order %d exceeds MAX_PAGE_ORDER %d", req->order(),
                                                                 pa_->target().max_page_order)));
  }
  if (req->key().size() > leases_->limits().max_key_bytes) {
    return Reply(ctx, absl::InvalidArgumentError(absl::StrFormat("key is %d bytes; at most %d allowed",
                                                                 req->key().size(), leases_->limits().max_key_bytes)));
  }
  if (form != Form::kPfn && (*gfp & __GFP_HIGHMEM)) {
    return Reply(ctx, absl::FailedPreconditionError(
                          "__get_free_pages() returns a direct-map address, and a __GFP_HIGHMEM page has none: "
                          "drop __GFP_HIGHMEM or use AllocPages"));
  }
  if (form == Form::kZeroed) {
    if (req->order() != 0) return Reply(ctx, absl::InvalidArgumentError("get_zeroed_page() is order 0 only"));
    *gfp |= __GFP_ZERO;
  }
  auto call = std::make_shared<AllocCall>(AllocCall{*std::move(lease), *gfp, req->order(), req->key()});
  if (std::optional<absl::Status> done = TryAllocate(*call, resp)) return Reply(ctx, *done);

  auto explain = [this, call] {
    std::string why = absl::StrFormat("no free order-%d block for %s: %s", call->order, FormatGfp(call->gfp),
                                      pa_->ExplainAllocFailure(call->gfp));
    // Say so when the identity's limits took zones out of the zonelist.
    IdentityLimits* il = leases_->identity_limits();
    const uint64_t n = uint64_t{1} << call->order;
    if (il != nullptr && call->lease->usage != nullptr) {
      const uint32_t zonelist = il->ZonelistZones(call->gfp);
      if ((il->AllowedZones(*call->lease->usage, n) & zonelist) != zonelist) {
        absl::StrAppend(&why, "; ", il->ExplainZoneRefusal(*call->lease->usage, call->gfp, n));
      }
    }
    return why;
  };
  if (!gfpflags_allow_blocking(call->gfp)) {
    return Reply(ctx, absl::ResourceExhaustedError(explain() + " (the mask cannot wait)"));
  }
  if (call->gfp & __GFP_NORETRY) {
    // One reclaim pass: return expired leases' pages now, try once more, give up.
    leases_->ExpireDue();
    if (std::optional<absl::Status> done = TryAllocate(*call, resp)) return Reply(ctx, *done);
    return Reply(ctx, absl::ResourceExhaustedError(explain() + " (__GFP_NORETRY: gave up after one reclaim pass)"));
  }
  // Wait for frees and expiring leases, within the caller's deadline. Answer a little before the
  // deadline so the caller gets our RESOURCE_EXHAUSTED, not its own DEADLINE_EXCEEDED.
  const auto now_sys = std::chrono::system_clock::now();
  const auto now = std::chrono::steady_clock::now();
  auto left = ctx->deadline() - now_sys;
  if (ctx->deadline() == std::chrono::system_clock::time_point::max()) left = std::chrono::hours(24 * 365);
  left -= std::min<std::chrono::system_clock::duration>(std::chrono::milliseconds(50), left / 10);
  if (!(call->gfp & __GFP_NOFAIL)) {
    left = std::min<std::chrono::system_clock::duration>(left, std::chrono::milliseconds(limits_.max_alloc_wait_ms));
  }
  UnaryCall* reactor = calls_->Begin();
  AllocWaiters::Waiter w;
  // physmem_alloc_waits_total: satisfied when a retry allocates, timed_out / cancelled when the
  // queue gives up. A retry that fails for good (the lease ended) and shutdown are not counted.
  w.attempt = [this, call, resp, reactor, now] {
    std::optional<absl::Status> done = TryAllocate(*call, resp);
    if (!done) return false;
    if (done->ok()) metrics_->AllocWaitDone(WaitOutcome::kSatisfied, std::chrono::steady_clock::now() - now);
    reactor->Reply(ToGrpcStatus(*done));
    return true;
  };
  w.finish = [this, reactor, now](const grpc::Status& s) {
    const auto waited = std::chrono::steady_clock::now() - now;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) metrics_->AllocWaitDone(WaitOutcome::kTimedOut, waited);
    if (s.error_code() == grpc::StatusCode::CANCELLED) metrics_->AllocWaitDone(WaitOutcome::kCancelled, waited);
    reactor->Reply(s);
  };
  w.cancelled = [ctx] { return ctx->IsCancelled(); };
  w.deadline = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
  w.timeout_message = explain() + absl::StrFormat(" (waited %d ms for memory to be freed)",
                                                  std::chrono::duration_cast<std::chrono::milliseconds>(left).count());
  waiters_->Add(std::move(w));
  return reactor;
}

grpc::ServerUnaryReactor* PhysMemService::AllocPages(grpc::CallbackServerContext* ctx,
                                                     const v1::AllocPagesRequest* req, v1::Allocation* resp) {
  return Allocate(ctx, req, resp, Form::kPfn);
}
grpc::ServerUnaryReactor* PhysMemService::GetFreePages(grpc::CallbackServerContext* ctx,
                                                       const v1::AllocPagesRequest* req, v1::Allocation* resp) {
  return Allocate(ctx, req, resp, Form::kAddress);
}
grpc::ServerUnaryReactor* PhysMemService::GetZeroedPage(grpc::CallbackServerContext* ctx,
                                                        const v1::AllocPagesRequest* req, v1::Allocation* resp) {
  return Allocate(ctx, req, resp, Form::kZeroed);
}

grpc::ServerUnaryReactor* PhysMemService::AllocPagesBulk(grpc::CallbackServerContext* ctx,
                                                         const v1::AllocPagesBulkRequest* req,
                                                         v1::AllocPagesBulkResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<gfp_t> gfp = GfpFromRequest(req->gfp(), req->has_gfp_mask(), req->gfp_mask());
  if (!gfp.ok()) return Reply(ctx, gfp.status());
  if (req->count() == 0 || req->count() > limits_.max_bulk_pages) {
    return Reply(ctx, absl::InvalidArgumentError(absl::StrFormat("count %d is outside [1, %d] (--max_bulk_pages)",
                                                                 req->count(), limits_.max_bulk_pages)));
  }
  Lease& l = **lease;
  resp->set_requested(req->count());
  StopMachine::Operation op = leases_->stop_machine().Enter();  // before the lease's lock
  std::lock_guard<std::mutex> guard(l.mu);
  if (l.dead) return Reply(ctx, absl::NotFoundError(absl::StrFormat("lease %d expired or was revoked", l.id)));
  const uint64_t room = l.page_quota - l.pages_held;
  if (room == 0) {
    return Reply(ctx, absl::ResourceExhaustedError(absl::StrFormat(
                          "lease %d page quota: it already holds all %d of its pages", l.id, l.page_quota)));
  }
  const unsigned want = static_cast<unsigned>(std::min<uint64_t>(req->count(), room));
  std::vector<Page*> pages(want, nullptr);
  std::string why_short;
  const unsigned got = AllocBulkCharged(l, *gfp, want, pages.data(), &why_short);
  if (got == 0) {
    if (!why_short.empty()) return Reply(ctx, absl::ResourceExhaustedError(why_short));
    return Reply(ctx, absl::ResourceExhaustedError(absl::StrFormat(
                          "no free pages for %s: %s", FormatGfp(*gfp), pa_->ExplainAllocFailure(*gfp))));
  }
  for (auto* field : {resp->mutable_pfn(), resp->mutable_phys_addr(), resp->mutable_virt_addr(),
                      resp->mutable_arena_offset()}) {
    field->Reserve(static_cast<int>(got));
  }
  resp->mutable_zone()->Reserve(static_cast<int>(got));
  if (Journal* j = leases_->journal()) {
    std::vector<JournalEntry> entries(got);
    for (unsigned i = 0; i < got; ++i) entries[i].pfn = pa_->page_to_pfn(pages[i]);
    j->Allocated(l.id, entries);
  }
  l.blocks.reserve(l.blocks.size() + got);
  const unsigned shift = pa_->target().page_shift;
  for (unsigned i = 0; i < got; ++i) {
    const uint64_t pfn = pa_->page_to_pfn(pages[i]);
    const ZoneType zone = pa_->page_zonenum(pages[i]);
    l.blocks.try_emplace(pfn, LeaseBlock{0, zone, ""});
    resp->add_pfn(pfn);
    resp->add_zone(static_cast<v1::Zone>(zone + 1));  // proto zones start at 1 (0 = unspecified)
    resp->add_phys_addr(pfn << shift);
    resp->add_virt_addr(pa_->page_address(pages[i]));
    resp->add_arena_offset(pa_->arena_offset(pages[i]));
  }
  l.pages_held += got;
  return Reply(ctx, absl::OkStatus());
}

// ---- Free ----

absl::Status PhysMemService::FreeInLease(Lease& lease, const v1::FreePagesRequest& req, uint64_t* pages_freed) {
  StopMachine::Operation op = leases_->stop_machine().Enter();  // before the lease's lock
  std::lock_guard<std::mutex> l(lease.mu);
  return FreeInLeaseLocked(lease, req.pfn(), req.order(), req.key(), pages_freed);
}

absl::Status PhysMemService::RefuseFree(absl::Status s, uint64_t pfn, unsigned order) const {
  FreeRefusal reason = FreeRefusal::kBadRequest;  // NOT_FOUND (lease, key) and anything unforeseen
  switch (s.code()) {
    case absl::StatusCode::kPermissionDenied:
      reason = FreeRefusal::kWrongOwner;
      break;
    case absl::StatusCode::kOutOfRange:
      reason = FreeRefusal::kOutOfRange;
      break;
    case absl::StatusCode::kFailedPrecondition:  // double free, a tail, inside another block
      reason = FreeRefusal::kNotAllocated;
      break;
    case absl::StatusCode::kInvalidArgument:
      // The allocator's INVALID_ARGUMENTs for a pfn: order above MAX_PAGE_ORDER, pfn not aligned to
      // the order, or (the only one left) the block has another order. Told apart from the request.
      if (order > pa_->target().max_page_order) {
        reason = FreeRefusal::kBadRequest;
      } else if (pfn % (uint64_t{1} << order) != 0) {
        reason = FreeRefusal::kMisaligned;
      } else {
        reason = FreeRefusal::kWrongOrder;
      }
      break;
    default:
      break;
  }
  metrics_->FreeRefused(reason);
  return s;
}

absl::Status PhysMemService::FreeInLeaseLocked(Lease& lease, uint64_t pfn, unsigned order, const std::string& key,
                                               uint64_t* pages_freed) {
  if (lease.dead) {
    return RefuseFree(absl::NotFoundError(absl::StrFormat("lease %d expired or was revoked", lease.id)), pfn, order);
  }
  if (!key.empty()) {
    auto it = lease.keys.find(key);
    if (it == lease.keys.end()) {
      return RefuseFree(absl::NotFoundError(absl::StrFormat("no allocation with key '%s' in lease %d", key, lease.id)),
                        pfn, order);
    }
    pfn = it->second;
    const unsigned key_order = lease.blocks.at(pfn).order;
    if (order != 0 && order != key_order) {
      return RefuseFree(absl::InvalidArgumentError(absl::StrFormat("key '%s' names an order-%d block, not order %d",
                                                                   key, key_order, order)),
                        pfn, order);
    }
    order = key_order;
  }
  // The allocator checks everything (range, alignment, allocated, order, owner) and changes
  // nothing when it refuses; the lease's book follows only a successful free.
  // With a journal, the free is recorded once it is certain and before the block can be reused.
  Journal* j = leases_->journal();
  absl::Status s = j == nullptr ? pa_->FreePfn(pfn, order, lease.owner())
                                : pa_->FreePfn(pfn, order, lease.owner(), [j, &lease, pfn] {
                                    j->Freed(lease.id, pfn);
                                    return absl::OkStatus();
                                  });
  if (!s.ok()) return RefuseFree(HideOtherOwner(s, pfn), pfn, order);
  auto it = lease.blocks.find(pfn);
  if (it != lease.blocks.end()) {
    if (lease.usage != nullptr) {
      leases_->identity_limits()->Uncharge(*lease.usage, it->second.zone, uint64_t{1} << order);
    }
    if (!it->second.key.empty()) lease.keys.erase(it->second.key);
    lease.blocks.erase(it);
  }
  lease.pages_held -= uint64_t{1} << order;
  *pages_freed += uint64_t{1} << order;
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PhysMemService::FreePages(grpc::CallbackServerContext* ctx, const v1::FreePagesRequest* req,
                                                    v1::FreePagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, RefuseFreeRequest(lease.status()));
  uint64_t freed = 0;
  absl::Status s = FreeInLease(**lease, *req, &freed);
  if (s.ok()) waiters_->Kick();
  resp->set_pages_freed(freed);
  return Reply(ctx, s);
}

grpc::ServerUnaryReactor* PhysMemService::FreePagesByAddress(grpc::CallbackServerContext* ctx,
                                                             const v1::FreePagesByAddressRequest* req,
                                                             v1::FreePagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, RefuseFreeRequest(lease.status()));
  if (req->addr() == 0) return Reply(ctx, absl::OkStatus());  // free_pages(0, order) is a no-op
  absl::StatusOr<Page*> page = pa_->VirtToPage(req->addr());
  if (!page.ok()) {
    // VirtToPage(): an unaligned address, else one outside the direct map (below PAGE_OFFSET,
    // beyond lowmem, in a hole: OUT_OF_RANGE), else a kmap() window address (a bad request).
    FreeRefusal reason = FreeRefusal::kOutOfRange;
    if (req->addr() % pa_->target().page_size != 0) {
      reason = FreeRefusal::kMisaligned;
    } else if (const Target& t = pa_->target();
               t.has_highmem() && req->addr() >= t.pkmap_base &&
               req->addr() - t.pkmap_base < uint64_t{t.pkmap_slots} * t.page_size) {
      reason = FreeRefusal::kBadRequest;
    }
    metrics_->FreeRefused(reason);
    return Reply(ctx, page.status());
  }
  v1::FreePagesRequest by_pfn;
  by_pfn.set_pfn(pa_->page_to_pfn(*page));
  by_pfn.set_order(req->order());
  uint64_t freed = 0;
  absl::Status s = FreeInLease(**lease, by_pfn, &freed);
  if (s.ok()) waiters_->Kick();
  resp->set_pages_freed(freed);
  return Reply(ctx, s);
}

grpc::ServerUnaryReactor* PhysMemService::FreePagesBulk(grpc::CallbackServerContext* ctx,
                                                        const v1::FreePagesBulkRequest* req,
                                                        v1::FreePagesBulkResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, RefuseFreeRequest(lease.status()));
  const int n = req->pfn_size();
  if (n == 0 || static_cast<uint32_t>(n) > limits_.max_bulk_pages) {
    return Reply(ctx, RefuseFreeRequest(absl::InvalidArgumentError(absl::StrFormat(
                          "%d blocks is outside [1, %d] (--max_bulk_pages)", n, limits_.max_bulk_pages))));
  }
  if (req->order_size() != 0 && req->order_size() != n) {
    return Reply(ctx, RefuseFreeRequest(absl::InvalidArgumentError(absl::StrFormat(
                          "%d orders for %d pfns: give one order per pfn, or none for order 0", req->order_size(), n))));
  }
  uint64_t freed = 0;
  uint32_t blocks = 0;
  {
    Lease& l = **lease;
    StopMachine::Operation op = leases_->stop_machine().Enter();  // before the lease's lock
    std::lock_guard<std::mutex> guard(l.mu);
    for (int i = 0; i < n; ++i) {
      const unsigned order = req->order_size() ? req->order(i) : 0;
      absl::Status s = FreeInLeaseLocked(l, req->pfn(i), order, "", &freed);
      if (s.ok()) {
        ++blocks;
        continue;
      }
      v1::FreeResult* r = resp->add_refused();
      r->set_pfn(req->pfn(i));
      r->set_code(static_cast<int>(s.code()));
      r->set_message(std::string(s.message()));
    }
  }
  resp->set_pages_freed(freed);
  resp->set_blocks_freed(blocks);
  if (freed != 0) waiters_->Kick();
  return Reply(ctx, absl::OkStatus());
}

// ---- Addresses ----

grpc::ServerUnaryReactor* PhysMemService::PageAddress(grpc::CallbackServerContext* ctx,
                                                      const v1::PageAddressRequest* req,
                                                      v1::PageAddressResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<Page*> page = pa_->PfnToPage(req->pfn());
  if (!page.ok()) return Reply(ctx, page.status());
  Page* head = pa_->AllocatedBlockContaining(req->pfn());
  if (head == nullptr) {
    return Reply(ctx, absl::FailedPreconditionError(absl::StrFormat("pfn %#x is not allocated", req->pfn())));
  }
  if (head->Load().owner != (*lease)->owner()) {
    return Reply(ctx, absl::PermissionDeniedError(absl::StrFormat("pfn %#x belongs to another lease", req->pfn())));
  }
  resp->set_virt_addr(pa_->page_address(*page));
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::Kmap(grpc::CallbackServerContext* ctx, const v1::KmapRequest* req,
                                               v1::KmapResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<Page*> page = pa_->PfnToPage(req->pfn());
  if (!page.ok()) return Reply(ctx, page.status());
  // Under the lease's lock, so that a lease being ended (which drops its kmaps, then frees its
  // blocks, under the same lock) cannot gain a mapping that would keep a block from being freed.
  absl::StatusOr<uint64_t> v;
  {
    std::lock_guard<std::mutex> l((*lease)->mu);
    v = (*lease)->dead ? absl::NotFoundError(absl::StrFormat("lease %d expired or was revoked", (*lease)->id))
                       : pa_->kmap(*page, (*lease)->owner());
  }
  if (!v.ok()) return Reply(ctx, HideOtherOwner(v.status(), req->pfn()));
  resp->set_virt_addr(*v);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::Kunmap(grpc::CallbackServerContext* ctx, const v1::KmapRequest* req,
                                                 v1::KunmapResponse*) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<Page*> page = pa_->PfnToPage(req->pfn());
  if (!page.ok()) return Reply(ctx, page.status());
  return Reply(ctx, HideOtherOwner(pa_->kunmap(*page, (*lease)->owner()), req->pfn()));
}

// ---- Page contents ----

absl::StatusOr<std::byte*> PhysMemService::LeaseBytesLocked(Lease& lease, uint64_t pfn, uint64_t offset,
                                                            uint64_t length) const {
  if (lease.dead) return absl::NotFoundError(absl::StrFormat("lease %d expired or was revoked", lease.id));
  if (length == 0 || length > limits_.max_page_io_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat("length %d is outside [1, %d] (--max_page_io_bytes)", length,
                                                      limits_.max_page_io_bytes));
  }
  absl::StatusOr<Page*> page = pa_->PfnToPage(pfn);
  if (!page.ok()) return page.status();
  Page* head = pa_->AllocatedBlockContaining(pfn);
  if (head == nullptr) return absl::FailedPreconditionError(absl::StrFormat("pfn %#x is not allocated", pfn));
  // The lease's book, not the page's owner field, decides: with lease.mu held the book cannot
  // change, so a block found in it stays ours until we let go.
  const uint64_t head_pfn = pa_->page_to_pfn(head);
  auto it = lease.blocks.find(head_pfn);
  if (it == lease.blocks.end() || head->Load().owner != lease.owner()) {
    return absl::PermissionDeniedError(absl::StrFormat("pfn %#x belongs to another lease", pfn));
  }
  const unsigned shift = pa_->target().page_shift;
  const uint64_t block_bytes = uint64_t{1} << (it->second.order + shift);
  const uint64_t start = ((pfn - head_pfn) << shift) + offset;  // from the block's first byte
  if (offset > block_bytes || start > block_bytes || length > block_bytes - start) {
    return absl::OutOfRangeError(absl::StrFormat(
        "bytes [%d, %d) from pfn %#x run past the end of its order-%d block (pfns %#x..%#x, %d bytes)", offset,
        offset + length, pfn, it->second.order, head_pfn, head_pfn + (uint64_t{1} << it->second.order) - 1,
        block_bytes));
  }
  // A block never spans a hole, so its pages are consecutive in the arena too.
  return pa_->page_host_address(head) + start;
}

grpc::ServerUnaryReactor* PhysMemService::ReadPages(grpc::CallbackServerContext* ctx,
                                                    const v1::ReadPagesRequest* req, v1::ReadPagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  Lease& l = **lease;
  std::lock_guard<std::mutex> guard(l.mu);  // frees take it too: the block stays ours while we copy
  absl::StatusOr<std::byte*> src = LeaseBytesLocked(l, req->pfn(), req->offset(), req->length());
  if (!src.ok()) return Reply(ctx, src.status());
  resp->mutable_data()->assign(reinterpret_cast<const char*>(*src), req->length());
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::WritePages(grpc::CallbackServerContext* ctx,
                                                     const v1::WritePagesRequest* req, v1::WritePagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  Lease& l = **lease;
  std::lock_guard<std::mutex> guard(l.mu);
  absl::StatusOr<std::byte*> dst = LeaseBytesLocked(l, req->pfn(), req->offset(), req->data().size());
  if (!dst.ok()) return Reply(ctx, dst.status());
  std::memcpy(*dst, req->data().data(), req->data().size());
  resp->set_bytes_written(req->data().size());
  return Reply(ctx, absl::OkStatus());
}

// ---- Introspection ----

grpc::ServerUnaryReactor* PhysMemService::GetZoneInfo(grpc::CallbackServerContext* ctx,
                                                      const v1::GetZoneInfoRequest*, v1::GetZoneInfoResponse* resp) {
  // One snapshot for both the structured zones and the buddyinfo text, so they agree.
  std::string buddyinfo;
  for (const ZoneStats& z : pa_->Stats()) {
    if (z.populated) buddyinfo += FormatBuddyinfoLine(z) + "\n";
    v1::ZoneInfo* zi = resp->add_zones();
    zi->set_zone(std::string(zone_name(z.type)));
    zi->set_populated(z.populated);
    zi->set_start_pfn(z.start_pfn);
    zi->set_spanned_pages(z.spanned_pages);
    zi->set_present_pages(z.present_pages);
    zi->set_managed_pages(z.managed_pages);
    zi->set_free_pages(z.free_pages);
    zi->set_buddy_free_pages(z.buddy_free_pages);
    zi->set_min(z.watermarks.min);
    zi->set_low(z.watermarks.low);
    zi->set_high(z.watermarks.high);
    for (uint64_t p : z.lowmem_reserve) zi->add_protection(p);
    for (unsigned o = 0; o < z.nr_free.size(); ++o) {
      zi->add_nr_free(z.nr_free[o]);
      zi->add_fragmentation_index(FragmentationIndex(z.nr_free, o));
      zi->add_unusable_index(UnusableFreeIndex(z.nr_free, o));
    }
    zi->set_pcp_batch(z.pcp_batch);
    zi->set_pcp_high(z.pcp_high);
    for (const PcpCpuStats& c : z.pcp) {
      v1::PerCpuPageset* ps = zi->add_pagesets();
      ps->set_cpu(c.cpu);
      ps->set_count(c.count);
      ps->set_hits(c.hits);
      ps->set_frees(c.frees);
      ps->set_refills(c.refills);
      ps->set_drains(c.drains);
    }
  }
  resp->set_buddyinfo(buddyinfo);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::GetTarget(grpc::CallbackServerContext* ctx, const v1::GetTargetRequest*,
                                                    v1::GetTargetResponse* resp) {
  *resp->mutable_profile() = ToProto(pa_->target());
  resp->set_memory_map(pa_->target().MemoryMapString());
  resp->set_arena_backing(std::string(ArenaBackingName(pa_->arena().backing())));
  for (const std::string& r : pa_->arena().refusals()) resp->add_arena_refusals(r);
  resp->set_arena_bytes(pa_->arena().size());
  resp->set_arena_path(pa_->arena().path());
  resp->set_metadata_bytes(pa_->mem_map().metadata_bytes());
  resp->set_total_pages(pa_->mem_map().nr_pages());
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::Validate(grpc::CallbackServerContext* ctx, const v1::ValidateRequest*,
                                                   v1::ValidateResponse* resp) {
  // The check and the census run with every allocation and free held off (stop_machine.h), so
  // they see no block in transit; a stream of them that never pauses gets UNAVAILABLE instead.
  auto wait = std::chrono::duration_cast<std::chrono::steady_clock::duration>(kValidateMaxWait);
  if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
    wait = std::min(wait, std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              ctx->deadline() - std::chrono::system_clock::now()));
    wait = std::max(wait, std::chrono::steady_clock::duration::zero());  // deadline already past: one try
  }
  absl::Status status;
  const bool ran = leases_->stop_machine().Stopped(std::chrono::steady_clock::now() + wait,
                                                   [&] { status = TakeCensus(resp); });
  if (!ran) {
    status = absl::UnavailableError(absl::StrFormat(
        "allocations and frees did not pause for %d ms: Validate needs a moment without one in flight; retry",
        std::chrono::duration_cast<std::chrono::milliseconds>(wait).count()));
  }
  return Reply(ctx, status);
}

absl::Status PhysMemService::TakeCensus(v1::ValidateResponse* resp) {
  absl::StatusOr<PageCensus> c = pa_->Validate();
  if (!c.ok()) {
    LogError("validate_failed", {{"error", c.status().ToString()}});
    return absl::InternalError(c.status().message());
  }
  uint64_t lease_pages = 0;
  std::vector<std::shared_ptr<Lease>> all = leases_->All();
  for (const auto& lease : all) {
    std::lock_guard<std::mutex> l(lease->mu);
    lease_pages += lease->pages_held;
  }
  resp->set_total_pages(c->total_pages);
  resp->set_free_pages(c->buddy_free_pages + c->pcp_pages);
  resp->set_allocated_pages(c->allocated_pages);
  resp->set_leases(all.size());
  resp->set_lease_pages(lease_pages);
  if (IdentityLimits* il = leases_->identity_limits()) resp->set_identity_pages(il->TotalPages());
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PhysMemService::Nop(grpc::CallbackServerContext* ctx, const v1::NopRequest*,
                                              v1::NopResponse*) {
  return Reply(ctx, absl::OkStatus());
}

}  // namespace physmem
