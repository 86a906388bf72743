// libFuzzer target: the PhysMem service's request handling. Each input is a FuzzProgram
// (tests/fuzz/service_fuzz.proto, binary form): up to kMaxCalls requests run in order against
// the real server running in this process — Server::BuildAndStart with the real allocator, lease
// table and waiter queue, on a small machine — over its Unix socket (a temporary directory), so
// calls are identified by SO_PEERCRED as in production. (gRPC's in-process channel would be
// faster, but its calls have the peer "unknown", which the server rightly refuses to identify.)
//
// After every call:
//   - no INTERNAL / UNKNOWN / UNAUTHENTICATED answer (the handlers map every error precisely);
//   - the Validate RPC succeeds: free + allocated = total and the leases' books hold exactly the
//     allocated pages;
//   - every allocated page lies in exactly one block of exactly one lease, and the allocator
//     records that lease as the block's owner, with the lease's order (read directly from the
//     lessor and the allocator);
//   - a refused call changed nothing: allocated pages and lease count are as before.
// At the end every lease the program created is revoked and the machine must be all free.
//
// Two servers live for the whole process (an x86_64 and an i386 machine, chosen per input);
// each input cleans up after itself, so inputs are independent except for which free blocks the
// allocator picks. Leases get a TTL of at least 60 s so none expires in the middle of an input
// (expiry is covered by the server tests), and waiting allocations wait at most 5 ms.
#include <fuzzer/FuzzedDataProvider.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <sanitizer/common_interface_defs.h>

#include <filesystem>

#include "absl/container/flat_hash_set.h"
#include "server/server.h"
#include "service_fuzz.pb.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

constexpr int kMaxCalls = 24;

// The server logs every refusal to stderr; scripts/fuzz.sh hides that with -close_fd_mask=2, so
// a failure is also reported through the sanitizer's report fd, which libFuzzer keeps open.
[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "service_fuzz: %s\n", what.c_str());
  __sanitizer_report_error_summary(("service_fuzz: " + what).c_str());
  std::abort();
}

struct Instance {
  std::unique_ptr<Server> server;
  std::unique_ptr<v1::PhysMem::Stub> stub;
};

Instance Boot(Target target) {
  static char dir[] = "/tmp/service_fuzz.XXXXXX";  // one server at a time: Get() boots them in turn
  if (mkdtemp(dir) == nullptr) Fail("mkdtemp failed");
  const std::string socket_dir = dir;
  std::memcpy(dir + sizeof(dir) - 7, "XXXXXX", 6);
  static std::vector<std::string>* dirs = [] {
    auto* v = new std::vector<std::string>;
    std::atexit([] {
      std::error_code ec;
      for (const std::string& d : *dirs) std::filesystem::remove_all(d, ec);
    });
    return v;
  }();
  dirs->push_back(socket_dir);
  ServerOptions o;
  o.allocator = testing::SmallOptions(std::move(target));
  o.allocator.nr_cpus = 2;
  o.unix_socket = socket_dir + "/physmemd.sock";
  o.lease_limits.min_ttl_ms = 60000;
  o.lease_limits.max_leases_per_identity = 64;
  o.service_limits.max_bulk_pages = 256;
  o.service_limits.max_alloc_wait_ms = 5;
  o.shutdown_grace_ms = 0;
  absl::StatusOr<std::unique_ptr<Server>> s = Server::BuildAndStart(std::move(o));
  if (!s.ok()) Fail("cannot start the server: " + s.status().ToString());
  // Leases end only by revocation or lazily when found expired, never concurrently with a check.
  (*s)->lessor().StopReaper();
  Instance i;
  i.stub = v1::PhysMem::NewStub(grpc::CreateChannel("unix://" + socket_dir + "/physmemd.sock",
                                                    grpc::InsecureChannelCredentials()));
  i.server = *std::move(s);
  return i;
}

Instance& Get(bool i386) {
  static Instance* x86 = new Instance(Boot(testing::SmallX86()));
  static Instance* i32 = new Instance(Boot(testing::SmallI386()));
  return i386 ? *i32 : *x86;
}

struct Held {
  uint64_t pfn;
  uint64_t virt;
  uint32_t order;
};

class Runner {
 public:
  explicit Runner(Instance& inst) : inst_(inst) {}

  void Run(const fuzz::FuzzProgram& prog) {
    Census before = Check("start");
    if (before.allocated != 0 || before.leases != 0) Fail("previous input left state behind");
    int n = 0;
    for (const fuzz::FuzzCall& call : prog.calls()) {
      if (n++ == kMaxCalls) break;
      const grpc::Status st = Do(call);
      const std::string what = "call " + std::to_string(n) + " (" + call.ShortDebugString().substr(0, 200) + ")";
      if (st.error_code() == grpc::StatusCode::INTERNAL || st.error_code() == grpc::StatusCode::UNKNOWN ||
          st.error_code() == grpc::StatusCode::UNAUTHENTICATED || st.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
        Fail(what + ": " + std::to_string(st.error_code()) + " " + st.error_message());
      }
      if (!st.ok() && st.error_message().empty()) Fail(what + ": refusal without a message");
      // The client's own deadline passing says nothing of the server's outcome (it may still be
      // finishing the call): let it finish, then check the books, but not that nothing changed.
      const bool outcome_unknown = st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      if (outcome_unknown) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        ++unknown_outcomes_;
      }
      const Census after = Check(what);
      if (!st.ok() && !outcome_unknown && (after.allocated != before.allocated || after.leases != before.leases)) {
        Fail(what + ": refused with '" + st.error_message() + "' but changed the census");
      }
      before = after;
    }
    // A CreateLease whose outcome is unknown may have made a lease this program never heard of.
    if (unknown_outcomes_ > 0) {
      for (const std::shared_ptr<Lease>& lease : inst_.server->lessor().All()) leases_.push_back(lease->id);
    }
    for (uint64_t id : leases_) {
      grpc::ClientContext ctx;
      v1::RevokeLeaseRequest req;
      v1::RevokeLeaseResponse resp;
      req.set_lease_id(id);
      // NOT_FOUND: the program revoked it itself.
      const grpc::Status st = inst_.stub->RevokeLease(&ctx, req, &resp);
      if (!st.ok() && st.error_code() != grpc::StatusCode::NOT_FOUND) Fail("final revoke: " + st.error_message());
    }
    const Census end = Check("end");
    if (end.allocated != 0 || end.leases != 0 || inst_.server->lessor().size() != 0) {
      Fail("pages or leases left after revoking every lease");
    }
  }

 private:
  struct Census {
    uint64_t allocated;
    uint64_t leases;
  };

  uint64_t LeaseId(const fuzz::FuzzCall& c, uint64_t given) const {
    if (c.lease() == 0 || leases_.empty()) return given;
    return leases_[(c.lease() - 1) % leases_.size()];
  }
  const Held* Block(const fuzz::FuzzCall& c) const {
    if (c.block() == 0 || held_.empty()) return nullptr;
    return &held_[(c.block() - 1) % held_.size()];
  }
  void Remember(const v1::Allocation& a) { held_.push_back({a.pfn(), a.virt_addr(), a.order()}); }

  grpc::Status Do(const fuzz::FuzzCall& c) {
    grpc::ClientContext ctx;
    // At least 100 ms: waiting allocations end within 5 ms (max_alloc_wait_ms), so only a
    // badly overloaded machine makes the client's deadline pass first.
    const uint32_t ms = c.deadline_ms() == 0 ? 200 : 100 + c.deadline_ms() % 1000;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
    v1::PhysMem::Stub& s = *inst_.stub;
    const Held* b = Block(c);
    switch (c.call_case()) {
      case fuzz::FuzzCall::kCreateLease: {
        v1::CreateLeaseResponse resp;
        grpc::Status st = s.CreateLease(&ctx, c.create_lease(), &resp);
        if (st.ok()) leases_.push_back(resp.lease_id());
        return st;
      }
      case fuzz::FuzzCall::kRenewLease: {
        v1::KeepAliveRequest req = c.renew_lease();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        v1::KeepAliveResponse resp;
        return s.RenewLease(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kRevokeLease: {
        v1::RevokeLeaseRequest req = c.revoke_lease();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        v1::RevokeLeaseResponse resp;
        return s.RevokeLease(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kGetLease: {
        v1::GetLeaseRequest req = c.get_lease();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        v1::LeaseInfo resp;
        return s.GetLease(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kListLeases: {
        v1::ListLeasesResponse resp;
        return s.ListLeases(&ctx, c.list_leases(), &resp);
      }
      case fuzz::FuzzCall::kAllocPages:
      case fuzz::FuzzCall::kGetFreePages:
      case fuzz::FuzzCall::kGetZeroedPage: {
        v1::AllocPagesRequest req = c.call_case() == fuzz::FuzzCall::kAllocPages     ? c.alloc_pages()
                                    : c.call_case() == fuzz::FuzzCall::kGetFreePages ? c.get_free_pages()
                                                                                      : c.get_zeroed_page();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        v1::Allocation resp;
        grpc::Status st = c.call_case() == fuzz::FuzzCall::kAllocPages     ? s.AllocPages(&ctx, req, &resp)
                          : c.call_case() == fuzz::FuzzCall::kGetFreePages ? s.GetFreePages(&ctx, req, &resp)
                                                                            : s.GetZeroedPage(&ctx, req, &resp);
        if (st.ok()) Remember(resp);
        return st;
      }
      case fuzz::FuzzCall::kAllocPagesBulk: {
        v1::AllocPagesBulkRequest req = c.alloc_pages_bulk();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        v1::AllocPagesBulkResponse resp;
        grpc::Status st = s.AllocPagesBulk(&ctx, req, &resp);
        if (st.ok()) {
          if (resp.virt_addr_size() != resp.pfn_size()) Fail("bulk reply: pfn and virt_addr differ in length");
          for (int i = 0; i < resp.pfn_size(); ++i) held_.push_back({resp.pfn(i), resp.virt_addr(i), 0});
        }
        return st;
      }
      case fuzz::FuzzCall::kFreePages: {
        v1::FreePagesRequest req = c.free_pages();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        if (b) req.set_pfn(b->pfn);
        v1::FreePagesResponse resp;
        return s.FreePages(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kFreePagesByAddress: {
        v1::FreePagesByAddressRequest req = c.free_pages_by_address();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        if (b) req.set_addr(b->virt);
        v1::FreePagesResponse resp;
        return s.FreePagesByAddress(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kFreePagesBulk: {
        v1::FreePagesBulkRequest req = c.free_pages_bulk();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        if (b) {
          req.add_pfn(b->pfn);
          if (req.order_size() > 0) req.add_order(b->order);
        }
        v1::FreePagesBulkResponse resp;
        return s.FreePagesBulk(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kPageAddress: {
        v1::PageAddressRequest req = c.page_address();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        if (b) req.set_pfn(b->pfn);
        v1::PageAddressResponse resp;
        return s.PageAddress(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kKmap:
      case fuzz::FuzzCall::kKunmap: {
        v1::KmapRequest req = c.call_case() == fuzz::FuzzCall::kKmap ? c.kmap() : c.kunmap();
        req.set_lease_id(LeaseId(c, req.lease_id()));
        if (b) req.set_pfn(b->pfn);
        if (c.call_case() == fuzz::FuzzCall::kKmap) {
          v1::KmapResponse resp;
          return s.Kmap(&ctx, req, &resp);
        }
        v1::KunmapResponse resp;
        return s.Kunmap(&ctx, req, &resp);
      }
      case fuzz::FuzzCall::kGetZoneInfo: {
        v1::GetZoneInfoResponse resp;
        return s.GetZoneInfo(&ctx, c.get_zone_info(), &resp);
      }
      case fuzz::FuzzCall::kGetTarget: {
        v1::GetTargetResponse resp;
        return s.GetTarget(&ctx, c.get_target(), &resp);
      }
      case fuzz::FuzzCall::kNop:
      case fuzz::FuzzCall::CALL_NOT_SET: {
        v1::NopResponse resp;
        return s.Nop(&ctx, v1::NopRequest(), &resp);
      }
    }
    return grpc::Status::OK;
  }

  // The Validate RPC (the allocator's census and the lessor's books), then the books' invariant
  // directly.
  Census Check(const std::string& when) {
    grpc::ClientContext ctx;
    v1::ValidateResponse v;
    if (grpc::Status st = inst_.stub->Validate(&ctx, v1::ValidateRequest(), &v); !st.ok()) {
      Fail(when + ": Validate RPC: " + st.error_message());
    }
    if (v.free_pages() + v.allocated_pages() != v.total_pages()) Fail(when + ": free + allocated != total");
    if (v.lease_pages() != v.allocated_pages()) {
      Fail(when + ": leases hold " + std::to_string(v.lease_pages()) + " pages, allocator " +
           std::to_string(v.allocated_pages()));
    }
    // Validate ran the lessor's book invariant too (Lessor::CheckInvariants): every block of a
    // lease allocated to it with the book's order, pages_held = Σ 2^order, keys name its blocks.
    // Run it again in-process (machine stopped, as Validate does), so the census agrees.
    absl::StatusOr<BookCensus> books =
        inst_.server->lessor().Census(std::chrono::steady_clock::now() + std::chrono::seconds(5));
    if (!books.ok()) Fail(when + ": " + books.status().ToString());
    if (books->lease_pages != v.lease_pages()) Fail(when + ": the lessor's census disagrees with Validate's");
    return Census{v.allocated_pages(), v.leases()};
  }

  Instance& inst_;
  int unknown_outcomes_ = 0;  // calls that ended with the client's DEADLINE_EXCEEDED
  std::vector<uint64_t> leases_;
  std::vector<Held> held_;
};

}  // namespace
}  // namespace physmem

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  physmem::fuzz::FuzzProgram prog;
  if (!prog.ParseFromArray(data, static_cast<int>(size))) return -1;  // not a program: not kept
  physmem::Runner(physmem::Get(prog.i386())).Run(prog);
  return 0;
}
