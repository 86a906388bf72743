// The PhysMem gRPC service (proto/physmem/v1/physmem.proto): thin callback handlers that decode a
// request, make one call to the lessor (server/lessor.h: leases and their books) or the allocator,
// and reply. No handler touches a lease's book. Waiting allocations are parked in AllocWaiters, so
// no handler blocks a thread.
//
// Who uses it: Server registers it. Thread-safety: handlers run concurrently on gRPC's threads;
// all shared state lives in the (thread-safe) allocator, lessor and waiter queue.
#ifndef PHYSMEM_SERVER_PHYSMEM_SERVICE_H_
#define PHYSMEM_SERVER_PHYSMEM_SERVICE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "allocator/page_allocator.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/alloc_waiters.h"
#include "server/identity.h"
#include "server/inflight_calls.h"
#include "server/lessor.h"
#include "server/metrics.h"
#include "server/refusal_status.h"

namespace physmem {

struct ServiceLimits {
  uint32_t max_bulk_pages = 65536;   // AllocPagesBulk count and FreePagesBulk blocks per call
  int64_t max_alloc_wait_ms = 10000;  // longest wait for memory (GFP_KERNEL), deadline permitting
  uint64_t max_page_io_bytes = 4 << 20;  // ReadPages length / WritePages data per call
};

class PhysMemService final : public v1::PhysMem::CallbackService {
 public:
  // `metrics` counts refused frees and allocation waits; it must outlive the service.
  // `calls` counts the unary calls in flight (each handler answers through one of its UnaryCalls).
  PhysMemService(PageAllocator* pa, Lessor* lessor, AllocWaiters* waiters, const PeerRegistry* peers,
                 ServiceLimits limits, Metrics* metrics, InflightCalls* calls)
      : pa_(pa), lessor_(lessor), waiters_(waiters), peers_(peers), limits_(limits), metrics_(metrics), calls_(calls) {}

  grpc::ServerUnaryReactor* CreateLease(grpc::CallbackServerContext* ctx, const v1::CreateLeaseRequest* req,
                                        v1::CreateLeaseResponse* resp) override;
  // KeepAlive's stream, on raw messages: server/request_decoding.h registers it in place of the
  // generated typed method, so that a message that does not parse is refused, not taken for the
  // client's half-close.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KeepAliveStream(grpc::CallbackServerContext* ctx);
  grpc::ServerUnaryReactor* RenewLease(grpc::CallbackServerContext* ctx, const v1::KeepAliveRequest* req,
                                       v1::KeepAliveResponse* resp) override;
  grpc::ServerUnaryReactor* RevokeLease(grpc::CallbackServerContext* ctx, const v1::RevokeLeaseRequest* req,
                                        v1::RevokeLeaseResponse* resp) override;
  grpc::ServerUnaryReactor* GetLease(grpc::CallbackServerContext* ctx, const v1::GetLeaseRequest* req,
                                     v1::LeaseInfo* resp) override;
  grpc::ServerUnaryReactor* ListLeases(grpc::CallbackServerContext* ctx, const v1::ListLeasesRequest* req,
                                       v1::ListLeasesResponse* resp) override;
  grpc::ServerUnaryReactor* AllocPages(grpc::CallbackServerContext* ctx, const v1::AllocPagesRequest* req,
                                       v1::Allocation* resp) override;
  grpc::ServerUnaryReactor* GetFreePages(grpc::CallbackServerContext* ctx, const v1::AllocPagesRequest* req,
                                         v1::Allocation* resp) override;
  grpc::ServerUnaryReactor* GetZeroedPage(grpc::CallbackServerContext* ctx, const v1::AllocPagesRequest* req,
                                          v1::Allocation* resp) override;
  grpc::ServerUnaryReactor* AllocPagesBulk(grpc::CallbackServerContext* ctx, const v1::AllocPagesBulkRequest* req,
                                           v1::AllocPagesBulkResponse* resp) override;
  grpc::ServerUnaryReactor* FreePages(grpc::CallbackServerContext* ctx, const v1::FreePagesRequest* req,
                                      v1::FreePagesResponse* resp) override;
  grpc::ServerUnaryReactor* FreePagesByAddress(grpc::CallbackServerContext* ctx,
                                               const v1::FreePagesByAddressRequest* req,
                                               v1::FreePagesResponse* resp) override;
  grpc::ServerUnaryReactor* FreePagesBulk(grpc::CallbackServerContext* ctx, const v1::FreePagesBulkRequest* req,
                                          v1::FreePagesBulkResponse* resp) override;
  grpc::ServerUnaryReactor* PageAddress(grpc::CallbackServerContext* ctx, const v1::PageAddressRequest* req,
                                        v1::PageAddressResponse* resp) override;
  grpc::ServerUnaryReactor* Kmap(grpc::CallbackServerContext* ctx, const v1::KmapRequest* req,
                                 v1::KmapResponse* resp) override;
  grpc::ServerUnaryReactor* Kunmap(grpc::CallbackServerContext* ctx, const v1::KmapRequest* req,
                                   v1::KunmapResponse* resp) override;
  grpc::ServerUnaryReactor* ReadPages(grpc::CallbackServerContext* ctx, const v1::ReadPagesRequest* req,
                                      v1::ReadPagesResponse* resp) override;
  grpc::ServerUnaryReactor* WritePages(grpc::CallbackServerContext* ctx, const v1::WritePagesRequest* req,
                                       v1::WritePagesResponse* resp) override;
  grpc::ServerUnaryReactor* GetZoneInfo(grpc::CallbackServerContext* ctx, const v1::GetZoneInfoRequest* req,
                                        v1::GetZoneInfoResponse* resp) override;
  grpc::ServerUnaryReactor* GetTarget(grpc::CallbackServerContext* ctx, const v1::GetTargetRequest* req,
                                      v1::GetTargetResponse* resp) override;
  grpc::ServerUnaryReactor* GetArenaMap(grpc::CallbackServerContext* ctx, const v1::GetArenaMapRequest* req,
                                        v1::GetArenaMapResponse* resp) override;
  grpc::ServerUnaryReactor* Validate(grpc::CallbackServerContext* ctx, const v1::ValidateRequest* req,
                                     v1::ValidateResponse* resp) override;
  grpc::ServerUnaryReactor* Nop(grpc::CallbackServerContext* ctx, const v1::NopRequest* req,
                                v1::NopResponse* resp) override;

 private:
  // How long Validate waits for in-flight allocations and frees to drain (or the caller's
  // deadline, if sooner).
  static constexpr std::chrono::seconds kValidateMaxWait{5};

  enum class Form { kPfn, kAddress, kZeroed };
  struct AllocCall;

  absl::StatusOr<std::string> Identity(grpc::CallbackServerContext* ctx) const {
    return CallerIdentity(*ctx, *peers_);
  }
  absl::StatusOr<std::shared_ptr<Lease>> CallerLease(grpc::CallbackServerContext* ctx, uint64_t lease_id) const;
  grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* ctx, const absl::Status& s);
  grpc::ServerUnaryReactor* Allocate(grpc::CallbackServerContext* ctx, const v1::AllocPagesRequest* req,
                                     v1::Allocation* resp, Form form);
  // The request's gfp mask, checked against the form (__get_free_pages() has no highmem page,
  // get_zeroed_page() is order 0 and adds __GFP_ZERO).
  absl::StatusOr<gfp_t> AllocGfp(const v1::AllocPagesRequest& req, Form form) const;
  // One attempt; nullopt means "no memory now" (the caller may wait), else the final status.
  std::optional<absl::Status> TryAllocate(const AllocCall& call, v1::Allocation* out);
  // An allocation that found no memory: fails it now if its mask cannot wait, reclaims once for
  // __GFP_NORETRY, else parks it in the waiters until memory is freed or its time is up.
  grpc::ServerUnaryReactor* NoMemory(grpc::CallbackServerContext* ctx, std::shared_ptr<AllocCall> call,
                                     v1::Allocation* resp);
  grpc::ServerUnaryReactor* Park(grpc::CallbackServerContext* ctx, std::shared_ptr<AllocCall> call,
                                 v1::Allocation* resp);
  // How long a parked allocation may wait: the caller's deadline less a margin, and at most
  // --max_alloc_wait_ms unless __GFP_NOFAIL.
  std::chrono::system_clock::duration WaitBudget(grpc::CallbackServerContext* ctx, gfp_t gfp) const;
  void FillBulk(const std::vector<Page*>& pages, v1::AllocPagesBulkResponse* resp) const;
  // AllocPagesBulkRequest.runs: the pages as runs of consecutive pfns (ascending or descending in
  // `pages`, each run inside one mem_map segment, hence one zone and contiguous arena offsets).
  void FillRuns(const std::vector<Page*>& pages, v1::AllocPagesBulkResponse* resp) const;
  // FreePagesBulkRequest.run: all or nothing (Lessor::DetachRuns), then replies.
  grpc::ServerUnaryReactor* FreeRuns(grpc::CallbackServerContext* ctx, Lease& lease, const v1::FreePagesBulkRequest& req,
                                     v1::FreePagesBulkResponse* resp);
  // Frees one block of the caller's lease and replies (FreePages, FreePagesByAddress).
  grpc::ServerUnaryReactor* Free(grpc::CallbackServerContext* ctx, uint64_t lease_id, uint64_t pfn, unsigned order,
                                 const std::string& key, v1::FreePagesResponse* resp);
  // Counts a refused free under physmem_free_refused_total and returns `s`: by the allocator's
  // reason that RefusalStatus() put into `s` (server/refusal_status.h), or bad_request for the
  // server's own refusals (no such lease, unknown key, malformed request).
  absl::Status RefuseFree(absl::Status s) const {
    metrics_->FreeRefused(RefusalReasonOf(s));
    return s;
  }
  void FillAllocation(const AttachedBlock& block, v1::Allocation* out) const;
  void FillLeaseInfo(Lease& lease, v1::LeaseInfo* out) const;

  PageAllocator* const pa_;
  Lessor* const lessor_;
  AllocWaiters* const waiters_;
  const PeerRegistry* const peers_;
  const ServiceLimits limits_;
  Metrics* const metrics_;
  InflightCalls* const calls_;
};

// gfp from a request: exactly one of `gfp` (string) and `gfp_mask` (number); validated.
absl::StatusOr<gfp_t> GfpFromRequest(const std::string& gfp, bool has_mask, uint32_t mask);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_PHYSMEM_SERVICE_H_
