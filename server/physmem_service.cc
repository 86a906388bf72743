#include "server/physmem_service.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/arena_map.h"
#include "picture/arena_map_proto.h"
#include "server/log.h"
#include "server/request_decoding.h"
#include "server/status_util.h"
#include "server/visible_reactor.h"

namespace physmem {
namespace {

// The client's report of the pages idle in its page cache, if it made one.
std::optional<uint64_t> CachedPages(const v1::KeepAliveRequest& req) {
  if (!req.has_client_cached_pages()) return std::nullopt;
  return req.client_cached_pages();
}

// One KeepAlive stream. gRPC constructs it on one of its threads, runs each reaction on whichever
// thread the event lands, and deletes it after every other reaction; at most one of Read/Write is
// outstanding, so reactions never overlap (server/visible_reactor.h makes that ordering visible
// to ThreadSanitizer). It reads raw messages and decodes each itself (server/request_decoding.h):
// one that does not parse ends the stream with INVALID_ARGUMENT saying why, renewing nothing.
class KeepAliveReactor final : public VisibleBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  KeepAliveReactor(Lessor* lessor, absl::StatusOr<std::string> identity) : lessor_(lessor) {
    if (!identity.ok()) {
      End(ToGrpcStatus(identity.status()));
      return;
    }
    identity_ = *std::move(identity);
    Read(&in_);
  }

 private:
  void ReadDone(bool ok) override {
    if (!ok) {  // the client closed its side
      End(grpc::Status::OK);
      return;
    }
    v1::KeepAliveRequest req;
    if (absl::Status s = DecodeRequest("/physmem.v1.PhysMem/KeepAlive", in_, &req); !s.ok()) {
      LogInfo("refused", {{"code", "INVALID_ARGUMENT"}, {"reason", std::string(s.message())}});
      End(ToGrpcStatus(s));
      return;
    }
    absl::StatusOr<int64_t> ttl = lessor_->Renew(req.lease_id(), identity_, CachedPages(req));
    // TTL 0 says "gone" only for a lease that is: any other refusal (not ours; the journal could
    // not record the renewal, UNAVAILABLE; a report no lease could make) ends the stream with its
    // status, and the client retries.
    if (!ttl.ok() && ttl.status().code() != absl::StatusCode::kNotFound) {
      End(ToGrpcStatus(ttl.status()));
      return;
    }
    v1::KeepAliveResponse resp;
    resp.set_lease_id(req.lease_id());
    resp.set_ttl_ms(ttl.ok() ? *ttl : 0);  // etcd's convention: TTL 0 = the lease is gone
    // Empty first: replies up to 23 bytes (all of today's) are swapped in as one inline slice, but
    // a longer one goes through protobuf's writer, which asserts that the buffer is empty.
    out_.Clear();
    bool own_buffer;
    if (!grpc::SerializationTraits<v1::KeepAliveResponse>::Serialize(resp, &out_, &own_buffer).ok()) {
      End(grpc::Status(grpc::StatusCode::INTERNAL, "the KeepAlive response could not be serialized"));
      return;
    }
    Write(&out_);
  }

  void WriteDone(bool ok) override {
    if (!ok) {
      End(grpc::Status::OK);
      return;
    }
    Read(&in_);
  }

  Lessor* lessor_;
  std::string identity_;
  grpc::ByteBuffer in_;   // the message being read
  grpc::ByteBuffer out_;  // the reply being written (lives until WriteDone)
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
  const char* form = "AllocPages";  // the call's name: a keyed retry must repeat it
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
  return lessor_->Lookup(lease_id, *id);
}

void PhysMemService::FillAllocation(const AttachedBlock& block, v1::Allocation* out) const {
  out->set_pfn(block.pfn);
  out->set_order(block.order);
  out->set_zone(std::string(zone_name(block.zone)));
  out->set_phys_addr(block.pfn << pa_->target().page_shift);
  out->set_virt_addr(pa_->page_address(block.page));
  out->set_arena_offset(pa_->arena_offset(block.page));
  out->set_key(block.key);
  if (block.replayed) out->set_replayed(true);
}

// ---- Leases ----

grpc::ServerUnaryReactor* PhysMemService::CreateLease(grpc::CallbackServerContext* ctx,
                                                      const v1::CreateLeaseRequest* req,
                                                      v1::CreateLeaseResponse* resp) {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return Reply(ctx, id.status());
  absl::StatusOr<std::shared_ptr<Lease>> lease = lessor_->Grant(*id, req->ttl_ms(), req->page_quota(), req->name());
  if (!lease.ok()) return Reply(ctx, lease.status());
  resp->set_lease_id((*lease)->id);
  resp->set_granted_ttl_ms((*lease)->granted_ttl_ms);
  resp->set_page_quota((*lease)->page_quota);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PhysMemService::KeepAliveStream(
    grpc::CallbackServerContext* ctx) {
  return new KeepAliveReactor(lessor_, Identity(ctx));
}

grpc::ServerUnaryReactor* PhysMemService::RenewLease(grpc::CallbackServerContext* ctx,
                                                     const v1::KeepAliveRequest* req, v1::KeepAliveResponse* resp) {
  absl::StatusOr<std::string> id = Identity(ctx);
  if (!id.ok()) return Reply(ctx, id.status());
  absl::StatusOr<int64_t> ttl = lessor_->Renew(req->lease_id(), *id, CachedPages(*req));
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
  absl::StatusOr<uint64_t> pages = lessor_->Revoke(req->lease_id(), *id);
  if (!pages.ok()) return Reply(ctx, pages.status());
  resp->set_pages_freed(*pages);
  return Reply(ctx, absl::OkStatus());
}

void PhysMemService::FillLeaseInfo(Lease& lease, v1::LeaseInfo* out) const {
  const LeaseStatus status = lessor_->Describe(lease);
  out->set_lease_id(lease.id);
  out->set_name(lease.name);
  out->set_identity(lease.identity);
  out->set_ttl_ms(status.remaining_ms);
  out->set_granted_ttl_ms(lease.granted_ttl_ms);
  out->set_page_quota(lease.page_quota);
  out->set_pages_held(status.pages_held);
  out->set_client_cached_pages(lease.client_cached_pages());
  for (const auto& [zone_order, n] : status.holdings) {
    v1::LeaseHolding* h = out->add_holdings();
    h->set_zone(std::string(zone_name(zone_order.first)));
    h->set_order(zone_order.second);
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
  for (const auto& lease : lessor_->List(*id)) FillLeaseInfo(*lease, resp->add_leases());
  return Reply(ctx, absl::OkStatus());
}

// ---- Allocation ----

absl::StatusOr<gfp_t> PhysMemService::AllocGfp(const v1::AllocPagesRequest& req, Form form) const {
  absl::StatusOr<gfp_t> gfp = GfpFromRequest(req.gfp(), req.has_gfp_mask(), req.gfp_mask());
  if (!gfp.ok()) return gfp.status();
  if (form != Form::kPfn && (*gfp & __GFP_HIGHMEM)) {
    return absl::FailedPreconditionError(
        "__get_free_pages() returns a direct-map address, and a __GFP_HIGHMEM page has none: "
        "drop __GFP_HIGHMEM or use AllocPages");
  }
  if (form == Form::kZeroed) {
    if (req.order() != 0) return absl::InvalidArgumentError("get_zeroed_page() is order 0 only");
    *gfp |= __GFP_ZERO;
  }
  return gfp;
}

std::optional<absl::Status> PhysMemService::TryAllocate(const AllocCall& call, v1::Allocation* out) {
  AttachedBlock block;
  std::optional<absl::Status> done = lessor_->Attach(*call.lease, call.gfp, call.order, call.key, &block, call.form);
  if (done && done->ok()) FillAllocation(block, out);
  return done;
}

grpc::ServerUnaryReactor* PhysMemService::Allocate(grpc::CallbackServerContext* ctx,
                                                   const v1::AllocPagesRequest* req, v1::Allocation* resp,
                                                   Form form) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<gfp_t> gfp = AllocGfp(*req, form);
  if (!gfp.ok()) return Reply(ctx, gfp.status());
  const char* name = form == Form::kPfn ? "AllocPages" : form == Form::kAddress ? "GetFreePages" : "GetZeroedPage";
  auto call = std::make_shared<AllocCall>(AllocCall{*std::move(lease), *gfp, req->order(), req->key(), name});
  if (std::optional<absl::Status> done = TryAllocate(*call, resp)) return Reply(ctx, *done);
  return NoMemory(ctx, std::move(call), resp);
}

grpc::ServerUnaryReactor* PhysMemService::NoMemory(grpc::CallbackServerContext* ctx, std::shared_ptr<AllocCall> call,
                                                   v1::Allocation* resp) {
  if (!gfpflags_allow_blocking(call->gfp)) {
    return Reply(ctx,
                 RefusalStatus(lessor_->NoMemory(*call->lease, call->gfp, call->order), " (the mask cannot wait)"));
  }
  if (call->gfp & __GFP_NORETRY) {
    // One reclaim pass: return expired leases' pages now, try once more, give up.
    lessor_->ExpireDue();
    if (std::optional<absl::Status> done = TryAllocate(*call, resp)) return Reply(ctx, *done);
    return Reply(ctx, RefusalStatus(lessor_->NoMemory(*call->lease, call->gfp, call->order),
                                    " (__GFP_NORETRY: gave up after one reclaim pass)"));
  }
  return Park(ctx, std::move(call), resp);
}

// Waits for frees and expiring leases, within the caller's deadline. Answers a little before the
// deadline so the caller gets our RESOURCE_EXHAUSTED, not its own DEADLINE_EXCEEDED.
std::chrono::system_clock::duration PhysMemService::WaitBudget(grpc::CallbackServerContext* ctx, gfp_t gfp) const {
  auto left = ctx->deadline() - std::chrono::system_clock::now();
  if (ctx->deadline() == std::chrono::system_clock::time_point::max()) left = std::chrono::hours(24 * 365);
  left -= std::min<std::chrono::system_clock::duration>(std::chrono::milliseconds(50), left / 10);
  if (!(gfp & __GFP_NOFAIL)) {
    left = std::min<std::chrono::system_clock::duration>(left, std::chrono::milliseconds(limits_.max_alloc_wait_ms));
  }
  return left;
}

grpc::ServerUnaryReactor* PhysMemService::Park(grpc::CallbackServerContext* ctx, std::shared_ptr<AllocCall> call,
                                               v1::Allocation* resp) {
  const auto now = std::chrono::steady_clock::now();
  const auto left = WaitBudget(ctx, call->gfp);
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
  // The waiters reply with RESOURCE_EXHAUSTED and this text (server/alloc_waiters.h): the same
  // status RefusalStatus() gives, worded now, when the call parks.
  w.timeout_message = std::string(
      RefusalStatus(lessor_->NoMemory(*call->lease, call->gfp, call->order),
                    absl::StrFormat(" (waited %d ms for memory to be freed)",
                                    std::chrono::duration_cast<std::chrono::milliseconds>(left).count()))
          .message());
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
  resp->set_requested(req->count());
  absl::StatusOr<std::vector<Page*>> pages = lessor_->AttachBulk(**lease, *gfp, req->count());
  if (!pages.ok()) return Reply(ctx, pages.status());
  if (req->runs()) {
    FillRuns(*pages, resp);
  } else {
    FillBulk(*pages, resp);
  }
  return Reply(ctx, absl::OkStatus());
}

void PhysMemService::FillBulk(const std::vector<Page*>& pages, v1::AllocPagesBulkResponse* resp) const {
  const int n = static_cast<int>(pages.size());
  for (auto* field : {resp->mutable_pfn(), resp->mutable_phys_addr(), resp->mutable_virt_addr(),
                      resp->mutable_arena_offset()}) {
    field->Reserve(n);
  }
  resp->mutable_zone()->Reserve(n);
  for (Page* page : pages) {
    const uint64_t pfn = pa_->page_to_pfn(page);
    resp->add_pfn(pfn);
    resp->add_zone(static_cast<v1::Zone>(pa_->page_zonenum(page) + 1));  // proto zones from 1 (0 = unspecified)
    resp->add_phys_addr(pfn << pa_->target().page_shift);
    resp->add_virt_addr(pa_->page_address(page));
    resp->add_arena_offset(pa_->arena_offset(page));
  }
}

void PhysMemService::FillRuns(const std::vector<Page*>& pages, v1::AllocPagesBulkResponse* resp) const {
  const MemMap& mm = pa_->mem_map();
  resp->set_page_shift(pa_->target().page_shift);
  for (size_t i = 0; i < pages.size();) {
    const uint32_t first = mm.index_of(pages[i]);
    const Segment& seg = mm.segment_of_index(first);
    // The run goes the way its second page goes (per-CPU lists hand out refills in ascending
    // order and frees come back last-in first-out), while the pages stay in the segment.
    uint32_t last = first;
    size_t j = i + 1;
    if (j < pages.size()) {
      const uint32_t next = mm.index_of(pages[j]);
      const int dir = next == first + 1 ? 1 : (next + 1 == first ? -1 : 0);
      while (dir != 0 && j < pages.size()) {
        const uint32_t want = dir > 0 ? last + 1 : last - 1;
        if (mm.index_of(pages[j]) != want || !seg.contains_index(want)) break;
        last = want;
        ++j;
      }
    }
    const uint32_t lo = std::min(first, last);
    const Page* head = &mm.page(lo);
    const uint64_t pfn = seg.pfn_of(lo);
    const ZoneType zone = pa_->page_zonenum(head);
    v1::PageRun* run = resp->add_run();
    run->set_pfn(pfn);
    run->set_count(std::max(first, last) - lo + 1);
    run->set_zone(static_cast<v1::Zone>(zone + 1));  // proto zones from 1 (0 = unspecified)
    run->set_phys_addr(pfn << pa_->target().page_shift);
    // A page just allocated has no kmap(): a highmem run has no address, a lowmem one is linear.
    run->set_virt_addr(zone == ZONE_HIGHMEM ? 0 : pa_->page_address(head));
    run->set_arena_offset(pa_->arena_offset(head));
    i = j;
  }
}

// ---- Free ----

grpc::ServerUnaryReactor* PhysMemService::Free(grpc::CallbackServerContext* ctx, uint64_t lease_id, uint64_t pfn,
                                               unsigned order, const std::string& key, v1::FreePagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, lease_id);
  if (!lease.ok()) return Reply(ctx, RefuseFree(lease.status()));
  absl::StatusOr<uint64_t> freed = lessor_->Detach(**lease, pfn, order, key);
  if (!freed.ok()) return Reply(ctx, RefuseFree(freed.status()));
  waiters_->Kick();
  resp->set_pages_freed(*freed);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::FreePages(grpc::CallbackServerContext* ctx, const v1::FreePagesRequest* req,
                                                    v1::FreePagesResponse* resp) {
  return Free(ctx, req->lease_id(), req->pfn(), req->order(), req->key(), resp);
}

grpc::ServerUnaryReactor* PhysMemService::FreePagesByAddress(grpc::CallbackServerContext* ctx,
                                                             const v1::FreePagesByAddressRequest* req,
                                                             v1::FreePagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, RefuseFree(lease.status()));
  if (req->addr() == 0) return Reply(ctx, absl::OkStatus());  // free_pages(0, order) is a no-op
  RefusalOr<Page*> page = pa_->TryVirtToPage(req->addr());
  if (!page.ok()) return Reply(ctx, RefuseFree(RefusalStatus(page.refusal())));
  return Free(ctx, req->lease_id(), pa_->page_to_pfn(*page), req->order(), "", resp);
}

grpc::ServerUnaryReactor* PhysMemService::FreePagesBulk(grpc::CallbackServerContext* ctx,
                                                        const v1::FreePagesBulkRequest* req,
                                                        v1::FreePagesBulkResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, RefuseFree(lease.status()));
  if (req->run_size() != 0) return FreeRuns(ctx, **lease, *req, resp);
  const int n = req->pfn_size();
  if (n == 0 || static_cast<uint32_t>(n) > limits_.max_bulk_pages) {
    return Reply(ctx, RefuseFree(absl::InvalidArgumentError(absl::StrFormat(
                          "%d blocks is outside [1, %d] (--max_bulk_pages)", n, limits_.max_bulk_pages))));
  }
  if (req->order_size() != 0 && req->order_size() != n) {
    return Reply(ctx, RefuseFree(absl::InvalidArgumentError(absl::StrFormat(
                          "%d orders for %d pfns: give one order per pfn, or none for order 0", req->order_size(), n))));
  }
  const uint64_t freed = lessor_->DetachBulk(
      **lease, {req->pfn().data(), size_t(n)}, {req->order().data(), size_t(req->order_size())},
      [&](size_t i, const absl::Status& s) {
        (void)RefuseFree(s);  // counted; listed below
        v1::FreeResult* r = resp->add_refused();
        r->set_pfn(req->pfn(i));
        r->set_code(static_cast<int>(s.code()));
        r->set_message(std::string(s.message()));
      });
  resp->set_pages_freed(freed);
  resp->set_blocks_freed(n - resp->refused_size());
  if (freed != 0) waiters_->Kick();
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::FreeRuns(grpc::CallbackServerContext* ctx, Lease& lease,
                                                   const v1::FreePagesBulkRequest& req,
                                                   v1::FreePagesBulkResponse* resp) {
  if (req.pfn_size() != 0 || req.order_size() != 0) {
    return Reply(ctx, RefuseFree(absl::InvalidArgumentError(absl::StrFormat(
                          "%d runs and %d pfns, %d orders: give runs, or pfns (with orders), not both; nothing was freed",
                          req.run_size(), req.pfn_size(), req.order_size()))));
  }
  std::vector<Lessor::PfnRun> runs(req.run_size());
  uint64_t total = 0;
  for (int i = 0; i < req.run_size(); ++i) {
    runs[i] = {req.run(i).pfn(), req.run(i).count()};
    total += req.run(i).count();  // at most 2^31 runs of < 2^32 pages: no overflow
  }
  if (total > limits_.max_bulk_pages) {
    return Reply(ctx, RefuseFree(absl::InvalidArgumentError(
                          absl::StrFormat("%d runs hold %d pages, more than %d (--max_bulk_pages); nothing was freed",
                                          req.run_size(), total, limits_.max_bulk_pages))));
  }
  uint64_t refused_pages = 0;
  absl::StatusOr<uint64_t> freed = lessor_->DetachRuns(lease, runs, [&](uint64_t pfn, const absl::Status& s) {
    (void)RefuseFree(s);  // the journal refused to record it: counted, listed
    ++refused_pages;
    v1::FreeResult* r = resp->add_refused();
    r->set_pfn(pfn);
    r->set_code(static_cast<int>(s.code()));
    r->set_message(std::string(s.message()));
  });
  // An empty, overflowing or overlapping run (or a page inside a larger block) is a malformed
  // request (bad_request); the other refusals carry the allocator's reasons.
  if (!freed.ok()) return Reply(ctx, RefuseFree(freed.status()));
  resp->set_pages_freed(*freed);
  resp->set_blocks_freed(static_cast<uint32_t>(total - refused_pages));
  if (*freed != 0) waiters_->Kick();
  return Reply(ctx, absl::OkStatus());
}

// ---- Addresses ----

grpc::ServerUnaryReactor* PhysMemService::PageAddress(grpc::CallbackServerContext* ctx,
                                                      const v1::PageAddressRequest* req,
                                                      v1::PageAddressResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<uint64_t> v = lessor_->PageAddress(**lease, req->pfn());
  if (!v.ok()) return Reply(ctx, v.status());
  resp->set_virt_addr(*v);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::Kmap(grpc::CallbackServerContext* ctx, const v1::KmapRequest* req,
                                               v1::KmapResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  absl::StatusOr<uint64_t> v = lessor_->Kmap(**lease, req->pfn());
  if (!v.ok()) return Reply(ctx, v.status());
  resp->set_virt_addr(*v);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::Kunmap(grpc::CallbackServerContext* ctx, const v1::KmapRequest* req,
                                                 v1::KunmapResponse*) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  return Reply(ctx, lessor_->Kunmap(**lease, req->pfn()));
}

// ---- Page contents ----

grpc::ServerUnaryReactor* PhysMemService::ReadPages(grpc::CallbackServerContext* ctx,
                                                    const v1::ReadPagesRequest* req, v1::ReadPagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  return Reply(ctx, lessor_->AccessBytes(**lease, req->pfn(), req->offset(), req->length(),
                                         limits_.max_page_io_bytes, [&](std::byte* src) {
                                           resp->mutable_data()->assign(reinterpret_cast<const char*>(src),
                                                                        req->length());
                                         }));
}

grpc::ServerUnaryReactor* PhysMemService::WritePages(grpc::CallbackServerContext* ctx,
                                                     const v1::WritePagesRequest* req, v1::WritePagesResponse* resp) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = CallerLease(ctx, req->lease_id());
  if (!lease.ok()) return Reply(ctx, lease.status());
  const std::string& data = req->data();
  absl::Status s = lessor_->AccessBytes(**lease, req->pfn(), req->offset(), data.size(), limits_.max_page_io_bytes,
                                        [&](std::byte* dst) { std::memcpy(dst, data.data(), data.size()); });
  if (s.ok()) resp->set_bytes_written(data.size());
  return Reply(ctx, s);
}

// ---- Introspection ----

namespace {

// One zone of GetZoneInfoResponse: /proc/zoneinfo's numbers, the indices per order, the
// migratetype claims and steals summed over source types and orders, the per-CPU pagesets.
void FillZoneInfo(const ZoneStats& z, v1::ZoneInfo* zi) {
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
  for (int mt = 0; mt < MIGRATE_PCPTYPES; ++mt) {
    uint64_t claims = 0, steals = 0;
    for (int from = 0; from < MIGRATE_PCPTYPES; ++from) {
      for (unsigned o = 0; o < kMaxNrOrders; ++o) {
        claims += z.migrate.claims[mt][from][o];
        steals += z.migrate.steals[mt][from][o];
      }
    }
    zi->add_migrate_claims(claims);
    zi->add_migrate_steals(steals);
  }
  zi->set_page_group_by_mobility(!z.group_by_mobility_disabled);
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

}  // namespace

grpc::ServerUnaryReactor* PhysMemService::GetZoneInfo(grpc::CallbackServerContext* ctx,
                                                      const v1::GetZoneInfoRequest*, v1::GetZoneInfoResponse* resp) {
  // One snapshot for the structured zones and the buddyinfo and pagetypeinfo texts, so they agree.
  std::string buddyinfo;
  const std::vector<ZoneStats> stats = pa_->Stats();
  for (const ZoneStats& z : stats) {
    if (z.populated) buddyinfo += FormatBuddyinfoLine(z) + "\n";
    FillZoneInfo(z, resp->add_zones());
  }
  resp->set_buddyinfo(buddyinfo);
  resp->set_pagetypeinfo(FormatPagetypeinfo(stats));
  resp->set_zoneinfo(FormatZoneinfo(stats, pa_->zoneinfo_config()));
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::GetArenaMap(grpc::CallbackServerContext* ctx,
                                                      const v1::GetArenaMapRequest* req, v1::GetArenaMapResponse* resp) {
  if (req->max_entries() > kArenaMapMaxRequestEntries) {
    return Reply(ctx, absl::InvalidArgumentError(absl::StrFormat("max_entries %u is above %u (0 means %u)",
                                                                 req->max_entries(), kArenaMapMaxRequestEntries,
                                                                 kArenaMapMaxEntries)));
  }
  ArenaMapToProto(TakeArenaMap(*pa_, req->max_entries() == 0 ? kArenaMapMaxEntries : req->max_entries()), resp);
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
  // The allocator's check, the books' invariant and the census run with every allocation and free
  // held off (Lessor::Census), so they see no block in transit; a stream of them that never pauses
  // gets UNAVAILABLE instead.
  auto wait = std::chrono::duration_cast<std::chrono::steady_clock::duration>(kValidateMaxWait);
  if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
    wait = std::min(wait, std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              ctx->deadline() - std::chrono::system_clock::now()));
    wait = std::max(wait, std::chrono::steady_clock::duration::zero());  // deadline already past: one try
  }
  absl::StatusOr<BookCensus> c = lessor_->Census(std::chrono::steady_clock::now() + wait);
  if (!c.ok()) return Reply(ctx, c.status());
  resp->set_total_pages(c->pages.total_pages);
  resp->set_free_pages(c->pages.buddy_free_pages + c->pages.pcp_pages);
  resp->set_allocated_pages(c->pages.allocated_pages);
  resp->set_leases(c->leases);
  resp->set_lease_pages(c->lease_pages);
  if (c->has_identity_limits) resp->set_identity_pages(c->identity_pages);
  return Reply(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* PhysMemService::Nop(grpc::CallbackServerContext* ctx, const v1::NopRequest*,
                                              v1::NopResponse*) {
  return Reply(ctx, absl::OkStatus());
}

}  // namespace physmem
