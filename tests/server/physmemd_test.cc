// Integration tests of the real physmemd binary, started as a process, over its Unix socket and
// over loopback TCP, with raw gRPC stubs (no client library in between).
//
// The bad-input matrix checks, for every case, the exact status code and that nothing changed:
// the daemon's own Validate() passes, and allocated pages, free pages and the pages the leases
// say they hold are the same as before the call.
//
// Time: a lease that must live through a test gets a day's TTL (a sanitized build on a loaded
// machine may take minutes over what takes a second here); a lease that must expire is expired by
// moving the daemon's lease clock (the *OnTestClock fixtures, tests/daemon_process.h), and the
// test waits for its `lease_expired` event. Real-time bounds that are the point of a test (a mask
// that cannot wait answers at once) are scaled to the build (tests/time_scale.h).
#include <grpcpp/grpcpp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"
#include "tests/server/metrics_scrape.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using testing::ConnectStub;
using Ctx = testing::Deadline;  // a call's deadline: 5 s (scaled to the build) unless given
using testing::ScaledTimeout;
using v1::PhysMem;
using std::chrono::milliseconds;

// The TTL of a lease that must not expire while a test runs, however slow the build: a day, the
// longest the daemon grants (--max_lease_ttl_ms).
constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;

class Daemon : public testing::DaemonStubTest {
 protected:
  std::atomic<int> leases_named_{0};  // NewLease's names, "test-N"
  // i386 with 1 GiB: DMA, Normal (lowmem up to MAXMEM, 887.99 MiB) and HighMem; the kmap window has 1024 slots.
  static std::vector<std::string> Args() {
    return {"--target=i386", "--mem_mb=1024", "--max_lease_pages=200000", "--max_alloc_wait_ms=3000"};
  }
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(Start(testing::LeaseClockMode::kReal)); }
  void Start(testing::LeaseClockMode clock) {
    ASSERT_NO_FATAL_FAILURE(StartDaemon(Args(), /*tcp=*/true, clock));
    tcp_stub_ = ConnectStub("127.0.0.1:" + std::to_string(daemon_->tcp_port()));
  }

  uint64_t NewLease(PhysMem::Stub* stub, int64_t ttl_ms = kDayMs, uint64_t quota = 0) {
    v1::CreateLeaseRequest req;
    req.set_ttl_ms(ttl_ms);
    req.set_page_quota(quota);
    req.set_name("test-" + std::to_string(++leases_named_));  // names are unique per identity
    v1::CreateLeaseResponse resp;
    Ctx ctx;
    grpc::Status s = stub->CreateLease(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.lease_id();
  }
  grpc::Status Alloc(uint64_t lease, const std::string& gfp, uint32_t order, v1::Allocation* out,
                     const std::string& key = "", PhysMem::Stub* stub = nullptr, int deadline_ms = 5000) {
    v1::AllocPagesRequest req;
    req.set_lease_id(lease);
    req.set_gfp(gfp);
    req.set_order(order);
    req.set_key(key);
    Ctx ctx(deadline_ms);
    return (stub ? stub : stub_.get())->AllocPages(&ctx, req, out);
  }
  grpc::Status Free(uint64_t lease, uint64_t pfn, uint32_t order, PhysMem::Stub* stub = nullptr) {
    return testing::FreePages(stub ? stub : stub_.get(), lease, pfn, order);
  }
  // Allocation failures the daemon has counted (every attempt that found no memory): the first
  // attempt of a call that then waits counts one, and each retry of the waiter queue (every 20 ms)
  // one more.
  double AllocFailures() { return testing::MetricSum(daemon_->metrics_port(), "physmem_alloc_failures_total"); }
  // Waits until the one allocation in flight is parked for memory: since `failures_before` (taken
  // before it was sent), its first attempt and at least one retry from the queue have failed.
  bool WaitUntilParked(double failures_before) {
    if (failures_before < 0) return false;  // no scrape to count from
    return testing::Eventually(ScaledTimeout(std::chrono::seconds(5)),
                               [&] { return AllocFailures() >= failures_before + 2; });
  }
  // The census, with the two equations every step must keep.
  v1::ValidateResponse Census() {
    const v1::ValidateResponse resp = DaemonStubTest::Census();
    EXPECT_EQ(resp.allocated_pages(), resp.lease_pages()) << "allocator and leases disagree";
    EXPECT_EQ(resp.allocated_pages() + resp.free_pages(), resp.total_pages());
    return resp;
  }

  std::unique_ptr<PhysMem::Stub> tcp_stub_;
};

// The same daemon, built as physmemd_test_hooks: the same main, with a lease clock the test moves.
// For tests that decide when a lease expires (tests/daemon_process.h).
class DaemonOnTestClock : public Daemon {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(Start(testing::LeaseClockMode::kTestControlled)); }
};

// ---------------------------------------------------------------------------------------------
// Success paths of every RPC.

TEST_F(Daemon, AllocatesInEveryFormAndFreesInEveryForm) {
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation a;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 2, &a).ok());
  EXPECT_EQ(a.order(), 2u);
  EXPECT_EQ(a.zone(), "Normal");
  EXPECT_EQ(a.phys_addr(), a.pfn() << 12);
  EXPECT_EQ(a.virt_addr(), 0xC0000000u + a.phys_addr());
  EXPECT_EQ(a.pfn() % 4, 0u);
  v1::Allocation h;
  ASSERT_TRUE(Alloc(lease, "GFP_HIGHUSER", 0, &h).ok());
  EXPECT_EQ(h.zone(), "HighMem");
  EXPECT_EQ(h.virt_addr(), 0u);  // unmapped highmem: no address
  v1::Allocation d;
  ASSERT_TRUE(Alloc(lease, "GFP_DMA", 0, &d).ok());
  EXPECT_EQ(d.zone(), "DMA");
  EXPECT_LT(d.phys_addr(), 16u << 20);

  v1::AllocPagesRequest req;
  req.set_lease_id(lease);
  req.set_gfp("GFP_KERNEL");
  req.set_order(1);
  v1::Allocation g;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetFreePages(&ctx, req, &g).ok());
  }
  EXPECT_NE(g.virt_addr(), 0u);
  req.set_order(0);
  req.set_gfp("");
  req.set_gfp_mask(0xcc0);  // GFP_KERNEL as a number
  v1::Allocation z;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetZeroedPage(&ctx, req, &z).ok());
  }
  EXPECT_EQ(Census().allocated_pages(), 4u + 1 + 1 + 2 + 1);

  // Free by pfn, by address, in bulk.
  ASSERT_TRUE(Free(lease, a.pfn(), 2).ok());
  {
    v1::FreePagesByAddressRequest r;
    r.set_lease_id(lease);
    r.set_addr(g.virt_addr());
    r.set_order(1);
    v1::FreePagesResponse resp;
    Ctx ctx;
    ASSERT_TRUE(stub_->FreePagesByAddress(&ctx, r, &resp).ok());
    EXPECT_EQ(resp.pages_freed(), 2u);
  }
  {
    v1::FreePagesBulkRequest r;
    r.set_lease_id(lease);
    for (const v1::Allocation* x : {&h, &d, &z}) r.add_pfn(x->pfn());
    r.add_pfn(h.pfn());  // twice: the second is refused, the others still freed
    v1::FreePagesBulkResponse resp;
    Ctx ctx;
    ASSERT_TRUE(stub_->FreePagesBulk(&ctx, r, &resp).ok());
    EXPECT_EQ(resp.pages_freed(), 3u);
    EXPECT_EQ(resp.blocks_freed(), 3u);
    ASSERT_EQ(resp.refused_size(), 1);
    EXPECT_EQ(resp.refused(0).pfn(), h.pfn());
    EXPECT_EQ(resp.refused(0).code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  }
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

TEST_F(Daemon, BulkAllocationReportsEveryPage) {
  const uint64_t lease = NewLease(stub_.get());
  v1::AllocPagesBulkResponse resp;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), lease, "GFP_KERNEL", 1000, &resp).ok());
  EXPECT_EQ(resp.pfn_size(), 1000);
  EXPECT_EQ(resp.requested(), 1000u);
  ASSERT_EQ(resp.zone_size(), 1000);
  ASSERT_EQ(resp.phys_addr_size(), 1000);
  ASSERT_EQ(resp.virt_addr_size(), 1000);
  ASSERT_EQ(resp.arena_offset_size(), 1000);
  std::set<uint64_t> pfns(resp.pfn().begin(), resp.pfn().end());
  EXPECT_EQ(pfns.size(), 1000u);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(resp.zone(i), v1::ZONE_NORMAL);
    EXPECT_EQ(resp.phys_addr(i), resp.pfn(i) << 12);
    EXPECT_EQ(resp.virt_addr(i), 0xC0000000u + resp.phys_addr(i));
  }
  EXPECT_EQ(Census().allocated_pages(), 1000u);
}

TEST_F(Daemon, BulkAllocationStopsAtTheLeaseQuota) {
  const uint64_t lease = NewLease(stub_.get(), kDayMs, /*quota=*/100);
  v1::AllocPagesBulkResponse resp;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), lease, "GFP_KERNEL", 1000, &resp).ok());
  EXPECT_EQ(resp.pfn_size(), 100);  // partial success, reported
  EXPECT_EQ(Census().allocated_pages(), 100u);
}

TEST_F(Daemon, KmapGivesHighmemPagesAnAddressUntilKunmap) {
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation h;
  ASSERT_TRUE(Alloc(lease, "GFP_HIGHUSER", 0, &h).ok());
  v1::KmapRequest k;
  k.set_lease_id(lease);
  k.set_pfn(h.pfn());
  v1::KmapResponse km;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->Kmap(&ctx, k, &km).ok());
  }
  EXPECT_GE(km.virt_addr(), 0xff800000u);
  v1::PageAddressRequest pr;
  pr.set_lease_id(lease);
  pr.set_pfn(h.pfn());
  v1::PageAddressResponse pa;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->PageAddress(&ctx, pr, &pa).ok());
  }
  EXPECT_EQ(pa.virt_addr(), km.virt_addr());
  {
    Ctx ctx;
    EXPECT_EQ(Free(lease, h.pfn(), 0).error_code(), grpc::StatusCode::FAILED_PRECONDITION);  // still mapped
  }
  v1::KunmapResponse ku;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->Kunmap(&ctx, k, &ku).ok());
  }
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->PageAddress(&ctx, pr, &pa).ok());
  }
  EXPECT_EQ(pa.virt_addr(), km.virt_addr());  // kunmap_high(): mapped lazily until the window wraps
  EXPECT_TRUE(Free(lease, h.pfn(), 0).ok());
}

TEST_F(Daemon, LeaseCallsReportTtlHoldingsAndOwnership) {
  constexpr int64_t kTtlMs = 3600 * 1000;
  const auto created = std::chrono::steady_clock::now();
  const uint64_t lease = NewLease(stub_.get(), kTtlMs);
  v1::Allocation a, b;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 3, &a).ok());
  ASSERT_TRUE(Alloc(lease, "GFP_DMA", 0, &b).ok());
  v1::GetLeaseRequest g;
  g.set_lease_id(lease);
  v1::LeaseInfo info;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetLease(&ctx, g, &info).ok());
  }
  // What is left of the TTL: no more than granted, and no less than the time since we asked
  // for the lease leaves (however long the calls took).
  const int64_t since_created =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - created).count();
  EXPECT_EQ(info.pages_held(), 9u);
  EXPECT_GE(info.ttl_ms(), kTtlMs - since_created - 1);
  EXPECT_LE(info.ttl_ms(), kTtlMs);
  EXPECT_EQ(info.holdings_size(), 2);
  EXPECT_EQ(info.identity(), "uid:" + std::to_string(getuid()));
  v1::ListLeasesResponse list;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->ListLeases(&ctx, v1::ListLeasesRequest(), &list).ok());
  }
  ASSERT_EQ(list.leases_size(), 1);
  // A lease created over TCP belongs to another identity and is not listed here.
  NewLease(tcp_stub_.get());
  {
    Ctx ctx;
    list.Clear();
    ASSERT_TRUE(stub_->ListLeases(&ctx, v1::ListLeasesRequest(), &list).ok());
  }
  EXPECT_EQ(list.leases_size(), 1);
  v1::KeepAliveRequest r;
  r.set_lease_id(lease);
  v1::KeepAliveResponse kr;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->RenewLease(&ctx, r, &kr).ok());
  }
  EXPECT_EQ(kr.ttl_ms(), kTtlMs);
  v1::RevokeLeaseResponse rr;
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), lease, &rr).ok());
  EXPECT_EQ(rr.pages_freed(), 9u);
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

TEST_F(DaemonOnTestClock, KeepAliveStreamRenewsAndReportsGoneLeases) {
  // The lease clock moves 0.9 TTL between renewals (a minute of real time left for each round
  // trip): 2.7 TTLs in all, which only the renewals survive.
  constexpr int64_t kTtlMs = 600 * 1000;
  const uint64_t lease = NewLease(stub_.get(), kTtlMs);
  grpc::ClientContext ctx;
  auto stream = stub_->KeepAlive(&ctx);
  auto renew = [&](uint64_t id) {
    v1::KeepAliveRequest r;
    r.set_lease_id(id);
    v1::KeepAliveResponse resp;
    EXPECT_TRUE(stream->Write(r));
    EXPECT_TRUE(stream->Read(&resp));
    return resp.ttl_ms();
  };
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(renew(lease), kTtlMs) << "renewal " << i;
    daemon_->AdvanceLeaseClock(milliseconds(kTtlMs * 9 / 10));
  }
  EXPECT_EQ(renew(lease), kTtlMs) << "the renewed lease did not survive";
  EXPECT_EQ(Census().leases(), 1u);
  // Not renewed for a whole TTL: it expires, and the stream says so.
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(lease, milliseconds(kTtlMs)));
  EXPECT_EQ(renew(lease), 0);
  EXPECT_EQ(renew(123456), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(Census().leases(), 0u);
}

TEST_F(Daemon, AllocationKeysMakeRetriesSafe) {
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation first, again;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 1, &first, "k1").ok());
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 1, &again, "k1").ok());
  EXPECT_EQ(first.pfn(), again.pfn());
  EXPECT_FALSE(first.replayed());
  EXPECT_TRUE(again.replayed());
  EXPECT_EQ(Census().allocated_pages(), 2u);
  v1::FreePagesRequest f;
  f.set_lease_id(lease);
  f.set_key("k1");
  v1::FreePagesResponse fr;
  Ctx ctx;
  ASSERT_TRUE(stub_->FreePages(&ctx, f, &fr).ok());
  EXPECT_EQ(fr.pages_freed(), 2u);
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

TEST_F(Daemon, ZoneInfoAndTargetDescribeTheMachine) {
  v1::GetZoneInfoResponse zi;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetZoneInfo(&ctx, v1::GetZoneInfoRequest(), &zi).ok());
  }
  std::vector<std::string> names;
  for (const auto& z : zi.zones()) names.push_back(z.zone());
  EXPECT_THAT(names, ::testing::ElementsAre("DMA", "Normal", "HighMem"));
  EXPECT_THAT(zi.buddyinfo(), HasSubstr("Node 0, zone  HighMem "));
  v1::GetTargetResponse t;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetTarget(&ctx, v1::GetTargetRequest(), &t).ok());
  }
  EXPECT_EQ(t.profile().name(), "i386");
  EXPECT_EQ(t.arena_backing(), "ordinary");
  // The pages the allocator manages: 1 GiB of e820 RAM less page 0 (trim_bios_range()) and the
  // 158 other RAM pages below 1 MiB that reserve_real_mode() memblock-reserves.
  EXPECT_EQ(t.total_pages(), ((1024u << 20) >> 12) - 1 - 158);
}

TEST_F(Daemon, HealthCheckServesWithoutProtoFiles) {
  std::string bytes;
  const grpc::Status status = testing::HealthCheck(daemon_->unix_target(), &bytes);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // HealthCheckResponse{status: SERVING}
}

TEST_F(Daemon, EveryRpcAlsoSucceedsOverLoopbackTcp) {
  PhysMem::Stub* t = tcp_stub_.get();
  const uint64_t lease = NewLease(t);
  auto ok = [](const grpc::Status& s, const char* what) { EXPECT_TRUE(s.ok()) << what << ": " << s.error_message(); };
  v1::Allocation a, h, g, z;
  ok(Alloc(lease, "GFP_KERNEL", 1, &a, "", t), "AllocPages");
  ok(Alloc(lease, "GFP_HIGHUSER", 0, &h, "", t), "AllocPages highmem");
  v1::AllocPagesRequest req;
  req.set_lease_id(lease);
  req.set_gfp("GFP_KERNEL");
  {
    Ctx c;
    ok(t->GetFreePages(&c, req, &g), "GetFreePages");
  }
  {
    Ctx c;
    ok(t->GetZeroedPage(&c, req, &z), "GetZeroedPage");
  }
  v1::AllocPagesBulkRequest br;
  br.set_lease_id(lease);
  br.set_gfp("GFP_KERNEL");
  br.set_count(16);
  v1::AllocPagesBulkResponse bulk;
  {
    Ctx c;
    ok(t->AllocPagesBulk(&c, br, &bulk), "AllocPagesBulk");
  }
  v1::KmapRequest k;
  k.set_lease_id(lease);
  k.set_pfn(h.pfn());
  {
    Ctx c;
    v1::KmapResponse r;
    ok(t->Kmap(&c, k, &r), "Kmap");
  }
  {
    Ctx c;
    v1::PageAddressRequest r;
    r.set_lease_id(lease);
    r.set_pfn(h.pfn());
    v1::PageAddressResponse resp;
    ok(t->PageAddress(&c, r, &resp), "PageAddress");
    EXPECT_NE(resp.virt_addr(), 0u);
  }
  {
    Ctx c;
    v1::KunmapResponse r;
    ok(t->Kunmap(&c, k, &r), "Kunmap");
  }
  {
    Ctx c;
    v1::GetLeaseRequest r;
    r.set_lease_id(lease);
    v1::LeaseInfo info;
    ok(t->GetLease(&c, r, &info), "GetLease");
    EXPECT_EQ(info.pages_held(), 2u + 1 + 1 + 1 + 16);
    EXPECT_EQ(info.identity(), "tcp:127.0.0.1");
  }
  {
    Ctx c;
    v1::ListLeasesResponse r;
    ok(t->ListLeases(&c, v1::ListLeasesRequest(), &r), "ListLeases");
    EXPECT_EQ(r.leases_size(), 1);
  }
  {
    Ctx c;
    v1::KeepAliveRequest r;
    r.set_lease_id(lease);
    v1::KeepAliveResponse resp;
    ok(t->RenewLease(&c, r, &resp), "RenewLease");
  }
  {
    grpc::ClientContext c;
    auto stream = t->KeepAlive(&c);
    v1::KeepAliveRequest r;
    r.set_lease_id(lease);
    v1::KeepAliveResponse resp;
    EXPECT_TRUE(stream->Write(r) && stream->Read(&resp));
    EXPECT_EQ(resp.ttl_ms(), kDayMs);
    stream->WritesDone();
    ok(stream->Finish(), "KeepAlive");
  }
  ok(Free(lease, a.pfn(), 1, t), "FreePages");
  {
    Ctx c;
    v1::FreePagesByAddressRequest r;
    r.set_lease_id(lease);
    r.set_addr(g.virt_addr());
    v1::FreePagesResponse resp;
    ok(t->FreePagesByAddress(&c, r, &resp), "FreePagesByAddress");
  }
  {
    Ctx c;
    v1::FreePagesBulkRequest r;
    r.set_lease_id(lease);
    for (uint64_t pfn : bulk.pfn()) r.add_pfn(pfn);
    v1::FreePagesBulkResponse resp;
    ok(t->FreePagesBulk(&c, r, &resp), "FreePagesBulk");
    EXPECT_EQ(resp.blocks_freed(), 16u);
  }
  for (auto* rpc : {+[](PhysMem::Stub* s) {
                      Ctx c;
                      v1::GetZoneInfoResponse r;
                      return s->GetZoneInfo(&c, v1::GetZoneInfoRequest(), &r);
                    },
                    +[](PhysMem::Stub* s) {
                      Ctx c;
                      v1::GetTargetResponse r;
                      return s->GetTarget(&c, v1::GetTargetRequest(), &r);
                    },
                    +[](PhysMem::Stub* s) {
                      Ctx c;
                      v1::NopResponse r;
                      return s->Nop(&c, v1::NopRequest(), &r);
                    }}) {
    ok(rpc(t), "introspection");
  }
  {
    Ctx c;
    v1::RevokeLeaseRequest r;
    r.set_lease_id(lease);
    v1::RevokeLeaseResponse resp;
    ok(t->RevokeLease(&c, r, &resp), "RevokeLease");
    EXPECT_EQ(resp.pages_freed(), 2u);  // the highmem page and the zeroed page were still held
  }
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

// ---------------------------------------------------------------------------------------------
// The bad-input matrix.

// The response type of a unary stub method, for the bad-input matrix's generic caller.
template <typename Req, typename Resp>
std::type_identity<Resp*> ResponseOf(grpc::Status (PhysMem::Stub::*)(grpc::ClientContext*, const Req&, Resp*));

struct BadCase {
  std::string name;
  grpc::StatusCode code;
  std::function<grpc::Status()> call;
};

TEST_F(DaemonOnTestClock, EveryBadCallGetsAPreciseStatusAndChangesNothing) {
  // Every lease but `expired` lives a day: ~65 cases with two Validates of a 1 GiB machine each
  // take minutes under a sanitizer.
  const uint64_t lease = NewLease(stub_.get());
  const uint64_t other = NewLease(stub_.get());
  const uint64_t foreign = NewLease(tcp_stub_.get());  // another identity (TCP peer)
  const uint64_t small = NewLease(stub_.get(), kDayMs, /*quota=*/4);
  v1::Allocation a3, h, mine_other, foreign_page;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 3, &a3, "held").ok());
  ASSERT_TRUE(Alloc(lease, "GFP_HIGHUSER", 0, &h).ok());
  ASSERT_TRUE(Alloc(other, "GFP_KERNEL", 0, &mine_other).ok());
  ASSERT_TRUE(Alloc(foreign, "GFP_KERNEL", 0, &foreign_page, "", tcp_stub_.get()).ok());
  v1::Allocation freed;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 0, &freed).ok());
  ASSERT_TRUE(Free(lease, freed.pfn(), 0).ok());
  const uint64_t expired = NewLease(stub_.get(), 3600 * 1000);
  const uint64_t revoked = NewLease(stub_.get());
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), revoked).ok());
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(expired, milliseconds(3600 * 1000)));  // `expired` is gone now
  // Take ZONE_DMA's order-10 blocks, so that another one cannot be had.
  for (v1::Allocation big; Alloc(lease, "GFP_NOWAIT|__GFP_DMA", 10, &big).ok();) {
  }

  auto alloc = [&](uint64_t l, std::string gfp, uint32_t order, std::string key = "") {
    return [=, this] {
      v1::Allocation out;
      return Alloc(l, gfp, order, &out, key);
    };
  };
  auto alloc_req = [&](std::function<void(v1::AllocPagesRequest&)> edit, int form = 0) {
    return [=, this] {
      v1::AllocPagesRequest r;
      r.set_lease_id(lease);
      r.set_gfp("GFP_KERNEL");
      edit(r);
      v1::Allocation out;
      Ctx ctx;
      if (form == 1) return stub_->GetFreePages(&ctx, r, &out);
      if (form == 2) return stub_->GetZeroedPage(&ctx, r, &out);
      return stub_->AllocPages(&ctx, r, &out);
    };
  };
  auto free = [&](uint64_t l, uint64_t pfn, uint32_t order, PhysMem::Stub* s = nullptr) {
    return [=, this] { return Free(l, pfn, order, s); };
  };
  auto free_key = [&](uint64_t l, std::string key, uint32_t order = 0) {
    return [=, this] {
      v1::FreePagesRequest r;
      r.set_lease_id(l);
      r.set_key(key);
      r.set_order(order);
      v1::FreePagesResponse resp;
      Ctx ctx;
      return stub_->FreePages(&ctx, r, &resp);
    };
  };
  auto free_addr = [&](uint64_t addr, uint32_t order) {
    return [=, this] {
      v1::FreePagesByAddressRequest r;
      r.set_lease_id(lease);
      r.set_addr(addr);
      r.set_order(order);
      v1::FreePagesResponse resp;
      Ctx ctx;
      return stub_->FreePagesByAddress(&ctx, r, &resp);
    };
  };
  auto bulk = [&](uint32_t count) {
    return [=, this] {
      v1::AllocPagesBulkRequest r;
      r.set_lease_id(lease);
      r.set_gfp("GFP_KERNEL");
      r.set_count(count);
      v1::AllocPagesBulkResponse resp;
      Ctx ctx;
      return stub_->AllocPagesBulk(&ctx, r, &resp);
    };
  };
  auto kmap = [&](uint64_t l, uint64_t pfn, bool unmap = false) {
    return [=, this] {
      v1::KmapRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      Ctx ctx;
      if (unmap) {
        v1::KunmapResponse resp;
        return stub_->Kunmap(&ctx, r, &resp);
      }
      v1::KmapResponse resp;
      return stub_->Kmap(&ctx, r, &resp);
    };
  };
  auto address = [&](uint64_t l, uint64_t pfn) {
    return [=, this] {
      v1::PageAddressRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      v1::PageAddressResponse resp;
      Ctx ctx;
      return stub_->PageAddress(&ctx, r, &resp);
    };
  };
  // One unary call with a prepared request, made when the case runs.
  auto rpc = [this](auto method, auto req) -> std::function<grpc::Status()> {
    return [this, method, req] {
      typename std::remove_pointer_t<typename decltype(ResponseOf(method))::type> resp;
      Ctx ctx;
      return (stub_.get()->*method)(&ctx, req, &resp);
    };
  };
  auto create = [&](int64_t ttl, uint64_t quota, std::string name) {
    v1::CreateLeaseRequest r;
    r.set_ttl_ms(ttl);
    r.set_page_quota(quota);
    r.set_name(name);
    return rpc(&PhysMem::Stub::CreateLease, r);
  };
  auto with_lease = [](auto req, uint64_t l) {
    req.set_lease_id(l);
    return req;
  };
  auto renew = [&](uint64_t l) { return rpc(&PhysMem::Stub::RenewLease, with_lease(v1::KeepAliveRequest(), l)); };
  auto revoke = [&](uint64_t l) { return rpc(&PhysMem::Stub::RevokeLease, with_lease(v1::RevokeLeaseRequest(), l)); };
  auto get = [&](uint64_t l) { return rpc(&PhysMem::Stub::GetLease, with_lease(v1::GetLeaseRequest(), l)); };
  using C = grpc::StatusCode;
  const uint64_t lowmem_virt = 0xC0000000u;
  const std::vector<BadCase> cases = {
      {"order above MAX_PAGE_ORDER", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL", 11)},
      {"huge order", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL", 0xffffffff)},
      {"unknown GFP name", C::INVALID_ARGUMENT, alloc(lease, "GFP_BOGUS", 0)},
      {"unknown GFP bits", C::INVALID_ARGUMENT, alloc(lease, "0x80000000", 0)},
      {"removed __GFP_ATOMIC bit", C::INVALID_ARGUMENT, alloc(lease, "0x200", 0)},
      {"DMA|DMA32", C::INVALID_ARGUMENT, alloc(lease, "__GFP_DMA|__GFP_DMA32", 0)},
      {"DMA32|HIGHMEM", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL|__GFP_DMA32|__GFP_HIGHMEM", 0)},
      {"DMA|HIGHMEM", C::INVALID_ARGUMENT, alloc(lease, "GFP_DMA|__GFP_HIGHMEM", 0)},
      {"empty GFP term", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL||__GFP_ZERO", 0)},
      {"NOFAIL that cannot block", C::INVALID_ARGUMENT, alloc(lease, "GFP_ATOMIC|__GFP_NOFAIL", 0)},
      {"MOVABLE|RECLAIMABLE", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL|__GFP_MOVABLE|__GFP_RECLAIMABLE", 0)},
      {"no GFP at all", C::INVALID_ARGUMENT, alloc_req([](auto& r) { r.set_gfp(""); })},
      {"gfp and gfp_mask both", C::INVALID_ARGUMENT, alloc_req([](auto& r) { r.set_gfp_mask(0xcc0); })},
      {"gfp_mask with unknown bits", C::INVALID_ARGUMENT,
       alloc_req([](auto& r) { r.set_gfp(""); r.set_gfp_mask(0x1000000); })},
      {"HIGHMEM to GetFreePages", C::FAILED_PRECONDITION,
       alloc_req([](auto& r) { r.set_gfp("GFP_HIGHUSER"); }, 1)},
      {"GetZeroedPage of order 1", C::INVALID_ARGUMENT, alloc_req([](auto& r) { r.set_order(1); }, 2)},
      {"unknown lease", C::NOT_FOUND, alloc(999999, "GFP_KERNEL", 0)},
      {"lease 0", C::NOT_FOUND, alloc(0, "GFP_KERNEL", 0)},
      {"expired lease", C::NOT_FOUND, alloc(expired, "GFP_KERNEL", 0)},
      {"revoked lease", C::NOT_FOUND, alloc(revoked, "GFP_KERNEL", 0)},
      {"foreign lease alloc", C::PERMISSION_DENIED, alloc(foreign, "GFP_KERNEL", 0)},
      {"key too long", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL", 0, std::string(200, 'k'))},
      {"key reused with another order", C::INVALID_ARGUMENT, alloc(lease, "GFP_KERNEL", 2, "held")},
      {"quota exceeded", C::RESOURCE_EXHAUSTED, alloc(small, "GFP_KERNEL", 3)},
      {"no block that large, cannot wait", C::RESOURCE_EXHAUSTED, alloc(lease, "GFP_NOWAIT|__GFP_DMA", 10)},
      {"double free", C::FAILED_PRECONDITION, free(lease, freed.pfn(), 0)},
      {"wrong order", C::INVALID_ARGUMENT, free(lease, a3.pfn(), 2)},
      {"misaligned pfn", C::INVALID_ARGUMENT, free(lease, a3.pfn() + 1, 3)},
      {"pfn inside a block", C::FAILED_PRECONDITION, free(lease, a3.pfn() + 4, 2)},
      {"pfn in a hole", C::OUT_OF_RANGE, free(lease, 0xa0, 0)},
      {"pfn beyond RAM", C::OUT_OF_RANGE, free(lease, 1u << 30, 0)},
      {"free order above max", C::INVALID_ARGUMENT, free(lease, a3.pfn(), 11)},
      {"another lease's block", C::PERMISSION_DENIED, free(lease, mine_other.pfn(), 0)},
      {"another identity's block", C::PERMISSION_DENIED, free(lease, foreign_page.pfn(), 0)},
      {"free on a foreign lease", C::PERMISSION_DENIED, free(foreign, foreign_page.pfn(), 0)},
      {"free on an expired lease", C::NOT_FOUND, free(expired, a3.pfn(), 3)},
      {"unknown key", C::NOT_FOUND, free_key(lease, "nope")},
      {"key with the wrong order", C::INVALID_ARGUMENT, free_key(lease, "held", 2)},
      {"address not page aligned", C::INVALID_ARGUMENT, free_addr(lowmem_virt + a3.phys_addr() + 8, 3)},
      {"address below PAGE_OFFSET", C::INVALID_ARGUMENT, free_addr(0x1000, 0)},
      {"address beyond the direct map", C::INVALID_ARGUMENT, free_addr(0xf9000000, 0)},
      {"address in a hole", C::OUT_OF_RANGE, free_addr(lowmem_virt + 0xa0000, 0)},
      {"kmap window address", C::INVALID_ARGUMENT, free_addr(0xff800000, 0)},
      {"bulk of 0", C::INVALID_ARGUMENT, bulk(0)},
      {"bulk free of nothing", C::INVALID_ARGUMENT,
       [&, this] {
         v1::FreePagesBulkRequest r;
         r.set_lease_id(lease);
         v1::FreePagesBulkResponse resp;
         Ctx ctx;
         return stub_->FreePagesBulk(&ctx, r, &resp);
       }},
      {"bulk free with a wrong number of orders", C::INVALID_ARGUMENT,
       [&, this] {
         v1::FreePagesBulkRequest r;
         r.set_lease_id(lease);
         r.add_pfn(a3.pfn());
         r.add_pfn(h.pfn());
         r.add_order(3);
         v1::FreePagesBulkResponse resp;
         Ctx ctx;
         return stub_->FreePagesBulk(&ctx, r, &resp);
       }},
      {"bulk free on a foreign lease", C::PERMISSION_DENIED,
       [&, this] {
         v1::FreePagesBulkRequest r;
         r.set_lease_id(foreign);
         r.add_pfn(foreign_page.pfn());
         v1::FreePagesBulkResponse resp;
         Ctx ctx;
         return stub_->FreePagesBulk(&ctx, r, &resp);
       }},
      {"oversized bulk", C::INVALID_ARGUMENT, bulk(65537)},
      {"kmap of a free page", C::FAILED_PRECONDITION, kmap(lease, freed.pfn())},
      {"kmap of another lease's page", C::PERMISSION_DENIED, kmap(lease, mine_other.pfn())},
      {"kmap of a hole", C::OUT_OF_RANGE, kmap(lease, 0xa0)},
      {"kunmap of an unmapped page", C::FAILED_PRECONDITION, kmap(lease, h.pfn(), true)},
      {"page_address of a free page", C::FAILED_PRECONDITION, address(lease, freed.pfn())},
      {"page_address of another lease's page", C::PERMISSION_DENIED, address(lease, mine_other.pfn())},
      {"page_address of a hole", C::OUT_OF_RANGE, address(lease, 0xa0)},
      {"TTL 0", C::INVALID_ARGUMENT, create(0, 0, "")},
      {"TTL too long", C::INVALID_ARGUMENT, create(int64_t{1} << 40, 0, "")},
      {"quota above the per-lease limit", C::INVALID_ARGUMENT, create(kDayMs, 300000, "")},
      {"lease name too long", C::INVALID_ARGUMENT, create(kDayMs, 0, std::string(65, 'n'))},
      {"renew unknown lease", C::NOT_FOUND, renew(424242)},
      {"renew foreign lease", C::PERMISSION_DENIED, renew(foreign)},
      {"revoke unknown lease", C::NOT_FOUND, revoke(424242)},
      {"revoke foreign lease", C::PERMISSION_DENIED, revoke(foreign)},
      {"get expired lease", C::NOT_FOUND, get(expired)},
      {"get foreign lease", C::PERMISSION_DENIED, get(foreign)},
  };
  ASSERT_GE(cases.size(), 40u);
  for (const BadCase& c : cases) {
    const v1::ValidateResponse before = Census();
    grpc::Status s = c.call();
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": got " << s.error_code() << " '" << s.error_message() << "'";
    EXPECT_FALSE(s.error_message().empty()) << c.name;
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages()) << c.name << " changed state";
    EXPECT_EQ(after.free_pages(), before.free_pages()) << c.name << " changed state";
    EXPECT_EQ(after.lease_pages(), before.lease_pages()) << c.name << " changed state";
    EXPECT_EQ(after.leases(), before.leases()) << c.name << " changed state";
  }
}

// ---------------------------------------------------------------------------------------------
// Waiting semantics.

class SmallDaemon : public Daemon {
 protected:
  // How long a blocking mask waits for memory here (--max_alloc_wait_ms): long enough, on every
  // build, for the frees and expiries these tests make while a call waits; a mask that cannot
  // wait must answer in a sixth of it.
  static milliseconds MaxAllocWait() { return ScaledTimeout(milliseconds(3000)); }
  static milliseconds AtOnce() { return MaxAllocWait() / 6; }

  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartSmall(testing::LeaseClockMode::kReal, MaxAllocWait())); }
  void StartSmall(testing::LeaseClockMode clock, milliseconds max_alloc_wait) {
    // These tests drain the whole machine as one client: no per-identity ZONE_DMA cap.
    // Metrics: AllocFailures() watches the daemon's counters.
    ASSERT_NO_FATAL_FAILURE(StartDaemon({testing::kServeMetrics, "--target=x86_64", "--mem_mb=64",
                                         "--max_alloc_wait_ms=" + std::to_string(max_alloc_wait.count()),
                                         "--min_lease_ttl_ms=200", "--identity_dma_pages=4096"},
                                        /*tcp=*/true, clock));
    tcp_stub_ = ConnectStub("127.0.0.1:" + std::to_string(daemon_->tcp_port()));
  }
};

// Leases here expire when the test moves the lease clock.
class SmallDaemonOnTestClock : public SmallDaemon {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartSmall(testing::LeaseClockMode::kTestControlled, MaxAllocWait()));
  }
};

// A blocking mask gives up after a short --max_alloc_wait_ms: the bound a test can time without
// racing the 50 ms by which the daemon answers ahead of a caller's own deadline.
class SmallDaemonWithShortWaits : public SmallDaemon {
 protected:
  static constexpr milliseconds kMaxAllocWait{500};
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartSmall(testing::LeaseClockMode::kReal, kMaxAllocWait)); }
};

TEST_F(SmallDaemon, AtomicAndNowaitFailAtOnceWhenMemoryIsGone) {
  const uint64_t hog = NewLease(stub_.get());
  const auto pages = testing::FillMachine(stub_.get(), hog);
  ASSERT_GT(pages.size(), 15000u);
  const uint64_t lease = NewLease(stub_.get());
  for (const char* gfp : {"GFP_ATOMIC", "GFP_NOWAIT"}) {
    const auto t0 = std::chrono::steady_clock::now();
    v1::Allocation a;
    grpc::Status s = Alloc(lease, gfp, 0, &a);
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << gfp;
    // The refusal a mask that cannot wait gets before it could be queued to wait...
    EXPECT_THAT(s.error_message(), HasSubstr("cannot wait"));
    // ...and the time it took: far less than the wait a blocking mask would have had.
    EXPECT_LT(took, AtOnce()) << gfp << " waited";
  }
}

TEST_F(SmallDaemon, KernelWaitsForAFreeWithinItsDeadline) {
  const uint64_t hog = NewLease(stub_.get());
  const auto pages = testing::FillMachine(stub_.get(), hog);
  const uint64_t lease = NewLease(stub_.get());
  const double failures = AllocFailures();
  // Before the freer starts: the page it frees 400 ms after the call is parked is the first the
  // call can get.
  const auto t0 = std::chrono::steady_clock::now();
  std::thread freer([&] {
    EXPECT_TRUE(WaitUntilParked(failures)) << "the call did not wait";
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    Free(hog, pages[0], 0);
  });
  v1::Allocation a;
  grpc::Status s = Alloc(lease, "GFP_KERNEL|__GFP_MEMALLOC", 0, &a, "", nullptr, 5000);
  const auto waited = std::chrono::steady_clock::now() - t0;
  freer.join();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(a.pfn(), pages[0]);
  EXPECT_GE(waited, std::chrono::milliseconds(350));
}

// A call in flight when SIGTERM arrives gets the daemon's own answer, not a cut connection: the
// parked allocation is answered UNAVAILABLE "physmemd is shutting down" before gRPC stops.
TEST_F(SmallDaemon, ACallInFlightAtShutdownGetsItsAnswer) {
  const uint64_t hog = NewLease(stub_.get());
  testing::FillMachine(stub_.get(), hog);
  const uint64_t lease = NewLease(stub_.get());
  const double failures = AllocFailures();
  std::thread killer([&] {
    EXPECT_TRUE(WaitUntilParked(failures)) << "the call did not wait";
    daemon_->Kill(SIGTERM);
  });
  v1::Allocation a;
  grpc::Status s = Alloc(lease, "GFP_KERNEL|__GFP_MEMALLOC", 0, &a, "", nullptr, 60000);
  killer.join();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(s.error_message(), "physmemd is shutting down");
  std::optional<int> st = daemon_->WaitExit(ScaledTimeout(std::chrono::seconds(10)));
  ASSERT_TRUE(st.has_value()) << "did not exit";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "wait status " << *st;
  EXPECT_THAT(daemon_->log(), ::testing::Not(HasSubstr("event=shutdown_grace_expired")));
}

// The daemon answers RESOURCE_EXHAUSTED when its wait runs out, while the caller's deadline is
// still far off: the caller hears why, not its own DEADLINE_EXCEEDED. (A wait cut short by the
// caller's deadline ends 50 ms before it, a margin a loaded machine's reply can miss; the wait's
// own bound, --max_alloc_wait_ms, is the one a test can time.)
TEST_F(SmallDaemonWithShortWaits, KernelGivesUpWithResourceExhaustedBeforeTheDeadline) {
  const uint64_t hog = NewLease(stub_.get());
  testing::FillMachine(stub_.get(), hog);
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation a;
  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status s = Alloc(lease, "GFP_KERNEL", 0, &a, "", nullptr, /*deadline_ms=*/20000);  // scaled
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("waited " + std::to_string(kMaxAllocWait.count()) + " ms"));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, kMaxAllocWait);
}

TEST_F(SmallDaemon, NoretryGivesUpAfterOneReclaimPass) {
  const uint64_t hog = NewLease(stub_.get());
  testing::FillMachine(stub_.get(), hog);
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation a;
  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status s = Alloc(lease, "GFP_KERNEL|__GFP_NORETRY", 0, &a, "", nullptr, 5000);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // The give-up after one reclaim pass, not the timeout of a wait...
  EXPECT_THAT(s.error_message(), HasSubstr("__GFP_NORETRY"));
  EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr("waited")));
  // ...and far sooner than a wait would have ended.
  EXPECT_LT(took, AtOnce());
}

TEST_F(SmallDaemonOnTestClock, ExpiringLeaseWakesAWaitingAllocation) {
  constexpr int64_t kHogTtlMs = 3600 * 1000;  // expires when the test moves the clock past it
  const uint64_t hog = NewLease(stub_.get(), kHogTtlMs);
  ASSERT_GT(testing::FillMachine(stub_.get(), hog).size(), 15000u);
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation a;
  grpc::Status s;
  const double failures = AllocFailures();
  std::thread waiter([&] { s = Alloc(lease, "GFP_KERNEL", 0, &a); });
  EXPECT_TRUE(WaitUntilParked(failures)) << "the call did not wait";
  daemon_->AdvanceLeaseClock(milliseconds(kHogTtlMs + 1));
  waiter.join();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(WaitForExpiry(hog, std::chrono::seconds(5))) << "the hog did not expire";
  EXPECT_EQ(Census().allocated_pages(), 1u);
}

TEST_F(SmallDaemonOnTestClock, ExpiredLeaseGivesEveryPageBack) {
  constexpr int64_t kTtlMs = 3600 * 1000;
  const uint64_t lease = NewLease(stub_.get(), kTtlMs);
  v1::AllocPagesBulkResponse resp;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), lease, "GFP_KERNEL", 500, &resp).ok());
  ASSERT_EQ(Census().allocated_pages(), 500u);
  // (How soon after its deadline the reaper gets to it is a real-time matter, not timed here.)
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(lease, milliseconds(kTtlMs)));
  const v1::ValidateResponse after = Census();
  EXPECT_EQ(after.allocated_pages(), 0u);
  EXPECT_EQ(after.leases(), 0u);
}

// The TTL of the lease ClientProcess keeps alive.
constexpr int64_t kClientTtlMs = 600 * 1000;

// A client process that creates a lease, allocates, keeps it alive (renewing every 200 ms), and
// is killed with SIGKILL. Run only as a child of KilledClientsPagesComeBack... (see there).
TEST(ClientProcess, DISABLED_AllocateKeepAliveForever) {
  const char* target = std::getenv("PHYSMEM_TEST_TARGET");
  ASSERT_NE(target, nullptr);
  auto stub = ConnectStub(target);
  const uint64_t lease = testing::CreateLease(stub.get(), kClientTtlMs);
  ASSERT_NE(lease, 0u);
  v1::AllocPagesBulkResponse resp;
  ASSERT_TRUE(testing::AllocBulk(stub.get(), lease, "GFP_KERNEL", 300, &resp).ok());
  std::printf("READY %lu\n", static_cast<unsigned long>(lease));
  std::fflush(stdout);
  grpc::ClientContext ctx;
  auto stream = stub->KeepAlive(&ctx);
  for (;;) {
    v1::KeepAliveRequest k;
    k.set_lease_id(lease);
    v1::KeepAliveResponse kr;
    if (!stream->Write(k) || !stream->Read(&kr)) return;  // the daemon is gone
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

TEST_F(SmallDaemonOnTestClock, KilledClientsPagesComeBackWhenItsLeaseExpires) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t child = fork();
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test that dies takes its client with it
    dup2(out[1], STDOUT_FILENO);
    setenv("PHYSMEM_TEST_TARGET", daemon_->unix_target().c_str(), 1);
    execl("/proc/self/exe", "client", "--gtest_also_run_disabled_tests",
          "--gtest_filter=ClientProcess.DISABLED_AllocateKeepAliveForever", nullptr);
    _exit(127);
  }
  close(out[1]);
  struct Reap {  // also when an assertion ends the test early
    pid_t pid;
    ~Reap() {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
  } reap{child};
  FILE* f = fdopen(out[0], "r");
  char line[256] = {0};
  uint64_t lease = 0;
  while (fgets(line, sizeof(line), f)) {
    if (std::strncmp(line, "READY ", 6) == 0) {
      lease = std::strtoull(line + 6, nullptr, 10);
      break;
    }
  }
  ASSERT_NE(lease, 0u) << "client process did not start";
  // The lease clock moves 0.9 TTL at a time (a minute of real time left for the client's next
  // renewal), and each time the test waits for a renewal: 1.8 TTLs, which the lease lives through
  // only because the client keeps it alive. The remaining TTL says when it has renewed (this
  // process is the same uid, the same identity).
  auto remaining_ms = [&] {
    v1::GetLeaseRequest g;
    g.set_lease_id(lease);
    v1::LeaseInfo info;
    Ctx ctx;
    const grpc::Status s = stub_->GetLease(&ctx, g, &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return s.ok() ? info.ttl_ms() : -1;
  };
  for (int i = 0; i < 2; ++i) {
    daemon_->AdvanceLeaseClock(milliseconds(kClientTtlMs * 9 / 10));
    ASSERT_TRUE(testing::Eventually(ScaledTimeout(milliseconds(10000)),
                                    [&] { return remaining_ms() > kClientTtlMs / 2; }))
        << "the client did not renew its lease";
  }
  EXPECT_EQ(Census().allocated_pages(), 300u);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  reap.pid = -1;
  fclose(f);
  // Nobody renews it now: a TTL later it has expired, and every page is back.
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(lease, milliseconds(kClientTtlMs)));
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Concurrency, shutdown, the socket.

// The clients run for 20 s and until they have made 10000 calls between them, however long a slow
// build takes for those; the time limit only stops a daemon that stopped answering.
TEST_F(Daemon, EightClientThreadsForTwentySecondsLeaveEveryPageFree) {
  constexpr uint64_t kOps = 10000;
  constexpr std::chrono::seconds kRun{20};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ops{0}, unexpected{0};
  auto worker = [&](int t) {
    auto stub = ConnectStub(t % 2 ? daemon_->unix_target() : "127.0.0.1:" + std::to_string(daemon_->tcp_port()));
    const uint64_t lease = NewLease(stub.get());
    std::mt19937_64 rng(t);
    std::vector<v1::Allocation> held;
    const char* masks[] = {"GFP_KERNEL", "GFP_ATOMIC", "GFP_HIGHUSER", "GFP_DMA", "GFP_KERNEL|__GFP_ZERO"};
    while (!stop.load()) {
      if (held.empty() || (rng() % 100 < 55 && held.size() < 300)) {
        v1::Allocation a;
        const uint32_t order = rng() % 8 == 0 ? 4 + rng() % 5 : rng() % 4;
        grpc::Status s = Alloc(lease, masks[rng() % 5], order, &a, "", stub.get());
        if (s.ok()) {
          held.push_back(a);
        } else if (s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ++unexpected;
        }
      } else {
        const size_t k = rng() % held.size();
        if (!Free(lease, held[k].pfn(), held[k].order(), stub.get()).ok()) ++unexpected;
        held[k] = held.back();
        held.pop_back();
      }
      ++ops;
    }
    if (!testing::RevokeLease(stub.get(), lease).ok()) ++unexpected;
  };
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < 8; ++t) threads.emplace_back(worker, t);
  const bool done = testing::Eventually(kRun + ScaledTimeout(std::chrono::seconds(120)), [&] {
    return std::chrono::steady_clock::now() - t0 >= kRun && ops.load() >= kOps;
  });
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_TRUE(done) << "only " << ops.load() << " calls answered";
  EXPECT_EQ(unexpected.load(), 0u);
  std::printf("8 clients: %lu operations in %.1f s\n", static_cast<unsigned long>(ops.load()),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  const v1::ValidateResponse c = Census();
  EXPECT_EQ(c.allocated_pages(), 0u);
  EXPECT_EQ(c.leases(), 0u);
  EXPECT_EQ(c.free_pages(), c.total_pages());
}

TEST_F(Daemon, SigtermDrainsAndExitsZero) {
  const uint64_t lease = NewLease(stub_.get());
  v1::Allocation a;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 0, &a).ok());
  daemon_->Kill(SIGTERM);
  std::optional<int> st = daemon_->WaitExit(ScaledTimeout(std::chrono::seconds(10)));
  ASSERT_TRUE(st.has_value()) << "did not exit";
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 0);
  EXPECT_THAT(daemon_->log(), HasSubstr("event=shutting_down"));
  struct stat sb;
  EXPECT_NE(stat(daemon_->socket_path().c_str(), &sb), 0) << "socket file left behind";
}

// Clients that keep their channels open, idle, do not hold a shutdown: only calls in flight get
// the 2 s grace (server/inflight_calls.h). Before, gRPC waited out the whole grace period for
// idle connections to close, on every SIGTERM. The bound is the grace period itself, scaled: the
// daemon (metrics off here) stops in tens of milliseconds when nothing is in flight.
TEST_F(Daemon, IdleConnectionsDoNotHoldUpShutdown) {
  ASSERT_TRUE(testing::Nop(stub_.get()));  // stub_'s connection stays open, idle
  const auto t0 = std::chrono::steady_clock::now();
  daemon_->Kill(SIGTERM);
  std::optional<int> st = daemon_->WaitExit(ScaledTimeout(std::chrono::seconds(10)));
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(st.has_value()) << "did not exit";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "wait status " << *st;
  EXPECT_LT(took, ScaledTimeout(std::chrono::milliseconds(2000))) << "waited for the idle connection";
  EXPECT_THAT(daemon_->log(), ::testing::Not(HasSubstr("event=shutdown_grace_expired")));
}

// Two daemons on one Unix socket: the second says the socket is in use, names the flag, exits 2.
TEST(StartupFailure, ASocketInUseNamesThePathAndTheFlag) {
  testing::DaemonProcess first;
  ASSERT_TRUE(first.Start()) << first.log();
  testing::DaemonProcess second({"--unix_socket=" + first.socket_path()});
  EXPECT_FALSE(second.Start());
  EXPECT_THAT(second.log(), ::testing::HasSubstr("another daemon is serving on " + first.socket_path()));
  EXPECT_THAT(second.log(), ::testing::HasSubstr("--unix_socket=PATH"));
  const std::optional<int> st = second.exit_status();
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << "wait status " << *st;
}

// A socket directory that cannot be made: the path, the reason and the flag, exit 2.
TEST(StartupFailure, ASocketDirectoryThatCannotBeMadeNamesThePathAndTheFlag) {
  // A regular file where a directory should be: no user, root included, can make it.
  char tmpl[] = "/tmp/physmemd-startup-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string blocker = dir + "/not-a-dir";
  { std::ofstream(blocker) << "x"; }
  testing::DaemonProcess d({"--unix_socket=" + blocker + "/sub/physmemd.sock"});
  EXPECT_FALSE(d.Start());
  EXPECT_THAT(d.log(), ::testing::HasSubstr("cannot serve on Unix socket " + blocker + "/sub/physmemd.sock"));
  EXPECT_THAT(d.log(), ::testing::HasSubstr("--unix_socket=PATH"));
  const std::optional<int> st = d.exit_status();
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << "wait status " << *st;
  std::filesystem::remove_all(dir);
}

TEST(DaemonSocket, IsCreatedWithMode0660AndAStaleOneIsReplaced) {
  testing::DaemonProcess first;
  ASSERT_TRUE(first.Start()) << first.log();
  struct stat sb;
  ASSERT_EQ(stat(first.socket_path().c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0660u);
  // A second daemon on a live socket refuses to start.
  first.Kill(SIGKILL);
  ASSERT_TRUE(first.WaitExit(ScaledTimeout(std::chrono::seconds(5))).has_value());
  ASSERT_EQ(stat(first.socket_path().c_str(), &sb), 0) << "SIGKILL leaves the socket file";
  // Restart on the same path: the stale socket is replaced.
  ASSERT_TRUE(first.Start()) << first.log();
  EXPECT_THAT(first.log(), HasSubstr("event=stale_socket_removed"));
}

TEST(DaemonRestart, LeaseIdsAreNeverReusedAcrossRestarts) {
  // A client that outlived a restart must not renew (or free into) a new lease that reuses its
  // old number: ids carry a per-boot nonce.
  testing::DaemonProcess d({"--mem_mb=64"});
  auto lease_of = [&] {
    grpc::Status s;
    const uint64_t id = testing::CreateLease(ConnectStub(d.unix_target()).get(), 60000, &s);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return id;
  };
  ASSERT_TRUE(d.Start()) << d.log();
  const uint64_t before = lease_of();
  d.Stop();
  ASSERT_TRUE(d.Start()) << d.log();
  const uint64_t after = lease_of();
  EXPECT_NE(before, after);
  EXPECT_EQ(before & 0xffffffffu, after & 0xffffffffu) << "same counter, different boot";
  auto stub = ConnectStub(d.unix_target());
  v1::KeepAliveRequest r;
  r.set_lease_id(before);
  v1::KeepAliveResponse resp;
  Ctx ctx;
  EXPECT_EQ(stub->RenewLease(&ctx, r, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(DaemonFlags, PlaintextTcpNeedsAnExplicitFlag) {
  testing::DaemonProcess d({"--tcp=127.0.0.1:0"});
  EXPECT_FALSE(d.Start());
  EXPECT_THAT(d.log(), HasSubstr("--allow_insecure_tcp"));
}

}  // namespace
}  // namespace physmem
