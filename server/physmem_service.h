// The PhysMem gRPC service (proto/physmem/v1/physmem.proto): thin callback handlers that
// validate a request, check the caller's lease, delegate to the allocator and the lease table,
// and reply. Waiting allocations are parked in AllocWaiters, so no handler blocks a thread.
//
// Who uses it: Server registers it. Thread-safety: handlers run concurrently on gRPC's threads;
// all shared state lives in the (thread-safe) allocator, lease table and waiter queue.
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
#include "server/lease_table.h"
#include "server/metrics.h"

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
  PhysMemService(PageAllocator* pa, LeaseTable* leases, AllocWaiters* waiters, const PeerRegistry* peers,
                 ServiceLimits limits, Metrics* metrics, InflightCalls* calls)
      : pa_(pa), leases_(leases), waiters_(waiters), peers_(peers), limits_(limits), metrics_(metrics), calls_(calls) {}

  grpc::ServerUnaryReactor* CreateLease(grpc::CallbackServerContext* ctx, const v1::CreateLeaseRequest* req,
                                        v1::CreateLeaseResponse* resp) override;
  grpc::ServerBidiReactor<v1::KeepAliveRequest, v1::KeepAliveResponse>* KeepAlive(
      grpc::CallbackServerContext* ctx) override;
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
  // One attempt; nullopt means "no memory now" (the caller may wait), else the final status.
  std::optional<absl::Status> TryAllocate(const AllocCall& call, v1::Allocation* out);
  absl::Status FreeInLease(Lease& lease, const v1::FreePagesRequest& req, uint64_t* pages_freed);
  // The same with the stop-machine Operation and lease.mu held (bulk frees take it once for all blocks).
  // Validate's work, run while the machine is stopped (LeaseTable::stop_machine()).
  absl::Status TakeCensus(v1::ValidateResponse* resp);
  absl::Status FreeInLeaseLocked(Lease& lease, uint64_t pfn, unsigned order, const std::string& key,
                                 uint64_t* pages_freed);
  // The host bytes [offset, offset + length) from the start of page `pfn`, which must lie in one
  // block of `lease`; lease.mu held, so the block cannot be freed (and handed to someone else)
  // while the caller copies.
  absl::StatusOr<std::byte*> LeaseBytesLocked(Lease& lease, uint64_t pfn, uint64_t offset, uint64_t length) const;
  // Books an allocation of 2^order pages against the lease's identity and allocates it: the
  // allocator only sees zones where the identity has room. nullopt = no memory (may wait).
  std::optional<absl::StatusOr<Page*>> AllocCharged(Lease& lease, gfp_t gfp, unsigned order);
  // AllocPagesBulk's fill under the identity's limits; `why_short` says why it stopped early.
  unsigned AllocBulkCharged(Lease& lease, gfp_t gfp, unsigned want, Page** pages, std::string* why_short);
  // Counts a refused free under its physmem_free_refused_total reason and returns `s`. `pfn` and
  // `order` are what the allocator was asked to free.
  absl::Status RefuseFree(absl::Status s, uint64_t pfn, unsigned order) const;
  // A free call refused as a whole (no such lease, malformed request): reason bad_request.
  absl::Status RefuseFreeRequest(absl::Status s) const {
    metrics_->FreeRefused(FreeRefusal::kBadRequest);
    return s;
  }
  void FillAllocation(uint64_t pfn, const LeaseBlock& block, v1::Allocation* out) const;
  void FillLeaseInfo(Lease& lease, v1::LeaseInfo* out) const;

  PageAllocator* const pa_;
  LeaseTable* const leases_;
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
