// Per-identity limits (server/identity_limits.h) against the real daemon: the page limit holds
// across all of an identity's leases, zone shares and the ZONE_DMA cap hold whether pages come by
// explicit GFP_DMA or by zonelist fallback, concurrent calls of one identity never overshoot a
// limit, and every refusal names its limit and changes nothing. (Two different identities, one
// stopped while the other goes on, are in two_uids_test.cc.)
#include <sys/wait.h>

#include <grpcpp/grpcpp.h>

#include <limits>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/identity_limits.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using v1::PhysMem;

// Leases here live a day: none may expire while a slow (sanitized, loaded) build still uses it.
// The one that must expire is expired by the test's lease clock.
constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;

TEST(ZoneSharePercent, OneNumberAppliesToEveryZone) {
  absl::StatusOr<std::array<uint32_t, MAX_NR_ZONES>> p = ParseZoneSharePercent("40");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(*p, ::testing::ElementsAre(40, 40, 40, 40));
}

TEST(ZoneSharePercent, NamedZonesLeaveTheOthersWhole) {
  absl::StatusOr<std::array<uint32_t, MAX_NR_ZONES>> p = ParseZoneSharePercent("Normal:50,dma32:25");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(*p, ::testing::ElementsAre(100, 25, 50, 100));
}

TEST(ZoneSharePercent, RefusesBadInput) {
  for (const char* bad : {"0", "101", "Normal", "Normal:", "Bogus:5", "Normal:x", "50,DMA:5"}) {
    absl::StatusOr<std::array<uint32_t, MAX_NR_ZONES>> p = ParseZoneSharePercent(bad);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// Calls here wait up to 10 s: the concurrency test below runs eight clients at once.
struct Ctx : testing::Deadline {
  Ctx() : Deadline(10000) {}
};

class Limits : public testing::DaemonStubTest {
 protected:
  void Start(std::vector<std::string> flags) {
    // i386 with 64 MiB: ZONE_DMA 16 MiB (4096 pages), ZONE_NORMAL 48 MiB.
    flags.insert(flags.begin(), {"--target=i386", "--mem_mb=64", "--max_alloc_wait_ms=200"});
    StartDaemon(std::move(flags));
  }
  uint64_t NewLease(int64_t ttl_ms = kDayMs, PhysMem::Stub* stub = nullptr) {
    return DaemonStubTest::NewLease(ttl_ms, stub);
  }
  grpc::Status Alloc(uint64_t lease, const std::string& gfp, uint32_t order, v1::Allocation* out = nullptr,
                     PhysMem::Stub* s = nullptr) {
    return testing::AllocPages(s ? s : stub_.get(), lease, gfp, order, out, /*deadline_ms=*/10000);
  }
  // Pages this identity's leases hold in `zone` ("" = all zones).
  uint64_t Held(const std::string& zone = "") {
    v1::ListLeasesResponse l;
    Ctx ctx;
    EXPECT_TRUE(stub_->ListLeases(&ctx, v1::ListLeasesRequest(), &l).ok());
    uint64_t n = 0;
    for (const v1::LeaseInfo& info : l.leases()) {
      for (const v1::LeaseHolding& h : info.holdings()) {
        if (zone.empty() || h.zone() == zone) n += h.blocks() << h.order();
      }
    }
    return n;
  }
  // A refused call: the code, and the census unchanged.
  void ExpectRefusedUnchanged(const std::function<grpc::Status()>& call, const std::string& needle) {
    const v1::ValidateResponse before = Census();
    const grpc::Status s = call();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(needle));
    const v1::ValidateResponse after = Census();
    EXPECT_EQ(after.allocated_pages(), before.allocated_pages());
    EXPECT_EQ(after.free_pages(), before.free_pages());
    EXPECT_EQ(after.lease_pages(), after.allocated_pages());
    EXPECT_EQ(after.identity_pages(), after.lease_pages());
  }
};

TEST_F(Limits, PageLimitCountsEveryLeaseOfTheIdentity) {
  Start({"--identity_max_pages=100"});
  const uint64_t l1 = NewLease(), l2 = NewLease();
  ASSERT_TRUE(Alloc(l1, "GFP_KERNEL", 6).ok());  // 64
  ASSERT_TRUE(Alloc(l2, "GFP_KERNEL", 5).ok());  // 96
  ExpectRefusedUnchanged([&] { return Alloc(l2, "GFP_KERNEL", 3); },
                         "identity uid:0 holds 96 of its 100 pages limit (--identity_max_pages)");
  ASSERT_TRUE(Alloc(l2, "GFP_KERNEL", 2).ok());  // exactly 100
  ExpectRefusedUnchanged([&] { return Alloc(l1, "GFP_KERNEL", 0); }, "--identity_max_pages");
  // Bulk stops at the limit too, and says so when it gets nothing.
  ExpectRefusedUnchanged(
      [&] {
        v1::AllocPagesBulkResponse resp;
        return testing::AllocBulk(stub_.get(), l1, "GFP_KERNEL", 10, &resp);
      },
      "--identity_max_pages");
  // Ending a lease gives its pages back to the identity's allowance.
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), l1).ok());
  v1::AllocPagesBulkResponse resp;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), l2, "GFP_KERNEL", 1000, &resp).ok());
  EXPECT_EQ(resp.pfn_size(), 64) << "bulk fills exactly up to the identity's limit";
  EXPECT_EQ(Held(), 100u);
  EXPECT_EQ(Census().identity_pages(), 100u);
}

TEST_F(Limits, AnExpiredLeaseGivesItsPagesBackToTheIdentity) {
  // The lease expires when the test moves the daemon's lease clock, not while it is still used.
  StartDaemon({"--target=i386", "--mem_mb=64", "--max_alloc_wait_ms=200", "--identity_max_pages=16",
               "--identity_dma_pages=4"},
              /*tcp=*/false, testing::LeaseClockMode::kTestControlled);
  // An hour: it expires when the clock is moved past that, never on its own during the calls.
  constexpr int64_t kShortMs = 3600 * 1000;
  const uint64_t short_lived = NewLease(kShortMs);
  ASSERT_TRUE(Alloc(short_lived, "GFP_DMA", 2).ok());     // 4 DMA pages
  ASSERT_TRUE(Alloc(short_lived, "GFP_KERNEL", 3).ok());  // 8 more
  const uint64_t l = NewLease(kDayMs);
  EXPECT_EQ(Alloc(l, "GFP_KERNEL", 3).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Alloc(l, "GFP_DMA", 0).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Census().identity_pages(), 12u);
  // Once the reaper has ended it, the identity's counters are back to zero.
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(short_lived, std::chrono::milliseconds(kShortMs)));
  EXPECT_EQ(Census().identity_pages(), 0u);
  EXPECT_TRUE(Alloc(l, "GFP_KERNEL", 3).ok());
  EXPECT_TRUE(Alloc(l, "GFP_DMA", 2).ok());
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.identity_pages(), 12u);
  EXPECT_EQ(v.lease_pages(), 12u);
}

TEST_F(Limits, DmaCapStopsExplicitGfpDma) {
  Start({"--identity_dma_pages=16"});
  const uint64_t l = NewLease();
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(Alloc(l, "GFP_DMA", 0).ok()) << i;
  ExpectRefusedUnchanged([&] { return Alloc(l, "GFP_DMA", 0); }, "--identity_dma_pages");
  EXPECT_EQ(Held("DMA"), 16u);
  // Other zones are still open to the identity.
  v1::Allocation a;
  ASSERT_TRUE(Alloc(l, "GFP_KERNEL", 0, &a).ok());
  EXPECT_EQ(a.zone(), "Normal");
}

// GFP_KERNEL's zonelist is Normal -> DMA. With the identity's share of Normal used up, its
// allocations fall back into DMA as the kernel's would, but only up to the DMA cap.
TEST_F(Limits, FallbackIntoDmaCountsAgainstTheDmaCap) {
  Start({"--identity_zone_share_percent=Normal:1", "--identity_dma_pages=20"});
  const uint64_t l = NewLease();
  std::map<std::string, int> zones;
  grpc::Status s;
  v1::Allocation a;
  int n = 0;
  for (; n < 1000 && (s = Alloc(l, "GFP_KERNEL", 0, &a)).ok(); ++n) ++zones[a.zone()];
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("--identity_dma_pages"));
  EXPECT_THAT(s.error_message(), HasSubstr("--identity_zone_share_percent"));
  EXPECT_EQ(zones["DMA"], 20);
  EXPECT_GT(zones["Normal"], 0);
  EXPECT_EQ(Held("Normal"), static_cast<uint64_t>(zones["Normal"]));
  EXPECT_EQ(Held("DMA"), 20u);
  ExpectRefusedUnchanged([&] { return Alloc(l, "GFP_DMA", 0); }, "--identity_dma_pages");
}

TEST_F(Limits, DefaultDmaCapIsAnEighthOfZoneDma) {
  Start({});
  const uint64_t l = NewLease();
  v1::GetZoneInfoResponse zi;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetZoneInfo(&ctx, v1::GetZoneInfoRequest(), &zi).ok());
  }
  uint64_t dma_managed = 0;
  for (const v1::ZoneInfo& z : zi.zones()) {
    if (z.zone() == "DMA") dma_managed = z.managed_pages();
  }
  ASSERT_GT(dma_managed, 0u);
  v1::AllocPagesBulkResponse resp;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), l, "GFP_DMA", 4096, &resp).ok());
  EXPECT_EQ(static_cast<uint64_t>(resp.pfn_size()), dma_managed / 8);
  ExpectRefusedUnchanged([&] { return Alloc(l, "GFP_DMA", 0); }, "--identity_dma_pages");
}

// Eight leases of one identity allocate at once until refused: the totals land exactly on the
// limits, never past them.
TEST_F(Limits, ConcurrentCallsOfOneIdentityNeverOvershoot) {
  Start({"--identity_max_pages=600", "--identity_dma_pages=50"});
  auto run = [&](const char* gfp) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, gfp] {
        auto stub = testing::ConnectStub(daemon_->unix_target());
        const uint64_t l = NewLease(kDayMs, stub.get());
        for (int i = 0; i < 1000; ++i) {
          grpc::Status s = Alloc(l, gfp, 0, nullptr, stub.get());
          if (!s.ok()) {
            EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
            break;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
  };
  run("GFP_DMA");
  EXPECT_EQ(Held("DMA"), 50u);
  run("GFP_KERNEL");
  EXPECT_EQ(Held(), 600u);
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.lease_pages(), v.allocated_pages());
  EXPECT_EQ(v.allocated_pages(), 600u);
  EXPECT_EQ(v.identity_pages(), 600u);
}

TEST(LimitFlags, BadZoneShareIsRefusedAtStart) {
  testing::DaemonProcess d({"--identity_zone_share_percent=Normal:0"});
  EXPECT_FALSE(d.Start());
  EXPECT_THAT(d.log(), HasSubstr("--identity_zone_share_percent"));
}

TEST(IdentityLimitsOptions, DmaPagesBelowMinusOneAreRefused) {
  for (int64_t bad : {int64_t{-2}, int64_t{-4096}, std::numeric_limits<int64_t>::min()}) {
    IdentityLimitsOptions o;
    o.dma_pages = bad;
    const absl::Status s = CheckIdentityLimitsOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(s.message()), HasSubstr("--identity_dma_pages " + std::to_string(bad) + ":")) << bad;
  }
  for (int64_t good : {int64_t{-1}, int64_t{0}, int64_t{16}, std::numeric_limits<int64_t>::max()}) {
    IdentityLimitsOptions o;
    o.dma_pages = good;
    EXPECT_TRUE(CheckIdentityLimitsOptions(o).ok()) << good;
  }
}

TEST(LimitFlags, DmaPagesBelowMinusOneStopTheDaemonAtStart) {
  testing::DaemonProcess d({"--identity_dma_pages=-2"});
  EXPECT_FALSE(d.Start());
  ASSERT_TRUE(d.exit_status().has_value()) << "still running:\n" << d.log();
  EXPECT_TRUE(WIFEXITED(*d.exit_status()) && WEXITSTATUS(*d.exit_status()) != 0) << "wait status " << *d.exit_status();
  EXPECT_THAT(d.log(), HasSubstr("--identity_dma_pages -2: expected a page count >= 0, or -1 for automatic"));
  EXPECT_FALSE(d.Started());
}

TEST(LimitFlags, DmaPagesZeroIsAcceptedAndStopsEveryDmaPage) {
  testing::DaemonProcess d({"--target=i386", "--mem_mb=64", "--identity_dma_pages=0"});
  ASSERT_TRUE(d.Start()) << d.log();
  auto stub = testing::ConnectStub(d.unix_target());
  const uint64_t lease = testing::CreateLease(stub.get(), kDayMs);
  ASSERT_NE(lease, 0u);
  const grpc::Status s = testing::AllocPages(stub.get(), lease, "GFP_DMA", 0, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("--identity_dma_pages"));
}

TEST(LimitFlags, PageIoLimitMustFitInAMessage) {
  testing::DaemonProcess d({"--max_page_io_bytes=67108864"});
  EXPECT_FALSE(d.Start());
  EXPECT_THAT(d.log(), HasSubstr("--max_message_bytes"));
}

TEST(LimitFlags, InsecureTcpLogsAWarning) {
  testing::DaemonProcess d({}, /*tcp=*/true);
  ASSERT_TRUE(d.Start()) << d.log();
  EXPECT_THAT(d.log(), HasSubstr("level=warn event=insecure_tcp"));
}

}  // namespace
}  // namespace physmem
