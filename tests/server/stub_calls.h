// Raw PhysMem stub calls for the integration tests: a stub connected to a daemon's target, a
// client context with a deadline, and the one-line calls many tests make (create a lease,
// allocate pages or N pages in bulk into a lease, fill the machine, free in bulk, revoke,
// Validate's census, a health check without the health proto).
// They talk straight to the generated stub, with no client library in between, so the tests see
// the daemon's own status codes.
//
// No call here asserts anything: each returns the grpc::Status (or a value that says failure)
// and the test decides what it expects. Who uses it: tests under tests/server (daemon_stub.h's
// fixture, fault_helpers.h and the tests themselves). Thread-safety: every function is safe to
// call from any thread; a Deadline belongs to the one call it is passed to.
#ifndef PHYSMEM_TESTS_SERVER_STUB_CALLS_H_
#define PHYSMEM_TESTS_SERVER_STUB_CALLS_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/time_scale.h"

namespace physmem::testing {

// A stub on `target` ("unix://..." or "host:port"), after waiting up to 5 s (scaled) for its channel to
// connect, so that the first call of a test does not race the daemon's accept.
inline std::unique_ptr<v1::PhysMem::Stub> ConnectStub(const std::string& target) {
  auto ch = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  ch->WaitForConnected(std::chrono::system_clock::now() + ScaledTimeout(std::chrono::seconds(5)));
  return v1::PhysMem::NewStub(ch);
}

// A channel with a connection of its own (gRPC would otherwise share one between channels to the
// same target), and a stub on it.
inline std::shared_ptr<grpc::Channel> OwnChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  ch->WaitForConnected(std::chrono::system_clock::now() + ScaledTimeout(std::chrono::seconds(5)));
  return ch;
}
inline std::unique_ptr<v1::PhysMem::Stub> OwnStub(const std::string& target) {
  return v1::PhysMem::NewStub(OwnChannel(target));
}

// A client context whose deadline is `ms` (scaled to the build, tests/time_scale.h) from now;
// `&ctx` is the grpc::ClientContext* a stub call takes. A hung daemon fails the call with
// DEADLINE_EXCEEDED instead of hanging the test. A test whose point is the deadline itself (an
// allocation that waits until just before it) sets its own, on an unscaled context.
struct Deadline {
  explicit Deadline(int64_t ms = 5000) {
    c.set_deadline(std::chrono::system_clock::now() + ScaledTimeout(std::chrono::milliseconds(ms)));
  }
  grpc::ClientContext c;
  grpc::ClientContext* operator&() { return &c; }
};

// A new lease of `ttl_ms`; its id, or 0 on failure (the status in *status if given).
inline uint64_t CreateLease(v1::PhysMem::Stub* stub, int64_t ttl_ms, grpc::Status* status = nullptr) {
  v1::CreateLeaseRequest req;
  req.set_ttl_ms(ttl_ms);
  v1::CreateLeaseResponse resp;
  Deadline ctx;
  grpc::Status s = stub->CreateLease(&ctx, req, &resp);
  if (status != nullptr) *status = s;
  return s.ok() ? resp.lease_id() : 0;
}

// One block of 2^order pages into `lease`; `out` may be null when the test needs only the status.
inline grpc::Status AllocPages(v1::PhysMem::Stub* stub, uint64_t lease, const std::string& gfp, uint32_t order,
                               v1::Allocation* out, int64_t deadline_ms = 5000) {
  v1::AllocPagesRequest req;
  req.set_lease_id(lease);
  req.set_gfp(gfp);
  req.set_order(order);
  v1::Allocation ignored;
  Deadline ctx(deadline_ms);
  return stub->AllocPages(&ctx, req, out != nullptr ? out : &ignored);
}

// Up to `count` single pages into `lease` in one call (fewer when memory or a limit runs out).
inline grpc::Status AllocBulk(v1::PhysMem::Stub* stub, uint64_t lease, const std::string& gfp, uint32_t count,
                              v1::AllocPagesBulkResponse* out, int64_t deadline_ms = 10000) {
  v1::AllocPagesBulkRequest req;
  req.set_lease_id(lease);
  req.set_gfp(gfp);
  req.set_count(count);
  Deadline ctx(deadline_ms);
  return stub->AllocPagesBulk(&ctx, req, out);
}

// Frees the order-`order` block at `pfn` from `lease`.
inline grpc::Status FreePages(v1::PhysMem::Stub* stub, uint64_t lease, uint64_t pfn, uint32_t order) {
  v1::FreePagesRequest req;
  req.set_lease_id(lease);
  req.set_pfn(pfn);
  req.set_order(order);
  v1::FreePagesResponse resp;
  Deadline ctx;
  return stub->FreePages(&ctx, req, &resp);
}

inline grpc::Status FreeBulk(v1::PhysMem::Stub* stub, uint64_t lease, const std::vector<uint64_t>& pfns) {
  v1::FreePagesBulkRequest req;
  req.set_lease_id(lease);
  for (uint64_t p : pfns) req.add_pfn(p);
  v1::FreePagesBulkResponse resp;
  Deadline ctx(10000);
  return stub->FreePagesBulk(&ctx, req, &resp);
}

// Ends `lease` and frees its pages; `out` (pages_freed) may be null.
inline grpc::Status RevokeLease(v1::PhysMem::Stub* stub, uint64_t lease, v1::RevokeLeaseResponse* out = nullptr,
                                int64_t deadline_ms = 5000) {
  v1::RevokeLeaseRequest req;
  req.set_lease_id(lease);
  v1::RevokeLeaseResponse ignored;
  Deadline ctx(deadline_ms);
  return stub->RevokeLease(&ctx, req, out != nullptr ? out : &ignored);
}

// Takes every page GFP_KERNEL|__GFP_MEMALLOC and GFP_DMA|__GFP_MEMALLOC can get into `lease`
// (bulk calls of 8192 until one fails); their pfns.
inline std::vector<uint64_t> FillMachine(v1::PhysMem::Stub* stub, uint64_t lease) {
  std::vector<uint64_t> got;
  for (const char* gfp : {"GFP_KERNEL|__GFP_MEMALLOC", "GFP_DMA|__GFP_MEMALLOC"}) {
    for (;;) {
      v1::AllocPagesBulkResponse resp;
      if (!AllocBulk(stub, lease, gfp, 8192, &resp).ok()) break;
      got.insert(got.end(), resp.pfn().begin(), resp.pfn().end());
    }
  }
  return got;
}

// Validate's census (the daemon checks its allocator's invariants first; slow on big machines,
// hence the long deadline).
inline v1::ValidateResponse Validate(v1::PhysMem::Stub* stub, grpc::Status* status) {
  v1::ValidateResponse resp;
  Deadline ctx(20000);
  *status = stub->Validate(&ctx, v1::ValidateRequest(), &resp);
  return resp;
}

// The number of leases this caller's identity sees, or SIZE_MAX if the call failed.
inline size_t ListLeases(v1::PhysMem::Stub* stub) {
  v1::ListLeasesResponse resp;
  Deadline ctx;
  if (!stub->ListLeases(&ctx, v1::ListLeasesRequest(), &resp).ok()) return SIZE_MAX;
  return static_cast<size_t>(resp.leases_size());
}

// grpc.health.v1.Health/Check for the whole server, sent through a generic stub the way a client
// without the health proto sends it: HealthCheckRequest{service: ""} serializes to zero bytes.
// The reply's serialized bytes go to *reply (SERVING is "\x08\x01").
inline grpc::Status HealthCheck(const std::string& target, std::string* reply) {
  grpc::GenericStub generic(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  Deadline ctx;
  grpc::Slice empty("", 0);
  grpc::ByteBuffer req(&empty, 1), resp;
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
    std::lock_guard<std::mutex> l(mu);
    status = s;
    done = true;
    cv.notify_one();
  });
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return done; });
  }
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  if (grpc::Status dumped = resp.Dump(&slices); !dumped.ok()) return dumped;
  reply->clear();
  for (const grpc::Slice& s : slices) reply->append(reinterpret_cast<const char*>(s.begin()), s.size());
  return status;
}

inline bool Nop(v1::PhysMem::Stub* stub, int64_t deadline_ms = 5000) {
  v1::NopResponse resp;
  Deadline ctx(deadline_ms);
  return stub->Nop(&ctx, v1::NopRequest(), &resp).ok();
}

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_SERVER_STUB_CALLS_H_
